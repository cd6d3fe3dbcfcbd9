package llmretry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// The paths of issue 21, Part 2 item 1 that decide whether a broken stream
// is continued, one by one; the last event of a reply that said it was
// whole; and what the splice keeps across the seam.

const (
	aStart   = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"content\":[]}}\n\n"
	aText0   = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
	aHello   = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \"}}\n\n"
	aStop0   = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
	aDone    = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n"
	aMsgStop = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	// aWorld is a continuation's whole stream: its text is "world".
	aWorld = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m2\",\"content\":[]}}\n\n" + aText0 +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"world\"}}\n\n" +
		aStop0 + aDone + aMsgStop

	oHello  = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello \"}}]}\n\n"
	oFinish = "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
	oDone   = "data: [DONE]\n\n"
	// oWorld is a continuation's whole stream: its text is "world".
	oWorld = "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"world\"}}]}\n\n" +
		"data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n" + oDone
)

func bodyFor(family streamFamily) string {
	if family == streamAnthropic {
		return anthropicBody + "}"
	}
	return chatBody + "}"
}

// A stream that ends cleanly, without the family's last event and before
// its reply said it was whole, broke as much as a cut one: it is
// continued. (The other tests' servers all cut the connection.)
func TestStreamContinuationFinishesACleanEndWithoutTheLastEvent(t *testing.T) {
	for family, parts := range map[streamFamily][2]string{
		streamAnthropic:  {aStart + aText0 + aHello, aWorld},
		streamOpenAIChat: {oHello, oWorld},
	} {
		srv, bodies := serveEventsEnding(t, parts[0], parts[1], false)
		got, events := fetchWith(t, srv.URL, family, bodyFor(family))
		r := readStream(t, family, got.body)
		if got.err != nil || r.text != "Hello world" || len(events) != 1 || events[0].Outcome != Continued ||
			events[0].Cause != "stream ended before its last event" || len(*bodies) != 2 {
			t.Fatalf("%v: err %v, text %q, events %+v, %d requests", family, got.err, r.text, events, len(*bodies))
		}
	}
}

// A reply that said it was whole and then lost its last event, by a cut
// or by a clean end, is sent nowhere again, and the caller's stream gets
// that last event, once, after a comment that says whose it is.
func TestStreamContinuationWritesTheMissingLastEvent(t *testing.T) {
	for _, cut := range []bool{true, false} {
		for family, c := range map[streamFamily]struct{ first, last string }{
			streamAnthropic:  {aStart + aText0 + aHello + aStop0 + aDone, aMsgStop},
			streamOpenAIChat: {oHello + oFinish, oDone},
		} {
			srv, bodies := serveEventsEnding(t, c.first, "never", cut)
			got, events := fetchWith(t, srv.URL, family, bodyFor(family))
			if got.err != nil || len(events) != 1 || events[0].Outcome != Completed || len(*bodies) != 1 ||
				!bytes.HasPrefix(got.body, []byte(c.first)) || !bytes.HasSuffix(got.body, []byte("this one is llmretry's\n\n"+c.last)) ||
				bytes.Count(got.body, []byte(c.last)) != 1 {
				t.Fatalf("%v, cut %v: err %v, events %+v, %d requests, body %q", family, cut, got.err, events, len(*bodies), got.body)
			}
		}
	}
}

// After the family's last event nothing is missing: a cut or a clean end
// there adds nothing, reports nothing and sends nothing again, even when
// the reply gave no finish_reason before [DONE].
func TestStreamContinuationAddsNothingAfterTheLastEvent(t *testing.T) {
	for _, cut := range []bool{true, false} {
		for _, c := range []struct {
			family streamFamily
			whole  string
		}{
			{streamAnthropic, aStart + aText0 + aHello + aStop0 + aDone + aMsgStop},
			{streamOpenAIChat, oHello + oFinish + oDone},
			{streamOpenAIChat, oHello + oDone}, // no finish_reason: [DONE] ends it all the same
		} {
			srv, bodies := serveEventsEnding(t, c.whole, "never", cut)
			got, events := fetchWith(t, srv.URL, c.family, bodyFor(c.family))
			if got.err != nil || string(got.body) != c.whole || len(events) != 0 || len(*bodies) != 1 {
				t.Fatalf("%v, cut %v: err %v, events %+v, %d requests, body %q", c.family, cut, got.err, events, len(*bodies), got.body)
			}
		}
	}
}

