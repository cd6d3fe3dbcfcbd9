package llmretry

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// What a Transport learns about its upstreams that other requests, and
// other processes, should know too is kept as typed marks in a
// HealthStore: a key told to wait for a model, a key whose quota is used
// up, a target ejected. Each mark says what it holds in its own fields, so
// no name a client sends (a model called "*", say) can pass for another
// kind of mark, and a store shared by a fleet (redisstate) can tell them
// apart.

// MarkKind says what a Mark holds.
type MarkKind uint8

const (
	// MarkCooldown: the server asked callers of Key for Model to wait (a
	// 429 whose limit binds beyond the one request: a bucket said empty,
	// or a second 429 in a row). Requests for that key and model wait for
	// it to end before their first attempt, unless another key is free.
	MarkCooldown MarkKind = iota + 1
	// MarkAvoid: Key was told to wait for Model. Requests use another key
	// while one is free, but none is held for it.
	MarkAvoid
	// MarkQuota: Key's quota or credit is used up, for every model, until
	// the mark ends.
	MarkQuota
	// MarkEjection: the failover target named Target failed too often in
	// a row and is skipped until the mark ends.
	MarkEjection
)

var markKindNames = [...]string{MarkCooldown: "cooldown", MarkAvoid: "avoid", MarkQuota: "quota", MarkEjection: "ejection"}

func (k MarkKind) String() string {
	if int(k) < len(markKindNames) && markKindNames[k] != "" {
		return markKindNames[k]
	}
	return "MarkKind(" + strconv.Itoa(int(k)) + ")"
}

// ParseMarkKind reads a MarkKind from its String form.
func ParseMarkKind(s string) (MarkKind, bool) {
	for k, name := range markKindNames {
		if name != "" && name == s {
			return MarkKind(k), true
		}
	}
	return 0, false
}

// Mark is one entry of a HealthStore. Which fields it uses depends on its
// Kind; the others are empty.
type Mark struct {
	Kind MarkKind
	// Scheme and Host name the upstream: "https", "api.openai.com".
	Scheme, Host string
	// Target is the failover target's name, for MarkEjection.
	Target string
	// Key is a hex SHA-256 prefix of the credential (never the credential
	// itself), for every kind but MarkEjection. For a Transport that sends
	// the caller's own credential it is the hash of that credential; empty
	// when the request carried none.
	Key string
	// Model is the model, for MarkCooldown and MarkAvoid: as the request
	// named it (the JSON body's "model", or Gemini's path).
	Model string
}

// HealthStore keeps Marks until they end. Transports given the same store
// share what they learn; redisstate shares it across a fleet. An
// implementation must be safe for concurrent use and must not block (a
// request asks on its way out).
//
// A store may hold a mark that ends later than a Transport's ceiling
// (Failover.MaxRest; 24 h for a plain Transport): written by a Transport
// with a longer one, by a fleet member configured otherwise, or by anyone
// with access to the store. The Transport does not trust such an end: it
// takes the mark to end MaxRest after it first read it, and no later,
// whatever the store says afterwards. So no store can rest a key, or eject
// a target, for longer than the Transport that reads it allows. A store
// shared by a fleet should still cut what it holds to a ceiling of its own
// (redisstate does, Config.MaxRest), so that an end it was given once does
// not outlive every Transport's memory of it.
type HealthStore interface {
	// Active reports whether any mark for Key key of scheme://host, or
	// for the upstream as a whole (an ejection), may be in force at now;
	// with key "", any mark for the upstream at all. A request looks up
	// nothing more when it says false, so a mark costs lookups only to
	// the requests it may concern.
	Active(now time.Time, scheme, host, key string) bool
	// Until returns when m ends, or the zero time if it is not held.
	Until(m Mark) time.Time
	// Put makes m last until at least until.
	Put(m Mark, until time.Time)
}

// overlong remembers the marks a Transport read from its store that end
// later than its ceiling, with the end it gave each when it first read it.
// Cutting such a mark to the ceiling from each read instead would let it
// slide forward at every request, and rest the key for as long as the
// store keeps the mark: as a hostile Retry-After asked, not as the
// Transport allows. A Transport's own rests end within its ceiling, and
// the ones that bind only its keys are held in its own health as well, so
// a mark cut here never hides a verdict the Transport reached itself.
type overlong struct {
	// size is len(m): while it is 0, a read whose end is within the
	// ceiling takes no lock.
	size atomic.Int32
	mu   sync.Mutex
	m    map[Mark]overlongEnd
}

type overlongEnd struct {
	cut    time.Time // when the Transport takes the mark to end
	stored time.Time // the latest end the store said: the entry is kept until then
}

// maxOverlong bounds overlong: a flood of marks that end too late (a
// hostile writer's, one per model name) cannot grow it without end.
const maxOverlong = 1024

