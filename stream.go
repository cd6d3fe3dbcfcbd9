package llmretry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// The commit point of a stream. A 2xx text/event-stream response is held
// until its first complete event has arrived. Until then nothing has
// reached the caller, so an error sent as the first event (Anthropic's
// "event: error" with overloaded_error, OpenRouter's data: {"error": ...})
// or a connection cut mid-event can still be retried. Once the first event
// is handed over, the stream is the caller's, and it is never sent again.

// firstEventLimit bounds the bytes held while waiting for the first event.
// A first event larger than this ends the peek: the response is handed
// over as it is.
const firstEventLimit = 64 << 10

// isEventStream reports a 2xx Server-Sent Events response.
func isEventStream(resp *http.Response) bool {
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false
	}
	// A prefix check first: this runs on every successful response, and
	// mime.ParseMediaType allocates.
	const sse = "text/event-stream"
	ct := resp.Header.Get("Content-Type")
	if len(ct) < len(sse) || !strings.EqualFold(ct[:len(sse)], sse) {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == sse
}

// sseEvent is the part of an event the decision needs.
type sseEvent struct {
	name string
	data []byte
}

// firstEvent scans held bytes for the first complete event, skipping
// comment-only blocks (": ping", ": OPENROUTER PROCESSING"). done is false
// while no complete event is there yet.
func firstEvent(buf []byte) (ev sseEvent, done bool) {
	for len(buf) > 0 {
		block, rest, complete := nextBlock(buf)
		if !complete {
			return ev, false
		}
		buf = rest
		var isEvent bool
		var data [][]byte
		for _, line := range splitLines(block) {
			if len(line) == 0 || line[0] == ':' {
				continue
			}
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "event":
				ev.name, isEvent = string(value), true
			case "data":
				data, isEvent = append(data, value), true
			}
		}
		if isEvent {
			ev.data = bytes.Join(data, []byte("\n"))
			return ev, true
		}
	}
	return ev, false
}

// nextBlock splits off the first block of lines ended by a blank line,
// whatever the line endings (\n, \r\n or \r).
func nextBlock(buf []byte) (block, rest []byte, complete bool) {
	for i := 0; i < len(buf); i++ {
		c := buf[i]
		if c != '\n' && c != '\r' {
			continue
		}
		// i ends a line; is the next line empty?
		j := i + 1
		if c == '\r' {
			if j == len(buf) {
				return nil, nil, false // \r may be the first half of \r\n
			}
			if buf[j] == '\n' {
				j++
			}
		}
		if j < len(buf) && (buf[j] == '\n' || buf[j] == '\r') {
			k := j + 1
			if buf[j] == '\r' && k < len(buf) && buf[k] == '\n' {
				k++
			}
			return buf[:i], buf[k:], true
		}
		if i == 0 { // a blank line at the very start ends an empty block
			return nil, buf[j:], true
		}
	}
	return nil, nil, false
}

func splitLines(block []byte) [][]byte {
	block = bytes.ReplaceAll(block, []byte("\r\n"), []byte("\n"))
	block = bytes.ReplaceAll(block, []byte("\r"), []byte("\n"))
	return bytes.Split(block, []byte("\n"))
}

// classifyFirstEvent decides on a stream's first event: retry only an
// error event that names a passing state.
func classifyFirstEvent(ev sseEvent) verdict {
	isError := ev.name == "error"
	if !isError && !bytes.Contains(ev.data, []byte(`"error"`)) {
		return verdict{}
	}
	var probe struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(ev.data, &probe) != nil || len(probe.Error) == 0 || string(probe.Error) == "null" {
		if isError {
			return verdict{reason: ReasonNotRetryable, cause: "first event: error"}
		}
		return verdict{}
	}
	bv, ok := classifyErrorBody(ev.data)
	cause := "first event: " + firstNonEmpty(bv.cause, "error")
	if !ok || bv.final || !bv.transient {
		return verdict{reason: ReasonNotRetryable, cause: cause}
	}
	return verdict{retry: true, cause: cause, wait: bv.wait, src: bv.src, waitOK: bv.waitOK}
}

// FirstEventTimeoutError is the cause of a retry when no first event came
// within the first-event timeout.
type FirstEventTimeoutError struct{ After time.Duration }

func (e *FirstEventTimeoutError) Error() string {
	return fmt.Sprintf("no first stream event within %v", e.After)
}

// Timeout reports true: the error is a timeout.
func (e *FirstEventTimeoutError) Timeout() bool { return true }

// errStreamEnded is the cause of a retry when a stream ended before its
// first event.
var errStreamEnded = errors.New("stream ended before its first event")

// defaultFirstEventHold is how long a stream is held waiting for its first
// event before it is handed over as it is.
const defaultFirstEventHold = 10 * time.Second

// peekFirstEvent reads resp's body up to its first event. It returns the
// verdict on that event, with resp's body put back whole. When the stream
// broke or ended before its first event, or the first-event timeout
// passed, it returns a retryable error with the response closed. When the
// hold passes first, or the first event outgrows firstEventLimit, the
// response is handed over as it is, held bytes first: a keep-alive comment
// must not sit here for minutes while a model thinks.
func (t *Transport) peekFirstEvent(resp *http.Response) (verdict, error) {
	timeout, hold := t.cfg.firstEventTimeout, t.cfg.firstEventHold
	limit := hold
	if timeout > 0 && (hold <= 0 || timeout <= hold) {
		limit = timeout
	}
	var expired <-chan time.Time
	if limit > 0 {
		timer := time.NewTimer(limit)
		defer timer.Stop()
		expired = timer.C
	}
	body := &lateReader{rc: resp.Body}
	handOver := func(held []byte) {
		resp.Body = &heldBody{held: held, rc: body}
	}
	buf := make([]byte, 0, 4<<10)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err, late := body.readBefore(buf[len(buf):min(cap(buf), firstEventLimit)], expired)
		if late {
			if limit == timeout {
				_ = body.Close()
				return verdict{}, &FirstEventTimeoutError{After: timeout}
			}
			handOver(buf)
			return verdict{}, nil
		}
		buf = buf[:len(buf)+n]
		// Only a line ending can complete an event.
		if n > 0 && bytes.ContainsAny(buf[len(buf)-n:], "\r\n") {
			if ev, done := firstEvent(buf); done {
				handOver(buf)
				return classifyFirstEvent(ev), nil
			}
		}
		if len(buf) >= firstEventLimit {
			handOver(buf)
			return verdict{}, nil
		}
		if err == io.EOF {
			_ = body.Close()
			return verdict{}, errStreamEnded
		}
		if err != nil {
			_ = body.Close()
			return verdict{}, err
		}
	}
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

// streamCause names a failed peek for events and logs.
func streamCause(err error) string {
	var fe *FirstEventTimeoutError
	switch {
	case errors.As(err, &fe):
		return "no first event within " + fe.After.String()
	case errors.Is(err, errStreamEnded):
		return "stream ended before its first event"
	}
	if c, ok := transportCause(err); ok {
		return "stream broke before its first event: " + c
	}
	return "stream broke before its first event"
}
