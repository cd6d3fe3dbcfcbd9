package llmretry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Servers that misbehave on purpose: huge headers and stalls. (Resets,
// cuts and split writes are in rules_test.go and stream_test.go.)

func TestHugeResponseHeaders(t *testing.T) {
	huge := strings.Repeat("x", 256<<10) // past the 64 KiB limit set below
	raw := func(w http.ResponseWriter, r *http.Request) {
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		_, _ = bw.WriteString("HTTP/1.1 503 Service Unavailable\r\nX-Junk: " + huge + "\r\nContent-Length: 0\r\n\r\n")
		_ = bw.Flush()
	}
	srv := newScripted(t, raw, status(200, "ok"))
	base := &http.Transport{MaxResponseHeaderBytes: 64 << 10}
	defer base.CloseIdleConnections()
	c := &http.Client{Transport: NewTransport(base, WithClock(newFakeClock()))}
	_, err := c.Do(post(t, srv.URL, "x"))
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonNotRetryable || e.Attempts != 1 || srv.Hits() != 1 {
		t.Fatalf("got %v, hits %d", err, srv.Hits())
	}
}

func TestHugeRetryAfterValue(t *testing.T) {
	srv := newScripted(t, status(503, "busy", "Retry-After", strings.Repeat("9", 64<<10)), status(200, "ok"))
	clk := newFakeClock()
	_, c := testTransport(t, clk)
	resp, err := c.Do(post(t, srv.URL, "x"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 503 || readAll(t, resp) != "busy" || srv.Hits() != 1 || len(clk.Waits()) != 0 {
		t.Fatalf("status %d hits %d waits %v: an absurd wait ends retrying at once", resp.StatusCode, srv.Hits(), clk.Waits())
	}
}

// A server that never answers: each attempt times out at the base
// transport's ResponseHeaderTimeout and is retried.
func TestStallBeforeHeadersIsRetried(t *testing.T) {
	stall, release := stallUntilReleased()
	defer release() // before the server's Close, which waits for handlers
	srv := newScripted(t, stall)
	clk := newFakeClock()
	base := &http.Transport{ResponseHeaderTimeout: 20 * time.Millisecond}
	defer base.CloseIdleConnections()
	c := &http.Client{Transport: NewTransport(base, WithClock(clk))}
	_, err := c.Do(post(t, srv.URL, "x"))
	var e *Error
	var ne net.Error // *url.Error, which asks *Error whether it is a timeout
	if !errors.As(err, &e) || e.Reason != ReasonExhausted || e.Attempts != 3 || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("got %v", err)
	}
}

// The caller's own deadline passing mid-attempt is not retried.
func TestCallerDeadlineMidAttempt(t *testing.T) {
	stall, release := stallUntilReleased()
	defer release() // before the server's Close, which waits for handlers
	srv := newScripted(t, stall)
	_, c := testTransport(t, newFakeClock())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err := c.Do(post(t, srv.URL, "x").WithContext(ctx))
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonContextDone || e.Attempts != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

// stallUntilReleased never answers, until the client goes away or release
// is called.
func stallUntilReleased() (http.HandlerFunc, func()) {
	released := make(chan struct{})
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-released:
		case <-r.Context().Done():
		}
	}, func() { close(released) }
}
