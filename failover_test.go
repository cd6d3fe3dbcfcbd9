package llmretry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmretry/llmretry/llmretrytest"
)

// seen is one request a provider got.
type seen struct {
	auth, model, path, query string
	header                   http.Header
}

// provider is a mock LLM API whose answer depends on the key it is sent.
type provider struct {
	*httptest.Server
	mu  sync.Mutex
	got []seen
}

// newProvider answers each request with answer(key), key being the value
// of the Authorization header without "Bearer ".
func newProvider(t *testing.T, answer func(key string) http.HandlerFunc) *provider {
	t.Helper()
	return newModelProvider(t, func(key, _ string) http.HandlerFunc { return answer(key) })
}

// newModelProvider answers each request with answer(key, model), model
// being the JSON body's "model".
func newModelProvider(t *testing.T, answer func(key, model string) http.HandlerFunc) *provider {
	t.Helper()
	p := &provider{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m struct {
			Model string `json:"model"`
		}
		_ = json.Unmarshal(b, &m)
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		p.mu.Lock()
		p.got = append(p.got, seen{auth: key, model: m.Model, path: r.URL.EscapedPath(), query: r.URL.RawQuery, header: r.Header.Clone()})
		p.mu.Unlock()
		answer(key, m.Model)(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *provider) requests() []seen {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seen(nil), p.got...)
}

func (p *provider) keys() []string {
	var ks []string
	for _, s := range p.requests() {
		ks = append(ks, s.auth)
	}
	return ks
}

const okJSON = `{"id":"x","choices":[]}`

func always(h http.HandlerFunc) func(string) http.HandlerFunc {
	return func(string) http.HandlerFunc { return h }
}

// failoverTransport makes a failover Transport on clk, with its own
// connection pool.
func failoverTransport(t *testing.T, clk *llmretrytest.Clock, f Failover, opts ...Option) (*Transport, *http.Client) {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	all := append([]Option{WithClock(clk), WithRand(fixedRand(0.5))}, opts...)
	tr, err := NewFailoverTransport(base, f, all...)
	if err != nil {
		t.Fatal(err)
	}
	return tr, &http.Client{Transport: tr}
}

func send(t *testing.T, c *http.Client, base, model string) (*http.Response, string) {
	t.Helper()
	req := post(t, base+"/chat/completions", `{"model":"`+model+`","messages":[{"role":"user","content":"hi"}],"stream":false}`)
	req.Header.Set("Authorization", "Bearer caller-own-key")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("request failed: %v", err)
	}
	return resp, readAll(t, resp)
}

func TestFailover429MovesToFreeKeyWithoutWaitAndLaterRequestsAvoidIt(t *testing.T) {
	p := newProvider(t, func(key string) http.HandlerFunc {
		if key == "sk-a" {
			return status(429, `{"error":{"type":"rate_limit_error"}}`, "Retry-After", "20")
		}
		return status(200, okJSON)
	})
	clk := newFakeClock()
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{
		Name: "openai", BaseURL: p.URL + "/v1", Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")},
	}}}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))

	resp, _ := send(t, c, p.URL+"/v1", "gpt-4o")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 from key b", resp.StatusCode)
	}
	if w := clk.Waits(); len(w) != 0 {
		t.Fatalf("waited %v with a free key at hand", w)
	}
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-b]" {
		t.Fatalf("keys sent %v, want [sk-a sk-b]", got)
	}
	if resp.Header.Get(TargetHeader) != "openai" {
		t.Fatalf("%s = %q", TargetHeader, resp.Header.Get(TargetHeader))
	}
	if len(health) != 1 || health[0].Health != KeyResting || health[0].Key != "a" || !health[0].Until.Equal(clk.Now().Add(20*time.Second)) {
		t.Fatalf("health events %+v, want key a resting 20 s", health)
	}

	// Later requests go straight to b while a rests...
	send(t, c, p.URL+"/v1", "gpt-4o")
	clk.Advance(19 * time.Second)
	send(t, c, p.URL+"/v1", "gpt-4o")
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-b sk-b sk-b]" {
		t.Fatalf("keys sent %v: a was used while resting", got)
	}
	// ... and a is used again once its wait is over.
	clk.Advance(2 * time.Second)
	send(t, c, p.URL+"/v1", "gpt-4o")
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-b sk-b sk-b sk-a sk-b]" {
		t.Fatalf("keys sent %v: a not tried first after its wait", got)
	}
}

