package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry/internal/wire"
)

// A stream answered to an HTTP/1.1 client is written on the connection
// itself. net/http keeps, for every HTTP/1.1 connection it serves, a 4 KiB
// read buffer, a 4 KiB write buffer, a 2 KiB chunking buffer and a
// goroutine that reads ahead to notice the client leaving: about 12 KiB an
// open stream, which is one connection for an HTTP/1.1 client (Python's
// httpx, Node's fetch). A stream needs none of them: its request body is
// already held, and its events are written as they come. So once a 2xx
// text/event-stream reply's headers are ready, the connection is taken
// from net/http (Hijack) and the reply is written on it in chunks, each
// event with one write, by a goroutine of its own once the header is out:
// the handler returns (alone.go). At the end the connection goes back to net/http
// for the client's next request, through the listener the server serves
// (Listener, takenagain.go), or, where it cannot, is closed (the reply
// says Connection: close).
//
// Only streams beyond the first few open at once are taken
// (Config.KeptStreams, 128 by default): a client that sends its streams
// one after another keeps its connection as long as few are open, and
// memory per stream counts where many are.
//
// A request that asks for a stream (its body's "stream": true, or a
// Gemini streamGenerateContent path), while more HTTP/1.x requests are
// open than streams are kept, is taken as soon as its body is held,
// before it goes upstream (takeEarly): its buffers are then garbage
// while it waits for its first output, which is when a burst of streams
// holds the most memory at once. Whatever then answers it, a stream, an
// upstream error or the proxy's own, is written here too (writeHead), in
// the framing net/http would have chosen. While nothing is written, the
// connection is watched, as net/http's read-ahead watches it, so that a
// client that leaves still cancels its request at once (watch, hangup.go).
//
// What changes for the client: once a reply's head is written, a client
// that leaves is noticed at the next event written (a write fails), not at
// once; the upstream request then ends. The trailers a reply announced are
// written after the last chunk.
//
// net/http's Shutdown forgets a connection once it is taken, so the
// streams on taken connections are counted apart (takenStreams), and the
// drain (Serve) waits for them too, and cuts them when its grace passes.
// Only a server made by NewServer counts them, so only there are
// connections taken.

// streamConn is the ResponseWriter a request to an HTTP/1.1 client is
// served through: net/http's own, until a stream's headers are written.
type streamConn struct {
	http.ResponseWriter
	r     *http.Request
	taken *takenStreams
	// cancel ends the upstream request: the drain's cut cannot wait for
	// the next event's write to fail.
	cancel context.CancelFunc
	conn   net.Conn // the taken connection; nil until then
	err    error    // the first write error on it
	// http10: the client speaks HTTP/1.0: no chunks, the stream ends when
	// the connection closes.
	http10 bool
	// kept: how many open streams keep their connection before one is
	// taken; counted: this one is in taken.streams.
	kept    int64
	counted bool
	// passed: the header went to net/http's writer (not a stream, or the
	// Hijack failed), which writes the rest as usual.
	passed bool
	// early: taken before any reply (takeEarly): every reply is written
	// here. head: the reply's header is written; pending, a status whose
	// header waits for the first bytes (to sniff their type, as net/http
	// does).
	early   bool
	head    bool
	pending int
	// readAhead: bytes beyond this request were read from the connection
	// (a request pipelined behind it: by net/http before it was taken, or
	// by a watch for the client leaving), which go with the connection;
	// again: the header said the connection stays open, for it to go back
	// to net/http at the end (takenagain.go).
	readAhead bool
	again     bool
	// How the body is framed once the head is written (remain: what is
	// left of a length).
	framing framing
	remain  int64
	// unwatchHangup ends the watch for the client leaving, kept until
	// the head is written (watch, unwatch); nil when none.
	unwatchHangup func() (dropped bool)
	// size and vec frame one chunk, written with one writev: no
	// allocation, and no copy of the event.
	size [20]byte
	vec  [3][]byte
	// hdr: the reply's header map, kept when the reply goes on without
	// its handler and net/http's writer is let go (alone.go).
	hdr http.Header
}

