#!/usr/bin/env bash
# The project's one test command, as the README gives it and .ci/run runs it.
# It installs what the tests need (redis-server from Debian's packages,
# Node's openai client from the npm registry), then checks formatting, vets, lints and runs every module's tests under
# the race detector. The Redis tests start and stop their own redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every module of the workspace. The release module comes first: its tests
# wait on go commands of their own for about 20 s, and go test starts test
# binaries in the order it is given them, so that last they ran alone at
# the end (the warm test step: 71 s, 66 s with it first).
modules=(./release . ./integration ./redisstate ./cmd ./bench)
pkgs=()
for m in "${modules[@]}"; do
	[ -f "$m/go.mod" ] && pkgs+=("$m/...")
done

# What the tests need from Debian: redis-server for the Redis tests, file
# for the check that no binary is tracked, Node.js and npm for the Node
# openai client's test through the proxy.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v file >/dev/null 2>&1 || need+=(file)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
	echo "== installing ${need[*]} (Debian packages)"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== npm ci (the Node openai client, at the version package-lock.json pins)"
npm ci --prefix cmd/internal/proxy/testdata/node --no-audit --no-fund --loglevel=error

echo "== no binaries tracked"
# A compiled test binary was once committed (11 MB); build outputs belong in
# .gitignore, never in the repository.
if git rev-parse --git-dir >/dev/null 2>&1; then
	binaries=$(git ls-files -z | xargs -0 -r file --mime-encoding | awk -F': *' '$NF == "binary" {print $1}')
	if [ -n "$binaries" ]; then
		echo "binary files are tracked:"; echo "$binaries"; exit 1
	fi
fi

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "not gofmt'ed:"; echo "$unformatted"; exit 1
fi

# Every step builds the same way, for the race detector and with paths
# trimmed, so that each package is compiled once for the whole command:
# vet, staticcheck (through go list -export), the tests, the go commands
# the tests run (the README's Go blocks, the release installed from a
# module cache of its own, which only -trimpath lets share), all find the
# compiler's output in the build cache. Built each their own way, they
# once cost 926 s of CPU cold and left 3.8 GB of build cache. The flags go
# after the user's own (go env GOFLAGS reads the environment and go env -w).
export GOFLAGS="$(go env GOFLAGS) -race -trimpath"

echo "== go vet"
go vet "${pkgs[@]}"

echo "== staticcheck"
# staticcheck itself runs without the race detector (-race=false), which
# would slow it several times; the packages it reads are loaded with
# GOFLAGS, like everything else.
go run -race=false honnef.co/go/tools/cmd/staticcheck@v0.8.2 "${pkgs[@]}"

echo "== go test -race"
go test -race -count=1 "${pkgs[@]}"
