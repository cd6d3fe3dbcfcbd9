package release

import (
	archivezip "archive/zip"
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

// published are the modules a release tags: the library, the Redis state
// and the command, and where they are in the checkout.
var published = []struct{ path, dir string }{
	{"github.com/llmretry/llmretry", ".."},
	{"github.com/llmretry/llmretry/redisstate", "../redisstate"},
	{"github.com/llmretry/llmretry/cmd", "../cmd"},
}

var fix = flag.Bool("fix", false, "tidy every module (go mod tidy) instead of checking it")

// every module of the repository, for the tidy check.
var every = []string{"..", "../redisstate", "../cmd", "../integration", "../bench", "."}

// releaseVersion is the version the modules require of each other: the one
// the next release tags.
func releaseVersion(t *testing.T) string {
	b, err := os.ReadFile("../cmd/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	f, err := modfile.ParseLax("go.mod", b, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Require {
		if r.Mod.Path == "github.com/llmretry/llmretry" {
			return r.Mod.Version
		}
	}
	t.Fatal("cmd/go.mod does not require the library")
	return ""
}

// publish writes the modules at version into a GOPROXY directory, as the
// module proxy would serve them once tagged.
func publish(t *testing.T, proxy, version string) {
	for _, m := range published {
		dir := filepath.Join(proxy, m.path, "@v")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		gomod, err := os.ReadFile(filepath.Join(m.dir, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		if f, err := modfile.ParseLax("go.mod", gomod, nil); err != nil || len(f.Replace) > 0 {
			t.Fatalf("%s: go.mod has replace directives (%v): go install would refuse it", m.path, err)
		}
		info, _ := json.Marshal(map[string]any{"Version": version, "Time": time.Now().UTC()})
		files := map[string][]byte{version + ".mod": gomod, version + ".info": info, "list": []byte(version + "\n")}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := writeModuleZip(filepath.Join(dir, version+".zip"), module.Version{Path: m.path, Version: version}, m.dir); err != nil {
			t.Fatalf("%s: %v", m.path, err)
		}
	}
}

// writeModuleZip writes the zip of the module in dir as a module proxy
// serves it: the files x/mod/zip picks, under its checks (those of
// CreateFromDir), stored rather than compressed. Compressing them, under
// the race detector the test command builds with, took half the release
// tests' time (12.8 s; 0.4 s without the race detector). The zip is checked
// again as the go command will check it.
func writeModuleZip(name string, m module.Version, dir string) error {
	checked, err := zip.CheckDir(dir)
	if err != nil {
		return err
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	zw := archivezip.NewWriter(f)
	for _, path := range checked.Valid { // file system paths, dir joined to each
		rel, err := filepath.Rel(dir, path)
		if err == nil {
			err = addStored(zw, m.Path+"@"+m.Version+"/"+filepath.ToSlash(rel), path)
		}
		if err != nil {
			f.Close()
			return err
		}
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = zip.CheckZip(m, name)
	return err
}

func addStored(zw *archivezip.Writer, name, path string) error {
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	w, err := zw.CreateHeader(&archivezip.FileHeader{Name: name, Method: archivezip.Store})
	if err != nil {
		return err
	}
	_, err = io.Copy(w, src)
	return err
}

// goCmd runs go with the workspace off, modules from proxy first, then
// from this machine's module cache (used as a proxy, so that little comes
// from the network), then from its usual GOPROXY, into a module cache of
// its own.
func goCmd(t *testing.T, dir, proxy, cache string, args ...string) (string, error) {
	t.Helper()
	env, err := exec.Command(goBin(), "env", "GOMODCACHE", "GOPROXY").Output()
	if err != nil {
		t.Fatal(err)
	}
	realCache, realProxy, _ := strings.Cut(strings.TrimSpace(string(env)), "\n")
	cmd := exec.Command(goBin(), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		// The caller's GOFLAGS come first: the test command's -race and
		// -trimpath let this install share the build cache with every other
		// step (with -trimpath, where the module cache lies does not count).
		"GOWORK=off", "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -mod=mod -modcacherw -trimpath"), "GOTOOLCHAIN=local",
		"GOPROXY=file://"+proxy+",file://"+filepath.Join(realCache, "cache", "download")+","+realProxy,
		// The project's own modules have no published checksums yet; every
		// other module is checked against go.sum and the checksum database.
		"GONOSUMDB=github.com/llmretry", "GOMODCACHE="+cache, "GOBIN="+filepath.Join(cache, "bin"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// shared is the proxy and module cache the tests share: filling a module
// cache is most of their time.
var shared struct {
	once                        sync.Once
	version, proxy, cache, real string // real: this machine's module cache
}

// setup publishes the release once, into a proxy and a cache that live
// until the tests end.
func setup(t *testing.T) (version, proxy, cache string) {
	shared.once.Do(func() {
		shared.version = releaseVersion(t)
		shared.real = machineModCache(t) // before the directories: a failure here leaves none
		shared.proxy, _ = os.MkdirTemp("", "llmretry-proxy-")
		shared.cache, _ = os.MkdirTemp("", "llmretry-modcache-")
		if shared.cache != "" {
			shareExtractedModules(t, shared.real, shared.cache)
		}
		publish(t, shared.proxy, shared.version)
	})
	if shared.proxy == "" || shared.cache == "" {
		t.Fatal("no temporary directories")
	}
	return shared.version, shared.proxy, shared.cache
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if shared.cache != "" && shared.real != "" {
		if err := keepDownloads(shared.cache, shared.real); err != nil {
			// Only the next run's time depends on it (a module cache may be
			// read-only): said, not failed.
			fmt.Fprintf(os.Stderr, "release tests: could not keep the third-party modules they downloaded: %v\n", err)
		}
	}
	for _, dir := range []string{shared.proxy, shared.cache} {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

// goBin is the go command that runs the tests.
func goBin() string { return "go" }

// Tagging a release makes both `go install .../cmd/llmretry@vX` and
// `go get github.com/llmretry/llmretry@vX` work: neither can use a module
// whose go.mod has replace directives, as this one's once did.
func TestReleaseInstallsAndImportsFromTheModuleProxy(t *testing.T) {
	t.Parallel() // each runs go commands of its own; the module cache locks what they share
	version, proxy, cache := setup(t)

	// The two share nothing but the module cache, whose locks order them:
	// side by side, the import's build does not wait for the install's.
	t.Run("install", func(t *testing.T) {
		t.Parallel()
		if out, err := goCmd(t, t.TempDir(), proxy, cache, "install", "github.com/llmretry/llmretry/cmd/llmretry@"+version); err != nil {
			t.Fatalf("go install: %v\n%s", err, out)
		}
		out, err := exec.Command(filepath.Join(cache, "bin", "llmretry"), "version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), version) {
			t.Fatalf("llmretry version: %v %q, want %s", err, out, version)
		}
	})
	t.Run("import", func(t *testing.T) {
		t.Parallel()
		importer := t.TempDir()
		files := map[string]string{
			"go.mod": "module example.com/importer\n\ngo 1.26.0\n",
			"main.go": `package main

import (
	"net/http"

	"github.com/redis/go-redis/v9"

	"github.com/llmretry/llmretry"
	"github.com/llmretry/llmretry/redisstate"
)

func main() {
	st, _ := redisstate.New(redisstate.Config{Client: redis.NewClient(&redis.Options{})})
	_ = &http.Client{Transport: llmretry.NewTransport(nil, llmretry.WithBudget(st), llmretry.WithHealthStore(st))}
}
`,
		}
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(importer, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, args := range [][]string{
			{"get", "github.com/llmretry/llmretry@" + version, "github.com/llmretry/llmretry/redisstate@" + version},
			{"build", "./..."},
		} {
			if out, err := goCmd(t, importer, proxy, cache, args...); err != nil {
				t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})
}

// Each module is tidy on its own, with the workspace off. The checksums of
// the project's own modules are the one thing allowed to differ: they are
// those of the published release, written when it is tagged (RELEASING.md),
// and a checkout's modules are not that release.
func TestEveryModuleIsTidyOnItsOwn(t *testing.T) {
	t.Parallel() // each runs go commands of its own; the module cache locks what they share
	_, proxy, cache := setup(t)
	for _, dir := range every {
		if *fix {
			tidy(t, dir, proxy, cache)
			continue
		}
		out, _ := goCmd(t, dir, proxy, cache, "mod", "tidy", "-diff")
		var left []string
		sc := bufio.NewScanner(bytes.NewReader([]byte(out)))
		for sc.Scan() {
			line := sc.Text()
			changed := (strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-")) &&
				!strings.HasPrefix(line, "+++") && !strings.HasPrefix(line, "---")
			if changed && !strings.Contains(line, "github.com/llmretry/") {
				left = append(left, line)
			}
			if strings.HasPrefix(line, "go: ") && !strings.HasPrefix(line, "go: downloading ") {
				left = append(left, line)
			}
		}
		if len(left) > 0 {
			t.Errorf("%s is not tidy on its own (go test ./release -run TestEveryModuleIsTidyOnItsOwn -args -fix):\n%s", dir, strings.Join(left, "\n"))
		}
	}
}

// tidy runs go mod tidy in dir, and takes the sums of the project's own
// modules back out of go.sum: they are the release's, not this checkout's.
func tidy(t *testing.T, dir, proxy, cache string) {
	if out, err := goCmd(t, dir, proxy, cache, "mod", "tidy"); err != nil {
		t.Fatalf("%s: go mod tidy: %v\n%s", dir, err, out)
	}
	sum := filepath.Join(dir, "go.sum")
	b, err := os.ReadFile(sum)
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" && !strings.HasPrefix(line, "github.com/llmretry/") {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(sum, []byte(strings.Join(kept, "")), 0o644); err != nil {
		t.Fatal(err)
	}
}
