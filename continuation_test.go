package llmretry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// A provider that streams text in small deltas, cuts its first stream
// after cut bytes, and answers a continuation (Anthropic prefill, or the
// OpenAI instruction form) with the rest of the text, restarting overlap
// bytes early, as models restart a sentence.
type continuer struct {
	*httptest.Server
	family   streamFamily
	text     string
	cut      int
	overlap  int
	tool     bool // the first stream is a tool call's arguments
	mu       sync.Mutex
	bodies   []map[string]any
	cutsLeft int               // how many streams are cut (default 1)
	rendered map[string][]byte // render's streams, by request
}

func newContinuer(t *testing.T, family streamFamily, text string, cut, overlap int) *continuer {
	c := &continuer{family: family, text: text, cut: cut, overlap: overlap, cutsLeft: 1}
	c.Server = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.Close)
	return c
}

// reset makes c serve as a new continuer with cut and overlap would.
func (c *continuer) reset(cut, overlap int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut, c.overlap, c.cutsLeft, c.bodies = cut, overlap, 1, nil
}

// deltas splits s into pieces of up to 3 runes.
func deltas(s string) []string {
	var out []string
	for len(s) > 0 {
		n := 0
		for i := 0; i < 3 && n < len(s); i++ {
			_, w := utf8.DecodeRuneInString(s[n:])
			n += w
		}
		out = append(out, s[:n])
		s = s[n:]
	}
	return out
}

func (c *continuer) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	c.mu.Lock()
	c.bodies = append(c.bodies, body)
	cutNow := c.cutsLeft > 0
	if cutNow {
		c.cutsLeft--
	}
	cut, overlap, n := c.cut, c.overlap, len(c.bodies) // reset may change them for the next request
	c.mu.Unlock()
	msgs, _ := body["messages"].([]any)
	delivered, isCont := "", false
	if len(msgs) >= 2 {
		last, _ := msgs[len(msgs)-1].(map[string]any)
		prev, _ := msgs[len(msgs)-2].(map[string]any)
		switch {
		case last["role"] == "assistant":
			delivered, isCont = last["content"].(string)
		case last["role"] == "user" && prev["role"] == "assistant":
			delivered, isCont = prev["content"].(string)
		}
	}
	rest := c.text
	if isCont {
		if !strings.HasPrefix(c.text, delivered) {
			http.Error(w, "the delivered text is not the reply's start", 400)
			return
		}
		from := len(delivered) - min(overlap, len(delivered))
		for from > 0 && from < len(c.text) && !utf8.RuneStart(c.text[from]) {
			from--
		}
		rest = c.text[from:]
	}
	b := c.render(rest, n, c.tool && !isCont)
	w.Header().Set("Content-Type", "text/event-stream")
	if cutNow && cut < len(b) {
		_, _ = w.Write(b[:cut])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // cut the connection
	}
	_, _ = w.Write(b)
}

