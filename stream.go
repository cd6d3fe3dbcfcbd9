package llmretry

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// The commit point of a stream is its first output. A 2xx
// text/event-stream response is held until its first event that carries
// output, ends the stream, or is an error, for its family (see
// streamFamily and eventRole): the opening events that carry nothing
// (Anthropic's message_start, an empty content_block_start and pings; an
// OpenAI role-only chunk; response.created and response.in_progress) are
// held with it. Gemini streams and streams of no family recognised are held
// to their first event, whatever it is. Until the hold ends nothing has
// reached the caller, so an error sent there (Anthropic's overloaded_error
// after message_start, OpenRouter's {"error": ...} after the role chunk,
// response.failed after response.created) or a connection cut there can
// still be retried. Once the first output is handed over, the stream is the
// caller's, and it is never sent again.
//
// The hold is bounded, as it always was, by time (WithFirstEventHold, 10 s)
// and by bytes (64 KiB); past either, the stream is handed over as it is,
// opening events and all, and is the caller's from then on. So a reasoning
// model that sends message_start at once and then thinks for a minute is
// delivered late, when the hold passes, and never failed or retried.
//
// The names: the API kept its "first event" names (Attempt.FirstEvent,
// StreamFirstEvent, WithFirstEventHold, WithoutFirstEventPeek,
// FailureFirstEvent), and in them "first event" now means the event the
// stream is judged by: the first that carries output, ends the stream or is
// an error. The one exception is the first-event timeout
// (WithFirstEventTimeout), which is about a stream's liveness and so
// counts its first event of any kind: message_start stops it.

// firstEventLimit bounds the bytes held while waiting for the first output.
// A stream that reaches it is handed over as it is.
const firstEventLimit = 64 << 10

// isEventStream reports a 2xx Server-Sent Events response.
func isEventStream(resp *http.Response) bool {
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return false
	}
	// The media type is read by hand, not with mime.ParseMediaType: this
	// runs on every successful response, ParseMediaType allocates a map,
	// and its frames, at the bottom of a proxy's deepest call chain, were
	// what pushed a stream's goroutine past 8 KiB of stack, doubling it
	// for as long as the stream lasts. The parameters are not needed.
	const sse = "text/event-stream"
	ct := ""
	if v := resp.Header["Content-Type"]; len(v) > 0 { // as Get, without canonicalizing a canonical name
		ct = v[0]
	}
	ct = strings.TrimLeft(ct, " \t")
	if len(ct) < len(sse) || !strings.EqualFold(ct[:len(sse)], sse) {
		return false
	}
	rest := strings.TrimLeft(ct[len(sse):], " \t")
	return rest == "" || rest[0] == ';'
}

// Event is one Server-Sent Event of a stream, as far as a decision needs
// it: its name ("" when it has no event: line) and its data lines joined.
type Event struct {
	Name string
	Data []byte
}

// FirstEvent returns the event a 2xx text/event-stream response is judged
// by: its first event that carries output, ends the stream or is an error
// (for Gemini and streams of no family recognised, its first event),
// waiting for it for the first-event hold at most (see
// WithFirstEventHold). The events held before it, which carry nothing, are
// in OpeningEvents. Everything read is put back for the caller.
//
// ok is false when there is none to judge: not an event stream, the hold
// passed, or the held bytes outgrew 64 KiB. err is set when the stream
// broke, ended or timed out (WithFirstEventTimeout) before that event; the
// response is closed then, and the attempt can only be retried or failed.
func (a Attempt) FirstEvent() (ev Event, ok bool, err error) {
	h, err := a.heldStream()
	if h == nil || err != nil || !h.decided {
		return Event{}, false, err
	}
	return Event{Name: string(h.event.name), Data: h.event.data}, true, nil
}

