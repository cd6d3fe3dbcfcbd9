#!/usr/bin/env bash
# User-space instructions per request of llmretry's proxy against Go's own
# ReverseProxy (bench/proxy/plainproxy): each under valgrind's callgrind
# (GOMAXPROCS=1, async preemption off), counters zeroed after a warm-up of
# 500 requests, then N requests from bench/storm/client (4 at a time) against
# the mock answering at once. Unlike CPU time this does not drift with a
# shared machine; it leaves out the system calls, which both proxies share.
# Needs valgrind.
#   bench/proxy/instructions.sh [N] [-stream]        (default 2000, plain)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-2000} stream=${2:-}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
(cd bench && go build -o "$tmp/plainproxy" ./proxy/plainproxy && go build -o "$tmp/load" ./storm/client)
mock=18391 port=18392
"$tmp/llmretry" mock --listen 127.0.0.1:$mock >/dev/null 2>&1 &
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$mock/" && break; sleep 0.1; done
load() { # requests: every reply must arrive whole
	local out
	out=$("$tmp/load" -url "http://127.0.0.1:$port/v1/chat/completions" -n "$1" -c 4 $stream)
	case $out in "ok $1/$1 "*) ;; *) echo "instructions.sh: $out" >&2; exit 1 ;; esac
}
measure() { # name command...
	local name=$1 vpid ir
	shift
	GODEBUG=asyncpreemptoff=1 GOMAXPROCS=1 valgrind --tool=callgrind --callgrind-out-file="$tmp/$name.out" "$@" >/dev/null 2>"$tmp/$name.log" &
	vpid=$!
	for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done
	load 500
	callgrind_control -z $vpid >/dev/null 2>&1
	load "$n"
	callgrind_control -d $vpid >/dev/null 2>&1
	kill $vpid
	wait $vpid 2>/dev/null || true
	# The dump holds the counts since the zeroing; the file written at exit, the few after.
	ir=$(grep -h -m1 '^summary:' "$tmp/$name".out.* | awk '{print $2}' | sort -n | tail -1)
	echo "$name ${stream:--plain}: $((ir / n)) instructions per request"
}
measure llmretry "$tmp/llmretry" proxy --listen 127.0.0.1:$port --admin-listen "" --upstream http://127.0.0.1:$mock --quiet
measure reverseproxy "$tmp/plainproxy" 127.0.0.1:$port http://127.0.0.1:$mock
