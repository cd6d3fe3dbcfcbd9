package redisstate

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/llmretry/llmretry"
)

func healthKey(s *State) string {
	return "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}:health:" + healthVersion
}

// A mark put by one process is seen by another after a sync, as the same
// typed mark: another key, another model, or another kind of mark for
// the same names is not held.
func TestMarkIsSharedAcrossProcesses(t *testing.T) {
	ss := shared(t, 2)
	a, b := ss[0], ss[1]
	now := time.Now()
	cool := llmretry.Mark{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "api.openai.com", Key: "abc123", Model: "*"}
	eject := llmretry.Mark{Kind: llmretry.MarkEjection, Scheme: "https", Host: "api.anthropic.com", Target: "backup"}
	a.Put(cool, now.Add(30*time.Second))
	a.Put(eject, now.Add(time.Minute))
	if b.Active(now, "https", "api.openai.com", "abc123") {
		t.Fatal("b knew before any sync")
	}
	syncAll(t, a, b)
	if !b.Active(now, "https", "api.openai.com", "abc123") || !b.Active(now, "https", "api.anthropic.com", "") {
		t.Fatal("b does not see a's marks")
	}
	if d := b.Until(cool).Sub(now); d < 29*time.Second || d > 31*time.Second {
		t.Fatalf("b's cooldown ends in %v, want about 30s", d)
	}
	if d := b.Until(eject).Sub(now); d < 59*time.Second || d > 61*time.Second {
		t.Fatalf("b's ejection ends in %v, want about 1m", d)
	}
	for _, other := range []llmretry.Mark{
		{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "api.openai.com", Key: "other", Model: "*"},
		{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "api.openai.com", Key: "abc123", Model: "gpt-4o"},
		// A model named "*" is a model, not every model: no quota.
		{Kind: llmretry.MarkQuota, Scheme: "https", Host: "api.openai.com", Key: "abc123"},
		{Kind: llmretry.MarkAvoid, Scheme: "https", Host: "api.openai.com", Key: "abc123", Model: "*"},
	} {
		if u := b.Until(other); !u.IsZero() {
			t.Errorf("%+v is held until %v", other, u)
		}
	}
}

// Each process reads only its own version's hash: the first version's
// ":cooldowns" hash, and a later version's, are not read, so a mixed fleet
// during a rolling upgrade cannot misread them.
func TestMarksOfAnotherVersionAreIgnored(t *testing.T) {
	s := newState(t, "versions")
	ctx := context.Background()
	tag := "{" + s.cfg.Prefix + ":" + s.cfg.Name + "}"
	m := llmretry.Mark{Kind: llmretry.MarkQuota, Scheme: "https", Host: "api.openai.com", Key: "abc123"}
	end := strconv.FormatInt(s.now().Add(time.Hour).UnixMilli(), 10)
	for key, fv := range map[string][]any{
		tag + ":cooldowns": {"https://api.openai.com#abc123#*", end},
		tag + ":health:v3": {markField(m), end},
	} {
		if err := s.cfg.Client.HSet(ctx, key, fv...).Err(); err != nil {
			t.Fatal(err)
		}
		s.cfg.Client.PExpire(ctx, key, time.Minute)
	}
	syncAll(t, s)
	if s.Active(s.now(), "https", "api.openai.com", "abc123") || !s.Until(m).IsZero() {
		t.Fatal("a mark of another version was read")
	}
	// The same mark in this version's hash is read.
	if err := s.cfg.Client.HSet(ctx, healthKey(s), markField(m), end).Err(); err != nil {
		t.Fatal(err)
	}
	syncAll(t, s)
	if s.Until(m).IsZero() {
		t.Fatal("a mark of this version was not read")
	}
}

// A rest of 31 years (a hostile Retry-After, or one from before the
// ceiling) is cut to MaxRest when read, in Redis too: it does not slide
// forward at every sync, and it ends.
func TestHostileRestIsClampedToMaxRest(t *testing.T) {
	s := newState(t, "clamp", func(c *Config) { c.MaxRest = time.Hour })
	advance := fakeNow(s)
	ctx := context.Background()
	m := llmretry.Mark{Kind: llmretry.MarkQuota, Scheme: "https", Host: "api.openai.com", Key: "abc123"}
	start := s.now()
	hostile := start.Add(31 * 365 * 24 * time.Hour).UnixMilli()
	if err := s.cfg.Client.HSet(ctx, healthKey(s), markField(m), hostile).Err(); err != nil {
		t.Fatal(err)
	}
	syncAll(t, s)
	ceiling := start.Add(time.Hour).UnixMilli()
	if got := s.Until(m).UnixMilli(); got != ceiling {
		t.Fatalf("the mark ends %v after the sync, want MaxRest (1h)", time.Duration(got-start.UnixMilli())*time.Millisecond)
	}
	if got, err := s.cfg.Client.HGet(ctx, healthKey(s), markField(m)).Int64(); err != nil || got != ceiling {
		t.Fatalf("Redis holds %d (%v), want the clamped end %d", got, err, ceiling)
	}
	advance(30 * time.Minute)
	syncAll(t, s)
	if got, _ := s.cfg.Client.HGet(ctx, healthKey(s), markField(m)).Int64(); got != ceiling {
		t.Fatalf("the clamped end moved to %d, want %d", got, ceiling)
	}
	advance(31 * time.Minute)
	syncAll(t, s)
	if s.Active(s.now(), "https", "api.openai.com", "abc123") {
		t.Fatal("the mark still runs after MaxRest")
	}
	if n, _ := s.cfg.Client.HLen(ctx, healthKey(s)).Result(); n != 0 {
		t.Fatalf("Redis still holds %d marks after they ended", n)
	}
	// A process's own mark beyond the ceiling is published clamped too.
	s.Put(m, s.now().Add(31*365*24*time.Hour))
	syncAll(t, s)
	if got, _ := s.cfg.Client.HGet(ctx, healthKey(s), markField(m)).Int64(); got != s.now().Add(time.Hour).UnixMilli() {
		t.Fatalf("published %v ahead, want MaxRest", time.Duration(got-s.now().UnixMilli())*time.Millisecond)
	}
}

