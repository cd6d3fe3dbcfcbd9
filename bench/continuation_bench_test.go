package bench

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/llmretry/llmretry"
)

// What stream continuation costs a stream that never breaks: its events
// are passed whole, and the delivered text, tool calls and thinking are
// tracked as they pass. A stream of 1,000 OpenAI chat chunks (or Anthropic
// text deltas) is served from memory, read whole, through a Transport with
// continuation off and on. The figure to read is the difference per event;
// the bytes beyond the delivered text are what tracking holds.

// longStream is a whole stream of n text deltas of the family.
func longStream(family string, n int) []byte {
	var b strings.Builder
	if family == "anthropic" {
		b.WriteString("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_b\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n")
		b.WriteString("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n")
		for i := range n {
			fmt.Fprintf(&b, "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"word%d \"}}\n\n", i%10)
		}
		b.WriteString("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n")
		b.WriteString("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1000}}\n\n")
		b.WriteString("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
		return []byte(b.String())
	}
	b.WriteString("data: {\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n")
	for i := range n {
		fmt.Fprintf(&b, "data: {\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"word%d \"},\"finish_reason\":null}]}\n\n", i%10)
	}
	b.WriteString("data: {\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
	return []byte(b.String())
}

// memoryStream answers every request with body, in reads of 512 bytes (as
// a network delivers a stream: a few events at a time).
type memoryStream struct{ body []byte }

func (m memoryStream) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}},
		Body: io.NopCloser(&chunked{b: m.body}), Request: r}, nil
}

type chunked struct{ b []byte }

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 512)], c.b)
	c.b = c.b[n:]
	return n, nil
}

// BenchmarkContinuationTracking: a 1,000-event stream read whole, with
// continuation off and on. ns/event and allocs/event are reported.
func BenchmarkContinuationTracking(b *testing.B) {
	const events = 1000
	for _, family := range []string{"openai", "anthropic"} {
		body := longStream(family, events)
		path, req := "/v1/chat/completions", `{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]}`
		if family == "anthropic" {
			path, req = "/v1/messages", `{"model":"claude-x","max_tokens":2000,"stream":true,"messages":[{"role":"user","content":"hi"}]}`
		}
		for _, mode := range []string{"off", "on"} {
			opts := []llmretry.Option{llmretry.WithBudget(nil)}
			if mode == "on" {
				opts = append(opts, llmretry.WithStreamContinuation(llmretry.Continuation{}))
			}
			tr := llmretry.NewTransport(memoryStream{body}, opts...)
			b.Run(family+"/continuation_"+mode, func(b *testing.B) {
				b.ReportAllocs()
				buf := make([]byte, 4096)
				for b.Loop() {
					r, _ := http.NewRequest("POST", "https://api.test"+path, bytes.NewReader([]byte(req)))
					resp, err := tr.RoundTrip(r)
					if err != nil {
						b.Fatal(err)
					}
					n := 0
					for {
						k, err := resp.Body.Read(buf)
						n += k
						if err != nil {
							break
						}
					}
					resp.Body.Close()
					if n != len(body) {
						b.Fatalf("read %d bytes of %d", n, len(body))
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
			})
		}
	}
}

// BenchmarkContinuationHeld: what an open stream holds with continuation
// on, beyond what it holds with it off: 200 streams read to their middle
// and held open at once; reported per stream, beside the text delivered.
func BenchmarkContinuationHeld(b *testing.B) {
	const streams, events = 200, 1000
	body := longStream("openai", events)
	held := func(on bool) (perStream, text float64) {
		opts := []llmretry.Option{llmretry.WithBudget(nil)}
		if on {
			opts = append(opts, llmretry.WithStreamContinuation(llmretry.Continuation{}))
		}
		tr := llmretry.NewTransport(memoryStream{body}, opts...)
		var open []io.ReadCloser
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		buf := make([]byte, 4096)
		read := 0
		for range streams {
			r, _ := http.NewRequest("POST", "https://api.test/v1/chat/completions",
				strings.NewReader(`{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
			resp, err := tr.RoundTrip(r)
			if err != nil {
				b.Fatal(err)
			}
			for n := 0; n < len(body)/2; {
				k, err := resp.Body.Read(buf)
				n += k
				read += k
				if err != nil {
					b.Fatal(err)
				}
			}
			open = append(open, resp.Body)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		for _, rc := range open {
			rc.Close()
		}
		return float64(after.HeapAlloc-before.HeapAlloc) / streams, float64(read) / streams / float64(len(body)) * float64(events*6)
	}
	for b.Loop() {
		off, _ := held(false)
		on, text := held(true)
		b.ReportMetric(on-off, "B-held-beyond-off/stream")
		b.ReportMetric(text, "B-text-delivered/stream")
	}
}
