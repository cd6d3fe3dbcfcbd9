package llmretry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmretry/llmretry/llmretrytest"
)

// Regression tests for failover health (issue 20): each is named for the
// defect it guards against, and failed on the code before the redesign.

const modelDenied403 = `{"error":{"message":"Project ` + "`proj_x`" + ` does not have access to model ` + "`o1-pro`" +
	`","type":"invalid_request_error","param":null,"code":"model_not_found"}}`

// One request for a model the keys may not use rested each key for that
// model only: the next request for another model is served at once, and
// the caller got the upstream's own 403.
func TestFailoverModelDenialKeepsThePoolForOtherModels(t *testing.T) {
	p := newModelProvider(t, func(_, model string) http.HandlerFunc {
		if model == "o1-pro" {
			return status(403, modelDenied403)
		}
		return status(200, okJSON)
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
	p := newModelProvider(t, func(_, model string) http.HandlerFunc {
		if model == "*" {
			return status(429, `{}`, "Retry-After", "5", "X-Ratelimit-Remaining-Requests", "0")
		}
		return status(200, okJSON)
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
	if grew := after.TotalAlloc - before.TotalAlloc; grew > size/16 { // the rename streams: no copy of the body
		t.Fatalf("the rename allocated %d KiB for a %d MiB body: it copied the body", grew>>10, size>>20)
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
		if under := c.Retries - c.RetriesOK - c.RetriesFailed - c.RetriesAbandoned; c.Retries != 1 || under != 0 {
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

// A caller's Cookie is never sent to a target, as its credentials are
// not: no LLM API takes one, and it may carry a session with another site.
func TestFailoverNeverForwardsTheCallersCookie(t *testing.T) {
	p := newProvider(t, always(status(200, okJSON)))
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("k", "sk-target")}},
	}})
	req := post(t, p.URL+"/chat/completions", `{"model":"m"}`)
	req.Header.Set("Cookie", "session=caller-session")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	got := p.requests()
	if len(got) != 1 {
		t.Fatalf("%d requests sent", len(got))
	}
	if cookie := got[0].header.Get("Cookie"); cookie != "" {
		t.Fatalf("the target got Cookie %q", cookie)
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

// ejectedThenDue sets up targets a (failing) and b (down, then healthy),
// both ejected after one failure each, with their ejections over: the next
// request probes a, fails, and moves to b as b's probe.
func ejectedThenDue(t *testing.T, b http.HandlerFunc, opts ...Option) (*http.Client, *provider, func()) {
	t.Helper()
	var mu sync.Mutex
	bUp := false
	a := newProvider(t, always(status(503, `{}`)))
	bp := newProvider(t, func(string) http.HandlerFunc {
		mu.Lock()
		defer mu.Unlock()
		if bUp {
			return b
		}
		return status(503, `{}`)
	})
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{
		AttemptsPerTarget: 1,
		Outliers:          Outliers{Failures: 1, Ejection: 30 * time.Second},
		Targets:           []Target{{Name: "a", BaseURL: a.URL}, {Name: "b", BaseURL: bp.URL}},
	}, append([]Option{WithPolicy(Policy{MaxAttempts: 2})}, opts...)...)
	send(t, c, a.URL, "m")
	mu.Lock()
	bUp = true
	mu.Unlock()
	clk.Advance(31 * time.Second)
	return c, a, func() {
		mu.Lock()
		defer mu.Unlock()
		bUp = true
	}
}

// A probe ends on every path: a request that holds one and ends by any
// way (its client leaving during the send, a panic in an observer's hook)
// gives it back, and the target is probed again by the next request.
func TestFailoverProbeIsGivenBackWhereverTheRequestEnds(t *testing.T) {
	t.Run("cancelled during the send", func(t *testing.T) {
		release := make(chan struct{})
		inSend := make(chan struct{}, 1)
		var calls sync.Mutex
		n := 0
		c, a, _ := ejectedThenDue(t, func(w http.ResponseWriter, r *http.Request) {
			calls.Lock()
			n++
			first := n == 1
			calls.Unlock()
			if first {
				inSend <- struct{}{}
				select { // the probe's send hangs until its client leaves
				case <-r.Context().Done():
				case <-release:
				}
				return
			}
			status(200, okJSON)(w, r)
		})
		defer close(release)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() {
			resp, err := c.Do(post(t, a.URL+"/chat/completions", `{"model":"m"}`).WithContext(ctx))
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		<-inSend
		cancel()
		if err := <-done; err == nil {
			t.Fatal("the cancelled request succeeded")
		}
		resp, _ := send(t, c, a.URL, "m")
		if resp.Header.Get(TargetHeader) != "b" {
			t.Fatalf("served by %q: b's probe was lost with the cancelled send", resp.Header.Get(TargetHeader))
		}
	})
	t.Run("cancelled during a wait", func(t *testing.T) {
		// b's probe fails with a short wait and b is the only place left:
		// the request waits to retry b, and its client leaves then.
		var mu sync.Mutex
		bAnswer := status(503, `{}`, "Retry-After", "1")
		var cancelOnWait func()
		c, a, _ := ejectedThenDue(t, func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			h := bAnswer
			mu.Unlock()
			h(w, r)
		}, WithPolicy(Policy{MaxAttempts: 3}), WithOnRetry(func(e RetryEvent) {
			if e.Wait > 0 && cancelOnWait != nil {
				cancelOnWait()
			}
		}))
		ctx, cancel := context.WithCancel(context.Background())
		cancelOnWait = cancel
		if resp, err := c.Do(post(t, a.URL+"/chat/completions", `{"model":"m"}`).WithContext(ctx)); err == nil {
			resp.Body.Close()
		}
		cancelOnWait = nil
		mu.Lock()
		bAnswer = status(200, okJSON)
		mu.Unlock()
		clk := c.Transport.(*Transport).cfg.clock.(*llmretrytest.Clock)
		clk.Advance(2 * time.Minute) // past b's longer ejection
		resp, _ := send(t, c, a.URL, "m")
		if resp.Header.Get(TargetHeader) != "b" {
			t.Fatalf("served by %q: b was not probed again after a request was cancelled in its wait", resp.Header.Get(TargetHeader))
		}
	})
	t.Run("panic in OnRetry", func(t *testing.T) {
		var armed atomic.Bool
		c, a, _ := ejectedThenDue(t, status(200, okJSON), WithOnRetry(func(RetryEvent) {
			if armed.CompareAndSwap(true, false) {
				panic("observer's bug") // b's probe is claimed: the move is being reported
			}
		}))
		armed.Store(true)
		func() {
			defer func() { _ = recover() }()
			resp, err := c.Do(post(t, a.URL+"/chat/completions", `{"model":"m"}`))
			if err == nil {
				resp.Body.Close()
			}
		}()
		resp, _ := send(t, c, a.URL, "m")
		if resp.Header.Get(TargetHeader) != "b" {
			t.Fatalf("served by %q: b's probe was lost to the panic", resp.Header.Get(TargetHeader))
		}
	})
	t.Run("panic in OnHealth", func(t *testing.T) {
		// Key a's recheck is the probe; the target's ejection is reported
		// while it is held.
		var mu sync.Mutex
		answerA := status(401, `{"error":{"type":"invalid_api_key"}}`)
		p := newProvider(t, func(key string) http.HandlerFunc {
			mu.Lock()
			defer mu.Unlock()
			if key == "sk-a" {
				return answerA
			}
			return status(200, okJSON)
		})
		var armed atomic.Bool
		clk := newFakeClock()
		_, c := failoverTransport(t, clk, Failover{Recheck: time.Minute, Outliers: Outliers{Failures: 1, Ejection: 30 * time.Second},
			Targets: []Target{{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}}}},
			WithOnHealth(func(e HealthEvent) {
				if e.Health == TargetEjected && armed.CompareAndSwap(true, false) {
					panic("observer's bug")
				}
			}))
		send(t, c, p.URL, "m") // a refused: out until its recheck
		mu.Lock()
		answerA = status(503, `{}`)
		mu.Unlock()
		clk.Advance(61 * time.Second)
		armed.Store(true)
		func() { // a's recheck gets a 503: the target is ejected, and the report panics
			defer func() { _ = recover() }()
			resp, err := c.Do(post(t, p.URL+"/chat/completions", `{"model":"m"}`))
			if err == nil {
				resp.Body.Close()
			}
		}()
		mu.Lock()
		answerA = status(200, okJSON)
		mu.Unlock()
		clk.Advance(31 * time.Second)
		send(t, c, p.URL, "m")
		if got := p.keys(); got[len(got)-1] != "sk-a" {
			t.Fatalf("keys %v: a's recheck was lost to the panic", got)
		}
	})
}

// A 404 for an unknown model rests the key for that model and may move
// the request to another target that serves it, but never walks through
// the keys of one target.
func TestFailover404ForAModelMovesOnWithoutWalkingKeys(t *testing.T) {
	const notFound = `{"error":{"message":"The model ` + "`gpt-9`" + ` does not exist or you do not have access to it.","type":"invalid_request_error","code":"model_not_found"}}`
	a := newProvider(t, always(status(404, notFound)))
	b := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "a", BaseURL: a.URL, Keys: []Key{NewKey("a1", "sk-a1"), NewKey("a2", "sk-a2")}},
		{Name: "b", BaseURL: b.URL, Keys: []Key{NewKey("b1", "sk-b1")}},
	}}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	resp, _ := send(t, c, a.URL, "gpt-9")
	if resp.Header.Get(TargetHeader) != "b" || fmt.Sprint(a.keys()) != "[sk-a1]" {
		t.Fatalf("served by %q after a's keys %v: want one key of a, then b", resp.Header.Get(TargetHeader), a.keys())
	}
	if len(health) != 1 || health[0].Health != KeyDenied || health[0].Key != "a1" || health[0].Model != "gpt-9" {
		t.Fatalf("health %+v: want a1 denied gpt-9", health)
	}
	// With one target, the 404 is the caller's: handed over at once.
	only := newProvider(t, always(status(404, notFound)))
	_, c = failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "o", BaseURL: only.URL, Keys: []Key{NewKey("k1", "sk-1"), NewKey("k2", "sk-2")}},
	}})
	resp, body := send(t, c, only.URL, "gpt-9")
	if resp.StatusCode != 404 || !strings.Contains(body, "model_not_found") || len(only.requests()) != 1 {
		t.Fatalf("status %d after %d requests: want the upstream's 404 after one", resp.StatusCode, len(only.requests()))
	}
}