// render writes the stream that answers request n with rest, a tool
// call's arguments if tool. The same request is answered again and again
// in a sweep (each cut's first request is the whole reply; cuts within
// one event send the same continuation): rendered once each, it is not
// most of the sweep's time, as marshalling every event for every request
// was.
func (c *continuer) render(rest string, n int, tool bool) []byte {
	key := fmt.Sprintf("%d %v %s", n, tool, rest)
	c.mu.Lock()
	b, ok := c.rendered[key]
	c.mu.Unlock()
	if ok {
		return b
	}
	var stream bytes.Buffer
	if c.family == streamAnthropic {
		ev := func(name string, v any) {
			b, _ := json.Marshal(v)
			fmt.Fprintf(&stream, "event: %s\ndata: %s\n\n", name, b)
		}
		ev("message_start", map[string]any{"type": "message_start", "message": map[string]any{"id": "msg_" + fmt.Sprint(n), "type": "message", "role": "assistant", "content": []any{}, "model": "claude-x", "usage": map[string]any{"input_tokens": 5, "output_tokens": 1}}})
		if tool {
			ev("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{"type": "tool_use", "id": "t1", "name": "f", "input": map[string]any{}}})
			for _, d := range deltas(`{"q":"` + rest + `"}`) {
				ev("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "input_json_delta", "partial_json": d}})
			}
		} else {
			ev("content_block_start", map[string]any{"type": "content_block_start", "index": 0, "content_block": map[string]any{"type": "text", "text": ""}})
			ev("ping", map[string]any{"type": "ping"})
			for _, d := range deltas(rest) {
				ev("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0, "delta": map[string]any{"type": "text_delta", "text": d}})
			}
		}
		ev("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
		ev("message_delta", map[string]any{"type": "message_delta", "delta": map[string]any{"stop_reason": "end_turn"}, "usage": map[string]any{"output_tokens": 9}})
		ev("message_stop", map[string]any{"type": "message_stop"})
	} else {
		chunk := func(delta map[string]any, finish any) {
			b, _ := json.Marshal(map[string]any{"id": "chatcmpl-" + fmt.Sprint(n), "object": "chat.completion.chunk",
				"created": 1700000000 + n, "model": "gpt-x", "choices": []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}})
			fmt.Fprintf(&stream, "data: %s\n\n", b)
		}
		chunk(map[string]any{"role": "assistant", "content": ""}, nil)
		if tool {
			for i, d := range deltas(`{"q":"` + rest + `"}`) {
				tc := map[string]any{"index": 0, "function": map[string]any{"arguments": d}}
				if i == 0 {
					tc["id"], tc["type"] = "call_1", "function"
				}
				chunk(map[string]any{"tool_calls": []any{tc}}, nil)
			}
		} else {
			for _, d := range deltas(rest) {
				chunk(map[string]any{"content": d}, nil)
			}
		}
		chunk(map[string]any{}, "stop")
		stream.WriteString("data: [DONE]\n\n")
	}
	c.mu.Lock()
	if c.rendered == nil {
		c.rendered = map[string][]byte{}
	}
	c.rendered[key] = stream.Bytes()
	c.mu.Unlock()
	return stream.Bytes()
}

// reading is what a client makes of a stream: its text joined from the
// deltas, and its events counted by kind.
type reading struct {
	text   string
	counts map[string]int
	ids    map[string]bool
	seams  int
}

func readStream(t *testing.T, family streamFamily, body []byte) reading {
	t.Helper()
	r := reading{counts: map[string]int{}, ids: map[string]bool{}}
	var text strings.Builder
	s := sseScanner{}
	for p := body; len(p) > 0; {
		ev, n, ok := s.scan(p)
		p = p[n:]
		if !ok {
			break
		}
		if family == streamAnthropic {
			var m struct {
				Type  string `json:"type"`
				Index int    `json:"index"`
				Delta struct {
					Type string `json:"type"`
					Text string `json:"text"`
				} `json:"delta"`
			}
			if err := json.Unmarshal(ev.data, &m); err != nil {
				t.Fatalf("an event is not JSON: %q", ev.data)
			}
			r.counts[m.Type]++
			if m.Type == "content_block_start" || m.Type == "content_block_delta" || m.Type == "content_block_stop" {
				r.counts[fmt.Sprintf("index %d", m.Index)]++
			}
			if m.Delta.Type == "text_delta" {
				text.WriteString(m.Delta.Text)
			}
			continue
		}
		if string(ev.data) == "[DONE]" {
			r.counts["[DONE]"]++
			continue
		}
		var m struct {
			ID      string `json:"id"`
			Choices []struct {
				Delta struct {
					Role    string `json:"role"`
					Content string `json:"content"`
				} `json:"delta"`
				Finish *string `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := json.Unmarshal(ev.data, &m); err != nil {
			t.Fatalf("a chunk is not JSON: %q in %q", ev.data, body)
		}
		r.ids[m.ID] = true
		for _, c := range m.Choices {
			if c.Delta.Role != "" {
				r.counts["role"]++
			}
			if c.Finish != nil {
				r.counts["finish"]++
			}
			text.WriteString(c.Delta.Content)
		}
	}
	r.text = text.String()
	r.seams = bytes.Count(body, []byte("\n: llmretry: stream continued after "))
	return r
}

const continuedText = "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun by the river."

// A stream cut after output reached the caller is finished by a
// continuation: the caller reads one well-formed stream whose text is the
// whole reply, with no repeat, no gap, no second start; cut at every byte.
func TestStreamContinuationFinishesACutStreamAtEveryByte(t *testing.T) {
	for _, family := range []streamFamily{streamAnthropic, streamOpenAIChat} {
		for _, overlap := range []int{0, 12} {
			// The four sweeps are independent: in parallel, the test takes
			// half its wall time on two CPUs (it was the longest of the
			// package, 43 s under the race detector).
			t.Run(fmt.Sprintf("%v/overlap %d", family, overlap), func(t *testing.T) {
				t.Parallel()
				// One server for the sweep, set anew for each cut: a server
				// and a client's connections for each of some 300 cuts, kept
				// until the test ends, were most of its time.
				c := newContinuer(t, family, continuedText, 1<<30, 0)
				full := fetch(t, c.URL, family, nil).body
				// Every byte up to the end of the first output (a cut there
				// is retried; after it, continued) and of two whole events
				// in the middle of the deltas, every seventeenth elsewhere.
				first := firstOutputEnd(t, family, full)
				from, to := middleEvents(t, family, full, 2)
				// One client for the sweep, as a caller would keep one: a
				// Transport for each cut kept its connections until the
				// test ended.
				var events []ContinuationEvent
				_, client := testTransport(t, newFakeClock(), WithStreamContinuation(Continuation{}),
					WithOnContinuation(func(e ContinuationEvent) { events = append(events, e) }))
				continued := 0
				for cut := 1; cut < len(full); cut++ {
					if cut > first && (cut < from || cut > to) && cut%17 != 0 {
						continue
					}
					name := fmt.Sprintf("%v/overlap %d/cut %d", family, overlap, cut)
					c.reset(cut, overlap)
					events = nil
					got := fetchOn(t, client, c.URL, family)
					r := readStream(t, family, got.body)
					if got.err != nil || r.text != continuedText {
						t.Fatalf("%s: err %v, text %q, events %+v", name, got.err, r.text, events)
					}
					switch {
					case len(events) == 0: // cut before the first output: retried, as ever
						continue
					case len(events) > 1 || events[0].Outcome != Continued && events[0].Outcome != Completed:
						t.Fatalf("%s: events %+v", name, events)
					case events[0].Outcome == Continued:
						continued++
						if r.seams != 1 {
							t.Fatalf("%s: %d seam comments", name, r.seams)
						}
					}
					// One message; a cut inside the text block continues it, a cut
					// after it stopped starts the next index.
					if family == streamAnthropic && (r.counts["message_start"] != 1 || r.counts["message_stop"] != 1 ||
						r.counts["content_block_start"] != r.counts["content_block_stop"] || r.counts["content_block_start"] > 2) {
						t.Fatalf("%s: events %v", name, r.counts)
					}
					if family == streamOpenAIChat && (r.counts["role"] != 1 || r.counts["finish"] != 1 || r.counts["[DONE]"] != 1 || len(r.ids) != 1) {
						t.Fatalf("%s: events %v, ids %v", name, r.counts, r.ids)
					}
				}
				if continued < 100 {
					t.Fatalf("%v/overlap %d: only %d cuts were continued", family, overlap, continued)
				}
			})
		}
	}
}

// textMember is how a delta of family writes its text.
func textMember(family streamFamily) string {
	if family == streamAnthropic {
		return `"text":"`
	}
	return `"content":"`
}

// firstOutputEnd returns where the event that carries the reply's first
// text ends in the stream full.
func firstOutputEnd(t *testing.T, family streamFamily, full []byte) int {
	t.Helper()
	at := bytes.Index(full, []byte(textMember(family)+deltas(continuedText)[0]+`"`))
	end := bytes.Index(full[max(at, 0):], []byte("\n\n"))
	if at < 0 || end < 0 {
		t.Fatalf("no first output in %q", full)
	}
	return at + end + 2
}

// middleEvents returns where the n whole events around the middle of the
// stream full start and end, and fails unless each carries text. The sweep
// above once looked for the word "lazy", which the stream never holds
// whole (its deltas are three runes long), and so swept every byte of the
// opening instead of the middle.
func middleEvents(t *testing.T, family streamFamily, full []byte, n int) (from, to int) {
	t.Helper()
	sep := []byte("\n\n")
	from = bytes.LastIndex(full[:len(full)/2], sep) + len(sep)
	to = from
	for range n {
		i := bytes.Index(full[to:], sep)
		if i < 0 {
			t.Fatalf("fewer than %d events after the middle of %q", n, full)
		}
		to += i + len(sep)
	}
	text := []byte(textMember(family))
	if bytes.Count(full[from:to], text) != n || bytes.Contains(full[from:to], append(text, '"')) {
		t.Fatalf("the middle events do not each carry text: %q", full[from:to])
	}
	return from, to
}

// fetchOn sends a streamed request of family through client and reads the
// reply.
func fetchOn(t *testing.T, client *http.Client, url string, family streamFamily) fetched {
	t.Helper()
	path, body := "/v1/chat/completions", `{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	if family == streamAnthropic {
		path, body = "/v1/messages", `{"model":"claude-x","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
	}
	resp, err := client.Do(post(t, url+path, body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fetched{b, err}
}

type fetched struct {
	body []byte
	err  error
}

func fetch(t *testing.T, url string, family streamFamily, events *[]ContinuationEvent) fetched {
	t.Helper()
	opts := []Option{WithStreamContinuation(Continuation{})}
	if events != nil {
		opts = append(opts, WithOnContinuation(func(e ContinuationEvent) { *events = append(*events, e) }))
	}
	_, c := testTransport(t, newFakeClock(), opts...)
	return fetchOn(t, c, url, family)
}

func fetchWith(t *testing.T, url string, family streamFamily, body string, opts ...Option) (fetched, []ContinuationEvent) {
	t.Helper()
	path := "/v1/chat/completions"
	if family == streamAnthropic {
		path = "/v1/messages"
	}
	var events []ContinuationEvent
	all := append([]Option{WithStreamContinuation(Continuation{}), WithOnContinuation(func(e ContinuationEvent) { events = append(events, e) })}, opts...)
	_, c := testTransport(t, newFakeClock(), all...)
	resp, err := c.Do(post(t, url+path, body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fetched{b, err}, events
}

const (
	chatBody      = `{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]`
	anthropicBody = `{"model":"claude-x","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]`
)

// A stream cut during a tool call is not continued: a tool call cannot be
// finished by prefill. It ends as it would without continuation.
func TestStreamContinuationRefusesAToolCall(t *testing.T) {
	for _, family := range []streamFamily{streamAnthropic, streamOpenAIChat} {
		c := newContinuer(t, family, continuedText, 900, 0)
		c.tool = true
		body := chatBody + "}"
		if family == streamAnthropic {
			body = anthropicBody + "}"
		}
		got, events := fetchWith(t, c.URL, family, body)
		if got.err == nil || len(events) != 1 || events[0].Outcome != RefusedToolCall || len(c.bodies) != 1 {
			t.Fatalf("%v: err %v, events %+v, %d requests: want the cut, refused, nothing resent", family, got.err, events, len(c.bodies))
		}
	}
}

// A request whose options a seam could break is not continued, and says
// why.
func TestStreamContinuationRefusesWhatASeamCouldBreak(t *testing.T) {
	for _, c := range []struct {
		family streamFamily
		extra  string
		cause  string
	}{
		{streamOpenAIChat, `,"n":2`, "n above 1"},
		{streamOpenAIChat, `,"logprobs":true`, "logprobs"},
		{streamOpenAIChat, `,"stop":["\n\n"]`, "stop sequences"},
		{streamOpenAIChat, `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}`, "structured output"},
		{streamOpenAIChat, `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"properties":{"text":{"type":"string"}}}}}`, "structured output"},
		{streamAnthropic, `,"output_format":{"type":"json_schema","schema":{}}`, "structured output"},
		{streamAnthropic, `,"thinking":{"type":"enabled","budget_tokens":1024}`, "extended thinking"},
		{streamAnthropic, `,"stop_sequences":["END"]`, "stop sequences"},
	} {
		srv := newContinuer(t, c.family, continuedText, 900, 0)
		base := chatBody
		if c.family == streamAnthropic {
			base = anthropicBody
		}
		got, events := fetchWith(t, srv.URL, c.family, base+c.extra+"}")
		if got.err == nil || len(events) != 1 || events[0].Outcome != Refused || !strings.Contains(events[0].Cause, c.cause) || len(srv.bodies) != 1 {
			t.Fatalf("%s: err %v, events %+v, %d requests", c.cause, got.err, events, len(srv.bodies))
		}
	}
}

// The cap bounds the continuations of one stream; each counts as an
// attempt.
func TestStreamContinuationCapAndAttempts(t *testing.T) {
	c := newContinuer(t, streamOpenAIChat, continuedText, 900, 0)
	c.cutsLeft = 2 // the continuation is cut too
	got, events := fetchWith(t, c.URL, streamOpenAIChat, chatBody+"}")
	if got.err == nil || len(events) != 2 || events[0].Outcome != Continued || events[1].Outcome != OverCap || len(c.bodies) != 2 {
		t.Fatalf("err %v, events %+v, %d requests: want one continuation, then over the cap", got.err, events, len(c.bodies))
	}
	c = newContinuer(t, streamOpenAIChat, continuedText, 900, 0)
	c.cutsLeft = 2
	got, events = fetchWith(t, c.URL, streamOpenAIChat, chatBody+"}", WithStreamContinuation(Continuation{Max: 2}))
	if r := readStream(t, streamOpenAIChat, got.body); got.err != nil || len(events) != 2 || r.text != continuedText || r.seams != 2 {
		t.Fatalf("Max 2: err %v, events %+v, text %q", got.err, events, r.text)
	}
	// With one attempt allowed, there is none left for a continuation.
	c = newContinuer(t, streamOpenAIChat, continuedText, 900, 0)
	got, events = fetchWith(t, c.URL, streamOpenAIChat, chatBody+"}", WithPolicy(Policy{MaxAttempts: 1}))
	if got.err == nil || len(events) != 1 || events[0].Outcome != Refused || !strings.Contains(events[0].Cause, "attempts") {
		t.Fatalf("MaxAttempts 1: err %v, events %+v", got.err, events)
	}
}

// What a continuation sends: Anthropic's prefill without trailing white
// space; OpenAI's instruction form by default, or the prefix or vLLM form.
func TestStreamContinuationRequestForms(t *testing.T) {
	const text = "Hi you. Go on, then!"
	c := newContinuer(t, streamAnthropic, text, 1<<30, 0)
	full := fetch(t, c.URL, streamAnthropic, nil).body
	// Cut right after the first delta, "Hi ", is delivered.
	at := bytes.Index(full, []byte(`"text":"Hi "`))
	if at < 0 {
		t.Fatalf("no delta %q in %s", "Hi ", full)
	}
	at += bytes.Index(full[at:], []byte("\n\n")) + 2
	c = newContinuer(t, streamAnthropic, text, at, 0)
	got, _ := fetchWith(t, c.URL, streamAnthropic, anthropicBody+"}")
	if r := readStream(t, streamAnthropic, got.body); r.text != text {
		t.Fatalf("text %q", r.text)
	}
	msgs := c.bodies[1]["messages"].([]any)
	last := msgs[len(msgs)-1].(map[string]any)
	if last["role"] != "assistant" || last["content"] != "Hi" {
		t.Fatalf("prefill %+v: want the delivered text without its trailing space", last)
	}
	for _, form := range []string{"", "prefix", "vllm"} {
		c := newContinuer(t, streamOpenAIChat, continuedText, 900, 0)
		got, events := fetchWith(t, c.URL, streamOpenAIChat, chatBody+"}", WithStreamContinuation(Continuation{OpenAIPrefix: form}))
		if len(events) != 1 || events[0].Outcome != Continued || got.err != nil {
			t.Fatalf("form %q: events %+v, err %v", form, events, got.err)
		}
		b := c.bodies[1]
		msgs := b["messages"].([]any)
		last := msgs[len(msgs)-1].(map[string]any)
		switch form {
		case "":
			if last["role"] != "user" || msgs[len(msgs)-2].(map[string]any)["role"] != "assistant" {
				t.Fatalf("instruction form: %+v", msgs)
			}
		case "prefix":
			if last["role"] != "assistant" || last["prefix"] != true {
				t.Fatalf("prefix form: %+v", last)
			}
		case "vllm":
			if last["role"] != "assistant" || b["continue_final_message"] != true || b["add_generation_prompt"] != false {
				t.Fatalf("vllm form: %+v", b)
			}
		}
	}
}

// An in-stream error that names a passing state after output is finished
// by a continuation; the error event never reaches the caller.
func TestStreamContinuationAfterAnInStreamError(t *testing.T) {
	var n int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		if first {
			_, _ = io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"content\":[]}}\n\n"+
				"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"+
				"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \"}}\n\n"+
				"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n")
			return
		}
		if !bytes.Contains(raw, []byte(`"content":"Hello"`)) {
			http.Error(w, "no prefill", 400)
			return
		}
		_, _ = io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m2\",\"content\":[]}}\n\n"+
			"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"+
			"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" world\"}}\n\n"+
			"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"+
			"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n"+
			"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
	}))
	defer srv.Close()
	got, events := fetchWith(t, srv.URL, streamAnthropic, anthropicBody+"}")
	r := readStream(t, streamAnthropic, got.body)
	if got.err != nil || r.text != "Hello world" || r.counts["error"] != 0 || len(events) != 1 || events[0].Outcome != Continued {
		t.Fatalf("err %v, text %q, counts %v, events %+v", got.err, r.text, r.counts, events)
	}
}

// The seam rule, by itself.
func TestSeamCutRemovesOnlyARepeat(t *testing.T) {
	for _, c := range []struct {
		delivered, cont, trimmed string
		want                     int
	}{
		{"The quick brown fox", " jumps", "", 0},
		{"The quick brown fox", "brown fox jumps", "", len("brown fox")},
		{"The quick brown fox", "fox jumps", "", 0}, // 3 bytes: may be the model's own
		{"Hi", "Hi there", "", 2},                   // the whole delivered text again
		{"dog, ", " then", " ", 1},                  // the trimmed space again
		{"dog,\n\n", "\nNext", "\n\n", 1},
		{"naïve café ", "café au lait", "", 0},
		{"a naïve café", "naïve café au lait", "", len("naïve café")},
	} {
		if got := seamCut([]byte(c.delivered), []byte(c.cont), c.trimmed, len(c.delivered)); got != c.want {
			t.Errorf("seamCut(%q, %q, %q) = %d, want %d", c.delivered, c.cont, c.trimmed, got, c.want)
		}
	}
}

// A continuation after failover goes where the failover rules send it, and
// names its target: in the event, and in the X-Llmretry-Target trailer.
func TestStreamContinuationAfterFailoverNamesItsTarget(t *testing.T) {
	a := newContinuer(t, streamOpenAIChat, continuedText, 900, 0)
	a.cutsLeft = 100 // a cuts every stream
	b := newContinuer(t, streamOpenAIChat, continuedText, 0, 0)
	b.cutsLeft = 0
	var events []ContinuationEvent
	_, c := failoverTransport(t, newFakeClock(), Failover{Outliers: Outliers{Failures: 1},
		Targets: []Target{{Name: "a", BaseURL: a.URL + "/v1"}, {Name: "b", BaseURL: b.URL + "/v1"}}},
		WithStreamContinuation(Continuation{}), WithOnContinuation(func(e ContinuationEvent) { events = append(events, e) }))
	resp, err := c.Do(post(t, a.URL+"/v1/chat/completions", chatBody+"}"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := readStream(t, streamOpenAIChat, body)
	if err != nil || r.text != continuedText || len(events) != 1 || events[0].Target != "a" || events[0].NextTarget != "b" {
		t.Fatalf("err %v, text %q, events %+v: want a's cut stream finished on b", err, r.text, events)
	}
	if resp.Header.Get(TargetHeader) != "a" || resp.Trailer.Get(TargetHeader) != "b" {
		t.Fatalf("target header %q, trailer %q: want a, then b", resp.Header.Get(TargetHeader), resp.Trailer.Get(TargetHeader))
	}
}

// A stream that goes silent past the idle timeout after its first output
// is finished by a continuation.
func TestStreamContinuationAfterTheIdleTimeout(t *testing.T) {
	release := make(chan struct{})
	var n int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		chunk := func(s string) {
			_, _ = fmt.Fprintf(w, "data: {\"id\":\"c%d\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", n, s)
		}
		if first {
			chunk("Hello, ")
			w.(http.Flusher).Flush()
			<-release // silent
			return
		}
		chunk("world.")
		_, _ = io.WriteString(w, "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
	}))
	defer srv.Close()
	defer close(release) // before the server's Close, which waits for its handlers
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	var events []ContinuationEvent
	tr := NewTransport(base, WithIdleTimeout(20*time.Millisecond), WithStreamContinuation(Continuation{}),
		WithOnContinuation(func(e ContinuationEvent) { events = append(events, e) }))
	resp, err := (&http.Client{Transport: tr}).Do(post(t, srv.URL+"/v1/chat/completions", chatBody+"}"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if r := readStream(t, streamOpenAIChat, body); err != nil || r.text != "Hello, world." || len(events) != 1 || events[0].Cause != "idle timeout" {
		t.Fatalf("err %v, text %q, events %+v", err, r.text, events)
	}
}

// serveEvents answers the first request with first (then cuts the
// connection), and every later one with later.
func serveEvents(t *testing.T, first, later string) (*httptest.Server, *[]string) {
	return serveEventsEnding(t, first, later, true)
}

// serveEventsEnding is serveEvents; cut false ends the first answer
// cleanly instead, as a server that closes its stream early does.
func serveEventsEnding(t *testing.T, first, later string, cut bool) (*httptest.Server, *[]string) {
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(raw))
		n := len(bodies)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		if n == 1 {
			_, _ = io.WriteString(w, first)
			w.(http.Flusher).Flush()
			if !cut {
				return
			}
			panic(http.ErrAbortHandler)
		}
		if strings.HasPrefix(later, "400 ") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			_, _ = io.WriteString(w, later[4:])
			return
		}
		_, _ = io.WriteString(w, later)
	}))
	t.Cleanup(srv.Close)
	return srv, &bodies
}

const chunkUsage = `,"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}`

// A reply is whole only when it says so with a finish on every choice (or a
// stop reason): usage in every chunk (vLLM's continuous usage), or one
// choice of two finished, is not a whole reply, and is never completed.
func TestStreamContinuationNeverCompletesAReplyThatWasNotWhole(t *testing.T) {
	first := "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]" + chunkUsage + "}\n\n" +
		"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"}}]" + chunkUsage + "}\n\n"
	later := "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"world\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
	srv, _ := serveEvents(t, first, later)
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+"}")
	if r := readStream(t, streamOpenAIChat, got.body); len(events) != 1 || events[0].Outcome != Continued || r.text != "Hello world" {
		t.Fatalf("usage in every chunk: events %+v, text %q", events, r.text)
	}
	two := "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"}},{\"index\":1,\"delta\":{\"content\":\"B\"}}]}\n\n" +
		"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
	srv, bodies := serveEvents(t, two, later)
	got, events = fetchWith(t, srv.URL, streamOpenAIChat, chatBody+`,"n":2}`)
	if got.err == nil || len(events) != 1 || events[0].Outcome == Completed || len(*bodies) != 1 {
		t.Fatalf("n 2, one choice finished: err %v, events %+v: the cut must reach the caller", got.err, events)
	}
}

