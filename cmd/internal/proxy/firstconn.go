package proxy

import (
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"
)

// firstConn lets one request open the first connection to an HTTPS host
// while the others wait for it, and no longer.
//
// net/http's Transport starts a dial for every request that finds no
// connection to its host, and learns only after each TLS handshake that
// one HTTP/2 connection would have carried them all. A burst of 10,000
// streams to a fresh upstream (the proxy restarted, its clients
// reconnecting) opened up to thousands of TLS connections at once and, in
// one run, took the proxy past its 20,000 file descriptors: a fifth of the
// streams failed. Requests wait only until the first connection is up
// (httptrace's GotConn), not for its reply, which may take minutes. If the
// first request fails before it has a connection, those waiting go on as
// before, each on its own, and the next request opens again. A host left
// without requests for longer than net/http keeps an idle connection is
// opened again as new: its connection has likely been closed, and the next
// burst would dial as the first did. (If it has not, the one opening finds
// it at once.)
//
// Plain-HTTP requests pass straight on: over HTTP/1.1 every open stream
// needs a connection of its own anyway.
type firstConn struct {
	next http.RoundTripper
	// idle is the Transport's IdleConnTimeout; 0: a host once opened stays
	// open.
	idle  time.Duration
	mu    sync.Mutex
	hosts map[string]*hostConn
}

type hostConn struct {
	up      bool      // a connection was made: no more waiting
	last    time.Time // the last request sent
	opening *opening  // non-nil while one request opens the first
}

// opening is one request's attempt at the first connection.
type opening struct {
	done   chan struct{} // closed when it has a connection, or has given up
	failed bool          // the upstream could not be reached: the others go on alone
}

func (f *firstConn) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return f.next.RoundTrip(req)
	}
	for {
		f.mu.Lock()
		h := f.hosts[req.URL.Host]
		if h == nil {
			if f.hosts == nil {
				f.hosts = make(map[string]*hostConn)
			}
			h = &hostConn{}
			f.hosts[req.URL.Host] = h
		}
		now := time.Now()
		if h.up && f.idle > 0 && now.Sub(h.last) > f.idle {
			h.up = false // unused for long enough that its connections were closed
		}
		h.last = now
		if h.up {
			f.mu.Unlock()
			return f.next.RoundTrip(req)
		}
		o := h.opening
		if o == nil {
			o = &opening{done: make(chan struct{})}
			h.opening = o
			f.mu.Unlock()
			return f.open(req, h, o)
		}
		f.mu.Unlock()
		select {
		case <-o.done:
		case <-req.Context().Done():
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, req.Context().Err()
		}
		if o.failed {
			return f.next.RoundTrip(req)
		}
		// Up now, or the opener's own client left: look again.
	}
}

// open sends req as the one that opens h's first connection.
func (f *firstConn) open(req *http.Request, h *hostConn, o *opening) (*http.Response, error) {
	var once sync.Once
	end := func(up, failed bool) {
		once.Do(func() {
			f.mu.Lock()
			if up {
				h.up = true
			}
			o.failed = failed
			h.opening = nil
			f.mu.Unlock()
			close(o.done)
		})
	}
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { end(true, false) }}
	resp, err := f.next.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	// Without a connection: if only this request was cancelled, another
	// opens; if the upstream failed, the rest try on their own, as they
	// would without this gate, rather than one after another.
	end(err == nil, err != nil && req.Context().Err() == nil)
	return resp, err
}

// CloseIdleConnections passes on to the transport underneath.
func (f *firstConn) CloseIdleConnections() {
	if c, ok := f.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
