#!/usr/bin/env bash
# Memory per open stream: N streamed chats held open at once (19 events a
# second apart) through llmretry proxy, and through nginx, in front of the
# same mock; clients speak h2c, both speak HTTP/1.1 upstream. For each
# target it prints its resident memory idle and at its peak while the streams
# were open (sampled every 200 ms from /proc), per stream, and how many
# streams arrived intact. Needs nginx (apt-get install nginx-light).
#   bench/streams/run.sh [N]        (default 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-10000}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
go build -o "$tmp/client" ./bench/streams/client
mock=18291 proxy=18290 ngx=18292
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; } # KiB
"$tmp/llmretry" mock --listen 127.0.0.1:$mock --faults "slow=1s@100%" >/dev/null &
wait_for $mock
measure() { # name pid url
	local name=$1 pid=$2 url=$3 idle peak=0 r
	idle=$(rss "$pid")
	"$tmp/client" -url "$url" -n "$n" >"$tmp/out" &
	local cpid=$!
	while kill -0 $cpid 2>/dev/null; do
		r=$(rss "$pid"); [ "$r" -gt "$peak" ] && peak=$r
		sleep 0.2
	done
	wait $cpid || true
	echo "| $name | $n | $((idle / 1024)) MiB | $((peak / 1024)) MiB | $(((peak - idle) * 1024 / n / 1024)) KiB | $(tr '\n' ' ' <"$tmp/out") |"
}
echo "| target | streams | RSS idle | RSS peak | per stream | client |"
echo "| --- | --- | --- | --- | --- | --- |"
"$tmp/llmretry" proxy --listen 127.0.0.1:$proxy --admin-listen "" --upstream http://127.0.0.1:$mock --quiet >/dev/null &
ppid=$!
wait_for $proxy
measure llmretry-proxy $ppid "http://127.0.0.1:$proxy/v1/chat/completions"
kill $ppid; wait $ppid 2>/dev/null || true
sed "s#PREFIX#$tmp#; s#MOCKPORT#$mock#; s#NGINXPORT#$ngx#" bench/streams/nginx.conf >"$tmp/nginx.conf"
nginx -c "$tmp/nginx.conf" -p "$tmp"
wait_for $ngx
worker=$(pgrep -P "$(cat "$tmp/nginx.pid")" | head -1)
measure nginx $worker "http://127.0.0.1:$ngx/v1/chat/completions"