// Thinking or a refusal seen in the stream itself forbids a continuation:
// a thinking block cannot be prefilled (and a cut inside one leaves
// nothing to go on from), and a refusal is no answer to finish.
func TestStreamContinuationRefusesThinkingOrARefusalInTheStream(t *testing.T) {
	thinking := "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me see\"}}\n\n"
	afterThinking := thinking + "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
		"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \"}}\n\n"
	for _, c := range []struct {
		name   string
		family streamFamily
		first  string
		cause  string
	}{
		{"anthropic text after thinking", streamAnthropic, aStart + afterThinking, "thinking"},
		{"anthropic cut inside thinking", streamAnthropic, aStart + thinking, "thinking"},
		{"openai reasoning_content", streamOpenAIChat, "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Let me see\"}}]}\n\n" + oHello, "thinking"},
		{"openai refusal", streamOpenAIChat, "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"I can't \"}}]}\n\n" + oHello, "refusal"},
	} {
		srv, bodies := serveEvents(t, c.first, "never")
		got, events := fetchWith(t, srv.URL, c.family, bodyFor(c.family))
		if got.err == nil || len(events) != 1 || events[0].Outcome != Refused || !strings.Contains(events[0].Cause, c.cause) || len(*bodies) != 1 {
			t.Fatalf("%s: err %v, events %+v, %d requests: want the cut, refused for %s", c.name, got.err, events, len(*bodies), c.cause)
		}
	}
}

// A request body that cannot be made again (no GetBody) cannot be sent
// again with the delivered text: the stream is not continued.
func TestStreamContinuationRefusesABodyThatCannotBeReplayed(t *testing.T) {
	srv, bodies := serveEvents(t, oHello, oWorld)
	var events []ContinuationEvent
	_, c := testTransport(t, newFakeClock(), WithStreamContinuation(Continuation{}),
		WithOnContinuation(func(e ContinuationEvent) { events = append(events, e) }))
	req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", io.MultiReader(strings.NewReader(chatBody+"}")))
	if req.GetBody != nil {
		t.Fatal("the test needs a body without GetBody")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || len(events) != 1 || events[0].Outcome != Refused || !strings.Contains(events[0].Cause, "not replayable") || len(*bodies) != 1 {
		t.Fatalf("err %v, events %+v, %d requests", err, events, len(*bodies))
	}
}

// noRetries is a budget that is always spent.
type noRetries struct{}

func (noRetries) OnRequest()              {}
func (noRetries) AllowRetry() bool        { return false }
func (noRetries) OnAttempt(AttemptResult) {}

// A continuation is a retry in the budget: a spent budget refuses it.
func TestStreamContinuationRefusedByTheBudget(t *testing.T) {
	srv, bodies := serveEvents(t, oHello, oWorld)
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+"}", WithBudget(noRetries{}))
	if got.err == nil || len(events) != 1 || events[0].Outcome != Refused || !strings.Contains(events[0].Cause, "budget") || len(*bodies) != 1 {
		t.Fatalf("err %v, events %+v, %d requests", got.err, events, len(*bodies))
	}
}

// stallThenCut is a stream body: head, then, after wait, a cut.
type stallThenCut struct {
	head []byte
	wait time.Duration
}

