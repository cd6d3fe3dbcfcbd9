package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/llmretry/llmretry/cmd/internal/demo"
	"github.com/llmretry/llmretry/cmd/internal/proxy"
	"github.com/llmretry/llmretry/mockllm"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("llmretry demo", flag.ContinueOnError)
	requests := fs.Int("requests", 40, "streamed chats to send")
	conc := fs.Int("concurrency", 8, "chats in flight at once (with --failover, 1 unless set: see --failover)")
	faults := fs.String("faults", demo.DefaultFaults, "fault mix for the in-process mock provider (see llmretry mock --help)")
	seed := fs.Uint64("seed", demo.DefaultSeed, "seed for the fault draws: each chat draws its faults from the seed and its own number, so a seed always tells the same story")
	upstream := fs.String("upstream", "", "a real OpenAI-compatible API's base URL, as its SDK takes it, e.g. https://api.openai.com/v1; the key comes from $OPENAI_API_KEY")
	model := fs.String("model", "gpt-4o-mini", "model to ask")
	cont := fs.Bool("continue", false, "turn stream continuation on: a stream cut after its first output is finished by a continuation (the mock answers it), and the chat's line says so")
	failover := fs.Bool("failover", false, "add a second, healthy mock provider and fail over to it: the summary says which target served what (the primary's faults default to "+demo.DefaultFailoverFaults+"). The chats go one at a time, in order: which target serves a chat depends on what the chats before it taught the Transport, so that a seed tells the same story every run")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: llmretry demo [flags]\n\nSends concurrent streamed chats with the openai-go client through llmretry's Transport\nto an in-process mock provider that fails on purpose. No network or API key needed.\n\n")
		fs.PrintDefaults()
	}
	if err := parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *failover && *upstream != "" {
		return usageErr(fs, stderr, "--failover is shown with the mock providers; leave out --upstream")
	}
	if *failover && !flagSet(fs, "faults") {
		*faults = demo.DefaultFailoverFaults // the primary is the one that fails
	}
	// Keys resting and targets ejected are shared by every chat: with
	// chats in flight together, which target serves one depends on which
	// of the others failed first. One at a time, the story depends on the
	// seed alone.
	if *failover && !flagSet(fs, "concurrency") {
		*conc = 1
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"requests", *requests}, {"concurrency", *conc}} {
		if f.v < 1 {
			return usageErr(fs, stderr, "--%s %d: want 1 or more", f.name, f.v)
		}
	}
	if *failover && *conc > 1 {
		fmt.Fprintf(stderr, "llmretry demo: --failover with --concurrency %d: chats in flight together share the keys' and targets' health, so which target serves a chat depends on timing, and the seed no longer fixes the story\n", *conc)
	}
	if _, err := mockllm.ParseFaults(*faults); err != nil {
		return usageErr(fs, stderr, "--faults: %v", err)
	}
	key := ""
	if *upstream != "" {
		base, note, err := proxy.ParseBaseURL(*upstream)
		if err != nil {
			return usageErr(fs, stderr, "--upstream %q: %v", *upstream, err)
		}
		if key = os.Getenv("OPENAI_API_KEY"); key == "" {
			return usageErr(fs, stderr, "--upstream needs an API key in $OPENAI_API_KEY")
		}
		if note != "" {
			fmt.Fprintf(stderr, "llmretry demo: --upstream %s\n", note)
		}
		*upstream = base.String()
	}
	_, err := demo.Run(ctx, demo.Config{
		Requests: *requests, Concurrency: *conc, Faults: *faults, Seed: *seed,
		Upstream: *upstream, APIKey: key, Model: *model, Terminal: isTerminal(stdout), Failover: *failover, Continue: *cont,
	}, stdout)
	return err
}

// flagSet reports whether the command line set flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
