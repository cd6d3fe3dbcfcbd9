package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func TestConnectionIsReusedOnceItsBodyIsReadToTheEnd(t *testing.T) {
	var conns sync.Map
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conns.Store(r.RemoteAddr, true)
		if r.URL.Path == "/chunked" { // no length: chunked framing
			io.WriteString(w, "o")
			w.(http.Flusher).Flush()
		}
		io.WriteString(w, "k")
	}))
	srv.Start()
	defer srv.Close()
	tr := newTransport(t)
	for _, path := range []string{"/", "/chunked", "/", "/chunked"} {
		if got := get(t, tr, srv.URL+path); got != "k" && got != "ok" {
			t.Fatalf("%s: body %q", path, got)
		}
	}
	n := 0
	conns.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Fatalf("four requests in turn used %d connections, want 1", n)
	}
}

// What this client does not serve the way net/http would goes to the
// fallback: https (and so HTTP/2), protocol upgrades (WebSockets), and
// requests an HTTP proxy must carry.
func TestUpgradesHTTPSAndProxiedRequestsGoToTheFallback(t *testing.T) {
	var got []string
	fallback := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		got = append(got, r.URL.String())
		return &http.Response{StatusCode: 200, Body: http.NoBody, Request: r}, nil
	})
	proxied, _ := url.Parse("http://corporate-proxy:3128")
	tr := &Transport{Fallback: fallback, Proxy: func(r *http.Request) (*url.URL, error) {
		if r.URL.Host == "behind-proxy" {
			return proxied, nil
		}
		return nil, nil
	}}
	upgrade, _ := http.NewRequest(http.MethodGet, "http://upgrade/realtime", nil)
	upgrade.Header.Set("Connection", "Upgrade")
	upgrade.Header.Set("Upgrade", "websocket")
	secure, _ := http.NewRequest(http.MethodPost, "https://secure/v1/chat/completions", strings.NewReader("{}"))
	behind, _ := http.NewRequest(http.MethodGet, "http://behind-proxy/v1/models", nil)
	for _, r := range []*http.Request{upgrade, secure, behind} {
		if _, err := tr.RoundTrip(r); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"http://upgrade/realtime", "https://secure/v1/chat/completions", "http://behind-proxy/v1/models"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("fallback got %v, want %v", got, want)
	}
	if !tr.serves(httptest.NewRequest(http.MethodPost, "http://self-hosted:8000/v1/chat/completions", nil)) {
		t.Fatal("a plain http request is not served here")
	}
	// NewTransport takes the proxy choice (HTTP_PROXY, by default) from
	// net/http's Transport.
	fromEnv := NewTransport(&http.Transport{Proxy: func(*http.Request) (*url.URL, error) { return proxied, nil }})
	if fromEnv.serves(httptest.NewRequest(http.MethodGet, "http://self-hosted:8000/v1/models", nil)) {
		t.Fatal("a request its fallback would send through a proxy is served here")
	}
}

// The read buffer is what an open stream holds while it waits: 1 KiB, not
// net/http's 4 KiB.
func TestConnectionReadsThroughA1KiBBuffer(t *testing.T) {
	c := newConn(&Transport{}, "model:80", nil)
	if n := c.br.Size(); n != 1<<10 {
		t.Fatalf("read buffer of %d bytes, want 1024", n)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// Request.Write turns a newline in a header value into a space, but names
// are written as they are: one that is not a token, or a value with control
// characters, must not reach the wire. The error names the header and never
// shows the value, which may be a key.
func TestInvalidHeadersAreRefusedAndTheirValuesNeverShown(t *testing.T) {
	srv := newRawServer(t, serveOK)
	tr := newTransport(t)
	for name, value := range map[string]string{
		"Authorization":     "Bearer sk-secret\r\nX-Injected: yes",
		"X-Null":            "sk-secret\x00",
		"X-Bad\r\nInjected": "sk-secret",
	} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL(), strings.NewReader("{}"))
		req.Header[name] = []string{value}
		_, err := tr.RoundTrip(req)
		mustContain(t, err, "invalid header field")
		if strings.Contains(err.Error(), "sk-secret") {
			t.Fatalf("the error shows the value: %v", err)
		}
	}
	if n := srv.conns.Load(); n != 0 {
		t.Fatalf("%d connections were opened for requests refused before sending", n)
	}
}

