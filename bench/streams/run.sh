#!/usr/bin/env bash
# Memory per open stream: N streamed chats held open at once (19 events a
# second apart, about 18 s each) through llmretry proxy, through Go's own
# ReverseProxy set up the same way (bench/proxy/plainproxy: what net/http
# itself costs), and through nginx (one worker), in front of the same mock,
# twice: with the mock on cleartext HTTP/1.1 (as a self-hosted server), and
# with the mock on HTTPS (as every LLM API is; the Go proxies then speak
# HTTP/2 to it, as Go does over TLS, and nginx HTTP/1.1 over TLS, all it
# can). Clients speak h2c (PROTO=h2c, the default: a few connections carry
# every stream) or HTTP/1.1 (PROTO=h1: one connection per stream,
# keep-alive on, as Python's httpx and Node's fetch do by default).
#
# The load and the measure are bench/streams/client, which checks the
# premise: the figure is the target's resident memory from a sample taken
# while every stream was open (after the last stream's first event, before
# the first one closed), less its idle memory, per open stream. If no sample
# was taken in that window, or llmretry's proxy failed a stream, the run
# fails (exit 1) and prints why, not a figure. A baseline's failed streams
# are counted beside its figure, and so are the most upstream connections
# each target held at once: over HTTPS a burst of streams can make a Go
# proxy dial hundreds of TLS connections (beyond the first, which the
# proxy's gate covers, every request that finds the open ones at their
# stream limit dials), and the garbage of those handshakes, freed but not
# yet returned to the system, counts in its memory: up to 40 KiB a stream.
#
# Each process may hold 20,000 file descriptors here: with PROTO=h1 and the
# cleartext upstream each stream takes two in each proxy (client and
# upstream connection), so N stays under 10,000.
#
# Needs nginx (apt-get install nginx-light), and curl for PROFILE.
#   bench/streams/run.sh [N]        (default 10000)
# Environment:
#   PROTO=h2c|h1       how clients speak (default h2c)
#   UPSTREAMS="http https"   which upstreams (default both)
#   TARGETS="llmretry reverseproxy nginx"   which targets (default all three)
#   GAP=2s             the time between a stream's events (default 1s: a
#                      stream lasts 18 GAPs); lengthen it when N streams
#                      take longer than that to open, or the run fails
#                      its premise (HTTP/1.1 clients at 9,000 took 16 s here)
#   RAMP=8s            start the streams over 8 s (stream i at 8 s * i/N)
#                      instead of at once: streams arriving over time, as
#                      a service sees them, rather than in one burst. Shorter
#                      than a stream (18 s at GAP=1s) they are all open from
#                      then on and the figure stands; RAMP=30s leaves them
#                      never all open together, and the run must fail (a
#                      check of the check)
#   LLMRETRY_BIN=PATH  measure this llmretry binary instead of building the
#                      tree's (to compare two builds in alternating runs);
#                      it is hard-linked where it can be, so that a uprobe
#                      placed on PATH (perf probe -x PATH) fires in the run
#   PROFILE=DIR        profile llmretry's proxy instead of measuring it: a
#                      build with net/http/pprof (bench/streams/pprof, via
#                      -overlay; cmd/ unchanged), every allocation recorded
#                      (GODEBUG=memprofilerate=1), and, while every stream
#                      is open, text renderings of its heap (in use after a
#                      GC, and all allocated since start) and goroutine
#                      profiles and its runtime memory statistics written to
#                      DIR. Its memory figure is then inflated by
#                      the profiling and is not a result.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-10000}
proto=${PROTO:-h2c}
upstreams=${UPSTREAMS:-http https}
targets=${TARGETS:-llmretry reverseproxy nginx}
. bench/need.sh
[[ " $targets " != *" nginx "* ]] || need nginx nginx-light
gap=${GAP:-1s}
case $proto in h2c | h1) ;; *) echo "run.sh: PROTO is h2c or h1" >&2; exit 2 ;; esac
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
if [ -n "${LLMRETRY_BIN:-}" ]; then ln -f "$LLMRETRY_BIN" "$tmp/llmretry" 2>/dev/null || cp "$LLMRETRY_BIN" "$tmp/llmretry"; else go build -o "$tmp/llmretry" ./cmd/llmretry; fi
(cd bench && go build -o "$tmp/client" ./streams/client && go build -o "$tmp/plainproxy" ./proxy/plainproxy && go build -o "$tmp/tlsmock" ./streams/tlsmock)
if [ -n "${PROFILE:-}" ]; then
	mkdir -p "$PROFILE"
	PROFILE=$(cd "$PROFILE" && pwd)
	printf '{"Replace":{"%s/cmd/llmretry/zz_bench_pprof.go":"%s/bench/streams/pprof/pprof.go"}}' "$PWD" "$PWD" >"$tmp/overlay.json"
	go build -tags llmretry_bench_pprof -overlay "$tmp/overlay.json" -o "$tmp/llmretry-pprof" ./cmd/llmretry
