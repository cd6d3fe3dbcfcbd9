package llmretry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Transport is an http.RoundTripper that retries LLM API calls that fail
// transiently, and only before the response is handed over: once the
// caller holds a response, nothing is ever sent again for it, so a stream
// that breaks mid-reply is never replayed.
//
// A Transport is safe for concurrent use. Make one with NewTransport.
type Transport struct {
	base http.RoundTripper
	cfg  config
	// inflight counts attempts sent and not yet answered, the load the
	// budget's load signal reads.
	inflight atomic.Int64
	// streaks counts 429s in a row per upstream, for cooldowns.
	streaks limitStreaks
	// pool is the failover targets, for a Transport made by
	// NewFailoverTransport; nil otherwise.
	pool *pool
}

// NewTransport returns a Transport that sends each attempt through base
// (http.DefaultTransport if nil). Put signing and auth in base, so that
// every attempt is signed afresh.
func NewTransport(base http.RoundTripper, opts ...Option) *Transport {
	if base == nil {
		base = http.DefaultTransport
	}
	t := &Transport{base: base, cfg: defaultConfig()}
	for _, o := range opts {
		if o != nil {
			o(&t.cfg)
		}
	}
	if !t.cfg.budgetSet {
		t.cfg.budget = NewRatioBudget(BudgetConfig{Clock: t.cfg.clock})
	}
	if !t.cfg.cooldownsSet {
		t.cfg.cooldowns = NewLocalCooldowns()
	}
	t.cfg.fillClassifier()
	return t
}

// RoundTrip sends req, retrying as the Policy allows. It returns the last
// response whenever it has one, even a failed one, with its body intact;
// it returns an *Error only when it has none.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.do(req, t.base.RoundTrip)
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
	t := &Transport{cfg: defaultConfig()}
	t.cfg.policy = p.withDefaults()
	t.cfg.fillClassifier()
	return t.do(req, client.Do)
}

// sendFunc sends one attempt.
type sendFunc func(*http.Request) (*http.Response, error)

// do is the attempt loop that RoundTrip and Do share: send, decide, then
// hand over, or wait (or, with failover, move) and send again.
func (t *Transport) do(req *http.Request, send sendFunc) (*http.Response, error) {
	if err := validateRequest(req); err != nil {
		closeBody(req)
		return nil, t.giveUp(req, nil, 0, verdict{reason: ReasonInvalidRequest}, err, nil)
	}
	ctx := req.Context()
	canReplay := replayable(req)
	idemKey := t.idempotencyKey(req)
	var j *journey // where a failover Transport sends each attempt; nil without
	if t.pool != nil {
		var err error
		if j, err = t.startJourney(req); err != nil {
			closeBody(req)
			return nil, err
		}
	} else {
		if err := t.awaitCooldown(req); err != nil {
			closeBody(req)
			return nil, err
		}
		if t.cfg.budget != nil {
			t.cfg.budget.OnRequest()
		}
	}

	for attempt := 1; ; attempt++ {
		r, tracked, err := t.attemptRequest(req, attempt, idemKey, j)
		if err != nil {
			t.released(j)
			return nil, t.giveUp(req, nil, attempt-1, verdict{reason: ReasonBodyNotReplayable}, err, j)
		}
		budget, inflight := t.budgetAt(j)
		load := inflight.Add(1)
		resp, err := send(r)
		inflight.Add(-1)
		retry := attempt > 1 // a retry in the eyes of the budget: of this target, with failover
		if j != nil {
			j.onTarget++
			retry = j.onTarget > 1
		}
		if err != nil {
			resp = nil // a RoundTripper returns no response with an error
			err = scrubError(err)
			if ctx.Err() != nil {
				t.released(j)
				return nil, t.giveUp(req, nil, attempt, verdict{reason: ReasonContextDone}, contextError(ctx, err), j)
			}
			if bodyErr := tracked.readErr(); bodyErr != nil {
				// The caller's own body failed: theirs to report, never retried.
				t.released(j)
				v := verdict{failure: FailureTransport, cause: "request body read failed", reason: ReasonNotRetryable}
				return nil, t.giveUp(req, nil, attempt, v, fmt.Errorf("%w: %w", errRequestBody, scrubError(bodyErr)), j)
			}
		}
		v := t.decide(Attempt{Request: r, Response: resp, Err: err, Number: attempt, Now: t.cfg.clock.Now(), t: t})
		if budget != nil {
			budget.OnAttempt(AttemptResult{Retry: retry, Failed: v.retry, Load: int(load)})
		}
		if resp != nil {
			if broken := brokenStream(resp); broken != nil {
				resp, err = nil, broken // closed: it broke before the caller could have it
				if ctx.Err() != nil {
					t.released(j)
					return nil, t.giveUp(req, nil, attempt, verdict{reason: ReasonContextDone}, contextError(ctx, err), j)
				}
				if !v.retry {
					v = verdict{failure: FailureStream, cause: streamCause(broken), reason: ReasonNotRetryable}
				}
			}
		}
		moveOn := v.retry
		if j != nil {
			t.record(req, j, resp, v)
			fault, _ := keyFault(resp, v)
			moveOn = moveOn || fault
		}
		if !moveOn {
			if v.reason == 0 { // success, or a response that is not a failure
				if j == nil {
					t.streaks.succeeded(req)
				}
				return t.handOver(resp, j), nil
			}
			return t.handOver(resp, j), t.giveUp(req, resp, attempt, v, err, j)
		}

		from := j.here()
		wait, src, stop := t.next(ctx, req, resp, j, attempt, canReplay, v)
		if stop != 0 {
			if v.retry { // a key fault keeps its own reason
				v.reason = stop
				if stop == ReasonDeadline || stop == ReasonRetryAfterTooLong {
					v.wait = wait
				}
			}
			return t.handOver(resp, j), t.giveUp(req, resp, attempt, v, err, j)
		}
		t.retrying(req, resp, attempt, v, err, wait, src, j, from)
		discard(resp, t.cfg.clock)
		if err := sleep(ctx, t.cfg.clock, wait); err != nil {
			return nil, t.giveUp(req, nil, attempt, verdict{reason: ReasonContextDone}, err, j)
		}
	}
}

