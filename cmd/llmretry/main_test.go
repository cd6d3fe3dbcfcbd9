package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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
		{[]string{"proxy"}, nil, 2, "--upstream or --config is required"},
		{[]string{"proxy", "--upstream", "ftp://example.com"}, nil, 2, "want an http or https URL"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--max-attempts", "0"}, nil, 2, "--max-attempts 0: want 1 or more"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "256.0.0.1:1"}, nil, 1, "listen"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "nohost"}, nil, 2, `--listen "nohost": want HOST:PORT`},
		{[]string{"mock", "--listen", "nohost"}, nil, 2, `--listen "nohost": want HOST:PORT`},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--redis", "mysql://x"}, nil, 2, `it has scheme "mysql"`},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--redis", "notredis"}, nil, 2, `--redis "notredis": want redis://HOST:PORT/DB (or rediss:// for TLS); it has no scheme`},
		// Redis down never stops the proxy.
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1/0"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--budget", "lots"}, nil, 2, "--budget \"lots\": want on, off or a ratio"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--budget", "1.5"}, nil, 2, "--budget"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--cooldowns", "maybe"}, nil, 2, "--cooldowns \"maybe\": want on or off"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--budget", "0.2", "--cooldowns", "off"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--budget", "off"}, cancelled, 0, "llmretry proxy on"},
		{[]string{"mock", "--faults", "explode"}, nil, 2, "unknown fault"},
		{[]string{"mock", "--listen", "127.0.0.1:0", "--faults", "503,ok"}, cancelled, 0, "mock provider listening"},
		{[]string{"demo", "--requests", "0"}, nil, 2, "--requests 0: want 1 or more"},
		{[]string{"demo", "--upstream", "https://api.example.com/v1"}, nil, 2, "OPENAI_API_KEY"},
		{[]string{"demo", "extra"}, nil, 2, "unexpected argument"},
		{[]string{"demo", "--requests", "3", "--faults", "503"}, nil, 0, "streams intact, exactly once"},
		// --failover gives the primary the harder mix, unless --faults is set.
		{[]string{"demo", "--requests", "3", "--failover"}, nil, 0, `with faults "503@25%`},
		{[]string{"demo", "--requests", "3", "--failover", "--faults", "503"}, nil, 0, `with faults "503"`},
		{[]string{"version"}, nil, 0, "llmretry "},
		{[]string{"--version"}, nil, 0, "llmretry "},
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

// Help goes to stdout, and exits 0; it used to go to stderr.
func TestHelpGoesToStdout(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"proxy", "--help"}, {"mock", "-h"}, {"demo", "--help"}} {
		var stdout, stderr bytes.Buffer
		if got := run(context.Background(), args, &stdout, &stderr); got != 0 || stdout.Len() == 0 || stderr.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %d bytes, stderr %q", args, got, stdout.Len(), stderr.String())
		}
	}
}

// A usage error is one line naming the flag and the form it wants, then a
// pointer to --help: not the whole flag list.
func TestUsageErrorIsOneLine(t *testing.T) {
	cases := map[string][]string{
		"llmretry proxy: --base-delay: want a duration such as 500ms or 2m\n": {"proxy", "--upstream", "http://x:1", "--base-delay", "soon"},
		"llmretry proxy: --max-attempts: want a whole number\n":               {"proxy", "--max-attempts", "three"},
		"llmretry proxy: unknown flag --retries\n":                            {"proxy", "--retries", "3"},
		"llmretry mock: --listen needs a value\n":                             {"mock", "--listen"},
		"llmretry demo: unexpected argument \"extra\"\n":                      {"demo", "extra"},
		"llmretry proxy: --cooldowns \"maybe\": want on or off\n":             {"proxy", "--upstream", "http://x:1", "--cooldowns", "maybe"},
	}
	for want, args := range cases {
		var stdout, stderr bytes.Buffer
		if got := run(context.Background(), args, &stdout, &stderr); got != 2 {
			t.Errorf("%v: exit %d", args, got)
		}
		lines := strings.SplitAfter(stderr.String(), "\n")
		if len(lines) != 3 || lines[0] != want || !strings.Contains(lines[1], "--help") {
			t.Errorf("%v: got %q, want %q and a pointer to --help", args, stderr.String(), want)
		}
	}
}

// version prints the module version from the build information.
func TestVersion(t *testing.T) {
	var stdout bytes.Buffer
	run(context.Background(), []string{"version"}, &stdout, &bytes.Buffer{})
	if got := stdout.String(); got != "llmretry "+version()+"\n" || version() == "" {
		t.Fatalf("got %q", got)
	}
}