fi
mock=18291 proxy=18290 ngx=18292 tlsmock=18293 plain=18294 pprofport=18295
wait_for() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "run.sh: nothing listens on $1" >&2; exit 1; }
"$tmp/llmretry" mock --listen 127.0.0.1:$mock --faults "slow=$gap@100%" >/dev/null &
wait_for $mock
"$tmp/tlsmock" -listen 127.0.0.1:$tlsmock -cert "$tmp/mock.pem" -gap "$gap" 2>/dev/null &
for _ in $(seq 100); do [ -s "$tmp/mock.pem" ] && break; sleep 0.1; done
echo "# bench/streams/run.sh $n, PROTO=$proto GAP=$gap${RAMP:+ RAMP=$RAMP}${PROFILE:+ PROFILE}, $(date -u +%FT%TZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg), descriptors $(ulimit -n), llmretry ${LLMRETRY_BIN:+$LLMRETRY_BIN, not }at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cmd bench go.mod ./*.go || echo ' plus uncommitted changes'), $(command -v nginx >/dev/null && nginx -v 2>&1 || echo "no nginx")"
echo
echo "| target | clients | upstream | streams | RSS idle | RSS peak, all open | per stream | all open from - until | samples then | failed | RSS peak of the run | upstream connections, most at once |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
# profile: the -when-open command that takes llmretry's profiles while all are open.
profile() { # upstream
	local base="$PROFILE/llmretry-$proto-$1-$n" url="http://127.0.0.1:$pprofport/debug/pprof"
	cat <<-EOF
		curl -s -o $tmp/heap.pb '$url/heap?gc=1' &&
		go tool pprof -text -sample_index=inuse_space $tmp/llmretry-pprof $tmp/heap.pb > $base-heap-inuse.txt 2>/dev/null &&
		go tool pprof -text -cum -sample_index=inuse_space $tmp/llmretry-pprof $tmp/heap.pb > $base-heap-inuse-cum.txt 2>/dev/null &&
		go tool pprof -text -sample_index=inuse_objects $tmp/llmretry-pprof $tmp/heap.pb > $base-heap-objects.txt 2>/dev/null &&
		go tool pprof -text -sample_index=alloc_space $tmp/llmretry-pprof $tmp/heap.pb > $base-heap-alloc-space.txt 2>/dev/null &&
		curl -s '$url/heap?debug=1' | sed -n '/^# runtime.MemStats/,\$p' > $base-memstats.txt &&
		curl -s '$url/goroutine?debug=1' | head -400 > $base-goroutines.txt
	EOF
}
measure() { # name upstream pid url [client flags...]
	local name=$1 up=$2 pid=$3 url=$4 out code
	shift 4
	code=0
	local upport=$mock
	[ "$up" = https ] && upport=$tlsmock
	out=$("$tmp/client" -url "$url" -n "$n" -proto "$proto" -pid "$pid" -upstream-port "$upport" ${RAMP:+-ramp "$RAMP"} "$@" 2>"$tmp/client.err") || code=$?
	if [ $code != 0 ]; then
		echo "run.sh: $name, $proto clients, $up upstream: $(cat "$tmp/client.err")" >&2
		exit 1
	fi
	# shellcheck disable=SC2086
	local failures=""
	eval "local $out"
	awk -v name="$name" -v proto="$proto" -v up="$up" -v n="$streams" -v idle="$rss_idle_kib" -v peak="$rss_peak_open_kib" -v per="$per_stream_kib" \
		-v from="$all_open_from" -v until="$all_open_until" -v k="$samples_in_window" -v failed="$failed" -v open="$open" -v all="$rss_peak_run_kib" \
		-v conns="$upstream_conns_max" -v why="$failures" \
		'BEGIN {printf "| %s | %s | %s | %d | %.1f MiB | %.1f MiB | %s KiB | %s - %s | %d | %s | %.1f MiB | %d |\n",
			name, proto, up, n, idle / 1024, peak / 1024, per, from, until, k, failed ? failed " (of " n "; " open " opened: " why ")" : "0", all / 1024, conns}'
}
for up in $upstreams; do
	case $up in
	http) upurl=http://127.0.0.1:$mock ;;
	https) upurl=https://127.0.0.1:$tlsmock ;;
	*) echo "run.sh: upstreams are http and https" >&2; exit 2 ;;
	esac
	for target in $targets; do
		case $target in
		llmretry)
			if [ -n "${PROFILE:-}" ]; then
				SSL_CERT_FILE="$tmp/mock.pem" GODEBUG=memprofilerate=1 LLMRETRY_BENCH_PPROF=127.0.0.1:$pprofport \
					"$tmp/llmretry-pprof" proxy --listen 127.0.0.1:$proxy --admin-listen "" --upstream "$upurl" --quiet >/dev/null &
				ppid=$!
				wait_for $proxy
				measure llmretry-proxy "$up" $ppid "http://127.0.0.1:$proxy/v1/chat/completions" -when-open "$(profile "$up")"
			else
				SSL_CERT_FILE="$tmp/mock.pem" "$tmp/llmretry" proxy --listen 127.0.0.1:$proxy --admin-listen "" --upstream "$upurl" --quiet >/dev/null &
				ppid=$!
				wait_for $proxy
				measure llmretry-proxy "$up" $ppid "http://127.0.0.1:$proxy/v1/chat/completions"
			fi
			kill $ppid; wait $ppid 2>/dev/null || true
			;;
		reverseproxy)
			SSL_CERT_FILE="$tmp/mock.pem" "$tmp/plainproxy" 127.0.0.1:$plain "$upurl" 2>/dev/null &
			ppid=$!
			wait_for $plain
			measure go-reverseproxy "$up" $ppid "http://127.0.0.1:$plain/v1/chat/completions" -allow-failures
			kill $ppid; wait $ppid 2>/dev/null || true
			;;
		nginx)
			sed "s#PREFIX#$tmp#; s#NGINXPORT#$ngx#" bench/streams/nginx.conf >"$tmp/nginx.conf"
			# nginx 1.22 cannot take HTTP/1.1 and h2c on one cleartext listener.
			[ "$proto" = h1 ] && sed -i 's# http2;#;#' "$tmp/nginx.conf"
			if [ "$up" = https ]; then
				sed -i "s#MOCKPORT#$tlsmock#; s#proxy_pass http://mock;#proxy_pass https://mock; proxy_ssl_session_reuse on;#" "$tmp/nginx.conf"
			else
				sed -i "s#MOCKPORT#$mock#" "$tmp/nginx.conf"
			fi
			nginx -c "$tmp/nginx.conf" -p "$tmp"
			wait_for $ngx
			worker=$(pgrep -P "$(cat "$tmp/nginx.pid")" | head -1)
			measure nginx "$up" "$worker" "http://127.0.0.1:$ngx/v1/chat/completions" -allow-failures
			kill "$(cat "$tmp/nginx.pid")"
			for _ in $(seq 50); do [ -f "$tmp/nginx.pid" ] || break; sleep 0.1; done
			;;
		*) echo "run.sh: targets are llmretry, reverseproxy and nginx" >&2; exit 2 ;;
		esac
	done
done
