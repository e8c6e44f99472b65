//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// alive reports whether an idle connection is still open: a peek that
// would block means the instance has neither closed it nor sent anything.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	// Control, not Read: Read would refuse at once on the read deadline
	// the connection's last request left behind.
	open := false
	var buf [1]byte
	err = rc.Control(func(fd uintptr) {
		for {
			_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if rerr == syscall.EINTR {
				continue
			}
			open = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
			return
		}
	})
	return err == nil && open
}
