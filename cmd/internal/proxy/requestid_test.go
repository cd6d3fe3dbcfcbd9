package proxy

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
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
