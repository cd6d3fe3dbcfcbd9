package llmretry

import (
	"encoding/json"
	"strings"
	"testing"
)

// Usage and max_tokens across a seam (issue 21, Part 2 item 3): the output a
// broken stream had reported lowers the continuation's max_tokens and is
// added to the usage the continuation reports; what no stream reported is
// never invented.

// usageOf returns the usage objects of a stream's events, in order: an
// OpenAI chunk's "usage", an Anthropic message_delta's "usage".
func usageOf(t *testing.T, body []byte) []map[string]int {
	t.Helper()
	var out []map[string]int
	s := sseScanner{}
	for p := body; len(p) > 0; {
		ev, n, ok := s.scan(p)
		p = p[n:]
		if !ok {
			break
		}
		if isDone(ev.data) {
			continue
		}
		var m struct {
			Type  string         `json:"type"`
			Usage map[string]int `json:"usage"`
		}
		if err := json.Unmarshal(ev.data, &m); err != nil {
			t.Fatalf("an event is not JSON: %q", ev.data)
		}
		if m.Usage != nil && (m.Type == "" || m.Type == "message_delta") {
			out = append(out, m.Usage)
		}
	}
	return out
}

// sentNumber reads a top-level number of a request body as sent.
func sentNumber(t *testing.T, body, key string) int {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("request body %q: %v", body, err)
	}
	n, ok := m[key].(float64)
	if !ok {
		return -1
	}
	return int(n)
}

func chatChunk(content, usage string) string {
	c := `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-x","choices":[{"index":0,"delta":{"content":` + content + `},"finish_reason":null}]`
	if usage != "" {
		c += `,"usage":` + usage
	}
	return c + "}\n\n"
}

// vLLM with continuous usage stats reports usage in every chunk: the
// output it reported lowers both max_tokens and max_completion_tokens, and
// is added to the continuation's completion_tokens and total_tokens; the
// prompt tokens are the continuation's own, and the event carries what the
// broken stream had reported.
func TestStreamContinuationLowersMaxTokensAndSumsUsageOpenAI(t *testing.T) {
	first := chatChunk(`""`, `{"prompt_tokens":5,"completion_tokens":0,"total_tokens":5}`) +
		chatChunk(`"Hello "`, `{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}`)
	later := `data: {"id":"c2","created":2,"model":"gpt-x","choices":[{"index":0,"delta":{"content":"world"},"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}` + "\n\n" +
		`data: {"id":"c2","created":2,"model":"gpt-x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}` + "\n\n" +
		`data: {"id":"c2","created":2,"model":"gpt-x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}` + "\n\ndata: [DONE]\n\n"
	srv, bodies := serveEvents(t, first, later)
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+`,"max_tokens":100,"max_completion_tokens":50}`)
	r := readStream(t, streamOpenAIChat, got.body)
	if got.err != nil || r.text != "Hello world" || len(events) != 1 || events[0].Outcome != Continued || len(*bodies) != 2 {
		t.Fatalf("err %v, text %q, events %+v, %d requests", got.err, r.text, events, len(*bodies))
	}
	if mt, mct := sentNumber(t, (*bodies)[1], "max_tokens"), sentNumber(t, (*bodies)[1], "max_completion_tokens"); mt != 97 || mct != 47 {
		t.Fatalf("continuation sent max_tokens %d, max_completion_tokens %d: want 97 and 47 (3 delivered)", mt, mct)
	}
	if events[0].OutputTokens != 3 || events[0].PromptTokens != 5 {
		t.Fatalf("event %+v: want the 3 output and 5 prompt tokens the broken stream reported", events[0])
	}
	us := usageOf(t, got.body)
	last := us[len(us)-1]
	if last["completion_tokens"] != 7 || last["total_tokens"] != 19 || last["prompt_tokens"] != 12 {
		t.Fatalf("usage %v: want completion 4+3, total 16+3, the continuation's prompt", us)
	}
	for _, u := range us[2:] { // every usage after the seam is summed
		if u["total_tokens"] != u["prompt_tokens"]+u["completion_tokens"] {
			t.Fatalf("usage %v: a chunk after the seam does not add up", us)
		}
	}
}

// Anthropic reports output tokens in message_start (and the final
// message_delta): that figure lowers max_tokens and is added to the
// continuation's final output_tokens.
func TestStreamContinuationLowersMaxTokensAndSumsUsageAnthropic(t *testing.T) {
	first := `event: message_start` + "\n" + `data: {"type":"message_start","message":{"id":"m1","content":[],"usage":{"input_tokens":5,"output_tokens":3}}}` + "\n\n" +
		"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \"}}\n\n"
	later := `event: message_start` + "\n" + `data: {"type":"message_start","message":{"id":"m2","content":[],"usage":{"input_tokens":9,"output_tokens":1}}}` + "\n\n" +
		"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"world\"}}\n\n" +
		"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":4}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
	srv, bodies := serveEvents(t, first, later)
	got, events := fetchWith(t, srv.URL, streamAnthropic, anthropicBody+"}")
	r := readStream(t, streamAnthropic, got.body)
	if got.err != nil || r.text != "Hello world" || len(events) != 1 || events[0].Outcome != Continued {
		t.Fatalf("err %v, text %q, events %+v", got.err, r.text, events)
	}
	if mt := sentNumber(t, (*bodies)[1], "max_tokens"); mt != 97 {
		t.Fatalf("continuation sent max_tokens %d: want 100-3", mt)
	}
	if us := usageOf(t, got.body); len(us) != 1 || us[0]["output_tokens"] != 7 {
		t.Fatalf("message_delta usage %v: want output_tokens 4+3", us)
	}
	if events[0].OutputTokens != 3 || events[0].PromptTokens != 5 {
		t.Fatalf("event %+v: want 3 output and 5 input tokens reported", events[0])
	}
}

