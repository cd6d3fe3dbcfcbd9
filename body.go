package llmretry

import (
	"io"
	"net/http"
	"time"
)

// drainLimit bounds how much of a discarded response is read so that its
// connection goes back to the pool. An error body is small; a body larger
// than this is closed unread, costing one connection, not a long read.
const drainLimit = 64 << 10

// discard drains a response that will not be handed over, up to
// drainLimit, and closes it so that its connection can be reused.
func discard(resp *http.Response) {
	if resp == nil || resp.Body == nil {
		return
	}
	_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
	_ = resp.Body.Close()
}

// heldBody yields the bytes read ahead of the caller (a peek at an error
// body or at a stream's first event) and then the rest of the live body,
// so that the caller reads exactly what the server sent.
type heldBody struct {
	held []byte
	rc   io.ReadCloser
}

func (b *heldBody) Read(p []byte) (int, error) {
	if len(b.held) > 0 {
		n := copy(p, b.held)
		b.held = b.held[n:]
		return n, nil
	}
	return b.rc.Read(p)
}

// Close closes the live body. It may be called while a Read is waiting
// (an idle timeout does), so it touches nothing Read uses.
func (b *heldBody) Close() error { return b.rc.Close() }

// peekBody reads up to limit bytes of resp's body and puts them back in
// front of the rest. It returns what it read; err is a read error other
// than the end of the body, in which case the body is left as it was read.
func peekBody(resp *http.Response, limit int) ([]byte, error) {
	buf, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)))
	resp.Body = &heldBody{held: buf, rc: resp.Body}
	return buf, err
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
func (r *lateReader) readBefore(p []byte, expired <-chan time.Time) (n int, err error, late bool) {
	if expired == nil && r.pending == nil {
		n, err = r.rc.Read(p)
		return n, err, false
	}
	if r.pending == nil {
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
