package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
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

// instanceSlack is how much longer than the caller an upload's instance is
// given to take the next bytes: a caller that stalls runs out of time
// first, and is the one blamed (a stalled upload must not eject a healthy
// instance).
const instanceSlack = time.Second

var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// takeBody reads req's body whole when it is at most bufferedBody, and
// returns nil; a larger one is returned as an upload, its first bytes read
// already if it came chunked. The error is the caller's: a body cut short
// or malformed, or too slow to arrive (the request not read within
// timeout).
func takeBody(req *fasthttp.Request, timeout time.Duration) (*upload, error) {
	if !req.IsBodyStream() {
		return nil, nil
	}
	stream, cl := req.BodyStream(), req.Header.ContentLength()
	if cl > bufferedBody {
		return &upload{r: stream, length: int64(cl), hdr: &req.Header, timeout: timeout}, nil
	}
	limit := int64(cl)
	if cl < 0 {
		limit = bufferedBody + 1
	}
	buf := bodyBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 2*bufferedBody {
			buf.Reset()
			bodyBuffers.Put(buf)
		}
	}()
	if cl > 0 {
		// ReadFrom wants MinRead free at the end. Not more than 64 KiB
		// ahead of what came: a caller that announces a megabyte and sends
		// nothing holds no megabyte.
		buf.Grow(min(cl, 64<<10) + bytes.MinRead)
	}
	n, err := buf.ReadFrom(io.LimitReader(stream, limit))
	switch {
	case err != nil:
		return nil, bodyError(err, timeout)
	case cl >= 0 && n < limit:
		return nil, bodyError(fmt.Errorf("ended after %d of its %d bytes", n, cl), timeout)
	case cl < 0 && n > bufferedBody:
		// Chunked, and larger than what is held: what was read goes first.
		first := bytes.Clone(buf.Bytes())
		return &upload{r: io.MultiReader(bytes.NewReader(first), stream), length: -1, hdr: &req.Header, timeout: timeout}, nil
	}
	// The chunked body's trailer section came with its end.
	dropTrailer(&req.Header)
	// ResetBody first: the stream's first bytes live in the request's body
	// buffer, which fasthttp must keep until it is done with the stream.
	req.ResetBody()
	req.SetBody(buf.Bytes())
	return nil, nil
}

// bodyError is the error of a request body the caller could not send, in
// a request to be read within timeout.
func bodyError(err error, timeout time.Duration) error {
	if isTimeout(err) {
		return sb.Errorf(sb.EDeadlineExceeded, "request body: not read within %s", timeout)
	}
	return sb.Errorf(sb.EInvalid, "request body: %s", unquoted(err))
}

// upload is a request body sent on as it arrives from the caller: the
// request's body stream while it is written to an instance.
type upload struct {
	r      io.Reader
	length int64 // the Content-Length, or -1: chunked
	hdr    *fasthttp.RequestHeader
	read   int64
	// timeout is the frontend's read timeout: how long each wait for the
	// body's next bytes may last, on either side.
	timeout time.Duration
	// err is the caller's failure to send the body, set by Read.
	err error
	// ended is when the body's last byte went out to the instance.
	ended time.Time

	// The deadlines of the caller's connection (reading) and of the
	// instance's (writing; with instRead, reading its answer too), pushed
	// on as the body moves (push).
	caller, inst net.Conn
	instRead     bool
	// frozen is set when the frontend shuts down: the deadlines stay, so
	// that an upload holds Shutdown no longer than one timeout.
	frozen   *atomic.Bool
	mu       sync.Mutex // guards halted, finished and pushed
	halted   bool       // halt was called: the writer is being stopped
	finished bool       // all of the body went out
	pushed   time.Time
}

// push moves the deadlines on to a timeout from now: each wait for the
// body's next bytes may last that long, however long the upload takes (as
// HAProxy's timeout client and server are). It does so at most once a
// second (or a quarter of the timeout), unless forced; never after halt or
// the body's end, nor once the frontend shuts down.
func (u *upload) push(force bool) {
	now := time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.halted || u.finished || (!force && now.Sub(u.pushed) < min(time.Second, u.timeout/4)) || (u.frozen != nil && u.frozen.Load()) {
		return
	}
	u.pushed = now
	_ = u.caller.SetReadDeadline(now.Add(u.timeout))
	by := now.Add(u.timeout + instanceSlack)
	if u.instRead {
		_ = u.inst.SetDeadline(by)
	} else {
		_ = u.inst.SetWriteDeadline(by)
	}
}

// halt ends a wait of the writer on the caller now, and keeps push from
// setting the deadline back.
func (u *upload) halt() {
	u.mu.Lock()
	u.halted = true
	u.mu.Unlock()
	_ = u.caller.SetReadDeadline(time.Now())
}

// isFinished reports whether all of the body went out.
func (u *upload) isFinished() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.finished
}

// isHalted reports whether halt was called.
func (u *upload) isHalted() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.halted
}

