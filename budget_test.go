package llmretry

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRatioBudget(t *testing.T) {
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Clock: clk})
	// A quiet client still has its reserve.
	for i := range 10 {
		if !b.AllowRetry() {
			t.Fatalf("reserve retry %d refused", i+1)
		}
	}
	if b.AllowRetry() {
		t.Fatal("11th retry with no requests allowed")
	}
	// 200 requests allow 10% = 20 retries in the window, of which 10 are spent.
	for range 200 {
		b.OnRequest()
	}
	for i := range 10 {
		if !b.AllowRetry() {
			t.Fatalf("retry %d of 20 refused", 11+i)
		}
	}
	if b.AllowRetry() {
		t.Fatal("21st retry allowed for 200 requests")
	}
	// The window moves on: old counts fall out.
	clk.Advance(11 * time.Second)
	if !b.AllowRetry() {
		t.Fatal("no reserve after the window passed")
	}
}

func TestRetryAllowed(t *testing.T) {
	cases := []struct {
		req, ret int64
		want     bool
	}{
		{0, 0, true}, {0, 9, true}, {0, 10, false},
		{1000, 99, true}, {1000, 100, false},
		{1_000_000, 99_999, true}, {1_000_000, 100_000, false},
	}
	for _, tc := range cases {
		if got := RetryAllowed(tc.req, tc.ret, 0.1, 10); got != tc.want {
			t.Errorf("RetryAllowed(%d, %d) = %v", tc.req, tc.ret, got)
		}
	}
}

func TestBudgetSpentReturnsLastResponse(t *testing.T) {
	srv := newScripted(t, status(503, "down"))
	clk := newFakeClock()
	var stops []StopEvent
	b := NewRatioBudget(BudgetConfig{Reserve: 1, Clock: clk})
	_, c := testTransport(t, clk, WithBudget(b), WithOnStop(func(e StopEvent) { stops = append(stops, e) }))
	for i := range 3 {
		resp, err := c.Do(post(t, srv.URL, "x"))
		if err != nil {
			t.Fatal(err)
		}
		if readAll(t, resp) != "down" {
			t.Fatalf("request %d: body not intact", i)
		}
	}
	// One retry from the reserve, then first attempts only: 2 + 1 + 1.
	if srv.Hits() != 4 {
		t.Fatalf("hits %d, want 4", srv.Hits())
	}
	if len(stops) != 3 || stops[0].Reason != ReasonBudget || stops[0].Attempts != 2 || stops[1].Reason != ReasonBudget || stops[2].Reason != ReasonBudget {
		t.Fatalf("stops %+v", stops)
	}
}

func TestBudgetSharedBetweenTransports(t *testing.T) {
	srv := newScripted(t, reset)
	clk := newFakeClock()
	b := NewRatioBudget(BudgetConfig{Reserve: 2, Clock: clk})
	_, c1 := testTransport(t, clk, WithBudget(b))
	_, c2 := testTransport(t, clk, WithBudget(b))
	_, err := c1.Do(post(t, srv.URL, "x")) // spends both reserve retries
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonExhausted || e.Attempts != 3 {
		t.Fatalf("first: %v", err)
	}
	_, err = c2.Do(post(t, srv.URL, "x"))
	if !errors.As(err, &e) || e.Reason != ReasonBudget || e.Attempts != 1 {
		t.Fatalf("second: %v", err)
	}
}

func TestCooldown(t *testing.T) {
	srv := newScripted(t, status(429, "", "Retry-After", "5"), status(200, "ok"))
	clk := newFakeClock()
	var events []RetryEvent
	_, c := testTransport(t, clk, WithPolicy(Policy{MaxAttempts: 1}), WithOnRetry(func(e RetryEvent) { events = append(events, e) }))
	send := func(key string, deadline time.Duration) (*http.Response, error) {
		req := post(t, srv.URL, "x")
		req.Header.Set("Authorization", "Bearer "+key)
		if deadline > 0 {
			req = req.WithContext(deadlineCtx{req.Context(), clk.Now().Add(deadline)})
		}
		return c.Do(req)
	}
	resp, err := send("k1", 0)
	if err != nil || resp.StatusCode != 429 {
		t.Fatalf("first: %v", err)
	}
	readAll(t, resp)

	// The same upstream and key, with a deadline too short: fails fast.
	_, err = send("k1", time.Second)
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonDeadline || e.Attempts != 0 || !errors.Is(err, errCooldown) || srv.Hits() != 1 {
		t.Fatalf("short deadline: %v, hits %d", err, srv.Hits())
	}
	// Another key on the same host is another upstream: no wait.
	resp, err = send("k2", 0)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if len(clk.Waits()) != 0 {
		t.Fatalf("waits %v", clk.Waits())
	}
	// The same key waits out the rest before its first attempt.
	resp, err = send("k1", 0)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if w := clk.Waits(); len(w) != 1 || w[0] != 5*time.Second {
		t.Fatalf("waits %v, want [5s]", w)
	}
	if len(events) != 1 || events[0].Attempt != 0 || events[0].Source != SourceCooldown {
		t.Fatalf("events %+v", events)
	}
}

func TestUpstreamNeverHoldsTheCredential(t *testing.T) {
	req, _ := http.NewRequest("POST", "https://api.example.com/v1beta/models?key=AIza-SECRET", nil)
	req.Header.Set("X-Api-Key", "sk-ant-SECRET")
	up := upstreamOf(req)
	if strings.Contains(up.String(), "SECRET") || up.Credential == "" || up.Host != "api.example.com" {
		t.Fatalf("upstream %v", up)
	}
	req2, _ := http.NewRequest("POST", "https://api.example.com/other?key=AIza-SECRET", nil)
	req2.Header.Set("X-Api-Key", "sk-ant-SECRET")
	if upstreamOf(req2) != up {
		t.Fatal("same credential, different upstream")
	}
	req2.Header.Set("X-Api-Key", "sk-ant-OTHER")
	if upstreamOf(req2) == up {
		t.Fatal("different credential, same upstream")
	}
}
