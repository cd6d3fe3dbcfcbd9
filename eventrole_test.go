package llmretry

import (
	"net/http"
	"testing"
)

func ev(name, data string) sseEvent { return sseEvent{name: []byte(name), data: []byte(data)} }

func TestEventRolesPerFamily(t *testing.T) {
	const (
		opening  = roleOpening
		output   = roleOutput
		end      = roleEnd
		terminal = roleEnd | roleTerminal
		failed   = roleError
	)
	cases := []struct {
		family streamFamily
		name   string
		ev     sseEvent
		want   eventRole
	}{
		// Anthropic Messages.
		{streamAnthropic, "message_start", ev("message_start", `{"type":"message_start","message":{"id":"m","content":[],"usage":{"output_tokens":1}}}`), opening},
		{streamAnthropic, "ping", ev("ping", `{"type": "ping"}`), opening},
		{streamAnthropic, "empty text block", ev("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`), opening},
		{streamAnthropic, "empty thinking block", ev("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}`), opening},
		{streamAnthropic, "text block with text", ev("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Hi"}}`), output},
		{streamAnthropic, "tool_use block", ev("content_block_start", `{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"get_weather","input":{}}}`), output},
		{streamAnthropic, "redacted thinking", ev("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking","data":"x"}}`), output},
		{streamAnthropic, "unreadable block start", ev("content_block_start", `{"type":"content_block_start","content_block":`), output},
		{streamAnthropic, "text delta", ev("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}`), output},
		{streamAnthropic, "empty text delta still a delta", ev("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}`), output},
		{streamAnthropic, "thinking delta", ev("content_block_delta", `{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hm"}}`), output},
		{streamAnthropic, "input json delta", ev("content_block_delta", `{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}`), output},
		{streamAnthropic, "block stop", ev("content_block_stop", `{"type":"content_block_stop","index":0}`), opening},
		{streamAnthropic, "message_delta with stop reason", ev("message_delta", `{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":0}}`), end},
		{streamAnthropic, "message_delta without stop reason", ev("message_delta", `{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":3}}`), opening},
		{streamAnthropic, "message_stop", ev("message_stop", `{"type":"message_stop"}`), terminal},
		{streamAnthropic, "error", ev("error", `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`), failed},
		{streamAnthropic, "unnamed, by its type", ev("", `{"type":"message_start","message":{}}`), opening},
		{streamAnthropic, "unnamed error", ev("", `{"type":"error","error":{"type":"api_error"}}`), failed},
		{streamAnthropic, "an event type not known", ev("message_annotation", `{}`), output},

		// OpenAI chat completions and compatible servers.
		{streamOpenAIChat, "role chunk", ev("", `{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`), opening},
		{streamOpenAIChat, "role chunk with nulls", ev("", `{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":null,"tool_calls":[]}}],"usage":null}`), opening},
		{streamOpenAIChat, "azure filter results first", ev("", `{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}`), opening},
		{streamOpenAIChat, "content", ev("", `{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}`), output},
		{streamOpenAIChat, "refusal", ev("", `{"choices":[{"delta":{"refusal":"No"}}]}`), output},
		{streamOpenAIChat, "tool call", ev("", `{"choices":[{"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}`), output},
		{streamOpenAIChat, "function call", ev("", `{"choices":[{"delta":{"function_call":{"name":"f"}}}]}`), output},
		{streamOpenAIChat, "reasoning_content", ev("", `{"choices":[{"delta":{"role":"assistant","content":"","reasoning_content":"Let me"}}]}`), output},
		{streamOpenAIChat, "reasoning", ev("", `{"choices":[{"delta":{"reasoning":"Let me"}}]}`), output},
		{streamOpenAIChat, "a delta field not seen before", ev("", `{"choices":[{"delta":{"audio":{"id":"a"}}}]}`), output},
		{streamOpenAIChat, "legacy text", ev("", `{"choices":[{"text":"Hi","index":0}]}`), output},
		{streamOpenAIChat, "finish reason", ev("", `{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`), end},
		{streamOpenAIChat, "last words and finish reason", ev("", `{"choices":[{"delta":{"content":"."},"finish_reason":"stop"}]}`), output | end},
		{streamOpenAIChat, "usage chunk", ev("", `{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}`), end},
		{streamOpenAIChat, "done", ev("", `[DONE]`), terminal},
		{streamOpenAIChat, "openrouter error", ev("", `{"error":{"code":502,"message":"Provider returned error"}}`), failed},
		{streamOpenAIChat, "error with a finish reason", ev("", `{"choices":[{"delta":{"content":""},"finish_reason":"error"}],"error":{"code":"server_error"}}`), failed},
		{streamOpenAIChat, "error: null is no error", ev("", `{"error":null,"choices":[{"delta":{"role":"assistant"}}]}`), opening},
		{streamOpenAIChat, "named error", ev("error", `{"message":"x"}`), failed},
		{streamOpenAIChat, "not JSON", ev("", `hello`), output},
		{streamOpenAIChat, "not a chunk", ev("", `{"delta":"hi"}`), output},
		{streamOpenAIChat, "malformed chunk", ev("", `{"choices":[{"delta":{"role":"assistant"`), output},
		// The shapes the walk into a chunk meets (it reads each value once,
		// walking into choices, a choice and its delta).
		{streamOpenAIChat, "empty delta array", ev("", `{"choices":[{"delta":[]}]}`), opening},
		{streamOpenAIChat, "delta array with an element", ev("", `{"choices":[{"delta":[1]}]}`), output},
		{streamOpenAIChat, "null delta", ev("", `{"choices":[{"delta":null,"index":0}]}`), opening},
		{streamOpenAIChat, "string delta", ev("", `{"choices":[{"delta":"Hi"}]}`), output},
		{streamOpenAIChat, "choices null", ev("", `{"choices":null}`), output},
		{streamOpenAIChat, "choices an object", ev("", `{"choices":{"delta":{"role":"assistant"}}}`), output},
		{streamOpenAIChat, "a choice not an object", ev("", `{"choices":[[],{"delta":{}}]}`), output},
		{streamOpenAIChat, "output, then more members", ev("", `{"choices":[{"delta":{"content":"Hi","role":"assistant","tool_calls":[{"index":0}]},"finish_reason":"stop","index":0}],"usage":null,"id":"x"}`), output | end},
		{streamOpenAIChat, "an error after the choices", ev("", `{"choices":[{"delta":{"role":"assistant","content":""}}],"id":"x","error":{"code":500}}`), failed},
		{streamOpenAIChat, "nested braces in strings", ev("", `{"choices":[{"delta":{"role":"assistant","content":""},"logprobs":{"a":"}]\"{["}}],"usage":{"total_tokens":1}}`), end},
		{streamOpenAIChat, "malformed after the output", ev("", `{"choices":[{"delta":{"content":"Hi"} "x"}]}`), output},
		{streamOpenAIChat, "malformed delta member", ev("", `{"choices":[{"delta":{"role":"assistant",}}]}`), output},

		// The Responses API.
		{streamResponses, "created", ev("response.created", `{"type":"response.created","response":{"id":"r","status":"in_progress"}}`), opening},
		{streamResponses, "in progress", ev("response.in_progress", `{"type":"response.in_progress"}`), opening},
		{streamResponses, "item added", ev("response.output_item.added", `{"type":"response.output_item.added","item":{"type":"message"}}`), opening},
		{streamResponses, "part added", ev("response.content_part.added", `{"type":"response.content_part.added"}`), opening},
		{streamResponses, "text delta", ev("response.output_text.delta", `{"type":"response.output_text.delta","delta":"Hi"}`), output},
		{streamResponses, "arguments delta", ev("response.function_call_arguments.delta", `{"delta":"{"}`), output},
		{streamResponses, "reasoning delta", ev("response.reasoning_summary_text.delta", `{"delta":"x"}`), output},
		{streamResponses, "item done", ev("response.output_item.done", `{"item":{}}`), output},
		{streamResponses, "completed", ev("response.completed", `{"type":"response.completed"}`), terminal},
		{streamResponses, "incomplete", ev("response.incomplete", `{"type":"response.incomplete"}`), terminal},
		{streamResponses, "failed", ev("response.failed", `{"type":"response.failed","response":{"error":{"code":"server_error"}}}`), roleError | roleTerminal},
		{streamResponses, "error", ev("error", `{"type":"error","code":"ERR","message":"x"}`), failed},
		{streamResponses, "unnamed, by its type", ev("", `{"type":"response.created"}`), opening},

		// Gemini, and streams of no known family: the first event decides.
		{streamGemini, "a chunk", ev("", `{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}]}`), output},
		{streamGemini, "the last chunk", ev("", `{"candidates":[{"content":{"parts":[{"text":"."}]},"finishReason":"STOP"}]}`), output | terminal},
		{streamGemini, "an error", ev("", `{"error":{"code":503,"status":"UNAVAILABLE"}}`), failed},
		{streamUnknown, "anything", ev("", `one`), output},
		{streamUnknown, "message_start too", ev("message_start", `{}`), output},
		{streamUnknown, "error event", ev("error", `x`), failed},
		{streamUnknown, "error object", ev("", `{"error":{"type":"overloaded_error"}}`), failed},
		{streamUnknown, "a string that says error", ev("", `{"text":"\"error\""}`), output},
	}
	for _, tc := range cases {
		t.Run(tc.family.String()+"/"+tc.name, func(t *testing.T) {
			if got := tc.family.role(tc.ev); got != tc.want {
				t.Fatalf("role %08b, want %08b", got, tc.want)
			}
		})
	}
}

func TestStreamFamilyFromPath(t *testing.T) {
	for path, want := range map[string]streamFamily{
		"/v1/messages":                             streamAnthropic,
		"/anthropic/v1/messages/":                  streamAnthropic,
		"/v1/chat/completions":                     streamOpenAIChat,
		"/openai/deployments/gpt/chat/completions": streamOpenAIChat,
		"/v1/responses":                            streamResponses,
		"/v1beta/models/gemini-2.5-flash:streamGenerateContent": streamGemini,
		"/v1/completions":      streamUnknown,
		"/":                    streamUnknown,
		"/v1/messages/batches": streamUnknown,
	} {
		req, _ := http.NewRequest(http.MethodPost, "http://api.test"+path, nil)
		if got := streamFamilyOf(req); got != want {
			t.Errorf("%s: %v, want %v", path, got, want)
		}
	}
	if streamFamilyOf(nil) != streamUnknown || streamFamilyOf(&http.Request{}) != streamUnknown {
		t.Error("a request without a URL has no family")
	}
}

// The events' own shape names the family, over the path: one host can
// serve several families, and a path can say nothing.
func TestStreamFamilySettledByTheEvents(t *testing.T) {
	cases := []struct {
		path  string
		first sseEvent
		want  streamFamily
	}{
		{"/", ev("message_start", `{}`), streamAnthropic},
		{"/v1/projects/p/models/claude:streamRawPredict", ev("", `{"type":"message_start"}`), streamAnthropic},
		{"/", ev("", `{"choices":[{"delta":{"role":"assistant"}}]}`), streamOpenAIChat},
		{"/", ev("response.created", `{}`), streamResponses},
		{"/", ev("", `{"candidates":[]}`), streamGemini},
		{"/v1/messages", ev("", `{"choices":[]}`), streamOpenAIChat},
		{"/v1/chat/completions", ev("", `{"error":{"code":502}}`), streamOpenAIChat}, // an error names no family
		{"/", ev("error", `{}`), streamUnknown},
		{"/", ev("", `plain`), streamUnknown},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(http.MethodPost, "http://api.test"+tc.path, nil)
		s := newStreamEvents(req)
		s.role(tc.first)
		if s.family != tc.want {
			t.Errorf("%s %q %q: %v, want %v", tc.path, tc.first.name, tc.first.data, s.family, tc.want)
		}
	}
	// Once settled, the family stays: a later event of another shape does
	// not move it.
	s := newStreamEvents(nil)
	s.role(ev("message_start", `{}`))
	if s.role(ev("", `{"choices":[{"delta":{"role":"assistant"}}]}`)) != roleOutput || s.family != streamAnthropic {
		t.Errorf("family moved to %v", s.family)
	}
}

// The roles are read on every event a stream holds, and will be on every
// event of a watched stream: no allocation.
func TestEventRolesAllocateNothing(t *testing.T) {
	events := []sseEvent{
		ev("message_start", `{"type":"message_start","message":{"id":"m"}}`),
		ev("content_block_start", `{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`),
		ev("", `{"type":"ping"}`),
		ev("", `{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}`),
		ev("response.output_text.delta", `{"delta":"x"}`),
	}
	allocs := testing.AllocsPerRun(100, func() {
		s := newStreamEvents(nil)
		for _, e := range events {
			s.role(e)
		}
		for _, f := range []streamFamily{streamAnthropic, streamOpenAIChat, streamResponses, streamGemini, streamUnknown} {
			for _, e := range events {
				f.role(e)
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations", allocs)
	}
}

// Followed from start to end, each family's stream has its first output
// where the commit point is, and its terminal event last: a stream that
// ends before it was cut short.
func TestWholeStreamsEndWithTheirTerminalEvent(t *testing.T) {
	cases := []struct {
		path              string
		stream            string
		firstOutput, ends int // index of the first output event and of the first end event
	}{
		{"/v1/messages", aStream, 3, 5},
		{"/v1/chat/completions", oStream, 1, 2},
		{"/v1/responses", rStream, 3, 4},
		{"/v1beta/models/g:streamGenerateContent", "data: {\"candidates\":[{\"content\":{}}]}\n\ndata: {\"candidates\":[{\"finishReason\":\"STOP\"}]}\n\n", 0, 1},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(http.MethodPost, "http://api.test"+tc.path, nil)
		s := newStreamEvents(req)
		sc := sseScanner{limit: 1 << 10}
		var roles []eventRole
		for p := []byte(tc.stream); len(p) > 0; {
			e, n, ok := sc.scan(p)
			p = p[n:]
			if !ok {
				break
			}
			roles = append(roles, s.role(e))
		}
		firstOutput, firstEnd := -1, -1
		for i, r := range roles {
			if r.isOutput() && firstOutput < 0 {
				firstOutput = i
			}
			if r.isEnd() && firstEnd < 0 {
				firstEnd = i
			}
			if r.isTerminal() != (i == len(roles)-1) {
				t.Errorf("%s: event %d of %d terminal: %v", tc.path, i, len(roles), r.isTerminal())
			}
			if r.isError() {
				t.Errorf("%s: event %d is an error", tc.path, i)
			}
		}
		if firstOutput != tc.firstOutput || firstEnd != tc.ends {
			t.Errorf("%s: first output %d, first end %d; want %d, %d", tc.path, firstOutput, firstEnd, tc.firstOutput, tc.ends)
		}
	}
}
