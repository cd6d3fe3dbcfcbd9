package llmretry

import (
	"context"
	"time"
)

// What follows a failed attempt: one decision, in one place. The next
// attempt goes to the same place after a wait, to another key of the
// target now, to the next target now, or nowhere (a stop). Going beats
// waiting wherever another place can serve now:
//
//   - a key that cannot serve (told to wait, out of quota, refused, denied
//     the model) hands the request to a free key of the same target at
//     once; a 404 for the model does not walk the target's keys;
//   - a failure the server asked no wait for (a 5xx, a 529, a transport
//     error) goes to the next target at once when one can serve now; the
//     failing target stays in rotation for later requests until its health
//     says otherwise;
//   - a short server wait (at most Failover.Threshold) is sat out on the
//     same target until it has had Failover.AttemptsPerTarget failures, but
//     the request's last attempt goes to the next target if one can serve;
//   - with nowhere else to go, a retryable failure is retried where it
//     happened after its wait, as with one upstream; any other failure is
//     handed over as it is.
//
// Policy.MaxAttempts and the context's deadline bound the whole journey.
// The decision spends nothing: the loop pays the budget for a retry on
// the same target (same key or another); moving to another target is a
// first attempt there. (A stream's continuation is a retry too, paid
// before its loop starts: sendContinuation.)

// moveKind is where the next attempt goes.
type moveKind uint8

const (
	moveStop   moveKind = iota // no next attempt
	moveStay                   // the same key and target, after wait
	moveKey                    // another key of the same target, now
	moveTarget                 // the next target, now
)

// move is the decision after a failed attempt.
type move struct {
	kind moveKind
	to   choice // for moveKey and moveTarget
	wait time.Duration
	src  WaitSource
	stop Reason // for moveStop
}

// retry reports a move that the target's budget pays for: a retry on the
// same target.
func (m move) retry() bool { return m.kind == moveStay || m.kind == moveKey }

// next decides what follows attempt number attempt, which failed with v
// and proved p.
func (t *Transport) next(ctx context.Context, j *journey, attempt int, v verdict, p proof) move {
	pol, f := t.cfg.policy, j.rt.f
	if attempt >= pol.MaxAttempts {
		return move{stop: ReasonExhausted}
	}
	if !j.canReplay {
		return move{stop: ReasonBodyNotReplayable}
	}
	now := t.cfg.clock.Now()
	if p.failedAsAKey() && p.key != keyNoModel {
		if c, ok := j.freeKey(t, now); ok {
			return move{kind: moveKey, to: c}
		}
	}
	if !v.retry {
		if p.failedAsAKey() {
			if c, ok := j.nextTarget(t, now); ok {
				return move{kind: moveTarget, to: c}
			}
		}
		return move{stop: v.reason} // handed over as it is
	}
	// Checked before staying so that the last attempt, and any failure
	// that asked for no wait, goes where it can be served now. What it
	// claims (a probe) is given back if the request stays instead.
	other, canGo := j.nextTarget(t, now)
	last := attempt+1 >= pol.MaxAttempts
	switch {
	case canGo && !v.waitOK:
		return move{kind: moveTarget, to: other} // going is faster than any backoff
	case canGo && last:
		return move{kind: moveTarget, to: other} // the last attempt is the one most worth moving
	}
	stay := j.fails < f.AttemptsPerTarget && (!v.waitOK || v.wait <= f.Threshold) &&
		j.admission(t, j.rt.targets[j.at.target], now) != ejected && !j.coolingDown(t, now)
	if stay || !canGo {
		if m := t.stay(ctx, attempt, v); m.kind == moveStay || !canGo {
			j.release()
			return m
		}
	}
	return move{kind: moveTarget, to: other}
}

// stay is the move to the same place after the wait v asks for, or the
// backoff: or a stop, when the wait is above MaxRetryAfter or would pass
// the deadline.
func (t *Transport) stay(ctx context.Context, attempt int, v verdict) move {
	p := t.cfg.policy
	m := move{kind: moveStay}
	if v.waitOK {
		if v.wait > p.MaxRetryAfter {
			return move{stop: ReasonRetryAfterTooLong, wait: v.wait, src: v.src}
		}
		m.wait, m.src = v.wait+serverWaitSpread(v.wait, t.cfg.rand()), v.src
	} else {
		m.wait, m.src = p.Backoff(attempt, t.cfg.rand()), SourceBackoff
	}
	if passesDeadline(ctx, t.cfg.clock.Now(), m.wait) {
		return move{stop: ReasonDeadline, wait: m.wait, src: m.src}
	}
	return m
}

// refused is what follows when the target's budget refused the retry m:
// the next target, where the request is a first attempt, or a stop.
func (t *Transport) refused(j *journey) move {
	j.release() // what the refused move claimed
	if c, ok := j.nextTarget(t, t.cfg.clock.Now()); ok {
		return move{kind: moveTarget, to: c}
	}
	return move{stop: ReasonBudget}
}
