// Package mockllm is a fault-injecting mock LLM provider. It speaks the
// OpenAI chat completions, Anthropic messages and Gemini generateContent
// wire formats, JSON and SSE streaming, with deterministic canned replies,
// and answers each request as a Script of faults says: error statuses with
// Retry-After and friends, quota errors, connection resets, stalls, an
// error as the first stream event, a stream cut after N events or after N
// bytes (inside an event, a JSON string or a UTF-8 character), a slow
// stream.
//
// # Replies
//
// Every reply is ReplyText, streamed word by word; a request with the
// header "Mock-Reply: utf8" (ReplyHeader) gets ReplyTextUTF8, whose
// multi-byte characters let a test sweep a cut across UTF-8 boundaries.
//
// # Continuation
//
// The mock is a model that always writes the same reply. A request that
// hands it the start of that reply as the assistant's turn, in a form its
// API continues, gets the rest: streamed as a well-formed stream of its own
// (its own message_start or role chunk, ids, stop events, [DONE]), or as a
// JSON reply. The forms it recognises:
//
//   - Anthropic messages: a final assistant message (native prefill). Its
//     text may not end in whitespace (400, as from Anthropic); the caller
//     is taken to have seen the whitespace that follows it in the reply
//     (see Server.RepeatTrimmed).
//   - OpenAI chat completions, prefix form (DeepSeek, Mistral): a final
//     assistant message with "prefix": true.
//   - OpenAI chat completions, vLLM form: a final assistant message, with
//     "continue_final_message": true and "add_generation_prompt": false in
//     the body (400 if add_generation_prompt is absent or true, as vLLM's
//     chat template refuses both).
//   - OpenAI chat completions, instruction form: an assistant message, then
//     a final user message whose text contains "continue" (in any case).
//
// A final OpenAI assistant message in none of these forms is history, as on
// OpenAI, and gets the whole reply; a Gemini request is never a
// continuation. An assistant text that is not the start of the reply is
// answered 400 in the API's error shape, saying where it departs from the
// reply, so a wrong seam shows instead of a plausible reply. Server.Overlap
// restarts a continuation some bytes before the seam. A continuation is a
// request like any other: it draws its fault from the Script, and a Cut or
// Drop cuts it too.
//
// It serves the llmretry command's mock and demo, and the project's tests.
package mockllm

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Server is an http.Handler that plays a Script.
type Server struct {
	script Script
	seed   uint64
	mu     sync.Mutex
	n      int
	rng    *rand.Rand
	hits   atomic.Int64
	served [Cut + 1]atomic.Int64
	byKey  map[string][]Fault // what each draw key was served, in order
	// perKey are scripts for requests made with one API key.
	perKey map[string]*keyScript
	// events are streams already marshalled, by what they carry: the same
	// few answers are streamed again and again.
	evMu   sync.Mutex
	events map[eventsKey][]string

	// Overlap makes a continuation restart this many bytes before the
	// seam, as models often restart a sentence: clamped to the text
	// delivered, and moved back to the start of a UTF-8 character. Zero
	// (the default) continues exactly at the seam. Set it before serving.
	Overlap int
	// RepeatTrimmed moves the seam of an Anthropic continuation from the
	// end of what the caller saw to the end of the prefill, so the
	// continuation opens with the whitespace the prefill had to drop, as
	// Claude's next token usually does; Overlap then counts back from the
	// end of the prefill. Off (the default), the mock takes the caller to
	// have seen the whitespace that follows the prefill in the reply and
	// continues after it. Set it before serving.
	RepeatTrimmed bool
}

// keyScript is the script of one API key, and how far it has got.
type keyScript struct {
	script Script
	n      int
	hits   int
}

// DrawKeyHeader and AttemptHeader make a mix's draws independent of the
// order requests arrive in: a request that names its key (any string, such
// as the number of a logical request) and its attempt number (as
// llmretry.WithAttemptHeader sends it) draws its Fault from the seed, the
// key and the attempt alone. So the same seed gives every logical request
// the same faults, however many run at once.
const (
	DrawKeyHeader = "Mock-Draw-Key"
	AttemptHeader = "Mock-Attempt"
)

