package llmretry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// continuedStream is the body a caller reads when stream continuation is
// on: the stream's whole events, as they come (a cut can fall inside an
// event, and half an event cannot be joined to another, so an event is
// passed on only once it is complete); on a break, a continuation (the
// loop, run again for it) spliced in after an SSE comment that marks the
// seam.
type continuedStream struct {
	t      *Transport
	j      *journey // the request's journey, kept to resume it
	send   sendFunc
	idem   string
	resp   *http.Response // what the caller holds: its Trailer is set at a seam
	ctx    context.Context
	cancel context.CancelFunc

	cur    io.ReadCloser // the current attempt's body
	scan   sseScanner
	events streamEvents
	d      delivery
	sp     *splice     // while a continuation is spliced in
	respan *sseScanner // reads what the splice wrote, for d

	// in holds what was read of the current attempt: from readAt to ready,
	// whole events the caller has yet to read, passed as they are; after
	// ready, the start of an event not yet complete. fed is how much of in
	// the scanner has seen.
	in                 []byte
	readAt, ready, fed int
	// out holds what a splice wrote, from outAt on, for the caller.
	out   []byte
	outAt int
	errEv []byte // an in-stream error held back: passed only if not continued
	seams int
	err   error // how the stream ends, once it has

	mu     sync.Mutex
	closed bool
}

// continueStream makes resp's body a continued stream, for a request that
// may be continued: j is copied, as the loop's own ends with RoundTrip.
func (t *Transport) continueStream(resp *http.Response, events streamEvents, j *journey, send sendFunc, idem string) {
	jc := *j
	jc.probes = [2]heldProbe{} // the request's own are its loop's to end
	ctx, cancel := context.WithCancel(j.req.Context())
	if resp.Trailer == nil {
		resp.Trailer = make(http.Header)
	}
	resp.Body = &continuedStream{t: t, j: &jc, send: send, idem: idem, resp: resp, ctx: ctx, cancel: cancel,
		cur: resp.Body, scan: sseScanner{limit: watchLimit}, events: events, d: newDelivery(events.family),
		in: make([]byte, 0, 1<<10)}
}

func (s *continuedStream) Read(p []byte) (int, error) {
	for {
		if s.readAt < s.ready {
			n := copy(p, s.in[s.readAt:s.ready])
			s.readAt += n
			if s.readAt == s.ready { // all read: keep only the partial event
				rest := copy(s.in, s.in[s.ready:])
				s.in, s.fed = s.in[:rest], s.fed-s.ready
				s.readAt, s.ready = 0, 0
			}
			return n, nil
		}
		if s.outAt < len(s.out) {
			n := copy(p, s.out[s.outAt:])
			s.outAt += n
			if s.outAt == len(s.out) {
				s.out, s.outAt = s.out[:0], 0 // all read: its room is reused
			}
			return n, nil
		}
		if s.err != nil {
			return 0, s.err
		}
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return 0, http.ErrBodyReadAfterClose
		}
		s.fill()
	}
}

// fill reads once from the current attempt, passes the events it
// completed, and handles the attempt's end.
func (s *continuedStream) fill() {
	if len(s.in) == cap(s.in) {
		if cap(s.in) >= watchLimit {
			// One event larger than the limit: pass what there is as it
			// is. The stream can no longer be continued: its seam could
			// fall in that event.
			s.d.truncated = true
			s.out = append(s.out, s.in...)
			s.in, s.fed, s.readAt, s.ready = s.in[:0], 0, 0, 0
		} else {
			s.in = append(s.in, make([]byte, cap(s.in))...)[:len(s.in)]
		}
	}
	n, err := s.cur.Read(s.in[len(s.in):cap(s.in)])
	s.in = s.in[:len(s.in)+n]
	s.pass()
	if err == nil && s.errEv == nil {
		return
	}
	// The attempt is over: whole, broken, or left by the caller.
	_ = s.cur.Close()
	switch {
	case s.errEv == nil && err == io.EOF && s.d.complete:
		s.end(io.EOF) // the last event came (or the reply said it was whole)
	case s.ctx.Err() != nil:
		s.end(err) // the caller left
	default:
		s.broke(err)
	}
}

