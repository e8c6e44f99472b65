#!/usr/bin/env bash
# bench/proxy/fifo-netpoll.sh OUT: builds ./cmd/switchboard into OUT with a
# copy of the Go toolchain whose network poller hands out the goroutines of
# each batch of ready connections in the order epoll reported them. The
# released runtime (netpoll_epoll.go) pushes each one onto the head of a
# list, so a batch runs last-ready-first. A measurement tool, not a build to
# ship: compare the sidecar's p99 with and without it, e.g.
#
#   bench/proxy/fifo-netpoll.sh /tmp/sb-fifo
#   ONLY="http-direct http-haproxy http-sidecar" BIN=/tmp/sb-fifo bench/proxy/run.sh
#
# bench/README.md (session 6) has the figures. The copy lives in a temporary
# directory, removed on exit.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT" >&2; exit 2; }
out=$(realpath -m "$1")
cd "$(dirname "$0")/../.."
goroot=$(go env GOROOT)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -a "$goroot" "$tmp/go"
f="$tmp/go/src/runtime/netpoll_epoll.go"
old='	for i := int32(0); i < n; i++ {'
grep -qxF "$old" "$f" || { echo "$0: $f has no line '$old': this Go release differs; nothing built" >&2; exit 1; }
# Walk the events backwards: pushing onto the head then leaves the list in
# the events' order.
sed -i "s/^	for i := int32(0); i < n; i++ {\$/	for i := n - 1; i >= 0; i-- {/" "$f"
GOROOT="$tmp/go" GOFLAGS=-trimpath "$tmp/go/bin/go" build -o "$out" ./cmd/switchboard
echo "built $out with $("$tmp/go/bin/go" version) and FIFO netpoll"
