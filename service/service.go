// Package service is the smart service kit: it wraps an http.Handler into
// a service with the standard endpoints (/healthcheck, /livez, /readyz,
// /environment, /metrics), JSON logs, an access log, panic recovery,
// layered config, the smart client, a database handle, and a shutdown that
// fails readiness first, waits for the sidecars to stop routing to it, and
// then drains in-flight requests.
//
//	svc := service.New("identity")
//	svc.Check("redis", func(ctx context.Context) (string, error) { ... })
//	svc.Handle("/teams", teams)
//	if err := svc.Run(ctx); err != nil { ... } // serves until SIGTERM, then drains
package service

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/config"
	"github.com/switchboard-go/switchboard/health"
)

// Service is one smart service. Build it with New; set fields before Run.
type Service struct {
	// Name of the service.
	Name string
	// Realm, from SWITCHBOARD_REALM (default dev).
	Realm string
	// Instance is this instance's id in Atlas, as the sidecar registers it:
	// SWITCHBOARD_INSTANCE, else NAME-HOST-PORT.
	Instance string
	// Listen is the address served: SWITCHBOARD_LISTEN, else the config
	// key "listen", else :8080.
	Listen string
	// DrainTimeout bounds the shutdown: waiting for the sidecars, then for
	// in-flight requests, each. Config key "drain_timeout", else 10s.
	DrainTimeout time.Duration
	// PublicConfig lists the config keys (and key prefixes ending in ".")
	// whose values /environment shows; every other value is masked. Config
	// key "public_config" adds to it.
	PublicConfig []string

	log     *slog.Logger
	cfg     *config.Config
	cfgErr  error
	atlas   *client.Atlas
	checker *health.Checker
	mux     *http.ServeMux
	reg     *prometheus.Registry
	reqs    *prometheus.CounterVec
	lat     *prometheus.HistogramVec
	started time.Time
	// clientMu guards client, made at the first call of Client.
	clientMu sync.Mutex
	client   *http.Client

	// dbMu guards db and dbClosed (set when Run has closed db).
	dbMu     sync.Mutex
	dbClosed bool
	db       *sql.DB

	// ready is closed once Run listens; Addr is then the bound address.
	ready chan struct{}
	addr  string
}

