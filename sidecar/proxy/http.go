package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
	"github.com/switchboard-go/switchboard/internal/rawio"
)

// DefaultTimeout bounds a request that names no Switchboard-Timeout.
const DefaultTimeout = 30 * time.Second

// MinTimeout and MaxTimeout bound the Switchboard-Timeout accepted.
const (
	MinTimeout = sb.MinTimeout
	MaxTimeout = sb.MaxTimeout
)

// Limits of the frontend's reading: a request's header must fit the read
// buffer, and the whole request, body included, arrive within the timeout.
const (
	readBufferSize     = 16 << 10
	defaultReadTimeout = 2 * time.Minute
)

// HTTP is the sidecar's HTTP frontend. Requests are served with fasthttp
// (the standard library's proxy reaches half of HAProxy's rate on this
// path); Server-Sent Events and protocol upgrades are handed a raw
// connection to one instance and piped both ways.
type HTTP struct {
	// Table holds the pools. Required.
	Table *Table
	// Budget caps retries; nil means the SPEC's default budget.
	Budget *balance.Budget
	// Timeout is the default per-request timeout; zero means 30 s. It
	// covers the whole exchange except for streams and upgrades.
	Timeout time.Duration
	// FirstWatch bounds the wait for the instances of a service asked for
	// the first time. Zero means 5 s.
	FirstWatch time.Duration
	// Observe is told of every request answered (metrics); may be nil.
	Observe func(service string, code int, d time.Duration, retries int)
	// Logger receives the few things worth logging; nil discards.
	Logger *slog.Logger
	// LocalBrowsersOnly refuses a browser's request (one with Origin or
	// Sec-Fetch-Site) from another site, or whose Origin or Host is not
	// an IP address or a localhost name: for a frontend on a laptop
	// (switchboard dev), where a page of any site, or one whose name an
	// attacker points at 127.0.0.1, could otherwise call every service.
	// Off elsewhere: a gateway service often sends its callers' Origin on.
	LocalBrowsersOnly bool

	// readTimeout bounds the reading of a request, body included, and
	// each wait for an upload's next bytes; zero means defaultReadTimeout
	// (tests shorten it).
	readTimeout time.Duration
	// shutting is set when Shutdown begins: uploads' deadlines stop
	// moving on.
	shutting atomic.Bool

	once sync.Once
	srv  *fasthttp.Server
	// mu guards lns, streams, conns and closed. Shutdown closes every
	// listener given to Serve, so that a Serve that starts after or
	// during it returns, and both ends of every stream (fasthttp does not
	// know of them once hijacked); ShutdownContext closes the conns whose
	// calls outlast its ctx.
	mu      sync.Mutex
	lns     []*acceptListener
	streams map[net.Conn]struct{}
	conns   map[net.Conn]struct{}
	closed  bool
	// pending holds, per client connection given to a hijack handler that
	// has not run yet, what to release if it never does (hijack).
	pending sync.Map
}

// Serve serves the frontend on ln until Shutdown.
func (h *HTTP) Serve(ln net.Listener) error {
	h.once.Do(h.setup)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		ln.Close()
		return nil
	}
	al := keepAccepting(ln, h.Logger, "frontend")
	h.lns = append(h.lns, al)
	h.mu.Unlock()
	return h.srv.Serve(rawio.Listener(al))
}

// AcceptErr returns the error of the accepts that fail now on a listener
// Serve was given (too many open files, say), or nil.
func (h *HTTP) AcceptErr() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ln := range h.lns {
		if err := ln.Err(); err != nil {
			return err
		}
	}
	return nil
}

// setup fills the defaults and builds the server, once, whichever of Serve
// and Shutdown comes first.
func (h *HTTP) setup() {
	if h.Budget == nil {
		h.Budget = &balance.Budget{}
	}
	if h.Timeout == 0 {
		h.Timeout = DefaultTimeout
	}
	if h.FirstWatch == 0 {
		h.FirstWatch = 5 * time.Second
	}
	if h.Logger == nil {
		h.Logger = slog.New(slog.DiscardHandler)
	}
	if h.readTimeout == 0 {
		h.readTimeout = defaultReadTimeout
	}
	h.srv = &fasthttp.Server{
		Handler:                      h.serve,
		Name:                         "",
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		NoDefaultDate:                true,
		DisablePreParseMultipartForm: true,
		ReadBufferSize:               readBufferSize,
		// Bodies are read by the handler, once the request is routed:
		// whole up to bufferedBody, streamed beyond (takeBody). fasthttp
		// reads at most 8 KiB of one before it calls the handler.
		StreamRequestBody:  true,
		MaxRequestBodySize: bufferedBody,
		IdleTimeout:        2 * time.Minute,
		ReadTimeout:        h.readTimeout,
		CloseOnShutdown:    true,
		Logger:             fasthttpLogger{h.Logger},
		ErrorHandler:       h.readError,
		ConnState:          h.connState,
		// Errors leave the request's bytes (its Authorization header,
		// say) out of their messages, which are logged and answered.
		SecureErrorLogMessage: true,
	}
}

// Shutdown stops accepting and waits for requests in progress.
func (h *HTTP) Shutdown() error { return h.ShutdownContext(context.Background()) }

// ShutdownContext is Shutdown, waiting for requests in progress only until
// ctx ends: then it closes the connections of those still running, so
// that a call to an instance that takes its time (Switchboard-Timeout
// allows an hour) does not hold the sidecar's exit, and returns ctx's
// error.
func (h *HTTP) ShutdownContext(ctx context.Context) error {
	h.once.Do(h.setup)
	h.shutting.Store(true)
	h.mu.Lock()
	h.closed = true
	for _, ln := range h.lns {
		ln.Close()
	}
	for c := range h.streams {
		c.Close()
	}
	h.mu.Unlock()
	// fasthttp closes its listeners again: that they are closed already
	// is no error.
	err := h.srv.ShutdownWithContext(ctx)
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		h.mu.Lock()
		n := len(h.conns)
		for c := range h.conns {
			c.Close()
		}
		h.mu.Unlock()
		if n > 0 {
			h.Logger.Warn("sidecar: calls still running when the frontend's drain ran out were cut off", "connections", n)
		}
		return err
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("proxy: " + fmt.Sprintf(format, args...))
}

