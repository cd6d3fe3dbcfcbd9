package proxy

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

const goodConfig = `# two routes
clients:
  - id: ci
    env: CI_TOKEN
routes:
  - prefix: /openai
    failover_after: 2s
    attempts_per_target: 1
    targets:
      - name: openai
        base_url: https://api.openai.com/v1
        keys:
          - id: a
            env: OPENAI_A
          - id: b
            file: KEYFILE
      - name: openrouter
        base_url: https://openrouter.ai/api/v1
        keys: [{id: or, env: OPENROUTER}]
        models:
          gpt-4o: openai/gpt-4o
  - prefix: /anthropic
    targets:
      - name: anthropic
        base_url: https://api.anthropic.com
        keys: [{id: main, env: ANTHROPIC}]
`

func TestConfigReadsRoutesTargetsAndSecrets(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "b.key")
	if err := os.WriteFile(keyFile, []byte("sk-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(goodConfig, "KEYFILE", keyFile, 1)
	fc, err := ParseConfig("llmretry.yaml", []byte(text), env(map[string]string{
		"CI_TOKEN": "client-token-0123456789", "OPENAI_A": "sk-a", "OPENROUTER": "sk-or", "ANTHROPIC": "sk-ant",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(fc.Routes) != 2 || fc.Routes[0].Prefix != "/openai" || len(fc.Routes[0].Failover.Targets) != 2 ||
		fc.Routes[0].Failover.Threshold.String() != "2s" || fc.Routes[0].Failover.AttemptsPerTarget != 1 {
		t.Fatalf("routes %+v", fc.Routes)
	}
	or := fc.Routes[0].Failover.Targets[1]
	if or.Models["gpt-4o"] != "openai/gpt-4o" || or.Keys[0].ID != "or" {
		t.Fatalf("openrouter target %+v", or)
	}
	if !fc.HoldsKeys() || len(fc.Clients) != 1 || fc.Clients[0].token != "client-token-0123456789" {
		t.Fatalf("clients %+v", fc.Clients)
	}
	// The file's trailing newline is not part of the key: the proxy
	// starts (a key with a newline would be refused).
	if _, err := NewRouter(fc, Config{}); err != nil {
		t.Fatal(err)
	}
}

// Every mistake names its line, and says what is wrong.
func TestConfigErrorsNameTheirLine(t *testing.T) {
	vars := env(map[string]string{"K": "sk-secret-value", "T": "client-token-0123456789"})
	for _, c := range []struct {
		name, text, want string
	}{
		{"syntax", "routes:\n  - prefix: /a\n    targets: []\n  bad\n", "c.yaml:4: not valid YAML: this line is neither a field (name: value) nor a list item"},
		{"unknown field", "routes:\n  - prefix: /a\n    tragets: []\n", `c.yaml:3: unknown field "tragets" in a route`},
		{"no routes", "clients: []\n", `c.yaml:1: the config needs "routes"`},
		{"bad prefix", "routes:\n  - prefix: openai\n    targets: []\n", `c.yaml:2: prefix "openai"`},
		{"no targets", "routes:\n  - prefix: /a\n    targets: []\n", `c.yaml:2: route "/a" has no targets`},
		{"inline key", "routes:\n  - prefix: /a\n    targets:\n      - name: x\n        base_url: https://x\n        keys:\n          - id: k\n            value: sk-secret-value\n",
			"c.yaml:8: key \"k\": secrets are never written in the config"},
		{"unset env", "routes:\n  - prefix: /a\n    targets:\n      - name: x\n        base_url: https://x\n        keys:\n          - {id: k, env: NOPE}\n",
			"c.yaml:7: key \"k\": environment variable NOPE is not set"},
		{"missing file", "routes:\n  - prefix: /a\n    targets:\n      - name: x\n        base_url: https://x\n        keys:\n          - {id: k, file: /nonexistent/key}\n",
			"c.yaml:7: key \"k\": file /nonexistent/key: no such file or directory"},
		{"bad duration", "routes:\n  - prefix: /a\n    failover_after: soon\n    targets: []\n", `c.yaml:3: failover_after "soon"`},
		{"bad number", "routes:\n  - prefix: /a\n    attempts_per_target: two\n    targets: []\n", `c.yaml:3: attempts_per_target "two": want a whole number, 1 or more`},
		{"zero", "routes:\n  - prefix: /a\n    eject_after: 0\n    targets: []\n", `c.yaml:3: eject_after "0": want a whole number, 1 or more`},
		{"bad url", "routes:\n  - prefix: /a\n    targets:\n      - {name: x, base_url: api.openai.com}\n", `c.yaml:4: target "x": base_url`},
		{"bad api", "routes:\n  - prefix: /a\n    targets:\n      - {name: x, base_url: 'https://x', api: cohere}\n", `c.yaml:4: target "x": api "cohere"`},
		{"short token", "clients:\n  - {id: ci, env: K}\nroutes:\n  - prefix: /a\n    targets:\n      - {name: x, base_url: 'https://x'}\n",
			`c.yaml:2: client "ci": its token is under 16 characters`},
		{"two prefixes", "routes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'https://x'}]\n  - prefix: /a\n    targets: [{name: y, base_url: 'https://y'}]\n",
			`c.yaml:4: two routes have the prefix "/a"`},
		{"two clients", "clients:\n  - {id: ci, env: T}\n  - {id: ci, env: T}\nroutes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'https://x'}]\n",
			`c.yaml:3: two clients have the id "ci"`},
		{"wildcard origin", "allow_origins: ['*']\nroutes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'https://x'}]\n",
			`c.yaml:1: allow_origins: origin "*": a wildcard would let every web page spend the keys`},
		{"origin with a path", "allow_origins:\n  - https://app.example.com/chat\nroutes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'https://x'}]\n",
			`c.yaml:2: allow_origins: origin "https://app.example.com/chat": an origin has no path`},
		{"host with a port", "allow_hosts: [proxy.internal:8787]\nroutes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'https://x'}]\n",
			`c.yaml:1: allow_hosts: host "proxy.internal:8787": want a host name`},
		{"two names", "routes:\n  - prefix: /a\n    targets:\n      - {name: x, base_url: 'https://x'}\n      - {name: x, base_url: 'https://y'}\n",
			`c.yaml:5: two targets are named "x"`},
	} {
		_, err := ParseConfig("c.yaml", []byte(c.text), vars)
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", c.name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "sk-secret-value") {
			t.Errorf("%s: the error shows a secret: %v", c.name, err)
		}
	}
}

// A chain that mixes API families is refused, and the error says why.
func TestConfigRefusesAChainThatMixesAPIFamilies(t *testing.T) {
	text := `routes:
  - prefix: /chat
    targets:
      - name: openai
        base_url: https://api.openai.com/v1
      - name: claude
        base_url: https://api.anthropic.com
`
	_, err := ParseConfig("c.yaml", []byte(text), nil)
	if err == nil || !strings.Contains(err.Error(), "c.yaml:6:") || !strings.Contains(err.Error(), "does not translate") ||
		!strings.Contains(err.Error(), `"claude" speaks anthropic`) {
		t.Fatalf("got %v, want line 6 and why", err)
	}
	// The same model at another host speaking the Anthropic API is fine.
	text = strings.Replace(text, "https://api.openai.com/v1", "https://anthropic-proxy.example\n        api: anthropic", 1)
	if _, err := ParseConfig("c.yaml", []byte(text), nil); err != nil {
		t.Fatal(err)
	}
}

// The README's config example is a config the proxy accepts.
func TestReadmeConfigExampleIsValid(t *testing.T) {
	block := readmeYAML(t, "llmretry.yaml")
	spare := filepath.Join(t.TempDir(), "openai_spare")
	if err := os.WriteFile(spare, []byte("sk-spare\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	block = strings.Replace(block, "/run/secrets/openai_spare", spare, 1)
	fc, err := ParseConfig("README.md", []byte(block), env(map[string]string{
		"LLMRETRY_TOKEN_BACKEND": "a-token-long-enough-to-pass", "OPENAI_KEY_MAIN": "sk-main",
		"OPENROUTER_API_KEY": "sk-or", "ANTHROPIC_API_KEY": "sk-ant",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if len(fc.Routes) != 2 || len(fc.Clients) != 1 || len(fc.Routes[0].Failover.Targets[0].Keys) != 2 {
		t.Fatalf("config %+v", fc)
	}
	if _, err := NewRouter(fc, Config{}); err != nil {
		t.Fatal(err)
	}
}

// readmeYAML is the README's yaml block whose first line is a comment
// that begins with name.
func readmeYAML(t *testing.T, name string) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(readme), "```yaml\n")[1:] {
		block, _, _ = strings.Cut(block, "```")
		if strings.HasPrefix(block, "# "+name) {
			return block
		}
	}
	t.Fatalf("the README has no yaml block that begins # %s", name)
	return ""
}

// Whatever a config file holds, reading it gives a config or a ConfigError
// with a line, never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte("routes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'https://x', models: {a: b}}]\n"))
	f.Add([]byte("routes: 7\n"))
	f.Add([]byte("routes:\n  - prefix: /a\n    targets:\n      - {name: x, base_url: 'https://x', keys: [{id: k, env: K}]}\n"))
	f.Add([]byte("{routes: [{prefix: /, targets: [{name: a, base_url: 'http://h', api: gemini}]}]}"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("&a [*a]"))
	f.Add([]byte(sharedTargetNames))
	vars := env(acceptedVars)
	f.Fuzz(func(t *testing.T, data []byte) {
		fc, err := ParseConfig("f.yaml", data, vars)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v, want a *ConfigError", err, err)
			}
			return
		}
		if len(fc.Routes) == 0 {
			t.Fatal("a config with no routes was accepted")
		}
		for _, r := range fc.Routes {
			if len(r.Failover.Targets) == 0 {
				t.Fatalf("route %q with no targets was accepted", r.Prefix)
			}
		}
		scrapeConfig(t, fc)
	})
}

// sharedTargetNames is a config whose two routes name their targets alike:
// the same upstream, with other keys. /metrics answered 500 for it.
const sharedTargetNames = `routes:
  - prefix: /team-a
    targets: [{name: openai, base_url: 'https://api.openai.com/v1', keys: [{id: main, env: K}]}]
  - prefix: /team-b
    targets: [{name: openai, base_url: 'https://api.openai.com/v1', keys: [{id: main, env: K}]}]
  - prefix: /
    targets: [{name: openai, base_url: 'https://api.openai.com/v1'}]
`

// acceptedConfigs are the configs the config tests accept, with the
// environment their secrets come from.
func acceptedConfigs(t *testing.T) map[string]string {
	keyFile := filepath.Join(t.TempDir(), "b.key")
	if err := os.WriteFile(keyFile, []byte("sk-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	readmeBlock := readmeYAML(t, "llmretry.yaml")
	return map[string]string{
		"good":                 strings.Replace(goodConfig, "KEYFILE", keyFile, 1),
		"readme":               strings.Replace(readmeBlock, "/run/secrets/openai_spare", keyFile, 1),
		"readme, five minutes": readmeYAML(t, "five.yaml"),
		"one family":           "routes:\n  - prefix: /chat\n    targets:\n      - name: openai\n        base_url: https://anthropic-proxy.example\n        api: anthropic\n      - name: claude\n        base_url: https://api.anthropic.com\n",
		"models":               "routes:\n  - prefix: /a\n    targets: [{name: x, base_url: 'https://x', models: {a: b}}]\n",
		"gemini at the root":   "{routes: [{prefix: /, targets: [{name: a, base_url: 'http://h', api: gemini}]}]}",
		"shared target names":  sharedTargetNames,
		"perimeter":            "allow_origins: [https://app.example.com]\nallow_hosts: [proxy.internal]\n" + sharedTargetNames,
	}
}

var acceptedVars = map[string]string{
	"K": "sk-k", "CI_TOKEN": "client-token-0123456789", "OPENAI_A": "sk-a", "OPENROUTER": "sk-or", "ANTHROPIC": "sk-ant",
	"LLMRETRY_TOKEN_BACKEND": "a-token-long-enough-to-pass", "OPENAI_KEY_MAIN": "sk-main", "OPENROUTER_API_KEY": "sk-or",
	"ANTHROPIC_API_KEY": "sk-ant",
}

// scrapeConfig serves fc's admin endpoints and fails t unless /metrics
// answers 200 with every target's series, under its route.
func scrapeConfig(t *testing.T, fc *FileConfig) {
	t.Helper()
	rt, err := NewRouter(fc, Config{})
	if err != nil {
		t.Fatalf("a config that parses is refused by NewRouter: %v", err)
	}
	w := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Host = "127.0.0.1:8786"
	rt.Admin().ServeHTTP(w, req)
	if w.Code != http.StatusOK {
		t.Fatalf("/metrics: status %d: %s", w.Code, w.Body)
	}
	for _, r := range fc.Routes {
		for _, tg := range r.Failover.Targets {
			for _, name := range []string{"llmretry_budget_requests", "llmretry_budget_refused_total", "llmretry_cooldown_held_total"} {
				series := fmt.Sprintf(`%s{route=%q,upstream=%q}`, name, cmp.Or(r.Prefix, "/"), tg.Name)
				if !strings.Contains(w.Body.String(), series) {
					t.Fatalf("/metrics lacks %s:\n%s", series, w.Body)
				}
			}
		}
	}
}

// Two routes with a target of the same name made /metrics answer 500 (two
// series of one name and labels), on a config accepted without a word.
// Per-target series carry the route now: /metrics answers for every
// config the config tests accept.
func TestMetricsAnswerForEveryAcceptedConfig(t *testing.T) {
	for name, text := range acceptedConfigs(t) {
		fc, err := ParseConfig(name+".yaml", []byte(text), env(acceptedVars))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Run(name, func(t *testing.T) { scrapeConfig(t, fc) })
	}
}

// A YAML syntax error was reported in yaml.v3's parser words ("did not
// find expected node content", "did not find expected '-' indicator"),
// on the line its enclosing block began on, often lines above the
// mistake. It says in plain words what is wrong, on the mistake's line.
func TestConfigSyntaxErrorsSayWhatAndWhereInPlainWords(t *testing.T) {
	for _, c := range []struct {
		text string
		line int
		want string
	}{
		{"routes:\n  - prefix: /a\n    targets: []\n  bad\n", 4, "this line is neither a field (name: value) nor a list item (- ...)"},
		{"routes:\n\t- prefix: /a\n", 2, "a tab in the indentation: YAML indents with spaces only"},
		{"routes:\n  - prefix: @a\n", 2, "a value starts with a character YAML keeps for itself (such as @ or `): put the value in quotes"},
		{"routes:\n  - prefix: /a\n    targets: [{name: x, base_url: y\n", 3, "a { is not closed with }"},
		{"routes:\n  - prefix: /a\n    targets: [a, b\nclients: []\n", 3, "a [ is not closed with ]"},
		{"routes:\n  - prefix: /a\n    targets: [\n", 3, "a value is missing: a [ or { is not closed"},
		{"routes:\n  - prefix: /a\n   targets: []\n", 3, "the indentation does not line up"},
		{"routes:\n  - prefix: /a\n    targets:\n      - name: x\n        base_url: https://x\n      keys: [{id: a}]\n", 6, "the indentation does not line up"},
		{"routes:\n  - prefix: /a\n    targets:\n    - name: x\n        base_url: https://x\n", 5, "this line is indented deeper than the field above it"},
		{"routes:\n  - prefix: /a: b\n", 2, `a value with ": " in it must be in quotes`},
		{"routes:\n  - prefix: \"/a\n    targets: []\n", 2, "a closing quote is missing"},
		{"routes:\n  - prefix: \"\\q\"\n", 2, "a backslash in a double-quoted value"},
		{"routes: *a\n", 1, "an alias (*name) refers to an anchor (&name) that is not defined above it"},
		{"routes:\n  - prefix: \"/a\" b\n", 2, "a stray character after a quoted value"},
		{"routes:\n  - prefix: /a\n    targets:\n      - name: x\n        keys: [{id: a, env: X}]]\n", 5, "a stray character after a quoted value or a closing bracket"},
		{"routes:\n  - prefix: |x\n", 2, "a | or > (a block of text) must end its line"},
	} {
		_, err := ParseConfig("c.yaml", []byte(c.text), nil)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Line != c.line || !strings.Contains(ce.Msg, c.want) || !strings.HasPrefix(ce.Msg, "not valid YAML: ") {
			t.Errorf("%q: got %v, want line %d and %q", c.text, err, c.line, c.want)
			continue
		}
		for _, parser := range []string{"did not find", "could not find", "found ", "not allowed in this context", "expected"} {
			if strings.Contains(ce.Msg, parser) {
				t.Errorf("%q: %v: in the parser's words (%q)", c.text, err, parser)
			}
		}
	}
	// An inline secret on the broken line is not repeated in the error.
	_, err := ParseConfig("c.yaml", []byte("routes:\n  - {prefix: /a, value: sk-secret-value\n"), nil)
	if err == nil || strings.Contains(err.Error(), "sk-secret") {
		t.Fatalf("got %v", err)
	}
}

// A key file that could not be read was reported as `key "spare": no such
// file or directory`, without the path. The error names the file.
func TestMissingKeyFileNamesItsPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets", "openai_spare")
	text := "routes:\n  - prefix: /a\n    targets:\n      - name: x\n        base_url: https://x\n        keys:\n          - {id: spare, file: " + path + "}\n"
	_, err := ParseConfig("c.yaml", []byte(text), nil)
	if want := `c.yaml:7: key "spare": file ` + path + `: no such file or directory`; err == nil || err.Error() != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

// One URL form: a base_url is the API's base as its SDK takes it. The root
// of a host whose API's base has a path is read as that base, with a note
// that says so (and the line); any other URL is taken as written, without
// its trailing slash, its query (Azure's api-version) kept.
func TestBaseURLIsTheAPIsBase(t *testing.T) {
	for _, c := range []struct{ raw, want, note string }{
		{"https://api.openai.com/v1", "https://api.openai.com/v1", ""},
		{"https://api.openai.com/v1/", "https://api.openai.com/v1", ""},
		{"https://api.openai.com", "https://api.openai.com/v1", "https://api.openai.com is the host's root; understood as its API's base URL, https://api.openai.com/v1"},
		{"https://API.openai.com/", "https://API.openai.com/v1", "understood as its API's base URL, https://API.openai.com/v1"},
		{"https://openrouter.ai", "https://openrouter.ai/api/v1", "understood as its API's base URL, https://openrouter.ai/api/v1"},
		{"https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1", ""},
		{"https://api.groq.com", "https://api.groq.com/openai/v1", "understood"},
		{"https://api.anthropic.com", "https://api.anthropic.com", ""},
		{"https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com", ""},
		{"http://127.0.0.1:8788/v1", "http://127.0.0.1:8788/v1", ""},
		{"https://res.openai.azure.com/openai/deployments/gpt-4o?api-version=2024-10-21", "https://res.openai.azure.com/openai/deployments/gpt-4o?api-version=2024-10-21", ""},
	} {
		u, note, err := ParseBaseURL(c.raw)
		if err != nil || u.String() != c.want || (c.note == "") != (note == "") || !strings.Contains(note, c.note) {
			t.Errorf("%s: got %v, %q, %v; want %s, %q", c.raw, u, note, err, c.want, c.note)
		}
	}
	for _, raw := range []string{"api.openai.com/v1", "ftp://x/v1", "https://", "://x", "https://api.openai.com/%zz"} {
		if _, _, err := ParseBaseURL(raw); err == nil || !strings.Contains(err.Error(), "want an http or https URL") {
			t.Errorf("%s: got %v", raw, err)
		}
	}

	text := "routes:\n  - prefix: /openai\n    targets:\n      - name: openai\n        base_url: https://api.openai.com\n      - {name: or, base_url: 'https://openrouter.ai/api/v1/'}\n"
	fc, err := ParseConfig("c.yaml", []byte(text), nil)
	if err != nil {
		t.Fatal(err)
	}
	tg := fc.Routes[0].Failover.Targets
	if tg[0].BaseURL != "https://api.openai.com/v1" || tg[1].BaseURL != "https://openrouter.ai/api/v1" {
		t.Fatalf("base URLs %q, %q", tg[0].BaseURL, tg[1].BaseURL)
	}
	if want := `c.yaml:4: target "openai": base_url https://api.openai.com is the host's root; understood as its API's base URL, https://api.openai.com/v1`; len(fc.Notes) != 1 || fc.Notes[0] != want {
		t.Fatalf("notes %q, want %q", fc.Notes, want)
	}
}

// A URL the command prints shows no user info and no query value but
// Azure's api-version: a query could hold a key.
func TestShowURLHidesUserInfoAndQueryValues(t *testing.T) {
	u, err := url.Parse("https://u:pw@x.example/v1?key=AIza-secret&api-version=2024-10-21")
	if err != nil {
		t.Fatal(err)
	}
	if got := ShowURL(u); got != "https://x.example/v1?key=…&api-version=2024-10-21" {
		t.Errorf("ShowURL: %s", got)
	}
}