// New builds the service name from the environment and its config:
// SWITCHBOARD_REALM, SWITCHBOARD_ATLAS (and SWITCHBOARD_TOKEN), the file
// SWITCHBOARD_CONFIG_FILE (else config.yaml in the working directory or
// beside the executable, when there is one), and the
// Atlas merged config of the service in its realm; when Atlas is
// unreachable it runs on its local config alone and says so in its log. A
// config that cannot be read makes Run fail.
func New(name string) *Service {
	s := &Service{
		Name:         name,
		Realm:        envOr("SWITCHBOARD_REALM", sb.DefaultRealm),
		PublicConfig: []string{"listen", "log", "log_level", "drain_timeout", "public_config"},
		mux:          http.NewServeMux(),
		checker:      health.New(),
		started:      time.Now(),
		ready:        make(chan struct{}),
	}
	host, _ := sb.Hostname()
	s.checker.Hostname = host
	s.atlas = client.AtlasFromEnv()
	level := new(slog.LevelVar)
	base := slog.New(slog.NewJSONHandler(logOutput, &slog.HandlerOptions{Level: level}))
	s.log = base.With("service", name, "realm", s.Realm)
	s.initMetrics() // Metrics works even when New failed: Run says why
	for _, u := range s.atlas.URLs {
		if err := client.CheckURL(u); err != nil {
			s.cfgErr = fmt.Errorf("SWITCHBOARD_ATLAS: %v", err)
			return s
		}
	}
	if err := sb.ValidateName("service", name); err != nil {
		s.cfgErr = fmt.Errorf("service.New: %s", sb.ErrorMessage(err))
		return s
	}
	file, looked := configFile()
	s.cfg, s.cfgErr = config.Load(context.Background(), config.Options{
		Service: name, Realm: s.Realm, File: file, Atlas: s.atlas,
		Defaults: map[string]any{"listen": ":8080", "drain_timeout": "10s"},
	})
	if s.cfgErr != nil {
		return s
	}
	v := s.cfg.Values()
	s.Listen = envOr("SWITCHBOARD_LISTEN", v.String("listen", ":8080"))
	if s.DrainTimeout, s.cfgErr = drainTimeout(v); s.cfgErr != nil {
		return s
	}
	s.Instance = os.Getenv("SWITCHBOARD_INSTANCE")
	if s.Instance == "" {
		_, port, _ := net.SplitHostPort(s.Listen)
		s.Instance = fmt.Sprintf("%s-%s-%s", name, host, port)
	}
	if s.cfgErr = setLevel(level, v); s.cfgErr != nil {
		return s
	}
	s.log = base.With("service", name, "realm", s.Realm, "instance", s.Instance)
	s.cfg.SetLogger(s.log)
	s.cfg.OnChange(func(_, nv *config.Values) {
		if err := setLevel(level, nv); err != nil {
			s.log.Warn("service: "+err.Error()+"; the log level stays as it was", "level", level.Level().String())
		}
	})
	if file == "" {
		s.log.Warn("service: no config file; running on the defaults, Atlas and the environment (set SWITCHBOARD_CONFIG_FILE)", "looked_in", looked)
	}
	if !s.cfg.FromAtlas() {
		urls := s.atlas.URLs
		if len(urls) == 0 {
			urls = []string{client.DefaultAtlasURL}
		}
		msg := "service: no config from Atlas; running on local config alone until it answers"
		switch err := s.cfg.LoadError(); sb.ErrorCode(err) {
		case sb.EUnauthenticated:
			msg = "service: Atlas takes no call without a valid token (auth is on): set SWITCHBOARD_TOKEN to a service token for this service; running on local config alone until then"
		case sb.EPermissionDenied:
			msg = "service: Atlas refuses this service's token its config (a service token names the services it may act for); running on local config alone until then"
		}
		s.log.Warn(msg, "atlas", redactURLs(strings.Join(urls, ",")), "err", s.cfg.LoadError())
	}
	return s
}

// configFile finds the service's config: SWITCHBOARD_CONFIG_FILE, else
// config.yaml in the working directory, else beside the executable (a
// binary started from elsewhere, or from a container's root). It returns
// "" and where it looked when there is none.
func configFile() (file string, looked []string) {
	if f := os.Getenv("SWITCHBOARD_CONFIG_FILE"); f != "" {
		return f, nil
	}
	looked = []string{"config.yaml"}
	if exe, err := os.Executable(); err == nil {
		looked = append(looked, filepath.Join(filepath.Dir(exe), "config.yaml"))
	}
	for _, f := range looked {
		if _, err := os.Stat(f); err == nil {
			return f, nil
		}
	}
	return "", looked
}

// setLevel sets the log level from the config key log (debug, info, warn
// or error; info when unset).
func setLevel(level *slog.LevelVar, v *config.Values) error {
	name := v.String("log", "info")
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	l, ok := levels[strings.ToLower(name)]
	if !ok {
		return fmt.Errorf("config: log: must be debug, info, warn or error, got %q", name)
	}
	level.Set(l)
	return nil
}

// drainTimeout reads the config key drain_timeout: a positive Go duration
// ("10s") or number of seconds. A value that is neither stops the service
// at start rather than be replaced by a default, unsaid.
func drainTimeout(v *config.Values) (time.Duration, error) {
	raw := v.Get("drain_timeout")
	d := v.Duration("drain_timeout", -1)
	if raw == nil {
		return 10 * time.Second, nil
	}
	if d <= 0 {
		return 0, fmt.Errorf("config: drain_timeout: must be a positive duration such as 10s, got %s", v.String("drain_timeout", ""))
	}
	return d, nil
}

// logOutput is where logs go: stdout (tests move it).
var logOutput io.Writer = os.Stdout

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Logger returns the service's logger: JSON on stdout, with service, realm
// and instance on every line.
func (s *Service) Logger() *slog.Logger { return s.log }

