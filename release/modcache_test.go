package release

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/module"
)

// machineModCache is this machine's module cache (go env GOMODCACHE).
func machineModCache(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(goBin(), "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

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
func shareExtractedModules(t *testing.T, real, cache string) {
	t.Helper()
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

// keepDownloads puts what the tests' go commands downloaded of third-party
// modules into the machine's module cache: the tidy check needs modules no
// build fetches (the tests of dependencies), and a run downloaded them
// again every time (99 MiB a warm run, measured from a fresh module cache).
// The go command itself does it, with its own locks (other test binaries
// use that cache meanwhile) and its own extraction: `go mod download` of
// each module the tests' cache holds whole (not one whose extraction did
// not finish), from that cache as a proxy. The checksum database is not
// asked again: each zip was checked against go.sum or the database when the
// tests fetched it. The project's own modules are never kept; the
// go.mod-only entries tidy needs are copied, through a temporary name
// renamed into place.
func keepDownloads(cache, real string) error {
	download := filepath.Join(cache, "cache", "download")
	var whole []string
	err := filepath.WalkDir(download, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(download, path)
		if err != nil {
			return err
		}
		if strings.HasPrefix(filepath.ToSlash(rel)+"/", "github.com/llmretry/") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		escMod, file, ok := strings.Cut(filepath.ToSlash(rel), "/@v/")
		ext := filepath.Ext(file)
		if !ok || !d.Type().IsRegular() {
			return nil
		}
		if _, err := os.Stat(filepath.Join(real, "cache", "download", rel)); err == nil {
			return nil // the machine has it
		}
		escVer := strings.TrimSuffix(file, ext)
		switch ext {
		case ".info", ".mod":
			return copyInto(path, filepath.Join(real, "cache", "download", rel))
		case ".ziphash":
			if _, err := os.Stat(strings.TrimSuffix(path, ext) + ".partial"); err == nil {
				return nil
			}
			mod, err1 := module.UnescapePath(escMod)
			ver, err2 := module.UnescapeVersion(escVer)
			if err1 != nil || err2 != nil {
				return nil
			}
			// A module proxy serves an .info beside each version, which the
			// tests' go commands did not always keep (tidy reads go.mod files
			// and zips): this cache is the proxy now, and it is the tests'.
			info := strings.TrimSuffix(path, ext) + ".info"
			if _, err := os.Stat(info); err != nil {
				if err := os.WriteFile(info, []byte(`{"Version":"`+ver+`"}`), 0o644); err != nil {
					return err
				}
			}
			whole = append(whole, mod+"@"+ver)
		}
		return nil
	})
	if err != nil || len(whole) == 0 {
		return err
	}
	cmd := exec.Command(goBin(), append([]string{"mod", "download"}, whole...)...)
	cmd.Dir = os.TempDir() // outside any module
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local", "GOMODCACHE="+real,
		"GOPROXY=file://"+filepath.ToSlash(download), "GOSUMDB=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go mod download: %v\n%s", err, out)
	}
	return nil
}

// copyInto copies the file src to dst, through a temporary file renamed
// into place.
func copyInto(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".llmretry-release-*")
	if err != nil {
		return err
	}
	_, err = io.Copy(tmp, in)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
	}
	return err
}
