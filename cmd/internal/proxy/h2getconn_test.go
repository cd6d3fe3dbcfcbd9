package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// heldStreams is an HTTPS upstream whose replies send their headers and
// then hold until release is closed, counting the connections it accepts.
type heldStreams struct {
	*httptest.Server
	conns   atomic.Int64
	release chan struct{}
	once    sync.Once
}

// free lets every held reply end.
func (u *heldStreams) free() { u.once.Do(func() { close(u.release) }) }

func newHeldStreams(t *testing.T, h2 bool, streamsPerConn uint32, handshake func()) *heldStreams {
	u := &heldStreams{release: make(chan struct{})}
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		if r.URL.Path == "/held" {
			<-u.release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	u.EnableHTTP2 = h2
	if h2 {
		u.Config.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: int(streamsPerConn)}
	}
	u.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	if handshake != nil {
		u.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			handshake()
			return nil, nil
		}}
	}
	u.StartTLS()
	t.Cleanup(u.Close)
	t.Cleanup(u.free) // first: Close waits for the replies
	return u
}

// warmGate returns a gate in front of u's client, the host up: one request
// sent through it and read, answered in HTTP/protoMajor.
func warmGate(t *testing.T, u *heldStreams) (gate *firstConn, protoMajor int) {
	t.Helper()
	tr := u.Client().Transport.(*http.Transport)
	tr.ForceAttemptHTTP2 = true // as the proxy's Transport does
	t.Cleanup(tr.CloseIdleConnections)
	gate = &firstConn{next: tr}
	req, _ := http.NewRequest(http.MethodGet, u.URL+"/warm", nil)
	resp, err := gate.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return gate, resp.ProtoMajor
}

// burst sends n requests for held streams through gate at once, and
// returns once each has its reply's headers (every stream open), with a
// function that releases them and reads them to their end.
func burst(t *testing.T, gate http.RoundTripper, url string, n int) (finish func()) {
	t.Helper()
	resps := make(chan *http.Response, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, url+"/held", nil)
			resp, err := gate.RoundTrip(req)
			if err != nil {
				errs <- err
				return
			}
			resps <- resp
		}()
	}
	var open []*http.Response
	for range n {
		select {
		case r := <-resps:
			open = append(open, r)
		case err := <-errs:
			t.Fatal(err)
		}
	}
	return func() {
		for _, r := range open {
			b, err := io.ReadAll(r.Body)
			r.Body.Close()
			if err != nil || string(b) != "ok" {
				t.Errorf("stream: %q, %v", b, err)
			}
		}
	}
}

// A burst to an HTTP/2 host whose connections were full dialled a
// connection per request, 1,668 TLS connections for 2,000 streams where
// about ten would carry them: net/http dials for every request that finds
// no room, and closes the surplus only after each handshake. Now at most
// maxGetting requests to the host get a connection at once, so each time
// the connections fill, at most maxGetting are dialled.
//
// The limit is 100, what Go's client assumes of a connection until the
// server's settings arrive: with less, the streams a new connection is
// given too many are refused and retried, a storm of their own (see
// h2getconn.go).
func TestBurstPastHTTP2StreamLimitDialsAFewConnections(t *testing.T) {
	const perConn, n = 100, 400
	u := newHeldStreams(t, true, perConn, nil)
	gate, _ := warmGate(t, u) // the host up, its connection's limit known

	finish := burst(t, gate, u.URL, n) // all n open at once, over about n/perConn connections
	got, limit := u.conns.Load(), int64(n/perConn*maxGetting)
	u.free()
	finish()
	if got > limit {
		t.Fatalf("%d streams at %d a connection opened %d connections, want at most %d (%d needed)", n, perConn, got, limit, n/perConn)
	}
}

// Over HTTP/1.1 every open stream needs a connection of its own: a burst to
// such a host must dial them all at once, never a few at a time. Every
// handshake of the burst is held until all of them have begun.
func TestBurstToAnHTTP1HostOverTLSIsNeverHeld(t *testing.T) {
	const n = 20
	var handshakes atomic.Int64
	var heldBack atomic.Bool
	armed := make(chan struct{})
	all := make(chan struct{})
	u := newHeldStreams(t, false, 0, func() {
		select {
		case <-armed:
		default:
			return // the first connection, before the burst
		}
		if handshakes.Add(1) == n-1 {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(10 * time.Second): // only if some are held back
			heldBack.Store(true)
		}
	})
	gate, proto := warmGate(t, u)
	if proto != 1 {
		t.Fatalf("the upstream spoke HTTP/%d, want HTTP/1.1", proto)
	}

	close(armed)
	began := time.Now()
	finish := burst(t, gate, u.URL, n) // the first on the idle connection, n-1 dialled
	took := time.Since(began)
	u.free()
	finish()
	select {
	case <-all:
	default:
		t.Fatalf("only %d of %d handshakes were under way at once (after %v): the burst was held", handshakes.Load(), n-1, took)
	}
	if heldBack.Load() {
		t.Fatalf("a handshake waited 10 s for the others to begin (the burst took %v): the burst was held", took)
	}
	gate.mu.Lock()
	defer gate.mu.Unlock()
	for host, h := range gate.hosts {
		if h.h2 || h.getting.waited > 0 {
			t.Fatalf("%s: taken for HTTP/2 (%v), %d requests waited their turn, want none", host, h.h2, h.getting.waited)
		}
	}
}

