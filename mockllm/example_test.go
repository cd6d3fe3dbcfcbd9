package mockllm_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/mockllm"
)

// Test your own client against provider faults: the mock answers the first
// request with a 503 asking for a 2 s wait, the second with a dropped
// connection, the third normally. Here the client is llmretry's Transport on
// a test clock, so the waits (the server's 2 s, then the second retry's
// backoff: 1 s less a quarter at the lowest jitter draw) are proven without
// being spent.
func Example() {
	script, err := mockllm.ParseFaults("503:retry-after=2,reset,ok")
	if err != nil {
		fmt.Println(err)
		return
	}
	provider := mockllm.New(script, 1)
	srv := httptest.NewServer(provider)
	defer srv.Close()

	clock := llmretrytest.NewClock(time.Now())
	client := &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithClock(clock),
		llmretry.WithRand(func() float64 { return 0 }))}
	resp, err := client.Post(srv.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, "after", provider.Hits(), "requests; waited", clock.Waits())
	// Output: 200 after 3 requests; waited [2s 750ms]
}

// A seeded mix: each request draws a fault by weight. Naming each logical
// request and its attempt makes the draws independent of arrival order, so
// a concurrent test sees the same faults every run.
func ExampleNew_mix() {
	script, _ := mockllm.ParseFaults("503@20%,reset@10%,sse-error@10%")
	provider := mockllm.New(script, 7)
	srv := httptest.NewServer(provider)
	defer srv.Close()

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(`{"model":"m"}`))
	req.Header.Set(mockllm.DrawKeyHeader, "chat-1")
	req.Header.Set(mockllm.AttemptHeader, "1")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	fmt.Println(len(provider.FaultsFor("chat-1")), "fault drawn for chat-1")
	// Output: 1 fault drawn for chat-1
}
