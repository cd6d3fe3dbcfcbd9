package llmretry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Transport is an http.RoundTripper that retries LLM API calls that fail
// transiently, and only before the response is handed over: once the
// caller holds a response, nothing is ever sent again for it, so a stream
// that breaks mid-reply is never replayed. (With WithStreamContinuation, a
// stream that breaks is finished by a continuation; nothing the caller has
// is sent to it again.)
//
// A Transport is safe for concurrent use. Make one with NewTransport, or
// NewFailoverTransport to retry elsewhere.
type Transport struct {
	base http.RoundTripper
	// send is base.RoundTrip, made once: a method value made per request
	// would be an allocation per request (the loop keeps it, for a
	// stream's continuation).
	send sendFunc
	cfg  config
	// streaks counts 429s in a row per key and model, for cooldowns.
	streaks limitStreaks
	// overlong holds the store's marks that end later than the route's
	// MaxRest, cut to it from when each was first read.
	overlong overlong
	// route is where requests go: for NewTransport the request's own URL
	// and credential; for NewFailoverTransport its targets and keys.
	route *route
}

// NewTransport returns a Transport that sends each attempt through base
// (http.DefaultTransport if nil). Put signing and auth in base, so that
// every attempt is signed afresh.
func NewTransport(base http.RoundTripper, opts ...Option) *Transport {
	if base == nil {
		base = http.DefaultTransport
	}
	t := &Transport{base: base, send: base.RoundTrip, cfg: defaultConfig()}
	for _, o := range opts {
		if o != nil {
			o(&t.cfg)
		}
	}
	if !t.cfg.budgetSet {
		t.cfg.budget = NewRatioBudget(BudgetConfig{Clock: t.cfg.clock})
	}
	if !t.cfg.storeSet {
		t.cfg.store = NewLocalHealthStore()
	}
	t.cfg.fillClassifier()
	t.route = ownRoute(t.cfg.budget)
	return t
}

// RoundTrip sends req, retrying as the Policy allows. It returns the last
// response whenever it has one, even a failed one, with its body intact;
// it returns an *Error only when it has none.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.do(req, t.send)
}

// Do sends req with client, retrying as p allows: the function form, for
// callers who keep their own Transport. Each attempt is one client.Do, so
// the client's redirects, cookies and Timeout apply per attempt. It shares
// the Transport's engine and rules, with no budget or cooldown (those need
// a Transport that lives across calls). A nil client means
// http.DefaultClient; a nil ctx keeps req's own context. Do not give it a
// client whose Transport is already a *Transport: the retries would
// multiply.
func Do(ctx context.Context, client *http.Client, req *http.Request, p Policy) (*http.Response, error) {
	if client == nil {
		client = http.DefaultClient
	}
	if req != nil && ctx != nil {
		req = req.WithContext(ctx)
	}
	t := &Transport{cfg: defaultConfig(), route: ownRoute(nil)}
	t.cfg.policy = p.withDefaults()
	t.cfg.fillClassifier()
	return t.do(req, client.Do)
}

// sendFunc sends one attempt.
type sendFunc func(*http.Request) (*http.Response, error)

// do is the attempt loop that RoundTrip and Do share, for one target or
// many: send and decide, record what the attempt proved, then hand over,
// or decide what follows (the same place after a wait, another key or
// target now, or a stop), pay the budget for a retry, and go.
func (t *Transport) do(req *http.Request, send sendFunc) (*http.Response, error) {
	var j journey
	if err := t.begin(req, &j); err != nil {
		return nil, err
	}
	defer j.release() // no probe outlives its request, however it ends
	return t.loop(&j, send, 1, t.idempotencyKey(req))
}

// begin checks req and finds its first placement, in j. On an error, the
// request's body is closed and nothing is to be sent. Its own frame, not
// do's: do's stays on the stack, below a held stream, for as long as the
// request lasts, and a goroutine's stack is as large as its deepest call.
//
//go:noinline
func (t *Transport) begin(req *http.Request, j *journey) error {
	if err := validateRequest(req); err != nil {
		closeBody(req)
		return t.giveUp(req, nil, 0, verdict{reason: ReasonInvalidRequest}, err, nil)
	}
	if err := t.start(req, j); err != nil {
		closeBody(req)
		return err
	}
	return nil
}