// A 403 about the request (a region block, a content policy, a gateway's
// quota, a CDN's page) rests no key and is handed over at once. A content
// policy refusal is about what was asked: another key would be refused the
// same, and resting the key would take it from every other request.
func TestFailover403AboutTheRequestRestsNoKey(t *testing.T) {
	for name, body := range map[string]string{
		"region":         `{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","type":"request_forbidden"}}`,
		"content policy": contentPolicy403,
		"gateway":        `{"statusCode":403,"message":"Out of call volume quota. Quota will be replenished in 00:00:06."}`,
		"html":           `<html><body>Access denied</body></html>`,
		"empty":          ``,
	} {
		t.Run(name, func(t *testing.T) {
			p := newProvider(t, always(status(403, body)))
			var health []HealthEvent
			_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
				{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("k1", "sk-1"), NewKey("k2", "sk-2")}},
			}}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
			resp, _ := send(t, c, p.URL, "m")
			resp2, _ := send(t, c, p.URL, "m")
			if resp.StatusCode != 403 || resp2.StatusCode != 403 || fmt.Sprint(p.keys()) != "[sk-1 sk-1]" || len(health) != 0 {
				t.Fatalf("keys %v, health %+v: want k1 each time, at once, and no rest", p.keys(), health)
			}
		})
	}
}

