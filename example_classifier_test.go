package llmretry_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry"
)

// Add a rule of your own in front of the built-in ones: here, this
// upstream's 409s are transient and worth a retry. The built-in rules still
// decide everything the rule passes on.
func ExampleWithClassifier() {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			http.Error(w, "conflict, try again", http.StatusConflict)
			return
		}
		io.WriteString(w, `{"ok":true}`)
	}))
	defer srv.Close()

	conflictsAreTransient := llmretry.ClassifierFunc(func(a llmretry.Attempt) llmretry.Decision {
		if a.Response != nil && a.Response.StatusCode == http.StatusConflict {
			return llmretry.Decision{Action: llmretry.Retry, Wait: 10 * time.Millisecond, Cause: "conflict"}
		}
		return llmretry.Decision{} // Pass: the next rule decides
	})
	client := &http.Client{Transport: llmretry.NewTransport(nil,
		llmretry.WithClassifier(llmretry.Classifiers(conflictsAreTransient, llmretry.DefaultClassifier())),
		llmretry.WithOnRetry(func(e llmretry.RetryEvent) { fmt.Println("retrying:", e.Cause) }),
	)}
	resp, err := client.Get(srv.URL)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode, hits.Load(), "attempts")
	// Output:
	// retrying: conflict
	// 200 2 attempts
}

// A rule that reads a self-hosted server's own error shape. Attempt.Body
// peeks at the start of the body and puts it back, so whoever gets the
// response still reads all of it.
func ExampleAttempt_Body() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"object":"error","type":"EngineDraining","message":"restarting"}`)
	}))
	defer srv.Close()

	draining := llmretry.ClassifierFunc(func(a llmretry.Attempt) llmretry.Decision {
		if a.Response == nil || a.Response.StatusCode != http.StatusBadRequest {
			return llmretry.Decision{}
		}
		if body, err := a.Body(); err == nil && bytes.Contains(body, []byte(`"EngineDraining"`)) {
			return llmretry.Decision{Action: llmretry.Retry, Wait: time.Millisecond, Cause: "engine draining"}
		}
		return llmretry.Decision{}
	})
	client := &http.Client{Transport: llmretry.NewTransport(nil,
		llmretry.WithPolicy(llmretry.Policy{MaxAttempts: 2}),
		llmretry.WithClassifier(llmretry.Classifiers(draining, llmretry.DefaultClassifier())),
		llmretry.WithOnStop(func(e llmretry.StopEvent) { fmt.Println("stopped:", e.Reason, "after", e.Cause) }),
	)}
	resp, err := client.Post(srv.URL, "application/json", strings.NewReader(`{}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))
	// Output:
	// stopped: attempts exhausted after engine draining
	// 400 {"object":"error","type":"EngineDraining","message":"restarting"}
}
