// Command llmretry is a retrying proxy for LLM APIs, a fault-injecting mock
// provider, and an offline demo of both.
//
//	llmretry demo                      see retries work, no network or key needed
//	llmretry proxy --upstream URL      put retries in front of any client
//	llmretry mock --faults SPEC        a mock provider that fails on purpose
//	llmretry version                   the module version it was built from
//	llmretry help COMMAND              a command's flags
//
// Exit status: 0 on success, 2 on a usage error, 1 on failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

const usage = `llmretry: retries for LLM API calls that never replay a started stream.

Usage:
  llmretry demo  [flags]   run the retrying client against an in-process faulty mock provider
  llmretry proxy [flags]   a retrying reverse proxy in front of an LLM API
  llmretry mock  [flags]   a mock LLM provider with scripted faults
  llmretry version         print the version

Run 'llmretry help COMMAND' (or 'llmretry COMMAND --help') for a command's flags.
`

// errUsage marks a usage error (exit status 2); the message was printed.
var errUsage = errors.New("usage error")

func main() {
	smallStacks(os.Args)
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
	case "help":
		// help COMMAND is COMMAND --help.
		if len(args) > 1 {
			switch args[1] {
			case "demo", "proxy", "mock":
				return run(ctx, []string{args[1], "--help"}, stdout, stderr)
			case "version":
				fmt.Fprintln(stdout, "Usage: llmretry version\n\nPrints the module version the command was built from.")
				return 0
			default:
				fmt.Fprintf(stderr, "llmretry help: unknown command %q\n\n%s", args[1], usage)
				return 2
			}
		}
		fmt.Fprint(stdout, usage)
		return 0
	case "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "llmretry", version())
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

// version is the module version the binary was built from: a release tag
// when installed with go install ...@vX, "(devel)" from a clone, with the
// commit when the build recorded one.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}

// parse parses a subcommand's flags. --help prints the flags to stdout
// (flag.ErrHelp, exit 0); a bad flag or argument prints one line that names
// it and what it wants, and a pointer to --help (errUsage, exit 2).
func parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	fs.SetOutput(io.Discard) // the flag package's own messages are replaced below
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return err
	case err != nil:
		return usageErr(fs, stderr, "%s", flagProblem(fs, err))
	case fs.NArg() > 0:
		return usageErr(fs, stderr, "unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// flagProblem says in one line what is wrong with a flag, from the flag
// package's error.
func flagProblem(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return "unknown flag --" + name
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return "--" + name + " needs a value"
	}
	// invalid value "x" for flag -name: parse error
	if _, rest, ok := strings.Cut(msg, " for flag -"); ok {
		name, _, _ := strings.Cut(rest, ":")
		if f := fs.Lookup(name); f != nil {
			return "--" + name + ": want " + wantOf(f)
		}
	}
	return msg
}

// wantOf names the form a flag's value takes.
func wantOf(f *flag.Flag) string {
	switch fmt.Sprintf("%T", f.Value) {
	case "*flag.durationValue":
		return "a duration such as 500ms or 2m"
	case "*flag.intValue", "*flag.int64Value", "*flag.uintValue", "*flag.uint64Value":
		return "a whole number"
	case "*flag.boolValue":
		return "true or false"
	case "*flag.float64Value":
		return "a number"
	}
	return "a value such as " + strconv.Quote(f.DefValue)
}

// checkAddr makes an address flag (--listen, --admin-listen) that is not
// HOST:PORT a usage error naming the flag, before anything listens.
func checkAddr(fs *flag.FlagSet, stderr io.Writer, name, addr string) error {
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return usageErr(fs, stderr, "--%s %q: want HOST:PORT, such as 127.0.0.1:8787", name, addr)
	}
	return nil
}

// usageErr prints a usage problem in one line, and where to find the
// flags, and returns errUsage.
func usageErr(fs *flag.FlagSet, stderr io.Writer, format string, a ...any) error {
	fmt.Fprintf(stderr, "%s: %s\nRun '%s --help' for its flags.\n", fs.Name(), fmt.Sprintf(format, a...), fs.Name())
	return errUsage
}

// checkPositive makes a flag whose value is out of range a usage error
// naming the flag and its value: above, those that must be more than 0;
// zeroOK, those that may be 0 (off) but not less.
func checkPositive(fs *flag.FlagSet, stderr io.Writer, above, zeroOK map[string]bool) error {
	for _, group := range []struct {
		bad  map[string]bool
		want string
	}{{above, "more than 0"}, {zeroOK, "0 (off) or more"}} {
		names := make([]string, 0, len(group.bad))
		for name, bad := range group.bad {
			if bad {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			want := group.want
			if name == "max-attempts" {
				want = "1 or more (the first attempt counts)"
			}
			return usageErr(fs, stderr, "--%s %s: want %s", name, fs.Lookup(name).Value, want)
		}
	}
	return nil
}
