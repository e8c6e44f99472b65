// Package rawio has TCP connections whose short reads and writes skip the
// Go scheduler's system call accounting: for servers on loopback, where a
// write does the receiver's TCP work too and would otherwise cost a thread
// switch or two (see TCP). The sidecar's frontend, instance and L4
// connections use it. Atlas does not: with two Ps, its answers to 1,000
// watchers were no cheaper through it (bench/README.md, "Session 15").
package rawio