// New returns a Server playing script; seed fixes the draws of a mix.
func New(script Script, seed uint64) *Server {
	return &Server{script: script, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), byKey: map[string][]Fault{}}
}

// ForKey makes requests that carry apiKey (as "Authorization: Bearer",
// x-api-key, api-key, x-goog-api-key or ?key=) play script instead of the
// server's own, from its first step: so one mock can be a provider where
// one key is rate-limited or refused and another is fine. Call it before
// serving.
func (s *Server) ForKey(apiKey string, script Script) *Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perKey == nil {
		s.perKey = map[string]*keyScript{}
	}
	s.perKey[apiKey] = &keyScript{script: script}
	return s
}

// HitsFor is how many requests carried apiKey.
func (s *Server) HitsFor(apiKey string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ks := s.perKey[apiKey]; ks != nil {
		return ks.hits
	}
	return 0
}

// apiKeyOf is the API key a request carries, wherever its SDK puts it.
func apiKeyOf(r *http.Request) string {
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return v
	}
	for _, h := range []string{"X-Api-Key", "Api-Key", "X-Goog-Api-Key"} {
		if v := r.Header.Get(h); v != "" {
			return v
		}
	}
	return r.URL.Query().Get("key")
}

// FaultsFor returns the Faults served so far to requests with draw key
// key, one for each attempt, in the order they were served.
func (s *Server) FaultsFor(key string) []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Fault(nil), s.byKey[key]...)
}

// Hits is how many requests the server has received.
func (s *Server) Hits() int { return int(s.hits.Load()) }

// Served is how many requests got a Fault of kind k.
func (s *Server) Served(k Kind) int { return int(s.served[k].Load()) }

// maxRequestBody bounds what the mock reads of a request.
const maxRequestBody = 32 << 20

// next is the Fault for the next request, with any delay range drawn: from
// the shared sequence, or, for a request with a draw key, from the seed,
// the key and the attempt.
func (s *Server) next(r *http.Request) Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	draw := s.rng.Float64
	if ks := s.perKey[apiKeyOf(r)]; ks != nil {
		ks.hits++
		f := ks.script.pick(ks.n, draw())
		ks.n++
		return f
	}
	key := r.Header.Get(DrawKeyHeader)
	if key != "" {
		x := keyedSeed(s.seed, key, r.Header.Get(AttemptHeader))
		draw = func() float64 {
			x = splitmix(x)
			return float64(x>>11) / (1 << 53)
		}
	}
	f := s.script.pick(s.n, draw())
	if f.MaxDelay > f.Delay { // a range: draw this request's wait
		f.Delay += time.Duration(draw() * float64(f.MaxDelay-f.Delay))
		f.MaxDelay = 0
	}
	s.n++
	if key != "" {
		s.byKey[key] = append(s.byKey[key], f)
	}
	return f
}

// keyedSeed mixes the seed, a draw key and an attempt into one number.
func keyedSeed(seed uint64, key, attempt string) uint64 {
	x := splitmix(seed)
	for _, part := range []string{key, "\x00", attempt} {
		for i := 0; i < len(part); i++ {
			x = splitmix(x ^ uint64(part[i]))
		}
	}
	return x
}