func (b *stallThenCut) Read(p []byte) (int, error) {
	if len(b.head) > 0 {
		n := copy(p, b.head)
		b.head = b.head[n:]
		return n, nil
	}
	time.Sleep(b.wait)
	return 0, io.ErrUnexpectedEOF
}

func (b *stallThenCut) Close() error { return nil }

// A stream that breaks after the request's deadline has passed is not
// continued: the deadline bounds the whole journey. The caller gets the
// break, and the event says why, not silence.
func TestSynctest_StreamContinuationRefusedPastTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sent := 0
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			sent++
			resp := reply(r, 200, "", "Content-Type", "text/event-stream")
			resp.Body = &stallThenCut{head: []byte(oHello), wait: 10 * time.Second}
			return resp, nil
		})
		var events []ContinuationEvent
		tr := NewTransport(base, WithStreamContinuation(Continuation{}),
			WithOnContinuation(func(e ContinuationEvent) { events = append(events, e) }))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://api.test/v1/chat/completions", strings.NewReader(chatBody+"}"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil || sent != 1 || len(events) != 1 || events[0].Outcome != Refused || !strings.Contains(events[0].Cause, "deadline") {
			t.Fatalf("err %v, %d sent, events %+v", err, sent, events)
		}
	})
}

// step is one answer of a steps server: a status with body, a stream
// (cut after it when cut).
type step struct {
	status int
	body   string
	cut    bool
}

// serveSteps answers the n-th request with the n-th step (the last
// repeats), and keeps the bodies sent.
func serveSteps(t *testing.T, steps ...step) (*httptest.Server, func() []string) {
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(raw))
		s := steps[min(len(bodies), len(steps))-1]
		mu.Unlock()
		if s.status != 200 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(s.status)
			_, _ = io.WriteString(w, s.body)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, s.body)
		if s.cut {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), bodies...)
	}
}

// A continuation request that fails before its first output (a 503, an
// overload after message_start) is retried by the usual rules, and the
// retry carries the same continuation; MaxAttempts bounds it with the rest
// of the journey.
func TestStreamContinuationRetriesAContinuationThatFailsBeforeItsOutput(t *testing.T) {
	overloaded := aStart + aText0 + "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
	for _, c := range []struct {
		name    string
		family  streamFamily
		first   string
		failure step
		after   string
	}{
		{"openai 503", streamOpenAIChat, oHello, step{status: 503, body: `{"error":{"message":"busy"}}`}, oWorld},
		{"anthropic overload in the stream", streamAnthropic, aStart + aText0 + aHello, step{status: 200, body: overloaded}, aWorld},
	} {
		srv, bodies := serveSteps(t, step{status: 200, body: c.first, cut: true}, c.failure, step{status: 200, body: c.after})
		got, events := fetchWith(t, srv.URL, c.family, bodyFor(c.family))
		r := readStream(t, c.family, got.body)
		sent := bodies()
		if got.err != nil || r.text != "Hello world" || len(events) != 1 || events[0].Outcome != Continued || len(sent) != 3 || sent[1] != sent[2] {
			t.Fatalf("%s: err %v, text %q, events %+v, %d requests", c.name, got.err, r.text, events, len(sent))
		}
		// With two attempts, the continuation is the last: its failure is
		// not retried, and the caller gets the break.
		srv, bodies = serveSteps(t, step{status: 200, body: c.first, cut: true}, c.failure, step{status: 200, body: c.after})
		got, events = fetchWith(t, srv.URL, c.family, bodyFor(c.family), WithPolicy(Policy{MaxAttempts: 2}))
		if got.err == nil || len(events) != 1 || events[0].Outcome != ContinuationFailed || len(bodies()) != 2 {
			t.Fatalf("%s, MaxAttempts 2: err %v, events %+v, %d requests", c.name, got.err, events, len(bodies()))
		}
	}
}

