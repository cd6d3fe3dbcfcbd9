package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// startCommand runs `llmretry proxy` with args (and --listen and
// --admin-listen on loopback ports of its own) until the test ends, and
// returns its base URL and its admin URL.
func startCommand(t *testing.T, args ...string) (base, admin string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lineWriter{lines: make(chan string, 16)}
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--quiet"}, args...), out, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit %d: %s", code, stderr.String())
		}
	})
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
	return base, admin
}

// upstreamLog is an upstream that keeps every request it gets, as text.
type upstreamLog struct {
	mu   sync.Mutex
	reqs []string
}

func (u *upstreamLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	b.WriteString(r.Method + " " + r.RequestURI + "\n")
	_ = r.Header.Write(&b)
	body, _ := io.ReadAll(r.Body)
	b.Write(body)
	u.mu.Lock()
	u.reqs = append(u.reqs, b.String())
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"id":"x"}`)
}

func (u *upstreamLog) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.reqs...)
}

// send writes a request as given on a connection of its own and reads the
// answer, so that no client library tidies its path or headers.
func send(t *testing.T, base, head, body string) (int, http.Header, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = fmt.Fprintf(conn, "%sContent-Length: %d\r\nConnection: close\r\n\r\n%s", head, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header, string(b)
}

// The proxy with the README's kind of config, on loopback, held a web
// page's way in to its keys, forwarded a client token sent as ?%6Bey=,
// sent dot-segments on with a tenant's key, and answered /metrics with 500
// for two routes whose targets share a name. Through the command: a
// browser-like request gets 403 and reaches no upstream, the token never
// reaches the upstream, /a/../../b gets 400, /metrics answers 200; and a
// page of an origin given with --allow-origin can use the routes.
func TestCommandHoldsItsPerimeter(t *testing.T) {
	up := &upstreamLog{}
	srv := httptest.NewServer(up)
	defer srv.Close()
	cfg := filepath.Join(t.TempDir(), "llmretry.yaml")
	text := "routes:\n" +
		"  - prefix: /a\n    targets: [{name: openai, base_url: '" + srv.URL + "/a/v1', keys: [{id: ka, env: LLMRETRY_P_KEY_A}]}]\n" +
		"  - prefix: /b\n    targets: [{name: openai, base_url: '" + srv.URL + "/b/v1', keys: [{id: kb, env: LLMRETRY_P_KEY_B}]}]\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LLMRETRY_P_KEY_A", "sk-tenant-a")
	t.Setenv("LLMRETRY_P_KEY_B", "sk-tenant-b")
	base, admin := startCommand(t, "--config", cfg, "--allow-origin", "http://localhost:5173")
	addr := strings.TrimPrefix(base, "http://")
	_, port, _ := net.SplitHostPort(addr)
	const token = "tok-0123456789abcdef"

	for name, head := range map[string]string{
		"foreign origin, text/plain": "POST /a/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\n",
		"rebinding host":             "POST /a/chat/completions HTTP/1.1\r\nHost: evil.example:" + port + "\r\nContent-Type: text/plain\r\n",
		"cross-site":                 "POST /a/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\n",
	} {
		if code, _, body := send(t, base, head, `{"model":"gpt-4o","messages":[]}`); code != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403: %s", name, code, body)
		}
	}
	if n := len(up.seen()); n != 0 {
		t.Fatalf("the upstream got %d requests from web pages", n)
	}
	for _, target := range []string{"/a/../../b/v1/chat/completions", "/a/%2e%2e/%2e%2e/b/v1/chat/completions"} {
		if code, _, body := send(t, base, "POST "+target+" HTTP/1.1\r\nHost: "+addr+"\r\n", `{}`); code != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", target, code, body)
		}
	}
	if n := len(up.seen()); n != 0 {
		t.Fatalf("the upstream got %d requests with dot segments", n)
	}
	for _, q := range []string{"%6Bey=" + token, "ke%79=" + token, "key=" + token, "access_token=" + token} {
		code, _, body := send(t, base, "POST /a/chat/completions?alt=sse&"+q+" HTTP/1.1\r\nHost: "+addr+"\r\n", `{}`)
		if got := up.seen(); code != 200 || strings.Contains(got[len(got)-1], token) || !strings.Contains(got[len(got)-1], "Bearer sk-tenant-a") {
			t.Errorf("?%s: status %d (%s), the upstream got:\n%s", q, code, body, got[len(got)-1])
		}
	}

	// The listed origin's page: a preflight, then its request.
	code, h, _ := send(t, base, "OPTIONS /b/chat/completions HTTP/1.1\r\nHost: "+addr+"\r\nOrigin: http://localhost:5173\r\n"+
		"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n", "")
	if code != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != "http://localhost:5173" || h.Get("Access-Control-Allow-Headers") != "authorization, content-type" {
		t.Fatalf("preflight: status %d, headers %v", code, h)
	}
	code, h, _ = send(t, base, "POST /b/chat/completions HTTP/1.1\r\nHost: "+addr+"\r\nOrigin: http://localhost:5173\r\nContent-Type: application/json\r\n", `{"model":"gpt-4o"}`)
	if code != 200 || h.Get("Access-Control-Allow-Origin") != "http://localhost:5173" {
		t.Fatalf("the listed page's request: status %d, headers %v", code, h)
	}

	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(metrics), `llmretry_target_responses_total{route="/b",target="openai"} 1`) {
		t.Fatalf("/metrics: status %d:\n%s", resp.StatusCode, metrics)
	}
	code, _, _ = send(t, admin, "GET /metrics HTTP/1.1\r\nHost: evil.example\r\n", "")
	if code != http.StatusForbidden {
		t.Fatalf("/metrics under a rebinding Host: status %d, want 403", code)
	}
	http.DefaultClient.CloseIdleConnections()
}

// Eight clients that each declared 32 MiB and sent nothing took the whole
// default --max-held, and every other request with a body got 503 for
// 158 s at a time. Through the command, at the default --max-held: a
// ninth client is served, and the eight are ended by --body-timeout.
func TestCommandServesOthersBesideEightSilentUploads(t *testing.T) {
	srv := httptest.NewServer(&upstreamLog{})
	defer srv.Close()
	base, _ := startCommand(t, "--upstream", srv.URL, "--body-timeout", "300ms")
	var silent []*bufio.Reader
	for range 8 {
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second)) // a guard: the proxy answers long before
		_, _ = fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", 32<<20)
		br := bufio.NewReader(conn)
		// net/http sends 100 Continue when the proxy begins to read the
		// body: whatever it reserves for it is reserved by then.
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("no 100 Continue: %v %v", resp, err)
		}
		silent = append(silent, br)
	}
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"model":"gpt-4o","messages":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a ninth client: status %d: %s", resp.StatusCode, b)
	}
	for i, br := range silent {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("silent client %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("silent client %d: status %d, want 408", i, resp.StatusCode)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// --allow-origin and --allow-host are read strictly, and go with --config.
func TestAllowFlagsAreChecked(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(cfg, []byte("routes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'http://127.0.0.1:1/v1'}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		args []string
		want int
		out  string
	}{
		{[]string{"--upstream", "http://127.0.0.1:1", "--allow-origin", "https://app.example.com"}, 2, "--allow-origin and --allow-host go with --config"},
		{[]string{"--config", cfg, "--allow-origin", "*"}, 2, `--allow-origin: origin "*": a wildcard would let every web page spend the keys`},
		{[]string{"--config", cfg, "--allow-host", "proxy:8787"}, 2, `--allow-host: host "proxy:8787": want a host name`},
		{[]string{"--config", cfg, "--listen", "127.0.0.1:0", "--admin-listen", "", "--allow-origin", "https://a.example,http://localhost:3000", "--allow-host", "proxy.internal"}, 0, "llmretry proxy on"},
	} {
		var stdout, stderr bytes.Buffer
		got := run(cancelled, append([]string{"proxy"}, tc.args...), &stdout, &stderr)
		if all := stdout.String() + stderr.String(); got != tc.want || !strings.Contains(all, tc.out) {
			t.Errorf("%v: exit %d, want %d; output lacks %q:\n%s", tc.args, got, tc.want, tc.out, all)
		}
	}
}