// Header is net/http's writer's, or, once the reply goes on alone, the
// same map kept.
func (s *streamConn) Header() http.Header {
	if s.hdr != nil {
		return s.hdr
	}
	return s.ResponseWriter.Header()
}

var crlf = []byte("\r\n")

// framing is how a reply's body is delimited on a taken connection.
type framing int

const (
	untilClose framing = iota // HTTP/1.0, or no length: the connection's close ends it
	noBody                    // 1xx, 204, 304
	byLength                  // Content-Length
	inChunks                  // HTTP/1.1 without a length
)

// takeStreams serves w's streams on the connection itself when the client
// speaks HTTP/1.x; any other writer is returned as it is.
func takeStreams(w http.ResponseWriter, r *http.Request, info *requestInfo, kept int64) http.ResponseWriter {
	if r.ProtoMajor != 1 || r.Method == http.MethodHead || info == nil || info.cancel == nil {
		return w
	}
	taken, _ := r.Context().Value(takenKey{}).(*takenStreams)
	if _, ok := w.(http.Hijacker); !ok || taken == nil {
		return w
	}
	taken.requests.Add(1)
	return &streamConn{ResponseWriter: w, r: r, taken: taken, cancel: info.cancel, http10: r.ProtoMinor == 0, kept: kept}
}

// mayTakeEarly reports whether more requests are open than streams are
// kept: only then is a request's body read for whether it asks for a
// stream (a few thousand instructions a request).
func (s *streamConn) mayTakeEarly() bool { return s.taken.requests.Load() > s.kept }

// takeEarly takes the connection of a request that asks for a stream,
// before it goes upstream; the caller asks only while more HTTP/1.x
// requests are open than streams are kept (mayTakeEarly). It is counted as
// an open stream from here, taken or not.
func (s *streamConn) takeEarly() {
	s.counted = true
	s.taken.streams.Add(1)
	if s.hijack() {
		s.early = true
		s.watch()
	}
}

// hijack takes the connection from net/http; false if it cannot.
func (s *streamConn) hijack() bool {
	// Counted before it is taken: from the moment it is, Shutdown no
	// longer waits for it.
	s.taken.enter(s)
	conn, brw, err := s.ResponseWriter.(http.Hijacker).Hijack()
	if err != nil {
		s.taken.leave(s)
		return false
	}
	// The 4 KiB read buffer and 4 KiB write buffer net/http gave this
	// connection are the taker's after Hijack, and net/http does not touch
	// them again; but they stay reachable from its connection for as long
	// as this handler runs, which may be the whole stream (a reply whose
	// header waits for its first bytes). Emptied, they go with the next
	// GC. (A client that sent another request behind this one, on the
	// same connection, and whose bytes net/http had read, loses it with the
	// connection's close, which the reply announces: browsers and SDKs do
	// not pipeline.)
	s.readAhead = brw.Reader.Buffered() > 0
	*brw.Reader, *brw.Writer = bufio.Reader{}, bufio.Writer{}
	s.conn = conn
	s.taken.hold(conn)
	return true
}

// watch has the taken connection watched until the head is written, as
// net/http's read-ahead watches it: the client leaving cancels the request
// (its waits, its attempts upstream) at once (hangup.go).
func (s *streamConn) watch() {
	s.unwatchHangup = s.taken.hangups.watch(s.conn, s.cancel)
}

// unwatch ends the watch before the head is written: a client that
// leaves after that is seen when a write fails.
func (s *streamConn) unwatch() {
	if s.unwatchHangup != nil {
		if s.unwatchHangup() {
			s.readAhead = true // the client's bytes are gone: it cannot be served again
		}
		s.unwatchHangup = nil
	}
}