func TestFailoverNeverSendsTheCallersCredential(t *testing.T) {
	p := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "keyed", BaseURL: p.URL + "/v1", Keys: []Key{NewKey("a", "sk-a")}},
	}})
	req := post(t, p.URL+"/v1/chat/completions?key=caller-query-key", `{"model":"m"}`)
	req.Header.Set("Authorization", "Bearer caller")
	req.Header.Set("X-Api-Key", "caller")
	req.Header.Set("Api-Key", "caller")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	got := p.requests()[0]
	if got.auth != "sk-a" || got.header.Get("X-Api-Key") != "" || got.header.Get("Api-Key") != "" || strings.Contains(got.query, "caller") {
		t.Fatalf("sent auth %q, x-api-key %q, api-key %q, query %q: the caller's credential reached a target",
			got.auth, got.header.Get("X-Api-Key"), got.header.Get("Api-Key"), got.query)
	}
	if req.Header.Get("Authorization") != "Bearer caller" || req.URL.RawQuery != "key=caller-query-key" {
		t.Fatal("the caller's request was modified")
	}

	// A target without keys gets no credential at all.
	local := newProvider(t, always(status(200, okJSON)))
	_, c = failoverTransport(t, clk, Failover{Targets: []Target{{Name: "vllm", BaseURL: local.URL + "/v1"}}})
	send(t, c, local.URL+"/v1", "m")
	if h := local.requests()[0].header; h.Get("Authorization") != "" {
		t.Fatalf("a keyless target got Authorization %q", h.Get("Authorization"))
	}
}

func TestFailoverQuotaErrorTakesKeyOutForQuotaRest(t *testing.T) {
	p := newProvider(t, func(key string) http.HandlerFunc {
		if key == "sk-a" {
			return status(429, `{"error":{"code":"insufficient_quota","message":"You exceeded your current quota"}}`)
		}
		return status(200, okJSON)
	})
	clk := newFakeClock()
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{QuotaRest: time.Hour, Targets: []Target{{
		Name: "openai", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")},
	}}}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	resp, _ := send(t, c, p.URL, "gpt-4o")
	if resp.StatusCode != 200 || len(clk.Waits()) != 0 {
		t.Fatalf("status %d, waits %v: want b at once", resp.StatusCode, clk.Waits())
	}
	if len(health) != 1 || health[0].Health != KeyOutQuota || health[0].Key != "a" {
		t.Fatalf("health %+v, want key a out for quota", health)
	}
	clk.Advance(59 * time.Minute)
	send(t, c, p.URL, "other-model") // the quota is the key's, whatever the model
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-b sk-b]" {
		t.Fatalf("keys %v: a used while out", got)
	}
	clk.Advance(2 * time.Minute)
	send(t, c, p.URL, "gpt-4o")
	if got := p.keys(); got[len(got)-2] != "sk-a" {
		t.Fatalf("keys %v: a not tried again after its quota rest", got)
	}
}

// A refused key is out for every model, then rechecked: after Recheck one
// request probes it; a probe refused again doubles the wait; a probe that
// passes brings the key back. (Before, a 401 kept it out until restart.)
func TestFailover401TakesKeyOutUntilAProbeBringsItBack(t *testing.T) {
	var mu sync.Mutex
	valid := false
	p := newProvider(t, func(key string) http.HandlerFunc {
		mu.Lock()
		defer mu.Unlock()
		if key == "sk-a" && !valid {
			return status(401, `{"error":{"type":"invalid_api_key"}}`)
		}
		return status(200, okJSON)
	})
	clk := newFakeClock()
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{Recheck: time.Minute, Targets: []Target{{
		Name: "openai", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")},
	}}}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	resp, _ := send(t, c, p.URL, "m")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d, want 200 from b", resp.StatusCode)
	}
	if len(health) != 1 || health[0].Health != KeyOutAuth || !health[0].Until.Equal(clk.Now().Add(time.Minute)) {
		t.Fatalf("health %+v: want a out until its recheck in 1 min", health)
	}
	clk.Advance(59 * time.Second)
	send(t, c, p.URL, "other-model") // refused for every model
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-b sk-b]" {
		t.Fatalf("keys %v: a refused key was used before its recheck", got)
	}
	// The recheck: a is probed, refused again, and rests twice as long.
	clk.Advance(2 * time.Second)
	send(t, c, p.URL, "m")
	if got := p.keys(); fmt.Sprint(got[3:]) != "[sk-a sk-b]" {
		t.Fatalf("keys %v: want one probe of a, then b", got)
	}
	if last := health[len(health)-1]; last.Health != KeyOutAuth || !last.Until.Equal(clk.Now().Add(2*time.Minute)) {
		t.Fatalf("health %+v: want a out for 2 min after a failed probe", health)
	}
	// The key is fixed: the next probe passes, and a is used again.
	mu.Lock()
	valid = true
	mu.Unlock()
	clk.Advance(2*time.Minute + time.Second)
	send(t, c, p.URL, "m")
	send(t, c, p.URL, "m")
	if got := p.keys(); fmt.Sprint(got[5:]) != "[sk-a sk-a]" {
		t.Fatalf("keys %v: a not back after its probe passed", got)
	}
	if last := health[len(health)-1]; last.Health != KeyRestored || last.Key != "a" {
		t.Fatalf("health %+v: want a restored", health)
	}
}

