package proxy

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmretry/llmretry"
)

// Response headers the proxy adds: which request this was (the same id is
// on every log line about it), and how many attempts went upstream.
const (
	RequestIDHeader = "X-Llmretry-Request-Id"
	AttemptsHeader  = "X-Llmretry-Attempts"
)

// requestInfo is what the proxy knows of one request, in its context.
type requestInfo struct {
	id       string
	start    time.Time
	out      http.Header // the client's response headers, stamped directly
	attempts atomic.Int32
	broke    sync.Once // the mid-stream break is logged once
	buffers  copyBuffers
	origin   string // a listed web page's origin, whose page may read the answer
	// cancel ends the request's upstream side: for an HTTP/1.x client,
	// whose stream's connection may be taken from net/http (h1stream.go),
	// after which net/http no longer cancels it when the server closes.
	// unfollow, on a request that may be taken, stops the client's
	// request context from cancelling it (detach); false once it has.
	cancel   context.CancelFunc
	unfollow func() bool
	// sc: the writer of an HTTP/1.x client's reply; rest: set when that
	// reply, on a connection taken from net/http, goes on without its
	// handler (alone.go); held and reserved: the request body's share of
	// MaxHeld, given back when the request ends.
	sc       *streamConn
	rest     *streamBody
	held     *atomic.Int64
	reserved int64
}

// detach gives r a context of its own for the upstream side, cancelled by
// info.cancel, and by r's only until unfollow: net/http cancels r's
// context when the handler returns, and a reply on a taken connection may
// go on after that (alone.go). Its values are r's. Only a request that may
// be taken is detached (a context and a registration more).
func (info *requestInfo) detach(r *http.Request) *http.Request {
	follows := r.Context()
	ctx, cancel := context.WithCancel(context.WithoutCancel(follows))
	info.unfollow = context.AfterFunc(follows, cancel)
	prev := info.cancel
	info.cancel = func() { cancel(); prev() }
	return r.WithContext(ctx)
}

// end ends the request as its handler returns, unless its reply goes on
// alone: then that goroutine starts here, the handler's last act, and
// ends the request when the reply ends.
func (info *requestInfo) end() {
	if info.rest != nil {
		go info.rest.goOn(info.sc)
		return
	}
	info.finish()
}

// finish cancels the request's upstream side and gives back its body's
// share of MaxHeld.
func (info *requestInfo) finish() {
	if info.unfollow != nil {
		info.unfollow()
	}
	if info.cancel != nil {
		info.cancel()
	}
	if info.held != nil {
		info.held.Add(-info.reserved)
	}
}

type requestKey struct{}

// withRequest gives r a new id and an attempt count; out is the header of
// the response to the client. The id needs to be unique, not secret:
// math/rand/v2's generator costs no system call, and the id is one
// allocation.
func withRequest(r *http.Request, out http.Header) (*http.Request, *requestInfo) {
	var raw [8]byte
	var b [16]byte
	binary.LittleEndian.PutUint64(raw[:], rand.Uint64())
	hex.Encode(b[:], raw[:])
	info := &requestInfo{id: string(b[:]), start: time.Now(), out: out}
	ctx := context.WithValue(r.Context(), requestKey{}, info)
	if r.ProtoMajor == 1 {
		ctx, info.cancel = context.WithCancel(ctx)
	}
	return r.WithContext(ctx), info
}

func requestOf(ctx context.Context) *requestInfo {
	info, _ := ctx.Value(requestKey{}).(*requestInfo)
	return info
}

// stamp puts the request's id and attempt count on a response's headers.
// The upstream's answers are stamped in ModifyResponse, straight into the
// client's headers (unstamped drops the upstream's own values first), so
// that ReverseProxy does not copy and canonicalize two more headers.
func stamp(h http.Header, info *requestInfo) {
	if info == nil {
		return
	}
	// The names are canonical already: set without canonicalizing them
	// again, both values in one allocation.
	vals := []string{info.id, strconv.Itoa(int(info.attempts.Load()))}
	h[RequestIDHeader] = vals[0:1:1]
	h[AttemptsHeader] = vals[1:2:2]
	if info.origin != "" {
		corsHeaders(h, info.origin)
	}
}

// unstamped removes the upstream's own values of the stamped headers (an
// llmretry proxy upstream of this one sends them), which ReverseProxy would
// otherwise add to the client's: the names are canonical, so no lookup
// canonicalizes them again.
func unstamped(h http.Header) {
	delete(h, RequestIDHeader)
	delete(h, AttemptsHeader)
}

