package release

import (
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
		link := filepath.Join(cache, filepath.FromSlash(mod)+"@"+version)
		if os.MkdirAll(filepath.Dir(link), 0o755) != nil {
			return nil
		}
		if os.Symlink(dir, link) != nil {
			return fs.SkipAll // no links here: extract everything, as before
		}
		if copyInto(path, filepath.Join(cache, "cache", "download", rel)) != nil {
			_ = os.Remove(link)
			return nil
		}
		linked++
		return nil
	})
	t.Logf("%d extracted modules shared from %s", linked, real)
}

// keepDownloads puts what the tests' go commands downloaded of third-party
// modules into the machine's module cache, as downloaded files only (the
// zip, its hash, go.mod and .info), where the go command keeps them: the
// tidy check needs modules no build fetches (the tests of dependencies),
// and a run downloaded them again every time (99 MiB a warm run, measured
// from a fresh module cache). Extracted, they would add some 400 MB to the
// caches the test command leaves, past the 2 GB it is held to; as zips,
// about 100 MB, and a run extracts them into its own cache from there,
// without the network. A zip is kept only once the go command recorded its
// hash (having checked it against go.sum or the checksum database), and
// never one of the project's own modules. Each file is written beside its
// place and renamed into it, the hash after the zip, so that a run stopped
// midway leaves nothing half-written for the go command to trust.
func keepDownloads(cache, real string) error {
	download := filepath.Join(cache, "cache", "download")
	return filepath.WalkDir(download, func(path string, d fs.DirEntry, err error) error {
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
		dst := filepath.Join(real, "cache", "download", rel)
		if !d.Type().IsRegular() || !strings.Contains(filepath.ToSlash(rel), "/@v/") {
			return nil
		}
		if _, err := os.Stat(dst); err == nil {
			return nil // the machine has it
		}
		switch ext := filepath.Ext(path); ext {
		case ".info", ".mod":
			return copyInto(path, dst)
		case ".ziphash":
			zip := strings.TrimSuffix(path, ext) + ".zip"
			if _, err := os.Stat(zip); err != nil {
				return nil
			}
			if err := copyInto(zip, strings.TrimSuffix(dst, ext)+".zip"); err != nil {
				return err
			}
			return copyInto(path, dst)
		}
		return nil
	})
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
