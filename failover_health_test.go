package llmretry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// Regression tests for failover health (issue 20): each is named for the
// defect it guards against, and failed on the code before the redesign.

const modelDenied403 = `{"error":{"message":"Project ` + "`proj_x`" + ` does not have access to model ` + "`o1-pro`" +
	`","type":"invalid_request_error","param":null,"code":"model_not_found"}}`

// One request for a model the keys may not use rested each key for that
// model only: the next request for another model is served at once, and
// the caller got the upstream's own 403.
func TestFailoverModelDenialKeepsThePoolForOtherModels(t *testing.T) {
	p := newProvider(t, func(string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			status(200, okJSON)(w, r)
		}
	})
	p.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		p.mu.Lock()
		p.got = append(p.got, seen{auth: key})
		p.mu.Unlock()
		if bytes.Contains(b, []byte(`"o1-pro"`)) {
			status(403, modelDenied403)(w, r)
			return
		}
		status(200, okJSON)(w, r)
	})
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{
		Name: "openai", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")},
	}}})
	resp, body := send(t, c, p.URL, "o1-pro")
	if resp.StatusCode != 403 || !strings.Contains(body, "model_not_found") {
		t.Fatalf("status %d body %q: want the upstream's own 403", resp.StatusCode, body)
	}
	for _, model := range []string{"gpt-4o", "gpt-4o-mini"} {
		req := post(t, p.URL+"/chat/completions", `{"model":"`+model+`"}`)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s after a denial for o1-pro: %v", model, err)
		}
		readAll(t, resp)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", model, resp.StatusCode)
		}
	}
}

// A client that left while its request was moving to a target due for its
// probe gave the probe back: the target is probed again afterwards.
func TestFailoverCancelDuringMoveToProbedTargetGivesTheProbeBack(t *testing.T) {
	var mu sync.Mutex
	bUp := false
	a := newProvider(t, always(status(503, `{}`)))
	b := newProvider(t, func(string) http.HandlerFunc {
		mu.Lock()
		defer mu.Unlock()
		if bUp {
			return status(200, okJSON)
		}
		return status(503, `{}`)
	})
	clk := newFakeClock()
	var cancelOnRetry func()
	_, c := failoverTransport(t, clk, Failover{
		AttemptsPerTarget: 1,
		Outliers:          Outliers{Failures: 1, Ejection: 30 * time.Second},
		Targets:           []Target{{Name: "a", BaseURL: a.URL}, {Name: "b", BaseURL: b.URL}},
	}, WithPolicy(Policy{MaxAttempts: 2}), WithOnRetry(func(RetryEvent) {
		if cancelOnRetry != nil {
			cancelOnRetry()
		}
	}))
	send(t, c, a.URL, "m") // a and b fail once each: both ejected
	mu.Lock()
	bUp = true
	mu.Unlock()
	clk.Advance(31 * time.Second)

	// a is probed and fails; the request moves to b, claiming b's probe,
	// and its client leaves right then.
	ctx, cancel := context.WithCancel(context.Background())
	cancelOnRetry = cancel
	req := post(t, a.URL+"/chat/completions", `{"model":"m"}`).WithContext(ctx)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("the cancelled request succeeded")
	}
	cancelOnRetry = nil

	resp, _ := send(t, c, a.URL, "m")
	if resp.StatusCode != 200 || resp.Header.Get(TargetHeader) != "b" {
		t.Fatalf("status %d from %q: b's probe was lost with the cancelled request", resp.StatusCode, resp.Header.Get(TargetHeader))
	}
}

// A quota 429 asking for a wait of 31 years rested its key for the ceiling
// (a day by default), not for 31 years.
func TestFailoverHostileRetryAfterRestsAKeyForTheCeiling(t *testing.T) {
	p := newProvider(t, func(key string) http.HandlerFunc {
		if key == "sk-a" {
			return status(429, `{"error":{"code":"insufficient_quota"}}`, "Retry-After", "999999999")
		}
		return status(200, okJSON)
	})
	clk := newFakeClock()
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{Name: "o", BaseURL: p.URL,
		Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}}}},
		WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	send(t, c, p.URL, "m")
	if len(health) == 0 || health[0].Until.After(clk.Now().Add(24*time.Hour)) {
		t.Fatalf("health %+v: a rest past the one-day ceiling", health)
	}
	clk.Advance(24*time.Hour + time.Second)
	send(t, c, p.URL, "m")
	if got := p.keys(); got[len(got)-1] != "sk-a" && (len(got) < 2 || got[len(got)-2] != "sk-a") {
		t.Fatalf("keys %v: a still out a day later", got)
	}
}

