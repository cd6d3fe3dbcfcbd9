package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// The perimeter of the routes that hold keys: a web page the operator
// happens to open must not spend them. A browser sends a "simple" request
// (a POST with a text/plain body) to any origin without asking first, so
// declining to answer in CORS terms would come too late: the request
// itself is refused before it reaches a key. Two checks do it:
//
//   - a request that says it comes from a page (an Origin header, or
//     Sec-Fetch-Site naming another site) is refused unless its origin is
//     one the operator listed;
//   - on a loopback listener, a request must name the proxy by a loopback
//     name or one the operator listed: DNS rebinding points a page's own
//     name at 127.0.0.1, and the page is then same-origin with the proxy
//     and sends no Origin worth checking, but its Host is the page's name.
//
// Off loopback, client tokens are required (the command refuses to start
// without them), and the host names a load balancer sends are the
// operator's business.

// Perimeter says which web pages may use a Router's routes, and by what
// names a request on a loopback listener may reach them.
type Perimeter struct {
	// Origins are the web origins whose pages may send requests
	// ("https://app.example.com", "http://localhost:3000"), as ParseOrigin
	// reads them. For these the Router answers CORS preflights itself.
	Origins []string
	// Hosts are the names, besides localhost and loopback addresses, that
	// a request on a loopback listener may give as its Host, as ParseHost
	// reads them; any port.
	Hosts []string
	// Listen and AdminListen are the addresses (HOST:PORT) the routes and
	// the admin endpoints are served on. On a loopback address, or when
	// left empty, a request's Host is checked.
	Listen, AdminListen string
}

// perimeter is a Perimeter, read.
type perimeter struct {
	origins        map[string]bool
	hosts          map[string]bool
	checkHost      bool // the routes' listener is on loopback
	checkAdminHost bool // the admin listener is on loopback
}

func newPerimeter(p Perimeter) (*perimeter, error) {
	pm := &perimeter{origins: map[string]bool{}, hosts: map[string]bool{},
		checkHost: loopbackAddr(p.Listen), checkAdminHost: loopbackAddr(p.AdminListen)}
	for _, o := range p.Origins {
		origin, err := ParseOrigin(o)
		if err != nil {
			return nil, err
		}
		pm.origins[origin] = true
	}
	for _, h := range p.Hosts {
		host, err := ParseHost(h)
		if err != nil {
			return nil, err
		}
		pm.hosts[host] = true
	}
	return pm, nil
}

// ParseOrigin reads a web origin as a browser writes it in an Origin
// header: scheme://host, and :port unless it is the scheme's default. It
// returns it in that form, lower case.
func ParseOrigin(s string) (string, error) {
	bad := func(why string) error {
		return fmt.Errorf("origin %q: %s; want scheme://host[:port], such as https://app.example.com", s, why)
	}
	switch s {
	case "*":
		return "", bad("a wildcard would let every web page spend the keys")
	case "null":
		return "", bad(`"null" is the origin of every sandboxed frame and local file`)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil, u.Scheme == "", u.Opaque != "":
		return "", bad("not a URL with a scheme and a host")
	case u.Host == "":
		return "", bad("no host")
	case u.User != nil:
		return "", bad("an origin has no user")
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.ForceQuery, u.Fragment != "":
		return "", bad("an origin has no path, query or fragment")
	}
	scheme, host := strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	if h, port, err := net.SplitHostPort(host); err == nil {
		if port == "" || scheme == "http" && port == "80" || scheme == "https" && port == "443" {
			host = h
			if strings.Contains(h, ":") {
				host = "[" + h + "]"
			}
		}
	}
	return scheme + "://" + host, nil
}

// ParseHost reads a host name a request may give as its Host: a name or
// an address, without a scheme or a port (every port is allowed). It
// returns it as hostAllowed compares it.
func ParseHost(s string) (string, error) {
	h := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if h == "" || strings.ContainsAny(h, "/@?#* \t") || strings.Contains(h, ":") && net.ParseIP(h) == nil {
		return "", fmt.Errorf("host %q: want a host name or an address, such as proxy.internal (no scheme, no port: any port is allowed)", s)
	}
	return normalHost(h), nil
}

// normalHost is a host name as compared: lower case, without brackets or
// a trailing dot (which names the same host).
func normalHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")), ".")
}

