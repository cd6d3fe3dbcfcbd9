package llmretry

import (
	"io"
	"net/http"
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