// next decides what follows a failed attempt: the same place again after
// wait, or with failover another key or target at once (src is then
// SourceFailover, and j says where), or a stop.
func (t *Transport) next(ctx context.Context, req *http.Request, resp *http.Response, j *journey, attempt int, canReplay bool, v verdict) (wait time.Duration, src WaitSource, stop Reason) {
	if j == nil {
		if v.waitOK && resp != nil && resp.StatusCode == http.StatusTooManyRequests {
			t.rateLimited(req, resp, v.wait)
		}
		return t.nextWait(ctx, attempt, canReplay, v, t.cfg.budget)
	}
	wait, src, stop, moved := t.failoverNext(ctx, j, attempt, canReplay, v)
	if moved {
		src = SourceFailover
	}
	return wait, src, stop
}

// closeBody closes the caller's request body, when nothing will send it.
func closeBody(req *http.Request) {
	if req != nil && req.Body != nil {
		_ = req.Body.Close()
	}
}

// budgetAt is the budget an attempt counts in, and the in-flight count
// that is its load: the Transport's, or with failover the target's.
func (t *Transport) budgetAt(j *journey) (Budget, *atomic.Int64) {
	if j == nil {
		return t.cfg.budget, &t.inflight
	}
	ts := t.pool.targets[j.at.target]
	return ts.budget, &ts.inflight
}

// released gives back a probe of a target that ended on neither a success
// nor a failure of the target.
func (t *Transport) released(j *journey) {
	if j != nil && j.at.probe {
		t.pool.targets[j.at.target].released()
		j.at.probe = false
	}
}

// hasBody reports whether a response may carry a body at all: not the
// answer to a HEAD, not a 204. (A 200 stream that is empty is a failure,
// and is retried.)
func hasBody(resp *http.Response) bool {
	return resp.StatusCode != http.StatusNoContent &&
		(resp.Request == nil || resp.Request.Method != http.MethodHead)
}

