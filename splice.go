package llmretry

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
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
	if err == nil {
		err = io.EOF // an in-stream error ended it: the stream ends there
	}
	switch {
	case s.errEv == nil && s.d.ended:
		// The family's last event came: nothing is missing, whatever
		// ended the connection after it.
		s.end(io.EOF)
	case s.ctx.Err() != nil && !errors.Is(s.ctx.Err(), context.DeadlineExceeded):
		s.end(err) // the caller left: there is no one to tell
	default:
		// Broken, by a cut or by an end before the last event (a reply
		// that said it was whole gets that event: broke writes it), or
		// past the deadline, which broke reports as the refusal it is.
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
			s.d.observe(ev)
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
		s.d.observe(ev)
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
		cause = "stream ended before its last event"
	case isIdle(err):
		cause = "idle timeout"
	}
	ev := ContinuationEvent{Method: s.j.req.Method, URL: redactURL(s.j.req.URL), After: runeCount(s.d.text.bytes()), Seams: s.seams, Cause: cause,
		PromptTokens: max(s.d.promptTokens, 0), OutputTokens: max(s.d.outTokens, 0)}
	if s.j.rt.holdsKeys {
		ev.Target, ev.Key = s.j.rt.names(s.j.at)
	}
	report := func(o ContinuationOutcome, why string) {
		ev.Outcome = o
		if why != "" {
			ev.Cause += "; " + why
		}
		s.t.continuing(s.j.req, ev)
	}
	_, notContinuable := continuable(s.j.req, s.d.family)
	switch {
	case s.errEv != nil && !s.passingError():
		report(Refused, "not continued: the error is not one that passes")
		s.end(io.EOF)
		return
	case s.d.complete && s.errEv == nil && notContinuable == "":
		// The reply was whole; only its last event did not come. It is
		// written here, so the caller's SDK sees a finished stream.
		report(Completed, "")
		s.out = append(s.out, s.in[s.readAt:s.ready]...)
		s.readAt, s.ready = 0, 0
		s.out = append(s.out, ": llmretry: the reply was whole; its last event did not come, and this one is llmretry's\n\n"...)
		if s.d.family == streamAnthropic {
			s.out = append(s.out, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"...)
		} else {
			s.out = append(s.out, "data: [DONE]\n\n"...)
		}
		s.end(io.EOF)
		return
	}
	if outcome, why := s.refusal(notContinuable); outcome != 0 {
		report(outcome, "not continued: "+why)
		s.end(err)
		return
	}
	resp, trimmed, refused, why := s.t.resume(s)
	if resp == nil {
		if refused {
			report(Refused, "not continued: "+why)
		} else {
			report(ContinuationFailed, "continuation failed: "+why)
		}
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
	report(Continued, "")
	s.out = append(s.out, ": llmretry: stream continued after "...)
	s.out = strconv.AppendInt(s.out, int64(ev.After), 10)
	s.out = append(s.out, " characters\n\n"...)
	s.mu.Lock()
	closed := s.closed
	s.cur = resp.Body
	s.mu.Unlock()
	if closed { // the caller closed the stream while the continuation was on its way
		_ = resp.Body.Close()
	}
	s.scan = sseScanner{limit: watchLimit}
	s.in, s.fed, s.readAt, s.ready = s.in[:0], 0, 0, 0 // the unread whole events went to out first
	s.sp = newSplice(&s.d, trimmed)
	s.respan = &sseScanner{}
}

// passingError reports a held in-stream error that names a passing state
// (an overload, a 5xx-like error): the kind a retry before the first
// output would have retried.
func (s *continuedStream) passingError() bool {
	var sc sseScanner
	ev, _, ok := sc.scan(s.errEv)
	if !ok {
		return false
	}
	return streamErrorDecision(s.d.family, ev, s.t.cfg.clock.Now()).Action == Retry
}

// refusal says why the stream may not be continued; 0 when it may.
// request is why its request may not be, if it may not.
func (s *continuedStream) refusal(request string) (ContinuationOutcome, string) {
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
	case request != "":
		return Refused, request
	case errors.Is(s.ctx.Err(), context.DeadlineExceeded) || passesDeadline(s.ctx, s.t.cfg.clock.Now(), 0):
		return Refused, "the deadline has passed"
	case s.ctx.Err() != nil:
		return Refused, "the caller left"
	}
	return 0, ""
}

// Close closes the stream, and any continuation under way.
func (s *continuedStream) Close() error {
	s.mu.Lock()
	s.closed = true
	cur := s.cur
	s.mu.Unlock()
	s.cancel()
	return cur.Close()
}