func TestFailoverKeyFaultWithNowhereToGoHandsTheResponseOver(t *testing.T) {
	p := newProvider(t, always(status(401, `{"error":{"type":"invalid_api_key"}}`)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{Name: "only", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a")}}}})
	resp, body := send(t, c, p.URL, "m")
	if resp.StatusCode != 401 || !strings.Contains(body, "invalid_api_key") {
		t.Fatalf("status %d body %q, want the 401 itself", resp.StatusCode, body)
	}
	// With its only key out, the next request is not sent at all.
	_, err := c.Do(post(t, p.URL+"/chat/completions", `{"model":"m"}`))
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonUnavailable || e.Attempts != 0 {
		t.Fatalf("err %v, want ReasonUnavailable with nothing sent", err)
	}
	if len(p.requests()) != 1 {
		t.Fatalf("%d requests, want 1", len(p.requests()))
	}
}

func TestFailoverPrimaryDownMovesToNextTargetWithModelMapped(t *testing.T) {
	primary := newProvider(t, always(status(503, `{"error":{"type":"server_error"}}`)))
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	var events []RetryEvent
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "primary", BaseURL: primary.URL + "/v1", Keys: []Key{NewKey("p", "sk-p")}},
		{Name: "router", BaseURL: fallback.URL + "/api/v1", Keys: []Key{NewKey("r", "sk-r")},
			Models: map[string]string{"gpt-4o": "openai/gpt-4o"}},
	}}, WithPolicy(Policy{MaxAttempts: 4}), WithOnRetry(func(e RetryEvent) { events = append(events, e) }))
	resp, _ := send(t, c, primary.URL+"/v1", "gpt-4o")
	if resp.StatusCode != 200 || resp.Header.Get(TargetHeader) != "router" {
		t.Fatalf("status %d from %q, want 200 from router", resp.StatusCode, resp.Header.Get(TargetHeader))
	}
	if n := len(primary.requests()); n != 1 {
		t.Fatalf("primary got %d attempts, want 1: the router could serve at once", n)
	}
	got := fallback.requests()
	if len(got) != 1 || got[0].model != "openai/gpt-4o" || got[0].path != "/api/v1/chat/completions" || got[0].auth != "sk-r" {
		t.Fatalf("fallback got %+v, want model openai/gpt-4o at /api/v1/chat/completions with key r", got)
	}
	// No backoff: going to a target that can serve beats waiting.
	if w := clk.Waits(); len(w) != 0 {
		t.Fatalf("waits %v, want no wait before the move", w)
	}
	last := events[len(events)-1]
	if last.Source != SourceFailover || last.Wait != 0 || last.Target != "primary" || last.NextTarget != "router" || last.NextKey != "r" {
		t.Fatalf("last retry event %+v, want a move from primary to router", last)
	}
}

func TestFailoverConnectionRefusedMovesOn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now: connections are refused
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "dead", BaseURL: dead + "/v1"},
		{Name: "live", BaseURL: fallback.URL + "/v1"},
	}})
	resp, _ := send(t, c, dead+"/v1", "m")
	if resp.StatusCode != 200 || resp.Header.Get(TargetHeader) != "live" {
		t.Fatalf("status %d from %q", resp.StatusCode, resp.Header.Get(TargetHeader))
	}
}

func TestFailoverServerWaitAboveThresholdMovesOnAtOnce(t *testing.T) {
	primary := newProvider(t, always(status(503, `{}`, "Retry-After", "30")))
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Threshold: 5 * time.Second, Targets: []Target{
		{Name: "a", BaseURL: primary.URL},
		{Name: "b", BaseURL: fallback.URL},
	}})
	resp, _ := send(t, c, primary.URL, "m")
	if resp.StatusCode != 200 || len(primary.requests()) != 1 || len(clk.Waits()) != 0 {
		t.Fatalf("status %d, primary attempts %d, waits %v: want b at once", resp.StatusCode, len(primary.requests()), clk.Waits())
	}
	// A short wait is sat out on the same target.
	short := newProvider(t, func() func(string) http.HandlerFunc {
		n := 0
		return func(string) http.HandlerFunc {
			n++
			if n == 1 {
				return status(503, `{}`, "Retry-After", "2")
			}
			return status(200, okJSON)
		}
	}())
	clk = newFakeClock()
	_, c = failoverTransport(t, clk, Failover{Threshold: 5 * time.Second, Targets: []Target{
		{Name: "a", BaseURL: short.URL},
		{Name: "b", BaseURL: fallback.URL},
	}})
	resp, _ = send(t, c, short.URL, "m")
	if resp.Header.Get(TargetHeader) != "a" || len(clk.Waits()) != 1 || clk.Waits()[0] < 2*time.Second {
		t.Fatalf("served by %q after waits %v: want a after its 2 s", resp.Header.Get(TargetHeader), clk.Waits())
	}
}

