//go:build !unix

package proxy

// readSending sends what bw holds, then reads as Go does.
func (r *sendReader) readSending(p []byte) (int, error) {
	if err := r.bw.Flush(); err != nil {
		return 0, err
	}
	return r.conn.Read(p)
}
