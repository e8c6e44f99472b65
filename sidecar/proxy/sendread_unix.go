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
	if r.step == nil {
		r.step = r.readStep
	}
	r.buf, r.sent, r.n, r.errno, r.werr = p, false, 0, nil, nil
	err := r.rc.Read(r.step)
	n, errno, werr := r.n, r.errno, r.werr
	r.buf = nil
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

// readStep is readSending's RawConn.Read callback: the first call sends,
// and returns false so that Read parks until the answer can be read.
func (r *sendReader) readStep(fd uintptr) bool {
	if !r.sent {
		r.sent = true
		r.werr = r.bw.Flush()
		return r.werr != nil // sent: wait for the answer
	}
	for {
		r.n, r.errno = syscall.Read(int(fd), r.buf)
		if r.errno != syscall.EINTR {
			break
		}
	}
	return r.errno != syscall.EAGAIN
}
