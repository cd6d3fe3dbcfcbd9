// Package llmretrytest helps test code that uses llmretry: a Clock on
// which every wait ends at once, so a test proves a 60 s Retry-After was
// honoured without taking 60 s.
package llmretrytest

import (
	"sort"
	"sync"
	"time"
)

// Clock is an llmretry.Clock (pass it with llmretry.WithClock) on which
// time moves only when something waits or Advance is called.
//
// A wait (NewTimer, which the Transport sleeps on) ends at once: it moves
// the clock's time forward by its length and is recorded. A time limit
// (AfterFunc: the stream hold, the first-event and idle timeouts, the
// bounds on reading error bodies) fires when the clock's time reaches it,
// by a wait or by Advance, and never on its own: a test drives it. It is
// safe for concurrent use.
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	waits  []time.Duration
	limits []*limit
	seq    int
	// set is closed, and replaced, whenever a time limit is set.
	set chan struct{}
}

// limit is a pending AfterFunc.
type limit struct {
	at  time.Time
	seq int // ties fire in the order they were set
	f   func()
}

// NewClock returns a Clock whose time starts at start.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start, set: make(chan struct{})}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer records a wait of d, moves the time forward by d (firing the
// time limits it passes) and returns a channel that has already fired.
func (c *Clock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	now := c.moveLocked(d)
	due := c.dueLocked()
	c.mu.Unlock()
	run(due)
	ch := make(chan time.Time, 1)
	ch <- now
	return ch, func() bool { return false }
}

// AfterFunc calls f, in the goroutine that moves the time, once the
// clock's time reaches d from now. stop cancels it and reports whether it
// had not fired yet.
func (c *Clock) AfterFunc(d time.Duration, f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	l := &limit{at: c.now.Add(d), seq: c.seq, f: f}
	c.limits = append(c.limits, l)
	close(c.set)
	c.set = make(chan struct{})
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.limits {
			if x == l {
				c.limits = append(c.limits[:i], c.limits[i+1:]...)
				return true
			}
		}
		return false
	}
}

// Advance moves the time forward by d without recording a wait, and fires
// the time limits it reaches before returning.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.moveLocked(d)
	due := c.dueLocked()
	c.mu.Unlock()
	run(due)
}

// Pending returns how many time limits are set and have not fired.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.limits)
}

// AwaitLimits blocks until at least n time limits are pending: a test
// calls it to know that the Transport is waiting on the clock (holding a
// stream, say) before it calls Advance.
func (c *Clock) AwaitLimits(n int) {
	for {
		c.mu.Lock()
		pending, set := len(c.limits), c.set
		c.mu.Unlock()
		if pending >= n {
			return
		}
		<-set
	}
}

// Waits returns the waits so far, in order.
func (c *Clock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

func (c *Clock) moveLocked(d time.Duration) time.Time {
	if d > 0 {
		c.now = c.now.Add(d)
	}
	return c.now
}

// dueLocked takes the limits the time has reached off the list, earliest
// first.
func (c *Clock) dueLocked() []*limit {
	var due []*limit
	kept := c.limits[:0]
	for _, l := range c.limits {
		if !l.at.After(c.now) {
			due = append(due, l)
		} else {
			kept = append(kept, l)
		}
	}
	c.limits = kept
	sort.Slice(due, func(i, j int) bool {
		if !due[i].at.Equal(due[j].at) {
			return due[i].at.Before(due[j].at)
		}
		return due[i].seq < due[j].seq
	})
	return due
}

func run(due []*limit) {
	for _, l := range due {
		l.f()
	}
}
