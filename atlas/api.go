package atlas

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/ui"
)

// renderCache keeps the last rendered body per query, so that a thousand
// watchers woken by one change render it once: the first renders, the
// others wait for its result. It holds at most maxCacheEntries bodies and
// maxCacheBytes of them: a client that reads every service of a large
// registry once must not leave a copy of each answer behind (a
// 1,000-instance service renders to some 300 KB).
type renderCache struct {
	// mu guards m and bytes.
	mu    sync.Mutex
	m     map[string]*cachedBody
	bytes int // of the bodies in m that are rendered
}

const (
	maxCacheEntries = 4096
	maxCacheBytes   = 16 << 20
)

type cachedBody struct {
	index   uint64
	done    chan struct{} // closed when body is set
	body    []byte
	counted bool // in renderCache.bytes (guarded by its mu)
}

func (c *renderCache) get(key string, index uint64, build func() []byte) []byte {
	c.mu.Lock()
	old, ok := c.m[key]
	if ok && old.index == index {
		c.mu.Unlock()
		<-old.done
		return old.body
	}
	e := &cachedBody{index: index, done: make(chan struct{})}
	if c.m == nil || len(c.m) >= maxCacheEntries || c.bytes > maxCacheBytes {
		// Start again: whoever waits on a dropped entry still has it.
		c.m, c.bytes, ok = make(map[string]*cachedBody), 0, false
	}
	if ok {
		c.forgetLocked(old)
	}
	c.m[key] = e
	c.mu.Unlock()
	body := build()
	c.mu.Lock()
	e.body = body
	if c.m[key] == e {
		c.bytes += len(body)
		e.counted = true
	}
	c.mu.Unlock()
	close(e.done)
	return body
}

// forgetLocked takes a replaced entry's body out of the count. One still
// rendering is not counted yet, and will not be: it is no longer in m.
func (c *renderCache) forgetLocked(e *cachedBody) {
	if e.counted {
		c.bytes -= len(e.body)
		e.counted = false
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	// handle serves an API route that takes the query parameters named
	// and no other: a misspelt one (?servce=identity on a config layer
	// write) would otherwise be ignored, and the write meant for one
	// layer go to another.
	handle := func(pattern string, h apiFunc, params ...string) {
		mux.Handle(pattern, s.wrap(pattern, false, onlyParams(pattern, params, h)))
	}
	blocking := []string{"index", "wait"}
	handle("PUT /v1/instances/{id}", s.handleRegister, "sync")
	handle("PUT /v1/instances/{id}/status", s.handleHeartbeat, "sync")
	handle("PUT /v1/heartbeats", s.handleHeartbeats, "sync")
	handle("PUT /v1/instances/{id}/enabled", s.handleEnabled)
	handle("DELETE /v1/instances/{id}", s.handleDeregister)
	handle("GET /v1/instances/{id}", s.handleInstance, blocking...)
	handle("GET /v1/services", s.handleServices, append([]string{"realm"}, blocking...)...)
	handle("GET /v1/services/{name}", s.handleService, append([]string{"realm", "status", "tag", "leases"}, blocking...)...)
	handle("POST /v1/services/{name}/port", s.handlePort)
	handle("GET /v1/services/{name}/propagation", s.handlePropagation, append([]string{"realm"}, blocking...)...)
	handle("GET /v1/watch", s.handleWatch, "realm", "service")
	handle("PUT /v1/config/layer", s.handlePutLayer, "realm", "service", "cas")
	handle("DELETE /v1/config/layer", s.handleDeleteLayer, "realm", "service", "cas")
	handle("GET /v1/config/layer", s.handleGetLayer, append([]string{"realm", "service"}, blocking...)...)
	handle("GET /v1/config/layers", s.handleLayers, blocking...)
	handle("GET /v1/config", s.handleConfig, append([]string{"realm", "service"}, blocking...)...)
	handle("POST /v1/tokens", s.handleCreateToken)
	handle("GET /v1/tokens", s.handleTokens)
	handle("DELETE /v1/tokens/{id}", s.handleDeleteToken)
	handle("PUT /v1/policies/{service}", s.handlePutPolicy, "realm")
	handle("GET /v1/policies", s.handlePolicies, "realm")
	// /metrics takes whatever a Prometheus scrape config adds.
	mux.Handle("GET /metrics", s.wrap("GET /metrics", false, func(w http.ResponseWriter, r *http.Request) error {
		if err := principalFrom(r.Context()).readAll(); err != nil {
			return err
		}
		s.metrics.handler.ServeHTTP(w, r)
		return nil
	}))
	mux.Handle("GET /v1/health", s.wrap("GET /v1/health", true, s.handleHealth))
	// The same check in Kubernetes' forms, for probes that expect them:
	// /livez passes while Atlas serves (a store that does not answer is
	// no reason to restart it), /readyz runs the store check.
	for _, p := range []string{"/livez", "/livez/{check}", "/readyz", "/readyz/{check}"} {
		h := s.health.Livez()
		if strings.HasPrefix(p, "/readyz") {
			h = s.health.Readyz()
		}
		mux.Handle("GET "+p, s.wrap("GET "+p, true, func(w http.ResponseWriter, r *http.Request) error {
			h.ServeHTTP(w, r)
			return nil
		}))
	}
	// The dashboard's files hold no data: they need no token.
	mux.Handle("GET /ui/", ui.Handler("/ui/"))
	mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	mux.Handle("/", s.wrap("other", true, func(w http.ResponseWriter, r *http.Request) error {
		// The SPEC's one table of statuses has no 405: a path that takes
		// other methods is a 404 that names them.
		if m := otherMethods(mux, r); len(m) > 0 {
			allow := m
			if slices.Contains(m, "GET") {
				allow = append([]string{"HEAD"}, m...) // a GET pattern takes HEAD too
			}
			w.Header().Set("Allow", strings.Join(allow, ", "))
			return sb.Errorf(sb.ENotFound, "%s %s: no such endpoint; %s takes %s", r.Method, r.URL.Path, r.URL.Path, strings.Join(m, ", "))
		}
		return sb.Errorf(sb.ENotFound, "%s %s: no such endpoint", r.Method, r.URL.Path)
	}))
	return mux
}

// otherMethods lists the methods that mux routes r's path to an endpoint
// with, other than the catch-all.
func otherMethods(mux *http.ServeMux, r *http.Request) []string {
	var ms []string
	for _, m := range []string{"GET", "PUT", "POST", "DELETE"} {
		if m == r.Method {
			continue
		}
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
			ms = append(ms, m)
		}
	}
	return ms
}