// loop sends attempts from number first on, until one is handed over or
// retrying stops: a request's, or a broken stream's continuation.
func (t *Transport) loop(j *journey, send sendFunc, first int, idemKey string) (*http.Response, error) {
	req, ctx := j.req, j.req.Context()
	for attempt := first; ; attempt++ {
		resp, v, err, ended := t.try(j, attempt, idemKey, send)
		if ended { // cancelled, or the caller's own body failed: nothing to hand over
			return nil, t.giveUp(req, nil, j.sent, v, err, j)
		}
		p := t.prove(j, resp, v)
		t.record(j, resp, v, p)
		if !v.retry && !p.failedAsAKey() { // an answer, or a failure no other place can fix
			return t.deliver(resp, j, v, send, idemKey), t.stopped(req, resp, attempt, v, err, j)
		}
		mv := t.next(ctx, j, attempt, v, p)
		budget := j.rt.targets[j.at.target].budget
		// A request's retries pay the budget here; a broken stream's
		// continuation pays before its loop starts (sendContinuation).
		if mv.retry() && budget != nil && !budget.AllowRetry() {
			mv = t.refused(j)
		}
		if mv.kind == moveStop {
			return t.handOver(resp, j), t.giveUp(req, resp, attempt, v.stoppedBy(mv), err, j)
		}
		from := j.at
		if mv.kind != moveStay {
			j.moveTo(mv.to)
			mv.src = SourceFailover
		}
		t.retrying(req, resp, attempt, v, err, mv.wait, mv.src, j, from)
		discard(resp, t.cfg.clock)
		if err := sleep(ctx, t.cfg.clock, mv.wait); err != nil {
			if mv.retry() && budget != nil {
				budget.OnAttempt(AttemptResult{Retry: true, Abandoned: true}) // never sent
			}
			return nil, t.giveUp(req, nil, attempt, verdict{reason: ReasonContextDone}, err, j)
		}
	}
}

// try sends attempt number attempt where the journey is, and decides on
// it. ended is true when nothing more can follow: the caller left, or
// the caller's own body failed, or could not be made again.
func (t *Transport) try(j *journey, attempt int, idemKey string, send sendFunc) (resp *http.Response, v verdict, err error, ended bool) {
	r, tracked, err := t.attemptRequest(j, attempt, idemKey)
	if err != nil {
		return nil, verdict{reason: ReasonBodyNotReplayable}, err, true
	}
	ts := j.rt.targets[j.at.target]
	load := ts.inflight.Add(1)
	resp, err = send(r)
	ts.inflight.Add(-1)
	j.sent++
	j.onTarget++
	ctx := j.req.Context()
	if err != nil {
		resp, err = nil, scrubError(err) // a RoundTripper returns no response with an error
		if ctx.Err() != nil {
			return nil, verdict{reason: ReasonContextDone}, contextError(ctx, err), true
		}
		if bodyErr := tracked.readErr(); bodyErr != nil {
			// The caller's own body failed: theirs to report, never retried.
			v := verdict{failure: FailureTransport, cause: "request body read failed", reason: ReasonNotRetryable}
			return nil, v, fmt.Errorf("%w: %w", errRequestBody, scrubError(bodyErr)), true
		}
	}
	v = t.decide(Attempt{Request: r, Response: resp, Err: err, Number: attempt, Now: t.cfg.clock.Now(), t: t})
	if ts.budget != nil {
		ts.budget.OnAttempt(AttemptResult{Retry: j.onTarget > 1, Failed: v.retry, Load: int(load)})
	}
	if resp != nil {
		if broken := brokenStream(resp); broken != nil {
			resp, err = nil, broken // closed: it broke before the caller could have it
			if ctx.Err() != nil {
				return nil, verdict{reason: ReasonContextDone}, contextError(ctx, err), true
			}
			if !v.retry {
				v = verdict{failure: FailureStream, cause: streamCause(broken), reason: ReasonNotRetryable}
			}
		}
	}
	j.lastCause = v.cause
	return resp, v, err, false
}

