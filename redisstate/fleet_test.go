package redisstate

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
)

// FleetAttempts runs procs processes (each a State and a Transport, as in
// separate processes) sending perProc requests each, with conc in flight
// per process, to an upstream that always fails; it returns attempts per
// request.
func fleetAttempts(t testing.TB, states []*State, perProc, conc int) float64 {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	var wg sync.WaitGroup
	for _, s := range states {
		s.Start()
		base := &http.Transport{MaxIdleConnsPerHost: conc}
		defer base.CloseIdleConnections()
		c := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithBudget(s), llmretry.WithCooldowns(s),
			llmretry.WithPolicy(llmretry.Policy{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}))}
		jobs := make(chan struct{})
		for range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					resp, err := c.Get(srv.URL)
					if err != nil {
						t.Error(err)
						continue
					}
					resp.Body.Close()
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(jobs)
			for range perProc {
				jobs <- struct{}{}
			}
		}()
	}
	wg.Wait()
	for _, s := range states {
		_ = s.Close()
	}
	return float64(hits.Load()) / float64(perProc*len(states))
}

// Four processes sharing one Redis budget hold the fleet, at 100% failure,
// to at most 1.10 attempts per request.
func TestFleetAtFullFailure(t *testing.T) {
	var states []*State
	name := fleetName(t)
	for range 4 {
		states = append(states, newState(t, "fleet", func(c *Config) {
			c.Name = name
			c.SyncInterval = 5 * time.Millisecond
		}))
	}
	got := fleetAttempts(t, states, 1000, 4)
	t.Logf("attempts per request: %.3f", got)
	if got > 1.10 {
		t.Fatalf("attempts per request %.3f, want at most 1.10", got)
	}
	if got < 1.01 {
		t.Fatalf("attempts per request %.3f: the budget allowed no retries at all", got)
	}
}
