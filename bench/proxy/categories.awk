# Sums a CPU profile by what the code does: reads
# `perf report --stdio --no-children --sort dso,sym -g none` (lines
# "  12.34%  DSO  [.] SYMBOL", [k] for the kernel) and prints each part's
# share of the samples and, with -v ns=NS (the CPU time per request), its
# time per request. Used by bench/proxy/profile.sh. The parts go by the
# function's name (its package, for Go), first match wins:
#   kernel              [k]: system calls, TCP on loopback, interrupts
#   llmretry core       github.com/llmretry/llmretry.* (the Transport)
#   llmretry proxy      .../cmd/internal/proxy.*
#   llmretry h1 client  .../cmd/internal/h1.*
#   ReverseProxy        net/http/httputil.*
#   header parsing and canonical keys   net/textproto.*
#   net/http            net/http.* and its vendored httpguts/httpcommon
#   runtime: GC         the collector: mark, scan, sweep, write barriers
#   runtime: allocation mallocgc and what it calls, memclr
#   runtime: scheduler, netpoll, timers, locks   schedule, park, ready,
#                       netpoll, timers, locks, nanotime, futex wrappers
#   runtime: maps       internal/runtime/maps.* and the hashes
#   runtime: other      the rest of runtime.*, memmove
#   system call wrappers  syscall.*, internal/poll.*, net.*, os.*, the runtime's Syscall6
#   other Go packages   bufio, bytes, strings, fmt, sync, context, time, ...
#   nginx               /usr/sbin/nginx (nginx has no symbols here but its exported ones)
#   libc and loader     libc, ld.so
function part(f, obj) {
	if (obj ~ /kernel/) return "kernel"
	if (obj ~ /vdso/) return "vdso (clock reads)"
	if (obj ~ /nginx/) return "nginx"
	if (obj ~ /libc|ld-linux/) return "libc and loader"
	if (f ~ /llmretry\/cmd\/internal\/proxy\./) return "llmretry proxy"
	if (f ~ /llmretry\/cmd\/internal\/h1\./) return "llmretry h1 client"
	if (f ~ /github.com\/llmretry\/llmretry\./) return "llmretry core"
	if (f ~ /^net\/http\/httputil\./) return "ReverseProxy"
	if (f ~ /^net\/textproto\./) return "header parsing and canonical keys"
	if (f ~ /^net\/http\.|httpguts|httpcommon/) return "net/http"
	if (f ~ /^runtime\.(gc|scan|mark|sweep|bgsweep|bgscavenge|greyobject|wbBuf|bulkBarrier|typePointers|findObject|spanOf|heapBitsSmallForAddr|tryDefer|(\(\*gcWork\))|(\(\*gcBits\))|(\(\*spanInlineMarkBits\))|(\(\*mspan\)\.(markBits|isFree|typePointers|heapBits))|(\(\*mheap\)\.(alloc|free|reclaim))|(\(\*sweepLocked\))|(\(\*mspan\)\.sweep)|writeHeapBits|(\(\*gcControllerState\))|(\(\*limiterEvent\))|(\(\*gcCPULimiterState\))|(\(\*spanQueue\))|(\(\*mcentral\)))/ || f ~ /gcWriteBarrier|mgcmark|greentea/) return "runtime: GC"
	if (f ~ /^runtime\.(malloc|newobject|makeslice|growslice|makemap|mallocgc|nextFreeFast|(\(\*mcache\))|(\(\*mspan\)\.(nextFreeIndex|init|writeHeapBitsSmall|refillAllocCache))|heapSetType|memclr|newarray|rawstring|rawbyteslice|slicebytetostring|concatstring|stringtoslicebyte|convT|convTstring|convTslice|mProf|profilealloc|(\(\*mspan\)\.writeHeapBits))/) return "runtime: allocation"
	if (f ~ /^runtime\.(schedule|findRunnable|park_m|gopark|goready|ready|execute|runqget|runqput|runqgrab|runqsteal|stealWork|netpoll|(\(\*pollDesc\))|poll_runtime|netpollblock|netpollready|netpollgoready|mcall|gosched|goexit|newproc|gfget|gfput|casgstatus|lock|unlock|lock2|unlock2|futex|notewakeup|notesleep|semacquire|semrelease|(\(\*timer\))|(\(\*timers\))|(\(\*itab\))|checkTimers|nanotime|walltime|time\.now|wakep|startm|stopm|mPark|handoffp|acquirep|releasep|entersyscall|exitsyscall|reentersyscall|systemstack|mstart|sysmon|osyield|usleep|resetspinning|resetForSleep|ready|goroutineReady|chan|selectgo|block|sellock|selunlock|send|recv|closechan|chanrecv|chansend|(\(\*waitq\))|releaseSudog|acquireSudog|readyWithTime|blockevent|timeSleepUntil|badmorestack|morestack|newstack|copystack|adjust|gentraceback|(\(\*unwinder\))|funcInfo|pcvalue|step|findfunc|netpollcheckerr|netpollunblock|pollWork|injectglist|globrunq|runqempty|(\(\*randomEnum\))|cheaprand|fastrand|(\(\*mLockProfile\))|(\(\*gQueue\))|(\(\*gList\))|mget|mput|pidle|checkdead|spinning|procyield|lockWithRank|(\(\*timeHistogram\)))/ || f ~ /^time\.now|^internal\/poll\.runtime_poll|^internal\/runtime\/atomic|^sync\.runtime_|^runtime\.nanotime/) return "runtime: scheduler, netpoll, timers, locks"
	if (f ~ /^internal\/runtime\/maps|^runtime\.(map|mapaccess|mapassign|mapdelete|mapIter|mapclear|memhash|strhash|aeshash|efaceeq|ifaceeq|interhash|nilinterhash|typehash)|aeshashbody|^runtime\.memequal|^memeqbody/) return "runtime: maps"
	if (f ~ /^runtime\./ || f ~ /^memeqbody|^indexbytebody|^cmpbody|^countbody/) return "runtime: other"
	if (f ~ /^(syscall|internal\/poll|net|os|internal\/syscall|internal\/runtime\/syscall\/linux)\./) return "system call wrappers"
	if (f ~ /^0x[0-9a-f]+$/) return "unresolved addresses"
	return "other Go packages"
}
/^ +[0-9.]+% +[^ ]+ +\[[.k]\] / {
	v = $1; sub("%", "", v)
	obj = $3 == "[k]" ? "kernel" : $2
	f = $0; sub(/^ +[0-9.]+% +[^ ]+ +\[[.k]\] +/, "", f)
	sum[part(f, obj)] += v
	total += v
}
END {
	for (p in sum) printf "%6.1f%%  %8s  %s\n", 100 * sum[p] / total, ns ? sprintf("%.0f ns", ns * sum[p] / total) : "", p | "sort -rn"
	close("sort -rn")
	printf "%6.1f%%  %8s  all samples\n", 100, ns ? ns " ns" : ""
}
