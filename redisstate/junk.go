package redisstate

import "log/slog"

// Anyone can write to the shared keys: an operator by hand, a tool, a
// process of another version. What this version did not write (a value
// that is not a count, a field it does not know) is skipped, so that it
// never fails a sync or counts for anything, and logged once, so that
// someone can find it and remove it.

// maxJunkNotes bounds the junk a State remembers having logged: a flood
// of junk fields cannot grow it, and is logged in part.
const maxJunkNotes = 1024

// junkEntry is one field in Redis this version did not write.
type junkEntry struct{ key, field, value string }

// junkNotes remembers the junk a State has logged. Its owner's mutex
// guards it.
type junkNotes struct {
	seen map[[2]string]struct{}
	full bool
}

// note logs j, unless it was logged before.
func (n *junkNotes) note(log *slog.Logger, j junkEntry) {
	k := [2]string{j.key, clip(j.field)}
	if _, ok := n.seen[k]; ok || n.full {
		return
	}
	if n.seen == nil {
		n.seen = map[[2]string]struct{}{}
	}
	if len(n.seen) >= maxJunkNotes {
		n.full = true
		log.Warn("llmretry redisstate: more fields in Redis this version did not write; no more will be logged")
		return
	}
	n.seen[k] = struct{}{}
	log.Warn("llmretry redisstate: skipping what this version did not write in Redis",
		"key", j.key, "field", clip(j.field), "value", clip(j.value))
}

// clip cuts a string from Redis to a length fit for a log line.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