// until returns when m ends, as store says, but never more than ceiling
// after the Transport first read an end beyond that.
func (o *overlong) until(store HealthStore, m Mark, now time.Time, ceiling time.Duration) time.Time {
	u := store.Until(m)
	if o.size.Load() == 0 && !u.After(now.Add(ceiling)) {
		return u
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	defer func() { o.size.Store(int32(len(o.m))) }()
	e, held := o.m[m]
	switch {
	case !u.After(now): // the store holds it no more: nor does this
		delete(o.m, m)
		return u
	case !held && !u.After(now.Add(ceiling)):
		return u
	case !held:
		if o.m == nil {
			o.m = make(map[Mark]overlongEnd)
		}
		if len(o.m) >= maxOverlong {
			o.forget(now)
		}
		e.cut = now.Add(ceiling)
	}
	// Kept, once its cut has passed, until the store's end: a mark the
	// store still holds must not be read afresh, for another ceiling.
	e.stored = later(e.stored, u)
	o.m[m] = e
	if u.Before(e.cut) {
		return u
	}
	return e.cut
}

// forget makes room: it drops the entries whose stored end has passed,
// and if that frees nothing, the half that end soonest (those marks, if
// the store still holds them, are cut afresh when next read). o.mu is
// held.
func (o *overlong) forget(now time.Time) {
	for m, e := range o.m {
		if !e.stored.After(now) {
			delete(o.m, m)
		}
	}
	if len(o.m) < maxOverlong {
		return
	}
	ends := make([]time.Time, 0, len(o.m))
	for _, e := range o.m {
		ends = append(ends, e.stored)
	}
	cut := medianTime(ends)
	for m, e := range o.m {
		if !e.stored.After(cut) {
			delete(o.m, m)
		}
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// maxMarks bounds a LocalHealthStore: a flood of model names (each 429
// for a new one is a mark) cannot grow it without end.
const maxMarks = 16384

// LocalHealthStore keeps marks in this process.
type LocalHealthStore struct {
	// last is the latest end of any mark, in Unix ns: once it has passed,
	// Active answers without the lock.
	last  atomic.Int64
	mu    sync.Mutex
	until map[Mark]time.Time
	// latest is the latest end of any mark per upstream key (scheme, host
	// and Key; Key "" for a whole-upstream mark) and per upstream (Key
	// "*"), so that Active is one map lookup.
	latest map[scopeKey]time.Time
}

type scopeKey struct{ scheme, host, key string }

// anyKey stands for "every key of the upstream" in a LocalHealthStore's
// scope index. No key hash is "*".
const anyKey = "*"

// NewLocalHealthStore returns an empty in-process HealthStore.
func NewLocalHealthStore() *LocalHealthStore {
	return &LocalHealthStore{until: make(map[Mark]time.Time), latest: make(map[scopeKey]time.Time)}
}

// Active reports whether a mark for key of scheme://host may be in force.
func (s *LocalHealthStore) Active(now time.Time, scheme, host, key string) bool {
	if s.last.Load() <= now.UnixNano() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if key == "" {
		return s.latest[scopeKey{scheme, host, anyKey}].After(now)
	}
	return s.latest[scopeKey{scheme, host, key}].After(now) || s.latest[scopeKey{scheme, host, ""}].After(now)
}

// Until returns when m ends.
func (s *LocalHealthStore) Until(m Mark) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.until[m]
}

// Put makes m last until at least until.
func (s *LocalHealthStore) Put(m Mark, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !until.After(s.until[m]) {
		return
	}
	if _, held := s.until[m]; !held && len(s.until) >= maxMarks {
		s.evict()
	}
	s.until[m] = until
	if n := until.UnixNano(); n > s.last.Load() {
		s.last.Store(n)
	}
	for _, sk := range [...]scopeKey{{m.Scheme, m.Host, m.Key}, {m.Scheme, m.Host, anyKey}} {
		if until.After(s.latest[sk]) {
			s.latest[sk] = until
		}
	}
}

// evict makes room: it forgets the half of the marks that end soonest
// (those that have ended among them), and rebuilds the scope index. s.mu
// is held.
func (s *LocalHealthStore) evict() {
	ends := make([]time.Time, 0, len(s.until))
	for _, u := range s.until {
		ends = append(ends, u)
	}
	cut := medianTime(ends)
	for m, u := range s.until {
		if !u.After(cut) {
			delete(s.until, m)
		}
	}
	clear(s.latest)
	for m, u := range s.until {
		for _, sk := range [...]scopeKey{{m.Scheme, m.Host, m.Key}, {m.Scheme, m.Host, anyKey}} {
			if u.After(s.latest[sk]) {
				s.latest[sk] = u
			}
		}
	}
}

// medianTime returns the median of ts (which it reorders).
func medianTime(ts []time.Time) time.Time {
	// Quickselect: the store is full only under a flood, and this runs
	// once per half a store's worth of new marks.
	k := len(ts) / 2
	lo, hi := 0, len(ts)-1
	for lo < hi {
		p := ts[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for ts[i].Before(p) {
				i++
			}
			for p.Before(ts[j]) {
				j--
			}
			if i <= j {
				ts[i], ts[j] = ts[j], ts[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return ts[k]
		}
	}
	return ts[k]
}

// Len is how many marks the store holds, ended ones not yet forgotten
// included.
func (s *LocalHealthStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.until)
}
