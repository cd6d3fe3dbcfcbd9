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
	echo "== installing ${need[*]} (Debian packages, at ${SECONDS} s)"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm ci removes node_modules and installs it again, 4 s each run. A
# stamp of package-lock.json, written after an install that succeeded,
# lets the next run skip it while the lock is unchanged and npm ls finds
# the installed tree whole (a fresh clone has neither, and installs).
node=cmd/internal/proxy/testdata/node
stamp=$node/node_modules/.llmretry-package-lock.sha256
lock=$(sha256sum "$node/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock" ] && npm ls --prefix "$node" --all >/dev/null 2>&1; then
	echo "== npm: node_modules is as package-lock.json pins it (at ${SECONDS} s)"
else
	echo "== npm ci (the Node openai client, at the version package-lock.json pins, at ${SECONDS} s)"
	npm ci --prefix "$node" --no-audit --no-fund --loglevel=error
	echo "$lock" >"$stamp"
fi

echo "== no binaries tracked (at ${SECONDS} s)"
# A compiled test binary was once committed (11 MB); build outputs belong in
# .gitignore, never in the repository.
if git rev-parse --git-dir >/dev/null 2>&1; then
	binaries=$(git ls-files -z | xargs -0 -r file --mime-encoding | awk -F': *' '$NF == "binary" {print $1}')
	if [ -n "$binaries" ]; then
		echo "binary files are tracked:"; echo "$binaries"; exit 1
	fi
fi

echo "== gofmt (at ${SECONDS} s)"
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
# The programs are linked without DWARF (-ldflags=-w): nothing here runs
# them under a debugger, stack traces and race reports read the symbol
# table Go keeps apart from it, and each link takes a fifth less time (the
# command's race binary: 5.4 s of CPU, 4.2 without), for every test
# binary and every program the tests build.
#
# The two SDKs the integration tests and the demo drive, openai-go and
# anthropic-sdk-go, are compiled without inlining (-l, for their packages
# only): their packages are generated API types, a third of the cold
# run's compile time, and inlining is much of it (their root packages,
# cold: 74 and 73 s of CPU, 46 and 42 s without), for code the tests call
# a few thousand times. llmretry and the standard library are compiled as usual.
sdks="-gcflags=github.com/openai/openai-go/v3/...=-l -gcflags=github.com/anthropics/anthropic-sdk-go/v2/...=-l"
export GOFLAGS="$(go env GOFLAGS) -race -trimpath -ldflags=-w $sdks"

# A program built with the race detector sleeps a second before it exits
# (GORACE's atexit_sleep_ms, 1000 by default), for reports from goroutines
# still running to be printed: every test binary, every command the tests
# build and run, every test binary run again as a child. Each test's races
# are reported when it ends, and the testing package fails it for them,
# before any exit; the second at exit would only catch a race in the last
# moment of a process, after its tests. For the programs the tests run
# (the demo, the installed command) a race still fails them (exit 66) while
# they run; only one in their last moment could now go unreported. The
# user's own GORACE options come after, and win.
export GORACE="atexit_sleep_ms=0${GORACE:+ $GORACE}"

echo "== go vet (at ${SECONDS} s)"
go vet "${pkgs[@]}"

echo "== staticcheck (at ${SECONDS} s)"
# staticcheck itself runs without the race detector (-race=false), which
# would slow it several times; the packages it reads are loaded with
# GOFLAGS, like everything else.
go run -race=false honnef.co/go/tools/cmd/staticcheck@v0.8.2 "${pkgs[@]}"

echo "== go test -race (at ${SECONDS} s)"
# Three packages at a time (-p 3), on two CPUs: a test binary holds its
# turn while it waits (on Node starting, on the go commands the release
# tests run, on the demo's backoff), and with two turns the CPUs idled.
# Warm, alternating three runs each: 59.7 s median with the default (2
# here), 55.8 s with 3, the same CPU.
# -vet=off: go vet, above, has just run every one of its analyzers over the
# same packages and their tests; go test's own vet runs a subset of them,
# with flags of its own, so that it vetted every dependency a second time
# (69 s of CPU, cold) to find nothing go vet had not.
go test -p 3 -race -count=1 -vet=off "${pkgs[@]}"
echo "== passed in ${SECONDS} s"