func (s *streamConn) WriteHeader(code int) {
	if s.early {
		s.writeEarly(code)
		return
	}
	if s.conn != nil {
		return
	}
	if s.passed { // a second call: net/http's to log as superfluous
		s.pass(code)
		return
	}
	h := s.Header()
	ct := ""
	if v := h["Content-Type"]; len(v) > 0 {
		ct = v[0]
	}
	if code < 200 || code > 299 || code == http.StatusNoContent || !strings.HasPrefix(ct, "text/event-stream") || h.Get("Content-Length") != "" {
		s.pass(code)
		return
	}
	// A stream: counted while it is open (finish), taken only beyond
	// the kept ones. One counted by takeEarly and kept stays kept.
	if s.counted {
		s.pass(code)
		return
	}
	s.counted = true
	if s.taken.streams.Add(1) <= s.kept || !s.hijack() {
		s.pass(code)
		return
	}
	s.writeHead(code)
}

// writeEarly writes the header of any reply on a connection taken early:
// an interim (1xx) one at once, a final one when its framing is known.
func (s *streamConn) writeEarly(code int) {
	if s.head || s.pending != 0 {
		return
	}
	if code >= 100 && code < 200 {
		if code != http.StatusSwitchingProtocols && !s.http10 && s.err == nil {
			_, s.err = s.conn.Write(s.status(code, s.Header(), nil, noBodyHeaders))
		}
		return
	}
	s.unwatch()
	h := s.Header()
	if _, typed := h["Content-Type"]; !typed && bodyAllowed(code) && h.Get("Content-Encoding") == "" {
		s.pending = code // sniffed from the first bytes written, as net/http does
		return
	}
	s.writeHead(code)
}

// noBodyHeaders are left out of a header that has no body after it, as
// net/http leaves them out.
var noBodyHeaders = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// writeHead writes a final reply's header on the taken connection and
// chooses its body's framing: none where the status allows none, the
// length a Content-Length gives, else chunks (HTTP/1.1) or the
// connection's close (HTTP/1.0). Whether the connection stays open after
// the reply is chosen here too (keepOpen).
func (s *streamConn) writeHead(code int) {
	s.head = true
	h := s.Header()
	h.Del("Transfer-Encoding")
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	switch n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); {
	case !bodyAllowed(code):
		s.framing = noBody
		h.Del("Content-Length")
		if code == http.StatusNotModified {
			h.Del("Content-Type")
		}
	case err == nil && n >= 0:
		s.framing, s.remain = byLength, n
	case s.http10:
		h.Del("Content-Length")
	default:
		h.Del("Content-Length")
		s.framing = inChunks
		h.Set("Transfer-Encoding", "chunked")
	}
	s.again = s.keepOpen()
	if !s.again {
		h.Set("Connection", "close")
	}
	if s.err == nil {
		_, s.err = s.conn.Write(s.status(code, h, make([]byte, 0, 512), nil))
	}
}

// keepOpen reports whether the connection can serve the client's next
// request once this reply has ended (takenagain.go): the client speaks
// HTTP/1.1 and did not ask to close, sent nothing beyond this request, the
// reply's end is marked by its framing and it asks for no close itself,
// and the server's listener takes connections back and is open (not
// draining).
func (s *streamConn) keepOpen() bool {
	if s.http10 || s.r.Close || s.readAhead || s.framing == untilClose {
		return false
	}
	for _, v := range s.Header()["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "close") {
				return false
			}
		}
	}
	l := s.taken.back.Load()
	return l != nil && l.open()
}

// status renders a status line and header.
func (s *streamConn) status(code int, h http.Header, head []byte, leaveOut map[string]bool) []byte {
	head = append(head, "HTTP/1."...)
	head = strconv.AppendInt(head, int64(s.r.ProtoMinor), 10)
	head = append(head, ' ')
	head = strconv.AppendInt(head, int64(code), 10)
	head = append(head, ' ')
	head = append(head, http.StatusText(code)...)
	head = append(head, "\r\n"...)
	var b strings.Builder
	_ = h.WriteSubset(&b, leaveOut)
	head = append(head, b.String()...)
	head = append(head, "\r\n"...)
	return head
}

