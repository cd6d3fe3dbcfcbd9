package llmretry

import (
	"errors"
	"net/http"
	"time"

	"github.com/llmretry/llmretry/internal/wire"
)

// journey is one request's way through its route: where each attempt
// goes, what it has claimed (probes), and the request's model, read once.
type journey struct {
	rt        *route
	req       *http.Request
	at        placement
	canReplay bool
	fails     int    // target failures on the current target
	onTarget  int    // attempts sent to the current target
	visited   uint64 // targets sent to, by index
	sent      int    // attempts sent, on every target
	lastCause string // the cause of the last attempt's failure, for events
	// watchStream: the answer is a stream whose end will decide whether
	// its target succeeded (on a route that holds its keys).
	watchStream bool
	// continuation: the request is a broken stream's continuation, whose
	// answer is spliced into the stream the caller holds.
	continuation bool

	model     string // as the caller named it
	modelRead bool
	body      wire.BodyModel // the reading of the body, when one was made
	cred      string         // Mark.Key of the caller's own credential
	credRead  bool

	// probes are the probes this request holds: at most the target's and
	// one of its key's. Each is ended once, by record or by release.
	probes [2]heldProbe
}

var errUnavailable = errors.New("failover: no target serves this model with a key that is not out")

// serves reports whether ts serves the request's model; the model is read
// only for a target with an allow-list.
func (j *journey) serves(ts *target) bool {
	if len(ts.Models) == 0 {
		return true
	}
	_, ok := ts.serves(j.modelName())
	return ok
}

// upstream is the scheme and host an attempt at ts goes to.
func (j *journey) upstream(ts *target) (scheme, host string) {
	if ts.base == nil {
		return j.req.URL.Scheme, j.req.URL.Host
	}
	return ts.base.Scheme, ts.base.Host
}

// keyCred is Mark.Key of key k.
func (j *journey) keyCred(k *key) string {
	if j.rt.holdsKeys {
		return k.cred
	}
	return j.callerCred()
}

// mark is the Mark of kind for key k of ts, for the request's model.
func (j *journey) mark(kind MarkKind, ts *target, k *key) Mark {
	scheme, host := j.upstream(ts)
	m := Mark{Kind: kind, Scheme: scheme, Host: host}
	switch kind {
	case MarkEjection:
		m.Target = ts.Name
	case MarkQuota:
		m.Key = j.keyCred(k)
	default:
		m.Key, m.Model = j.keyCred(k), j.modelName()
	}
	return m
}

// storeUntil is when the store's mark of kind for k of ts ends, for the
// request: never later than the route's MaxRest after the Transport first
// read it, whoever wrote it.
func (j *journey) storeUntil(t *Transport, kind MarkKind, ts *target, k *key, now time.Time) time.Time {
	return t.overlong.until(t.cfg.store, j.mark(kind, ts, k), now, j.rt.f.MaxRest)
}

// keyStatus says whether k of ts may carry the request now, until when it
// is blocked, and which recheck it would be the probe of.
type keyStatus struct {
	block keyBlock
	until time.Time
	probe probeKind     // for keyDue
	busy  chan struct{} // for keyDeniedBusy: closed when its request ends
}

// status reads k's health, and the store's marks for it, for the request.
func (j *journey) status(t *Transport, ts *target, k *key, now time.Time) keyStatus {
	var st keyStatus
	if k.health.used.Load() {
		st = j.localStatus(k, now)
	}
	if st.block == keyOut {
		return st
	}
	// The store is asked only when it holds something for this upstream,
	// and then for this key: a plain request reads no credential or body
	// on the way.
	store := t.cfg.store
	scheme, host := j.upstream(ts)
	if store == nil || !store.Active(now, scheme, host, "") || !store.Active(now, scheme, host, j.keyCred(k)) {
		return st
	}
	if j.rt.holdsKeys { // the caller's own key is never taken out
		if u := j.storeUntil(t, MarkQuota, ts, k, now); u.After(now) {
			return keyStatus{block: keyOut, until: u}
		}
	}
	if st.block > keyCooling {
		return st
	}
	if u := j.storeUntil(t, MarkCooldown, ts, k, now); u.After(now) {
		return keyStatus{block: keyCooling, until: u}
	}
	if st.block <= keyAvoided && j.rt.holdsKeys {
		if u := j.storeUntil(t, MarkAvoid, ts, k, now); u.After(now) && u.After(st.until) {
			return keyStatus{block: keyAvoided, until: u}
		}
	}
	return st
}

