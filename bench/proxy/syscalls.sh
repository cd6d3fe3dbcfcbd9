# System calls of a process over a stretch of work, for bench/proxy/cpu.sh
# and instructions.sh (sourced, not run). Two counters, neither of which
# stops the process at each call as strace does:
#
#  - /proc/PID/io's syscr and syscw, which the kernel keeps for every process
#    anyway, at no cost: read- and write-family calls only (read, readv,
#    write, writev, ...; not recvfrom, epoll_pwait or futex, so it
#    undercounts a process that reads its sockets with recvfrom, as nginx
#    does). sys_io PID prints the sum.
#  - the kernel's raw_syscalls:sys_enter tracepoint, and every per-call
#    syscalls:sys_enter_* one, counted in the kernel by `perf stat -p PID` (Debian's linux-perf; tracepoints work on
#    virtual machines whose CPU counters perf cannot read): every call of
#    every thread, by kind. Not free: measured here, it added about 1 us of
#    CPU time per system call of the counted process (10-12% of a plain
#    request through llmretry's proxy), so CPU time must not be taken while
#    it counts. sys_perf_begin PID TMPDIR starts it; sys_perf_end N stops
#    it and sets sys_kinds to, per unit of N (requests), "syscalls T (read
#    R write W recvfrom F epoll E futex X other O [KIND K ...])" (reads
#    and writes include readv and writev, epoll is its waits; the brackets
#    name every other kind of call made at least 0.01 times per unit, so
#    that nothing is left unaccounted for: the runtime's nanosleep and
#    sched_yield, and the calls of a new connection, accept4, setsockopt,
#    getsockname, epoll_ctl, close).
#
# sys_perf is 1 where perf can count the tracepoints, else 0.

sys_events='raw_syscalls:sys_enter,syscalls:sys_enter_*'

if [ -z "${sys_perf:-}" ]; then
	sys_perf=0
	if command -v perf >/dev/null 2>&1 &&
		perf stat -x, -e raw_syscalls:sys_enter -- true 2>&1 | grep -q '^[0-9][0-9]*,.*raw_syscalls:sys_enter'; then
		sys_perf=1
	fi
fi

sys_io() { awk '/^sysc[rw]:/ {s += $2} END {print s + 0}' "/proc/$1/io"; }

# Not to be called as $(...): a subshell cannot wait for the perf that
# sys_perf_begin started.
sys_perf_begin() { # pid tmpdir
	sys_tmp=$2
	rm -f "$sys_tmp/perf.csv"
	perf stat -x, -e "$sys_events" -p "$1" -o "$sys_tmp/perf.csv" 2>/dev/null &
	sys_perfpid=$!
	# perf writes its header once its events are open; give it a moment more.
	for _ in $(seq 100); do
		[ -s "$sys_tmp/perf.csv" ] && break
		sleep 0.02
	done
	sleep 0.1
}

sys_perf_end() { # n
	kill -INT "$sys_perfpid" 2>/dev/null
	wait "$sys_perfpid" 2>/dev/null || true
	grep -q 'raw_syscalls:sys_enter' "$sys_tmp/perf.csv" || { echo "syscalls.sh: perf wrote no count" >&2; exit 1; }
	sys_kinds=$(awk -F, -v n="$1" '
		$3 == "raw_syscalls:sys_enter" { t = $1 }
		$3 ~ /sys_enter_(read|readv)$/ { r += $1 }
		$3 ~ /sys_enter_(write|writev)$/ { w += $1 }
		$3 ~ /sys_enter_recvfrom$/ { f += $1 }
		$3 ~ /sys_enter_epoll_p?wait$/ { e += $1 }
		$3 ~ /sys_enter_futex$/ { x += $1 }
		$3 ~ /^syscalls:sys_enter_/ && $3 !~ /sys_enter_(readv?|writev?|recvfrom|epoll_p?wait|futex)$/ && $1 + 0 >= 0.01 * n {
			k = $3; sub(/^syscalls:sys_enter_/, "", k); others = others sprintf(" %s %.2f", k, $1 / n)
		}
		END { printf "syscalls %.2f (read %.2f write %.2f recvfrom %.2f epoll %.2f futex %.2f other %.2f [%s])",
			t / n, r / n, w / n, f / n, e / n, x / n, (t - r - w - f - e - x) / n, substr(others, 2) }' "$sys_tmp/perf.csv")
}
