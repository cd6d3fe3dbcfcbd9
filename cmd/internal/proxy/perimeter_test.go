package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The README's first config, on a laptop's loopback with no clients,
// served a web page's request with the target's key: a foreign Origin, a
// text/plain body (a "simple" request, which a browser sends without a
// preflight) and, with DNS rebinding, a foreign Host. A request that comes
// from a page, or names another host, is refused now, and reaches no
// upstream; with client tokens too.
func TestBrowserRequestsAreRefusedAtThePerimeter(t *testing.T) {
	up := newWireLog(t, nil)
	for _, clients := range []string{"", "clients: [{id: app, env: TOKEN}]\n"} {
		base, _, _ := startRouter(t, keyedRoute(up.URL, clients, ""), map[string]string{"KEY": "sk-upstream", "TOKEN": testToken})
		before := len(up.seen())
		addr := strings.TrimPrefix(base, "http://")
		_, port, _ := net.SplitHostPort(addr)
		auth := "Authorization: Bearer " + testToken + "\r\n"
		for name, head := range map[string]string{
			"foreign origin, text/plain": "POST /openai/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\n" + auth,
			"cross-site, no origin":      "POST /openai/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\n" + auth,
			"another port of localhost":  "POST /openai/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nOrigin: http://localhost:3000\r\nContent-Type: text/plain\r\n" + auth,
			"same-site, no origin":       "POST /openai/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nSec-Fetch-Site: same-site\r\n" + auth,
			"null origin":                "POST /openai/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nOrigin: null\r\n" + auth,
			"rebinding host":             "POST /openai/chat/completions HTTP/1.1\r\nHost: rebind.evil.example:" + port + "\r\nContent-Type: text/plain\r\n" + auth,
			"rebinding host, same port":  "POST /openai/chat/completions HTTP/1.1\r\nHost: attacker.example\r\n" + auth,
			"no host":                    "POST /openai/chat/completions HTTP/1.0\r\n" + auth,
			"preflight, foreign origin":  "OPTIONS /openai/chat/completions HTTP/1.1\r\nHost: " + addr + "\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n",
			"websocket, foreign origin":  "GET /openai/realtime HTTP/1.1\r\nHost: " + addr + "\r\nOrigin: https://evil.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + auth,
		} {
			resp, body := rawDo(t, base, head, `{"model":"gpt-4o","messages":[]}`)
			if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("clients %q, %s: status %d, Allow-Origin %q, want 403 and no CORS: %s", clients, name, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), body)
			}
		}
		if n := len(up.seen()) - before; n != 0 {
			t.Fatalf("clients %q: the upstream got %d requests from pages", clients, n)
		}
		// What a program sends, by any loopback name, is served.
		for _, host := range []string{addr, "localhost:" + port, "LOCALHOST.", "[::1]:" + port, "127.0.0.2"} {
			resp, body := rawDo(t, base, "POST /openai/chat/completions HTTP/1.1\r\nHost: "+host+"\r\nContent-Type: application/json\r\nSec-Fetch-Site: none\r\n"+auth, `{"model":"gpt-4o"}`)
			if resp.StatusCode != 200 {
				t.Errorf("clients %q, Host %s: status %d: %s", clients, host, resp.StatusCode, body)
			}
		}
	}
}

