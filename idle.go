package llmretry

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// IdleTimeoutError is returned by the body's Read when the stream sent no
// bytes for the idle timeout. The connection is closed; nothing is retried.
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
	timer   *time.Timer // on the real clock, one timer reset per Read
	fired   atomic.Bool
}

func newIdleBody(rc io.ReadCloser, timeout time.Duration, clock Clock) *idleBody {
	b := &idleBody{rc: rc, timeout: timeout, clock: clock}
	if _, real := clock.(realClock); real {
		b.timer = time.AfterFunc(timeout, b.fire)
		b.timer.Stop()
	}
	return b
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
	if b.timer != nil {
		b.timer.Reset(b.timeout)
		stop = b.timer.Stop
	} else {
		stop = b.clock.AfterFunc(b.timeout, b.fire)
	}
	n, err := b.rc.Read(p)
	stop()
	if b.fired.Load() {
		return n, &IdleTimeoutError{After: b.timeout}
	}
	return n, err
}

func (b *idleBody) Close() error {
	if b.timer != nil {
		b.timer.Stop()
	}
	return b.rc.Close()
}