// requestIDHandler adds the request's id to every log line made with its
// context: llmretry's retries and give-ups, and the proxy's own.
type requestIDHandler struct{ slog.Handler }

func (h requestIDHandler) Handle(ctx context.Context, rec slog.Record) error {
	if info := requestOf(ctx); info != nil {
		rec.AddAttrs(slog.String("request_id", info.id))
	}
	return h.Handler.Handle(ctx, rec)
}

func (h requestIDHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(as)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}

// streamBody reports, once and with the request's id, a response body that
// broke mid-reply (the client got what came before; nothing is retried),
// and times a stream's first bytes.
type streamBody struct {
	io.ReadCloser
	ctx     context.Context
	logger  *slog.Logger
	info    *requestInfo
	stream  bool // a text/event-stream: its first bytes are timed
	metrics *Metrics
	// trailer, with continuation on, is the response's trailer, in which
	// the final attempts and target are set at the stream's end; target is
	// the one the headers named.
	trailer http.Header
	target  string
	resp    *http.Response // whose Trailer the reply ends with
	// announced: how many trailers the response announced, as its
	// header was written (a reply that goes on alone copies them as
	// ReverseProxy would have).
	announced int
}

func (b *streamBody) Read(p []byte) (int, error) {
	if b.info.rest == nil && b.info.unfollow != nil && b.info.sc.mayGoOn() && !trailerValues(b.resp.Trailer) && b.info.unfollow() {
		// ReverseProxy is told the body has ended, and the handler
		// returns; the rest is copied on a goroutine of its own
		// (alone.go), started as the handler's last act (info.end).
		b.info.rest, b.announced = b, len(b.resp.Trailer)
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if b.stream && n > 0 {
		b.stream = false
		b.metrics.firstEvent(b.info.start)
	}
	if err != nil && b.trailer != nil {
		// The announced trailers are sent from the client's header map after
		// the body (ReverseProxy adds the response's trailer values to it:
		// theirs are taken here and left empty, so none is sent twice).
		target := cmp.Or(b.trailer.Get(llmretry.TargetHeader), b.target)
		b.trailer[llmretry.TargetHeader], b.trailer[AttemptsHeader] = nil, nil
		b.info.out.Set(AttemptsHeader, strconv.Itoa(int(b.info.attempts.Load())))
		b.info.out.Set(llmretry.TargetHeader, target)
	}
	if err != nil && err != io.EOF {
		b.info.broke.Do(func() {
			if b.ctx.Err() != nil { // the client went away: not the upstream's doing
				b.logger.InfoContext(b.ctx, "llmretry proxy: client left mid-reply", "error", err.Error())
				return
			}
			if b.trailer != nil { // continuation on: the line before says why it was not continued
				b.logger.WarnContext(b.ctx, "llmretry proxy: upstream reply broke mid-stream and was not continued; the client got what came before", "error", err.Error())
				return
			}
			b.logger.WarnContext(b.ctx, "llmretry proxy: upstream reply broke mid-stream; the client got what came before, nothing is resent", "error", err.Error())
		})
	}
	return n, err
}

// Close closes the body, unless its reply goes on alone: ReverseProxy's
// close, which follows the end it was told of, is not the end then.
func (b *streamBody) Close() error {
	if b.info.rest == b {
		return nil
	}
	return b.ReadCloser.Close()
}

// announceTrailers names, before the headers are sent, the trailers a
// continued stream ends with (ReverseProxy announces the response's
// Trailer keys and sends their values after the body).
func announceTrailers(resp *http.Response) http.Header {
	if resp.Trailer == nil {
		resp.Trailer = make(http.Header)
	}
	for _, k := range []string{AttemptsHeader, llmretry.TargetHeader} {
		if _, ok := resp.Trailer[k]; !ok {
			resp.Trailer[k] = nil
		}
	}
	return resp.Trailer
}

// copyErrorFilter drops ReverseProxy's own unlabelled line about a broken
// body copy, which streamBody has already logged with the request's id, and
// passes every other line on.
type copyErrorFilter struct{ w io.Writer }

var copyErrorLine = []byte("ReverseProxy read error during body copy")

func (f copyErrorFilter) Write(p []byte) (int, error) {
	if bytes.Contains(p, copyErrorLine) {
		return len(p), nil
	}
	return f.w.Write(p)
}

// trailerValues reports whether any trailer has its value already: the
// body was read to its end under ReverseProxy (the first-event hold reads
// a short reply whole), which then copies them itself, so a reply that
// went on alone would send them twice.
func trailerValues(t http.Header) bool {
	for _, vs := range t {
		if len(vs) > 0 {
			return true
		}
	}
	return false
}