// When every key is denied a model, requests for it are still sent, one
// at a time, each to one key: the caller gets the upstream's own answer,
// never a local refusal, and a success brings the key back for it.
func TestFailoverDeniedModelIsStillSentOneRequestAtATime(t *testing.T) {
	var mu sync.Mutex
	granted := false
	inFlight, most := 0, 0
	hold := make(chan struct{})
	p := newProvider(t, func(string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			g := granted
			mu.Unlock()
			if g {
				<-hold
			}
			mu.Lock()
			inFlight--
			mu.Unlock()
			if g {
				status(200, okJSON)(w, r)
				return
			}
			status(403, modelDenied403)(w, r)
		}
	})
	clk := newFakeClock()
	var health []HealthEvent
	var hmu sync.Mutex
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("k1", "sk-1")}},
	}}, WithOnHealth(func(e HealthEvent) { hmu.Lock(); health = append(health, e); hmu.Unlock() }))
	resp, _ := send(t, c, p.URL, "o1-pro")
	if resp.StatusCode != 403 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// Access is granted; three requests at once: one is sent while the
	// others wait their turn.
	mu.Lock()
	granted = true
	mu.Unlock()
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Do(post(t, p.URL+"/chat/completions", `{"model":"o1-pro"}`))
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for {
		mu.Lock()
		n := inFlight
		mu.Unlock()
		if n == 1 {
			break
		}
		runtime.Gosched()
	}
	close(hold)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != 200 {
			t.Fatalf("a request got %d", code)
		}
	}
	if most != 1 {
		t.Fatalf("%d requests were in flight at once on the denied key, want 1", most)
	}
	hmu.Lock()
	defer hmu.Unlock()
	if last := health[len(health)-1]; last.Health != KeyRestored || last.Model != "o1-pro" {
		t.Fatalf("health %+v: want k1 restored for o1-pro", health)
	}
}

