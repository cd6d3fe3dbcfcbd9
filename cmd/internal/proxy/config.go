package proxy

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/llmretry/llmretry"
)

// The proxy's config file: routes, each a chain of failover targets with
// their keys, and the tokens clients authenticate with. It is YAML, read
// through yaml.v3's node tree so that every error names its line. Secrets
// are never written in it: keys and tokens name an environment variable or
// a file to read them from.

// FileConfig is a config file, read and checked, secrets loaded.
type FileConfig struct {
	Clients []Client
	Routes  []Route
	// AllowOrigins and AllowHosts are the web origins whose pages may use
	// the routes, and the Host names they answer to on loopback besides
	// localhost and loopback addresses (Perimeter).
	AllowOrigins []string
	AllowHosts   []string
	// Notes are what was understood where the file left a choice to the
	// reader (a base_url given as its host's root), one line each, with
	// the line of the file: the command prints them at startup.
	Notes []string
}

// Client is one client allowed in, by its token.
type Client struct {
	ID    string
	token string
}

// Route sends the requests under Prefix to a chain of targets.
type Route struct {
	// Prefix is the path the route answers under ("/openai"); it stands
	// for the first target's base URL: "/openai/chat/completions" goes to
	// BASE/chat/completions.
	Prefix   string
	Failover llmretry.Failover
	// ContinueStreams is the route's continue_streams, nil when the file
	// does not set it (--continue-streams decides): 0 turns stream
	// continuation off for the route whatever else is set, N turns it on
	// with a cap of N.
	ContinueStreams *int
	// ContinueOpenAIPrefix is its continue_openai_prefix
	// (Continuation.OpenAIPrefix: "" for instruction), nil when not set.
	// It says how, not whether: it never turns continuation on.
	ContinueOpenAIPrefix *string
}

// continuation is the route's stream continuation, given the one
// --continue-streams sets (nil: off).
func (r Route) continuation(flag *llmretry.Continuation) *llmretry.Continuation {
	c := flag
	if r.ContinueStreams != nil {
		if *r.ContinueStreams == 0 {
			return nil
		}
		c = &llmretry.Continuation{Max: *r.ContinueStreams}
	}
	if c == nil {
		return nil
	}
	out := *c
	if r.ContinueOpenAIPrefix != nil {
		out.OpenAIPrefix = *r.ContinueOpenAIPrefix
	}
	return &out
}

// HoldsKeys reports whether any target of c has keys: the proxy then
// spends them for whoever reaches it, and must know its clients.
func (c *FileConfig) HoldsKeys() bool {
	for _, r := range c.Routes {
		for _, t := range r.Failover.Targets {
			if len(t.Keys) > 0 {
				return true
			}
		}
	}
	return false
}

// ConfigError is a mistake in a config file, with the line it is on.
type ConfigError struct {
	File string
	Line int
	Msg  string
}

func (e *ConfigError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return e.File + ": " + e.Msg
}

// LoadConfig reads and checks the config file at path. getenv looks up
// environment variables (os.Getenv if nil); key and token files are read
// relative to the working directory.
func LoadConfig(path string, getenv func(string) string) (*FileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data, getenv)
}

// ParseConfig reads a config file's contents; name is used in errors.
func ParseConfig(name string, data []byte, getenv func(string) string) (*FileConfig, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	r := &reader{file: name, getenv: getenv}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, syntaxError(name, data, err)
	}
	if len(root.Content) == 0 {
		return nil, &ConfigError{File: name, Msg: "the file is empty: it needs routes"}
	}
	cfg := &FileConfig{}
	defer func() { cfg.Notes = r.notes }()
	err := r.mapping(root.Content[0], "the config", map[string]func(*yaml.Node) error{
		"clients": func(n *yaml.Node) error {
			return r.list(n, "clients", func(item *yaml.Node) error {
				c, err := r.client(item)
				if err != nil {
					return err
				}
				for _, other := range cfg.Clients {
					if other.ID == c.ID {
						return r.errf(item, "two clients have the id %q", c.ID)
					}
				}
				cfg.Clients = append(cfg.Clients, c)
				return nil
			})
		},
		"allow_origins": func(n *yaml.Node) error {
			return r.list(n, "allow_origins", func(item *yaml.Node) error {
				var s string
				if err := r.scalar(item, "an origin", &s); err != nil {
					return err
				}
				o, err := ParseOrigin(s)
				if err != nil {
					return r.errf(item, "allow_origins: %v", err)
				}
				cfg.AllowOrigins = append(cfg.AllowOrigins, o)
				return nil
			})
		},
		"allow_hosts": func(n *yaml.Node) error {
			return r.list(n, "allow_hosts", func(item *yaml.Node) error {
				var s string
				if err := r.scalar(item, "a host", &s); err != nil {
					return err
				}
				h, err := ParseHost(s)
				if err != nil {
					return r.errf(item, "allow_hosts: %v", err)
				}
				cfg.AllowHosts = append(cfg.AllowHosts, h)
				return nil
			})
		},
		"routes": func(n *yaml.Node) error {
			return r.list(n, "routes", func(item *yaml.Node) error {
				rt, err := r.route(item)
				if err != nil {
					return err
				}
				for _, other := range cfg.Routes {
					if other.Prefix == rt.Prefix {
						return r.errf(item, "two routes have the prefix %q", rt.Prefix)
					}
				}
				cfg.Routes = append(cfg.Routes, rt)
				return nil
			})
		},
	}, "routes")
	if err != nil {
		return nil, err
	}
	if len(cfg.Routes) == 0 {
		return nil, &ConfigError{File: name, Line: root.Content[0].Line, Msg: "routes: at least one route is needed"}
	}
	return cfg, nil
}

