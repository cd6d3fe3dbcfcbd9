package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// A burst of streams to an HTTPS upstream the proxy had no connection to
// yet opened a TLS connection per request (net/http dials for each until one
// is up, and only then finds HTTP/2 would carry them all): up to thousands
// for 10,000 streams, once past the process's file descriptors. Now one
// opens the connection and the rest share it.
func TestBurstToANewHTTPSHostOpensOneConnection(t *testing.T) {
	const burst = 50
	var conns, entered atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.TLS = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		<-release // no handshake ends before the whole burst has arrived
		return nil, nil
	}}
	srv.StartTLS()
	defer srv.Close()
	tr := srv.Client().Transport.(*http.Transport)
	defer tr.CloseIdleConnections()
	gate := &firstConn{next: tr}

	var wg sync.WaitGroup
	errs := make(chan error, burst)
	for range burst {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			if entered.Add(1) == burst {
				close(release)
			}
			resp, err := gate.RoundTrip(req)
			if err != nil {
				errs <- err
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "ok" {
				errs <- errors.New("body " + string(b))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d requests at once opened %d connections, want 1", burst, n)
	}
}

// scripted is a transport whose RoundTrips the test ends: with a connection
// (GotConn, then a reply) or with an error.
type scripted struct {
	calls atomic.Int64
	end   chan error // nil: connected
}

func (s *scripted) RoundTrip(r *http.Request) (*http.Response, error) {
	s.calls.Add(1)
	select {
	case err := <-s.end:
		if err != nil {
			return nil, err
		}
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
	if trace := httptrace.ContextClientTrace(r.Context()); trace != nil && trace.GotConn != nil {
		trace.GotConn(httptrace.GotConnInfo{})
	}
	return &http.Response{StatusCode: 200, Body: http.NoBody, Request: r}, nil
}

// If the first request cannot reach the upstream, those waiting on it go on
// at once, each on its own (as without the gate), not one after another
// behind a dial that may take its full timeout. If only its own client left,
// another request opens instead.
func TestRequestsWaitingOnTheFirstConnectionGoOnWhenItFails(t *testing.T) {
	for _, tc := range []struct {
		name           string
		upstreamFailed bool
		wantCalls      int64 // RoundTrips begun once the opener ended
	}{
		{"upstream unreachable", true, 4},
		{"opener cancelled", false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				next := &scripted{end: make(chan error, 4)}
				gate := &firstConn{next: next}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				results := make(chan error, 4)
				send := func(ctx context.Context) {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.example.com/v1/models", nil)
					_, err := gate.RoundTrip(req)
					results <- err
				}
				go send(ctx) // the opener
				synctest.Wait()
				for range 3 {
					go send(context.Background())
				}
				synctest.Wait()
				if n := next.calls.Load(); n != 1 {
					t.Fatalf("%d requests went on while the first connection was being opened, want 1", n)
				}
				if tc.upstreamFailed {
					next.end <- errors.New("connection refused")
				} else {
					cancel()
				}
				synctest.Wait()
				if n := next.calls.Load(); n != tc.wantCalls {
					t.Fatalf("%d requests had gone on, want %d", n, tc.wantCalls)
				}
				for range 4 {
					next.end <- nil // every connection that is tried succeeds
				}
				failed := 0
				for range 4 {
					if err := <-results; err != nil {
						failed++
					}
				}
				if failed != 1 {
					t.Fatalf("%d requests failed, want only the first", failed)
				}
			})
		})
	}
}

// A request waiting for the first connection whose client leaves returns
// at once with its context's error.
func TestRequestWaitingOnTheFirstConnectionCanBeCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		next := &scripted{end: make(chan error, 1)}
		gate := &firstConn{next: next}
		go func() {
			req, _ := http.NewRequest(http.MethodGet, "https://api.example.com/", nil)
			_, _ = gate.RoundTrip(req)
		}()
		synctest.Wait()
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://api.example.com/", nil)
			_, err := gate.RoundTrip(req)
			errc <- err
		}()
		synctest.Wait()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want context.Canceled", err)
		}
		next.end <- nil
	})
}

