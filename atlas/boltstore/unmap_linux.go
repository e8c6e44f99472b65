package boltstore

import "syscall"

// unmapPages takes the size bytes of the file mapped at addr out of this
// process's page tables (madvise MADV_DONTNEED). On a shared file mapping
// that loses nothing: the pages stay in the kernel's page cache, and the
// next read of one maps it again.
func unmapPages(addr uintptr, size int64) error {
	if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, addr, uintptr(size), syscall.MADV_DONTNEED); e != 0 {
		return e
	}
	return nil
}
