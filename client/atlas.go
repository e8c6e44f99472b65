// Package client talks to Switchboard: Atlas is the client of the Atlas
// HTTP API, with fail-over between replicas, blocking queries and the event
// stream.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// Atlas is a client of the Atlas API. The zero value talks to
// http://127.0.0.1:4400 without a token.
type Atlas struct {
	// URLs are the Atlas replicas, tried in turn; the last one that answered
	// is tried first. Empty means http://127.0.0.1:4400.
	URLs []string
	// Token is the bearer token; empty sends none.
	Token string
	// HTTPClient makes the calls; nil means a client with no overall
	// timeout (blocking queries set their own through the context).
	HTTPClient *http.Client

	// mu guards good and noSyncUntil.
	mu   sync.Mutex
	good int // index into URLs of the replica that last answered
	// noSyncUntil is when writes send ?sync=later again after an Atlas
	// refused it (a version before it).
	noSyncUntil time.Time
}

// DefaultAtlasURL is where Atlas listens unless told otherwise.
const DefaultAtlasURL = "http://127.0.0.1:4400"

// AtlasFromEnv returns a client of the replicas SWITCHBOARD_ATLAS lists
// (comma-separated; default DefaultAtlasURL), with SWITCHBOARD_TOKEN.
func AtlasFromEnv() *Atlas {
	return &Atlas{URLs: SplitList(os.Getenv("SWITCHBOARD_ATLAS")), Token: os.Getenv("SWITCHBOARD_TOKEN")}
}

// CheckURL checks an address of Atlas: an http:// or https:// URL with a
// host and no path (the client adds /v1/...). The message it returns
// names no field and never repeats a password the URL holds.
func CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("must be an http:// or https:// URL such as %s, got %q", DefaultAtlasURL, RedactURL(raw))
	}
	if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
		return fmt.Errorf("must be Atlas's base URL, such as %s, without a path (the client adds /v1/...), got %q", DefaultAtlasURL, RedactURL(raw))
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("must have a port of 1-65535, got %q", RedactURL(raw))
		}
	}
	return nil
}

// RedactURL returns an Atlas URL as errors and logs show it: with its
// password, if it holds one, masked.
func RedactURL(raw string) string {
	if !strings.Contains(raw, "@") {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(a URL with user info that does not parse)"
	}
	return u.Redacted()
}

// SplitList splits a comma-separated list, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

var defaultHTTP = &http.Client{Transport: &http.Transport{
	Proxy:               nil,
	MaxIdleConnsPerHost: 64,
	IdleConnTimeout:     90 * time.Second,
	TLSHandshakeTimeout: 10 * time.Second,
}}

func (a *Atlas) httpClient() *http.Client {
	if a.HTTPClient != nil {
		return a.HTTPClient
	}
	return defaultHTTP
}

func (a *Atlas) urls() []string {
	if len(a.URLs) == 0 {
		return []string{DefaultAtlasURL}
	}
	return a.URLs
}

// QueryOptions make a GET a blocking query.
type QueryOptions struct {
	// Index, when > 0, blocks until the answer differs from the one at
	// Index, or Wait runs out.
	Index uint64
	// Wait bounds the block; zero means Atlas's default (5m).
	Wait time.Duration
}

func (o QueryOptions) apply(q url.Values) {
	if o.Index > 0 {
		q.Set("index", strconv.FormatUint(o.Index, 10))
		if o.Wait > 0 {
			q.Set("wait", o.Wait.String())
		}
	}
}

// A replica that takes the connection and never answers (stopped, or its
// store stuck) must not keep the client from the others:
var (
	// attemptTimeout bounds one replica's attempt at a call whose context
	// has no deadline (a blocking query gets its wait on top).
	attemptTimeout = 10 * time.Second
	// watchConnectTimeout bounds the wait for an event stream's answer.
	watchConnectTimeout = 10 * time.Second
	// streamIdleTimeout ends an event stream that has sent nothing, not
	// even Atlas's keep-alive comment (every 15 s), for this long.
	streamIdleTimeout = 45 * time.Second
)

