package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// takeEvery has every HTTP/1.x stream written on its connection, not only
// those beyond the first DefaultKeptStreams open at once.
func takeEvery(c *Config) { c.KeptStreams = -1 }

// rawRequest sends a POST for a stream to the proxy at base over a
// connection of its own, as proto (HTTP/1.1 or HTTP/1.0), and returns the
// connection and a reader on it.
func rawRequest(t *testing.T, base, proto string) (net.Conn, *bufio.Reader) {
	t.Helper()
	return rawSend(t, base, "/v1/chat/completions", proto, `{"stream":true}`)
}

// rawSend sends a POST of the JSON body to path, as proto, as rawRequest does.
func rawSend(t *testing.T, base, path, proto, body string) (net.Conn, *bufio.Reader) {
	t.Helper()
	u, _ := url.Parse(base)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sendOn(t, c, path, proto, body)
	return c, bufio.NewReader(c)
}

// sendOn sends a POST of the JSON body to path on the connection c, as
// proto.
func sendOn(t *testing.T, c net.Conn, path, proto, body string) {
	t.Helper()
	req := "POST " + path + " " + proto + "\r\nHost: " + c.RemoteAddr().String() +
		"\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
}

// sseUpstream answers with the events in order, each written and flushed
// on its own, each after a receive on next (when next is not nil).
func sseUpstream(next <-chan struct{}, events ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i, ev := range events {
			if i > 0 && next != nil {
				select {
				case <-next:
				case <-r.Context().Done():
					return
				}
			}
			_, _ = io.WriteString(w, ev)
			w.(http.Flusher).Flush()
		}
	}
}

// A stream to an HTTP/1.1 client is written on the connection itself: one
// chunk an event, the terminal chunk at the end, with the proxy's own
// headers as always; and the connection then serves the client's next
// request (TestATakenConnectionServesTheClientsNextRequest).
func TestStreamToAnHTTP11ClientIsWrittenOnTheConnection(t *testing.T) {
	next := make(chan struct{})
	base, _, _ := start(t, sseUpstream(next, "data: one\n\n", "data: two\n\n", "data: [DONE]\n\n"), takeEvery)
	t.Cleanup(func() { close(next) }) // before the servers close: a failure leaves no handler waiting
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	// (ReadResponse takes "Connection: close" off the headers into Close.)
	if resp.StatusCode != 200 || resp.Close || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" ||
		resp.Header.Get(AttemptsHeader) != "1" || resp.Header.Get(RequestIDHeader) == "" {
		t.Fatalf("status %d close %v headers %v transfer-encoding %v", resp.StatusCode, resp.Close, resp.Header, resp.TransferEncoding)
	}
	// The raw chunks, not ReadResponse's reading of them: the framing is
	// what is tested. Each event is sent once the last one has arrived.
	for i, want := range []string{"b\r\ndata: one\n\n\r\n", "b\r\ndata: two\n\n\r\n", "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"} {
		if i > 0 {
			send(t, next, "the upstream left before its next event")
		}
		got := make([]byte, len(want))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
			t.Fatalf("chunk %d: %q %v, want %q", i, got, err, want)
		}
	}
}

// An HTTP/1.0 client gets its stream unchunked, ended by the connection's
// close.
func TestStreamToAnHTTP10ClientEndsWithTheConnection(t *testing.T) {
	base, _, _ := start(t, sseUpstream(nil, "data: one\n\n", "data: two\n\n"), takeEvery)
	c, br := rawRequest(t, base, "HTTP/1.0")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.Proto != "HTTP/1.0" || len(resp.TransferEncoding) != 0 || string(b) != "data: one\n\ndata: two\n\n" {
		t.Fatalf("%s transfer-encoding %v body %q %v", resp.Proto, resp.TransferEncoding, b, err)
	}
}