// localStatus reads what this process knows of k: a refusal, a quota, and
// the model's rest and denial, forgetting the model's state once it has
// ended.
func (j *journey) localStatus(k *key, now time.Time) keyStatus {
	var st keyStatus
	k.health.mu.Lock()
	switch k.health.auth.state(now) {
	case resting, probing:
		st = keyStatus{block: keyOut, until: k.health.auth.until}
	case due:
		st = keyStatus{block: keyDue, probe: probeAuth}
	}
	if st.block == keyFree && k.health.quota.After(now) {
		st = keyStatus{block: keyOut, until: k.health.quota}
	}
	perModel := st.block != keyOut && len(k.health.models) > 0
	k.health.mu.Unlock()
	if perModel {
		model := j.modelName() // read with no lock held: it may read the body
		k.health.mu.Lock()
		if mh := k.health.models[model]; mh != nil {
			switch mh.denied.state(now) {
			case resting:
				st = keyStatus{block: keyDenied, until: mh.denied.until}
			case probing:
				st = keyStatus{block: keyDeniedBusy, busy: mh.denied.busy}
			case due:
				if st.block == keyFree {
					st = keyStatus{block: keyDue, probe: probeModel}
				}
			}
			if st.block == keyFree && mh.avoid.After(now) {
				st = keyStatus{block: keyAvoided, until: mh.avoid}
			}
			if !mh.avoid.After(now) && !mh.denied.on {
				delete(k.health.models, model) // its state has ended: it expires
			}
		}
		k.health.mu.Unlock()
	}
	return st
}

// admission says whether ts takes requests now.
type admission uint8

const (
	admitted admission = iota
	probeDue           // ejected, its time over: the next request probes it
	ejected            // ejected here or by the fleet, or its probe in flight
)

func (j *journey) admission(t *Transport, ts *target, now time.Time) admission {
	st := serving
	if ts.health.used.Load() {
		ts.health.mu.Lock()
		st = ts.health.eject.state(now)
		ts.health.mu.Unlock()
	}
	switch st {
	case resting, probing:
		return ejected
	}
	if store := t.cfg.store; store != nil && j.rt.holdsKeys {
		scheme, host := j.upstream(ts)
		if store.Active(now, scheme, host, "") && j.storeUntil(t, MarkEjection, ts, nil, now).After(now) {
			return ejected
		}
	}
	if st == due {
		return probeDue
	}
	return admitted
}

// choice is where a request may go next, and what it must claim or wait
// for first.
type choice struct {
	pl          placement
	targetProbe bool
	keyProbe    probeKind
	// wait: the key is in the fleet's cooldown until then; waitFor: its
	// one request in flight (a denied key) must end first.
	wait    time.Duration
	waitFor chan struct{}
	// deniedPass: the key was denied the model, and this request is the
	// one sent to it (so the caller gets the upstream's own answer).
	deniedPass bool
}

// choose picks where the request goes first, from target from on: the
// first target (in order) that takes requests and has a key free for the
// model. With none, in turn: a target with a free key though every one is
// ejected (tried anyway), the key told to wait that is free soonest (it
// holds no one), the key whose cooldown ends soonest (waited for), a key
// denied the model (one request at a time is still sent: the caller gets
// the upstream's own answer, never a local refusal). ok is false when no
// target serves the model, or every key that could is out.
func (j *journey) choose(t *Transport, from int, now time.Time) (c choice, ok bool) {
	var ejectedFree, avoided, cooling, denied, deniedBusy *choice
	for ti := from; ti < len(j.rt.targets); ti++ {
		ts := j.rt.targets[ti]
		if !j.serves(ts) {
			continue
		}
		free := -1
		var freeProbe probeKind
		for ki, k := range ts.keys {
			st := j.status(t, ts, k, now)
			switch st.block {
			case keyFree, keyDue:
				if free < 0 {
					free, freeProbe = ki, st.probe
				}
			case keyAvoided:
				if avoided == nil || st.until.Before(now.Add(avoided.wait)) {
					avoided = &choice{pl: placement{ti, ki}, wait: st.until.Sub(now)}
				}
			case keyCooling:
				if cooling == nil || st.until.Sub(now) < cooling.wait {
					cooling = &choice{pl: placement{ti, ki}, wait: st.until.Sub(now)}
				}
			case keyDenied:
				if denied == nil {
					denied = &choice{pl: placement{ti, ki}, deniedPass: true}
				}
			case keyDeniedBusy:
				if deniedBusy == nil {
					deniedBusy = &choice{pl: placement{ti, ki}, waitFor: st.busy}
				}
			}
		}
		if free < 0 {
			continue
		}
		switch j.admission(t, ts, now) {
		case admitted:
			return choice{pl: placement{ti, free}, keyProbe: freeProbe}, true
		case probeDue:
			return choice{pl: placement{ti, free}, keyProbe: freeProbe, targetProbe: true}, true
		}
		if ejectedFree == nil {
			ejectedFree = &choice{pl: placement{ti, free}, keyProbe: freeProbe}
		}
	}
	for _, c := range []*choice{ejectedFree, avoided, cooling, denied, deniedBusy} {
		if c != nil {
			if c == avoided {
				c.wait = 0 // avoiding holds no one
			}
			return *c, true
		}
	}
	return choice{}, false
}

