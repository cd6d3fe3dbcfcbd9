package llmretry

import (
	"bytes"
	"context"
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
