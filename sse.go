package llmretry

import "bytes"

// Just enough of Server-Sent Events to find a stream's first event.

// sseEvent is the part of an event the decision needs.
type sseEvent struct {
	name string
	data []byte
}

// firstEvent scans held bytes for the first complete event, skipping
// comment-only blocks (": ping", ": OPENROUTER PROCESSING"). done is false
// while no complete event is there yet.
func firstEvent(buf []byte) (ev sseEvent, done bool) {
	for len(buf) > 0 {
		block, rest, complete := nextBlock(buf)
		if !complete {
			return ev, false
		}
		buf = rest
		var isEvent bool
		var data [][]byte
		for _, line := range splitLines(block) {
			if len(line) == 0 || line[0] == ':' {
				continue
			}
			field, value, _ := bytes.Cut(line, []byte(":"))
			value = bytes.TrimPrefix(value, []byte(" "))
			switch string(field) {
			case "event":
				ev.name, isEvent = string(value), true
			case "data":
				data, isEvent = append(data, value), true
			}
		}
		if isEvent {
			ev.data = bytes.Join(data, []byte("\n"))
			return ev, true
		}
	}
	return ev, false
}

// nextBlock splits off the first block of lines ended by a blank line,
// whatever the line endings (\n, \r\n or \r).
func nextBlock(buf []byte) (block, rest []byte, complete bool) {
	for i := 0; i < len(buf); i++ {
		c := buf[i]
		if c != '\n' && c != '\r' {
			continue
		}
		// i ends a line; is the next line empty?
		j := i + 1
		if c == '\r' {
			if j == len(buf) {
				return nil, nil, false // \r may be the first half of \r\n
			}
			if buf[j] == '\n' {
				j++
			}
		}
		if j < len(buf) && (buf[j] == '\n' || buf[j] == '\r') {
			k := j + 1
			if buf[j] == '\r' && k < len(buf) && buf[k] == '\n' {
				k++
			}
			return buf[:i], buf[k:], true
		}
		if i == 0 { // a blank line at the very start ends an empty block
			return nil, buf[j:], true
		}
	}
	return nil, nil, false
}

func splitLines(block []byte) [][]byte {
	block = bytes.ReplaceAll(block, []byte("\r\n"), []byte("\n"))
	block = bytes.ReplaceAll(block, []byte("\r"), []byte("\n"))
	return bytes.Split(block, []byte("\n"))
}
