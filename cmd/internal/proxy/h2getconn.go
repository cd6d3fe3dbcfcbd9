package proxy

import (
	"crypto/tls"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"
)

// Once an HTTPS host is up over HTTP/2, its connections can still fill:
// each carries at most the streams its server allows (often 100 to 250),
// and long LLM streams keep them full. A request that finds every
// connection full makes net/http dial one of its own, and so does every
// other request that arrives before that dial ends: a burst of 2,000
// streams past the first connection's limit dialled 1,668 TLS connections
// where about ten would have carried them (net/http closes each surplus
// connection after its handshake, once another has room). So, per HTTP/2
// host, at most maxGetting requests at a time may be getting a connection
// (from httptrace's GetConn to GotConn, or their end); the rest wait in
// turn, each only until one of those has its connection. A request that
// finds room is through in microseconds, so where no connection is being
// dialled nobody waits long; where one is, those behind it wait for it and
// then go on it. Two rather than one: while one request dials, another
// can still take a place that a finished stream freed; each round of dials
// opens at most one connection too many.
//
// As for the first connection, a dial that hangs holds no one for long:
// one more request may go each openBound that requests are waiting.
//
// Hosts whose connections speak HTTP/1.1 are never held: there every open
// stream needs a connection of its own.
//
// Not covered: requests that net/http retries after they had their
// connection (and gave up their place here), which dial as before: streams
// a server refuses, as one that allows fewer than 100 streams a connection
// does (Go's client assumes 100 of a new connection until the server's
// settings arrive, and gives it too many), or requests on a connection
// that was going away.
const maxGetting = 2

// getting counts a host's requests that are getting a connection, and
// queues those waiting for their turn. Guarded by firstConn.mu.
type getting struct {
	n       int             // requests between their send and their connection
	waiting []chan struct{} // in turn; closed when handed a place
	next    time.Time       // while requests wait: when one more may go regardless
	waited  int             // requests that have waited their turn, ever
}

// getConn sends req to h, an HTTP/2 host, once there is room among the
// requests getting a connection. f.mu is held on entry and released.
func (f *firstConn) getConn(req *http.Request, h *hostConn) (*http.Response, error) {
	g := &h.getting
	if g.n < maxGetting {
		g.n++
		f.mu.Unlock()
		return f.sendGetting(req, h)
	}
	turn := make(chan struct{})
	g.waiting = append(g.waiting, turn)
	g.waited++
	if len(g.waiting) == 1 {
		g.next = time.Now().Add(openBound)
	}
	f.mu.Unlock()
	timer := time.NewTimer(openBound)
	defer timer.Stop()
	for {
		select {
		case <-turn:
			return f.sendGetting(req, h) // a place was handed on to this one
		case <-timer.C:
			f.mu.Lock()
			now := time.Now()
			if now.Before(g.next) { // another went beyond the bound, or the line moved
				timer.Reset(g.next.Sub(now))
				f.mu.Unlock()
				continue
			}
			if !f.leave(g, turn) {
				f.mu.Unlock()
				<-turn // handed a place meanwhile
				return f.sendGetting(req, h)
			}
			// Those getting a connection are slow (a handshake hanging):
			// one more goes now, beyond the bound.
			g.n++
			g.next = now.Add(openBound)
			f.mu.Unlock()
			return f.sendGetting(req, h)
		case <-req.Context().Done():
			f.mu.Lock()
			if !f.leave(g, turn) {
				f.handOn(g) // handed a place meanwhile: pass it on
			}
			f.mu.Unlock()
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, req.Context().Err()
		}
	}
}

// leave takes turn out of the line; false: it had already been handed a
// place. f.mu is held.
func (f *firstConn) leave(g *getting, turn chan struct{}) bool {
	for i, w := range g.waiting {
		if w == turn {
			g.waiting = append(g.waiting[:i], g.waiting[i+1:]...)
			return true
		}
	}
	return false
}

// handOn gives a place among those getting a connection to the next
// request in line, or frees it. f.mu is held.
func (f *firstConn) handOn(g *getting) {
	if len(g.waiting) == 0 {
		g.n--
		return
	}
	close(g.waiting[0])
	g.waiting = g.waiting[1:]
	if len(g.waiting) > 0 {
		g.next = time.Now().Add(openBound)
	}
}

// sendGetting sends req, holding a place among h's requests getting a
// connection until it has one, or has ended.
func (f *firstConn) sendGetting(req *http.Request, h *hostConn) (*http.Response, error) {
	var once sync.Once
	got := func(info *httptrace.GotConnInfo) {
		once.Do(func() {
			h2, known := speaksH2(info)
			f.mu.Lock()
			if known {
				h.h2 = h2
			}
			f.handOn(&h.getting)
			f.mu.Unlock()
		})
	}
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { got(&info) }}
	resp, err := f.next.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	got(nil)
	return resp, err
}

// learnProtocol records whether the connection a request to h got speaks
// HTTP/2.
func (f *firstConn) learnProtocol(h *hostConn, info httptrace.GotConnInfo) {
	if h2, known := speaksH2(&info); known {
		f.mu.Lock()
		h.h2 = h2
		f.mu.Unlock()
	}
}

// speaksH2 reads whether a connection speaks HTTP/2 from the connection
// itself, reused or new, since a request that finds one open sees no
// handshake; known is false without a TLS connection to read. (Upgrades,
// whose connections speak HTTP/1.1 whatever the host does, never come
// here.)
func speaksH2(info *httptrace.GotConnInfo) (h2, known bool) {
	if info == nil {
		return false, false
	}
	tc, ok := info.Conn.(*tls.Conn)
	if !ok {
		return false, false
	}
	return tc.ConnectionState().NegotiatedProtocol == "h2", true
}

// isUpgrade reports a request to switch protocols (a WebSocket): net/http
// sends it over HTTP/1.1 on a connection of its own, whatever the host
// speaks, so it is never held behind the host's HTTP/2 requests.
func isUpgrade(req *http.Request) bool {
	return len(req.Header["Upgrade"]) > 0 // as h1.Transport tells them
}
