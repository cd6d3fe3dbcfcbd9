package llmretry

import (
	"time"
)

// Probes. A target that was ejected, a key that was refused, and a key
// denied a model each rest, then are probed: one request at a time is sent
// there, and its outcome ends the rest or starts a longer one. A probe is a
// value the request holds (heldProbe): claimed in one place (claim), ended
// once, with the attempt's outcome (record), or, whatever else ends the
// request (a cancel during a move, a wait or the send, a panic in an
// observer's hook), given back by the loop's one deferred release. A probe
// answered with a stream goes with the stream (streamwatch.go), which ends
// it when the stream ends, when its request's context ends, or when its
// lease runs out.

// probation is a rest that ends in probes: while it runs nothing is sent;
// once it has run, one request at a time is sent as its probe, and the
// probe's outcome ends it (success) or starts a longer one (the same
// failure again). Its owner's mutex guards it.
type probation struct {
	on    bool      // resting, or due for a probe
	until time.Time // the rest's end: no probe before
	rests int       // rests in a row, each after a failed probe
	// busy is non-nil while a probe is in flight, and is closed when it
	// ends, so that a request waiting its turn can go.
	busy chan struct{}
}

// state is where p stands at now.
func (p *probation) state(now time.Time) probeState {
	switch {
	case !p.on:
		return serving
	case p.busy != nil: // a probe, or a denied key's one request, is in flight
		return probing
	case now.Before(p.until):
		return resting
	}
	return due
}

type probeState uint8

const (
	serving probeState = iota // not on probation
	resting                   // on probation, its rest running
	due                       // its rest over: the next request may probe
	probing                   // a probe is in flight
)

// rest starts a rest after a failure: the first of length first, each
// after a failed probe twice the last, at most ceiling. It returns the
// rest's end.
func (p *probation) rest(now time.Time, first, ceiling time.Duration) time.Time {
	d := first
	for i := 0; i < p.rests && d < ceiling; i++ {
		d *= 2
	}
	d = min(d, ceiling)
	p.on, p.until = true, now.Add(d)
	p.rests++
	return p.until
}

// claim makes the caller the probe, if p is due; the channel is closed
// when the probe ends (endProbe).
func (p *probation) claim(now time.Time) (chan struct{}, bool) {
	if p.state(now) != due {
		return nil, false
	}
	p.busy = make(chan struct{})
	return p.busy, true
}

// endProbe ends the probe whose channel is ch, if it is still the one in
// flight: passed, the probation is over; failed, a new rest starts (by
// the caller); neither, the next request may probe.
func (p *probation) endProbe(ch chan struct{}, passed bool) {
	if ch == nil || p.busy != ch {
		return
	}
	close(p.busy)
	p.busy = nil
	if passed {
		p.on, p.rests, p.until = false, 0, time.Time{}
	}
}

// heldProbe is one probe a request holds.
type heldProbe struct {
	ch     chan struct{} // nil: none
	kind   probeKind
	target int
	key    int
	model  string
}

type probeKind uint8

const (
	probeTarget probeKind = iota + 1 // an ejected target's probe
	probeAuth                        // a refused key's recheck
	probeModel                       // a key's recheck for a model it was denied
)

// claim takes the probes c needs. It fails (and takes none) when another
// request took one first; the caller chooses again.
func (j *journey) claim(c choice, now time.Time) bool {
	ts := j.rt.targets[c.pl.target]
	k := ts.keys[c.pl.key]
	var got [2]heldProbe
	n := 0
	if c.targetProbe {
		ts.health.mu.Lock()
		ch, ok := ts.health.eject.claim(now)
		ts.health.mu.Unlock()
		if !ok {
			return false
		}
		got[n] = heldProbe{ch: ch, kind: probeTarget, target: c.pl.target}
		n++
	}
	if c.keyProbe != 0 || c.deniedPass {
		model := ""
		if c.keyProbe == probeModel || c.deniedPass {
			model = j.modelName() // read with no lock held
		}
		kind := c.keyProbe
		if c.deniedPass {
			kind = probeModel
		}
		k.health.mu.Lock()
		var ch chan struct{}
		ok := false
		switch kind {
		case probeAuth:
			ch, ok = k.health.auth.claim(now)
		case probeModel:
			if mh := k.health.models[model]; mh != nil {
				if c.deniedPass && mh.denied.busy == nil {
					// Sent through a running rest: the one request at a
					// time a denied key still carries.
					mh.denied.busy = make(chan struct{})
					ch, ok = mh.denied.busy, true
				} else {
					ch, ok = mh.denied.claim(now)
				}
			}
		}
		k.health.mu.Unlock()
		if !ok {
			for _, p := range got[:n] {
				j.endProbe(p, outcomeNone)
			}
			return false
		}
		got[n] = heldProbe{ch: ch, kind: kind, target: c.pl.target, key: c.pl.key, model: model}
		n++
	}
	for _, p := range got[:n] {
		j.hold(p)
	}
	return true
}

// hold adds p to the probes the request holds.
func (j *journey) hold(p heldProbe) {
	for i := range j.probes {
		if j.probes[i].ch == nil {
			j.probes[i] = p
			return
		}
	}
	j.endProbe(p, outcomeNone) // cannot happen: an attempt holds two at most
}

// outcome is how an attempt ended, for the probes it held.
type outcome uint8

const (
	outcomeNone   outcome = iota // neither: cancelled, or a failure that proves nothing of it
	outcomePassed                // the probed target or key served
	outcomeFailed                // it failed as before: a longer rest starts (record starts it)
)

// endProbe ends one probe.
func (j *journey) endProbe(p heldProbe, o outcome) {
	if p.ch == nil {
		return
	}
	ts := j.rt.targets[p.target]
	switch p.kind {
	case probeTarget:
		ts.health.mu.Lock()
		ts.health.eject.endProbe(p.ch, o == outcomePassed)
		ts.health.mu.Unlock()
	case probeAuth, probeModel:
		k := ts.keys[p.key]
		k.health.mu.Lock()
		if p.kind == probeAuth {
			k.health.auth.endProbe(p.ch, o == outcomePassed)
		} else if mh := k.health.models[p.model]; mh != nil {
			mh.denied.endProbe(p.ch, o == outcomePassed)
		}
		k.health.mu.Unlock()
	}
}

// release ends every probe the request still holds, as neither passed nor
// failed. It runs on every way out of the loop (a deferred call), a panic
// in an observer's hook included, so no probe is ever lost.
func (j *journey) release() {
	for i, p := range j.probes {
		j.endProbe(p, outcomeNone)
		j.probes[i] = heldProbe{}
	}
}

// heldProbe returns the probe of kind the request holds, if any.
func (j *journey) heldProbe(kind probeKind) heldProbe {
	for _, p := range j.probes {
		if p.ch != nil && p.kind == kind {
			return p
		}
	}
	return heldProbe{}
}

// dropProbe forgets the probe of kind, which was ended.
func (j *journey) dropProbe(kind probeKind) {
	for i, p := range j.probes {
		if p.kind == kind {
			j.probes[i] = heldProbe{}
		}
	}
}