// onlyParams refuses a request with a query parameter not in params.
func onlyParams(route string, params []string, h apiFunc) apiFunc {
	takes := "takes none"
	if len(params) > 0 {
		takes = "takes " + strings.Join(params, ", ")
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		for k := range query(r) {
			if !slices.Contains(params, k) {
				return sb.Errorf(sb.EInvalid, "%s: unknown query parameter (%s %s)", k, route, takes)
			}
		}
		return h(w, r)
	}
}

// realmParam reads ?realm (default dev).
func realmParam(r *http.Request) (string, error) {
	realm := query(r).Get("realm")
	if realm == "" {
		return sb.DefaultRealm, nil
	}
	return realm, sb.ValidateName("realm", realm)
}

// syncLaterParam reads ?sync: "later" says that the caller heartbeats and
// registers again when a heartbeat gets not_found, as a sidecar does, so
// the write may be synced to disk after it is answered (Op.SyncLater).
func syncLaterParam(r *http.Request) (bool, error) {
	vs, given := query(r)["sync"]
	switch {
	case !given:
		return false, nil
	case len(vs) == 1 && vs[0] == "later":
		return true, nil
	}
	return false, sb.Errorf(sb.EInvalid, "sync: must be later (the caller heartbeats, and registers again when a heartbeat gets not_found), once, or not given, got %q", strings.Join(vs, "&"))
}

func idParam(r *http.Request) (string, error) {
	// A copy: the path value is a slice of the whole request line, which
	// anything kept for the instance's life would otherwise pin.
	id := strings.Clone(r.PathValue("id"))
	return id, sb.ValidateID(id)
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) error {
	id, err := idParam(r)
	if err != nil {
		return err
	}
	later, err := syncLaterParam(r)
	if err != nil {
		return err
	}
	body, err := readBody(w, r, sb.MaxBodyBytes)
	if err != nil {
		return err
	}
	var reg sb.Registration
	if err := DecodeJSON(body, &reg); err != nil {
		return err
	}
	if err := ttlGiven(reg, body); err != nil {
		return err
	}
	reg.Normalize()
	if err := reg.Validate(); err != nil {
		return err
	}
	p := principalFrom(r.Context())
	if err := p.own(reg.Realm, reg.Service); err != nil {
		return err
	}
	in, err := s.register(r.Context(), id, reg, p.own, later)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.serviceIndex(in), marshal(in))
	return nil
}

