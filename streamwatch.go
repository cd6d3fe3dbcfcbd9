package llmretry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
)

// A stream that breaks mid-way says as much about its target as a 5xx:
// a target that cut every stream after its first event would otherwise
// keep all the traffic, since handing a stream over looks like a success.
// So on a route that holds its keys, a handed-over stream is watched as the
// caller reads it, and its end decides: the family's terminal event (or, in
// a family that has none, a clean end) is a success of the target; a cut, an
// in-stream error, or an end without the terminal event is a failure,
// towards ejection. The caller leaving (closing the body early, cancelling)
// and the caller's own idle timeout decide nothing. Nothing is ever sent
// again for a watched stream: the watch only records.

// streamEnd is how a watched stream ended.
type streamEnd uint8

const (
	streamEndNone   streamEnd = iota // the caller left: nothing to say of the target
	streamEndClean                   // the terminal event came (or a clean end, in a family without one)
	streamEndBroken                  // a cut, an in-stream error, or an end without the terminal event
)

// watchLimit bounds what the watch keeps of one line or event: it needs
// event names and small JSON objects, never a whole long event.
const watchLimit = 64 << 10

// watchedBody passes the stream through to the caller, reading its events
// as they pass.
type watchedBody struct {
	rc     io.ReadCloser
	req    *http.Request
	scan   sseScanner
	events streamEvents
	ended  func(streamEnd)

	// Close may come from another goroutine than Read (an idle timeout,
	// a caller that gives up): what both touch is atomic.
	closed   atomic.Bool // by the caller
	terminal atomic.Bool // the family's terminal event was seen
	failed   atomic.Bool // an in-stream error was seen
	once     sync.Once
}

// watch wraps resp's body so that ended is called once, with how the
// stream ended, when the caller has read it to its end, or it broke, or
// the caller closed it.
func watch(resp *http.Response, req *http.Request, events streamEvents, ended func(streamEnd)) {
	resp.Body = &watchedBody{rc: resp.Body, req: req, scan: sseScanner{limit: watchLimit}, events: events, ended: ended}
}

func (w *watchedBody) Read(p []byte) (int, error) {
	n, err := w.rc.Read(p)
	for rest := p[:n]; len(rest) > 0; {
		ev, used, ok := w.scan.scan(rest)
		rest = rest[used:]
		if !ok {
			break
		}
		role := w.events.role(ev)
		if role.isError() {
			w.failed.Store(true)
		}
		if role.isTerminal() {
			w.terminal.Store(true)
		}
	}
	switch {
	case err == nil:
	case err == io.EOF:
		switch {
		case w.failed.Load():
			w.end(streamEndBroken)
		case w.terminal.Load() || !w.events.family.hasTerminal():
			w.end(streamEndClean)
		default:
			w.end(streamEndBroken) // ended cleanly, but before its last event: cut short
		}
	default:
		w.end(w.brokenBy(err))
	}
	return n, err
}

// brokenBy says whether a read error is the stream's failure or the
// caller's own doing: a closed body, a cancelled request, the caller's
// idle timeout.
func (w *watchedBody) brokenBy(err error) streamEnd {
	var idle *IdleTimeoutError
	if w.closed.Load() || w.req.Context().Err() != nil || errors.As(err, &idle) || errors.Is(err, http.ErrBodyReadAfterClose) {
		return streamEndNone
	}
	if w.terminal.Load() && !w.failed.Load() {
		return streamEndClean // the reply was whole; only the close was rough
	}
	return streamEndBroken
}

// Close closes the stream. A stream closed after its terminal event was
// whole (SDKs stop reading at [DONE]); one closed after an in-stream error
// failed; any other was left by the caller, which says nothing of the
// target.
func (w *watchedBody) Close() error {
	w.closed.Store(true)
	err := w.rc.Close()
	switch {
	case w.failed.Load():
		w.end(streamEndBroken)
	case w.terminal.Load():
		w.end(streamEndClean)
	default:
		w.end(streamEndNone)
	}
	return err
}

func (w *watchedBody) end(e streamEnd) { w.once.Do(func() { w.ended(e) }) }

// hasTerminal reports whether a stream of family f has a last event,
// without which it was cut short.
func (f streamFamily) hasTerminal() bool { return f != streamUnknown }

// watchTarget watches a stream j hands over, and records its end as its
// target's success or failure. The target's probe, if the attempt was
// one, goes with the stream: its end ends the probe.
func (t *Transport) watchTarget(resp *http.Response, j *journey) {
	ts := j.rt.targets[j.at.target]
	probe := j.heldProbe(probeTarget).ch
	j.dropProbe(probeTarget)
	events := newStreamEvents(j.req)
	if hb, ok := resp.Body.(*heldBody); ok && hb.streamHeld {
		events = hb.stream.events
	}
	outliers, req := j.rt.f.Outliers, j.req
	var once sync.Once
	end := func(e streamEnd) {
		once.Do(func() {
			result, cause := outcomeNone, ""
			switch e {
			case streamEndClean:
				result = outcomePassed
			case streamEndBroken:
				result, cause = outcomeFailed, "stream broke mid-way"
			}
			t.targetOutcome(outliers, ts, probe, result, t.cfg.clock.Now(), req, cause)
		})
	}
	if probe == nil {
		watch(resp, req, events, end)
		return
	}
	// A caller that never closes the body must not keep the target on
	// probation for good: the probe is given back when the request's
	// context ends, or when its lease (the longest ejection) runs out.
	stopCtx := context.AfterFunc(req.Context(), func() { end(streamEndNone) })
	stopLease := t.cfg.clock.AfterFunc(outliers.MaxEjection, func() { end(streamEndNone) })
	watch(resp, req, events, func(e streamEnd) {
		stopCtx()
		stopLease()
		end(e)
	})
}