// nextTarget takes the first target after the current one that takes
// requests and has a key free for the model, claiming the probes that
// needs; a target whose probe another request took first is passed over.
func (j *journey) nextTarget(t *Transport, now time.Time) (choice, bool) {
	for ti := j.at.target + 1; ti < len(j.rt.targets); ti++ {
		ts := j.rt.targets[ti]
		if !j.serves(ts) {
			continue
		}
		adm := j.admission(t, ts, now)
		if adm == ejected {
			continue
		}
		for ki, k := range ts.keys {
			if st := j.status(t, ts, k, now); st.block == keyFree || st.block == keyDue {
				c := choice{pl: placement{ti, ki}, keyProbe: st.probe, targetProbe: adm == probeDue}
				if j.claim(c, now) {
					return c, true
				}
				break
			}
		}
	}
	return choice{}, false
}

// freeKey takes another key of the current target free for the model,
// claiming its recheck if it is due for one.
func (j *journey) freeKey(t *Transport, now time.Time) (choice, bool) {
	ts := j.rt.targets[j.at.target]
	for ki, k := range ts.keys {
		if ki == j.at.key {
			continue
		}
		if st := j.status(t, ts, k, now); st.block == keyFree || st.block == keyDue {
			c := choice{pl: placement{j.at.target, ki}, keyProbe: st.probe}
			if j.claim(c, now) {
				return c, true
			}
		}
	}
	return choice{}, false
}

// coolingDown reports whether no key of the current target could take
// the request now but after a wait: each is out, denied, or in the
// fleet's cooldown. (A key only avoided still could.)
func (j *journey) coolingDown(t *Transport, now time.Time) bool {
	ts := j.rt.targets[j.at.target]
	for _, k := range ts.keys {
		if b := j.status(t, ts, k, now).block; b <= keyAvoided {
			return false
		}
	}
	return true
}

// moveTo sends the journey's next attempt to c (whose probes are
// claimed), counting a first visit to a target as a request in that
// target's budget.
func (j *journey) moveTo(c choice) {
	pl := c.pl
	if pl.target != j.at.target || j.visited == 0 {
		j.fails, j.onTarget = 0, 0
		if j.visited&(1<<pl.target) == 0 {
			if b := j.rt.targets[pl.target].budget; b != nil {
				b.OnRequest()
			}
		}
		j.visited |= 1 << pl.target
	}
	j.at = pl
}

// start finds the first placement of req: waiting first when every key
// that could serve it is in the fleet's cooldown, or when the one key left
// (denied the model) is carrying another request. It fills j in place:
// a journey returned by value would take a second copy's room in do's
// frame, which stays on the stack below a held stream.
func (t *Transport) start(req *http.Request, j *journey) error {
	*j = journey{rt: t.route, req: req, canReplay: replayable(req)}
	if err := t.checkRequest(j); err != nil {
		return err
	}
	for tries := 0; ; tries++ {
		now := t.cfg.clock.Now()
		c, ok := j.choose(t, 0, now)
		if !ok {
			v := verdict{cause: "no target or key for model " + upstreamWord(j.modelName()), reason: ReasonUnavailable}
			return t.giveUp(req, nil, 0, v, errUnavailable, nil)
		}
		switch {
		case c.waitFor != nil:
			if err := t.awaitTurn(req, c.waitFor); err != nil {
				return err
			}
			tries-- // a turn waited for is no lost claim
			continue
		case c.wait > 0:
			// The key's cooldown ends after the wait: it goes there then.
			if err := t.hold(req, c.wait); err != nil {
				return err
			}
			now = t.cfg.clock.Now()
			c.wait = 0
			if !j.claim(c, now) {
				c.targetProbe, c.keyProbe = false, 0
			}
		case !j.claim(c, now):
			if c.deniedPass || tries < 8 {
				// Another request claimed it first: it is busy now, and the
				// next choice goes elsewhere, or waits its turn there.
				continue
			}
			v := verdict{cause: "every place for model " + upstreamWord(j.modelName()) + " is being probed", reason: ReasonUnavailable}
			return t.giveUp(req, nil, 0, v, errUnavailable, nil)
		}
		j.moveTo(c)
		return nil
	}
}

// awaitTurn waits for the request in flight on a denied key to end.
func (t *Transport) awaitTurn(req *http.Request, done <-chan struct{}) error {
	ctx := req.Context()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return t.giveUp(req, nil, 0, verdict{cause: "waiting for a denied key's turn", reason: ReasonContextDone}, ctx.Err(), nil)
	}
}
