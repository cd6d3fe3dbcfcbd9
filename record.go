package llmretry

import (
	"log/slog"
	"net/http"
	"time"
)

// record updates what is known of the key and target an attempt went to,
// from what the attempt proved, and ends the probes the attempt held. On
// the caller's own route only a 429's cooldown is kept: the caller's
// credential is never taken out, and nothing is refused.
func (t *Transport) record(j *journey, resp *http.Response, v verdict, p proof) {
	ts := j.rt.targets[j.at.target]
	k := ts.keys[j.at.key]
	now := t.cfg.clock.Now()
	success := !v.retry && v.reason == 0
	if success && t.streaks.size.Load() > 0 {
		t.streaks.clear(j.mark(MarkCooldown, ts, k))
	}
	if p.key == keyWait {
		t.rateLimited(j, ts, k, resp, v, now)
	}
	if !j.rt.holdsKeys {
		return
	}
	t.recordTarget(j, ts, p, success, now)
	t.recordKey(j, ts, k, p, success, now)
}

// recordTarget counts a success or a failure of the target, ejecting it
// at Outliers.Failures in a row, or at once when the attempt was its
// probe. Any success trusts an ejected target again.
func (t *Transport) recordTarget(j *journey, ts *target, p proof, success bool, now time.Time) {
	o := j.rt.f.Outliers
	var ejectFor time.Duration
	restored := false
	ts.health.mu.Lock()
	probe := j.heldProbe(probeTarget)
	switch {
	case success:
		ts.health.failures = 0
		restored = ts.health.eject.on
		if probe.ch != nil {
			ts.health.eject.endProbe(probe.ch, true)
		} else if restored && ts.health.eject.busy == nil {
			ts.health.eject.on, ts.health.eject.rests = false, 0 // served while ejected: trusted again
		} else {
			restored = false
		}
	case p.target:
		ts.health.failures++
		if probe.ch != nil {
			ts.health.eject.endProbe(probe.ch, false)
		}
		if ts.health.eject.state(now) != resting && (probe.ch != nil || ts.health.failures >= o.Failures) {
			until := ts.health.eject.rest(now, o.Ejection, o.MaxEjection)
			ejectFor = until.Sub(now)
			ts.health.failures = 0
		}
	default:
		if probe.ch != nil {
			ts.health.eject.endProbe(probe.ch, false) // neither: the next request may probe
		}
	}
	ts.health.mu.Unlock()
	j.dropProbe(probeTarget)
	if restored {
		t.health(j.req, HealthEvent{Target: ts.Name, Health: TargetRestored})
	}
	if ejectFor > 0 {
		if store := t.cfg.store; store != nil {
			store.Put(j.mark(MarkEjection, ts, nil), now.Add(ejectFor))
		}
		t.health(j.req, HealthEvent{Target: ts.Name, Health: TargetEjected, Until: now.Add(ejectFor), Cause: j.lastCause})
	}
}

