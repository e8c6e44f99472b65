//go:build !linux

package boltstore

// unmapPages does nothing where MADV_DONTNEED may not keep a shared
// mapping's contents: the pages stay mapped.
func unmapPages(addr uintptr, size int64, path string) error { return nil }
