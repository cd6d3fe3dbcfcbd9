package proxy

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
)

// An open stream holds its copy buffer between events, so ten thousand of
// them held ten thousand 4 KiB buffers. A stream now copies through 1 KiB,
// a whole reply still through 4 KiB (one read for a reply that size), and
// an event larger than the stream's buffer still arrives whole.
func TestStreamsCopyThroughSmallBuffersAndRepliesThroughLarge(t *testing.T) {
	bigEvent := "data: " + strings.Repeat("x", 3000) + "\n\n"
	for _, tc := range []struct {
		contentType, body string
		want              int
	}{
		{"text/event-stream", "data: one\n\n" + bigEvent + "data: [DONE]\n\n", streamBufferSize},
		{"application/json", `{"choices":[{"message":{"content":"` + strings.Repeat("y", 3000) + `"}}]}`, replyBufferSize},
	} {
		t.Run(tc.contentType, func(t *testing.T) {
			reads := &readSizes{}
			url, _, _ := start(t, http.NotFoundHandler(), func(c *Config) {
				c.Base = roundTripFunc(func(r *http.Request) (*http.Response, error) {
					return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {tc.contentType}},
						Body: reads.of(tc.body), ContentLength: -1, Request: r}, nil
				})
			})
			resp, err := client(t).Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != tc.body {
				t.Fatalf("the client got %d bytes, not the %d sent", len(b), len(tc.body))
			}
			// ReverseProxy's copy makes the last reads (llmretry's look at
			// a stream's first event comes before, through its own buffer).
			sizes := reads.all()
			if last := sizes[len(sizes)-1]; last != tc.want {
				t.Fatalf("copied through reads of %v bytes, want the last of %d", sizes, tc.want)
			}
		})
	}
}

// readSizes records the size of every read of a body.
type readSizes struct {
	mu    sync.Mutex
	sizes []int
}

func (r *readSizes) of(body string) io.ReadCloser {
	src := strings.NewReader(body)
	return io.NopCloser(readFunc(func(p []byte) (int, error) {
		r.mu.Lock()
		r.sizes = append(r.sizes, len(p))
		r.mu.Unlock()
		return src.Read(p)
	}))
}

func (r *readSizes) all() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sizes)
}

type readFunc func([]byte) (int, error)

func (f readFunc) Read(p []byte) (int, error) { return f(p) }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