// A connection the upstream closed while it sat idle is found by a peek
// before it is used: a POST that could not be sent again still goes, on a
// new connection.
func TestIdleConnectionClosedByTheUpstreamIsNotUsed(t *testing.T) {
	closed := make(chan struct{}, 1)
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		if _, ok := readRequest(br); !ok {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		c.Close() // keep-alive promised, then closed while idle
		closed <- struct{}{}
	})
	tr := newTransport(t)
	if got := get(t, tr, srv.URL()); got != "ok" {
		t.Fatalf("body %q", got)
	}
	<-closed
	req, _ := http.NewRequest(http.MethodPost, srv.URL(), io.NopCloser(strings.NewReader("{}"))) // no GetBody
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := srv.conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

// Where the peek cannot see the close (it lost the race, or the platform has
// no peek), a request found to fail on a reused connection before any reply
// is sent again on a new one if net/http would: a GET, or a body that can be
// had again and an Idempotency-Key. A plain POST is not sent twice: its
// error goes to the caller, whose retry policy decides.
func TestReusedConnectionClosedBeforeAReplyIsRetriedOnlyWhenReplayable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		req    func(url string) *http.Request
		resent bool
	}{
		{"GET", func(u string) *http.Request { r, _ := http.NewRequest(http.MethodGet, u, nil); return r }, true},
		{"POST with Idempotency-Key", func(u string) *http.Request {
			r, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader([]byte("{}")))
			r.Header.Set("Idempotency-Key", "k1")
			return r
		}, true},
		{"POST", func(u string) *http.Request {
			r, _ := http.NewRequest(http.MethodPost, u, bytes.NewReader([]byte("{}")))
			return r
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			requests := 0
			srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
				for {
					if _, ok := readRequest(br); !ok {
						return
					}
					mu.Lock()
					requests++
					first := requests == 1
					mu.Unlock()
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					if first {
						return // closes the connection it promised to keep
					}
				}
			})
			tr := newTransport(t)
			// Connections the peek cannot look into, as on a platform
			// without one.
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				return struct{ net.Conn }{c}, err
			}
			if got := get(t, tr, srv.URL()); got != "ok" {
				t.Fatalf("body %q", got)
			}
			resp, err := tr.RoundTrip(tc.req(srv.URL()))
			if tc.resent {
				if err != nil {
					t.Fatalf("not sent again: %v", err)
				}
				resp.Body.Close()
				if n := srv.conns.Load(); n != 2 {
					t.Fatalf("%d connections, want 2", n)
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatal("a plain POST went again on a new connection")
			}
			mustContain(t, err, "closed the connection before a response")
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("error %v is not the connection's own, which retry policies classify", err)
			}
			if n := srv.conns.Load(); n != 1 {
				t.Fatalf("%d connections, want 1", n)
			}
		})
	}
}

// A reply followed by bytes nobody asked for leaves the connection in an
// unknown state: it is closed, not reused.
func TestConnectionWithBytesAfterTheReplyIsNotReused(t *testing.T) {
	srv := newRawServer(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, ok := readRequest(br); !ok {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake")
		}
	})
	tr := newTransport(t)
	for range 2 {
		if got := get(t, tr, srv.URL()); got != "ok" {
			t.Fatalf("body %q", got)
		}
	}
	if n := srv.conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: the first was reused with bytes left in it", n)
	}
}

// A body waits for its first bytes through the poll set only while more
// bodies are open than WatchAbove: with few streams at once a watch's two
// system calls buy nothing, with many they save a goroutine's stack each.
func TestBodiesWaitThroughThePollSetOnlyBeyondWatchAbove(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the poll set watches on Linux only")
	}
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-release
	}))
	defer srv.Close()
	defer close(release)
	tr := NewTransport(&http.Transport{})
	tr.WatchAbove = 1
	defer tr.CloseIdleConnections()
	var bodies []*body
	for range 2 {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		bodies = append(bodies, resp.Body.(*body))
	}
	// Two open, one allowed without: the watch is taken now, for either.
	stop, ok := bodies[1].NotifyReadable(func() {})
	if !ok {
		t.Fatal("two bodies open, WatchAbove 1: want the poll set")
	}
	stop()
	bodies[1].Close()
	if _, ok := bodies[0].NotifyReadable(func() {}); ok {
		t.Fatal("one body open, WatchAbove 1: want a goroutine's wait (ok false)")
	}
}

// The README's figure: bodies wait through the poll set beyond 128 open.
func TestBodiesWaitThroughThePollSetBeyond128ByDefault(t *testing.T) {
	var tr Transport
	tr.open.Store(128)
	if tr.watching() {
		t.Fatal("128 bodies open: want no watch")
	}
	tr.open.Store(129)
	if !tr.watching() {
		t.Fatal("129 bodies open: want the poll set")
	}
}
