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
