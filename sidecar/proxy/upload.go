package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	sb "github.com/switchboard-go/switchboard"
)

// bufferedBody is the largest request body read whole before the request
// goes on, so that it can be sent again to another instance (Envoy's
// default buffer limit). A larger one, with a Content-Length above it or
// chunked and turning out larger, streams to one instance as it arrives
// (an upload): it is sent again only when no connection to the instance
// could be made, since its bytes are gone once read.
const bufferedBody = 1 << 20

// writeGrace is how long an answer that came in whole waits for the rest
// of its request's body to go out before the connection is closed on it
// (net/http's transport waits as long before it reuses a connection).
const writeGrace = 50 * time.Millisecond

var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// takeBody reads req's body whole when it is at most bufferedBody, and
// returns nil; a larger one is returned as an upload, its first bytes read
// already if it came chunked. The error is the caller's: a body cut short
// or malformed, or too slow to arrive.
func takeBody(req *fasthttp.Request) (*upload, error) {
	if !req.IsBodyStream() {
		return nil, nil
	}
	stream, cl := req.BodyStream(), req.Header.ContentLength()
	if cl > bufferedBody {
		return &upload{r: stream, length: cl, hdr: &req.Header}, nil
	}
	limit := int64(cl)
	if cl < 0 {
		limit = bufferedBody + 1
	}
	buf := bodyBuffers.Get().(*bytes.Buffer)
	defer func() {
		buf.Reset()
		bodyBuffers.Put(buf)
	}()
	n, err := buf.ReadFrom(io.LimitReader(stream, limit))
	switch {
	case err != nil:
		return nil, bodyError(err)
	case cl >= 0 && n < limit:
		return nil, bodyError(fmt.Errorf("ended after %d of its %d bytes", n, cl))
	case cl < 0 && n > bufferedBody:
		// Chunked, and larger than what is held: what was read goes first.
		first := bytes.Clone(buf.Bytes())
		return &upload{r: io.MultiReader(bytes.NewReader(first), stream), length: -1, hdr: &req.Header}, nil
	}
	// The chunked body's trailer section came with its end.
	dropTrailer(&req.Header)
	// ResetBody first: the stream's first bytes live in the request's body
	// buffer, which fasthttp must keep until it is done with the stream.
	req.ResetBody()
	req.SetBody(buf.Bytes())
	return nil, nil
}

// bodyError is the error of a request body the caller could not send.
func bodyError(err error) error {
	if isTimeout(err) {
		return sb.Errorf(sb.EDeadlineExceeded, "request body: not read within %s", readTimeout)
	}
	return sb.Errorf(sb.EInvalid, "request body: %s", unquoted(err))
}

// upload is a request body sent on as it arrives from the caller: the
// request's body stream while it is written to an instance.
type upload struct {
	r      io.Reader
	length int // the Content-Length, or -1: chunked
	hdr    *fasthttp.RequestHeader
	read   int64
	// err is the caller's failure to send the body, set by Read.
	err error
	// ended is when the body's last byte went out to the instance.
	ended time.Time
}

// Read reads the body from the caller. A chunked body's trailer section,
// read with its end, is dropped, as from a body read whole: the request
// goes out chunked, and its trailer would be sent on after it.
func (u *upload) Read(p []byte) (int, error) {
	n, err := u.r.Read(p)
	u.read += int64(n)
	switch {
	case err == io.EOF && u.length >= 0 && u.read < int64(u.length):
		err = io.ErrUnexpectedEOF
	case err == io.EOF:
		dropTrailer(u.hdr)
		return n, err
	}
	if err != nil {
		u.err = bodyError(err)
	}
	return n, err
}

// send sends req, whose body is up, to the instance over a new connection,
// and reads the answer into resp while the body goes out: an instance may
// answer before it has read all of it, or answer as it reads. The body
// must be sent by bodyBy; timeout counts from its end. An answer that came
// in whole before the body was all sent ends the request: the rest of the
// body is not sent, and the connection is closed. The error is the
// caller's (up.err) when it failed to send the body.
func (b *backend) send(req *fasthttp.Request, resp *fasthttp.Response, up *upload, bodyBy time.Time, timeout time.Duration) error {
	c, err := b.dial(bodyBy)
	if err != nil {
		return err
	}
	head, keep := req.Header.IsHead(), !req.Header.ConnectionClose() && req.Header.IsHTTP11()
	if err := c.SetDeadline(bodyBy); err != nil {
		c.Close()
		return err
	}
	req.SetBodyStream(up, up.length)
	w := &writing{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		err := req.Write(c.bw)
		if err == nil {
			err = c.bw.Flush()
		}
		if err == nil {
			up.ended = time.Now()
			err = c.SetReadDeadline(up.ended.Add(timeout))
		}
		if up.err != nil {
			// The instance must see the request end short, not whole.
			c.Close()
		}
		w.err = err
	}()
	fail := func(err error) error {
		c.Close()
		<-w.done
		if up.err != nil {
			return up.err
		}
		return err
	}
	if _, err := readHead(c, resp, false); err != nil {
		return fail(err)
	}
	if err := b.readAnswer(c, resp, head, keep, w); err != nil {
		return fail(err)
	}
	select {
	case <-w.done:
	default:
		// The answer streams while the body still goes out (readAnswer
		// waited for a whole one): the caller's connection closes after
		// it, rather than have fasthttp read on what is left of the body
		// once the answer is sent.
		resp.SetConnectionClose()
	}
	return nil
}

// writing is a request body being written to an instance while its answer
// is read.
type writing struct {
	done chan struct{}
	err  error // set before done is closed
}

// finish waits for the body to go out, briefly, once the answer is in
// (writeGrace), and closes the connection on it after that. It reports
// whether all of the body went out, so that the connection can be reused.
// A nil writing has nothing to wait for.
func (w *writing) finish(c *bconn) bool {
	if w == nil {
		return true
	}
	t := time.NewTimer(writeGrace)
	defer t.Stop()
	select {
	case <-w.done:
		return w.err == nil
	case <-t.C:
		c.Close()
		<-w.done
		return false
	}
}

// sendStreamed writes req, whose body streams, to an instance's connection
// taken over for a stream; the body must be sent by bodyBy.
func sendStreamed(c net.Conn, req *fasthttp.Request, bodyBy time.Time) error {
	if err := c.SetWriteDeadline(bodyBy); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(c, 4<<10)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return err
	}
	return c.SetWriteDeadline(time.Time{})
}