// attemptContext is the context of one replica's attempt at a call, with
// left replicas still to try. The caller's deadline is shared among them,
// so that a hung first replica leaves time for the next; the last gets
// what is left. A blocking query may take its whole wait on any replica.
func attemptContext(ctx context.Context, left int, q url.Values) (context.Context, context.CancelFunc) {
	if q.Has("index") {
		wait := 5 * time.Minute // Atlas's default
		if w, err := time.ParseDuration(q.Get("wait")); err == nil {
			wait = w
		}
		return context.WithTimeout(ctx, wait+wait/16+attemptTimeout)
	}
	if dl, ok := ctx.Deadline(); ok {
		if left <= 1 {
			return context.WithCancel(ctx)
		}
		return context.WithTimeout(ctx, time.Until(dl)/time.Duration(left))
	}
	return context.WithTimeout(ctx, attemptTimeout)
}

// call does one API call, trying each replica in turn while they are
// unreachable, slow past their share of the time, or answer 503. It
// decodes a 200 answer into out (when not nil) and returns the
// Switchboard-Index header.
func (a *Atlas) call(ctx context.Context, method, path string, q url.Values, in, out any) (uint64, error) {
	idx, err, _ := a.callMaybe(ctx, method, path, q, in, out, method == http.MethodPost)
	return idx, err
}

// callMaybe is call, and also says whether a replica before the one that
// answered may have carried the call out. once says that the call must not
// be carried out twice: a POST (a token) but one that gives the same answer
// again (a port).
func (a *Atlas) callMaybe(ctx context.Context, method, path string, q url.Values, in, out any, once bool) (uint64, error, bool) {
	var body []byte
	if in != nil {
		var err error
		if raw, ok := in.(json.RawMessage); ok {
			body = raw
		} else if body, err = json.Marshal(in); err != nil {
			return 0, err, false
		}
	}
	urls := a.urls()
	a.mu.Lock()
	start := a.good % len(urls)
	a.mu.Unlock()
	var (
		lastErr error
		maybe   bool // an earlier attempt may have been carried out
	)
	for i := range urls {
		n := (start + i) % len(urls)
		actx, cancel := attemptContext(ctx, len(urls)-i, q)
		idx, err, retry, sent := a.callOne(actx, urls[n], method, path, q, body, out, once)
		cancel()
		if maybe && method == http.MethodDelete && sb.ErrorCode(err) == sb.ENotFound {
			// The replica that took the DELETE failed to answer, and the
			// next one finds nothing to delete: it was deleted.
			err, retry = nil, false
		}
		if !retry {
			a.mu.Lock()
			switch {
			case !sb.Transient(err):
				a.good = n
			case a.good == n:
				// A call made once that this replica failed: the next
				// call starts at the next one.
				a.good = (n + 1) % len(urls)
			}
			a.mu.Unlock()
			return idx, err, maybe
		}
		lastErr, maybe = err, maybe || sent
		if ctx.Err() != nil {
			break
		}
	}
	return 0, lastErr, maybe
}

// callOne makes one attempt of a call, at the replica base. retry says
// whether the next replica may be asked, and sent whether this one may have
// carried the call out (any failure but one to connect: a 502 or 503 from
// a replica that lost its store or its gateway is no proof it did not). A
// call made once that may have been carried out is not sent to the next
// replica, which would do it a second time.
func (a *Atlas) callOne(ctx context.Context, base, method, path string, q url.Values, body []byte, out any, once bool) (idx uint64, err error, retry, sent bool) {
	u := strings.TrimRight(base, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return 0, fmt.Errorf("atlas %s: %w", RedactURL(base), err), false, false
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.Token)
	}
	res, err := a.httpClient().Do(req)
	if err != nil {
		e := sb.Errorf(sb.EUnavailable, "atlas %s: %v", RedactURL(base), err)
		if isDialError(err) {
			return 0, e, true, false
		}
		return 0, e, !once, true
	}
	defer res.Body.Close()
	if h := res.Header.Get(sb.IndexHeader); h != "" {
		idx, _ = strconv.ParseUint(h, 10, 64)
	}
	data, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return 0, sb.Errorf(sb.EUnavailable, "atlas %s: reading the answer: %v", RedactURL(base), err), true, true
	}
	if res.StatusCode != http.StatusOK {
		e := decodeError(res.StatusCode, data)
		unavailable := res.StatusCode == http.StatusServiceUnavailable || res.StatusCode == http.StatusBadGateway
		return 0, e, unavailable && !once, true
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return 0, fmt.Errorf("atlas %s: decoding the answer: %w", RedactURL(base), err), false, true
		}
	}
	return idx, nil, false, true
}

