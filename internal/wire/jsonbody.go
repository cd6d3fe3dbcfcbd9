package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A request body is read once, in one pass, for the model it names: the
// allow-list of a failover target and the rename to the target's own name
// must agree on it, and so must the upstream, which reads the body as
// JSON. So the pass checks the whole body is JSON (NaN is not), and that
// it has one top-level "model" key and no key that a case-insensitive
// decoder (Go's encoding/json) would take for it. It streams: a body of
// megabytes is never copied to be read.

// BodyModel is what the reading of a request body found.
type BodyModel struct {
	// Name is the top-level "model" string, decoded; "" when there is none.
	Name string
	// Start and End are the byte offsets of the model's value in the body,
	// its quotes included, for a rename; both 0 when there is none.
	Start, End int64
	// Problem says why the body cannot be read as one JSON object naming
	// at most one model: "" when it can. A body with a problem is sent
	// nowhere that has an allow-list.
	Problem string
}

// maxDepth bounds nesting, as Go's own decoder does.
const maxDepth = 10000

// errProblem ends a reading at the first problem; the problem is in the
// scanner.
var errProblem = errors.New("problem")

// ReadModel reads a JSON request body from r to its end. err is r's own
// error, if reading failed; a body that is not what it should be is a
// Problem, not an error.
func ReadModel(r io.Reader) (bm BodyModel, err error) {
	s := &bodyScanner{r: r, buf: make([]byte, 16<<10)}
	if perr := s.document(&bm); perr != nil {
		if s.readErr != nil {
			return BodyModel{}, s.readErr
		}
		return BodyModel{Problem: s.problem}, nil
	}
	return bm, nil
}

// AsksForStream reports whether a JSON request body in memory asks for an
// event stream: its top-level "stream" key (as written, unescaped; the
// last one, as most decoders take) is the literal true. It reads the body
// in place, allocating nothing, and a body that is not one JSON object
// asks for nothing.
func AsksForStream(body []byte) bool {
	s := bodyScanner{buf: body, n: len(body), eof: true, streamOnly: true}
	var bm BodyModel
	return s.document(&bm) == nil && s.stream
}

// bodyScanner reads JSON from r through buf.
type bodyScanner struct {
	r       io.Reader
	buf     []byte
	i, n    int   // unread bytes are buf[i:n]
	off     int64 // offset of buf[0] in the body
	eof     bool
	readErr error
	problem string
	// streamOnly: the body is all in buf, and only its "stream" is looked
	// for (AsksForStream), found in stream.
	streamOnly, stream bool
}

func (s *bodyScanner) fail(format string, a ...any) error {
	if s.problem == "" {
		s.problem = fmt.Sprintf(format, a...)
	}
	return errProblem
}

// fill reads more of the body; false at its end, or on a read error.
func (s *bodyScanner) fill() bool {
	if s.eof {
		return false
	}
	s.off += int64(s.n)
	s.i, s.n = 0, 0
	for s.n == 0 {
		n, err := s.r.Read(s.buf)
		s.n = n
		if err == io.EOF {
			s.eof = true
			return n > 0
		}
		if err != nil {
			s.eof, s.readErr = true, err
			return false
		}
	}
	return true
}

// pos is the offset of the next unread byte.
func (s *bodyScanner) pos() int64 { return s.off + int64(s.i) }

// peek returns the next byte that is not white space, without taking it.
func (s *bodyScanner) peek() (byte, bool) {
	for {
		for s.i < s.n {
			switch c := s.buf[s.i]; c {
			case ' ', '\t', '\n', '\r':
				s.i++
			default:
				return c, true
			}
		}
		if !s.fill() {
			return 0, false
		}
	}
}

func (s *bodyScanner) take() (byte, bool) {
	if s.i == s.n && !s.fill() {
		return 0, false
	}
	c := s.buf[s.i]
	s.i++
	return c, true
}

func (s *bodyScanner) unexpected() error {
	if s.readErr != nil {
		return errProblem
	}
	if s.i >= s.n && s.eof {
		return s.fail("the body is not valid JSON: it ends early")
	}
	return s.fail("the body is not valid JSON at byte %d", s.pos())
}

// document reads one object and nothing after it but white space.
func (s *bodyScanner) document(bm *BodyModel) error {
	c, ok := s.peek()
	if !ok {
		if s.readErr != nil {
			return errProblem
		}
		return s.fail("the body is empty: a JSON object was expected")
	}
	if c != '{' {
		return s.fail("the body is not a JSON object")
	}
	s.i++
	if err := s.object(1, bm); err != nil {
		return err
	}
	if _, more := s.peek(); more {
		return s.fail("the body is not valid JSON: more follows its object at byte %d", s.pos())
	}
	if s.readErr != nil {
		return errProblem
	}
	return nil
}

