package wire

import "strings"

// maxDecodeRounds bounds how many times a path is percent-decoded to look
// for a dot-segment: "%252e" is "." after two. A server or CDN that
// decodes more often than this in front of an LLM API is not one we know.
const maxDecodeRounds = 4

// HasDotSegment reports whether an escaped path holds a "." or ".."
// segment in any spelling an upstream, or a CDN in front of it, might
// resolve: written plainly, percent-encoded in either case ("%2e",
// "%2E", mixed with dots), encoded again ("%252e"), with "%2f", "%5c" or
// "\" standing for a separator, and with a path parameter after it
// ("..;x", which servlet containers resolve as "..").
func HasDotSegment(escapedPath string) bool {
	p := escapedPath
	for round := 0; ; round++ {
		if dotSegment(p) {
			return true
		}
		next := decodePercent(p)
		if next == p || round == maxDecodeRounds {
			return false
		}
		p = next
	}
}

// dotSegment looks for a "." or ".." segment in p, taking '/' and '\' as
// separators, and a segment's parameters (after a ';') as no part of it.
func dotSegment(p string) bool {
	for seg := range strings.FieldsFuncSeq(p, func(r rune) bool { return r == '/' || r == '\\' }) {
		// What a server may cut a segment at: a path parameter (";"), a
		// query or fragment decoded from %3f or %23, a NUL.
		if i := strings.IndexAny(seg, ";?#\x00"); i >= 0 {
			seg = seg[:i]
		}
		// The overlong UTF-8 form of '.' that old decoders accept.
		seg = strings.ReplaceAll(seg, "\xc0\xae", ".")
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// decodePercent decodes every valid %XX in p and leaves anything else as
// it is (url.PathUnescape gives up on the whole path at one bad escape).
func decodePercent(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
			b.WriteByte(unhex(p[i+1])<<4 | unhex(p[i+2]))
			i += 2
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// maxModelName bounds a model name.
const maxModelName = 256

// ModelInPath finds the model in a Gemini or Vertex path
// (".../models/gemini-2.5-flash:generateContent", or ".../models/NAME"
// for a model's own resource) and checks it is one: letters, digits, '.',
// '-' and '_', not "." or "..", nothing after it but ":method". ok is false
// when the path names a model in any other shape (the request must then
// not be sent where an allow-list applies); name is "" and ok true when
// the path names no model at all.
func ModelInPath(escapedPath string) (name string, ok bool) {
	_, rest, found := strings.Cut(escapedPath, "/models/")
	if !found {
		return "", true
	}
	name, method, _ := strings.Cut(rest, ":")
	if name == "" || name == "." || name == ".." || len(name) > maxModelName || strings.ContainsAny(method, "/\\%") {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		if !modelByte(name[i]) {
			return "", false
		}
	}
	return name, true
}

func modelByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}
