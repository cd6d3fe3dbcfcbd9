package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry/cmd/internal/proxy"
	"github.com/llmretry/llmretry/mockllm"
	"github.com/llmretry/llmretry/redisstate"
)

// A proxy with a config must know its clients: without client tokens it
// starts only on loopback, whether or not it holds keys.
func TestProxyConfigWithNoClientsStartsOnlyOnLoopback(t *testing.T) {
	dir := t.TempDir()
	keyless := filepath.Join(dir, "keyless.yaml")
	if err := os.WriteFile(keyless, []byte("routes:\n  - prefix: /vllm\n    targets: [{name: vllm, base_url: 'http://127.0.0.1:1/v1'}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyed := filepath.Join(dir, "keyed.yaml")
	withClients := filepath.Join(dir, "clients.yaml")
	routes := "routes:\n  - prefix: /openai\n    targets:\n      - name: openai\n        base_url: http://127.0.0.1:1/v1\n        keys: [{id: a, env: LLMRETRY_TEST_KEY}]\n"
	if err := os.WriteFile(keyed, []byte(routes), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(withClients, []byte("clients: [{id: app, env: LLMRETRY_TEST_TOKEN}]\n"+routes), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LLMRETRY_TEST_KEY", "sk-test-key")
	t.Setenv("LLMRETRY_TEST_TOKEN", "a-client-token-of-length")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		args []string
		want int
		out  string
	}{
		{[]string{"--config", keyed, "--listen", "0.0.0.0:0", "--admin-listen", ""}, 2, "could use its keys"},
		{[]string{"--config", keyless, "--listen", "0.0.0.0:0", "--admin-listen", ""}, 2, "could use its routes"},
		{[]string{"--config", keyless, "--listen", "[::1]:0", "--admin-listen", ""}, 0, "llmretry proxy on"},
		{[]string{"--config", keyed, "--listen", ":0", "--admin-listen", ""}, 2, "names no clients"},
		{[]string{"--config", keyed, "--listen", "127.0.0.1:0", "--admin-listen", ""}, 0, "llmretry proxy on"},
		{[]string{"--config", withClients, "--listen", "0.0.0.0:0", "--admin-listen", ""}, 0, "the routes of " + withClients + ": /openai"},
		{[]string{"--config", keyed, "--upstream", "http://x:1"}, 2, "not both"},
		{[]string{"--config", filepath.Join(dir, "missing.yaml")}, 2, "no such file"},
	} {
		var stdout, stderr bytes.Buffer
		got := run(cancelled, append([]string{"proxy"}, tc.args...), &stdout, &stderr)
		all := stdout.String() + stderr.String()
		if got != tc.want || !strings.Contains(all, tc.out) {
			t.Errorf("%v: exit %d, want %d; output lacks %q:\n%s", tc.args, got, tc.want, tc.out, all)
		}
		if strings.Contains(all, "sk-test-key") || strings.Contains(all, "a-client-token") {
			t.Errorf("%v: a secret was printed:\n%s", tc.args, all)
		}
	}
}

// With --redis, every route's cooldowns go through one fleet state, and
// each target keeps its budget in a state of its own.
func TestShareThroughRedisGivesEveryTargetItsOwnFleetBudget(t *testing.T) {
	fc, err := proxy.ParseConfig("c.yaml", []byte(`routes:
  - prefix: /openai
    targets: [{name: a, base_url: 'https://a.example/v1'}, {name: b, base_url: 'https://b.example/v1'}]
  - prefix: /anthropic
    targets: [{name: c, base_url: 'https://api.anthropic.com'}]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rc.Close()
	var names []string
	newState := func(name string, _ time.Duration) (*redisstate.State, error) {
		names = append(names, name)
		return redisstate.New(redisstate.Config{Client: rc, Name: name})
	}
	cd, err := shareThroughRedis(fc, "fleet", false, newState)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[fleet fleet/openai/a fleet/openai/b fleet/anthropic/c]"; fmt.Sprint(names) != want {
		t.Fatalf("states %v, want %s", names, want)
	}
	for _, r := range fc.Routes {
		for _, tg := range r.Failover.Targets {
			if st, ok := tg.Budget.(*redisstate.State); !ok || any(st) == any(cd) {
				t.Fatalf("target %s has no fleet budget of its own", tg.Name)
			}
		}
	}
	names = nil
	if _, err := shareThroughRedis(fc, "fleet", true, newState); err != nil || len(names) != 1 {
		t.Fatalf("budget off: states %v, %v; want the cooldowns' only", names, err)
	}
}

// The fleet's health store is given the routes' max_rest: without it,
// redisstate kept its own day, and a route with max_rest 1h could be
// rested a day by a mark the fleet shared. It takes the longest any route
// allows (the default day for a route that sets none), so that it cuts no
// route's rests short; each route's Transport cuts to its own.
func TestShareThroughRedisGivesTheFleetStoreTheRoutesMaxRest(t *testing.T) {
	for _, c := range []struct {
		name, routes string
		want         time.Duration
	}{
		{"one route", `
  - prefix: /a
    max_rest: 1h
    targets: [{name: a, base_url: 'https://a.example/v1'}]`, time.Hour},
		{"the longest", `
  - prefix: /a
    max_rest: 1h
    targets: [{name: a, base_url: 'https://a.example/v1'}]
  - prefix: /b
    max_rest: 30m
    targets: [{name: b, base_url: 'https://b.example/v1'}]`, time.Hour},
		{"a route with the default", `
  - prefix: /a
    max_rest: 1h
    targets: [{name: a, base_url: 'https://a.example/v1'}]
  - prefix: /b
    targets: [{name: b, base_url: 'https://b.example/v1'}]`, 24 * time.Hour},
	} {
		t.Run(c.name, func(t *testing.T) {
			fc, err := proxy.ParseConfig("c.yaml", []byte("routes:"+c.routes+"\n"), nil)
			if err != nil {
				t.Fatal(err)
			}
			rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
			defer rc.Close()
			got := map[string]time.Duration{}
			newState := func(name string, maxRest time.Duration) (*redisstate.State, error) {
				got[name] = maxRest
				return redisstate.New(redisstate.Config{Client: rc, Name: name, MaxRest: maxRest})
			}
			if _, err := shareThroughRedis(fc, "fleet", true, newState); err != nil {
				t.Fatal(err)
			}
			if got["fleet"] != c.want {
				t.Fatalf("the fleet's health store was given max_rest %v, want %v", got["fleet"], c.want)
			}
		})
	}
}

// lineWriter hands each line written to it to a channel, so that a test
// can wait for a line without polling.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default: // nobody waits for it
		}
		w.buf = w.buf[i+1:]
	}
}

// The command serves a config end to end: a client with its token reaches
// the route, the primary's 503s fail over to the fallback, and the admin
// listener counts it.
func TestProxyServesAConfigEndToEnd(t *testing.T) {
	primary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer primary.Close()
	fallback := httptest.NewServer(mockllm.New(mockllm.Script{}, 1))
	defer fallback.Close()
	cfg := filepath.Join(t.TempDir(), "llmretry.yaml")
	text := "clients: [{id: app, env: LLMRETRY_E2E_TOKEN}]\nroutes:\n  - prefix: /openai\n    attempts_per_target: 1\n    targets:\n" +
		"      - {name: primary, base_url: '" + primary.URL + "/v1', keys: [{id: p, env: LLMRETRY_E2E_KEY}]}\n" +
		"      - {name: fallback, base_url: '" + fallback.URL + "/v1', keys: [{id: f, env: LLMRETRY_E2E_KEY}]}\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LLMRETRY_E2E_TOKEN", "an-e2e-client-token")
	t.Setenv("LLMRETRY_E2E_KEY", "sk-e2e-upstream")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &lineWriter{lines: make(chan string, 16)}
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"proxy", "--config", cfg, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--quiet"}, out, &stderr)
	}()
	var base, admin string
	for base == "" || admin == "" {
		select {
		case line := <-out.lines:
			if rest, ok := strings.CutPrefix(line, "llmretry proxy on "); ok {
				base, _, _ = strings.Cut(rest, " ")
			}
			if rest, ok := strings.CutPrefix(line, "llmretry proxy admin (/healthz, /metrics) on "); ok {
				admin = rest
			}
		case code := <-done:
			t.Fatalf("the proxy exited with %d: %s", code, stderr.String())
		}
	}
	req, _ := http.NewRequest("POST", base+"/openai/chat/completions", strings.NewReader(`{"model":"gpt-4o","messages":[]}`))
	req.Header.Set("Authorization", "Bearer an-e2e-client-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Llmretry-Target") != "fallback" || !strings.Contains(string(body), mockllm.ReplyText) {
		t.Fatalf("status %d from %q: %s", resp.StatusCode, resp.Header.Get("X-Llmretry-Target"), body)
	}
	m, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(m.Body)
	m.Body.Close()
	if !strings.Contains(string(metrics), `llmretry_failovers_total{from="primary",route="/openai",to="fallback"} 1`) {
		t.Fatalf("metrics lack the failover:\n%s", metrics)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after SIGTERM-like cancel: %s", code, stderr.String())
	}
	http.DefaultClient.CloseIdleConnections()
}
