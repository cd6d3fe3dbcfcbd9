package llmretry

import (
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"
)

// Option configures a Transport.
type Option func(*config)

// config is a Transport's settings, fixed when it is made.
type config struct {
	policy            Policy
	logger            *slog.Logger
	onRetry           func(RetryEvent)
	onStop            func(StopEvent)
	onHealth          func(HealthEvent)
	clock             Clock
	rand              func() float64
	attemptHeader     string
	idempotencyHeader string
	providerRules     bool
	firstEventPeek    bool
	firstEventTimeout time.Duration
	firstEventHold    time.Duration
	idleTimeout       time.Duration
	budget            Budget
	budgetSet         bool
	store             HealthStore
	storeSet          bool
	classifier        Classifier
	continuation      *Continuation
	onContinuation    func(ContinuationEvent)
}

// fillClassifier sets the built-in rules, as the options chose them, unless
// WithClassifier set the decision.
func (c *config) fillClassifier() {
	if c.classifier == nil {
		c.classifier = defaultClassifier(c.providerRules, c.firstEventPeek)
	}
}

func defaultConfig() config {
	return config{
		policy: DefaultPolicy(),
		clock:  realClock{},
		rand:   rand.Float64,

		providerRules:  true,
		firstEventPeek: true,
		firstEventHold: defaultFirstEventHold,
	}
}

// WithPolicy sets the attempts and waits. Zero fields take their defaults.
func WithPolicy(p Policy) Option {
	return func(c *config) { c.policy = p.withDefaults() }
}

// WithLogger logs each retry (Info), each request that retrying gave up on
// (Warn) and each failure that was not retryable (Info) to l. The
// Transport is silent without it. Lines carry the method, host, path,
// attempt, cause and wait, never a header value or a query string.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithOnRetry calls f before each wait, from the goroutine making the
// request. f must not block.
func WithOnRetry(f func(RetryEvent)) Option {
	return func(c *config) { c.onRetry = f }
}

// WithOnStop calls f when a request ends on a failure that was not (or no
// longer) retried: a non-retryable status or error, or a retryable one that
// retrying stopped on (attempts exhausted, budget spent, deadline, a server
// wait above MaxRetryAfter). f must not block.
func WithOnStop(f func(StopEvent)) Option {
	return func(c *config) { c.onStop = f }
}

// WithClock replaces the real clock, for tests.
func WithClock(clk Clock) Option {
	return func(c *config) {
		if clk != nil {
			c.clock = clk
		}
	}
}

// WithRand replaces the random source of jitter, for tests. f must return
// values in [0, 1) and be safe for concurrent use.
func WithRand(f func() float64) Option {
	return func(c *config) {
		if f != nil {
			c.rand = f
		}
	}
}

// WithAttemptHeader sets header name on every attempt to the attempt's
// number: 1 on the first, 2 on the first retry. Off by default.
func WithAttemptHeader(name string) Option {
	return func(c *config) { c.attemptHeader = http.CanonicalHeaderKey(name) }
}

// WithIdempotencyKey sets header name (such as "Idempotency-Key") to one
// random value shared by every attempt of a logical request, so that a
// server that honours it processes a retried POST once. A value the caller
// already set is kept. Off by default: most LLM APIs ignore it. net/http
// itself also retries a request with an Idempotency-Key header on a stale
// pooled connection.
func WithIdempotencyKey(name string) Option {
	return func(c *config) { c.idempotencyHeader = http.CanonicalHeaderKey(name) }
}

// WithoutProviderRules turns off the provider rules (ProviderErrors): quota errors that
// waiting will not clear, and the waits written in error bodies and
// rate-limit headers. Only the status code, x-should-retry and the
// Retry-After family then decide.
func WithoutProviderRules() Option {
	return func(c *config) { c.providerRules = false }
}

// WithoutFirstEventPeek hands text/event-stream responses over as soon as
// their headers arrive, without holding them until their first output. An
// error sent before the first output, or a cut there, is then not retried.
func WithoutFirstEventPeek() Option {
	return func(c *config) { c.firstEventPeek = false }
}

