package llmretry

import (
	"sync"
	"sync/atomic"
	"time"
)

// Health, as a failover Transport keeps it: explicit states with named
// transitions, as Envoy's outlier detection keeps a host's.
//
// A target is serving, ejected (until a time), or probing (one request
// holds the probe). A key is serving, or out for every model (refused:
// rechecked by a probe after a backoff; quota used up: until its window),
// and for each model it may be resting (told to wait) or denied (403 or
// 404 for that model: rechecked by a probe after a backoff). Every rest
// ends: none is longer than Failover.MaxRest.
//
// What binds other processes too (a key told to wait, a quota, an
// ejection) also goes into the Transport's HealthStore as a Mark. A key
// refused or denied a model is learned by each process on its own.

// targetHealth is what is known of a target.
type targetHealth struct {
	// used: something was ever recorded, so a request must look (a plain
	// Transport's own target never records anything, and never locks).
	used     atomic.Bool
	mu       sync.Mutex
	failures int // attempts failed in a row
	eject    probation
}

// keyHealth is what is known of a key.
type keyHealth struct {
	used atomic.Bool // as targetHealth's
	mu   sync.Mutex
	// auth: the key was refused (401); rechecked by probes.
	auth probation
	// quota: the key's quota or credit is used up until then.
	quota time.Time
	// models: per model, a rest and a denial. Bounded: see maxModelHealth.
	models map[string]*modelHealth
}

// modelHealth is what is known of a key for one model.
type modelHealth struct {
	avoid  time.Time // told to wait: avoided until then
	denied probation // 403 or 404 for the model: rechecked by probes
}

// maxModelHealth bounds the models a key remembers: a flood of model
// names (each denied, say) cannot grow it without end.
const maxModelHealth = 1024

// model returns k's health for model, making it if need be. k.mu is
// held.
func (k *keyHealth) model(now time.Time, model string) *modelHealth {
	if mh := k.models[model]; mh != nil {
		return mh
	}
	if k.models == nil {
		k.models = make(map[string]*modelHealth)
	}
	if len(k.models) >= maxModelHealth {
		k.forget(now)
	}
	mh := &modelHealth{}
	k.models[model] = mh
	return mh
}

// forget drops the models whose state has ended, and if that frees
// nothing, those that end soonest and hold no probe. k.mu is held.
func (k *keyHealth) forget(now time.Time) {
	for m, mh := range k.models {
		if !mh.avoid.After(now) && !mh.denied.on {
			delete(k.models, m)
		}
	}
	if len(k.models) < maxModelHealth {
		return
	}
	ends := make([]time.Time, 0, len(k.models))
	for _, mh := range k.models {
		ends = append(ends, mh.end())
	}
	cut := medianTime(ends)
	for m, mh := range k.models {
		if mh.denied.busy == nil && !mh.end().After(cut) {
			delete(k.models, m)
		}
	}
}

// end is when mh's state ends, as far as is known.
func (mh *modelHealth) end() time.Time {
	if mh.denied.on && mh.denied.until.After(mh.avoid) {
		return mh.denied.until
	}
	return mh.avoid
}

// keyBlock says what keeps a key from carrying a request now, best first.
type keyBlock uint8

const (
	keyFree       keyBlock = iota
	keyDue                 // free, as the probe of a recheck (auth or the model's denial)
	keyAvoided             // told to wait for the model: used only if nothing is free
	keyCooling             // in the fleet's cooldown for the model: waited for if nothing else is
	keyDenied              // denied the model: sent to one request at a time if nothing else is
	keyDeniedBusy          // denied, and its one request is in flight
	keyOut                 // refused, or out of quota
)