// OpeningEvents returns the events of a 2xx text/event-stream response
// that were held before the one FirstEvent returns, in order: those that
// carry no output (Anthropic's message_start, an empty content_block_start,
// pings; an OpenAI role-only chunk; response.created). When the hold passed
// or the stream broke first, they are all the events held. It holds the
// stream first if nothing has; nil when there are none.
func (a Attempt) OpeningEvents() []Event {
	hb, ok := a.heldBody()
	if !ok || hb.stream.opening == 0 {
		return nil
	}
	out := make([]Event, 0, hb.stream.opening)
	s := sseScanner{limit: firstEventLimit}
	for p := hb.held; len(p) > 0 && len(out) < hb.stream.opening; {
		ev, n, ok := s.scan(p)
		p = p[n:]
		if !ok {
			break
		}
		out = append(out, Event{Name: string(ev.name), Data: append([]byte(nil), ev.data...)})
	}
	return out
}

// StreamFirstEvent is the built-in rule for a stream's commit point: a 2xx
// event stream is held until its first output (see Attempt.FirstEvent). An
// error sent before it is judged as the error response it stands for,
// with the provider rules: retried when it names a passing state
// (Anthropic's overloaded_error or api_error, an error object with a 5xx
// code, response.failed with server_error), after the wait it states, if
// any; stopped on otherwise, which delivers the stream as it is (a used-up
// quota included, with Decision.Status its status). A stream that broke,
// ended or timed out before its first output is retried. Anything else
// delivers the stream. It passes on everything that is not a 2xx event
// stream.
func StreamFirstEvent(a Attempt) Decision {
	h, err := a.heldStream()
	switch {
	case h == nil:
		return Decision{}
	case err != nil:
		return Decision{Action: Retry, Failure: FailureStream, Cause: streamCause(err)}
	case !h.decided:
		return Decision{Action: Deliver} // the hold passed, or the held bytes outgrew the limit: handed over as it is
	case h.role.isError():
		return streamErrorDecision(h.events.family, h.event, a.Now)
	}
	return Decision{Action: Deliver}
}

// streamHold is what holding a stream found.
type streamHold struct {
	// events follows the stream: its family, as the path and the events
	// named it. A watcher after the hand-over goes on with it.
	events streamEvents
	// decided: event is the event the stream is judged by, of role role.
	decided bool
	event   sseEvent
	role    eventRole
	// opening counts the events held before it, which carry nothing.
	opening int
	// broken is why the stream broke, ended or timed out before it; the
	// body is closed then.
	broken error
}

// heldStream holds a 2xx event stream until its first output, once, and
// returns what the hold found, with its broken error. h is nil for a
// response that is not a 2xx event stream with a body.
func (a Attempt) heldStream() (h *streamHold, err error) {
	hb, ok := a.heldBody()
	if !ok {
		return nil, nil
	}
	return &hb.stream, hb.stream.broken
}

// heldBody holds a 2xx event stream if nothing has yet, and returns its
// body.
func (a Attempt) heldBody() (*heldBody, bool) {
	resp := a.Response
	if resp == nil || !isEventStream(resp) || !hasBody(resp) {
		return nil, false
	}
	if hb, ok := resp.Body.(*heldBody); ok && hb.streamHeld {
		return hb, true
	}
	req := a.Request
	if req == nil {
		req = resp.Request
	}
	a.transport().holdStream(req, resp)
	return resp.Body.(*heldBody), true
}

// FirstEventTimeoutError is the cause of a retry when no event came within
// the first-event timeout.
type FirstEventTimeoutError struct{ After time.Duration }

func (e *FirstEventTimeoutError) Error() string {
	return fmt.Sprintf("no first stream event within %v", e.After)
}

// Timeout reports true: the error is a timeout.
func (e *FirstEventTimeoutError) Timeout() bool { return true }

// errStreamEnded is the cause of a retry when a stream ended before its
// first output.
var errStreamEnded = errors.New("stream ended before its first output")

// defaultFirstEventHold is how long a stream is held waiting for its first
// output before it is handed over as it is.
const defaultFirstEventHold = 10 * time.Second

// holdLimit is one time limit on the hold: expired is closed when it
// passes. The zero holdLimit never passes.
type holdLimit struct {
	expired chan struct{}
	cancel  func() bool
}

