#!/usr/bin/env bash
# What a newcomer's first hour costs, measured the way the README reports
# it: from a fresh clone, with empty Go build and module caches and an
# empty npm cache, each step under /usr/bin/time -v.
#
#   scripts/measure-first-run.sh [demo|test|all] [OUT]   (default all, OUT=stdout)
#
# demo: `go run ./cmd/llmretry demo`, cold (empty caches), then warm.
# test: `./scripts/test.sh` (the README's test command, every step),
#       cold, then warm (caches kept; the tests run again with -count=1),
#       WARM times (default 3).
# For each: CPU (user + system, the process and every child it waited
# for: compilers, linkers, test binaries), wall time, peak memory, the
# bytes the machine received while it ran (from /proc/net/dev: run it on a
# quiet machine; the Debian packages the test command installs are not in
# it when they are already installed), and what was left in the caches
# (du of the Go build cache, the Go module cache, npm's cache,
# node_modules and the user cache directory, where staticcheck keeps its
# own: XDG_CACHE_HOME points into the temporary directory too, so that
# staticcheck starts cold as well). The clone and the caches live in a temporary directory,
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${2:-/dev/stdout}
warm=${WARM:-3} # warm runs of the test command: one run's wall time varies by some seconds
src=$PWD
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
git clone -q "$src" "$tmp/repo"
export GOCACHE=$tmp/gocache GOMODCACHE=$tmp/gomodcache npm_config_cache=$tmp/npmcache XDG_CACHE_HOME=$tmp/usercache
mkdir -p "$GOCACHE" "$GOMODCACHE" "$npm_config_cache" "$XDG_CACHE_HOME"

received() { awk -F'[: ]+' 'NR > 2 && $2 != "lo" {n += $3} END {printf "%.0f\n", n}' /proc/net/dev; }
caches() {
	local nm=$tmp/repo/cmd/internal/proxy/testdata/node/node_modules
	printf 'caches after: Go build %s, Go modules %s, npm cache %s, node_modules %s, user cache (staticcheck) %s, all %s\n' \
		"$(du -sh "$GOCACHE" | cut -f1)" "$(du -sh "$GOMODCACHE" | cut -f1)" \
		"$(du -sh "$npm_config_cache" | cut -f1)" "$( [ -d "$nm" ] && du -sh "$nm" | cut -f1 || echo none)" \
		"$(du -sh "$XDG_CACHE_HOME" | cut -f1)" \
		"$(du -sch "$GOCACHE" "$GOMODCACHE" "$npm_config_cache" "$XDG_CACHE_HOME" $( [ -d "$nm" ] && echo "$nm") | tail -1 | cut -f1)"
}
step() { # step NAME COMMAND...
	local name=$1
	shift
	local before after
	before=$(received)
	(cd "$tmp/repo" && /usr/bin/time -v "$@") >"$tmp/step.out" 2>"$tmp/step.err" || {
		echo "$name failed:" >&2
		tail -n 50 "$tmp/step.out" "$tmp/step.err" >&2
		exit 1
	}
	after=$(received)
	{
		echo "## $name: $*"
		grep -E 'User time|System time|Elapsed \(wall|Maximum resident' "$tmp/step.err" | sed 's/^\t*/  /'
		awk '/User time/ {u = $NF} /System time/ {s = $NF} END {printf "  CPU, user + system (seconds): %.1f\n", u + s}' "$tmp/step.err"
		echo "  received while it ran: $(((after - before) / 1048576)) MiB"
		echo "  $(caches)"
	} >>"$out"
}

{
	echo "# scripts/measure-first-run.sh $what, $(date -u +%FT%TZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(free -g | awk '/Mem:/ {print $2}') GiB, load average $(cut -d' ' -f1-3 /proc/loadavg), $(go version), llmretry at $(git rev-parse --short HEAD)"
	echo
} >>"$out"
case $what in demo | all)
	step "demo, cold" go run ./cmd/llmretry demo
	step "demo, warm" go run ./cmd/llmretry demo
	;;
esac
case $what in test | all)
	if [ "$what" = all ]; then # the test command's cold run starts from empty caches too
		chmod -R u+w "$GOMODCACHE" && rm -rf "$GOCACHE" "$GOMODCACHE" "$npm_config_cache" "$XDG_CACHE_HOME"
		mkdir -p "$GOCACHE" "$GOMODCACHE" "$npm_config_cache" "$XDG_CACHE_HOME"
	fi
	step "test command, cold" ./scripts/test.sh
	for i in $(seq "$warm"); do
		step "test command, warm (run $i of $warm)" ./scripts/test.sh
	done
	;;
esac
