package llmretry

import (
	"math"
	"sync"
	"time"
)

// Budget decides whether a retry may be sent, so that retries never make an
// outage worse, while never refusing a retry that is working. First
// attempts are never blocked or delayed. Transports may share one Budget;
// redisstate shares one across a fleet. Implementations must be safe for
// concurrent use and must not block.
type Budget interface {
	// OnRequest records a first attempt, before it is sent.
	OnRequest()
	// AllowRetry spends one retry, or reports false when the budget is
	// spent.
	AllowRetry() bool
	// OnAttempt records how an attempt ended.
	OnAttempt(AttemptResult)
}

// AttemptResult is how one attempt ended, as a Budget counts it.
type AttemptResult struct {
	// Retry: the attempt was a retry, not a first attempt.
	Retry bool
	// Failed: it failed in a way worth retrying, the failures that outages
	// and overloads are made of. A success is not, nor is a failure that no
	// retry fixes (a 400, a used-up quota).
	Failed bool
	// Load is how many attempts the Transport had in flight when this one
	// was sent, itself included.
	Load int
	// Abandoned: the retry was granted but never sent (its wait was
	// cancelled).
	Abandoned bool
}

// BudgetConfig sets a RatioBudget. Zero fields take their defaults.
type BudgetConfig struct {
	// Ratio is the share of requests that failing retries may add over
	// Window: 0.1 by default, as the Google SRE book and Finagle suggest.
	Ratio float64
	// Reserve is how many retries are allowed in any Window whatever the
	// ratio says, so a quiet client can still retry: 10 by default.
	Reserve int
	// Window is how far back requests and retries count: 10 s by default.
	// It is counted in 10 slices.
	Window time.Duration
	// Clock is the time source, for tests.
	Clock Clock
}

const (
	defaultBudgetRatio   = 0.1
	defaultBudgetReserve = 10
	defaultBudgetWindow  = 10 * time.Second
	budgetBuckets        = 10
)