// decodeError turns an error answer into an *sb.Error.
func decodeError(status int, data []byte) *sb.Error {
	var body struct {
		Error *sb.Error `json:"error"`
	}
	if json.Unmarshal(data, &body) == nil && body.Error != nil && body.Error.Code != "" {
		return body.Error
	}
	return sb.Errorf(sb.CodeForStatus(status), "atlas answered %d %s", status, http.StatusText(status))
}

// Register registers or replaces instance id. Atlas answers once the
// registration is on its disk.
func (a *Atlas) Register(ctx context.Context, id string, reg sb.Registration) (*sb.Instance, error) {
	var in sb.Instance
	_, err := a.call(ctx, http.MethodPut, "/v1/instances/"+url.PathEscape(id), nil, reg, &in)
	return &in, err
}

// syncLater is the query of writes the caller makes again by itself: it
// heartbeats, and registers again when a heartbeat gets not_found.
var syncLater = url.Values{"sync": {"later"}}

// Announce registers or replaces instance id as a sidecar does: the
// caller renews its lease with Heartbeat or Heartbeats and registers again
// when one gets not_found. Atlas may then answer before the registration
// is on its disk (?sync=later): a crash of Atlas's machine may take back
// the last 10 ms of such writes, which the caller's next heartbeat finds.
func (a *Atlas) Announce(ctx context.Context, id string, reg sb.Registration) (*sb.Instance, error) {
	var in sb.Instance
	err := a.callLater(ctx, "/v1/instances/"+url.PathEscape(id), reg, &in)
	return &in, err
}

// oldAtlasWait is how long writes go without ?sync=later after an Atlas
// refused it, before they try it again (Atlas may have been upgraded).
const oldAtlasWait = 10 * time.Minute

// callLater PUTs in to path with ?sync=later. An Atlas older than the
// parameter refuses it (400); the client then writes without it, to that
// replica and every other, as it did before it, for oldAtlasWait: an
// upgrade of the sidecars before Atlas changes nothing.
func (a *Atlas) callLater(ctx context.Context, path string, in, out any) error {
	a.mu.Lock()
	q := syncLater
	if time.Now().Before(a.noSyncUntil) {
		q = nil
	}
	a.mu.Unlock()
	_, err := a.call(ctx, http.MethodPut, path, q, in, out)
	if q != nil && sb.ErrorCode(err) == sb.EInvalid && strings.HasPrefix(sb.ErrorMessage(err), "sync: unknown query parameter") {
		a.mu.Lock()
		a.noSyncUntil = time.Now().Add(oldAtlasWait)
		a.mu.Unlock()
		_, err = a.call(ctx, http.MethodPut, path, nil, in, out)
	}
	return err
}

// Heartbeat renews the lease of instance id and reports its status. A
// not_found error means the caller must register again. The caller
// heartbeats again, with the same status: Atlas may answer before a new
// status is on its disk (?sync=later).
func (a *Atlas) Heartbeat(ctx context.Context, id string, hb sb.Heartbeat) (*sb.Instance, error) {
	var in sb.Instance
	err := a.callLater(ctx, "/v1/instances/"+url.PathEscape(id)+"/status", hb, &in)
	return &in, err
}

