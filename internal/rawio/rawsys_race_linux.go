//go:build race

package rawio

import "syscall"

// Under the race detector, rawConn reads and writes through package
// syscall, which tells the detector that what one goroutine writes to a
// socket happens before what another reads from it. The raw system calls
// do not, so a test whose client and server share the process would see
// races that are not there. The rest of rawConn is the same.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) { return errno(syscall.Read(int(fd), p)) }

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) { return errno(syscall.Write(int(fd), p)) }

func errno(n int, err error) (int, syscall.Errno) {
	if err != nil {
		return 0, err.(syscall.Errno)
	}
	return n, 0
}
