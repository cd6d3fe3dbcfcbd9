package integration

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goBlock is one ```go block of the README: its imports and its statements.
type goBlock struct {
	line    int
	imports []string
	body    []string
}

// readmeGoBlocks reads the README's Go blocks. A block is statements as a
// reader would paste them into a function, after an import block.
func readmeGoBlocks(t *testing.T) []goBlock {
	f, err := os.Open("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []goBlock
	var cur *goBlock
	inImport := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && line == "```go":
			blocks = append(blocks, goBlock{line: n})
			cur = &blocks[len(blocks)-1]
		case cur == nil:
		case line == "```":
			cur = nil
		case line == "import (":
			inImport = true
		case inImport && line == ")":
			inImport = false
		case inImport:
			cur.imports = append(cur.imports, line)
		case strings.HasPrefix(line, "import "):
			cur.imports = append(cur.imports, strings.TrimPrefix(line, "import "))
		default:
			cur.body = append(cur.body, line)
		}
	}
	return blocks
}

// declared finds the variables a block declares at its top level, so that
// the program can use them (Go refuses a variable declared and not used).
var declared = regexp.MustCompile(`^([A-Za-z_]\w*(?:, *[A-Za-z_]\w*)*) :=`)

// Every Go block in the README compiles, as written, with the imports it
// lists: the quickstart once did not (net/http was not imported).
func TestReadmeGoBlocksCompile(t *testing.T) {
	blocks := readmeGoBlocks(t)
	if len(blocks) < 4 {
		t.Fatalf("found %d Go blocks in the README", len(blocks))
	}
	dir, err := os.MkdirTemp(".", "readme-") // inside this module, to build with its dependencies
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for i, b := range blocks {
		var vars []string
		for _, l := range b.body {
			if m := declared.FindStringSubmatch(l); m != nil {
				for _, v := range strings.Split(m[1], ",") {
					if v = strings.TrimSpace(v); v != "_" {
						vars = append(vars, v)
					}
				}
			}
		}
		src := "package main\n\nimport (\n" + strings.Join(b.imports, "\n") + "\n)\n\nfunc main() {\n" +
			strings.Join(b.body, "\n") + "\n_ = []any{" + strings.Join(vars, ", ") + "}\n}\n"
		pkg := filepath.Join(dir, "block"+string(rune('a'+i)))
		if err := os.MkdirAll(pkg, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pkg, "main.go"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "vet", "./"+dir+"/...")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("README Go blocks (numbered a, b, ... from the top) do not compile:\n%s", out)
	}
}
