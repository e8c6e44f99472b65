#!/usr/bin/env bash
# Runs Switchboard's whole test suite on a fresh machine: installs what the
# tests need when it is missing, then vets, tests under -race, and runs
# every fuzz target briefly (FUZZTIME, default 10000x; FUZZTIME=0 skips).
set -euo pipefail
cd "$(dirname "$0")"

# System packages the tests use, installed only when missing.
need() { # need COMMAND DEBIAN-PACKAGE
	command -v "$1" >/dev/null 2>&1 && return
	echo "test.sh: installing $2" >&2
	if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
	$SUDO apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
}
need git git

need python3 python3 # a service not written in Go, in the sidecar tests
need curl curl       # the README tutorial
need haproxy haproxy # haproxy mode, driven for real
need chromium chromium # the dashboard, in a real browser

go vet ./...
go test -race -count=1 -timeout 12m ./...
# Under -race the sidecar's sockets go through package syscall, which the
# race detector follows (internal/rawio/rawsys_race_linux.go); once more
# without it, so that the raw system calls the sidecar ships with run too.
go test -count=1 ./internal/rawio ./sidecar/proxy ./sidecar
# The examples are modules of their own, as switchboard new makes them.
for ex in examples/*/; do
	(cd "$ex" && go vet ./... && go test -count=1 ./...)
done

# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report its own deadline as a failure ("context deadline exceeded", no
# failing input) when a worker is busy at the last instant on a loaded
# machine (golang/go#75804, fixed in Go 1.27). A count has no deadline to
# race. 10,000 inputs take 1-10 s per target here.
fuzztime=${FUZZTIME:-10000x}
if [ "$fuzztime" != 0 ]; then
	# Every Fuzz function, in every package that has one.
	for pkg in $(go list ./...); do
		dir=$(go list -f '{{.Dir}}' "$pkg")
		for fz in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | cut -d' ' -f2 | sort -u); do
			echo "fuzz $pkg $fz ($fuzztime)"
			if ! out=$(go test "$pkg" -run '^$' -fuzz "^$fz\$" -fuzztime "$fuzztime" 2>&1); then
				echo "$out" | tail -40
				exit 1
			fi
		done
	done
fi
echo "test.sh: all tests passed"
