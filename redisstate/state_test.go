package redisstate

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/redisstate/redistest"
)

func shared(t *testing.T, n int) []*State {
	var ss []*State
	name := fleetName(t)
	for range n {
		ss = append(ss, newState(t, "fleet", func(c *Config) { c.Name = name }))
	}
	return ss
}

func TestBudgetIsSharedAcrossProcesses(t *testing.T) {
	ss := shared(t, 2)
	a, b := ss[0], ss[1]
	for range 200 {
		a.OnRequest()
	}
	syncAll(t, a, b, a) // a's second sync sees that b is there too
	// The fleet saw 200 requests: 20 retries. Between syncs each of the two
	// processes may spend its half.
	spend := func(s *State) int {
		n := 0
		for s.AllowRetry() {
			n++
		}
		return n
	}
	if n := spend(b); n != 10 {
		t.Fatalf("b spent %d retries, want its half, 10", n)
	}
	if n := spend(a); n != 10 {
		t.Fatalf("a spent %d retries, want its half, 10", n)
	}
	syncAll(t, a, b, a)
	if a.AllowRetry() || b.AllowRetry() {
		t.Fatal("a retry beyond the fleet's 20")
	}
	if c := a.Counts(); c.Requests != 200 || c.Retries != 20 {
		t.Fatalf("a counts %+v", c)
	}
}

func TestConcurrentSyncsAddUp(t *testing.T) {
	ss := shared(t, 8)
	done := make(chan struct{})
	for _, s := range ss {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 50 {
				s.OnRequest()
				_ = s.Sync(context.Background())
			}
		}()
	}
	for range ss {
		<-done
	}
	syncAll(t, ss[0])
	if c := ss[0].Counts(); c.Requests != 400 {
		t.Fatalf("fleet requests %d, want 400", c.Requests)
	}
}

// Through real Transports: a 429 seen by process A makes process B wait
// before its first attempt.
func TestCooldownThroughTransports(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "30")
			w.Header().Set("X-Ratelimit-Remaining-Requests", "0") // the bucket is empty: the limit binds for all
			w.WriteHeader(429)
			return
		}
		w.WriteHeader(200)
	}))
	defer srv.Close()
	ss := shared(t, 2)
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	ca := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithHealthStore(ss[0]), llmretry.WithBudget(ss[0]),
		llmretry.WithPolicy(llmretry.Policy{MaxAttempts: 1}))}
	var stops []llmretry.StopEvent
	cb := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithHealthStore(ss[1]), llmretry.WithBudget(ss[1]),
		llmretry.WithOnStop(func(e llmretry.StopEvent) { stops = append(stops, e) }))}
	resp, err := ca.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	syncAll(t, ss[0], ss[1])
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	_, err = cb.Do(req)
	var e *llmretry.Error
	if err == nil || !errors.As(err, &e) || e.Reason != llmretry.ReasonDeadline || e.Attempts != 0 || hits.Load() != 1 {
		t.Fatalf("b: %v, hits %d", err, hits.Load())
	}
}

// With Redis gone, requests go on with local state, and a warning says so
// once.
func TestRedisDownNeverFailsARequest(t *testing.T) {
	var logs bytes.Buffer
	s := newState(t, "down", func(c *Config) {
		c.Client = newClient(t, "127.0.0.1:1") // nothing listens there
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Timeout = 100 * time.Millisecond
	})
	s.Start()
	defer s.Close()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(200)
	}))
	defer srv.Close()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	c := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithBudget(s),
		llmretry.WithPolicy(llmretry.Policy{BaseDelay: time.Millisecond}))}
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || hits.Load() != 2 {
		t.Fatalf("status %d hits %d: the retry came from the local budget", resp.StatusCode, hits.Load())
	}
	for i := 0; i < 3; i++ {
		_ = s.Sync(context.Background())
	}
	if n := strings.Count(logs.String(), "Redis sync failed"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, logs.String())
	}
}

// Redis stops mid-run and comes back: counts made meanwhile are published
// once it is back.
func TestRedisOutageAndRecovery(t *testing.T) {
	srv, err := redistest.Start()
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr
	var logs bytes.Buffer
	s := newState(t, "outage", func(c *Config) {
		c.Client = newClient(t, addr)
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	s.OnRequest()
	syncAll(t, s)
	srv.Stop()
	s.OnRequest()
	if err := s.Sync(context.Background()); err == nil {
		t.Fatal("sync with Redis down succeeded")
	}
	if !s.AllowRetry() {
		t.Fatal("no retry from the reserve while Redis is down")
	}
	if c := s.Counts(); c.Requests != 2 || c.Retries != 1 {
		t.Fatalf("counts %+v", c)
	}
	if !strings.Contains(logs.String(), "going on with local state") {
		t.Fatalf("logs: %s", logs.String())
	}
}

func TestConfigNeedsAClient(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("want an error")
	}
}