// Replies that are not streams stay net/http's: the connection is kept
// alive for the next request. So is a HEAD's.
func TestRepliesThatAreNotStreamsKeepTheConnection(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/v1/stream" {
			w.Header().Set("Content-Type", "text/event-stream")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	base, _, _ := start(t, up)
	c := client(t)
	var reused []bool
	for _, req := range []struct{ method, path string }{{"POST", "/v1/chat/completions"}, {"POST", "/v1/chat/completions"}, {"HEAD", "/v1/stream"}, {"POST", "/v1/chat/completions"}} {
		r, _ := http.NewRequest(req.method, base+req.path, strings.NewReader("{}"))
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) },
		}))
		resp, err := c.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Close {
			t.Fatalf("%s %s: %d close %v %q", req.method, req.path, resp.StatusCode, resp.Close, b)
		}
	}
	if len(reused) != 4 || reused[0] || !reused[1] || !reused[2] || !reused[3] {
		t.Fatalf("connections reused %v, want one connection for all four", reused)
	}
}

// watchedConn reports the result of every write on it.
type watchedConn struct {
	net.Conn
	writes chan<- error
}

func (c watchedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.writes <- err
	return n, err
}

type watchedListener struct {
	net.Listener
	writes chan<- error
}

func (l watchedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return watchedConn{c, l.writes}, nil
}

// A client that leaves a taken stream is noticed when a write to it fails
// (the next event's, or the rest of the last one), and the upstream request
// ends then.
func TestClientLeavingATakenStreamEndsTheUpstreamRequest(t *testing.T) {
	next := make(chan struct{})
	ended := make(chan struct{})
	events := []string{"data: one\n\n"}
	for range 10 {
		events = append(events, "data: more\n\n")
	}
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(ended)
		sseUpstream(next, events...)(w, r)
	})
	_, p, _ := start(t, up, takeEvery)
	t.Cleanup(func() { close(next) }) // before the servers close: a failure leaves no handler waiting
	writes := make(chan error, 100)
	base, _, _ := serveProxy(t, p, time.Minute, io.Discard, func(ln net.Listener) net.Listener { return watchedListener{ln, writes} })
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || first != "data: one\n" {
		t.Fatalf("first line %q %v", first, err)
	}
	// Gone at once, with a reset rather than a goodbye.
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close()
	// An event at a time, each once the proxy has tried to pass the last
	// one on, until a write fails. The failed write may be one still
	// passing the first event on when the reset came (under load, the
	// proxy's last write of it came after the client had read its line):
	// each write's result is reported before the write returns, so one
	// that failed is in writes before the upstream request can end.
	failed := false
	taken := func() { // the results of the writes made so far
		for {
			select {
			case err := <-writes:
				failed = failed || err != nil
			default:
				return
			}
		}
	}
	for i := 1; i < len(events) && !failed; i++ {
		if taken(); failed {
			break
		}
		select {
		case next <- struct{}{}:
		case <-ended:
			if taken(); !failed {
				t.Fatal("the upstream request ended before its events were asked for, and no write had failed")
			}
			continue
		}
		select {
		case err := <-writes:
			failed = err != nil
		case <-time.After(10 * time.Second):
			t.Fatal("the proxy did not write the event")
		}
	}
	if !failed {
		t.Fatal("every event was written: the departed client was never noticed")
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("a write to the departed client failed, and the upstream request went on")
	}
}

// A stream the upstream cuts midway reaches an HTTP/1.1 client cut: no
// terminal chunk, so the client cannot take it for whole.
func TestStreamCutUpstreamReachesTheHTTP11ClientCut(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"b\r\ndata: one\n\n\r\n6\r\ndata: ")
		_ = brw.Flush()
	})
	base, _, _ := start(t, up, takeEvery)
	resp, err := client(t).Post(base+"/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.HasPrefix(string(b), "data: one\n\n") {
		t.Fatalf("client read %q, %v: want the first event, then unexpected EOF", b, err)
	}
}

// serveProxy serves p through NewServer and Serve, on a listener that wrap
// may wrap, until stop is called; wait returns Serve's result.
func serveProxy(t *testing.T, p http.Handler, grace time.Duration, logs io.Writer, wrap ...func(net.Listener) net.Listener) (base string, stop func(), wait func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	for _, w := range wrap {
		ln = w(ln)
	}
	srv := NewServer(p)
	ln = Listener(srv, ln)
	ctx, cancel := context.WithCancel(context.Background())
	d := make(chan error, 1)
	go func() {
		d <- Serve(ctx, srv, func() error { return srv.Serve(ln) }, grace, slog.New(slog.NewTextHandler(logs, nil)))
	}()
	wait = sync.OnceValue(func() error { return <-d })
	t.Cleanup(func() { cancel(); _ = wait() })
	return "http://" + addr, cancel, wait
}