var http11 = []byte("HTTP/1.1")

var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// stripHopRequest removes the hop-by-hop headers of a request, including
// those that Connection names. Most requests carry none: it looks before
// it deletes.
func stripHopRequest(h *fasthttp.RequestHeader) {
	found := false
	for _, k := range hopHeaders {
		if len(h.Peek(k)) > 0 {
			found = true
			break
		}
	}
	if !found {
		return
	}
	// Every Connection header counts, not only the first (Peek's): the
	// names are copied out before any is deleted.
	var named []string
	for _, c := range h.PeekAll("Connection") {
		for _, f := range strings.Split(string(c), ",") {
			if f = strings.TrimSpace(f); f != "" && !framing(f) {
				named = append(named, f)
			}
		}
	}
	for _, f := range named {
		h.Del(f)
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

// stripHopResponse removes the hop-by-hop headers of an answer, including
// those that Connection names, whatever their case (answers keep the
// instance's header case).
func stripHopResponse(h *fasthttp.ResponseHeader) {
	var named []string
	found := false
	for k, v := range h.All() {
		if !hopHeader(k) {
			continue
		}
		found = true
		if bytes.EqualFold(k, []byte("Connection")) {
			for _, f := range strings.Split(string(v), ",") {
				if f = strings.TrimSpace(f); f != "" && !framing(f) {
					named = append(named, f)
				}
			}
		}
	}
	if !found {
		return
	}
	var del [][]byte
	for k := range h.All() {
		if hopHeader(k) || slices.ContainsFunc(named, func(n string) bool { return strings.EqualFold(n, string(k)) }) {
			del = append(del, bytes.Clone(k))
		}
	}
	for _, k := range del {
		h.DelBytes(k)
	}
}

// framing reports whether a header that Connection names stays, whatever
// Connection says: Host, which the instance gets byte for byte, and
// Content-Length, which frames the message (Transfer-Encoding is a hop
// header, and the body's framing is the proxy's anyway). Deleting them
// rewrote Host to the service's name and an answer's length to 0; HAProxy
// keeps them too.
func framing(name string) bool {
	return strings.EqualFold(name, "Host") || strings.EqualFold(name, "Content-Length")
}

// hopHeader reports whether k, in any case, is one of hopHeaders.
func hopHeader(k []byte) bool {
	switch len(k) {
	case 2, 7, 10, 16, 17, 18, 19:
		for _, h := range hopHeaders {
			if len(h) == len(k) && bytes.EqualFold(k, []byte(h)) {
				return true
			}
		}
	}
	return false
}

// writeError answers with Switchboard's JSON error body.
func writeError(ctx *fasthttp.RequestCtx, err error) int {
	code := sb.ErrorCode(err)
	return writeErrorStatus(ctx, sb.HTTPStatus(code), code, sb.ErrorMessage(err))
}

// writeErrorStatus answers with Switchboard's JSON error body and a status
// of the caller's choosing.
func writeErrorStatus(ctx *fasthttp.RequestCtx, status int, code, message string) int {
	body, _ := json.Marshal(map[string]sb.Error{"error": {Code: code, Message: message}})
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(status)
	ctx.Response.Header.SetContentType("application/json")
	ctx.Response.Header.Set("X-Switchboard-Error", "1")
	ctx.Response.SetBody(append(body, '\n'))
	return status
}

// readError answers a request fasthttp could not read (a malformed or
// oversized request, or one too slow to arrive) with the same JSON error
// body as the sidecar's other answers; fasthttp then closes the connection.
func (h *HTTP) readError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	var status int
	switch {
	case errors.As(err, &small):
		status = writeErrorStatus(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, sb.ETooLarge,
			fmt.Sprintf("request header: larger than the sidecar's limit of %d KiB", readBufferSize>>10))
	case errors.As(err, &ne) && ne.Timeout():
		status = writeErrorStatus(ctx, fasthttp.StatusRequestTimeout, sb.EDeadlineExceeded,
			fmt.Sprintf("request: not read within %s", h.readTimeout))
	default:
		status = writeErrorStatus(ctx, fasthttp.StatusBadRequest, sb.EInvalid, "malformed request: "+unquoted(err))
	}
	// fasthttp sets no request time for a request it could not read:
	// ctx.Time() is the zero time on a connection's first request (and
	// the previous request's start on a later one). The answer is
	// counted as given at once.
	h.observe("", status, time.Now(), 0)
}

// unquoted is err's message up to the first bytes of the request it
// quotes: SecureErrorLogMessage leaves out the buffer, but fasthttp still
// quotes the header value or line it could not read ("invalid header value
// \"Bearer ...\""), whatever secret it holds.
func unquoted(err error) string {
	msg := err.Error()
	if i := strings.IndexByte(msg, '"'); i >= 0 {
		msg = strings.TrimRight(msg[:i], " :")
	}
	return msg
}

func badGateway(format string, args ...any) error {
	return sb.Errorf(sb.EBadGateway, format, args...)
}

func gatewayTimeout(format string, args ...any) error {
	return sb.Errorf(sb.EDeadlineExceeded, format, args...)
}

func (h *HTTP) serve(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	defer h.lingerUnread(ctx)
	if err := malformed(&ctx.Request.Header); err != nil {
		// What fasthttp reads leniently where net/http refuses: refused,
		// and the connection closed, since where the next request starts
		// is then in doubt.
		status := writeError(ctx, err)
		ctx.SetConnectionClose()
		h.observe("", status, start, 0)
		return
	}
	dropTrailer(&ctx.Request.Header)
	var pool *balance.Pool
	// The Host header; for a request target in absolute form
	// (http://host/path), the target's host, as RFC 9112 says.
	host := ctx.Request.Header.Host()
	if !originForm(ctx.Request.Header.RequestURI()) {
		host = ctx.Host()
	}
	if h.LocalBrowsersOnly {
		if err := foreignPage(&ctx.Request.Header, host); err != nil {
			h.observe("", writeError(ctx, err), start, 0)
			return
		}
	}
	named := ctx.Request.Header.Peek(ServiceHeader)
	var err error
	if name, ok := serviceOfFast(named, host); ok {
		pool, err = h.Table.RouteBytes(name)
	} else {
		var service string
		if service, err = ServiceOf(string(named), string(host)); err == nil {
			pool, err = h.Table.Route(service)
		}
	}
	if err != nil {
		h.observe("", writeError(ctx, err), start, 0)
		return
	}
	// Status 0: the answer is observed when it is in (interim).
	if status, retries := h.route(ctx, pool, start, len(named) > 0); status != 0 {
		h.observe(pool.Service, status, start, retries)
	}
}

func (h *HTTP) observe(service string, code int, start time.Time, retries int) {
	if h.Observe != nil {
		h.Observe(service, code, time.Since(start), retries)
	}
}

func where(p *balance.Pool) string { return fmt.Sprintf("service %s in realm %s", p.Service, p.Realm) }

// unroutable is the 503 of a pool with no instance to send to, and why.
func unroutable(p *balance.Pool) error {
	return sb.Errorf(sb.EUnavailable, "%s has no routable instance: %s", where(p), p.Unroutable())
}

// next picks the instance to try next, one not tried yet. When none is
// left, it answers the call (503 when none was tried, else 502 with the
// last try's error) and returns nil and the status sent.
func next(ctx *fasthttp.RequestCtx, pool *balance.Pool, tried []*balance.Endpoint, lastErr error) (*balance.Endpoint, int) {
	if e := pool.Pick(tried); e != nil {
		return e, 0
	}
	if len(tried) == 0 {
		return nil, writeError(ctx, unroutable(pool))
	}
	return nil, writeError(ctx, badGateway("%s: every try failed, the last with: %v", where(pool), lastErr))
}

// route sends the request to an instance of the pool's service and copies
// the answer back. It returns the status sent and how many retries it
// took.
func (h *HTTP) route(ctx *fasthttp.RequestCtx, pool *balance.Pool, now time.Time, named bool) (int, int) {
	timeout := h.Timeout
	timed := false
	if v := ctx.Request.Header.Peek(TimeoutHeader); len(v) > 0 {
		timed = true
		d, err := sb.ParseTimeout(string(v))
		if err != nil {
			return writeError(ctx, err), 0
		}
		timeout = d
	}
	deadline := now.Add(timeout)
	// tryStart is when the instance tried began to wait: the call's start,
	// unless the call waited for Atlas or for earlier tries.
	tryStart := now
	select {
	case <-pool.Ready():
	default:
		// The first call to a service waits for Atlas's first answer.
		t := time.NewTimer(min(h.FirstWatch, timeout))
		select {
		case <-pool.Ready():
			t.Stop()
			tryStart = time.Now()
		case <-t.C:
			return writeError(ctx, sb.Errorf(sb.EUnavailable, "%s: no answer from Atlas about it yet", where(pool))), 0
		}
	}
	if err := pool.Denied(); err != nil {
		return writeError(ctx, err), 0
	}
	// The body is read once the call is routed and allowed: whole when it
	// is small, so that it can be sent again; a larger one streams.
	var up *upload
	if ctx.Request.IsBodyStream() {
		read := time.Now()
		var err error
		if up, err = takeBody(&ctx.Request, h.readTimeout); err != nil {
			return h.callerFailed(ctx, err), 0
		}
		if up != nil {
			up.frozen = &h.shutting
		} else {
			// The timeout counts from the request's end.
			d := time.Since(read)
			deadline, tryStart = deadline.Add(d), tryStart.Add(d)
		}
	}
	if isStream(&ctx.Request.Header) {
		h.stream(ctx, pool, up, timeout, timed, now)
		return 0, 0 // observed when the answer is in
	}

	// The request goes out as it came in (no copy), less the hop-by-hop
	// headers and the ones meant for the sidecar; the answer is read into
	// ctx.Response and streamed to the client by fasthttp's server.
	req := &ctx.Request
	clientClose, client11 := req.Header.ConnectionClose(), req.Header.IsHTTP11()
	stripHopRequest(&req.Header)
	if named {
		req.Header.Del(ServiceHeader)
	}
	if timed {
		req.Header.Del(TimeoutHeader)
	}
	setForwardedFor(&req.Header, ctx.RemoteIP())
	asReceived(req, pool.Service)

	h.Budget.Request()
	if up != nil {
		return h.upload(ctx, pool, up, timeout, timed, clientClose, client11)
	}
	replayable := idempotent(ctx.Method()) || len(req.Header.Peek("Idempotency-Key")) > 0
	resp := &ctx.Response
	var tried []*balance.Endpoint
	var lastErr error
	retries := 0
	for {
		e, status := next(ctx, pool, tried, lastErr)
		if e == nil {
			return status, retries
		}
		tried = append(tried, e)
		done := pool.Acquire(e)
		// A pooled connection's idle time counts to the try's start: a
		// body that took seconds to come must not make a connection the
		// instance has closed meanwhile look just used (backend.get).
		started, err := backendOf(e).do(req, resp, deadline, tryStart, replayable, client11)
		if started != nil {
			// The request leaves the in-flight count with its first
			// answer, as it does with a final answer's head; the outcome
			// is reported when the final answer is in.
			done(balance.Abandoned)
			h.interim(ctx, pool, e, started, timeout, timed, now, tryStart, retries)
			return 0, retries
		}
		if err == nil {
			status = resp.StatusCode()
			// The request leaves the in-flight count when its answer's
			// headers are in: a streamed body goes on without it.
			done(balance.StatusOutcome(status))
			h.answer(ctx, clientClose, client11)
			return status, retries
		}
		lastErr = err
		resp.Reset()
		if errors.Is(err, errTimeout) || time.Now().After(deadline) {
			done(balance.TimedOut(timed, time.Since(tryStart)))
			return writeError(ctx, gatewayTimeout("%s: no answer within %s", where(pool), timeout)), retries
		}
		// A connection that failed before any byte was sent is safe to
		// retry for every method; any other failure only when the
		// request is idempotent. That includes a small answer whose body
		// was cut short (an instance killed mid-answer): it is read whole
		// before any of it goes on, so the caller has seen none of it,
		// and for the caller its answer never started (the SPEC's rule).
		done(balance.Failed)
		if !(isDialError(err) || replayable) || !h.Budget.Retry() {
			return writeError(ctx, badGateway("%s: %v", where(pool), err)), retries
		}
		retries++
		tryStart = time.Now()
	}
}

// answer readies the instance's answer, in ctx.Response, for the client;
// clientClose and client11 are what the request said (Connection: close,
// HTTP/1.1).
func (h *HTTP) answer(ctx *fasthttp.RequestCtx, clientClose, client11 bool) {
	resp := &ctx.Response
	stripHopResponse(&resp.Header)
	if !resp.Header.IsHTTP11() {
		// The answer goes out in the sidecar's HTTP/1.1, as net/http's
		// proxy sends it: fasthttp would keep the instance's HTTP/1.0
		// status line over a chunked body, which HTTP/1.0 readers take as
		// the body itself, read until a close that never comes.
		resp.Header.SetProtocol(http11)
	}
	if clientClose {
		ctx.SetConnectionClose()
	}
	if !client11 && resp.IsBodyStream() && resp.Header.ContentLength() < 0 {
		h.closeDelimited(ctx)
	}
}

// upload sends a request whose body streams (takeBody) to an instance of
// the pool's service. It is tried on another instance only when no
// connection to the first could be made: the body's bytes are gone once
// read. The timeout counts from the body's end.
func (h *HTTP) upload(ctx *fasthttp.RequestCtx, pool *balance.Pool, up *upload, timeout time.Duration, timed bool,
	clientClose, client11 bool) (int, int) {
	req, resp := &ctx.Request, &ctx.Response
	var tried []*balance.Endpoint
	var lastErr error
	retries := 0
	for {
		e, status := next(ctx, pool, tried, lastErr)
		if e == nil {
			return status, retries
		}
		tried = append(tried, e)
		done := pool.Acquire(e)
		err := backendOf(e).send(req, resp, up, ctx.Conn(), timeout)
		if err == nil {
			status = resp.StatusCode()
			done(balance.StatusOutcome(status))
			h.answer(ctx, clientClose, client11)
			if !up.isFinished() {
				// The answer came before all of the body went out (and
				// may stream while the rest still does): the caller's
				// connection closes after it, rather than fasthttp read
				// on what is left of the body (a closed connection is
				// also what makes it leave alone the body's stream,
				// which the writing may still read).
				h.linger(ctx)
			}
			return status, retries
		}
		resp.Reset()
		switch {
		case up.err != nil && err == up.err:
			done(balance.Abandoned) // the caller's doing
			status = h.callerFailed(ctx, err)
		case isDialError(err):
			done(balance.Failed)
			lastErr = err
			if h.Budget.Retry() {
				retries++
				continue // none of the body was read: it can go elsewhere
			}
			status = writeError(ctx, badGateway("%s: %v", where(pool), err))
		case errors.Is(err, errTimeout) && up.ended.IsZero():
			done(balance.Failed) // hung: not reading
			status = writeError(ctx, gatewayTimeout("%s: the instance took none of the request's body for %s", where(pool), h.readTimeout))
		case errors.Is(err, errTimeout):
			done(balance.TimedOut(timed, time.Since(up.ended)))
			status = writeError(ctx, gatewayTimeout("%s: no answer within %s of the request's end", where(pool), timeout))
		default:
			done(balance.Failed)
			status = writeError(ctx, badGateway("%s: %v", where(pool), err))
		}
		if !up.isFinished() {
			h.linger(ctx)
		}
		return status, retries
	}
}

// callerFailed answers a request whose body the caller failed to send
// (cut short, malformed, or too slow to arrive), and closes the
// connection (linger): where the next request would start is unknown.
func (h *HTTP) callerFailed(ctx *fasthttp.RequestCtx, err error) int {
	status := fasthttp.StatusRequestTimeout
	if code := sb.ErrorCode(err); code == sb.EDeadlineExceeded {
		writeErrorStatus(ctx, status, code, sb.ErrorMessage(err))
	} else {
		status = writeError(ctx, err)
	}
	h.linger(ctx)
	return status
}

// closeDelimited sends an answer of unknown length (chunked by the
// instance, or read until it closes) to an HTTP/1.0 client, which knows no
// chunked coding: without Transfer-Encoding, its end the close of the
// connection, as net/http's server sends it. fasthttp would write any body
// stream of unknown length chunked, whatever the request's version
// (Response.writeBodyStream).
func (h *HTTP) closeDelimited(ctx *fasthttp.RequestCtx) { h.takeOver(ctx, true) }

// linger closes the caller's connection after the answer to a request
// whose body was not all read (takeOver), unless that is done already.
func (h *HTTP) linger(ctx *fasthttp.RequestCtx) {
	if !ctx.Hijacked() {
		h.takeOver(ctx, false)
	}
}

// lingerUnread closes the caller's connection gracefully (linger) after
// an answer given while much of the request's body was not read: the
// sidecar's own (no instance, a refusal, a bad header), or one an upload
// did not linger after. fasthttp reads and drops up to 256 KiB of a body
// left unread, and closes the connection at once when more may be left,
// which sends the caller a reset that can overtake the answer: a caller
// still sending a large body saw "connection reset", not the 503.
func (h *HTTP) lingerUnread(ctx *fasthttp.RequestCtx) {
	if ctx.Hijacked() || !ctx.Request.IsBodyStream() {
		return
	}
	switch up, ok := ctx.Request.BodyStream().(*upload); {
	case ok:
		if up.isFinished() {
			return
		}
	case ctx.Request.Header.ContentLength() >= 0:
		if ctx.Request.Header.ContentLength() <= maxDrained {
			return // fasthttp drops it and keeps the connection
		}
	default:
		// Chunked: its size is known once read. One within what
		// fasthttp would drop is read here, as fasthttp would read it,
		// and the connection kept.
		if _, err := io.CopyN(io.Discard, ctx.Request.BodyStream(), maxDrained+1); err == io.EOF {
			return
		}
	}
	h.linger(ctx)
}

// maxDrained is how much of an unread request body fasthttp's server reads
// and drops to keep the connection (its maxUnreadStreamBodySize).
const maxDrained = 256 << 10

// lingerTime is how long a caller's connection is read from, and what
// comes dropped, after the answer the sidecar closes it with (takeOver;
// net/http's server waits 500 ms).
const lingerTime = 500 * time.Millisecond

// takeOver sends the answer in ctx.Response on the caller's connection,
// taken over once fasthttp has sent the answers before this one, and then
// closes the connection. With closeDelimited, the answer's end is that
// close (closeDelimited). The close is a graceful one: closed with unread
// bytes, a connection sends the caller a reset, which can overtake the
// answer (a caller still sending its body would see the reset, not the
// answer). As net/http's server does, the connection is half-closed once
// the answer is out, and what the caller sends is read and dropped for
// lingerTime before it is closed. (fasthttp closes at once: a connection
// it closes does not reach a hijack handler.)
func (h *HTTP) takeOver(ctx *fasthttp.RequestCtx, closeDelimited bool) {
	resp := &ctx.Response
	if closeDelimited {
		resp.Header.SetContentLength(-2) // Connection: close
	} else {
		resp.SetConnectionClose()
	}
	body, _ := resp.BodyStream().(*bodyStream)
	h.hijack(ctx, func() { _ = resp.CloseBodyStream() }, func(client net.Conn) {
		// Closed before this returns, and fasthttp takes back the
		// caller's connection: an upload still being written reads from
		// it until then (bodyStream.Close ends it).
		defer func() { _ = resp.CloseBodyStream() }()
		if body != nil {
			if !h.track(true, client, body.c.Conn) {
				return
			}
			defer h.track(false, client, body.c.Conn)
			if body.w != nil {
				// fasthttp cleared the connection's deadlines on taking
				// it over; an upload still going out sets its own again.
				body.w.up.push(true)
			}
		}
		var err error
		if closeDelimited {
			if _, err = client.Write(resp.Header.Header()); err == nil {
				err = resp.BodyWriteTo(client)
			}
		} else {
			bw := bufio.NewWriterSize(client, 4<<10)
			if err = resp.Write(bw); err == nil {
				err = bw.Flush()
			}
		}
		if err != nil {
			return
		}
		_ = resp.CloseBodyStream() // the upload is over before its caller is read
		c := unwrap(client)
		closeWrite(c)
		_ = c.SetReadDeadline(time.Now().Add(lingerTime))
		_, _ = io.Copy(io.Discard, client)
	})
}

// interim sends on an instance's interim (1xx) answer, now in ctx.Response,
// then the rest of its answer, read from c. fasthttp writes answers through
// a buffer that may still hold the answers to requests pipelined before
// this one (it flushes only when no further request is buffered), and
// gives a handler no way to flush it: a 1xx written to the connection from
// here (as RequestCtx.EarlyHints writes one) could overtake them. The
// connection is taken over instead, which flushes them first; the answer
// is relayed as a stream's, and the connection closed after it. Only
// answers with an interim answer to send on take this path; the answer is
// observed when it is in.
func (h *HTTP) interim(ctx *fasthttp.RequestCtx, pool *balance.Pool, e *balance.Endpoint, c *bconn,
	timeout time.Duration, timed bool, start, tryStart time.Time, retries int) {
	rh := &ctx.Response.Header
	bodyless := ctx.Request.Header.IsHead()
	h.hijack(ctx, func() { c.Close() }, func(client net.Conn) {
		outcome, status, observed := balance.Abandoned, 0, false
		answered := func(st int) {
			observed = true
			h.observe(pool.Service, st, start, retries)
		}
		defer func() {
			pool.Report(e, outcome)
			if !observed && status != 0 {
				h.observe(pool.Service, status, start, retries)
			}
		}()
		defer c.Close()
		status = rh.StatusCode()
		if !h.track(true, client, c.Conn) {
			return // shut down first
		}
		defer h.track(false, client, c.Conn)
		stripHopResponse(rh)
		if _, err := client.Write(rh.Header()); err != nil {
			return
		}
		var err error
		outcome, err = relay(client, c.Conn, c.br, rh, bodyless, true, false, nil, answered)
		switch {
		case err == nil:
		case isTimeout(err):
			// As in route; an answer that began stays answered.
			if balance.TimedOut(timed, time.Since(tryStart)) == balance.Abandoned {
				outcome = balance.Abandoned
			}
			status = writeRawError(client, gatewayTimeout("%s: no answer within %s", where(pool), timeout))
		default:
			status = writeRawError(client, badGateway("%s: %v", where(pool), err))
		}
	})
}

// dropTrailer discards the trailer section of a chunked request. The
// request goes on with a Content-Length, where trailer fields have no
// place: RFC 9110, 6.5.1 lets a recipient that removes the chunked coding
// discard them, and forbids merging them into the header section. fasthttp
// would merge them, so that a client could add a header after the body:
// one the sidecar never saw, or one it routes by when the header section
// lacks it (Switchboard-Service, Switchboard-Timeout).
func dropTrailer(h *fasthttp.RequestHeader) {
	keys := h.PeekTrailerKeys()
	if len(keys) == 0 {
		return
	}
	// The header-section values of the names the trailer used, which
	// deleting the names removes too.
	var keep [][2][]byte
	for k, v := range h.AllInOrder() {
		if slices.ContainsFunc(keys, func(t []byte) bool { return bytes.EqualFold(t, k) }) {
			keep = append(keep, [2][]byte{bytes.Clone(k), bytes.Clone(v)})
		}
	}
	for _, k := range slices.Clone(keys) {
		h.DelBytes(k)
	}
	h.Del("Trailer")
	for _, kv := range keep {
		h.AddBytesKV(kv[0], kv[1])
	}
}

// malformed returns an error for a request that fasthttp reads but that is
// not valid HTTP/1.1 in a way that matters to a proxy: a request target
// with a fragment, a bad percent-escape or a control byte (fasthttp would
// send it on changed), or a transfer coding other than chunked.
func malformed(h *fasthttp.RequestHeader) error {
	if h.IsConnect() {
		return sb.Errorf(sb.EInvalid, "CONNECT: the sidecar does not tunnel; give the upstream a listen address for TCP")
	}
	target := h.RequestURI()
	if i := badTargetByte(target); i >= 0 {
		return sb.Errorf(sb.EInvalid, "request target: byte %d of %q is not allowed there (a fragment, a bad %%-escape in the path or a control byte)", i, target)
	}
	if te := unsupportedTE(h.RawHeaders()); te != nil {
		return sb.Errorf(sb.EInvalid, "Transfer-Encoding: only chunked is supported, got %q", te)
	}
	for name := range h.All() {
		if !isToken(name) {
			// fasthttp takes "X Foo: bar" and would send it on; a server
			// that stops reading the header section there misses what
			// follows, X-Forwarded-For among it. net/http's server
			// refuses it too.
			return sb.Errorf(sb.EInvalid, "header field name %q: not a token (RFC 9110, 5.1: letters, digits and !#$%%&'*+-.^_`|~)", name)
		}
	}
	return nil
}

// foreignPage returns why a browser's request comes from a page that may
// not call through the frontend (LocalBrowsersOnly), or nil. A page of the
// machine (its Origin an IP address or a localhost name) may call; one of
// another site may follow a link or read what CORS lets it (safe methods
// only), not write. Sec-Fetch-Site alone cannot tell: localhost is not a
// public suffix, so to a browser web.localhost and api.localhost are
// different sites. Every request must name the frontend by an IP address
// or a localhost name: under any other name the page may be an attacker's
// that points its name at 127.0.0.1 (DNS rebinding).
func foreignPage(h *fasthttp.RequestHeader, host []byte) error {
	site, origin := h.Peek("Sec-Fetch-Site"), h.Peek("Origin")
	if len(site) == 0 && len(origin) == 0 {
		return nil // not a browser's
	}
	const why = "switchboard dev's sidecar takes a browser's calls from pages of this machine (an IP address or a localhost name)"
	if !sb.LocalHost(string(host)) {
		return sb.Errorf(sb.EPermissionDenied, "a browser's request for Host %q: %s", host, why)
	}
	if len(origin) > 0 {
		if u, err := url.Parse(string(origin)); err == nil && sb.LocalHost(u.Host) {
			return nil
		}
	} else if string(site) != "cross-site" {
		return nil
	}
	switch string(h.Method()) {
	case "GET", "HEAD", "OPTIONS":
		return nil // a link followed; what it reads, CORS decides
	}
	return sb.Errorf(sb.EPermissionDenied, "a %s from a page of another site (Origin %q): %s", h.Method(), origin, why)
}

// isToken reports whether b is an RFC 9110 token, as a field name must be:
// httpguts.ValidHeaderFieldName's rule (the differential test holds it to
// that), on bytes, so that no request pays for a string.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if int(c) >= len(tchar) || !tchar[c] {
			return false
		}
	}
	return true
}