// object reads the rest of an object whose '{' was taken. At depth 1 it
// looks at each key for the model.
func (s *bodyScanner) object(depth int, bm *BodyModel) error {
	if depth > maxDepth {
		return s.fail("the body nests deeper than %d", maxDepth)
	}
	c, ok := s.peek()
	if !ok {
		return s.unexpected()
	}
	if c == '}' {
		s.i++
		return nil
	}
	seen := false // a model key at this level
	for {
		c, ok := s.peek()
		if !ok || c != '"' {
			return s.unexpected()
		}
		s.i++
		var key []byte
		var err error
		start := s.i
		if depth == 1 && !s.streamOnly {
			key, err = s.str(64)
		} else {
			_, err = s.str(0)
		}
		if err != nil {
			return err
		}
		if c, ok := s.peek(); !ok || c != ':' {
			return s.unexpected()
		}
		s.i++
		if depth == 1 && s.streamOnly {
			// The body is all in buf: the key is read where it lies.
			if isStreamKey(s.buf[start:]) {
				c, _ := s.peek()
				s.stream = c == 't'
			}
		}
		if depth == 1 && key != nil {
			if name, isModel := modelKey(key); isModel {
				if name != "model" {
					return s.fail("the body has a %q key beside or instead of \"model\": an upstream may read either", name)
				}
				if seen {
					return s.fail("the body has \"model\" twice: an upstream may read either")
				}
				seen = true
				if err := s.modelValue(bm); err != nil {
					return err
				}
				goto next
			}
		}
		if err := s.value(depth); err != nil {
			return err
		}
	next:
		c, ok = s.peek()
		if !ok {
			return s.unexpected()
		}
		s.i++
		switch c {
		case ',':
			continue
		case '}':
			return nil
		}
		s.i--
		return s.unexpected()
	}
}

// isStreamKey reports whether rest, the bytes after a key's opening quote,
// start with the key "stream" and its closing quote.
func isStreamKey(rest []byte) bool {
	return len(rest) > len("stream") && string(rest[:len("stream")]) == "stream" && rest[len("stream")] == '"'
}

// modelKey decodes a key (as written, at most 64 bytes of it) and reports
// whether a case-insensitive decoder would take it for "model".
func modelKey(raw []byte) (string, bool) {
	name := string(raw)
	if strings.IndexByte(name, '\\') >= 0 {
		if json.Unmarshal([]byte(`"`+name+`"`), &name) != nil {
			return "", false
		}
	}
	return name, strings.EqualFold(name, "model")
}

// modelValue reads the model's value, which must be a string.
func (s *bodyScanner) modelValue(bm *BodyModel) error {
	c, ok := s.peek()
	if !ok {
		return s.unexpected()
	}
	if c != '"' {
		return s.fail("the body's \"model\" is not a string")
	}
	start := s.pos()
	s.i++
	raw, err := s.str(4 * maxModelName)
	if err != nil {
		return err
	}
	if raw == nil {
		return s.fail("the body's \"model\" is longer than %d bytes", maxModelName)
	}
	var name string
	if json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &name) != nil {
		return s.fail("the body's \"model\" is not a model name")
	}
	if len(name) > maxModelName {
		return s.fail("the body's \"model\" is longer than %d bytes", maxModelName)
	}
	bm.Name, bm.Start, bm.End = name, start, s.pos()
	return nil
}

