package main

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/redisstate"
	"github.com/llmretry/llmretry/redisstate/redistest"
)

// fleetRun starts a redis-server, then procs "processes" (each its own
// redisstate.State and Transport) send perProc requests each to an
// upstream that always fails; it returns attempts per request.
func fleetRun(procs, perProc int) (float64, error) {
	rs, err := redistest.Start()
	if err != nil {
		return 0, err
	}
	defer rs.Stop()
	addr := rs.Addr
	var hits atomic.Int64
	srv := failingServer(1.0, &hits)
	defer srv.Close()
	var wg sync.WaitGroup
	for range procs {
		rc := redis.NewClient(&redis.Options{Addr: addr})
		defer rc.Close()
		st, err := redisstate.New(redisstate.Config{Client: rc, Name: "sim", SyncInterval: 5 * time.Millisecond})
		if err != nil {
			return 0, err
		}
		st.Start()
		defer st.Close()
		base := &http.Transport{MaxIdleConnsPerHost: 4}
		defer base.CloseIdleConnections()
		c := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithBudget(st), llmretry.WithHealthStore(st),
			llmretry.WithClock(llmretrytest.NewClock(time.Now())))}
		jobs := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					if resp, err := c.Get(srv.URL); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
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
	return float64(hits.Load()) / float64(procs*perProc), nil
}
