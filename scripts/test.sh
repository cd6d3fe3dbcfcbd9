#!/usr/bin/env bash
# The project's one test command, as the README gives it and .ci/run runs it.
# It installs what the tests need (redis-server from Debian's packages),
# then checks formatting, vets, lints and runs every module's tests under
# the race detector. The Redis tests start and stop their own redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every module of the workspace, the core first.
modules=(. ./integration ./redisstate ./cmd ./bench)
pkgs=()
for m in "${modules[@]}"; do
	[ -f "$m/go.mod" ] && pkgs+=("$m/...")
done

if ! command -v redis-server >/dev/null 2>&1; then
	echo "== installing redis-server (Debian package)"
	sudo=""
	[ "$(id -u)" = 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "not gofmt'ed:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet "${pkgs[@]}"

echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 "${pkgs[@]}"

echo "== go test -race"
go test -race -count=1 "${pkgs[@]}"
