package h1

import (
	"net/http"
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
