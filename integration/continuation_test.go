package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicopt "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	openaiopt "github.com/openai/openai-go/v3/option"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/llmretrytest"
	"github.com/llmretry/llmretry/mockllm"
)

// Issue 21, part 2: with continuation on, a stream cut after its first
// output is finished by a continuation, and each SDK's accumulator yields
// one message whose text is the whole reply: the delivered text joined to
// the continuation, with no repeat, no gap, and no second start or role.

// streamLen is how many bytes the mock's stream of reply has, for api.
func streamLen(api mockllm.API, reply string) int {
	n := 0
	for _, ev := range mockllm.StreamEvents(api, "m") {
		n += len(ev)
	}
	if reply == mockllm.ReplyUTF8 {
		n += len(mockllm.ReplyTextUTF8) - len(mockllm.ReplyText) // the same events, another text
	}
	return n
}

func continuingClient(t *testing.T, opts ...llmretry.Option) (*http.Client, *[]llmretry.ContinuationEvent) {
	t.Helper()
	var events []llmretry.ContinuationEvent
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	all := append([]llmretry.Option{llmretry.WithStreamContinuation(llmretry.Continuation{}),
		llmretry.WithClock(llmretrytest.NewClock(time.Now())), // a cut before the first output is retried after a backoff
		llmretry.WithOnContinuation(func(e llmretry.ContinuationEvent) { events = append(events, e) })}, opts...)
	return &http.Client{Transport: llmretry.NewTransport(base, all...)}, &events
}

func anthropicStreamText(t *testing.T, hc *http.Client, base, reply string) (anthropic.Message, error) {
	return anthropicMessage(t, hc, base, anthropicopt.WithHeader(mockllm.ReplyHeader, reply))
}

func openAIStreamText(t *testing.T, hc *http.Client, base, reply string) (openai.ChatCompletion, int, error) {
	c := openai.NewClient(openaiopt.WithBaseURL(base+"/v1/"), openaiopt.WithAPIKey("sk-test"),
		openaiopt.WithHTTPClient(hc), openaiopt.WithMaxRetries(0), openaiopt.WithHeader(mockllm.ReplyHeader, reply))
	s := c.Chat.Completions.NewStreaming(ctx(t), openai.ChatCompletionNewParams{
		Model: "gpt-4o", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	defer s.Close()
	var acc openai.ChatCompletionAccumulator
	roles := 0
	for s.Next() {
		ch := s.Current()
		if len(ch.Choices) > 0 && ch.Choices[0].Delta.Role != "" {
			roles++
		}
		acc.AddChunk(ch)
	}
	return acc.ChatCompletion, roles, s.Err()
}

func TestSDKContinuation_ACutStreamIsFinishedAtAnyByte(t *testing.T) {
	for _, reply := range []string{mockllm.ReplyASCII, mockllm.ReplyUTF8} {
		want := mockllm.ReplyText
		if reply == mockllm.ReplyUTF8 {
			want = mockllm.ReplyTextUTF8
		}
		for _, api := range []mockllm.API{mockllm.Anthropic, mockllm.OpenAI} {
			for _, overlap := range []int{0, 9} {
				// Cut points spread over the whole stream: inside events, inside
				// JSON strings, and (in the UTF-8 reply, whose characters are
				// 2 to 4 bytes) inside characters. The core's own test cuts at
				// every byte up to the end of the first output and of two
				// middle events, and at every seventeenth elsewhere.
				total, step := streamLen(api, reply), 41
				if reply == mockllm.ReplyUTF8 {
					step = 23
				}
				// One server and one client for the cuts, as a caller keeps
				// one: a mock for each cut, behind the same address. A
				// server and a client's connections for each cut were most
				// of the test's time.
				var mock atomic.Pointer[mockllm.Server]
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { mock.Load().ServeHTTP(w, r) }))
				t.Cleanup(srv.Close)
				hc, events := continuingClient(t)
				for cut := 1 + overlap; cut < total; cut += step {
					name := fmt.Sprintf("%v/%s/overlap %d/cut %d", api, reply, overlap, cut)
					script, err := mockllm.ParseFaults(fmt.Sprintf("cut=%d", cut))
					if err != nil {
						t.Fatal(err)
					}
					m := mockllm.New(script, 1)
					m.Overlap = overlap
					m.RepeatTrimmed = overlap > 0 // as Claude does: the continuation repeats the trimmed space
					mock.Store(m)
					*events = nil
					var text string
					switch api {
					case mockllm.Anthropic:
						msg, err := anthropicStreamText(t, hc, srv.URL, reply)
						if err != nil {
							t.Fatalf("%s: %v (events %+v)", name, err, *events)
						}
						if len(msg.Content) == 0 || msg.ID == "" || msg.StopReason != "end_turn" {
							t.Fatalf("%s: message %+v", name, msg)
						}
						text = messageText(msg)
					default:
						cc, roles, err := openAIStreamText(t, hc, srv.URL, reply)
						if err != nil {
							t.Fatalf("%s: %v (events %+v)", name, err, *events)
						}
						if roles != 1 || len(cc.Choices) != 1 || cc.Choices[0].FinishReason != "stop" || cc.ID != "chatcmpl-mock" {
							t.Fatalf("%s: %d role chunks, completion %+v", name, roles, cc)
						}
						text = chatText(cc)
					}
					if text != want {
						t.Fatalf("%s: the SDK accumulated\n%q\nwant\n%q\n(events %+v)", name, text, want, *events)
					}
					if len(*events) > 0 && (*events)[0].Outcome != llmretry.Continued && (*events)[0].Outcome != llmretry.Completed {
						t.Fatalf("%s: events %+v", name, *events)
					}
				}
			}
		}
	}
}