// tchar holds the bytes a token may have.
var tchar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// badTargetByte returns the index of the first byte that may not appear
// in a request target, or -1. %-escapes are checked in the path only (as
// net/http does): query strings in the wild carry stray % signs.
func badTargetByte(t []byte) int {
	inQuery := false
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case c <= ' ' || c == 0x7f || c == '#':
			return i
		case c == '?':
			inQuery = true
		case c == '%' && !inQuery:
			if i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2]) {
				return i
			}
		}
	}
	return -1
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// unsupportedTE returns the value of a Transfer-Encoding header other than
// chunked, or nil. fasthttp reads "identity" as no transfer coding (RFC
// 2616); RFC 9112 dropped it and net/http refuses it, so the sidecar
// refuses it too rather than read a body differently from what is behind
// or in front of it.
func unsupportedTE(raw []byte) []byte {
	const name = "transfer-encoding:"
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		if len(line) > len(name) && line[0]|0x20 == 't' && bytes.EqualFold(line[:len(name)], []byte(name)) {
			if v := bytes.TrimSpace(line[len(name):]); !bytes.EqualFold(v, []byte("chunked")) {
				return v
			}
		}
	}
	return nil
}

// asReceived makes req go out with its target and Host byte for byte.
// fasthttp's server parsed the URI and would write both back from it (a
// leading // read as a host, an empty query dropped, the host lower-cased);
// an absolute-form target goes on in origin form, its host as Host. A
// request without Host (HTTP/1.0) gets the service's name, since fasthttp
// writes none without one; and no Content-Type is added to a body that came
// without one.
func asReceived(req *fasthttp.Request, service string) {
	if target := req.Header.RequestURI(); originForm(target) {
		req.SetRequestURIBytes(target)
	} else {
		req.URI().DisablePathNormalizing = true
	}
	if len(req.Header.Host()) == 0 {
		req.Header.SetHost(service)
	}
	req.Header.SetNoDefaultContentType(true)
}

