//go:build !unix

package proxy

import (
	"bufio"
	"net"
)

// sendReader sends the request written into bw before the next read.
type sendReader struct {
	conn    net.Conn
	bw      *bufio.Writer
	pending bool
}

func newSendReader(c net.Conn, bw *bufio.Writer) *sendReader { return &sendReader{conn: c, bw: bw} }

func (r *sendReader) sendOnRead() { r.pending = true }

func (r *sendReader) send() error {
	if !r.pending {
		return nil
	}
	r.pending = false
	return r.bw.Flush()
}

func (r *sendReader) Read(p []byte) (int, error) {
	if err := r.send(); err != nil {
		return 0, err
	}
	return r.conn.Read(p)
}
