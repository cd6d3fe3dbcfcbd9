package llmretry

import (
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// drainLimit bounds how much of a discarded response is read so that its
// connection goes back to the pool. An error body is small; a body larger
// than this is closed unread, costing one connection, not a long read.
const drainLimit = 64 << 10

// Time bounds on reading an error body. The headers have come, so
// ResponseHeaderTimeout no longer applies, and a body that stalls would
// otherwise hold RoundTrip until the caller's context ends, or forever.
const (
	// errorBodyWithin bounds the peek at an error body for provider rules;
	// past it the decision rests on the status and headers.
	errorBodyWithin = 5 * time.Second
	// drainWithin bounds the drain of a discarded response; past it the
	// connection is closed instead of reused.
	drainWithin = time.Second
)

// discard drains a response that will not be handed over, up to drainLimit
// and for drainWithin at most, and closes it, so that its connection can be
// reused. A body already seen to stall is closed at once.
func discard(resp *http.Response, clock Clock) {
	if resp == nil || resp.Body == nil {
		return
	}
	body := resp.Body
	if hb, ok := body.(*heldBody); ok && hb.peekErr == errBodyStalled {
		_ = body.Close()
		return
	}
	stop := clock.AfterFunc(drainWithin, func() { _ = body.Close() })
	_, _ = io.CopyN(io.Discard, body, drainLimit)
	stop()
	_ = body.Close()
}

// heldBody yields the bytes read ahead of the caller (a peek at an error
// body, or a stream held until its first output) and then the rest of the
// live body, so that the caller reads exactly what the server sent.
type heldBody struct {
	held   []byte
	rc     io.ReadCloser
	closed atomic.Bool
	// What the peek that made this body found, so that every rule asking
	// again gets the same answer without reading again: peekErr for a peek
	// at an error body (errBodyStalled: it ran out of time with the body
	// still open, so the connection is not worth draining); for the hold of
	// a stream until its first output, streamHeld, and what it found.
	peekErr    error
	streamHeld bool
	stream     streamHold
}

func (b *heldBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	if len(b.held) > 0 {
		n := copy(p, b.held)
		b.held = b.held[n:]
		if len(b.held) == 0 {
			// Let the peek's buffer go: the stream may run for minutes. The
			// deciding event's data points into it too, and was needed only
			// to decide, before the hand-over.
			b.held, b.stream.event = nil, sseEvent{}
		}
		return n, nil
	}
	return b.rc.Read(p)
}

// Close closes the live body; reads after it fail, as on net/http's own
// bodies. It may be called while a Read is waiting (an idle timeout does),
// so it touches nothing Read uses but the flag.
func (b *heldBody) Close() error {
	b.closed.Store(true)
	return b.rc.Close()
}

// errBodyStalled is the peek's error when the body sent too little within
// its time bound.
var errBodyStalled = errors.New("error body stalled")

// peekBody reads up to limit bytes of resp's body, for within at most on
// clock, and puts them back in front of the rest. It returns what it read;
// err is errBodyStalled when time ran out, or a read error other than the
// end of the body. In every case the body yields every byte the server
// sent, in order.
func peekBody(resp *http.Response, limit int, clock Clock, within time.Duration) ([]byte, error) {
	expired := make(chan struct{})
	stop := clock.AfterFunc(within, func() { close(expired) })
	defer stop()
	body := &lateReader{rc: resp.Body}
	buf := make([]byte, 0, 1<<10)
	var err error
	for len(buf) < limit {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, rerr, late := body.readBefore(buf[len(buf):min(cap(buf), limit)], expired)
		if late {
			err = errBodyStalled
			break
		}
		buf = buf[:len(buf)+n]
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			}
			break
		}
	}
	resp.Body = &heldBody{held: buf, rc: body, peekErr: err}
	return buf, err
}

// Body returns the start of the response body, up to 64 KiB, for a rule
// that reads what an error says. It is read once, for 5 s at most (err is
// then non-nil and the decision should rest on the status), and put back:
// the caller still reads every byte the server sent. On a stream whose
// first output was awaited, it is the bytes held for that.
func (a Attempt) Body() ([]byte, error) {
	resp := a.Response
	if resp == nil || resp.Body == nil || resp.Body == http.NoBody {
		return nil, nil
	}
	if hb, ok := resp.Body.(*heldBody); ok {
		return hb.held, hb.peekErr
	}
	return peekBody(resp, errorBodyLimit, a.transport().cfg.clock, errorBodyWithin)
}

// lateReader reads with a time limit without losing bytes: a read that the
// limit interrupts goes on in its goroutine, and its bytes are the first
// that Read returns afterwards.
type lateReader struct {
	rc      io.ReadCloser
	pending chan readResult // a read under way, nil if none
	rest    []byte          // bytes of a finished read not yet returned
	restErr error
}

type readResult struct {
	p   []byte
	err error
}

// readBefore reads into p unless expired fires first (late is then true).
// With a nil expired it is a plain Read. The read goes straight into p: a
// caller that was told late must not touch p again, as the read may still
// fill it; its bytes are returned by Read.
func (r *lateReader) readBefore(p []byte, expired <-chan struct{}) (n int, err error, late bool) {
	if expired == nil && r.pending == nil {
		n, err = r.rc.Read(p)
		return n, err, false
	}
	if r.pending == nil {
		if r.expiresUnread(expired) {
			return 0, nil, true // nothing read, nothing pending
		}
		ch := make(chan readResult, 1) // buffered: the goroutine never waits on it
		go func() {
			n, err := r.rc.Read(p)
			ch <- readResult{p[:n], err}
		}()
		r.pending = ch
	}
	select {
	case res := <-r.pending:
		r.pending = nil
		return len(res.p), res.err, false
	case <-expired:
		return 0, nil, true
	}
}

// readableNotifier is a body that can say when it has bytes to read, so
// that a read with a time limit need not wait for them in a goroutine of
// its own (a goroutine's stack, 2 KiB at least, for each stream waiting
// for its first event). NotifyReadable calls f once, from any goroutine,
// when a Read would find bytes (or the body's end), unless stop reports
// that it came first; ok is false when the body cannot tell. The proxy's
// HTTP/1.1 client's bodies implement it (cmd/internal/h1).
type readableNotifier interface {
	NotifyReadable(f func()) (stop func() bool, ok bool)
}

// expiresUnread waits, when the body can say when it has bytes, for them
// or for expired, without a goroutine blocked in a read; true when expired
// came first. A body that cannot say returns false at once: its read
// waits in a goroutine (readBefore).
func (r *lateReader) expiresUnread(expired <-chan struct{}) bool {
	b, ok := r.rc.(readableNotifier)
	if !ok {
		return false
	}
	came := make(chan struct{})
	stop, ok := b.NotifyReadable(func() { close(came) })
	if !ok {
		return false
	}
	select {
	case <-came:
		return false
	case <-expired:
		if stop() {
			return true
		}
		<-came // they came as the limit passed: read them
		return false
	}
}

// Read returns the bytes of an interrupted read first, then reads on.
func (r *lateReader) Read(p []byte) (int, error) {
	if r.pending != nil {
		res := <-r.pending
		r.pending = nil
		r.rest, r.restErr = res.p, res.err
	}
	if len(r.rest) > 0 || r.restErr != nil {
		n := copy(p, r.rest)
		r.rest = r.rest[n:]
		if len(r.rest) > 0 {
			return n, nil
		}
		err := r.restErr
		r.restErr = nil
		return n, err
	}
	return r.rc.Read(p)
}

// Close closes the live body, which also ends a read under way.
func (r *lateReader) Close() error { return r.rc.Close() }
