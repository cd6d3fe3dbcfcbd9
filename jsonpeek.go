package llmretry

import "bytes"

// Just enough JSON to read a field of a stream event without decoding it.
// Which events carry output is decided on every event a stream holds, and
// encoding/json allocates; these functions walk the raw bytes, allocate
// nothing, run in time linear in the input (no recursion, however deep the
// nesting), and on malformed input report "not found" rather than fail.
// They are lenient: they find a member in an object that a strict parser
// would reject further on. A caller that needs the value itself decodes it
// with encoding/json.

// jsonIter walks the members of a JSON object or the elements of a JSON
// array, one at a time. A member's value can be read whole (next, value)
// or walked into (enter, leave) without being scanned first: a walk into
// nested objects reads each byte once.
type jsonIter struct {
	b       []byte
	i       int
	object  bool
	first   bool
	pending bool // member has left its value unread at i
	end     bool // the closing bracket was read; i is past it
	bad     bool // the input turned out malformed
}

// jsonIterate starts a walk over v, which must be an object or an array
// (whitespace around it allowed).
func jsonIterate(v []byte) (jsonIter, bool) {
	return jsonIterateAt(v, 0)
}

func jsonIterateAt(b []byte, i int) (jsonIter, bool) {
	i = skipJSONSpace(b, i)
	if i >= len(b) || (b[i] != '{' && b[i] != '[') {
		return jsonIter{}, false
	}
	return jsonIter{b: b, i: i + 1, object: b[i] == '{', first: true}, true
}

// next returns the next member (key without its quotes, raw value) of an
// object, or the next element of an array (key nil). ok is false at the
// end, or when the input is malformed (malformed then reports true).
func (it *jsonIter) next() (key, val []byte, ok bool) {
	if key, ok = it.member(); !ok {
		return nil, nil, false
	}
	if val, ok = it.value(); !ok {
		return nil, nil, false
	}
	return key, val, true
}

// member reads the next member's key (nil in an array) and leaves its
// value unread, for value or enter; a value left unread is skipped.
func (it *jsonIter) member() (key []byte, ok bool) {
	if it.pending {
		if _, ok := it.value(); !ok {
			return nil, false
		}
	}
	if it.bad || it.end || it.b == nil {
		return nil, false
	}
	b := it.b
	i := skipJSONSpace(b, it.i)
	if i >= len(b) {
		return it.fail()
	}
	if (it.object && b[i] == '}') || (!it.object && b[i] == ']') {
		it.i, it.end = i+1, true // later calls report the end again
		return nil, false
	}
	if !it.first {
		if b[i] != ',' {
			return it.fail()
		}
		i = skipJSONSpace(b, i+1)
	}
	it.first = false
	if it.object {
		if i >= len(b) || b[i] != '"' {
			return it.fail()
		}
		end, ok := skipJSONString(b, i)
		if !ok {
			return it.fail()
		}
		key = b[i+1 : end-1]
		i = skipJSONSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return it.fail()
		}
		i = skipJSONSpace(b, i+1)
	}
	it.i, it.pending = i, true
	return key, true
}

// value reads the value member left unread, whole.
func (it *jsonIter) value() ([]byte, bool) {
	if !it.pending || it.bad {
		return nil, false
	}
	it.pending = false
	end, ok := skipJSONValue(it.b, it.i)
	if !ok {
		it.bad = true
		return nil, false
	}
	v := it.b[it.i:end]
	it.i = end
	return v, true
}

// enter walks into the value member left unread, when it is an object or
// an array; the walk over it must end with leave. When the value is
// neither, ok is false and the value stays unread.
func (it *jsonIter) enter() (inner jsonIter, ok bool) {
	if !it.pending || it.bad {
		return jsonIter{}, false
	}
	inner, ok = jsonIterateAt(it.b, it.i)
	if ok {
		it.pending = false
	}
	return inner, ok
}

// leave goes on after the value inner walked, reading what inner left
// unread; inner's malformed input is it's too.
func (it *jsonIter) leave(inner *jsonIter) {
	for {
		if _, ok := inner.member(); !ok {
			break
		}
	}
	if inner.bad || !inner.end {
		it.bad = true
		return
	}
	it.i = inner.i
}

func (it *jsonIter) fail() ([]byte, bool) {
	it.bad = true
	return nil, false
}

// malformed reports a walk that stopped on bad input rather than at the
// end.
func (it *jsonIter) malformed() bool { return it.bad }

// jsonMember returns the raw value of the member named key of the object
// obj. Keys are compared as written: providers write their field names
// plainly, without escapes.
func jsonMember(obj []byte, key string) ([]byte, bool) {
	it, ok := jsonIterate(obj)
	if !ok || !it.object {
		return nil, false
	}
	for {
		k, v, ok := it.next()
		if !ok {
			return nil, false
		}
		if string(k) == key {
			return v, true
		}
	}
}

// jsonStringMember returns the raw contents (between the quotes, escapes
// as written) of obj's member key when it is a string, else nil.
func jsonStringMember(obj []byte, key string) []byte {
	v, ok := jsonMember(obj, key)
	if !ok {
		return nil
	}
	return jsonStringContents(v)
}

// jsonStringContents returns what is between the quotes of the string v,
// or nil when v is not a string.
func jsonStringContents(v []byte) []byte {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return nil
	}
	return v[1 : len(v)-1]
}

// jsonEmpty reports a value that carries nothing: null, "", [] or {}
// (whitespace inside allowed). A missing value (nil) is empty too.
func jsonEmpty(v []byte) bool {
	v = bytes.TrimSpace(v)
	switch {
	case len(v) == 0, string(v) == "null", string(v) == `""`:
		return true
	case v[0] == '[' || v[0] == '{':
		return len(v) >= 2 && skipJSONSpace(v, 1) == len(v)-1
	}
	return false
}

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipJSONString returns the index just past the string that starts at
// b[i] (a quote).
func skipJSONString(b []byte, i int) (int, bool) {
	j := i + 1
	for {
		q := bytes.IndexByte(b[j:], '"')
		if q < 0 {
			return 0, false
		}
		j += q
		// The quote ends the string unless an odd number of backslashes
		// escapes it.
		n := 0
		for k := j - 1; k > i && b[k] == '\\'; k-- {
			n++
		}
		j++
		if n%2 == 0 {
			return j, true
		}
	}
}

// skipJSONValue returns the index just past the value that starts at b[i].
// Objects and arrays are skipped by counting brackets outside strings,
// without recursion.
func skipJSONValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return skipJSONString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, ok := skipJSONString(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	}
	// A number or a literal: up to the next delimiter.
	j := i
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r', ':', '"', '{', '[':
			if j == i {
				return 0, false
			}
			return j, true
		}
		j++
	}
	return j, true
}
