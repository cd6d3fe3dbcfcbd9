package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The proxy that holds keys must know its clients: without client tokens
// it starts only on loopback.
func TestProxyWithKeysAndNoClientsStartsOnlyOnLoopback(t *testing.T) {
	dir := t.TempDir()
	keyed := filepath.Join(dir, "keyed.yaml")
	withClients := filepath.Join(dir, "clients.yaml")
	routes := "routes:\n  - prefix: /openai\n    targets:\n      - name: openai\n        base_url: http://127.0.0.1:1/v1\n        keys: [{id: a, env: LLMRETRY_TEST_KEY}]\n"
	if err := os.WriteFile(keyed, []byte(routes), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(withClients, []byte("clients: [{id: app, env: LLMRETRY_TEST_TOKEN}]\n"+routes), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LLMRETRY_TEST_KEY", "sk-test-key")
	t.Setenv("LLMRETRY_TEST_TOKEN", "a-client-token-of-length")
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		args []string
		want int
		out  string
	}{
		{[]string{"--config", keyed, "--listen", "0.0.0.0:0", "--admin-listen", ""}, 2, "names no clients"},
		{[]string{"--config", keyed, "--listen", ":0", "--admin-listen", ""}, 2, "names no clients"},
		{[]string{"--config", keyed, "--listen", "127.0.0.1:0", "--admin-listen", ""}, 0, "llmretry proxy on"},
		{[]string{"--config", withClients, "--listen", "0.0.0.0:0", "--admin-listen", ""}, 0, "the routes of " + withClients + ": /openai"},
		{[]string{"--config", keyed, "--upstream", "http://x:1"}, 2, "not both"},
		{[]string{"--config", filepath.Join(dir, "missing.yaml")}, 2, "no such file"},
	} {
		var stdout, stderr bytes.Buffer
		got := run(cancelled, append([]string{"proxy"}, tc.args...), &stdout, &stderr)
		all := stdout.String() + stderr.String()
		if got != tc.want || !strings.Contains(all, tc.out) {
			t.Errorf("%v: exit %d, want %d; output lacks %q:\n%s", tc.args, got, tc.want, tc.out, all)
		}
		if strings.Contains(all, "sk-test-key") || strings.Contains(all, "a-client-token") {
			t.Errorf("%v: a secret was printed:\n%s", tc.args, all)
		}
	}
}
