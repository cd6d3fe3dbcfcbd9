package proxy

import (
	"net"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry/cmd/internal/pollset"
)

// A connection taken before its request went upstream (h1stream.go) is
// watched for its client leaving until the reply's head is written: the
// leaving cancels the request at once, its waits and its attempts
// upstream, as net/http's read-ahead does for the connections it keeps.
// After the head, a leaving is seen when a write fails.
//
// net/http watches with a goroutine a connection, blocked in a read. A
// burst of streams waiting for their first output is when the proxy holds
// the most memory, and that goroutine (a stack, at least 2 KiB) was then
// a tenth of a stream's cost. On Linux, one goroutine watches every taken
// connection (pollset); elsewhere, and wherever that cannot be set up, a
// goroutine watches each (readWatch).

// hangups watches taken connections for their clients leaving.
type hangups struct{ set pollset.Set }

// watch calls cancel when c's client leaves, until stop is called; stop
// reports whether the watch read (and dropped) bytes the client sent, which
// the poll set never does.
func (h *hangups) watch(c net.Conn, cancel func()) (stop func() (dropped bool)) {
	if unwatch, ok := h.set.Watch(c, pollset.Hangup, cancel); ok {
		return func() bool { unwatch(); return false }
	}
	return readWatch(c, cancel)
}

// readWatch watches c with a goroutine that reads it: the read ending in
// an error (the client closed, or reset) calls cancel. Bytes the client
// sends meanwhile (a request pipelined behind this one) are dropped: stop
// says so, for the connection to close after the reply rather than serve
// the client again (takenagain.go). stop ends the watch and returns once
// the goroutine has.
func readWatch(c net.Conn, cancel func()) (stop func() (dropped bool)) {
	var stopped atomic.Bool
	done := make(chan struct{})
	read := false
	go func() {
		defer close(done)
		var b [1]byte
		for {
			n, err := c.Read(b[:])
			read = read || n > 0
			if err != nil {
				if !stopped.Load() {
					cancel()
				}
				return
			}
		}
	}()
	return func() bool {
		stopped.Store(true)
		_ = c.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = c.SetReadDeadline(time.Time{})
		return read // written before done closed
	}
}
