#!/usr/bin/env bash
# Memory per open stream: N streamed chats held open at once (19 events a
# second apart) through llmretry proxy, through Go's own ReverseProxy set up
# the same way (bench/proxy/plainproxy: what net/http itself costs), and
# through nginx, in front of the
# same mock, twice: with the mock on cleartext HTTP/1.1 (as a self-hosted
# server), and with the mock on HTTPS (as every LLM API is; llmretry then
# speaks HTTP/2 to it, as Go does over TLS, and nginx HTTP/1.1 over TLS, all
# it can). Clients speak h2c. For each it prints the proxy's resident memory
# idle and at its peak while the streams were open (sampled every 200 ms from
# /proc), per stream, and how many streams arrived intact. Needs nginx
# (apt-get install nginx-light).
#   bench/streams/run.sh [N]        (default 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-10000}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
go build -o "$tmp/client" ./bench/streams/client
(cd bench && go build -o "$tmp/plainproxy" ./proxy/plainproxy)
(cd bench && go build -o "$tmp/tlsmock" ./streams/tlsmock)
mock=18291 proxy=18290 ngx=18292 tlsmock=18293 plain=18294
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; } # KiB
"$tmp/llmretry" mock --listen 127.0.0.1:$mock --faults "slow=1s@100%" >/dev/null &
wait_for $mock
"$tmp/tlsmock" -listen 127.0.0.1:$tlsmock -cert "$tmp/mock.pem" 2>/dev/null &
for _ in $(seq 100); do [ -s "$tmp/mock.pem" ] && break; sleep 0.1; done
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
	echo "| $name | $n | $((idle / 1024)) MiB | $((peak / 1024)) MiB | $(awk -v d=$((peak - idle)) -v n="$n" 'BEGIN {printf "%.1f", d / n}') KiB | $(tr '\n' ' ' <"$tmp/out") |"
}
echo "| target | upstream | streams | RSS idle | RSS peak | per stream | client |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for up in "http://127.0.0.1:$mock" "https://127.0.0.1:$tlsmock"; do
	SSL_CERT_FILE="$tmp/mock.pem" "$tmp/llmretry" proxy --listen 127.0.0.1:$proxy --admin-listen "" --upstream "$up" --quiet >/dev/null &
	ppid=$!
	wait_for $proxy
	measure "llmretry-proxy | ${up%%:*}" $ppid "http://127.0.0.1:$proxy/v1/chat/completions"
	kill $ppid; wait $ppid 2>/dev/null || true

	SSL_CERT_FILE="$tmp/mock.pem" "$tmp/plainproxy" 127.0.0.1:$plain "$up" 2>/dev/null &
	ppid=$!
	wait_for $plain
	measure "go-reverseproxy | ${up%%:*}" $ppid "http://127.0.0.1:$plain/v1/chat/completions"
	kill $ppid; wait $ppid 2>/dev/null || true

	sed "s#PREFIX#$tmp#; s#NGINXPORT#$ngx#" bench/streams/nginx.conf >"$tmp/nginx.conf"
	if [ "${up%%:*}" = https ]; then
		sed -i "s#MOCKPORT#$tlsmock#; s#proxy_pass http://mock;#proxy_pass https://mock; proxy_ssl_session_reuse on;#" "$tmp/nginx.conf"
	else
		sed -i "s#MOCKPORT#$mock#" "$tmp/nginx.conf"
	fi
	nginx -c "$tmp/nginx.conf" -p "$tmp"
	wait_for $ngx
	worker=$(pgrep -P "$(cat "$tmp/nginx.pid")" | head -1)
	measure "nginx | ${up%%:*}" $worker "http://127.0.0.1:$ngx/v1/chat/completions"
	kill "$(cat "$tmp/nginx.pid")"; sleep 1
done
