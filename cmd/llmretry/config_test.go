package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry/cmd/internal/proxy"
	"github.com/llmretry/llmretry/redisstate"
)

// A proxy with a config must know its clients: without client tokens it
// starts only on loopback, whether or not it holds keys.
func TestProxyConfigWithNoClientsStartsOnlyOnLoopback(t *testing.T) {
	dir := t.TempDir()
	keyless := filepath.Join(dir, "keyless.yaml")
	if err := os.WriteFile(keyless, []byte("routes:\n  - prefix: /vllm\n    targets: [{name: vllm, base_url: 'http://127.0.0.1:1/v1'}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
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
		{[]string{"--config", keyed, "--listen", "0.0.0.0:0", "--admin-listen", ""}, 2, "could use its keys"},
		{[]string{"--config", keyless, "--listen", "0.0.0.0:0", "--admin-listen", ""}, 2, "could use its routes"},
		{[]string{"--config", keyless, "--listen", "[::1]:0", "--admin-listen", ""}, 0, "llmretry proxy on"},
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

// With --redis, every route's cooldowns go through one fleet state, and
// each target keeps its budget in a state of its own.
func TestShareThroughRedisGivesEveryTargetItsOwnFleetBudget(t *testing.T) {
	fc, err := proxy.ParseConfig("c.yaml", []byte(`routes:
  - prefix: /openai
    targets: [{name: a, base_url: 'https://a.example/v1'}, {name: b, base_url: 'https://b.example/v1'}]
  - prefix: /anthropic
    targets: [{name: c, base_url: 'https://api.anthropic.com'}]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rc.Close()
	var names []string
	newState := func(name string) (*redisstate.State, error) {
		names = append(names, name)
		return redisstate.New(redisstate.Config{Client: rc, Name: name})
	}
	cd, err := shareThroughRedis(fc, "fleet", false, newState)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[fleet fleet/openai/a fleet/openai/b fleet/anthropic/c]"; fmt.Sprint(names) != want {
		t.Fatalf("states %v, want %s", names, want)
	}
	for _, r := range fc.Routes {
		for _, tg := range r.Failover.Targets {
			if st, ok := tg.Budget.(*redisstate.State); !ok || any(st) == any(cd) {
				t.Fatalf("target %s has no fleet budget of its own", tg.Name)
			}
		}
	}
	names = nil
	if _, err := shareThroughRedis(fc, "fleet", true, newState); err != nil || len(names) != 1 {
		t.Fatalf("budget off: states %v, %v; want the cooldowns' only", names, err)
	}
}