// A flood of model names cannot grow a key's per-model state without end.
func TestFailoverPerModelStateIsBounded(t *testing.T) {
	p := newProvider(t, always(status(403, modelDenied403)))
	tr, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("k1", "sk-1")}},
	}}, WithPolicy(Policy{MaxAttempts: 1}))
	for i := range maxModelHealth + 200 {
		resp, err := c.Do(post(t, p.URL+"/chat/completions", fmt.Sprintf(`{"model":"m%d"}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	k := tr.route.targets[0].keys[0]
	k.health.mu.Lock()
	n := len(k.health.models)
	k.health.mu.Unlock()
	if n > maxModelHealth {
		t.Fatalf("%d models remembered, cap %d", n, maxModelHealth)
	}
}

// cutAfterFirstOutput is a stream that sends one content delta, then
// resets the connection.
func cutAfterFirstOutput(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n")
	w.(http.Flusher).Flush()
	reset(w, r)
}

// A target that cut every stream after its first output kept all the
// traffic; a stream broken mid-way now counts against its target.
func TestFailoverStreamsCutMidwayEjectTheirTarget(t *testing.T) {
	primary := httptest.NewServer(http.HandlerFunc(cutAfterFirstOutput))
	defer primary.Close()
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Outliers: Outliers{Failures: 3},
		Targets: []Target{{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL}}})
	for range 3 {
		resp, err := c.Do(post(t, primary.URL+"/chat/completions", `{"model":"m","stream":true}`))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := c.Do(post(t, primary.URL+"/chat/completions", `{"model":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.Header.Get(TargetHeader) != "b" {
		t.Fatalf("served by %q: three streams cut mid-way did not eject a", resp.Header.Get(TargetHeader))
	}
}

// How a stream ends decides whether it counts against its target: a cut,
// an in-stream error and an end without the family's last event count;
// the caller closing early, its own idle timeout, and a whole stream do
// not.
func TestFailoverStreamEndDecidesTheTargetsHealth(t *testing.T) {
	const delta = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"
	const done = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n"
	for _, c := range []struct {
		name    string
		server  func(w http.ResponseWriter, r *http.Request, stall <-chan struct{})
		reader  func(body io.ReadCloser)
		opts    []Option
		ejected bool
	}{
		{"cut mid-way", func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
			_, _ = io.WriteString(w, delta)
			w.(http.Flusher).Flush()
			reset(w, r)
		}, readWhole, nil, true},
		{"in-stream error", func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
			_, _ = io.WriteString(w, delta+"data: {\"error\":{\"code\":502,\"message\":\"upstream died\"}}\n\n")
		}, readWhole, nil, true},
		{"no last event", func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
			_, _ = io.WriteString(w, delta) // a clean end, but no finish_reason and no [DONE]
		}, readWhole, nil, true},
		{"whole", func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
			_, _ = io.WriteString(w, delta+done)
		}, readWhole, nil, false},
		{"closed after its last event", func(w http.ResponseWriter, r *http.Request, stall <-chan struct{}) {
			_, _ = io.WriteString(w, delta+done)
			w.(http.Flusher).Flush()
			<-stall // the connection stays open: the SDK stops at [DONE] and closes
		}, readToDone, nil, false},
		{"caller closes early", func(w http.ResponseWriter, r *http.Request, stall <-chan struct{}) {
			_, _ = io.WriteString(w, delta)
			w.(http.Flusher).Flush()
			<-stall
		}, closeAfterFirst, nil, false},
		{"caller's idle timeout", func(w http.ResponseWriter, r *http.Request, stall <-chan struct{}) {
			_, _ = io.WriteString(w, delta)
			w.(http.Flusher).Flush()
			<-stall
		}, readWhole, []Option{WithIdleTimeout(time.Millisecond)}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			stall := make(chan struct{})
			primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				w.Header().Set("Content-Type", "text/event-stream")
				c.server(w, r, stall)
			}))
			defer primary.Close()
			defer close(stall)
			fallback := newProvider(t, always(status(200, okJSON)))
			clk := newFakeClock()
			base := &http.Transport{}
			defer base.CloseIdleConnections()
			opts := append([]Option{WithClock(clk)}, c.opts...)
			if c.name == "caller's idle timeout" {
				opts = []Option{WithIdleTimeout(5 * time.Millisecond)} // the real clock: the idle body's timer
			}
			tr, err := NewFailoverTransport(base, Failover{Outliers: Outliers{Failures: 2},
				Targets: []Target{{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL}}}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			cl := &http.Client{Transport: tr}
			for range 2 {
				resp, err := cl.Do(post(t, primary.URL+"/chat/completions", `{"model":"m","stream":true}`))
				if err != nil {
					t.Fatal(err)
				}
				c.reader(resp.Body)
			}
			resp, err := cl.Do(post(t, primary.URL+"/chat/completions", `{"model":"m"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if ejected := resp.Header.Get(TargetHeader) == "b"; ejected != c.ejected {
				t.Fatalf("after two such streams a ejected: %v, want %v", ejected, c.ejected)
			}
		})
	}
}

func readWhole(body io.ReadCloser) {
	_, _ = io.Copy(io.Discard, body)
	body.Close()
}

// readToDone reads a chat stream up to its [DONE], as SDKs do, then closes.
func readToDone(body io.ReadCloser) {
	var got []byte
	buf := make([]byte, 512)
	for !bytes.Contains(got, []byte("[DONE]")) {
		n, err := body.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	body.Close()
}

func closeAfterFirst(body io.ReadCloser) {
	buf := make([]byte, 512)
	_, _ = body.Read(buf)
	body.Close()
}

// A probe answered with a stream ends with the stream: the target is
// trusted again when the stream ends whole, not when it is handed over,
// and no other request probes it meanwhile.
func TestFailoverProbeAnsweredWithAStreamEndsWithTheStream(t *testing.T) {
	var mu sync.Mutex
	down := true
	release := make(chan struct{})
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		mu.Lock()
		d := down
		mu.Unlock()
		if d {
			w.WriteHeader(503)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
	}))
	defer primary.Close()
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	var mh sync.Mutex
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{Outliers: Outliers{Failures: 1, Ejection: 30 * time.Second},
		Targets: []Target{{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL}}},
		WithOnHealth(func(e HealthEvent) { mh.Lock(); health = append(health, e); mh.Unlock() }))
	send(t, c, primary.URL, "m") // a ejected
	mu.Lock()
	down = false
	mu.Unlock()
	clk.Advance(31 * time.Second)
	resp, err := c.Do(post(t, primary.URL+"/chat/completions", `{"model":"m","stream":true}`))
	if err != nil || resp.Header.Get(TargetHeader) != "a" {
		t.Fatalf("the probe: %v from %q", err, resp.Header.Get(TargetHeader))
	}
	mh.Lock()
	restoredEarly := health[len(health)-1].Health == TargetRestored
	mh.Unlock()
	if restoredEarly {
		t.Fatal("a was trusted again when its stream was handed over")
	}
	if r2, _ := send(t, c, primary.URL, "m"); r2.Header.Get(TargetHeader) != "b" {
		t.Fatal("a second request probed a while its probe's stream ran")
	}
	close(release)
	readWhole(resp.Body)
	mh.Lock()
	defer mh.Unlock()
	if last := health[len(health)-1]; last.Health != TargetRestored || last.Target != "a" {
		t.Fatalf("health %+v: want a restored by its stream's whole end", health)
	}
}

// contentPolicy403 is OpenAI's refusal of what a request asked for (its
// safety system), sent with 403: it names the request, not the key.
const contentPolicy403 = `{"error":{"message":"Your request was rejected as a result of our safety system. Your prompt may contain text that is not allowed by our safety system.","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}`

// How a 403 or a 404 is read: what it denies, from the providers' own
// errors.
func TestDenialOfReadsProvidersForbiddenAndNotFound(t *testing.T) {
	for _, c := range []struct {
		name   string
		status int
		body   string
		want   denial
	}{
		{"openai project", 403, modelDenied403, deniedModel},
		{"openai not found", 404, `{"error":{"message":"The model ` + "`gpt-9`" + ` does not exist or you do not have access to it.","type":"invalid_request_error","code":"model_not_found"}}`, unknownModel},
		{"openai region", 403, `{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","type":"request_forbidden"}}`, deniedRequest},
		{"openai content policy", 403, contentPolicy403, deniedRequest},
		{"content filter", 403, `{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter"}}`, deniedRequest},
		{"moderation naming the model", 403, `{"error":{"message":"Your request to gpt-9 was flagged by our moderation system.","type":"invalid_request_error","code":null}}`, deniedRequest},
		{"openai wrong path", 404, `{"error":{"message":"Invalid URL (POST /v1/chat/completion)","type":"invalid_request_error","code":null}}`, deniedRequest},
		{"anthropic permission", 403, `{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}`, deniedModel},
		{"anthropic model not found", 404, `{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}`, unknownModel},
		{"gemini permission", 403, `{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED"}}`, deniedModel},
		{"gemini not found", 404, `{"error":{"code":404,"message":"models/gemini-9 is not found for API version v1beta","status":"NOT_FOUND"}}`, unknownModel},
		{"gemini list-wrapped", 403, `[{"error":{"code":403,"message":"Permission denied on resource project x.","status":"PERMISSION_DENIED"}}]`, deniedModel},
		{"apim quota", 403, `{"statusCode":403,"message":"Out of call volume quota. Quota will be replenished in 00:00:06."}`, deniedRequest},
		{"cdn page", 403, `<html><body>Access denied</body></html>`, deniedRequest},
	} {
		if got := denialOf(c.status, []byte(c.body), "gpt-9"); got != c.want {
			t.Errorf("%s: denial %d, want %d", c.name, got, c.want)
		}
	}
}

// A key told to wait for one model rests for that model only: other
// models keep using it.
func TestFailoverKeyToldToWaitRestsForThatModelOnly(t *testing.T) {
	p := newModelProvider(t, func(key, model string) http.HandlerFunc {
		if key == "sk-a" && model == "gpt-4o" {
			return status(429, `{"error":{"type":"rate_limit_error"}}`, "Retry-After", "20")
		}
		return status(200, okJSON)
	})
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{{Name: "o", BaseURL: p.URL,
		Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}}}})
	send(t, c, p.URL, "gpt-4o")      // a told to wait for gpt-4o: b serves
	send(t, c, p.URL, "gpt-4o")      // b again
	send(t, c, p.URL, "gpt-4o-mini") // a still serves another model
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-b sk-b sk-a]" {
		t.Fatalf("keys %v: want a resting for gpt-4o only", got)
	}
}

