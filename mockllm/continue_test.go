package mockllm_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/llmretry/llmretry/mockllm"
)

// A continuation form: how a request hands the mock the text delivered so
// far, as the library sends it.
type form struct {
	name, api string
	body      func(delivered string, stream bool) map[string]any
}

var user = map[string]any{"role": "user", "content": "hi"}

var forms = []form{
	{"anthropic prefill", "anthropic", func(d string, stream bool) map[string]any {
		return map[string]any{"model": "claude", "stream": stream, "max_tokens": 100, "messages": []any{user,
			map[string]any{"role": "assistant", "content": strings.TrimRightFunc(d, unicode.IsSpace)}}}
	}},
	{"openai instruction", "openai", func(d string, stream bool) map[string]any {
		return map[string]any{"model": "gpt-4o", "stream": stream, "messages": []any{user,
			map[string]any{"role": "assistant", "content": d},
			map[string]any{"role": "user", "content": "Continue exactly where you stopped, without repeating anything."}}}
	}},
	{"openai prefix", "openai", func(d string, stream bool) map[string]any {
		return map[string]any{"model": "deepseek-chat", "stream": stream, "messages": []any{user,
			map[string]any{"role": "assistant", "content": d, "prefix": true}}}
	}},
	{"openai vllm", "openai", func(d string, stream bool) map[string]any {
		return map[string]any{"model": "qwen", "stream": stream, "continue_final_message": true, "add_generation_prompt": false,
			"messages": []any{user, map[string]any{"role": "assistant", "content": d}}}
	}},
}

var replies = map[string]string{mockllm.ReplyASCII: mockllm.ReplyText, mockllm.ReplyUTF8: mockllm.ReplyTextUTF8}

// post builds a request to api's path with body as JSON, asking for reply.
func post(t *testing.T, api, reply string, body any) *http.Request {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	path := map[string]string{"openai": "/v1/chat/completions", "anthropic": "/v1/messages",
		"gemini": "/v1beta/models/gemini:streamGenerateContent?alt=sse"}[api]
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(string(b)))
	if reply != "" {
		r.Header.Set(mockllm.ReplyHeader, reply)
	}
	return r
}

// serve runs one request through h in-process; aborted says the handler
// cut the connection (http.ErrAbortHandler).
func serve(t *testing.T, h http.Handler, r *http.Request) (rec *httptest.ResponseRecorder, aborted bool) {
	t.Helper()
	rec = httptest.NewRecorder()
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			aborted = true
		}
	}()
	h.ServeHTTP(rec, r)
	return rec, false
}

// wantRest is what a continuation should serve: reply from seam, or from
// overlap bytes before it, at the start of a character. It finds the start
// by asking which suffixes are valid UTF-8, not as the mock does.
func wantRest(reply string, seam, overlap int) string {
	start := max(seam-overlap, 0)
	for !utf8.ValidString(reply[start:]) {
		start--
	}
	return reply[start:]
}

// boundaries are the byte offsets in s at which a character starts, and
// len(s).
func boundaries(s string) []int {
	var out []int
	for i := range s {
		out = append(out, i)
	}
	return append(out, len(s))
}

// checkContinuedStream checks that a continuation's stream is well formed
// and its own: one opening with the continuation's ids, one end.
func checkContinuedStream(t *testing.T, api, body string) {
	t.Helper()
	var names []string
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 1<<20)
	var chunks []map[string]any
	done := 0
	for sc.Scan() {
		line := sc.Text()
		if n, ok := strings.CutPrefix(line, "event: "); ok {
			names = append(names, n)
		}
		if d, ok := strings.CutPrefix(line, "data: "); ok {
			if d == "[DONE]" {
				done++
				continue
			}
			if done > 0 {
				t.Fatalf("%s: data after [DONE]: %q", api, body)
			}
			var v map[string]any
			if err := json.Unmarshal([]byte(d), &v); err != nil {
				t.Fatalf("%s: %v in %q", api, err, d)
			}
			chunks = append(chunks, v)
		}
	}
	switch api {
	case "anthropic":
		got := strings.Join(names, ",")
		want := "message_start,content_block_start," + strings.Repeat("content_block_delta,", len(names)-5) +
			"content_block_stop,message_delta,message_stop"
		if got != want {
			t.Fatalf("anthropic events %s, want %s", got, want)
		}
		if id := chunks[0]["message"].(map[string]any)["id"]; id != "msg_mock_continued" {
			t.Fatalf("anthropic continuation id %v", id)
		}
	case "openai":
		if done != 1 {
			t.Fatalf("openai: %d [DONE]s", done)
		}
		roles, finishes := 0, 0
		for i, c := range chunks {
			if c["id"] != "chatcmpl-mock-continued" || c["created"] != float64(1700000060) {
				t.Fatalf("openai chunk %d: id %v created %v", i, c["id"], c["created"])
			}
			ch := c["choices"].([]any)[0].(map[string]any)
			if _, ok := ch["delta"].(map[string]any)["role"]; ok {
				roles++
				if i != 0 {
					t.Fatalf("openai: role in chunk %d", i)
				}
			}
			if ch["finish_reason"] != nil {
				finishes++
				if i != len(chunks)-1 {
					t.Fatalf("openai: finish_reason in chunk %d of %d", i, len(chunks))
				}
			}
		}
		if roles != 1 || finishes != 1 {
			t.Fatalf("openai: %d role chunks, %d finish reasons", roles, finishes)
		}
	}
}

