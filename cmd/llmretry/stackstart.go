//go:build unix

package main

import (
	"os"
	"syscall"
)

// smallStacks runs the proxy with Go's adaptive stack start off: it
// executes the binary again, in the same process, with
// adaptivestackstart=0 added to GODEBUG, a setting the runtime reads only
// when a process starts.
//
// Why: every goroutine starts with a stack the size of the average one
// the last GC saw. While a burst of streams waits for their first output,
// that average is a deep handler's, so each short goroutine a stream
// starts (the read of its first event, net/http's read-ahead, its upstream
// dial) gets 4 or 8 KiB where 2 would do, and the memory stays with the
// process after they end. Measured with 2,000 streams held open at once,
// it was about 4 KiB a stream (BENCHMARKS.md); the cost is a stack that
// grows by copying when it must, a few microseconds a request.
//
// An operator who sets adaptivestackstart in GODEBUG keeps their choice;
// when the binary cannot be executed again, the proxy runs as it is.
func smallStacks(args []string) {
	if len(args) < 2 || args[1] != "proxy" {
		return
	}
	env, again := withSmallStacks(os.Environ())
	if !again {
		return
	}
	// By its path, not /proc/self/exe: the process is named after the
	// file it executes, and pgrep, killall and top look for "llmretry".
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, args, env) // returns only if it failed (the file gone, say)
}
