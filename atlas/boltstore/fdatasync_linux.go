package boltstore

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data, and its size when that changed, to disk.
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
