// Package proxy is the llmretry command's retrying reverse proxy: it puts
// llmretry's Transport (provider rules, first-event commit point, budget
// and cooldowns) in front of any HTTP client.
package proxy

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/cmd/internal/h1"
)

// Config sets up a proxy.
type Config struct {
	// Upstream is where requests go: scheme, host and an optional base path
	// that request paths are joined to.
	Upstream *url.URL
	// Policy is the retry policy; zero fields take llmretry's defaults.
	Policy llmretry.Policy
	// MaxBody is the largest request body accepted; larger ones get 413
	// without contacting the upstream. Bodies are held in memory so that
	// they can be sent again.
	MaxBody int64
	// IdleTimeout ends a response stream that sends nothing for this long.
	IdleTimeout time.Duration
	// BodyTimeout bounds how long a client may take to send its request
	// body: BodyTimeout, plus a second for every 256 KiB that has arrived
	// (not that it declares: a declared length costs a client nothing to
	// send). A body that is not in by then gets 408. Default 30 s.
	BodyTimeout time.Duration
	// MaxHeld caps the bytes of request bodies held at once, across
	// requests, counted as they arrive (and the memory for them grows as
	// they do); past it a request gets 503 with Retry-After. Default
	// 256 MiB.
	MaxHeld int64
	// UpstreamTimeout bounds the wait for an attempt's response headers
	// (a model may think for minutes before its first byte). Default 10 min.
	UpstreamTimeout time.Duration
	// MaxUpstreamHeader caps an upstream response's header block; a larger
	// one is a 502 that says so. Default 256 KiB.
	MaxUpstreamHeader int64
	// Logger gets retries and give-ups; never a header value or a query.
	Logger *slog.Logger
	// Base is the transport under the retries (http.DefaultTransport's
	// settings if nil). UpstreamTimeout and MaxUpstreamHeader are set on
	// the proxy's own transport only: a Base given here keeps its own.
	Base http.RoundTripper
	// Budget and Store replace the proxy's own in-process ones, to share
	// them across a fleet of proxies (redisstate.State is both).
	Budget llmretry.Budget
	Store  llmretry.HealthStore
	// BudgetRatio sets the in-process budget's ratio (llmretry's default
	// when 0). BudgetOff and CooldownsOff turn storm control off.
	BudgetRatio  float64
	BudgetOff    bool
	CooldownsOff bool
	// Options are further Transport options.
	Options []llmretry.Option
	// Continuation, when set, finishes a stream that breaks after output
	// reached the client (llmretry.WithStreamContinuation): counted by
	// outcome in /metrics, logged with the request id, and the final
	// X-Llmretry-Attempts and X-Llmretry-Target sent as HTTP trailers.
	Continuation *llmretry.Continuation
	// Perimeter says which web pages and Host names may reach the routes
	// of a config (NewRouter only: without keys to spend, New lets every
	// request through to its upstream).
	Perimeter Perimeter
	// Failover, when set, sends requests to its targets (see
	// llmretry.NewFailoverTransport) and Upstream is left out: the first
	// target's base URL takes its place. Budget and BudgetRatio then apply
	// to each target that has no budget of its own; Store is shared
	// by all, so that a fleet knows which keys and targets rest.
	Failover *llmretry.Failover
	// KeptStreams is how many HTTP/1.x streams, open at once on the
	// server, net/http writes as usual, each keeping its connection for the
	// client's next request; beyond it, a stream is written on its
	// connection itself, which then closes (h1stream.go). 0 means
	// DefaultKeptStreams; negative, none.
	KeptStreams int
}

// DefaultKeptStreams: a few streams at once keep their connections, which
// saves each client's next request a new connection (about 12 system
// calls and 67,000 instructions more per stream through the proxy, with
// a keep-alive client sending streams one after another); many streams
// at once give up theirs, which saves about 12 KiB of memory each. At
// 128, what the kept ones hold is about 1.5 MiB.
const DefaultKeptStreams = 128

// Defaults of Config.
const (
	DefaultMaxBody           = 32 << 20
	DefaultBodyTimeout       = 30 * time.Second
	DefaultMaxHeld           = 256 << 20
	DefaultUpstreamTimeout   = 10 * time.Minute
	DefaultMaxUpstreamHeader = 256 << 10
)

