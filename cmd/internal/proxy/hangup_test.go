package proxy

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmretry/llmretry/cmd/internal/tcptest"
)

// Among many watched connections, a client leaving (closing, or reset)
// cancels its own request only, at once; one that sends bytes is not taken
// for gone, and its bytes are still there to read after the watch, or the
// watch says it dropped them (a connection that served the client again
// after a watch read its next request's first byte would serve it
// garbled); a connection no longer watched cancels nothing when its client
// leaves; and once none is watched, the watching ends (the test's goleak
// check: no goroutine is left).
func TestHangupsCancelTheRequestWhoseClientLeft(t *testing.T) {
	for _, w := range []struct {
		name  string
		watch func(*hangups, net.Conn, func()) func() bool
	}{
		{"hangups", (*hangups).watch},
		{"readWatch", func(_ *hangups, c net.Conn, cancel func()) func() bool { return readWatch(c, cancel) }},
	} {
		t.Run(w.name, func(t *testing.T) {
			var h hangups
			const n = 8
			var servers, clients [n]net.Conn
			var cancelled [n]chan struct{}
			var stops [n]func() bool
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
			sent := "GET / HTTP/1.1\r\n"
			if _, err := clients[1].Write([]byte(sent)); err != nil {
				t.Fatal(err)
			}
			stops[6]()
			clients[6].Close()
			for i := range n {
				if i == 3 || i == 5 {
					continue
				}
				dropped := stops[i]()
				switch {
				case i == 1 && !dropped:
					_ = servers[1].SetReadDeadline(time.Now().Add(10 * time.Second))
					b := make([]byte, len(sent))
					if _, err := io.ReadFull(servers[1], b); err != nil || string(b) != sent {
						t.Fatalf("after the watch the client's bytes read %q %v, and the watch did not say it dropped them", b, err)
					}
				case i != 1 && dropped:
					t.Fatalf("connection %d: the watch says it dropped bytes no client sent", i)
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

// signalConn reports each Read that returned bytes.
type signalConn struct {
	net.Conn
	read chan<- struct{}
}

func (c signalConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.read <- struct{}{}
	}
	return n, err
}

// readWatch, the watch off Linux, reads what the client sends while it
// watches, and its stop says so: the connection must then close after the
// reply, for its client's next request lost a byte.
func TestReadWatchSaysItDroppedTheClientsBytes(t *testing.T) {
	server, client := tcptest.Pair(t)
	read := make(chan struct{}, 1)
	stop := readWatch(signalConn{server, read}, func() { t.Error("cancelled: the client did not leave") })
	if _, err := client.Write([]byte("G")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch read nothing")
	}
	if !stop() {
		t.Fatal("the watch read the client's byte and did not say so")
	}
}
