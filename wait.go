package llmretry

import (
	"context"
	"time"
)

// Clock is the source of time for every wait and every time limit: the
// waits between attempts, cooldowns, the stream hold, the first-event and
// idle timeouts, and the bounds on reading error bodies. The default is the
// real clock; tests inject their own (see llmretrytest.Clock) or run under
// testing/synctest, so that a 60 s Retry-After is proven without taking
// 60 s.
type Clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer. The Transport sleeps on it.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
	// AfterFunc calls f in its own goroutine once d has passed, unless
	// stop is called first (stop then reports true). The Transport bounds
	// reads with it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// passesDeadline reports whether a wait of d starting at now would end
// after ctx's deadline. Such a wait is refused up front: sleeping and then
// failing helps no one.
func passesDeadline(ctx context.Context, now time.Time, d time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return ok && now.Add(d).After(deadline)
}

// sleep waits d on clock, returning early with ctx's error if ctx is done
// first. It blocks only its caller.
func sleep(ctx context.Context, clock Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	c, stop := clock.NewTimer(d)
	defer stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c:
		return nil
	}
}
