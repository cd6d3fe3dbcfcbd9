package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/llmretry/llmretry/mockllm"
)

// cuttingUpstream is the mock provider cutting its first stream after 900
// bytes, counting the requests it gets.
func cuttingUpstream(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	script, err := mockllm.ParseFaults("cut=900")
	if err != nil {
		t.Fatal(err)
	}
	mock := mockllm.New(script, 1)
	var hits atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		mock.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	return up, &hits
}

// streamThrough streams a chat completion from url and returns the text
// its chunks carry, and the read error.
func streamThrough(t *testing.T, url string) (string, error) {
	t.Helper()
	resp, err := http.Post(url+"/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	var text strings.Builder
	for _, line := range strings.Split(string(body), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(data), &c) == nil {
			for _, ch := range c.Choices {
				text.WriteString(ch.Delta.Content)
			}
		}
	}
	return text.String(), err
}

// --continue-streams N turns stream continuation on (a stream cut mid-way
// reaches the client whole, after one more upstream request); without it,
// it is off. A route's continue_streams: 0 turns it off for that route
// whatever the flag says.
func TestContinueStreamsFlag(t *testing.T) {
	up, hits := cuttingUpstream(t)
	base, _ := startCommand(t, "--upstream", up.URL+"/v1", "--continue-streams", "1")
	if text, err := streamThrough(t, base+"/v1"); err != nil || text != mockllm.ReplyText || hits.Load() != 2 {
		t.Fatalf("--continue-streams 1: err %v, %d upstream requests, text %q: want the whole reply", err, hits.Load(), text)
	}

	up, hits = cuttingUpstream(t)
	base, _ = startCommand(t, "--upstream", up.URL+"/v1")
	if _, err := streamThrough(t, base+"/v1"); err == nil || hits.Load() != 1 {
		t.Fatalf("no flag: err %v, %d upstream requests: want the cut, and one request", err, hits.Load())
	}

	up, hits = cuttingUpstream(t)
	cfg := filepath.Join(t.TempDir(), "llmretry.yaml")
	text := "routes:\n  - prefix: /openai\n    continue_streams: 0\n    continue_openai_prefix: prefix\n    targets:\n" +
		"      - {name: mock, base_url: '" + up.URL + "/v1'}\n"
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	base, _ = startCommand(t, "--config", cfg, "--continue-streams", "2")
	if _, err := streamThrough(t, base+"/openai"); err == nil || hits.Load() != 1 {
		t.Fatalf("continue_streams: 0 under --continue-streams 2: err %v, %d upstream requests: want the cut", err, hits.Load())
	}
	http.DefaultClient.CloseIdleConnections()
}