// pass feeds the new bytes of in to the scanner, and passes each event
// they complete: as it is (it stays in in, ready for the caller), or
// rewritten by the splice (into out).
func (s *continuedStream) pass() {
	start := s.ready // where the next event's bytes begin
	for s.fed < len(s.in) && s.errEv == nil {
		ev, used, ok := s.scan.scan(s.in[s.fed:])
		s.fed += used
		if !ok {
			break
		}
		raw := s.in[start:s.fed]
		start = s.fed
		role := s.events.role(ev)
		if role.isError() {
			s.errEv = append([]byte(nil), raw...) // held back until the break is judged
			break
		}
		if s.sp == nil {
			s.d.observe(ev, role)
			s.ready = s.fed
			continue
		}
		s.written(s.sp.rewrite(ev, raw))
	}
	if s.sp != nil { // a splice passes nothing from in: keep only the partial event
		rest := copy(s.in, s.in[start:])
		s.in, s.fed, s.readAt, s.ready = s.in[:rest], s.fed-start, 0, 0
	}
}

// written passes what the splice wrote, and reads it for the delivery.
func (s *continuedStream) written(b []byte) {
	if len(b) == 0 {
		return
	}
	s.out = append(s.out, b...)
	for len(b) > 0 {
		ev, used, ok := s.respan.scan(b)
		b = b[used:]
		if !ok {
			break
		}
		s.d.observe(ev, s.events.role(ev))
	}
}

// end ends the stream for the caller with err.
func (s *continuedStream) end(err error) {
	if s.sp != nil {
		s.written(s.sp.release(nil))
	}
	if s.errEv != nil {
		s.out = append(s.out, s.errEv...)
		s.errEv = nil
	}
	s.err = err
	s.cancel()
}

// broke judges a stream that broke after output reached the caller, and
// continues it when it may be.
func (s *continuedStream) broke(err error) {
	cause := "stream cut"
	switch {
	case s.errEv != nil:
		cause = "in-stream error"
	case err == io.EOF:
		cause, err = "stream ended before its last event", io.EOF
	case isIdle(err):
		cause = "idle timeout"
	}
	ev := ContinuationEvent{Method: s.j.req.Method, URL: redactURL(s.j.req.URL), After: runeCount(s.d.text.bytes()), Seams: s.seams, Cause: cause}
	if s.j.rt.holdsKeys {
		ev.Target, ev.Key = s.j.rt.names(s.j.at)
	}
	if s.d.complete && s.errEv == nil {
		// The reply was whole; only its last event did not come. It is
		// written here, so the caller's SDK sees a finished stream.
		ev.Outcome = Completed
		s.t.continuing(s.j.req, ev)
		s.out = append(s.out, ": llmretry: the reply was whole; its last event did not come, and this one is llmretry's\n\n"...)
		if s.d.family == streamAnthropic {
			s.out = append(s.out, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"...)
		} else {
			s.out = append(s.out, "data: [DONE]\n\n"...)
		}
		s.end(io.EOF)
		return
	}
	outcome, why := s.refusal()
	if outcome != 0 {
		ev.Outcome, ev.Cause = outcome, cause+"; not continued: "+why
		s.t.continuing(s.j.req, ev)
		s.end(err)
		return
	}
	resp, trimmed, why := s.t.resume(s)
	if resp == nil {
		ev.Outcome, ev.Cause = ContinuationFailed, cause+"; continuation failed: "+why
		if why == "the retry budget is spent" || why == "no attempts left" {
			ev.Outcome = Refused
		}
		s.t.continuing(s.j.req, ev)
		s.end(err)
		return
	}
	// Splice: the whole events not yet read go first; the in-stream error
	// (a passing state) is dropped; the continuation's events follow a
	// comment that marks the seam.
	s.out = append(s.out, s.in[s.readAt:s.ready]...)
	s.errEv = nil
	s.seams++
	if s.j.rt.holdsKeys {
		ev.NextTarget, ev.NextKey = s.j.rt.names(s.j.at)
		s.resp.Trailer.Set(TargetHeader, ev.NextTarget)
	}
	ev.Outcome = Continued
	s.t.continuing(s.j.req, ev)
	s.out = append(s.out, ": llmretry: stream continued after "...)
	s.out = strconv.AppendInt(s.out, int64(ev.After), 10)
	s.out = append(s.out, " characters\n\n"...)
	s.cur = resp.Body
	s.scan = sseScanner{limit: watchLimit}
	s.in, s.fed, s.readAt, s.ready = s.in[:0], 0, 0, 0 // the unread whole events went to out first
	s.sp = newSplice(&s.d, trimmed)
	s.respan = &sseScanner{}
}

// refusal says why the stream may not be continued; 0 when it may.
func (s *continuedStream) refusal() (ContinuationOutcome, string) {
	c := s.t.cfg.continuation
	d := &s.d
	switch {
	case s.seams >= c.Max:
		return OverCap, "continued " + strconv.Itoa(s.seams) + " times already"
	case d.toolSeen:
		return RefusedToolCall, "the stream carried a tool call"
	case d.thinkingSeen:
		return Refused, "the stream carried thinking (prefill is not supported with it)"
	case d.refusalSeen:
		return Refused, "the reply is a refusal"
	case d.truncated:
		return Refused, "an event outgrew what continuation tracks"
	case d.text.size == 0:
		return Refused, "no text was delivered"
	case s.ctx.Err() != nil:
		return Refused, "the caller left"
	}
	return 0, ""
}

// Close closes the stream, and any continuation under way.
func (s *continuedStream) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	return s.cur.Close()
}

