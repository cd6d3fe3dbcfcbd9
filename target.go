package llmretry

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Failover is where a Transport made by NewFailoverTransport may send a
// request, and when it moves on: Targets in order of preference, each with
// its own keys. Zero fields take their defaults.
type Failover struct {
	// Targets, the first preferred. All must speak the same API Family:
	// failover never translates a request between APIs.
	Targets []Target
	// AttemptsPerTarget is how many failures a request sits out on one
	// target when the server asked for a short wait (at most Threshold)
	// before it moves to the next target. A failure that asked for no wait
	// (a 5xx, a 529, a transport error) moves at once to a target that can
	// serve now: going beats any backoff. Default 2. The last target that
	// can serve a request keeps it for the rest of Policy.MaxAttempts, as a
	// single upstream would.
	AttemptsPerTarget int
	// Threshold is the longest server-requested wait worth sitting out on a
	// target when no other key of it is free; a longer one moves the
	// request to the next target at once. Default 5 s.
	Threshold time.Duration
	// QuotaRest is how long a key whose quota or credit is used up (a quota
	// error, a 402) sits out when the provider does not say when the quota
	// resets (it does for Gemini's daily quotas, at midnight Pacific time,
	// and with a Retry-After). Default 1 h.
	QuotaRest time.Duration
	// Recheck is how long a key sits out after it was refused (401), for
	// every model, or denied one model (a 403 or 404 that names the model
	// or a permission on it), before one request at a time probes it
	// again. Each failed probe doubles it, up to MaxRecheck. A probe that
	// succeeds brings the key back. Defaults 1 min and 1 h.
	Recheck, MaxRecheck time.Duration
	// MaxRest is the ceiling on every rest: a key told to wait, a quota's
	// window, a recheck, an ejection. A server's wait longer than it rests
	// the key for MaxRest, and is logged as clamped. Default 24 h (a
	// Gemini daily quota's window, until midnight Pacific time, is always
	// shorter).
	MaxRest time.Duration
	// Outliers says when a target that keeps failing is skipped.
	Outliers Outliers
}

// Outliers is the outlier detection of targets, after Envoy's: a target
// whose attempts fail Failures times in a row (5xx, 529, transport errors,
// streams that break before their first output, and streams handed over
// that break mid-way: cut, an in-stream error, or an end without their last
// event; never a 429 or another 4xx)
// is skipped for Ejection, times the number of times it was ejected, at
// most MaxEjection. When that time is over, one request at a time probes it;
// the first success trusts it again, a failure ejects it for longer. When
// every target that could serve a request is ejected, they are tried
// anyway, in order: skipping all of them would serve no one.
type Outliers struct {
	// Failures in a row that eject a target. Default 5.
	Failures int
	// Ejection is the first ejection's length. Default 30 s.
	Ejection time.Duration
	// MaxEjection caps an ejection's length. Default 5 min.
	MaxEjection time.Duration
}

// Defaults of Failover.
const (
	defaultAttemptsPerTarget = 2
	defaultThreshold         = 5 * time.Second
	defaultQuotaRest         = time.Hour
	defaultRecheck           = time.Minute
	defaultMaxRecheck        = time.Hour
	defaultMaxRest           = 24 * time.Hour
	defaultOutlierFailures   = 5
	defaultEjection          = 30 * time.Second
	defaultMaxEjection       = 5 * time.Minute
	// maxTargets bounds a Failover's targets: a request remembers which it
	// has visited in one word.
	maxTargets = 64
)

