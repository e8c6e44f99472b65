package atlas

import (
	"context"
	"net"
	"sync"
)

// Listener wraps the listener Atlas serves on so that each answer up to
// 64 KiB leaves in one write. net/http writes through a 4 KiB buffer, so an
// answer larger than that leaves in two writes or more, and on loopback a write
// costs the sender the receiver's side of TCP as well: a 9 KB blocking
// query answer to 1,000 watchers was 2,000 writes instead of 1,000, and
// Atlas spent about 12% more CPU on it (bench/README.md, session 4).
// Serve HTTPServer on it; HTTPServer's ConnContext lets the handlers find
// the connection. What does not come from writeJSON (the event stream,
// /metrics) is written as net/http writes it.
func Listener(ln net.Listener) net.Listener { return coalescingListener{ln} }

type coalescingListener struct{ net.Listener }

func (l coalescingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &coalescingConn{Conn: c}, nil
}

// coalescingConn keeps the writes made between hold and release and sends
// them as one. Over HTTP/1.1 only the goroutine serving a connection
// writes to it, so it needs no lock.
type coalescingConn struct {
	net.Conn
	held *[]byte // nil unless holding
}

var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func (c *coalescingConn) Write(p []byte) (int, error) {
	if c.held != nil {
		*c.held = append(*c.held, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close the connection before it closes it
// (after a 431, or with a request body left unread), as it does a bare
// *net.TCPConn, so that the client reads the answer rather than a reset.
func (c *coalescingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (c *coalescingConn) hold() { c.held = heldPool.Get().(*[]byte) }

// release writes what was held. net/http has been told those writes
// succeeded, so when this one fails the connection is closed, as net/http
// itself closes a connection after a failed write, and the client sees
// the answer cut off rather than a stream that carries on corrupt.
func (c *coalescingConn) release() {
	b := c.held
	c.held = nil
	if _, err := c.Conn.Write(*b); err != nil {
		c.Conn.Close()
	}
	if cap(*b) <= maxHeld+4<<10 {
		*b = (*b)[:0]
		heldPool.Put(b)
	}
}

// Answers are held only when their body is over minHeld (under it the
// answer fits net/http's buffer and leaves in one write anyway) and at
// most maxHeld: a larger answer leaves in a few writes, as net/http writes
// it, rather than be copied once more for every connection it goes to.
const (
	minHeld = 3 << 10
	maxHeld = 64 << 10
)

type connKey struct{}

// connContext is HTTPServer's ConnContext.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if cc, ok := c.(*coalescingConn); ok {
		return context.WithValue(ctx, connKey{}, cc)
	}
	return ctx
}