// Heartbeats sends many heartbeats in one request; each result says
// whether its heartbeat was taken (a not_found result means register
// again). As with Heartbeat, Atlas may answer before a new status is on
// its disk.
func (a *Atlas) Heartbeats(ctx context.Context, hbs []sb.BatchHeartbeat) ([]sb.BatchResult, error) {
	var out struct {
		Results []sb.BatchResult `json:"results"`
	}
	err := a.callLater(ctx, "/v1/heartbeats", sb.HeartbeatBatch{Heartbeats: hbs}, &out)
	return out.Results, err
}

// SetEnabled flips the operator switch of instance id.
func (a *Atlas) SetEnabled(ctx context.Context, id string, enabled bool, reason string) (*sb.Instance, error) {
	var in sb.Instance
	_, err := a.call(ctx, http.MethodPut, "/v1/instances/"+url.PathEscape(id)+"/enabled", nil, sb.EnabledSwitch{Enabled: &enabled, Reason: reason}, &in)
	return &in, err
}

// Drain disables instance id and waits (until ctx ends, at most 10 minutes)
// until Atlas has sent the change to every event stream that watches its
// service: once it returns with Confirmed == Watchers, no sidecar routes
// new requests to the instance.
func (a *Atlas) Drain(ctx context.Context, id, reason string) (*sb.Propagation, error) {
	enabled := false
	var in sb.Instance
	idx, err := a.call(ctx, http.MethodPut, "/v1/instances/"+url.PathEscape(id)+"/enabled", nil, sb.EnabledSwitch{Enabled: &enabled, Reason: reason}, &in)
	if err != nil {
		return nil, err
	}
	return a.Propagation(ctx, in.Realm, in.Service, idx)
}

// Deregister removes instance id. It answers not_found for an unknown id,
// except after a replica that may have removed it failed to answer: then
// the next replica's not_found means the removal happened, and it answers
// nil (so do the other deletes).
func (a *Atlas) Deregister(ctx context.Context, id string) error {
	_, err := a.call(ctx, http.MethodDelete, "/v1/instances/"+url.PathEscape(id), nil, nil, nil)
	return err
}

// Instance returns one instance with its lease fields.
func (a *Atlas) Instance(ctx context.Context, id string) (*sb.Instance, error) {
	var in sb.Instance
	_, err := a.call(ctx, http.MethodGet, "/v1/instances/"+url.PathEscape(id), nil, nil, &in)
	return &in, err
}

// Services lists the services of a realm with their counts.
func (a *Atlas) Services(ctx context.Context, realm string, opts QueryOptions) (*sb.ServiceList, error) {
	q := url.Values{}
	setRealm(q, realm)
	opts.apply(q)
	var out sb.ServiceList
	_, err := a.call(ctx, http.MethodGet, "/v1/services", q, nil, &out)
	return &out, err
}

// ServiceOptions filter a service's instances.
type ServiceOptions struct {
	QueryOptions
	Status []sb.Status
	Tags   []string
	Leases bool
}

// Service returns the instances of a service in a realm, sorted by id.
func (a *Atlas) Service(ctx context.Context, realm, name string, opts ServiceOptions) (*sb.ServiceInstances, error) {
	q := url.Values{}
	setRealm(q, realm)
	for _, s := range opts.Status {
		q.Add("status", string(s))
	}
	for _, t := range opts.Tags {
		q.Add("tag", t)
	}
	if opts.Leases {
		q.Set("leases", "true")
	}
	opts.apply(q)
	var out sb.ServiceInstances
	_, err := a.call(ctx, http.MethodGet, "/v1/services/"+url.PathEscape(name), q, nil, &out)
	return &out, err
}

// AssignPort returns the service's port, assigning one the first time.
func (a *Atlas) AssignPort(ctx context.Context, service string) (int, error) {
	var out sb.PortAssignment
	_, err, _ := a.callMaybe(ctx, http.MethodPost, "/v1/services/"+url.PathEscape(service)+"/port", nil, nil, &out, false)
	return out.Port, err
}

func setRealm(q url.Values, realm string) {
	if realm != "" {
		q.Set("realm", realm)
	}
}

