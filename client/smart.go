package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

// DefaultSidecar is where the local sidecar listens unless
// SWITCHBOARD_SIDECAR says otherwise.
const DefaultSidecar = "127.0.0.1:4000"

// defaultSidecar is DefaultSidecar; tests move it.
var defaultSidecar = DefaultSidecar

// Scheme is the URL scheme of calls to services: service://NAME/path.
const Scheme = "service"

// Transport is an http.RoundTripper that understands service://NAME/path
// URLs. Through a sidecar (the usual case) it sends the request to the
// sidecar with the Switchboard-Service header and lets the sidecar balance
// and retry. With no sidecar it resolves instances from Atlas itself and
// balances, retries and times out (Switchboard-Timeout, else 30 s) as the
// sidecar does. Other URLs pass through Base.
type Transport struct {
	// Sidecar is the sidecar's host:port. Empty means SWITCHBOARD_SIDECAR,
	// else 127.0.0.1:4000; "none" means no sidecar: go to instances
	// directly. When nothing listens at the default address, calls go
	// directly too.
	Sidecar string
	// Atlas finds instances when there is no sidecar; nil means Atlas at
	// SWITCHBOARD_ATLAS (else 127.0.0.1:4400) with SWITCHBOARD_TOKEN.
	Atlas *Atlas
	// Realm of the instances called directly; empty means
	// SWITCHBOARD_REALM, else dev.
	Realm string
	// Base carries the requests; nil means a tuned http.Transport.
	Base http.RoundTripper
	// Budget caps direct retries; nil means 20% of requests + 10/s.
	Budget *balance.Budget
	// Logger; nil discards.
	Logger *slog.Logger

	once     sync.Once
	sidecar  string // resolved: host:port, or "" for direct
	initErr  error  // a sidecar address that is not one
	explicit bool   // the sidecar address was configured, not defaulted
	// absentUntil: nothing listened at the default sidecar address; go
	// direct until then (unix nanoseconds).
	absentUntil atomic.Int64
	// mu guards pools and ctx.
	mu    sync.Mutex
	pools map[string]*followed
	ctx   context.Context // of the pools' watches
	// watches stops them: at CloseIdleConnections, and once the Transport
	// is garbage (the watches hold no reference to it, so that a dropped
	// Transport does not follow Atlas for ever).
	watches *stopper
}

// stopper holds the cancel function of the current watches.
type stopper struct {
	mu   sync.Mutex
	stop context.CancelFunc
}

// replace stops the current watches and keeps stop for the next ones.
func (s *stopper) replace(stop context.CancelFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stop != nil {
		s.stop()
	}
	s.stop = stop
}

// New returns an *http.Client whose transport understands service://
// URLs; see Transport.
func New() *http.Client { return &http.Client{Transport: &Transport{}} }

var defaultBase = &http.Transport{
	Proxy:               nil,
	DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	MaxIdleConns:        512,
	MaxIdleConnsPerHost: 64,
	IdleConnTimeout:     90 * time.Second,
	ForceAttemptHTTP2:   false,
}

func (t *Transport) init() {
	t.sidecar = t.Sidecar
	if t.sidecar == "" {
		t.sidecar = os.Getenv("SWITCHBOARD_SIDECAR")
	}
	t.explicit = t.sidecar != ""
	if t.sidecar == "" {
		t.sidecar = defaultSidecar
	}
	if t.sidecar == "none" {
		t.sidecar = ""
	}
	if _, port, err := net.SplitHostPort(t.sidecar); t.sidecar != "" && (err != nil || port == "" || strings.Contains(t.sidecar, "/")) {
		field := "Transport.Sidecar"
		if t.Sidecar == "" {
			field = "SWITCHBOARD_SIDECAR"
		}
		t.initErr = fmt.Errorf("%s: must be the sidecar's host:port, such as %s, or none, got %q", field, DefaultSidecar, t.sidecar)
	}
	if t.Base == nil {
		t.Base = defaultBase
	}
	if t.Budget == nil {
		t.Budget = &balance.Budget{}
	}
	if t.Logger == nil {
		t.Logger = slog.New(slog.DiscardHandler)
	}
	if t.Realm == "" {
		t.Realm = os.Getenv("SWITCHBOARD_REALM")
	}
	if t.Realm == "" {
		t.Realm = sb.DefaultRealm
	}
	if t.Atlas == nil {
		t.Atlas = AtlasFromEnv()
	}
	var stop context.CancelFunc
	t.ctx, stop = context.WithCancel(context.Background())
	t.watches = &stopper{stop: stop}
	runtime.AddCleanup(t, func(w *stopper) { w.replace(nil) }, t.watches)
}

