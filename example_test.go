package llmretry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry"
)

// flaky answers 503 (asking for a 10 ms wait) to its first n requests.
func flaky(n int32) *httptest.Server {
	var hits atomic.Int32
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) <= n {
			w.Header().Set("Retry-After-Ms", "10")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, `{"ok":true}`)
	}))
}

// Give any SDK an *http.Client whose Transport is llmretry's, and turn the
// SDK's own retries off (openai-go: option.WithMaxRetries(0)).
func ExampleNewTransport() {
	srv := flaky(2)
	defer srv.Close()

	client := &http.Client{Transport: llmretry.NewTransport(nil,
		llmretry.WithOnRetry(func(e llmretry.RetryEvent) {
			fmt.Printf("attempt %d: %s, waiting %v (%s)\n", e.Attempt, e.Cause, e.Wait.Round(10*time.Millisecond), e.Source)
		}),
	)}
	resp, err := client.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"m"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output:
	// attempt 1: status 503, waiting 10ms (retry-after-ms)
	// attempt 2: status 503, waiting 10ms (retry-after-ms)
	// 200 {"ok":true}
}

// Do is the function form, for callers who keep their own Transport.
func ExampleDo() {
	srv := flaky(1)
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("{}"))
	resp, err := llmretry.Do(context.Background(), http.DefaultClient, req, llmretry.DefaultPolicy())
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	// Output: 200
}

// When no response can be returned, the error says how many attempts were
// made and why retrying stopped.
func ExampleError() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	url := srv.URL
	srv.Close() // nothing listens there any more

	client := &http.Client{Transport: llmretry.NewTransport(nil,
		llmretry.WithPolicy(llmretry.Policy{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}))}
	_, err := client.Get(url)
	var e *llmretry.Error
	if errors.As(err, &e) {
		fmt.Println(e.Attempts, e.Reason)
	}
	// Output: 3 attempts exhausted
}

// A server wait longer than MaxRetryAfter ends retrying at once, and the
// 429 itself is returned for the SDK to report.
func ExamplePolicy() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "86400")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()

	p := llmretry.DefaultPolicy()
	p.MaxRetryAfter = 30 * time.Second
	client := &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithPolicy(p),
		llmretry.WithOnStop(func(e llmretry.StopEvent) { fmt.Println(e.Reason, e.Wait) }))}
	resp, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode)
	// Output:
	// server wait above MaxRetryAfter 24h0m0s
	// 429
}

// Transports that share one Budget spend one retry allowance: during an
// outage, all of them together retry at most a tenth of their requests.
func ExampleWithBudget() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable) // a full outage
	}))
	defer srv.Close()

	budget := llmretry.NewRatioBudget(llmretry.BudgetConfig{Reserve: 2})
	fast := llmretry.WithPolicy(llmretry.Policy{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond})
	chat := &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithBudget(budget), fast)}
	embed := &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithBudget(budget), fast)}

	for _, c := range []*http.Client{chat, embed, chat} {
		resp, err := c.Get(srv.URL)
		if err != nil {
			fmt.Println(err)
			return
		}
		resp.Body.Close()
	}
	c := budget.Counts()
	fmt.Println(c.Requests, "requests,", c.Retries, "retries,", c.RetriesOK, "that worked")
	// Output: 3 requests, 2 retries, 0 that worked
}