func TestFailoverMaxAttemptsBoundsTheWholeJourney(t *testing.T) {
	var all []*provider
	var targets []Target
	for i := range 4 {
		p := newProvider(t, always(status(500, `{}`)))
		all = append(all, p)
		targets = append(targets, Target{Name: fmt.Sprint("t", i), BaseURL: p.URL})
	}
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{AttemptsPerTarget: 1, Targets: targets}, WithPolicy(Policy{MaxAttempts: 3}))
	resp, _ := send(t, c, all[0].URL, "m")
	total := 0
	for _, p := range all {
		total += len(p.requests())
	}
	if resp.StatusCode != 500 || total != 3 || len(all[3].requests()) != 0 {
		t.Fatalf("status %d after %d attempts (4th target got %d): MaxAttempts must bound the journey", resp.StatusCode, total, len(all[3].requests()))
	}
	if resp.Header.Get(TargetHeader) != "t2" {
		t.Fatalf("failure handed over from %q, want the last target tried", resp.Header.Get(TargetHeader))
	}
}

func TestSynctest_FailoverDeadlineBoundsTheJourney(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		hits := map[string]int{}
		base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
			hits[r.URL.Host]++
			return reply(r, 503, "{}", "Retry-After", "3"), nil
		})
		tr, err := NewFailoverTransport(base, Failover{Targets: []Target{
			{Name: "a", BaseURL: "https://a.test"}, {Name: "b", BaseURL: "https://b.test"},
		}}, WithPolicy(Policy{MaxAttempts: 10}))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "POST", "https://a.test/chat/completions", strings.NewReader(`{"model":"m"}`))
		start := time.Now()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// A 3 s wait cannot fit the 2 s left: a moves to b at once, and b,
		// with nowhere else to go, stops rather than wait past the deadline.
		if time.Since(start) != 0 || hits["a.test"] != 1 || hits["b.test"] != 1 || resp.Header.Get(TargetHeader) != "b" {
			t.Fatalf("took %v, attempts %v, answer from %q", time.Since(start), hits, resp.Header.Get(TargetHeader))
		}
	})
}