// Read reads the body from the caller. A failure is final: every later
// Read returns it, and the bytes that came with it are dropped. (fasthttp's
// chunked reader returns a chunk's data with the error of a malformed end
// of it, and its chunked writer sends data read with an error on and reads
// again: the stream would go on at the next chunk, and a request the
// caller sent broken would reach the instance whole.) A chunked body's
// trailer section, read with its end, is dropped, as from a body read
// whole: the request goes out chunked, and it would be sent on after it.
func (u *upload) Read(p []byte) (int, error) {
	if u.err != nil {
		return 0, u.err
	}
	n, err := u.r.Read(p)
	u.read += int64(n)
	switch {
	case err == nil:
		u.push(false)
		return n, nil
	case err == io.EOF && u.length >= 0 && u.read < u.length:
		err = io.ErrUnexpectedEOF
	case err == io.EOF:
		dropTrailer(u.hdr)
		return n, err
	}
	if isTimeout(err) {
		u.err = sb.Errorf(sb.EDeadlineExceeded, "request body: none of it came for %s", u.timeout)
	} else {
		u.err = bodyError(err, u.timeout)
	}
	return 0, u.err
}

// send sends req, whose body is up, to the instance over a new connection,
// and reads the answer into resp while the body goes out: an instance may
// answer before it has read all of it, or answer as it reads. Each wait
// for the body's next bytes may last the read timeout (push); timeout
// counts from its end. caller is the connection the body comes from. The
// error is the caller's (up.err) when it failed to send the body.
func (b *backend) send(req *fasthttp.Request, resp *fasthttp.Response, up *upload, caller net.Conn, timeout time.Duration) error {
	c, err := b.dial(time.Now().Add(up.timeout))
	if err != nil {
		return err
	}
	head, keep := req.Header.IsHead(), !req.Header.ConnectionClose() && req.Header.IsHTTP11()
	w := write(c, c.bw, req, up, caller, true, func() error { return c.SetReadDeadline(up.ended.Add(timeout)) })
	fail := func(err error) error {
		w.stop(c)
		if w.callers {
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
	return nil
}

// write starts writing req, whose body is up, to c through bw, and returns
// at once; the body is read from caller. instRead says c's answer is read
// under the deadline the body moves on (push). Once all of the body went
// out, ended is called. A body the caller failed to send closes c: the
// instance must see the request end short, not whole.
func write(c net.Conn, bw *bufio.Writer, req *fasthttp.Request, up *upload, caller net.Conn, instRead bool, ended func() error) *writing {
	req.SetBodyStream(up, int(up.length))
	w := &writing{done: make(chan struct{}), up: up}
	up.caller, up.inst, up.instRead = caller, c, instRead
	up.push(true)
	go func() {
		defer close(w.done)
		err := req.Write(bw)
		if err == nil {
			err = bw.Flush()
		}
		switch {
		case up.err != nil:
			w.callers = !up.isHalted()
			c.Close()
			err = up.err
		case err == nil:
			up.mu.Lock()
			up.finished, up.ended = true, time.Now()
			up.mu.Unlock()
			err = ended()
		}
		w.err = err
	}()
	return w
}

// writing is a request body being written to an instance while its answer
// is read.
type writing struct {
	done chan struct{}
	up   *upload
	// Set before done is closed: the writing's error, and whether it is
	// the caller's (a body cut short, malformed or stalled; not one that
	// stop cut).
	err     error
	callers bool
}

// stop ends the writing now, whatever it waits on: it stops reading the
// body from the caller (halt) and closes c, the connection to the
// instance.
func (w *writing) stop(c io.Closer) {
	w.up.halt()
	c.Close()
	<-w.done
}

// wait waits until the writing is over. A nil writing is.
func (w *writing) wait() {
	if w != nil {
		<-w.done
	}
}

// finish ends the writing once the answer is in: it waits for the rest of
// the body briefly (writeGrace), then stops it (stop). It reports whether
// all of the body went out, so that c can be reused. A nil writing has
// nothing to wait for.
func (w *writing) finish(c io.Closer) bool {
	if w == nil {
		return true
	}
	t := time.NewTimer(writeGrace)
	defer t.Stop()
	select {
	case <-w.done:
		return w.err == nil
	case <-t.C:
		w.stop(c)
		return false
	}
}

// streamUpload starts writing a request whose body streams (up) to an
// instance's connection taken over for an event stream or an upgrade,
// while the answer is read; client is the caller's connection, taken over
// too (fasthttp cleared its deadlines: write sets them again).
func streamUpload(client, backend net.Conn, req *fasthttp.Request, up *upload) *writing {
	caller := unwrap(client)
	return write(backend, bufio.NewWriterSize(backend, 4<<10), req, up, caller, false, func() error {
		// A stream has no timeout once the request is in.
		_ = caller.SetReadDeadline(time.Time{})
		return backend.SetWriteDeadline(time.Time{})
	})
}