func isIdle(err error) bool {
	var idle *IdleTimeoutError
	return errors.As(err, &idle)
}

// resume sends the continuation of s's request through the attempt loop:
// to the same target and key when they are healthy, else where the
// failover rules send it. It counts as an attempt and as a retry in the
// budget. It returns the continuation's stream, or why there is none
// (refused: the attempts or the budget did not allow one). An Anthropic
// model that takes no prefill (it answers 400 naming it) is asked again
// with the instruction form.
func (t *Transport) resume(s *continuedStream) (resp *http.Response, trimmed string, refused bool, why string) {
	body, why := continuable(s.j.req, s.d.family)
	if body == nil {
		return nil, "", true, why
	}
	if why := lowerMaxTokens(body, s.d.family, s.d.outTokens); why != "" {
		return nil, "", true, why
	}
	forms := []string{t.cfg.continuation.OpenAIPrefix}
	if s.d.family == streamAnthropic {
		forms = []string{"prefill", ""}
	}
	for i, form := range forms {
		next, tr, err := continuationBody(body, s.d.family, s.d.text.bytes(), form)
		if err != nil {
			return nil, "", false, err.Error()
		}
		resp, refused, why = t.sendContinuation(s, next)
		if resp == nil {
			return nil, "", refused, why
		}
		if why == "" && resp.StatusCode/100 == 2 && isEventStream(resp) {
			return resp, tr, false, ""
		}
		// A failure the loop handed over as it is: no attempts left, or
		// not one to retry. A stream that failed before its output (an
		// overload after message_start) is one too: spliced in, it
		// would give the caller a seam and then that error.
		status := resp.StatusCode
		noPrefill := status == http.StatusBadRequest && i+1 < len(forms) && mentionsPrefill(resp)
		discard(resp, t.cfg.clock)
		if !noPrefill {
			return nil, "", false, cmp.Or(why, "status "+strconv.Itoa(status))
		}
	}
	return nil, "", false, "no form of continuation was taken"
}

// lowerMaxTokens lowers the request's output limits by delivered, the
// output the broken stream had reported (-1: none, and nothing is
// lowered: the core has no tokenizer to guess it). The limit counts the
// whole answer, and the continuation's output is only its rest. why says
// what leaves nothing to continue with: a limit is never set below 1.
func lowerMaxTokens(body map[string]json.RawMessage, family streamFamily, delivered int) (why string) {
	if delivered <= 0 {
		return ""
	}
	keys := []string{"max_tokens", "max_completion_tokens"}
	if family == streamAnthropic {
		keys = keys[:1]
	}
	for _, k := range keys {
		n, err := strconv.Atoi(string(bytes.TrimSpace(body[k])))
		if err != nil {
			continue // absent, or not a count: left as it is
		}
		if n-delivered < 1 {
			return "no output tokens left (" + k + " " + strconv.Itoa(n) + ", " + strconv.Itoa(delivered) + " already delivered)"
		}
		body[k] = json.RawMessage(strconv.Itoa(n - delivered))
	}
	return ""
}

// mentionsPrefill reports an error body that says the model takes no
// prefill ("This model does not support assistant message prefill").
func mentionsPrefill(resp *http.Response) bool {
	body, _ := Attempt{Response: resp}.Body()
	return bytes.Contains(bytes.ToLower(body), []byte("prefill"))
}

// sendContinuation runs the attempt loop for one continuation body. With
// a response, why is the cause of its failure when it is one.
func (t *Transport) sendContinuation(s *continuedStream, next []byte) (*http.Response, bool, string) {
	j := s.j
	if j.sent >= t.cfg.policy.MaxAttempts {
		return nil, true, "no attempts left"
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
			return nil, false, "no healthy target or key to continue on"
		}
		jc.visited |= 1 << c.pl.target // a continuation is a retry, wherever it goes
		jc.moveTo(c)
	}
	jc.onTarget = 1
	defer jc.release()
	// A continuation is a retry: it pays the budget here, the one place
	// besides the loop, which pays for the retries that follow it.
	if b := jc.rt.targets[jc.at.target].budget; b != nil && !b.AllowRetry() {
		return nil, true, "the retry budget is spent"
	}
	resp, err := t.loop(&jc, s.send, jc.sent+1, s.idem)
	j.at, j.sent, j.visited = jc.at, jc.sent, jc.visited
	switch {
	case err != nil:
		return nil, false, errorText(err)
	case resp == nil:
		return nil, false, "no response"
	}
	return resp, false, jc.lastCause // a success leaves no cause
}