func (f Failover) withDefaults() Failover {
	if f.AttemptsPerTarget <= 0 {
		f.AttemptsPerTarget = defaultAttemptsPerTarget
	}
	if f.Threshold <= 0 {
		f.Threshold = defaultThreshold
	}
	if f.MaxRest <= 0 {
		f.MaxRest = defaultMaxRest
	}
	if f.QuotaRest <= 0 {
		f.QuotaRest = defaultQuotaRest
	}
	if f.Recheck <= 0 {
		f.Recheck = defaultRecheck
	}
	if f.MaxRecheck <= 0 {
		f.MaxRecheck = defaultMaxRecheck
	}
	f.MaxRecheck = max(f.MaxRecheck, f.Recheck)
	// No rest outlasts the ceiling.
	f.QuotaRest = min(f.QuotaRest, f.MaxRest)
	f.Recheck = min(f.Recheck, f.MaxRest)
	f.MaxRecheck = min(f.MaxRecheck, f.MaxRest)
	if f.Outliers.Failures <= 0 {
		f.Outliers.Failures = defaultOutlierFailures
	}
	if f.Outliers.Ejection <= 0 {
		f.Outliers.Ejection = defaultEjection
	}
	if f.Outliers.MaxEjection <= 0 {
		f.Outliers.MaxEjection = defaultMaxEjection
	}
	if f.Outliers.MaxEjection < f.Outliers.Ejection {
		f.Outliers.MaxEjection = f.Outliers.Ejection
	}
	f.Outliers.Ejection = min(f.Outliers.Ejection, f.MaxRest)
	f.Outliers.MaxEjection = min(f.Outliers.MaxEjection, f.MaxRest)
	return f
}

// Family is an API family. A request fails over only to a target of the
// same family, as the same request means the same thing there.
type Family int

const (
	// FamilyOpenAI is the OpenAI API and every server compatible with it
	// (Azure OpenAI's v1 API, OpenRouter, Groq, vLLM, ...): model in the
	// JSON body, key as "Authorization: Bearer".
	FamilyOpenAI Family = iota + 1
	// FamilyAnthropic is Anthropic's Messages API, direct or through another
	// host: model in the JSON body, key in x-api-key.
	FamilyAnthropic
	// FamilyGemini is Google's Gemini API: model in the path, key in
	// x-goog-api-key.
	FamilyGemini
)

var familyNames = map[Family]string{FamilyOpenAI: "openai", FamilyAnthropic: "anthropic", FamilyGemini: "gemini"}

func (f Family) String() string {
	if s, ok := familyNames[f]; ok {
		return s
	}
	return fmt.Sprintf("Family(%d)", int(f))
}

// ParseFamily reads a Family from its String form.
func ParseFamily(s string) (Family, bool) {
	for f, name := range familyNames {
		if strings.EqualFold(s, name) {
			return f, true
		}
	}
	return 0, false
}

// FamilyOf guesses the family of a base URL from its host: Anthropic's and
// Google's API hosts are theirs, any other speaks the OpenAI API.
func FamilyOf(u *url.URL) Family {
	host := strings.ToLower(u.Hostname())
	switch {
	case host == "api.anthropic.com":
		return FamilyAnthropic
	case host == "generativelanguage.googleapis.com" || strings.HasSuffix(host, "aiplatform.googleapis.com"):
		return FamilyGemini
	}
	return FamilyOpenAI
}

// defaultKeyHeader is how a family's APIs take a key.
func (f Family) defaultKeyHeader() string {
	switch f {
	case FamilyAnthropic:
		return "X-Api-Key"
	case FamilyGemini:
		return "X-Goog-Api-Key"
	}
	return "Authorization"
}

// Target is one place a request can be served: a base URL, the keys to
// use there, and the names its models have there.
type Target struct {
	// Name names the target in events, logs, metrics and the
	// X-Llmretry-Target response header. Required, and unique.
	Name string
	// BaseURL is the API's base, as an SDK takes it:
	// "https://api.openai.com/v1", "https://openrouter.ai/api/v1",
	// "https://api.anthropic.com". A query it has (Azure's api-version) is
	// added to every request.
	BaseURL string
	// Family is the API the target speaks; 0 means FamilyOf(BaseURL).
	Family Family
	// Keys are the target's credentials, used in turn as they rest. With
	// none, no credential is sent (a local server). The caller's own
	// credentials are never sent to a target.
	Keys []Key
	// KeyHeader is the header a key is sent in: by default Authorization
	// (as "Bearer KEY") for FamilyOpenAI, x-api-key for FamilyAnthropic,
	// x-goog-api-key for FamilyGemini. Azure OpenAI takes "api-key".
	KeyHeader string
	// Models maps a model the caller asks for to the name this target
	// gives it. When it is set, the target serves only the models it
	// lists; when it is empty, every model, under the caller's name.
	Models map[string]string
	// Budget is the target's own retry budget. nil gives it a RatioBudget
	// of its own, unless WithBudget set one for all targets (or, with nil,
	// turned budgets off).
	Budget Budget
}