func layerQuery(k sb.LayerKey) url.Values {
	q := url.Values{}
	if k.Realm != "" {
		q.Set("realm", k.Realm)
	}
	if k.Service != "" {
		q.Set("service", k.Service)
	}
	return q
}

// Config returns the merged config of service (may be empty) in realm,
// with the layer each key came from.
func (a *Atlas) Config(ctx context.Context, realm, service string, opts QueryOptions) (*sb.MergedConfig, error) {
	q := layerQuery(sb.LayerKey{Realm: realm, Service: service})
	opts.apply(q)
	var out sb.MergedConfig
	_, err := a.call(ctx, http.MethodGet, "/v1/config", q, nil, &out)
	return &out, err
}

// Layer returns one config layer.
func (a *Atlas) Layer(ctx context.Context, k sb.LayerKey) (*sb.ConfigLayer, error) {
	var out sb.ConfigLayer
	_, err := a.call(ctx, http.MethodGet, "/v1/config/layer", layerQuery(k), nil, &out)
	return &out, err
}

// PutLayer replaces one config layer with a JSON object. cas, when not nil,
// is the index the layer must be at (0: it must not exist).
func (a *Atlas) PutLayer(ctx context.Context, k sb.LayerKey, config json.RawMessage, cas *uint64) (*sb.ConfigLayer, error) {
	q := layerQuery(k)
	if cas != nil {
		q.Set("cas", strconv.FormatUint(*cas, 10))
	}
	var out sb.ConfigLayer
	_, err, maybe := a.callMaybe(ctx, http.MethodPut, "/v1/config/layer", q, config, &out, false)
	if cas != nil && maybe && sb.ErrorCode(err) == sb.EConflict {
		// A replica that failed to answer may have saved it, which moved
		// the layer past cas: it is saved if the layer holds it now.
		if now, lerr := a.Layer(ctx, k); lerr == nil && sameJSON(now.Config, config) {
			return now, nil
		}
	}
	return &out, err
}

// sameJSON reports whether a and b are the same JSON value (numbers
// compared as written).
func sameJSON(a, b []byte) bool {
	decode := func(data []byte) (any, bool) {
		d := json.NewDecoder(bytes.NewReader(data))
		d.UseNumber()
		var v any
		return v, d.Decode(&v) == nil
	}
	va, oka := decode(a)
	vb, okb := decode(b)
	return oka && okb && reflect.DeepEqual(va, vb)
}

// DeleteLayer removes one config layer.
func (a *Atlas) DeleteLayer(ctx context.Context, k sb.LayerKey) error {
	_, err := a.call(ctx, http.MethodDelete, "/v1/config/layer", layerQuery(k), nil, nil)
	return err
}

// Layers lists every config layer.
func (a *Atlas) Layers(ctx context.Context) (*sb.LayerList, error) {
	var out sb.LayerList
	_, err := a.call(ctx, http.MethodGet, "/v1/config/layers", nil, nil, &out)
	return &out, err
}

// CreateToken creates a token; the answer holds its secret, once.
func (a *Atlas) CreateToken(ctx context.Context, req sb.TokenRequest) (*sb.Token, error) {
	var out sb.Token
	_, err := a.call(ctx, http.MethodPost, "/v1/tokens", nil, req, &out)
	return &out, err
}

// Tokens lists the tokens, without secrets.
func (a *Atlas) Tokens(ctx context.Context) ([]sb.Token, error) {
	l, err := a.TokenList(ctx)
	return l.Tokens, err
}

// TokenList returns GET /v1/tokens: the tokens, without secrets, and the
// index.
func (a *Atlas) TokenList(ctx context.Context) (*sb.TokenList, error) {
	var out sb.TokenList
	_, err := a.call(ctx, http.MethodGet, "/v1/tokens", nil, nil, &out)
	return &out, err
}

// DeleteToken revokes a token.
func (a *Atlas) DeleteToken(ctx context.Context, id string) error {
	_, err := a.call(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil, nil)
	return err
}

