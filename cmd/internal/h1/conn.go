package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/llmretry/llmretry/cmd/internal/pollset"
)

// conn is one upstream connection. It is used by one request at a time; only
// abort (the request's context ending) and a body's Close reach it from
// another goroutine, and both only close it.
type conn struct {
	t      *Transport
	addr   string
	nc     net.Conn
	br     *bufio.Reader // reads through conn.Read, so the header bound applies
	idleAt time.Time     // when it was last put back for reuse

	// Per request.
	written  int64 // bytes written to nc
	read     int64 // bytes read from nc
	limit    int64 // bytes left for response headers; <0: no bound
	writeErr error // the connection's own write error, not the body's
	aborted  atomic.Bool

	// The NotifyReadable in force (its stop, and its f), ended when the
	// connection closes: a closed descriptor leaves the Set without an
	// event, and its waiter must not wait on.
	waitMu   sync.Mutex
	closed   bool
	waitStop func() bool
	waitF    func()
}

func newConn(t *Transport, addr string, nc net.Conn) *conn {
	c := &conn{t: t, addr: addr, nc: nc, limit: -1}
	c.br = bufio.NewReaderSize(c, t.readBufferSize())
	return c
}

// errHeaderLimit stops ReadResponse when the header bound is used up.
var errHeaderLimit = errors.New("response header limit reached")

// Read reads from the connection for br, within the header bound while one is
// set (net/http counts the same way).
func (c *conn) Read(p []byte) (int, error) {
	if c.limit == 0 {
		return 0, errHeaderLimit
	}
	if c.limit > 0 && int64(len(p)) > c.limit {
		p = p[:c.limit]
	}
	n, err := c.nc.Read(p)
	c.read += int64(n)
	if c.limit > 0 {
		c.limit -= int64(n)
	}
	return n, err
}

// Write writes the request for bufio, counting what reached the wire.
func (c *conn) Write(p []byte) (int, error) {
	n, err := c.nc.Write(p)
	c.written += int64(n)
	if err != nil {
		c.writeErr = err
	}
	return n, err
}

// ReadFrom lets a large request body go to the connection in 32 KiB writes
// (bufio.Writer hands over to it once its buffer is flushed), not one syscall
// for every 4 KiB of buffer.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	src := &source{r: r}
	buf := copyBuffers.Get().(*[32 << 10]byte)
	n, err := io.CopyBuffer(struct{ io.Writer }{c.nc}, src, buf[:])
	copyBuffers.Put(buf)
	c.written += n
	if err != nil && err != src.err {
		c.writeErr = err
	}
	return n, err
}

var copyBuffers = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// source tells the body's own failure from the connection's: io.Copy
// returns either.
type source struct {
	r   io.Reader
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// writers lends the buffer a request is written through, only for as long as
// it is written.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// roundTrip writes req and reads the response headers. On error the
// connection is closed.
func (c *conn) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	c.written, c.read, c.writeErr = 0, 0, nil
	stop := context.AfterFunc(ctx, c.abort)

	bw := writers.Get().(*bufio.Writer)
	bw.Reset(c)
	err := req.Write(bw) // closes the body
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	if err != nil && (c.writeErr == nil || c.aborted.Load()) {
		// The body failed, or the request was cancelled: no response is
		// coming.
		stop()
		c.close()
		return nil, c.explain(ctx, fmt.Errorf("writing the request: %w", err))
	}
	// A failed write may be an upstream that answered early (a 413 for a
	// body it will not read) and closed: its answer is worth reading.
	resp, rerr := c.readResponse(req)
	if rerr != nil {
		stop()
		c.close()
		if err != nil {
			return nil, c.explain(ctx, fmt.Errorf("writing the request: %w", err))
		}
		return nil, c.explain(ctx, rerr)
	}
	if resp.Body == http.NoBody {
		c.done(stop() && err == nil && !resp.Close && !req.Close)
		return resp, nil
	}
	c.t.open.Add(1)
	resp.Body = &body{c: c, rc: resp.Body, ctx: ctx, stop: stop, keep: err == nil && !resp.Close && !req.Close}
	return resp, nil
}

// readResponse reads past any 1xx responses to the final one, all within
// the header bound and, if one is set, the header timeout.
func (c *conn) readResponse(req *http.Request) (*http.Response, error) {
	c.limit = c.t.maxHeaderBytes()
	if d := c.t.ResponseHeaderTimeout; d > 0 {
		_ = c.nc.SetReadDeadline(time.Now().Add(d))
		defer c.nc.SetReadDeadline(time.Time{})
	}
	defer func() { c.limit = -1 }()
	for {
		resp, err := http.ReadResponse(c.br, req)
		switch {
		case err != nil && c.limit == 0:
			return nil, fmt.Errorf("upstream response headers exceeded %d bytes; aborted", c.t.maxHeaderBytes())
		case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !c.aborted.Load():
			return nil, &HeaderTimeoutError{After: c.t.ResponseHeaderTimeout}
		case err != nil && c.read == 0:
			return nil, fmt.Errorf("upstream closed the connection before a response: %w", err)
		case err != nil:
			return nil, fmt.Errorf("reading the upstream response: %w", err)
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("upstream switched protocols though no upgrade was asked for")
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			// Interim (100 Continue, 103 Early Hints): shown to a trace
			// that asks, as net/http does (ReverseProxy passes them on),
			// and then the bound starts again; else they share it.
			if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
					return nil, err
				}
				c.limit = c.t.maxHeaderBytes()
			}
			continue
		}
		return resp, nil
	}
}

