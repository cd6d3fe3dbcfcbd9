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
	if v.retry {
		j.fails++ // the target's share of the request: AttemptsPerTarget
	}
	j.watchStream = success && j.rt.holdsKeys && resp != nil && isEventStream(resp) && hasBody(resp)
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

// recordTarget counts a success or a failure of the target. A stream
// handed over is neither yet: its end decides (streamwatch.go), and the
// target's probe goes with it.
func (t *Transport) recordTarget(j *journey, ts *target, p proof, success bool, now time.Time) {
	probe := j.heldProbe(probeTarget)
	o := outcomeNone
	switch {
	case success && j.watchStream:
		return
	case success:
		o = outcomePassed
	case p.target:
		o = outcomeFailed
	}
	j.dropProbe(probeTarget)
	t.targetOutcome(j.rt.f.Outliers, ts, probe.ch, o, now, j.req, j.lastCause)
}

// targetOutcome records how an attempt on ts ended (or how a stream it
// sent ended), ending its probe if the attempt was one: a failure ejects
// ts at Outliers.Failures in a row, or at once when it was the probe; any
// success trusts an ejected target again.
func (t *Transport) targetOutcome(o Outliers, ts *target, probe chan struct{}, result outcome, now time.Time, req *http.Request, cause string) {
	var ejectFor time.Duration
	restored := false
	ts.health.mu.Lock()
	ts.health.used.Store(true)
	switch result {
	case outcomePassed:
		ts.health.failures = 0
		restored = ts.health.eject.on
		if probe != nil {
			ts.health.eject.endProbe(probe, true)
		} else if restored && ts.health.eject.busy == nil {
			ts.health.eject.on, ts.health.eject.rests = false, 0 // served while ejected: trusted again
		} else {
			restored = false
		}
	case outcomeFailed:
		ts.health.failures++
		if probe != nil {
			ts.health.eject.endProbe(probe, false)
		}
		if ts.health.eject.state(now) != resting && (probe != nil || ts.health.failures >= o.Failures) {
			until := ts.health.eject.rest(now, o.Ejection, o.MaxEjection)
			ejectFor = until.Sub(now)
			ts.health.failures = 0
		}
	default:
		ts.health.eject.endProbe(probe, false) // neither: the next request may probe
	}
	ts.health.mu.Unlock()
	if restored {
		t.health(req, HealthEvent{Target: ts.Name, Health: TargetRestored})
	}
	if ejectFor > 0 {
		if store := t.cfg.store; store != nil {
			store.Put(Mark{Kind: MarkEjection, Scheme: ts.base.Scheme, Host: ts.base.Host, Target: ts.Name}, now.Add(ejectFor))
		}
		t.health(req, HealthEvent{Target: ts.Name, Health: TargetEjected, Until: now.Add(ejectFor), Cause: cause})
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
	k.health.used.Store(true)
	if ap := j.heldProbe(probeAuth); ap.ch != nil {
		passed := p.key != keyRefused && (success || p.key != keyNothing)
		k.health.auth.endProbe(ap.ch, passed)
		if passed {
			ev = &HealthEvent{Target: ts.Name, Key: k.id, Health: KeyRestored}
		}
	}
	if mp := j.heldProbe(probeModel); mp.ch != nil {
		if mh := k.health.models[mp.model]; mh != nil {
			wasDenied := mh.denied.on
			mh.denied.endProbe(mp.ch, success) // denied again: a longer rest starts below
			if success && wasDenied {
				ev = &HealthEvent{Target: ts.Name, Key: k.id, Model: mp.model, Health: KeyRestored}
			}
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
	status := v.status // a rate limit sent inside a stream stands for a 429
	if status == 0 && resp != nil {
		status = resp.StatusCode
	}
	if store == nil || resp == nil || status != http.StatusTooManyRequests || !v.waitOK || v.wait > t.cfg.policy.MaxRetryAfter {
		return
	}
	m := j.mark(MarkCooldown, ts, k)
	if t.streaks.hit(m) >= 2 || bucketEmpty(resp.Header) {
		store.Put(m, now.Add(v.wait))
	}
}