// recordKey applies what the attempt proved of its key, scoped to what it
// proves, and ends the key's probe: a refused key's recheck passes on any
// answer but another 401; a model's on any answer but another denial.
func (t *Transport) recordKey(j *journey, ts *target, k *key, p proof, success bool, now time.Time) {
	f := j.rt.f
	var ev *HealthEvent
	model := ""
	if p.key == keyWait || p.key == keyDeniedModel || p.key == keyNoModel || j.heldProbe(probeModel).ch != nil {
		model = j.modelName() // read before the lock: it may read the body
	}
	k.health.mu.Lock()
	if ap := j.heldProbe(probeAuth); ap.ch != nil {
		passed := p.key != keyRefused && (success || p.key != keyNothing)
		k.health.auth.endProbe(ap.ch, passed)
		if passed {
			ev = &HealthEvent{Target: ts.Name, Key: k.id, Health: KeyRestored}
		}
	}
	if mp := j.heldProbe(probeModel); mp.ch != nil {
		denied := p.key == keyDeniedModel || p.key == keyNoModel
		if mh := k.health.models[mp.model]; mh != nil {
			wasDenied := mh.denied.on
			mh.denied.endProbe(mp.ch, success)
			if success && wasDenied {
				ev = &HealthEvent{Target: ts.Name, Key: k.id, Model: mp.model, Health: KeyRestored}
			}
			_ = denied
		}
	}
	switch p.key {
	case keyWait:
		rest := t.clamp(j, ts, k, p.rest, "key told to wait")
		if rest <= 0 {
			rest = t.cfg.policy.Backoff(1, t.cfg.rand()) // a 429 without a wait: rest it a backoff
		}
		mh := k.health.model(now, model)
		if u := now.Add(rest); u.After(mh.avoid) {
			mh.avoid = u
		}
		ev = &HealthEvent{Target: ts.Name, Key: k.id, Model: model, Health: KeyResting, Until: now.Add(rest), Cause: j.lastCause}
	case keyQuota:
		window := p.rest
		if window <= 0 {
			window = f.QuotaRest
		}
		window = t.clamp(j, ts, k, window, "quota window")
		if u := now.Add(window); u.After(k.health.quota) {
			k.health.quota = u
		}
		ev = &HealthEvent{Target: ts.Name, Key: k.id, Health: KeyOutQuota, Until: now.Add(window), Cause: j.lastCause}
	case keyRefused:
		until := k.health.auth.rest(now, f.Recheck, f.MaxRecheck)
		ev = &HealthEvent{Target: ts.Name, Key: k.id, Health: KeyOutAuth, Until: until, Cause: j.lastCause}
	case keyDeniedModel, keyNoModel:
		mh := k.health.model(now, model)
		until := mh.denied.rest(now, f.Recheck, f.MaxRecheck)
		ev = &HealthEvent{Target: ts.Name, Key: k.id, Model: model, Health: KeyDenied, Until: until, Cause: j.lastCause}
	}
	k.health.mu.Unlock()
	j.dropProbe(probeAuth)
	j.dropProbe(probeModel)
	if ev == nil {
		return
	}
	if store := t.cfg.store; store != nil && !ev.Until.IsZero() {
		switch ev.Health {
		case KeyResting: // the fleet avoids it too, without holding anyone for it
			store.Put(j.mark(MarkAvoid, ts, k), ev.Until)
		case KeyOutQuota:
			store.Put(j.mark(MarkQuota, ts, k), ev.Until)
		}
	}
	t.health(j.req, *ev)
}

// clamp bounds a rest by Failover.MaxRest, and logs a server's wait that
// asked for longer.
func (t *Transport) clamp(j *journey, ts *target, k *key, d time.Duration, what string) time.Duration {
	ceiling := j.rt.f.MaxRest
	if d <= ceiling {
		return d
	}
	if t.cfg.logger != nil {
		t.cfg.logger.LogAttrs(j.req.Context(), slog.LevelWarn, "llmretry: rest clamped",
			slog.String("target", ts.Name), slog.String("key", k.id), slog.String("what", what),
			slog.Duration("asked", d.Round(time.Second)), slog.Duration("for", ceiling))
	}
	return ceiling
}

// rateLimited starts a cooldown for the key and model after a 429 that
// asked for a wait, when the limit is shown to bind beyond this request:
// the 429 says a bucket is empty, or it is the second in a row for this key
// and model. A wait above MaxRetryAfter, which ends its own request at
// once, starts none: one "Retry-After: 999999" must not freeze every later
// request.
func (t *Transport) rateLimited(j *journey, ts *target, k *key, resp *http.Response, v verdict, now time.Time) {
	store := t.cfg.store
	if store == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests || !v.waitOK || v.wait > t.cfg.policy.MaxRetryAfter {
		return
	}
	m := j.mark(MarkCooldown, ts, k)
	if t.streaks.hit(m) >= 2 || bucketEmpty(resp.Header) {
		store.Put(m, now.Add(v.wait))
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