// PutPolicy says which services service may call in realm.
func (a *Atlas) PutPolicy(ctx context.Context, realm, service string, mayCall []string) (*sb.Policy, error) {
	q := url.Values{}
	setRealm(q, realm)
	var out sb.Policy
	_, err := a.call(ctx, http.MethodPut, "/v1/policies/"+url.PathEscape(service), q, map[string][]string{"may_call": mayCall}, &out)
	return &out, err
}

// Policies lists the call policies of a realm (all realms when empty).
func (a *Atlas) Policies(ctx context.Context, realm string) ([]sb.Policy, error) {
	l, err := a.PolicyList(ctx, realm)
	return l.Policies, err
}

// PolicyList returns GET /v1/policies: the call policies of a realm (all
// realms when empty) and the index.
func (a *Atlas) PolicyList(ctx context.Context, realm string) (*sb.PolicyList, error) {
	q := url.Values{}
	setRealm(q, realm)
	var out sb.PolicyList
	_, err := a.call(ctx, http.MethodGet, "/v1/policies", q, nil, &out)
	return &out, err
}

// Event is one event of the Atlas event stream.
type Event struct {
	// Kind is "snapshot" or "update".
	Kind string
	// ID is the event id ("" on all but the last event of a snapshot).
	ID string
	// Service is the service's answer, as GET /v1/services/{name} gives it.
	Service *sb.ServiceInstances
}

// Watch follows the event stream of services (or "*") in realm and calls fn
// for each event, until ctx ends, fn returns an error, or the stream
// breaks. It returns the id of the last event it saw, to resume from with
// lastEventID.
func (a *Atlas) Watch(ctx context.Context, realm string, services []string, lastEventID string, fn func(Event) error) (string, error) {
	return a.watch(ctx, realm, services, lastEventID, fn, nil)
}

// watch is Watch; opened, when not nil, is called once Atlas has answered
// 200, before the first event.
func (a *Atlas) watch(ctx context.Context, realm string, services []string, lastEventID string, fn func(Event) error, opened func()) (string, error) {
	q := url.Values{}
	setRealm(q, realm)
	for _, s := range services {
		q.Add("service", s)
	}
	urls := a.urls()
	a.mu.Lock()
	start := a.good
	a.mu.Unlock()
	var (
		res  *http.Response
		err  error
		base string
		n    int                // the replica streaming
		stop context.CancelFunc // ends the stream's request
	)
	for i := range urls {
		n = (start + i) % len(urls)
		base = urls[n]
		sctx, cancel := context.WithCancel(ctx)
		req, rerr := http.NewRequestWithContext(sctx, http.MethodGet, strings.TrimRight(base, "/")+"/v1/watch?"+q.Encode(), nil)
		if rerr != nil {
			cancel()
			return lastEventID, rerr
		}
		req.Header.Set("Accept", "text/event-stream")
		if a.Token != "" {
			req.Header.Set("Authorization", "Bearer "+a.Token)
		}
		if lastEventID != "" {
			req.Header.Set("Last-Event-ID", lastEventID)
		}
		timer := time.AfterFunc(watchConnectTimeout, cancel)
		res, err = a.httpClient().Do(req)
		if !timer.Stop() {
			if err == nil {
				res.Body.Close()
			}
			err = fmt.Errorf("no answer in %v", watchConnectTimeout)
		}
		if err == nil && res.StatusCode == http.StatusOK && isEventStream(res.Header.Get("Content-Type")) {
			a.mu.Lock()
			a.good = n
			a.mu.Unlock()
			stop = cancel
			break
		}
		cancel()
		switch {
		case err == nil && res.StatusCode == http.StatusOK:
			// A 200 that is no event stream (a gateway's page, a proxy
			// that answers for everything) is not Atlas answering: the
			// next replica is tried, as after a 5xx.
			res.Body.Close()
			err = sb.Errorf(sb.EUnavailable, "atlas %s: answered 200 with %q, not an event stream", RedactURL(base), res.Header.Get("Content-Type"))
		case err == nil:
			data, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
			res.Body.Close()
			e := decodeError(res.StatusCode, data)
			if res.StatusCode < 500 {
				return lastEventID, e
			}
			// A replica that answers 5xx, itself or the gateway in front
			// of it (502, 504), is passed over as an unreachable one is:
			// the stream is a GET, and the next replica may serve it.
			err = e
		default:
			err = sb.Errorf(sb.EUnavailable, "atlas %s: %v", RedactURL(base), err)
		}
		res = nil
		if ctx.Err() != nil {
			return lastEventID, ctx.Err()
		}
	}
	if res == nil {
		return lastEventID, err
	}
	defer res.Body.Close()
	defer stop()
	if opened != nil {
		opened()
	}
	var idle atomic.Bool
	quiet := time.AfterFunc(streamIdleTimeout, func() { idle.Store(true); stop() })
	defer quiet.Stop()
	var fnErr error
	err = ReadEvents(idleReader{res.Body, quiet}, func(ev Event) error {
		if ev.ID != "" {
			lastEventID = ev.ID
		}
		fnErr = fn(ev)
		return fnErr
	})
	if fnErr == nil && ctx.Err() == nil {
		// The stream broke or went quiet: the next watch starts at the
		// next replica, or a replica that answers and then goes quiet
		// would be the only one ever tried.
		a.mu.Lock()
		if a.good == n {
			a.good = (n + 1) % len(urls)
		}
		a.mu.Unlock()
	}
	switch {
	case fnErr != nil:
		return lastEventID, fnErr
	case ctx.Err() != nil:
		return lastEventID, ctx.Err()
	case idle.Load():
		return lastEventID, sb.Errorf(sb.EUnavailable, "atlas %s: event stream sent nothing for %v", RedactURL(base), streamIdleTimeout)
	case err == nil:
		return lastEventID, sb.Errorf(sb.EUnavailable, "atlas %s: event stream ended", RedactURL(base))
	case errors.Is(err, errStream):
		return lastEventID, sb.Errorf(sb.EUnavailable, "atlas %s: event stream broke: %v", RedactURL(base), err)
	}
	return lastEventID, fmt.Errorf("atlas %s: %w", RedactURL(base), err)
}