// WithFirstEventTimeout fails an attempt whose stream sends no event at all
// within d of its response headers, and retries it: nothing has reached the
// caller yet. Comment lines (keep-alives) do not count as an event; any
// event does, one that carries no output included (Anthropic's
// message_start), so a reasoning model that opens its stream at once and
// then thinks is never failed by it: it is handed over when the hold
// passes. Off by default. It applies only if d is no longer than the hold
// (see WithFirstEventHold), which otherwise hands the stream over first.
func WithFirstEventTimeout(d time.Duration) Option {
	return func(c *config) { c.firstEventTimeout = d }
}

// WithFirstEventHold sets how long a stream is held waiting for its first
// output: 10 s by default, counted from its response headers. The events
// before it that carry nothing (message_start, an empty
// content_block_start, pings, a role-only chunk, response.created) are held
// with it, so an error or a cut among them can be retried. When the hold
// passes, the stream is handed over as it is (opening events and
// keep-alive comments included) and, as with any stream in the caller's
// hands, never retried. A longer hold lets a slow first output still be
// checked; a shorter one passes opening events on sooner. 0 or less holds
// until the first output, the 64 KiB bound or the context ends it.
func WithFirstEventHold(d time.Duration) Option {
	return func(c *config) { c.firstEventHold = d }
}

// WithIdleTimeout makes the returned body's Read fail with an
// *IdleTimeoutError, and closes the connection, when no bytes arrive for d
// while the caller waits in Read. It is never retried: part of the reply
// may already have been used. (With WithStreamContinuation, a stream that
// goes idle after its first output is continued instead, where it may
// be.) Off by default.
func WithIdleTimeout(d time.Duration) Option {
	return func(c *config) { c.idleTimeout = d }
}

// WithBudget sets the retry budget; Transports given the same Budget
// share it. nil turns the budget off. By default each Transport has its
// own NewRatioBudget(BudgetConfig{}): 10% of requests over 10 s, with a
// reserve of 10 retries.
func WithBudget(b Budget) Option {
	return func(c *config) { c.budget, c.budgetSet = b, true }
}

// WithHealthStore sets where the marks that other requests should know of
// are kept: cooldowns (a 429's wait that binds the key and model), and for
// a failover Transport the keys told to wait, keys out of quota and
// targets ejected. Transports given the same store share them; redisstate
// shares them across a fleet. nil turns cooldowns off, and keeps a
// failover Transport's health in the Transport alone. By default each
// Transport has its own LocalHealthStore.
func WithHealthStore(s HealthStore) Option {
	return func(c *config) { c.store, c.storeSet = s, true }
}

// RetryEvent describes one retry, before its wait.
type RetryEvent struct {
	Method string
	// URL has no query string and no user info.
	URL string
	// Attempt is the number of the attempt that failed (1 for the first).
	// It is 0 for the wait before the first attempt that a cooldown
	// imposes (Source is then SourceCooldown).
	Attempt int
	// StatusCode is the failed attempt's status, 0 if no response came.
	StatusCode int
	// Err is the failed attempt's error, nil if a response came.
	Err error
	// Failure is the kind of failure; Cause says what went wrong in a few
	// words ("status 503", "connection reset", "in-stream error:
	// overloaded_error").
	Failure Failure
	Cause   string
	// Wait is the wait about to start, and Source where it came from.
	Wait   time.Duration
	Source WaitSource
	// Target and Key name where the failed attempt went, and NextTarget
	// and NextKey where the next one goes, for a failover Transport (see
	// NewFailoverTransport); a move to another key or target has no Wait.
	// Keys are named by their IDs. All are empty without failover.
	Target, Key         string
	NextTarget, NextKey string
}

// StopEvent describes a request that ended on a failure without (further)
// retries.
type StopEvent struct {
	Method     string
	URL        string
	Attempts   int
	StatusCode int
	Err        error
	Failure    Failure
	Cause      string
	// Reason is why retrying stopped.
	Reason Reason
	// Wait is the refused wait, for ReasonDeadline and
	// ReasonRetryAfterTooLong.
	Wait time.Duration
	// Target and Key name where the last attempt went, for a failover
	// Transport; empty without failover.
	Target, Key string
}