// bodyRate is the least rate a body is given time for, on top of
// BodyTimeout: a second for each 256 KiB that arrives.
const bodyRate = 256 << 10

// Proxy is an http.Handler.
type Proxy struct {
	cfg     Config
	rp      *httputil.ReverseProxy
	metrics *Metrics
	admin   *http.ServeMux
	held    *atomic.Int64 // bytes of request bodies held now
	label   string        // the upstream, in metrics
	route   string        // the config route's prefix, in metrics ("/" for the root); "" without a config
}

// shared is what the routes of one config file share: their metrics and
// the bytes of request bodies held.
type shared struct {
	metrics *Metrics
	held    *atomic.Int64
}

// New returns a Proxy for cfg.
func New(cfg Config) (*Proxy, error) {
	return newProxy(cfg, newShared(false), "")
}

// newShared makes the metrics and held-bytes count of one proxy, or of
// every route of one config (routes: its series name the route).
func newShared(routes bool) *shared {
	held := new(atomic.Int64)
	return &shared{metrics: newMetrics(held.Load, routes), held: held}
}

// adminMux serves /healthz and m's /metrics, for a listener of their own.
func adminMux(m *Metrics) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", m.Handler())
	return mux
}

// newProxy returns a Proxy for cfg that counts in sh, under route when it
// serves a config's route.
func newProxy(cfg Config, sh *shared, route string) (*Proxy, error) {
	if cfg.Failover != nil && len(cfg.Failover.Targets) > 0 {
		u, err := url.Parse(cfg.Failover.Targets[0].BaseURL)
		if err != nil {
			return nil, fmt.Errorf("target %q: %w", cfg.Failover.Targets[0].Name, err)
		}
		cfg.Upstream = u
	}
	if cfg.Upstream == nil || cfg.Upstream.Scheme == "" || cfg.Upstream.Host == "" {
		return nil, errors.New("upstream must be an absolute URL such as https://api.openai.com")
	}
	if cfg.Upstream.Scheme != "http" && cfg.Upstream.Scheme != "https" {
		return nil, fmt.Errorf("upstream scheme %q: want http or https", cfg.Upstream.Scheme)
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.MaxHeld <= 0 {
		cfg.MaxHeld = DefaultMaxHeld
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.MaxUpstreamHeader <= 0 {
		cfg.MaxUpstreamHeader = DefaultMaxUpstreamHeader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = slog.New(requestIDHandler{cfg.Logger.Handler()})
	base := cfg.Base
	if base == nil {
		base = defaultBase(cfg)
	}
	p := &Proxy{cfg: cfg, admin: adminMux(sh.metrics), metrics: sh.metrics, held: sh.held, label: cfg.Upstream.Host, route: route}
	budgetFor := func() llmretry.Budget {
		switch {
		case cfg.BudgetOff:
			return nil
		case cfg.Budget != nil:
			return cfg.Budget
		}
		return llmretry.NewRatioBudget(llmretry.BudgetConfig{Ratio: cfg.BudgetRatio})
	}
	addBudget := func(label string, b llmretry.Budget) {
		if c, ok := b.(interface{ Counts() llmretry.BudgetCounts }); ok {
			p.metrics.addBudget(p.route, label, c.Counts)
		}
	}
	opts := []llmretry.Option{
		llmretry.WithPolicy(cfg.Policy),
		llmretry.WithLogger(cfg.Logger),
		llmretry.WithOnRetry(p.onRetry),
		llmretry.WithOnStop(p.onStop),
		llmretry.WithOnHealth(p.onHealth),
	}
	switch {
	case cfg.CooldownsOff:
		opts = append(opts, llmretry.WithHealthStore(nil))
	case cfg.Store != nil:
		opts = append(opts, llmretry.WithHealthStore(cfg.Store))
	}
	if cfg.IdleTimeout > 0 {
		opts = append(opts, llmretry.WithIdleTimeout(cfg.IdleTimeout))
	}
	if cfg.Continuation != nil {
		opts = append(opts, llmretry.WithStreamContinuation(*cfg.Continuation), llmretry.WithOnContinuation(p.onContinuation))
	}
	var transport *llmretry.Transport
	if cfg.Failover != nil {
		f := *cfg.Failover
		f.Targets = append([]llmretry.Target(nil), f.Targets...)
		for i := range f.Targets {
			if f.Targets[i].Budget == nil {
				f.Targets[i].Budget = budgetFor()
			}
			addBudget(f.Targets[i].Name, f.Targets[i].Budget)
			p.metrics.addUpstream(p.route, f.Targets[i].Name)
		}
		if cfg.BudgetOff {
			opts = append(opts, llmretry.WithBudget(nil))
		}
		opts = append(opts, cfg.Options...)
		var err error
		if transport, err = llmretry.NewFailoverTransport(countAttempts{base, p.metrics}, f, opts...); err != nil {
			return nil, err
		}
	} else {
		budget := budgetFor()
		addBudget(p.label, budget)
		p.metrics.addUpstream(p.route, p.label)
		opts = append(opts, llmretry.WithBudget(budget))
		opts = append(opts, cfg.Options...)
		transport = llmretry.NewTransport(countAttempts{base, p.metrics}, opts...)
	}

	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(cfg.Upstream)
			r.Out.Host = cfg.Upstream.Host
			// ReverseProxy wraps the body in a type net/http does not know
			// to be in memory, and so writes the headers and the body to
			// the upstream in two syscalls; our held copy goes in one.
			if r.Out.Body != nil && r.Out.GetBody != nil {
				r.Out.Body, _ = r.Out.GetBody() // a bytes.Reader: cannot fail
			}
		},
		Transport: transport,
		// 0: ReverseProxy flushes every write of a text/event-stream or
		// unknown-length response at once (streams stay live) and leaves
		// whole JSON replies to the normal buffering.
		FlushInterval: 0,
		// BufferPool: each request's own (forward), sized by its reply.
		ErrorHandler: p.fail,
		// ReverseProxy's own lines go to the proxy's logger, at Warn.
		ErrorLog: log.New(copyErrorFilter{slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn).Writer()}, "", 0),
		ModifyResponse: func(resp *http.Response) error {
			p.metrics.request(resp.StatusCode)
			if cfg.Failover != nil { // only a failover Transport names a target
				p.metrics.servedBy(p.route, resp.Header.Get(llmretry.TargetHeader))
			}
			sse := false // read from the map: the name is canonical
			if ct := resp.Header["Content-Type"]; len(ct) > 0 {
				sse = strings.HasPrefix(ct[0], "text/event-stream")
			}
			info := requestOf(resp.Request.Context())
			if info != nil {
				info.buffers.stream = sse
				unstamped(resp.Header)
				if info.origin != "" {
					dropCORS(resp.Header)
				}
				stamp(info.out, info)
				p.metrics.responded(info.start)
			}
			// Every body is wrapped, JSON replies too: ReverseProxy's own,
			// unlabelled line for a broken copy is dropped, so this is the
			// only report of one.
			if info != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil && resp.Body != http.NoBody {
				sb := &streamBody{ReadCloser: resp.Body, ctx: resp.Request.Context(), logger: cfg.Logger, info: info,
					stream: sse, metrics: p.metrics, resp: resp}
				if cfg.Continuation != nil && sse && resp.StatusCode/100 == 2 {
					// A continuation may change them after the headers are
					// sent: their final values go as trailers.
					sb.trailer, sb.target = announceTrailers(resp), resp.Header.Get(llmretry.TargetHeader)
				}
				resp.Body = sb
			}
			return nil
		},
	}
	return p, nil
}

