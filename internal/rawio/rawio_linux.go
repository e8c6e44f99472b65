package rawio

import (
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
)

// rawConn is a TCP connection whose reads and writes of up to rawMax bytes
// call read(2) and write(2) without telling the Go scheduler that they are
// system calls (syscall.RawSyscall). The socket is non-blocking, as Go's
// net package makes every socket, so they never block: on EAGAIN the
// goroutine waits in the network poller as usual, deadlines included
// (syscall.RawConn).
//
// Why: on loopback a write also does the receiver's TCP work, tens of
// microseconds, and a goroutine in a system call that long loses its P to
// the scheduler's monitor (sysmon), which wakes another thread to run the
// P and parks the first when its call returns. With the sidecar's one P,
// that was a futex wake, a nanosleep and two thread switches for a good
// share of requests: at a steady 14,000 requests/s, 40.6–48.5 µs of CPU
// per request against 35.6–38.1 µs with rawConn (bench/README.md,
// "Session 15"). A saturated sidecar showed none of those switches either
// way (perf stat), and costs the same with rawConn or without.
//
// What takes Go's usual path: reads and writes over rawMax (cutting a
// larger read to rawMax instead made 8 MiB uploads cost the sidecar 1.6
// times the CPU), zero-length calls (so that they fail as net's do), and
// what the embedded
// *net.TCPConn's ReadFrom and WriteTo move, which bufio.Writer and io.Copy
// pick when they can (a streamed body of known length; splice between two
// TCP connections). fasthttp sends an answer larger than its write buffer
// with one writev only to a bare *net.TCPConn: through rawConn it takes two
// writes, still less CPU at 16 KiB answers (47–49 against 52–54 µs).
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The state of the read and of the write under way, and the functions
	// RawConn calls, made once, so that a read or a write allocates
	// nothing. rmu and wmu keep concurrent reads (or writes) from sharing
	// it: the RawConn would serialise the calls, not this state.
	rmu, wmu   sync.Mutex
	rbuf, wbuf []byte
	rn, wn     int
	rerr, werr error
	readFn     func(uintptr) bool
	writeFn    func(uintptr) bool
}

// rawMax is the largest read or write rawConn does without the scheduler
// knowing: as much as the sidecar's buffers move at once (bufio's 16 KiB
// reads, the L4 copy's 16 KiB), so that a long copy in the kernel still
// lets other goroutines run.
const rawMax = 16 << 10

// TCP wraps c when it is a TCP connection, and returns it as it is
// otherwise.
func TCP(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawConn{TCPConn: tc, rc: rc}
	r.readFn = r.read
	r.writeFn = r.write
	return r
}

// syscalls, when a test sets it, counts the read(2) and write(2) calls
// rawConn makes itself.
var syscalls *atomic.Int64

// read is the RawConn callback of Read: false means wait until readable.
func (r *rawConn) read(fd uintptr) bool {
	for {
		if syscalls != nil {
			syscalls.Add(1)
		}
		n, e := sysRead(fd, r.rbuf)
		switch e {
		case 0:
			r.rn, r.rerr = n, nil
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.rn, r.rerr = 0, os.NewSyscallError("read", e)
			return true
		}
	}
}

// write is the RawConn callback of Write: false means wait until writable.
func (r *rawConn) write(fd uintptr) bool {
	for r.wn < len(r.wbuf) {
		p := r.wbuf[r.wn:]
		if syscalls != nil {
			syscalls.Add(1)
		}
		n, e := sysWrite(fd, p)
		switch e {
		case 0:
			// As net's own writes check: a write that takes nothing
			// would loop for ever, one that claims more is a kernel bug.
			if n == 0 {
				r.werr = io.ErrUnexpectedEOF
				return true
			}
			if n > len(p) {
				panic("rawio: write(2) returned " + strconv.Itoa(n) + " for a write of " + strconv.Itoa(len(p)) + " bytes")
			}
			r.wn += n
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werr = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

func (r *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 || len(p) > rawMax {
		return r.TCPConn.Read(p)
	}
	r.rmu.Lock()
	defer r.rmu.Unlock()
	r.rbuf, r.rn, r.rerr = p, 0, nil
	err := r.rc.Read(r.readFn)
	r.rbuf = nil
	switch {
	case err != nil:
		return 0, r.opError("read", err)
	case r.rerr != nil:
		return 0, r.opError("read", r.rerr)
	case r.rn == 0:
		return 0, io.EOF
	}
	return r.rn, nil
}

func (r *rawConn) Write(p []byte) (int, error) {
	if len(p) == 0 || len(p) > rawMax {
		return r.TCPConn.Write(p)
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	r.wbuf, r.wn, r.werr = p, 0, nil
	err := r.rc.Write(r.writeFn)
	n := r.wn
	r.wbuf = nil
	if err == nil {
		err = r.werr
	}
	if err != nil {
		return n, r.opError("write", err)
	}
	return n, nil
}

// opError wraps err as net's own Read and Write do, so that callers see
// the same errors (a timeout, net.ErrClosed, ECONNRESET) either way.
func (r *rawConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err // RawConn's, whose Op is raw-read or raw-write
	}
	return &net.OpError{Op: op, Net: "tcp", Source: r.LocalAddr(), Addr: r.RemoteAddr(), Err: err}
}
