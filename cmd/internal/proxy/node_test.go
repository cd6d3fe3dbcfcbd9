package proxy

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/llmretry/llmretry/mockllm"
)

// The Node openai client through the proxy, with failover: key a is rate
// limited, key b's target is down, and a fallback target serves the model
// under another name. The test command installs Node's openai package
// (npm ci in testdata/node); without it this test fails, never skips.
func TestNodeOpenAIClientThroughTheProxyFailsOver(t *testing.T) {
	t.Parallel() // its time is Node starting; it shares nothing with other tests
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: the test command installs it (scripts/test.sh)")
	}
	dir, _ := filepath.Abs(filepath.Join("testdata", "node"))
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai")); err != nil {
		t.Fatalf("Node's openai package is missing: run npm ci --prefix %s (scripts/test.sh does)", dir)
	}
	script := func(spec string) mockllm.Script {
		s, err := mockllm.ParseFaults(spec)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	primary := mockllm.New(mockllm.Script{}, 1).
		ForKey("sk-a", script("429:retry-after=20@100%")).
		ForKey("sk-b", script("503@100%"))
	fallback := mockllm.New(mockllm.Script{}, 1).ForKey("sk-c", mockllm.Script{})
	ps, fs := httptest.NewServer(primary), httptest.NewServer(fallback)
	defer ps.Close()
	defer fs.Close()
	url, _, _ := startRouter(t, `
clients: [{id: node, env: TOKEN}]
routes:
  - prefix: /openai
    attempts_per_target: 1
    targets:
      - name: primary
        base_url: `+ps.URL+`/v1
        keys: [{id: a, env: A}, {id: b, env: B}]
      - name: fallback
        base_url: `+fs.URL+`/v1
        keys: [{id: c, env: C}]
        models: {gpt-4o: gpt-4o-mini}
`, map[string]string{"TOKEN": testToken, "A": "sk-a", "B": "sk-b", "C": "sk-c"})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "client.mjs", url+"/openai", testToken, "gpt-4o")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("node: %v\n%s\n%s", err, out, stderr)
	}
	var got struct {
		Complete struct{ Text, Model, Target, Attempts string }
		Stream   struct{ Text, Target string }
		// UnknownClient is the status the client saw with a wrong token.
		UnknownClient int
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node printed %s: %v", out, err)
	}
	// a: 429 (rests 20 s), b at once: 503, the primary's one attempt is
	// spent: the fallback, with the model under its name there.
	if got.Complete.Text != mockllm.ReplyText || got.Complete.Target != "fallback" || got.Complete.Attempts != "3" || got.Complete.Model != "gpt-4o-mini" {
		t.Fatalf("completion %+v", got.Complete)
	}
	// The stream avoids the resting a, and arrives whole from the fallback.
	if got.Stream.Text != mockllm.ReplyText || got.Stream.Target != "fallback" {
		t.Fatalf("stream %+v", got.Stream)
	}
	if primary.HitsFor("sk-a") != 1 {
		t.Fatalf("key a got %d requests: it should rest its 20 s after the first", primary.HitsFor("sk-a"))
	}
	if got.UnknownClient != 401 {
		t.Fatalf("a client with an unknown token got %d, want 401", got.UnknownClient)
	}
}
