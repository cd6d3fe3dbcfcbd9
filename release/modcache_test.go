package release

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// shareExtractedModules links, into the test's own module cache, every
// module this machine's module cache has already extracted, except the
// project's own. Extracting them again (some 640 MB, mostly the SDKs the
// integration tests drive, for the tidy check) was most of the release
// tests' time. What the tests prove is untouched: the project's modules
// still come only from the release's proxy, and every other module is
// still checked against go.sum (the go command reads the link's
// ziphash, copied beside it). A module the machine's cache lacks is
// fetched and extracted as before; where links cannot be made, all are.
// Removing the test's cache removes the links, never what they point to.
func shareExtractedModules(t *testing.T, cache string) {
	t.Helper()
	out, err := exec.Command(goBin(), "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	real := strings.TrimSpace(string(out))
	download := filepath.Join(real, "cache", "download")
	linked := 0
	_ = filepath.WalkDir(download, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".ziphash") {
			return nil
		}
		rel, _ := filepath.Rel(download, path) // <module>/@v/<version>.ziphash, both escaped
		mod, file, ok := strings.Cut(filepath.ToSlash(rel), "/@v/")
		if !ok || strings.HasPrefix(mod, "github.com/llmretry/") {
			return nil
		}
		version := strings.TrimSuffix(file, ".ziphash")
		dir := filepath.Join(real, filepath.FromSlash(mod)+"@"+version)
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil // not extracted
		}
		if _, err := os.Stat(strings.TrimSuffix(path, ".ziphash") + ".partial"); err == nil {
			return nil // an extraction that did not finish
		}
		hash, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		link := filepath.Join(cache, filepath.FromSlash(mod)+"@"+version)
		hashCopy := filepath.Join(cache, "cache", "download", rel)
		if os.MkdirAll(filepath.Dir(link), 0o755) != nil || os.MkdirAll(filepath.Dir(hashCopy), 0o755) != nil {
			return nil
		}
		if os.Symlink(dir, link) != nil {
			return fs.SkipAll // no links here: extract everything, as before
		}
		if os.WriteFile(hashCopy, hash, 0o644) != nil {
			_ = os.Remove(link)
			return nil
		}
		linked++
		return nil
	})
	t.Logf("%d extracted modules shared from %s", linked, real)
}
