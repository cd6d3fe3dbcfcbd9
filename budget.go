package llmretry

import (
	"sync"
	"time"
)

// Budget decides whether a retry may be sent, so that retries stay a small
// share of the traffic however badly the upstream fails: with a budget, a
// full outage costs about 1.1 calls per request instead of 3. First
// attempts are never blocked or delayed. Transports may share one Budget;
// redisstate shares one across a fleet. Implementations must be safe for
// concurrent use and must not block.
type Budget interface {
	// OnRequest records a first attempt.
	OnRequest()
	// AllowRetry spends one retry, or reports false when the budget is
	// spent.
	AllowRetry() bool
}

// BudgetConfig sets a RatioBudget. Zero fields take their defaults.
type BudgetConfig struct {
	// Ratio is the share of requests that may be retried over Window:
	// 0.1 by default, as the Google SRE book and Finagle suggest.
	Ratio float64
	// Reserve is how many retries are allowed in any Window whatever the
	// ratio says, so a quiet client can still retry: 10 by default.
	Reserve int
	// Window is how far back requests and retries count: 10 s by default.
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

// RatioBudget allows a retry while retries over the last Window stay
// within max(Reserve, Ratio x requests). Unlike a throttle that shuts
// retries off past a failure rate (gRPC's stops near 9%), it keeps letting
// a tenth of the traffic retry, so a 5% blip loses no requests and a full
// outage adds at most a tenth to the load.
type RatioBudget struct {
	cfg BudgetConfig
	mu  sync.Mutex
	w   window
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
	b.w.add(now, 1, 0)
	b.mu.Unlock()
}

// AllowRetry spends one retry if the budget has one.
func (b *RatioBudget) AllowRetry() bool {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	req, ret := b.w.sum(now)
	if !RetryAllowed(req, ret, b.cfg.Ratio, b.cfg.Reserve) {
		return false
	}
	b.w.add(now, 0, 1)
	return true
}

// Config returns the budget's settings, defaults filled in.
func (b *RatioBudget) Config() BudgetConfig { return b.cfg }

// Counts returns the requests and retries counted in the current window.
func (b *RatioBudget) Counts() (requests, retries int64) {
	now := b.cfg.Clock.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.sum(now)
}

// RetryAllowed is the budget rule, shared with the fleet budget: one more
// retry is allowed while retries stay within max(reserve, ratio x
// requests).
func RetryAllowed(requests, retries int64, ratio float64, reserve int) bool {
	limit := max(float64(reserve), ratio*float64(requests))
	return float64(retries+1) <= limit
}

// window counts requests and retries in budgetBuckets slices of span.
type window struct {
	span    time.Duration
	slot    [budgetBuckets]int64 // the slice number each bucket holds
	req     [budgetBuckets]int64
	retries [budgetBuckets]int64
}

func (w *window) slice(now time.Time) int64 {
	return now.UnixNano() / int64(w.span/budgetBuckets)
}

func (w *window) add(now time.Time, req, ret int64) {
	s := w.slice(now)
	i := s % budgetBuckets
	if w.slot[i] != s {
		w.slot[i], w.req[i], w.retries[i] = s, 0, 0
	}
	w.req[i] += req
	w.retries[i] += ret
}

func (w *window) sum(now time.Time) (req, ret int64) {
	s := w.slice(now)
	for i := range budgetBuckets {
		if s-w.slot[i] < budgetBuckets {
			req += w.req[i]
			ret += w.retries[i]
		}
	}
	return req, ret
}
