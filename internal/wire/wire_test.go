package wire

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
)

func TestCredentialsAreFoundInEveryPlaceAClientPutsThem(t *testing.T) {
	const tok = "tok-0123456789abcdef"
	for name, c := range map[string]struct {
		header http.Header
		query  string
	}{
		"bearer":               {header: http.Header{"Authorization": {"Bearer " + tok}}},
		"bearer lower case":    {header: http.Header{"Authorization": {"bearer " + tok}}},
		"bearer upper case":    {header: http.Header{"Authorization": {"BEARER  " + tok}}},
		"basic":                {header: http.Header{"Authorization": {"Basic " + tok}}},
		"x-api-key":            {header: http.Header{"X-Api-Key": {tok}}},
		"api-key":              {header: http.Header{"Api-Key": {tok}}},
		"x-goog-api-key":       {header: http.Header{"X-Goog-Api-Key": {tok}}},
		"realtime subprotocol": {header: http.Header{"Sec-Websocket-Protocol": {"realtime, openai-insecure-api-key." + tok + ", openai-beta.realtime-v1"}}},
		"query key":            {query: "key=" + tok},
		"query %6Bey":          {query: "%6Bey=" + tok},
		"query ke%79":          {query: "alt=sse&ke%79=" + tok},
		"query KEY":            {query: "KEY=" + tok},
		"query access_token":   {query: "access_token=" + tok},
		"query access%5Ftoken": {query: "access%5Ftoken=" + tok},
		"query api_key":        {query: "api_key=" + tok},
		"query apikey":         {query: "apikey=" + tok},
		"query api-key":        {query: "api-key=" + tok},
	} {
		t.Run(name, func(t *testing.T) {
			h := c.header
			if h == nil {
				h = http.Header{}
			}
			got := Credentials(h, c.query)
			if len(got) != 1 || got[0].Value != tok {
				t.Fatalf("Credentials = %+v, want the token once", got)
			}
			q, _ := StripCredentials(h, c.query)
			if strings.Contains(q, tok) || len(Credentials(h, q)) != 0 {
				t.Fatalf("after StripCredentials: header %v, query %q", h, q)
			}
			for _, vs := range h {
				for _, v := range vs {
					if strings.Contains(v, tok) {
						t.Fatalf("a header still holds the token: %v", h)
					}
				}
			}
		})
	}
	// What is not a credential stays; a cookie is stripped, not judged.
	h := http.Header{"Sec-Websocket-Protocol": {"realtime, openai-insecure-api-key.x"}, "Content-Type": {"application/json"}, "Cookie": {"session=s"}}
	if got := Credentials(h, ""); len(got) != 1 {
		t.Fatalf("credentials %+v: a cookie is not a key", got)
	}
	q, dropped := StripCredentials(h, "alt=sse&key=x&bad=%zz")
	if q != "alt=sse" || dropped != 1 || h.Get("Sec-Websocket-Protocol") != "realtime" || h.Get("Content-Type") == "" || h.Get("Cookie") != "" {
		t.Fatalf("query %q dropped %d header %v", q, dropped, h)
	}
}

func TestTargetQueryKeepsTheCallersParseableParametersInOrder(t *testing.T) {
	for _, c := range []struct {
		caller, base, want string
		dropped            int
	}{
		{"", "", "", 0},
		{"alt=sse", "", "alt=sse", 0},
		{"b=2&a=1", "", "b=2&a=1", 0},
		{"trace=1&bad=%zz&user=u", "api-version=preview", "trace=1&user=u&api-version=preview", 1},
		{"api-version=old&x=1", "api-version=new", "x=1&api-version=new", 0},
		{"a=1;b=2&c=3", "", "c=3", 1},
		{"%6Bey=secret&q=%C3%A9", "", "q=%C3%A9", 0},
	} {
		got, dropped := TargetQuery(c.caller, c.base)
		if got != c.want || dropped != c.dropped {
			t.Errorf("TargetQuery(%q, %q) = %q, %d; want %q, %d", c.caller, c.base, got, dropped, c.want, c.dropped)
		}
	}
}

func TestHasDotSegmentInEverySpelling(t *testing.T) {
	for _, p := range []string{
		"/a/../b", "/a/./b", "/..", "/.", "/a/..", "..", "/a/%2e%2e/b", "/a/%2E%2E/b", "/a/.%2e/b", "/a/%2e./b",
		"/a/%2e/b", "/a/%252e%252e/b", "/a/%25252e%25252e/b", "/a%2f..%2fb", "/a%2F..%2Fb", "/a%5c..%5cb", `/a\..\b`,
		"/a/%2e%2e%2fb", "/tenant-a/../../tenant-b/v1/chat/completions",
		// A path parameter: servlet containers (and gateways built on
		// them) drop ";..." from a segment before resolving it.
		"/a/..;/b", "/a/.;x=1/b", "/a/%2e%2e;/b", "/a/..%3b/b", "/a/..%3B/b",
	} {
		if !HasDotSegment(p) {
			t.Errorf("HasDotSegment(%q) = false", p)
		}
	}
	for _, p := range []string{
		"/v1/chat/completions", "/a/...", "/a/.b", "/a/b.", "/v1beta/models/gemini-2.5-flash:generateContent",
		"/a/%2e%2e%2e", "//v1/models", "/a/%zz/b", "/a/file.tar.gz", "",
		"/a/...;/b", "/a/x;..", "/a/;../b",
	} {
		if HasDotSegment(p) {
			t.Errorf("HasDotSegment(%q) = true", p)
		}
	}
}

