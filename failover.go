package llmretry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/llmretry/llmretry/internal/wire"
)

// Failover: retrying elsewhere. A Transport made by NewFailoverTransport
// sends each attempt to one key of one target. What an attempt proves is
// recorded (record.go: health, scoped to what it proves), and what follows
// a failure is one decision (next.go: the same place after a wait, another
// key now, the next target now, or a stop). The stream contract holds
// across targets: once a response is handed over, nothing is sent
// anywhere again. (With WithStreamContinuation, a stream that breaks after
// its first output may be sent again to finish it: to the same key and
// target when they are healthy, else where these rules send it; nothing
// the caller has is sent to it again.)

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
	t.route = failoverRoute(f, targets, bases, t.cfg.budget, t.cfg.budgetSet, BudgetConfig{Clock: t.cfg.clock})
	if !t.cfg.budgetSet {
		t.cfg.budget = nil // NewTransport's default: each target has its own instead
	}
	return t, nil
}

// Health is a change in what a failover Transport knows of a key or target.
type Health int

const (
	// KeyResting: the key was told to wait (a 429, a server wait) for
	// HealthEvent.Model; other keys carry that model's requests until
	// HealthEvent.Until.
	KeyResting Health = iota + 1
	// KeyOutQuota: the key's quota or credit is used up; it is out, for
	// every model, until HealthEvent.Until.
	KeyOutQuota
	// KeyOutAuth: the key was refused (401); it is out, for every model,
	// until HealthEvent.Until, when one request at a time probes it.
	KeyOutAuth
	// TargetEjected: the target failed too often in a row; it is skipped
	// until HealthEvent.Until, then probed.
	TargetEjected
	// TargetRestored: an ejected target served a request, and is trusted
	// again.
	TargetRestored
	// KeyDenied: the key may not use HealthEvent.Model (a 403 or 404 that
	// names it or a permission on it); other keys carry that model's
	// requests until HealthEvent.Until, when one request at a time probes
	// it. Other models keep using the key.
	KeyDenied
	// KeyRestored: a key out for refusal, or denied HealthEvent.Model,
	// served its probe, and is used again.
	KeyRestored
)

var healthNames = map[Health]string{
	KeyResting: "key resting", KeyOutQuota: "key out: quota", KeyOutAuth: "key out: refused",
	TargetEjected: "target ejected", TargetRestored: "target restored",
	KeyDenied: "key denied model", KeyRestored: "key restored",
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
	Key string
	// Model is the model a change is for: set for KeyResting and
	// KeyDenied (and KeyRestored after a denial); empty for a change that
	// concerns every model.
	Model  string
	Health Health
	// Until is when the rest, quota, recheck or ejection ends; zero for
	// KeyRestored and TargetRestored.
	Until time.Time
	// Cause is the failure that made the change ("status 429").
	Cause string
}

// WithOnHealth calls f on each change in a failover Transport's keys and
// targets, from the goroutine making the request (for a stream's end, the
// goroutine reading it). f must not block.
func WithOnHealth(f func(HealthEvent)) Option {
	return func(c *config) { c.onHealth = f }
}

// health reports a change in a key or target to the observers.
func (t *Transport) health(req *http.Request, ev HealthEvent) {
	if t.cfg.onHealth != nil {
		t.cfg.onHealth(ev)
	}
	if t.cfg.logger != nil {
		level := slog.LevelInfo
		if ev.Health == KeyOutAuth || ev.Health == KeyOutQuota || ev.Health == TargetEjected || ev.Health == KeyDenied {
			level = slog.LevelWarn
		}
		attrs := []slog.Attr{slog.String("target", ev.Target), slog.String("health", ev.Health.String()), slog.String("cause", ev.Cause)}
		if ev.Key != "" {
			attrs = append(attrs, slog.String("key", ev.Key))
		}
		if ev.Model != "" {
			attrs = append(attrs, slog.String("model", upstreamWord(ev.Model)))
		}
		if !ev.Until.IsZero() {
			attrs = append(attrs, slog.Duration("for", ev.Until.Sub(t.cfg.clock.Now()).Round(time.Millisecond)))
		}
		t.cfg.logger.LogAttrs(req.Context(), level, "llmretry: "+ev.Health.String(), attrs...)
	}
}

// Why a failover request is refused before anything is sent.
var (
	errMapNeedsBody = errors.New("failover: renaming the model needs a request body that can be read again (GetBody)")
	errDotSegment   = errors.New("failover: the request path has a dot-segment (\".\" or \"..\", in some spelling): it could leave the target's base path")
	errModelPath    = errors.New("failover: the path's model segment is not a model name (letters, digits, '.', '-', '_')")
)

// bodyError is the cause when a request's JSON body cannot be read one way
// only, and a target has an allow-list.
type bodyError struct{ problem string }

