package pollset

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/llmretry/llmretry/cmd/internal/tcptest"
)

func fired(t *testing.T, ch chan struct{}, want bool, what string) {
	t.Helper()
	wait := 50 * time.Millisecond // for a call that must not come: the loop polls every 200 ms, events come at once
	if want {
		wait = 10 * time.Second
	}
	select {
	case <-ch:
		if !want {
			t.Fatalf("%s: called", what)
		}
	case <-time.After(wait):
		if want {
			t.Fatalf("%s: not called", what)
		}
	}
}

// Readable comes with the first bytes; Hangup does not, only with the
// peer's leaving; a stopped watch never comes; and the Set's goroutine
// ends once nothing is watched.
func TestSetReportsReadableAndHangup(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("a Set watches on Linux only; elsewhere Watch says it cannot (ok false), which callers handle")
	}
	var s Set
	a, aPeer := tcptest.Pair(t)
	b, bPeer := tcptest.Pair(t)
	c, cPeer := tcptest.Pair(t)
	readable, hangup, stopped := make(chan struct{}), make(chan struct{}), make(chan struct{})
	watch := func(conn net.Conn, ev Event, ch chan struct{}) func() bool {
		stop, ok := s.Watch(conn, ev, func() { close(ch) })
		if !ok {
			t.Fatal("cannot watch a TCP connection")
		}
		return stop
	}
	watch(a, Readable, readable)
	watch(b, Hangup, hangup)
	stopC := watch(c, Readable, stopped)
	fired(t, readable, false, "Readable before any byte")
	_, _ = aPeer.Write([]byte("x"))
	fired(t, readable, true, "Readable after a byte")
	_, _ = bPeer.Write([]byte("x"))
	fired(t, hangup, false, "Hangup after a byte")
	bPeer.Close()
	fired(t, hangup, true, "Hangup after the peer closed")
	if !stopC() {
		t.Fatal("stop before any event: want true")
	}
	_, _ = cPeer.Write([]byte("x"))
	fired(t, stopped, false, "a stopped watch")
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		running := s.running
		s.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the Set's goroutine still runs with nothing watched")
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not standing in for one
	}
}