// ttlGiven refuses a registration whose body gives a ttl of "0s" (or
// any zero duration): a TTL of zero means "not given" to Normalize, and
// it would silently become the default. Only a TTL of zero is looked
// for again, so a sidecar's registrations, which give one, are read once.
func ttlGiven(reg sb.Registration, body []byte) error {
	if reg.TTL != 0 {
		return nil
	}
	var given struct {
		TTL json.RawMessage `json:"ttl"`
	}
	if json.Unmarshal(body, &given) == nil && len(given.TTL) > 0 && string(given.TTL) != "null" {
		return sb.Errorf(sb.EInvalid, "ttl: must be between %s and 24h, got %s", sb.MinTTL, time.Duration(0))
	}
	return nil
}

// serviceIndex is the index of the answer of in's service: after a write
// to in, the index to wait for (blocking queries, propagation).
func (s *Server) serviceIndex(in *sb.Instance) uint64 {
	s.st.mu.RLock()
	defer s.st.mu.RUnlock()
	return s.st.indexOfLocked(svcKey(in.Realm, in.Service))
}

// byServiceToken reports whether r comes with a service token, which
// acts for its own instances only, and may not touch an operator's switch.
func byServiceToken(r *http.Request) bool {
	p := principalFrom(r.Context())
	return p != nil && p.tok.Role == sb.RoleService
}

// ownInstance checks that the caller may act for instance id.
func (s *Server) ownInstance(r *http.Request, id string) error {
	p := principalFrom(r.Context())
	if p == nil || p.tok.Role == sb.RoleAdmin {
		return nil
	}
	var in *instRecord
	if _, err := s.found(r.Context(), func() bool {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		in = s.st.instances[id]
		return in != nil
	}); err != nil {
		return err
	}
	if p.tok.Role != sb.RoleService {
		if in == nil {
			return p.own("", "") // do not tell a stranger whether the id exists
		}
		return p.own(in.realm(), in.service())
	}
	// Nor a service token whose it is (a 403 named its service and
	// realm): as GET /v1/instances/{id} does, an id it may not act for is
	// one that is not there.
	if in == nil || p.own(in.realm(), in.service()) != nil {
		return sb.Errorf(sb.ENotFound, "instance %s: not registered or its lease expired (or not one this token may act for); register it again", id)
	}
	return nil
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) error {
	id, err := idParam(r)
	if err != nil {
		return err
	}
	later, err := syncLaterParam(r)
	if err != nil {
		return err
	}
	var hb sb.Heartbeat
	if err := decodeBody(w, r, sb.MaxBodyBytes, &hb); err != nil {
		return err
	}
	if err := hb.Validate(); err != nil {
		return err
	}
	if err := s.ownInstance(r, id); err != nil {
		return err
	}
	in, err := s.heartbeat(r.Context(), id, hb, later)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.serviceIndex(in), marshal(in))
	return nil
}

// handleHeartbeats serves PUT /v1/heartbeats: many heartbeats in one
// request, each answered on its own (a sidecar with many instances sends
// one request an interval instead of one per instance).
func (s *Server) handleHeartbeats(w http.ResponseWriter, r *http.Request) error {
	later, err := syncLaterParam(r)
	if err != nil {
		return err
	}
	var b sb.HeartbeatBatch
	if err := decodeBody(w, r, sb.MaxBodyBytes, &b); err != nil {
		return err
	}
	if err := b.Validate(); err != nil {
		return err
	}
	out := struct {
		Results []sb.BatchResult `json:"results"`
	}{Results: make([]sb.BatchResult, len(b.Heartbeats))}
	// A store may renew each lease with a round trip (etcd): the entries
	// go concurrently, 32 at a time.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i, h := range b.Heartbeats {
		out.Results[i].ID = h.ID
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := s.ownInstance(r, h.ID)
			if err == nil {
				err = s.beat(r.Context(), h.ID, sb.Heartbeat{Status: h.Status, Output: h.Output}, later)
			}
			if err != nil {
				code := sb.ErrorCode(err)
				if code == sb.EInternal {
					s.log.Error("atlas: heartbeat failed", "id", h.ID, "err", err)
				}
				out.Results[i].Error = &sb.Error{Code: code, Message: sb.ErrorMessage(err)}
			}
		}()
	}
	wg.Wait()
	writeJSON(w, http.StatusOK, 0, marshal(out))
	return nil
}

