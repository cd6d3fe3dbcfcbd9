package proxy

import (
	"io"
	"net/http"
	"runtime/debug"
)

// A reply written on a connection taken from net/http (h1stream.go) goes
// on without its handler. The handler's goroutine is the deepest thing a
// stream keeps: net/http's connection loop, ReverseProxy and the proxy's
// own frames put about 5 KiB on it while it waits for the next event, so
// its stack stays at 8 KiB, and with it the request net/http read, its
// response writer and connection state stay reachable. Once the reply's
// header is on the wire, ReverseProxy is told the body has ended
// (streamBody.Read), the handler returns, and a goroutine that starts
// with nothing on its stack copies the rest (goOn): a stack of 4 KiB.
//
// Only a request that arrived while more HTTP/1.x requests were open than
// streams are kept (Config.KeptStreams) can go on alone: only then is its
// upstream side given a context of its own (requestInfo.detach), which
// costs a context and a registration more; a stream taken later keeps its
// handler, as before. Below that count nothing is taken, and nothing costs
// more.
//
// What a client sees does not change: the same bytes, the same framing,
// the trailers ReverseProxy would have copied, the same end (whole, or
// the connection closed when the upstream breaks or the client leaves).
// What the proxy sees: the request's context is no longer net/http's
// (detach), so the handler's return does not cancel it; the drain
// still waits for the stream and cuts it (takenStreams), and the
// request's share of MaxHeld is given back when the reply ends.

// mayGoOn reports whether the reply can go on without its handler: its
// connection is taken, its header written, and a body follows (and, the
// caller checks, its request was detached).
func (s *streamConn) mayGoOn() bool {
	return s != nil && s.pending == 0 && s.conn != nil && s.head && !s.passed && s.err == nil && s.framing != noBody
}

// goOn copies the rest of b's reply to s, then ends the stream and the
// request as the handler would have. It runs on a goroutine of its own
// (requestInfo.end), after the handler has returned: a panic here is not
// net/http's to recover, and would end the process, so goOn recovers one
// from the upstream's body (a Base transport's code) as net/http recovers a
// handler's: logged with its stack, the client's connection closed.
func (b *streamBody) goOn(s *streamConn) {
	// What only the handler used goes with it: net/http's response
	// writer and the request it read, and what they hold.
	s.hdr = s.Header()
	s.ResponseWriter, s.r = nil, nil
	whole := false
	// end runs even if what recovers a panic panics itself (a Logger's
	// handler): the connection is closed and the counts given back.
	defer func() { b.end(s, whole) }()
	defer func() {
		if v := recover(); v != nil {
			whole = false
			b.logPanic("copying a stream", v)
		}
	}()
	buf := b.info.buffers.Get()
	defer b.info.buffers.Put(buf)
	for {
		n, err := b.Read(buf)
		if n > 0 {
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			whole = true // and reading to the end filled in the trailers
			return
		}
		if err != nil {
			return
		}
	}
}

// end closes the upstream's body, and ends the request and the stream:
// whole, with the reply's trailers, or cut.
func (b *streamBody) end(s *streamConn, whole bool) {
	func() {
		defer func() {
			if v := recover(); v != nil {
				whole = false
				b.logPanic("closing a stream's upstream body", v)
			}
		}()
		_ = b.ReadCloser.Close()
	}()
	if whole {
		b.copyTrailers(s.hdr)
	}
	// The upstream side is over: it ends before the client reads the
	// reply's end, so nothing of it outlives what the client sees.
	b.info.rest = nil
	b.info.finish()
	s.finish(whole)
}

// logPanic logs a panic recovered while doing what, with its stack. A
// panic in the Logger's handler is dropped: nothing would recover it.
func (b *streamBody) logPanic(what string, v any) {
	defer func() { _ = recover() }()
	b.logger.ErrorContext(b.ctx, "llmretry proxy: panic "+what+"; the client's connection is closed",
		"panic", v, "stack", string(debug.Stack()))
}

// copyTrailers puts the response's trailers in the client's header map,
// from which finish writes them, as ReverseProxy does after a body: under
// their own names when they are the ones announced, else each prefixed
// with http.TrailerPrefix.
func (b *streamBody) copyTrailers(h http.Header) {
	t := b.resp.Trailer
	if len(t) == b.announced {
		for k, vs := range t {
			for _, v := range vs {
				h.Add(k, v)
			}
		}
		return
	}
	for k, vs := range t {
		for _, v := range vs {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}
