package bench

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/llmretry/llmretry"
)

// reply4K is a 4 KiB JSON chat completion.
var reply4K = func() []byte {
	head := `{"id":"chatcmpl-bench","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"`
	tail := `"},"finish_reason":"stop"}]}`
	return []byte(head + strings.Repeat("x", 4096-len(head)-len(tail)) + tail)
}()

var requestJSON = []byte(`{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello."}]}`)

func jsonServer(b *testing.B) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(reply4K)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// transports are the three contenders, each over its own http.Transport.
func transports(b *testing.B) map[string]http.RoundTripper {
	bare := &http.Transport{MaxIdleConnsPerHost: 64}
	under := &http.Transport{MaxIdleConnsPerHost: 64}
	rc := retryablehttp.NewClient()
	rc.Logger = nil
	rc.HTTPClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(func() {
		bare.CloseIdleConnections()
		under.CloseIdleConnections()
		rc.HTTPClient.CloseIdleConnections()
	})
	return map[string]http.RoundTripper{
		"bare":          bare,
		"llmretry":      llmretry.NewTransport(under),
		"retryablehttp": &retryablehttp.RoundTripper{Client: rc},
	}
}

var order = []string{"bare", "llmretry", "retryablehttp"}

// BenchmarkSuccessPath: one POST answered 200 with a 4 KiB JSON body, read
// whole, on loopback.
func BenchmarkSuccessPath(b *testing.B) {
	srv := jsonServer(b)
	rts := transports(b)
	for _, name := range order {
		client := &http.Client{Transport: rts[name]}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", bytes.NewReader(requestJSON))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// zeros is an endless reader of zero bytes that allocates nothing.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// BenchmarkLargeBody: a 64 MiB streamed request body with GetBody. B/op
// shows whether the body is held in memory.
func BenchmarkLargeBody(b *testing.B) {
	const size = 64 << 20
	srv := jsonServer(b)
	rts := transports(b)
	for _, name := range order {
		client := &http.Client{Transport: rts[name]}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(size)
			for b.Loop() {
				body := func() (io.ReadCloser, error) { return io.NopCloser(io.LimitReader(zeros{}, size)), nil }
				rc, _ := body()
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/files", rc)
				req.GetBody = body
				req.ContentLength = size
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}

// BenchmarkTimeToFirstEvent: from sending a streamed request to reading its
// first SSE event, through the Transport's first-event commit point and
// directly.
func BenchmarkTimeToFirstEvent(b *testing.B) {
	first := "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, first)
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n")
	}))
	b.Cleanup(srv.Close)
	rts := transports(b)
	for _, name := range []string{"bare", "llmretry"} {
		client := &http.Client{Transport: rts[name]}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", bytes.NewReader(requestJSON))
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				br := bufio.NewReader(resp.Body)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						b.Fatal(err)
					}
					if line == "\n" {
						break
					}
				}
				_, _ = io.Copy(io.Discard, br)
				resp.Body.Close()
			}
		})
	}
}
