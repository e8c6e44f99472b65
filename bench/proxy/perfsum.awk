# perfsum.awk summarises `perf script -F comm,ip,sym` output of a
# `perf record -g` profile (bench/proxy/run.sh, PROFILE=1): where the CPU
# goes by kind (kernel, Go GC, allocation, scheduler, user code), the
# functions with the most inclusive time (each counted once per sample),
# and who calls the allocator.
#
#   perf script -i perf.data -F comm,ip,sym | awk [-v top=45] [-v hz=999 -v req=N] -f perfsum.awk
#
# With hz (perf record's -F) and req (requests served while it recorded),
# it also gives the CPU per request, in all and by kind.
function flush(   i, f, seen, kind, k, caller) {
	if (n == 0) return
	samples++
	# frames: 1 = leaf ... n = root
	# The leaf decides between kernel and user code; a GC frame anywhere on
	# the stack makes it GC (its system calls included); in user code, an
	# allocator or scheduler frame makes it that.
	kind = kern[1] ? "kernel (syscalls, TCP/IP, interrupts)" : "user code"
	for (i = 1; i <= n; i++) {
		if (frame[i] ~ /^runtime\.(gcBgMarkWorker|gcAssistAlloc|gcDrain|markroot|scanobject|scanObject|gcMarkDone|bgsweep|bgscavenge)/) { kind = "Go GC (marking, sweeping, assists)"; break }
	}
	if (kind == "user code") {
		for (i = 1; i <= n; i++) {
			if (frame[i] == "runtime.mallocgc" || frame[i] ~ /^runtime\.(newobject|makeslice|growslice|rawstring|concatstring)/) { kind = "Go allocation (mallocgc)"; break }
			if (frame[i] ~ /^runtime\.(schedule|findRunnable|park_m|goready|ready|netpoll|mcall|gopark|stealWork|runqgrab|notesleep|futex)/) { kind = "Go scheduler and netpoll"; break }
		}
	}
	bykind[kind]++
	delete seen
	for (i = 1; i <= n; i++) {
		f = frame[i]
		if (f in seen) continue
		seen[f] = 1
		incl[f]++
		isk[f] = kern[i]
	}
	# the allocator's caller: the first frame above mallocgc outside runtime
	for (i = 1; i <= n; i++) if (frame[i] == "runtime.mallocgc") break
	if (i <= n) {
		allocs++
		for (k = i + 1; k <= n; k++) if (frame[k] !~ /^runtime\./ && frame[k] !~ /^internal\//) break
		caller = (k <= n) ? frame[k] : "(runtime)"
		if (k + 1 <= n) caller = caller "  <- " frame[k + 1]
		bycaller[caller]++
	}
	n = 0
}
/^[^ \t]/ { flush(); next }
/^[ \t]*$/ { flush(); next }
{
	# "\tADDR SYMBOL..." ; kernel addresses are 16 hex digits starting with ffff
	addr = $1
	sym = $2
	for (j = 3; j <= NF; j++) sym = sym " " $j
	sub(/\+0x[0-9a-f]+$/, "", sym)
	sub(/\.abi0$/, "", sym)
	n++
	frame[n] = sym
	kern[n] = (addr ~ /^ffff/)
}
END {
	flush()
	if (samples == 0) { print "no samples"; exit }
	if (hz > 0 && req > 0) {
		per = 1e6 * samples / hz / req
		printf "%d samples at %d Hz over %d requests: %.1fus of CPU per request\n\nby kind (leaf frame):\n", samples, hz, req, per
	} else {
		printf "%d samples\n\nby kind (leaf frame):\n", samples
	}
	m = 0
	for (k in bykind) order[++m] = k
	sortdesc(order, m, bykind)
	for (i = 1; i <= m; i++) {
		if (per > 0) printf "  %5.1f%%  %6.1fus/req  %s\n", 100 * bykind[order[i]] / samples, per * bykind[order[i]] / samples, order[i]
		else printf "  %5.1f%%  %s\n", 100 * bykind[order[i]] / samples, order[i]
	}
	printf "\ninclusive time (percent of samples with the function on the stack), user-space functions:\n"
	m = 0
	delete order
	for (k in incl) if (!isk[k] && k !~ /^runtime\.(goexit|systemstack|mcall|morestack)/ && k !~ /^\[/) order[++m] = k
	sortdesc(order, m, incl)
	for (i = 1; i <= m && i <= (top ? top : 45); i++) printf "  %5.1f%%  %s\n", 100 * incl[order[i]] / samples, order[i]
	if (allocs > 0) {
		printf "\nruntime.mallocgc on the stack in %.1f%% of samples; its callers (first non-runtime frame <- its caller):\n", 100 * allocs / samples
		m = 0
		delete order
		for (k in bycaller) order[++m] = k
		sortdesc(order, m, bycaller)
		for (i = 1; i <= m && i <= 20; i++) printf "  %5.1f%%  %s\n", 100 * bycaller[order[i]] / samples, order[i]
	}
}
# sortdesc sorts keys a[1..m] by v[key], largest first (insertion sort: m is small).
function sortdesc(a, m, v,   i, j, t) {
	for (i = 2; i <= m; i++) {
		t = a[i]
		for (j = i - 1; j >= 1 && v[a[j]] < v[t]; j--) a[j + 1] = a[j]
		a[j + 1] = t
	}
}