// closedUnused reports whether err is the upstream closing the connection
// before any of the response arrived: what a connection closed while idle
// looks like.
func (c *conn) closedUnused(err error) bool {
	if c.read != 0 || c.aborted.Load() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// explain is err, or the context's error when the request was cancelled
// (the connection was closed under it, and the error says only that).
func (c *conn) explain(ctx context.Context, err error) error {
	if c.aborted.Load() && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// abort runs when the request's context ends: closing the connection
// unblocks whatever reads or writes it.
func (c *conn) abort() {
	c.aborted.Store(true)
	c.close()
}

// close closes the connection, waking a body's NotifyReadable waiter
// first (its read then fails at once).
func (c *conn) close() {
	c.waitMu.Lock()
	c.closed = true
	stop, f := c.waitStop, c.waitF
	c.waitStop, c.waitF = nil, nil
	c.waitMu.Unlock()
	if stop != nil && stop() {
		f()
	}
	_ = c.nc.Close()
}

// done ends a request on c: reusable says the reply was read whole and
// neither side asked to close. It goes back for reuse unless bytes nobody
// asked for are waiting in it.
func (c *conn) done(reusable bool) {
	if reusable && c.br.Buffered() == 0 {
		c.t.idle.put(c, c.t.maxIdle(), c.t.idleTimeout())
		return
	}
	c.close()
}

// HeaderTimeoutError is the upstream sending no response headers within
// ResponseHeaderTimeout of the request being written.
type HeaderTimeoutError struct{ After time.Duration }

func (e *HeaderTimeoutError) Error() string {
	return fmt.Sprintf("timeout awaiting upstream response headers: none within %v", e.After)
}

// Timeout reports true: retry policies treat it as a timeout.
func (e *HeaderTimeoutError) Timeout() bool { return true }

// Temporary reports true, as net/http's own header timeout does.
func (e *HeaderTimeoutError) Temporary() bool { return true }

// body is a response body read straight from its connection. Reading it to
// the end puts the connection back for reuse; closing it sooner closes the
// connection instead of reading the rest (a stream may never end).
type body struct {
	c    *conn
	rc   io.ReadCloser // ReadResponse's; its Close would read to the end
	ctx  context.Context
	stop func() bool
	keep bool
	done atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil {
		if err != io.EOF && b.c.aborted.Load() && b.ctx.Err() != nil {
			err = b.ctx.Err()
		}
		b.finish(err == io.EOF)
	}
	return n, err
}

// NotifyReadable calls f once the body has bytes to read (or its
// connection ended), from another goroutine, unless stop is called first
// (stop then reports true); at once when bytes are already buffered. ok is
// false when it cannot tell (not Linux, or a connection that is not a
// socket), or would rather not (no more bodies open than WatchAbove: a
// watch costs two system calls). It must not be called while a Read is under way. The library's
// hold waits on it for a stream's first event, where it would otherwise
// keep a goroutine blocked in a Read for each stream (llmretry's
// lateReader): during a burst of streams that wait for their first output,
// that goroutine's stack was the largest thing a stream held.
func (b *body) NotifyReadable(f func()) (stop func() bool, ok bool) {
	c := b.c
	if !c.t.watching() {
		return nil, false
	}
	if c.br.Buffered() > 0 {
		f()
		return func() bool { return false }, true
	}
	once := sync.OnceFunc(f)
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if c.closed {
		return nil, false // a read fails at once
	}
	st, ok := c.t.polls.Watch(c.nc, pollset.Readable, once)
	if !ok {
		return nil, false
	}
	c.waitStop, c.waitF = st, once
	return func() bool {
		// Under waitMu, so that close cannot close the descriptor between
		// (a new connection could reuse its number, and lose its watch).
		c.waitMu.Lock()
		defer c.waitMu.Unlock()
		c.waitStop, c.waitF = nil, nil
		return st()
	}, true
}

// Close may come from another goroutine while Read is blocked: it closes
// the connection, which ends that Read.
func (b *body) Close() error {
	b.finish(false)
	return nil
}

func (b *body) finish(eof bool) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	b.c.t.open.Add(-1)
	b.c.done(b.stop() && eof && b.keep)
}
