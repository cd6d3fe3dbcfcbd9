// Command llmretry is a retrying proxy for LLM APIs, a fault-injecting mock
// provider, and an offline demo of both.
//
//	llmretry demo                      see retries work, no network or key needed
//	llmretry proxy --upstream URL      put retries in front of any client
//	llmretry mock --faults SPEC        a mock provider that fails on purpose
//
// Exit status: 0 on success, 2 on a usage error, 1 on failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `llmretry: retries for LLM API calls that never replay a started stream.

Usage:
  llmretry demo  [flags]   run the retrying client against an in-process faulty mock provider
  llmretry proxy [flags]   a retrying reverse proxy in front of an LLM API
  llmretry mock  [flags]   a mock LLM provider with scripted faults

Run 'llmretry COMMAND --help' for a command's flags.
`

// errUsage marks a usage error (exit status 2); the message was printed.
var errUsage = errors.New("usage error")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole command, for tests: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "demo":
		err = runDemo(ctx, args[1:], stdout, stderr)
	case "proxy":
		err = runProxy(ctx, args[1:], stdout, stderr)
	case "mock":
		err = runMock(ctx, args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "llmretry: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "llmretry %s: %v\n", args[0], err)
		return 1
	}
}

// parse parses a subcommand's flags; a bad flag or argument is errUsage.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// usageErr prints a usage problem and returns errUsage.
func usageErr(fs *flag.FlagSet, stderr io.Writer, format string, a ...any) error {
	fmt.Fprintf(stderr, format+"\n", a...)
	fs.Usage()
	return errUsage
}
