//go:build unix

package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
)

// readSending sends what bw holds from inside RawConn.Read, then waits for
// and reads the answer.
func (r *sendReader) readSending(p []byte) (int, error) {
	var (
		n     int
		errno error
		werr  error
		sent  bool
	)
	err := r.rc.Read(func(fd uintptr) bool {
		if !sent {
			sent = true
			werr = r.bw.Flush()
			return werr != nil // sent: wait for the answer
		}
		for {
			n, errno = syscall.Read(int(fd), p)
			if errno != syscall.EINTR {
				break
			}
		}
		return errno != syscall.EAGAIN
	})
	switch {
	case werr != nil:
		return 0, werr
	case err != nil: // the deadline, or closed
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.conn.LocalAddr(), Addr: r.conn.RemoteAddr(), Err: err}
	case errno != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.conn.LocalAddr(), Addr: r.conn.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