// A client's model named "*" that got 429s with an empty bucket rested the
// key for that model only: it could not pass for the key-wide quota mark.
func TestFailoverModelNamedStarCannotTakeAKeyOutForEveryModel(t *testing.T) {
	p := newProvider(t, func(key string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			status(200, okJSON)(w, r)
		}
	})
	p.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		p.mu.Lock()
		p.got = append(p.got, seen{auth: key})
		p.mu.Unlock()
		if bytes.Contains(b, []byte(`"*"`)) {
			status(429, `{}`, "Retry-After", "5", "X-Ratelimit-Remaining-Requests", "0")(w, r)
			return
		}
		status(200, okJSON)(w, r)
	})
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{Name: "o", BaseURL: p.URL,
		Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}}}}, WithPolicy(Policy{MaxAttempts: 1}))
	send(t, c, p.URL, "*")
	send(t, c, p.URL, "gpt-4o")
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-a]" {
		t.Fatalf("keys %v: a 429 for model \"*\" took key a out for gpt-4o", got)
	}
}

// The allow-list and the rename read the body the same way: a body with a
// case-variant "Model" key, or one that is not JSON (NaN), is refused when
// a target has Models, and nothing is sent.
func TestFailoverBodyTheAllowListCannotReadTheSameWayIsRefused(t *testing.T) {
	for name, body := range map[string]string{
		"case variant": `{"model":"gpt-4o","Model":"o1-pro"}`,
		"duplicate":    `{"model":"gpt-4o","model":"o1-pro"}`,
		"NaN":          `{"model":"gpt-4o","temperature":NaN}`,
		"truncated":    `{"model":"gpt-4o","messages":[`,
	} {
		t.Run(name, func(t *testing.T) {
			p := newProvider(t, always(status(200, okJSON)))
			_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
				{Name: "a", BaseURL: p.URL, Models: map[string]string{"gpt-4o": "gpt-4o-2024-08-06"}},
			}})
			resp, err := c.Do(post(t, p.URL+"/chat/completions", body))
			if err == nil {
				resp.Body.Close()
			}
			if n := len(p.requests()); n != 0 {
				t.Fatalf("%d requests sent (model seen upstream: %q)", n, p.requests()[0].model)
			}
			var e *Error
			if !errors.As(err, &e) || e.Reason != ReasonInvalidRequest || !strings.Contains(e.Error(), "body") {
				t.Fatalf("err %v: want ReasonInvalidRequest naming the body", err)
			}
		})
	}
}

// countingDiscard reads and drops every request body.
type countingDiscard struct{}

func (countingDiscard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
}

// Renaming the model cost 5.4 times the body in memory; it may cost at
// most one extra body-sized buffer.
func TestFailoverRenameHoldsAtMostOneBodyCopy(t *testing.T) {
	const size = 16 << 20
	body := make([]byte, 0, size+64)
	body = append(body, `{"model":"gpt-4o","messages":[{"role":"user","content":"`...)
	body = append(body, bytes.Repeat([]byte("x"), size)...)
	body = append(body, `"}]}`...)
	tr, err := NewFailoverTransport(countingDiscard{}, Failover{Targets: []Target{
		{Name: "a", BaseURL: "https://a.test/v1", Models: map[string]string{"gpt-4o": "openai/gpt-4o"}},
	}}, WithBudget(nil))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", "https://a.test/v1/chat/completions", bytes.NewReader(body))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > size*5/4 {
		t.Fatalf("the rename allocated %d MiB for a %d MiB body: more than one copy", grew>>20, size>>20)
	}
}

