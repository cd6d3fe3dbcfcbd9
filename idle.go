package llmretry

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// IdleTimeoutError is returned by the body's Read when the stream sent no
// bytes for the idle timeout. The connection is closed; nothing is retried
// (with WithStreamContinuation, a stream that may be continued is
// continued instead, and this error is not returned).
type IdleTimeoutError struct{ After time.Duration }

func (e *IdleTimeoutError) Error() string {
	return fmt.Sprintf("llmretry: stream idle: no bytes for %v; connection closed", e.After)
}

// Timeout reports true: the error is a timeout.
func (e *IdleTimeoutError) Timeout() bool { return true }

// idleBody ends a read that waits longer than timeout for bytes. The timer
// runs only while a Read is waiting, so a caller that is slow to read is
// not mistaken for a server that is slow to send.
type idleBody struct {
	rc      io.ReadCloser
	timeout time.Duration
	clock   Clock
	timer   atomic.Pointer[time.Timer] // on the real clock: made at the first Read, reset for each; Close may race it
	fired   atomic.Bool
}

func newIdleBody(rc io.ReadCloser, timeout time.Duration, clock Clock) *idleBody {
	return &idleBody{rc: rc, timeout: timeout, clock: clock}
}

func (b *idleBody) fire() {
	b.fired.Store(true)
	_ = b.rc.Close()
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.fired.Load() {
		return 0, &IdleTimeoutError{After: b.timeout}
	}
	var stop func() bool
	switch t, real := b.timer.Load(), isRealClock(b.clock); {
	case !real:
		stop = b.clock.AfterFunc(b.timeout, b.fire)
	case t == nil:
		// Made here rather than with the body: most JSON replies are read
		// in one or two Reads, and a timer made stopped costs a Stop more.
		t = time.AfterFunc(b.timeout, b.fire)
		b.timer.Store(t)
		stop = t.Stop
	default:
		t.Reset(b.timeout)
		stop = t.Stop
	}
	n, err := b.rc.Read(p)
	stop()
	if b.fired.Load() {
		return n, &IdleTimeoutError{After: b.timeout}
	}
	return n, err
}

func (b *idleBody) Close() error {
	if t := b.timer.Load(); t != nil {
		t.Stop()
	}
	return b.rc.Close()
}

func isRealClock(c Clock) bool {
	_, real := c.(realClock)
	return real
}
