#!/usr/bin/env bash
# CPU per request of llmretry's proxy against Go's own ReverseProxy
# (bench/proxy/plainproxy), from a fixed amount of work: each proxy serves
# exactly N requests (bench/storm/client, 4 at a time) from a mock that answers at
# once, and its CPU time (user and system, in ns: the sum of
# /proc/PID/task/*/schedstat over its threads) is divided by N. The two take turns, ROUNDS times, so that each ratio
# compares runs seconds apart on a machine whose speed drifts; the median
# ratio is printed, with every round's. Each proxy has CPU 1 to itself
# (GOMAXPROCS=1); the mock and the load share CPU 0.
#   bench/proxy/cpu.sh [N] [ROUNDS]        (defaults 20000, 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-20000} rounds=${2:-10}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
(cd bench && go build -o "$tmp/plainproxy" ./proxy/plainproxy && go build -o "$tmp/load" ./storm/client)
mock=18381 llm=18382 plain=18383
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }
GOMAXPROCS=1 taskset -c 0 "$tmp/llmretry" mock --listen 127.0.0.1:$mock >/dev/null 2>&1 &
wait_for $mock
GOMAXPROCS=1 taskset -c 1 "$tmp/llmretry" proxy --listen 127.0.0.1:$llm --admin-listen "" --upstream http://127.0.0.1:$mock --quiet >/dev/null 2>&1 &
lpid=$!
GOMAXPROCS=1 taskset -c 1 "$tmp/plainproxy" 127.0.0.1:$plain http://127.0.0.1:$mock 2>/dev/null &
ppid=$!
wait_for $llm
wait_for $plain
load() { # port requests stream: every reply must arrive whole
	local out
	out=$(taskset -c 0 "$tmp/load" -url "http://127.0.0.1:$1/v1/chat/completions" -n "$2" -c 4 $3)
	case $out in "ok $2/$2 "*) ;; *) echo "cpu.sh: port $1${3:+ $3}: $out" >&2; exit 1 ;; esac
}
per_request() { # pid port stream: sets ns, the CPU per request
	local before after
	before=$(cpu_ns "$1")
	load "$2" "$n" "$3"
	after=$(cpu_ns "$1")
	ns=$(((after - before) / n))
}
for stream in "" -stream; do
	load $llm 2000 "$stream" # warm-up
	load $plain 2000 "$stream"
	ratios=()
	for r in $(seq "$rounds"); do
		per_request $lpid $llm "$stream"
		a=$ns
		per_request $ppid $plain "$stream"
		b=$ns
		ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}')")
		echo "${stream:--plain} round $r: llmretry $a ns, ReverseProxy $b ns per request"
	done
	printf '%s\n' "${ratios[@]}" | sort -n | awk -v s="${stream:--plain}" '{v[NR] = $1; l = l " " $1}
		END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%s: llmretry / ReverseProxy median %.3f over %d rounds (sorted:%s)\n", s, m, NR, l}'
done
