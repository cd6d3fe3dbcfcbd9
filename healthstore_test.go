package llmretry

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestLocalHealthStoreMarksAreTypedAndScoped(t *testing.T) {
	s := NewLocalHealthStore()
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	if s.Active(now, "https", "api.openai.com", "") {
		t.Fatal("an empty store is active")
	}
	avoid := Mark{Kind: MarkAvoid, Scheme: "https", Host: "api.openai.com", Key: "k1", Model: "*"}
	s.Put(avoid, now.Add(time.Minute))
	// A model named "*" is a model: no quota mark for the key came of it.
	if u := s.Until(Mark{Kind: MarkQuota, Scheme: "https", Host: "api.openai.com", Key: "k1"}); !u.IsZero() {
		t.Fatalf("an avoid mark for model * reads as a quota mark until %v", u)
	}
	if u := s.Until(avoid); !u.Equal(now.Add(time.Minute)) {
		t.Fatalf("Until = %v", u)
	}
	for _, c := range []struct {
		host, key string
		want      bool
	}{
		{"api.openai.com", "", true},
		{"api.openai.com", "k1", true},
		{"api.openai.com", "k2", false}, // another key of the host: nothing concerns it
		{"api.anthropic.com", "", false},
	} {
		if got := s.Active(now, "https", c.host, c.key); got != c.want {
			t.Errorf("Active(%s, %q) = %v, want %v", c.host, c.key, got, c.want)
		}
	}
	// A whole-upstream mark concerns every key of it.
	s.Put(Mark{Kind: MarkEjection, Scheme: "https", Host: "api.openai.com", Target: "openai"}, now.Add(2*time.Minute))
	if !s.Active(now, "https", "api.openai.com", "k2") {
		t.Error("an ejection does not concern a key of its upstream")
	}
	// Put only ever extends.
	s.Put(avoid, now.Add(time.Second))
	if u := s.Until(avoid); !u.Equal(now.Add(time.Minute)) {
		t.Fatalf("a shorter Put shortened the mark to %v", u)
	}
	// Once every mark has ended, nothing is active.
	if s.Active(now.Add(3*time.Minute), "https", "api.openai.com", "") {
		t.Error("active after every mark ended")
	}
}

func TestLocalHealthStoreStaysBoundedUnderAFloodOfModels(t *testing.T) {
	s := NewLocalHealthStore()
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range 3 * maxMarks {
		s.Put(Mark{Kind: MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: fmt.Sprint("m", i)},
			now.Add(time.Duration(i%100+1)*time.Second))
	}
	if n := s.Len(); n > maxMarks {
		t.Fatalf("%d marks held, cap %d", n, maxMarks)
	}
	// The newest mark is held, and the store still answers.
	last := Mark{Kind: MarkCooldown, Scheme: "https", Host: "h", Key: "k", Model: fmt.Sprint("m", 3*maxMarks-1)}
	if s.Until(last).IsZero() || !s.Active(now, "https", "h", "k") {
		t.Fatal("the newest mark was evicted")
	}
}

func TestMarkKindNames(t *testing.T) {
	for _, k := range []MarkKind{MarkCooldown, MarkAvoid, MarkQuota, MarkEjection} {
		if got, ok := ParseMarkKind(k.String()); !ok || got != k {
			t.Errorf("ParseMarkKind(%q) = %v, %v", k.String(), got, ok)
		}
	}
	if _, ok := ParseMarkKind("*"); ok {
		t.Error("ParseMarkKind accepted *")
	}
	if s := MarkKind(9).String(); s != "MarkKind(9)" {
		t.Errorf("String of an unknown kind: %s", s)
	}
}

// A request pays for lookups only where a mark concerns it: a plain
// request to another host, or with another key, reads no body for its
// model while marks are held for someone else.
func TestMarksCostLookupsOnlyToTheRequestsTheyConcern(t *testing.T) {
	store := NewLocalHealthStore()
	now := time.Now()
	store.Put(Mark{Kind: MarkCooldown, Scheme: "https", Host: "busy.test", Key: "some-other-key", Model: "gpt-4o"}, now.Add(time.Hour))
	base := roundTripFunc(func(r *http.Request) (*http.Response, error) { return reply(r, 200, "{}"), nil })
	tr := NewTransport(base, WithHealthStore(store))
	for _, url := range []string{"https://calm.test/v1/chat/completions", "https://busy.test/v1/chat/completions"} {
		reads := 0
		req, _ := http.NewRequest("POST", url, strings.NewReader(`{"model":"gpt-4o"}`))
		req.Header.Set("Authorization", "Bearer sk-mine")
		get := req.GetBody
		req.GetBody = func() (io.ReadCloser, error) { reads++; return get() }
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if reads != 0 {
			t.Fatalf("%s: the body was read %d times for its model, though no mark concerns this key", url, reads)
		}
	}
}