// reader reads one file's nodes.
type reader struct {
	file   string
	getenv func(string) string
	notes  []string
}

func (r *reader) errf(n *yaml.Node, format string, args ...any) error {
	return &ConfigError{File: r.file, Line: n.Line, Msg: fmt.Sprintf(format, args...)}
}

// mapping reads a mapping node: each known field by its function, an
// unknown one is an error, and the required ones must be there.
func (r *reader) mapping(n *yaml.Node, what string, fields map[string]func(*yaml.Node) error, required ...string) error {
	if n.Kind != yaml.MappingNode {
		return r.errf(n, "%s must be a mapping of fields", what)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f, ok := fields[k.Value]
		if !ok {
			known := make([]string, 0, len(fields))
			for name := range fields {
				known = append(known, name)
			}
			sort.Strings(known)
			return r.errf(k, "unknown field %q in %s (known: %s)", k.Value, what, strings.Join(known, ", "))
		}
		if seen[k.Value] {
			return r.errf(k, "%s has %q twice", what, k.Value)
		}
		seen[k.Value] = true
		if err := f(v); err != nil {
			return err
		}
	}
	for _, name := range required {
		if !seen[name] {
			return r.errf(n, "%s needs %q", what, name)
		}
	}
	return nil
}

func (r *reader) list(n *yaml.Node, what string, each func(*yaml.Node) error) error {
	if n.Kind != yaml.SequenceNode {
		return r.errf(n, "%s must be a list", what)
	}
	for _, item := range n.Content {
		if err := each(item); err != nil {
			return err
		}
	}
	return nil
}

// scalar reads a scalar node's text into s, with the node's line on error.
// A null (~, null, or nothing) reads as "".
func (r *reader) scalar(n *yaml.Node, what string, s *string) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.ScalarNode {
		return r.errf(n, "%s must be a single value", what)
	}
	*s = n.Value
	if n.ShortTag() == "!!null" {
		*s = ""
	}
	return nil
}

func (r *reader) duration(n *yaml.Node, what string, d *time.Duration) error {
	var s string
	if err := r.scalar(n, what, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return r.errf(n, "%s %q: want a positive duration such as 5s or 1h", what, s)
	}
	*d = v
	return nil
}

func (r *reader) positive(n *yaml.Node, what string, i *int) error {
	var s string
	if err := r.scalar(n, what, &s); err != nil {
		return err
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		return r.errf(n, "%s %q: want a whole number, 1 or more", what, s)
	}
	*i = v
	return nil
}

// secret reads a key or token from the environment variable or file a
// node names. It never says what it read.
func (r *reader) secret(n *yaml.Node, what string) (string, error) {
	var env, file string
	err := r.mapping(n, what, map[string]func(*yaml.Node) error{
		"id":   func(*yaml.Node) error { return nil }, // read by the caller
		"env":  func(v *yaml.Node) error { return r.scalar(v, what+" env", &env) },
		"file": func(v *yaml.Node) error { return r.scalar(v, what+" file", &file) },
		"value": func(v *yaml.Node) error {
			return r.errf(v, "%s: secrets are never written in the config: use env or file", what)
		},
		"token": func(v *yaml.Node) error {
			return r.errf(v, "%s: secrets are never written in the config: use env or file", what)
		},
	}, "id")
	if err != nil {
		return "", err
	}
	switch {
	case env != "" && file != "":
		return "", r.errf(n, "%s: give env or file, not both", what)
	case env != "":
		v := r.getenv(env)
		if v == "" {
			return "", r.errf(n, "%s: environment variable %s is not set", what, env)
		}
		return v, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			// The path, and why it cannot be read, in the system's words
			// (no such file, permission denied): a path is no secret.
			why := err
			if u := errors.Unwrap(err); u != nil {
				why = u
			}
			return "", r.errf(n, "%s: file %s: %v", what, file, why)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if strings.TrimSpace(v) == "" {
			return "", r.errf(n, "%s: file %s is empty", what, file)
		}
		return v, nil
	}
	return "", r.errf(n, "%s: needs env (an environment variable) or file to read it from", what)
}