// net/http closes a connection left idle for IdleConnTimeout; a burst after
// that would dial as the first did. A host unused for that long is opened
// again as new; within it, requests go straight on.
func TestHostLeftIdleIsOpenedAgainAsNew(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		next := &scripted{end: make(chan error, 4)}
		gate := &firstConn{next: next, idle: 90 * time.Second}
		burst := func(n int) chan error {
			results := make(chan error, n)
			for range n {
				go func() {
					req, _ := http.NewRequest(http.MethodGet, "https://api.example.com/v1/models", nil)
					_, err := gate.RoundTrip(req)
					results <- err
				}()
			}
			synctest.Wait()
			return results
		}
		finish := func(results chan error, n int) {
			for range n {
				next.end <- nil
			}
			for range n {
				if err := <-results; err != nil {
					t.Fatal(err)
				}
			}
		}
		finish(burst(1), 1) // opens the host
		time.Sleep(89 * time.Second)
		r := burst(2)
		if n := next.calls.Load(); n != 3 {
			t.Fatalf("%d requests sent within the idle time, want 3: they went straight on", n)
		}
		finish(r, 2)
		time.Sleep(91 * time.Second)
		r = burst(2)
		if n := next.calls.Load(); n != 4 {
			t.Fatalf("%d requests sent after the idle time, want 4: one opening, one waiting", n)
		}
		finish(r, 2)
		if n := next.calls.Load(); n != 5 {
			t.Fatalf("%d requests sent in all, want 5", n)
		}
	})
}

// pipeNet is an in-memory network for a TLS upstream inside a synctest
// bubble: each dial is a net.Pipe whose server end the listener accepts,
// except the first hang dials, which are held and never served
// (connections whose handshake hangs).
type pipeNet struct {
	hang  int
	mu    sync.Mutex
	dials int
	held  []net.Conn
	conns chan net.Conn
	done  chan struct{}
}

func newPipeNet(hang int) *pipeNet {
	return &pipeNet{hang: hang, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (n *pipeNet) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	n.mu.Lock()
	n.dials++
	hung := n.dials <= n.hang
	if hung {
		n.held = append(n.held, server)
	}
	n.mu.Unlock()
	if !hung {
		select {
		case n.conns <- server:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return client, nil
}

func (n *pipeNet) Accept() (net.Conn, error) {
	select {
	case c := <-n.conns:
		return c, nil
	case <-n.done:
		return nil, net.ErrClosed
	}
}

func (n *pipeNet) Close() error {
	select {
	case <-n.done:
	default:
		close(n.done)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.held {
		c.Close()
	}
	return nil
}

func (n *pipeNet) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443} }

func (n *pipeNet) dialed() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.dials
}

// testCert is a self-signed certificate for upstream.test, valid from
// 1999 (a synctest bubble's clock starts in 2000).
func testCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "upstream.test"}, DNSNames: []string{"upstream.test"},
		NotBefore: time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// tlsUpstream serves "ok" over HTTP/2 and TLS on n, in the bubble, and
// returns a Transport that dials it, with net/http's default handshake
// timeout.
func tlsUpstream(t *testing.T, n *pipeNet) (*http.Transport, func()) {
	cert, pool := testCert(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.ServeTLS(n, "", "")
	}()
	tr := &http.Transport{DialContext: n.DialContext, ForceAttemptHTTP2: true, TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "upstream.test"}}
	return tr, func() {
		tr.CloseIdleConnections()
		_ = srv.Close()
		<-served
		n.Close()
	}
}