// originForm reports whether a request target is in origin form (/path).
func originForm(target []byte) bool { return len(target) > 0 && target[0] == '/' }

// setForwardedFor appends the client's address to X-Forwarded-For. Prior
// X-Forwarded-For headers become one list, the client's address last, as
// net/http's proxy makes them: left apart, the address the sidecar adds
// would sit in the first one, and whatever a client put in a later one
// would read as the hop nearest the instance.
func setForwardedFor(hdr *fasthttp.RequestHeader, ip net.IP) {
	if ip == nil {
		return
	}
	var buf [64]byte
	v := buf[:0]
	if prior := hdr.Peek("X-Forwarded-For"); len(prior) > 0 {
		for _, p := range hdr.PeekAll("X-Forwarded-For") {
			v = append(append(v, p...), ", "...)
		}
		hdr.Del("X-Forwarded-For")
	}
	if ip4 := ip.To4(); ip4 != nil {
		for i, b := range ip4 {
			if i > 0 {
				v = append(v, '.')
			}
			v = strconv.AppendUint(v, uint64(b), 10)
		}
	} else {
		v = append(v, ip.String()...)
	}
	hdr.SetCanonical([]byte("X-Forwarded-For"), v)
}

func idempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "PUT", "DELETE", "OPTIONS":
		return true
	}
	return false
}

