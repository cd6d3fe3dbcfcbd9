package proxy

import (
	"bufio"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
)

// Every answer says which request it was and how many attempts went
// upstream, and every log line about the request carries the same id.
func TestAnswersCarryTheRequestIDAndAttempts(t *testing.T) {
	var hits atomic.Int32
	base, _, logs := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "{}")
	}))
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get(RequestIDHeader)
	if resp.StatusCode != 200 || resp.Header.Get(AttemptsHeader) != "2" || !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("status %d, attempts %q, id %q", resp.StatusCode, resp.Header.Get(AttemptsHeader), id)
	}
	if !strings.Contains(logs.String(), "llmretry: retrying") || !strings.Contains(logs.String(), "request_id="+id) {
		t.Fatalf("the retry's log line lacks request_id=%s:\n%s", id, logs.String())
	}
	// A second request gets another id; the proxy's own error answers carry
	// theirs too.
	resp, err = client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(strings.Repeat("x", 64)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if other := resp.Header.Get(RequestIDHeader); other == "" || other == id {
		t.Fatalf("second request's id %q (first %q)", other, id)
	}
}

// The stamps go straight into the client's headers: an upstream that sends
// its own (another llmretry proxy) must not add a second value to either.
func TestUpstreamStampsAreReplacedNotAdded(t *testing.T) {
	base, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(RequestIDHeader, "from-upstream")
		w.Header().Set(AttemptsHeader, "9")
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}")
	}))
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ids, attempts := resp.Header.Values(RequestIDHeader), resp.Header.Values(AttemptsHeader)
	if len(ids) != 1 || ids[0] == "from-upstream" || len(attempts) != 1 || attempts[0] != "1" {
		t.Fatalf("ids %q, attempts %q: want this proxy's one of each", ids, attempts)
	}
}

// A stream that breaks mid-reply was logged by ReverseProxy without saying
// which request. It is logged once, at Warn, with the request's id.
func TestMidStreamBreakIsLoggedOnceWithTheRequestID(t *testing.T) {
	base, _, logs := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {\"delta\":\"one\"}\n\ndata: {\"delta\":\"two\"}\n\n")
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // cut the stream
	}))
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	id := resp.Header.Get(RequestIDHeader)
	lines := strings.Count(logs.String(), "broke mid-stream")
	if lines != 1 || !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "request_id="+id) {
		t.Fatalf("%d mid-stream lines (want 1, with request_id=%s):\n%s", lines, id, logs.String())
	}
	if strings.Contains(logs.String(), "ReverseProxy read error") {
		t.Fatalf("ReverseProxy's unlabelled line is still logged:\n%s", logs.String())
	}
}

// A JSON reply that breaks before its declared length is logged too, with
// the request's id: ReverseProxy's own line for it is dropped, so nothing
// else reports it.
func TestBrokenJSONReplyIsLoggedWithTheRequestID(t *testing.T) {
	base, _, logs := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "1000")
		_, _ = io.WriteString(w, `{"choices":[`)
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}))
	// The headers of a reply that is not streamed are not flushed before
	// the abort, so the client may see the connection end without them.
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
	if err == nil {
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if n := strings.Count(logs.String(), "broke mid-stream"); n != 1 || !regexp.MustCompile(`request_id=[0-9a-f]{16}`).MatchString(logs.String()) {
		t.Fatalf("%d lines for the broken reply (want 1, with a request_id):\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "ReverseProxy read error") {
		t.Fatalf("ReverseProxy's unlabelled line is logged:\n%s", logs.String())
	}
}

// checkOwnAnswer fails t unless resp has status code, a request id, and a
// log line with the same id that says why.
func checkOwnAnswer(t *testing.T, name string, resp *http.Response, logs *logBuffer, code int) {
	t.Helper()
	id := resp.Header.Get(RequestIDHeader)
	if resp.StatusCode != code || !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Errorf("%s: status %d, %s %q; want %d and an id", name, resp.StatusCode, RequestIDHeader, id, code)
		return
	}
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "request_id="+id) &&
			(strings.Contains(line, "llmretry proxy: refused") && strings.Contains(line, "status="+strconv.Itoa(code)) || strings.Contains(line, "llmretry: giving up")) {
			return
		}
	}
	t.Errorf("%s: no log line says why, with request_id=%s:\n%s", name, id, logs.String())
}

