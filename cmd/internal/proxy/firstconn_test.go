package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
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