// splitmix is SplitMix64's step: every input bit moves every output bit.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	api := apiOf(r)
	var req chatRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody))
	if err != nil {
		return // the client went away
	}
	if api == Unknown || r.Method != http.MethodPost {
		writeJSON(w, http.StatusNotFound, errorBody(OpenAI, http.StatusNotFound), nil)
		return
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody(api, http.StatusBadRequest), nil)
		return
	}
	if api == Gemini {
		req.Stream = r.URL.Query().Get("alt") == "sse" || containsStream(r.URL.Path)
	}
	if req.Model == "" {
		req.Model = "mock-model"
	}
	reply, ok := replyFor(r)
	if !ok {
		writeJSON(w, http.StatusBadRequest, errorMessage(api, http.StatusBadRequest, fmt.Sprintf(
			"mock provider: %s: %q is not a reply (want %q or %q)", ReplyHeader, r.Header.Get(ReplyHeader), ReplyASCII, ReplyUTF8)), nil)
		return
	}
	a := whole(reply)
	cont, err := continuationOf(api, req, reply)
	if err != nil { // checked before a fault is drawn, as a malformed body is
		writeJSON(w, http.StatusBadRequest, errorMessage(api, http.StatusBadRequest, err.Error()), nil)
		return
	}
	if cont.form != "" {
		a = answer{text: cont.rest(reply, s.Overlap, s.RepeatTrimmed), continued: true,
			prompt: 5 + len(chunks(cont.delivered))}
	}
	f := s.next(r)
	s.served[f.Kind].Add(1)
	switch f.Kind {
	case Status:
		writeJSON(w, f.Code, errorBody(api, f.Code), f.Header)
	case Quota:
		writeJSON(w, http.StatusTooManyRequests, quotaBody(api), nil)
	case RetryInfo:
		writeJSON(w, http.StatusTooManyRequests, retryInfoBody(protoDuration(f.Delay)), nil)
	case Reset:
		resetConn(w)
	case Stall:
		if !pause(r, f.Delay) {
			return
		}
		s.reply(w, r, api, req.Model, req.Stream, Fault{}, a)
	case FirstEventError:
		startStream(w)
		_, _ = io.WriteString(w, firstEventError(api))
		flush(w)
	default:
		s.reply(w, r, api, req.Model, req.Stream, f, a)
	}
}

func containsStream(p string) bool { return strings.Contains(p, ":streamGenerateContent") }

// reply answers normally, shaped by a Drop, Cut or Slow fault.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, api API, model string, stream bool, f Fault, a answer) {
	if !stream {
		writeJSON(w, http.StatusOK, jsonReply(api, model, a), nil)
		return
	}
	startStream(w)
	left := f.Bytes // for a Cut: what may still be sent
	for i, ev := range s.streamEvents(api, model, a) {
		if f.Kind == Drop && i == f.Events {
			panic(http.ErrAbortHandler) // cut the connection mid-stream
		}
		if f.Kind == Slow && i > 0 && !pause(r, f.Delay) {
			return
		}
		if f.Kind == Cut && len(ev) >= left {
			_, _ = io.WriteString(w, ev[:left])
			flush(w)
			panic(http.ErrAbortHandler) // cut after exactly f.Bytes bytes
		}
		left -= len(ev)
		if _, err := io.WriteString(w, ev); err != nil {
			return
		}
		flush(w)
	}
	if f.Kind == Cut { // past the end: the stream is whole, its end is not
		panic(http.ErrAbortHandler)
	}
}

type eventsKey struct {
	api   API
	model string
	a     answer
}

// maxEventsCached bounds the streams a Server keeps marshalled.
const maxEventsCached = 64

// streamEvents is streamEvents, marshalled once per answer. The slice is
// shared: read it, never change it.
func (s *Server) streamEvents(api API, model string, a answer) []string {
	k := eventsKey{api, model, a}
	s.evMu.Lock()
	ev, ok := s.events[k]
	s.evMu.Unlock()
	if ok {
		return ev
	}
	ev = streamEvents(api, model, a) // outside the lock: requests run at once
	s.evMu.Lock()
	defer s.evMu.Unlock()
	if len(s.events) >= maxEventsCached || s.events == nil {
		s.events = map[eventsKey][]string{}
	}
	s.events[k] = ev
	return ev
}

// pause waits d, or less if the client goes away (then it reports false).
func pause(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func startStream(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flush(w)
}

func flush(w http.ResponseWriter) {
	_ = http.NewResponseController(w).Flush()
}

func writeJSON(w http.ResponseWriter, code int, body string, h map[string]string) {
	for k, v := range h {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}

// resetConn closes the connection with a TCP RST and no response.
func resetConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // HTTP/2: abort the stream instead
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

func protoDuration(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}