// The proxy's own 401, 404, 408, 413 and 503 carried no request id, and
// were logged nowhere. Every answer the proxy's handler writes itself now
// carries X-Llmretry-Request-Id, and a log line with the same id says why.
func TestEveryOwnAnswerCarriesTheRequestIDAndALogLine(t *testing.T) {
	up := newWireLog(t, nil)
	base, _, logs := startRouter(t, keyedRoute(up.URL, "clients: [{id: app, env: TOKEN}]\n", ""), map[string]string{"KEY": "sk-upstream", "TOKEN": testToken})
	addr := strings.TrimPrefix(base, "http://")
	auth := []string{"Authorization", "Bearer " + testToken}
	post := func(path string, header ...string) *http.Response {
		return do(t, http.MethodPost, base+path, `{"model":"gpt-4o"}`, header...)
	}
	checkOwnAnswer(t, "no token", post("/openai/chat/completions"), logs, 401)
	checkOwnAnswer(t, "wrong token", post("/openai/chat/completions", "X-Api-Key", "sk-wrong-0123456789"), logs, 401)
	checkOwnAnswer(t, "foreign origin", post("/openai/chat/completions", append(auth, "Origin", "https://evil.example")...), logs, 403)
	resp, _ := rawDo(t, base, "POST /openai/chat/completions HTTP/1.1\r\nHost: rebind.evil.example\r\n", `{}`)
	checkOwnAnswer(t, "rebinding host", resp, logs, 403)
	checkOwnAnswer(t, "no route", post("/nowhere/chat/completions", auth...), logs, 404)
	resp, _ = rawDo(t, base, "POST /openai/../x HTTP/1.1\r\nHost: "+addr+"\r\nAuthorization: Bearer "+testToken+"\r\n", `{}`)
	checkOwnAnswer(t, "dot segment", resp, logs, 400)
	checkOwnAnswer(t, "bad query", post("/openai/chat/completions?a=%zz", auth...), logs, 400)

	// A route whose only key the upstream refused: then 503, with no key left.
	refusing := newWireLog(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusUnauthorized) })
	base2, _, logs2 := startRouter(t, keyedRoute(refusing.URL, "", ""), map[string]string{"KEY": "sk-revoked"})
	do(t, http.MethodPost, base2+"/openai/chat/completions", `{"model":"gpt-4o"}`)
	checkOwnAnswer(t, "every key out", do(t, http.MethodPost, base2+"/openai/chat/completions", `{"model":"gpt-4o"}`), logs2, 503)

	// Without a config.
	slow := make(chan struct{})
	defer close(slow)
	proxyBase, _, plogs := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hangup":
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		case "/slow":
			select {
			case <-slow:
			case <-r.Context().Done():
			}
		}
	}), func(c *Config) {
		c.Base = nil // the proxy's own transport, for UpstreamTimeout
		c.MaxBody = 1000
		c.BodyTimeout, c.UpstreamTimeout = 100*time.Millisecond, 100*time.Millisecond
		c.Policy = llmretry.Policy{MaxAttempts: 1}
	})
	checkOwnAnswer(t, "declared too large", do(t, http.MethodPost, proxyBase+"/v1/x", strings.Repeat("x", 2000)), plogs, 413)
	resp, _ = rawDo(t, proxyBase, "POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", "7d0\r\n"+strings.Repeat("x", 2000)+"\r\n0\r\n\r\n")
	checkOwnAnswer(t, "chunked too large", resp, plogs, 413)
	fullBase, _, flogs := start(t, http.NotFoundHandler(), func(c *Config) { c.MaxHeld = 500 })
	checkOwnAnswer(t, "held full", do(t, http.MethodPost, fullBase+"/v1/x", strings.Repeat("x", 600)), flogs, 503)
	resp, _ = rawDo(t, proxyBase, "POST /v1/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", "zz\r\n")
	checkOwnAnswer(t, "bad chunk", resp, plogs, 400)
	conn := rawPost(t, proxyBase, "Content-Length: 100\r\n", `{"mo`)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkOwnAnswer(t, "slow body", resp, plogs, 408)
	checkOwnAnswer(t, "upstream hung up", do(t, http.MethodPost, proxyBase+"/hangup", `{}`), plogs, 502)
	checkOwnAnswer(t, "upstream silent", do(t, http.MethodPost, proxyBase+"/slow", `{}`), plogs, 504)

	// net/http answers a malformed request before any handler runs: the
	// README says that those answers carry no id.
	for _, base := range []string{base, proxyBase} {
		resp, _ = rawDo(t, base, "GET /v1/models HTTP/1.1\r\nHost: a b\r\n", "")
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get(RequestIDHeader) != "" {
			t.Errorf("a malformed Host: status %d, id %q; want net/http's own 400", resp.StatusCode, resp.Header.Get(RequestIDHeader))
		}
	}
}