// AttemptsPerTarget counts the failures a request sits out on one target
// when the server asked for a short wait: with 1, a 503 asking for 1 s is
// not waited for when another target can serve.
func TestFailoverAttemptsPerTargetBoundsTheShortWaitsSatOut(t *testing.T) {
	for _, apt := range []int{1, 2} {
		primary := newProvider(t, always(status(503, `{}`, "Retry-After", "1")))
		fallback := newProvider(t, always(status(200, okJSON)))
		clk := newFakeClock()
		_, c := failoverTransport(t, clk, Failover{AttemptsPerTarget: apt, Targets: []Target{
			{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL}}}, WithPolicy(Policy{MaxAttempts: 5}))
		resp, _ := send(t, c, primary.URL, "m")
		if resp.Header.Get(TargetHeader) != "b" || len(primary.requests()) != apt || len(clk.Waits()) != apt-1 {
			t.Fatalf("AttemptsPerTarget %d: served by %q after %d primary attempts and waits %v", apt, resp.Header.Get(TargetHeader), len(primary.requests()), clk.Waits())
		}
	}
}

// Many requests queued behind a denied key's one request in flight each
// get the upstream's answer in turn: none gets a local refusal.
func TestFailoverManyRequestsForADeniedModelGetNoLocalRefusal(t *testing.T) {
	p := newProvider(t, always(status(403, modelDenied403)))
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("k1", "sk-1")}}}})
	send(t, c, p.URL, "o1-pro") // k1 denied o1-pro
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Do(post(t, p.URL+"/chat/completions", `{"model":"o1-pro"}`))
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 403 {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a request for the denied model got %v, want the upstream's 403", err)
	}
}

