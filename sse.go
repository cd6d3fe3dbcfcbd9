package llmretry

import "bytes"

// Server-Sent Events, read as the bytes pass: enough of the format to find
// each event's name and data, for the stream hold and for whatever watches
// a stream after it is handed over.

// sseEvent is one event: its name ("" without an event: line) and its data
// lines joined by "\n". truncated says that a line or the data outgrew the
// scanner's limit, and only their start is here.
type sseEvent struct {
	name, data []byte
	truncated  bool
}

// utf8BOM may start a stream; the SSE spec says to skip it. It is skipped
// only to read the events: the caller still gets it, as the server sent it.
var utf8BOM = []byte("\xef\xbb\xbf")

var newline = []byte{'\n'}

// maxEventName bounds an event's name as the scanner keeps it: names are
// words ("message_start", "response.output_text.delta").
const maxEventName = 256

// sseScanner splits a stream of bytes into Server-Sent Events, fed in
// pieces of any size, as they pass: a piece may end mid-line, mid-event, or
// between the two bytes of a CRLF. Lines may end in \n, \r\n or \r; comment
// lines (": ping") and fields other than event and data are skipped; a
// byte-order mark before the first line is skipped. A block with an event:
// or a data: line is an event, even without data.
//
// Steady state costs no allocation per event: an event whose lines lie
// whole within one piece comes back as slices of that piece, and one split
// across pieces, or with several data lines, is assembled in buffers the
// scanner reuses. Memory is bounded by limit: a partial line, and an
// event's data, keep at most limit bytes each (the name at most 256), and
// an event that lost bytes to that comes back marked truncated.
//
// The zero sseScanner has no limit; set one for a live stream.
type sseScanner struct {
	limit int

	line     []byte // the start of a line that the last piece ended in
	carrying bool   // a line is in line, to be finished by the next piece
	lineCut  bool   // that line outgrew the limit

	// The event so far. name and data point into the current piece while
	// inPiece says so, and into nameBuf and dataBuf otherwise.
	name, data       []byte
	nameBuf, dataBuf []byte
	nameInPiece      bool
	dataInPiece      bool
	dataLines        int
	fields           bool // an event: or data: line was seen
	truncated        bool
	afterCR          bool // the last piece ended in \r: a \n that starts the next one belongs to it
	started          bool // the first line, which may start with a byte-order mark, is behind
	emitted          bool // the last scan returned an event: start the next afresh
}

// scan reads p from its start up to the end of the next complete event,
// and returns that event and how many bytes of p it consumed. ok is false
// when p ran out first: all of p was consumed, and what it held of an
// unfinished event is kept for the next call. The event is valid until the
// next call to scan (its slices may point into p or into the scanner).
//
// An event is returned as soon as its blank line is complete, never held
// for the next piece: when that line ends in a CR that is the last byte of
// p, the LF that may follow it is consumed with the next piece.
//
// The usual loop:
//
//	for len(p) > 0 {
//		ev, n, ok := s.scan(p)
//		p = p[n:]
//		if !ok {
//			break
//		}
//		use(ev)
//	}
func (s *sseScanner) scan(p []byte) (ev sseEvent, n int, ok bool) {
	if s.emitted {
		s.startEvent()
	}
	i := 0
	if s.afterCR && len(p) > 0 {
		s.afterCR = false
		if p[0] == '\n' { // the second half of a CRLF split between pieces
			i = 1
		}
	}
	for i < len(p) {
		rest := p[i:]
		end := lineEnd(rest)
		if end < 0 {
			s.carry(rest)
			break
		}
		next := i + end + 1
		if rest[end] == '\r' {
			if next == len(p) {
				s.afterCR = true
			} else if p[next] == '\n' {
				next++
			}
		}
		line, inPiece, cut := rest[:end], true, false
		if s.carrying {
			s.carry(line)
			line, inPiece, cut = s.line, false, s.lineCut
		}
		i = next
		dispatch := s.takeLine(line, inPiece, cut)
		s.line, s.carrying, s.lineCut = s.line[:0], false, false
		if dispatch {
			s.emitted = true
			return sseEvent{name: s.name, data: s.data, truncated: s.truncated}, i, true
		}
	}
	s.keep()
	return sseEvent{}, len(p), false
}

