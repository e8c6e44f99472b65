// Package rawio has TCP connections whose short reads and writes skip the
// Go scheduler's system call accounting: for servers on loopback, where a
// write does the receiver's TCP work too and would otherwise cost a thread
// switch or two (see TCP). The sidecar's calls (the frontend's connections
// and those to instances) and its L4 upstreams use it; event streams and
// upgrades keep Go's usual path. Atlas does not: with two Ps, its answers
// to 1,000 watchers were no cheaper through it (bench/README.md,
// "Session 15").
package rawio