// isEventStream reports whether a Content-Type is text/event-stream.
func isEventStream(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "text/event-stream"
}

// idleReader restarts quiet at every read that brings bytes.
type idleReader struct {
	r     io.Reader
	quiet *time.Timer
}

func (ir idleReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	if n > 0 {
		ir.quiet.Reset(streamIdleTimeout)
	}
	return n, err
}

var (
	errBadEvent = errors.New("event stream: an event's data is not a service answer")
	errStream   = errors.New("event stream")
)

// FollowOption changes how Follow follows a stream.
type FollowOption func(*followOptions)

type followOptions struct {
	opened func()
}

// OnOpen has Follow call f each time Atlas answers the stream's request
// with 200, before the stream's first event: a stream resumed with
// nothing new to send (Atlas restarted, say) brings no event, yet it
// works again.
func OnOpen(f func()) FollowOption {
	return func(o *followOptions) { o.opened = f }
}

// Follow watches services in realm until ctx ends: it calls fn for every
// event and, when the stream breaks, onErr with the error and the wait
// before it reconnects (resuming from the last event, or with a snapshot
// after Atlas refused the stream; 100 ms doubling to 5 s, reset by an
// event, each wait drawn from half to one and a half times that). Callers
// keep what they had meanwhile.
func (a *Atlas) Follow(ctx context.Context, realm string, services []string, fn func(Event), onErr func(err error, retryIn time.Duration), opts ...FollowOption) {
	var o followOptions
	for _, opt := range opts {
		opt(&o)
	}
	last := ""
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		var err error
		last, err = a.watch(ctx, realm, services, last, func(ev Event) error {
			backoff = 100 * time.Millisecond
			fn(ev)
			return nil
		}, o.opened)
		if ctx.Err() != nil {
			return
		}
		if code := sb.ErrorCode(err); code == sb.EUnauthenticated || code == sb.EPermissionDenied {
			// Atlas refused the stream: what changed while it did is
			// unknown, and resuming would send only the changes after
			// the last event. Start over with a snapshot.
			last = ""
		}
		// Between half and one and a half times the backoff: sidecars
		// that lost Atlas at the same instant (it restarted) come back
		// spread out, not as one storm of snapshots.
		wait := backoff/2 + rand.N(backoff)
		onErr(err, wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// ReadEvents parses a Server-Sent Events stream of Atlas's events and calls
// fn for each, until the stream ends (nil), breaks, carries an event whose
// data is not a service answer, or fn returns an error (returned as is).
func ReadEvents(r io.Reader, fn func(Event) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var kind, id, data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if kind == "" {
				// Not an event of Atlas's: its data goes with it.
				data = ""
				continue
			}
			var si sb.ServiceInstances
			if err := json.Unmarshal([]byte(data), &si); err != nil {
				return fmt.Errorf("%w: %v", errBadEvent, err)
			}
			if err := fn(Event{Kind: kind, ID: id, Service: &si}); err != nil {
				return err
			}
			kind, id, data = "", "", ""
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "event:"):
			kind = strings.TrimSpace(line[len("event:"):])
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimSpace(line[len("id:"):])
		case strings.HasPrefix(line, "data:"):
			if data != "" {
				data += "\n" // as the SSE spec joins data lines
			}
			data += strings.TrimPrefix(line[len("data:"):], " ")
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: %v", errStream, err)
	}
	return nil
}