func TestModelInPathIsAModelName(t *testing.T) {
	for _, c := range []struct {
		path, name string
		ok         bool
	}{
		{"/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", true},
		{"/v1/projects/p/locations/us/publishers/google/models/gemini-2.0-flash-001:streamGenerateContent", "gemini-2.0-flash-001", true},
		{"/v1beta/models/gemini-2.5-flash", "gemini-2.5-flash", true},
		{"/v1beta/models", "", true},
		{"/v1beta/files/abc", "", true},
		{"/v1beta/models/gemini-2.5-flash/../gemini-2.5-pro:generateContent", "", false},
		{"/v1beta/models/gemini-2.5-flash/%2e%2e/x:generateContent", "", false},
		{"/v1beta/models/..:generateContent", "", false},
		{"/v1beta/models/a%2fb:generateContent", "", false},
		{"/v1beta/models/gemini:generateContent/../x", "", false},
		{"/v1beta/models/:generateContent", "", false},
	} {
		name, ok := ModelInPath(c.path)
		if name != c.name || ok != c.ok {
			t.Errorf("ModelInPath(%q) = %q, %v; want %q, %v", c.path, name, ok, c.name, c.ok)
		}
	}
}

func TestReadModelIsOneReadingOfTheBody(t *testing.T) {
	for _, c := range []struct {
		body, name, problem string
	}{
		{`{"model":"gpt-4o","messages":[]}`, "gpt-4o", ""},
		{` { "messages":[{"model":"inner"}], "model" : "gpt-4o" } `, "gpt-4o", ""},
		{`{"model":"gpt\u002d4o"}`, "gpt-4o", ""},
		{`{"\u006dodel":"gpt-4o"}`, "gpt-4o", ""},
		{`{"x":1}`, "", ""},
		{`{}`, "", ""},
		{`{"a":[1,-2.5e+3,true,false,null,{"b":"c\n"}],"model":"m"}`, "m", ""},
		{`{"model":"gpt-4o","Model":"o1-pro"}`, "", `"Model" key`},
		{`{"MODEL":"o1-pro"}`, "", `"MODEL" key`},
		{`{"model":"a","model":"b"}`, "", "twice"},
		{`{"model":"gpt-4o","temperature":NaN}`, "", "not valid JSON"},
		{`{"model":"gpt-4o","messages":[`, "", "ends early"},
		{`{"model":"gpt-4o"} x`, "", "more follows"},
		{`["model"]`, "", "not a JSON object"},
		{``, "", "empty"},
		{`{"model":{"nested":1}}`, "", "not a string"},
		{`{"model":"` + strings.Repeat("m", 300) + `"}`, "", "longer than"},
		{`{"model":"m","n":01}`, "", "not valid JSON"},
		{`{"model":"m","n":1.}`, "", "not valid JSON"},
		{`{"model":"m","s":"\x"}`, "", "not valid JSON"},
		{"{\"model\":\"m\",\"s\":\"a\x01\"}", "", "not valid JSON"},
		{`{"model":"m",}`, "", "not valid JSON"},
		{`{"model":"m"`, "", "ends early"},
		{strings.Repeat("[", 5) + "1" + strings.Repeat("]", 5), "", "not a JSON object"},
		{`{"a":` + strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1) + `}`, "", "nests deeper"},
	} {
		bm, err := ReadModel(strings.NewReader(c.body))
		if err != nil {
			t.Fatalf("ReadModel(%.60q): %v", c.body, err)
		}
		if bm.Name != c.name || (c.problem == "") != (bm.Problem == "") || !strings.Contains(bm.Problem, c.problem) {
			t.Errorf("ReadModel(%.60q) = %+v; want name %q, problem %q", c.body, bm, c.name, c.problem)
		}
		if bm.Problem == "" && bm.Name != "" {
			if got := c.body[bm.Start:bm.End]; got[0] != '"' || got[len(got)-1] != '"' {
				t.Errorf("span of %q is %q", c.body, got)
			}
		}
	}
	// Read a byte at a time, or in one go: the same reading.
	body := `{"messages":[{"role":"user","content":"` + strings.Repeat("héllo \\\" ", 5000) + `"}],"model":"gpt-4o"}`
	a, _ := ReadModel(strings.NewReader(body))
	b, _ := ReadModel(iotest.OneByteReader(strings.NewReader(body)))
	if a != b || a.Name != "gpt-4o" || a.Problem != "" {
		t.Fatalf("whole %+v, byte by byte %+v", a, b)
	}
	// A failing reader is an error, not a problem.
	if _, err := ReadModel(iotest.ErrReader(io.ErrClosedPipe)); err != io.ErrClosedPipe {
		t.Fatalf("err %v", err)
	}
}