// A flood of model names (each 429 for a new one is a mark) cannot grow
// the hash without limit: the marks that end soonest make way.
func TestAFloodOfMarksIsBounded(t *testing.T) {
	a := newState(t, "flood")
	b := newState(t, "flood", func(c *Config) { c.Name = a.cfg.Name })
	now := a.now()
	const n = 3 * maxSyncedMarks
	for i := range n {
		a.Put(llmretry.Mark{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: fmt.Sprint("m", i)},
			now.Add(time.Minute+time.Duration(i)*time.Millisecond))
	}
	syncAll(t, a, b)
	hlen, err := a.cfg.Client.HLen(context.Background(), healthKey(a)).Result()
	if err != nil || hlen > maxSyncedMarks {
		t.Fatalf("the hash holds %d marks (%v), want at most %d", hlen, err, maxSyncedMarks)
	}
	last := llmretry.Mark{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: fmt.Sprint("m", n-1)}
	first := llmretry.Mark{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: "m0"}
	if b.Until(last).IsZero() || !b.Until(first).IsZero() {
		t.Fatalf("b holds the last-ending mark: %v, the first-ending: %v; want only the last", b.Until(last), b.Until(first))
	}
	if got := b.health.Len(); got > maxSyncedMarks {
		t.Fatalf("b mirrors %d marks, want at most %d", got, maxSyncedMarks)
	}
}

// Every mark has one field, read back as itself; no two marks share one,
// whatever their names hold.
func TestMarkFieldsAreUnambiguous(t *testing.T) {
	marks := []llmretry.Mark{
		{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: "*"},
		{Kind: llmretry.MarkAvoid, Scheme: "https", Host: "h", Key: "k", Model: "*"},
		{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: `a" "b`},
		{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: `k" "a`, Model: "b"},
		{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: "avoid:x"},
		{Kind: llmretry.MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: "\xff\x00\n"},
		{Kind: llmretry.MarkQuota, Scheme: "https", Host: "h", Key: "k"},
		{Kind: llmretry.MarkEjection, Scheme: "https", Host: "h", Target: "k"},
	}
	seen := map[string]llmretry.Mark{}
	for _, m := range marks {
		f := markField(m)
		if prev, ok := seen[f]; ok {
			t.Fatalf("%+v and %+v share the field %q", prev, m, f)
		}
		seen[f] = m
		if back, ok := parseMarkField(f); !ok || back != m {
			t.Fatalf("%q read back as %+v, %v; want %+v", f, back, ok, m)
		}
	}
	for _, junk := range []string{
		"", "cooldown", `cooldown "https" "h" "" "k"`, `cooldown "https" "h" "" "k" "m" ""`,
		`cooldown "https" "h" "" "k" "m" `, `cooldown  "https" "h" "" "k" "m"`, "cooldown `https` \"h\" \"\" \"k\" \"m\"",
		`cooldown "\x68ttps" "h" "" "k" "m"`, `warp "https" "h" "" "k" "m"`, `MarkKind(9) "https" "h" "" "k" "m"`,
		`ejection "https" "h" "t" "k" ""`, `quota "https" "h" "" "k" "m"`, `cooldown "https" "h" "t" "k" "m"`,
	} {
		if m, ok := parseMarkField(junk); ok {
			t.Errorf("%q read as %+v", junk, m)
		}
	}
}

func FuzzParseMarkField(f *testing.F) {
	f.Add(`cooldown "https" "h" "" "k" "m"`)
	f.Add(`ejection "https" "h" "t" "" ""`)
	f.Add(`quota "https" "h" "" "k\x00" ""`)
	f.Fuzz(func(t *testing.T, s string) {
		m, ok := parseMarkField(s)
		if ok && markField(m) != s {
			t.Fatalf("%q read as %+v, which is written %q", s, m, markField(m))
		}
	})
}
