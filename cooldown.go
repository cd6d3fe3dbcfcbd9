package llmretry

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Cooldowns remembers, per upstream, until when the server asked callers to
// wait, so that other requests to the same upstream wait out the rest of it
// before their first attempt instead of each discovering the 429 on its
// own. Implementations must be safe for concurrent use and must not block.
//
// What starts one, and what it holds, is decided by the Transport. Only a
// 429 whose wait is within Policy.MaxRetryAfter starts a cooldown, and it
// holds only requests with the same scheme, host, credential and model. A
// 429 is a statement about that key's quota on that model, which every
// replica behind a load balancer enforces alike; but a lone 429 among
// successes (a burst that one request hit) says little about the next
// request. So a cooldown starts at once when the 429 says a rate-limit
// bucket is empty (x-ratelimit-remaining-*: 0, anthropic-ratelimit-*-
// remaining: 0), and otherwise at the second 429 in a row for the same key
// and model, as Envoy ejects a host on consecutive failures. A 503 or 529
// with Retry-After is about the state of the server that sent it (one
// replica, or the provider's whole fleet, which a single caller's pause does
// not relieve): it is retried after its wait, budgeted, but holds no one
// else.
type Cooldowns interface {
	// Active reports whether any cooldown may still run at now. When it
	// says false a request skips the lookup, and the cost of naming its
	// upstream.
	Active(now time.Time) bool
	// Until returns when up's cooldown ends (the zero time if none).
	Until(up Upstream) time.Time
	// Extend makes up's cooldown last at least wait from now.
	Extend(up Upstream, now time.Time, wait time.Duration)
}

// Upstream names where requests go, as whom and for what: the scheme and
// host, a hash of the credential (never the credential itself) and the
// model. Two API keys on one host, or two models on one key, are two
// upstreams, as their rate limits are separate.
type Upstream struct {
	Scheme, Host string
	// Credential is a hex SHA-256 prefix of the request's credential
	// headers and key parameter; empty when there are none.
	Credential string
	// Model is the model the request named (in its JSON body, or in the
	// path for Gemini); empty when it named none.
	Model string
}

// String renders up as scheme://host#credential#model. ParseUpstream reads
// it back.
func (u Upstream) String() string {
	return u.Scheme + "://" + u.Host + "#" + u.Credential + "#" + u.Model
}

// ParseUpstream reads an Upstream back from its String form.
func ParseUpstream(s string) (Upstream, bool) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Upstream{}, false
	}
	host, rest, ok := strings.Cut(rest, "#")
	if !ok {
		return Upstream{}, false
	}
	cred, model, _ := strings.Cut(rest, "#")
	return Upstream{Scheme: scheme, Host: host, Credential: cred, Model: model}, true
}

// credentialHeaders are the headers LLM APIs take a key or token in.
var credentialHeaders = [...]string{"Authorization", "X-Api-Key", "Api-Key", "X-Goog-Api-Key"}

// upstreamOf names the upstream of req.
func upstreamOf(req *http.Request) Upstream {
	up := Upstream{Scheme: req.URL.Scheme, Host: req.URL.Host, Model: modelOf(req)}
	h := sha256.New()
	n := 0
	for _, name := range credentialHeaders {
		for _, v := range req.Header.Values(name) {
			writeCredential(h, name, v)
			n++
		}
	}
	if k := req.URL.Query().Get("key"); k != "" { // Gemini's ?key=
		h.Write([]byte("key\x00" + k))
		n++
	}
	if n > 0 {
		up.Credential = credentialSum(h)
	}
	return up
}

// writeCredential adds one credential header to h, the one encoding both
// upstreamOf and a failover key's Upstream use.
func writeCredential(h hash.Hash, name, value string) {
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(value))
	h.Write([]byte{0})
}

// credentialSum is Upstream.Credential for what h was given.
func credentialSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)[:12]) }

// LocalCooldowns keeps cooldowns in this process.
type LocalCooldowns struct {
	latest atomic.Int64 // the latest end of any cooldown, in Unix ns
	mu     sync.Mutex
	until  map[Upstream]time.Time
}

// NewLocalCooldowns returns an empty in-process Cooldowns.
func NewLocalCooldowns() *LocalCooldowns {
	return &LocalCooldowns{until: make(map[Upstream]time.Time)}
}

// Active reports whether any cooldown ends after now.
func (c *LocalCooldowns) Active(now time.Time) bool {
	return c.latest.Load() > now.UnixNano()
}

// Until returns when up's cooldown ends.
func (c *LocalCooldowns) Until(up Upstream) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.until[up]
}

// Extend makes up's cooldown last at least wait from now.
func (c *LocalCooldowns) Extend(up Upstream, now time.Time, wait time.Duration) {
	until := now.Add(wait)
	c.mu.Lock()
	defer c.mu.Unlock()
	if until.After(c.until[up]) {
		c.until[up] = until
	}
	// Forget the ones that are over, so the map stays small.
	latest := int64(0)
	for k, u := range c.until {
		if !u.After(now) {
			delete(c.until, k)
		} else if n := u.UnixNano(); n > latest {
			latest = n
		}
	}
	c.latest.Store(latest)
}

// maxStreaks bounds how many upstreams' runs of 429s are remembered.
const maxStreaks = 1024

// limitStreaks counts, per upstream, the 429s in a row since its last
// success.
type limitStreaks struct {
	size atomic.Int32 // entries: a success skips the lookup when there are none
	mu   sync.Mutex
	n    map[Upstream]int
}

// hit counts a 429 for up and returns how many in a row it makes.
func (s *limitStreaks) hit(up Upstream) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = make(map[Upstream]int)
	}
	if _, ok := s.n[up]; !ok && len(s.n) >= maxStreaks {
		clear(s.n) // forget old runs rather than grow without bound
	}
	s.n[up]++
	s.size.Store(int32(len(s.n)))
	return s.n[up]
}

// succeeded ends req's upstream's run of 429s, if there is one.
func (s *limitStreaks) succeeded(req *http.Request) {
	if s.size.Load() == 0 {
		return
	}
	s.clear(upstreamOf(req))
}

// clear ends up's run of 429s.
func (s *limitStreaks) clear(up Upstream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.n, up)
	s.size.Store(int32(len(s.n)))
}

// bucketEmpty reports a 429 that says one of its rate-limit buckets has
// nothing left: the limit binds for every request on the key until it
// resets, not only for the one that hit it.
func bucketEmpty(h http.Header) bool {
	for name, vals := range h {
		if len(vals) == 0 || strings.TrimSpace(vals[0]) != "0" {
			continue
		}
		lower := strings.ToLower(name)
		if strings.HasPrefix(lower, "x-ratelimit-remaining-") ||
			strings.HasPrefix(lower, "anthropic-ratelimit-") && strings.HasSuffix(lower, "-remaining") {
			return true
		}
	}
	return false
}