// With Redis down, go-redis logged a dial failure several times a second
// through its package-level logger, unstructured, beside redisstate's one
// warning. The proxy routes those lines into its own slog logger at Debug,
// which it prints only with --log-level debug.
func TestRedisDialFailuresGoToTheProxysLogger(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer dead.Close()
	for _, level := range []string{"info", "debug"} {
		var stdout, stderr bytes.Buffer
		args := []string{"proxy", "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1/0", "--log-level", level}
		if code := run(cancelled, args, &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		stderr.Reset()
		_ = dead.Ping(context.Background()).Err() // go-redis logs the failed dial
		got := strings.Count(stderr.String(), "go-redis: ")
		if level == "info" && got != 0 {
			t.Fatalf("--log-level info printed go-redis's lines:\n%s", stderr.String())
		}
		if level == "debug" && (got == 0 || !strings.Contains(stderr.String(), "level=DEBUG")) {
			t.Fatalf("--log-level debug: go-redis's line did not reach the proxy's logger:\n%s", stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"proxy", "--upstream", "http://x:1", "--log-level", "loud"}, &stdout, &stderr); code != 2 {
		t.Fatalf("--log-level loud: exit %d", code)
	}
}

// A bad flag value was reported as "attempts, delays and sizes must be
// positive", naming no flag. The one line names the flag, its value and
// what it wants.
func TestBadFlagValueNamesTheFlag(t *testing.T) {
	for want, args := range map[string][]string{
		"llmretry proxy: --max-attempts 0: want 1 or more (the first attempt counts)\n":       {"--max-attempts", "0"},
		"llmretry proxy: --base-delay 0s: want more than 0\n":                                 {"--base-delay", "0s"},
		"llmretry proxy: --max-body -1: want more than 0\n":                                   {"--max-body", "-1"},
		"llmretry proxy: --max-held 0: want more than 0\n":                                    {"--max-held", "0"},
		"llmretry proxy: --upstream-timeout -1s: want more than 0\n":                          {"--upstream-timeout", "-1s"},
		"llmretry proxy: --idle-timeout -1s: want 0 (off) or more\n":                          {"--idle-timeout", "-1s"},
		"llmretry proxy: --grace -5s: want 0 (off) or more\n":                                 {"--grace", "-5s"},
		"llmretry proxy: --admin-listen \"nohost\": want HOST:PORT, such as 127.0.0.1:8787\n": {"--admin-listen", "nohost"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"proxy", "--upstream", "http://127.0.0.1:1"}, args...), &stdout, &stderr)
		if lines := strings.SplitAfter(stderr.String(), "\n"); code != 2 || lines[0] != want {
			t.Errorf("%v: exit %d, got %q, want %q", args, code, stderr.String(), want)
		}
	}
	for want, args := range map[string][]string{
		"llmretry demo: --requests 0: want 1 or more\n":     {"--requests", "0"},
		"llmretry demo: --concurrency -2: want 1 or more\n": {"--concurrency", "-2"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), append([]string{"demo"}, args...), &stdout, &stderr)
		if lines := strings.SplitAfter(stderr.String(), "\n"); code != 2 || lines[0] != want {
			t.Errorf("%v: exit %d, got %q, want %q", args, code, stderr.String(), want)
		}
	}
}

// `llmretry help proxy` printed the general usage. It prints the
// command's own help, as `llmretry proxy --help` does, for each command.
func TestHelpCommandPrintsThatCommandsHelp(t *testing.T) {
	for _, c := range []string{"proxy", "demo", "mock"} {
		var viaHelp, viaFlag, stderr bytes.Buffer
		if code := run(context.Background(), []string{"help", c}, &viaHelp, &stderr); code != 0 || stderr.Len() != 0 {
			t.Fatalf("help %s: exit %d, stderr %q", c, code, stderr.String())
		}
		run(context.Background(), []string{c, "--help"}, &viaFlag, &stderr)
		if viaHelp.String() != viaFlag.String() || !strings.HasPrefix(viaHelp.String(), "Usage: llmretry "+c) {
			t.Errorf("help %s printed:\n%s\nwant %s --help's:\n%s", c, viaHelp.String(), c, viaFlag.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"help", "version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "Usage: llmretry version") {
		t.Errorf("help version: exit %d: %q", code, stdout.String())
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"help", "frobnicate"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), `llmretry help: unknown command "frobnicate"`) {
		t.Errorf("help frobnicate: exit %d: %q", code, stderr.String())
	}
	stdout.Reset()
	if code := run(context.Background(), []string{"help"}, &stdout, &stderr); code != 0 || !strings.Contains(stdout.String(), "llmretry help COMMAND") {
		t.Errorf("help: exit %d: %q", code, stdout.String())
	}
}

// `demo --failover` with a seed printed another story each run (45 to 52
// attempts in six runs): its 8 chats in flight shared the keys' and
// targets' health, so which target served a chat depended on timing. Its
// chats now go one at a time, and the same seed prints the same lines every
// run but for ports and times.
func TestFailoverDemoTellsTheSameStoryEveryRun(t *testing.T) {
	story := func(out string) string {
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			if i := strings.Index(l, "http://127.0.0.1:"); i >= 0 {
				l = l[:i] // a port
			}
			switch f := strings.Fields(l); {
			case len(f) > 0 && f[0] == "elapsed":
				l = "elapsed" // a time
			case len(f) > 0 && f[0] == "waits":
				l, _, _ = strings.Cut(l, ",") // the count stays, the time goes
			}
			lines = append(lines, l)
		}
		return strings.Join(lines, "\n")
	}
	var first string
	for i := range 5 {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{"demo", "--failover"}, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		got := story(stdout.String())
		if !strings.Contains(got, "served by target fallback") || !strings.Contains(got, "served by target primary") {
			t.Fatalf("the story lacks its targets:\n%s", got)
		}
		if i == 0 {
			first = got
		} else if got != first {
			t.Fatalf("run %d told another story:\n%s\n--- the first:\n%s", i+1, got, first)
		}
	}
	// Chats in flight together are the user's choice, and the demo says
	// what it costs.
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"demo", "--failover", "--concurrency", "4", "--requests", "4"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stderr.String(), "llmretry demo: --failover with --concurrency 4: chats in flight together share the keys' and targets' health, so which target serves a chat depends on timing") {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}
