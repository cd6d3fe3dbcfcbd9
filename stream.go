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
	"time"
)

// The commit point of a stream. A 2xx text/event-stream response is held
// until its first complete event has arrived. Until then nothing has
// reached the caller, so an error sent as the first event (Anthropic's
// "event: error" with overloaded_error, OpenRouter's data: {"error": ...})
// or a connection cut mid-event can still be retried. Once the first event
// is handed over, the stream is the caller's, and it is never sent again.

// utf8BOM may start a stream; the SSE spec says to skip it. It is skipped
// only to find the first event: the caller still gets it, as the server
// sent it.
var utf8BOM = []byte("\xef\xbb\xbf")

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
			return verdict{failure: FailureFirstEvent, reason: ReasonNotRetryable, cause: "first event: error"}
		}
		return verdict{}
	}
	bv, ok := classifyErrorBody(ev.data)
	cause := "first event: " + firstNonEmpty(bv.cause, "error")
	if !ok || bv.final || !bv.transient {
		return verdict{failure: FailureFirstEvent, reason: ReasonNotRetryable, cause: cause}
	}
	return verdict{retry: true, failure: FailureFirstEvent, cause: cause, wait: bv.wait, src: bv.src, waitOK: bv.waitOK}
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
	var expired chan struct{}
	if limit > 0 {
		expired = make(chan struct{})
		stop := t.cfg.clock.AfterFunc(limit, func() { close(expired) })
		defer stop()
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
			if ev, done := firstEvent(bytes.TrimPrefix(buf, utf8BOM)); done {
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
