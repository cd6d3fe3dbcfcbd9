package llmretry

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A failover Transport's state: which keys rest or are out, and which
// targets are ejected. What one process learns that binds every process (a
// key whose bucket is empty, a quota used up, a target ejected) also goes
// into the Transport's Cooldowns, so that a fleet sharing them (redisstate)
// avoids it too.

// pool is a failover Transport's targets.
type pool struct {
	f       Failover
	targets []*targetState
	// basePath is the first target's base path: request paths are taken
	// relative to it (an SDK pointed at the first target sends them so).
	basePath string
}

// targetState is one target and what is known of it.
type targetState struct {
	Target
	base     *url.URL
	up       Upstream // the target as a whole: its ejection, in Cooldowns
	keys     []*keyState
	budget   Budget
	inflight atomic.Int64

	mu        sync.Mutex
	failures  int       // attempts failed in a row
	ejections int       // ejections since last trusted
	until     time.Time // ejected until
	suspect   bool      // ejected, and not trusted again yet: the next request probes
	probing   bool      // a probe is in flight
}

// keyState is one key of a target (or, for a target without keys, the
// absence of one) and what is known of it.
type keyState struct {
	id            string
	header, value string // what is sent; empty for none
	cred          string // as Upstream.Credential

	mu       sync.Mutex
	authOut  bool                 // refused with 401 or 403: out until restart
	outUntil time.Time            // quota used up: out until then
	avoid    map[string]time.Time // per model: got a server wait, avoided until then
}

// allModels is the Model of an Upstream that stands for every model of a
// key: a quota used up is the whole key's.
const allModels = "*"

// avoidOnly starts the Model of an Upstream whose cooldown says only that
// the key was told to wait for that model: the fleet avoids it while
// another key is free, but no request is held for it.
const avoidOnly = "avoid:"

// newPool makes the state of targets (checked by checkTargets).
func newPool(f Failover, targets []Target, bases []*url.URL, shared Budget, sharedSet bool, budgetCfg BudgetConfig) *pool {
	p := &pool{f: f, basePath: bases[0].EscapedPath()}
	for i, tg := range targets {
		ts := &targetState{Target: tg, base: bases[i]}
		ts.up = Upstream{Scheme: ts.base.Scheme, Host: ts.base.Host, Credential: "target-" + shortHash(tg.Name)}
		switch {
		case tg.Budget != nil:
			ts.budget = tg.Budget
		case sharedSet:
			ts.budget = shared
		default:
			ts.budget = NewRatioBudget(budgetCfg)
		}
		for _, k := range tg.Keys {
			v := k.value()
			if tg.KeyHeader == "Authorization" {
				v = "Bearer " + v
			}
			ts.keys = append(ts.keys, &keyState{id: k.ID, header: tg.KeyHeader, value: v, cred: hashCredential(tg.KeyHeader, v)})
		}
		if len(ts.keys) == 0 {
			ts.keys = []*keyState{{}}
		}
		p.targets = append(p.targets, ts)
	}
	return p
}