// A stream that reported no usage leaves max_tokens and the continuation's
// usage as they are: nothing is guessed.
func TestStreamContinuationInventsNoUsage(t *testing.T) {
	first := chatChunk(`"Hello "`, "")
	later := chatChunk(`"world"`, "") +
		`data: {"id":"c2","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\n" +
		`data: {"id":"c2","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}` + "\n\ndata: [DONE]\n\n"
	srv, bodies := serveEvents(t, first, later)
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+`,"max_tokens":100,"stream_options":{"include_usage":true}}`)
	if len(events) != 1 || events[0].Outcome != Continued || got.err != nil {
		t.Fatalf("err %v, events %+v", got.err, events)
	}
	if mt := sentNumber(t, (*bodies)[1], "max_tokens"); mt != 100 {
		t.Fatalf("max_tokens %d: nothing was reported, so nothing is subtracted", mt)
	}
	if us := usageOf(t, got.body); len(us) != 1 || us[0]["completion_tokens"] != 4 || us[0]["total_tokens"] != 16 {
		t.Fatalf("usage %v: want the continuation's own", us)
	}
	if events[0].OutputTokens != 0 || events[0].PromptTokens != 0 {
		t.Fatalf("event %+v: nothing was reported", events[0])
	}
}

// When the output already delivered used up max_tokens, nothing is left
// for a continuation: it is not sent, and the event says why. One token
// left is enough to be sent.
func TestStreamContinuationRefusedWhenNoTokensAreLeft(t *testing.T) {
	first := chatChunk(`"Hello "`, `{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}`)
	rest := chatChunk(`"world"`, "") + `data: {"id":"c2","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}` + "\n\ndata: [DONE]\n\n"
	srv, bodies := serveEvents(t, first, rest)
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+`,"max_completion_tokens":3}`)
	if got.err == nil || len(events) != 1 || events[0].Outcome != Refused || !strings.Contains(events[0].Cause, "max_completion_tokens") || len(*bodies) != 1 {
		t.Fatalf("err %v, events %+v, %d requests: want the cut, refused, nothing sent", got.err, events, len(*bodies))
	}
	srv, bodies = serveEvents(t, first, rest)
	_, events = fetchWith(t, srv.URL, streamOpenAIChat, chatBody+`,"max_tokens":4}`)
	if len(events) != 1 || events[0].Outcome != Continued || sentNumber(t, (*bodies)[1], "max_tokens") != 1 {
		t.Fatalf("events %+v, bodies %q: want a continuation with max_tokens 1", events, *bodies)
	}
}

// A server that sends usage in every chunk (vLLM's continuous usage) does
// not end the seam's hold early: a sentence the model starts again is
// still found and cut, and the held chunks' usage is not lost.
func TestStreamContinuationSeamHoldsThroughUsageInEveryChunk(t *testing.T) {
	first := chatChunk(`"The quick brown "`, `{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}`)
	later := chatChunk(`"The "`, `{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}`) +
		chatChunk(`"quick "`, `{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}`) +
		chatChunk(`"brown fox"`, `{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}`) +
		`data: {"id":"c2","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}` + "\n\ndata: [DONE]\n\n"
	srv, _ := serveEvents(t, first, later)
	got, events := fetchWith(t, srv.URL, streamOpenAIChat, chatBody+"}")
	r := readStream(t, streamOpenAIChat, got.body)
	if got.err != nil || r.text != "The quick brown fox" || len(events) != 1 {
		t.Fatalf("err %v, text %q, events %+v: the restarted sentence must be cut at the seam", got.err, r.text, events)
	}
	us := usageOf(t, got.body)
	if last := us[len(us)-1]; last["completion_tokens"] != 6 || last["total_tokens"] != 15 {
		t.Fatalf("usage %v", us)
	}
}

// Whatever a stream sends, tracking it and splicing a continuation's
// events never panics, and lowering a request's limits never does either.
func FuzzContinuationSplice(f *testing.F) {
	for _, s := range []string{
		`{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":{"completion_tokens":3,"total_tokens":4}}`,
		`{"type":"message_start","message":{"usage":{"input_tokens":5,"output_tokens":3}}}`,
		`{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":-1}}`,
		`{"type":"content_block_start","index":99999999999999999999,"content_block":{"type":"text","text":"\ud800"}}`,
		`{"choices":[],"usage":{"completion_tokens":"x"}}`, `[DONE]`, `{"usage":[1,2]}`, `not json`,
	} {
		f.Add([]byte("content_block_delta"), []byte(s), []byte(`{"max_tokens":4,"max_completion_tokens":1e3}`))
	}
	f.Fuzz(func(t *testing.T, name, data, body []byte) {
		for _, family := range []streamFamily{streamAnthropic, streamOpenAIChat} {
			d := newDelivery(family)
			ev := sseEvent{name: name, data: data}
			d.observe(ev)
			d.observe(ev)
			s := newSplice(&d, " ")
			_ = s.rewrite(ev, data)
			_ = s.rewrite(ev, data)
			_ = s.release(nil)
			var m map[string]json.RawMessage
			if json.Unmarshal(body, &m) == nil && m != nil {
				_ = lowerMaxTokens(m, family, d.outTokens)
			}
		}
	})
}
