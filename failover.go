package llmretry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Failover: retrying elsewhere. A Transport made by NewFailoverTransport
// sends each attempt to one key of one target, and after a failure decides
// whether the next attempt goes to another key, another target, or the
// same place after a wait:
//
//   - a 429, or any failure with a server-requested wait, rests that key
//     for its wait, and the request moves at once to a free key of the same
//     target: no sleep while a free key exists;
//   - a quota error (a 429 or 402 that waiting will not fix) takes the key
//     out for the quota's window when the provider says it, else for
//     Failover.QuotaRest; a 401 or 403 until the Transport is made again;
//     the request moves to a free key, or to the next target;
//   - a 5xx, a 529 or a transport error is retried on the same target, as
//     with one upstream, until it has had AttemptsPerTarget such failures,
//     or the server asks for a wait above Threshold, or the target is
//     ejected or cooling down (every key of it out or in the fleet's
//     cooldown); then the request moves to the next target at once;
//   - the request's last attempt goes to the next target, if there is one,
//     rather than to the target that just failed;
//   - the last target that can serve it keeps it, as one upstream would.
//
// Policy.MaxAttempts and the context's deadline bound the whole journey:
// no target adds a timeout of its own. The stream contract holds across
// targets: once a response is handed over, nothing is sent anywhere again.

// TargetHeader is set on every response a failover Transport hands over to
// the Name of the target that sent it (never a key).
const TargetHeader = "X-Llmretry-Target"

// NewFailoverTransport returns a Transport that sends requests to f's
// targets (see Failover), each attempt through base (http.DefaultTransport
// if nil). Point the client at the first target's base URL: a request's
// path is taken relative to it and sent under the chosen target's base.
// It fails if the targets are not valid, or do not all speak one API
// family.
func NewFailoverTransport(base http.RoundTripper, f Failover, opts ...Option) (*Transport, error) {
	targets, bases, err := checkTargets(f.Targets)
	if err != nil {
		return nil, err
	}
	t := NewTransport(base, opts...)
	f = f.withDefaults()
	f.Targets = targets
	t.pool = newPool(f, targets, bases, t.cfg.budget, t.cfg.budgetSet, BudgetConfig{Clock: t.cfg.clock})
	if !t.cfg.budgetSet {
		t.cfg.budget = nil // NewTransport's default: each target has its own instead
	}
	return t, nil
}

// Health is a change in what a failover Transport knows of a key or target.
type Health int

const (
	// KeyResting: the key was told to wait (a 429, a server wait); it is
	// avoided until HealthEvent.Until.
	KeyResting Health = iota + 1
	// KeyOutQuota: the key's quota or credit is used up; it is out until
	// HealthEvent.Until.
	KeyOutQuota
	// KeyOutAuth: the key was refused (401, 403); it is out until the
	// Transport is made again.
	KeyOutAuth
	// TargetEjected: the target failed too often in a row; it is skipped
	// until HealthEvent.Until, then probed.
	TargetEjected
	// TargetRestored: an ejected target served a request, and is trusted
	// again.
	TargetRestored
)

var healthNames = map[Health]string{
	KeyResting: "key resting", KeyOutQuota: "key out: quota", KeyOutAuth: "key out: refused",
	TargetEjected: "target ejected", TargetRestored: "target restored",
}

func (h Health) String() string {
	if s, ok := healthNames[h]; ok {
		return s
	}
	return fmt.Sprintf("Health(%d)", int(h))
}

// HealthEvent reports a change in a key or target, by their names: never a
// key's value.
type HealthEvent struct {
	Target string
	// Key is the key's ID; empty for a change of the whole target.
	Key    string
	Health Health
	// Until is when the rest, quota or ejection ends; zero for KeyOutAuth
	// and TargetRestored.
	Until time.Time
	// Cause is the failure that made the change ("status 429").
	Cause string
}

// WithOnHealth calls f on each change in a failover Transport's keys and
// targets, from the goroutine making the request. f must not block.
func WithOnHealth(f func(HealthEvent)) Option {
	return func(c *config) { c.onHealth = f }
}

var errUnavailable = errors.New("failover: no target serves this model with a key that is not out")

// journey is one request's way through the targets.
type journey struct {
	model    string // as the caller named it
	at       placement
	fails    int    // target failures on the current target
	onTarget int    // attempts sent to the current target
	visited  uint64 // targets sent to, by index
}