// isDialError reports whether err happened before a connection existed.
func isDialError(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}

// isStream reports whether a request asks for a stream that must not be
// bounded by the request timeout: a protocol upgrade or Server-Sent
// Events.
func isStream(hdr *fasthttp.RequestHeader) bool {
	if len(hdr.Peek("Upgrade")) > 0 {
		return true
	}
	return bytes.Contains(hdr.Peek("Accept"), []byte("text/event-stream"))
}

// backendOf returns the endpoint's connection pool, creating it once.
func backendOf(e *balance.Endpoint) *backend {
	if b, ok := e.Attached().(*backend); ok {
		return b
	}
	b := newBackend(e.Addr)
	if got := e.Attach(b).(*backend); got != b {
		b.close()
		return got
	}
	return b
}

// CloseEndpoint drops an endpoint's idle connections once it has left its
// pool.
func CloseEndpoint(e *balance.Endpoint) {
	// backendOf attaches one if none is: a request still in flight to the
	// endpoint then finds it closed rather than opening a pool nobody
	// closes.
	backendOf(e).close()
}

// stream serves an upgrade or an event stream: the client's connection is
// taken over, the request written to an instance as it came, and the
// answer relayed (an upgraded connection piped both ways until either side
// closes).
//
// The instance's answer must begin within timeout (a stream request whose
// body streams excepted, which may take as long as its body): one that
// took the request and never answered held both connections, and a
// goroutine, for as long as it lived, after the caller had gone. What
// follows the answer's head has no timeout. The answer is observed when
// it is in, with the status the caller got.
func (h *HTTP) stream(ctx *fasthttp.RequestCtx, pool *balance.Pool, up *upload, timeout time.Duration, timed bool, start time.Time) {
	hdr := &ctx.Request.Header
	hdr.Del(ServiceHeader)
	hdr.Del(TimeoutHeader)
	// Hop-by-hop headers go no further than on other requests; an upgrade
	// keeps only what asks for it, as net/http's proxy sends it.
	upgrade := bytes.Clone(hdr.Peek("Upgrade"))
	stripHopRequest(hdr)
	if len(upgrade) > 0 {
		hdr.SetBytesV("Upgrade", upgrade)
		hdr.Set("Connection", "Upgrade")
	}
	setForwardedFor(hdr, ctx.RemoteIP())
	asReceived(&ctx.Request, pool.Service)
	// The request is written ahead unless its body streams: it is then
	// sent as it arrives, while the answer is read.
	var head bytes.Buffer
	if up == nil {
		if _, err := ctx.Request.WriteTo(&head); err != nil {
			h.observe(pool.Service, writeError(ctx, sb.Errorf(sb.EInvalid, "request: %v", err)), start, 0)
			return
		}
	}
	var (
		tried   []*balance.Endpoint
		backend net.Conn
		done    func(balance.Outcome)
		lastErr error
		retries int
	)
	h.Budget.Request() // a stream's retries count against the budget as others' do
	for {
		e, status := next(ctx, pool, tried, lastErr)
		if e == nil {
			h.observe(pool.Service, status, start, retries)
			return
		}
		tried = append(tried, e)
		done = pool.Acquire(e)
		c, err := net.DialTimeout("tcp", e.Addr, 2*time.Second)
		if err == nil {
			backend = c
			break
		}
		done(balance.Failed)
		lastErr = err
		if !h.Budget.Retry() {
			h.observe(pool.Service, writeError(ctx, badGateway("%s: %v", where(pool), err)), start, retries)
			return
		}
		retries++
	}
	bodyless, client11 := ctx.Request.Header.IsHead(), ctx.Request.Header.IsHTTP11()
	h.hijack(ctx, func() { backend.Close(); done(balance.Abandoned) }, func(client net.Conn) {
		outcome, status, observed := balance.Failed, 0, false
		answered := func(st int) {
			observed = true
			h.observe(pool.Service, st, start, retries)
		}
		defer func() {
			done(outcome)
			if !observed && status != 0 {
				h.observe(pool.Service, status, start, retries)
			}
		}()
		defer backend.Close()
		if !h.track(true, client, backend) {
			outcome = balance.Abandoned // shut down first
			return
		}
		defer h.track(false, client, backend)
		var err error
		var w *writing
		if up != nil {
			w = streamUpload(client, backend, &ctx.Request, up)
			defer w.finish(backend) // before backend is closed
		} else {
			_, err = backend.Write(head.Bytes())
			_ = backend.SetReadDeadline(time.Now().Add(timeout))
		}
		if err == nil {
			// ctx lives until this function returns: its response header
			// has the server's settings (no Date or Content-Type added).
			br := bufio.NewReaderSize(backend, 16<<10)
			outcome, err = relay(client, backend, br, &ctx.Response.Header, bodyless, client11, up == nil, w, answered)
		}
		if err != nil && up != nil {
			w.stop(backend) // the answer failed: the writing ends with it
		}
		switch {
		case err != nil && up != nil && w.callers:
			outcome = balance.Abandoned
			status = writeRawError(client, up.err)
		case err != nil && isTimeout(err):
			outcome = balance.TimedOut(timed, timeout)
			status = writeRawError(client, gatewayTimeout("%s: no answer within %s", where(pool), timeout))
		case err != nil:
			status = writeRawError(client, badGateway("%s: %v", where(pool), err))
		}
	})
}