func (c BudgetConfig) withDefaults() BudgetConfig {
	if c.Ratio <= 0 || c.Ratio != c.Ratio {
		c.Ratio = defaultBudgetRatio
	}
	if c.Reserve < 0 {
		c.Reserve = 0
	} else if c.Reserve == 0 {
		c.Reserve = defaultBudgetReserve
	}
	if c.Window <= 0 {
		c.Window = defaultBudgetWindow
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	return c
}

// RatioBudget lets retries through while they pay for themselves: over the
// last Window, the retries that failed may outnumber the ones that
// succeeded by max(Reserve, Ratio x requests). A retry that works earns
// back one that did not, so the budget does not bind while retries are
// succeeding (at 50% independent failures every retry is still sent), and
// a full outage, where none succeeds, adds at most a tenth to the load.
//
// One case is told apart: when the Transport's failures rise with its own
// load (attempts sent while more of them were in flight fail clearly more
// often), the upstream is at its capacity and a retry that succeeds mostly
// takes the place of a first attempt. A success then no longer pays for a
// failure: the retries that failed are held to max(Reserve, Ratio x
// requests).
type RatioBudget struct {
	cfg BudgetConfig
	mu  sync.Mutex
	w   window
	// meanLoad is a running mean of the load attempts are sent at; an
	// attempt above it counts as sent at high load.
	meanLoad float64
}

// NewRatioBudget returns a RatioBudget; the zero BudgetConfig gives 10%
// over 10 s with a reserve of 10 retries.
func NewRatioBudget(cfg BudgetConfig) *RatioBudget {
	cfg = cfg.withDefaults()
	return &RatioBudget{cfg: cfg, w: window{span: cfg.Window}}
}

// OnRequest records a first attempt.
func (b *RatioBudget) OnRequest() {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	b.w.add(now, BudgetCounts{Requests: 1})
	b.mu.Unlock()
}

// AllowRetry spends one retry if the budget has one.
func (b *RatioBudget) AllowRetry() bool {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !RetryAllowed(b.w.sum(now), b.cfg.Ratio, b.cfg.Reserve) {
		return false
	}
	b.w.add(now, BudgetCounts{Retries: 1})
	return true
}

// RecordRetry counts a retry that was granted elsewhere (by a fleet's
// shared budget) as if this budget had granted it, so that a fall back on
// this budget starts from what was really spent.
func (b *RatioBudget) RecordRetry() {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	b.w.add(now, BudgetCounts{Retries: 1})
	b.mu.Unlock()
}

// OnAttempt records how an attempt ended.
func (b *RatioBudget) OnAttempt(r AttemptResult) {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.w.add(now, b.attemptCounts(r))
}

// attemptCounts turns an attempt's result into window counts, and moves
// the running mean of the load. b.mu is held.
func (b *RatioBudget) attemptCounts(r AttemptResult) BudgetCounts {
	var c BudgetCounts
	switch {
	case r.Retry && r.Failed:
		c.RetriesFailed = 1
	case r.Retry:
		c.RetriesOK = 1
	}
	load := float64(r.Load)
	if b.meanLoad == 0 {
		b.meanLoad = load
	}
	high := load > b.meanLoad
	b.meanLoad += (load - b.meanLoad) / 64
	switch {
	case high && r.Failed:
		c.HighSent, c.HighFailed = 1, 1
	case high:
		c.HighSent = 1
	case r.Failed:
		c.LowSent, c.LowFailed = 1, 1
	default:
		c.LowSent = 1
	}
	return c
}

// Config returns the budget's settings, defaults filled in.
func (b *RatioBudget) Config() BudgetConfig { return b.cfg }

// Counts returns the counts of the current window.
func (b *RatioBudget) Counts() BudgetCounts {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.sum(now)
}

// BudgetCounts are what a budget counts over its window.
type BudgetCounts struct {
	// Requests are first attempts; Retries, the retries granted;
	// RetriesOK and RetriesFailed, those that have ended, without and with
	// a retryable failure. The rest are still under way.
	Requests, Retries, RetriesOK, RetriesFailed int64
	// The load signal: attempts sent at a load above the running mean
	// (High) or not (Low), and how many of each failed.
	LowSent, LowFailed, HighSent, HighFailed int64
}

func (c *BudgetCounts) add(d BudgetCounts) {
	c.Requests += d.Requests
	c.Retries += d.Retries
	c.RetriesOK += d.RetriesOK
	c.RetriesFailed += d.RetriesFailed
	c.LowSent += d.LowSent
	c.LowFailed += d.LowFailed
	c.HighSent += d.HighSent
	c.HighFailed += d.HighFailed
}

// Thresholds of the load signal: enough attempts on each side, a clear
// difference in failure rates, and one that chance would hardly make.
const (
	loadMinSent = 20
	loadMinGap  = 0.2
	loadMinZ    = 3
)

// LoadDriven reports whether failures rise with the sender's own load:
// attempts sent at high load failed clearly more often than those sent at
// low load (by at least 20 points, at three standard errors). That is an
// upstream at its capacity, where retries only take turns from first
// attempts. Independent failures (a provider's 529 storm, a flaky network)
// fail at the same rate whatever the load, and so does a full outage.
func (c BudgetCounts) LoadDriven() bool {
	if c.LowSent < loadMinSent || c.HighSent < loadMinSent {
		return false
	}
	lo := float64(c.LowFailed) / float64(c.LowSent)
	hi := float64(c.HighFailed) / float64(c.HighSent)
	p := float64(c.LowFailed+c.HighFailed) / float64(c.LowSent+c.HighSent)
	se := math.Sqrt(p * (1 - p) * (1/float64(c.LowSent) + 1/float64(c.HighSent)))
	return hi-lo >= loadMinGap && (se == 0 || (hi-lo)/se >= loadMinZ)
}

// RetryAllowed is the budget rule, shared with the fleet budget. With
// limit = max(reserve, ratio x requests): one more retry is allowed while
// the retries that failed, less those that worked, stay within limit.
//
// A retry not yet ended (waiting out its backoff, or in flight) counts by
// what it is expected to cost: with attempts failing at rate q now, it
// fails with q and pays back with 1-q, so 2q-1, and never less than a
// tenth. So retries granted at the start of a run of failures, before any
// has ended, neither lock the budget (at 50% failures they cost nothing on
// balance) nor escape it (in an outage each costs one). The retry asked
// for is counted the same way.
//
// When the counts are LoadDriven, a success no longer pays for a failure:
// the failed retries (and those under way, at the rate attempts fail) stay
// within limit.
func RetryAllowed(c BudgetCounts, ratio float64, reserve int) bool {
	limit := max(float64(reserve), ratio*float64(c.Requests))
	q := 1.0
	if sent := c.LowSent + c.HighSent; sent > 0 {
		q = float64(c.LowFailed+c.HighFailed) / float64(sent)
	}
	underWay := float64(max(c.Retries-c.RetriesOK-c.RetriesFailed, 0))
	if c.LoadDriven() {
		// A success no longer pays for a failure: failed retries, and
		// those under way at the rate they fail, stay within limit.
		return float64(c.RetriesFailed)+q*underWay+q <= limit
	}
	cost := max(2*q-1, 0.1) // of a retry not yet ended
	spent := float64(c.RetriesFailed-c.RetriesOK) + cost*underWay
	return spent+cost <= limit
}

// window counts in budgetBuckets slices of span.
type window struct {
	span   time.Duration
	slot   [budgetBuckets]int64 // the slice number each bucket holds
	counts [budgetBuckets]BudgetCounts
}

func (w *window) slice(now time.Time) int64 {
	// At least 1 ns a slice: a window under budgetBuckets ns must not
	// divide by zero.
	return now.UnixNano() / int64(max(w.span/budgetBuckets, 1))
}

func (w *window) add(now time.Time, d BudgetCounts) {
	s := w.slice(now)
	i := s % budgetBuckets
	if i < 0 {
		i += budgetBuckets
	}
	if w.slot[i] != s {
		w.slot[i], w.counts[i] = s, BudgetCounts{}
	}
	w.counts[i].add(d)
}

func (w *window) sum(now time.Time) BudgetCounts {
	s := w.slice(now)
	var c BudgetCounts
	for i := range budgetBuckets {
		if d := s - w.slot[i]; d >= 0 && d < budgetBuckets {
			c.add(w.counts[i])
		}
	}
	return c
}
