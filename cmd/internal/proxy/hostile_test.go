package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawPost sends a POST with the given headers and body prefix on a raw
// connection and returns it, to drive what a misbehaving client sends.
func rawPost(t *testing.T, base, headers, body string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_, _ = io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+headers+"\r\n"+body)
	return conn
}

// A client sending its body a byte at a time held a connection and a
// buffer of up to 32 MiB for as long as it liked. The body must now arrive
// within its bound, or the client gets 408 and a reason.
func TestSlowRequestBodyIsCut(t *testing.T) {
	var hits atomic.Int32
	base, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }),
		func(c *Config) { c.BodyTimeout = 100 * time.Millisecond })
	conn := rawPost(t, base, "Content-Length: 1000\r\n", `{"mo`) // then nothing more
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))   // a guard: the proxy answers long before
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "request body not received within") || hits.Load() != 0 {
		t.Fatalf("status %d, body %s, upstream hits %d", resp.StatusCode, b, hits.Load())
	}
}

// A request waited on an upstream that never answered for as long as its
// client did. The wait for response headers is bounded now (generously by
// default, for models that think before their first byte), and the client
// gets 504 with the reason.
func TestUpstreamThatNeverAnswersIsBounded(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	base, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), func(c *Config) {
		c.Base = nil // the proxy's own transport, where the bound is set
		c.UpstreamTimeout = 100 * time.Millisecond
	})
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || !strings.Contains(string(b), "timeout") {
		t.Fatalf("status %d, body %s", resp.StatusCode, b)
	}
}

// A 10 MiB upstream header block was accepted and forwarded (20 at once
// took the proxy from 17 MB to 228 MB). It is capped now, with a 502 that
// says why.
func TestHugeUpstreamHeadersAreRefused(t *testing.T) {
	base, _, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Huge", strings.Repeat("h", 1<<20))
		_, _ = io.WriteString(w, "{}")
	}), func(c *Config) {
		c.Base = nil
		c.MaxUpstreamHeader = 64 << 10
	})
	resp, err := client(t).Get(base + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "response headers exceeded") || resp.Header.Get("X-Huge") != "" {
		t.Fatalf("status %d, body %.200s", resp.StatusCode, b)
	}
}

// Held bodies had no total cap and cost 1.6 times their size (12 clients
// of 32 MiB took the proxy to 646 MB). A declared body is now held in
// memory of its own size, the bodies held at once are capped, and past the
// cap a client gets 503 with Retry-After, the proxy never falls over.
func TestHeldBodiesAreSizedAndCapped(t *testing.T) {
	inUpstream, release := make(chan struct{}), make(chan struct{})
	base, p, _ := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		inUpstream <- struct{}{}
		<-release
	}), func(c *Config) { c.MaxHeld = 1 << 20 })
	const size = 700 << 10
	body := `{"input":"` + strings.Repeat("x", size-12) + `"}`
	first := make(chan *http.Response)
	go func() {
		resp, err := client(t).Post(base+"/v1/embeddings", "application/json", strings.NewReader(body))
		if err != nil {
			t.Error(err)
		}
		first <- resp
	}()
	<-inUpstream // the first body is held while its request is upstream
	if held := p.HeldBytes(); held != int64(len(body)) {
		t.Fatalf("holding %d bytes for a body of %d", held, len(body))
	}
	if got := metric(t, p, "llmretry_request_body_held_bytes"); got != float64(len(body)) {
		t.Fatalf("gauge %v", got)
	}
	resp, err := client(t).Post(base+"/v1/embeddings", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), fmt.Sprint(1<<20)) {
		t.Fatalf("past the cap: status %d, Retry-After %q, body %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	close(release)
	if r := <-first; r == nil || r.StatusCode != 200 {
		t.Fatalf("the first request: %v", r)
	} else {
		r.Body.Close()
	}
	if held := p.HeldBytes(); held != 0 {
		t.Fatalf("%d bytes still held after both requests", held)
	}
}
