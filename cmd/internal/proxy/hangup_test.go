package proxy

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry/cmd/internal/tcptest"
)

// Among many watched connections, a client leaving (closing, or reset)
// cancels its own request only, at once; one that sends bytes is not taken
// for gone; a connection no longer watched cancels nothing when its client
// leaves; and once none is watched, the watching ends (the test's goleak
// check: no goroutine is left).
func TestHangupsCancelTheRequestWhoseClientLeft(t *testing.T) {
	for _, w := range []struct {
		name  string
		watch func(*hangups, net.Conn, func()) func()
	}{
		{"hangups", (*hangups).watch},
		{"readWatch", func(_ *hangups, c net.Conn, cancel func()) func() { return readWatch(c, cancel) }},
	} {
		t.Run(w.name, func(t *testing.T) {
			var h hangups
			const n = 8
			var servers, clients [n]net.Conn
			var cancelled [n]chan struct{}
			var stops [n]func()
			var calls atomic.Int32
			for i := range n {
				servers[i], clients[i] = tcptest.Pair(t)
				cancelled[i] = make(chan struct{})
				ch := cancelled[i]
				stops[i] = w.watch(&h, servers[i], func() { calls.Add(1); close(ch) })
			}
			wait := func(i int) {
				t.Helper()
				select {
				case <-cancelled[i]:
				case <-time.After(10 * time.Second):
					t.Fatalf("connection %d: its client left, and nothing was cancelled", i)
				}
			}
			clients[3].Close()
			wait(3)
			_ = clients[5].(*net.TCPConn).SetLinger(0)
			clients[5].Close() // a reset
			wait(5)
			if _, err := clients[1].Write([]byte("GET / HTTP/1.1\r\n")); err != nil {
				t.Fatal(err)
			}
			stops[6]()
			clients[6].Close()
			for i := range n {
				if i != 3 && i != 5 {
					stops[i]()
				}
			}
			stops[3]() // after its cancel: harmless
			stops[5]()
			if got := calls.Load(); got != 2 {
				t.Fatalf("%d cancels, want 2 (the two clients that left while watched)", got)
			}
		})
	}
}
