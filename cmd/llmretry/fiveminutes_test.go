package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmretry/llmretry/mockllm"
)

// readmeFile is the README, found from where the tests start (some move
// to a directory of their own).
var readmeFile = func() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Join(wd, "..", "..", "README.md")
}()

// readmeSection is the README's text from the heading to the next one of
// its level.
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile(readmeFile)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("the README has no %q", heading)
	}
	section, _, _ := strings.Cut(rest, "\n## ")
	return section
}

// readmeBlock is one fenced block of the README: its info string ("yaml",
// or "" for commands) and its lines, a line ending in \ joined to the next.
type readmeBlock struct {
	info  string
	lines []string
}

func readmeBlocks(section string) []readmeBlock {
	var blocks []readmeBlock
	var cur *readmeBlock
	for _, line := range strings.Split(section, "\n") {
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			blocks = append(blocks, readmeBlock{info: strings.TrimPrefix(line, "```")})
			cur = &blocks[len(blocks)-1]
		case cur == nil:
		case line == "```":
			cur = nil
		case len(cur.lines) > 0 && strings.HasSuffix(cur.lines[len(cur.lines)-1], "\\"):
			last := &cur.lines[len(cur.lines)-1]
			*last = strings.TrimSuffix(*last, "\\") + strings.TrimLeft(line, " \t")
		default:
			cur.lines = append(cur.lines, line)
		}
	}
	return blocks
}

// shellWords splits a command line as a POSIX shell would, for the
// quoting the README uses: '...', "..." and plain words.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == ' ' || c == '\t':
			if inWord {
				words, inWord = append(words, w.String()), false
				w.Reset()
			}
		case c == '\'' || c == '"':
			end := strings.IndexByte(line[i+1:], c)
			if end < 0 {
				t.Fatalf("unclosed quote in %q", line)
			}
			w.WriteString(line[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '$' || c == '\\' || c == '`':
			t.Fatalf("%q: the test reads no shell expansions", line)
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

// addrRE is a loopback address as the README writes them.
var addrRE = regexp.MustCompile(`127\.0\.0\.1:\d+`)

// background is a command of the README left running.
type background struct {
	stop    func()
	startup []string
}

// startLines runs `llmretry args...` until the test ends and returns its
// stdout's lines up to the one for which last is true.
func startLines(t *testing.T, args []string, last func(string) bool) *background {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lineWriter{lines: make(chan string, 64)}
	errs := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, out, errs) }()
	stopped := false
	bg := &background{stop: func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("%v: exit %d: %s", args, code, errs)
		}
	}}
	t.Cleanup(bg.stop)
	guard := time.After(30 * time.Second) // a guard: the commands start at once
	for {
		select {
		case line := <-out.lines:
			bg.startup = append(bg.startup, line)
			if last(line) {
				return bg
			}
		case code := <-done:
			stopped = true
			t.Fatalf("%v exited with %d: %s", args, code, errs)
		case <-guard:
			t.Fatalf("%v: no startup line", args)
		}
	}
}