// Admin is the proxy's own endpoints, /healthz and /metrics, to serve on a
// listener of their own: on the proxy's listener every path, theirs too,
// belongs to the upstream.
func (p *Proxy) Admin() http.Handler { return p.admin }

// Metrics returns the proxy's counters.
func (p *Proxy) Metrics() *Metrics { return p.metrics }

// ServeHTTP forwards every request upstream, its path byte for byte: no
// ServeMux here, which would answer "//v1/models" or "/v1/./models" with a
// redirect of its own.
//
// On a server made by NewServer, an HTTP/1.x stream may be taken from
// net/http and go on after ServeHTTP returns (h1stream.go, alone.go): its
// ResponseWriter's header map is written then still (the reply's
// trailers go there), and its connection is no longer net/http's. A
// handler that wraps this one must not read or write w, or its header,
// once ServeHTTP has returned.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r, info := withRequest(r, w.Header())
	defer info.end()
	p.forward(w, r, info)
}

// forward holds the request body (so that a retry can send it again) and
// sends the request on; r carries info (withRequest). A body above MaxBody
// is refused before anything goes upstream; one that does not arrive in
// time gets 408; one that would take the bodies held past MaxHeld gets 503.
// keptStreams is Config.KeptStreams, its default filled in.
func (p *Proxy) keptStreams() int64 {
	switch k := p.cfg.KeptStreams; {
	case k == 0:
		return DefaultKeptStreams
	case k < 0:
		return 0
	default:
		return int64(k)
	}
}

