package release

import (
	"os"
	"path/filepath"
	"testing"
)

// What the release tests keep of their downloads, for the next run: a
// third-party module's files once its hash is recorded, never the project's
// own modules, never a zip whose hash is missing, never over what the
// machine already has.
func TestKeepDownloadsKeepsCheckedThirdPartyFilesOnly(t *testing.T) {
	cache, real := t.TempDir(), t.TempDir()
	write := func(root, rel, body string) {
		t.Helper()
		p := filepath.Join(root, "cache", "download", filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(cache, "example.com/!upper/@v/v1.0.0.zip", "zip")
	write(cache, "example.com/!upper/@v/v1.0.0.ziphash", "h1:x")
	write(cache, "example.com/!upper/@v/v1.0.0.mod", "module example.com/Upper")
	write(cache, "example.com/modonly/@v/v0.1.0.mod", "module example.com/modonly")
	write(cache, "example.com/unhashed/@v/v1.0.0.zip", "half")
	write(cache, "github.com/llmretry/llmretry/@v/v0.1.0.zip", "ours")
	write(cache, "github.com/llmretry/llmretry/@v/v0.1.0.ziphash", "h1:ours")
	write(cache, "example.com/had/@v/v1.0.0.mod", "the tests'")
	write(real, "example.com/had/@v/v1.0.0.mod", "the machine's")
	if err := keepDownloads(cache, real); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]string{
		"example.com/!upper/@v/v1.0.0.zip":               "zip",
		"example.com/!upper/@v/v1.0.0.ziphash":           "h1:x",
		"example.com/!upper/@v/v1.0.0.mod":               "module example.com/Upper",
		"example.com/modonly/@v/v0.1.0.mod":              "module example.com/modonly",
		"example.com/unhashed/@v/v1.0.0.zip":             "",
		"github.com/llmretry/llmretry/@v/v0.1.0.zip":     "",
		"github.com/llmretry/llmretry/@v/v0.1.0.ziphash": "",
		"example.com/had/@v/v1.0.0.mod":                  "the machine's",
	} {
		b, err := os.ReadFile(filepath.Join(real, "cache", "download", filepath.FromSlash(rel)))
		if got := string(b); got != want || (want == "" && !os.IsNotExist(err)) {
			t.Errorf("%s: %q (%v), want %q", rel, got, err, want)
		}
	}
	left, _ := filepath.Glob(filepath.Join(real, "cache", "download", "example.com", "*", "@v", ".llmretry-release-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
