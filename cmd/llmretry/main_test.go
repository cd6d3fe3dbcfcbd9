package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestExitStatus(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		args []string
		ctx  context.Context
		want int
		out  string
	}{
		{nil, nil, 2, "Usage"},
		{[]string{"frobnicate"}, nil, 2, "unknown command"},
		{[]string{"--help"}, nil, 0, "llmretry proxy"},
		{[]string{"demo", "--help"}, nil, 0, "-concurrency"},
		{[]string{"proxy", "--help"}, nil, 0, "-max-retry-after"},
		{[]string{"mock", "--help"}, nil, 0, "-faults"},
		{[]string{"proxy"}, nil, 2, "--upstream is required"},
		{[]string{"proxy", "--upstream", "ftp://example.com"}, nil, 2, "want an http or https URL"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--max-attempts", "0"}, nil, 2, "must be positive"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "256.0.0.1:1"}, nil, 1, "listen"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--redis", "mysql://x"}, nil, 2, "--redis"},
		// Redis down never stops the proxy.
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1/0"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--budget", "lots"}, nil, 2, "--budget \"lots\": want on, off or a ratio"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--budget", "1.5"}, nil, 2, "--budget"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--cooldowns", "maybe"}, nil, 2, "--cooldowns \"maybe\": want on or off"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--budget", "0.2", "--cooldowns", "off"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--budget", "off"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"mock", "--faults", "explode"}, nil, 2, "unknown fault"},
		{[]string{"mock", "--listen", "127.0.0.1:0", "--faults", "503,ok"}, cancelled, 0, "mock provider listening"},
		{[]string{"demo", "--requests", "0"}, nil, 2, "at least 1"},
		{[]string{"demo", "--upstream", "https://api.example.com/v1"}, nil, 2, "OPENAI_API_KEY"},
		{[]string{"demo", "extra"}, nil, 2, "unexpected argument"},
		{[]string{"demo", "--requests", "3", "--faults", "503"}, nil, 0, "streams intact, exactly once"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			if strings.Contains(strings.Join(tc.args, " "), "--upstream https://api.example.com") {
				t.Setenv("OPENAI_API_KEY", "")
			}
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			var stdout, stderr bytes.Buffer
			got := run(ctx, tc.args, &stdout, &stderr)
			all := stdout.String() + stderr.String()
			if got != tc.want || !strings.Contains(all, tc.out) {
				t.Fatalf("exit %d, want %d; output lacks %q:\n%s", got, tc.want, tc.out, all)
			}
		})
	}
}
