package llmretry

import (
	"bufio"
	"net/http"
	"strings"
)

// Which model a request is for: rate limits are per model (and per key),
// so a cooldown is too. It is read only when a cooldown may apply (one is
// running, or a 429 starts one), never on the plain success path.

// maxModelName bounds a model name taken from a request.
const maxModelName = 256

// modelOf names the model req is for: in the path for Gemini and Vertex
// (".../models/gemini-2.0-flash:generateContent"), else the top-level
// "model" of a JSON body, as OpenAI- and Anthropic-style APIs send it. The
// body is read from a fresh copy (GetBody), never from the one being sent.
// "" when neither names one.
func modelOf(req *http.Request) string {
	if m := modelInPath(req.URL.Path); m != "" {
		return m
	}
	if req.Body == nil || req.Body == http.NoBody || req.GetBody == nil {
		return ""
	}
	body, err := req.GetBody()
	if err != nil {
		return ""
	}
	defer body.Close()
	return modelInJSON(bufio.NewReaderSize(body, 4<<10))
}

// modelInPath finds the segment after "/models/", up to a ':' (the method)
// or a '/'.
func modelInPath(path string) string {
	_, rest, ok := strings.Cut(path, "/models/")
	if !ok {
		return ""
	}
	if i := strings.IndexAny(rest, ":/"); i >= 0 {
		rest = rest[:i]
	}
	if len(rest) > maxModelName {
		return ""
	}
	return rest
}

// modelInJSON scans a JSON object for its top-level "model" string without
// decoding the rest (the messages before it may be megabytes). "" if the
// text is not an object, or has no such string.
func modelInJSON(r *bufio.Reader) string {
	depth := 0
	expectKey := false // at depth 1, the next string is a key
	for {
		c, err := r.ReadByte()
		if err != nil {
			return ""
		}
		switch c {
		case '{':
			depth++
			expectKey = depth == 1
		case '[':
			if depth == 0 {
				return ""
			}
			depth++
		case '}', ']':
			depth--
			if depth <= 0 {
				return ""
			}
		case ',':
			expectKey = depth == 1
		case '"':
			if depth == 0 {
				return ""
			}
			isKey := depth == 1 && expectKey
			s, ok := jsonString(r, isKey)
			if !ok {
				return ""
			}
			if !isKey {
				continue
			}
			expectKey = false
			if s == "model" {
				return modelValue(r)
			}
		}
	}
}

// modelValue reads the string after a key's colon.
func modelValue(r *bufio.Reader) string {
	for {
		c, err := r.ReadByte()
		if err != nil {
			return ""
		}
		switch c {
		case ' ', '\t', '\r', '\n', ':':
			continue
		case '"':
			s, _ := jsonString(r, true)
			return s
		}
		return "" // not a string
	}
}

// jsonString reads the rest of a JSON string whose opening quote was read,
// keeping its text (as written, escapes included) if keep, up to
// maxModelName bytes; a longer one is kept as "".
func jsonString(r *bufio.Reader, keep bool) (string, bool) {
	var b strings.Builder
	over := false
	for {
		c, err := r.ReadByte()
		if err != nil {
			return "", false
		}
		if c == '"' {
			if over {
				return "", true
			}
			return b.String(), true
		}
		if keep && !over {
			if b.Len() >= maxModelName {
				over = true
			} else {
				b.WriteByte(c)
			}
		}
		if c == '\\' {
			e, err := r.ReadByte()
			if err != nil {
				return "", false
			}
			if keep && !over && b.Len() < maxModelName {
				b.WriteByte(e)
			}
		}
	}
}
