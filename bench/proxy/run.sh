#!/usr/bin/env bash
# bench/proxy/run.sh: the sidecar's built-in proxy against HAProxy 2.6 and
# against no proxy at all, on this machine, for HTTP keep-alive and for L4 TCP.
#
#   bench/proxy/run.sh                 # about 2.5 minutes on 2 cores
#   DURATION=5 WARMUP=1 bench/proxy/run.sh
#   PROFILE=1 bench/proxy/run.sh       # also perf-profiles both proxies
#
# Rows: wrk -> backend (direct); wrk -> HAProxy -> 2 backends; wrk -> sidecar
# -> 2 backends; wrk -> the HAProxy a second sidecar in haproxy mode (proxy:
# haproxy) runs and drives -> 2 backends (http-sidecar-haproxy, HTTP only);
# for HTTP (HAProxy mode http, the sidecar's frontend) and for
# L4 TCP (HAProxy mode tcp, the sidecar's upstream listener), with the same
# wrk settings for every row; then uploads (POSTs of $UPLOAD bytes, which
# both proxies stream) direct, through HAProxy and through the sidecar; and
# paced rows (paced-direct, paced-haproxy, paced-sidecar, and L4's
# paced-tcp-haproxy, paced-tcp-sidecar): the HTTP and L4 rows at a steady
# load below what either proxy can take, where the saturated rows measure
# queues as much as proxies. Everything listens on 127.0.0.1; everything the
# script starts is stopped on exit (trap). Environment knobs:
#
#   DURATION  seconds measured per row (10)     WARMUP  seconds of warm-up (2)
#   ROUNDS    rounds over the rows (2); the table gives their mean
#   CONNS     wrk connections (64)              THREADS wrk threads (1 pinned, 2 not)
#   UPLOAD    bytes of each POST in the upload rows (8388608; 0: no upload rows)
#   PACE_MS   paced rows: each connection waits 0 to 2 × PACE_MS ms (at
#             random) after every answer (4: about 14,000 requests/s with 64
#             connections, 40% of what HAProxy takes here; 0: no paced rows)
#   PIN       1: load on CPU 0, proxy on CPU 1 (default when there are 2+ CPUs)
#   QUIET     seconds to wait, before each row, for other processes to use
#             under 15% of a CPU (30; 0: do not wait, and never measure a
#             row again); a row during which they used over 10% is measured
#             once more
#   PROFILE   1: after the table, perf record -g each proxy under HTTP load
#   SRC       tree: build the sidecar from the working tree (default);
#             HEAD or another revision: from that commit (git archive)
#   BIN       use this switchboard binary instead of building one
#   SIDECAR_ENV  extra environment for the sidecar, e.g. "GOGC=400" (printed)
#   OUT       directory for logs and profiles (default: a temporary one,
#             removed at the end unless PROFILE=1 or KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-64}
UPLOAD=${UPLOAD:-8388608}
PACE_MS=${PACE_MS:-4}
PROFILE=${PROFILE:-0}
QUIET=${QUIET:-30}
ROUNDS=${ROUNDS:-2}
KEEP=${KEEP:-0}
NCPU=$(nproc)
if [ -z "${PIN:-}" ]; then
	if [ "$NCPU" -ge 2 ]; then PIN=1; else PIN=0; fi
fi
if [ "$PIN" = 1 ] && [ "$NCPU" -lt 2 ]; then echo "run.sh: PIN=1 needs 2 CPUs, this machine has $NCPU" >&2; exit 2; fi
if [ "$PIN" = 1 ]; then THREADS=${THREADS:-1}; else THREADS=${THREADS:-2}; fi
for v in DURATION WARMUP CONNS THREADS QUIET ROUNDS UPLOAD PACE_MS; do
	case ${!v} in '' | *[!0-9]*) echo "run.sh: $v must be a whole number, got '${!v}'" >&2; exit 2 ;; esac
done
if [ "$DURATION" -lt 1 ] || [ "$DURATION" -gt 120 ] || [ "$CONNS" -lt 1 ] || [ "$CONNS" -gt 1000 ] || [ "$WARMUP" -gt 60 ] || [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 10 ] || [ "$PACE_MS" -gt 1000 ]; then
	echo "run.sh: keep DURATION in 1..120, WARMUP in 0..60, CONNS in 1..1000, ROUNDS in 1..10 and PACE_MS in 0..1000" >&2
	exit 2
fi
if [ "$UPLOAD" -gt $((256 << 20)) ]; then
	echo "run.sh: keep UPLOAD at most 268435456 (256 MiB: wrk holds the body in memory)" >&2
	exit 2
fi

# --- what the run needs, installed when missing --------------------------
need() { # need COMMAND DEBIAN-PACKAGE
	command -v "$1" >/dev/null 2>&1 && return
	echo "run.sh: installing $2" >&2
	local sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	if [ -z "${APT_UPDATED:-}" ]; then
		$sudo apt-get update -qq >/dev/null
		APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}
need haproxy haproxy
need wrk wrk
need taskset util-linux
need ss iproute2
need curl curl
[ "$PROFILE" = 1 ] && need perf linux-perf
command -v go >/dev/null 2>&1 || { echo "run.sh: go is needed to build ./cmd/switchboard" >&2; exit 1; }

# --- processes, stopped on exit --------------------------------------------
if [ -n "${OUT:-}" ]; then
	mkdir -p "$OUT"
	WORK=$(cd "$OUT" && pwd)
	KEEP=1
else
	WORK=$(mktemp -d /tmp/bench-proxy.XXXXXX)
	[ "$PROFILE" = 1 ] && KEEP=1
