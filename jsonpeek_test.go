package llmretry

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestJSONMember(t *testing.T) {
	obj := []byte(` { "a" : 1, "s": "x\"}y", "o": {"a": [1, {"b": "]"}]}, "n": null, "e": [ ], "t": true } `)
	cases := []struct {
		key, want string
		ok        bool
	}{
		{"a", "1", true},
		{"s", `"x\"}y"`, true},
		{"o", `{"a": [1, {"b": "]"}]}`, true},
		{"n", "null", true},
		{"e", "[ ]", true},
		{"t", "true", true},
		{"missing", "", false},
		{"b", "", false}, // nested members are not top-level ones
	}
	for _, tc := range cases {
		v, ok := jsonMember(obj, tc.key)
		if ok != tc.ok || string(v) != tc.want {
			t.Errorf("%s: got %q %v, want %q %v", tc.key, v, ok, tc.want, tc.ok)
		}
	}
}

func TestJSONMemberOnBadInput(t *testing.T) {
	for _, in := range []string{"", "[", "{", `{"a"`, `{"a":`, `{"a" 1}`, `{a:1}`, `{"a":"x`, `"str"`, `[1,2]`,
		`{"a":]`, `{"x":1,"a"`, `{"x" "a":1}`, "\x00", `{"a":[1,2`} {
		if v, ok := jsonMember([]byte(in), "a"); ok {
			t.Errorf("%q: found %q", in, v)
		}
	}
	// A member before the damage is still found: the walk is lenient, and
	// skips a nested value by counting brackets, not checking it.
	for _, in := range []string{`{"a":1,"b":`, `{"a":1`, `{"a":1 "b":2}`, `{"a":1,,"b":2}`} {
		if v, ok := jsonMember([]byte(in), "a"); !ok || string(v) != "1" {
			t.Errorf("%q: got %q %v", in, v, ok)
		}
	}
}

func TestJSONEmpty(t *testing.T) {
	for in, want := range map[string]bool{
		"": true, "null": true, `""`: true, "[]": true, "{}": true, "[ \n ]": true, " { } ": true,
		`" "`: false, "0": false, "false": false, `[null]`: false, `{"a":1}`: false, `"x"`: false, "[": false,
	} {
		if got := jsonEmpty([]byte(in)); got != want {
			t.Errorf("jsonEmpty(%q) = %v", in, got)
		}
	}
}

func TestJSONIteratorAllocatesNothing(t *testing.T) {
	chunk := []byte(`{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`)
	allocs := testing.AllocsPerRun(100, func() {
		if chatRole(sseEvent{data: chunk}) != roleOpening {
			t.Fatal("a role-only chunk carries nothing")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per chunk", allocs)
	}
}

// On valid JSON the walk agrees with encoding/json: the same members, each
// a valid value; on anything else it never panics.
func FuzzJSONPeek(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `[1,"2",{"3":[4]}]`, `{"a":"\\\"","b":[{}]}`, `{"choices":[{"delta":{"content":"x"}}]}`,
		`{"a":1,"a":2}`, `{"\u0061":1}`, `  {  }  `, `{"a":-1.5e3,"b":null,"c":true}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = jsonMember(b, "a")
		_ = jsonEmpty(b)
		it, ok := jsonIterate(b)
		if !ok {
			return
		}
		members := 0
		for {
			k, v, ok := it.next()
			if !ok {
				break
			}
			members++
			if json.Valid(b) {
				if !json.Valid(v) {
					t.Fatalf("value %q of %q is not valid JSON", v, b)
				}
				if it.object && !json.Valid(append(append([]byte(`"`), k...), '"')) {
					t.Fatalf("key %q of %q is not a JSON string", k, b)
				}
			}
		}
		// Walking into every value ends where reading each whole does.
		whole, _ := jsonIterate(b)
		in, _ := jsonIterate(b)
		valid := json.Valid(b)
		for {
			_, _, ok := whole.next()
			_, inOK := in.member()
			if valid && inOK != ok {
				t.Fatalf("%q: a member read whole: %v, walked into: %v", b, ok, inOK)
			}
			if !ok || !inOK {
				break
			}
			walkInto(&in)
			if valid && (in.i != whole.i || in.malformed()) {
				t.Fatalf("%q: walked into, at %d (malformed %v); read whole, at %d", b, in.i, in.malformed(), whole.i)
			}
		}
		if !valid {
			return
		}
		if it.malformed() || in.malformed() {
			t.Fatalf("valid JSON %q reported malformed", b)
		}
		var want int
		if it.object {
			var raw []json.RawMessage
			// Count members with a decoder, duplicates included.
			dec := json.NewDecoder(bytes.NewReader(b))
			if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
				t.Fatalf("decoder on %q: %v %v", b, tok, err)
			}
			for dec.More() {
				if _, err := dec.Token(); err != nil {
					t.Fatal(err)
				}
				var v json.RawMessage
				if err := dec.Decode(&v); err != nil {
					t.Fatal(err)
				}
				raw = append(raw, v)
			}
			want = len(raw)
		} else {
			var raw []json.RawMessage
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			want = len(raw)
		}
		if members != want {
			t.Fatalf("%q: walked %d members, encoding/json finds %d", b, members, want)
		}
	})
}

// walkInto walks into the value parent's member left unread, and into
// every value inside it.
func walkInto(parent *jsonIter) {
	inner, ok := parent.enter()
	if !ok {
		_, _ = parent.value()
		return
	}
	for {
		if _, ok := inner.member(); !ok {
			break
		}
		walkInto(&inner)
	}
	parent.leave(&inner)
}
