#!/usr/bin/env bash
# Throughput and latency through the llmretry proxy, against the mock
# directly, Go's own httputil.ReverseProxy without retries, and nginx in
# front of the same mock, plain and streamed, at 64 connections. Needs wrk
# and nginx (apt-get install wrk nginx-light).
#   bench/proxy/run.sh [seconds] [mock fault spec]
# The default mock answers at once, so every process is CPU-bound; give it
# a model's latency with, e.g., "stall=40ms..60ms@100%".
#
# PIN=1 (the default) puts wrk and the mock on CPU 0 and each proxy alone on
# CPU 1 (GOMAXPROCS=1; nginx runs one worker): on a two-CPU machine this is
# the only way for a proxy's cost to show as its own, not as CPU taken from
# the load generator and the mock. PIN=0 lets every process share every CPU,
# the Go ones (mock and proxies) with GOMAXPROCS=PROXY_PROCS (default: all).
# REPS=N (default 3) runs the round of targets N times, one after another,
# and the table gives medians of each round's figures against that round's
# direct run: a shared machine's speed drifts by tens of percent over
# minutes, and each comparison must sit within minutes of its baseline.
# The raw wrk lines come first, then a table of each target against direct,
# with the CPU time the server under test used per request (the mock's for
# direct, else the proxy's alone): unlike latency, that barely moves with
# the machine's drift, and it is what a proxy costs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/need.sh
need nginx nginx-light
secs=${1:-10}
faults=${2:-}
pin=${PIN:-1}
reps=${REPS:-3}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
go build -o "$tmp/plainproxy" ./bench/proxy/plainproxy
if [ "$pin" = 1 ]; then
	[ "$(nproc)" -ge 2 ] || { echo "PIN=1 needs two CPUs" >&2; exit 1; }
	load="taskset -c 0" proxied="taskset -c 1" procs=1 threads=1
else
	load="" proxied="" procs=${PROXY_PROCS:-$(nproc)} threads=2
fi
mock=18181 proxy=18180 ngx=18182 plain=18183
GOMAXPROCS=$procs $load "$tmp/llmretry" mock --listen 127.0.0.1:$mock --faults "$faults" >/dev/null &
pid_direct=$!
GOMAXPROCS=$procs $proxied "$tmp/llmretry" proxy --listen 127.0.0.1:$proxy --admin-listen 127.0.0.1:18184 --upstream http://127.0.0.1:$mock --quiet >/dev/null &
pid_llmretry=$!
GOMAXPROCS=$procs $proxied "$tmp/plainproxy" 127.0.0.1:$plain http://127.0.0.1:$mock 2>/dev/null &
pid_plain=$!
sed "s#PREFIX#$tmp#; s#MOCKPORT#$mock#; s#NGINXPORT#$ngx#" bench/proxy/nginx.conf >"$tmp/nginx.conf"
$proxied nginx -c "$tmp/nginx.conf" -p "$tmp" &
for port in $mock $proxy $plain $ngx; do # wait until all four listen
	for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break || sleep 0.1; done
done
pid_nginx="$(cat "$tmp/nginx.pid") $(pgrep -P "$(cat "$tmp/nginx.pid")" | tr '\n' ' ')"
# ticks PID...: the CPU time (user+system, in clock ticks) the processes used.
ticks() {
	local sum=0 p f
	for p in "$@"; do
		read -ra f <"/proc/$p/stat" # pid (comm) state ...: comm has no spaces here
		sum=$((sum + f[13] + f[14]))
	done
	echo $sum
}
hz=$(getconf CLK_TCK)
echo "# $(date -u +%F) PIN=$pin REPS=$reps seconds=$secs faults=${faults:-none} wrk -t$threads -c64"
for rep in $(seq "$reps"); do
	for stream in 0 1; do
		for target in direct:$mock:direct llmretry-proxy:$proxy:llmretry go-reverseproxy:$plain:plain nginx:$ngx:nginx; do
			IFS=: read -r name port who <<<"$target"
			pids=pid_$who
			echo "### $name stream=$stream rep=$rep"
			before=$(ticks ${!pids})
			STREAM=$stream $load wrk -t$threads -c64 -d"${secs}s" --latency -s bench/proxy/post.lua \
				"http://127.0.0.1:$port/v1/chat/completions" >"$tmp/wrk"
			used=$(($(ticks ${!pids}) - before))
			grep -E "Requests/sec|^ +(50|99)%|Non-2xx|Socket errors" "$tmp/wrk"
			# The server's own CPU per request: the mock's for direct, else the proxy's.
			awk -v t="$used" -v hz="$hz" '/ requests in / { printf "CPU/request: %.1f us\n", t / hz * 1e6 / $1 }' "$tmp/wrk"
		done
	done
done | tee "$tmp/out"
awk -f bench/proxy/table.awk "$tmp/out"
