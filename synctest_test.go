package llmretry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// roundTripFunc scripts a base transport without a network, so that tests
// can run inside a synctest bubble, where time is virtual.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func reply(req *http.Request, code int, body string, kv ...string) *http.Response {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return &http.Response{StatusCode: code, Header: h, Body: io.NopCloser(strings.NewReader(body)), Request: req}
}

// A 60 s Retry-After is waited in full, on the real (bubbled) clock, in no
// real time.
func TestSynctest_SixtySecondRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Int32
		var times []time.Time
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			times = append(times, time.Now())
			if hits.Add(1) == 1 {
				return reply(r, 429, "", "Retry-After", "60"), nil
			}
			return reply(r, 200, "ok"), nil
		})
		tr := NewTransport(base, WithRand(fixedRand(0)))
		req, _ := http.NewRequest("GET", "http://api.test/v1/models", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if len(times) != 2 || times[1].Sub(times[0]) != 60*time.Second {
			t.Fatalf("attempts at %v, want 60s apart", times)
		}
	})
}

// Cancelling during a wait ends the request at once, not when the wait
// would have ended.
func TestSynctest_CancelDuringWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			return reply(r, 503, "", "Retry-After", "30"), nil
		})
		tr := NewTransport(base)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(10*time.Millisecond, cancel)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test/", nil)
		start := time.Now()
		_, err := tr.RoundTrip(req)
		var e *Error
		if !errors.As(err, &e) || e.Reason != ReasonContextDone || !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
		if d := time.Since(start); d != 10*time.Millisecond {
			t.Fatalf("returned after %v, want 10ms", d)
		}
	})
}

// A real context deadline: the wait that would pass it is refused up
// front, with no sleep.
func TestSynctest_DeadlineRefusesWaitUpFront(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Int32
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			hits.Add(1)
			return reply(r, 503, "busy", "Retry-After", "5"), nil
		})
		tr := NewTransport(base)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://api.test/", nil)
		start := time.Now()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 503 || hits.Load() != 1 || time.Since(start) != 0 {
			t.Fatalf("status %d hits %d after %v", resp.StatusCode, hits.Load(), time.Since(start))
		}
	})
}

// Backoff waits follow the policy exactly on the real clock too.
func TestSynctest_BackoffSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var times []time.Time
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			times = append(times, time.Now())
			return reply(r, 500, ""), nil
		})
		tr := NewTransport(base, WithPolicy(Policy{MaxAttempts: 4}), WithRand(fixedRand(0.5)))
		req, _ := http.NewRequest("GET", "http://api.test/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second}
		if len(times) != 4 {
			t.Fatalf("%d attempts", len(times))
		}
		for i, w := range want {
			if d := times[i+1].Sub(times[i]); d != w {
				t.Fatalf("wait %d = %v, want %v", i+1, d, w)
			}
		}
	})
}
