package integration

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicopt "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaiopt "github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
)

// Issue 21, part 1: a stream is committed at its first output. The real
// SDKs, their own retries off, against servers that fail after a stream's
// opening events: each failure there is retried, and the SDK accumulates
// the second attempt's message, from bytes that are exactly the second
// attempt's.

// Anthropic events.
func aEvent(name, data string) string { return "event: " + name + "\ndata: " + data + "\n\n" }

func aMessageStart(id string) string {
	return aEvent("message_start", `{"type":"message_start","message":{"id":"`+id+`","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}`)
}

var (
	aEmptyBlock = aEvent("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`)
	aPing       = aEvent("ping", `{"type": "ping"}`)
	aOverloaded = aEvent("error", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
)

func aDelta(text string) string {
	return aEvent("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"`+text+`"}}`)
}

// aStream is a whole Anthropic stream whose message is id, saying words.
func aStream(id string, words ...string) string {
	s := aMessageStart(id) + aEmptyBlock + aPing
	for _, w := range words {
		s += aDelta(w)
	}
	return s + aEvent("content_block_stop", `{"type":"content_block_stop","index":0}`) +
		aEvent("message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}`) +
		aEvent("message_stop", `{"type":"message_stop"}`)
}

// OpenAI chat chunks.
func oChunk(id, delta, finish string) string {
	return `data: {"id":"` + id + `","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":[{"index":0,"delta":` + delta + `,"finish_reason":` + finish + `}]}` + "\n\n"
}

func oRole(id string) string { return oChunk(id, `{"role":"assistant","content":""}`, "null") }

func oStream(id string, words ...string) string {
	s := oRole(id)
	for _, w := range words {
		s += oChunk(id, `{"content":"`+w+`"}`, "null")
	}
	return s + oChunk(id, `{}`, `"stop"`) + "data: [DONE]\n\n"
}

const oOpenRouterError = `data: {"error":{"code":502,"message":"Provider returned error"}}` + "\n\n"

// Responses API events.
func rEvent(name, data string) string { return "event: " + name + "\ndata: " + data + "\n\n" }

func rCreated(id string) string {
	return rEvent("response.created", `{"type":"response.created","sequence_number":0,"response":{"id":"`+id+`","object":"response","created_at":1700000000,"status":"in_progress","model":"gpt-4o","output":[]}}`)
}

func rStream(id string, words ...string) string {
	s := rCreated(id) + rEvent("response.in_progress", `{"type":"response.in_progress","sequence_number":1,"response":{"id":"`+id+`","object":"response","status":"in_progress","output":[]}}`) +
		rEvent("response.output_item.added", `{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}`)
	text := strings.Join(words, "")
	for _, w := range words {
		s += rEvent("response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"`+w+`"}`)
	}
	return s + rEvent("response.completed", `{"type":"response.completed","sequence_number":9,"response":{"id":"`+id+`","object":"response","created_at":1700000000,"status":"completed","model":"gpt-4o","output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","text":"`+text+`","annotations":[]}]}]}}`)
}

func rFailed(id string) string {
	return rEvent("response.failed", `{"type":"response.failed","sequence_number":2,"response":{"id":"`+id+`","object":"response","status":"failed","error":{"code":"server_error","message":"The server had an error while processing your request."},"output":[]}}`)
}

// attempts is a server that answers its n-th request with the n-th script:
// its parts written and flushed in turn, then, with cut, the connection
// cut.
type attempts struct {
	*httptest.Server
	hits atomic.Int32
}

type script struct {
	parts []string
	cut   bool
}

func send(parts ...string) script    { return script{parts: parts} }
func sendCut(parts ...string) script { return script{parts: parts, cut: true} }

func newAttempts(t *testing.T, scripts ...script) *attempts {
	t.Helper()
	a := &attempts{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n := int(a.hits.Add(1))
		s := scripts[min(n, len(scripts))-1]
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		for _, p := range s.parts {
			_, _ = io.WriteString(w, p)
			w.(http.Flusher).Flush()
		}
		if s.cut {
			panic(http.ErrAbortHandler)
		}
	}))
	t.Cleanup(a.Close)
	return a
}

// recorder keeps the bytes the SDK read of each body it got, to show that
// they are exactly one attempt's.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	read bytes.Buffer
	// handedOver is when RoundTrip returned, on the Transport's clock.
	handedOver time.Time
	clock      llmretry.Clock
	returned   chan struct{} // closed when RoundTrip returns, if set
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if r.clock != nil {
		r.mu.Lock()
		r.handedOver = r.clock.Now()
		r.mu.Unlock()
	}
	if r.returned != nil {
		close(r.returned)
	}
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.TeeReader(resp.Body, lockedWriter{r}), resp.Body}
	return resp, nil
}

type lockedWriter struct{ r *recorder }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	return w.r.read.Write(p)
}

