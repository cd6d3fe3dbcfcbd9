package proxy

import (
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"
)

// firstConn lets one request open the first connection to an HTTPS host
// while the others wait for it, and not for long.
//
// net/http's Transport starts a dial for every request that finds no
// connection to its host, and learns only after each TLS handshake that
// one HTTP/2 connection would have carried them all. A burst of 10,000
// streams to a fresh upstream (the proxy restarted, its clients
// reconnecting) opened up to thousands of TLS connections at once and, in
// one run, took the proxy past its 20,000 file descriptors: a fifth of the
// streams failed. Requests wait only until the first connection is up
// (httptrace's GotConn), not for its reply, which may take minutes.
//
// A first connection can hang in its handshake (a packet lost, a stuck
// load balancer) for as long as the TLS handshake timeout; everyone
// waiting behind it waited as long (10 requests took 10 s each). So when
// no connection is up within openBound, one more request may open one,
// and one more each openBound after, until one is up: then every waiting
// request goes on it. A burst still opens a handful of connections, one a
// second at most, never one each.
//
// If a request opening fails before it has a connection, those waiting go
// on as before, each on its own, and the next request opens again. A host
// left without requests for longer than net/http keeps an idle connection
// is opened again as new: its connection has likely been closed, and the
// next burst would dial as the first did. (If it has not, the one opening
// finds it at once.)
//
// Plain-HTTP requests pass straight on: over HTTP/1.1 every open stream
// needs a connection of its own anyway. Once a host is up over HTTP/2, its
// later bursts are kept from dialling a connection each by getConn
// (h2getconn.go).
type firstConn struct {
	next http.RoundTripper
	// idle is the Transport's IdleConnTimeout; 0: a host once opened stays
	// open.
	idle  time.Duration
	mu    sync.Mutex
	hosts map[string]*hostConn
}

// openBound is how long the requests opening a host's first connections
// have before one more request may open another: about as long as a TLS
// handshake takes on a bad path (a few round trips of up to a few hundred
// milliseconds), and well below the TLS handshake timeout (10 s).
const openBound = time.Second

type hostConn struct {
	up      bool      // a connection was made: no more waiting
	last    time.Time // the last request sent
	opening *opening  // non-nil while requests open the first
	h2      bool      // its connections speak HTTP/2: see getting
	getting getting   // once up, over HTTP/2: the requests getting a connection
}

// opening is the attempt at a host's first connection, by one request or,
// if that one is slow, a few.
type opening struct {
	done    chan struct{} // closed when a connection is up, or the attempt has given up
	failed  bool          // the upstream could not be reached: the others go on alone
	openers int           // requests opening now
	next    time.Time     // when one more request may open
}

func (f *firstConn) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" || isUpgrade(req) {
		// An upgrade goes over HTTP/1.1 on a connection of its own: it
		// can neither open a host's first connection for the others nor
		// share one.
		return f.next.RoundTrip(req)
	}
	var timer *time.Timer // while waiting: for the next turn to open
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
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
			h.up, h.h2 = false, false // unused for long enough that its connections were closed
		}
		h.last = now
		if h.up && h.h2 {
			return f.getConn(req, h) // unlocks f.mu
		}
		if h.up {
			f.mu.Unlock()
			return f.next.RoundTrip(req)
		}
		o := h.opening
		if o == nil {
			o = &opening{done: make(chan struct{})}
			h.opening = o
		}
		if o.openers == 0 || !now.Before(o.next) {
			// The first, or the turn of one more: those opening are slow.
			o.openers++
			o.next = now.Add(openBound)
			f.mu.Unlock()
			return f.open(req, h, o)
		}
		wait := o.next.Sub(now)
		f.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-o.done:
			if o.failed {
				return f.next.RoundTrip(req)
			}
			// Up now, or every opener's own client left: look again.
		case <-timer.C:
			// Perhaps this one's turn to open: look again.
		case <-req.Context().Done():
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, req.Context().Err()
		}
	}
}

// open sends req as one of the requests opening h's first connection.
func (f *firstConn) open(req *http.Request, h *hostConn, o *opening) (*http.Response, error) {
	var once sync.Once
	end := func(up, failed bool) {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			o.openers--
			select {
			case <-o.done:
				return // another opener ended the attempt
			default:
			}
			switch {
			case up:
				h.up = true
			case failed:
				o.failed = true
			case o.openers > 0:
				return // only this one's client left; the others go on opening
			}
			if h.opening == o {
				h.opening = nil
			}
			close(o.done)
		})
	}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		f.learnProtocol(h, info)
		end(true, false)
	}}
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
