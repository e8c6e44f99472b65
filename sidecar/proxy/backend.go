package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/switchboard-go/switchboard/internal/rawio"
)

// Limits of the connections to instances.
const (
	// smallBody is the largest answer read whole before it is sent on: a
	// known Content-Length up to it frees the connection at once. Larger
	// and chunked answers stream.
	smallBody = 64 << 10
	// idleTimeout closes a connection unused for this long (under the 5 s
	// idle timeout of Node.js servers).
	idleTimeout = 4 * time.Second
	// probeAfter: a connection idle for longer is checked for a close by
	// the instance before it is used.
	probeAfter  = time.Second
	dialTimeout = 2 * time.Second
	// maxInterim bounds the 1xx answers read before the final one.
	maxInterim = 10
)

// backend is one instance's pool of kept-alive connections and the client
// that sends requests over them: fasthttp's request writer and response
// parser over connections the sidecar manages itself, so that a small
// answer is read whole and its connection reused at once, a connection
// takes one deadline per request, and a connection the instance closed
// while idle is replaced rather than counted against the instance.
type backend struct {
	addr string

	mu     sync.Mutex
	idle   []*bconn // the most recently used last
	closed bool
}

// bconn is one connection to an instance.
type bconn struct {
	net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	used     time.Time // when it last went back to the pool
	deadline time.Time // the deadline set on it
	// probe: checked before its next use however briefly it was idle.
	// Its last answer had no body by its status or method (HEAD, 204,
	// 304), which is where instances most often send one anyway: a body
	// arriving after the answer was taken would be read as the next
	// request's answer.
	probe bool
}

// Errors of a round trip that route tells apart.
var (
	// errTimeout: the deadline passed.
	errTimeout = errors.New("no answer in time")
	// errStaleConn: a kept-alive connection was closed by the instance
	// before any byte of an answer came back.
	errStaleConn = errors.New("connection closed by the instance before an answer")
)

// dialError is a failure to connect: no byte of the request left.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// backends holds every open backend for the janitor.
var backends = struct {
	sync.Mutex
	set     map[*backend]struct{}
	started bool
}{set: map[*backend]struct{}{}}

// OpenBackends is how many instances the proxy keeps a connection pool
// for: one per instance of every service it routes to (for tests).
func OpenBackends() int {
	backends.Lock()
	defer backends.Unlock()
	return len(backends.set)
}

func newBackend(addr string) *backend {
	b := &backend{addr: addr}
	backends.Lock()
	backends.set[b] = struct{}{}
	if !backends.started {
		backends.started = true
		go janitor()
	}
	backends.Unlock()
	return b
}

// janitor closes connections idle for longer than idleTimeout, so that an
// instance nobody calls any more is not held open.
func janitor() {
	for range time.Tick(idleTimeout / 2) {
		now := time.Now()
		backends.Lock()
		all := make([]*backend, 0, len(backends.set))
		for b := range backends.set {
			all = append(all, b)
		}
		backends.Unlock()
		for _, b := range all {
			b.expire(now)
		}
	}
}

// expire closes the connections idle since before now - idleTimeout.
func (b *backend) expire(now time.Time) {
	b.mu.Lock()
	n := 0
	for n < len(b.idle) && now.Sub(b.idle[n].used) > idleTimeout {
		n++
	}
	old := append([]*bconn(nil), b.idle[:n]...)
	b.idle = append(b.idle[:0], b.idle[n:]...)
	b.mu.Unlock()
	for _, c := range old {
		c.Close()
	}
}

// close closes the idle connections; those in use are closed when their
// requests end.
func (b *backend) close() {
	b.mu.Lock()
	b.closed = true
	idle := b.idle
	b.idle = nil
	b.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
	backends.Lock()
	delete(backends.set, b)
	backends.Unlock()
}

// get returns the most recently used idle connection that is still open,
// or nil.
func (b *backend) get(now time.Time) *bconn {
	for {
		b.mu.Lock()
		n := len(b.idle)
		if n == 0 {
			b.mu.Unlock()
			return nil
		}
		c := b.idle[n-1]
		b.idle[n-1] = nil
		b.idle = b.idle[:n-1]
		b.mu.Unlock()
		idle := now.Sub(c.used)
		if (idle <= probeAfter && !c.probe) || (idle <= idleTimeout && alive(c.Conn)) {
			c.probe = false
			return c
		}
		c.Close()
	}
}