// stoppedBy is the verdict a request ends on when retrying stopped with
// m: the failure's own reason for a failure that was not retryable, else
// why retrying stopped.
func (v verdict) stoppedBy(m move) verdict {
	if v.retry {
		v.reason = m.stop
		if m.stop == ReasonDeadline || m.stop == ReasonRetryAfterTooLong {
			v.wait = m.wait
		}
	}
	return v
}

// stopped reports a request that ends on a response: nothing for an
// answer, a stop for a failure.
func (t *Transport) stopped(req *http.Request, resp *http.Response, attempts int, v verdict, err error, j *journey) error {
	if v.reason == 0 {
		return nil
	}
	return t.giveUp(req, resp, attempts, v, err, j)
}

// closeBody closes the caller's request body, when nothing will send it.
func closeBody(req *http.Request) {
	if req != nil && req.Body != nil {
		_ = req.Body.Close()
	}
}

// hasBody reports whether a response may carry a body at all: not the
// answer to a HEAD, not a 204. (A 200 stream that is empty is a failure,
// and is retried.)
func hasBody(resp *http.Response) bool {
	return resp.StatusCode != http.StatusNoContent &&
		(resp.Request == nil || resp.Request.Method != http.MethodHead)
}

// deliver hands over an answer: with stream continuation on, a stream
// that may be continued is read through a continued stream.
func (t *Transport) deliver(resp *http.Response, j *journey, v verdict, send sendFunc, idemKey string) *http.Response {
	if t.cfg.continuation == nil || v.reason != 0 || j.continuation || resp == nil || !isEventStream(resp) || !hasBody(resp) {
		return t.handOver(resp, j)
	}
	events := newStreamEvents(j.req)
	if hb, ok := resp.Body.(*heldBody); ok && hb.streamHeld {
		events = hb.stream.events
	}
	resp = t.handOver(resp, j)
	if events.family == streamAnthropic || events.family == streamOpenAIChat {
		t.continueStream(resp, events, j, send, idemKey)
	}
	return resp
}

// handOver prepares a response for the caller: from here on it is theirs,
// and nothing is sent again for it (with stream continuation on, nothing
// the caller has is sent to it again). With failover, it names the target
// that sent it.
func (t *Transport) handOver(resp *http.Response, j *journey) *http.Response {
	if resp == nil {
		return nil
	}
	if j.watchStream {
		t.watchTarget(resp, j)
	}
	if t.cfg.idleTimeout > 0 && isBodyToRead(resp) {
		resp.Body = newIdleBody(resp.Body, t.cfg.idleTimeout, t.cfg.clock)
	}
	if j.rt.holdsKeys {
		if resp.Header == nil {
			resp.Header = make(http.Header)
		}
		resp.Header.Set(TargetHeader, j.rt.targets[j.at.target].Name)
	}
	return resp
}

// isBodyToRead reports a response body that is a reply to read, not a
// connection: a 101 Switching Protocols (a WebSocket: OpenAI Realtime,
// Gemini Live) hands over an io.ReadWriteCloser that must stay one, and so
// does any body that can be written to.
func isBodyToRead(resp *http.Response) bool {
	if resp.Body == nil || resp.Body == http.NoBody || resp.StatusCode == http.StatusSwitchingProtocols {
		return false
	}
	_, writable := resp.Body.(io.Writer)
	return !writable
}

// contextError makes sure the caller's context error is in the chain, so
// that errors.Is(err, context.Canceled) holds whatever the transport said.
func contextError(ctx context.Context, err error) error {
	if errors.Is(err, ctx.Err()) {
		return err
	}
	return fmt.Errorf("%w: %w", ctx.Err(), err)
}

