#!/usr/bin/env bash
# Throughput and latency through the llmretry proxy, against the mock
# directly, Go's own httputil.ReverseProxy without retries, and nginx in
# front of the same mock, plain and streamed, at 64 connections. Needs wrk and nginx (apt-get install wrk nginx-light).
#   bench/proxy/run.sh [seconds] [mock fault spec]
# The default mock answers at once, so every process is CPU-bound; give it
# a model's latency with, e.g., "stall=20ms@100%".
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
faults=${2:-}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
go build -o "$tmp/plainproxy" ./bench/proxy/plainproxy
mock=18181 proxy=18180 ngx=18182 plain=18183
"$tmp/llmretry" mock --listen 127.0.0.1:$mock --faults "$faults" >/dev/null &
GOMAXPROCS=${PROXY_PROCS:-2} "$tmp/llmretry" proxy --listen 127.0.0.1:$proxy --upstream http://127.0.0.1:$mock --quiet >/dev/null &
GOMAXPROCS=${PROXY_PROCS:-2} "$tmp/plainproxy" 127.0.0.1:$plain http://127.0.0.1:$mock 2>/dev/null &
sed "s#PREFIX#$tmp#; s#MOCKPORT#$mock#; s#NGINXPORT#$ngx#" bench/proxy/nginx.conf > "$tmp/nginx.conf"
nginx -c "$tmp/nginx.conf" -p "$tmp" &
sleep 1 # the three servers start listening
for stream in 0 1; do
	for target in direct:$mock llmretry-proxy:$proxy go-reverseproxy:$plain nginx:$ngx; do
		name=${target%%:*} port=${target##*:}
		echo "### $name stream=$stream"
		STREAM=$stream wrk -t2 -c64 -d"${secs}s" --latency -s bench/proxy/post.lua "http://127.0.0.1:$port/v1/chat/completions" |
			grep -E "Requests/sec|^ +(50|99)%|Non-2xx|Socket errors"
	done
done