func (s *Server) handleEnabled(w http.ResponseWriter, r *http.Request) error {
	id, err := idParam(r)
	if err != nil {
		return err
	}
	var sw sb.EnabledSwitch
	if err := decodeBody(w, r, sb.MaxBodyBytes, &sw); err != nil {
		return err
	}
	if err := sw.Validate(); err != nil {
		return err
	}
	// A sidecar drains its own instances; operators drain anything.
	if err := s.ownInstance(r, id); err != nil {
		return err
	}
	in, err := s.setEnabled(r.Context(), id, sw, byServiceToken(r))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.serviceIndex(in), marshal(in))
	return nil
}

func (s *Server) handleDeregister(w http.ResponseWriter, r *http.Request) error {
	id, err := idParam(r)
	if err != nil {
		return err
	}
	if err := s.ownInstance(r, id); err != nil {
		return err
	}
	index, err := s.deregister(r.Context(), id, byServiceToken(r))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, index, []byte("{}\n"))
	return nil
}

func (s *Server) handleInstance(w http.ResponseWriter, r *http.Request) error {
	id, err := idParam(r)
	if err != nil {
		return err
	}
	p := principalFrom(r.Context())
	// An instance the caller may not read is answered as one that is not
	// there: a 403 naming its service and realm would tell a service
	// token which ids (SERVICE-HOST-PORT) exist where. Asked of every
	// answer, also after a blocking query waited: the id may since have
	// been taken over by another service.
	notFound := sb.Errorf(sb.ENotFound, "instance %s: not registered", id)
	if p.readAll() != nil {
		notFound = sb.Errorf(sb.ENotFound, "instance %s: not registered, or not one this token may read", id)
	}
	readable := func(in *sb.Instance) error {
		if in == nil || p.readService(in.Realm, in.Service) != nil {
			return notFound
		}
		return nil
	}
	s.st.mu.RLock()
	in := s.st.visibleLocked(id)
	s.st.mu.RUnlock()
	if err := readable(in); err != nil {
		return err
	}
	render := func() (uint64, []byte, error) {
		s.st.mu.RLock()
		in := s.st.visibleLocked(id)
		index := s.st.indexOfLocked(instKey(id))
		s.st.mu.RUnlock()
		if err := readable(in); err != nil {
			return 0, nil, err
		}
		return index, marshal(in), nil
	}
	final := func() ([]byte, error) {
		in, err := s.instance(id, false)
		if err != nil {
			return nil, notFound
		}
		if err := readable(in); err != nil {
			return nil, err
		}
		s.readLease(r.Context(), in)
		return marshal(in), nil
	}
	// render and final ask readable of what they answer with.
	allowed := func() error { return nil }
	return s.blocking(w, r, []string{instKey(id)}, allowed, render, final)
}

func (s *Server) handleServices(w http.ResponseWriter, r *http.Request) error {
	realm, err := realmParam(r)
	if err != nil {
		return err
	}
	allowed := principalFrom(r.Context()).readAll
	render := func() (uint64, []byte, error) {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		index := s.st.indexOfLocked(listKey(realm))
		return index, s.cache.get("list\x00"+realm, index, func() []byte { return marshal(s.servicesLocked(realm)) }), nil
	}
	return s.blocking(w, r, []string{listKey(realm)}, allowed, render, nil)
}

func (s *Server) parseServiceQuery(r *http.Request) (serviceQuery, error) {
	q := serviceQuery{service: r.PathValue("name")}
	var err error
	if q.realm, err = realmParam(r); err != nil {
		return q, err
	}
	if err := sb.ValidateName("name", q.service); err != nil {
		return q, err
	}
	vals := query(r)
	for _, v := range vals["status"] {
		st, err := sb.ParseStatus("status", v)
		if err != nil {
			return q, err
		}
		q.statuses = append(q.statuses, st)
	}
	q.tags = vals["tag"]
	if v := vals.Get("leases"); v != "" {
		if q.leases, err = strconv.ParseBool(v); err != nil {
			return q, sb.Errorf(sb.EInvalid, "leases: must be true or false, got %q", v)
		}
	}
	return q, nil
}