// Every chunk of a continued OpenAI stream keeps the first attempt's id,
// created and model, whatever the continuation's were.
func TestStreamContinuationKeepsIdCreatedAndModel(t *testing.T) {
	first := "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":111,\"model\":\"gpt-a\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello \"}}]}\n\n"
	later := "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":222,\"model\":\"gpt-b\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"world\"}}]}\n\n" +
		"data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":222,\"model\":\"gpt-b\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n" +
		"data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":222,\"model\":\"gpt-b\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n" + oDone
	srv, _ := serveEvents(t, first, later)
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+"}")
	if got.err != nil || len(events) != 1 || events[0].Outcome != Continued {
		t.Fatalf("err %v, events %+v", got.err, events)
	}
	chunks := 0
	s := sseScanner{}
	for p := got.body; len(p) > 0; {
		ev, n, ok := s.scan(p)
		p = p[n:]
		if !ok {
			break
		}
		if isDone(ev.data) {
			continue
		}
		var m struct {
			ID      string `json:"id"`
			Created int    `json:"created"`
			Model   string `json:"model"`
		}
		if err := json.Unmarshal(ev.data, &m); err != nil || m.ID != "c1" || m.Created != 111 || m.Model != "gpt-a" {
			t.Fatalf("chunk %q: want id c1, created 111, model gpt-a", ev.data)
		}
		chunks++
	}
	if chunks < 4 {
		t.Fatalf("%d chunks in %q", chunks, got.body)
	}
}

// A cut between Anthropic blocks: the continuation's blocks take the
// indices after the last one the caller had, each started and stopped
// once, so that an SDK's accumulator sees distinct blocks.
func TestStreamContinuationAfterACutBetweenBlocksTakesTheNextIndices(t *testing.T) {
	block := func(i int, text string) string {
		b, _ := json.Marshal(map[string]any{"type": "content_block_delta", "index": i, "delta": map[string]any{"type": "text_delta", "text": text}})
		s, _ := json.Marshal(map[string]any{"type": "content_block_start", "index": i, "content_block": map[string]any{"type": "text", "text": ""}})
		e, _ := json.Marshal(map[string]any{"type": "content_block_stop", "index": i})
		return "event: content_block_start\ndata: " + string(s) + "\n\nevent: content_block_delta\ndata: " + string(b) +
			"\n\nevent: content_block_stop\ndata: " + string(e) + "\n\n"
	}
	first := aStart + block(0, "One. ") + block(1, "Two. ")
	later := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m2\",\"content\":[]}}\n\n" +
		block(0, "Three. ") + block(1, "Four.") + aDone + aMsgStop
	srv, _ := serveEvents(t, first, later)
	got, events := fetchWith(t, srv.URL, streamAnthropic, anthropicBody+"}")
	if got.err != nil || len(events) != 1 || events[0].Outcome != Continued {
		t.Fatalf("err %v, events %+v", got.err, events)
	}
	var order []string
	texts := map[int]string{}
	s := sseScanner{}
	for p := got.body; len(p) > 0; {
		ev, n, ok := s.scan(p)
		p = p[n:]
		if !ok {
			break
		}
		var m struct {
			Type  string `json:"type"`
			Index int    `json:"index"`
			Delta struct {
				Text string `json:"text"`
			} `json:"delta"`
		}
		if json.Unmarshal(ev.data, &m) != nil {
			t.Fatalf("event %q", ev.data)
		}
		switch m.Type {
		case "content_block_start", "content_block_stop":
			order = append(order, m.Type[len("content_block_"):]+" "+string(rune('0'+m.Index)))
		case "content_block_delta":
			texts[m.Index] += m.Delta.Text
		}
	}
	want := "start 0,stop 0,start 1,stop 1,start 2,stop 2,start 3,stop 3"
	if strings.Join(order, ",") != want || texts[0] != "One. " || texts[1] != "Two. " || texts[2] != "Three. " || texts[3] != "Four." {
		t.Fatalf("blocks %v, texts %v: want %s, each its own text", order, texts, want)
	}
}
