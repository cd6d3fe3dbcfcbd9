package proxy

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"

	"github.com/llmretry/llmretry/internal/wire"
)

// Router serves the routes of a config file, which hold keys, behind their
// perimeter: it lets in only the web pages and Host names the operator
// allowed (perimeter.go), and only the clients it knows when it knows any
// (clients.go); it removes every credential a request carries, and hands
// the request to the route whose prefix its path is under, with the
// prefix taken off, unless the rest of the path could climb out of the
// target's base path.
type Router struct {
	prefixes []string
	routes   []*Proxy
	clients  []clientToken
	sh       *shared
	admin    http.Handler
	pm       *perimeter
	logger   *slog.Logger
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
		cfg.Continuation = route.continuation(base.Continuation)
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

// Messages of the Router's other refusals.
const (
	msgBadQuery = "llmretry proxy: the query has a part that does not decode (a bad %-escape, or a ';'): " +
		"it could hide a key, so the request is not sent"
	msgDotSegment = "llmretry proxy: the path has a . or .. segment after the route's prefix (in some spelling: " +
		"%2e, %252e, ..;, with %2f, %5c or \\ as a separator): it could leave the target's base path, so it is not sent"
)

// ServeHTTP checks the request at the perimeter, then forwards it on its
// route. Every answer of its own carries the request's id, as the route's
// do.
//
// A stream it forwards may outlive the call, as Proxy.ServeHTTP says: a
// handler that wraps this one must not touch w once ServeHTTP returns.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r, info := withRequest(r, w.Header())
	defer info.end()
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
	if _, dropped := wire.ParseQuery(r.URL.RawQuery); dropped > 0 {
		rt.refuse(w, r, http.StatusBadRequest, "invalid_request_error", msgBadQuery)
		return
	}
	if len(rt.clients) > 0 {
		if wrongIn, ok := judge(rt.clients, r.Header, r.URL.RawQuery); !ok {
			msg := msgNoToken
			if wrongIn != "" {
				msg = fmt.Sprintf(msgWrongToken, place(wrongIn))
			}
			w.Header().Set("Www-Authenticate", `Bearer realm="llmretry"`)
			rt.refuse(w, r, http.StatusUnauthorized, "authentication_error", msg)
			return
		}
	}
	// Removed whether or not clients are configured: without, they are an
	// SDK's placeholder, or a key of the caller's own that is not the
	// target's to see. The header is the request's own: no copy.
	query, _ := wire.StripCredentials(r.Header, r.URL.RawQuery)
	p, rest, ok := rt.routeFor(r.URL.EscapedPath())
	if !ok {
		rt.refuse(w, r, http.StatusNotFound, "not_found_error",
			"llmretry proxy: no route for this path; routes: "+strings.Join(rt.prefixes, ", "))
		return
	}
	if wire.HasDotSegment(rest) {
		rt.refuse(w, r, http.StatusBadRequest, "invalid_request_error", msgDotSegment)
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
	u.RawQuery = query
	r2.URL = &u
	p.forward(w, r2, info)
}

// refuse answers r with the Router's own error.
func (rt *Router) refuse(w http.ResponseWriter, r *http.Request, code int, typ, msg string) {
	refuse(w, r, rt.sh.metrics, rt.logger, code, typ, msg)
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