// id reads the id field of a key or client.
func (r *reader) id(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.MappingNode {
		return "", r.errf(n, "%s must be a mapping with id and env or file", what)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "id" {
			var id string
			if err := r.scalar(n.Content[i+1], what+" id", &id); err != nil {
				return "", err
			}
			if id == "" || strings.ContainsAny(id, " \t\r\n\"=") {
				return "", r.errf(n.Content[i+1], "%s id %q: want a short name without spaces or quotes", what, id)
			}
			return id, nil
		}
	}
	return "", r.errf(n, "%s needs an id", what)
}

func (r *reader) client(n *yaml.Node) (Client, error) {
	id, err := r.id(n, "client")
	if err != nil {
		return Client{}, err
	}
	tok, err := r.secret(n, fmt.Sprintf("client %q", id))
	if err != nil {
		return Client{}, err
	}
	if len(tok) < 16 {
		return Client{}, r.errf(n, "client %q: its token is under 16 characters: too easy to guess", id)
	}
	return Client{ID: id, token: tok}, nil
}

func (r *reader) route(n *yaml.Node) (Route, error) {
	var rt Route
	f := &rt.Failover
	err := r.mapping(n, "a route", map[string]func(*yaml.Node) error{
		"prefix": func(v *yaml.Node) error {
			if err := r.scalar(v, "prefix", &rt.Prefix); err != nil {
				return err
			}
			if !strings.HasPrefix(rt.Prefix, "/") || strings.HasSuffix(rt.Prefix, "/") && rt.Prefix != "/" || strings.ContainsAny(rt.Prefix, "?#") {
				return r.errf(v, "prefix %q: want a path such as /openai (a leading /, no trailing /)", rt.Prefix)
			}
			if rt.Prefix == "/" {
				rt.Prefix = ""
			}
			return nil
		},
		"targets": func(v *yaml.Node) error {
			return r.list(v, "targets", func(item *yaml.Node) error {
				tg, err := r.target(item)
				if err != nil {
					return err
				}
				f.Targets = append(f.Targets, tg)
				if _, err := llmretry.NewFailoverTransport(nil, llmretry.Failover{Targets: f.Targets}); err != nil {
					return r.errf(item, "%s", strings.TrimPrefix(err.Error(), "failover: "))
				}
				return nil
			})
		},
		"attempts_per_target": func(v *yaml.Node) error { return r.positive(v, "attempts_per_target", &f.AttemptsPerTarget) },
		"failover_after":      func(v *yaml.Node) error { return r.duration(v, "failover_after", &f.Threshold) },
		"quota_rest":          func(v *yaml.Node) error { return r.duration(v, "quota_rest", &f.QuotaRest) },
		"eject_after":         func(v *yaml.Node) error { return r.positive(v, "eject_after", &f.Outliers.Failures) },
		"ejection":            func(v *yaml.Node) error { return r.duration(v, "ejection", &f.Outliers.Ejection) },
		"max_ejection":        func(v *yaml.Node) error { return r.duration(v, "max_ejection", &f.Outliers.MaxEjection) },
		"recheck":             func(v *yaml.Node) error { return r.duration(v, "recheck", &f.Recheck) },
		"max_recheck":         func(v *yaml.Node) error { return r.duration(v, "max_recheck", &f.MaxRecheck) },
		"max_rest":            func(v *yaml.Node) error { return r.duration(v, "max_rest", &f.MaxRest) },
		"continue_streams": func(v *yaml.Node) error {
			var text string
			if err := r.scalar(v, "continue_streams", &text); err != nil {
				return err
			}
			n, err := strconv.Atoi(text)
			if err != nil || n < 0 {
				return r.errf(v, "continue_streams %q: want 0 (off) or how many times one stream may be continued", text)
			}
			rt.ContinueStreams = &n
			return nil
		},
		"continue_openai_prefix": func(v *yaml.Node) error {
			var form string
			if err := r.scalar(v, "continue_openai_prefix", &form); err != nil {
				return err
			}
			if form != "instruction" && form != "prefix" && form != "vllm" {
				return r.errf(v, "continue_openai_prefix %q: want instruction (OpenAI: the default), prefix (DeepSeek, Mistral) or vllm", form)
			}
			form = strings.TrimPrefix(form, "instruction")
			rt.ContinueOpenAIPrefix = &form
			return nil
		},
	}, "prefix", "targets")
	if err != nil {
		return rt, err
	}
	if len(f.Targets) == 0 {
		return rt, r.errf(n, "route %q has no targets", rt.Prefix)
	}
	if rt.ContinueStreams != nil && *rt.ContinueStreams == 0 && rt.ContinueOpenAIPrefix != nil {
		r.notes = append(r.notes, (&ConfigError{File: r.file, Line: n.Line,
			Msg: fmt.Sprintf("route %q: continue_openai_prefix has no effect: continue_streams: 0 turns stream continuation off", rt.Prefix)}).Error())
	}
	return rt, nil
}