func (r *recorder) bytes() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.read.String()
}

// streamClient is an http.Client through llmretry, recorded.
func streamClient(t *testing.T, opts ...llmretry.Option) (*http.Client, *recorder) {
	t.Helper()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	clk := llmretrytest.NewClock(time.Now())
	all := append([]llmretry.Option{llmretry.WithClock(clk), llmretry.WithRand(func() float64 { return 0 })}, opts...)
	rec := &recorder{next: llmretry.NewTransport(base, all...)}
	return &http.Client{Transport: rec}, rec
}

// anthropicMessage streams one message with anthropic-sdk-go and returns
// what it accumulated.
func anthropicMessage(t *testing.T, hc *http.Client, base string, extra ...anthropicopt.RequestOption) (anthropic.Message, error) {
	c := anthropic.NewClient(append([]anthropicopt.RequestOption{anthropicopt.WithBaseURL(base), anthropicopt.WithAPIKey("sk-ant-test"),
		anthropicopt.WithHTTPClient(hc), anthropicopt.WithMaxRetries(0)}, extra...)...)
	s := c.Messages.NewStreaming(ctx(t), anthropicParams())
	defer s.Close()
	var msg anthropic.Message
	for s.Next() {
		if err := msg.Accumulate(s.Current()); err != nil {
			return msg, err
		}
	}
	return msg, s.Err()
}

func messageText(m anthropic.Message) string {
	var b strings.Builder
	for _, blk := range m.Content {
		b.WriteString(blk.Text)
	}
	return b.String()
}

func TestSDKCommitPoint_AnthropicFailuresBeforeTheFirstOutputAreRetried(t *testing.T) {
	second := aStream("msg_second", "Hello", ", world")
	cases := []struct {
		name  string
		first script
	}{
		{"overload after message_start", send(aMessageStart("msg_first"), aOverloaded)},
		{"overload after an empty content_block_start", send(aMessageStart("msg_first"), aEmptyBlock, aPing, aOverloaded)},
		{"cut after message_start", sendCut(aMessageStart("msg_first"))},
		{"cut after an empty content_block_start", sendCut(aMessageStart("msg_first"), aEmptyBlock, aPing)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newAttempts(t, tc.first, send(second))
			hc, rec := streamClient(t)
			msg, err := anthropicMessage(t, hc, srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			if srv.hits.Load() != 2 || msg.ID != "msg_second" || messageText(msg) != "Hello, world" || msg.StopReason != "end_turn" {
				t.Fatalf("hits %d, message %q %q %q", srv.hits.Load(), msg.ID, messageText(msg), msg.StopReason)
			}
			if got := rec.bytes(); got != second {
				t.Fatalf("the SDK read\n%q\nwant exactly the second attempt's\n%q", got, second)
			}
		})
	}
}

