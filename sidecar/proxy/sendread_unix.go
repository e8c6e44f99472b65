//go:build unix

package proxy

import (
	"bufio"
	"io"
	"net"
	"os"
	"syscall"
)

// sendReader reads a connection to an instance for its bufio.Reader, and
// sends the request written into bw just before it first waits for the
// answer. Go's own Read tries the socket first and parks only after a
// read that fails with EAGAIN, which is what a read just after sending a
// request always does; sending from inside RawConn.Read, after it has
// armed the poller for reading and before it parks, saves that system
// call on every request. No wake-up can be lost: the answer arrives only
// after the request has gone, so after the poller was armed.
type sendReader struct {
	conn    net.Conn
	rc      syscall.RawConn // nil: send, then read as Go does
	bw      *bufio.Writer
	pending bool // bw holds a request to send before the next read
}

func newSendReader(c net.Conn, bw *bufio.Writer) *sendReader {
	r := &sendReader{conn: c, bw: bw}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			r.rc = rc
		}
	}
	return r
}

// sendOnRead makes the next Read send what bw holds first.
func (r *sendReader) sendOnRead() { r.pending = true }

// send sends what bw holds now, if a Read was to do it.
func (r *sendReader) send() error {
	if !r.pending {
		return nil
	}
	r.pending = false
	return r.bw.Flush()
}

func (r *sendReader) Read(p []byte) (int, error) {
	if !r.pending || r.rc == nil || len(p) == 0 {
		if err := r.send(); err != nil {
			return 0, err
		}
		return r.conn.Read(p)
	}
	r.pending = false
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
