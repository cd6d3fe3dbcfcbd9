package llmretry

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
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
			if !validHeaderNameByte(name[i]) {
				return &HeaderError{Name: name, Byte: name[i], InName: true, Index: i}
			}
		}
		for _, v := range values {
			for i := 0; i < len(v); i++ {
				if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
					return &HeaderError{Name: name, Index: i, Byte: c}
				}
			}
		}
	}
	return nil
}

// validHeaderNameByte is RFC 7230's tchar.
func validHeaderNameByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// replayable reports whether the request can be sent more than once: it
// has no body, or a GetBody to make a fresh copy of it.
func replayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// attemptRequest returns the request to send as attempt number attempt
// (1-based). The caller's request is never modified: when a header must
// be set or a fresh body made, a shallow copy is sent instead.
func (t *Transport) attemptRequest(req *http.Request, attempt int, idemKey string) (*http.Request, error) {
	needHeaders := t.cfg.attemptHeader != "" || idemKey != ""
	if attempt == 1 && !needHeaders {
		return req, nil
	}
	r := new(http.Request)
	*r = *req
	if attempt > 1 && req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			return nil, fmt.Errorf("GetBody for attempt %d: %w", attempt, err)
		}
		r.Body = body
	}
	if needHeaders {
		r.Header = req.Header.Clone()
		if r.Header == nil {
			r.Header = make(http.Header)
		}
		if t.cfg.attemptHeader != "" {
			r.Header.Set(t.cfg.attemptHeader, strconv.Itoa(attempt))
		}
		if idemKey != "" {
			r.Header.Set(t.cfg.idempotencyHeader, idemKey)
		}
	}
	return r, nil
}

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