func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, info *requestInfo) {
	// The upstream's answers are stamped in ModifyResponse; the proxy's
	// own, in refuse and fail. (Stamping w's headers up front would not
	// do: an error answer must carry the attempts made by then.)
	if r.ContentLength > p.cfg.MaxBody {
		p.refuse(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", p.cfg.MaxBody))
		return
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		var reserved int64
		var code int
		var msg string
		body, reserved, code, msg = p.hold(w, r)
		info.held, info.reserved = p.held, reserved // given back as the request ends (info.end)
		if code != 0 {
			if code == http.StatusServiceUnavailable {
				w.Header().Set("Retry-After", "1")
			}
			p.refuse(w, r, code, msg)
			return
		}
		// r.Body, read to its end, is closed: over HTTP/2 that frees the
		// buffer it arrived in, which would otherwise stay with the
		// stream for as long as the reply lasts. Rewrite sends a fresh
		// copy from GetBody, which ReverseProxy would otherwise wrap.
		_ = r.Body.Close()
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = int64(len(body))
		r.Header.Del("Transfer-Encoding")
		// The held body goes with its length, in one write; and a chunked
		// body's trailers (a header sent after the body, where a key could
		// hide from every check) are not sent on.
		r.TransferEncoding, r.Trailer = nil, nil
		r.Header.Del("Trailer")
	}
	// A copy of the ReverseProxy (a few words) for each request, so that
	// the buffer it copies the reply through is sized by this reply
	// (copyBuffers).
	rp := *p.rp
	rp.BufferPool = &info.buffers
	out := takeStreams(w, r, info, p.keptStreams())
	if sc, ok := out.(*streamConn); ok {
		info.sc = sc
		whole := false
		defer func() {
			if whole && info.rest != nil {
				return // the reply goes on alone (alone.go), and finishes there
			}
			if info.rest != nil { // told of an end, then panicked: its close was skipped
				_ = info.rest.ReadCloser.Close()
				info.rest = nil
			}
			sc.finish(whole) // a panic (a stream cut upstream) leaves it cut
		}()
		if sc.mayTakeEarly() {
			// Beyond the kept requests, this one may be taken: its reply
			// may then go on after the handler returns.
			r = info.detach(r)
			sc.cancel = info.cancel
			if asksForStream(r, body) {
				sc.takeEarly()
			}
		}
		rp.ServeHTTP(out, r)
		whole = true
		return
	}
	rp.ServeHTTP(out, r)
}

// firstChunk is the most memory a request body is given before its bytes
// arrive. A body declared no larger is read into one buffer of its own
// size, allocated once; a larger one, or one of unknown length, starts
// there and doubles as it fills, to its declared size at most. So a client
// that declares 32 MiB and sends nothing holds 32 KiB of MaxHeld, not
// 32 MiB: eight of them once took the whole default MaxHeld and made
// every other request with a body get 503.
const firstChunk = 32 << 10

// hold reads r's body within its time bound into memory counted against
// MaxHeld as it grows. reserved is what it counted, to give back when the
// request is done. A code other than 0 is the answer instead.
//
// The time bound grows with the bytes too: BodyTimeout, plus a second for
// each bodyRate bytes that have arrived. A client sending at bodyRate or
// faster is never cut; one that sends nothing is cut after BodyTimeout,
// whatever it declared.
func (p *Proxy) hold(w http.ResponseWriter, r *http.Request) (body []byte, reserved int64, code int, msg string) {
	declared := r.ContentLength
	start := time.Now()
	var granted time.Duration // on top of BodyTimeout, for the bytes arrived
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(start.Add(p.cfg.BodyTimeout))
	defer func() {
		if code == 0 {
			_ = rc.SetReadDeadline(time.Time{})
			return
		}
		// Left in force, so that net/http's discard of the unread body
		// (to keep the connection) fails at once rather than waiting on a
		// client that sends nothing; the connection closes after the reply.
		w.Header().Set("Connection", "close")
	}()
	reserve := func(n int64) bool {
		if p.held.Add(n) > p.cfg.MaxHeld {
			p.held.Add(-n)
			return false
		}
		reserved += n
		return true
	}
	limit := declared
	if declared < 0 {
		limit = p.cfg.MaxBody + 1 // a byte past MaxBody tells a chunked body too large
	}
	var buf []byte
	var err error
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				break
			}
			size := min(max(2*int64(cap(buf)), firstChunk), limit)
			if !reserve(size - int64(cap(buf))) {
				return nil, reserved, http.StatusServiceUnavailable,
					fmt.Sprintf("the proxy is holding its limit of %d bytes of request bodies; retry shortly", p.cfg.MaxHeld)
			}
			grown := make([]byte, len(buf), size)
			copy(grown, buf)
			buf = grown
		}
		n, rerr := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			} else if declared >= 0 && int64(len(buf)) < declared {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		if g := time.Duration(int64(len(buf))/bodyRate) * time.Second; g > granted {
			granted = g
			_ = rc.SetReadDeadline(start.Add(p.cfg.BodyTimeout + granted))
		}
	}
	switch {
	case err == nil && int64(len(buf)) > p.cfg.MaxBody:
		return nil, reserved, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", p.cfg.MaxBody)
	case err == nil:
		return buf, reserved, 0, ""
	case isTimeout(err):
		return nil, reserved, http.StatusRequestTimeout, fmt.Sprintf("request body not received within %v: %d bytes arrived (the bound grows by a second for each %d KiB)",
			p.cfg.BodyTimeout+granted, len(buf), bodyRate>>10)
	default:
		return nil, reserved, http.StatusBadRequest, "reading the request body: " + err.Error()
	}
}

