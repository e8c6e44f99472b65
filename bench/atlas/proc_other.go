//go:build unix && !linux

package main

import "syscall"

// The benchmark reads Atlas's memory and CPU from /proc, so it measures
// throughput and latency elsewhere but not RSS.

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func fsType(string) string { return "unknown" }
