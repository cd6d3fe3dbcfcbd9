#!/usr/bin/env bash
# CPU time and system calls per request of llmretry's proxy, of Go's own
# ReverseProxy (bench/proxy/plainproxy) and of nginx, from a fixed amount of
# work: each serves exactly N requests (bench/storm/client, 4 at a time over
# HTTP/1.1 keep-alive; plain JSON replies, then streams of 19 events) from
# `llmretry mock` answering at once over cleartext HTTP/1.1. CPU time is user
# and system, in ns: the sum of /proc/PID/task/*/schedstat over the
# process's threads. System calls are counted by the kernel, not by strace
# (bench/proxy/syscalls.sh: perf's raw_syscalls tracepoint by kind, and
# /proc/PID/io's syscr+syscw). The three take turns, ROUNDS times, so that
# each ratio compares runs seconds apart on a machine whose speed drifts;
# the median ratios (llmretry / ReverseProxy, llmretry / nginx) are printed,
# with every round's figures. Each proxy has CPU 1 to itself (GOMAXPROCS=1;
# nginx: one process); the mock and the load share CPU 0.
#
# Premise, checked: every request through llmretry arrives whole, or the
# run fails (exit 1). A baseline that fails some is reported with its count
# of failures beside its figures, and the run goes on.
#
# Needs: nginx (apt-get install nginx-light), taskset, two CPUs; perf
# (apt-get install linux-perf) for system calls by kind (without it, only
# /proc's read and write counts).
#   bench/proxy/cpu.sh [N] [ROUNDS]        (defaults 20000, 10)
# C=K sends K requests at a time instead of 4: beyond 128 streams open at
# once llmretry's proxy takes HTTP/1.x streams from net/http early and they
# wait for their first bytes through its poll set (README, memory), a path
# that 4 at a time never takes. KINDS=stream measures streams only.
# FAULTS=SPEC hands the mock a fault script (`llmretry mock --faults`), to
# see the checks work: e.g. FAULTS="reset@1%" makes the baselines fail
# requests that llmretry retries, FAULTS="500@60%" makes llmretry fail too.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/need.sh
need nginx nginx-light
n=${1:-20000} rounds=${2:-10} c=${C:-4}
[ "$(nproc)" -ge 2 ] || { echo "cpu.sh needs two CPUs" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$tmp"' EXIT
. bench/proxy/syscalls.sh
go build -o "$tmp/llmretry" ./cmd/llmretry
(cd bench && go build -o "$tmp/plainproxy" ./proxy/plainproxy && go build -o "$tmp/load" ./storm/client)
mock=18381 llm=18382 plain=18383 ngx=18384
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; echo "cpu.sh: nothing listens on $1" >&2; exit 1; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }
GOMAXPROCS=1 taskset -c 0 "$tmp/llmretry" mock --listen 127.0.0.1:$mock --faults "${FAULTS:-}" >/dev/null 2>&1 &
wait_for $mock
GOMAXPROCS=1 taskset -c 1 "$tmp/llmretry" proxy --listen 127.0.0.1:$llm --admin-listen "" --upstream http://127.0.0.1:$mock --log-level warn >/dev/null 2>"$tmp/llmretry.log" &
pid_llmretry=$!
GOMAXPROCS=1 taskset -c 1 "$tmp/plainproxy" 127.0.0.1:$plain http://127.0.0.1:$mock 2>"$tmp/plainproxy.log" &
pid_reverseproxy=$!
sed "s#PREFIX#$tmp#; s#MOCKPORT#$mock#; s#NGINXPORT#$ngx#" bench/proxy/nginx-cpu.conf >"$tmp/nginx.conf"
taskset -c 1 nginx -c "$tmp/nginx.conf" -p "$tmp" 2>"$tmp/nginx.log" &
pid_nginx=$!
wait_for $llm; wait_for $plain; wait_for $ngx
echo "# cpu.sh $n $rounds, $c at a time, $(date -u +%FT%TZ), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# mock faults: ${FAULTS:-none}; llmretry at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- cmd bench go.mod ./*.go || echo ' plus uncommitted changes'); system calls counted by $([ "$sys_perf" = 1 ] && echo "perf's raw_syscalls tracepoints and /proc/PID/io" || echo "/proc/PID/io only (no perf)")"
# load NAME PORT REQUESTS STREAM: sets failed; a failure through llmretry ends the run.
load() {
	local out
	out=$(taskset -c 0 "$tmp/load" -url "http://127.0.0.1:$2/v1/chat/completions" -n "$3" -c "$c" $4 2>"$tmp/load.err") || true
	case $out in
	"ok $3/$3 "*) failed=0 ;;
	"ok "*)
		failed=$(($3 - $(sed 's#^ok \([0-9]*\)/.*#\1#' <<<"$out")))
		if [ "$1" = llmretry ]; then
			echo "cpu.sh: llmretry failed $failed of $3 requests${4:+ ($4)}: $(head -3 "$tmp/load.err" | tr '\n' ' ')" >&2
			echo "cpu.sh: llmretry's warnings: $(grep -v '^llmretry proxy ' "$tmp/llmretry.log" | tail -5)" >&2
			exit 1
		fi
		echo "# $1${4:+ $4}: $failed of $3 failed: $(head -3 "$tmp/load.err" | tr '\n' ' ')"
		;;
	*) echo "cpu.sh: the load against $1 did not finish: $out $(cat "$tmp/load.err")" >&2; exit 1 ;;
	esac
}
ns=$((n / 4 > 1000 ? n / 4 : n)) # requests in a round's block for perf
for kind in ${KINDS:-plain stream}; do
	stream=""
	[ "$kind" = stream ] && stream=-stream
	for who in llmretry:$llm reverseproxy:$plain nginx:$ngx; do
		load "${who%%:*}" "${who#*:}" 2000 "$stream" # warm-up
	done
	for r in $(seq "$rounds"); do
		for who in llmretry:$llm reverseproxy:$plain nginx:$ngx; do
			name=${who%%:*} pidvar=pid_${who%%:*}
			pid=${!pidvar}
			# The timed block: CPU time and /proc's counts, which cost nothing.
			before=$(cpu_ns "$pid") io0=$(sys_io "$pid")
			load "$name" "${who#*:}" "$n" "$stream"
			after=$(cpu_ns "$pid") io1=$(sys_io "$pid") fails=$failed
			# The counted block, untimed: system calls by kind.
			sys_kinds="syscalls - (no perf)"
			if [ "$sys_perf" = 1 ]; then
				sys_perf_begin "$pid" "$tmp"
				load "$name" "${who#*:}" "$ns" "$stream"
				sys_perf_end "$ns"
				fails="$fails+$failed"
			fi
			echo "${stream:--plain} round $r $name: $(((after - before) / n)) ns $(awk -v d=$((io1 - io0)) -v n="$n" 'BEGIN {printf "syscr+syscw %.2f", d / n}') $sys_kinds failed $fails of $n$([ "$sys_perf" = 1 ] && echo " and $ns"), per request"
		done
	done
