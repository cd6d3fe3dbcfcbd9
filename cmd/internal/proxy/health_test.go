package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
)

// Failover health through the proxy, end to end (issue 20): the verdicts
// the core scopes and bounds, seen by a client of the proxy.

// startRouterOn serves the config text on a clock the test moves. served
// receives once each request's handler has returned: its request is over,
// the retry loop's deferred work included.
func startRouterOn(t *testing.T, clk *llmretrytest.Clock, text string, vars map[string]string) (url string, logs *logBuffer, served <-chan struct{}) {
	t.Helper()
	fc, err := ParseConfig("test.yaml", []byte(text), env(vars))
	if err != nil {
		t.Fatal(err)
	}
	logs = &logBuffer{}
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	rt, err := NewRouter(fc, Config{Base: base, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Options: []llmretry.Option{llmretry.WithClock(clk)}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 64)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt.ServeHTTP(w, r)
		done <- struct{}{}
	})
	srv := httptest.NewUnstartedServer(h)
	srv.Config = NewServer(h)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, logs, done
}

// post sends a chat request for model through the proxy and returns its
// status and body.
func postModel(t *testing.T, ctx context.Context, url, model string) (int, string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/openai/chat/completions",
		strings.NewReader(`{"model":"`+model+`","messages":[]}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client(t).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// A client asking once for a model the keys may not use gets the
// upstream's 403, and the pool stays whole: the next request, for another
// model, is served at once. (Before, every key of the route was taken out
// for every model until restart, and every client got 503.)
func TestProxyModelDenialGetsTheUpstreams403AndKeepsThePool(t *testing.T) {
	denied := `{"error":{"message":"Project ` + "`proj_x`" + ` does not have access to model ` + "`o1-pro`" +
		`","type":"invalid_request_error","param":null,"code":"model_not_found"}}`
	up := newRecorder(t, nil)
	up.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		up.mu.Lock()
		up.got = append(up.got, upstreamSeen{auth: strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")})
		up.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(string(b), `"o1-pro"`) {
			w.WriteHeader(403)
			_, _ = io.WriteString(w, denied)
			return
		}
		_, _ = io.WriteString(w, `{"id":"x"}`)
	})
	url, _, _ := startRouterOn(t, llmretrytest.NewClock(time.Now()), `
routes:
  - prefix: /openai
    targets:
      - name: openai
        base_url: `+up.URL+`/v1
        keys: [{id: a, env: KA}, {id: b, env: KB}]
`, map[string]string{"KA": "sk-a", "KB": "sk-b"})
	code, body, err := postModel(t, context.Background(), url, "o1-pro")
	if err != nil || code != 403 || !strings.Contains(body, "model_not_found") {
		t.Fatalf("o1-pro: %d %q %v: want the upstream's own 403", code, body, err)
	}
	sent := len(up.seen())
	for _, model := range []string{"gpt-4o", "gpt-4o-mini"} {
		code, _, err := postModel(t, context.Background(), url, model)
		if err != nil || code != 200 {
			t.Fatalf("%s after a denial for o1-pro: %d %v", model, code, err)
		}
	}
	if got := up.seen()[sent:]; len(got) != 2 || got[0].auth != "sk-a" {
		t.Fatalf("upstream got %+v: want each request sent once, on key a", got)
	}
}

// A client that leaves while its request is the probe of an ejected
// target leaves the target probe-able: the next request probes it.
func TestProxyCancelledProbeLeavesTheTargetProbeable(t *testing.T) {
	var mu sync.Mutex
	mode := "down" // down: 503; hang: until the client leaves; up: 200
	inProbe := make(chan struct{}, 1)
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // read whole, so that the server sees the proxy leave
		mu.Lock()
		m := mode
		mu.Unlock()
		switch m {
		case "down":
			w.WriteHeader(503)
		case "hang":
			inProbe <- struct{}{}
			<-r.Context().Done()
		default:
			_, _ = io.WriteString(w, `{"id":"primary"}`)
		}
	}))
	t.Cleanup(primary.Close)
	fallback := newRecorder(t, answerStatus(200))
	clk := llmretrytest.NewClock(time.Now())
	url, _, served := startRouterOn(t, clk, `
routes:
  - prefix: /openai
    eject_after: 1
    ejection: 30s
    targets:
      - {name: primary, base_url: '`+primary.URL+`/v1'}
      - {name: fallback, base_url: '`+fallback.URL+`/v1'}
`, nil)
	set := func(m string) { mu.Lock(); mode = m; mu.Unlock() }
	if code, _, _ := postModel(t, context.Background(), url, "m"); code != 200 {
		t.Fatalf("status %d", code)
	}
	<-served
	clk.Advance(31 * time.Second) // the primary is due for its probe
	set("hang")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, _ = postModel(t, ctx, url, "m")
	}()
	<-inProbe
	cancel() // the client leaves mid-probe
	<-done
	<-served // the proxy is done with it
	set("up")
	code, body, err := postModel(t, context.Background(), url, "m")
	if err != nil || code != 200 || !strings.Contains(body, "primary") {
		t.Fatalf("%d %q %v: want the primary probed again and serving", code, body, err)
	}
}