// An in-stream error after output that waiting won't fix (a moderation
// refusal) is not continued: the caller gets it, and a clean end.
func TestStreamContinuationPassesAnErrorThatDoesNotPass(t *testing.T) {
	first := "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"}}]}\n\n" +
		"data: {\"error\":{\"code\":403,\"type\":\"moderation\",\"message\":\"flagged\"}}\n\n"
	srv, bodies := serveEvents(t, first, "never")
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+"}")
	if got.err != nil || !bytes.Contains(got.body, []byte("moderation")) || len(events) != 1 || events[0].Outcome != Refused || len(*bodies) != 1 {
		t.Fatalf("err %v, body %q, events %+v, %d requests", got.err, got.body, events, len(*bodies))
	}
}

// A model that takes no prefill (Anthropic's newer ones answer 400 naming
// it) is asked again in the instruction form.
func TestStreamContinuationFallsBackWhenPrefillIsRefused(t *testing.T) {
	first := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"content\":[]}}\n\n" +
		"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n"
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(raw))
		n := len(bodies)
		mu.Unlock()
		switch {
		case n == 1:
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, first)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		case !strings.Contains(string(raw), continueInstruction): // a prefill
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"type":"error","error":{"type":"invalid_request_error","message":"This model does not support assistant message prefill. The conversation must end with a user message."}}`)
		default:
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m2\",\"content\":[]}}\n\n"+
				"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"+
				"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", world\"}}\n\n"+
				"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"+
				"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n"+
				"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
		}
	}))
	defer srv.Close()
	got, events := fetchWith(t, srv.URL, streamAnthropic, anthropicBody+"}")
	r := readStream(t, streamAnthropic, got.body)
	if got.err != nil || r.text != "Hello, world" || len(events) != 1 || events[0].Outcome != Continued || len(bodies) != 3 {
		t.Fatalf("err %v, text %q, events %+v, %d requests", got.err, r.text, events, len(bodies))
	}
}

// A stream cut after a tool call and then an overload ends as the caller
// would see it without continuation: no read error of the library's own.
func TestStreamContinuationRefusalEndsCleanly(t *testing.T) {
	first := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"content\":[]}}\n\n" +
		"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}}\n\n" +
		"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
	srv, _ := serveEvents(t, first, "never")
	got, events := fetchWith(t, srv.URL, streamAnthropic, anthropicBody+"}")
	if got.err != nil || !bytes.Contains(got.body, []byte("overloaded_error")) || len(events) != 1 || events[0].Outcome != RefusedToolCall {
		t.Fatalf("err %v, body %q, events %+v", got.err, got.body, events)
	}
}