// hijack takes the client's connection over for handler, once fasthttp has
// sent the answers to the requests before this one. When sending those
// fails (the client went away), fasthttp closes the connection without
// calling handler, and without releasing ctx: release is called instead,
// so that what handler would have closed (a connection to an instance,
// held by nothing else) is not left open until the garbage collector
// finds it.
func (h *HTTP) hijack(ctx *fasthttp.RequestCtx, release func(), handler fasthttp.HijackHandler) {
	conn := ctx.Conn()
	h.pending.Store(conn, release)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(client net.Conn) {
		h.pending.Delete(conn)
		handler(client)
	})
}

// connState keeps conns, the connections fasthttp serves, and releases
// what a hijack handler that never ran would have (hijack).
func (h *HTTP) connState(c net.Conn, st fasthttp.ConnState) {
	switch st {
	case fasthttp.StateNew:
		h.mu.Lock()
		if h.conns == nil {
			h.conns = make(map[net.Conn]struct{})
		}
		h.conns[c] = struct{}{}
		h.mu.Unlock()
	case fasthttp.StateHijacked: // a stream now: in streams, once it starts
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
	case fasthttp.StateClosed:
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		if release, ok := h.pending.LoadAndDelete(c); ok {
			release.(func())()
		}
	}
}

// track adds (or removes) the two ends of a stream to those Shutdown
// closes; it reports false when Shutdown came first.
func (h *HTTP) track(add bool, client, backend net.Conn) bool {
	client = unwrap(client)
	h.mu.Lock()
	defer h.mu.Unlock()
	if !add {
		delete(h.streams, client)
		delete(h.streams, backend)
		return true
	}
	if h.closed {
		return false
	}
	if h.streams == nil {
		h.streams = make(map[net.Conn]struct{})
	}
	h.streams[client] = struct{}{}
	h.streams[backend] = struct{}{}
	return true
}