// handOver prepares a response for the caller: from here on it is theirs,
// and nothing is sent again for it. With failover, it names the target
// that sent it.
func (t *Transport) handOver(resp *http.Response, j *journey) *http.Response {
	if resp == nil {
		return nil
	}
	if t.cfg.idleTimeout > 0 && isBodyToRead(resp) {
		resp.Body = newIdleBody(resp.Body, t.cfg.idleTimeout, t.cfg.clock)
	}
	if j != nil {
		if resp.Header == nil {
			resp.Header = make(http.Header)
		}
		resp.Header.Set(TargetHeader, t.pool.targets[j.at.target].Name)
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

// nextWait decides whether a retryable failure after attempt is retried,
// and after how long. stop is non-zero when it is not.
func (t *Transport) nextWait(ctx context.Context, attempt int, canReplay bool, v verdict, budget Budget) (wait time.Duration, src WaitSource, stop Reason) {
	p := t.cfg.policy
	if attempt >= p.MaxAttempts {
		return 0, 0, ReasonExhausted
	}
	if !canReplay {
		return 0, 0, ReasonBodyNotReplayable
	}
	if v.waitOK {
		if v.wait > p.MaxRetryAfter {
			return v.wait, v.src, ReasonRetryAfterTooLong
		}
		wait, src = v.wait+serverWaitSpread(v.wait, t.cfg.rand()), v.src
	} else {
		wait, src = p.Backoff(attempt, t.cfg.rand()), SourceBackoff
	}
	if passesDeadline(ctx, t.cfg.clock.Now(), wait) {
		return wait, src, ReasonDeadline
	}
	if budget != nil && !budget.AllowRetry() {
		return wait, src, ReasonBudget
	}
	return wait, src, 0
}

// errCooldown is the cause when a cooldown outlasts the request's deadline.
var errCooldown = errors.New("upstream cooling down after a server-requested wait")

// awaitCooldown waits out the rest of a server-requested wait that another
// request to the same upstream (host, key and model) received, before the
// first attempt. Requests held by one cooldown are released spread out, not
// in the same instant. It fails at once when the cooldown outlasts the
// request's deadline.
func (t *Transport) awaitCooldown(req *http.Request) error {
	cd := t.cfg.cooldowns
	if cd == nil {
		return nil
	}
	now := t.cfg.clock.Now()
	if !cd.Active(now) {
		return nil
	}
	wait := cd.Until(upstreamOf(req)).Sub(now)
	if wait <= 0 {
		return nil
	}
	return t.hold(req, wait)
}

// hold waits out a cooldown of wait before a request's first attempt,
// spread so that the requests it holds are not released at once. It fails
// at once when the wait would outlast the request's deadline.
func (t *Transport) hold(req *http.Request, wait time.Duration) error {
	wait += cooldownSpread(wait, t.cfg.rand())
	ctx := req.Context()
	v := verdict{cause: "cooldown", reason: ReasonDeadline, wait: wait}
	if passesDeadline(ctx, t.cfg.clock.Now(), wait) {
		return t.giveUp(req, nil, 0, v, errCooldown, nil)
	}
	t.retrying(req, nil, 0, v, nil, wait, SourceCooldown, nil, placement{})
	if err := sleep(ctx, t.cfg.clock, wait); err != nil {
		return t.giveUp(req, nil, 0, verdict{cause: "cooldown", reason: ReasonContextDone}, err, nil)
	}
	return nil
}

// cooldownSpread is how much later than the end of a cooldown a request it
// held is released: up to a tenth of its wait, at least 50 ms and at most
// 1 s of spread, so that the held requests do not all return at once.
func cooldownSpread(wait time.Duration, r float64) time.Duration {
	if r < 0 || r >= 1 || r != r {
		return 0
	}
	return time.Duration(r * float64(min(max(wait/10, 50*time.Millisecond), time.Second)))
}

// rateLimited starts a cooldown for req's upstream after a 429 that asked
// for wait, when the limit is shown to bind beyond this request: the 429
// says a bucket is empty, or it is the second in a row for this key and
// model. A wait above MaxRetryAfter, which ends the request at once, starts
// none: one "Retry-After: 999999" must not freeze every later request.
func (t *Transport) rateLimited(req *http.Request, resp *http.Response, wait time.Duration) {
	if t.cfg.cooldowns == nil || wait > t.cfg.policy.MaxRetryAfter {
		return
	}
	up := upstreamOf(req)
	if t.streaks.hit(up) >= 2 || bucketEmpty(resp.Header) {
		t.cfg.cooldowns.Extend(up, t.cfg.clock.Now(), wait)
	}
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
	if j != nil {
		ev.Target, ev.Key = t.pool.names(from)
		ev.NextTarget, ev.NextKey = t.pool.names(j.at)
	}
	if t.cfg.onRetry != nil {
		t.cfg.onRetry(ev)
	}
	if t.cfg.logger != nil {
		attrs := []slog.Attr{slog.String("method", ev.Method), slog.String("url", ev.URL),
			slog.Int("attempt", attempt), slog.String("cause", ev.Cause),
			slog.Duration("wait", wait), slog.String("source", src.String())}
		if j != nil {
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
	if j != nil {
		ev.Target, ev.Key = t.pool.names(j.at)
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
		if j != nil {
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
	if t.pool == nil {
		return "llmretry.Transport"
	}
	names := make([]string, len(t.pool.targets))
	for i, ts := range t.pool.targets {
		names[i] = ts.Name
	}
	return "llmretry.Transport{targets: " + strings.Join(names, ", ") + "}"
}

// GoString is String, for %#v.
func (t *Transport) GoString() string { return t.String() }