// Config returns the service's config, current (Atlas changes are applied
// while the service runs).
func (s *Service) Config() *config.Values {
	if s.cfg == nil {
		return config.Empty()
	}
	return s.cfg.Values()
}

// OnConfigChange registers fn to be called after every config change.
func (s *Service) OnConfigChange(fn func(old, new *config.Values)) {
	if s.cfg != nil {
		s.cfg.OnChange(fn)
	}
}

// Client returns the smart client: service://NAME/path URLs go through the
// local sidecar.
func (s *Service) Client() *http.Client {
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	if s.client == nil {
		s.client = &http.Client{Transport: &client.Transport{Atlas: s.atlas, Realm: s.Realm, Logger: s.log}}
	}
	return s.client
}

// Check adds a readiness check (it also decides /healthcheck).
func (s *Service) Check(name string, fn health.Func) {
	if err := s.checker.Add(name, fn); err != nil {
		panic(err) // a programming error: two checks of one name
	}
}

// LivenessCheck adds a check that decides /livez too: only for what a
// restart would fix, never for a dependency.
func (s *Service) LivenessCheck(name string, fn health.Func) {
	if err := s.checker.AddCheck(health.Check{Name: name, Func: fn, Liveness: true}); err != nil {
		panic(err)
	}
}

// Health returns the service's checker.
func (s *Service) Health() *health.Checker { return s.checker }

// GRPCHealth returns the grpc.health.v1 server for the service's checks,
// to register on the service's gRPC server.
func (s *Service) GRPCHealth() healthpb.HealthServer { return s.checker.GRPC() }

// Handle serves pattern with h (http.ServeMux patterns), wrapped in the
// access log, panic recovery and metrics.
func (s *Service) Handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, s.wrap(h))
}

// HandleFunc is Handle for a function.
func (s *Service) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	s.Handle(pattern, http.HandlerFunc(h))
}

// Metrics returns the service's Prometheus registry, for metrics of its
// own.
func (s *Service) Metrics() *prometheus.Registry { return s.reg }

// Addr returns the address the service listens on, once it does.
func (s *Service) Addr(ctx context.Context) (string, error) {
	select {
	case <-s.ready:
		return s.addr, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (s *Service) initMetrics() {
	s.reg = prometheus.NewRegistry()
	s.reqs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "http_requests_total", Help: "Requests by route and status code.",
	}, []string{"route", "code"})
	s.lat = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "http_request_duration_seconds", Help: "Request latency by route.",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	s.reg.MustRegister(s.reqs, s.lat, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// DB returns the database named by the config key "database" ({"driver":
// "postgres", "dsn": "..."}), opened once; the driver is registered by the
// service's own import. A built-in "database" check pings it. An error is
// not kept: a later call tries again, so that a database configured in
// Atlas after the service started is opened then.
func (s *Service) DB() (*sql.DB, error) {
	s.dbMu.Lock()
	defer s.dbMu.Unlock()
	if s.dbClosed {
		return nil, errors.New("service: database: closed, as Run has returned")
	}
	if s.db != nil {
		return s.db, nil
	}
	var spec struct {
		Driver string `json:"driver"`
		DSN    string `json:"dsn"`
	}
	if err := s.Config().Decode("database", &spec); err != nil || spec.Driver == "" {
		return nil, errors.New(`service: config key "database" must be {"driver": "...", "dsn": "..."}`)
	}
	db, err := sql.Open(spec.Driver, spec.DSN)
	if err != nil {
		return nil, fmt.Errorf("service: database: %w", err)
	}
	s.db = db
	err = s.checker.Add("database", func(ctx context.Context) (string, error) {
		if err := db.PingContext(ctx); err != nil {
			return "", fmt.Errorf("%s: %w", spec.Driver, err)
		}
		return spec.Driver + " ok", nil
	})
	if err != nil {
		s.log.Warn("service: DB adds no check of its own: a check named database is there already", "err", err)
	}
	return s.db, nil
}

// Run serves until ctx ends or the process gets SIGTERM or SIGINT, then
// shuts down: readiness fails first, then it waits until Atlas says the
// sidecars have stopped routing here (at most DrainTimeout), then
// in-flight requests drain (at most DrainTimeout). A second signal during
// the shutdown ends the process at once, as a signal does when nothing
// catches it. Run returns nil after a clean shutdown, and an error
// wrapping ErrDrainTimeout when requests still running at the end of the
// drain were cut off.
func (s *Service) Run(ctx context.Context) error {
	if s.cfgErr != nil {
		return s.cfgErr
	}
	// Caught here, not only in main: a Run given a context no signal
	// ends (context.Background()) still drains on SIGTERM.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	stopSignals := sync.OnceFunc(func() { signal.Stop(sig) })
	defer stopSignals()
	s.checker.Register(s.mux)
	s.mux.Handle("GET /environment", http.HandlerFunc(s.environment))
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return fmt.Errorf("service %s: listen: %w", s.Name, err)
	}
	s.addr = ln.Addr().String()
	close(s.ready)
	srv := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	wctx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go s.cfg.Watch(wctx)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("service: listening", "addr", s.addr)
	select {
	case err := <-errc:
		return fmt.Errorf("service %s: %w", s.Name, err)
	case <-ctx.Done():
	case got := <-sig:
		s.log.Info("service: got a signal", "signal", got.String())
	}
	stopSignals()
	s.log.Info("service: shutting down: readiness fails from now")
	s.checker.SetDraining(true)
	s.waitForSidecars()
	sctx, cancel := context.WithTimeout(context.Background(), s.DrainTimeout)
	defer cancel()
	var drainErr error
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		drainErr = fmt.Errorf("service %s: %w (%v): requests still running were cut off", s.Name, ErrDrainTimeout, s.DrainTimeout)
		s.log.Warn("service: requests still running at the end of the drain were cut off", "drain_timeout", s.DrainTimeout.String())
	}
	s.dbMu.Lock()
	if s.db != nil {
		s.db.Close()
	}
	s.dbClosed = true
	s.dbMu.Unlock()
	// The smart client's watches of Atlas (direct calls) end with Run.
	s.clientMu.Lock()
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
	s.clientMu.Unlock()
	s.log.Info("service: stopped")
	return drainErr
}

