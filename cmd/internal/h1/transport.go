// Package h1 is a lean HTTP/1.1 client for cleartext upstreams, the proxy's
// base transport when it speaks plain HTTP to a self-hosted model server.
//
// net/http's Transport keeps two goroutines and two 4 KiB buffers for every
// open connection (a read loop, a write loop, a bufio reader and writer).
// Behind a proxy holding ten thousand streams open that is most of what a
// stream costs. This client keeps none of them: the goroutine that sends a
// request also reads its response, straight from the connection, through a
// small read buffer; the write buffer is borrowed only while the request is
// written. Parsing and framing are net/http's own (Request.Write,
// ReadResponse), so what reaches the wire and what is accepted from it are
// the same as with net/http.
//
// It serves only what it can serve the same way: http:// requests that no
// HTTP proxy must carry and that ask for no protocol upgrade. Everything else
// (https, WebSockets, proxied requests) goes to Fallback.
package h1

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry/cmd/internal/pollset"
)

// Transport is an http.RoundTripper for cleartext HTTP/1.1 upstreams. Its
// zero value is not usable: make one with NewTransport.
type Transport struct {
	// Fallback serves every request this one does not.
	Fallback http.RoundTripper
	// Proxy, when set, picks an HTTP proxy for a request; a request that
	// gets one goes to Fallback.
	Proxy func(*http.Request) (*url.URL, error)
	// DialContext opens connections; nil is a net.Dialer with 30 s
	// keep-alives, as net/http's default, bounded by DialTimeout, and
	// dialled so that a dial's goroutine keeps a small stack (dial.go).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds each dial when DialContext is nil; 0 is 30 s, as
	// net/http's default dialer.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for response headers once the
	// request is written; 0 is no bound.
	ResponseHeaderTimeout time.Duration
	// MaxResponseHeaderBytes bounds the response headers, 1xx responses
	// included; 0 is 1 MiB, as net/http's default.
	MaxResponseHeaderBytes int64
	// MaxIdleConnsPerHost bounds the connections kept for reuse per
	// host; 0 is 2, as net/http's default.
	MaxIdleConnsPerHost int
	// IdleConnTimeout closes a connection unused this long; 0 is 90 s.
	IdleConnTimeout time.Duration
	// ReadBufferSize is the buffer a connection reads the upstream
	// through; 0 is 1 KiB. Bodies are read around it when the reader's
	// own buffer is larger, so it bounds memory, not throughput.
	ReadBufferSize int
	// WatchAbove: a body waits for its first bytes through the transport's
	// poll set (body.NotifyReadable) only while more than WatchAbove
	// bodies are open; below, its reader waits in a goroutine, as net/http
	// does, which costs no system call. 0 is 128; negative, always.
	WatchAbove int

	idle idlePool
	// polls tells a body that waits for its first bytes when they come
	// (body.NotifyReadable); open counts the bodies not yet finished.
	polls pollset.Set
	open  atomic.Int64
}

// NewTransport returns a Transport that takes its dialer, proxy choice,
// header bounds and idle settings from fallback, and passes to fallback
// every request it does not serve itself.
func NewTransport(fallback *http.Transport) *Transport {
	return &Transport{
		Fallback:               fallback,
		Proxy:                  fallback.Proxy,
		DialContext:            fallback.DialContext,
		ResponseHeaderTimeout:  fallback.ResponseHeaderTimeout,
		MaxResponseHeaderBytes: fallback.MaxResponseHeaderBytes,
		MaxIdleConnsPerHost:    fallback.MaxIdleConnsPerHost,
		IdleConnTimeout:        fallback.IdleConnTimeout,
	}
}

// RoundTrip sends req and returns the response once its headers are read.
// A connection the upstream closed while it sat idle is found before it is
// used, or, if the request is replayable as net/http defines it, the request
// is sent again on a new one.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !t.serves(req) {
		return t.Fallback.RoundTrip(req)
	}
	if err := validate(req); err != nil {
		closeBody(req)
		return nil, err
	}
	ctx := req.Context()
	addr := hostPort(req.URL)
	for fresh := false; ; fresh = true {
		c, reused, err := t.conn(ctx, addr, fresh)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := c.roundTrip(req)
		if err == nil {
			return resp, nil
		}
		if !reused || !c.closedUnused(err) || ctx.Err() != nil || !replayable(req, c.written == 0) {
			return nil, err
		}
		if req, err = rewound(req); err != nil {
			return nil, err
		}
	}
}