// A drain waits for the streams on taken connections, which net/http's
// Shutdown no longer sees, to end.
func TestServeDrainWaitsForATakenStream(t *testing.T) {
	next := make(chan struct{})
	_, p, _ := start(t, sseUpstream(next, "data: one\n\n", "data: two\n\n"), takeEvery)
	t.Cleanup(func() { close(next) }) // before the servers close: a failure leaves no handler waiting
	logs := &logBuffer{}
	base, stop, wait := serveProxy(t, p, time.Minute, logs)
	done := make(chan error, 1)
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := bufio.NewReader(resp.Body)
	if l, err := body.ReadString('\n'); err != nil || l != "data: one\n" {
		t.Fatalf("first line %q %v", l, err)
	}
	stop()
	go func() { done <- wait() }()
	select {
	case err := <-done:
		t.Fatalf("the drain ended (%v) while a taken stream was open", err)
	case next <- struct{}{}: // the upstream sends its second event, and ends
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream did not take its next event")
	}
	rest, err := io.ReadAll(body)
	if err != nil || string(rest) != "\ndata: two\n\n" {
		t.Fatalf("rest %q %v", rest, err)
	}
	// Its header, written before the drain, said the connection stays
	// open; at its end it is closed, as an idle one would be: refused
	// back, or, given back as the listener closed, closed by the drain
	// or by Accept.
	if n, err := br.Read(make([]byte, 1)); resp.Close || n != 0 || err != io.EOF {
		t.Fatalf("close %v; after the stream: %d bytes, %v; want the connection closed", resp.Close, n, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "drain ended: every in-flight request finished") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

// When the drain's grace passes, the streams on taken connections are cut
// too, and Serve says so.
func TestServeDrainCutsATakenStreamWhenGracePasses(t *testing.T) {
	next := make(chan struct{}) // never sent on: the stream stays open
	_, p, _ := start(t, sseUpstream(next, "data: one\n\n", "data: two\n\n"), takeEvery)
	t.Cleanup(func() { close(next) }) // before the servers close: a failure leaves no handler waiting
	logs := &logBuffer{}
	base, stop, wait := serveProxy(t, p, 50*time.Millisecond, logs)
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body := bufio.NewReader(resp.Body)
	if l, err := body.ReadString('\n'); err != nil || l != "data: one\n" {
		t.Fatalf("first line %q %v", l, err)
	}
	stop()
	if err := wait(); err == nil || !strings.Contains(err.Error(), "grace period were cut") {
		t.Fatalf("Serve returned %v", err)
	}
	if _, err := io.ReadAll(body); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("the cut stream read to %v, want unexpected EOF", err)
	}
}

// A reply that is not a stream goes to net/http's writer as it is, its
// header once: the wrapper that takes streams once implied a header on
// every write after the first, and net/http printed "superfluous
// response.WriteHeader call" to stderr for most answers of the proxy (its
// own refusals, JSON replies, replies with no type).
func TestRepliesThatAreNotStreamsWriteTheirHeaderOnce(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/v1/json" {
			w.Header().Set("Content-Type", "application/json")
		}
		_, _ = io.WriteString(w, `{"ok":`)
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, `true}`)
	})
	base, _, logs := start(t, up)
	for _, path := range []string{"/v1/json", "/v1/untyped", "/v1/json"} {
		resp, err := client(t).Post(base+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != `{"ok":true}` {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, b)
		}
	}
	if strings.Contains(logs.String(), "superfluous") {
		t.Fatalf("net/http saw a second header:\n%s", logs.String())
	}
}