// hashCredential is Upstream.Credential for a request that carries only
// the one credential header name: value.
func hashCredential(name, value string) string {
	h := sha256.New()
	writeCredential(h, name, value)
	return credentialSum(h)
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

// keyUp is the Upstream of key k of ts for model.
func (ts *targetState) keyUp(k *keyState, model string) Upstream {
	return Upstream{Scheme: ts.base.Scheme, Host: ts.base.Host, Credential: k.cred, Model: model}
}

// serves reports whether ts serves model, and under what name.
func (ts *targetState) serves(model string) (string, bool) {
	if len(ts.Models) == 0 {
		return model, true
	}
	m, ok := ts.Models[model]
	return m, ok
}

// keyBlock says what keeps a key from being used now.
type keyBlock int

const (
	keyFree    keyBlock = iota
	keyAvoided          // this process saw it told to wait: used only if nothing is free
	keyCooling          // the fleet's cooldown: a request waits for it if nothing else is free
	keyOut              // auth refused, or quota used up
)

// keyStatus says whether k of ts may carry a request for model at now, and
// if not, until when it is blocked (zero: until restart).
func (ts *targetState) keyStatus(k *keyState, model string, now time.Time, cd Cooldowns) (keyBlock, time.Time) {
	k.mu.Lock()
	authOut, out, avoid := k.authOut, k.outUntil, k.avoid[model]
	k.mu.Unlock()
	if authOut {
		return keyOut, time.Time{}
	}
	if out.After(now) {
		return keyOut, out
	}
	if cd != nil && cd.Active(now) {
		if u := cd.Until(ts.keyUp(k, allModels)); u.After(now) {
			return keyOut, u
		}
		if u := cd.Until(ts.keyUp(k, model)); u.After(now) {
			return keyCooling, u
		}
		if u := cd.Until(ts.keyUp(k, avoidOnly+model)); u.After(avoid) {
			avoid = u
		}
	}
	if avoid.After(now) {
		return keyAvoided, avoid
	}
	return keyFree, time.Time{}
}

// freeKey returns the first key of ts free for model at now, other than
// except; -1 if none.
func (ts *targetState) freeKey(model string, now time.Time, cd Cooldowns, except int) int {
	for i, k := range ts.keys {
		if i == except {
			continue
		}
		if b, _ := ts.keyStatus(k, model, now, cd); b == keyFree {
			return i
		}
	}
	return -1
}

// coolingDown reports whether no key of ts could take a request for model
// at now but after a wait: each is out, or in the fleet's cooldown. (A key
// this process only avoids still could.)
func (ts *targetState) coolingDown(model string, now time.Time, cd Cooldowns) bool {
	for _, k := range ts.keys {
		if b, _ := ts.keyStatus(k, model, now, cd); b == keyFree || b == keyAvoided {
			return false
		}
	}
	return true
}

// ejected reports whether ts is skipped at now: ejected here or by the
// fleet, or on probation with its probe already in flight.
func (ts *targetState) ejected(now time.Time, cd Cooldowns) bool {
	ts.mu.Lock()
	local := ts.until.After(now) || ts.suspect && ts.probing
	ts.mu.Unlock()
	if local {
		return true
	}
	return cd != nil && cd.Active(now) && cd.Until(ts.up).After(now)
}

// admit decides, at once, whether a request may go to ts now: not while it
// is ejected, and while it is on probation only as its one probe (probe is
// then true, and the caller must end the probe). Two requests cannot both
// become the probe.
func (ts *targetState) admit(now time.Time, cd Cooldowns) (ok, probe bool) {
	if cd != nil && cd.Active(now) && cd.Until(ts.up).After(now) {
		return false, false
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	switch {
	case ts.until.After(now):
		return false, false
	case !ts.suspect:
		return true, false
	case ts.probing:
		return false, false
	}
	ts.probing = true
	return true, true
}

// succeeded records an attempt on ts that worked. It reports whether that
// trusted ts again after an ejection: any success does, the probe's or that
// of a request sent while every target was ejected.
func (ts *targetState) succeeded(probe bool) (restored bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.failures = 0
	if probe {
		ts.probing = false
	}
	if !ts.suspect {
		return false
	}
	ts.suspect, ts.ejections, ts.until = false, 0, time.Time{}
	return true
}

// failed records an attempt on ts that failed as a target fails, and
// ejects ts when it should be: at Failures in a row, or at once when the
// attempt was its probe. It returns the ejection's length (0: none).
func (ts *targetState) failed(now time.Time, probe bool, o Outliers) time.Duration {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.failures++
	if probe {
		ts.probing = false
	}
	if ts.until.After(now) || !probe && ts.failures < o.Failures {
		return 0
	}
	if o.Ejection*time.Duration(ts.ejections) < o.MaxEjection {
		ts.ejections++
	}
	d := min(o.Ejection*time.Duration(ts.ejections), o.MaxEjection)
	ts.until, ts.suspect, ts.failures = now.Add(d), true, 0
	return d
}

// released ends a probe that ended on neither a success nor a failure of
// the target (a 4xx, a cancelled request).
func (ts *targetState) released() {
	ts.mu.Lock()
	ts.probing = false
	ts.mu.Unlock()
}

// setAvoid marks k as told to wait for model until until.
func (k *keyState) setAvoid(model string, now, until time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.avoid == nil {
		k.avoid = make(map[string]time.Time)
	}
	for m, u := range k.avoid { // forget the ones that are over
		if !u.After(now) {
			delete(k.avoid, m)
		}
	}
	if len(k.avoid) >= maxStreaks {
		clear(k.avoid)
	}
	if until.After(k.avoid[model]) {
		k.avoid[model] = until
	}
}

// setOut takes k out: until restart if until is zero.
func (k *keyState) setOut(until time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if until.IsZero() {
		k.authOut = true
	} else if until.After(k.outUntil) {
		k.outUntil = until
	}
}

// placement is where one attempt goes.
type placement struct {
	target, key int
	probe       bool
}

// choose picks where a request for model goes first, from target from on:
// the first target (in order) that is not ejected and has a free key. With
// none, in turn: an ejected target with a free key (tried anyway, when
// every one is ejected), the key that this process avoids for the shortest
// time (avoiding holds no one), or the wait until the fleet's cooldown on
// some key ends. ok is false when no target serves model, or every key
// that could is out.
func (p *pool) choose(model string, from int, now time.Time, cd Cooldowns) (pl placement, wait time.Duration, ok bool) {
	ejected := placement{target: -1}
	avoided, avoidEnd := placement{target: -1}, time.Time{}
	cooling, coolEnd := placement{target: -1}, time.Time{}
	for ti := from; ti < len(p.targets); ti++ {
		ts := p.targets[ti]
		if _, serves := ts.serves(model); !serves {
			continue
		}
		free := -1
		for ki, k := range ts.keys {
			b, until := ts.keyStatus(k, model, now, cd)
			switch {
			case b == keyFree && free < 0:
				free = ki
			case b == keyAvoided && (avoided.target < 0 || until.Before(avoidEnd)):
				avoided, avoidEnd = placement{target: ti, key: ki}, until
			case b == keyCooling && (cooling.target < 0 || until.Before(coolEnd)):
				cooling, coolEnd = placement{target: ti, key: ki}, until
			}
		}
		if free < 0 {
			continue
		}
		if ok, probe := ts.admit(now, cd); ok {
			return placement{target: ti, key: free, probe: probe}, 0, true
		}
		if ejected.target < 0 {
			ejected = placement{target: ti, key: free}
		}
	}
	switch {
	case ejected.target >= 0:
		return ejected, 0, true
	case avoided.target >= 0:
		return avoided, 0, true
	case cooling.target >= 0:
		return cooling, coolEnd.Sub(now), true
	}
	return placement{}, 0, false
}

// nextTarget picks the first target after the current one that is not
// ejected and has a free key for model; ok is false if there is none.
func (p *pool) nextTarget(model string, after int, now time.Time, cd Cooldowns) (placement, bool) {
	for ti := after + 1; ti < len(p.targets); ti++ {
		ts := p.targets[ti]
		ki := ts.freeFor(model, now, cd)
		if ki < 0 {
			continue
		}
		if ok, probe := ts.admit(now, cd); ok {
			return placement{target: ti, key: ki, probe: probe}, true
		}
	}
	return placement{}, false
}

// hasNext reports whether a target after the current one could take a
// request for model now (nextTarget's test, without claiming a probe).
func (p *pool) hasNext(model string, after int, now time.Time, cd Cooldowns) bool {
	for ti := after + 1; ti < len(p.targets); ti++ {
		ts := p.targets[ti]
		if ts.freeFor(model, now, cd) >= 0 && !ts.ejected(now, cd) {
			return true
		}
	}
	return false
}

// freeFor is the first key of ts free for model at now, or -1 if there is
// none or ts does not serve model.
func (ts *targetState) freeFor(model string, now time.Time, cd Cooldowns) int {
	if _, serves := ts.serves(model); !serves {
		return -1
	}
	return ts.freeKey(model, now, cd, -1)
}

// restOf takes the part of a request path after the first target's base
// path: an SDK pointed at the first target sends its paths under it. A path
// not under it is kept whole.
func (p *pool) restOf(escapedPath string) string {
	if p.basePath == "" {
		return escapedPath
	}
	if rest, ok := strings.CutPrefix(escapedPath, p.basePath); ok && (rest == "" || rest[0] == '/') {
		return rest
	}
	return escapedPath
}

// names returns the target's name and key's id of pl.
func (p *pool) names(pl placement) (target, key string) {
	ts := p.targets[pl.target]
	return ts.Name, ts.keys[pl.key].id
}