// put returns a connection to the pool, or closes it. One with bytes
// already read past its answer (an instance sending more than its framing
// said) is closed: they would be read as the next request's answer.
func (b *backend) put(c *bconn, reuse bool) {
	if reuse && c.br.Buffered() == 0 {
		now := time.Now()
		b.mu.Lock()
		if !b.closed {
			c.used = now
			b.idle = append(b.idle, c)
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
	}
	c.Close()
}

// dropIdle closes every idle connection: one was found closed by the
// instance, which usually means it restarted.
func (b *backend) dropIdle() {
	b.mu.Lock()
	idle := b.idle
	b.idle = nil
	b.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

func (b *backend) dial(deadline time.Time) (*bconn, error) {
	d := net.Dialer{Timeout: dialTimeout, Deadline: deadline}
	c, err := d.Dial("tcp", b.addr)
	if err != nil {
		return nil, &dialError{err}
	}
	c = rawio.TCP(c)
	return &bconn{Conn: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 4<<10)}, nil
}

// do sends req and reads the answer into resp, until deadline. A small
// answer is read whole; a larger or chunked one is left in resp as a body
// stream that holds the connection until fasthttp's server has sent it on.
// replayable says req may be sent again when a kept-alive connection turns
// out closed before any answer. http11 says the client speaks HTTP/1.1: do
// then stops at the first interim (1xx) answer to send on (forwardInterim),
// resp holding its head, and returns the connection with the rest of the
// answer unread, for the caller to read and close.
func (b *backend) do(req *fasthttp.Request, resp *fasthttp.Response, deadline, now time.Time, replayable, http11 bool) (*bconn, error) {
	c := b.get(now)
	for {
		reused := c != nil
		if !reused {
			var err error
			if c, err = b.dial(deadline); err != nil {
				return nil, err
			}
		}
		started, err := b.roundTrip(c, req, resp, deadline, http11)
		if err == nil {
			return started, nil
		}
		c.Close()
		if reused && errors.Is(err, errStaleConn) {
			b.dropIdle()
			if replayable {
				resp.Reset()
				c = nil
				continue
			}
		}
		return nil, err
	}
}

// roundTrip is one try of do on c. It returns c when it stopped at an
// interim answer to send on.
func (b *backend) roundTrip(c *bconn, req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time, http11 bool) (*bconn, error) {
	if !deadline.Equal(c.deadline) {
		if err := c.SetDeadline(deadline); err != nil {
			return nil, err
		}
		c.deadline = deadline
	}
	if err := req.Write(c.bw); err != nil {
		return nil, sendError(err)
	}
	if err := c.bw.Flush(); err != nil {
		return nil, sendError(err)
	}
	stopped, err := readHead(c, resp, http11)
	if err != nil {
		return nil, err
	}
	if stopped {
		return c, nil
	}
	// A request that goes out as HTTP/1.0 lets the instance close after
	// its answer, whatever that answer says.
	keep := !req.Header.ConnectionClose() && req.Header.IsHTTP11()
	return nil, b.readAnswer(c, resp, req.Header.IsHead(), keep, nil)
}

// readHead reads the head of an answer into resp, reading past interim
// (1xx) answers; http11 says the client speaks HTTP/1.1: readHead then
// stops at the first interim answer to send on (forwardInterim), and
// reports that it did.
func readHead(c *bconn, resp *fasthttp.Response, http11 bool) (bool, error) {
	resp.Header.DisableNormalizing()
	for n := 0; ; n++ {
		if err := resp.Header.Read(c.br); err != nil {
			// fasthttp reports io.EOF when not one byte of an answer came.
			if n == 0 && (err == io.EOF || errors.Is(err, syscall.ECONNRESET)) {
				return false, fmt.Errorf("%w: %v", errStaleConn, err)
			}
			return false, ioError(err)
		}
		s := resp.StatusCode()
		if s < 100 || s > 199 || s == fasthttp.StatusSwitchingProtocols {
			return false, nil
		}
		if n >= maxInterim {
			return false, fmt.Errorf("more than %d interim (1xx) answers", maxInterim)
		}
		if forwardInterim(s, http11) {
			return true, nil
		}
	}
}

// readAnswer reads the rest of the answer whose head is in resp: a small
// answer whole, a larger or chunked one left in resp as a body stream. head
// says the request was a HEAD, keep that it lets the connection be kept;
// w is its body still being written, or nil.
func (b *backend) readAnswer(c *bconn, resp *fasthttp.Response, head, keep bool, w *writing) error {
	status := resp.StatusCode()
	reuse := keep && !resp.ConnectionClose() && status != fasthttp.StatusSwitchingProtocols
	if head || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified ||
		status == fasthttp.StatusSwitchingProtocols {
		resp.SkipBody = true
		c.probe = true
		b.put(c, w.finish(c) && reuse)
		return nil
	}
	cl := resp.Header.ContentLength()
	if cl >= 0 && cl <= smallBody {
		resp.StreamBody = false
		if err := resp.ReadBody(c.br, smallBody); err != nil {
			return ioError(err)
		}
		b.put(c, w.finish(c) && reuse)
		return nil
	}
	s := &bodyStream{b: b, c: c, w: w, reuse: reuse && cl != -2, left: int64(cl)}
	switch cl {
	case -1: // chunked
		s.r = httputil.NewChunkedReader(c.br)
		s.chunked = true
	case -2: // until the instance closes
		s.r = c.br
		cl = -1
	default:
		s.r = c.br
	}
	resp.SetBodyStream(s, cl)
	return nil
}

// forwardInterim reports whether an interim answer with status s goes on
// to the client: never to an HTTP/1.0 one (RFC 9110, 15.2), nor a 100,
// which is the sidecar's own business (fasthttp's server answered the
// client's Expect: 100-continue itself, before the request went on). 101
// ends the interim answers and is no concern of this.
func forwardInterim(s int, http11 bool) bool {
	return http11 && s != fasthttp.StatusContinue
}

// bodyStream is an answer's body streaming from its connection; the
// connection goes back to the pool when all of it was read and fasthttp's
// server closes the stream.
type bodyStream struct {
	b       *backend
	c       *bconn
	w       *writing // the request's body still going out, or nil
	r       io.Reader
	chunked bool
	left    int64 // bytes left of a known Content-Length
	reuse   bool
	done    bool // the body ended where its framing said
}

func (s *bodyStream) Read(p []byte) (int, error) {
	if s.done {
		return 0, io.EOF
	}
	if s.left >= 0 && int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	if s.left >= 0 {
		s.left -= int64(n)
		if s.left == 0 {
			s.done = true
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	if err == io.EOF && s.chunked {
		// The last chunk is in: skip the trailer section (trailers are
		// not forwarded; Trailer is a hop-by-hop header here).
		if terr := skipTrailer(s.c.br); terr != nil {
			return n, terr
		}
		s.done = true
	}
	if err == io.EOF && s.left == -2 {
		s.done = true // identity body, read until the close
	}
	return n, err
}

// Close puts the connection back when the body was read to its end, and
// closes it otherwise.
func (s *bodyStream) Close() error {
	if s.c == nil {
		return nil
	}
	s.b.put(s.c, s.w.finish(s.c) && s.reuse && s.done)
	s.c = nil
	return nil
}

// skipTrailer reads the trailer section of a chunked body, up to the empty
// line that ends it.
func skipTrailer(br *bufio.Reader) error {
	for i := 0; i < 100; i++ {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if len(line) <= 2 && (len(line) == 1 || line[0] == '\r') {
			return nil
		}
	}
	return errors.New("chunked body: trailer section too long")
}

func isTimeout(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ioError maps a timeout to errTimeout.
// sendError is ioError for a failure to send a request: a connection
// the instance closed (or reset) shows as EPIPE or ECONNRESET once a
// request takes more than one write (a body over the 4 KiB buffer), and
// that is a stale connection, as an answer's EOF is (do).
func sendError(err error) error {
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("%w: %v", errStaleConn, err)
	}
	return ioError(err)
}

func ioError(err error) error {
	if isTimeout(err) {
		return fmt.Errorf("%w: %v", errTimeout, err)
	}
	return err
}
