package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener counts the connections its listener accepts, and says
// when it is closed.
type countingListener struct {
	net.Listener
	accepts *atomic.Int32
	closed  chan struct{}
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepts.Add(1)
	}
	return c, err
}

func (l countingListener) Close() error {
	err := l.Listener.Close()
	if l.closed != nil {
		select {
		case <-l.closed:
		default:
			close(l.closed)
		}
	}
	return err
}

// A connection a stream was taken on serves its client's next request:
// each taken stream once closed its connection (Connection: close), and a
// client sending streams one after another, beyond the kept ones, opened a
// new connection for each (BENCHMARKS.md, 200 at a time: accept4,
// setsockopt, getsockname, epoll_ctl and close, 1.8 more system calls a
// stream). Here three streams, taken before they go upstream and when
// their reply starts, and an error taken early, go on one connection.
func TestATakenConnectionServesTheClientsNextRequest(t *testing.T) {
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/v1/missing" {
			http.Error(w, `{"error":{"message":"no such model"}}`, http.StatusNotFound)
			return
		}
		sseUpstream(nil, "data: one\n\n", "data: [DONE]\n\n")(w, r)
	})
	_, p, _ := start(t, up, takeEvery)
	hijacked := make(chan struct{}, 10)
	var accepts atomic.Int32
	srv := httptest.NewUnstartedServer(p)
	srv.Config = NewServer(p)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateHijacked {
			hijacked <- struct{}{}
		}
	}
	srv.Listener = Listener(srv.Config, countingListener{Listener: srv.Listener, accepts: &accepts})
	srv.Start()
	t.Cleanup(srv.Close)

	c := client(t)
	var reused []bool
	for i, req := range []struct{ path, body, want string }{
		{"/v1/chat/completions", `{"stream":true}`, "data: one\n\ndata: [DONE]\n\n"}, // taken before it goes upstream
		{"/v1/chat/completions", `{}`, "data: one\n\ndata: [DONE]\n\n"},              // taken when its reply starts
		{"/v1/missing", `{"stream":true}`, `{"error":{"message":"no such model"}}` + "\n"},
		{"/v1/chat/completions", `{"stream":true}`, "data: one\n\ndata: [DONE]\n\n"},
	} {
		r, _ := http.NewRequest("POST", srv.URL+req.path, strings.NewReader(req.body))
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = append(reused, info.Reused) },
		}))
		resp, err := c.Do(r)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.Close || string(b) != req.want {
			t.Fatalf("request %d: close %v, body %q %v", i+1, resp.Close, b, err)
		}
	}
	if len(hijacked) != 4 || accepts.Load() != 1 || len(reused) != 4 || reused[0] || !reused[1] || !reused[2] || !reused[3] {
		t.Fatalf("%d taken, %d connections accepted, reused %v: want all four taken, on one connection", len(hijacked), accepts.Load(), reused)
	}
}

// A connection that cannot serve its client again is closed after the
// reply, and the reply says so: the client asked to close; the server's
// listener is not Listener's; the server began to drain before the reply's
// header was written.
func TestATakenConnectionClosesWhenItCannotServeAgain(t *testing.T) {
	stream := sseUpstream(nil, "data: one\n\n")
	send := func(t *testing.T, c net.Conn, req string) {
		t.Helper()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
	}
	readClosed := func(t *testing.T, c net.Conn) {
		t.Helper()
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || !resp.Close || string(b) != "data: one\n\n" {
			t.Fatalf("close %v, body %q %v: want the stream whole and Connection: close", resp.Close, b, err)
		}
		if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("after the reply: %d bytes, %v; want the connection closed", n, err)
		}
	}
	request := func(host, extra string) string {
		return "POST /v1/chat/completions HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\nContent-Length: 15\r\n" + extra + "\r\n{\"stream\":true}"
	}

	t.Run("the client asked to close", func(t *testing.T) {
		base, _, _ := start(t, stream, takeEvery)
		c := dial(t, base)
		send(t, c, request(c.RemoteAddr().String(), "Connection: close\r\n"))
		readClosed(t, c)
	})

	t.Run("the listener is not Listener's", func(t *testing.T) {
		_, p, _ := start(t, stream, takeEvery)
		srv := httptest.NewUnstartedServer(p)
		srv.Config = NewServer(p)
		srv.Start()
		t.Cleanup(srv.Close)
		c := dial(t, srv.URL)
		send(t, c, request(c.RemoteAddr().String(), ""))
		readClosed(t, c)
	})

	t.Run("the server drains", func(t *testing.T) {
		arrived, release := make(chan struct{}), make(chan struct{})
		slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(arrived)
			<-release
			stream(w, r)
		})
		_, p, _ := start(t, slow, takeEvery)
		closed := make(chan struct{})
		base, stop, wait := serveProxy(t, p, time.Minute, io.Discard, func(ln net.Listener) net.Listener {
			return countingListener{Listener: ln, accepts: new(atomic.Int32), closed: closed}
		})
		c := dial(t, base)
		send(t, c, request(c.RemoteAddr().String(), ""))
		<-arrived // the request is upstream, its reply not begun
		stop()
		<-closed // the drain closed the listener
		close(release)
		readClosed(t, c)
		if err := wait(); err != nil {
			t.Fatal(err)
		}
	})
}