func (r *reader) target(n *yaml.Node) (llmretry.Target, error) {
	var tg llmretry.Target
	var family string
	err := r.mapping(n, "a target", map[string]func(*yaml.Node) error{
		"name":       func(v *yaml.Node) error { return r.scalar(v, "name", &tg.Name) },
		"base_url":   func(v *yaml.Node) error { return r.scalar(v, "base_url", &tg.BaseURL) },
		"api":        func(v *yaml.Node) error { return r.scalar(v, "api", &family) },
		"key_header": func(v *yaml.Node) error { return r.scalar(v, "key_header", &tg.KeyHeader) },
		"models": func(v *yaml.Node) error {
			if v.Kind != yaml.MappingNode {
				return r.errf(v, "models must map a requested model to this target's name for it")
			}
			tg.Models = map[string]string{}
			for i := 0; i+1 < len(v.Content); i += 2 {
				var from, to string
				if err := r.scalar(v.Content[i], "a model", &from); err != nil {
					return err
				}
				if err := r.scalar(v.Content[i+1], "model "+from, &to); err != nil {
					return err
				}
				tg.Models[from] = to
			}
			return nil
		},
		"keys": func(v *yaml.Node) error {
			return r.list(v, "keys", func(item *yaml.Node) error {
				id, err := r.id(item, "a key")
				if err != nil {
					return err
				}
				s, err := r.secret(item, fmt.Sprintf("key %q", id))
				if err != nil {
					return err
				}
				tg.Keys = append(tg.Keys, llmretry.NewKey(id, s))
				return nil
			})
		},
	}, "name", "base_url")
	if err != nil {
		return tg, err
	}
	if family != "" {
		f, ok := llmretry.ParseFamily(family)
		if !ok {
			return tg, r.errf(n, "target %q: api %q: want openai, anthropic or gemini", tg.Name, family)
		}
		tg.Family = f
	}
	u, note, err := ParseBaseURL(tg.BaseURL)
	if err != nil {
		return tg, r.errf(n, "target %q: base_url %q: %v", tg.Name, tg.BaseURL, err)
	}
	if note != "" {
		r.notes = append(r.notes, (&ConfigError{File: r.file, Line: n.Line, Msg: fmt.Sprintf("target %q: base_url %s", tg.Name, note)}).Error())
	}
	tg.BaseURL = u.String()
	return tg, nil
}

// Base URLs. Every place the command takes an upstream (proxy --upstream,
// demo --upstream, a target's base_url) takes one form: the API's base
// URL, as the provider's SDK takes it (https://api.openai.com/v1,
// https://openrouter.ai/api/v1, https://api.anthropic.com, Azure's
// https://RESOURCE.openai.azure.com/openai/deployments/NAME?api-version=V).
// The root of a host whose API's base has a path (https://api.openai.com)
// is read as that base, and the reader is told so: the path is settled
// when the command starts, never per request.

// knownBasePaths are the paths of the base URLs of APIs whose host's root
// is not their base, by host.
var knownBasePaths = map[string]string{
	"api.openai.com": "/v1",
	"openrouter.ai":  "/api/v1",
	"api.groq.com":   "/openai/v1",
}

// ParseBaseURL reads an API's base URL: http or https, with a host; a
// trailing slash is dropped. Given the root of a host in knownBasePaths, it
// returns that API's base, and a note that says what was understood ("" for
// any other URL).
func ParseBaseURL(raw string) (u *url.URL, note string, err error) {
	u, err = url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, "", errors.New("want an http or https URL, the API's base as its SDK takes it, such as https://api.openai.com/v1")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = strings.TrimSuffix(u.RawPath, "/")
	u.Fragment, u.RawFragment = "", ""
	if u.Path == "" {
		if p, ok := knownBasePaths[strings.ToLower(u.Hostname())]; ok {
			given := ShowURL(u)
			u.Path = p
			note = fmt.Sprintf("%s is the host's root; understood as its API's base URL, %s", given, ShowURL(u))
		}
	}
	return u, note, nil
}