// here is where the journey's current attempt went (the zero placement
// without failover).
func (j *journey) here() placement {
	if j == nil {
		return placement{}
	}
	return j.at
}

// startJourney picks the first placement of req, waiting first when every
// key that could serve it is in the fleet's cooldown.
func (t *Transport) startJourney(req *http.Request) (*journey, error) {
	j := &journey{model: modelOf(req)}
	for {
		pl, wait, ok := t.pool.choose(j.model, 0, t.cfg.clock.Now(), t.cfg.cooldowns)
		if !ok {
			v := verdict{cause: "no target or key for model " + upstreamWord(j.model), reason: ReasonUnavailable}
			return nil, t.giveUp(req, nil, 0, v, errUnavailable, nil)
		}
		if wait <= 0 {
			t.moveTo(j, pl)
			return j, nil
		}
		if pl.probe {
			t.pool.targets[pl.target].released()
		}
		if err := t.hold(req, wait); err != nil {
			return nil, err
		}
	}
}

// moveTo sends the journey's next attempt to pl, counting a first visit to
// a target as a request in that target's budget.
func (t *Transport) moveTo(j *journey, pl placement) {
	if pl.target != j.at.target || j.visited == 0 {
		j.fails, j.onTarget = 0, 0
		if j.visited&(1<<pl.target) == 0 {
			if b := t.pool.targets[pl.target].budget; b != nil {
				b.OnRequest()
			}
		}
		j.visited |= 1 << pl.target
	}
	j.at = pl
}

// keyFault reports a response that stopped retrying because of the key:
// refused (401, 403), or out of quota or credit (a 429 or 402 that waiting
// will not fix). Another key may serve the request.
func keyFault(resp *http.Response, v verdict) (fault, auth bool) {
	if resp == nil || v.retry || v.reason != ReasonNotRetryable {
		return false, false
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return true, true
	case http.StatusTooManyRequests, http.StatusPaymentRequired:
		return true, false
	}
	return false, false
}

// targetFault reports a failure that says something of the target's
// health: a 5xx (529 included), a transport error, a stream that failed
// before its first event. A 429 or another 4xx says nothing of it.
func targetFault(resp *http.Response, v verdict) bool {
	return v.retry && (resp == nil || resp.StatusCode >= 500 || v.failure == FailureFirstEvent || v.failure == FailureStream)
}

// record updates what is known of the key and target an attempt went to.
func (t *Transport) record(req *http.Request, j *journey, resp *http.Response, v verdict) {
	p, cd := t.pool, t.cfg.cooldowns
	ts := p.targets[j.at.target]
	k := ts.keys[j.at.key]
	now := t.cfg.clock.Now()
	fault, auth := keyFault(resp, v)
	switch {
	case !v.retry && v.reason == 0:
		if ts.succeeded(j.at.probe) {
			t.health(req, HealthEvent{Target: ts.Name, Health: TargetRestored})
		}
		if t.streaks.size.Load() > 0 {
			t.streaks.clear(ts.keyUp(k, j.model))
		}
	case fault && auth:
		k.setOut(time.Time{})
		t.health(req, HealthEvent{Target: ts.Name, Key: k.id, Health: KeyOutAuth, Cause: v.cause})
	case fault:
		rest := p.f.QuotaRest // the quota's window, when the provider says it
		if v.window > 0 {
			rest = v.window
		}
		until := now.Add(rest)
		k.setOut(until)
		if cd != nil {
			cd.Extend(ts.keyUp(k, allModels), now, rest)
		}
		t.health(req, HealthEvent{Target: ts.Name, Key: k.id, Health: KeyOutQuota, Until: until, Cause: v.cause})
	case v.retry && v.waitOK:
		rest := min(v.wait, p.f.QuotaRest)
		k.setAvoid(j.model, now, now.Add(rest))
		if cd != nil { // the fleet avoids it too, without holding anyone for it
			cd.Extend(ts.keyUp(k, avoidOnly+j.model), now, rest)
		}
		t.health(req, HealthEvent{Target: ts.Name, Key: k.id, Health: KeyResting, Until: now.Add(rest), Cause: v.cause})
		// As with one upstream, the fleet is told (and requests are held
		// when nothing else is free) only when the limit binds beyond this
		// request: a bucket said empty, or a second 429 in a row.
		if resp != nil && resp.StatusCode == http.StatusTooManyRequests && cd != nil && v.wait <= t.cfg.policy.MaxRetryAfter {
			up := ts.keyUp(k, j.model)
			if t.streaks.hit(up) >= 2 || bucketEmpty(resp.Header) {
				cd.Extend(up, now, v.wait)
			}
		}
	}
	switch {
	case targetFault(resp, v):
		j.fails++
		if d := ts.failed(now, j.at.probe, p.f.Outliers); d > 0 {
			if cd != nil {
				cd.Extend(ts.up, now, d)
			}
			t.health(req, HealthEvent{Target: ts.Name, Health: TargetEjected, Until: now.Add(d), Cause: v.cause})
		}
	case j.at.probe && (v.retry || v.reason != 0):
		ts.released()
	}
	j.at.probe = false
}

