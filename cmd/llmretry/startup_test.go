package main

import (
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

// proxyRun is a `llmretry proxy` running in-process until its test ends.
type proxyRun struct {
	startup     []string // stdout's lines, up to and with the fleet state
	base, admin string   // its address and its admin address ("" without)
}

// syncBuffer is a bytes.Buffer that a command writes while a test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProxy runs `llmretry proxy args...` and waits for its startup
// lines: they end with the one that says whether fleet state is on.
func startProxy(t *testing.T, args ...string) *proxyRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lineWriter{lines: make(chan string, 64)}
	errs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"proxy"}, args...), out, errs) }()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("proxy %v: exit %d: %s", args, code, errs)
		}
	})
	p := &proxyRun{}
	guard := time.After(30 * time.Second) // a guard: a proxy starts at once
	for {
		select {
		case <-guard:
			t.Fatalf("proxy %v: no fleet state line, the last at startup; stdout so far:\n%s", args, strings.Join(p.startup, "\n"))
		case line := <-out.lines:
			p.startup = append(p.startup, line)
			if rest, ok := strings.CutPrefix(line, "llmretry proxy on "); ok {
				p.base, _, _ = strings.Cut(rest, " ")
			}
			if rest, ok := strings.CutPrefix(line, "llmretry proxy admin (/healthz, /metrics) on "); ok {
				p.admin = rest
			}
			if strings.HasPrefix(line, "llmretry proxy fleet state: ") {
				return p
			}
		case code := <-done:
			done <- code
			t.Fatalf("proxy %v exited with %d: %s; stdout so far:\n%s", args, code, errs, strings.Join(p.startup, "\n"))
		}
	}
}

