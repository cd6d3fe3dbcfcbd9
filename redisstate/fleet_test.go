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
		c := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithBudget(s),
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
// to 10% more attempts than requests, plus at most each process's own
// reserve: what a process whose syncs fall behind (on a loaded machine they
// do) may fall back on. The bound holds however the syncs are timed, since
// the local fallback counts every retry the fleet's share granted; the
// test used to fail on a loaded machine (1.105 to 1.140) because it did
// not.
func TestFleetAtFullFailure(t *testing.T) {
	const procs, perProc = 4, 1000
	var states []*State
	name := fleetName(t)
	for range procs {
		states = append(states, newState(t, "fleet", func(c *Config) {
			c.Name = name
			c.SyncInterval = 5 * time.Millisecond
		}))
	}
	got := fleetAttempts(t, states, perProc, 4)
	reserve := float64(states[0].cfg.Budget.Reserve)
	bound := 1.10 + procs*reserve/(procs*perProc)
	t.Logf("attempts per request: %.3f (bound %.3f)", got, bound)
	if got > bound {
		t.Fatalf("attempts per request %.3f, want at most %.3f", got, bound)
	}
	if got < 1.01 {
		t.Fatalf("attempts per request %.3f: the budget allowed no retries at all", got)
	}
}
