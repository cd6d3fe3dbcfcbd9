package proxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
)

// upstreamSeen is what a mock upstream got.
type upstreamSeen struct {
	path, auth, model string
}

// recorder is a mock upstream that answers with answer and records what
// it got.
type recorder struct {
	*httptest.Server
	mu  sync.Mutex
	got []upstreamSeen
}

func newRecorder(t *testing.T, answer func(key string, w http.ResponseWriter)) *recorder {
	t.Helper()
	rec := &recorder{}
	rec.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m struct{ Model string }
		_ = json.Unmarshal(b, &m)
		key := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		rec.mu.Lock()
		rec.got = append(rec.got, upstreamSeen{path: r.URL.EscapedPath(), auth: key, model: m.Model})
		rec.mu.Unlock()
		answer(key, w)
	}))
	t.Cleanup(rec.Close)
	return rec
}

func (rec *recorder) seen() []upstreamSeen {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]upstreamSeen(nil), rec.got...)
}

func answerStatus(code int) func(string, http.ResponseWriter) {
	return func(_ string, w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, `{"id":"x"}`)
	}
}

// startRouter serves the config text (secrets from vars) and returns its URL.
func startRouter(t *testing.T, text string, vars map[string]string) (string, *Router, *logBuffer) {
	t.Helper()
	fc, err := ParseConfig("test.yaml", []byte(text), env(vars))
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	rt, err := NewRouter(fc, Config{Base: base, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Options: []llmretry.Option{llmretry.WithClock(llmretrytest.NewClock(time.Now()))}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(rt)
	srv.Config = NewServer(rt)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, rt, logs
}

func do(t *testing.T, method, url, body string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

const testToken = "client-token-0123456789"

func TestRouterLetsInOnlyItsClients(t *testing.T) {
	up := newRecorder(t, answerStatus(200))
	url, _, _ := startRouter(t, `
clients: [{id: app, env: TOKEN}]
routes:
  - prefix: /openai
    targets:
      - name: up
        base_url: `+up.URL+`/v1
        keys: [{id: k, env: KEY}]
`, map[string]string{"TOKEN": testToken, "KEY": "sk-upstream"})
	for name, h := range map[string][]string{
		"none":         nil,
		"wrong bearer": {"Authorization", "Bearer " + testToken + "x"},
		"prefix only":  {"Authorization", "Bearer " + testToken[:10]},
		"upstream key": {"Authorization", "Bearer sk-upstream"},
	} {
		if resp := do(t, "POST", url+"/openai/chat/completions", `{"model":"m"}`, h...); resp.StatusCode != 401 {
			t.Errorf("%s: status %d, want 401", name, resp.StatusCode)
		}
	}
	if n := len(up.seen()); n != 0 {
		t.Fatalf("the upstream got %d requests from unknown clients", n)
	}
	for name, h := range map[string][]string{
		"bearer":    {"Authorization", "Bearer " + testToken},
		"x-api-key": {"X-Api-Key", testToken},
		"api-key":   {"Api-Key", testToken},
	} {
		if resp := do(t, "POST", url+"/openai/chat/completions", `{"model":"m"}`, h...); resp.StatusCode != 200 {
			t.Errorf("%s: status %d, want 200", name, resp.StatusCode)
		}
	}
	for _, s := range up.seen() {
		if s.auth != "sk-upstream" {
			t.Fatalf("the upstream got the credential %q, want the target's key (never the client's token)", s.auth)
		}
	}
}

func TestRouterFailsOverNamesTheTargetAndCountsIt(t *testing.T) {
	primary := newRecorder(t, answerStatus(503))
	fallback := newRecorder(t, answerStatus(200))
	url, rt, _ := startRouter(t, `
routes:
  - prefix: /openai
    attempts_per_target: 1
    targets:
      - name: primary
        base_url: `+primary.URL+`/v1
      - name: fallback
        base_url: `+fallback.URL+`/api/v1
        models: {gpt-4o: openai/gpt-4o}
`, nil)
	resp := do(t, "POST", url+"/openai/chat/completions", `{"model":"gpt-4o"}`)
	if resp.StatusCode != 200 || resp.Header.Get(llmretry.TargetHeader) != "fallback" || resp.Header.Get(AttemptsHeader) != "2" {
		t.Fatalf("status %d, target %q, attempts %q", resp.StatusCode, resp.Header.Get(llmretry.TargetHeader), resp.Header.Get(AttemptsHeader))
	}
	if got := fallback.seen(); len(got) != 1 || got[0].path != "/api/v1/chat/completions" || got[0].model != "openai/gpt-4o" {
		t.Fatalf("fallback got %+v", got)
	}
	if primary.seen()[0].path != "/v1/chat/completions" {
		t.Fatalf("primary got %+v", primary.seen())
	}
	m := rt.Metrics()
	if metricOf(t, m, `llmretry_failovers_total{from="primary",route="/openai",to="fallback"}`) != 1 ||
		metricOf(t, m, `llmretry_target_responses_total{route="/openai",target="fallback"}`) != 1 {
		t.Fatal("the failover is not counted")
	}
}

func TestRouterRoutesByLongestPrefixPathsUnchanged(t *testing.T) {
	a := newRecorder(t, answerStatus(200))
	ab := newRecorder(t, answerStatus(200))
	url, _, _ := startRouter(t, `
routes:
  - prefix: /a
    targets: [{name: a, base_url: '`+a.URL+`/base'}]
  - prefix: /a/b
    targets: [{name: ab, base_url: '`+ab.URL+`'}]
`, nil)
	if resp := do(t, "GET", url+"/a/b/models", ""); resp.Header.Get(llmretry.TargetHeader) != "ab" {
		t.Fatalf("/a/b/models went to %q", resp.Header.Get(llmretry.TargetHeader))
	}
	do(t, "GET", url+"/a//x/y/%2F/%2e%2e.txt", "")
	if got := a.seen(); len(got) != 1 || got[0].path != "/base//x/y/%2F/%2e%2e.txt" {
		t.Fatalf("route /a sent %+v, want the path unchanged under its base", got)
	}
	if resp := do(t, "GET", url+"/ab/models", ""); resp.StatusCode != 404 {
		t.Fatalf("/ab/models: status %d, want 404 (no route)", resp.StatusCode)
	}
}

func TestRouterHealthMetricsNameKeysByIDOnly(t *testing.T) {
	up := newRecorder(t, func(key string, w http.ResponseWriter) {
		if key == "sk-secret-aaaa" {
			w.Header().Set("Retry-After", "20")
			w.WriteHeader(429)
			return
		}
		w.WriteHeader(200)
	})
	url, rt, logs := startRouter(t, `
routes:
  - prefix: /o
    targets:
      - name: up
        base_url: `+up.URL+`
        keys: [{id: first, env: A}, {id: second, env: B}]
`, map[string]string{"A": "sk-secret-aaaa", "B": "sk-secret-bbbb"})
	if resp := do(t, "POST", url+"/o/chat/completions", `{"model":"m"}`); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if metricOf(t, rt.Metrics(), `llmretry_health_changes_total{change="key_resting",key="first",route="/o",target="up"}`) != 1 {
		t.Fatal("the resting key is not counted by its id")
	}
	for _, text := range []string{scrape(t, rt.Metrics()), logs.String()} {
		if strings.Contains(text, "sk-secret") {
			t.Fatalf("a key's value was shown:\n%s", text)
		}
	}
	if !strings.Contains(logs.String(), "key=first") {
		t.Fatalf("the log does not name the key by its id:\n%s", logs.String())
	}
}

// A route whose only key was refused answers the refusal once, then 503
// without sending anything: the key is out until the proxy restarts.
func TestRouterWithEveryKeyOutAnswers503WithoutSending(t *testing.T) {
	up := newRecorder(t, answerStatus(401))
	url, _, _ := startRouter(t, `
routes:
  - prefix: /o
    targets: [{name: up, base_url: '`+up.URL+`', keys: [{id: only, env: K}]}]
`, map[string]string{"K": "sk-revoked"})
	if resp := do(t, "POST", url+"/o/chat/completions", `{"model":"m"}`); resp.StatusCode != 401 {
		t.Fatalf("first: %d, want the upstream's 401", resp.StatusCode)
	}
	if resp := do(t, "POST", url+"/o/chat/completions", `{"model":"m"}`); resp.StatusCode != 503 {
		t.Fatalf("second: %d, want 503 (no key left)", resp.StatusCode)
	}
	if n := len(up.seen()); n != 1 {
		t.Fatalf("the upstream got %d requests, want 1", n)
	}
}