// A continuation in each form, cut at every character boundary of each
// reply, gets exactly the rest of the reply (or, with an overlap, the rest
// from that many bytes earlier), as a well-formed stream or JSON reply of
// its own.
func TestContinuationServesTheRest(t *testing.T) {
	for name, reply := range replies {
		for _, fm := range forms {
			for _, repeat := range []bool{false, true} {
				if repeat && fm.api != "anthropic" {
					continue // RepeatTrimmed is about a prefill's whitespace
				}
				for _, overlap := range []int{0, 1, 5, 1000} {
					m := mockllm.New(mockllm.Script{}, 1)
					m.Overlap, m.RepeatTrimmed = overlap, repeat
					for _, k := range boundaries(reply)[1:] {
						delivered := reply[:k]
						seam := k
						if fm.api == "anthropic" {
							trimmed := strings.TrimRightFunc(delivered, unicode.IsSpace)
							if trimmed == delivered && k < len(reply) && reply[k] == ' ' {
								continue // taken to have seen the space: TestPrefillSeamIsAfterTheSpace
							}
							if repeat {
								seam = len(trimmed)
							}
						}
						want := wantRest(reply, seam, overlap)
						for _, stream := range []bool{false, true} {
							if !stream && overlap > 0 {
								continue // the JSON reply's text is the stream's: proven at overlap 0
							}
							rec, aborted := serve(t, m, post(t, fm.api, name, fm.body(delivered, stream)))
							got := text(t, fm.api, stream, rec.Body.String())
							if aborted || rec.Code != 200 || got != want {
								t.Fatalf("%s reply, %s, overlap %d, repeat %v, delivered %q, stream %v: status %d, got %q, want %q",
									name, fm.name, overlap, repeat, delivered, stream, rec.Code, got, want)
							}
							if stream && overlap == 0 { // the shape does not depend on the overlap
								checkContinuedStream(t, fm.api, rec.Body.String())
							} else if id := map[string]string{"anthropic": `"id":"msg_mock_continued"`, "openai": `"id":"chatcmpl-mock-continued"`}[fm.api]; !strings.Contains(rec.Body.String(), id) {
								t.Fatalf("%s: the JSON reply does not name itself a continuation (%s): %s", fm.name, id, rec.Body)
							}
						}
					}
				}
			}
		}
	}
}

// The prefill cannot end in whitespace, so a caller that saw "Hello! "
// sends "Hello!". The mock takes it to have seen the space and goes on
// after it; with RepeatTrimmed it goes on from the end of the prefill, so
// the space comes again, as from Claude.
func TestPrefillSeamIsAfterTheSpace(t *testing.T) {
	prefill := forms[0]
	for _, c := range []struct {
		repeat  bool
		overlap int
		want    string
	}{
		{false, 0, "This is a deterministic reply from the llmretry mock provider, streamed word by word."},
		{true, 0, " This is a deterministic reply from the llmretry mock provider, streamed word by word."},
		{false, 2, "! This is a deterministic reply from the llmretry mock provider, streamed word by word."},
		{true, 2, "o! This is a deterministic reply from the llmretry mock provider, streamed word by word."},
	} {
		m := mockllm.New(mockllm.Script{}, 1)
		m.RepeatTrimmed, m.Overlap = c.repeat, c.overlap
		for _, delivered := range []string{"Hello! ", "Hello!"} {
			rec, _ := serve(t, m, post(t, "anthropic", "", prefill.body(delivered, true)))
			if got := text(t, "anthropic", true, rec.Body.String()); rec.Code != 200 || got != c.want {
				t.Fatalf("repeat %v overlap %d delivered %q: status %d, got %q, want %q", c.repeat, c.overlap, delivered, rec.Code, got, c.want)
			}
		}
	}
}

