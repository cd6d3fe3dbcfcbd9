package llmretry_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/llmretry/llmretry"
)

// A key told to wait gives way to another key at once, and a target that
// is down to the next one, which knows the model by another name.
func ExampleNewFailoverTransport() {
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer sk-main" {
			w.Header().Set("Retry-After", "20")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer primary.Close()
	fallback := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, `{"got":%s}`, body)
	}))
	defer fallback.Close()

	tr, err := llmretry.NewFailoverTransport(nil, llmretry.Failover{
		AttemptsPerTarget: 1,
		Targets: []llmretry.Target{
			{Name: "primary", BaseURL: primary.URL + "/v1", Keys: []llmretry.Key{
				llmretry.NewKey("main", "sk-main"), llmretry.NewKey("spare", "sk-spare"),
			}},
			{Name: "fallback", BaseURL: fallback.URL + "/v1", Models: map[string]string{"gpt-4o": "gpt-4o-mini"}},
		},
	}, llmretry.WithOnRetry(func(e llmretry.RetryEvent) {
		fmt.Printf("%s key %s: %s; next: %s key %q, after %v\n", e.Target, e.Key, e.Cause, e.NextTarget, e.NextKey, e.Wait)
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	client := &http.Client{Transport: tr}
	resp, err := client.Post(primary.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"gpt-4o"}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Header.Get(llmretry.TargetHeader), string(body))
	// Output:
	// primary key main: status 429; next: primary key "spare", after 0s
	// primary key spare: status 503; next: fallback key "", after 0s
	// fallback {"got":{"model":"gpt-4o-mini"}}
}
