package llmretry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/llmretry/llmretry/llmretrytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newFakeClock is a clock on which waits end at once and are recorded.
func newFakeClock() *llmretrytest.Clock {
	return llmretrytest.NewClock(time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC))
}

// fixedRand returns r for every jitter draw.
func fixedRand(r float64) func() float64 { return func() float64 { return r } }

// scripted is an httptest server that answers the n-th request with the
// n-th handler (the last one repeats) and counts requests and bodies.
type scripted struct {
	*httptest.Server
	hits   atomic.Int32
	mu     sync.Mutex
	bodies []string
	heads  []http.Header
}

func newScripted(t *testing.T, handlers ...http.HandlerFunc) *scripted {
	t.Helper()
	s := &scripted{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(s.hits.Add(1))
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.bodies = append(s.bodies, string(b))
		s.heads = append(s.heads, r.Header.Clone())
		s.mu.Unlock()
		h := handlers[min(n, len(handlers))-1]
		h(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *scripted) Hits() int { return int(s.hits.Load()) }

func (s *scripted) Bodies() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

func (s *scripted) Headers() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.heads...)
}

// status answers with code, the given header pairs and body.
func status(code int, body string, kv ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(kv); i += 2 {
			w.Header().Set(kv[i], kv[i+1])
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// reset closes the connection without answering: the client sees a reset
// or an EOF, as from a pooled connection the server had dropped.
func reset(w http.ResponseWriter, r *http.Request) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("no hijacker")
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(err)
	}
	if tc, ok := conn.(interface{ SetLinger(int) error }); ok {
		_ = tc.SetLinger(0) // RST rather than FIN
	}
	_ = conn.Close()
}

// testTransport is a Transport on the fake clock with mid-range jitter and
// its own connection pool, closed when the test ends.
func testTransport(t *testing.T, clk *llmretrytest.Clock, opts ...Option) (*Transport, *http.Client) {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	all := append([]Option{WithClock(clk), WithRand(fixedRand(0.5))}, opts...)
	tr := NewTransport(base, all...)
	return tr, &http.Client{Transport: tr}
}

func post(t *testing.T, url, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return string(b)
}