// An assistant text that is not where the reply begins is a wrong seam:
// 400 in the API's error shape, saying where it departs, and no fault is
// drawn for it.
func TestWrongSeamIs400(t *testing.T) {
	for name, reply := range replies {
		for _, fm := range forms {
			for _, delivered := range []string{"Goodbye", reply[:len(reply)/2] + "x", reply + " and more"} {
				s, _ := mockllm.ParseFaults("503")
				m := mockllm.New(s, 1)
				rec, _ := serve(t, m, post(t, fm.api, name, fm.body(delivered, true)))
				var e struct {
					Type  string `json:"type"`
					Error struct {
						Type    string `json:"type"`
						Message string `json:"message"`
					} `json:"error"`
				}
				err := json.Unmarshal(rec.Body.Bytes(), &e)
				if rec.Code != 400 || err != nil || e.Error.Type != "invalid_request_error" ||
					!strings.Contains(e.Error.Message, "departs from it at byte") ||
					fm.api == "anthropic" && e.Type != "error" {
					t.Fatalf("%s reply, %s, %q: status %d, body %s", name, fm.name, delivered, rec.Code, rec.Body)
				}
				// The 503 is still the next request's.
				if rec, _ := serve(t, m, post(t, fm.api, name, fm.body(reply[:2], false))); rec.Code != 503 {
					t.Fatalf("%s: after a wrong seam the next request got %d, want the script's 503", fm.name, rec.Code)
				}
			}
		}
	}
}

// Requests malformed as continuations are refused as their providers
// refuse them; requests that only look like continuations get the whole
// reply.
func TestContinuationEdges(t *testing.T) {
	m := mockllm.New(mockllm.Script{}, 1)
	asst := func(content any) map[string]any { return map[string]any{"role": "assistant", "content": content} }
	for _, c := range []struct {
		name, api, reply string
		body             map[string]any
		code             int
		want             string // the text, for a 200
	}{
		{"prefill ending in a space", "anthropic", "", map[string]any{"messages": []any{user, asst("Hello! ")}}, 400, ""},
		{"prefill as text blocks", "anthropic", "", map[string]any{"messages": []any{user,
			asst([]any{map[string]any{"type": "text", "text": "Hello! This is"}})}}, 200, mockllm.ReplyText[len("Hello! This is "):]},
		{"empty prefill", "anthropic", "", map[string]any{"messages": []any{user, asst("")}}, 200, mockllm.ReplyText},
		{"vllm without add_generation_prompt", "openai", "", map[string]any{"continue_final_message": true,
			"messages": []any{user, asst("Hello!")}}, 400, ""},
		{"vllm with add_generation_prompt true", "openai", "", map[string]any{"continue_final_message": true,
			"add_generation_prompt": true, "messages": []any{user, asst("Hello!")}}, 400, ""},
		{"vllm ending with a user message", "openai", "", map[string]any{"continue_final_message": true,
			"add_generation_prompt": false, "messages": []any{user}}, 400, ""},
		{"prefix on a user message", "openai", "", map[string]any{"messages": []any{
			map[string]any{"role": "user", "content": "hi", "prefix": true}}}, 400, ""},
		{"prefix as content parts", "openai", "", map[string]any{"messages": []any{user,
			map[string]any{"role": "assistant", "prefix": true, "content": []any{map[string]any{"type": "text", "text": "Hello! "}}}}}, 200,
			mockllm.ReplyText[len("Hello! "):]},
		{"final assistant message alone (history)", "openai", "", map[string]any{"messages": []any{user, asst("Goodbye")}}, 200, mockllm.ReplyText},
		{"assistant then a user that does not ask to continue", "openai", "", map[string]any{"messages": []any{user,
			asst("Goodbye"), map[string]any{"role": "user", "content": "thanks"}}}, 200, mockllm.ReplyText},
		{"instruction in capitals", "openai", mockllm.ReplyUTF8, map[string]any{"messages": []any{user,
			asst("Grüße 🚀 — a déjà"), map[string]any{"role": "user", "content": "CONTINUE."}}}, 200,
			mockllm.ReplyTextUTF8[len("Grüße 🚀 — a déjà"):]},
		{"gemini is never a continuation", "gemini", "", map[string]any{"contents": []any{}, "messages": []any{user, asst("Goodbye")}}, 200, mockllm.ReplyText},
		{"an unknown reply", "openai", "klingon", map[string]any{"messages": []any{user}}, 400, ""},
	} {
		c.body["stream"] = true
		rec, _ := serve(t, m, post(t, c.api, c.reply, c.body))
		if rec.Code != c.code {
			t.Errorf("%s: status %d, want %d: %s", c.name, rec.Code, c.code, rec.Body)
			continue
		}
		if c.code == 200 {
			if got := text(t, c.api, true, rec.Body.String()); got != c.want {
				t.Errorf("%s: got %q, want %q", c.name, got, c.want)
			}
		}
	}
}

