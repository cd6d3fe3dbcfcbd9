package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// The test binary stands in for the command: run with
// LLMRETRY_TEST_SMALLSTACKS set, it does what main does first, then
// prints the GODEBUG it runs with.
func TestMain(m *testing.M) {
	if os.Getenv("LLMRETRY_TEST_SMALLSTACKS") != "" {
		smallStacks(os.Args)
		comm, _ := os.ReadFile("/proc/self/comm")
		fmt.Printf("%s %s", strings.TrimSpace(string(comm)), os.Getenv("GODEBUG"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestGODEBUGGetsSmallStacksUnlessItSetsThem(t *testing.T) {
	for _, c := range []struct {
		godebug []string // GODEBUG entries in the environment
		want    string   // GODEBUG after; "" for the environment unchanged
	}{
		{nil, "adaptivestackstart=0"},
		{[]string{""}, "adaptivestackstart=0"},
		{[]string{"http2debug=1"}, "http2debug=1,adaptivestackstart=0"},
		{[]string{"adaptivestackstart=1"}, ""},
		{[]string{"gctrace=1, adaptivestackstart=0"}, ""},
	} {
		env := []string{"HOME=/home/x", "PATH=/bin"}
		for _, g := range c.godebug {
			env = append(env, "GODEBUG="+g)
		}
		got, again := withSmallStacks(slices.Clone(env))
		if c.want == "" {
			if again || !slices.Equal(got, env) {
				t.Errorf("%q: %q, %v; want it unchanged", c.godebug, got, again)
			}
			continue
		}
		want := []string{"HOME=/home/x", "PATH=/bin", "GODEBUG=" + c.want}
		if !again || !slices.Equal(got, want) {
			t.Errorf("%q: %q, %v; want %q", c.godebug, got, again, want)
		}
	}
}

// The proxy runs with the adaptive stack start off (stackstart.go): the
// process executes itself again with it in GODEBUG, keeping the other
// settings there, and an operator's own choice stands. Other commands
// are left as they are. The process keeps its name (pgrep and killall
// find it by it), which executing /proc/self/exe once lost ("exe").
func TestProxyRunsWithSmallStacks(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("smallStacks executes the binary again only where it can in place; the test follows /proc/self/exe")
	}
	for _, c := range []struct {
		command, godebug, want string
	}{
		{"proxy", "", "adaptivestackstart=0"},
		{"proxy", "gctrace=0", "gctrace=0,adaptivestackstart=0"},
		{"proxy", "adaptivestackstart=1", "adaptivestackstart=1"},
		{"mock", "", ""},
		{"demo", "gctrace=0", "gctrace=0"},
	} {
		// In parallel: each starts the race-instrumented test binary anew.
		t.Run(c.command+" "+c.godebug, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], c.command)
			cmd.Env = append(os.Environ(), "LLMRETRY_TEST_SMALLSTACKS=1", "GODEBUG="+c.godebug)
			out, err := cmd.CombinedOutput()
			name := filepath.Base(os.Args[0])
			name = name[:min(len(name), 15)] // the kernel keeps 15 bytes of it
			comm, godebug, _ := strings.Cut(string(out), " ")
			if err != nil || godebug != c.want || comm != name {
				t.Errorf("%s with GODEBUG=%q: ran as %q with GODEBUG=%q (%v), want %q with %q", c.command, c.godebug, comm, godebug, err, name, c.want)
			}
		})
	}
}
