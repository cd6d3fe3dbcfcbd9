package llmretry

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/url"
	"strings"
	"sync/atomic"
)

// A route is where a Transport's requests may go: targets in order of
// preference, each with keys. A plain Transport is a route of one target,
// the request's own URL, whose one key is the caller's own credential:
// such a route never takes its key out or refuses a request on its own
// (only a 429 with a wait starts a cooldown). A failover Transport's route
// holds its own keys.
type route struct {
	f       Failover
	targets []*target
	// holdsKeys: the keys are the route's own (failover), not the
	// caller's. Only then are keys and targets taken out of service.
	holdsKeys bool
	// allowList: some target serves only the models it lists, so every
	// request's body must read as one JSON object naming one model.
	allowList bool
	// basePath is the first target's base path: request paths are taken
	// relative to it (an SDK pointed at the first target sends them so).
	basePath string
}

// target is one target of a route and what is known of it.
type target struct {
	Target
	// base is the target's base URL; nil for the caller's own target,
	// where each request goes to its own URL.
	base     *url.URL
	keys     []*key
	budget   Budget
	inflight atomic.Int64
	health   targetHealth
}

// key is one key of a target and what is known of it. The caller's own
// key has no value: the request keeps its own credential.
type key struct {
	id            string
	header, value string // what is sent; empty for none
	cred          string // Mark.Key: a hash of header and value
	health        keyHealth
}

// ownRoute is the route of a plain Transport. Its MaxRest, the default,
// is the ceiling on a cooldown it reads from its store: a plain Transport
// rests nothing for longer itself.
func ownRoute(budget Budget) *route {
	return &route{f: Failover{MaxRest: defaultMaxRest}, targets: []*target{{budget: budget, keys: []*key{{}}}}}
}

// failoverRoute makes the route of targets (checked by checkTargets).
func failoverRoute(f Failover, targets []Target, bases []*url.URL, shared Budget, sharedSet bool, budgetCfg BudgetConfig) *route {
	rt := &route{f: f, holdsKeys: true, basePath: bases[0].EscapedPath()}
	for i, tg := range targets {
		ts := &target{Target: tg, base: bases[i]}
		switch {
		case tg.Budget != nil:
			ts.budget = tg.Budget
		case sharedSet:
			ts.budget = shared
		default:
			ts.budget = NewRatioBudget(budgetCfg)
		}
		for _, k := range tg.Keys {
			v := k.value()
			if tg.KeyHeader == "Authorization" {
				v = "Bearer " + v
			}
			ts.keys = append(ts.keys, &key{id: k.ID, header: tg.KeyHeader, value: v, cred: hashCredential(tg.KeyHeader, v)})
		}
		if len(ts.keys) == 0 {
			ts.keys = []*key{{}}
		}
		if len(tg.Models) > 0 {
			rt.allowList = true
		}
		rt.targets = append(rt.targets, ts)
	}
	return rt
}

// serves reports whether ts serves model, and under what name.
func (ts *target) serves(model string) (string, bool) {
	if len(ts.Models) == 0 {
		return model, true
	}
	m, ok := ts.Models[model]
	return m, ok
}

// restOf takes the part of a request path after the first target's base
// path: an SDK pointed at the first target sends its paths under it. A path
// not under it is kept whole.
func (rt *route) restOf(escapedPath string) string {
	if rt.basePath == "" {
		return escapedPath
	}
	if rest, ok := strings.CutPrefix(escapedPath, rt.basePath); ok && (rest == "" || rest[0] == '/') {
		return rest
	}
	return escapedPath
}

// names returns the target's name and key's id of pl.
func (rt *route) names(pl placement) (target, key string) {
	ts := rt.targets[pl.target]
	return ts.Name, ts.keys[pl.key].id
}

// placement is where one attempt goes.
type placement struct{ target, key int }

// hashCredential is Mark.Key for a request that carries only the one
// credential header name: value.
func hashCredential(name, value string) string {
	h := sha256.New()
	writeCredential(h, name, value)
	return credentialSum(h)
}

// writeCredential adds one credential to h, the one encoding both a
// caller's credentials and a failover key use.
func writeCredential(h hash.Hash, name, value string) {
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write([]byte(value))
	h.Write([]byte{0})
}

// credentialSum is Mark.Key for what h was given.
func credentialSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)[:12]) }