// ErrDrainTimeout is what Run returns when requests were still running at
// the end of the drain, and were cut off.
var ErrDrainTimeout = errors.New("drain_timeout ran out")

// waitForSidecars waits until this instance is out of rotation: Atlas has
// it critical (its sidecar's check saw readiness fail), disabled or gone,
// and every event stream watching the service has been sent that. Without
// Atlas it waits a short grace, since sidecars that still route here retry
// elsewhere on the first refused connection.
func (s *Service) waitForSidecars() {
	ctx, cancel := context.WithTimeout(context.Background(), s.DrainTimeout)
	defer cancel()
	start := time.Now()
	var index uint64
	for {
		// Atlas waits up to wait/16 longer than asked (jitter): ask for
		// less than what is left, so that it answers within it.
		wait := time.Until(deadline(ctx)) * 15 / 17
		if index > 0 && wait < time.Millisecond {
			s.log.Warn("service: still in rotation at the end of the drain timeout")
			return
		}
		si, err := s.atlas.Service(ctx, s.Realm, s.Name, client.ServiceOptions{QueryOptions: client.QueryOptions{Index: index, Wait: wait}})
		if err != nil && index > 0 && ctx.Err() != nil {
			s.log.Warn("service: still in rotation at the end of the drain timeout")
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				grace := min(2*time.Second, s.DrainTimeout)
				s.log.Warn("service: cannot ask Atlas whether the sidecars stopped routing here; waiting a grace period", "err", err, "grace", grace.String())
				select {
				case <-ctx.Done():
				case <-time.After(grace):
				}
			}
			return
		}
		me := findSelf(si.Instances, s.Instance, s.addr)
		if me != nil && me.ID != s.Instance && index == 0 {
			s.log.Info("service: found this instance in Atlas by its address, under another id (set SWITCHBOARD_INSTANCE to it)", "id", me.ID)
		}
		if me == nil && index == 0 {
			s.log.Info("service: not registered in Atlas (no sidecar announces it): nothing to wait for")
			return
		}
		if index == 0 && me.Routable() && !s.readinessWatched(time.Duration(me.TTL)) {
			s.log.Warn("service: no check has asked for readiness within the lease, so the sidecars cannot see this service drain (check it with http: /readyz, not tcp or none): stopping without waiting for them; they retry refused connections elsewhere",
				"ttl", time.Duration(me.TTL).String())
			return
		}
		if me == nil || !me.Routable() {
			p, err := s.atlas.Propagation(ctx, s.Realm, s.Name, si.Index)
			switch {
			case err != nil:
				s.log.Warn("service: out of rotation in Atlas; could not confirm the sidecars saw it", "err", err)
			case p.Confirmed < p.Watchers:
				s.log.Warn("service: not every sidecar confirmed in time", "watchers", p.Watchers, "confirmed", p.Confirmed)
			default:
				s.log.Info("service: out of rotation", "watchers", p.Watchers, "after", time.Since(start).Round(time.Millisecond).String())
			}
			return
		}
		if ctx.Err() != nil {
			s.log.Warn("service: still in rotation at the end of the drain timeout")
			return
		}
		index = si.Index
	}
}

