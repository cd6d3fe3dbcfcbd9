package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/cmd/internal/proxy"
	"github.com/llmretry/llmretry/redisstate"
)

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("llmretry proxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8787", "address to listen on (HTTP/1.1 and h2c); every path is the upstream's")
	adminListen := fs.String("admin-listen", "", "address for the proxy's own /healthz and /metrics; \"\" for none (default: on 127.0.0.1, the port below --listen's: 127.0.0.1:8786 beside 127.0.0.1:8787)")
	upstream := fs.String("upstream", "", "the API's base URL, as its SDK takes it, e.g. https://api.openai.com/v1; served at the same path: clients use http://LISTEN/v1 (this or --config)")
	configFile := fs.String("config", "", "a YAML file of routes, failover targets, keys (from env or files) and client tokens (this or --upstream)")
	d := llmretry.DefaultPolicy()
	maxAttempts := fs.Int("max-attempts", d.MaxAttempts, "attempts per request, the first included")
	baseDelay := fs.Duration("base-delay", d.BaseDelay, "backoff before the first retry; doubles per retry")
	maxDelay := fs.Duration("max-delay", d.MaxDelay, "cap on the backoff")
	maxRetryAfter := fs.Duration("max-retry-after", d.MaxRetryAfter, "longest server-requested wait honoured; longer returns the response at once")
	maxBody := fs.Int64("max-body", proxy.DefaultMaxBody, "largest request body in bytes; larger gets 413 without contacting the upstream")
	bodyTimeout := fs.Duration("body-timeout", proxy.DefaultBodyTimeout, "time a client has to send its request body, plus 1s per 256 KiB received; later gets 408")
	maxHeld := fs.Int64("max-held", proxy.DefaultMaxHeld, "bytes of request bodies held at once, across requests, counted as they arrive; past it a request gets 503 with Retry-After")
	upstreamTimeout := fs.Duration("upstream-timeout", proxy.DefaultUpstreamTimeout, "longest wait for an attempt's response headers (a model may think for minutes)")
	maxUpstreamHeader := fs.Int64("max-upstream-header", proxy.DefaultMaxUpstreamHeader, "largest upstream response header block in bytes; larger is a 502")
	idle := fs.Duration("idle-timeout", 5*time.Minute, "end a response stream that sends nothing for this long (0: never)")
	firstEvent := fs.Duration("first-event-timeout", 0, "retry a stream that sends no first event within this long (0: off)")
	continueStreams := fs.Int("continue-streams", 0, "finish a stream that breaks after output reached the client, at most this many times per stream,\nby sending the request again with the text delivered so far (0: off; a route's continue_streams overrides it)")
	grace := fs.Duration("grace", 30*time.Second, "on SIGTERM, how long in-flight requests and streams get to finish")
	quiet := fs.Bool("quiet", false, "do not log retries")
	logLevel := fs.String("log-level", "info", "the least level logged: debug, info, warn or error (debug includes go-redis's own lines)")
	redisURL := fs.String("redis", "", "share the retry budget and cooldowns with other proxies through Redis, e.g. redis://127.0.0.1:6379/0")
	redisName := fs.String("redis-name", "", "the shared budget's name (default: the upstream's host)")
	budgetFlag := fs.String("budget", "on", "the retry budget: on, off, or on with a ratio such as 0.2 (the share of requests that failing retries may add)")
	cooldownsFlag := fs.String("cooldowns", "on", "cooldowns, which hold requests for a key and model that got a 429 with a wait: on or off")
	var allowOrigins, allowHosts listFlag
	fs.Var(&allowOrigins, "allow-origin", "with --config: a web `ORIGIN` whose pages may use the routes, such as https://app.example.com (repeat it, or separate with commas); pages of other origins get 403")
	fs.Var(&allowHosts, "allow-host", "with --config on a loopback --listen: a Host `NAME` the proxy answers to besides localhost and loopback addresses (repeat it, or separate with commas); others get 403")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: llmretry proxy --upstream URL [flags]\n       llmretry proxy --config FILE [flags]\n\n"+
			"A retrying reverse proxy. --upstream and a config's base_url take the API's base URL, as its SDK\n"+
			"takes it (https://api.openai.com/v1, https://openrouter.ai/api/v1, https://api.anthropic.com).\n"+
			"--upstream is served at its own path: point any client at the proxy with that path, e.g.\n"+
			"  proxy --upstream https://api.openai.com/v1   ->  OPENAI_BASE_URL=http://127.0.0.1:8787/v1\n"+
			"With --config, each route's prefix stands for its first target's base URL:\n"+
			"  prefix: /openai                             ->  OPENAI_BASE_URL=http://127.0.0.1:8787/openai\n\n"+
			"Its own /healthz and /metrics (Prometheus text) are on --admin-listen: by default on\n"+
			"127.0.0.1, the port below --listen's, so that proxies on other ports keep theirs apart.\n\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	var u, base *url.URL
	var fc *proxy.FileConfig
	var notes []string // what was understood, said at startup
	switch {
	case *upstream != "" && *configFile != "":
		return usageErr(fs, stderr, "give --upstream or --config, not both")
	case *configFile != "":
		var err error
		if fc, err = proxy.LoadConfig(*configFile, nil); err != nil {
			fmt.Fprintf(stderr, "llmretry proxy: %v\n", err)
			return errUsage
		}
		notes = append(notes, fc.Notes...)
		if len(fc.Clients) == 0 && !loopback(*listen) {
			what := "its routes"
			if fc.HoldsKeys() {
				what = "its keys"
			}
			return usageErr(fs, stderr, "%s names no clients: anyone who reaches --listen %s could use %s. Add clients (tokens) to the config, or listen on loopback", *configFile, *listen, what)
		}
	case *upstream == "":
		return usageErr(fs, stderr, "--upstream or --config is required")
	case len(allowOrigins) > 0 || len(allowHosts) > 0:
		return usageErr(fs, stderr, "--allow-origin and --allow-host go with --config: with --upstream the proxy holds no keys, and checks no origin or host")
	default:
		var note string
		var err error
		if base, note, err = proxy.ParseBaseURL(*upstream); err != nil {
			return usageErr(fs, stderr, "--upstream %q: %v", *upstream, err)
		}
		if note != "" {
			notes = append(notes, "--upstream "+note)
		}
		// The base is served at its own path: a request's path goes to
		// the upstream's host as it came, byte for byte, and the base's
		// path says where clients point. Nothing is joined, so no path is
		// ever doubled (/v1/v1/...).
		u = &url.URL{Scheme: base.Scheme, Host: base.Host, User: base.User, RawQuery: base.RawQuery}
	}
	if *continueStreams < 0 {
		return usageErr(fs, stderr, "--continue-streams %d: want 0 (off) or how many times one stream may be continued", *continueStreams)
	}
	if err := checkPositive(fs, stderr, map[string]bool{
		"max-attempts": *maxAttempts < 1, "base-delay": *baseDelay <= 0, "max-delay": *maxDelay <= 0,
		"max-retry-after": *maxRetryAfter <= 0, "max-body": *maxBody <= 0, "body-timeout": *bodyTimeout <= 0,
		"max-held": *maxHeld <= 0, "upstream-timeout": *upstreamTimeout <= 0, "max-upstream-header": *maxUpstreamHeader <= 0,
	}, map[string]bool{"idle-timeout": *idle < 0, "first-event-timeout": *firstEvent < 0, "grace": *grace < 0}); err != nil {
		return err
	}
	budgetOff, ratio, ok := parseBudgetFlag(*budgetFlag)
	if !ok {
		return usageErr(fs, stderr, "--budget %q: want on, off or a ratio such as 0.1", *budgetFlag)
	}
	cooldownsOff, ok := parseOnOff(*cooldownsFlag)
	if !ok {
		return usageErr(fs, stderr, "--cooldowns %q: want on or off", *cooldownsFlag)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageErr(fs, stderr, "--log-level %q: want debug, info, warn or error", *logLevel)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *quiet {
		logger = slog.New(slog.DiscardHandler)
	}
	opts := []llmretry.Option{}
	if *firstEvent > 0 {
		opts = append(opts, llmretry.WithFirstEventTimeout(*firstEvent))
	}
	cfg := proxy.Config{
		Upstream: u,
		Policy:   llmretry.Policy{MaxAttempts: *maxAttempts, BaseDelay: *baseDelay, MaxDelay: *maxDelay, MaxRetryAfter: *maxRetryAfter},
		MaxBody:  *maxBody, IdleTimeout: *idle, Logger: logger, Options: opts,
		BodyTimeout: *bodyTimeout, MaxHeld: *maxHeld, UpstreamTimeout: *upstreamTimeout, MaxUpstreamHeader: *maxUpstreamHeader,
		BudgetOff: budgetOff, BudgetRatio: ratio, CooldownsOff: cooldownsOff,
	}
	if *continueStreams > 0 {
		cfg.Continuation = &llmretry.Continuation{Max: *continueStreams}
	}
	for _, o := range allowOrigins {
		if _, err := proxy.ParseOrigin(o); err != nil {
			return usageErr(fs, stderr, "--allow-origin: %v", err)
		}
	}
	for _, h := range allowHosts {
		if _, err := proxy.ParseHost(h); err != nil {
			return usageErr(fs, stderr, "--allow-host: %v", err)
		}
	}
	if err := checkAddr(fs, stderr, "listen", *listen); err != nil {
		return err
	}
	adminAddr, adminWhy := *adminListen, "--admin-listen "+*adminListen
	if !flagSet(fs, "admin-listen") {
		adminAddr = adminFor(*listen)
		adminWhy = "the admin address beside --listen " + *listen + " (" + adminAddr + ")"
	} else if adminAddr != "" {
		if err := checkAddr(fs, stderr, "admin-listen", adminAddr); err != nil {
			return err
		}
	}
	cfg.Perimeter = proxy.Perimeter{Origins: allowOrigins, Hosts: allowHosts, Listen: *listen, AdminListen: adminAddr}
	var states []*redisstate.State
	defer func() {
		for _, st := range states {
			st.Close()
		}
	}()
	var newState func(name string, maxRest time.Duration) (*redisstate.State, error)
	var ropts *redis.Options
	if *redisURL != "" {
		var err error
		if ropts, err = redis.ParseURL(*redisURL); err != nil {
			return usageErr(fs, stderr, "%s", redisURLProblem(*redisURL, err))
		}
		failFast(ropts)
		routeRedisLogs(logger)
		rc := redis.NewClient(ropts)
		defer rc.Close()
		// A Redis that is down never stops the proxy: it goes on with local
		// state and says so in the log.
		newState = func(name string, maxRest time.Duration) (*redisstate.State, error) {
			st, err := redisstate.New(redisstate.Config{Client: rc, Name: name, Logger: slog.New(slog.NewTextHandler(stderr, nil)),
				Budget: llmretry.BudgetConfig{Ratio: ratio}, MaxRest: maxRest})
			if err != nil {
				return nil, err
			}
			st.Start()
			states = append(states, st)
			return st, nil
		}
	}
	var handler http.Handler
	var admin http.Handler
	var target, fleetName string
	if fc != nil {
		fleetName = cmp.Or(*redisName, "proxy")
		if newState != nil {
			cd, err := shareThroughRedis(fc, fleetName, budgetOff, newState)
			if err != nil {
				return err
			}
			cfg.Store = cd
		}
		rt, err := proxy.NewRouter(fc, cfg)
		if err != nil {
			return usageErr(fs, stderr, "%v", err)
		}
		handler, admin, target = rt, rt.Admin(), "the routes of "+*configFile+": "+strings.Join(rt.Prefixes(), ", ")
	} else {
		fleetName = cmp.Or(*redisName, u.Host)
		if newState != nil {
			st, err := newState(fleetName, 0) // a plain Transport's ceiling: the default
			if err != nil {
				return err
			}
			cfg.Budget, cfg.Store = st, st
		}
		p, err := proxy.New(cfg)
		if err != nil {
			return usageErr(fs, stderr, "%v", err)
		}
		handler, admin, target = p, p.Admin(), proxy.ShowURL(base)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	if adminAddr != "" {
		aln, err := net.Listen("tcp", adminAddr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("%s: %w; give --admin-listen another address, or --admin-listen \"\" for none", adminWhy, err)
		}
		admin := &http.Server{Handler: admin, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = admin.Serve(aln) }()
		defer admin.Close()
		fmt.Fprintf(stdout, "llmretry proxy admin (/healthz, /metrics) on http://%s\n", aln.Addr())
	}
	for _, note := range notes {
		fmt.Fprintf(stderr, "llmretry proxy: %s\n", note)
	}
	srv := proxy.NewServer(handler)
	// Where it listens, what it sends where, and whether it shares state:
	// on stdout, which --quiet leaves alone.
	addr := "http://" + ln.Addr().String()
	if fc != nil {
		fmt.Fprintf(stdout, "llmretry proxy on %s -> %s\n", addr, target)
		for _, line := range targetLines(fc, addr) {
			fmt.Fprintf(stdout, "llmretry proxy %s\n", line)
		}
	} else {
		fmt.Fprintf(stdout, "llmretry proxy on %s -> %s (clients use %s%s; their credentials pass through)\n", addr, target, addr, base.EscapedPath())
	}
	fmt.Fprintf(stdout, "llmretry proxy fleet state: %s\n", fleetState(ropts, fleetName))
	// Connections taken for streams go back to srv for their clients'
	// next requests through this listener.
	served := proxy.Listener(srv, ln)
	return proxy.Serve(ctx, srv, func() error { return srv.Serve(served) }, *grace, logger)
}

// shareThroughRedis puts the routes of fc on fleet states that newState
// makes: one, named name, for the cooldowns of every route (the keys and
// targets resting), whose ceiling is fleetMaxRest(fc), and unless
// budgetOff one budget per target, named name + the route's prefix + "/" +
// the target's name.
func shareThroughRedis(fc *proxy.FileConfig, name string, budgetOff bool, newState func(string, time.Duration) (*redisstate.State, error)) (llmretry.HealthStore, error) {
	cd, err := newState(name, fleetMaxRest(fc))
	if err != nil {
		return nil, err
	}
	if budgetOff {
		return cd, nil
	}
	for ri := range fc.Routes {
		for ti := range fc.Routes[ri].Failover.Targets {
			tg := &fc.Routes[ri].Failover.Targets[ti]
			b, err := newState(name+fc.Routes[ri].Prefix+"/"+tg.Name, 0) // a budget holds no marks
			if err != nil {
				return nil, err
			}
			tg.Budget = b
		}
	}
	return cd, nil
}

// defaultMaxRest is the ceiling of a route that sets no max_rest:
// Failover.MaxRest's default, and redisstate.Config.MaxRest's.
const defaultMaxRest = 24 * time.Hour

// fleetMaxRest is the ceiling of the health marks the fleet's store keeps:
// the longest any route allows (max_rest), so that the store cuts no
// route's rests short, nor keeps a mark longer than every route would
// trust it. Each route's Transport cuts what it reads to its own max_rest.
func fleetMaxRest(fc *proxy.FileConfig) time.Duration {
	var longest time.Duration
	for _, r := range fc.Routes {
		longest = max(longest, cmp.Or(r.Failover.MaxRest, defaultMaxRest))
	}
	return longest
}

// loopback reports whether addr (HOST:PORT) listens on loopback only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// parseBudgetFlag reads --budget: on, off, or a ratio in (0, 1].
func parseBudgetFlag(v string) (off bool, ratio float64, ok bool) {
	if off, ok := parseOnOff(v); ok {
		return off, 0, true
	}
	r, err := strconv.ParseFloat(v, 64)
	if err != nil || !(r > 0 && r <= 1) {
		return false, 0, false
	}
	return false, r, true
}

// parseOnOff reads on or off; off is true for off.
func parseOnOff(v string) (off, ok bool) {
	switch v {
	case "on":
		return false, true
	case "off":
		return true, true
	}
	return false, false
}

// listFlag is a flag that may be given more than once, each value a
// comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}