// pass leaves the reply to net/http's writer, which writes the header and
// all that follows as usual.
func (s *streamConn) pass(code int) {
	s.passed = true
	s.ResponseWriter.WriteHeader(code)
}

func (s *streamConn) Write(p []byte) (int, error) {
	if s.passed {
		return s.ResponseWriter.Write(p)
	}
	if s.early && !s.head {
		if s.pending == 0 {
			s.writeEarly(http.StatusOK)
		}
		if s.pending != 0 {
			if len(p) == 0 {
				return 0, nil
			}
			s.Header().Set("Content-Type", http.DetectContentType(p))
			s.writeHead(s.pending)
		}
	}
	if s.conn == nil {
		// A first write with no header written: the header is implied,
		// as net/http implies it (a write after WriteHeader must not
		// imply a second one, which net/http logs as superfluous).
		if s.Header().Get("Content-Type") == "" && len(p) > 0 {
			s.passed = true
			return s.ResponseWriter.Write(p) // net/http sniffs the type
		}
		s.WriteHeader(http.StatusOK)
		if s.conn == nil {
			return s.ResponseWriter.Write(p)
		}
	}
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	switch s.framing {
	case noBody:
		return 0, http.ErrBodyNotAllowed
	case byLength:
		short := int64(len(p)) > s.remain
		if short {
			p = p[:s.remain]
		}
		n, err := s.conn.Write(p)
		s.remain -= int64(n)
		if err != nil {
			s.err = err
			return n, err
		}
		if short {
			return n, http.ErrContentLength
		}
		return n, nil
	case untilClose:
		n, err := s.conn.Write(p)
		s.err = err
		return n, err
	}
	n := len(strconv.AppendInt(s.size[:0], int64(len(p)), 16))
	n += copy(s.size[n:], crlf)
	s.vec = [3][]byte{s.size[:n], p, crlf}
	frame := net.Buffers(s.vec[:])
	_, err := frame.WriteTo(s.conn)
	s.vec = [3][]byte{} // no hold on the event
	if err != nil {
		s.err = err
		return 0, err
	}
	return len(p), nil
}