func TestSDKCommitPoint_AnthropicErrorAfterTheFirstOutputIsNotRetried(t *testing.T) {
	first := aMessageStart("msg_first") + aEmptyBlock + aDelta("Hel")
	srv := newAttempts(t, send(first, aOverloaded), send(aStream("msg_second", "Hello")))
	hc, rec := streamClient(t)
	msg, err := anthropicMessage(t, hc, srv.URL)
	if err == nil || !strings.Contains(err.Error(), "overloaded_error") {
		t.Fatalf("want the SDK's overloaded error, got %v", err)
	}
	if srv.hits.Load() != 1 || msg.ID != "msg_first" || messageText(msg) != "Hel" || rec.bytes() != first+aOverloaded {
		t.Fatalf("hits %d, message %q %q, read %q", srv.hits.Load(), msg.ID, messageText(msg), rec.bytes())
	}
}

// openAIChat streams one chat completion with openai-go and returns what
// it accumulated.
func openAIChat(t *testing.T, hc *http.Client, base string) (openai.ChatCompletion, error) {
	c := openai.NewClient(openaiopt.WithBaseURL(base+"/v1/"), openaiopt.WithAPIKey("sk-test"),
		openaiopt.WithHTTPClient(hc), openaiopt.WithMaxRetries(0))
	s := c.Chat.Completions.NewStreaming(ctx(t), openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	defer s.Close()
	var acc openai.ChatCompletionAccumulator
	for s.Next() {
		acc.AddChunk(s.Current())
	}
	return acc.ChatCompletion, s.Err()
}

func chatText(c openai.ChatCompletion) string {
	if len(c.Choices) == 0 {
		return ""
	}
	return c.Choices[0].Message.Content
}

func TestSDKCommitPoint_OpenAIChatFailuresAfterTheRoleChunkAreRetried(t *testing.T) {
	second := oStream("chatcmpl-second", "Hello", ", world")
	cases := []struct {
		name  string
		first script
	}{
		{"openrouter error after the role chunk", send(": OPENROUTER PROCESSING\n\n", oRole("chatcmpl-first"), oOpenRouterError)},
		{"cut after the role chunk", sendCut(oRole("chatcmpl-first"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := newAttempts(t, tc.first, send(second))
			hc, rec := streamClient(t)
			cc, err := openAIChat(t, hc, srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			if srv.hits.Load() != 2 || cc.ID != "chatcmpl-second" || chatText(cc) != "Hello, world" {
				t.Fatalf("hits %d, completion %q %q", srv.hits.Load(), cc.ID, chatText(cc))
			}
			if got := rec.bytes(); got != second {
				t.Fatalf("the SDK read\n%q\nwant exactly the second attempt's\n%q", got, second)
			}
		})
	}
}

func TestSDKCommitPoint_OpenAIChatErrorAfterContentIsNotRetried(t *testing.T) {
	first := oRole("chatcmpl-first") + oChunk("chatcmpl-first", `{"content":"Hel"}`, "null")
	srv := newAttempts(t, send(first, oOpenRouterError), send(oStream("chatcmpl-second", "Hello")))
	hc, _ := streamClient(t)
	cc, err := openAIChat(t, hc, srv.URL)
	if err == nil || !strings.Contains(err.Error(), "received error while streaming") {
		t.Fatalf("want openai-go's streaming error, got %v", err)
	}
	if srv.hits.Load() != 1 || chatText(cc) != "Hel" {
		t.Fatalf("hits %d, completion %q %q", srv.hits.Load(), cc.ID, chatText(cc))
	}
}

// openAIResponse streams one response with openai-go's Responses API, and
// returns the completed response's id, the text of its deltas, and the
// type of the last event.
func openAIResponse(t *testing.T, hc *http.Client, base string) (id, text, last string, err error) {
	c := openai.NewClient(openaiopt.WithBaseURL(base+"/v1/"), openaiopt.WithAPIKey("sk-test"),
		openaiopt.WithHTTPClient(hc), openaiopt.WithMaxRetries(0))
	s := c.Responses.NewStreaming(ctx(t), responses.ResponseNewParams{Model: "gpt-4o",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}})
	defer s.Close()
	var b strings.Builder
	for s.Next() {
		ev := s.Current()
		last = ev.Type
		switch ev.Type {
		case "response.output_text.delta":
			b.WriteString(ev.Delta)
		case "response.completed", "response.failed":
			id = ev.Response.ID
		}
	}
	return id, b.String(), last, s.Err()
}

func TestSDKCommitPoint_ResponseFailedAfterResponseCreatedIsRetried(t *testing.T) {
	second := rStream("resp_second", "Hello", ", world")
	srv := newAttempts(t, send(rCreated("resp_first"), rFailed("resp_first")), send(second))
	hc, rec := streamClient(t)
	id, text, last, err := openAIResponse(t, hc, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if srv.hits.Load() != 2 || id != "resp_second" || text != "Hello, world" || last != "response.completed" {
		t.Fatalf("hits %d, response %q %q, last event %q", srv.hits.Load(), id, text, last)
	}
	if got := rec.bytes(); got != second {
		t.Fatalf("the SDK read\n%q\nwant exactly the second attempt's\n%q", got, second)
	}
}

func TestSDKCommitPoint_ResponseFailedAfterOutputIsNotRetried(t *testing.T) {
	first := rCreated("resp_first") + rEvent("response.output_text.delta", `{"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hel"}`)
	srv := newAttempts(t, send(first, rFailed("resp_first")), send(rStream("resp_second", "Hello")))
	hc, _ := streamClient(t)
	id, text, last, err := openAIResponse(t, hc, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if srv.hits.Load() != 1 || id != "resp_first" || text != "Hel" || last != "response.failed" {
		t.Fatalf("hits %d, response %q %q, last event %q", srv.hits.Load(), id, text, last)
	}
}

// A model that sends message_start at once and then takes its time: the
// stream is handed over when the hold passes (on the Transport's clock),
// not before, and the SDK gets the whole message from that one attempt.
func TestSDKCommitPoint_SlowFirstOutputIsHandedOverWhenTheHoldPasses(t *testing.T) {
	release := make(chan struct{})
	opened := make(chan struct{})
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		hits.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, aMessageStart("msg_slow")+aEmptyBlock)
		w.(http.Flusher).Flush()
		close(opened)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, aDelta("Thought")+aDelta(" it over"))
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, aEvent("message_stop", `{"type":"message_stop"}`))
	}))
	defer srv.Close()
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	clk := llmretrytest.NewClock(time.Now())
	start := clk.Now()
	rec := &recorder{next: llmretry.NewTransport(base, llmretry.WithClock(clk)), clock: clk, returned: make(chan struct{})}
	hc := &http.Client{Transport: rec}

	type result struct {
		msg anthropic.Message
		err error
	}
	done := make(chan result, 1)
	go func() {
		msg, err := anthropicMessage(t, hc, srv.URL)
		done <- result{msg, err}
	}()
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	<-opened
	held := make(chan struct{})
	go func() {
		clk.AwaitLimits(1) // the hold is waiting on the clock
		close(held)
	}()
	select {
	case <-held:
	case <-rec.returned:
		t.Fatal("handed over at message_start, before the hold passed")
	}
	clk.Advance(10 * time.Second)
	releaseOnce.Do(func() { close(release) })
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	rec.mu.Lock()
	handedOver := rec.handedOver.Sub(start)
	rec.mu.Unlock()
	if handedOver != 10*time.Second {
		t.Fatalf("handed over at %v on the clock, want when the 10s hold passed", handedOver)
	}
	if hits.Load() != 1 || res.msg.ID != "msg_slow" || messageText(res.msg) != "Thought it over" {
		t.Fatalf("hits %d, message %q %q", hits.Load(), res.msg.ID, messageText(res.msg))
	}
}
