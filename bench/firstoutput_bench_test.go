package bench

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// An Anthropic stream as it opens: three events that carry nothing, then
// its first output.
var anthropicOpening = []string{
	"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
	"event: ping\ndata: {\"type\": \"ping\"}\n\n",
}

const (
	anthropicFirstDelta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n"
	anthropicRest       = "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
)

var anthropicRequest = []byte(`{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello."}]}`)

// BenchmarkTimeToFirstOutput: from sending a streamed Anthropic request to
// reading its first content_block_delta, through the Transport (which
// holds the stream until that delta: its commit point) and directly.
// "flushed together": the three opening events and the delta leave the
// server in one write; "event by event": each is flushed on its own, as a
// server that sends message_start before it has output does.
func BenchmarkTimeToFirstOutput(b *testing.B) {
	for _, shape := range []string{"flushed together", "event by event"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/event-stream")
			for _, ev := range append(anthropicOpening[:len(anthropicOpening):len(anthropicOpening)], anthropicFirstDelta) {
				_, _ = io.WriteString(w, ev)
				if shape == "event by event" {
					w.(http.Flusher).Flush()
				}
			}
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, anthropicRest)
		}))
		b.Cleanup(srv.Close)
		rts := transports(b)
		for _, name := range []string{"bare", "llmretry"} {
			client := &http.Client{Transport: rts[name]}
			b.Run(strings.ReplaceAll(shape, " ", "_")+"/"+name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/messages", bytes.NewReader(anthropicRequest))
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					br := bufio.NewReader(resp.Body)
					readToFirstDelta(b, br)
					_, _ = io.Copy(io.Discard, br)
					resp.Body.Close()
				}
			})
		}
	}
}

// readToFirstDelta reads events up to the end of the first
// content_block_delta.
func readToFirstDelta(b *testing.B, br *bufio.Reader) {
	inDelta := false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		switch {
		case bytes.Equal(line, []byte("event: content_block_delta\n")):
			inDelta = true
		case len(line) == 1 && inDelta:
			return
		}
	}
}
