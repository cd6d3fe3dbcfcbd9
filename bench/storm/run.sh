#!/usr/bin/env bash
# Storm control through the real command: llmretry proxy with its defaults,
# and the same proxy with --budget off --cooldowns off, each in front of its
# own llmretry mock serving the same seeded fault mix (about 30% transient
# faults: 503 with Retry-After, 429 with retry-after-ms, 529, 500, resets,
# quota), 200 requests 8 at a time, plain and streamed, for each seed.
# The last columns are what storm control did, from the proxy's /metrics:
# retries the budget refused, and requests cooldowns held.
#   bench/storm/run.sh [seeds...]        (default: 1 to 10)
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3 4 5 6 7 8 9 10)
mix='503:retry-after=1@6%,429:retry-after-ms=300@6%,529@6%,500@5%,reset@5%,quota@2%'
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
go build -o "$tmp/llmretry" ./cmd/llmretry
go build -o "$tmp/client" ./bench/storm/client
wait_for() { for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; }
echo "mix: $mix"
echo "| seed | stream | storm control | succeeded | p50 | p99 | budget refused | cooldowns held |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for seed in "${seeds[@]}"; do
	for stream in false true; do
		for mode in on off; do
			flags=()
			[ "$mode" = off ] && flags=(--budget off --cooldowns off)
			"$tmp/llmretry" mock --listen 127.0.0.1:18191 --faults "$mix" --seed "$seed" >/dev/null &
			mock=$!
			"$tmp/llmretry" proxy --listen 127.0.0.1:18190 --upstream http://127.0.0.1:18191 --admin-listen 127.0.0.1:18189 --quiet "${flags[@]}" >/dev/null &
			proxy=$!
			wait_for 18191; wait_for 18190
			out=$("$tmp/client" -url http://127.0.0.1:18190/v1/chat/completions -n 200 -c 8 -stream="$stream")
			metrics=$(curl -s http://127.0.0.1:18189/metrics)
			refused=$(awk '/^llmretry_budget_refused_total/ {print $2}' <<<"$metrics")
			held=$(awk '/^llmretry_cooldown_held_total/ {print $2}' <<<"$metrics")
			kill $proxy $mock; wait $proxy $mock 2>/dev/null || true
			read -r _ okn _ p50 _ p99 <<<"$out"
			echo "| $seed | $stream | $mode | $okn | $p50 | $p99 | $refused | $held |"
		done
	done
done