// A primary that fails with no server wait is left at once for another
// target that can serve now: no backoff is slept first.
func TestFailoverGoesAtOnceWhenAnotherTargetCanServe(t *testing.T) {
	primary := newProvider(t, always(status(503, `{}`)))
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL},
	}})
	resp, _ := send(t, c, primary.URL, "m")
	if resp.Header.Get(TargetHeader) != "b" || len(clk.Waits()) != 0 || len(primary.requests()) != 1 {
		t.Fatalf("served by %q after waits %v and %d primary attempts: want b at once", resp.Header.Get(TargetHeader), clk.Waits(), len(primary.requests()))
	}
}

// A retry whose wait was cancelled was never sent: the budget stops
// counting it as under way.
func TestSynctest_RetryCancelledDuringItsWaitIsNotUnderWay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		budget := NewRatioBudget(BudgetConfig{})
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) { return reply(r, 503, "{}"), nil })
		tr := NewTransport(base, WithBudget(budget))
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "POST", "https://a.test/v1/chat/completions", strings.NewReader(`{}`))
		done := make(chan error)
		go func() {
			_, err := tr.RoundTrip(req)
			done <- err
		}()
		synctest.Wait() // in its backoff
		cancel()
		<-done
		c := budget.Counts()
		if under := c.Retries - c.RetriesOK - c.RetriesFailed; c.Retries != 1 || under != 0 {
			t.Fatalf("counts %+v: the cancelled retry is still under way", c)
		}
	})
}

// One unparsable part of the caller's query no longer drops the whole
// query: parseable parameters go on, beside the target's own.
func TestFailoverKeepsTheCallersParseableQuery(t *testing.T) {
	az := newProvider(t, always(status(200, okJSON)))
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "azure", BaseURL: az.URL + "/openai/v1?api-version=preview", KeyHeader: "api-key", Keys: []Key{NewKey("k", "az-1")}},
	}})
	resp, err := c.Do(post(t, az.URL+"/openai/v1/chat/completions?trace=1&bad=%zz&user=u", `{"model":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	if got := az.requests()[0].query; got != "trace=1&user=u&api-version=preview" {
		t.Fatalf("query %q: want the caller's parseable parameters beside api-version", got)
	}
}

// A caller's key in any spelling of the parameter's name is never sent to
// a target: ?%6Bey= is ?key=.
func TestFailoverNeverForwardsAQueryKeyInAnySpelling(t *testing.T) {
	g := newProvider(t, always(status(200, okJSON)))
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "g", BaseURL: g.URL + "/v1beta", Family: FamilyGemini, Keys: []Key{NewKey("k", "AIza-target")}},
	}})
	for _, q := range []string{"%6Bey=caller-secret", "ke%79=caller-secret", "access_token=caller-secret", "alt=sse&KEY=caller-secret"} {
		resp, err := c.Do(post(t, g.URL+"/v1beta/models/gemini-2.5-flash:generateContent?"+q, `{"contents":[]}`))
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
	}
	for _, s := range g.requests() {
		if strings.Contains(s.query, "caller-secret") {
			t.Fatalf("the caller's key reached the target: ?%s", s.query)
		}
	}
}

// A Gemini model segment is a model name: dot-segments and slashes after
// it cannot carry the request past the allow-list.
func TestFailoverGeminiModelPathCannotSidestepTheAllowList(t *testing.T) {
	g := newProvider(t, always(status(200, okJSON)))
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "g", BaseURL: g.URL + "/v1beta", Family: FamilyGemini, Keys: []Key{NewKey("k", "AIza-1")},
			Models: map[string]string{"gemini-2.5-flash": "gemini-2.5-flash"}},
	}})
	for _, path := range []string{
		"/v1beta/models/gemini-2.5-flash/../gemini-2.5-pro:generateContent",
		"/v1beta/models/gemini-2.5-flash/%2e%2e/gemini-2.5-pro:generateContent",
		"/v1beta/models/gemini-2.5-flash/x:generateContent",
	} {
		resp, err := c.Do(post(t, g.URL+path, `{"contents":[]}`))
		if err == nil {
			resp.Body.Close()
		}
	}
	if n := len(g.requests()); n != 0 {
		t.Fatalf("%d requests sent: first to %s", n, g.requests()[0].path)
	}
}
