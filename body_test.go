package llmretry

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// failingBody yields n bytes, then err: a caller's upload that broke.
type failingBody struct {
	n   int
	err error
}

func (b *failingBody) Read(p []byte) (int, error) {
	if b.n == 0 {
		return 0, b.err
	}
	k := min(len(p), b.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	b.n -= k
	return k, nil
}

func (b *failingBody) Close() error { return nil }

// An error from the caller's own request body was taken for a dropped
// connection (net/http reports it as a "readfrom" *net.OpError, or bare),
// retried, and the upstream got three truncated requests.
func TestCallerBodyErrorIsNotRetried(t *testing.T) {
	for _, size := range []int{100, 256 << 10} { // in the write buffer, and through ReadFrom
		for _, cause := range []error{io.ErrUnexpectedEOF, net.ErrClosed} {
			t.Run(cause.Error(), func(t *testing.T) {
				srv := newScripted(t, status(200, "ok"))
				var stops []StopEvent
				tr, _ := testTransport(t, newFakeClock(), WithOnStop(func(e StopEvent) { stops = append(stops, e) }))
				req, _ := http.NewRequest(http.MethodPost, srv.URL, &failingBody{n: size, err: cause})
				req.ContentLength = int64(size) * 2
				req.GetBody = func() (io.ReadCloser, error) { return &failingBody{n: size, err: cause}, nil }
				resp, err := tr.RoundTrip(req)
				if resp != nil {
					resp.Body.Close()
					t.Fatalf("got a response %d", resp.StatusCode)
				}
				var e *Error
				if !errors.As(err, &e) || e.Reason != ReasonNotRetryable || e.Attempts != 1 || !errors.Is(err, cause) {
					t.Fatalf("got %v, want one attempt, not retryable, wrapping %v", err, cause)
				}
				if srv.Hits() > 1 || len(stops) != 1 {
					t.Fatalf("upstream saw %d requests, %d stop events; want at most 1 and 1", srv.Hits(), len(stops))
				}
			})
		}
	}
}

// An in-memory body is sent as the caller made it: no copy of the request,
// no wrapper (which would cost the success path an allocation and make
// net/http flush the headers on their own).
func TestInMemoryBodySentUntracked(t *testing.T) {
	tr := NewTransport(nil)
	for _, tc := range []struct {
		body    io.Reader
		tracked bool
	}{
		{strings.NewReader("x"), false},
		{strings.NewReader(""), false}, // http.NoBody
		{&failingBody{n: 1, err: io.EOF}, true},
	} {
		req, _ := http.NewRequest(http.MethodPost, "http://api.test/", tc.body)
		j := journey{rt: tr.route, req: req}
		r, tracked, err := tr.attemptRequest(&j, 1, "")
		if err != nil {
			t.Fatal(err)
		}
		if (tracked != nil) != tc.tracked || (r != req) != tc.tracked {
			t.Errorf("%T: tracked %v, copied %v; want %v", tc.body, tracked != nil, r != req, tc.tracked)
		}
	}
}