// relay sends the instance's answer to a stream request (or to one whose
// interim answer went on) on to the client, reading it from br over
// backend; http11 says the client speaks HTTP/1.1. A 101 makes the two
// connections one pipe until either side closes. Any other answer (an
// event stream, an upgrade refused) is sent on to its end and the client's
// connection closed: piped on, the requests the client sends next would
// reach this instance unrouted. w is the request's body still being
// written from the client's connection, or nil; streaming says backend has
// a read deadline for the answer's head only, cleared once it is in.
// answered is called with the status once the final answer's head is in
// (before the stream that follows it: what a call is observed at). It
// returns an error only when no answer came, so that the client can be
// sent one. The outcome is
// the answer's: what happens to the stream after it (either side closing,
// however abruptly) is the protocol's business.
func relay(client, backend net.Conn, br *bufio.Reader, rh *fasthttp.ResponseHeader, bodyless, http11, streaming bool, w *writing, answered func(status int)) (balance.Outcome, error) {
	rh.DisableNormalizing()
	for n := 0; ; n++ {
		if err := rh.Read(br); err != nil {
			return balance.Failed, err
		}
		status := rh.StatusCode()
		if status == fasthttp.StatusSwitchingProtocols {
			if streaming {
				_ = backend.SetReadDeadline(time.Time{}) // the head came in time
			}
			answered(status)
			early, _ := br.Peek(br.Buffered()) // what the new protocol sent already
			if _, err := (&net.Buffers{rh.Header(), early}).WriteTo(client); err == nil {
				w.wait() // the request's body first: the instance took it whole
				pipe(client, backend)
			}
			return balance.Answered, nil
		}
		if status >= 200 {
			if streaming {
				_ = backend.SetReadDeadline(time.Time{}) // the head came in time
			}
			answered(status)
			break
		}
		if n >= maxInterim {
			return balance.Failed, fmt.Errorf("more than %d interim (1xx) answers", maxInterim)
		}
		if !forwardInterim(status, http11) {
			continue
		}
		stripHopResponse(rh)
		if _, err := client.Write(rh.Header()); err != nil {
			return balance.Abandoned, nil
		}
	}
	status, cl := rh.StatusCode(), rh.ContentLength()
	stripHopResponse(rh)
	rh.SetConnectionClose()
	if cl == -1 && http11 {
		rh.SetContentLength(-1) // chunked again: stripHopResponse took Transfer-Encoding
	}
	outcome := balance.StatusOutcome(status)
	if _, err := client.Write(rh.Header()); err != nil {
		return outcome, nil
	}
	// The client hanging up ends the answer: the instance sees its end of
	// the connection close, as it would without the sidecar, and stops an
	// event stream nobody reads. What the client sends meanwhile is not
	// for this instance and is dropped (the connection closes after this
	// answer). The read is of the connection under fasthttp's wrapper,
	// which is reused once the hijack handler returns; it ends when
	// fasthttp then closes the connection.
	c := unwrap(client)
	go func() {
		w.wait() // what the caller sends is the request's body until then
		_, _ = io.Copy(io.Discard, c)
		closeWrite(backend)
	}()
	// An error copying the body is either side going away mid-answer; the
	// connection is closed after the answer either way.
	switch {
	case bodyless || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified:
	case cl >= 0:
		_, _ = io.CopyN(client, br, int64(cl))
	case cl == -1 && !http11:
		// HTTP/1.0 has no chunked coding: the body ends with the
		// connection.
		_, _ = io.Copy(client, httputil.NewChunkedReader(br))
	case cl == -1:
		cw := httputil.NewChunkedWriter(client)
		if _, err := io.Copy(cw, httputil.NewChunkedReader(br)); err == nil && cw.Close() == nil {
			_, _ = io.WriteString(client, "\r\n")
		}
	default: // until the instance closes
		_, _ = io.Copy(client, br)
	}
	return outcome, nil
}

// unwrap returns the connection under the wrapper of one fasthttp handed
// over (hijacked): the wrapper has no CloseWrite, its Close does nothing,
// and it is reused once the hijack handler returns. Other connections are
// returned as they are.
func unwrap(c net.Conn) net.Conn {
	if u, ok := c.(interface{ UnsafeConn() net.Conn }); ok {
		return u.UnsafeConn()
	}
	return c
}

// closeWrite half-closes c: the other side sees the end of what it reads.
func closeWrite(c net.Conn) {
	if cw, ok := unwrap(c).(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// writeRawError writes the JSON error answer for err to a connection taken
// over from fasthttp, and returns its status.
func writeRawError(c net.Conn, err error) int {
	code := sb.ErrorCode(err)
	status := sb.HTTPStatus(code)
	body, _ := json.Marshal(map[string]sb.Error{"error": {Code: code, Message: sb.ErrorMessage(err)}})
	w := bufio.NewWriter(c)
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, fasthttp.StatusMessage(status), len(body), body)
	_ = w.Flush()
	return status
}
