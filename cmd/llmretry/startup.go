package main

import (
	"cmp"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/cmd/internal/proxy"
)

// adminFor is the admin address of a proxy that listens on listen and was
// given no --admin-listen: on loopback (its /metrics names targets and key
// ids), the port below listen's, so that proxies on other ports keep their
// admin endpoints apart and the default --listen 127.0.0.1:8787 keeps
// 127.0.0.1:8786. Beside port 0 (any free port), any free port too.
func adminFor(listen string) string {
	_, port, _ := net.SplitHostPort(listen) // checked by checkAddr
	p, err := strconv.Atoi(port)
	if err != nil || p <= 1 {
		p = 1 // a named port, or 0: any free port
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p-1))
}

// targetLines says, for each target of each route, where it is, which API
// family it speaks and whether that was guessed from its host, the header
// its keys go in and how many keys it has: never a key.
func targetLines(fc *proxy.FileConfig, addr string) []string {
	var lines []string
	for _, r := range fc.Routes {
		prefix := r.Prefix
		lines = append(lines, fmt.Sprintf("route %s: clients use %s%s", cmp.Or(prefix, "/"), addr, prefix))
		for _, tg := range r.Failover.Targets {
			u, _ := url.Parse(tg.BaseURL) // checked when the config was read
			family, how := tg.Family, "set by api:"
			if family == 0 {
				family, how = llmretry.FamilyOf(u), "guessed from the host: set api: if it is not"
			}
			keys := "no keys: requests go without a credential"
			if n := len(tg.Keys); n > 0 {
				header, hhow := keyHeader(family), ""
				if tg.KeyHeader != "" {
					header, hhow = http.CanonicalHeaderKey(tg.KeyHeader), " (set by key_header:)"
				}
				if header == "Authorization" {
					header += ": Bearer"
				}
				keys = fmt.Sprintf("%s, in %s%s", plural(n, "key"), header, hhow)
			}
			lines = append(lines, fmt.Sprintf("  target %s: %s, api %s (%s), %s", tg.Name, proxy.ShowURL(u), family, how, keys))
		}
	}
	return lines
}

// keyHeader is the header a family's keys go in, as llmretry sends them.
func keyHeader(f llmretry.Family) string {
	switch f {
	case llmretry.FamilyAnthropic:
		return "X-Api-Key"
	case llmretry.FamilyGemini:
		return "X-Goog-Api-Key"
	}
	return "Authorization"
}

// fleetState says whether the proxy shares its retry budgets and health
// marks through Redis, and where: never the password.
func fleetState(o *redis.Options, name string) string {
	if o == nil {
		return "off: the retry budget, cooldowns and key health are this process's own (--redis shares them)"
	}
	where := "Redis at " + o.Addr
	if o.Network == "unix" {
		where = "Redis at the unix socket " + o.Addr
	}
	if o.TLSConfig != nil {
		where += " over TLS"
	}
	return fmt.Sprintf("on, through %s, database %d, as %q (if it is down, the proxy goes on with local state)", where, o.DB, name)
}

// failFast makes a client whose Redis refuses connections say so: by
// default go-redis redials and retries within redisstate's timeout, which
// then reports "context deadline exceeded" instead of the refusal and its
// address. redisstate syncs again on its own a moment later, so nothing
// is lost. A max_retries the --redis URL gives is kept (a URL cannot set
// the dial's retries).
func failFast(o *redis.Options) {
	if o.MaxRetries == 0 {
		o.MaxRetries = -1
	}
	if o.DialerRetries == 0 {
		o.DialerRetries = 1
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}