// Key is an API key with an id. The id is what events, logs, metrics and
// errors show; the secret is never shown, whatever prints the Key.
type Key struct {
	ID     string
	secret *string // a pointer: fmt prints an address, never the secret, when it walks a struct
}

// NewKey returns a key named id, with secret as its value.
func NewKey(id, secret string) Key { return Key{ID: id, secret: &secret} }

// String shows the key's id only.
func (k Key) String() string { return "key " + k.ID }

// GoString shows the key's id only, for %#v.
func (k Key) GoString() string { return fmt.Sprintf("llmretry.Key{ID: %q}", k.ID) }

func (k Key) value() string {
	if k.secret == nil {
		return ""
	}
	return *k.secret
}

// Target and key errors, for NewFailoverTransport.
var (
	errNoTargets    = errors.New("failover: no targets")
	errManyTargets  = fmt.Errorf("failover: more than %d targets", maxTargets)
	errMixedFamily  = errors.New("failover: targets speak different API families, and failover does not translate between them")
	errTargetNoName = errors.New("failover: a target has no name")
)

// checkTargets validates targets and fills in what they leave to
// defaults, returning the parsed base URLs.
func checkTargets(targets []Target) ([]Target, []*url.URL, error) {
	if len(targets) == 0 {
		return nil, nil, errNoTargets
	}
	if len(targets) > maxTargets {
		return nil, nil, errManyTargets
	}
	out := make([]Target, len(targets))
	bases := make([]*url.URL, len(targets))
	names := make(map[string]bool)
	for i, tg := range targets {
		if tg.Name == "" {
			return nil, nil, fmt.Errorf("%w (target %d)", errTargetNoName, i+1)
		}
		if names[tg.Name] {
			return nil, nil, fmt.Errorf("failover: two targets are named %q", tg.Name)
		}
		names[tg.Name] = true
		u, err := url.Parse(tg.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return nil, nil, fmt.Errorf("failover: target %q: base URL must be http or https with a host and no user info", tg.Name)
		}
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawPath = ""
		if tg.Family == 0 {
			tg.Family = FamilyOf(u)
		}
		if _, ok := familyNames[tg.Family]; !ok {
			return nil, nil, fmt.Errorf("failover: target %q: unknown API family %d", tg.Name, int(tg.Family))
		}
		if i > 0 && tg.Family != out[0].Family {
			return nil, nil, fmt.Errorf("%w: %q speaks %v, %q speaks %v", errMixedFamily, out[0].Name, out[0].Family, tg.Name, tg.Family)
		}
		if tg.KeyHeader == "" {
			tg.KeyHeader = tg.Family.defaultKeyHeader()
		}
		tg.KeyHeader = http.CanonicalHeaderKey(tg.KeyHeader)
		if err := validateRequest(&http.Request{URL: u, Header: http.Header{tg.KeyHeader: nil}}); err != nil {
			return nil, nil, fmt.Errorf("failover: target %q: key header: %w", tg.Name, err)
		}
		ids := make(map[string]bool)
		for j, k := range tg.Keys {
			if k.ID == "" {
				return nil, nil, fmt.Errorf("failover: target %q: key %d has no id", tg.Name, j+1)
			}
			if ids[k.ID] {
				return nil, nil, fmt.Errorf("failover: target %q: two keys have the id %q", tg.Name, k.ID)
			}
			ids[k.ID] = true
			if k.value() == "" {
				return nil, nil, fmt.Errorf("failover: target %q: key %q is empty", tg.Name, k.ID)
			}
			if err := validateRequest(&http.Request{URL: u, Header: http.Header{"K": {k.value()}}}); err != nil {
				// Never the error itself: it would say where in the secret.
				return nil, nil, fmt.Errorf("failover: target %q: key %q has a control character (a trailing newline?)", tg.Name, k.ID)
			}
		}
		out[i], bases[i] = tg, u
	}
	return out, bases, nil
}
