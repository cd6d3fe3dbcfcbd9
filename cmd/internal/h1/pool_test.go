package h1

import (
	"bufio"
	"bytes"
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
		before := bubbleGoroutines()
		req, _ := http.NewRequest(http.MethodPost, "http://model/v1/chat/completions", strings.NewReader("{}"))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := bubbleGoroutines() - before; n != 1 {
			t.Fatalf("an open stream added %d goroutines, want 1 (the upstream's)", n)
		}
		close(release)
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		synctest.Wait()
		if n := bubbleGoroutines() - before; n != 1 {
			t.Fatalf("an idle connection added %d goroutines, want 1 (the upstream's)", n)
		}
		tr.CloseIdleConnections()
	})
}

// bubbleGoroutines counts the goroutines of the caller's synctest bubble.
// runtime.NumGoroutine counts the whole process's: goroutines that earlier
// tests left to end on their own ended between two counts when the machine
// was busy, and the count of an open stream came out 0.
func bubbleGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	// The caller's own header comes first: "goroutine 9 [running, synctest bubble 1]:".
	header, _, _ := bytes.Cut(buf, []byte("\n"))
	i := bytes.Index(header, []byte("synctest bubble "))
	if i < 0 {
		panic("bubbleGoroutines is called outside a synctest bubble")
	}
	mark := header[i:] // "synctest bubble 1]:"
	n := 0
	for line := range bytes.Lines(buf) {
		if bytes.HasPrefix(line, []byte("goroutine ")) && bytes.HasSuffix(bytes.TrimSuffix(line, []byte("\n")), mark) {
			n++
		}
	}
	return n
}

// The timer's prune closes the connections idle too long and keeps the
// rest, each once. It once compacted the survivors in place without
// storing the shorter list, so the last of them stayed listed twice: two
// requests were then given one connection, or a later prune closed it
// under a stream ("use of closed network connection" mid-stream, seen in
// bench/proxy/cpu.sh with 200 streams at a time).
func TestPruneKeepsEachSurvivingConnectionOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &pipeDialer{serve: serveOK}
		tr := &Transport{Fallback: noFallback{t}, DialContext: d.dial, IdleConnTimeout: 90 * time.Second, MaxIdleConnsPerHost: 10}
		open := func(n int) []*http.Response {
			var held []*http.Response
			for range n { // held at once: n connections
				req, _ := http.NewRequest(http.MethodGet, "http://model/", nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, resp)
			}
			return held
		}
		finish := func(resp *http.Response) {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(b) != "ok" {
				t.Fatalf("body %q, %v", b, err)
			}
		}
		held := open(3)
		finish(held[0]) // idle from 0 s
		time.Sleep(50 * time.Second)
		finish(held[1]) // idle from 50 s
		finish(held[2])
		time.Sleep(41 * time.Second) // the prune at 90 s closes the first only
		synctest.Wait()
		if d.closed.Load() != 1 {
			t.Fatalf("closed %d, want the one idle for 90 s", d.closed.Load())
		}
		for _, resp := range open(3) { // the two kept, and one new
			finish(resp)
		}
		if d.dialed.Load() != 4 {
			t.Fatalf("dialled %d, want 4: the two kept connections reused once each", d.dialed.Load())
		}
		tr.CloseIdleConnections()
		synctest.Wait()
	})
}