// A plain Transport never takes the caller's own key out: a quota mark a
// failover Transport put in a shared store for the same key holds no
// plain request.
func TestPlainTransportIgnoresAQuotaMarkForItsKey(t *testing.T) {
	store := NewLocalHealthStore()
	up := newProvider(t, always(status(200, okJSON)))
	u, _ := url.Parse(up.URL)
	req := post(t, up.URL+"/v1/messages", `{"model":"m"}`)
	req.Header.Set("X-Api-Key", "sk-ant-shared")
	j := journey{rt: ownRoute(nil), req: req}
	store.Put(Mark{Kind: MarkQuota, Scheme: u.Scheme, Host: u.Host, Key: j.callerCred()}, time.Now().Add(time.Hour))
	_, c := testTransport(t, newFakeClock(), WithHealthStore(store))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("a plain request was refused on its own: %v", err)
	}
	resp.Body.Close()
	if len(up.requests()) != 1 {
		t.Fatal("nothing was sent")
	}
}

// A multipart upload names no model: where a target has an allow-list it
// goes to a target without one, as before, and is not refused as a body
// that cannot be read.
func TestFailoverMultipartGoesToATargetWithoutModels(t *testing.T) {
	listed := newProvider(t, always(status(200, okJSON)))
	open := newProvider(t, always(status(200, okJSON)))
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "listed", BaseURL: listed.URL, Models: map[string]string{"gpt-4o": "gpt-4o"}},
		{Name: "open", BaseURL: open.URL}}})
	req := post(t, listed.URL+"/audio/transcriptions", "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n")
	req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get(TargetHeader) != "open" || len(listed.requests()) != 0 {
		t.Fatalf("served by %q: want the target without an allow-list", resp.Header.Get(TargetHeader))
	}
}