// CloseIdleConnections closes idle connections and stops watching Atlas.
func (t *Transport) CloseIdleConnections() {
	t.once.Do(t.init)
	t.mu.Lock()
	t.pools = nil
	var stop context.CancelFunc
	t.ctx, stop = context.WithCancel(context.Background())
	t.watches.replace(stop)
	t.mu.Unlock()
	if c, ok := t.Base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// ParseServiceURL returns the service a service:// URL names.
func ParseServiceURL(u *url.URL) (string, error) {
	if u.Scheme != Scheme {
		return "", fmt.Errorf("not a %s:// URL: %q", Scheme, u.Redacted())
	}
	if u.User != nil {
		return "", fmt.Errorf("%s:// URL %q: must not carry user info", Scheme, u.Redacted())
	}
	if u.Port() != "" {
		return "", fmt.Errorf("%s:// URL %q: must not carry a port: the sidecar finds the instance", Scheme, u.Redacted())
	}
	name := u.Hostname()
	if err := sb.ValidateName("service", name); err != nil {
		return "", fmt.Errorf("%s:// URL %q: %s", Scheme, u.Redacted(), sb.ErrorMessage(err))
	}
	return name, nil
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.once.Do(t.init)
	if req.URL.Scheme != Scheme {
		return t.Base.RoundTrip(req)
	}
	service, err := ParseServiceURL(req.URL)
	if err == nil {
		err = t.initErr
	}
	if err != nil {
		closeBody(req)
		return nil, err
	}
	if t.sidecar != "" && time.Now().UnixNano() >= t.absentUntil.Load() {
		res, err := t.viaSidecar(req, service)
		if err == nil || t.explicit || !isDialError(err) {
			return res, err
		}
		// Nothing listens at the default sidecar address: go direct (the
		// body is unread and still open, see viaSidecar), and look for a
		// sidecar again in a few seconds.
		t.absentUntil.Store(time.Now().Add(5 * time.Second).UnixNano())
		t.Logger.Warn("client: no sidecar at "+t.sidecar+"; calling instances directly", "target", service)
	}
	return t.direct(req, service)
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// viaSidecar sends the request to the sidecar, naming the service.
func (t *Transport) viaSidecar(req *http.Request, service string) (*http.Response, error) {
	out := req.Clone(req.Context())
	u := *req.URL
	u.Scheme, u.Host = "http", t.sidecar
	out.URL = &u
	out.Host = service + ".localhost"
	out.Header.Set("Switchboard-Service", service)
	if deadline, ok := req.Context().Deadline(); ok && out.Header.Get(TimeoutHeader) == "" {
		// The sidecar refuses a timeout past its longest: a further
		// deadline gets the longest.
		if d := time.Until(deadline); d > sb.MinTimeout {
			out.Header.Set(TimeoutHeader, min(d.Round(time.Millisecond), sb.MaxTimeout).String())
		}
	}
	if t.explicit || req.Body == nil || req.Body == http.NoBody {
		return t.Base.RoundTrip(out)
	}
	// With a sidecar that may be absent, the body must outlive a failed
	// dial, which Base answers by closing it: direct sends it then.
	body := &keptBody{ReadCloser: req.Body}
	out.Body = body
	res, err := t.Base.RoundTrip(out)
	if err == nil || !isDialError(err) {
		body.release()
	}
	return res, err
}

// keptBody is a request body whose Close closes it only once it has been
// read from (Base then owns it, as it owns any body); release closes one
// that Base never read.
type keptBody struct {
	io.ReadCloser
	mu     sync.Mutex
	read   bool
	closed bool
}

func (b *keptBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	b.read = true
	b.mu.Unlock()
	return b.ReadCloser.Read(p)
}

func (b *keptBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.read || b.closed {
		return nil
	}
	b.closed = true
	return b.ReadCloser.Close()
}

func (b *keptBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.read && !b.closed {
		b.closed = true
		b.ReadCloser.Close()
	}
}

// followed is a service direct calls go to: its pool, kept current by a
// watch of Atlas.
type followed struct {
	pool *balance.Pool
	stop context.CancelFunc // ends the watch
	used atomic.Int64       // unix nanoseconds of the last call
}

// pool returns the pool of service, starting to watch it the first time
// and waiting (within the request's context) for Atlas's first answer.
// A service seen for the first time drops those no call asked for in
// unusedFor (as the sidecar does), so that names called once (typos,
// names from input) are not followed for ever; the next call follows
// such a name again.
func (t *Transport) pool(ctx context.Context, service string) (*balance.Pool, error) {
	now := time.Now().UnixNano()
	t.mu.Lock()
	if t.pools == nil {
		t.pools = make(map[string]*followed)
	}
	f := t.pools[service]
	if f == nil {
		for name, old := range t.pools {
			if now-old.used.Load() > int64(unusedFor) {
				old.stop()
				delete(t.pools, name)
			}
		}
		wctx, stop := context.WithCancel(t.ctx)
		f = &followed{pool: balance.NewPool(service, t.Realm), stop: stop}
		t.pools[service] = f
		go watch(wctx, t.Atlas, t.Realm, t.Logger, f.pool)
	}
	f.used.Store(now)
	p := f.pool
	t.mu.Unlock()
	select {
	case <-p.Ready():
		return p, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("service %s in realm %s: no answer from Atlas: %w", service, t.Realm, ctx.Err())
	case <-time.After(5 * time.Second):
		return nil, fmt.Errorf("service %s in realm %s: no answer from Atlas within 5s", service, t.Realm)
	}
}

// watch keeps p current from Atlas's event stream until ctx ends. It
// takes no Transport, so that a dropped one can be collected (and its
// cleanup end ctx).
func watch(ctx context.Context, atlas *Atlas, realm string, log *slog.Logger, p *balance.Pool) {
	heard := false // an event came: the pool has instances from Atlas
	atlas.Follow(ctx, realm, []string{p.Service},
		func(ev Event) {
			heard = true
			p.Update(ev.Service.Instances, ev.Service.Index)
		},
		func(err error, _ time.Duration) {
			if code := sb.ErrorCode(err); !heard && (code == sb.EUnauthenticated || code == sb.EPermissionDenied) {
				// Atlas answered and will not say where the service is:
				// calls get that at once, rather than wait for an answer
				// that does not come. The first event lifts it (the
				// stream starts with a snapshot: no event came before).
				p.Deny(fmt.Errorf("service %s in realm %s: Atlas will not say where it is: %w", p.Service, realm, err))
			}
			log.Warn("client: watching Atlas failed; keeping the last known instances", "target", p.Service, "err", err)
		})
}

// direct sends the request to an instance chosen as the sidecar would,
// retrying by the same rules.
func (t *Transport) direct(req *http.Request, service string) (*http.Response, error) {
	timeout, timed, err := requestTimeout(req.Header)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("service %s in realm %s: %w", service, t.Realm, err)
	}
	// The timeout covers the whole exchange, the answer's body too, as
	// the sidecar's does; streams are long-lived by design and get none.
	ctx, cancel := req.Context(), context.CancelFunc(func() {})
	if !isStream(req.Header) {
		ctx, cancel = context.WithTimeout(ctx, timeout)
	}
	answered := false // the answer's body then ends ctx, once closed
	defer func() {
		if !answered {
			cancel()
		}
	}()
	p, err := t.pool(ctx, service)
	if err == nil {
		err = p.Denied()
	}
	if err != nil {
		closeBody(req)
		return nil, err
	}
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	retryable := replayable && (idempotent(req.Method) || req.Header.Get("Idempotency-Key") != "")
	t.Budget.Request()
	var tried []*balance.Endpoint
	var lastErr error
	for {
		e := p.Pick(tried)
		if e == nil {
			closeBody(req)
			if lastErr != nil {
				return nil, fmt.Errorf("service %s in realm %s: every try failed, the last with: %w", service, t.Realm, lastErr)
			}
			return nil, fmt.Errorf("service %s in realm %s has no routable instance: %s", service, t.Realm, p.Unroutable())
		}
		tried = append(tried, e)
		out := req.Clone(ctx)
		out.Header.Del(TimeoutHeader) // the sidecar's, not the instance's
		if len(tried) > 1 && req.GetBody != nil {
			if out.Body, err = req.GetBody(); err != nil {
				return nil, err
			}
		}
		u := *req.URL
		u.Scheme, u.Host = "http", e.Addr
		out.URL = &u
		if out.Host == "" || out.Host == req.URL.Host {
			out.Host = service + ".localhost"
		}
		done := p.Acquire(e)
		tryStart := time.Now()
		res, err := t.Base.RoundTrip(out)
		if err == nil {
			outcome := balance.StatusOutcome(res.StatusCode)
			body := &doneBody{ReadCloser: res.Body, done: func() { done(outcome); cancel() }}
			if rw, ok := res.Body.(io.ReadWriteCloser); ok && res.StatusCode == http.StatusSwitchingProtocols {
				// net/http's upgraded connection: the caller writes to it.
				res.Body = &doneConn{doneBody: body, w: rw}
			} else {
				res.Body = body
			}
			answered = true
			return res, nil
		}
		lastErr = err
		if cerr := req.Context().Err(); cerr != nil {
			// The caller's cancellation says nothing of the instance;
			// its deadline, as a timeout it chose does.
			if errors.Is(cerr, context.DeadlineExceeded) {
				done(balance.TimedOut(true, time.Since(tryStart)))
			} else {
				done(balance.Abandoned)
			}
			return nil, err
		}
		if ctx.Err() != nil {
			done(balance.TimedOut(timed, time.Since(tryStart)))
			return nil, fmt.Errorf("service %s in realm %s: no answer within %s: %w", service, t.Realm, timeout, context.DeadlineExceeded)
		}
		done(balance.Failed)
		if !(isDialError(err) && replayable || retryable) || !t.Budget.Retry() {
			return nil, fmt.Errorf("service %s in realm %s: %w", service, t.Realm, err)
		}
	}
}

// doneBody reports the end of a response to the balancer once, when the
// body is closed.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

// doneConn is a doneBody that may be written to: the connection of a 101
// answer, as net/http hands it over.
type doneConn struct {
	*doneBody
	w io.Writer
}

func (c *doneConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func idempotent(method string) bool {
	switch method {
	case "", http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodOptions:
		return true
	}
	return false
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// TimeoutHeader bounds one call ("2s"), through the sidecar or direct;
// without it a call has 30 s.
const TimeoutHeader = sb.TimeoutHeader

// defaultTimeout bounds a direct call that names no Switchboard-Timeout,
// as the sidecar's does; tests move it.
var defaultTimeout = 30 * time.Second

// requestTimeout returns the timeout of a direct call: its
// Switchboard-Timeout (timed), else the default, with the sidecar's rule
// for the header.
func requestTimeout(h http.Header) (d time.Duration, timed bool, err error) {
	v := h.Get(TimeoutHeader)
	if v == "" {
		return defaultTimeout, false, nil
	}
	if d, err = sb.ParseTimeout(v); err != nil {
		return 0, false, err
	}
	return d, true, nil
}

// isStream reports whether a request upgrades the protocol or asks for an
// event stream: the sidecar pipes those with no timeout.
func isStream(h http.Header) bool {
	return h.Get("Upgrade") != "" || strings.Contains(h.Get("Accept"), "text/event-stream")
}

// unusedFor is how long a service no direct call asked for is followed
// (at least); tests move it.
var unusedFor = 5 * time.Minute
