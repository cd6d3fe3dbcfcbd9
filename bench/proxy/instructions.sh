#!/usr/bin/env bash
# User-space instructions per request of llmretry's proxy, of Go's own
# ReverseProxy (bench/proxy/plainproxy) and of nginx (one process,
# bench/proxy/nginx-cpu.conf), each under valgrind's callgrind (the Go ones
# with GOMAXPROCS=1, async preemption off), counters zeroed after a warm-up
# of 500 requests, then N requests from bench/storm/client (4 at a time over
# HTTP/1.1 keep-alive) against `llmretry mock` answering at once over
# cleartext HTTP/1.1. Unlike CPU time this does not drift with a shared
# machine. Beside each count, the system calls per request of the same
# target run natively (not under valgrind, which adds its own and changes
# how reads coalesce) for the same load: bench/proxy/syscalls.sh, perf's
# tracepoints by kind and /proc/PID/io.
#
# Premise, checked: every request through llmretry arrives whole, or the
# run fails (exit 1). A baseline that fails some is reported with its count
# of failures beside its figure, and the run goes on.
#
# PROFILE=DIR also writes text renderings of each target's profile there:
# NAME-KIND-self.txt (callgrind_annotate: the functions with the most
# instructions of their own, with exact call counts) and, for nginx, whose
# binary keeps only its exported symbols, NAME-KIND-inclusive.txt. Read the
# Go ones with care: callgrind follows calls and returns, and a goroutine
# switch (one stack for another) confuses it, so some cost lands on the
# function that parked (e.g. pollDesc.wait'2 with half of everything); the
# totals are exact. bench/proxy/profile.sh samples CPU time instead.
#
# Go's runtime reads the clock with RDTSCP where the CPU has it, an
# instruction valgrind 3.19 cannot run (SIGILL, "panic during panic"), so the
# Go targets run with GODEBUG=cpu.rdtscp=off (RDTSC behind fences instead).
#
# Needs valgrind and nginx (apt-get install valgrind nginx-light); perf
# (linux-perf) for system calls by kind.
# LLMRETRY_BIN, if set, is the llmretry binary whose proxy is measured (a
# build of another commit, to compare); the mock is always this checkout's.
#   bench/proxy/instructions.sh [N] [-stream]        (default 2000, plain)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/need.sh
need nginx nginx-light
n=${1:-2000} stream=${2:-}
kind=${stream:--plain}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
. bench/proxy/syscalls.sh
go build -o "$tmp/llmretry" ./cmd/llmretry
(cd bench && go build -o "$tmp/plainproxy" ./proxy/plainproxy && go build -o "$tmp/load" ./storm/client)
mock=18391 port=18392
"$tmp/llmretry" mock --listen 127.0.0.1:$mock >/dev/null 2>&1 &
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$mock/" && break; sleep 0.1; done
sed "s#PREFIX#$tmp#; s#MOCKPORT#$mock#; s#NGINXPORT#$port#" bench/proxy/nginx-cpu.conf >"$tmp/nginx.conf"
echo "# instructions.sh $n $kind, $(date -u +%FT%TZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), llmretry at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cmd bench go.mod ./*.go || echo ' plus uncommitted changes')${LLMRETRY_BIN:+ (proxy measured: $LLMRETRY_BIN)}, $(valgrind --version), $(nginx -v 2>&1)"
# load NAME REQUESTS: sets failed; a failure through llmretry ends the run.
load() {
	local out
	out=$("$tmp/load" -url "http://127.0.0.1:$port/v1/chat/completions" -n "$2" -c 4 $stream 2>"$tmp/load.err") || true
	case $out in
	"ok $2/$2 "*) failed=0 ;;
	"ok "*)
		failed=$(($2 - $(sed 's#^ok \([0-9]*\)/.*#\1#' <<<"$out")))
		if [ "$1" = llmretry ]; then
			echo "instructions.sh: llmretry failed $failed of $2 requests ($kind): $(head -3 "$tmp/load.err" | tr '\n' ' ')" >&2
			exit 1
		fi
		echo "# $1 $kind: $failed of $2 failed: $(head -3 "$tmp/load.err" | tr '\n' ' ')"
		;;
	*) echo "instructions.sh: the load against $1 did not finish: $out $(cat "$tmp/load.err")" >&2; exit 1 ;;
	esac
}
up() { for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port/" && return; sleep 0.2; done; echo "instructions.sh: $1 did not start" >&2; exit 1; }
measure() { # name command...
	local name=$1 vpid ir fails sys="" stacks=""
	shift
	# llmretry proxy runs with the adaptive stack start off, executing
	# itself again to set it (cmd/llmretry/stackstart.go); under valgrind,
	# which does not follow an exec, it is set here instead, to the same
	# effect. The other targets run as they come.
	[ "$name" = llmretry ] && stacks=,adaptivestackstart=0
	GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off$stacks GOMAXPROCS=1 valgrind --tool=callgrind --callgrind-out-file="$tmp/$name.out" "$@" >/dev/null 2>"$tmp/$name.log" &
	vpid=$!
	up "$name"
	load "$name" 500
	callgrind_control -z $vpid >/dev/null 2>&1
	load "$name" "$n"
	fails=$failed
	callgrind_control -d $vpid >/dev/null 2>&1
	kill $vpid
	wait $vpid 2>/dev/null || true
	if grep -q "SIGILL\|unhandled instruction" "$tmp/$name.log"; then
		echo "instructions.sh: valgrind could not run $name: $(grep -m1 -A1 'unhandled instruction' "$tmp/$name.log")" >&2
		exit 1
	fi
	# The dump holds the counts since the zeroing; the file written at exit, the few after.
	local dump
	dump=$(grep -l -m1 '^summary:' "$tmp/$name".out.* | while read -r f; do echo "$(grep -m1 '^summary:' "$f" | awk '{print $2}') $f"; done | sort -n | tail -1)
	ir=${dump%% *}
	if [ -n "${PROFILE:-}" ]; then
		mkdir -p "$PROFILE"
		callgrind_annotate --auto=no --threshold=100 "${dump#* }" >"$tmp/annotated"
		head -100 "$tmp/annotated" | sed "s#$tmp/##g" >"$PROFILE/$name$kind-self.txt"
		if [ "$name" = nginx ]; then
			callgrind_annotate --auto=no --threshold=99 --inclusive=yes "${dump#* }" >"$tmp/annotated"
			head -100 "$tmp/annotated" | sed "s#$tmp/##g" >"$PROFILE/$name$kind-inclusive.txt"
		fi
	fi
	# The same load, natively, for its system calls.
	GODEBUG=asyncpreemptoff=1$stacks GOMAXPROCS=1 "$@" >/dev/null 2>&1 &
	vpid=$!
	up "$name"
	load "$name" 500
	local io0
	io0=$(sys_io $vpid)
	sys_kinds="syscalls - (no perf)"
	[ "$sys_perf" = 1 ] && sys_perf_begin $vpid "$tmp"
	load "$name" "$n"
	[ "$sys_perf" = 1 ] && sys_perf_end "$n"
	sys="$sys_kinds $(awk -v d=$(($(sys_io $vpid) - io0)) -v n="$n" 'BEGIN {printf "syscr+syscw %.2f", d / n}')"
	fails="$fails+$failed"
	kill $vpid
	wait $vpid 2>/dev/null || true
	echo "$name $kind: $((ir / n)) instructions, $sys, failed $fails of $n and $n, per request"
}
measure llmretry "${LLMRETRY_BIN:-$tmp/llmretry}" proxy --listen 127.0.0.1:$port --admin-listen "" --upstream http://127.0.0.1:$mock --quiet
measure reverseproxy "$tmp/plainproxy" 127.0.0.1:$port http://127.0.0.1:$mock
measure nginx nginx -c "$tmp/nginx.conf" -p "$tmp"