// A target named anthropic at a host that is not Anthropic's was sent its
// key as "Authorization: Bearer", its API family guessed from the host,
// and nothing said so. At startup the proxy prints each target with its
// family (and whether it was guessed), the header its keys go in and how
// many keys it has, never a key, on stdout, which --quiet leaves alone;
// and each target gets its key in the header printed.
func TestStartupListsEachTargetsFamilyKeyHeaderAndKeys(t *testing.T) {
	up := &upstreamLog{}
	srv := httptest.NewServer(up)
	defer srv.Close()
	cfg := filepath.Join(t.TempDir(), "llmretry.yaml")
	text := "routes:\n" +
		"  - prefix: /guessed\n    targets: [{name: anthropic, base_url: '" + srv.URL + "', keys: [{id: k, env: LLMRETRY_S_KEY}]}]\n" +
		"  - prefix: /anthropic\n    targets: [{name: anthropic, api: anthropic, base_url: '" + srv.URL + "', keys: [{id: k1, env: LLMRETRY_S_KEY}, {id: k2, env: LLMRETRY_S_KEY}]}]\n" +
		"  - prefix: /gemini\n    targets: [{name: g, api: gemini, base_url: '" + srv.URL + "/v1beta', keys: [{id: k, env: LLMRETRY_S_KEY}]}]\n" +
		"  - prefix: /azure\n    targets: [{name: az, base_url: '" + srv.URL + "/openai/v1?api-version=preview', key_header: api-key, keys: [{id: k, env: LLMRETRY_S_KEY}]}]\n" +
		"  - prefix: /local\n    targets: [{name: vllm, base_url: '" + srv.URL + "/v1'}]\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	const key = "sk-startup-secret-key"
	t.Setenv("LLMRETRY_S_KEY", key)
	p := startProxy(t, "--config", cfg, "--listen", "127.0.0.1:0", "--admin-listen", "", "--quiet")
	host := strings.TrimPrefix(srv.URL, "http://")
	want := []string{
		"llmretry proxy route /guessed: clients use " + p.base + "/guessed",
		"llmretry proxy   target anthropic: http://" + host + ", api openai (guessed from the host: set api: if it is not), 1 key, in Authorization: Bearer",
		"llmretry proxy route /anthropic: clients use " + p.base + "/anthropic",
		"llmretry proxy   target anthropic: http://" + host + ", api anthropic (set by api:), 2 keys, in X-Api-Key",
		"llmretry proxy route /gemini: clients use " + p.base + "/gemini",
		"llmretry proxy   target g: http://" + host + "/v1beta, api gemini (set by api:), 1 key, in X-Goog-Api-Key",
		"llmretry proxy route /azure: clients use " + p.base + "/azure",
		"llmretry proxy   target az: http://" + host + "/openai/v1?api-version=preview, api openai (guessed from the host: set api: if it is not), 1 key, in Api-Key (set by key_header:)",
		"llmretry proxy route /local: clients use " + p.base + "/local",
		"llmretry proxy   target vllm: http://" + host + "/v1, api openai (guessed from the host: set api: if it is not), no keys: requests go without a credential",
	}
	all := strings.Join(p.startup, "\n")
	if !strings.Contains(all, strings.Join(want, "\n")) || strings.Contains(all, key) {
		t.Fatalf("startup lines:\n%s\nwant them to hold:\n%s", all, strings.Join(want, "\n"))
	}

	// Each target gets its key in the header printed for it.
	for path, header := range map[string]string{
		"/guessed/v1/messages":                            "Authorization: Bearer " + key,
		"/anthropic/v1/messages":                          "X-Api-Key: " + key,
		"/gemini/models/gemini-2.0-flash:generateContent": "X-Goog-Api-Key: " + key,
		"/azure/chat/completions":                         "Api-Key: " + key,
	} {
		resp, err := http.Post(p.base+path, "application/json", strings.NewReader(`{"model":"m","messages":[]}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := up.seen()
		if resp.StatusCode != 200 || !strings.Contains(got[len(got)-1], header+"\r\n") {
			t.Errorf("%s: status %d; the upstream got:\n%s\nwant %s", path, resp.StatusCode, got[len(got)-1], header)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// Nothing at startup said whether the proxy shared its state through
// Redis. The last startup line says whether fleet state is on, and where,
// never the password.
func TestStartupSaysWhetherFleetStateIsOnAndWhere(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "llmretry proxy fleet state: off: the retry budget, cooldowns and key health are this process's own (--redis shares them)\n"},
		{[]string{"--redis", "redis://:s3cret-pw@127.0.0.1:1/2"}, `llmretry proxy fleet state: on, through Redis at 127.0.0.1:1, database 2, as "127.0.0.1:1" (if it is down, the proxy goes on with local state)` + "\n"},
		{[]string{"--redis", "rediss://user:s3cret-pw@127.0.0.1:1/0", "--redis-name", "fleet"}, `llmretry proxy fleet state: on, through Redis at 127.0.0.1:1 over TLS, database 0, as "fleet"`},
		{[]string{"--redis", "unix://:s3cret-pw@/tmp/redis.sock?db=3"}, `llmretry proxy fleet state: on, through Redis at the unix socket /tmp/redis.sock, database 3`},
	} {
		var stdout, stderr strings.Builder
		args := append([]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-listen", ""}, c.args...)
		if code := run(cancelled, args, &stdout, &stderr); code != 0 {
			t.Fatalf("%v: exit %d: %s", c.args, code, stderr.String())
		}
		if !strings.Contains(stdout.String(), c.want) || strings.Contains(stdout.String()+stderr.String(), "s3cret") {
			t.Errorf("%v: stdout:\n%s\nwant %q, and no password", c.args, stdout.String(), c.want)
		}
	}
}

// With Redis refusing connections, the proxy logged "context deadline
// exceeded": go-redis redialled until redisstate's timeout. It logs that
// the connection was refused, and where.
func TestRefusedRedisIsLoggedAsRefusedWithItsAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: a dial is refused
	ctx, cancel := context.WithCancel(context.Background())
	errs := &lineWriter{lines: make(chan string, 64)}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-listen", "",
			"--redis", "redis://:s3cret-pw@" + addr + "/0"}, io.Discard, errs)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("exit %d", code)
		}
	}()
	guard := time.After(30 * time.Second) // a guard: the first sync fails at once
	for {
		select {
		case line := <-errs.lines:
			if !strings.Contains(line, "Redis sync failed") {
				continue
			}
			if !strings.Contains(line, "connection refused") || !strings.Contains(line, addr) || strings.Contains(line, "deadline") || strings.Contains(line, "s3cret") {
				t.Fatalf("the warning does not say the connection to %s was refused:\n%s", addr, line)
			}
			return
		case <-guard:
			t.Error("no warning that Redis is down")
			return
		}
	}
}

// freeAdjacentPorts returns a loopback port p with p-1 free too, apart
// from avoid and the ports next to them.
func freeAdjacentPorts(t *testing.T, avoid ...int) int {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		below, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p-1))
		ln.Close()
		if err != nil {
			continue
		}
		below.Close()
		ok := true
		for _, a := range avoid {
			ok = ok && p != a && p != a-1 && p != a+1
		}
		if ok {
			return p
		}
	}
	t.Fatal("no two free adjacent ports")
	return 0
}

// Two proxies started with different --listen addresses and no
// --admin-listen both took the default admin address 127.0.0.1:8786, and
// the second failed to start. The admin port follows the listen port (the
// port below it, on loopback): both start, each with its own.
func TestTwoProxiesWithDifferentListenAddressesBothStart(t *testing.T) {
	p1 := freeAdjacentPorts(t)
	p2 := freeAdjacentPorts(t, p1)
	a := startProxy(t, "--upstream", "http://127.0.0.1:1/v1", "--listen", fmt.Sprintf("127.0.0.1:%d", p1))
	b := startProxy(t, "--upstream", "http://127.0.0.1:1/v1", "--listen", fmt.Sprintf("127.0.0.1:%d", p2))
	for _, c := range []struct {
		p    *proxyRun
		port int
	}{{a, p1}, {b, p2}} {
		if want := fmt.Sprintf("http://127.0.0.1:%d", c.port-1); c.p.admin != want {
			t.Fatalf("admin on %q, want %s", c.p.admin, want)
		}
		resp, err := http.Get(c.p.admin + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s/healthz: %d", c.p.admin, resp.StatusCode)
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// The rule, and what it says when the admin port is taken.
func TestAdminAddressFollowsListen(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:8787": "127.0.0.1:8786", "127.0.0.1:8797": "127.0.0.1:8796", "0.0.0.0:9000": "127.0.0.1:8999",
		"[::1]:8787": "127.0.0.1:8786", ":8787": "127.0.0.1:8786", "127.0.0.1:0": "127.0.0.1:0", "127.0.0.1:1": "127.0.0.1:0",
	} {
		if got := adminFor(listen); got != want {
			t.Errorf("beside %s: %s, want %s", listen, got, want)
		}
	}
	port := freeAdjacentPorts(t) - 1
	taken, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var stdout, stderr strings.Builder
	code := run(context.Background(), []string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", fmt.Sprintf("127.0.0.1:%d", port+1)}, &stdout, &stderr)
	want := fmt.Sprintf("llmretry proxy: the admin address beside --listen 127.0.0.1:%d (127.0.0.1:%d): listen tcp 127.0.0.1:%d: bind: address already in use; give --admin-listen another address, or --admin-listen \"\" for none", port+1, port, port)
	if code != 1 || !strings.Contains(stderr.String(), want) {
		t.Fatalf("exit %d: %s\nwant %s", code, stderr.String(), want)
	}
}
