// Command client holds n streamed chat completions open at once through a
// target and measures the target's memory while they are all open: the
// load and the measure of bench/streams/run.sh.
//
// Clients speak h2c (-proto h2c: HTTP/2 without TLS, so that ten thousand
// streams fit in a few connections) or HTTP/1.1 (-proto h1: one connection
// per stream, keep-alive on, as Python's httpx and Node's fetch do by
// default).
//
// The premise is checked, not assumed. Each stream records, on this
// process's monotonic clock, when its first event arrived and when it
// closed; the target's resident memory (VmRSS of -pid) is sampled on the
// same clock every -every, each sample with the times just before and just
// after it read /proc. A sample counts only if both times lie inside every
// stream's window, that is after the last first event and before the first
// close. The figure is the largest such sample less the idle one taken
// before any stream started, divided by the streams open. If no sample
// counts (the streams were never all open at once, or not for a whole
// sampling interval) the client prints why and exits 1: there is no
// figure. A stream that fails (not a 200, no [DONE], cut) also ends the run
// with exit 1, unless -allow-failures (for a baseline): then the failures
// are counted beside the figure, and the window is taken over the streams
// that opened.
//
//	client -url http://127.0.0.1:18290/v1/chat/completions -n 2000 -proto h1 -pid 1234 [-allow-failures] [-ramp 0] [-when-open CMD]
//
// It prints one line of key=value pairs (see report); with -upstream-port,
// also the most established connections to that port seen at a sample.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// stream is what one stream saw: when its first event arrived and when it
// closed (zero if never), and whether it arrived whole.
type stream struct {
	first, closed time.Time
	intact        bool
	why           string
}

// sample is one reading of the target's VmRSS, between before and after.
type sample struct {
	before, after time.Time
	kib           int64
}