fi
PIDS=()
# EXTRA: processes the script did not start itself but counts as its own
# (the HAProxy that the haproxy-mode sidecar runs); stopped last, should the
# sidecar not have stopped them.
EXTRA=()
cleanup() {
	local pid i
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		pid=${PIDS[i]}
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	for pid in "${EXTRA[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	done
	if [ "$KEEP" = 1 ]; then
		echo "logs and profiles kept in $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Command prefixes that pin to a CPU when PIN=1 (taskset execs the command,
# so $! of a background start is the process itself).
LOADCPU=0
PROXYCPU=1
if [ "$PIN" = 1 ]; then
	ONLOAD=(taskset -c "$LOADCPU")
	ONPROXY=(taskset -c "$PROXYCPU")
else
	ONLOAD=()
	ONPROXY=()
fi

# freeport VAR sets VAR to a loopback TCP port nobody listens on (and that
# it has not handed out before).
USED=" "
read -r EPHLO _ </proc/sys/net/ipv4/ip_local_port_range
freeport() {
	local p lo=10000 hi=$EPHLO # below the ephemeral ports, which connections take
	[ "$hi" -gt $((lo + 1000)) ] || hi=$((lo + 20000))
	while :; do
		p=$((lo + RANDOM % (hi - lo)))
		case $USED in *" $p "*) continue ;; esac
		if ! ss -Htln "sport = :$p" | grep -q .; then
			USED="$USED$p "
			printf -v "$1" %s "$p"
			return
		fi
	done
}

