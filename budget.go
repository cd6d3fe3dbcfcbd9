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
	// Abandoned: the retry was granted but never sent: its wait was
	// cancelled. It no longer counts as under way, and, not having been
	// sent, it says nothing of the load (Failed and Load are ignored). Only
	// a retry (Retry set) can be abandoned.
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
	if !RetryAllowed(BudgetBooks{Own: b.w.sum(now)}, b.cfg.Ratio, b.cfg.Reserve) {
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
	if r.Abandoned {
		// Never sent: it ends its time under way, and is no sample of
		// the load.
		if r.Retry {
			c.RetriesAbandoned = 1
		}
		return c
	}
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
	// RetriesOK and RetriesFailed, those that were sent and have ended,
	// without and with a retryable failure; RetriesAbandoned, those whose
	// wait was cancelled, never sent. The rest are still under way.
	Requests, Retries, RetriesOK, RetriesFailed, RetriesAbandoned int64
	// The load signal: attempts sent at a load above the running mean
	// (High) or not (Low), and how many of each failed.
	LowSent, LowFailed, HighSent, HighFailed int64
}

func (c *BudgetCounts) add(d BudgetCounts) {
	c.Requests += d.Requests
	c.Retries += d.Retries
	c.RetriesOK += d.RetriesOK
	c.RetriesFailed += d.RetriesFailed
	c.RetriesAbandoned += d.RetriesAbandoned
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

// BudgetBooks are the counts the budget rule decides on. A local budget
// keeps all its counts in Own; a fleet that shares a budget (redisstate)
// keeps, in each process, the fleet's counts as of its last sync and its
// own counts since.
type BudgetBooks struct {
	// Fleet is the fleet's counts over the window at the last sync, this
	// process's published ones among them. Zero with no fleet.
	Fleet BudgetCounts
	// Procs is how many processes spend from Fleet between syncs, this one
	// included; 0 counts as 1.
	Procs int
	// Own is what this process counted since that sync, and not yet in
	// Fleet; with no fleet, the whole window.
	Own BudgetCounts
}

// RetryAllowed is the budget rule, one for a local budget and a fleet's.
// With T = Fleet + Own, and for any counts c:
//
//	limit(c)    = max(reserve, ratio × c.Requests)
//	underWay(c) = max(c.Retries − c.RetriesOK − c.RetriesFailed − c.RetriesAbandoned, 0)
//	spent(c)    = c.RetriesFailed − c.RetriesOK + cost × underWay(c)
//	headroom(c) = limit(c) − spent(c)
//
// one more retry is allowed while
//
//	share + (headroom(T) − headroom(Fleet)) ≥ cost
//	share = headroom(Fleet)/Procs, or headroom(Fleet) when it is below 0
//
// that is, this process's share of the fleet's headroom at the last sync,
// plus what its own counts since have added to that headroom or taken
// from it. Between syncs every process spends from the same snapshot,
// unseen by the others, so each takes only its share of it. A deficit is
// not shared out: while the fleet is past its limit, each process must
// see the whole of it paid before it spends again. The limit is not linear
// in the requests (the reserve is a floor, not an addition), so a
// process's requests since the sync raise it by limit(T) − limit(Fleet),
// not by a ratio of themselves; and as the limit is convex, the rises the
// processes count each on their own add up to no more than the rise that
// all their requests make together. So the fleet as a whole stays within
// the rule applied to all its counts.
//
// A local budget is the case of no fleet (Fleet zero, Procs 1), where the
// rule is headroom(Own) ≥ cost; a fleet of one process decides exactly as
// a local budget given the same counts, so neither book disagrees with the
// other when one takes over.
//
// In words: one more retry is allowed while the retries that failed, less
// those that worked, stay within the limit. A retry not yet ended (waiting
// out its backoff, or in flight) counts by what it is expected to cost:
// with attempts failing at rate q now, it fails with q and pays back with
// 1−q, so cost = max(2q−1, 0.1). So retries granted at the start of a run
// of failures, before any has ended, neither lock the budget (at 50%
// failures they cost next to nothing on balance) nor escape it (in an
// outage each costs one). The retry asked for is counted the same way. A
// retry whose wait was cancelled (RetriesAbandoned) was never sent, and
// costs nothing.
//
// When the counts are LoadDriven, a success no longer pays for a failure:
// spent(c) = c.RetriesFailed + q × underWay(c), and cost = q.
//
// q and LoadDriven are read from the load fields of T (LowSent and the
// rest); a fleet that keeps the load signal per process puts the
// process's own in Own. With no attempt sent yet, q is 1.
func RetryAllowed(b BudgetBooks, ratio float64, reserve int) bool {
	t := b.Fleet
	t.add(b.Own)
	q := 1.0
	if sent := t.LowSent + t.HighSent; sent > 0 {
		q = float64(t.LowFailed+t.HighFailed) / float64(sent)
	}
	loadDriven := t.LoadDriven()
	cost := max(2*q-1, 0.1) // of a retry not yet ended
	if loadDriven {
		cost = q
	}
	headroom := func(c BudgetCounts) float64 {
		limit := max(float64(reserve), ratio*float64(c.Requests))
		underWay := float64(max(c.Retries-c.RetriesOK-c.RetriesFailed-c.RetriesAbandoned, 0))
		if loadDriven {
			// A success no longer pays for a failure.
			return limit - float64(c.RetriesFailed) - q*underWay
		}
		return limit - float64(c.RetriesFailed-c.RetriesOK) - cost*underWay
	}
	h := headroom(t)
	if fleet := headroom(b.Fleet); fleet > 0 {
		// share + h − headroom(Fleet), written so that with one process
		// it is h exactly: a fleet of one decides as a local budget, to
		// the last bit.
		h -= (1 - 1/float64(max(b.Procs, 1))) * fleet
	}
	return h >= cost
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