func startHoldLimit(clock Clock, d time.Duration) holdLimit {
	ch := make(chan struct{})
	return holdLimit{expired: ch, cancel: clock.AfterFunc(d, func() { close(ch) })}
}

func (l *holdLimit) stop() {
	if l.cancel != nil {
		l.cancel()
	}
}

// holdStream reads resp's body up to its first output, as the request's
// path and the events name the stream's family, and leaves it a *heldBody
// that gives the caller every byte, held ones first, and says what the
// hold found. When the stream broke or ended before its first output, or
// the first-event timeout passed with no event at all, the body is closed
// and the hold's broken says why. When the hold passes first, or the held
// bytes outgrow firstEventLimit, the response is left to be handed over as
// it is: keep-alives and opening events must not sit here for minutes
// while a model thinks.
func (t *Transport) holdStream(req *http.Request, resp *http.Response) {
	clock := t.cfg.clock
	timeout, hold := t.cfg.firstEventTimeout, t.cfg.firstEventHold
	// Until the first event, the sooner of the timeout and the hold
	// applies; after it, the hold alone.
	timingOut := timeout > 0 && (hold <= 0 || timeout <= hold)
	var limit holdLimit
	var start time.Time
	switch {
	case timingOut:
		start = clock.Now()
		limit = startHoldLimit(clock, timeout)
	case hold > 0:
		limit = startHoldLimit(clock, hold)
	}
	defer limit.stop()

	body := &lateReader{rc: resp.Body}
	h := streamHold{events: newStreamEvents(req)}
	scanner := sseScanner{limit: firstEventLimit}
	sawEvent := false
	buf := make([]byte, 0, 1<<10)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err, late := body.readBefore(buf[len(buf):min(cap(buf), firstEventLimit)], limit.expired)
		if late {
			if timingOut {
				h.broken = &FirstEventTimeoutError{After: timeout}
			}
			settleHold(resp, body, buf, h)
			return
		}
		piece := buf[len(buf) : len(buf)+n]
		buf = buf[:len(buf)+n]
		for len(piece) > 0 {
			ev, used, ok := scanner.scan(piece)
			piece = piece[used:]
			if !ok {
				break
			}
			if !sawEvent {
				sawEvent = true
				if timingOut { // an event came in time: from here on only the hold applies
					timingOut = false
					limit.stop()
					limit = holdLimit{}
					if hold > 0 {
						limit = startHoldLimit(clock, max(hold-clock.Now().Sub(start), 0))
					}
				}
			}
			if role := h.events.role(ev); role.decides() {
				h.decided, h.event, h.role = true, ev, role
				settleHold(resp, body, buf, h)
				return
			}
			h.opening++
		}
		switch {
		case len(buf) >= firstEventLimit:
		case err == io.EOF:
			h.broken = errStreamEnded
		case err != nil:
			h.broken = err
		default:
			continue
		}
		settleHold(resp, body, buf, h)
		return
	}
}

// settleHold leaves resp a body that yields the held bytes, then the rest
// of the live body; a stream that broke is closed, its held bytes kept
// only for a Classifier to read.
func settleHold(resp *http.Response, body *lateReader, held []byte, h streamHold) {
	if h.broken != nil {
		_ = body.Close()
	}
	resp.Body = &heldBody{held: held, rc: body, streamHeld: true, stream: h}
}

// brokenStream returns why a stream broke before its first output, or nil.
func brokenStream(resp *http.Response) error {
	if hb, ok := resp.Body.(*heldBody); ok {
		return hb.stream.broken
	}
	return nil
}

// streamCause names a failed hold for events and logs.
func streamCause(err error) string {
	var fe *FirstEventTimeoutError
	switch {
	case errors.As(err, &fe):
		return "no first event within " + fe.After.String()
	case errors.Is(err, errStreamEnded):
		return "stream ended before its first output"
	}
	if c, ok := transportCause(err); ok {
		return "stream broke before its first output: " + c
	}
	return "stream broke before its first output"
}