// failoverNext decides where and when a request goes after a failed
// attempt (a retryable failure, or a key fault): moved is true when it
// goes at once to another key or target (j is updated); otherwise it is
// retried where it is after wait, or stopped with stop.
func (t *Transport) failoverNext(ctx context.Context, j *journey, attempt int, canReplay bool, v verdict) (wait time.Duration, src WaitSource, stop Reason, moved bool) {
	p, cd := t.pool, t.cfg.cooldowns
	if attempt >= t.cfg.policy.MaxAttempts {
		return 0, 0, ReasonExhausted, false
	}
	if !canReplay {
		return 0, 0, ReasonBodyNotReplayable, false
	}
	now := t.cfg.clock.Now()
	ts := p.targets[j.at.target]
	// Another key of this target, at once: the key was told to wait, or
	// is out.
	if !v.retry || v.waitOK {
		if ki := ts.freeKey(j.model, now, cd, j.at.key); ki >= 0 && (ts.budget == nil || ts.budget.AllowRetry()) {
			j.at.key = ki
			return 0, 0, 0, true
		}
	}
	// This target again, after a wait, while it has attempts left and the
	// wait is short, unless the next attempt is the request's last and
	// another target could take it.
	var stayWait time.Duration
	var staySrc WaitSource
	var stayStop Reason
	stayed := false
	last := attempt+1 >= t.cfg.policy.MaxAttempts
	if v.retry && j.fails < p.f.AttemptsPerTarget && !ts.ejected(now, cd) && !ts.coolingDown(j.model, now, cd) &&
		(!v.waitOK || v.wait <= p.f.Threshold) && !(last && p.hasNext(j.model, j.at.target, now, cd)) {
		stayed = true
		stayWait, staySrc, stayStop = t.nextWait(ctx, attempt, canReplay, v, ts.budget)
		if stayStop == 0 {
			return stayWait, staySrc, 0, false
		}
	}
	// The next target, at once.
	if pl, ok := p.nextTarget(j.model, j.at.target, now, cd); ok {
		t.moveTo(j, pl)
		return 0, 0, 0, true
	}
	if !v.retry {
		return 0, 0, ReasonNotRetryable, false
	}
	// Nowhere else to go: retried here, as with one upstream.
	if stayed {
		return stayWait, staySrc, stayStop, false
	}
	wait, src, stop = t.nextWait(ctx, attempt, canReplay, v, ts.budget)
	return wait, src, stop, false
}

// health reports a change in a key or target to the observers.
func (t *Transport) health(req *http.Request, ev HealthEvent) {
	if t.cfg.onHealth != nil {
		t.cfg.onHealth(ev)
	}
	if t.cfg.logger != nil {
		level := slog.LevelInfo
		if ev.Health == KeyOutAuth || ev.Health == KeyOutQuota || ev.Health == TargetEjected {
			level = slog.LevelWarn
		}
		attrs := []slog.Attr{slog.String("target", ev.Target), slog.String("health", ev.Health.String()), slog.String("cause", ev.Cause)}
		if ev.Key != "" {
			attrs = append(attrs, slog.String("key", ev.Key))
		}
		if !ev.Until.IsZero() {
			attrs = append(attrs, slog.Duration("for", ev.Until.Sub(t.cfg.clock.Now()).Round(time.Millisecond)))
		}
		t.cfg.logger.LogAttrs(req.Context(), level, "llmretry: "+ev.Health.String(), attrs...)
	}
}