// findSelf returns this instance in a listing: the one with its id, else
// the one at its port on an address of this host's. A sidecar whose
// host: is not this host's name registers it under another id.
func findSelf(list []*sb.Instance, id, listen string) *sb.Instance {
	for _, in := range list {
		if in.ID == id {
			return in
		}
	}
	_, p, _ := net.SplitHostPort(listen)
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil
	}
	var local []net.IP
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				local = append(local, ipn.IP)
			}
		}
	}
	for _, in := range list {
		ip := net.ParseIP(in.Address)
		if in.Port == port && ip != nil && slices.ContainsFunc(local, ip.Equal) {
			return in
		}
	}
	return nil
}

// readinessWatched reports whether a check (the sidecar's, every
// interval) asks for readiness, so that failing it takes this instance out
// of rotation: asked within the last lease of ttl (three check intervals),
// or the service has not run for a lease yet and cannot tell.
func (s *Service) readinessWatched(ttl time.Duration) bool {
	if time.Since(s.started) < ttl {
		return true
	}
	asked := s.checker.ReadinessAskedAt()
	return !asked.IsZero() && time.Since(asked) <= ttl
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// statusWriter records the status for the access log and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack lets a handler take the connection over, as WebSocket servers
// do: the access log says 101 unless the handler wrote a status first.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return c, rw, err
}

// Flush lets streaming handlers flush through the writer.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		if w.status == 0 {
			w.status = http.StatusOK
		}
		f.Flush()
	}
}

// wrap adds the access log, panic recovery (500, stack in the log) and
// metrics to a handler. A panic after the answer began cuts the
// connection (http.ErrAbortHandler), so that the caller sees a broken
// answer rather than a whole one that is cut short.
func (s *Service) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			aborted := false
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("service: panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", stack())
				if sw.status == 0 {
					sw.Header().Set("Content-Type", "application/json")
					sw.WriteHeader(http.StatusInternalServerError)
					sw.Write([]byte(`{"error":{"code":"internal","message":"internal error"}}` + "\n"))
				} else {
					aborted = true
				}
			}
			if aborted {
				defer panic(http.ErrAbortHandler)
			}
			if sw.status == 0 {
				sw.status = http.StatusOK // what net/http sends for a handler that writes nothing
			}
			route := r.Pattern
			if route == "" {
				route = "other"
			}
			d := time.Since(start)
			s.reqs.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
			s.lat.WithLabelValues(route).Observe(d.Seconds())
			attrs := []any{"method", r.Method, "path", r.URL.Path, "route", route, "status", sw.status,
				"bytes", sw.bytes, "duration_ms", float64(d.Microseconds()) / 1000, "remote", r.RemoteAddr}
			if aborted {
				attrs = append(attrs, "aborted", true)
			}
			s.log.Info("access", attrs...)
		}()
		h.ServeHTTP(sw, r)
	})
}

func stack() string { return string(debug.Stack()) }