// value reads one value of any kind.
func (s *bodyScanner) value(depth int) error {
	c, ok := s.peek()
	if !ok {
		return s.unexpected()
	}
	switch {
	case c == '{':
		s.i++
		return s.object(depth+1, nil)
	case c == '[':
		s.i++
		return s.array(depth + 1)
	case c == '"':
		s.i++
		_, err := s.str(0)
		return err
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return s.unexpected()
}

func (s *bodyScanner) array(depth int) error {
	if depth > maxDepth {
		return s.fail("the body nests deeper than %d", maxDepth)
	}
	c, ok := s.peek()
	if !ok {
		return s.unexpected()
	}
	if c == ']' {
		s.i++
		return nil
	}
	for {
		if err := s.value(depth); err != nil {
			return err
		}
		c, ok := s.peek()
		if !ok {
			return s.unexpected()
		}
		s.i++
		switch c {
		case ',':
			continue
		case ']':
			return nil
		}
		s.i--
		return s.unexpected()
	}
}

// str reads the rest of a string whose opening quote was taken, checking
// its escapes. It keeps its text as written (escapes undecoded) up to keep
// bytes; a longer one, or keep 0, gives nil.
func (s *bodyScanner) str(keep int) ([]byte, error) {
	var kept []byte
	over := keep == 0
	for {
		// The bulk of a body is string text: scan it in place.
		j := s.i
		for j < s.n {
			c := s.buf[j]
			if c == '"' || c == '\\' || c < 0x20 {
				break
			}
			j++
		}
		if !over {
			if len(kept)+j-s.i > keep {
				over, kept = true, nil
			} else {
				kept = append(kept, s.buf[s.i:j]...)
			}
		}
		s.i = j
		if j == s.n {
			if !s.fill() {
				return nil, s.unexpected()
			}
			continue
		}
		c := s.buf[s.i]
		s.i++
		switch {
		case c == '"':
			if over {
				return nil, nil
			}
			if kept == nil {
				kept = []byte{}
			}
			return kept, nil
		case c < 0x20:
			s.i--
			return nil, s.unexpected()
		}
		// An escape.
		e, ok := s.take()
		if !ok {
			return nil, s.unexpected()
		}
		esc := []byte{'\\', e}
		switch e {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			for range 4 {
				h, ok := s.take()
				if !ok || !isHex(h) {
					return nil, s.unexpected()
				}
				esc = append(esc, h)
			}
		default:
			s.i--
			return nil, s.unexpected()
		}
		if !over {
			if len(kept)+len(esc) > keep {
				over, kept = true, nil
			} else {
				kept = append(kept, esc...)
			}
		}
	}
}

// number reads a JSON number: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?
func (s *bodyScanner) number() error {
	c, _ := s.take()
	if c == '-' {
		if c, _ = s.take(); !(c >= '0' && c <= '9') {
			s.back(c)
			return s.unexpected()
		}
	}
	if c != '0' {
		s.digits()
	}
	if c, ok := s.peekRaw(); ok && c == '.' {
		s.i++
		if s.digits() == 0 {
			return s.unexpected()
		}
	}
	if c, ok := s.peekRaw(); ok && (c == 'e' || c == 'E') {
		s.i++
		if c, ok := s.peekRaw(); ok && (c == '+' || c == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return s.unexpected()
		}
	}
	return nil
}

// back gives back the byte just taken, when one was.
func (s *bodyScanner) back(c byte) {
	if c != 0 && s.i > 0 {
		s.i--
	}
}

func (s *bodyScanner) digits() int {
	n := 0
	for {
		c, ok := s.peekRaw()
		if !ok || c < '0' || c > '9' {
			return n
		}
		s.i++
		n++
	}
}

// peekRaw is the next byte, white space included.
func (s *bodyScanner) peekRaw() (byte, bool) {
	if s.i == s.n && !s.fill() {
		return 0, false
	}
	return s.buf[s.i], true
}

func (s *bodyScanner) literal(word string) error {
	for i := 0; i < len(word); i++ {
		c, ok := s.take()
		if !ok || c != word[i] {
			if ok {
				s.i--
			}
			return s.unexpected()
		}
	}
	return nil
}

// Replace returns a reader of src with the bytes from start to end
// replaced by with: a renamed model, sent without copying the body.
func Replace(src io.ReadCloser, start, end int64, with []byte) io.ReadCloser {
	return &replacer{src: src, start: start, end: end, with: with}
}

type replacer struct {
	src        io.ReadCloser
	start, end int64
	with       []byte
	at         int64 // bytes of src read
}

func (r *replacer) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	// Before the span: read up to its start.
	if r.at < r.start {
		n, err := r.src.Read(p[:min(int64(len(p)), r.start-r.at)])
		r.at += int64(n)
		if err == io.EOF && r.at < r.start {
			return n, io.ErrUnexpectedEOF
		}
		if err == io.EOF {
			err = nil
		}
		return n, err
	}
	// The span itself: skip it in src, and give the replacement.
	for r.at < r.end {
		var skip [512]byte
		n, err := r.src.Read(skip[:min(int64(len(skip)), r.end-r.at)])
		r.at += int64(n)
		if err != nil && r.at < r.end {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
	if len(r.with) > 0 {
		n := copy(p, r.with)
		r.with = r.with[n:]
		return n, nil
	}
	n, err := r.src.Read(p)
	r.at += int64(n)
	return n, err
}

func (r *replacer) Close() error { return r.src.Close() }