// A hostile quota 429 asking for a wait of 31 years rests its key for the
// ceiling (a day), and says the wait was clamped.
func TestProxyHostileRetryAfterRestsAKeyForTheCeiling(t *testing.T) {
	up := newRecorder(t, func(key string, w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		if key == "sk-a" {
			w.Header().Set("Retry-After", "999999999")
			w.WriteHeader(429)
			_, _ = io.WriteString(w, `{"error":{"code":"insufficient_quota","type":"insufficient_quota"}}`)
			return
		}
		_, _ = io.WriteString(w, `{"id":"x"}`)
	})
	clk := llmretrytest.NewClock(time.Now())
	url, logs, _ := startRouterOn(t, clk, `
routes:
  - prefix: /openai
    targets:
      - name: openai
        base_url: `+up.URL+`/v1
        keys: [{id: a, env: KA}, {id: b, env: KB}]
`, map[string]string{"KA": "sk-a", "KB": "sk-b"})
	if code, _, _ := postModel(t, context.Background(), url, "m"); code != 200 {
		t.Fatalf("status %d", code)
	}
	if !strings.Contains(logs.String(), "rest clamped") || !strings.Contains(logs.String(), "for=24h0m0s") {
		t.Fatalf("logs do not show a rest clamped to a day:\n%s", logs.String())
	}
	clk.Advance(24*time.Hour + time.Second)
	if code, _, _ := postModel(t, context.Background(), url, "m"); code != 200 {
		t.Fatalf("status %d", code)
	}
	got := up.seen()
	if got[len(got)-2].auth != "sk-a" {
		t.Fatalf("keys %+v: a was not tried again a day later", got)
	}
}

// A body the targets' allow-list cannot read one way only gets 400 with
// the reason, and reaches no upstream.
func TestProxyRefusesABodyTheAllowListCannotReadAs400(t *testing.T) {
	up := newRecorder(t, answerStatus(200))
	url, _, _ := startRouterOn(t, llmretrytest.NewClock(time.Now()), `
routes:
  - prefix: /openai
    targets:
      - name: openai
        base_url: `+up.URL+`/v1
        models: {gpt-4o: gpt-4o}
`, nil)
	req, _ := http.NewRequest("POST", url+"/openai/chat/completions", strings.NewReader(`{"model":"gpt-4o","Model":"o1-pro"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "Model") || len(up.seen()) != 0 {
		t.Fatalf("status %d, body %s, upstream got %d", resp.StatusCode, b, len(up.seen()))
	}
}

// The README lists every value of llmretry_health_changes_total's change
// label; each health change is counted under one of them.
func TestHealthChangeLabelsAreTheREADMEs(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics(nil, false)
	for h := llmretry.KeyResting; h <= llmretry.KeyRestored; h++ {
		m.onHealth(llmretry.HealthEvent{Target: "t", Key: "k", Health: h}, "")
		label := strings.NewReplacer(" ", "_", ":", "").Replace(h.String())
		if metricOf(t, m, `llmretry_health_changes_total{change="`+label+`",key="k",target="t"}`) != 1 {
			t.Errorf("%v: not counted as %q", h, label)
		}
		if !strings.Contains(string(readme), "`"+label+"`") {
			t.Errorf("the README does not list the change %q", label)
		}
	}
}