func (e *bodyError) Error() string {
	return "failover: the request body cannot be checked against the targets' models: " + e.problem
}

// checkRequest refuses, before anything is sent, a request a failover
// route cannot send safely: a path that could leave a target's base path,
// a Gemini model segment that is not a model name, and where a target has
// an allow-list, a body that does not read as one JSON object naming one
// model (an upstream might read another model than the allow-list did).
func (t *Transport) checkRequest(j *journey) error {
	if !j.rt.holdsKeys {
		return nil
	}
	req := j.req
	path := req.URL.EscapedPath()
	err := error(nil)
	switch {
	case wire.HasDotSegment(path):
		err = errDotSegment
	case !modelPathOK(path):
		err = errModelPath
	case j.rt.allowList && req.Body != nil && req.Body != http.NoBody && jsonBody(req):
		err = j.readBodyStrictly()
	}
	if err != nil {
		return t.giveUp(req, nil, 0, verdict{cause: "request refused", reason: ReasonInvalidRequest}, err, nil)
	}
	return nil
}

// jsonBody reports a request whose body is JSON, or says nothing of its
// type (SDKs send JSON). Another body (a multipart upload) names no model:
// it goes only to targets without Models.
func jsonBody(req *http.Request) bool {
	ct := req.Header.Get("Content-Type")
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// modelPathOK reports whether a path that names a model in Gemini's form
// names it as a model name.
func modelPathOK(escapedPath string) bool {
	_, ok := wire.ModelInPath(escapedPath)
	return ok
}

// readBodyStrictly reads the body for its model, once, and refuses one
// that does not read one way only.
func (j *journey) readBodyStrictly() error {
	if j.req.GetBody == nil {
		return errMapNeedsBody
	}
	rc, err := j.req.GetBody()
	if err != nil {
		return err
	}
	bm, err := wire.ReadModel(rc)
	_ = rc.Close()
	if err != nil {
		return err
	}
	if bm.Problem != "" {
		return &bodyError{problem: bm.Problem}
	}
	j.body, j.modelRead = bm, true
	if name, _ := wire.ModelInPath(j.req.URL.EscapedPath()); name != "" {
		j.model = name
	} else {
		j.model = bm.Name
	}
	return nil
}

// aim points r, a shallow copy of the caller's request made for one
// attempt, at the journey's target and key: its URL, its credential (the
// caller's own are removed wherever they were put, never sent to a
// target), and the model's name there. body is the body the attempt would
// send; aim returns the one it must send.
func (t *Transport) aim(r *http.Request, body io.ReadCloser, j *journey) (io.ReadCloser, error) {
	ts := j.rt.targets[j.at.target]
	k := ts.keys[j.at.key]
	name, _ := ts.serves(j.modelName())

	path := ts.base.EscapedPath() + j.rt.restOf(r.URL.EscapedPath())
	if ts.Family == FamilyGemini && name != j.modelName() {
		path = renameModelInPath(path, name)
	}
	u := *ts.base
	u.RawPath = path
	u.Path = path
	if unescaped, err := url.PathUnescape(path); err == nil {
		u.Path = unescaped
	}
	r.Header = r.Header.Clone()
	if r.Header == nil {
		r.Header = make(http.Header)
	}
	query, dropped := wire.StripCredentials(r.Header, r.URL.RawQuery) // leaves out what does not parse
	query, _ = wire.TargetQuery(query, ts.base.RawQuery)
	if dropped > 0 && t.cfg.logger != nil {
		t.cfg.logger.LogAttrs(r.Context(), slog.LevelDebug, "llmretry: query parts that do not parse were left out",
			slog.String("target", ts.Name), slog.Int("parts", dropped))
	}
	u.RawQuery = query
	u.Fragment, u.RawFragment = "", ""
	r.URL, r.Host = &u, ""
	r.Header.Del(ts.KeyHeader)
	if k.header != "" {
		r.Header.Set(k.header, k.value)
	}

	if ts.Family == FamilyGemini || name == j.modelName() || body == nil || body == http.NoBody {
		return body, nil
	}
	// The model is renamed as the body is sent: the caller's body is read
	// again (GetBody) with the model's value replaced, never copied.
	if r.GetBody == nil {
		return nil, errMapNeedsBody
	}
	if j.body.End == 0 {
		return body, nil // no top-level model string to rename
	}
	_ = body.Close() // not sent: the renamed one goes instead
	quoted, _ := json.Marshal(name)
	getBody, start, end := r.GetBody, j.body.Start, j.body.End
	r.ContentLength += int64(len(quoted)) - (end - start)
	r.GetBody = func() (io.ReadCloser, error) {
		rc, err := getBody()
		if err != nil {
			return nil, err
		}
		return wire.Replace(rc, start, end, quoted), nil
	}
	return r.GetBody()
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
