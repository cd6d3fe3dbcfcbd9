package llmretry

import (
	"bytes"
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
	ct := ""
	if v := resp.Header["Content-Type"]; len(v) > 0 { // as Get, without canonicalizing a canonical name
		ct = v[0]
	}
	if len(ct) < len(sse) || !strings.EqualFold(ct[:len(sse)], sse) {
		return false
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == sse
}

// Event is a stream's first Server-Sent Event, as far as a decision needs
// it: its name ("" when it has no event: line) and its data lines joined.
type Event struct {
	Name string
	Data []byte
}

// FirstEvent waits for the first event of a 2xx text/event-stream response
// (for the first-event hold at most: see WithFirstEventHold) and returns it,
// put back for the caller. ok is false when there is none to judge: not an
// event stream, the hold passed, or the event outgrew 64 KiB. err is set
// when the stream broke, ended or timed out (WithFirstEventTimeout) before
// its first event; the response is closed then, and the attempt can only be
// retried or failed.
func (a Attempt) FirstEvent() (ev Event, ok bool, err error) {
	resp := a.Response
	if resp == nil || !isEventStream(resp) || !hasBody(resp) {
		return Event{}, false, nil
	}
	hb, held := resp.Body.(*heldBody)
	if !held || !hb.eventPeeked {
		a.transport().peekFirstEvent(resp)
		hb = resp.Body.(*heldBody)
	}
	if hb.broken != nil {
		return Event{}, false, hb.broken
	}
	return Event{Name: string(hb.event.name), Data: hb.event.data}, hb.hasEvent, nil
}

// StreamFirstEvent is the built-in rule for a stream's commit point: a 2xx
// event stream is held until its first event, and retried if that event is
// an error that names a passing state (Anthropic's overloaded_error,
// OpenRouter's data: {"error": ...} with a 5xx code), or if the stream
// broke before it. Any other first event delivers the stream. It passes on
// everything that is not a 2xx event stream.
func StreamFirstEvent(a Attempt) Decision {
	if a.Response == nil || !isEventStream(a.Response) || !hasBody(a.Response) {
		return Decision{}
	}
	ev, ok, err := a.FirstEvent()
	switch {
	case err != nil:
		return Decision{Action: Retry, Failure: FailureStream, Cause: streamCause(err)}
	case !ok:
		return Decision{Action: Deliver} // the hold passed, or the event outgrew the limit: handed over as it is
	}
	e := sseEvent{name: []byte(ev.Name), data: ev.Data}
	if unknownRole(e).isError() {
		return streamErrorDecision(streamUnknown, e, a.Now)
	}
	return Decision{Action: Deliver}
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

// peekFirstEvent reads resp's body up to its first event and leaves it a
// *heldBody that gives the caller every byte, held ones first, and says
// what the peek found. When the stream broke or ended before its first
// event, or the first-event timeout passed, the body is closed and the
// heldBody's broken says why. When the hold passes first, or the first
// event outgrows firstEventLimit, the response is left to be handed over as
// it is: a keep-alive comment must not sit here for minutes while a model
// thinks.
func (t *Transport) peekFirstEvent(resp *http.Response) {
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
	done := func(held []byte, ev *sseEvent, broken error) {
		if broken != nil {
			_ = body.Close()
		}
		hb := &heldBody{held: held, rc: body, eventPeeked: true, broken: broken}
		if ev != nil {
			hb.event, hb.hasEvent = *ev, true
		}
		resp.Body = hb
	}
	buf := make([]byte, 0, 4<<10)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err, late := body.readBefore(buf[len(buf):min(cap(buf), firstEventLimit)], expired)
		if late {
			if limit == timeout {
				done(nil, nil, &FirstEventTimeoutError{After: timeout})
			} else {
				done(buf, nil, nil)
			}
			return
		}
		buf = buf[:len(buf)+n]
		// Only a line ending can complete an event.
		if n > 0 && bytes.ContainsAny(buf[len(buf)-n:], "\r\n") {
			if ev, complete := firstEvent(buf); complete {
				done(buf, &ev, nil)
				return
			}
		}
		switch {
		case len(buf) >= firstEventLimit:
			done(buf, nil, nil)
		case err == io.EOF:
			done(nil, nil, errStreamEnded)
		case err != nil:
			done(nil, nil, err)
		default:
			continue
		}
		return
	}
}

// firstEvent returns the first complete event in buf.
func firstEvent(buf []byte) (sseEvent, bool) {
	s := sseScanner{limit: firstEventLimit}
	ev, _, ok := s.scan(buf)
	return ev, ok
}

// brokenStream returns why a stream broke before its first event, or nil.
func brokenStream(resp *http.Response) error {
	if hb, ok := resp.Body.(*heldBody); ok {
		return hb.broken
	}
	return nil
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