// A few streams at once keep their connections: a client sending streams
// one after another (the CPU benchmark's keep-alive clients) once opened a
// new connection for each, which cost about 12 system calls and 70,000
// instructions a stream more than before streams were taken. Beyond the
// kept ones, a stream is taken from net/http.
func TestFewStreamsAtOnceKeepTheirConnections(t *testing.T) {
	// The README's figure: the first 128 keep theirs, unless configured.
	if k := (&Proxy{}).keptStreams(); k != 128 {
		t.Fatalf("by default %d streams keep their connections, the README says 128", k)
	}
	next := make(chan struct{})
	hijacked := make(chan struct{}, 2)
	base := startWatched(t, sseUpstream(next, "data: one\n\n", "data: two\n\n"), hijacked, func(c *Config) { c.KeptStreams = 1 })
	t.Cleanup(func() { close(next) }) // before the servers close: no handler is left waiting
	// One stream at a time, twice: each kept, one connection for both.
	c := client(t)
	var reused []bool
	for range 2 {
		r, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) },
		}))
		resp, err := c.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		send(t, next, "the upstream left before its next event")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Close || string(b) != "data: one\n\ndata: two\n\n" {
			t.Fatalf("kept stream: close %v, body %q", resp.Close, b)
		}
	}
	if len(reused) != 2 || !reused[1] || len(hijacked) != 0 {
		t.Fatalf("connections reused %v, %d taken: the second stream should have had the first's, and neither taken", reused, len(hijacked))
	}
	// Two at once: the first is kept, the second (beyond KeptStreams) taken.
	c1, br1 := rawRequest(t, base, "HTTP/1.1")
	first, err := http.ReadResponse(br1, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, br2 := rawRequest(t, base, "HTTP/1.1")
	second, err := http.ReadResponse(br2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if first.Close || second.Close || len(hijacked) != 1 {
		t.Fatalf("first close %v, second close %v, %d taken: want both open and one taken", first.Close, second.Close, len(hijacked))
	}
	send(t, next, "the upstream left before its next event")
	send(t, next, "the upstream left before its last event")
	_ = c1.Close()
}

// startWatched is start with the proxy's server reporting each connection
// net/http gives up to a Hijack on hijacked.
func startWatched(t *testing.T, upstream http.Handler, hijacked chan<- struct{}, mutate ...func(*Config)) string {
	t.Helper()
	_, p, _ := start(t, upstream, mutate...)
	srv := httptest.NewUnstartedServer(p)
	srv.Config = NewServer(p)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateHijacked {
			hijacked <- struct{}{}
		}
	}
	srv.Listener = Listener(srv.Config, srv.Listener)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// A request that asks for a stream, beyond the kept ones, is taken from
// net/http as soon as its body is held, before it goes upstream: net/http's
// buffers for its connection (about 10 KiB) and its read-ahead goroutine
// are then gone while it waits for its first output, which is when a burst
// of streams holds the most memory (BENCHMARKS.md). Taken at its first
// output, as it once was, the upstream here would never answer.
func TestStreamRequestIsTakenBeforeItGoesUpstream(t *testing.T) {
	hijacked := make(chan struct{}, 10)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// net/http reports the Hijack as it happens, before it returns.
		select {
		case <-hijacked:
		default:
			http.Error(w, "the client's connection was not taken before the request came upstream", http.StatusBadRequest)
			return
		}
		sseUpstream(nil, "data: one\n\n", "data: [DONE]\n\n")(w, r)
	})
	base := startWatched(t, up, hijacked, takeEvery)
	for _, body := range []string{`{"model":"m","stream":true}`, `{"model":"m","stream":false}`} {
		c, br := rawSend(t, base, "/v1/chat/completions", "HTTP/1.1", body)
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		stream := strings.Contains(body, "true")
		if stream && (resp.StatusCode != 200 || string(b) != "data: one\n\ndata: [DONE]\n\n") {
			t.Fatalf("%s: %d %q", body, resp.StatusCode, b)
		}
		// A request that does not ask for a stream is not taken early (its
		// stream reply is taken when it comes, as before).
		if !stream && resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%s: %d %q: taken before its reply", body, resp.StatusCode, b)
		}
	}
}