// A listed origin's page can use the routes: the proxy answers its CORS
// preflight itself (no credential comes with one) and adds what lets the
// page read every answer, the upstream's (whose own Access-Control-*
// headers it drops, so that none is doubled) and its own refusals.
func TestAllowedOriginGetsPreflightAndCORSHeaders(t *testing.T) {
	up := newWireLog(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*") // as some APIs send
		w.Header().Set("Access-Control-Expose-Headers", "X-Request-Id")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"x"}`)
	})
	const page = "http://localhost:3000"
	base, _, _ := startRouter(t, keyedRoute(up.URL, "clients: [{id: app, env: TOKEN}]\n", "allow_origins: ['http://LOCALHOST:3000/']\n"),
		map[string]string{"KEY": "sk-upstream", "TOKEN": testToken})

	pre := do(t, http.MethodOptions, base+"/openai/chat/completions", "",
		"Origin", page, "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "authorization, content-type, x-stainless-os",
		"Access-Control-Request-Private-Network", "true")
	h := pre.Header
	if pre.StatusCode != http.StatusNoContent || h.Get("Access-Control-Allow-Origin") != page ||
		h.Get("Access-Control-Allow-Methods") != "POST" || h.Get("Access-Control-Allow-Headers") != "authorization, content-type, x-stainless-os" ||
		h.Get("Access-Control-Allow-Private-Network") != "true" || h.Get(RequestIDHeader) == "" {
		t.Fatalf("preflight: status %d, headers %v", pre.StatusCode, h)
	}
	if n := len(up.seen()); n != 0 {
		t.Fatalf("the preflight went upstream (%d requests)", n)
	}

	resp := do(t, http.MethodPost, base+"/openai/chat/completions", `{"model":"gpt-4o"}`,
		"Origin", page, "Content-Type", "application/json", "Authorization", "Bearer "+testToken)
	if resp.StatusCode != 200 || len(resp.Header.Values("Access-Control-Allow-Origin")) != 1 ||
		resp.Header.Get("Access-Control-Allow-Origin") != page || resp.Header.Get("Access-Control-Expose-Headers") != "*" ||
		!strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Origin") {
		t.Fatalf("request: status %d, headers %v", resp.StatusCode, resp.Header)
	}
	// A refusal is readable by the page too: it can tell the user why.
	resp = do(t, http.MethodPost, base+"/openai/chat/completions", `{"model":"gpt-4o"}`, "Origin", page)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Access-Control-Allow-Origin") != page {
		t.Fatalf("without a token: status %d, headers %v", resp.StatusCode, resp.Header)
	}
	// Another port of the same host is another origin.
	resp = do(t, http.MethodPost, base+"/openai/chat/completions", `{}`, "Origin", "http://localhost:3001", "Authorization", "Bearer "+testToken)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("another port: status %d", resp.StatusCode)
	}
	if n := len(up.seen()); n != 1 {
		t.Fatalf("the upstream got %d requests, want the one with a token", n)
	}
}

// A name the operator lists is let in on loopback (from the config, and
// from the Perimeter the command fills from --allow-host); off loopback
// the Host is not checked: a load balancer's names are the operator's.
func TestAllowedHostsAndListenersOffLoopback(t *testing.T) {
	up := newWireLog(t, nil)
	vars := map[string]string{"KEY": "sk-upstream", "TOKEN": testToken}
	fc, err := ParseConfig("c.yaml", []byte(keyedRoute(up.URL, "clients: [{id: app, env: TOKEN}]\n", "allow_hosts: [proxy.internal]\n")), env(vars))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		per  Perimeter
		host string
		want int
	}{
		{Perimeter{}, "proxy.internal:8787", 200},
		{Perimeter{}, "PROXY.INTERNAL.", 200},
		{Perimeter{}, "other.internal", 403},
		{Perimeter{Hosts: []string{"other.internal"}}, "other.internal", 200},
		{Perimeter{Listen: "127.0.0.1:8787"}, "other.internal", 403},
		{Perimeter{Listen: "[::1]:8787"}, "other.internal", 403},
		{Perimeter{Listen: "localhost:8787"}, "other.internal", 403},
		{Perimeter{Listen: "0.0.0.0:8787"}, "lb.example.com", 200},
		{Perimeter{Listen: ":8787"}, "lb.example.com", 200},
	} {
		rt, err := NewRouter(fc, Config{Perimeter: tc.per})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, "/openai/chat/completions", strings.NewReader(`{"model":"m"}`))
		req.Host = tc.host
		req.Header.Set("Authorization", "Bearer "+testToken)
		w := httptest.NewRecorder()
		rt.ServeHTTP(w, req)
		if w.Code != tc.want {
			t.Errorf("%+v, Host %s: status %d, want %d: %s", tc.per, tc.host, w.Code, tc.want, w.Body)
		}
	}
}

// The admin listener's /metrics names targets and key ids: on loopback it
// answers only to the proxy's names, as the routes do.
func TestAdminListenerOnLoopbackChecksTheHost(t *testing.T) {
	fc, err := ParseConfig("c.yaml", []byte(keyedRoute("http://127.0.0.1:1", "", "")), env(map[string]string{"KEY": "sk-k"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		adminListen, host string
		want              int
	}{
		{"127.0.0.1:8786", "rebind.evil.example:8786", 403},
		{"127.0.0.1:8786", "127.0.0.1:8786", 200},
		{"127.0.0.1:8786", "localhost", 200},
		{"0.0.0.0:8786", "monitoring.internal", 200},
	} {
		rt, err := NewRouter(fc, Config{Perimeter: Perimeter{AdminListen: tc.adminListen}})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Host = tc.host
		w := httptest.NewRecorder()
		rt.Admin().ServeHTTP(w, req)
		if w.Code != tc.want || tc.want == 403 && strings.Contains(w.Body.String(), "llmretry_") {
			t.Errorf("admin on %s, Host %s: status %d, want %d", tc.adminListen, tc.host, w.Code, tc.want)
		}
	}
}

func TestOriginsAndHostsAreReadStrictly(t *testing.T) {
	for in, want := range map[string]string{
		"https://app.example.com":      "https://app.example.com",
		"HTTPS://App.Example.com:443/": "https://app.example.com",
		"http://localhost:3000":        "http://localhost:3000",
		"http://[::1]:80":              "http://[::1]",
		"chrome-extension://abcdef":    "chrome-extension://abcdef",
	} {
		if got, err := ParseOrigin(in); err != nil || got != want {
			t.Errorf("ParseOrigin(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"*", "null", "", "app.example.com", "https://", "https://app.example.com/page", "https://u:p@app.example.com", "https://a.example?x=1"} {
		if got, err := ParseOrigin(in); err == nil {
			t.Errorf("ParseOrigin(%q) = %q, want an error", in, got)
		}
	}
	for in, want := range map[string]string{"Proxy.Internal": "proxy.internal", "host.": "host", "[fd00::1]": "fd00::1", "10.0.0.5": "10.0.0.5"} {
		if got, err := ParseHost(in); err != nil || got != want {
			t.Errorf("ParseHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "http://proxy", "proxy:8787", "proxy/x", "*.example.com", "a b"} {
		if got, err := ParseHost(in); err == nil {
			t.Errorf("ParseHost(%q) = %q, want an error", in, got)
		}
	}
}