// CloseIdleConnections closes the connections kept for reuse, here and in
// Fallback.
func (t *Transport) CloseIdleConnections() {
	t.idle.closeAll()
	if c, ok := t.Fallback.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// serves reports whether req is one this client sends the way net/http
// would: plain http, no upgrade, no HTTP proxy in between.
func (t *Transport) serves(req *http.Request) bool {
	if req.URL == nil || req.URL.Scheme != "http" || len(req.Header["Upgrade"]) > 0 {
		return false
	}
	if t.Proxy != nil {
		if u, err := t.Proxy(req); u != nil || err != nil {
			return false
		}
	}
	return true
}

// conn returns a live idle connection to addr, or a new one; fresh asks for
// a new one only.
func (t *Transport) conn(ctx context.Context, addr string, fresh bool) (c *conn, reused bool, err error) {
	if !fresh {
		if c := t.idle.get(addr, t.idleTimeout()); c != nil {
			return c, true, nil
		}
	}
	dialer := t.DialContext
	if dialer == nil {
		dialer = func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dial(ctx, plainDialer(), net.DefaultResolver.LookupIPAddr, t.dialTimeout(), addr)
		}
	}
	// The dial runs on a goroutine of its own: it goes deep (the resolver,
	// the poller), and on the request's goroutine it would grow that stack
	// for as long as the stream it opens lasts (measured: 8 KiB more per
	// open stream).
	type dialed struct {
		nc  net.Conn
		err error
	}
	done := make(chan dialed, 1)
	go func() {
		nc, err := dialer(ctx, "tcp", addr)
		done <- dialed{nc, err}
	}()
	d := <-done
	if d.err != nil {
		return nil, false, d.err
	}
	return newConn(t, addr, d.nc), false, nil
}

func (t *Transport) dialTimeout() time.Duration {
	if t.DialTimeout > 0 {
		return t.DialTimeout
	}
	return 30 * time.Second
}

func (t *Transport) idleTimeout() time.Duration {
	if t.IdleConnTimeout > 0 {
		return t.IdleConnTimeout
	}
	return 90 * time.Second
}

func (t *Transport) maxHeaderBytes() int64 {
	if t.MaxResponseHeaderBytes > 0 {
		return t.MaxResponseHeaderBytes
	}
	return 1 << 20
}

func (t *Transport) maxIdle() int {
	if t.MaxIdleConnsPerHost > 0 {
		return t.MaxIdleConnsPerHost
	}
	return 2
}

// watching reports whether bodies now wait for bytes through the poll
// set: memory per waiting stream counts where many are open.
func (t *Transport) watching() bool {
	switch {
	case t.WatchAbove < 0:
		return true
	case t.WatchAbove == 0:
		return t.open.Load() > 128
	default:
		return t.open.Load() > int64(t.WatchAbove)
	}
}

func (t *Transport) readBufferSize() int {
	if t.ReadBufferSize > 0 {
		return t.ReadBufferSize
	}
	return 1 << 10
}

// replayable is net/http's rule for sending a request again after a reused
// connection failed: its body can be had again, and either nothing of it
// reached the wire or the method (or an Idempotency-Key) says a second copy
// is harmless.
func replayable(req *http.Request, nothingWritten bool) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	if nothingWritten {
		return true
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return len(req.Header["Idempotency-Key"]) > 0 || len(req.Header["X-Idempotency-Key"]) > 0
}

// rewound is req with its body from the start, the caller's req untouched.
func rewound(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("rewinding the request body to send it again: %w", err)
	}
	r := *req
	r.Body = body
	return &r, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// errMissingHost is net/http's refusal of a request with no host.
var errMissingHost = errors.New("http: no Host in request URL")