// errMapNeedsBody is the cause when a model must be renamed in a body that
// cannot be read again.
var errMapNeedsBody = errors.New("failover: renaming the model needs a request body that can be read again (GetBody)")

// aim points r, a shallow copy of the caller's request made for one
// attempt, at the journey's target and key: its URL, its credential (the
// caller's own are removed, never sent to a target), and the model's name
// there. body is the body the attempt would send; aim returns the one it
// must send.
func (p *pool) aim(r *http.Request, body io.ReadCloser, j *journey) (io.ReadCloser, error) {
	ts := p.targets[j.at.target]
	k := ts.keys[j.at.key]
	name, _ := ts.serves(j.model)

	path := ts.base.EscapedPath() + p.restOf(r.URL.EscapedPath())
	if ts.Family == FamilyGemini && name != j.model {
		path = renameModelInPath(path, name)
	}
	u := *ts.base
	u.RawPath = path
	u.Path = path
	if unescaped, err := url.PathUnescape(path); err == nil {
		u.Path = unescaped
	}
	u.RawQuery = targetQuery(r.URL.RawQuery, ts.base.RawQuery)
	u.Fragment, u.RawFragment = "", ""
	r.URL, r.Host = &u, ""

	r.Header = r.Header.Clone()
	if r.Header == nil {
		r.Header = make(http.Header)
	}
	for _, h := range credentialHeaders {
		r.Header.Del(h)
	}
	r.Header.Del(ts.KeyHeader)
	if k.header != "" {
		r.Header.Set(k.header, k.value)
	}

	if ts.Family == FamilyGemini || name == j.model || body == nil || body == http.NoBody {
		return body, nil
	}
	// The model is renamed in a fresh copy of the body.
	if r.GetBody == nil {
		return nil, errMapNeedsBody
	}
	_ = body.Close() // not sent: a renamed copy goes instead
	rc, err := r.GetBody()
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		return nil, err
	}
	b = renameModelInJSON(b, name)
	r.ContentLength = int64(len(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return io.NopCloser(bytes.NewReader(b)), nil
}

// targetQuery is the query an attempt sends: the caller's, without a
// "key" parameter (a credential of the caller's), and with the target's
// own parameters (Azure's api-version) in place of the caller's.
func targetQuery(caller, base string) string {
	if base == "" && !strings.Contains(caller, "key=") {
		return caller
	}
	q, err := url.ParseQuery(caller)
	if err != nil {
		q = url.Values{}
	}
	q.Del("key")
	bq, _ := url.ParseQuery(base)
	for name, vals := range bq {
		q[name] = vals
	}
	return q.Encode()
}

// renameModelInPath puts name in place of the model in a Gemini path
// (".../models/NAME:generateContent").
func renameModelInPath(path, name string) string {
	before, rest, ok := strings.Cut(path, "/models/")
	if !ok {
		return path
	}
	end := strings.IndexAny(rest, ":/")
	if end < 0 {
		end = len(rest)
	}
	return before + "/models/" + url.PathEscape(name) + rest[end:]
}

// renameModelInJSON puts name in place of every top-level "model" string
// of a JSON object, leaving every other byte as it was. A body that is not
// a JSON object is returned unchanged.
func renameModelInJSON(body []byte, name string) []byte {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return body
	}
	type span struct{ start, end int }
	var spans []span
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return body
		}
		if key, _ := tok.(string); key == "model" {
			from := int(dec.InputOffset())
			tok, err := dec.Token()
			if err != nil {
				return body
			}
			if _, isString := tok.(string); isString {
				end := int(dec.InputOffset())
				if start := bytes.IndexByte(body[from:end], '"'); start >= 0 {
					spans = append(spans, span{from + start, end})
				}
			} else if d, isDelim := tok.(json.Delim); isDelim && (d == '{' || d == '[') {
				return body // a model that is not a string: not ours to rename
			}
			continue
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return body
		}
	}
	if len(spans) == 0 {
		return body
	}
	quoted, _ := json.Marshal(name)
	var out bytes.Buffer
	out.Grow(len(body) + len(spans)*len(quoted))
	last := 0
	for _, s := range spans {
		out.Write(body[last:s.start])
		out.Write(quoted)
		last = s.end
	}
	out.Write(body[last:])
	return out.Bytes()
}