// A continuation draws its fault like any request: a cut cuts it, and
// what arrives is a prefix of its whole stream.
func TestContinuationIsCutToo(t *testing.T) {
	body := forms[0].body("Hello! This is a ", true)
	whole, _ := serve(t, mockllm.New(mockllm.Script{}, 1), post(t, "anthropic", "", body))
	s, _ := mockllm.ParseFaults("cut=300")
	rec, aborted := serve(t, mockllm.New(s, 1), post(t, "anthropic", "", body))
	if !aborted || rec.Body.String() != whole.Body.String()[:300] {
		t.Fatalf("aborted %v, got %q, want the first 300 bytes of %q", aborted, rec.Body, whole.Body)
	}
}

// The UTF-8 reply has 2-, 3- and 4-byte characters, spread through it,
// and travels raw (not \u-escaped) in every API's stream, so a byte cut
// can fall inside one.
func TestUTF8Reply(t *testing.T) {
	r := mockllm.ReplyTextUTF8
	if !utf8.ValidString(r) {
		t.Fatal("not valid UTF-8")
	}
	third := map[int]map[int]bool{} // rune width → which thirds of the text have one
	for i, c := range r {
		w := utf8.RuneLen(c)
		if third[w] == nil {
			third[w] = map[int]bool{}
		}
		third[w][i*3/len(r)] = true
		if unicode.IsSpace(c) && c != ' ' || strings.Contains(r, "  ") {
			t.Fatalf("whitespace other than single spaces at %d", i)
		}
	}
	for _, w := range []int{2, 3, 4} {
		if len(third[w]) != 3 {
			t.Errorf("%d-byte characters in thirds %v, want in all three", w, third[w])
		}
	}
	for _, api := range []string{"openai", "anthropic", "gemini"} {
		rec, _ := serve(t, mockllm.New(mockllm.Script{}, 1), post(t, api, mockllm.ReplyUTF8, map[string]any{"stream": true}))
		body := rec.Body.String()
		if got := text(t, api, true, body); got != r {
			t.Fatalf("%s: got %q", api, got)
		}
		for _, ch := range []string{"ü", "決", "🚀", "🎉"} {
			if !strings.Contains(body, ch) {
				t.Fatalf("%s: %q is not raw in the stream", api, ch)
			}
		}
		if n := strings.Count(body, "data: "); n < 20 {
			t.Fatalf("%s: %d events, want many", api, n)
		}
	}
}

// Mix draws stay deterministic with cuts, continuations and both replies
// in the sequence: the same seed serves the same bytes.
func TestMixWithContinuationsIsDeterministic(t *testing.T) {
	s, err := mockllm.ParseFaults("cut=57@30%,503@20%,drop=2@10%")
	if err != nil {
		t.Fatal(err)
	}
	run := func() string {
		m := mockllm.New(s, 42)
		m.Overlap = 3
		var out strings.Builder
		for i := range 60 {
			fm := forms[i%len(forms)]
			reply := []string{mockllm.ReplyASCII, mockllm.ReplyUTF8}[i/len(forms)%2]
			text := replies[reply]
			body := fm.body(text[:boundaries(text)[5+i]], i%3 != 0)
			if i%5 == 0 {
				body = map[string]any{"stream": true, "messages": []any{user}} // no continuation
			}
			rec, aborted := serve(t, m, post(t, fm.api, reply, body))
			fmt.Fprintf(&out, "%d %d %v %q\n", i, rec.Code, aborted, rec.Body)
		}
		return out.String()
	}
	a, b := run(), run()
	if a != b {
		t.Fatalf("the same seed served differently:\n%s\n%s", a, b)
	}
	for _, want := range []string{" 503 ", " true ", "msg_mock_continued", "chatcmpl-mock-continued", "決"} {
		if !strings.Contains(a, want) {
			t.Fatalf("the mix never served %q:\n%s", want, a)
		}
	}
}