// loopbackAddr reports whether addr (HOST:PORT) is a loopback address, or
// empty: unsaid, the Host check stays on.
func loopbackAddr(addr string) bool {
	if addr == "" {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	return err == nil && isLoopbackName(normalHost(host))
}

// isLoopbackName reports whether a host, normalized, is localhost or a
// loopback address: names no page can take over.
func isLoopbackName(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// hostAllowed reports whether a request's Host names the proxy on a
// loopback listener: localhost, a loopback address, or a listed name.
func (pm *perimeter) hostAllowed(hostHeader string) bool {
	h := hostHeader
	if host, _, err := net.SplitHostPort(hostHeader); err == nil {
		h = host
	}
	h = normalHost(h)
	return h != "" && (isLoopbackName(h) || pm.hosts[h])
}

// pageOrigin says whether r comes from a web page, and if it does, the
// origin it gave ("" when none, which is never listed).
func pageOrigin(r *http.Request) (origin string, fromPage bool) {
	if vs, ok := r.Header["Origin"]; ok {
		if len(vs) != 1 {
			return "", true
		}
		return vs[0], true
	}
	// Without an Origin (a page's image, script or link, which a browser
	// sends without one), Sec-Fetch-Site says whether a page of another
	// site sent it. A page on another port of the same host is "same-site":
	// another origin all the same.
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return "", true
	}
	return "", false
}

// originAllowed reports whether an Origin header's value is a listed
// origin.
func (pm *perimeter) originAllowed(origin string) bool {
	o, err := ParseOrigin(origin)
	return err == nil && pm.origins[o]
}

// Messages for the refusals; they name what to change, never a secret.
const (
	msgOrigin = "llmretry proxy: requests from web pages are refused unless their origin is listed " +
		"(--allow-origin, or allow_origins in the config)"
	msgHost = "llmretry proxy: this proxy listens on loopback and answers only to localhost, " +
		"loopback addresses and the names listed with --allow-host (or allow_hosts in the config); " +
		"any other Host could be a web page's own name, pointed here by DNS rebinding"
)

// preflight answers a CORS preflight from a listed origin, whose
// Allow-Origin is stamped already (corsHeaders): the method and headers
// the page asks for are allowed (every request still needs its client
// token), and so is a public page's request to a private address
// (Chrome's Private Network Access).
func preflight(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if m := r.Header.Get("Access-Control-Request-Method"); isTokenList(m) {
		h.Set("Access-Control-Allow-Methods", m)
	}
	if hs := r.Header.Get("Access-Control-Request-Headers"); hs != "" && isTokenList(hs) {
		h.Set("Access-Control-Allow-Headers", hs)
	}
	if strings.EqualFold(r.Header.Get("Access-Control-Request-Private-Network"), "true") {
		h.Set("Access-Control-Allow-Private-Network", "true")
	}
	h.Set("Access-Control-Max-Age", "600")
	h.Add("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, Access-Control-Request-Private-Network")
	w.WriteHeader(http.StatusNoContent)
}

// isPreflight reports a CORS preflight: an OPTIONS that asks for a method.
func isPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
}

// corsHeaders puts on a reply to a listed origin's page what lets the page
// read it: its origin, and every header (the proxy's own among them).
// Called on the header the client gets, after the upstream's own
// Access-Control-* headers are dropped (dropCORS), so that none is doubled.
func corsHeaders(h http.Header, origin string) {
	h["Access-Control-Allow-Origin"] = []string{origin}
	h["Access-Control-Expose-Headers"] = []string{"*"}
	h["Vary"] = append(h["Vary"], "Origin")
}

// dropCORS removes an upstream's Access-Control-* headers, which would
// otherwise stand beside the proxy's (two Allow-Origin values fail in
// every browser).
func dropCORS(h http.Header) {
	for name := range h {
		if strings.HasPrefix(name, "Access-Control-") {
			delete(h, name)
		}
	}
}

// isTokenList reports whether s is a comma-separated list of HTTP tokens
// (a method, header names), safe to echo in a header.
func isTokenList(s string) bool {
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			return false
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
				return false
			}
		}
	}
	return true
}

// guardHost serves h only to requests whose Host names the proxy: for the
// admin listener on loopback, whose /metrics names targets and key ids.
func (pm *perimeter) guardHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !pm.hostAllowed(r.Host) {
			_, info := withRequest(r, w.Header())
			info.finish()
			stamp(w.Header(), info) // traceable too
			writeErrorAs(w, http.StatusForbidden, "permission_error", msgHost)
			return
		}
		h.ServeHTTP(w, r)
	})
}
