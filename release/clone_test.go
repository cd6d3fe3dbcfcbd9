package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

// readmeSection is the README's text from heading to the next heading of
// its level.
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
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

// fenced is the first block of section fenced with "```"+info whose first
// line starts with first.
func fenced(t *testing.T, section, info, first string) []string {
	t.Helper()
	for _, part := range strings.Split(section, "```"+info+"\n")[1:] {
		block, _, _ := strings.Cut(part, "```")
		if strings.HasPrefix(block, first) {
			return strings.Split(strings.TrimSuffix(block, "\n"), "\n")
		}
	}
	t.Fatalf("no ```%s block starting %q", info, first)
	return nil
}

// declared finds the variables a Go block declares at its top level.
var declared = regexp.MustCompile(`^([A-Za-z_]\w*(?:, *[A-Za-z_]\w*)*) :=`)

// program makes a main package of a README Go block: its imports, and its
// statements in main.
func program(lines []string) string {
	var imports, body, vars []string
	inImport := false
	for _, l := range lines {
		switch {
		case l == "import (":
			inImport = true
		case inImport && l == ")":
			inImport = false
		case inImport:
			imports = append(imports, l)
		default:
			body = append(body, l)
			if m := declared.FindStringSubmatch(l); m != nil {
				for _, v := range strings.Split(m[1], ",") {
					if v = strings.TrimSpace(v); v != "_" {
						vars = append(vars, v)
					}
				}
			}
		}
	}
	return "package main\n\nimport (\n" + strings.Join(imports, "\n") + "\n)\n\nfunc main() {\n" +
		strings.Join(body, "\n") + "\n_ = []any{" + strings.Join(vars, ", ") + "}\n}\n"
}

// goIn runs go in dir, with the module cache this machine's tests filled
// read first (offline), then the usual module proxy; the workspace is off
// unless dir has one of its own.
func goIn(t *testing.T, dir string, workspace bool, args ...string) (string, error) {
	t.Helper()
	env, err := exec.Command(goBin(), "env", "GOMODCACHE", "GOPROXY").Output()
	if err != nil {
		t.Fatal(err)
	}
	cache, proxy, _ := strings.Cut(strings.TrimSpace(string(env)), "\n")
	cmd := exec.Command(goBin(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOPROXY=file://"+filepath.Join(cache, "cache", "download")+","+proxy)
	if !workspace {
		cmd.Env = append(cmd.Env, "GOWORK=off")
	} else {
		cmd.Env = append(cmd.Env, "GOWORK=")
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Before a release, `go get github.com/llmretry/llmretry` fails: the
// module is not published, and a newcomer had to guess replace lines for
// both llmretry and redisstate. The README's recipe, followed as written
// in a new module beside a clone (this checkout, linked where the recipe
// clones it), builds the Quickstart's program and the Redis example. The
// module already requires the SDKs at the versions the command does, with
// their sums, so that nothing is fetched that the tests have not fetched.
// And the reason the recipe gives for replace lines over a workspace
// holds: in a workspace, go mod tidy fails.
func TestCloneRecipeBuildsTheQuickstart(t *testing.T) {
	t.Parallel() // each runs go commands of its own; the module cache locks what they share
	recipe := fenced(t, readmeSection(t, "## Install"), "", "git clone ")
	work := t.TempDir()
	app := filepath.Join(work, "app")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmdMod, err := os.ReadFile("../cmd/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	mf, err := modfile.ParseLax("go.mod", cmdMod, nil)
	if err != nil {
		t.Fatal(err)
	}
	gomod := "module example.com/app\n\ngo 1.26.0\n\nrequire (\n"
	for _, r := range mf.Require {
		if r.Mod.Path == "github.com/openai/openai-go/v3" || r.Mod.Path == "github.com/redis/go-redis/v9" {
			gomod += "\t" + r.Mod.Path + " " + r.Mod.Version + "\n"
		}
	}
	gomod += ")\n"
	sums, err := os.ReadFile("../cmd/go.sum")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"go.mod":        gomod,
		"go.sum":        string(sums),
		"quick/main.go": program(fenced(t, readmeSection(t, "## Quickstart"), "go", "import (")),
		"fleet/main.go": program(fenced(t, readmeSection(t, "## Across a fleet: Redis"), "go", "import (")),
	}
	for name, body := range files {
		path := filepath.Join(app, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	for _, line := range recipe {
		words := strings.Fields(line)
		switch {
		case len(words) == 4 && words[0] == "git" && words[1] == "clone":
			// The clone, beside the module: this checkout.
			if err := os.Symlink(root, filepath.Join(app, words[3])); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
		case len(words) > 1 && words[0] == "go":
			if out, err := goIn(t, app, false, words[1:]...); err != nil {
				t.Fatalf("%s: %v\n%s", line, err, out)
			}
		default:
			t.Fatalf("%q: a line the test does not know how to follow", line)
		}
	}
	// -trimpath: the packages' directories, a new temporary one each run,
	// are then no part of what the build cache keys them by.
	if out, err := goIn(t, app, false, "build", "-trimpath", "./..."); err != nil {
		t.Fatalf("go build, after the recipe: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(filepath.Join(app, "go.mod"))
	f, err := modfile.Parse("go.mod", b, nil)
	if err != nil || len(f.Replace) != 2 {
		t.Fatalf("go.mod after the recipe: %v\n%s", err, b)
	}

	// A workspace in place of the replace lines: go mod tidy fails.
	ws := filepath.Join(work, "ws")
	if err := os.MkdirAll(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"go.mod": gomod, "go.sum": string(sums), "main.go": files["quick/main.go"]} {
		if err := os.WriteFile(filepath.Join(ws, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := goIn(t, ws, true, "work", "init", ".", root, filepath.Join(root, "redisstate")); err != nil {
		t.Fatalf("go work init: %v\n%s", err, out)
	}
	if out, err := goIn(t, ws, true, "mod", "tidy"); err == nil || !strings.Contains(out, "github.com/llmretry/llmretry") {
		t.Fatalf("go mod tidy in a workspace: %v, want it to fail looking for the unpublished module:\n%s", err, out)
	}
}