func (s *Server) handleService(w http.ResponseWriter, r *http.Request) error {
	q, err := s.parseServiceQuery(r)
	if err != nil {
		return err
	}
	allowed := func() error { return principalFrom(r.Context()).readService(q.realm, q.service) }
	render := func() (uint64, []byte, error) {
		index, body := s.renderService(q)
		return index, body, nil
	}
	var final func() ([]byte, error)
	if q.leases {
		final = func() ([]byte, error) {
			s.st.mu.RLock()
			out := s.serviceInstancesLocked(q)
			s.st.mu.RUnlock()
			// Not from the store: a listing of thousands would ask etcd
			// once per instance, at every change the dashboard follows.
			s.addLeases(out.Instances)
			return marshal(out), nil
		}
	}
	return s.blocking(w, r, []string{svcKey(q.realm, q.service)}, allowed, render, final)
}

// renderService renders GET /v1/services/{name} without lease fields.
func (s *Server) renderService(q serviceQuery) (uint64, []byte) {
	s.st.mu.RLock()
	defer s.st.mu.RUnlock()
	return s.renderServiceLocked(q)
}

func (s *Server) renderServiceLocked(q serviceQuery) (uint64, []byte) {
	index := s.st.indexOfLocked(svcKey(q.realm, q.service))
	return index, s.cache.get(q.cacheKey(), index, func() []byte { return marshal(s.serviceInstancesLocked(q)) })
}

func (s *Server) handlePort(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if err := sb.ValidateName("name", name); err != nil {
		return err
	}
	if err := principalFrom(r.Context()).admin(); err != nil {
		return err
	}
	// No body is needed; one that is sent must be an empty object.
	if r.ContentLength != 0 {
		if err := decodeBody(w, r, sb.MaxBodyBytes, &struct{}{}); err != nil {
			return err
		}
	}
	pa, err := s.assignPort(r.Context(), name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, 0, marshal(pa))
	return nil
}

// layerParams reads ?realm and ?service for the layer endpoints (both
// optional) and ?cas. A parameter given empty is refused: leaving it out
// names another layer (?realm= from an unset variable would otherwise
// write the global layer).
func layerParams(r *http.Request) (sb.LayerKey, *uint64, error) {
	q := query(r)
	for _, p := range []string{"realm", "service"} {
		if q.Has(p) && q.Get(p) == "" {
			return sb.LayerKey{}, nil, sb.Errorf(sb.EInvalid, "%s: must not be empty (leave it out for the layer of every %s)", p, p)
		}
	}
	k := sb.LayerKey{Realm: q.Get("realm"), Service: q.Get("service")}
	if err := k.Validate(); err != nil {
		return k, nil, err
	}
	if !q.Has("cas") {
		return k, nil, nil
	}
	cas, err := strconv.ParseUint(q.Get("cas"), 10, 64)
	if err != nil {
		return k, nil, sb.Errorf(sb.EInvalid, "cas: must be a non-negative integer, got %q", q.Get("cas"))
	}
	return k, &cas, nil
}

func (s *Server) handlePutLayer(w http.ResponseWriter, r *http.Request) error {
	k, cas, err := layerParams(r)
	if err != nil {
		return err
	}
	if err := principalFrom(r.Context()).admin(); err != nil {
		return err
	}
	var raw rawObject
	if err := decodeBody(w, r, sb.MaxLayerBytes, &raw); err != nil {
		return err
	}
	layer, err := ParseLayer(raw)
	if err != nil {
		return err
	}
	out, err := s.putLayer(r.Context(), k, layer, cas)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, 0, marshal(out))
	return nil
}

// rawObject takes any JSON value; ParseLayer then checks it.
type rawObject []byte

func (o *rawObject) UnmarshalJSON(b []byte) error {
	*o = append((*o)[:0], b...)
	return nil
}

func (s *Server) handleDeleteLayer(w http.ResponseWriter, r *http.Request) error {
	k, cas, err := layerParams(r)
	if err != nil {
		return err
	}
	if err := principalFrom(r.Context()).admin(); err != nil {
		return err
	}
	if err := s.deleteLayer(r.Context(), k, cas); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, 0, []byte("{}\n"))
	return nil
}

