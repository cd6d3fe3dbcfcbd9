package llmretry

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// errNilRequest and errNilURL are the causes of ReasonInvalidRequest for
// requests that cannot be sent at all.
var (
	errNilRequest = errors.New("nil *http.Request")
	errNilURL     = errors.New("request has a nil URL")
)

// HeaderError is the cause of ReasonInvalidRequest for a header that
// cannot be sent. It names the header, never its value.
type HeaderError struct {
	Name string
	// Index is the position of the offending byte in the value, and Byte
	// the byte itself.
	Index int
	Byte  byte
	// InName is true when the name itself is malformed.
	InName bool
}

func (e *HeaderError) Error() string {
	if e.InName {
		return fmt.Sprintf("header name %q has an invalid character 0x%02x; nothing was sent", e.Name, e.Byte)
	}
	hint := ""
	if e.Byte == '\n' || e.Byte == '\r' {
		hint = "; a key or token pasted with a trailing newline is the usual cause"
	}
	return fmt.Sprintf("header %q has a control character 0x%02x at byte %d of its value%s; nothing was sent",
		e.Name, e.Byte, e.Index, hint)
}

// validateRequest catches what would make the request unsendable, before
// anything is sent.
func validateRequest(req *http.Request) error {
	if req == nil {
		return errNilRequest
	}
	if req.URL == nil {
		return errNilURL
	}
	for name, values := range req.Header {
		for i := 0; i < len(name); i++ {
			if !tokenByte[name[i]] {
				return &HeaderError{Name: name, Byte: name[i], InName: true, Index: i}
			}
		}
		for _, v := range values {
			if i := controlIndex(v); i >= 0 {
				return &HeaderError{Name: name, Index: i, Byte: v[i]}
			}
		}
	}
	return nil
}

// controlIndex is the index of the first byte of v that no header value may
// hold, or -1. It looks at eight bytes at a time (every value of every
// request passes here) and at single bytes only from a word that may hold
// one: a tab, which is allowed, sends it there too.
func controlIndex(v string) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(v); i += 8 {
		x := uint64(v[i]) | uint64(v[i+1])<<8 | uint64(v[i+2])<<16 | uint64(v[i+3])<<24 |
			uint64(v[i+4])<<32 | uint64(v[i+5])<<40 | uint64(v[i+6])<<48 | uint64(v[i+7])<<56
		below := (x - 0x20*ones) &^ x & highs // some byte < 0x20
		y := x ^ 0x7f*ones
		del := (y - ones) &^ y & highs // some byte == 0x7f
		if below|del != 0 {
			break
		}
	}
	for ; i < len(v); i++ {
		if controlByte[v[i]] {
			return i
		}
	}
	return -1
}

// tokenByte marks the bytes RFC 7230 allows in a header name (tchar), and
// controlByte those no header value may hold (controls but tab, and DEL):
// tables, as every byte of every header is checked on every request.
var tokenByte, controlByte = func() (tok, ctl [256]bool) {
	for c := 0; c < 256; c++ {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			tok[c] = true
		case strings.IndexByte("!#$%&'*+-.^_`|~", byte(c)) >= 0:
			tok[c] = true
		}
		ctl[c] = c < ' ' && c != '\t' || c == 0x7f
	}
	return tok, ctl
}()

// replayable reports whether the request can be sent more than once: it
// has no body, or a GetBody to make a fresh copy of it.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// attemptRequest returns the request to send as attempt number attempt
// (1-based), and the tracker of its body when that body is one whose reads
// can fail. The caller's request is never modified: when a header must be
// set, a body made or tracked, or (with failover) the request aimed at a
// target, a shallow copy is sent instead.
func (t *Transport) attemptRequest(j *journey, attempt int, idemKey string) (*http.Request, *trackedBody, error) {
	req := j.req
	needHeaders := t.cfg.attemptHeader != "" || idemKey != ""
	body := req.Body
	if attempt > 1 && body != nil && body != http.NoBody {
		var err error
		if body, err = req.GetBody(); err != nil {
			return nil, nil, fmt.Errorf("GetBody for attempt %d: %w", attempt, err)
		}
	}
	var r *http.Request
	if j.rt.targets[j.at.target].base != nil { // a target of the route's own, not the request's URL
		r = new(http.Request)
		*r = *req
		var err error
		if body, err = t.aim(r, body, j); err != nil {
			return nil, nil, err
		}
	}
	var tracked *trackedBody
	if body != nil && body != http.NoBody && !inMemoryBody(body) {
		tracked = &trackedBody{rc: body}
		body = tracked
	}
	if r == nil {
		if body == req.Body && !needHeaders {
			return req, nil, nil
		}
		r = new(http.Request)
		*r = *req
		if needHeaders {
			r.Header = req.Header.Clone()
			if r.Header == nil {
				r.Header = make(http.Header)
			}
		}
	}
	r.Body = body
	if t.cfg.attemptHeader != "" {
		r.Header.Set(t.cfg.attemptHeader, strconv.Itoa(attempt))
	}
	if idemKey != "" {
		r.Header.Set(t.cfg.idempotencyHeader, idemKey)
	}
	return r, tracked, nil
}

// The types io.NopCloser returns, for a reader with WriteTo and for one
// without. They are unexported; net/http recognises them the same way.
var (
	nopCloserType         = reflect.TypeOf(io.NopCloser(struct{ io.Reader }{}))
	nopCloserWriterToType = reflect.TypeOf(io.NopCloser(strings.NewReader("")))
)

// inMemoryBody reports a body whose reads cannot fail: a byte or string
// reader under io.NopCloser, as http.NewRequest makes them. Such a body is
// sent as it is, which keeps the success path free of allocations and lets
// net/http send the headers and a small body in one write.
func inMemoryBody(body io.ReadCloser) bool {
	switch reflect.TypeOf(body) {
	case nopCloserType, nopCloserWriterToType:
		switch reflect.ValueOf(body).Field(0).Interface().(type) {
		case *bytes.Reader, *bytes.Buffer, *strings.Reader:
			return true
		}
	}
	return false
}

// trackedBody remembers an error from the caller's own body. net/http
// reports a failed body read as it reports a dropped connection (often a
// "readfrom" *net.OpError around the reader's error), so without this a
// caller whose upload broke would see it retried, and the upstream would
// get truncated requests.
type trackedBody struct {
	rc  io.ReadCloser
	mu  sync.Mutex // net/http reads the body on a goroutine of its own
	err error
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		b.mu.Lock()
		b.err = err
		b.mu.Unlock()
	}
	return n, err
}

func (b *trackedBody) Close() error { return b.rc.Close() }

// readErr returns the error the caller's body gave, if any.
func (b *trackedBody) readErr() error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// errRequestBody is the cause of ReasonNotRetryable when the caller's
// request body failed while being sent.
var errRequestBody = errors.New("reading the request body failed")

// idempotencyKey returns the key for one logical request: the caller's own
// if the request carries one, else a new random one.
func (t *Transport) idempotencyKey(req *http.Request) string {
	if t.cfg.idempotencyHeader == "" {
		return ""
	}
	if v := req.Header.Get(t.cfg.idempotencyHeader); v != "" {
		return v
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return "llmretry-" + hex.EncodeToString(b[:])
}