// A request sent behind a stream's (pipelined), read by net/http before
// the stream was taken, is not lost on a connection that stays open: the
// client gets its reply, or the connection closes after the first.
func TestARequestPipelinedBehindATakenStreamIsNotLeftHanging(t *testing.T) {
	base, _, _ := start(t, sseUpstream(nil, "data: one\n\n"), takeEvery)
	c := dial(t, base)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	one := "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stream\":true}"
	if _, err := io.WriteString(c, one+one); err != nil { // one write: both arrive together
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	first, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(first.Body); err != nil || string(b) != "data: one\n\n" {
		t.Fatalf("first reply %q %v", b, err)
	}
	second, err := http.ReadResponse(br, nil)
	switch {
	case first.Close && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		// closed, as it said
	case err == nil && !first.Close:
		if b, err := io.ReadAll(second.Body); err != nil || string(b) != "data: one\n\n" {
			t.Fatalf("second reply %q %v", b, err)
		}
	default:
		t.Fatalf("first reply close %v; then %v: want the second reply, or the connection closed as the first said", first.Close, err)
	}
}

// Listener takes nothing back before it is served or once it is closed,
// and its goroutine ends (the package's goleak check); a server not made
// by NewServer gets its listener as it is.
func TestListenerClosedTakesNothingBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if got := Listener(&http.Server{}, ln); got != ln {
		t.Fatalf("a server not made by NewServer got %T", got)
	}
	srv := NewServer(http.NotFoundHandler())
	l := Listener(srv, ln)
	// Made but not served (no Accept yet): no connection goes to it, for
	// none would be taken back.
	if takenStreamsOf(srv).back.Load() != nil {
		t.Fatal("a listener not yet served takes connections back")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil { // a second Close, as Serve and Shutdown both do
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if l.(*givingBack).giveBack(a) || l.(*givingBack).open() {
		t.Fatal("a closed listener took a connection back")
	}
}

// A connection given back just as the listener closes is closed, not
// served: Accept's select picks at random between it and the close, and
// the drain's pass over the unstarted connections may already be over.
func TestAConnectionGivenBackAsTheListenerClosesIsClosedNotServed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(http.NotFoundHandler())
	l := Listener(srv, ln).(*givingBack)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer b.Close()
	sent := make(chan struct{})
	go func() { l.back <- a; close(sent) }() // as giveBack does when its select picks the send
	for received := false; !received; {
		c, err := l.Accept()
		if c != nil || !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %T, %v; want net.ErrClosed", c, err)
		}
		select {
		case <-sent:
			received = true
		default:
		}
	}
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the connection given back: read %v; want it closed", err)
	}
}

func dial(t *testing.T, base string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A drain closes at once a connection given back whose client has sent
// nothing since: net/http's Shutdown waits 5 s for a new connection's
// first request (an idle one it closes at once), and a drain with a
// shorter grace ended by cutting, though nothing was in flight.
func TestServeDrainClosesAGivenBackConnectionAtOnce(t *testing.T) {
	_, p, _ := start(t, sseUpstream(nil, "data: one\n\n"), takeEvery)
	base, stop, wait := serveProxy(t, p, 2*time.Second, io.Discard)
	_, br := streamGivenBack(t, base)
	stop()
	if err := wait(); err != nil {
		t.Fatalf("the drain, with nothing in flight: %v", err)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the drain: %d bytes, %v; want the connection closed", n, err)
	}
}

// A request begun on a connection given back is in flight, not idle: the
// drain lets it finish as any other (net/http reports it active, and the
// drain closes only the connections given back that have not begun one).
func TestServeDrainLetsARequestBegunOnAGivenBackConnectionFinish(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	up := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/v1/slow" {
			close(arrived)
			<-release
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"ok":true}`)
			return
		}
		sseUpstream(nil, "data: one\n\n")(w, r)
	})
	_, p, _ := start(t, up, takeEvery)
	closed := make(chan struct{})
	base, stop, wait := serveProxy(t, p, time.Minute, io.Discard, func(ln net.Listener) net.Listener {
		return countingListener{Listener: ln, accepts: new(atomic.Int32), closed: closed}
	})
	c, br := streamGivenBack(t, base)
	sendOn(t, c, "/v1/slow", "HTTP/1.1", `{}`) // not a stream: net/http serves it
	<-arrived
	stop()
	<-closed // the drain closed the listener, and closed what it would
	close(release)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the request in flight on the connection given back: %v", err)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != 200 || string(b) != `{"ok":true}` {
		t.Fatalf("%d %q %v", resp.StatusCode, b, err)
	}
	if err := wait(); err != nil {
		t.Fatal(err)
	}
}

// streamGivenBack asks the proxy at base (its upstream answering
// "data: one") for a stream, which takeEvery takes, reads it whole, and
// returns its connection, which the reply said stays open.
func streamGivenBack(t *testing.T, base string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, br := rawRequest(t, base, "HTTP/1.1")
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || resp.Close || string(b) != "data: one\n\n" {
		t.Fatalf("close %v, body %q %v: want the stream whole, its connection open", resp.Close, b, err)
	}
	return c, br
}
