package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
)

// A connection taken for a stream (h1stream.go) need not close with it.
// net/http takes no connection back once it is hijacked, but it serves
// whatever its listener gives it; so the listener the proxy's server serves
// (Listener) gives it, beside the connections it accepts, the taken
// connections whose replies ended whole, and net/http serves the client's
// next request on each as on a new connection.
//
// Closed instead, each taken stream cost its client a new connection for
// its next request (a TCP handshake on its side; accept4, setsockopt,
// getsockname, epoll_ctl and close on the proxy's, BENCHMARKS.md, 200 at a
// time) and left a socket in TIME_WAIT on the proxy's side.
//
// A connection goes back only when its client can use it again: an
// HTTP/1.1 request that did not ask to close, nothing read from it beyond
// that request, a reply whose framing marks its end (a length, or chunks),
// written whole, and the listener still open. A reply whose header is
// written while the server drains says Connection: close, as net/http's
// do; one whose drain began after its header left has its connection
// closed at its end, as net/http closes an idle one.
//
// What differs from a connection net/http kept itself: it counts this one
// as new, so it waits for the next request for ReadHeaderTimeout (30 s)
// rather than IdleTimeout (2 min), and reports it to ConnState as
// StateNew after its StateHijacked. And net/http's Shutdown closes an idle
// connection at once but waits 5 s for a new one's first request: so the
// drain (Serve) closes the connections given back whose next request has
// not begun itself, as soon as the listener is closed (closeUnstarted).

// Listener returns ln for srv to serve, where srv was made by NewServer:
// once srv serves it, the connections srv's streams were taken on go back
// to srv when their replies end whole, for their clients' next requests.
// For any other server it returns ln as it is. Closing the returned
// listener closes ln. It adds to srv.ConnState (what is there is still
// called): set that before, not after.
//
// Serve it with srv.Serve, not ServeTLS: ServeTLS would start TLS again on
// a connection given back, already past its handshake (the command serves
// cleartext only, and only that is tested). It starts a goroutine that
// accepts from ln until the returned listener is closed: close it if srv
// never serves it (srv.Serve closes it when it returns). A server that
// turns keep-alives off (SetKeepAlivesEnabled) must not be served through
// it: net/http has no getter for that, and connections would still be
// given back (Shutdown's turning them off is seen: it closes the listener
// first).
func Listener(srv *http.Server, ln net.Listener) net.Listener {
	taken := takenStreamsOf(srv)
	if taken == nil {
		return ln
	}
	if prev := srv.ConnState; prev != nil {
		srv.ConnState = func(c net.Conn, st http.ConnState) { taken.connState(c, st); prev(c, st) }
	} else {
		srv.ConnState = taken.connState
	}
	l := &givingBack{Listener: ln, taken: taken, accepted: make(chan acceptedConn), back: make(chan net.Conn), done: make(chan struct{})}
	go l.acceptLoop()
	return l
}

// givingBack is a listener whose Accept returns the connections its
// listener accepts and those given back, whichever comes first.
type givingBack struct {
	net.Listener
	// taken: the server's, told of this listener at its first Accept:
	// a listener made but never served must not be given connections.
	taken  *takenStreams
	served sync.Once
	// accepted: what the listener's Accept returned, from acceptLoop;
	// back: connections given back. Both unbuffered: nothing waits in
	// them when the listener closes.
	accepted chan acceptedConn
	back     chan net.Conn
	done     chan struct{} // closed by Close
	once     sync.Once
	err      error // the listener's Close's
}

type acceptedConn struct {
	c   net.Conn
	err error
}

// acceptLoop accepts from the listener until it closes: a blocked Accept
// cannot otherwise be woken for a connection given back.
func (l *givingBack) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptedConn{c, err}:
		case <-l.done:
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (l *givingBack) Accept() (net.Conn, error) {
	l.served.Do(func() { l.taken.back.Store(l) })
	select {
	case c := <-l.back:
		if !l.open() {
			// Given back as the listener closed (select picks at
			// random among what is ready): the drain may have made its
			// pass over the unstarted connections already, so this one
			// is closed here rather than served.
			l.taken.started(c)
			_ = c.Close()
			return nil, net.ErrClosed
		}
		return c, nil
	case a := <-l.accepted:
		if a.c != nil && !l.open() {
			_ = a.c.Close()
			return nil, net.ErrClosed
		}
		return a.c, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *givingBack) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.err = l.Listener.Close()
	})
	return l.err
}

// open reports whether a connection given back now would be served.
func (l *givingBack) open() bool {
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

// giveBack hands c to the server's Accept; false, with c left to the
// caller, once the listener is closed (the server drains, or has stopped:
// net/http's Serve closes its listener when it returns, so this cannot
// wait for ever).
func (l *givingBack) giveBack(c net.Conn) bool {
	select {
	case l.back <- c:
		return true
	case <-l.done:
		return false
	}
}

// giveBack gives c back to the server through its listener, noting it as
// unstarted until net/http reports it anything but new; false, with c left
// to the caller, when the listener is closed.
func (t *takenStreams) giveBack(c net.Conn) bool {
	t.mu.Lock()
	if t.unstarted == nil {
		t.unstarted = make(map[net.Conn]struct{})
	}
	if _, ok := t.unstarted[c]; !ok {
		t.unstarted[c] = struct{}{}
		t.nUnstarted.Add(1)
	}
	t.mu.Unlock()
	if t.back.Load().giveBack(c) {
		return true
	}
	t.started(c)
	return false
}

// connState is the server's ConnState (Listener): a connection given back
// that net/http reports active (its next request began), hijacked or
// closed is no longer unstarted. Most calls find none given back, and
// return at once.
func (t *takenStreams) connState(c net.Conn, st http.ConnState) {
	if st == http.StateNew || t.nUnstarted.Load() == 0 {
		return
	}
	t.started(c)
}

func (t *takenStreams) started(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.unstarted[c]; ok {
		delete(t.unstarted, c)
		t.nUnstarted.Add(-1)
	}
}

// closeUnstarted waits for the listener to close (Shutdown closes it
// first), after which nothing more is given back, and closes the
// connections given back whose next request has not begun, as Shutdown
// closes idle ones. It returns at once if the server serves no Listener,
// and when ctx is done.
func (t *takenStreams) closeUnstarted(ctx context.Context) {
	l := t.back.Load()
	if l == nil {
		return
	}
	select {
	case <-l.done:
	case <-ctx.Done():
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.unstarted {
		_ = c.Close()
	}
}