// When the first connection to an HTTPS host hung in its handshake, every
// request waiting behind the gate waited with it: 10 requests took 10 s
// each (the handshake timeout), and one sent 3 s later took 7 s. Now one
// more request may open a connection each second that none is up, and the
// waiting requests go on the first that is: the burst is served in about a
// second, on two connections, not ten.
func TestHangingFirstHandshakeHoldsNoOneForLong(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newPipeNet(1)
		tr, stop := tlsUpstream(t, n)
		defer stop()
		gate := &firstConn{next: tr}
		start := time.Now()
		type result struct {
			took time.Duration
			err  error
		}
		results := make(chan result, 11)
		send := func() {
			began := time.Now()
			req, _ := http.NewRequest(http.MethodGet, "https://upstream.test/v1/models", nil)
			resp, err := gate.RoundTrip(req)
			if err == nil {
				_, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			results <- result{time.Since(began), err}
		}
		for range 10 {
			go send()
		}
		synctest.Wait()
		// The first too: net/http gives a request waiting on its dial any
		// HTTP/2 connection to the host that comes up meanwhile.
		var slow []string // every result is collected first: a bubble must end with its goroutines
		for range 10 {
			if r := <-results; r.err != nil || r.took > 1500*time.Millisecond {
				slow = append(slow, fmt.Sprintf("%v after %v", r.err, r.took))
			}
		}
		if len(slow) > 0 {
			t.Fatalf("requests behind the hanging handshake: %v; want each served within about a second", slow)
		}
		if d := n.dialed(); d != 2 {
			t.Fatalf("%d connections opened for a burst of 10, want 2: the hanging one and one more", d)
		}
		time.Sleep(3*time.Second - time.Since(start))
		go send() // on the connection that is up, at once
		if r := <-results; r.err != nil || r.took != 0 {
			t.Fatalf("a request 3 s later: %v after %v, want served at once", r.err, r.took)
		}
	})
}

// A lone request whose first connection hangs holds the next one for at
// most the bound: a request 3 s later opens a connection of its own at
// once.
func TestRequestAfterTheBoundOpensAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newPipeNet(1)
		tr, stop := tlsUpstream(t, n)
		defer stop()
		gate := &firstConn{next: tr}
		errc := make(chan error, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodGet, "https://upstream.test/", nil)
			_, err := gate.RoundTrip(req)
			errc <- err
		}()
		time.Sleep(3 * time.Second)
		began := time.Now()
		req, _ := http.NewRequest(http.MethodGet, "https://upstream.test/", nil)
		resp, err := gate.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if took := time.Since(began); took != 0 {
			t.Fatalf("took %v behind a handshake that hung 3 s before, want at once", took)
		}
		if err := <-errc; err != nil { // served on the second connection
			t.Fatal(err)
		}
		if d := n.dialed(); d != 2 {
			t.Fatalf("%d connections opened, want 2", d)
		}
	})
}

// While handshakes keep hanging, a burst opens one more connection a
// second, not one per request.
func TestBurstBehindHangingHandshakesOpensAHandful(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newPipeNet(3)
		tr, stop := tlsUpstream(t, n)
		defer stop()
		gate := &firstConn{next: tr}
		const burst = 50
		type result struct {
			took time.Duration
			err  error
		}
		results := make(chan result, burst)
		for range burst {
			go func() {
				began := time.Now()
				req, _ := http.NewRequest(http.MethodGet, "https://upstream.test/v1/models", nil)
				resp, err := gate.RoundTrip(req)
				if err == nil {
					resp.Body.Close()
				}
				results <- result{time.Since(began), err}
			}()
		}
		var wrong []string
		for range burst {
			if r := <-results; r.err != nil || r.took != 3*time.Second {
				wrong = append(wrong, fmt.Sprintf("%v after %v", r.err, r.took))
			}
		}
		if len(wrong) > 0 {
			t.Fatalf("%d requests not served at 3s (three hanging handshakes, a second each): %v", len(wrong), wrong)
		}
		if d := n.dialed(); d != 4 {
			t.Fatalf("%d connections opened for a burst of %d, want 4", d, burst)
		}
	})
}