// A probe answered with a stream the caller never closes is given back
// when its lease runs out: the target is probed again.
func TestFailoverStreamNeverClosedGivesItsProbeBackAtItsLease(t *testing.T) {
	var mu sync.Mutex
	var hits atomic.Int32
	down := true
	hang := make(chan struct{})
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		hits.Add(1)
		mu.Lock()
		d := down
		mu.Unlock()
		if d {
			w.WriteHeader(503)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer primary.Close()
	defer close(hang) // before the server's Close, which waits for its handlers
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Outliers: Outliers{Failures: 1, Ejection: 30 * time.Second, MaxEjection: time.Minute},
		Targets: []Target{{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL}}})
	send(t, c, primary.URL, "m") // a ejected
	mu.Lock()
	down = false
	mu.Unlock()
	clk.Advance(31 * time.Second)
	resp, err := c.Do(post(t, primary.URL+"/chat/completions", `{"model":"m","stream":true}`))
	if err != nil || resp.Header.Get(TargetHeader) != "a" {
		t.Fatalf("the probe: %v", err)
	}
	defer resp.Body.Close()                // never read, never closed during the test
	clk.Advance(time.Minute + time.Second) // the probe's lease
	mu.Lock()
	down = true // the next probe fails: a is probed, not skipped
	mu.Unlock()
	send(t, c, primary.URL, "m")
	send(t, c, primary.URL, "m")
	if got := hits.Load(); got < 3 {
		t.Fatalf("a got %d requests: its probe was never given back", got)
	}
}

