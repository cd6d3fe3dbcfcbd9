package llmretrytest_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
)

func TestClock(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := llmretrytest.NewClock(start)
	ch, stop := c.NewTimer(time.Minute)
	if got := <-ch; !got.Equal(start.Add(time.Minute)) || stop() {
		t.Fatalf("fired at %v", got)
	}
	c.Advance(time.Second)
	if !c.Now().Equal(start.Add(61*time.Second)) || len(c.Waits()) != 1 || c.Waits()[0] != time.Minute {
		t.Fatalf("now %v waits %v", c.Now(), c.Waits())
	}
}

// A time limit fires when the clock's time reaches it, by Advance or by a
// wait, and not before; a stopped one never fires.
func TestClockTimeLimits(t *testing.T) {
	c := llmretrytest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var fired []string
	c.AfterFunc(10*time.Second, func() { fired = append(fired, "10s") })
	c.AfterFunc(5*time.Second, func() { fired = append(fired, "5s") })
	stop := c.AfterFunc(7*time.Second, func() { fired = append(fired, "7s") })
	var _ llmretry.Clock = c
	if len(fired) != 0 || c.Pending() != 3 {
		t.Fatalf("fired %v before time moved", fired)
	}
	if !stop() || stop() {
		t.Fatal("stop should report true once, then false")
	}
	c.Advance(4 * time.Second)
	if len(fired) != 0 {
		t.Fatalf("fired %v at 4s", fired)
	}
	c.NewTimer(6 * time.Second) // a wait to 10s
	if fmt.Sprint(fired) != "[5s 10s]" || c.Pending() != 0 {
		t.Fatalf("fired %v, pending %d", fired, c.Pending())
	}
}

// Prove that a 60 s Retry-After is honoured, in no time.
func ExampleClock() {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "60")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer srv.Close()

	clock := llmretrytest.NewClock(time.Now())
	client := &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithClock(clock),
		llmretry.WithRand(func() float64 { return 0 }))}
	resp, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, clock.Waits())
	// Output: 200 [1m0s]
}