func TestReplaceRenamesWithoutCopying(t *testing.T) {
	body := `{"messages":[],"model":"gpt-4o","stream":true}`
	bm, _ := ReadModel(strings.NewReader(body))
	for _, r := range []func(io.Reader) io.Reader{
		func(r io.Reader) io.Reader { return r }, iotest.OneByteReader, iotest.HalfReader,
	} {
		got, err := io.ReadAll(r(Replace(io.NopCloser(strings.NewReader(body)), bm.Start, bm.End, []byte(`"openai/gpt-4o"`))))
		if err != nil || string(got) != `{"messages":[],"model":"openai/gpt-4o","stream":true}` {
			t.Fatalf("got %q, %v", got, err)
		}
	}
	// A source shorter than the span is an error, not a short body.
	_, err := io.ReadAll(Replace(io.NopCloser(strings.NewReader(body[:20])), bm.Start, bm.End, []byte(`"x"`)))
	if err != io.ErrUnexpectedEOF {
		t.Fatalf("err %v", err)
	}
}

// FuzzReadModel: ReadModel accepts exactly the JSON objects that Go's
// decoder accepts, and finds the model it finds.
func FuzzReadModel(f *testing.F) {
	for _, s := range []string{`{"model":"gpt-4o"}`, `{"model":1}`, `{"Model":"x"}`, `{"a":[1,2,{"model":"x"}],"model":"y"}`,
		`{"model":"a\u00e9"}`, `{"x":-0.5e-3}`, `{"model":"m"}garbage`, `{"x":"\ud800"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		bm, err := ReadModel(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]json.RawMessage
		validObject := json.Valid(body) && json.Unmarshal(body, &obj) == nil
		if bm.Problem == "" && !validObject {
			t.Fatalf("accepted %q, which Go's decoder refuses", body)
		}
		if !validObject {
			return
		}
		var folded []string
		for k := range obj {
			if strings.EqualFold(k, "model") {
				folded = append(folded, k)
			}
		}
		if bm.Problem != "" {
			if len(folded) == 0 && !bytes.Contains(body, []byte(`model`)) && !bytes.Contains(body, []byte(`\u`)) && !strings.Contains(bm.Problem, "deeper") {
				t.Fatalf("refused %q (%s), which Go reads without a model question", body, bm.Problem)
			}
			return
		}
		var m struct {
			Model string `json:"model"`
		}
		if json.Unmarshal(body, &m) == nil && m.Model != bm.Name {
			t.Fatalf("model %q, Go reads %q, in %q", bm.Name, m.Model, body)
		}
	})
}

func TestAsksForStreamReadsTheTopLevelStreamKey(t *testing.T) {
	for _, c := range []struct {
		body   string
		stream bool
	}{
		{`{"model":"m","stream":true}`, true},
		{`{"stream" : true, "model":"m"}`, true},
		{"{\n\t\"stream\":\ttrue}", true},
		{`{"model":"m","stream":false}`, false},
		{`{"model":"m"}`, false},
		{`{"model":"m","stream":"true"}`, false},
		{`{"model":"m","streamed":true}`, false},
		{`{"model":"m","stream_options":{"include_usage":true}}`, false},
		{`{"messages":[{"stream":true}]}`, false},
		{`{"stream":true,"stream":false}`, false},
		{`{"stream":false,"stream":true}`, true},
		{`{"stream":true,"model":NaN}`, false}, // not JSON: it asks for nothing
		{`{"stream":true`, false},
		{`[{"stream":true}]`, false},
		{``, false},
	} {
		if got := AsksForStream([]byte(c.body)); got != c.stream {
			t.Errorf("AsksForStream(%s) = %v, want %v", c.body, got, c.stream)
		}
	}
}

// AsksForStream reads a body where it lies: the proxy asks it of every
// request from an HTTP/1.x client, and a reading that copied the body, or
// decoded its model, once cost 8,400 instructions a request.
func TestAsksForStreamAllocatesNothing(t *testing.T) {
	body := []byte(`{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"` + strings.Repeat("hello ", 1000) + `"}]}`)
	var stream bool
	if n := testing.AllocsPerRun(100, func() { stream = AsksForStream(body) }); n != 0 {
		t.Fatalf("%v allocations per reading", n)
	}
	if !stream {
		t.Fatal("the body asks for a stream")
	}
}