// Ping asks Atlas's own healthcheck (GET /v1/health, no token needed)
// and returns nil when a replica answers that it is healthy.
func (a *Atlas) Ping(ctx context.Context) error {
	_, err := a.call(ctx, http.MethodGet, "/v1/health", nil, nil, nil)
	return err
}

// IsNotFound reports whether err is a not_found answer.
func IsNotFound(err error) bool { return sb.ErrorCode(err) == sb.ENotFound }

// Propagation asks how many event streams watching service have been sent
// every change up to index, waiting (within ctx, at most 10 minutes) until
// all have. Each Atlas replica knows only the streams it serves, so every
// address in URLs is asked at once and the counts are summed: replicas of
// one etcd cluster all hold the change. One that cannot be reached is left
// out (its streams broke with it, and a stream that reconnects elsewhere
// starts from a snapshot holding the change); when none can, or when one
// answers with an error that is not a replica's unavailability, the error
// is returned.
func (a *Atlas) Propagation(ctx context.Context, realm, service string, index uint64) (*sb.Propagation, error) {
	wait := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl) - 100*time.Millisecond
	}
	q := url.Values{}
	setRealm(q, realm)
	q.Set("index", strconv.FormatUint(index, 10))
	q.Set("wait", max(wait, time.Millisecond).String())
	path := "/v1/services/" + url.PathEscape(service) + "/propagation"
	urls := a.urls()
	type answer struct {
		p   sb.Propagation
		err error
	}
	answers := make([]answer, len(urls))
	var wg sync.WaitGroup
	for i, base := range urls {
		wg.Go(func() {
			// Each replica's attempt is bounded as a.call bounds it: one
			// that takes the connection and never answers must not hold
			// the others' answers (without a deadline, for ever).
			actx, cancel := attemptContext(ctx, 1, q)
			defer cancel()
			_, answers[i].err, _, _ = a.callOne(actx, base, http.MethodGet, path, q, nil, &answers[i].p, false)
		})
	}
	wg.Wait()
	sum := &sb.Propagation{Service: service, Realm: realm, Index: index}
	var firstErr error
	reached := 0
	for _, an := range answers {
		if an.err != nil {
			if firstErr == nil || !sb.Transient(an.err) {
				firstErr = an.err
			}
			continue
		}
		reached++
		sum.Realm = an.p.Realm
		sum.Watchers += an.p.Watchers
		sum.Confirmed += an.p.Confirmed
	}
	// A replica that answered with an error was reached, and its streams
	// were not counted: the sum is not every watcher's.
	if reached == 0 || (firstErr != nil && !sb.Transient(firstErr)) {
		return sum, firstErr
	}
	return sum, nil
}