// isTimeout reports a read that ran out of time. A function of its own: the
// net.Error that errors.As fills escapes, and declared in hold it was an
// allocation on every request, failed or not.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// HeldBytes is how many bytes of request bodies the proxy holds now.
func (p *Proxy) HeldBytes() int64 { return p.held.Load() }

// onRetry, onStop and onHealth count in the metrics under the request's
// route and upstream: the host, or with failover the target.
func (p *Proxy) onRetry(e llmretry.RetryEvent) {
	p.metrics.onRetry(e, p.route, cmp.Or(e.Target, p.label))
}
func (p *Proxy) onStop(e llmretry.StopEvent)     { p.metrics.onStop(e, p.route, cmp.Or(e.Target, p.label)) }
func (p *Proxy) onHealth(e llmretry.HealthEvent) { p.metrics.onHealth(e, p.route) }
func (p *Proxy) onContinuation(e llmretry.ContinuationEvent) {
	p.metrics.onContinuation(e, p.route)
}

// refuse answers r with the proxy's own error.
func (p *Proxy) refuse(w http.ResponseWriter, r *http.Request, code int, msg string) {
	refuse(w, r, p.metrics, p.cfg.Logger, code, "llmretry_proxy_error", msg)
}

// refuse answers r with the proxy's own error, of type typ, in the OpenAI
// shape: counted by code, stamped with the request's id (and for a listed
// page, the CORS headers that let it read the answer), and logged with the
// same id (logger adds it: requestIDHandler).
func refuse(w http.ResponseWriter, r *http.Request, m *Metrics, logger *slog.Logger, code int, typ, msg string) {
	m.request(code)
	stamp(w.Header(), requestOf(r.Context()))
	logger.LogAttrs(r.Context(), slog.LevelInfo, "llmretry proxy: refused", slog.Int("status", code), slog.String("reason", msg))
	writeErrorAs(w, code, typ, msg)
}

