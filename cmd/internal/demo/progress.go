package demo

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/llmretry/llmretry/mockllm"
)

// progress shows requests as they finish: a bar redrawn in place on a
// terminal; otherwise (logs, CI, pipes) one line a request, in request
// order, so that the same seed prints the same story however the requests
// interleave.
type progress struct {
	mu          sync.Mutex
	out         io.Writer
	terminal    bool
	total       int
	maxAttempts int
	finished    int
	failed      int
	next        int            // the next request whose line is due
	ready       map[int]string // lines waiting for an earlier request
}

func newProgress(out io.Writer, terminal bool, total, maxAttempts int) *progress {
	return &progress{out: out, terminal: terminal, total: total, maxAttempts: maxAttempts, next: 1, ready: map[int]string{}}
}

func (p *progress) done(n int, r result) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finished++
	if r.err != nil {
		p.failed++
	}
	if !p.terminal {
		line := describe(r, p.maxAttempts)
		if r.target != "" {
			line += "; served by " + r.target
		}
		p.ready[n] = fmt.Sprintf("request %3d: %s\n", n, line)
		for line, ok := p.ready[p.next]; ok; line, ok = p.ready[p.next] {
			_, _ = io.WriteString(p.out, line)
			delete(p.ready, p.next)
			p.next++
		}
		return
	}
	const width = 30
	filled := width * p.finished / p.total
	fmt.Fprintf(p.out, "\r[%s%s] %d/%d done, %d failed", strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.finished, p.total, p.failed)
}

// finish prints what is left (requests that never finished, if the run was
// cancelled, leave gaps).
func (p *progress) finish() {
	if p.terminal {
		fmt.Fprintln(p.out)
		return
	}
	for n := p.next; n <= p.total; n++ {
		if line, ok := p.ready[n]; ok {
			_, _ = io.WriteString(p.out, line)
		}
	}
}

// describe says what happened to one request, in words: how many attempts
// it took and, when it failed, why.
func describe(r result, maxAttempts int) string {
	tries := plural(r.attempts, "attempt")
	var retried []string
	for _, f := range r.faults {
		if f.Kind != mockllm.OK {
			retried = append(retried, faultName(f))
		}
	}
	switch {
	case r.stream == streamCut:
		return "stream cut mid-reply after its first events (" + tries + "); not replayed: the client got the error"
	case r.continued():
		return "stream cut mid-reply, then finished by a continuation (" + tries + "): the client read it whole, nothing twice"
	case r.err == nil && len(retried) == 0:
		return "ok (" + tries + ")"
	case r.err == nil:
		return "ok after " + tries + " (retried: " + strings.Join(retried, ", ") + ")"
	}
	last := ""
	if len(r.faults) > 0 {
		last = faultName(r.faults[len(r.faults)-1])
	}
	switch {
	case len(r.faults) > 0 && r.faults[len(r.faults)-1].Kind == mockllm.Quota:
		return "failed: quota exhausted, not retried (" + tries + ")"
	case last != "" && r.attempts >= maxAttempts:
		return "failed: gave up after " + tries + ": " + last
	case last != "":
		return "failed: " + last + " (" + tries + ")"
	}
	return "failed after " + tries + ": " + firstLine(r.err.Error())
}

// faultName names what the mock did to an attempt.
func faultName(f mockllm.Fault) string {
	switch f.Kind {
	case mockllm.Status:
		name := fmt.Sprint(f.Code)
		for k := range f.Header {
			if strings.EqualFold(k, "retry-after") || strings.EqualFold(k, "retry-after-ms") {
				name += " with " + k
			}
		}
		return name
	case mockllm.Quota:
		return "quota exhausted"
	case mockllm.RetryInfo:
		return "429 RESOURCE_EXHAUSTED"
	case mockllm.Reset:
		return "connection reset"
	case mockllm.Stall:
		return "stalled"
	case mockllm.FirstEventError:
		return "error as the first stream event"
	case mockllm.Drop:
		return "stream cut mid-reply"
	case mockllm.Cut:
		return "stream cut after " + strconv.Itoa(f.Bytes) + " bytes"
	case mockllm.Slow:
		return "slow stream"
	}
	return "ok"
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// firstLine is an error's first line, cut at a word boundary if long.
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) <= 120 {
		return s
	}
	cut := strings.LastIndex(s[:120], " ")
	if cut < 60 {
		cut = 120
	}
	return s[:cut] + " ..."
}