waitfor() { # waitfor WHAT SECONDS COMMAND...: until COMMAND succeeds
	local what=$1 secs=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "run.sh: $what not ready after ${secs}s; logs in $WORK:" >&2
	tail -n 3 "$WORK"/*.log >&2 || true
	KEEP=1
	exit 1
}

# The sidecar is built from the working tree (SRC=tree) or from a commit
# (SRC=HEAD, SRC=<rev>: git archive, so that edits in progress elsewhere in
# the tree do not leak in); the backend always from this tree.
SRC=${SRC:-tree}
if [ -n "${BIN:-}" ]; then
	[ -x "$BIN" ] || { echo "run.sh: BIN=$BIN is not an executable" >&2; exit 2; }
	SRCDESC="binary $BIN"
elif [ "$SRC" = tree ]; then
	BUILDDIR=$ROOT
	SRCDESC="working tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
	if [ -n "$(git status --porcelain -- . ':!bench' 2>/dev/null)" ]; then
		SRCDESC="$SRCDESC, with uncommitted changes outside bench/"
	fi
else
	REV=$(git rev-parse --verify --short "$SRC^{commit}") || { echo "run.sh: SRC=$SRC is no commit" >&2; exit 2; }
	BUILDDIR=$WORK/src
	mkdir -p "$BUILDDIR"
	git archive "$REV" | tar -x -C "$BUILDDIR"
	SRCDESC="commit $REV ($SRC)"
fi
if [ -n "${BIN:-}" ]; then
	echo "building ./bench/proxy/backend ..." >&2
	cp "$BIN" "$WORK/switchboard"
else
	echo "building ./cmd/switchboard ($SRCDESC) and ./bench/proxy/backend ..." >&2
	(cd "$BUILDDIR" && go build -o "$WORK/switchboard" ./cmd/switchboard)
fi
go build -o "$WORK/backend" ./bench/proxy/backend

# --- backends, Atlas ----------------------------------------------------------
freeport B1
freeport B2
for p in "$B1" "$B2"; do
	"${ONLOAD[@]}" env GOMAXPROCS=1 "$WORK/backend" -listen "127.0.0.1:$p" >>"$WORK/backend.log" 2>&1 &
	PIDS+=("$!")
done
for p in "$B1" "$B2"; do
	waitfor "backend on :$p" 10 curl -fsS "http://127.0.0.1:$p/"
done

"${ONLOAD[@]}" env GOMAXPROCS=1 "$WORK/switchboard" atlas --insecure --listen 127.0.0.1:0 --data "$WORK/atlas-data" >/dev/null 2>"$WORK/atlas.log" &
PIDS+=("$!")
atlas_url() { grep -m1 '"msg":"atlas: listening"' "$WORK/atlas.log" | grep -o '"url":"[^"]*"' | cut -d'"' -f4; }
atlas_up() { [ -n "$(atlas_url)" ]; }
waitfor "atlas" 20 atlas_up
ATLAS=$(atlas_url)
register() { # register ID SERVICE PORT
	curl -fsS -X PUT -H 'Content-Type: application/json' \
		-d "{\"service\":\"$2\",\"address\":\"127.0.0.1\",\"port\":$3,\"ttl\":\"1h\"}" \
		"$ATLAS/v1/instances/$1" >/dev/null
}
register bench-1 bench "$B1"
register bench-2 bench "$B2"
register benchtcp-1 benchtcp "$B1"
register benchtcp-2 benchtcp "$B2"

# --- HAProxy -------------------------------------------------------------------
freeport HAHTTP
freeport HARETRY
freeport HATCP
if [ "$PIN" = 1 ]; then NBTHREAD=1; else NBTHREAD=$NCPU; fi
cat >"$WORK/haproxy.cfg" <<EOF
# What a fair operator would run in front of two instances: keep-alive on
# both sides (the 2.6 default, option http-server-close NOT set, connections
# to the servers reused: http-reuse safe, the default), least connections
# (the nearest to the sidecar's power of two choices on in-flight requests),
# X-Forwarded-For as the sidecar adds it, the routing header removed as the
# sidecar does, no per-request log (the sidecar logs none either).
global
    nbthread $NBTHREAD
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 2m
    timeout server 30s
    timeout http-keep-alive 2m
    timeout queue 5s

frontend http
    bind 127.0.0.1:$HAHTTP
    acl to_bench req.hdr(switchboard-service) -m str bench
    use_backend bench if to_bench

backend bench
    balance leastconn
    option forwardfor
    http-request del-header switchboard-service
    http-request del-header switchboard-timeout
    server bench-1 127.0.0.1:$B1
    server bench-2 127.0.0.1:$B2

# The same, with the retry policy that the haproxy-mode sidecar renders
# (so that a GET meeting an instance killed with kill -9 is sent again):
# the hand-written equivalent of haproxy mode, which the haproxy-mode row
# is compared with. L7 retries make HAProxy keep a copy of each request.
frontend http-retry
    bind 127.0.0.1:$HARETRY
    acl to_bench req.hdr(switchboard-service) -m str bench
    use_backend bench-retry if to_bench

backend bench-retry
    balance leastconn
    option forwardfor
    option redispatch 1
    retries 3
    retry-on conn-failure empty-response
    acl idempotent method GET HEAD PUT DELETE OPTIONS
    http-request disable-l7-retry if !idempotent
    http-request del-header switchboard-service
    http-request del-header switchboard-timeout
    server bench-1 127.0.0.1:$B1
    server bench-2 127.0.0.1:$B2

listen benchtcp
    mode tcp
    bind 127.0.0.1:$HATCP
    balance leastconn
    server benchtcp-1 127.0.0.1:$B1
    server benchtcp-2 127.0.0.1:$B2
EOF
haproxy -c -q -f "$WORK/haproxy.cfg"
# In master-worker mode (-W), as Debian's haproxy.service runs it (-Ws) and as
# the haproxy-mode sidecar runs its own: the figures are the worker's.
"${ONPROXY[@]}" haproxy -W -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAMASTER0=$!
PIDS+=("$HAMASTER0")
hapworker0() { pgrep -n -P "$HAMASTER0" -x haproxy; }
waitfor "HAProxy worker" 10 hapworker0
HAPID=$(hapworker0)
EXTRA+=("$HAPID")

# --- the sidecar -----------------------------------------------------------
freeport SCHTTP
freeport SCADMIN
freeport SCTCP
cat >"$WORK/sidecar.yaml" <<EOF
atlas: $ATLAS
host: bench
advertise: 127.0.0.1
upstreams:
  - name: bench
  - name: benchtcp
    listen: 127.0.0.1:$SCTCP
EOF
if [ "$PIN" = 1 ]; then SCENV=(env GOMAXPROCS=1); else SCENV=(env); fi
# SIDECAR_ENV adds environment variables for experiments (GOGC=400, say).
# shellcheck disable=SC2206
SCENV+=(${SIDECAR_ENV:-})
"${ONPROXY[@]}" "${SCENV[@]}" "$WORK/switchboard" sidecar -c "$WORK/sidecar.yaml" \
	--listen "127.0.0.1:$SCHTTP" --admin "127.0.0.1:$SCADMIN" >/dev/null 2>"$WORK/sidecar.log" &
SCPID=$!
PIDS+=("$SCPID")

routes_have() { # routes_have ADMINPORT ID...: the sidecar's /routes lists every ID
	local r id port=$1
	shift
	r=$(curl -fsS "http://127.0.0.1:$port/routes") || return 1
	for id in "$@"; do
		grep -Eq "\"id\": *\"$id\"" <<<"$r" || return 1
	done
}
waitfor "sidecar routes" 20 routes_have "$SCADMIN" bench-1 bench-2 benchtcp-1 benchtcp-2
waitfor "haproxy http" 10 curl -fsS -H 'Switchboard-Service: bench' "http://127.0.0.1:$HAHTTP/"
waitfor "haproxy http, retrying" 10 curl -fsS -H 'Switchboard-Service: bench' "http://127.0.0.1:$HARETRY/"
waitfor "haproxy tcp" 10 curl -fsS "http://127.0.0.1:$HATCP/"
waitfor "sidecar http" 10 curl -fsS -H 'Switchboard-Service: bench' "http://127.0.0.1:$SCHTTP/"
waitfor "sidecar tcp" 10 curl -fsS "http://127.0.0.1:$SCTCP/"

# --- the sidecar in haproxy mode ----------------------------------------------
# Its HAProxy (a child: master, then worker) serves listen; pinned with the
# sidecar on the proxy CPU (taskset's affinity is inherited), so HAProxy 2.6
# starts one thread, as the hand-written one (nbthread 1) does.
freeport SC2HTTP
freeport SC2ADMIN
mkdir -p "$WORK/sidecar-haproxy-state"
cat >"$WORK/sidecar-haproxy.yaml" <<EOF
atlas: $ATLAS
host: bench
advertise: 127.0.0.1
proxy: haproxy
state_dir: $WORK/sidecar-haproxy-state
upstreams:
  - name: bench
EOF
"${ONPROXY[@]}" "${SCENV[@]}" "$WORK/switchboard" sidecar -c "$WORK/sidecar-haproxy.yaml" \
	--listen "127.0.0.1:$SC2HTTP" --admin "127.0.0.1:$SC2ADMIN" >/dev/null 2>"$WORK/sidecar-haproxy.log" &
SC2PID=$!
PIDS+=("$SC2PID")
waitfor "haproxy-mode sidecar routes" 20 routes_have "$SC2ADMIN" bench-1 bench-2
waitfor "haproxy-mode sidecar http" 20 curl -fsS -H 'Switchboard-Service: bench' "http://127.0.0.1:$SC2HTTP/"
# The HAProxy worker: the newest haproxy child of the newest haproxy child
# of the sidecar (by parent pid, never by name alone).
hapworker() {
	local m
	m=$(pgrep -n -P "$SC2PID" -x haproxy) || return 1
	pgrep -n -P "$m" -x haproxy
}
waitfor "haproxy-mode HAProxy worker" 20 hapworker
HAMASTER=$(pgrep -n -P "$SC2PID" -x haproxy)
HA2PID=$(hapworker)
EXTRA+=("$HAMASTER" "$HA2PID")
# Let the sidecar put both servers in HAProxy's backend (Runtime API) and
# settle before measuring; requests that HAProxy would not route yet go to
# the sidecar's own proxy (be_sidecar): the sidecar CPU printed under the
# table shows whether any did.
sleep 2

# --- measuring -------------------------------------------------------------------
cputicks() { # utime+stime of a process, in clock ticks
	local s
	s=$(cat "/proc/$1/stat") || { echo 0; return; }
	s=${s##*) }
	# shellcheck disable=SC2086
	set -- $s
	echo $((${12} + ${13}))
}
TCK=$(getconf CLK_TCK)
WRKLUA=$ROOT/bench/proxy/report.lua
export WRKREPORT=$WRKLUA UPLOAD PACE_MS

wrkrun() { # wrkrun SECONDS URL [HEADER [SCRIPT]]: prints wrk's output
	local secs=$1 url=$2 hdr=${3:-} script=${4:-$WRKLUA}
	local args=(-t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s --latency -s "$script")
	[ -n "$hdr" ] && args+=(-H "$hdr")
	"${ONLOAD[@]}" timeout $((secs + 30)) wrk "${args[@]}" "$url"
}

# peakrss PID: the process's peak RSS in KiB since resetpeak (VmHWM), or -.
resetpeak() { [ "$1" = - ] || echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
peakrss() {
	[ "$1" = - ] && { echo -; return; }
	awk '/^VmHWM:/ { print $2; f = 1 } END { if (!f) print "-" }' "/proc/$1/status" 2>/dev/null || echo -
}

# CPU accounting, in clock ticks: busy ticks per CPU (/proc/stat), ticks of
# the processes the script keeps running, ticks of its waited-for children
# (wrk) from the shell's times; what is left of the busy ticks is other
# processes' (another developer's build, say), printed so that a row taken on
# a busy machine shows it.
# cpubusy prints, per CPU, busy:all:irq ticks (irq: hard and soft
# interrupts, where the kernel does much of the loopback traffic's work; on
# this kernel that time is also in the times of the process it ran on
# behalf of, so it is shown but not subtracted).
cpubusy() { awk '/^cpu[0-9]+ / { printf "%d:%d:%d ", $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $7 + $8 }' /proc/stat; }
ours() {
	local t=0 p
	for p in "${PIDS[@]}" "${EXTRA[@]}"; do t=$((t + $(cputicks "$p"))); done
	echo "$t"
}
# outsegs prints how many TCP segments the machine has sent (loopback
# included): per request, it shows how well each proxy batches.
outsegs() { awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "OutSegs") c = i; h = 1 } else print $c }' /proc/net/snmp; }

# childticks FILE: what `times` says the shell's waited-for children used,
# in ticks (times must run in this shell, not in a $(...) subshell).
childticks() {
	awk -v tck="$TCK" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += (a[1] * 60 + a[2]) * tck }; printf "%d\n", t }' "$1"
}

# quiet waits, at most $QUIET seconds, until processes this script did not
# start use under 15% of a CPU over one second (the machine is shared).
quiet() {
	local i b0 b1 o0 o1 other
	for ((i = 0; i < QUIET; i++)); do
		b0=$(cpubusy)
		o0=$(ours)
		sleep 1
		b1=$(cpubusy)
		o1=$(ours)
		other=$(awk -v b0="$b0" -v b1="$b1" -v ours=$((o1 - o0)) 'BEGIN {
			n = split(b0, x0, " "); split(b1, x1, " "); busy = 0; all = 0
			for (i = 1; i <= n; i++) { split(x0[i], p0, ":"); split(x1[i], p1, ":"); busy += p1[1] - p0[1]; all += p1[2] - p0[2] }
			o = (all > 0) ? 100 * (busy - ours) * n / all : 0
			printf "%d", (o < 0 ? 0 : o) }')
		[ "$other" -lt 15 ] && return
		[ "$i" = 0 ] && echo "  waiting for the machine to be quiet (other processes at ${other}% of a CPU) ..." >&2
	done
	echo "  the machine is still busy after ${QUIET}s (${other}% of a CPU); measuring anyway" >&2
}

# measure NAME URL HEADER PID ROUND: warm-up, then the measured run; appends
# a row "name rps p50_us p99_us proxy_ticks requests errors cpu0% cpu1% irq%
# other% segments peak_rss_kib" to $WORK/rows. A row during which other processes used
# more than 10% of a CPU is measured once more (the busy one goes to
# rows.busy).
measure() {
	local try other
	for try in 1 2; do
		measure1 "$@"
		other=$(awk '{ print $11 }' "$WORK/row")
		if [ "$other" -le 10 ] || [ "$try" = 2 ] || [ "$QUIET" = 0 ]; then break; fi
		echo "    other processes used ${other}% of a CPU during it: measuring it again" >&2
		cat "$WORK/row" >>"$WORK/rows.busy"
	done
	cat "$WORK/row" >>"$WORK/rows"
}

# measure1: one try of measure, its row in $WORK/row.
measure1() {
	local name=$1 url=$2 hdr=$3 pid=$4 round=${5:-1} c0=0 c1=0 line b0 b1 o0 o1 k0 k1 g0 g1 rss
	local script=$WRKLUA
	case $name in upload-*) script=$ROOT/bench/proxy/upload.lua ;; paced-*) script=$ROOT/bench/proxy/paced.lua ;; esac
	[ "$QUIET" -gt 0 ] && quiet
	echo "  round $round: $name: ${WARMUP}s warm-up, ${DURATION}s measured ..." >&2
	if [ "$WARMUP" -gt 0 ]; then wrkrun "$WARMUP" "$url" "$hdr" "$script" >"$WORK/wrk.$name.$round.warmup" 2>&1 || true; fi
	resetpeak "$pid"
	[ "$pid" != - ] && c0=$(cputicks "$pid")
	b0=$(cpubusy)
	o0=$(ours)
	g0=$(outsegs)
	times >"$WORK/times.0"
	wrkrun "$DURATION" "$url" "$hdr" "$script" >"$WORK/wrk.$name.$round" 2>&1 || {
		echo "run.sh: wrk failed for $name:" >&2
		cat "$WORK/wrk.$name.$round" >&2
		exit 1
	}
	times >"$WORK/times.1"
	g1=$(outsegs)
	k0=$(childticks "$WORK/times.0")
	k1=$(childticks "$WORK/times.1")
	o1=$(ours)
	b1=$(cpubusy)
	[ "$pid" != - ] && c1=$(cputicks "$pid")
	rss=$(peakrss "$pid")
	line=$(grep '^WRKRESULT' "$WORK/wrk.$name.$round") || { cat "$WORK/wrk.$name.$round" >&2; exit 1; }
	awk -v name="$name" -v cpu=$((c1 - c0)) -v pid="$pid" -v b0="$b0" -v b1="$b1" \
		-v ours=$((o1 - o0 + k1 - k0)) -v segs=$((g1 - g0)) -v rss="$rss" '{
		for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
		errs = v["connect"] + v["read"] + v["write"] + v["status"] + v["timeout"]
		n0 = split(b0, x0, " "); split(b1, x1, " ")
		busy = 0; all = 0; irq = 0
		for (i = 1; i <= n0; i++) {
			split(x0[i], p0, ":"); split(x1[i], p1, ":")
			d[i] = p1[1] - p0[1]; a[i] = p1[2] - p0[2]; busy += d[i]; all += a[i]; irq += p1[3] - p0[3]
			pct[i] = (a[i] > 0) ? 100 * d[i] / a[i] : 0
		}
		other = busy - ours
		if (other < 0) other = 0
		one = (all > 0) ? all / n0 : 1
		printf "%s %.0f %d %d %s %d %d %.0f %.0f %.0f %.0f %d %s\n", name, v["requests"] / (v["duration_us"] / 1e6), v["p50_us"], v["p99_us"], (pid == "-" ? "-" : cpu), v["requests"], errs, pct[1], (n0 > 1 ? pct[2] : 0), 100 * irq / one, 100 * other / one, segs, rss
	}' <<<"$line" >"$WORK/row"
}

: >"$WORK/rows"
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
ROWS=(
	"http-direct http://127.0.0.1:$B1/ - -"
	"http-sidecar http://127.0.0.1:$SCHTTP/ Switchboard-Service:bench $SCPID"
	"http-haproxy http://127.0.0.1:$HAHTTP/ Switchboard-Service:bench $HAPID"
	"http-haproxy-retry http://127.0.0.1:$HARETRY/ Switchboard-Service:bench $HAPID"
	"http-sidecar-haproxy http://127.0.0.1:$SC2HTTP/ Switchboard-Service:bench $HA2PID"
	"tcp-haproxy http://127.0.0.1:$HATCP/ - $HAPID"
	"tcp-sidecar http://127.0.0.1:$SCTCP/ - $SCPID"
)
if [ "$PACE_MS" -gt 0 ]; then
	ROWS+=(
		"paced-direct http://127.0.0.1:$B1/ - -"
		"paced-haproxy http://127.0.0.1:$HAHTTP/ Switchboard-Service:bench $HAPID"
		"paced-sidecar http://127.0.0.1:$SCHTTP/ Switchboard-Service:bench $SCPID"
		"paced-tcp-haproxy http://127.0.0.1:$HATCP/ - $HAPID"
		"paced-tcp-sidecar http://127.0.0.1:$SCTCP/ - $SCPID"
	)
fi
if [ "$UPLOAD" -gt 0 ]; then
	ROWS+=(
		"upload-direct http://127.0.0.1:$B1/ - -"
		"upload-haproxy http://127.0.0.1:$HAHTTP/ Switchboard-Service:bench $HAPID"
		"upload-sidecar http://127.0.0.1:$SCHTTP/ Switchboard-Service:bench $SCPID"
	)
fi
# ONLY="ROW ROW..." measures those rows alone (more rounds of one pair in
# the same time); ratios whose rows were not measured are left out.
if [ -n "${ONLY:-}" ]; then
	keep=()
	for row in "${ROWS[@]}"; do
		for n in $ONLY; do [ "${row%% *}" = "$n" ] && keep+=("$row"); done
	done
	[ ${#keep[@]} -gt 0 ] || { echo "ONLY=$ONLY: no such row" >&2; exit 2; }
	ROWS=("${keep[@]}")
fi
SC2T0=$(cputicks "$SC2PID")
echo "measuring: $ROUNDS round(s) of ${#ROWS[@]} rows, each ${WARMUP}s + ${DURATION}s ..." >&2
for ((r = 1; r <= ROUNDS; r++)); do
	# Odd rounds go down the list, even rounds up it, so that a drift in
	# the machine's speed does not always favour the same proxy.
	order=()
	for ((i = 0; i < ${#ROWS[@]}; i++)); do
		if ((r % 2)); then order+=("${ROWS[i]}"); else order+=("${ROWS[${#ROWS[@]} - 1 - i]}"); fi
	done
	for row in "${order[@]}"; do
		read -r name url hdr pid <<<"$row"
		[ "$hdr" = - ] && hdr="" || hdr="${hdr/:/: }"
		measure "$name" "$url" "$hdr" "$pid" "$r"
	done
done
LOADAVG2=$(cut -d' ' -f1-3 /proc/loadavg)
SC2T1=$(cputicks "$SC2PID")
HA2NOW=$(hapworker 2>/dev/null || echo gone)

# --- the report ------------------------------------------------------------------
echo
echo "bench/proxy: $(haproxy -v | head -1 | awk '{print "HAProxy", $3}') vs the switchboard sidecar ($SRCDESC, $(go version | awk '{print $3}'))"
echo "load: wrk -t$THREADS -c$CONNS, keep-alive, GET / answered 200 with a 13-byte body; per row ${WARMUP}s warm-up then ${DURATION}s measured,"
echo "      $ROUNDS round(s), odd rounds in table order, even rounds in reverse; figures are the mean over the rounds"
echo "backends: 2 x bench/proxy/backend (fasthttp, GOMAXPROCS=1); direct = wrk to backend 1 only"
if [ "$PIN" = 1 ]; then
	echo "pinning (taskset): CPU $LOADCPU = wrk, both backends, Atlas (GOMAXPROCS=1 each); CPU $PROXYCPU = the proxy under test only:"
	echo "         HAProxy nbthread 1, sidecar GOMAXPROCS=1${SIDECAR_ENV:+ $SIDECAR_ENV}; both proxies run throughout, the idle one uses ~0"
else
	echo "pinning: none (PIN=0); HAProxy nbthread $NBTHREAD, sidecar GOMAXPROCS default${SIDECAR_ENV:+, $SIDECAR_ENV}"
fi
echo "machine: $NCPU CPUs, $(uname -r), load average $LOADAVG before, $LOADAVG2 after"
echo "HTTP: HAProxy mode http (leastconn, keep-alive both sides, no http-server-close, forwardfor) vs the sidecar frontend (Switchboard-Service: bench)"
echo "haproxy mode: http-sidecar-haproxy = a second sidecar with proxy: haproxy; its HAProxy (config rendered by the sidecar:"
echo "      httplog at level warning, retries 3, redispatch) serves listen, pinned with the sidecar; proxy CPU = the HAProxy worker;"
echo "      the sidecar process itself used $(awk -v t=$((SC2T1 - SC2T0)) -v tck="$TCK" 'BEGIN { printf "%.2f", t / tck }')s of CPU over all rows (HAProxy worker pid $HA2PID before, $HA2NOW after: same = no reload)"
echo "L4:   HAProxy mode tcp (leastconn) vs the sidecar's upstream listen; wrk's keep-alive HTTP through both"
[ "$UPLOAD" -gt 0 ] && echo "uploads: the HTTP rows' setup, every request a POST of $UPLOAD bytes (Content-Length), which the backend reads and drops"
[ "$PACE_MS" -gt 0 ] && echo "paced: the HTTP and L4 rows' setup, each connection waiting 0-$((2 * PACE_MS)) ms (uniform, whole ms) after every answer: the same steady load for each row"
echo
awk -v tck="$TCK" -v dur="$DURATION" -v pin="$PIN" -v upload="$UPLOAD" -v conns="$CONNS" '
function ms(us) { return sprintf("%.3fms", us / 1000) }
# pmed: the median over the rounds of the ratio a/b taken within each round
# (the two rows a few seconds apart), which a drift of the shared machine
# between rounds moves far less than the ratio of the means.
function pmed(v, a, b,    k, m, i, j, t, x) {
	m = 0
	for (k = 1; k <= cnt[a] && k <= cnt[b]; k++) if (v[b, k] > 0) x[++m] = v[a, k] / v[b, k]
	if (m == 0) return 0
	for (i = 2; i <= m; i++) { t = x[i]; for (j = i - 1; j >= 1 && x[j] > t; j--) x[j + 1] = x[j]; x[j + 1] = t }
	return (m % 2) ? x[(m + 1) / 2] : (x[m / 2] + x[m / 2 + 1]) / 2
}
{
	n = $1
	if (!(n in cnt)) { name[++rows] = n; lo[n] = $2; hi[n] = $2 }
	cnt[n]++
	rr[n, cnt[n]] = $2; rp[n, cnt[n]] = $4
	rps[n] += $2; p50[n] += $3; p99[n] += $4; req[n] += $6; err[n] += $7
	if ($5 == "-") cpu[n] = "-"; else cpu[n] += $5
	busy0[n] += $8; busy1[n] += $9; irq[n] += $10; oth[n] += $11; segs[n] += $12
	if ($13 != "-" && $13 + 0 > peak[n]) peak[n] = $13 + 0
	if ($2 < lo[n]) lo[n] = $2
	if ($2 > hi[n]) hi[n] = $2
}
END {
	for (i = 1; i <= rows; i++) {
		n = name[i]; c = cnt[n]
		rps[n] /= c; p50[n] /= c; p99[n] /= c; busy0[n] /= c; busy1[n] /= c; irq[n] /= c; oth[n] /= c
	}
	printf "%-20s %8s %7s %9s %9s %9s %9s %6s %5s %5s %5s %6s %8s %8s\n", "row", "req/s", "spread", "p50", "p99", "proxy CPU", "CPU/req", "errors", "CPU0", "CPU1", "irq", "other", "segs/req", "peak RSS"
	for (i = 1; i <= rows; i++) {
		n = name[i]
		if (cpu[n] == "-") { cp = "-"; cr = "-" }
		else {
			s = cpu[n] / tck
			cp = sprintf("%.0f%%", 100 * s / (dur * cnt[n]))
			cr = sprintf("%.1fus", 1e6 * s / req[n])
		}
		sp = (cnt[n] > 1 && rps[n] > 0) ? sprintf("%.0f%%", 100 * (hi[n] - lo[n]) / rps[n]) : "-"
		pk = (n in peak) ? sprintf("%.1fMiB", peak[n] / 1024) : "-"
		printf "%-20s %8.0f %7s %9s %9s %9s %9s %6d %4d%% %4d%% %4d%% %5d%% %8.2f %8s%s\n", n, rps[n], sp, ms(p50[n]), ms(p99[n]), cp, cr, err[n], busy0[n], busy1[n], irq[n], oth[n], (req[n] > 0 ? segs[n] / req[n] : 0), pk, (oth[n] > 10 ? "  !busy" : "")
		if (oth[n] > 10) noisy = 1
	}
	print "(spread: (max - min) / mean of the rounds req/s; proxy CPU: user+sys time of the proxy process, % of one CPU;"
	print " CPU/req: that time per request; CPU0/CPU1: how busy each CPU was; irq: of which interrupts, mostly loopback TCP;"
	print " other: busy time less the time of every process this script started, i.e. other processes; all in % of one CPU;"
	print " segs/req: TCP segments the machine sent per request, all hops and pure ACKs included;"
	print " peak RSS: the largest resident set of the proxy process during the measured runs, VmHWM reset before each)"
	print ""
	printf "%-36s %8s   %-24s %s\n", "ratio", "value", "target", "verdict"
	print "(requests/s ratios: the median over the rounds of the ratio within each round; the ratio of the means follows)"
	d = "http-direct"
	for (k = 0; k < 2; k++) {
		m = (k == 0) ? "http" : "tcp"
		h = m "-haproxy"; sc = m "-sidecar"
		if (!(h in rps) || !(sc in rps) || rps[h] == 0) continue
		r = pmed(rr, sc, h)
		if (m == "http") {
			tgt = ">= 1.00 (never < 0.80)"
			v = (r >= 1.0) ? "meets" : (r >= 0.8 ? "below target, above floor" : "BELOW FLOOR")
		} else {
			tgt = ">= 0.95"
			v = (r >= 0.95) ? "meets" : "below target"
		}
		printf "%-36s %8.2f   %-24s %s (ratio of the means %.2f)\n", m " rps sidecar/haproxy", r, tgt, v, rps[sc] / rps[h]
		if (!(d in rps)) continue
		printf "%-36s %8.2f   %-24s\n", m " rps sidecar/direct", rps[sc] / rps[d], "-"
		ah = p99[h] - p99[d]; as = p99[sc] - p99[d]
		ra = (ah > 0) ? sprintf("%8.2f", as / ah) : sprintf("%8s", "n/a")
		if (m == "http") { tgt = "<= 1.00 (<= haproxy)"; v = (as <= ah) ? "meets" : "below target" }
		else { tgt = "- (HTTP target only)"; v = "" }
		printf "%-36s %s   %-24s %s\n", m " added p99 sidecar/haproxy", ra, tgt, v
		printf "%-36s %8s   haproxy %+.3fms, sidecar %+.3fms\n", "  added p99 over direct", "", ah / 1000, as / 1000
		if (cpu[h] != "-" && cpu[sc] != "-" && req[h] > 0 && req[sc] > 0 && cpu[h] > 0) {
			printf "%-36s %8.2f   %-24s haproxy %.1fus, sidecar %.1fus\n", m " CPU/req sidecar/haproxy", (cpu[sc] / req[sc]) / (cpu[h] / req[h]), "-", 1e6 * cpu[h] / tck / req[h], 1e6 * cpu[sc] / tck / req[sc]
		}
	}
	# haproxy mode against the hand-written config with the same retry
	# policy (the target), then against the one without retries.
	hm = "http-sidecar-haproxy"; h = "http-haproxy-retry"
	if ((hm in rps) && (h in rps) && rps[h] > 0 && p99[h] > 0) {
		r = pmed(rr, hm, h)
		printf "%-36s %8.2f   %-24s %s (ratio of the means %.2f)\n", "http rps haproxy-mode/hand-written", r, ">= 0.95 (within 5%)", (r >= 0.95 ? "meets" : "below target"), rps[hm] / rps[h]
		r = pmed(rp, hm, h)
		printf "%-36s %8.2f   %-24s %s (ratio of the means %.2f)\n", "http p99 haproxy-mode/hand-written", r, "<= 1.05 (within 5%)", (r <= 1.05 ? "meets" : "below target"), p99[hm] / p99[h]
		if (cpu[h] != "-" && cpu[hm] != "-" && req[h] > 0 && req[hm] > 0 && cpu[h] > 0) {
			printf "%-36s %8.2f   %-24s hand-written %.1fus, haproxy mode %.1fus\n", "  CPU/req haproxy-mode/hand-written", (cpu[hm] / req[hm]) / (cpu[h] / req[h]), "-", 1e6 * cpu[h] / tck / req[h], 1e6 * cpu[hm] / tck / req[hm]
		}
		h = "http-haproxy"
		if ((h in rps) && rps[h] > 0) printf "%-36s %8.2f   %-24s (ratio of the means %.2f)\n", "  rps haproxy-mode/no-retry config", pmed(rr, hm, h), "- (retries cost this)", rps[hm] / rps[h]
		if ((h in rps) && rps[h] > 0) printf "%-36s %8.2f   %-24s (ratio of the means %.2f)\n", "  p99 haproxy-mode/no-retry config", pmed(rp, hm, h), "-", p99[hm] / p99[h]
	}
	# Paced: the same load for each row, well below saturation.
	d = "paced-direct"
	for (k = 0; k < 2; k++) {
		m = (k == 0) ? "paced" : "paced-tcp"
		h = m "-haproxy"; sc = m "-sidecar"
		if (!(h in rps) || !(sc in rps) || rps[h] == 0) continue
		printf "%-36s %8.2f   %-24s haproxy %.0f, sidecar %.0f requests/s (the same load: ratio of the means)\n", m " rps sidecar/haproxy", rps[sc] / rps[h], "-", rps[h], rps[sc]
		printf "%-36s %8.2f   %-24s haproxy %.3fms, sidecar %.3fms\n", m " p99 sidecar/haproxy", (p99[h] > 0 ? p99[sc] / p99[h] : 0), "-", p99[h] / 1000, p99[sc] / 1000
		if ((d in rps) && p99[h] > p99[d]) printf "%-36s %8.2f   %-24s haproxy %+.3fms, sidecar %+.3fms\n", m " added p99 sidecar/haproxy", (p99[sc] - p99[d]) / (p99[h] - p99[d]), "-", (p99[h] - p99[d]) / 1000, (p99[sc] - p99[d]) / 1000
		if (cpu[h] != "-" && cpu[sc] != "-" && req[h] > 0 && req[sc] > 0 && cpu[h] > 0) printf "%-36s %8.2f   %-24s haproxy %.1fus, sidecar %.1fus\n", m " CPU/req sidecar/haproxy", (cpu[sc] / req[sc]) / (cpu[h] / req[h]), "-", 1e6 * cpu[h] / tck / req[h], 1e6 * cpu[sc] / tck / req[sc]
	}
	# Uploads: throughput and the memory they take.
	h = "upload-haproxy"; sc = "upload-sidecar"
	if ((h in rps) && (sc in rps) && rps[h] > 0) {
		r = pmed(rr, sc, h)
		printf "%-36s %8.2f   %-24s %s (ratio of the means %.2f; haproxy %.0f MiB/s, sidecar %.0f MiB/s)\n", "upload rps sidecar/haproxy", r, "- (HTTP: >= 1.00)", (r >= 1.0 ? "at or above" : "below"), rps[sc] / rps[h], rps[h] * upload / 1048576, rps[sc] * upload / 1048576
		if ("upload-direct" in rps && rps["upload-direct"] > 0) printf "%-36s %8.2f\n", "upload rps sidecar/direct", rps[sc] / rps["upload-direct"]
		if ((h in peak) && (sc in peak)) printf "%-36s %8s   haproxy %.1f MiB, sidecar %.1f MiB (%d connections, %.0f MiB in flight)\n", "upload peak RSS", "", peak[h] / 1024, peak[sc] / 1024, conns, conns * upload / 1048576
	}
	bad = 0
	for (n in err) if (err[n] > 0) bad = 1
	if (bad) print "\nWARNING: some rows had errors (see the errors column); their figures are suspect"
	if (noisy) print "\nWARNING: other processes used more than 10% of a CPU during the rows marked !busy: the machine was not quiet, compare with care"
	if (pin == 1) {
		print "\nnote: direct is not an upper bound here: without a proxy, CPU 0 also does all the kernel TCP work that a proxy"
		print "does on CPU 1 (a loopback send runs the receiver side in the sender), so a proxied row can beat it"
	}
}' "$WORK/rows"

# --- optional profiles -------------------------------------------------------------
if [ "$PROFILE" = 1 ]; then
	echo
	echo "profiles (not in the table above): under the HTTP load, each proxy for ${DURATION}s with perf record -g -F 999,"
	echo "then ${DURATION}s with perf stat counting its system calls; perf runs on CPU $LOADCPU with the load"
	SYSCALLS="read write readv writev recvfrom sendto recvmsg sendmsg splice epoll_wait epoll_pwait epoll_ctl futex nanosleep sched_yield tgkill getpid rt_sigreturn madvise mmap"
	prof() { # prof NAME URL PID
		local name=$1 url=$2 pid=$3 perfpid ev req
		"${ONLOAD[@]}" timeout $((DURATION + 30)) perf record -q -g -F 999 -p "$pid" -o "$WORK/perf.$name.data" -- sleep "$DURATION" >/dev/null 2>&1 &
		perfpid=$!
		PIDS+=("$perfpid")
		wrkrun "$DURATION" "$url" "Switchboard-Service: bench" >"$WORK/wrk.prof.$name" 2>&1 || true
		wait "$perfpid" || true
		req=$(grep -o 'requests=[0-9]*' "$WORK/wrk.prof.$name" | cut -d= -f2)
		perf script -i "$WORK/perf.$name.data" -F comm,ip,sym 2>/dev/null |
			awk -v hz=999 -v req="${req:-0}" -f "$ROOT/bench/proxy/perfsum.awk" >"$WORK/perf.$name.summary.txt" || true
		perf report -i "$WORK/perf.$name.data" --stdio --no-children --sort symbol 2>/dev/null |
			grep -E '^ +[0-9.]+%' | head -40 >"$WORK/perf.$name.top.txt" || true

		ev="raw_syscalls:sys_enter"
		for sc in $SYSCALLS; do
			[ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$sc" ] && ev="$ev,syscalls:sys_enter_$sc"
		done
		"${ONLOAD[@]}" timeout $((DURATION + 30)) perf stat -x, -e "$ev" -p "$pid" -o "$WORK/perf.$name.syscalls.csv" -- sleep "$DURATION" >/dev/null 2>&1 &
		perfpid=$!
		PIDS+=("$perfpid")
		wrkrun "$DURATION" "$url" "Switchboard-Service: bench" >"$WORK/wrk.stat.$name" 2>&1 || true
		wait "$perfpid" || true
		req=$(grep -o 'requests=[0-9]*' "$WORK/wrk.stat.$name" | cut -d= -f2)

		echo
		echo "== $name: where its CPU goes ($WORK/perf.$name.summary.txt; flat: perf.$name.top.txt)"
		sed -n '1,/^inclusive/p' "$WORK/perf.$name.summary.txt" | grep -v '^inclusive' | grep -v '^$' | sed 's/^/  /'
		echo "  top self time:"
		head -12 "$WORK/perf.$name.top.txt" | awk '{ printf "    %7s  %s\n", $1, $3 }'
		if [ "$name" = sidecar ]; then
			echo "  inclusive time, user-space functions (top 25):"
			sed -n '/^inclusive/,/^$/p' "$WORK/perf.$name.summary.txt" | grep '%' | head -25 | sed 's/^/  /'
			sed -n '/^runtime.mallocgc/,$p' "$WORK/perf.$name.summary.txt" | head -9 | sed 's/^/  /'
		fi
		echo "  system calls per request (perf stat, ${req:-?} requests):"
		awk -F, -v req="${req:-0}" '$3 ~ /sys_enter/ && $1 + 0 > 0 && req > 0 {
			ev = $3; sub(/.*sys_enter_?/, "", ev); if (ev == "") ev = "all"
			printf "    %-14s %6.2f\n", ev, $1 / req }' "$WORK/perf.$name.syscalls.csv"
	}
	prof sidecar "http://127.0.0.1:$SCHTTP/" "$SCPID"
	prof haproxy "http://127.0.0.1:$HAHTTP/" "$HAPID"
fi