// A request waiting for its turn to get a connection leaves at once when its
// client does, and gives back nothing it did not hold; one waiting behind
// requests whose connections hang goes on after openBound; and when a
// request has its connection, the next in line goes.
func TestWaitingForAConnectionTurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		next, gate, results := upHTTP2Host()
		send := func(ctx context.Context) { sendThrough(ctx, gate, false, results) }
		for range maxGetting {
			go send(context.Background()) // getting a connection, held there
		}
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		go send(ctx)
		synctest.Wait()
		if c := next.calls.Load(); c != maxGetting {
			t.Fatalf("%d requests getting a connection, want %d", c, maxGetting)
		}
		cancel()
		if err := <-results; !errors.Is(err, context.Canceled) {
			t.Fatalf("the cancelled waiter: %v, want context.Canceled", err)
		}

		go send(context.Background())
		synctest.Wait()
		if c := next.calls.Load(); c != maxGetting {
			t.Fatalf("%d requests went on, want %d: none has its connection", c, maxGetting)
		}
		time.Sleep(openBound)
		synctest.Wait()
		if c := next.calls.Load(); c != maxGetting+1 {
			t.Fatalf("after %v, %d requests had gone on, want %d: one more past the hanging ones", openBound, c, maxGetting+1)
		}

		go send(context.Background())
		synctest.Wait()
		next.end <- nil // one has its connection: the next in line goes
		synctest.Wait()
		if c := next.calls.Load(); c != maxGetting+2 {
			t.Fatalf("%d requests went on after one had its connection, want %d", c, maxGetting+2)
		}
		for range maxGetting + 1 {
			next.end <- nil
		}
		for range maxGetting + 2 {
			if err := <-results; err != nil {
				t.Fatal(err)
			}
		}
		h := gate.hosts["api.example.com"]
		if g := h.getting; g.n != 0 || len(g.waiting) != 0 {
			t.Fatalf("after every request ended: %d getting, %d waiting, want none", g.n, len(g.waiting))
		}
	})
}

// A host left idle longer than net/http keeps a connection is opened again
// as new, but a long stream can keep its HTTP/2 connection open: the
// request that opens it again then reuses that connection and sees no
// handshake. The host must still be known to speak HTTP/2 (once it was
// learned from handshakes only, and the gate was off for good), and an
// upgrade's HTTP/1.1 connection says nothing of it.
func TestHostReopenedOnItsLiveConnectionStaysHTTP2(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newPipeNet(0)
		tr, stop := tlsUpstream(t, n)
		defer stop()
		gate := &firstConn{next: tr, idle: 90 * time.Second}
		send := func(upgrade bool) {
			req, _ := http.NewRequest(http.MethodGet, "https://upstream.test/", nil)
			if upgrade {
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", "websocket")
			}
			resp, err := gate.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		h2 := func() bool {
			gate.mu.Lock()
			defer gate.mu.Unlock()
			return gate.hosts["upstream.test"].h2
		}
		send(true) // an upgrade first: it opens nothing for the host
		gate.mu.Lock()
		opened := gate.hosts["upstream.test"] != nil
		gate.mu.Unlock()
		if opened {
			t.Fatal("an upgrade opened the host: those waiting would be sent on after a connection they cannot share")
		}
		send(false)
		if !h2() {
			t.Fatal("the first connection's HTTP/2 was not learned")
		}
		time.Sleep(91 * time.Second) // net/http keeps the connection (no IdleConnTimeout here)
		send(false)
		if d := n.dialed(); d != 2 || !h2() {
			t.Fatalf("reopened on the live connection (%d dialled, want 2: the upgrade's and one): HTTP/2 known: %v, want true", d, h2())
		}
		send(true)
		if !h2() {
			t.Fatal("an upgrade's HTTP/1.1 connection turned the host's HTTP/2 off")
		}
	})
}

// A WebSocket upgrade goes over HTTP/1.1 on a connection of its own
// whatever the host speaks: it never waits behind the host's HTTP/2
// requests getting theirs.
func TestUpgradeIsNeverHeldBehindHTTP2Requests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		next, gate, results := upHTTP2Host()
		send := func(upgrade bool) { sendThrough(context.Background(), gate, upgrade, results) }
		for range maxGetting {
			go send(false)
		}
		synctest.Wait()
		go send(true)
		synctest.Wait()
		if c := next.calls.Load(); c != maxGetting+1 {
			t.Fatalf("%d requests went on, want %d: the upgrade was held", c, maxGetting+1)
		}
		for range maxGetting + 1 {
			next.end <- nil
		}
		for range maxGetting + 1 {
			if err := <-results; err != nil {
				t.Fatal(err)
			}
		}
	})
}

// upHTTP2Host is a gate whose host api.example.com is up over HTTP/2, in
// front of a transport the test ends each request on, and where the
// requests' errors go.
func upHTTP2Host() (*scripted, *firstConn, chan error) {
	next := &scripted{end: make(chan error, 8)}
	return next, &firstConn{next: next, hosts: map[string]*hostConn{"api.example.com": {up: true, h2: true}}}, make(chan error, 8)
}

// sendThrough sends a request (a WebSocket upgrade, with upgrade) to
// api.example.com through gate, and reports its error on results.
func sendThrough(ctx context.Context, gate *firstConn, upgrade bool, results chan<- error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.example.com/v1/realtime", nil)
	if upgrade {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
	}
	resp, err := gate.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
	}
	results <- err
}
