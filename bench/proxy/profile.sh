#!/usr/bin/env bash
# Where the CPU time of a request goes, in llmretry's proxy, in Go's own
# ReverseProxy (bench/proxy/plainproxy) and in nginx, kernel included: the
# set-up of bench/proxy/cpu.sh (each proxy alone on CPU 1, GOMAXPROCS=1,
# nginx one process; `llmretry mock` answering at once over cleartext
# HTTP/1.1 and bench/storm/client, 4 at a time, on CPU 0), N plain requests
# and then N streams through each while `perf record -e cpu-clock` samples
# it (a software clock: this works on virtual machines whose hardware
# counters perf cannot read). For each it prints the CPU time per request
# (schedstat, as cpu.sh; sampling at 1,999 Hz adds a little), the share of
# the samples in the kernel and in user space, those shares grouped by what
# the code does (bench/proxy/categories.awk), and the hottest symbols.
#
# On a virtual machine the kernel's own symbols are smeared: a sample taken
# while interrupts are off is counted where they come back on (here,
# pvm_irq_enable), so read the kernel as one figure, not by function.
#
# Premise, checked as in cpu.sh: a request failed through llmretry ends the
# run; a baseline's failures are reported.
#
# Needs: perf (apt-get install linux-perf), nginx (nginx-light), taskset, two CPUs.
#   bench/proxy/profile.sh [N]        (default 20000)
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/need.sh
need nginx nginx-light
n=${1:-20000}
[ "$(nproc)" -ge 2 ] || { echo "profile.sh needs two CPUs" >&2; exit 1; }
perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1 || { echo "profile.sh: perf cannot sample cpu-clock here" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
(cd bench && go build -o "$tmp/plainproxy" ./proxy/plainproxy && go build -o "$tmp/load" ./storm/client)
mock=18481 llm=18482 plain=18483 ngx=18484
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; echo "profile.sh: nothing listens on $1" >&2; exit 1; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }
GOMAXPROCS=1 taskset -c 0 "$tmp/llmretry" mock --listen 127.0.0.1:$mock >/dev/null 2>&1 &
wait_for $mock
GOMAXPROCS=1 taskset -c 1 "$tmp/llmretry" proxy --listen 127.0.0.1:$llm --admin-listen "" --upstream http://127.0.0.1:$mock --quiet >/dev/null 2>&1 &
pid_llmretry=$!
GOMAXPROCS=1 taskset -c 1 "$tmp/plainproxy" 127.0.0.1:$plain http://127.0.0.1:$mock 2>/dev/null &
pid_reverseproxy=$!
sed "s#PREFIX#$tmp#; s#MOCKPORT#$mock#; s#NGINXPORT#$ngx#" bench/proxy/nginx-cpu.conf >"$tmp/nginx.conf"
taskset -c 1 nginx -c "$tmp/nginx.conf" -p "$tmp" 2>"$tmp/nginx.log" &
pid_nginx=$!
wait_for $llm; wait_for $plain; wait_for $ngx
echo "# profile.sh $n, $(date -u +%FT%TZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg), llmretry at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cmd bench go.mod ./*.go || echo ' plus uncommitted changes'), $(nginx -v 2>&1)"
load() { # name port requests stream
	local out
	out=$(taskset -c 0 "$tmp/load" -url "http://127.0.0.1:$2/v1/chat/completions" -n "$3" -c 4 $4 2>"$tmp/load.err") || true
	case $out in
	"ok $3/$3 "*) ;;
	"ok "*)
		[ "$1" = llmretry ] && { echo "profile.sh: llmretry failed: $out $(head -3 "$tmp/load.err")" >&2; exit 1; }
		echo "# $1${4:+ $4}: failed: $out $(head -3 "$tmp/load.err" | tr '\n' ' ')" ;;
	*) echo "profile.sh: the load against $1 did not finish: $out" >&2; exit 1 ;;
	esac
}
for stream in "" -stream; do
	for who in llmretry:$llm reverseproxy:$plain nginx:$ngx; do
		name=${who%%:*} pidvar=pid_${who%%:*}
		pid=${!pidvar}
		load "$name" "${who#*:}" 2000 "$stream" # warm-up
		before=$(cpu_ns "$pid")
		perf record -e cpu-clock -F 1999 -p "$pid" -o "$tmp/perf.data" >/dev/null 2>&1 &
		rec=$!
		sleep 0.3
		load "$name" "${who#*:}" "$n" "$stream"
		kill -INT $rec
		wait $rec 2>/dev/null || true
		ns=$((($(cpu_ns "$pid") - before) / n))
		perf report -i "$tmp/perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null | grep -E '^ +[0-9.]+%' >"$tmp/report" || true
		echo
		echo "## $name ${stream:--plain}: $ns ns of CPU per request ($(grep -c . "$tmp/report") symbols in the samples)"
		echo
		echo '```'
		awk -v ns="$ns" -f bench/proxy/categories.awk "$tmp/report"
		echo
		echo "hottest symbols (share of all samples):"
		head -25 "$tmp/report"
		echo '```'
	done
done
