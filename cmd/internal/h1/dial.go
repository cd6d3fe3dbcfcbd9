package h1

import (
	"context"
	"net"
	"time"
)

// dialTimeout bounds a dial, as net/http's default dialer does.
const dialTimeout = 30 * time.Second

// dial opens a connection to addr for a request with context ctx.
//
// The dial runs on a goroutine of its own: it goes deep (the resolver,
// the poller), and on the request's goroutine it would grow that stack
// for as long as the stream it opens lasts (measured: 8 KiB more per open
// stream).
//
// Its context keeps ctx's values and a deadline (ctx's, or dialTimeout
// from now, whichever is first) but no Done channel: net's connect then
// registers nothing on it. That registration (context.AfterFunc, whose
// first on a context makes it a map of children) is what took the dial's
// goroutine from a 4 KiB stack to 8 KiB, for each of a burst's dials at
// once. The request still leaves at once when ctx ends; the dial goes on
// to its deadline at most, and what it opens then is closed. (net/http's
// Transport lets a dial go on after its request is cancelled too, and
// keeps what it opens for the next request.) A context that can be
// cancelled would not do, even one of our own that keeps connect's
// registration in a list: connect's stop then cancels a context of its
// own, and that, at the same depth, grows the stack all the same
// (measured, seventeenth session).
func (t *Transport) dial(ctx context.Context, addr string) (net.Conn, error) {
	dial := t.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: dialTimeout}).DialContext
	}
	type dialed struct {
		nc  net.Conn
		err error
	}
	done := make(chan dialed, 1)
	dctx := dialContext(ctx)
	go func() {
		nc, err := dial(dctx, "tcp", addr)
		done <- dialed{nc, err}
	}()
	select {
	case d := <-done:
		return d.nc, d.err
	case <-ctx.Done():
		go func() {
			if d := <-done; d.nc != nil {
				_ = d.nc.Close()
			}
		}()
		return nil, context.Cause(ctx)
	}
}

// dialContext is ctx's values with a deadline and no Done channel
// (deadlineOnly).
func dialContext(ctx context.Context) context.Context {
	deadline := time.Now().Add(dialTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	return deadlineOnly{context.WithoutCancel(ctx), deadline}
}

// deadlineOnly is a context that cannot be cancelled but has a deadline,
// which a dial keeps by the socket's own timer (a write deadline on the
// connecting socket), not by a registration on the context. Err stays nil
// past the deadline: a dial sees the timeout from the socket.
type deadlineOnly struct {
	context.Context
	deadline time.Time
}

func (c deadlineOnly) Deadline() (time.Time, bool) { return c.deadline, true }
