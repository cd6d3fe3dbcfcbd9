package redisstate

import (
	"time"

	"github.com/llmretry/llmretry"
)

// books are a State's budget counts, other than its local budget's. Every
// count this process makes is in exactly one place: pending (not yet in a
// batch), a batch not yet acknowledged, or the fleet's totals as Redis
// acknowledged them. So a decision that adds pending, the unacknowledged
// batches and the fleet's totals counts each once, however the syncs are
// timed: while one is in flight, after its reply is lost, after a late
// one. s.mu guards them.
type books struct {
	pending map[int64]*llmretry.BudgetCounts // by time slice
	// unacked are the batches cut from pending and sent, or to be sent,
	// that Redis has not acknowledged, in the order of their numbers.
	unacked []batch
	lastSeq int64                 // of the last batch cut
	fleet   llmretry.BudgetCounts // the fleet's window totals at the last sync
	procs   int64                 // processes that synced within the window
	// lastSync is when the last good sync was sent.
	lastSync time.Time
}

// batch is counts published together, under one number: the sync script
// applies a batch whose number is above the last it applied for this
// process, and only such a batch, so a batch sent again is applied once.
type batch struct {
	seq    int64
	counts map[int64]llmretry.BudgetCounts // by time slice
}

// slice is the number of the budget slice that t falls in.
func (s *State) slice(t time.Time) int64 {
	return t.UnixNano() / int64(s.cfg.Budget.Window/budgetBuckets)
}

// count adds d to what is pending in now's slice. s.mu is held.
func (s *State) count(now time.Time, d llmretry.BudgetCounts) {
	sl := s.slice(now)
	c := s.pending[sl]
	if c == nil {
		c = &llmretry.BudgetCounts{}
		s.pending[sl] = c
	}
	addBooks(c, d)
}

// addBooks adds the counts that are published (not the load signal,
// which is each process's own) of d to c.
func addBooks(c *llmretry.BudgetCounts, d llmretry.BudgetCounts) {
	c.Requests += d.Requests
	c.Retries += d.Retries
	c.RetriesOK += d.RetriesOK
	c.RetriesFailed += d.RetriesFailed
	c.RetriesAbandoned += d.RetriesAbandoned
}

// own is what this process counted that the fleet's totals do not hold
// yet, in slices still within the window: pending, and the batches not
// acknowledged. s.mu is held.
func (s *State) own(now time.Time) llmretry.BudgetCounts {
	cur := s.slice(now)
	var sum llmretry.BudgetCounts
	for sl, c := range s.pending {
		if cur-sl < budgetBuckets {
			addBooks(&sum, *c)
		}
	}
	for _, b := range s.unacked {
		for sl, c := range b.counts {
			if cur-sl < budgetBuckets {
				addBooks(&sum, c)
			}
		}
	}
	return sum
}

// OnRequest records a first attempt. It never touches Redis.
func (s *State) OnRequest() {
	s.local.OnRequest()
	now := s.now()
	s.mu.Lock()
	s.count(now, llmretry.BudgetCounts{Requests: 1})
	s.mu.Unlock()
}

// OnAttempt records how an attempt ended. It never touches Redis. The load
// signal (llmretry.BudgetCounts.LoadDriven) is this process's own.
func (s *State) OnAttempt(r llmretry.AttemptResult) {
	s.local.OnAttempt(r)
	if !r.Retry {
		return
	}
	var d llmretry.BudgetCounts
	switch {
	case r.Abandoned:
		d.RetriesAbandoned = 1
	case r.Failed:
		d.RetriesFailed = 1
	default:
		d.RetriesOK = 1
	}
	now := s.now()
	s.mu.Lock()
	s.count(now, d)
	s.mu.Unlock()
}

// AllowRetry spends one retry of the fleet's budget, by llmretry's one
// budget rule (llmretry.RetryAllowed): the fleet's counts at the last sync,
// shared among the processes that synced within the window, plus this
// process's counts since, with its own load signal. When the last good
// sync is older than Stale, it decides on this process's own budget
// instead, which has counted every retry this process was granted, from
// the fleet's books or its own; with one process the two decide alike. It
// never touches Redis.
func (s *State) AllowRetry() bool {
	now := s.now()
	signal := s.local.Counts()
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.lastSync) > s.cfg.Stale {
		if !s.local.AllowRetry() {
			return false
		}
		s.count(now, llmretry.BudgetCounts{Retries: 1})
		return true
	}
	own := s.own(now)
	own.LowSent, own.LowFailed, own.HighSent, own.HighFailed = signal.LowSent, signal.LowFailed, signal.HighSent, signal.HighFailed
	b := llmretry.BudgetBooks{Fleet: s.fleet, Procs: int(s.procs), Own: own}
	if !llmretry.RetryAllowed(b, s.cfg.Budget.Ratio, s.cfg.Budget.Reserve) {
		return false
	}
	s.count(now, llmretry.BudgetCounts{Retries: 1})
	s.local.RecordRetry()
	return true
}

// Counts returns the fleet's counts in the window, as known now (its
// totals at the last sync, and this process's counts since), and this
// process's load signal.
func (s *State) Counts() llmretry.BudgetCounts {
	now := s.now()
	c := s.local.Counts()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.fleet
	addBooks(&b, s.own(now))
	c.Requests, c.Retries, c.RetriesOK, c.RetriesFailed, c.RetriesAbandoned = b.Requests, b.Retries, b.RetriesOK, b.RetriesFailed, b.RetriesAbandoned
	return c
}