// The README's five-minute path, run as it is written: each command of
// it, in order, with its --listen addresses moved to free ports (and every
// address that names them, in later commands and in the config file,
// moved with them); what the README says of each answer is checked.
func TestReadmeFiveMinutes(t *testing.T) {
	t.Chdir(t.TempDir())        // where the config file is written, and read
	real := map[string]string{} // an address as the README writes it -> where it is
	moved := func(s string) string {
		return addrRE.ReplaceAllStringFunc(s, func(a string) string {
			if r, ok := real[a]; ok {
				return r
			}
			return a
		})
	}
	const chat = "http://127.0.0.1:8787/v1/chat/completions"
	const metrics = "http://127.0.0.1:8786/metrics"
	const failover = "http://127.0.0.1:8797/openai/chat/completions"
	checks := map[string]func(resp *http.Response, body string) string{
		chat: func(resp *http.Response, body string) string {
			if resp.StatusCode != 200 || resp.Header.Get("X-Llmretry-Attempts") != "3" || !strings.Contains(body, mockllm.ReplyText) {
				return "want 200 OK, X-Llmretry-Attempts: 3 and the mock's reply"
			}
			return ""
		},
		metrics: func(resp *http.Response, body string) string {
			if resp.StatusCode != 200 || !strings.Contains(body, "\nllmretry_retries_total{cause=\"status_503\"} 1\n") || !strings.Contains(body, "\nllmretry_retries_total{cause=\"status_429\"} 1\n") ||
				!strings.Contains(body, "\nllmretry_wait_seconds_count{source=\"retry-after\"} 1\n") {
				return "want a retry for the 503, and one for the 429 after the wait it asked for"
			}
			return ""
		},
		failover: func(resp *http.Response, body string) string {
			if resp.StatusCode != 200 || resp.Header.Get("X-Llmretry-Target") != "fallback" || resp.Header.Get("X-Llmretry-Attempts") != "2" || !strings.Contains(body, mockllm.ReplyText) {
				return "want the fallback's reply, X-Llmretry-Target: fallback and X-Llmretry-Attempts: 2"
			}
			return ""
		},
	}
	ran := 0
	var demos sync.WaitGroup
	waitDemos := func() {
		demos.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
	defer demos.Wait()
	section := readmeSection(t, "## Five minutes")
	for _, b := range readmeBlocks(section) {
		if b.info == "yaml" {
			name, ok := strings.CutPrefix(b.lines[0], "# ")
			if !ok {
				t.Fatalf("a yaml block with no file name: %q", b.lines[0])
			}
			if err := os.WriteFile(name, []byte(moved(strings.Join(b.lines, "\n"))+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			continue
		}
		for _, line := range b.lines {
			words := shellWords(t, line)
			ran++
			demo := len(words) > 3 && strings.Join(words[:3], " ") == "go run ./cmd/llmretry" && words[3] == "demo"
			if !demo {
				waitDemos()
			}
			switch {
			case demo:
				// The demos share nothing and mostly wait out their
				// faults' backoff: they run side by side, and every one
				// has finished before the next command that is not one.
				demos.Add(1)
				go func() {
					defer demos.Done()
					var stdout, stderr strings.Builder
					switch code := run(context.Background(), words[3:], &stdout, &stderr); {
					case code != 0 || !strings.Contains(stdout.String(), "streams duplicated"):
						t.Errorf("%s: exit %d:\n%s%s", line, code, stdout.String(), stderr.String())
					case strings.Contains(line, "--failover") && !strings.Contains(stdout.String(), "served by target fallback"):
						t.Errorf("%s: no failover:\n%s", line, stdout.String())
					case strings.Contains(line, "--continue") && !strings.Contains(stdout.String(), "stream cut mid-reply, then finished by a continuation"):
						t.Errorf("%s: no stream was continued:\n%s", line, stdout.String())
					}
				}()
				continue
			case len(words) > 3 && strings.Join(words[:3], " ") == "go run ./cmd/llmretry" && (words[3] == "mock" || words[3] == "proxy"):
				args := append([]string(nil), words[3:]...)
				listen := ""
				for i := range args {
					if args[i] == "--listen" && i+1 < len(args) {
						listen, args[i+1] = args[i+1], "127.0.0.1:0"
					} else {
						args[i] = moved(args[i])
					}
				}
				if listen == "" {
					t.Fatalf("%s: the five-minute path gives every command its --listen", line)
				}
				if words[3] == "mock" {
					bg := startLines(t, args, func(l string) bool { return strings.HasPrefix(l, "mock provider listening on http://") })
					rest := strings.TrimPrefix(bg.startup[len(bg.startup)-1], "mock provider listening on http://")
					real[listen], _, _ = strings.Cut(rest, " ")
					continue
				}
				bg := startLines(t, args, func(l string) bool { return strings.HasPrefix(l, "llmretry proxy fleet state: ") })
				for _, l := range bg.startup {
					if rest, ok := strings.CutPrefix(l, "llmretry proxy on http://"); ok {
						real[listen], _, _ = strings.Cut(rest, " ")
					}
					if rest, ok := strings.CutPrefix(l, "llmretry proxy admin (/healthz, /metrics) on http://"); ok {
						real[adminFor(listen)] = rest
					}
				}
				all := strings.Join(bg.startup, "\n")
				if strings.Contains(line, "--upstream") && !strings.Contains(all, "clients use "+moved("http://127.0.0.1:8787/v1")+";") {
					t.Errorf("%s: the startup lines do not say where clients point, as the README does:\n%s", line, all)
				}
				if strings.Contains(line, "--config") && (!strings.Contains(all, "api openai (guessed from the host") || !strings.Contains(all, "no keys: requests go without a credential")) {
					t.Errorf("%s: the startup lines do not say what the README says:\n%s", line, all)
				}
			case words[0] == "curl":
				method, url, header, body := "GET", "", http.Header{}, ""
				for i := 1; i < len(words); i++ {
					switch w := words[i]; {
					case w == "-H":
						k, v, _ := strings.Cut(words[i+1], ":")
						header.Add(k, strings.TrimSpace(v))
						i++
					case w == "-d":
						method, body = "POST", words[i+1]
						i++
					case strings.HasPrefix(w, "-"): // -s, -i: how curl prints
					default:
						url = w
					}
				}
				check, ok := checks[url]
				if !ok {
					t.Fatalf("%s: no check of what the README says of %s", line, url)
				}
				delete(checks, url)
				req, err := http.NewRequest(method, moved(url), strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header = header
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", line, err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if why := check(resp, string(got)); why != "" {
					t.Errorf("%s: %s; got %s %v\n%s", line, why, resp.Status, resp.Header, got)
				}
			default:
				t.Fatalf("%s: a command the test does not know how to run", line)
			}
		}
	}
	waitDemos()
	if len(checks) > 0 || ran < 8 {
		t.Fatalf("%d commands run; the README no longer runs %v", ran, checks)
	}
	// The admin addresses the README gives are the ones the rule gives.
	for listen, admin := range map[string]string{"127.0.0.1:8787": "http://127.0.0.1:8786", "127.0.0.1:8797": "http://127.0.0.1:8796"} {
		if "http://"+adminFor(listen) != admin || !strings.Contains(section, "`"+admin+"`") {
			t.Errorf("beside --listen %s the admin endpoints are at %s; the README says otherwise", listen, adminFor(listen))
		}
	}
	http.DefaultClient.CloseIdleConnections()
}

// The README's two proxy commands of its section on the command (one with
// --upstream, one with --config) both took the admin address
// 127.0.0.1:8786, and the second did not start. They run side by side
// (here on free ports, for the machine is shared): no address of one is
// the other's, each has its admin endpoints where the README says.
func TestReadmeProxyCommandsRunSideBySide(t *testing.T) {
	section := readmeSection(t, "## The command: a proxy for any language, a mock provider, a demo")
	var proxies [][]string
	for _, b := range readmeBlocks(section) {
		for _, line := range b.lines {
			if strings.HasPrefix(line, "go run ./cmd/llmretry proxy ") {
				proxies = append(proxies, shellWords(t, line)[3:])
			}
		}
	}
	if len(proxies) != 2 {
		t.Fatalf("%d proxy commands in the README's section on the command, want 2", len(proxies))
	}
	dir := t.TempDir()
	t.Chdir(dir)
	spare := filepath.Join(dir, "openai_spare")
	if err := os.WriteFile(spare, []byte("sk-spare\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := readmeYAMLBlock(t, "llmretry.yaml")
	if err := os.WriteFile("llmretry.yaml", []byte(strings.Replace(yaml, "/run/secrets/openai_spare", spare, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"LLMRETRY_TOKEN_BACKEND": "a-token-long-enough-to-pass", "OPENAI_KEY_MAIN": "sk-main",
		"OPENROUTER_API_KEY": "sk-or", "ANTHROPIC_API_KEY": "sk-ant"} {
		t.Setenv(k, v)
	}
	used := map[string]string{} // an address -> the command that uses it
	taken := []int{}
	for _, args := range proxies {
		listen := ""
		for i := range args {
			if args[i] == "--listen" {
				listen = args[i+1]
				// A free port with the one below it free too, for this run.
				p := freeAdjacentPorts(t, taken...)
				taken = append(taken, p)
				args[i+1] = fmt.Sprintf("127.0.0.1:%d", p)
			}
		}
		admin := adminFor(listen)
		if !strings.Contains(section, "`http://"+admin+"`") {
			t.Errorf("%v: the README does not say its admin endpoints are at http://%s", args, admin)
		}
		for _, a := range []string{listen, admin} {
			if other, ok := used[a]; ok {
				t.Errorf("%v: %s is %s's too", args, a, other)
			}
			used[a] = fmt.Sprint(args)
		}
		bg := startLines(t, args, func(l string) bool { return strings.HasPrefix(l, "llmretry proxy fleet state: ") })
		want := fmt.Sprintf("llmretry proxy admin (/healthz, /metrics) on http://127.0.0.1:%d", taken[len(taken)-1]-1)
		if !strings.Contains(strings.Join(bg.startup, "\n"), want) {
			t.Fatalf("%v: startup lines lack %q:\n%s", args, want, strings.Join(bg.startup, "\n"))
		}
	}
}

// readmeYAMLBlock is the README's yaml block whose first line is a comment
// that begins with name.
func readmeYAMLBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(readmeFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(b), "```yaml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.HasPrefix(block, "# "+name) {
			return block
		}
	}
	t.Fatalf("the README has no yaml block that begins # %s", name)
	return ""
}
