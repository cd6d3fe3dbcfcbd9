package demo

import (
	"fmt"
	"io"
	"strings"
	"sync"
)

// progress shows requests as they finish: a bar redrawn in place on a
// terminal, one plain line each otherwise (logs, CI, pipes).
type progress struct {
	mu       sync.Mutex
	out      io.Writer
	terminal bool
	total    int
	done_    int
	failed   int
}

func newProgress(out io.Writer, terminal bool, total int) *progress {
	return &progress{out: out, terminal: terminal, total: total}
}

func (p *progress) done(n int, r result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done_++
	if r.err != nil {
		p.failed++
	}
	if !p.terminal {
		status := "ok"
		switch {
		case r.stream == streamCut:
			status = "stream cut after its first event (not replayed)"
		case r.err != nil:
			status = "failed: " + firstLine(r.err.Error())
		}
		fmt.Fprintf(p.out, "request %3d: %s\n", n, status)
		return
	}
	const width = 30
	filled := width * p.done_ / p.total
	fmt.Fprintf(p.out, "\r[%s%s] %d/%d done, %d failed", strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.done_, p.total, p.failed)
}

func (p *progress) finish() {
	if p.terminal {
		fmt.Fprintln(p.out)
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}