// Whatever answers a request taken early reaches the client whole, framed
// as net/http would frame it: an upstream error with its length, one sent
// in chunks, one with no type (sniffed), one with no body, and the proxy's
// own error when the upstream cannot be reached; each with the proxy's
// headers; and the connection then serves the client's next request (an
// HTTP/1.0 one closes).
func TestEveryReplyToARequestTakenEarlyArrivesWhole(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		switch r.URL.Path {
		case "/v1/sized":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "27")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":{"message":"bad"}}`)
		case "/v1/chunked":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"error":`)
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, `{"message":"no such model"}}`)
		case "/v1/untyped":
			w.Header()["Content-Type"] = nil // no type, and none sniffed upstream
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `<html>bad</html>`)
		case "/v1/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/v1/gzip": // an encoded body is not sniffed
			w.Header()["Content-Type"] = nil
			w.Header().Set("Content-Encoding", "gzip")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "\x1f\x8b")
		case "/v1/early-hints": // an interim reply, then the final one
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{}`)
		}
	})
	base, p, _ := start(t, up, takeEvery)
	for _, c := range []struct {
		path, proto string
		code        int
		ctype, body string
		chunked     bool
	}{
		{"/v1/sized", "HTTP/1.1", 400, "application/json", `{"error":{"message":"bad"}}`, false},
		{"/v1/chunked", "HTTP/1.1", 404, "application/json", `{"error":{"message":"no such model"}}`, true},
		{"/v1/chunked", "HTTP/1.0", 404, "application/json", `{"error":{"message":"no such model"}}`, false},
		{"/v1/untyped", "HTTP/1.1", 400, "text/html; charset=utf-8", `<html>bad</html>`, false},
		{"/v1/empty", "HTTP/1.1", 204, "", "", false},
		{"/v1/gzip", "HTTP/1.1", 400, "", "\x1f\x8b", false},
		{"/v1/early-hints", "HTTP/1.1", 404, "application/json", `{}`, false},
	} {
		conn, br := rawSend(t, base, c.path, c.proto, `{"stream":true}`)
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		for i := range 2 { // the reply, then the next on the same connection
			if i == 1 {
				if c.proto == "HTTP/1.0" {
					if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
						t.Fatalf("%s %s: after the reply: %d bytes, %v; want the connection closed", c.path, c.proto, n, err)
					}
					break
				}
				sendOn(t, conn, c.path, c.proto, `{"stream":true}`)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s %s, reply %d: %v", c.path, c.proto, i+1, err)
			}
			if resp.StatusCode == http.StatusEarlyHints { // its header as sent, no length: then the reply
				if resp.Header.Get("Link") == "" || resp.Header.Get("Content-Length") != "" {
					t.Fatalf("%s: the interim reply's header: %v", c.path, resp.Header)
				}
				if resp, err = http.ReadResponse(br, nil); err != nil {
					t.Fatalf("%s %s, after the interim reply: %v", c.path, c.proto, err)
				}
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != c.code || resp.Header.Get("Content-Type") != c.ctype || string(b) != c.body ||
				(len(resp.TransferEncoding) > 0) != c.chunked || resp.Header.Get(RequestIDHeader) == "" || resp.Close != (c.proto == "HTTP/1.0") {
				t.Fatalf("%s %s, reply %d: %d %v te %v close %v body %q %v", c.path, c.proto, i+1, resp.StatusCode, resp.Header, resp.TransferEncoding, resp.Close, b, err)
			}
		}
	}
	// The upstream gone: the proxy's own error, whole.
	p.cfg.Upstream.Host = "127.0.0.1:1"
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "llmretry_proxy_error") {
		t.Fatalf("upstream gone: %d %q %v", resp.StatusCode, b, err)
	}
}

// A client that leaves while its request, taken early, waits for its first
// output cancels it at once, as net/http's read-ahead would have: the
// upstream request ends, long before any event is written.
func TestClientLeavingBeforeTheFirstOutputEndsTheUpstreamRequest(t *testing.T) {
	arrived, ended := make(chan struct{}), make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		close(arrived)
		closeWhenCancelled(r, ended)
	})
	base, _, _ := start(t, up, takeEvery)
	c, _ := rawRequest(t, base, "HTTP/1.1")
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not come upstream")
	}
	c.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the client left, and its request went on upstream")
	}
}

