package proxy

import (
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
// StateNew after its StateHijacked.

// Listener returns ln for srv to serve, where srv was made by NewServer:
// once srv serves it, the connections srv's streams were taken on go back
// to srv when their replies end whole, for their clients' next requests.
// For any other server it returns ln as it is. Closing the returned
// listener closes ln.
func Listener(srv *http.Server, ln net.Listener) net.Listener {
	taken := takenStreamsOf(srv)
	if taken == nil {
		return ln
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
		return c, nil
	case a := <-l.accepted:
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