func (s *Server) handleGetLayer(w http.ResponseWriter, r *http.Request) error {
	k, _, err := layerParams(r)
	if err != nil {
		return err
	}
	allowed := principalFrom(r.Context()).readAll
	render := func() (uint64, []byte, error) {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		l, err := s.layerLocked(k)
		if err != nil {
			return 0, nil, err
		}
		return s.st.indexOfLocked(layerKey(k)), marshal(l), nil
	}
	return s.blocking(w, r, []string{layerKey(k)}, allowed, render, nil)
}

func (s *Server) handleLayers(w http.ResponseWriter, r *http.Request) error {
	allowed := principalFrom(r.Context()).readAll
	render := func() (uint64, []byte, error) {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		l := s.layersLocked()
		return l.Index, marshal(l), nil
	}
	return s.blocking(w, r, []string{layersKey}, allowed, render, nil)
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) error {
	q := query(r)
	realm, err := realmParam(r)
	if err != nil {
		return err
	}
	service := q.Get("service")
	if service != "" {
		if err := sb.ValidateName("service", service); err != nil {
			return err
		}
	}
	p := principalFrom(r.Context())
	if service == "" && p.readAll() != nil {
		return sb.Errorf(sb.EInvalid, "service: required with a service token (it reads its own services' config)")
	}
	allowed := func() error { return p.readConfig(realm, service) }
	keys := make([]string, 0, 4)
	for _, k := range sb.Layers(realm, service) {
		keys = append(keys, layerKey(k))
	}
	render := func() (uint64, []byte, error) {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		index := s.st.indexOfLocked(keys...)
		return index, s.cache.get("cfg\x00"+realm+"\x00"+service, index, func() []byte { return marshal(s.mergedLocked(realm, service)) }), nil
	}
	return s.blocking(w, r, keys, allowed, render, nil)
}

// InsecureTokenWarning is the warning of a token created while Atlas runs
// with --insecure: it is stored, and counts once Atlas runs with auth on.
const InsecureTokenWarning = "Atlas runs without authentication (--insecure, as switchboard dev does): this token is stored, but checks nothing until Atlas runs with auth on"

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) error {
	if err := principalFrom(r.Context()).admin(); err != nil {
		return err
	}
	var req sb.TokenRequest
	if err := decodeBody(w, r, sb.MaxBodyBytes, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return err
	}
	tok, err := s.createToken(r.Context(), req)
	if err != nil {
		return err
	}
	if s.cfg.Insecure {
		tok.Warning = InsecureTokenWarning
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, 0, marshal(tok))
	return nil
}

func (s *Server) handleTokens(w http.ResponseWriter, r *http.Request) error {
	if err := principalFrom(r.Context()).admin(); err != nil {
		return err
	}
	s.st.mu.RLock()
	index := s.st.indexOfLocked(tokensKey)
	body := marshal(sb.TokenList{Index: index, Tokens: s.tokensLocked()})
	s.st.mu.RUnlock()
	writeJSON(w, http.StatusOK, index, body)
	return nil
}

func (s *Server) handleDeleteToken(w http.ResponseWriter, r *http.Request) error {
	if err := principalFrom(r.Context()).admin(); err != nil {
		return err
	}
	id := r.PathValue("id")
	if err := s.deleteToken(r.Context(), id); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, 0, []byte("{}\n"))
	return nil
}

func (s *Server) handlePutPolicy(w http.ResponseWriter, r *http.Request) error {
	realm, err := realmParam(r)
	if err != nil {
		return err
	}
	if err := principalFrom(r.Context()).admin(); err != nil {
		return err
	}
	var body struct {
		MayCall []string `json:"may_call"`
	}
	if err := decodeBody(w, r, sb.MaxBodyBytes, &body); err != nil {
		return err
	}
	p := sb.Policy{Service: r.PathValue("service"), Realm: realm, MayCall: body.MayCall}
	if err := p.Validate(); err != nil {
		return err
	}
	out, err := s.putPolicy(r.Context(), p)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, 0, marshal(out))
	return nil
}

func (s *Server) handlePolicies(w http.ResponseWriter, r *http.Request) error {
	realm := query(r).Get("realm")
	if realm != "" {
		if err := sb.ValidateName("realm", realm); err != nil {
			return err
		}
	}
	if err := principalFrom(r.Context()).readAll(); err != nil {
		return err
	}
	s.st.mu.RLock()
	index := s.st.indexOfLocked(policiesKey)
	body := marshal(sb.PolicyList{Index: index, Policies: s.policiesLocked(realm)})
	s.st.mu.RUnlock()
	writeJSON(w, http.StatusOK, index, body)
	return nil
}