// ShowURL is u to print: its user info left out, and its query's values,
// which could hold a key, shown as "…" (api-version's excepted: it is
// Azure's, and no secret).
func ShowURL(u *url.URL) string {
	s := u.Scheme + "://" + u.Host + u.EscapedPath()
	if u.RawQuery == "" {
		return s
	}
	var parts []string
	for part := range strings.SplitSeq(u.RawQuery, "&") {
		name, value, _ := strings.Cut(part, "=")
		if !strings.EqualFold(name, "api-version") {
			value = "…"
		}
		parts = append(parts, name+"="+value)
	}
	return s + "?" + strings.Join(parts, "&")
}

// syntaxError says what is wrong with data, which yaml.v3 could not parse
// (err), in plain words, and on which line. yaml.v3 names the line its
// enclosing block began on, often lines above the mistake: the line given
// is the first at which the text up to it fails to parse the same way.
func syntaxError(file string, data []byte, err error) *ConfigError {
	words, line := parserWords(err)
	lines := strings.SplitAfter(string(data), "\n")
	// The mistake is at or below the line yaml.v3 names; the search is
	// bounded, and on a large file falls back to that line.
	for k := max(line, 1); k <= len(lines) && k <= max(line, 1)+200; k++ {
		var n yaml.Node
		if perr := yaml.Unmarshal([]byte(strings.Join(lines[:k], "")), &n); perr != nil {
			if w, _ := parserWords(perr); w == words {
				line = k
				break
			}
		}
	}
	text := ""
	if line > 0 && line <= len(lines) {
		text = lines[line-1]
	}
	return &ConfigError{File: file, Line: line, Msg: "not valid YAML: " + plainYAML(words, text)}
}

// parserWords takes yaml.v3's message and line out of its error
// ("yaml: line 3: did not find expected key").
func parserWords(err error) (words string, line int) {
	words = strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(words, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if v, cerr := strconv.Atoi(n); cerr == nil {
				return after, v
			}
		}
	}
	return words, 0
}

// plainYAML says in plain words what yaml.v3's words mean, for the line
// text they are about.
func plainYAML(words, text string) string {
	indent := text[:len(text)-len(strings.TrimLeft(text, " \t"))]
	tab := strings.Contains(indent, "\t")
	switch {
	case strings.Contains(words, "tab character"),
		words == "found character that cannot start any token" && tab:
		return "a tab in the indentation: YAML indents with spaces only"
	case words == "found character that cannot start any token":
		return "a value starts with a character YAML keeps for itself (such as @ or `): put the value in quotes"
	case words == "could not find expected ':'":
		return "this line is neither a field (name: value) nor a list item (- ...): a colon is missing, or the line is indented under a field it does not belong to"
	case words == "did not find expected ',' or '}'":
		return "a { is not closed with }, or two of its fields have no comma between them"
	case words == "did not find expected ',' or ']'":
		return "a [ is not closed with ], or two of its items have no comma between them"
	case words == "did not find expected node content":
		return "a value is missing: a [ or { is not closed, or nothing follows a comma or a -"
	case words == "did not find expected key":
		return "something here is not a field: a stray character after a quoted value or a closing bracket, or a line that does not line up with the fields above it"
	case words == "did not find expected '-' indicator", words == "block sequence entries are not allowed in this context":
		return "the indentation does not line up: this line starts in a column where no field or list item above it starts"
	case words == "mapping values are not allowed in this context":
		return "a second colon: a value with \": \" in it must be in quotes, or this line is indented deeper than the field above it"
	case words == "found unexpected end of stream":
		return "the file ends inside a quoted value: a closing quote is missing"
	case words == "found unknown escape character":
		return "a backslash in a double-quoted value starts no escape YAML knows: use single quotes"
	case strings.HasPrefix(words, "unknown anchor"):
		return "an alias (*name) refers to an anchor (&name) that is not defined above it"
	case words == "did not find expected comment or line break":
		return "a | or > (a block of text) must end its line: the text goes on the lines below it"
	case strings.Contains(words, "UTF-8"), strings.Contains(words, "control characters"), strings.Contains(words, "Unicode"):
		return "the file holds bytes that are not UTF-8 text"
	}
	return "the YAML parser cannot read this line"
}