// retrying reports a retry to the observers. With failover, j says where
// the next attempt goes and from where the failed one went.
func (t *Transport) retrying(req *http.Request, resp *http.Response, attempt int, v verdict, err error, wait time.Duration, src WaitSource, j *journey, from placement) {
	if t.cfg.onRetry == nil && t.cfg.logger == nil {
		return
	}
	ev := RetryEvent{
		Method: req.Method, URL: redactURL(req.URL), Attempt: attempt,
		Err: err, Failure: v.failure, Cause: v.cause, Wait: wait, Source: src,
	}
	if resp != nil {
		ev.StatusCode = resp.StatusCode
	}
	named := j != nil && j.rt.holdsKeys
	if named {
		ev.Target, ev.Key = j.rt.names(from)
		ev.NextTarget, ev.NextKey = j.rt.names(j.at)
	}
	if t.cfg.onRetry != nil {
		t.cfg.onRetry(ev)
	}
	if t.cfg.logger != nil {
		attrs := []slog.Attr{slog.String("method", ev.Method), slog.String("url", ev.URL),
			slog.Int("attempt", attempt), slog.String("cause", ev.Cause),
			slog.Duration("wait", wait), slog.String("source", src.String())}
		if named {
			attrs = append(attrs, slog.String("target", ev.Target), slog.String("key", ev.Key),
				slog.String("next_target", ev.NextTarget), slog.String("next_key", ev.NextKey))
		}
		t.cfg.logger.LogAttrs(req.Context(), slog.LevelInfo, "llmretry: retrying", attrs...)
	}
}

// giveUp reports a request that ends on a failure and returns the error
// for the caller: nil when a response is in hand (the response is the
// answer), an *Error otherwise. j, with failover, names the last target.
func (t *Transport) giveUp(req *http.Request, resp *http.Response, attempts int, v verdict, err error, j *journey) error {
	ev := StopEvent{Attempts: attempts, Err: err, Failure: v.failure, Cause: v.cause, Reason: v.reason, Wait: v.wait}
	if req != nil {
		ev.Method, ev.URL = req.Method, redactURL(req.URL)
	}
	if resp != nil {
		ev.StatusCode = resp.StatusCode
	}
	named := j != nil && j.rt.holdsKeys
	if named {
		ev.Target, ev.Key = j.rt.names(j.at)
	}
	if t.cfg.onStop != nil {
		t.cfg.onStop(ev)
	}
	if t.cfg.logger != nil {
		ctx := context.Background()
		if req != nil {
			ctx = req.Context()
		}
		// A failure that retrying cannot fix (a 400, a quota) is the
		// caller's business, not a warning about retries.
		level := slog.LevelWarn
		if v.reason == ReasonNotRetryable || v.reason == ReasonInvalidRequest {
			level = slog.LevelInfo
		}
		attrs := []slog.Attr{slog.String("method", ev.Method), slog.String("url", ev.URL),
			slog.Int("attempts", attempts), slog.String("reason", v.reason.String()),
			slog.String("cause", ev.Cause), slog.Int("status", ev.StatusCode)}
		if named {
			attrs = append(attrs, slog.String("target", ev.Target), slog.String("key", ev.Key))
		}
		t.cfg.logger.LogAttrs(ctx, level, "llmretry: giving up", attrs...)
	}
	if resp != nil {
		return nil
	}
	return &Error{Method: ev.Method, URL: ev.URL, Attempts: attempts, Reason: v.reason, Wait: v.wait, Target: ev.Target, Err: err}
}

// String names the Transport and, with failover, its targets, without
// walking its state (its keys among it) as fmt would.
func (t *Transport) String() string {
	if !t.route.holdsKeys {
		return "llmretry.Transport"
	}
	names := make([]string, len(t.route.targets))
	for i, ts := range t.route.targets {
		names[i] = ts.Name
	}
	return "llmretry.Transport{targets: " + strings.Join(names, ", ") + "}"
}

// GoString is String, for %#v.
func (t *Transport) GoString() string { return t.String() }