// Flush: a taken connection is written unbuffered; a head that waits to
// sniff its type goes without one, as net/http's does.
func (s *streamConn) Flush() {
	if s.early && !s.head && s.pending != 0 {
		s.writeHead(s.pending)
	}
	if s.conn == nil {
		if f, ok := s.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// Unwrap lets http.ResponseController reach net/http's writer (for a
// WebSocket's Hijack, a deadline) while the connection is net/http's.
func (s *streamConn) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// finish ends a taken stream: whole (the last chunk and the trailers the
// reply announced; then the connection goes back to net/http where its
// header said it stays open), or cut (the handler panicked: the client
// sees the connection close mid-stream, as net/http would show it).
func (s *streamConn) finish(whole bool) {
	s.taken.requests.Add(-1)
	if s.counted {
		s.taken.streams.Add(-1)
	}
	if s.conn == nil {
		return
	}
	if s.early && !s.head {
		s.unwatch()
		// The handler wrote no body (or nothing at all): an empty reply,
		// as net/http gives one; a cut one gets none, the connection's
		// close says it failed.
		if whole {
			if s.pending == 0 {
				s.pending = http.StatusOK
			}
			if bodyAllowed(s.pending) {
				s.Header().Set("Content-Length", "0")
			}
			s.writeHead(s.pending)
		}
	}
	if whole && s.err == nil && s.framing == inChunks {
		end := []byte("0\r\n")
		h := s.Header()
		for _, announced := range h.Values("Trailer") {
			for k := range strings.SplitSeq(announced, ",") {
				k = http.CanonicalHeaderKey(strings.TrimSpace(k))
				for _, v := range h[k] {
					end = append(end, k...)
					end = append(end, ": "...)
					end = append(end, v...)
					end = append(end, "\r\n"...)
				}
			}
		}
		for k, vs := range h {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vs {
					end = append(end, name...)
					end = append(end, ": "...)
					end = append(end, v...)
					end = append(end, "\r\n"...)
				}
			}
		}
		end = append(end, "\r\n"...)
		_, s.err = s.conn.Write(end)
	}
	s.taken.leave(s)
	conn, again := s.conn, whole && s.endedWhole()
	// Whatever this handler still writes must not reach the connection's
	// next request.
	s.err = net.ErrClosed
	// net/http sets the deadlines it wants on a connection it serves, but
	// clears none it did not set: none this stream set may outlive it.
	if again && conn.SetDeadline(time.Time{}) == nil && s.taken.giveBack(conn) {
		return
	}
	_ = conn.Close()
}

// endedWhole reports whether the reply on the taken connection ended as
// its header said it would, with the connection to stay open: then the
// client's next request can follow on it.
func (s *streamConn) endedWhole() bool {
	return s.again && s.err == nil && (s.framing != byLength || s.remain == 0)
}

// takenStreams counts the streams being written on taken connections.
type takenStreams struct {
	// streams: the HTTP/1.x streams open now, taken or kept, counted from
	// their bodies when they asked for one; requests: every HTTP/1.x
	// request open now.
	streams, requests atomic.Int64
	// hangups watches the connections taken early for their clients
	// leaving, until their heads are written.
	hangups hangups
	mu      sync.Mutex
	open    map[*streamConn]struct{}
	conns   map[net.Conn]struct{}
	cut     bool          // the drain's grace passed: a connection taken now is closed at once
	idle    chan struct{} // closed when the last stream ends, while a drain waits

	// back: the listener taken connections go back through
	// (takenagain.go); nil when the server serves another. unstarted: the
	// connections given back whose next request net/http has not begun
	// (under mu; nUnstarted counts them, for connState's fast path).
	back       atomic.Pointer[givingBack]
	unstarted  map[net.Conn]struct{}
	nUnstarted atomic.Int64
}

// takenKey is the request context key under which NewServer's server
// passes its takenStreams to the handlers.
type takenKey struct{}

func (t *takenStreams) enter(s *streamConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open, t.conns = make(map[*streamConn]struct{}), make(map[net.Conn]struct{})
	}
	t.open[s] = struct{}{}
}

// hold notes the connection s was given, to close if the drain cuts.
func (t *takenStreams) hold(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cut {
		_ = c.Close()
		return
	}
	t.conns[c] = struct{}{}
}

func (t *takenStreams) leave(s *streamConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.open, s)
	if s.conn != nil {
		delete(t.conns, s.conn)
	}
	if len(t.open) == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
}

// wait returns once no stream is open, or with ctx's error.
func (t *takenStreams) wait(ctx context.Context) error {
	t.mu.Lock()
	if len(t.open) == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	idle := t.idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeAll cuts every open stream: their handlers then end at their next
// write. A connection still watched for its client leaving (hangups) is
// closed under its watch, whose removal then names a descriptor number
// that could be reused; harmless here, as the drain accepts no new
// connection to reuse it.
func (t *takenStreams) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cut = true
	for c := range t.conns {
		_ = c.Close()
	}
	for s := range t.open {
		s.cancel()
	}
}

// takenStreamsOf returns the takenStreams of a server made by NewServer,
// or nil.
func takenStreamsOf(srv *http.Server) *takenStreams {
	if srv.BaseContext == nil {
		return nil
	}
	t, _ := srv.BaseContext(nil).Value(takenKey{}).(*takenStreams)
	return t
}

// asksForStream reports whether a request asks for an event stream: a
// Gemini streamGenerateContent path, or a JSON body whose top-level
// "stream" is true (OpenAI's and Anthropic's APIs, and those like them).
// It only decides when a connection is taken; whatever the reply turns
// out to be is written either way.
func asksForStream(r *http.Request, body []byte) bool {
	if strings.Contains(r.URL.EscapedPath(), ":streamGenerateContent") {
		return true
	}
	return len(body) > 0 && wire.AsksForStream(body)
}