// fail answers when no upstream response can be returned.
func (p *Proxy) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusBadGateway
	var e *llmretry.Error
	switch {
	case r.Context().Err() != nil:
		code = 499 // the client went away; nobody reads this
	case errors.As(err, &e) && (e.Reason == llmretry.ReasonDeadline || e.Timeout()):
		code = http.StatusGatewayTimeout
	case errors.As(err, &e) && e.Reason == llmretry.ReasonInvalidRequest:
		// Refused before anything was sent (a body the targets' allow-list
		// cannot read one way only, a path that could leave a target's
		// base): the client's to fix.
		code = http.StatusBadRequest
	case errors.As(err, &e) && e.Reason == llmretry.ReasonUnavailable:
		// Every key that could serve it is out (refused, or out of quota):
		// the proxy's state, not a bad gateway.
		code = http.StatusServiceUnavailable
	}
	p.metrics.request(code)
	stamp(w.Header(), requestOf(r.Context()))
	p.writeError(w, code, err.Error())
}

// writeError answers in the OpenAI error shape that most clients parse.
func (p *Proxy) writeError(w http.ResponseWriter, code int, msg string) {
	writeErrorAs(w, code, "llmretry_proxy_error", msg)
}

// writeErrorAs answers code with an error of type typ, in the OpenAI shape.
func writeErrorAs(w http.ResponseWriter, code int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "code": code,
	}})
}

// countAttempts counts every attempt that goes upstream.
type countAttempts struct {
	base    http.RoundTripper
	metrics *Metrics
}

func (c countAttempts) RoundTrip(r *http.Request) (*http.Response, error) {
	c.metrics.attempt()
	if info := requestOf(r.Context()); info != nil {
		info.attempts.Add(1)
	}
	return c.base.RoundTrip(r)
}

// Serve runs srv on its listener until ctx is done, then drains: the
// listener closes at once (new connections are refused) and in-flight
// requests, streams included, get grace to finish before being cut. It logs
// that the drain began, and how it ended.
func Serve(ctx context.Context, srv *http.Server, serve func() error, grace time.Duration, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	start := time.Now()
	logger.Info("llmretry: draining: new connections refused, in-flight requests may finish", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	taken := takenStreamsOf(srv)
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(sctx) }()
	if taken != nil {
		taken.closeUnstarted(sctx)
	}
	err := <-shut
	if err == nil && taken != nil {
		err = taken.wait(sctx)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		_ = srv.Close()
		if taken != nil {
			taken.closeAll()
		}
		err = fmt.Errorf("in-flight requests still running after the %v grace period were cut", grace)
		logger.Warn("llmretry: drain ended: grace passed, the requests still running were cut", "grace", grace)
	} else {
		logger.Info("llmretry: drain ended: every in-flight request finished", "took", time.Since(start).Round(time.Millisecond))
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return err
}

// defaultBase is the transport the proxy sends with when Config.Base is
// nil: net/http's, tuned for a proxy, behind h1's client for plain-HTTP
// upstreams.
func defaultBase(cfg Config) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	// Every client connection may need an upstream one; net/http keeps
	// only 2 idle per host by default, and under load the rest would be
	// redialled for every request.
	t.MaxIdleConns, t.MaxIdleConnsPerHost = 0, 1024
	// Left on, net/http would ask for gzip when the client did not and
	// unzip the reply: a header the client never sent, and CPU spent.
	t.DisableCompression = true
	t.ResponseHeaderTimeout = cfg.UpstreamTimeout
	t.MaxResponseHeaderBytes = cfg.MaxUpstreamHeader
	// Plain-HTTP upstreams (a self-hosted model server) get a client
	// with no goroutines or buffers of its own per connection: the
	// most of what an open stream costs otherwise. https, upgrades
	// and proxied requests go to t, a burst of them to a new host
	// opening one connection first.
	plain := h1.NewTransport(t)
	// Not t's dialer (net.Dialer.DialContext): h1's own bounds a dial
	// as long, and dials one address through DialTCP, which keeps the
	// goroutine it dials on at the stack it starts with, where
	// DialContext's deeper frames grow it to 8 KiB; a burst of streams
	// has a dial in flight for each (h1/dial.go).
	plain.DialContext = nil
	return &firstConn{next: plain, idle: t.IdleConnTimeout}
}

// NewServer returns an http.Server for h that speaks HTTP/1.1 and h2c
// (HTTP/2 without TLS), with timeouts that suit long streams: a bound on
// reading headers, none on writing.
func NewServer(h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	// The streams written on taken connections (h1stream.go), for Serve's
	// drain to wait for: net/http's Shutdown does not.
	taken := &takenStreams{}
	ctx := context.WithValue(context.Background(), takenKey{}, taken)
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	return srv
}
