// Command sim runs the overload simulations whose tables are in
// BENCHMARKS.md:
//
//	go run ./bench/sim
//
// 1. Brooker's jitter simulation (clients contending on one record).
// 2. Attempts per logical request against a loopback upstream failing at
// a given rate, through the real Transport, with and without the budget.
// 3. Four processes sharing one budget through a real Redis at 100%
// failure (needs redis-server on PATH, which it starts on a free port).
package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
)

func main() {
	runs := flag.Int("runs", 100, "jitter simulation runs per cell")
	requests := flag.Int("requests", 10000, "logical requests per failure-rate cell")
	flag.Parse()

	fmt.Printf("## Jitter: clients contending on one record (base 5 ms, cap 2 s), mean of %d runs\n\n", *runs)
	printTable(os.Stdout, []string{"backoff", "10 clients: calls / completion", "50 clients: calls / completion"},
		jitterTable(*runs, []int{10, 50}))

	fmt.Printf("\n## Attempts per logical request, %d requests through the Transport on loopback (3 attempts)\n\n", *requests)
	rates := []float64{0, 0.05, 0.10, 0.50, 1.0}
	head := []string{"policy"}
	for _, f := range rates {
		head = append(head, fmt.Sprintf("f=%g%%", f*100))
	}
	var rows [][]string
	for _, p := range []struct {
		name   string
		budget func() llmretry.Budget
	}{
		{"no budget (as retry.rs)", func() llmretry.Budget { return nil }},
		{"default budget (10%, reserve 10)", func() llmretry.Budget { return llmretry.NewRatioBudget(llmretry.BudgetConfig{}) }},
	} {
		row := []string{p.name}
		for _, f := range rates {
			att, ok := failureRun(*requests, f, p.budget())
			row = append(row, fmt.Sprintf("%.3f (%.2f%% ok)", att, ok*100))
		}
		rows = append(rows, row)
	}
	printTable(os.Stdout, head, rows)

	fmt.Printf("\n## Fleet: 4 processes sharing one budget through Redis, f=100%%\n\n")
	att, err := fleetRun(4, 2500)
	if err != nil {
		fmt.Printf("not run: %v\n", err)
		return
	}
	printTable(os.Stdout, []string{"fleet", "attempts per request"}, [][]string{{"4 processes x 2500 requests, redisstate", fmt.Sprintf("%.3f", att)}})
}

// failingServer fails each request with probability f (a 503), drawing
// from a seeded source; it counts every request.
func failingServer(f float64, hits *atomic.Int64) *httptest.Server {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(1, 2))
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		mu.Lock()
		fail := r.Float64() < f
		mu.Unlock()
		if fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
}

// failureRun sends n requests, 16 at a time, and returns attempts per
// request and the share that succeeded.
func failureRun(n int, f float64, budget llmretry.Budget) (attempts, okShare float64) {
	var hits, oks atomic.Int64
	srv := failingServer(f, &hits)
	defer srv.Close()
	base := &http.Transport{MaxIdleConnsPerHost: 16}
	defer base.CloseIdleConnections()
	c := &http.Client{Transport: llmretry.NewTransport(base, llmretry.WithBudget(budget), llmretry.WithClock(llmretrytest.NewClock(time.Now())))}
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				resp, err := c.Get(srv.URL)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					oks.Add(1)
				}
			}
		}()
	}
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return float64(hits.Load()) / float64(n), float64(oks.Load()) / float64(n)
}

func fmtCalls(calls float64, done time.Duration) string {
	return fmt.Sprintf("%.0f / %d ms", calls, done.Milliseconds())
}

func printTable(w io.Writer, head []string, rows [][]string) {
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
	for _, r := range rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
}
