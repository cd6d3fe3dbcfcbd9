package proxy

import (
	"net/http"
	"strings"
	"testing"
)

// "/tenant-a/../../tenant-b/v1/..." (and its %2e%2e form) reached the
// upstream with tenant-a's key, dot-segments intact: wherever the upstream
// or a CDN in front of it resolves them, the request lands outside the
// target's base path. On a route that holds keys, a path with a "." or
// ".." segment after the prefix now gets 400, in any spelling, and goes
// nowhere; route matching still reads the path as it was sent.
func TestDotSegmentsAfterTheRouteGet400InAnySpelling(t *testing.T) {
	up := newWireLog(t, nil)
	text := `
routes:
  - prefix: /tenant-a
    targets: [{name: a, base_url: '` + up.URL + `/a/v1', keys: [{id: ka, env: KA}]}]
  - prefix: /tenant-b
    targets: [{name: b, base_url: '` + up.URL + `/b/v1', keys: [{id: kb, env: KB}]}]
`
	base, _, _ := startRouter(t, text, map[string]string{"KA": "sk-tenant-a", "KB": "sk-tenant-b"})
	addr := strings.TrimPrefix(base, "http://")
	for _, target := range []string{
		"/tenant-a/../../tenant-b/v1/chat/completions",
		"/tenant-a/%2e%2e/%2e%2e/tenant-b/v1/chat/completions",
		"/tenant-a/%2E%2E/%2E%2E/tenant-b/v1/chat/completions",
		"/tenant-a/.%2e/.%2E/tenant-b/v1/chat/completions",
		"/tenant-a/%2e./tenant-b/v1/chat/completions",
		"/tenant-a/%252e%252e/%252e%252e/tenant-b/v1/chat/completions",
		"/tenant-a/%25252e%25252e/tenant-b/v1/chat/completions",
		"/tenant-a/..%2f..%2ftenant-b/v1/chat/completions",
		"/tenant-a/..%2F..%2Ftenant-b/v1/chat/completions",
		"/tenant-a/..%5c..%5ctenant-b/v1/chat/completions",
		"/tenant-a/..\\..\\tenant-b/v1/chat/completions",
		"/tenant-a/%2e%2e%5c%2e%2e%5ctenant-b",
		"/tenant-a/..;/..;/tenant-b/v1/chat/completions",
		"/tenant-a/./chat/completions",
		"/tenant-a/chat/completions/.",
		"/tenant-a/chat/completions/..",
		"/tenant-a/..",
		"/tenant-a/..?x=1",
	} {
		resp, body := rawDo(t, base, "POST "+target+" HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: application/json\r\n", `{"model":"gpt-4o"}`)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, ". or .. segment") || resp.Header.Get(RequestIDHeader) == "" {
			t.Errorf("%s: status %d, body %s; want 400 naming the dot segment", target, resp.StatusCode, body)
		}
	}
	if got := up.seen(); len(got) != 0 {
		t.Fatalf("the upstream got %d requests with dot segments:\n%s", len(got), strings.Join(got, "\n"))
	}
	// Dots inside a segment are no dot segment; routes match the path as
	// sent, byte for byte: an encoded slash is not the prefix's end.
	for target, want := range map[string]string{
		"/tenant-a/files/a..b/content":            "POST /a/v1/files/a..b/content ",
		"/tenant-a/models/gemini-2.5-flash:x":     "POST /a/v1/models/gemini-2.5-flash:x ",
		"/tenant-a/files/.hidden/..x":             "POST /a/v1/files/.hidden/..x ",
		"/tenant-a//chat/completions":             "POST /a/v1//chat/completions ",
		"/tenant-a%2f..%2ftenant-b/v1/chat":       "404",
		"/tenant-a%2F..%2Ftenant-b/v1/chat":       "404",
		"/tenant-b/chat/completions?path=../../x": "POST /b/v1/chat/completions?path=../../x ",
	} {
		before := len(up.seen())
		resp, body := rawDo(t, base, "POST "+target+" HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: application/json\r\n", `{"model":"gpt-4o"}`)
		got := up.seen()[before:]
		switch {
		case want == "404":
			if resp.StatusCode != http.StatusNotFound || len(got) != 0 {
				t.Errorf("%s: status %d, %d upstream requests; want 404 (no route)", target, resp.StatusCode, len(got))
			}
		case resp.StatusCode != 200 || len(got) != 1 || !strings.HasPrefix(got[0], want):
			t.Errorf("%s: status %d (%s), upstream got %q; want %q", target, resp.StatusCode, body, got, want)
		}
	}
}
