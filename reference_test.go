package llmretry

// The tests of the reference implementation (shared/reference/retry.rs),
// ported one for one, with the same meaning.

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRef_ParseRetryAfterSeconds(t *testing.T) {
	h := http.Header{"Retry-After": {"3"}}
	d, src, ok := HeaderWait(h, time.Now())
	if !ok || d != 3*time.Second || src != SourceRetryAfter {
		t.Fatalf("got %v %v %v, want 3s retry-after true", d, src, ok)
	}
}

func TestRef_ParseRetryAfterMissingReturnsNone(t *testing.T) {
	if d, _, ok := HeaderWait(http.Header{}, time.Now()); ok {
		t.Fatalf("got %v, want none", d)
	}
}

// The reference ignored HTTP-dates; its later versions, and this port,
// honour them. A date in the past is no wait at all.
func TestRef_ParseRetryAfterHTTPDate(t *testing.T) {
	now := time.Date(2015, 10, 21, 7, 27, 0, 0, time.UTC)
	h := http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:28:00 GMT"}}
	if d, _, ok := HeaderWait(h, now); !ok || d != time.Minute {
		t.Fatalf("got %v %v, want 1m", d, ok)
	}
	if d, _, ok := HeaderWait(h, now.Add(2*time.Minute)); ok {
		t.Fatalf("date in the past gave %v", d)
	}
}

func TestRef_RetryableStatusIncludes429And5xx(t *testing.T) {
	for _, code := range []int{429, 500, 502, 503, 504, 408} {
		if !RetryableStatus(code) {
			t.Errorf("%d not retryable", code)
		}
	}
}

func TestRef_RetryableStatusExcludesAuthAndValidation(t *testing.T) {
	for _, code := range []int{401, 403, 400, 404} {
		if RetryableStatus(code) {
			t.Errorf("%d retryable", code)
		}
	}
}

func TestRef_BackoffRespectsMaxDelay(t *testing.T) {
	p := Policy{MaxAttempts: 10, BaseDelay: 500 * time.Millisecond, MaxDelay: time.Second}
	for _, r := range []float64{0, 0.5, 0.999999} {
		if d := p.Backoff(10, r); d > time.Second {
			t.Fatalf("r=%v: got %v, want <= 1s", r, d)
		}
	}
}

func TestRef_SucceedsOnFirstTry(t *testing.T) {
	srv := newScripted(t, status(200, "ok"))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL+"/chat", "req"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || readAll(t, resp) != "ok" || srv.Hits() != 1 {
		t.Fatalf("status %d, hits %d", resp.StatusCode, srv.Hits())
	}
}

func TestRef_RetriesOn500ThenSucceeds(t *testing.T) {
	srv := newScripted(t, status(500, ""), status(200, "ok"))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL+"/chat", "req"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || readAll(t, resp) != "ok" || srv.Hits() != 2 {
		t.Fatalf("status %d, hits %d", resp.StatusCode, srv.Hits())
	}
}

func TestRef_ExhaustsOnPersistent500(t *testing.T) {
	srv := newScripted(t, status(500, "still down"))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL+"/chat", "req"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 500 || srv.Hits() != 3 {
		t.Fatalf("status %d, hits %d, want 500 after 3", resp.StatusCode, srv.Hits())
	}
	if got := readAll(t, resp); got != "still down" {
		t.Fatalf("last body %q not intact", got)
	}
}

func TestRef_DoesNotRetryOn401(t *testing.T) {
	srv := newScripted(t, status(401, "bad key"))
	_, c := testTransport(t, newFakeClock())
	resp, err := c.Do(post(t, srv.URL+"/chat", "req"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 401 || srv.Hits() != 1 || readAll(t, resp) != "bad key" {
		t.Fatalf("status %d, hits %d", resp.StatusCode, srv.Hits())
	}
}

func TestRef_HonorsRetryAfterOn429(t *testing.T) {
	srv := newScripted(t, status(429, "", "Retry-After", "1"), status(200, "ok"))
	clk := newFakeClock()
	_, c := testTransport(t, clk)
	resp, err := c.Do(post(t, srv.URL+"/chat", "req"))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	waits := clk.Waits()
	if resp.StatusCode != 200 || len(waits) != 1 || waits[0] < time.Second {
		t.Fatalf("status %d, waits %v: want one wait of at least 1s", resp.StatusCode, waits)
	}
}

func TestRef_RetriesOnConnectError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	clk := newFakeClock()
	_, c := testTransport(t, clk)
	_, err = c.Do(post(t, "http://"+addr+"/chat", "req"))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want *Error", err)
	}
	var opErr *net.OpError
	if e.Attempts != 3 || e.Reason != ReasonExhausted || !errors.As(err, &opErr) {
		t.Fatalf("attempts %d reason %v err %v", e.Attempts, e.Reason, err)
	}
	if len(clk.Waits()) != 2 {
		t.Fatalf("waits %v, want 2", clk.Waits())
	}
}

// Regression for the reference's crash: a pasted API key with a trailing
// newline made the request unbuildable and the helper panicked.
func TestRef_ReturnsBuilderErrorInsteadOfPanicking(t *testing.T) {
	srv := newScripted(t, status(200, "ok"))
	_, c := testTransport(t, newFakeClock())
	req := post(t, srv.URL+"/", "req")
	req.Header["Authorization"] = []string{"Bearer token-with\n-newline"}
	_, err := c.Do(req)
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonInvalidRequest || e.Attempts != 0 {
		t.Fatalf("got %v, want invalid-request *Error", err)
	}
	var he *HeaderError
	if !errors.As(err, &he) || he.Name != "Authorization" {
		t.Fatalf("got %v, want HeaderError naming Authorization", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "Authorization") || !strings.Contains(msg, "trailing newline") ||
		strings.Contains(msg, "token-with") {
		t.Fatalf("message %q must name the header and cause, never the value", msg)
	}
	if srv.Hits() != 0 {
		t.Fatalf("sent %d requests, want none", srv.Hits())
	}
}