// A stream cut during a tool call is not continued: the SDK gets the cut.
func TestSDKContinuation_AToolCallIsNotContinued(t *testing.T) {
	first := aMessageStart("msg_first") +
		aEvent("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}`) +
		aEvent("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Par"}}`)
	srv := newAttempts(t, sendCut(first), send(aStream("msg_second", "never sent")))
	hc, events := continuingClient(t)
	_, err := anthropicStreamText(t, hc, srv.URL, mockllm.ReplyASCII)
	if err == nil || srv.hits.Load() != 1 || len(*events) != 1 || (*events)[0].Outcome != llmretry.RefusedToolCall {
		t.Fatalf("err %v, hits %d, events %+v: want the cut, and nothing resent", err, srv.hits.Load(), *events)
	}
}

// The cap holds: a continuation that is itself cut is not continued again
// (Max 1), and the SDK gets the cut.
func TestSDKContinuation_TheCapIsRespected(t *testing.T) {
	script, err := mockllm.ParseFaults("cut=700,cut=700")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(mockllm.New(script, 1))
	defer srv.Close()
	hc, events := continuingClient(t)
	_, _, err = openAIStreamText(t, hc, srv.URL, mockllm.ReplyASCII)
	if err == nil || len(*events) != 2 || (*events)[0].Outcome != llmretry.Continued || (*events)[1].Outcome != llmretry.OverCap {
		t.Fatalf("err %v, events %+v: want one continuation, then over the cap", err, *events)
	}
}

// A continuation after failover goes to the next target, which names
// itself in the event and in the X-Llmretry-Target trailer.
func TestSDKContinuation_AfterFailoverNamesItsTarget(t *testing.T) {
	cutting, err := mockllm.ParseFaults("cut=400@100%")
	if err != nil {
		t.Fatal(err)
	}
	primary := httptest.NewServer(mockllm.New(cutting, 1))
	defer primary.Close()
	fallback := httptest.NewServer(mockllm.New(mockllm.Script{}, 1))
	defer fallback.Close()
	var events []llmretry.ContinuationEvent
	base := &http.Transport{}
	defer base.CloseIdleConnections()
	tr, err := llmretry.NewFailoverTransport(base, llmretry.Failover{
		Outliers: llmretry.Outliers{Failures: 1},
		Targets: []llmretry.Target{
			{Name: "primary", BaseURL: primary.URL + "/v1", Keys: []llmretry.Key{llmretry.NewKey("p", "sk-p")}},
			{Name: "fallback", BaseURL: fallback.URL + "/v1", Keys: []llmretry.Key{llmretry.NewKey("f", "sk-f")}},
		}}, llmretry.WithStreamContinuation(llmretry.Continuation{}),
		llmretry.WithOnContinuation(func(e llmretry.ContinuationEvent) { events = append(events, e) }))
	if err != nil {
		t.Fatal(err)
	}
	cc, _, err := openAIStreamText(t, &http.Client{Transport: tr}, primary.URL, mockllm.ReplyASCII)
	if err != nil || chatText(cc) != mockllm.ReplyText {
		t.Fatalf("err %v, text %q", err, chatText(cc))
	}
	if len(events) != 1 || events[0].Target != "primary" || events[0].NextTarget != "fallback" || !strings.Contains(events[0].Cause, "cut") {
		t.Fatalf("events %+v: want the primary's cut finished on the fallback", events)
	}
}
