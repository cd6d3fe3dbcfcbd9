#!/usr/bin/env bash
# Going beats waiting: failover with a failing primary and a healthy
# secondary, llmretry's proxy (--config, two targets, defaults) beside nginx
# (a primary and a backup server, nginx.conf here), on loopback, taking
# turns round by round. Scenarios: a primary that answers 503 every time,
# one that refuses connections, and one that fails 30% of requests (503,
# 529, reset in equal shares). Each round is N requests, 8 at a time, plain
# (non-streamed) chat completions from bench/storm/client over HTTP/1.1, to
# the mock on cleartext HTTP/1.1. For each system it prints every round's
# p50 and p99, the median of the rounds' p99s, and for llmretry the attempts
# per request (from its /metrics). Every request must succeed: a round with
# a failure ends the run.
#
# LLMRETRY_BIN, if set, is the llmretry binary to measure (to compare a
# build of another commit); by default this checkout's.
#   bench/failover/run.sh [ROUNDS] [N]        (default 8 rounds of 250)
# Needs nginx (apt-get install nginx-light) and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/need.sh
need nginx nginx-light
rounds=${1:-8} n=${2:-250}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null; rm -rf "$tmp"' EXIT
bin=${LLMRETRY_BIN:-}
if [ -z "$bin" ]; then
	go build -o "$tmp/llmretry" ./cmd/llmretry
	bin=$tmp/llmretry
fi
(cd bench && go build -o "$tmp/client" ./storm/client)
primary=18401 secondary=18402 proxy=18403 admin=18404 ngx=18405
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.05; done; echo "nothing on $1" >&2; exit 1; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

"$bin" mock --listen 127.0.0.1:$secondary >/dev/null &
wait_for $secondary
cat >"$tmp/llmretry.yaml" <<YAML
routes:
  - prefix: /v1
    targets:
      - {name: primary, base_url: 'http://127.0.0.1:$primary/v1'}
      - {name: secondary, base_url: 'http://127.0.0.1:$secondary/v1'}
YAML
mkdir -p "$tmp/body" "$tmp/proxy"
sed "s#PREFIX#$tmp#g; s#PRIMARYPORT#$primary#g; s#SECONDARYPORT#$secondary#g; s#NGINXPORT#$ngx#" bench/failover/nginx.conf >"$tmp/nginx.conf"

echo "| scenario | system | rounds x requests | p50 by round (ms) | p99 by round (ms) | median p99 | attempts per request |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for scenario in 503-every-time refuses 30%-faults; do
	case $scenario in
	503-every-time) "$bin" mock --listen 127.0.0.1:$primary --faults '503@100%' >/dev/null & ;;
	30%-faults) "$bin" mock --listen 127.0.0.1:$primary --faults '503@10%,529@10%,reset@10%' --seed 7 >/dev/null & ;;
	refuses) ;; # nothing listens there
	esac
	[ "$scenario" = refuses ] || wait_for $primary
	"$bin" proxy --config "$tmp/llmretry.yaml" --listen 127.0.0.1:$proxy --admin-listen 127.0.0.1:$admin --quiet >/dev/null 2>"$tmp/proxy.log" &
	lpid=$!
	nginx -c "$tmp/nginx.conf" -p "$tmp" 2>/dev/null
	wait_for $proxy; wait_for $ngx
	declare -A p50s=() p99s=()
	for r in $(seq "$rounds"); do
		for sys in llmretry nginx; do
			port=$proxy
			[ $sys = nginx ] && port=$ngx
			out=$("$tmp/client" -url "http://127.0.0.1:$port/v1/chat/completions" -n "$n" -c 8)
			read -r _ okn _ p50 _ p99 <<<"$out"
			if [ "$okn" != "$n/$n" ]; then
				echo "$sys, $scenario, round $r: $out" >&2
				exit 1
			fi
			p50s[$sys]+="${p50%ms} " p99s[$sys]+="${p99%ms} "
		done
	done
	metrics=$(curl -s "http://127.0.0.1:$admin/metrics")
	attempts=$(awk '/^llmretry_attempts_total/ {print $2}' <<<"$metrics")
	requests=$(awk '/^llmretry_requests_total\{code="200"\}/ {print $2}' <<<"$metrics")
	for sys in llmretry nginx; do
		per="-"
		[ $sys = llmretry ] && per=$(awk -v a="$attempts" -v r="$requests" 'BEGIN {printf "%.3f", a / r}')
		med=$(tr ' ' '\n' <<<"${p99s[$sys]}" | grep . | median)
		echo "| $scenario | $sys | $rounds x $n | ${p50s[$sys]}| ${p99s[$sys]}| $med | $per |"
	done
	kill $lpid; wait $lpid 2>/dev/null || true
	kill "$(cat "$tmp/nginx.pid")"; while [ -f "$tmp/nginx.pid" ]; do sleep 0.05; done
	[ "$scenario" = refuses ] || { kill %2 2>/dev/null || true; }
	pkill -f -- "--listen 127.0.0.1:$primary" 2>/dev/null || true
	for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$primary/" || break; sleep 0.05; done
	unset p50s p99s
done
