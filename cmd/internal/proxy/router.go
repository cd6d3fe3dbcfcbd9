package proxy

import (
	"cmp"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// Router serves the routes of a config file, which hold keys, behind their
// perimeter: it lets in only the web pages and Host names the operator
// allowed (perimeter.go), and only the clients it knows when it knows any;
// it hands each request to the route whose prefix its path is under, with
// the prefix taken off.
type Router struct {
	prefixes []string
	routes   []*Proxy
	clients  []clientToken
	sh       *shared
	admin    http.Handler
	pm       *perimeter
	logger   *slog.Logger
}

// clientToken is a client's token, kept as its hash: compared in constant
// time, and never printed.
type clientToken struct {
	id  string
	sum [32]byte
}

// NewRouter builds the routes of fc. base holds the settings every route
// shares (policy, bounds, logger, storm control, and the Perimeter, whose
// origins and hosts are added to the config's); its Upstream and Failover
// are ignored.
func NewRouter(fc *FileConfig, base Config) (*Router, error) {
	if fc == nil || len(fc.Routes) == 0 {
		return nil, errors.New("no routes")
	}
	per := base.Perimeter
	per.Origins = append(append([]string(nil), fc.AllowOrigins...), per.Origins...)
	per.Hosts = append(append([]string(nil), fc.AllowHosts...), per.Hosts...)
	pm, err := newPerimeter(per)
	if err != nil {
		return nil, err
	}
	logger := base.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	rt := &Router{sh: newShared(true), pm: pm, logger: slog.New(requestIDHandler{logger.Handler()})}
	rt.admin = adminMux(rt.sh.metrics)
	if pm.checkAdminHost {
		rt.admin = pm.guardHost(rt.admin)
	}
	for _, c := range fc.Clients {
		rt.clients = append(rt.clients, clientToken{id: c.ID, sum: sha256.Sum256([]byte(c.token))})
	}
	for _, route := range fc.Routes {
		cfg := base
		cfg.Upstream = nil
		f := route.Failover
		cfg.Failover = &f
		p, err := newProxy(cfg, rt.sh, cmp.Or(route.Prefix, "/"))
		if err != nil {
			return nil, err
		}
		rt.prefixes = append(rt.prefixes, route.Prefix)
		rt.routes = append(rt.routes, p)
	}
	return rt, nil
}

// Prefixes are the routes' prefixes, in the config's order.
func (rt *Router) Prefixes() []string { return append([]string(nil), rt.prefixes...) }

// Admin is the router's /healthz and /metrics, for a listener of their own.
// On loopback it answers only to loopback names and listed hosts: its
// /metrics names the targets and the keys' ids.
func (rt *Router) Admin() http.Handler { return rt.admin }

// Metrics returns the counters of every route.
func (rt *Router) Metrics() *Metrics { return rt.sh.metrics }

// ServeHTTP checks the request at the perimeter, then forwards it on its
// route. Every answer of its own carries the request's id, as the route's
// do.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r, info := withRequest(r, w.Header())
	if rt.pm.checkHost && !rt.pm.hostAllowed(r.Host) {
		rt.refuse(w, r, http.StatusForbidden, "permission_error", msgHost)
		return
	}
	if origin, fromPage := pageOrigin(r); fromPage {
		if !rt.pm.originAllowed(origin) {
			rt.refuse(w, r, http.StatusForbidden, "permission_error", msgOrigin)
			return
		}
		info.origin = origin
		if isPreflight(r) { // a browser sends no credential with it
			rt.sh.metrics.request(http.StatusNoContent)
			stamp(w.Header(), info)
			preflight(w, r)
			return
		}
	}
	if len(rt.clients) > 0 && !rt.known(r) {
		w.Header().Set("Www-Authenticate", `Bearer realm="llmretry"`)
		rt.refuse(w, r, http.StatusUnauthorized, "authentication_error",
			"llmretry proxy: a client token is required: send the token the proxy's config gives you as the API key")
		return
	}
	p, rest, ok := rt.routeFor(r.URL.EscapedPath())
	if !ok {
		rt.refuse(w, r, http.StatusNotFound, "not_found_error",
			"llmretry proxy: no route for this path; routes: "+strings.Join(rt.prefixes, ", "))
		return
	}
	r2 := new(http.Request)
	*r2 = *r
	u := *r.URL
	if rest == "" {
		rest = "/"
	}
	u.RawPath = rest
	u.Path = rest
	if p, err := url.PathUnescape(rest); err == nil {
		u.Path = p
	}
	r2.URL = &u
	p.forward(w, r2, info)
}

// refuse answers r with the Router's own error.
func (rt *Router) refuse(w http.ResponseWriter, r *http.Request, code int, typ, msg string) {
	refuse(w, r, rt.sh.metrics, rt.logger, code, typ, msg)
}

// known reports whether r carries the token of a known client, as an API
// key in any of the places SDKs put one. Every token is compared, in
// constant time, whether or not an earlier one matched.
func (rt *Router) known(r *http.Request) bool {
	var presented []string
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		presented = append(presented, v)
	}
	for _, h := range []string{"X-Api-Key", "Api-Key", "X-Goog-Api-Key"} {
		if v := r.Header.Get(h); v != "" {
			presented = append(presented, v)
		}
	}
	if v := r.URL.Query().Get("key"); v != "" {
		presented = append(presented, v)
	}
	match := 0
	for _, p := range presented {
		sum := sha256.Sum256([]byte(p))
		for _, c := range rt.clients {
			match |= subtle.ConstantTimeCompare(sum[:], c.sum[:])
		}
	}
	return match == 1
}

// routeFor returns the route whose prefix is the longest that path is
// under, and the rest of the path; ok is false if none is.
func (rt *Router) routeFor(escapedPath string) (*Proxy, string, bool) {
	best := -1
	for i, p := range rt.prefixes {
		if rest, ok := strings.CutPrefix(escapedPath, p); ok && (rest == "" || rest[0] == '/') {
			if best < 0 || len(p) > len(rt.prefixes[best]) {
				best = i
			}
		}
	}
	if best < 0 {
		return nil, "", false
	}
	return rt.routes[best], strings.TrimPrefix(escapedPath, rt.prefixes[best]), true
}
