package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

// DefaultTimeout bounds a request that names no Switchboard-Timeout.
const DefaultTimeout = 30 * time.Second

// MaxTimeout is the largest Switchboard-Timeout accepted.
const MaxTimeout = time.Hour

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

	once sync.Once
	srv  *fasthttp.Server
}

// Serve serves the frontend on ln until Shutdown.
func (h *HTTP) Serve(ln net.Listener) error {
	h.once.Do(h.setup)
	return h.srv.Serve(ln)
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
	h.srv = &fasthttp.Server{
		Handler:                      h.serve,
		Name:                         "",
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		NoDefaultDate:                true,
		DisablePreParseMultipartForm: true,
		ReadBufferSize:               16 << 10,
		MaxRequestBodySize:           64 << 20,
		IdleTimeout:                  2 * time.Minute,
		ReadTimeout:                  2 * time.Minute,
		CloseOnShutdown:              true,
		Logger:                       fasthttpLogger{h.Logger},
	}
}

// Shutdown stops accepting and waits for requests in progress.
func (h *HTTP) Shutdown() error {
	h.once.Do(h.setup)
	return h.srv.Shutdown()
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("proxy: " + fmt.Sprintf(format, args...))
}

var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// stripHop removes the hop-by-hop headers, including those that
// Connection names.
func stripHop(peek func(string) []byte, del func(string)) {
	if c := peek("Connection"); len(c) > 0 {
		for _, f := range strings.Split(string(c), ",") {
			if f = strings.TrimSpace(f); f != "" {
				del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		del(k)
	}
}

// writeError answers with Switchboard's JSON error body.
func writeError(ctx *fasthttp.RequestCtx, err error) int {
	code := sb.ErrorCode(err)
	status := sb.HTTPStatus(code)
	switch {
	case code == sb.EUnavailable && errors.Is(err, errBadGateway):
		status = fasthttp.StatusBadGateway
	case errors.Is(err, errGatewayTimeout):
		status = fasthttp.StatusGatewayTimeout
	}
	body, _ := json.Marshal(map[string]sb.Error{"error": {Code: code, Message: sb.ErrorMessage(err)}})
	ctx.Response.Reset()
	ctx.Response.SetStatusCode(status)
	ctx.Response.Header.SetContentType("application/json")
	ctx.Response.Header.Set("X-Switchboard-Error", "1")
	ctx.Response.SetBody(append(body, '\n'))
	return status
}

// Sentinels that pick the status of an unavailable error.
var (
	errBadGateway     = errors.New("bad gateway")
	errGatewayTimeout = errors.New("gateway timeout")
)

// proxyError is an unavailable error that answers 502 or 504 rather than
// 503.
type proxyError struct {
	err  *sb.Error
	kind error
}

func (e *proxyError) Error() string   { return e.err.Error() }
func (e *proxyError) Unwrap() []error { return []error{e.err, e.kind} }

func badGateway(format string, args ...any) error {
	return &proxyError{sb.Errorf(sb.EUnavailable, format, args...), errBadGateway}
}

func gatewayTimeout(format string, args ...any) error {
	return &proxyError{sb.Errorf(sb.EUnavailable, format, args...), errGatewayTimeout}
}

func (h *HTTP) serve(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	var pool *balance.Pool
	if name, ok := serviceOfFast(ctx.Request.Header.Peek(ServiceHeader), ctx.Host()); ok {
		pool = h.Table.GetBytes(name)
	} else {
		service, err := ServiceOf(string(ctx.Request.Header.Peek(ServiceHeader)), string(ctx.Host()))
		if err != nil {
			h.observe("", writeError(ctx, err), start, 0)
			return
		}
		pool = h.Table.Get(service)
	}
	status, retries := h.route(ctx, pool)
	h.observe(pool.Service, status, start, retries)
}

func (h *HTTP) observe(service string, code int, start time.Time, retries int) {
	if h.Observe != nil {
		h.Observe(service, code, time.Since(start), retries)
	}
}

func where(p *balance.Pool) string { return fmt.Sprintf("service %s in realm %s", p.Service, p.Realm) }

// route sends the request to an instance of the pool's service and copies
// the answer back. It returns the status sent and how many retries it
// took.
func (h *HTTP) route(ctx *fasthttp.RequestCtx, pool *balance.Pool) (int, int) {
	timeout := h.Timeout
	if v := ctx.Request.Header.Peek(TimeoutHeader); len(v) > 0 {
		d, err := time.ParseDuration(string(v))
		if err != nil || d <= 0 || d > MaxTimeout {
			return writeError(ctx, sb.Errorf(sb.EInvalid, "%s: must be a duration from 1ms to 1h such as 2s, got %q", TimeoutHeader, v)), 0
		}
		timeout = d
	}
	deadline := time.Now().Add(timeout)
	select {
	case <-pool.Ready():
	default:
		// The first call to a service waits for Atlas's first answer.
		t := time.NewTimer(min(h.FirstWatch, timeout))
		select {
		case <-pool.Ready():
			t.Stop()
		case <-t.C:
			return writeError(ctx, sb.Errorf(sb.EUnavailable, "%s: no answer from Atlas about it yet", where(pool))), 0
		}
	}
	if err := pool.Denied(); err != nil {
		return writeError(ctx, err), 0
	}
	if isStream(&ctx.Request.Header) {
		return h.stream(ctx, pool), 0
	}

	// The request goes out as it came in (no copy), less the hop-by-hop
	// headers and the ones meant for the sidecar; the answer is read into
	// ctx.Response and streamed to the client by fasthttp's server.
	req := &ctx.Request
	clientClose := req.Header.ConnectionClose()
	stripHop(req.Header.Peek, req.Header.Del)
	req.Header.Del(ServiceHeader)
	req.Header.Del(TimeoutHeader)
	if ip := ctx.RemoteIP(); ip != nil {
		if prior := req.Header.Peek("X-Forwarded-For"); len(prior) > 0 {
			req.Header.Set("X-Forwarded-For", string(prior)+", "+ip.String())
		} else {
			req.Header.Set("X-Forwarded-For", ip.String())
		}
	}
	retryable := idempotent(ctx.Method()) || len(req.Header.Peek("Idempotency-Key")) > 0

	h.Budget.Request()
	resp := &ctx.Response
	var tried []*balance.Endpoint
	var lastErr error
	retries := 0
	for {
		e := pool.Pick(tried)
		if e == nil {
			if len(tried) == 0 {
				return writeError(ctx, sb.Errorf(sb.EUnavailable, "%s has no routable instance", where(pool))), retries
			}
			return writeError(ctx, badGateway("%s: every try failed, the last with: %v", where(pool), lastErr)), retries
		}
		tried = append(tried, e)
		done := pool.Acquire(e)
		resp.StreamBody = true
		err := clientFor(e).DoDeadline(req, resp, deadline)
		if err == nil {
			status := resp.StatusCode()
			// The request leaves the in-flight count when its answer's
			// headers are in: the body streams on without it.
			done(status < 500)
			stripHop(resp.Header.Peek, resp.Header.Del)
			if clientClose {
				ctx.SetConnectionClose()
			}
			return status, retries
		}
		done(false)
		lastErr = err
		resp.Reset()
		if errors.Is(err, fasthttp.ErrTimeout) || time.Now().After(deadline) {
			return writeError(ctx, gatewayTimeout("%s: no answer within %s", where(pool), timeout)), retries
		}
		// A connection that failed before any byte was sent is safe to
		// retry for every method; any other failure only when the
		// request is idempotent.
		if !(isDialError(err) || retryable) || !h.Budget.Retry() {
			return writeError(ctx, badGateway("%s: %v", where(pool), err)), retries
		}
		retries++
	}
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
	if errors.Is(err, fasthttp.ErrDialTimeout) || errors.Is(err, fasthttp.ErrNoFreeConns) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
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

// clientFor returns the endpoint's connection pool, creating it once.
func clientFor(e *balance.Endpoint) *fasthttp.HostClient {
	if c, ok := e.Attached().(*fasthttp.HostClient); ok {
		return c
	}
	c := &fasthttp.HostClient{
		Addr:                          e.Addr,
		MaxConns:                      4096,
		MaxIdleConnDuration:           4 * time.Second, // under the 5 s idle timeout of Node.js servers
		MaxIdemponentCallAttempts:     1,               // retries are ours, under the budget
		StreamResponseBody:            true,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
		ReadBufferSize:                16 << 10,
		Dial: func(addr string) (net.Conn, error) {
			return net.DialTimeout("tcp", addr, 2*time.Second)
		},
	}
	return e.Attach(c).(*fasthttp.HostClient)
}

// CloseEndpoint drops an endpoint's idle connections once it has left its
// pool.
func CloseEndpoint(e *balance.Endpoint) {
	if c, ok := e.Attached().(*fasthttp.HostClient); ok {
		c.CloseIdleConnections()
	}
}

// stream serves an upgrade or an event stream: the client's connection is
// taken over, the request written to an instance as it came, and bytes
// piped both ways until either side closes.
func (h *HTTP) stream(ctx *fasthttp.RequestCtx, pool *balance.Pool) int {
	ctx.Request.Header.Del(ServiceHeader)
	ctx.Request.Header.Del(TimeoutHeader)
	var head bytes.Buffer
	if _, err := ctx.Request.WriteTo(&head); err != nil {
		return writeError(ctx, sb.Errorf(sb.EInvalid, "request: %v", err))
	}
	var (
		tried   []*balance.Endpoint
		backend net.Conn
		done    func(bool)
		lastErr error
	)
	for {
		e := pool.Pick(tried)
		if e == nil {
			if len(tried) == 0 {
				return writeError(ctx, sb.Errorf(sb.EUnavailable, "%s has no routable instance", where(pool)))
			}
			return writeError(ctx, badGateway("%s: every try failed, the last with: %v", where(pool), lastErr))
		}
		tried = append(tried, e)
		done = pool.Acquire(e)
		c, err := net.DialTimeout("tcp", e.Addr, 2*time.Second)
		if err == nil {
			backend = c
			break
		}
		done(false)
		lastErr = err
		if !h.Budget.Retry() {
			return writeError(ctx, badGateway("%s: %v", where(pool), err))
		}
	}
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(client net.Conn) {
		ok := false
		defer func() { done(ok) }()
		if _, err := backend.Write(head.Bytes()); err != nil {
			backend.Close()
			writeRawError(client, badGateway("%s: %v", where(pool), err))
			return
		}
		ok = pipe(client, backend)
	})
	// What the instance answers is piped, not parsed: count upgrades as
	// 101 and event streams as 200.
	if len(ctx.Request.Header.Peek("Upgrade")) > 0 {
		return fasthttp.StatusSwitchingProtocols
	}
	return fasthttp.StatusOK
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func writeRawError(c net.Conn, err error) {
	body, _ := json.Marshal(map[string]sb.Error{"error": {Code: sb.ErrorCode(err), Message: sb.ErrorMessage(err)}})
	w := bufio.NewWriter(c)
	fmt.Fprintf(w, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	_ = w.Flush()
}