done | tee "$tmp/out"
# Per round, the ratios of llmretry's figures to each baseline's; then the
# medians, with each baseline's failures beside.
awk '
function median(list,    v, k, i, j, t) {
	k = split(list, v, " ")
	for (i = 2; i <= k; i++) for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
	return k % 2 ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
}
/ round / {
	kind = $1; r = $3; who = $4; sub(":", "", who)
	cpu[kind, r, who] = $5; io[kind, r, who] = $8; sys[kind, r, who] = $10
	for (i = 11; i < NF; i++) if ($i == "failed") { split($(i + 1), f, "+"); fail[kind, who] += f[1] + f[2] }
	kinds[kind] = 1; if (r > rounds[kind]) rounds[kind] = r
}
END {
	for (kind in kinds) for (b = 1; b <= 2; b++) {
		base = b == 1 ? "reverseproxy" : "nginx"
		lc = ls = li = ac = bc = as = bs = ""
		for (r = 1; r <= rounds[kind]; r++) {
			lc = lc " " sprintf("%.3f", cpu[kind, r, "llmretry"] / cpu[kind, r, base])
			if (sys[kind, r, base] != "-") ls = ls " " sprintf("%.3f", sys[kind, r, "llmretry"] / sys[kind, r, base])
			if (io[kind, r, base] > 0) li = li " " sprintf("%.3f", io[kind, r, "llmretry"] / io[kind, r, base])
			ac = ac " " cpu[kind, r, "llmretry"]; bc = bc " " cpu[kind, r, base]
			as = as " " sys[kind, r, "llmretry"]; bs = bs " " sys[kind, r, base]
		}
		printf "%s: llmretry / %s: CPU median %.3f (rounds:%s); system calls median %s (rounds:%s); syscr+syscw median %s. Per request, medians: llmretry %d ns and %s system calls; %s %d ns and %s system calls, %d requests failed\n",
			kind, base, median(lc), lc, ls == "" ? "-" : sprintf("%.3f", median(ls)), ls, li == "" ? "-" : sprintf("%.3f", median(li)),
			median(ac), ls == "" ? "-" : sprintf("%.2f", median(as)), base, median(bc), ls == "" ? "-" : sprintf("%.2f", median(bs)), fail[kind, base]
	}
}' "$tmp/out" | sort