func main() {
	url := flag.String("url", "", "the chat completions URL")
	n := flag.Int("n", 1000, "streams held open at once")
	proto := flag.String("proto", "h2c", "how clients speak: h2c, or h1 (one HTTP/1.1 connection per stream)")
	pid := flag.Int("pid", 0, "the process whose memory is measured")
	every := flag.Duration("every", 200*time.Millisecond, "how often its memory is sampled")
	ramp := flag.Duration("ramp", 0, "spread the streams' starts over this long (0: all at once); longer than a stream, to see the premise check fail")
	allow := flag.Bool("allow-failures", false, "count failed streams beside the figure instead of failing (for a baseline)")
	whenOpen := flag.String("when-open", "", "a shell command run once every stream has its first event (e.g. to take profiles)")
	upstreamPort := flag.Int("upstream-port", 0, "count the established TCP connections to this port at each sample (the target's upstream connections)")
	flag.Parse()
	if *url == "" || *n < 1 || *pid == 0 || (*proto != "h2c" && *proto != "h1") {
		fmt.Fprintln(os.Stderr, "usage: client -url URL -pid PID [-n 1000] [-proto h2c|h1] [-allow-failures] [-ramp D] [-when-open CMD]")
		os.Exit(2)
	}
	hc := &http.Client{Transport: transport(*proto, *n), Timeout: 10 * time.Minute}

	idle, err := rss(*pid)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(2)
	}
	streams := make([]stream, *n)
	var samples []sample
	var conns int // the most upstream connections seen at once
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // the sampler
		defer close(sampled)
		t := time.NewTicker(*every)
		defer t.Stop()
		for {
			before := time.Now()
			kib, err := rss(*pid)
			after := time.Now()
			if err == nil {
				samples = append(samples, sample{before, after, kib})
			}
			if *upstreamPort > 0 {
				conns = max(conns, established(*upstreamPort))
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()

	var opened atomic.Int64
	var hook sync.WaitGroup
	start := time.Now()
	var wg sync.WaitGroup
	for i := range *n {
		if *ramp > 0 {
			time.Sleep(time.Until(start.Add(*ramp * time.Duration(i) / time.Duration(*n))))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &streams[i]
			run(hc, *url, s, func() {
				if opened.Add(1) == int64(*n) && *whenOpen != "" {
					hook.Add(1)
					go func() {
						defer hook.Done()
						if out, err := exec.Command("sh", "-c", *whenOpen).CombinedOutput(); err != nil {
							fmt.Fprintf(os.Stderr, "client: -when-open: %v: %s\n", err, out)
						}
					}()
				}
			})
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	hook.Wait()
	extra := ""
	if *upstreamPort > 0 {
		// How many upstream connections the target held at most: over
		// HTTPS a burst of streams can make it dial hundreds, whose
		// handshakes' garbage then counts in its memory.
		extra = fmt.Sprintf(" upstream_conns_max=%d", conns)
	}
	os.Exit(report(os.Stdout, os.Stderr, streams, samples, idle, start, *allow, extra))
}

// transport is how the clients speak.
func transport(proto string, n int) http.RoundTripper {
	tr := &http.Transport{
		DialContext:        (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
		DisableCompression: true,
		// HTTP/1.1: each open stream has a connection of its own; all may
		// be kept for reuse (keep-alive on).
		MaxIdleConnsPerHost: n,
	}
	tr.Protocols = new(http.Protocols)
	if proto == "h1" {
		tr.Protocols.SetHTTP1(true)
	} else {
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	return tr
}

// run sends one streamed chat and reads it to its end, filling s; opened
// runs when its first event arrives.
func run(hc *http.Client, url string, s *stream, opened func()) {
	body := []byte(`{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-bench")
	resp, err := hc.Do(req)
	if err != nil {
		s.closed, s.why = time.Now(), err.Error()
		return
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		if s.first.IsZero() {
			s.first = time.Now()
			opened()
		}
		if line == "data: [DONE]" {
			done = true
		}
	}
	s.closed = time.Now()
	switch {
	case resp.StatusCode != http.StatusOK:
		s.why = "status " + strconv.Itoa(resp.StatusCode)
	case sc.Err() != nil:
		s.why = sc.Err().Error()
	case !done:
		s.why = "no [DONE]"
	default:
		s.intact = true
	}
}

// report prints the figure, or why there is none, and returns the exit code:
// 0, or 1 when the premise does not hold or (without allow) a stream failed.
func report(out, errOut io.Writer, streams []stream, samples []sample, idle int64, start time.Time, allow bool, extra string) int {
	var lastFirst, firstClose time.Time
	open, intact := 0, 0
	var why []string
	for _, s := range streams {
		if s.intact {
			intact++
		} else if len(why) < 3 {
			why = append(why, s.why)
		}
		if s.first.IsZero() {
			continue // never opened: a failure, not in the window
		}
		open++
		if s.first.After(lastFirst) {
			lastFirst = s.first
		}
		if firstClose.IsZero() || s.closed.Before(firstClose) {
			firstClose = s.closed
		}
	}
	failed := len(streams) - intact
	var peak, peakAll int64
	in := 0
	for _, s := range samples {
		peakAll = max(peakAll, s.kib)
		if open > 0 && !s.before.Before(lastFirst) && !s.after.After(firstClose) {
			in++
			peak = max(peak, s.kib)
		}
	}
	sec := func(t time.Time) string { return fmt.Sprintf("%.3fs", t.Sub(start).Seconds()) }
	if failed > 0 && !allow {
		fmt.Fprintf(errOut, "client: %d of %d streams failed (%s): the target under test must serve them all\n", failed, len(streams), strings.Join(why, "; "))
		return 1
	}
	if in == 0 {
		fmt.Fprintf(errOut, "client: premise not met: no memory sample was taken while all %d opened streams were open at once "+
			"(the last first event came at %s, the first stream closed at %s, %d samples in all); no figure\n",
			open, sec(lastFirst), sec(firstClose), len(samples))
		return 1
	}
	fmt.Fprintf(out, "streams=%d open=%d intact=%d failed=%d all_open_from=%s all_open_until=%s samples_in_window=%d rss_idle_kib=%d rss_peak_open_kib=%d per_stream_kib=%.1f rss_peak_run_kib=%d",
		len(streams), open, intact, failed, sec(lastFirst), sec(firstClose), in, idle, peak, float64(peak-idle)/float64(open), peakAll)
	fmt.Fprint(out, extra)
	if failed > 0 {
		fmt.Fprintf(out, " failures=%q", strings.Join(why, "; "))
	}
	fmt.Fprintln(out)
	return 0
}

// established counts the established TCP connections to port on this host
// (from /proc/net/tcp and tcp6: remote port, state 01).
func established(port int) int {
	want := fmt.Sprintf(":%04X", port)
	// The kernel writes these files a piece per read, walking tables that
	// change meanwhile: with thousands of connections opening, a line can
	// come twice (a count of 12,359 where the proxy could hold at most
	// 11,000). Each connection is counted once, by its local address.
	seen := make(map[string]bool)
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range bytes.Lines(b) {
			fields := strings.Fields(string(line))
			if len(fields) > 3 && strings.HasSuffix(fields[2], want) && fields[3] == "01" {
				seen[f+" "+fields[1]] = true
			}
		}
	}
	return len(seen)
}

// rss is pid's resident memory in KiB.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := strings.Fields(string(v))
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