func isIdle(err error) bool {
	var idle *IdleTimeoutError
	return errors.As(err, &idle)
}

// resume sends the continuation of s's request through the attempt loop:
// to the same target and key when they are healthy, else where the
// failover rules send it. It counts as an attempt and as a retry in the
// budget. It returns the continuation's stream, or why there is none.
func (t *Transport) resume(s *continuedStream) (*http.Response, string, string) {
	j := s.j
	body, why := continuable(j.req, s.d.family)
	if body == nil {
		return nil, "", why
	}
	next, trimmed, err := continuationBody(body, s.d.family, s.d.text.bytes(), t.cfg.continuation)
	if err != nil {
		return nil, "", err.Error()
	}
	if j.sent >= t.cfg.policy.MaxAttempts {
		return nil, "", "no attempts left"
	}
	req := j.req.Clone(s.ctx)
	req.Body = io.NopCloser(bytes.NewReader(next))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(next)), nil }
	req.ContentLength = int64(len(next))
	req.Header.Del("Content-Length")
	jc := journey{rt: j.rt, req: req, at: j.at, canReplay: true, sent: j.sent, visited: j.visited,
		model: j.model, modelRead: j.modelRead, continuation: true}
	now := t.cfg.clock.Now()
	ts := jc.rt.targets[jc.at.target]
	if jc.admission(t, ts, now) == ejected || jc.status(t, ts, ts.keys[jc.at.key], now).block != keyFree {
		c, ok := jc.choose(t, 0, now)
		if !ok || c.wait > 0 || c.waitFor != nil || !jc.claim(c, now) {
			return nil, "", "no healthy target or key to continue on"
		}
		jc.visited |= 1 << c.pl.target // a continuation is a retry, wherever it goes
		jc.moveTo(c)
	}
	jc.onTarget = 1
	defer jc.release()
	if b := jc.rt.targets[jc.at.target].budget; b != nil && !b.AllowRetry() {
		return nil, "", "the retry budget is spent"
	}
	resp, err := t.loop(&jc, s.send, jc.sent+1, s.idem)
	j.at, j.sent, j.visited = jc.at, jc.sent, jc.visited
	switch {
	case err != nil:
		return nil, "", errorText(err)
	case resp == nil:
		return nil, "", "no response"
	case resp.StatusCode/100 != 2 || !isEventStream(resp):
		why := "status " + strconv.Itoa(resp.StatusCode)
		discard(resp, t.cfg.clock)
		return nil, "", why
	}
	return resp, trimmed, ""
}
