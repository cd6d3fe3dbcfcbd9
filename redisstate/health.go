package redisstate

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmretry/llmretry"
)

// The fleet's health marks live in one Redis hash, {prefix:name}:health:v2,
// a field per mark and its end as the value, in Unix ms. A field says
// every field of the Mark, so no name a client sends can pass for another
// mark or kind: the kind's name, then Scheme, Host, Target, Key and Model,
// each quoted as Go quotes a string, one space between:
//
//	cooldown "https" "api.openai.com" "" "3f2a9c…" "gpt-4o"
//
// The hash's name carries the encoding's version. A process reads only its
// own version's hash, so a fleet in the middle of a rolling upgrade cannot
// misread another's entries (the first version's ":cooldowns" hash is not
// read at all); a version that changes the encoding takes a new name.

// healthVersion names the encoding of the health hash's fields.
const healthVersion = "v2"

// maxSyncedMarks bounds the health hash, and what one process keeps to
// publish: under a flood of model names (each 429 for a new one is a mark)
// the marks that end soonest make way.
const maxSyncedMarks = 4096

// markField encodes m as a field of the health hash.
func markField(m llmretry.Mark) string {
	var b strings.Builder
	b.WriteString(m.Kind.String())
	for _, f := range [...]string{m.Scheme, m.Host, m.Target, m.Key, m.Model} {
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(f))
	}
	return b.String()
}

// parseMarkField reads a field of the health hash back, and reports false
// for anything markField does not write: an unknown kind, another quoting
// of the same strings, or a mark that sets a field its kind does not use.
func parseMarkField(f string) (llmretry.Mark, bool) {
	name, rest, ok := strings.Cut(f, " ")
	if !ok {
		return llmretry.Mark{}, false
	}
	kind, ok := llmretry.ParseMarkKind(name)
	if !ok {
		return llmretry.Mark{}, false
	}
	var v [5]string
	for i := range v {
		if i > 0 {
			if rest, ok = strings.CutPrefix(rest, " "); !ok {
				return llmretry.Mark{}, false
			}
		}
		q, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return llmretry.Mark{}, false
		}
		if v[i], err = strconv.Unquote(q); err != nil {
			return llmretry.Mark{}, false
		}
		rest = rest[len(q):]
	}
	m := llmretry.Mark{Kind: kind, Scheme: v[0], Host: v[1], Target: v[2], Key: v[3], Model: v[4]}
	if rest != "" || markField(m) != f || !wellFormed(m) {
		return llmretry.Mark{}, false
	}
	return m, true
}

// wellFormed reports whether m sets only the fields its kind uses.
func wellFormed(m llmretry.Mark) bool {
	switch m.Kind {
	case llmretry.MarkEjection:
		return m.Key == "" && m.Model == ""
	case llmretry.MarkQuota:
		return m.Target == "" && m.Model == ""
	default: // MarkCooldown, MarkAvoid
		return m.Target == ""
	}
}

// Active reports whether any mark for key of scheme://host, or for the
// upstream as a whole, may be in force at now: this process's own, or the
// fleet's as of the last sync. It never touches Redis.
func (s *State) Active(now time.Time, scheme, host, key string) bool {
	return s.health.Active(now, scheme, host, key)
}

// Until returns when m ends, as this process knows it. It never touches
// Redis.
func (s *State) Until(m llmretry.Mark) time.Time { return s.health.Until(m) }

// Put records m here at once, and publishes it at the next sync.
func (s *State) Put(m llmretry.Mark, until time.Time) {
	s.health.Put(m, until)
	ms := until.UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	old, held := s.pushes[m]
	if ms <= old {
		return
	}
	if !held && len(s.pushes) >= maxSyncedMarks {
		s.trimPushes()
	}
	s.pushes[m] = ms
}

// trimPushes makes room among the marks to publish: it forgets the half
// that end soonest, as the health hash would. s.mu is held.
func (s *State) trimPushes() {
	ends := make([]int64, 0, len(s.pushes))
	for _, u := range s.pushes {
		ends = append(ends, u)
	}
	slices.Sort(ends)
	cut := ends[len(ends)/2]
	for m, u := range s.pushes {
		if u <= cut {
			delete(s.pushes, m)
		}
	}
}

// mirror takes a mark the fleet published into this process's store, its
// end cut to MaxRest from now. It reports false for a field this version
// does not write.
func (s *State) mirror(field string, until, now time.Time) bool {
	m, ok := parseMarkField(field)
	if !ok {
		return false
	}
	if ceiling := now.Add(s.cfg.MaxRest); until.After(ceiling) {
		until = ceiling
	}
	if until.After(now) {
		s.health.Put(m, until)
	}
	return true
}
