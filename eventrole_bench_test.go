package llmretry

import (
	"net/http"
	"testing"
)

// BenchmarkStreamHoldRoles reads the roles of the events a stream hold
// reads before it hands a chat stream over: the role-only opening chunk and
// the first output, as the mock provider (and OpenAI) write them.
func BenchmarkStreamHoldRoles(b *testing.B) {
	req, _ := http.NewRequest("POST", "http://x/v1/chat/completions", nil)
	opening := ev("", `{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"created":1733100000,"id":"chatcmpl-0123456789abcdef","model":"gpt-4o-mini","object":"chat.completion.chunk"}`)
	output := ev("", `{"choices":[{"delta":{"content":"Hello"},"finish_reason":null,"index":0}],"created":1733100000,"id":"chatcmpl-0123456789abcdef","model":"gpt-4o-mini","object":"chat.completion.chunk"}`)
	b.ReportAllocs()
	for b.Loop() {
		s := newStreamEvents(req)
		if s.role(opening).decides() || !s.role(output).isOutput() {
			b.Fatal("wrong roles")
		}
	}
}