// lineEnd returns the index of the first \r or \n in b, or -1.
func lineEnd(b []byte) int {
	n := bytes.IndexByte(b, '\n')
	upTo := b
	if n >= 0 {
		upTo = b[:n]
	}
	if r := bytes.IndexByte(upTo, '\r'); r >= 0 {
		return r
	}
	return n
}

// carry keeps the start of a line that a piece ended in, up to the limit.
func (s *sseScanner) carry(b []byte) {
	s.carrying = true
	if s.limit > 0 {
		if room := s.limit - len(s.line); len(b) > room {
			b, s.lineCut = b[:max(room, 0)], true
		}
	}
	s.line = append(s.line, b...)
}

// takeLine applies one whole line to the event, and reports whether it
// ends it (a blank line after an event: or data: line). inPiece says the
// line points into the current piece; cut, that it lost its end to the
// limit.
func (s *sseScanner) takeLine(line []byte, inPiece, cut bool) (dispatch bool) {
	if !s.started {
		s.started = true
		line = bytes.TrimPrefix(line, utf8BOM)
	}
	if len(line) == 0 {
		return s.fields
	}
	if line[0] == ':' {
		return false // a comment: a keep-alive, ": OPENROUTER PROCESSING"
	}
	field, value := line, []byte(nil)
	if c := bytes.IndexByte(line, ':'); c >= 0 {
		field, value = line[:c], line[c+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "event":
		s.fields = true
		s.truncated = s.truncated || cut
		if inPiece {
			if len(value) > maxEventName {
				value, s.truncated = value[:maxEventName], true
			}
			s.name, s.nameInPiece = value, true
		} else {
			s.setName(value)
		}
	case "data":
		s.fields = true
		s.truncated = s.truncated || cut
		s.addData(value, inPiece)
	}
	return false
}

func (s *sseScanner) setName(v []byte) {
	if len(v) > maxEventName {
		v, s.truncated = v[:maxEventName], true
	}
	s.nameBuf = append(s.nameBuf[:0], v...)
	s.name, s.nameInPiece = s.nameBuf, false
}

// addData adds one data line. The first, when it lies in the piece, is
// kept as a slice of it; a second joins it in dataBuf.
func (s *sseScanner) addData(v []byte, inPiece bool) {
	s.dataLines++
	if s.dataLines == 1 {
		if inPiece {
			if s.limit > 0 && len(v) > s.limit {
				v, s.truncated = v[:s.limit], true
			}
			s.data, s.dataInPiece = v, true
			return
		}
		s.dataBuf = s.appendData(s.dataBuf[:0], v)
		s.data = s.dataBuf
		return
	}
	if s.dataInPiece {
		s.dataBuf = append(s.dataBuf[:0], s.data...)
		s.dataInPiece = false
	}
	s.dataBuf = s.appendData(s.dataBuf, newline)
	s.dataBuf = s.appendData(s.dataBuf, v)
	s.data = s.dataBuf
}

// appendData appends v to buf up to the limit.
func (s *sseScanner) appendData(buf, v []byte) []byte {
	if s.limit > 0 {
		if room := s.limit - len(buf); len(v) > room {
			v, s.truncated = v[:max(room, 0)], true
		}
	}
	return append(buf, v...)
}

// keep copies what the unfinished event holds of the current piece, which
// the caller may reuse once scan returns.
func (s *sseScanner) keep() {
	if s.nameInPiece {
		s.setName(s.name)
	}
	if s.dataInPiece {
		s.dataBuf = append(s.dataBuf[:0], s.data...)
		s.data, s.dataInPiece = s.dataBuf, false
	}
}

// startEvent forgets the event last returned, keeping the buffers.
func (s *sseScanner) startEvent() {
	s.name, s.data = nil, nil
	s.nameInPiece, s.dataInPiece = false, false
	s.dataLines, s.fields, s.truncated, s.emitted = 0, false, false, false
}

// isDone reports OpenAI's end-of-stream sentinel, data: [DONE].
func isDone(data []byte) bool {
	return string(bytes.TrimSpace(data)) == "[DONE]"
}
