package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// A connection unused for IdleConnTimeout is closed by the pool's timer, with
// no request needed to find it: an idle upstream connection is a file
// descriptor and a slot on the server.
func TestIdleConnectionIsClosedAfterIdleConnTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{serve: serveOK}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial, IdleConnTimeout: 90 * time.Second}
		if got := get(t, tr, "http://model/"); got != "ok" {
			t.Fatalf("body %q", got)
		}
		time.Sleep(89 * time.Second)
		synctest.Wait()
		if d.closed.Load() != 0 {
			t.Fatal("closed before its time")
		}
		if got := get(t, tr, "http://model/"); got != "ok" { // reuses it: idle again from now
			t.Fatalf("body %q", got)
		}
		time.Sleep(89 * time.Second)
		synctest.Wait()
		if d.closed.Load() != 0 || d.dialed.Load() != 1 {
			t.Fatalf("closed %d, dialled %d: reuse did not restart its idle time", d.closed.Load(), d.dialed.Load())
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if d.closed.Load() != 1 {
			t.Fatal("still open after IdleConnTimeout")
		}
	})
}

// No more than MaxIdleConnsPerHost connections are kept; the rest close as
// their replies end.
func TestIdleConnectionsPerHostAreCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{serve: serveOK}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial, MaxIdleConnsPerHost: 2}
		var held []*http.Response
		for range 5 { // five at once: five connections
			req, _ := http.NewRequest(http.MethodGet, "http://model/", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, resp)
		}
		var wg sync.WaitGroup
		for _, resp := range held {
			wg.Go(func() {
				buf := make([]byte, 8)
				for {
					if _, err := resp.Body.Read(buf); err != nil {
						break
					}
				}
				resp.Body.Close()
			})
		}
		wg.Wait()
		synctest.Wait()
		if d.dialed.Load() != 5 || d.closed.Load() != 3 {
			t.Fatalf("dialled %d, closed %d; want 5 and 3", d.dialed.Load(), d.closed.Load())
		}
		tr.CloseIdleConnections()
		synctest.Wait()
		if d.closed.Load() != 5 {
			t.Fatalf("closed %d after CloseIdleConnections, want 5", d.closed.Load())
		}
	})
}

// net/http keeps a read-loop and a write-loop goroutine for every open
// connection, idle or carrying a stream; over HTTP/1.1, ten thousand streams
// are ten thousand connections. This client keeps none: the only goroutine
// a connection adds here is the fake upstream's.
func TestConnectionsKeepNoGoroutineOfTheirOwn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		d := &pipeDialer{serve: func(c net.Conn, br *bufio.Reader) {
			readRequest(br)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n")
			<-release
			io.WriteString(c, "0\r\n\r\n")
			serveOK(c, br)
		}}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial}
		before := runtime.NumGoroutine()
		req, _ := http.NewRequest(http.MethodPost, "http://model/v1/chat/completions", strings.NewReader("{}"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := runtime.NumGoroutine() - before; n != 1 {
			t.Fatalf("an open stream added %d goroutines, want 1 (the upstream's)", n)
		}
		close(release)
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		synctest.Wait()
		if n := runtime.NumGoroutine() - before; n != 1 {
			t.Fatalf("an idle connection added %d goroutines, want 1 (the upstream's)", n)
		}
		tr.CloseIdleConnections()
	})
}