// A query part that does not parse is left out, and said so at Debug.
func TestFailoverSaysAtDebugWhichQueryPartsItLeftOut(t *testing.T) {
	az := newProvider(t, always(status(200, okJSON)))
	var logs bytes.Buffer
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{{Name: "azure", BaseURL: az.URL + "/v1?api-version=x"}}},
		WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	resp, err := c.Do(post(t, az.URL+"/v1/chat/completions?bad=%zz&ok=1", `{"model":"m"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !strings.Contains(logs.String(), "level=DEBUG") || !strings.Contains(logs.String(), "query parts that do not parse were left out") || !strings.Contains(logs.String(), "parts=1") {
		t.Fatalf("logs:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "%zz") {
		t.Fatal("the log shows the query")
	}
}

// A mark in the store that ends far beyond the Transport's MaxRest (a
// fleet member with a longer ceiling wrote it, or a store that does not
// clamp kept a hostile wait) rests the key, or ejects the target, for at
// most MaxRest from when the Transport first read it: not for as long as
// the store says, and not for MaxRest from every read.
func TestFailoverStoreMarkBeyondMaxRestRestsForTheTransportsCeiling(t *testing.T) {
	const ceiling = time.Hour
	for _, kind := range []MarkKind{MarkQuota, MarkAvoid, MarkCooldown, MarkEjection} {
		t.Run(kind.String(), func(t *testing.T) {
			a := newProvider(t, always(status(200, okJSON)))
			b := newProvider(t, always(status(200, okJSON)))
			clk := newFakeClock()
			store := NewLocalHealthStore()
			tr, c := failoverTransport(t, clk, Failover{MaxRest: ceiling, Targets: []Target{
				{Name: "a", BaseURL: a.URL, Keys: []Key{NewKey("a1", "sk-a1"), NewKey("a2", "sk-a2")}},
				{Name: "b", BaseURL: b.URL, Keys: []Key{NewKey("b1", "sk-b1")}},
			}}, WithHealthStore(store))
			u, _ := url.Parse(a.URL)
			m := Mark{Kind: kind, Scheme: u.Scheme, Host: u.Host}
			switch kind {
			case MarkEjection:
				m.Target = "a"
			case MarkQuota:
				m.Key = tr.route.targets[0].keys[0].cred
			default:
				m.Key, m.Model = tr.route.targets[0].keys[0].cred, "m"
			}
			store.Put(m, clk.Now().Add(31*365*24*time.Hour))
			// served reports which target and key served a request now.
			served := func() string {
				t.Helper()
				resp, _ := send(t, c, a.URL, "m")
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
				got := a.requests()
				if resp.Header.Get(TargetHeader) == "b" {
					got = b.requests()
				}
				return resp.Header.Get(TargetHeader) + " " + got[len(got)-1].auth
			}
			away := "a sk-a2"
			if kind == MarkEjection {
				away = "b sk-b1"
			}
			if got := served(); got != away {
				t.Fatalf("served by %q: want %q while the mark holds", got, away)
			}
			clk.Advance(ceiling - time.Minute)
			if got := served(); got != away {
				t.Fatalf("served by %q a minute before the ceiling: want %q", got, away)
			}
			// The store still says 31 years; the Transport allows an hour,
			// from its first read, and does not start it afresh.
			for range 2 {
				clk.Advance(time.Minute)
				if got := served(); got != "a sk-a1" {
					t.Fatalf("served by %q once the ceiling passed: want a's first key back", got)
				}
			}
			if !store.Until(m).After(clk.Now().Add(ceiling)) {
				t.Fatal("the test's store cut the mark itself")
			}
		})
	}
}

// The marks a Transport remembers as ending too late are bounded: a flood
// of them (one per model name) cannot grow its memory without end.
func TestOverlongMarksAreBounded(t *testing.T) {
	var o overlong
	store := NewLocalHealthStore()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for i := range maxOverlong + 200 {
		m := Mark{Kind: MarkAvoid, Scheme: "https", Host: "h", Key: "k", Model: fmt.Sprint(i)}
		store.Put(m, now.Add(time.Duration(i+2)*time.Hour))
		if got := o.until(store, m, now, time.Hour); !got.Equal(now.Add(time.Hour)) {
			t.Fatalf("mark %d cut to %v, want an hour from now", i, got)
		}
	}
	if n := len(o.m); n > maxOverlong || int(o.size.Load()) != n {
		t.Fatalf("%d marks remembered (size %d), cap %d", n, o.size.Load(), maxOverlong)
	}
}

// A plain Transport holds a request for a cooldown the store keeps for
// its caller's key and model, but never for longer than its own ceiling
// (a day): a store's 31-year cooldown does not hold it for 31 years.
func TestPlainTransportHoldsForAStoreCooldownAtMostADay(t *testing.T) {
	up := newProvider(t, always(status(200, okJSON)))
	u, _ := url.Parse(up.URL)
	req := post(t, up.URL+"/v1/chat/completions", `{"model":"m"}`)
	req.Header.Set("Authorization", "Bearer sk-own")
	j := journey{rt: ownRoute(nil), req: req}
	store := NewLocalHealthStore()
	clk := newFakeClock()
	store.Put(Mark{Kind: MarkCooldown, Scheme: u.Scheme, Host: u.Host, Key: j.callerCred(), Model: "m"}, clk.Now().Add(31*365*24*time.Hour))
	_, c := testTransport(t, clk, WithHealthStore(store))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if w := clk.Waits(); len(w) != 1 || w[0] > defaultMaxRest+time.Second {
		t.Fatalf("waits %v: want one hold of at most a day", w)
	}
}