// waitForHold waits until a stream's hold has begun (held) or ended, or
// fails with why after 10 s. It reads the whole process's goroutines, so a
// test that waits for its own hold to begin first waits for the holds of
// earlier tests to end (noEarlierHold): under load one lingered, the wait
// returned at once, and the client left before its request went upstream.
func waitForHold(t *testing.T, held bool, why string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Contains(goroutineStacks(), "llmretry.(*Transport).holdStream") != held {
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
		runtime.Gosched()
	}
}

// noEarlierHold waits until no stream hold of an earlier test is left.
func noEarlierHold(t *testing.T) {
	t.Helper()
	waitForHold(t, false, "a stream hold of an earlier test never ended")
}

// closeWhenCancelled closes ended when the upstream request r is
// cancelled; after 15 s (the test has failed by then) it gives up.
func closeWhenCancelled(r *http.Request, ended chan struct{}) {
	select {
	case <-r.Context().Done():
		close(ended)
	case <-time.After(15 * time.Second):
	}
}

// goroutineStacks is every goroutine's stack, as text.
func goroutineStacks() string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	return b.String()
}

// A stream waiting for its first event holds no goroutine blocked in a read
// of its upstream body: the proxy's HTTP/1.1 client says when the bytes
// come (pollset), and the read starts then. During a burst of streams that
// wait for their first output, that goroutine's stack was the largest
// thing a stream held (BENCHMARKS.md, ninth session).
func TestAStreamWaitingForItsFirstEventHoldsNoReadingGoroutine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("pollset watches on Linux only; elsewhere the hold reads through a goroutine, as it did")
	}
	noEarlierHold(t)
	release := make(chan struct{})
	defer close(release)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-release
	})
	base, _, _ := start(t, up, takeEvery)
	c, _ := rawRequest(t, base, "HTTP/1.1")
	defer c.Close()
	waitForHold(t, true, "the stream's hold never began")
	if s := goroutineStacks(); strings.Contains(s, "lateReader).readBefore.func1") {
		t.Fatalf("a goroutine is blocked reading the upstream body while the stream waits:\n%s", s)
	}
}

// A client that leaves while its stream waits for its first event, the
// upstream's headers in, ends the request at once: the upstream request is
// cancelled, and the wait for the first bytes (pollset) is woken by the
// upstream connection's close, so the proxy's handler ends too rather than
// waiting out its hold (on the tests' clock, forever).
func TestClientLeavingDuringTheHoldEndsTheHandler(t *testing.T) {
	noEarlierHold(t)
	ended := make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		closeWhenCancelled(r, ended)
	})
	base, _, _ := start(t, up, takeEvery)
	c, _ := rawRequest(t, base, "HTTP/1.1")
	waitForHold(t, true, "the stream's hold never began")
	c.Close()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the client left, and its request went on upstream")
	}
	waitForHold(t, false, "the client left, and the proxy still waits for the stream's first event")
}

// In a burst, a stream request is taken before it goes upstream as soon
// as more HTTP/1.x requests are open than streams are kept: with one kept,
// the second request at once is taken. (Counting only the requests that
// had been read for "stream", as the first version did, kept twice as
// many: the first ones were never read.)
func TestBeyondTheKeptRequestsAStreamIsTakenEarly(t *testing.T) {
	hijacked := make(chan struct{}, 10)
	arrived := make(chan string, 10)
	release := make(chan struct{})
	defer close(release)
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		taken := "kept"
		select {
		case <-hijacked:
			taken = "taken"
		default:
		}
		arrived <- taken
		_ = b
		// No header until the test ends: neither request has a stream
		// reply yet, so only their requests count.
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
	})
	base := startWatched(t, up, hijacked, func(c *Config) { c.KeptStreams = 1 })
	var got []string
	for range 2 {
		c, _ := rawRequest(t, base, "HTTP/1.1")
		defer c.Close()
		select {
		case a := <-arrived:
			got = append(got, a)
		case <-time.After(10 * time.Second):
			t.Fatal("the request did not come upstream")
		}
	}
	if got[0] != "kept" || got[1] != "taken" {
		t.Fatalf("first and second stream request: %v, want kept, then taken before it went upstream", got)
	}
}
