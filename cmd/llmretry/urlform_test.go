package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/llmretry/llmretry/mockllm"
)

// pathLog is a mock provider that keeps the request target (path and
// query) of every request it gets.
type pathLog struct {
	mu    sync.Mutex
	paths []string
	mock  http.Handler
}

func (p *pathLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.paths = append(p.paths, r.RequestURI)
	p.mu.Unlock()
	p.mock.ServeHTTP(w, r)
}

func (p *pathLog) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	got := p.paths
	p.paths = nil
	return got
}

// clientsUse is the base URL a startup line tells clients to use.
func clientsUse(t *testing.T, lines []string, of string) string {
	t.Helper()
	for _, l := range lines {
		if strings.HasPrefix(l, of) {
			if _, rest, ok := strings.Cut(l, "clients use "); ok {
				return strings.TrimRight(strings.Fields(rest)[0], ";")
			}
		}
	}
	t.Fatalf("no line starting %q tells clients where to go:\n%s", of, strings.Join(lines, "\n"))
	return ""
}

// proxy --upstream took the host's root, while demo --upstream and a
// config's base_url took the API's base: given the base (.../v1) the
// proxy sent /v1/v1/chat/completions to a client pointed at .../v1. Every
// place now takes the API's base URL, and the same chat reaches the
// upstream on the same path, byte for byte, whichever way it went: the
// demo as a client of the base, the proxy's --upstream at the address it
// prints, a config's route at the address it prints. OpenRouter's
// /api/v1 and an Azure deployment's path and api-version are bases too.
func TestOneURLFormForEveryUpstream(t *testing.T) {
	up := &pathLog{mock: mockllm.New(mockllm.Script{}, 1)}
	srv := httptest.NewServer(up)
	defer srv.Close()
	t.Setenv("OPENAI_API_KEY", "sk-form-test")
	for _, c := range []struct{ base, want string }{
		{"/v1", "/v1/chat/completions"},
		{"/api/v1/", "/api/v1/chat/completions"},
		{"/openai/deployments/gpt-4o?api-version=2024-10-21", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"},
	} {
		base := srv.URL + c.base
		chat := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`

		// The demo, a client of the base.
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"demo", "--upstream", base, "--requests", "1"}, &stdout, &stderr); code != 0 {
			t.Fatalf("demo --upstream %s: exit %d: %s%s", base, code, stdout.String(), stderr.String())
		}
		if got := up.take(); len(got) != 1 || got[0] != c.want {
			t.Errorf("demo --upstream %s: the upstream got %q, want %s", base, got, c.want)
		}

		// The proxy's --upstream, at the address it prints.
		p := startProxy(t, "--upstream", base, "--listen", "127.0.0.1:0", "--admin-listen", "", "--quiet")
		resp, err := http.Post(clientsUse(t, p.startup, "llmretry proxy on ")+"/chat/completions", "application/json", strings.NewReader(chat))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := up.take(); resp.StatusCode != 200 || len(got) != 1 || got[0] != c.want {
			t.Errorf("proxy --upstream %s: status %d, the upstream got %q, want %s", base, resp.StatusCode, got, c.want)
		}

		// A config's base_url, at the address its route prints.
		cfg := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(cfg, []byte("routes:\n  - prefix: /p\n    targets: [{name: t, base_url: '"+base+"'}]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p = startProxy(t, "--config", cfg, "--listen", "127.0.0.1:0", "--admin-listen", "", "--quiet")
		resp, err = http.Post(clientsUse(t, p.startup, "llmretry proxy route /p")+"/chat/completions", "application/json", strings.NewReader(chat))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := up.take(); resp.StatusCode != 200 || len(got) != 1 || got[0] != c.want {
			t.Errorf("base_url %s: status %d, the upstream got %q, want %s", base, resp.StatusCode, got, c.want)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// The other form, the root of a host whose API's base has a path, is
// accepted everywhere, read as that base, with one line at startup that
// says so. No request is sent: the context is cancelled.
func TestHostRootIsReadAsTheAPIsBaseWithOneLineSayingSo(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	const note = "https://api.openai.com is the host's root; understood as its API's base URL, https://api.openai.com/v1\n"

	var stdout, stderr bytes.Buffer
	if code := run(cancelled, []string{"proxy", "--upstream", "https://api.openai.com", "--listen", "127.0.0.1:0", "--admin-listen", ""}, &stdout, &stderr); code != 0 {
		t.Fatalf("proxy: exit %d: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stderr.String(), "llmretry proxy: --upstream "+note) || !strings.Contains(stdout.String(), "-> https://api.openai.com/v1 (clients use http://127.0.0.1:") {
		t.Errorf("proxy: stdout\n%s\nstderr\n%s", stdout.String(), stderr.String())
	}

	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("routes:\n  - prefix: /openai\n    targets:\n      - name: openai\n        base_url: https://api.openai.com/\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	stderr.Reset()
	if code := run(cancelled, []string{"proxy", "--config", cfg, "--listen", "127.0.0.1:0", "--admin-listen", ""}, &stdout, &stderr); code != 0 {
		t.Fatalf("proxy --config: exit %d: %s", code, stderr.String())
	}
	if !strings.HasPrefix(stderr.String(), "llmretry proxy: "+cfg+":4: target \"openai\": base_url "+note) || !strings.Contains(stdout.String(), "target openai: https://api.openai.com/v1,") {
		t.Errorf("proxy --config: stdout\n%s\nstderr\n%s", stdout.String(), stderr.String())
	}

	t.Setenv("OPENAI_API_KEY", "sk-form-test")
	stdout.Reset()
	stderr.Reset()
	run(cancelled, []string{"demo", "--upstream", "https://api.openai.com", "--requests", "1"}, &stdout, &stderr)
	if !strings.HasPrefix(stderr.String(), "llmretry demo: --upstream "+note) || !strings.Contains(stdout.String(), "upstream https://api.openai.com/v1, model") {
		t.Errorf("demo: stdout\n%s\nstderr\n%s", stdout.String(), stderr.String())
	}

	// A URL that is no base is a usage error, in each place.
	for _, args := range [][]string{{"proxy", "--upstream", "api.openai.com/v1"}, {"demo", "--upstream", "api.openai.com/v1"}} {
		stderr.Reset()
		if code := run(context.Background(), args, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), `--upstream "api.openai.com/v1": want an http or https URL, the API's base as its SDK takes it`) {
			t.Errorf("%v: exit %d: %s", args, code, stderr.String())
		}
	}
}
