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
	timer   *time.Timer
	fired   atomic.Bool
}

func newIdleBody(rc io.ReadCloser, timeout time.Duration) *idleBody {
	b := &idleBody{rc: rc, timeout: timeout}
	b.timer = time.AfterFunc(timeout, func() {
		b.fired.Store(true)
		_ = rc.Close()
	})
	b.timer.Stop()
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.fired.Load() {
		return 0, &IdleTimeoutError{After: b.timeout}
	}
	b.timer.Reset(b.timeout)
	n, err := b.rc.Read(p)
	b.timer.Stop()
	if b.fired.Load() {
		return n, &IdleTimeoutError{After: b.timeout}
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	return b.rc.Close()
}