func TestFailoverStreamCutAfterFirstEventIsReplayedNowhere(t *testing.T) {
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n")
		w.(http.Flusher).Flush()
		reset(w, r)
	}))
	defer primary.Close()
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL}}})
	resp, err := c.Do(post(t, primary.URL+"/chat/completions", `{"model":"m","stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("the cut stream read to a clean end")
	}
	if n := len(fallback.requests()); n != 0 {
		t.Fatalf("the fallback got %d requests after the stream reached the caller", n)
	}
}

func TestFailoverEjectsAFailingTargetAndProbesItBeforeTrustingIt(t *testing.T) {
	var healthy sync.Mutex
	down := true
	primary := newProvider(t, func(string) http.HandlerFunc {
		healthy.Lock()
		defer healthy.Unlock()
		if down {
			return status(503, `{}`)
		}
		return status(200, okJSON)
	})
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{
		AttemptsPerTarget: 1,
		Outliers:          Outliers{Failures: 3, Ejection: 30 * time.Second},
		Targets:           []Target{{Name: "a", BaseURL: primary.URL}, {Name: "b", BaseURL: fallback.URL}},
	}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	for range 3 {
		send(t, c, primary.URL, "m")
	}
	if len(health) != 1 || health[0].Health != TargetEjected || health[0].Target != "a" {
		t.Fatalf("health %+v, want a ejected after 3 failures in a row", health)
	}
	for range 5 {
		send(t, c, primary.URL, "m")
	}
	if n := len(primary.requests()); n != 3 {
		t.Fatalf("an ejected target got %d requests, want none after the 3", n)
	}
	// After the ejection, one probe; it fails: ejected again, for longer.
	clk.Advance(31 * time.Second)
	send(t, c, primary.URL, "m")
	send(t, c, primary.URL, "m")
	if n := len(primary.requests()); n != 4 || health[len(health)-1].Health != TargetEjected ||
		!health[len(health)-1].Until.Equal(clk.Now().Add(60*time.Second)) {
		t.Fatalf("primary requests %d, health %+v: want one failed probe and a 60 s ejection", n, health)
	}
	// It recovers: the next probe trusts it again.
	healthy.Lock()
	down = false
	healthy.Unlock()
	clk.Advance(61 * time.Second)
	resp, _ := send(t, c, primary.URL, "m")
	if resp.Header.Get(TargetHeader) != "a" || health[len(health)-1].Health != TargetRestored {
		t.Fatalf("served by %q, health %+v: want a restored by its probe", resp.Header.Get(TargetHeader), health)
	}
	send(t, c, primary.URL, "m")
	if n := len(primary.requests()); n != 6 {
		t.Fatalf("primary requests %d, want 6: trusted after its probe", n)
	}
}

func TestFailoverProbeIsOneRequestAtATime(t *testing.T) {
	var mu sync.Mutex
	var p probation
	now := time.Now()
	p.rest(now, time.Second, time.Minute)
	if _, ok := p.claim(now); ok {
		t.Fatal("claimed while resting")
	}
	later := now.Add(2 * time.Second)
	var probes atomic.Int32
	var got chan struct{}
	var wg sync.WaitGroup
	for range 16 { // at once: one becomes the probe, the rest wait their turn
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			defer mu.Unlock()
			if ch, ok := p.claim(later); ok {
				probes.Add(1)
				got = ch
			}
		}()
	}
	wg.Wait()
	if probes.Load() != 1 || p.state(later) != probing {
		t.Fatalf("%d probes: want one and no one else", probes.Load())
	}
	p.endProbe(got, false) // neither passed nor failed: given back
	select {
	case <-got:
	default:
		t.Fatal("a probe given back did not let its waiters go")
	}
	ch, ok := p.claim(later)
	if !ok {
		t.Fatal("a probe given back cannot be claimed again")
	}
	p.endProbe(ch, true)
	if p.state(later) != serving {
		t.Fatal("a probe that passed did not end the probation")
	}
}

func TestFailoverBudgetsArePerTarget(t *testing.T) {
	primary := newProvider(t, always(status(503, `{}`)))
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	pb := NewRatioBudget(BudgetConfig{Reserve: 1, Clock: clk})
	_, c := failoverTransport(t, clk, Failover{Outliers: Outliers{Failures: 100}, Targets: []Target{
		{Name: "a", BaseURL: primary.URL, Budget: pb},
		{Name: "b", BaseURL: fallback.URL},
	}})
	for range 5 {
		resp, _ := send(t, c, primary.URL, "m")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: a spent budget on a kept b from serving", resp.StatusCode)
		}
	}
	// a's budget (a reserve of one) refused most retries of a: the requests
	// moved on to b without them, and b's own budget was not touched.
	if n := len(primary.requests()); n < 5 || n > 6 {
		t.Fatalf("primary got %d attempts, want 5 first attempts and at most 1 budgeted retry", n)
	}
	if got := pb.Counts(); got.Requests != 5 {
		t.Fatalf("a's budget counted %d requests, want 5", got.Requests)
	}
}

func TestFailoverSharedCooldownsMakeTwoTransportsAvoidARestingKey(t *testing.T) {
	p := newProvider(t, func(key string) http.HandlerFunc {
		if key == "sk-a" {
			return status(429, `{}`, "Retry-After", "20")
		}
		return status(200, okJSON)
	})
	clk := newFakeClock()
	shared := NewLocalHealthStore()
	f := Failover{Targets: []Target{{Name: "openai", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}}}}
	_, c1 := failoverTransport(t, clk, f, WithHealthStore(shared))
	_, c2 := failoverTransport(t, clk, f, WithHealthStore(shared))
	send(t, c1, p.URL, "m")
	send(t, c2, p.URL, "m")
	if got := p.keys(); fmt.Sprint(got) != "[sk-a sk-b sk-b]" {
		t.Fatalf("keys %v: the second Transport used the resting key", got)
	}
}

func TestFailoverAllKeysCoolingWaitsForTheFirstToEnd(t *testing.T) {
	n := 0
	p := newProvider(t, func(key string) http.HandlerFunc {
		n++
		if n <= 2 {
			return status(429, `{}`, "Retry-After", "3", "X-Ratelimit-Remaining-Requests", "0")
		}
		return status(200, okJSON)
	})
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}}}},
		WithPolicy(Policy{MaxAttempts: 2}))
	// a: 429, b at once: 429, and the attempts are spent.
	resp, _ := send(t, c, p.URL, "m")
	if resp.StatusCode != 429 || len(clk.Waits()) != 0 || fmt.Sprint(p.keys()) != "[sk-a sk-b]" {
		t.Fatalf("status %d, waits %v, keys %v", resp.StatusCode, clk.Waits(), p.keys())
	}
	// Both keys were told their bucket is empty: the next request waits
	// for the first to be free before it sends anything, then uses it.
	resp, _ = send(t, c, p.URL, "m")
	if resp.StatusCode != 200 || len(clk.Waits()) != 1 || clk.Waits()[0] < 3*time.Second || len(p.requests()) != 3 {
		t.Fatalf("status %d, waits %v, requests %d: want one wait of the cooldown's 3 s, then one attempt",
			resp.StatusCode, clk.Waits(), len(p.requests()))
	}
}

func TestFailoverGeminiModelInPathAndAzureQuery(t *testing.T) {
	g := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "g1", BaseURL: g.URL + "/v1beta", Family: FamilyGemini, Keys: []Key{NewKey("k", "AIza-1")},
			Models: map[string]string{"gemini-2.5-pro": "gemini-2.5-flash"}},
	}})
	req := post(t, g.URL+"/v1beta/models/gemini-2.5-pro:generateContent?alt=sse", `{"contents":[]}`)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	got := g.requests()[0]
	if got.path != "/v1beta/models/gemini-2.5-flash:generateContent" || got.query != "alt=sse" || got.header.Get("X-Goog-Api-Key") != "AIza-1" {
		t.Fatalf("gemini got %+v", got)
	}

	az := newProvider(t, always(status(200, okJSON)))
	_, c = failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "azure", BaseURL: az.URL + "/openai/v1?api-version=preview", KeyHeader: "api-key", Keys: []Key{NewKey("k", "az-1")}},
	}})
	send(t, c, az.URL+"/openai/v1", "gpt-4o")
	got = az.requests()[0]
	if got.path != "/openai/v1/chat/completions" || got.query != "api-version=preview" || got.header.Get("Api-Key") != "az-1" || got.auth != "" {
		t.Fatalf("azure got %+v", got)
	}
}

func TestFailoverModelServedNowhereIsNotSent(t *testing.T) {
	p := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "a", BaseURL: p.URL, Models: map[string]string{"gpt-4o": "gpt-4o"}},
	}})
	_, err := c.Do(post(t, p.URL, `{"model":"o3"}`))
	var e *Error
	if !errors.As(err, &e) || e.Reason != ReasonUnavailable || len(p.requests()) != 0 {
		t.Fatalf("err %v, %d requests: want ReasonUnavailable and nothing sent", err, len(p.requests()))
	}
}

func TestFailoverRefusesBadTargets(t *testing.T) {
	for name, f := range map[string]Failover{
		"none":        {},
		"no name":     {Targets: []Target{{BaseURL: "https://api.openai.com/v1"}}},
		"same name":   {Targets: []Target{{Name: "a", BaseURL: "https://x"}, {Name: "a", BaseURL: "https://y"}}},
		"bad url":     {Targets: []Target{{Name: "a", BaseURL: "api.openai.com"}}},
		"user info":   {Targets: []Target{{Name: "a", BaseURL: "https://u:p@x"}}},
		"empty key":   {Targets: []Target{{Name: "a", BaseURL: "https://x", Keys: []Key{NewKey("k", "")}}}},
		"no key id":   {Targets: []Target{{Name: "a", BaseURL: "https://x", Keys: []Key{NewKey("", "s")}}}},
		"key newline": {Targets: []Target{{Name: "a", BaseURL: "https://x", Keys: []Key{NewKey("k", "sk-secret\n")}}}},
		"zero key":    {Targets: []Target{{Name: "a", BaseURL: "https://x", Keys: []Key{{ID: "k"}}}}},
		"mixed": {Targets: []Target{
			{Name: "openai", BaseURL: "https://api.openai.com/v1"},
			{Name: "claude", BaseURL: "https://api.anthropic.com"},
		}},
	} {
		_, err := NewFailoverTransport(nil, f)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "sk-secret") {
			t.Errorf("%s: error shows the key: %v", name, err)
		}
		if name == "mixed" && (!errors.Is(err, errMixedFamily) || !strings.Contains(err.Error(), `"claude" speaks anthropic`)) {
			t.Errorf("mixed: %v", err)
		}
	}
}

func TestFailoverKeysAreNeverShown(t *testing.T) {
	const secret = "sk-live-0123456789abcdef"
	p := newProvider(t, func(key string) http.HandlerFunc {
		return status(401, `{"error":{"type":"invalid_api_key","message":"Incorrect API key provided: `+key+`"}}`)
	})
	var logs bytes.Buffer
	var events []any
	clk := newFakeClock()
	f := Failover{Targets: []Target{
		{Name: "a", BaseURL: p.URL, Keys: []Key{NewKey("a1", secret)}},
		{Name: "b", BaseURL: p.URL, Keys: []Key{NewKey("b1", secret+"-b")}},
	}}
	tr, c := failoverTransport(t, clk, f,
		WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
		WithOnRetry(func(e RetryEvent) { events = append(events, e) }),
		WithOnStop(func(e StopEvent) { events = append(events, e) }),
		WithOnHealth(func(e HealthEvent) { events = append(events, e) }))
	send(t, c, p.URL, "m")
	_, err := c.Do(post(t, p.URL, `{"model":"m"}`))
	for _, v := range []any{f, f.Targets[0], f.Targets[0].Keys[0], tr, err, events} {
		for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
			if s := fmt.Sprintf(format, v); strings.Contains(s, secret) {
				t.Errorf("%s of %T shows the key: %s", format, v, s)
			}
		}
	}
	if strings.Contains(logs.String(), secret) {
		t.Errorf("logs show the key: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "key=a1") {
		t.Errorf("logs do not name the key by its id: %s", logs.String())
	}
}

// A target's name for the model is written into the body as a JSON
// string, whatever it holds: it cannot add a field.
func TestFailoverRenameEscapesTheName(t *testing.T) {
	p := newProvider(t, always(status(200, okJSON)))
	_, c := failoverTransport(t, newFakeClock(), Failover{Targets: []Target{
		{Name: "a", BaseURL: p.URL, Models: map[string]string{"m": `evil","x":"`}},
	}})
	resp, _ := send(t, c, p.URL, "m")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := p.requests()[0]
	if got.model != `evil","x":"` {
		t.Fatalf("model %q", got.model)
	}
}

// After a key move, a 503 on the other key goes to the next target rather
// than back to the target that just failed. Its 503 asks no wait, so the
// go-at-once rule moves it as well as the last-attempt rule:
// TestFailoverLastAttemptGoesToTheNextTargetEvenWhenAShortWaitWouldStay
// holds the last-attempt rule alone.
func TestFailoverLastAttemptGoesToTheNextTarget(t *testing.T) {
	primary := newProvider(t, func(key string) http.HandlerFunc {
		if key == "sk-a" {
			return status(429, `{}`, "Retry-After", "1")
		}
		return status(503, `{}`)
	})
	fallback := newProvider(t, always(status(200, okJSON)))
	clk := newFakeClock()
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "primary", BaseURL: primary.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}},
		{Name: "fallback", BaseURL: fallback.URL},
	}}, WithPolicy(Policy{MaxAttempts: 3}))
	// a: 429, b at once: 503; the primary has attempts left, but the next
	// attempt is the last: it goes to the fallback.
	resp, _ := send(t, c, primary.URL, "m")
	if resp.StatusCode != 200 || resp.Header.Get(TargetHeader) != "fallback" || len(primary.requests()) != 2 {
		t.Fatalf("status %d from %q after %d primary attempts", resp.StatusCode, resp.Header.Get(TargetHeader), len(primary.requests()))
	}
}

// The last-attempt rule on its own: a 503 asking for a short wait (within
// Threshold) would be sat out on the same target, since the target has had
// fewer than AttemptsPerTarget failures; but when the next attempt is the
// request's last, it goes to the next target instead, with no wait. Going
// at once for a failure that asks no wait does not apply here, nor does
// moving after AttemptsPerTarget failures: only the last-attempt rule can
// send the request to the fallback.
func TestFailoverLastAttemptGoesToTheNextTargetEvenWhenAShortWaitWouldStay(t *testing.T) {
	for _, c := range []struct {
		name                   string
		maxAttempts, perTarget int
		primaryAttempts        int
	}{
		{"second attempt is the last", 2, 2, 1},
		// One short wait is sat out; the third attempt, the last, moves
		// though the primary has had fewer than AttemptsPerTarget.
		{"third attempt is the last", 3, 3, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			primary := newProvider(t, always(status(503, `{}`, "Retry-After", "1")))
			fallback := newProvider(t, always(status(200, okJSON)))
			clk := newFakeClock()
			_, cl := failoverTransport(t, clk, Failover{AttemptsPerTarget: c.perTarget, Targets: []Target{
				{Name: "primary", BaseURL: primary.URL}, {Name: "fallback", BaseURL: fallback.URL},
			}}, WithPolicy(Policy{MaxAttempts: c.maxAttempts}))
			resp, _ := send(t, cl, primary.URL, "m")
			if resp.StatusCode != 200 || resp.Header.Get(TargetHeader) != "fallback" ||
				len(primary.requests()) != c.primaryAttempts || len(clk.Waits()) != c.primaryAttempts-1 {
				t.Fatalf("status %d from %q after %d primary attempts and waits %v: want the fallback after %d",
					resp.StatusCode, resp.Header.Get(TargetHeader), len(primary.requests()), clk.Waits(), c.primaryAttempts)
			}
		})
	}
}

// A quota used up rests its key for the quota's window when the provider
// says it: a Gemini daily quota until midnight Pacific time, a Retry-After
// for as long as it asks; QuotaRest only when neither is known.
func TestFailoverQuotaRestsForItsWindow(t *testing.T) {
	const geminiDaily = `{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"quota","details":[` +
		`{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]}}`
	g := newProvider(t, func(string) http.HandlerFunc { return status(200, okJSON) })
	gq := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Goog-Api-Key") == "AIza-1" {
			status(429, geminiDaily)(w, r)
			return
		}
		g.Config.Handler.ServeHTTP(w, r)
	}))
	defer gq.Close()
	clk := newFakeClock() // 2026-11-27 12:00 UTC: 04:00 in Los Angeles
	var health []HealthEvent
	_, c := failoverTransport(t, clk, Failover{Targets: []Target{{Name: "gemini", BaseURL: gq.URL + "/v1beta", Family: FamilyGemini,
		Keys: []Key{NewKey("one", "AIza-1"), NewKey("two", "AIza-2")}}}}, WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	resp, err := c.Do(post(t, gq.URL+"/v1beta/models/gemini-2.5-flash:generateContent", `{"contents":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	midnightPacific := time.Date(2026, 11, 28, 8, 0, 0, 0, time.UTC)
	if resp.StatusCode != 200 || len(health) != 1 || health[0].Health != KeyOutQuota || !health[0].Until.Equal(midnightPacific) {
		t.Fatalf("status %d, health %+v: want key one out until midnight Pacific (%v)", resp.StatusCode, health, midnightPacific)
	}

	p := newProvider(t, func(key string) http.HandlerFunc {
		if key == "sk-a" {
			return status(429, `{"error":{"code":"insufficient_quota"}}`, "Retry-After", "120")
		}
		return status(200, okJSON)
	})
	health = nil
	_, c = failoverTransport(t, clk, Failover{Targets: []Target{{Name: "o", BaseURL: p.URL, Keys: []Key{NewKey("a", "sk-a"), NewKey("b", "sk-b")}}}},
		WithOnHealth(func(e HealthEvent) { health = append(health, e) }))
	send(t, c, p.URL, "m")
	if len(health) != 1 || health[0].Health != KeyOutQuota || !health[0].Until.Equal(clk.Now().Add(120*time.Second)) {
		t.Fatalf("health %+v: want key a out for the quota's Retry-After of 120 s", health)
	}
}

// A target every key of which went into the fleet's cooldown while a
// request was on it is cooling down: after a 503 the request moves to the
// next target at once instead of waiting out a backoff there.
func TestFailoverTargetCoolingDownMovesOn(t *testing.T) {
	shared := NewLocalHealthStore()
	clk := newFakeClock()
	var cool func()
	primary := newProvider(t, func(string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			cool() // another process's 429s put the only key in the fleet's cooldown
			status(503, `{}`)(w, r)
		}
	})
	fallback := newProvider(t, always(status(200, okJSON)))
	tr, c := failoverTransport(t, clk, Failover{Targets: []Target{
		{Name: "a", BaseURL: primary.URL, Keys: []Key{NewKey("k", "sk-a")}},
		{Name: "b", BaseURL: fallback.URL},
	}}, WithHealthStore(shared))
	ts := tr.route.targets[0]
	cool = func() {
		shared.Put(Mark{Kind: MarkCooldown, Scheme: ts.base.Scheme, Host: ts.base.Host, Key: ts.keys[0].cred, Model: "m"}, clk.Now().Add(30*time.Second))
	}
	resp, _ := send(t, c, primary.URL, "m")
	if resp.Header.Get(TargetHeader) != "b" || len(primary.requests()) != 1 || len(clk.Waits()) != 0 {
		t.Fatalf("served by %q after %d primary attempts and waits %v: want b at once", resp.Header.Get(TargetHeader), len(primary.requests()), clk.Waits())
	}
}
