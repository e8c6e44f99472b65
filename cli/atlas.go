package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/boltstore"
	"github.com/switchboard-go/switchboard/atlas/etcdstore"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/sidecar"
)

// atlasOptions are what `switchboard atlas` and `switchboard dev` need to
// run an Atlas.
type atlasOptions struct {
	listen   string
	dataDir  string
	insecure bool
	ports    string
	store    string // "" or bolt: embedded; etcd://h1:2379,h2:2379: a cluster
	// etcdCA, etcdCert, etcdKey: PEM files for TLS to etcd.
	etcdCA, etcdCert, etcdKey string
}

// atlasGCPercent is switchboard atlas's GOGC unless the environment sets
// one.
const atlasGCPercent = 75

// devIgnores names the fields of a -c file that dev sets itself.
func devIgnores(c *sidecar.Config) []string {
	var out []string
	for _, f := range []struct {
		key string
		set bool
	}{
		{"atlas", len(c.Atlas) > 0}, {"token_file", c.TokenFile != ""}, {"realm", c.Realm != ""},
		{"host", c.Host != ""}, {"advertise", c.Advertise != ""}, {"listen", c.Listen != ""},
		{"admin", c.Admin != ""}, {"state_dir", c.StateDir != ""}, {"drain_timeout", c.DrainTimeout != 0},
		{"proxy", c.Proxy != ""}, {"haproxy", c.HAProxy != (sidecar.HAProxyConfig{})},
	} {
		if f.set {
			out = append(out, f.key)
		}
	}
	return out
}

func atlasCmd(g *globals) *cobra.Command {
	o := atlasOptions{}
	c := &cobra.Command{
		Use:   "atlas",
		Short: "Run the Atlas registry and config server",
		Long: `Run Atlas: the registry of every instance of every service, per realm, with
leases, blocking queries and an event stream; and the layered config server.

Auth is on unless --insecure: on first start Atlas writes an admin token to
DATA/admin.token (mode 0600) and logs that path.`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			log := slog.New(slog.NewJSONHandler(g.stderr, nil))
			if os.Getenv("GOGC") == "" {
				// Atlas's heap is mostly long-lived records: collect at 75%
				// growth rather than Go's 100%, as Prometheus does. Measured
				// at 100,000 instances: 7% less RSS, 10% more CPU per
				// registration.
				debug.SetGCPercent(atlasGCPercent)
			}
			return runAtlas(cmd.Context(), o, log, func(addr string) {
				log.Info("atlas: listening", "url", "http://"+addr, "data", o.dataDir, "insecure", o.insecure)
			})
		}),
	}
	f := c.Flags()
	f.StringVar(&o.listen, "listen", ":4400", "address for the API, UI and metrics")
	f.StringVar(&o.dataDir, "data", "./atlas-data", "directory of the embedded store and the admin token")
	f.BoolVar(&o.insecure, "insecure", false, "run without authentication")
	f.StringVar(&o.ports, "ports", "5000-5999", "range of ports given to new services")
	f.StringVar(&o.store, "store", "", "etcd://h1:2379,h2:2379 to keep the state in an etcd cluster (default: embedded, in --data)")
	f.StringVar(&o.etcdCA, "etcd-ca", "", "with --store etcd://: reach etcd over TLS, trusting this CA (PEM file)")
	f.StringVar(&o.etcdCert, "etcd-cert", "", "with --etcd-ca: client certificate (PEM file) for etcd's --client-cert-auth")
	f.StringVar(&o.etcdKey, "etcd-key", "", "with --etcd-cert: its private key (PEM file)")
	return c
}

// etcdTLS builds the TLS configuration of --etcd-ca, --etcd-cert and
// --etcd-key, or nil when none is given.
func (o atlasOptions) etcdTLS() (*tls.Config, error) {
	switch {
	case o.etcdCA == "" && o.etcdCert == "" && o.etcdKey == "":
		return nil, nil
	case o.etcdCA == "":
		return nil, usagef("--etcd-cert and --etcd-key: need --etcd-ca (the CA that signed etcd's certificate)")
	case (o.etcdCert == "") != (o.etcdKey == ""):
		return nil, usagef("--etcd-cert and --etcd-key: give both or neither")
	}
	pemCA, err := os.ReadFile(o.etcdCA)
	if err != nil {
		return nil, usagef("--etcd-ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		return nil, usagef("--etcd-ca: %s holds no PEM certificate", o.etcdCA)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if o.etcdCert != "" {
		cert, err := tls.LoadX509KeyPair(o.etcdCert, o.etcdKey)
		if err != nil {
			return nil, usagef("--etcd-cert, --etcd-key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// parseStore reads --store: "" for the embedded store, or the etcd
// endpoints of etcd://h1:2379,h2:2379 (http://, or https:// with secure).
func parseStore(s string, secure bool) ([]string, error) {
	if s == "" || s == "bolt" {
		return nil, nil
	}
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok {
		return nil, usagef("--store: must be etcd://HOST:PORT[,HOST:PORT...], got %q", s)
	}
	var eps []string
	for _, hp := range strings.Split(rest, ",") {
		// A port that is no number, or out of range, or a host that is
		// no IP address or host name, would otherwise be dialled for
		// --store's whole timeout, then reported as etcd being
		// unreachable.
		ep := "http://" + hp
		if secure {
			ep = "https://" + hp
		}
		host, port, err := net.SplitHostPort(hp)
		n, perr := strconv.Atoi(port)
		u, uerr := url.Parse(ep)
		if err != nil || perr != nil || n < 1 || n > 65535 || sb.ValidateAddress(strings.TrimSuffix(host, ".")) != nil || uerr != nil || u.Host != hp {
			return nil, usagef("--store: %q is not HOST:PORT", hp)
		}
		eps = append(eps, ep)
	}
	return eps, nil
}

func parsePorts(s string) (lo, hi int, err error) {
	a, b, ok := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, usagef("--ports: must be a range such as 5000-5999 within 1-65535, got %q", s)
	}
	return lo, hi, nil
}

// checkAddr refuses an address to listen on that is not HOST:PORT with a
// port in range, before anything is started or written.
func checkAddr(flag, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = net.LookupPort("tcp", port)
	}
	if err != nil {
		return usagef("%s: must be HOST:PORT or :PORT, got %q", flag, addr)
	}
	return nil
}

// runAtlas serves Atlas until ctx ends. ready is called with the
// listening address.
func runAtlas(ctx context.Context, o atlasOptions, log *slog.Logger, ready func(addr string)) error {
	ra, err := startAtlas(o, log)
	if err != nil {
		return err
	}
	ready(ra.addr)
	select {
	case err := <-ra.errc:
		ra.stop()
		return fmt.Errorf("atlas: serve: %w", err)
	case <-ctx.Done():
	}
	return ra.stop()
}

// runningAtlas is an Atlas serving in this process.
type runningAtlas struct {
	addr string
	errc chan error
	stop func() error
}

// startAtlas opens the store and serves Atlas. stop shuts it down in
// order: answer the blocking queries, let requests finish (10 s at most),
// close the store.
func startAtlas(o atlasOptions, log *slog.Logger) (*runningAtlas, error) {
	lo, hi, err := parsePorts(o.ports)
	if err != nil {
		return nil, err
	}
	if o.dataDir == "" {
		return nil, usagef("--data: must name a directory")
	}
	if err := checkAddr("--listen", o.listen); err != nil {
		return nil, err
	}
	// Every flag is checked before anything is made: a refused command
	// line leaves no data directory behind.
	etcdTLS, err := o.etcdTLS()
	if err != nil {
		return nil, err
	}
	endpoints, err := parseStore(o.store, etcdTLS != nil)
	if err != nil {
		return nil, err
	}
	if endpoints == nil && etcdTLS != nil {
		return nil, usagef("--etcd-ca: goes with --store etcd://...")
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data: %w", err)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	var store atlas.Store
	if endpoints != nil {
		store, err = etcdstore.Open(etcdstore.Config{Endpoints: endpoints, Logger: log, TLS: etcdTLS})
	} else {
		store, err = boltstore.Open(boltstore.Config{Path: filepath.Join(o.dataDir, "atlas.db"), Logger: log})
	}
	if err != nil {
		ln.Close()
		return nil, err
	}
	srv, err := atlas.New(atlas.Config{Store: store, DataDir: o.dataDir, Insecure: o.insecure,
		LoopbackHosts: o.insecure && isLoopback(ln.Addr().String()), PortMin: lo, PortMax: hi, Logger: log})
	if err != nil {
		ln.Close()
		store.Close()
		return nil, err
	}
	hs := srv.HTTPServer()
	ra := &runningAtlas{addr: ln.Addr().String(), errc: make(chan error, 1)}
	go func() { ra.errc <- hs.Serve(atlas.Listener(ln)) }()
	ra.stop = func() error {
		srv.StopWaiting()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			log.Warn("atlas: requests still running at shutdown", "err", err)
		}
		srv.Close()
		return store.Close()
	}
	return ra, nil
}

func devCmd(g *globals) *cobra.Command {
	var dir, listen, sidecarListen, sidecarAdmin string
	var files []string
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run Switchboard on a laptop: Atlas and a sidecar, no auth, loopback only",
		Long: `Run everything a laptop needs in one process: Atlas with its embedded store
under ./.switchboard/ and a sidecar routing calls made to 127.0.0.1:4000, all
without auth and on loopback only. With -c (repeatable), the sidecar also
announces the services that sidecar.yaml files list; their other fields are
ignored, dev sets them. Ctrl-C stops it.`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			for _, a := range []struct{ flag, v string }{{"--listen", listen}, {"--sidecar-listen", sidecarListen}, {"--sidecar-admin", sidecarAdmin}} {
				if err := checkAddr(a.flag, a.v); err != nil {
					return err
				}
				if !isLoopback(a.v) {
					return usagef("%s: switchboard dev runs without auth and listens on loopback only, got %q", a.flag, a.v)
				}
			}
			// Each -c file adds the services it announces.
			cfg := &sidecar.Config{}
			for _, f := range files {
				c, err := sidecar.LoadConfig(f)
				if err != nil {
					return usagef("%v", err)
				}
				for _, u := range c.Upstreams {
					if u.Listen != "" && !isLoopback(u.Listen) {
						return usagef("%s: upstreams: %s: listen: switchboard dev runs without auth and listens on loopback only, got %q", f, u.Name, u.Listen)
					}
				}
				if ignored := devIgnores(c); len(ignored) > 0 {
					fmt.Fprintf(g.stderr, "switchboard: %s: dev sets %s itself; the file's are ignored\n", f, strings.Join(ignored, ", "))
				}
				cfg.Services = append(cfg.Services, c.Services...)
				cfg.Upstreams = append(cfg.Upstreams, c.Upstreams...)
			}
			if err := cfg.Check(); err != nil {
				return usagef("%v", err)
			}
			log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			ra, err := startAtlas(atlasOptions{listen: listen, dataDir: filepath.Join(dir, "atlas"), insecure: true, ports: "5000-5999"}, log)
			if err != nil {
				// A second dev meets Atlas's port first: say what to do,
				// as for the sidecar's ports below.
				if errors.Is(err, syscall.EADDRINUSE) {
					return fmt.Errorf("%v (another switchboard dev running? stop it first, or pick a free port with --listen)", err)
				}
				return err
			}
			defer ra.stop()
			cfg.Atlas = sidecar.StringList{"http://" + ra.addr}
			cfg.Listen, cfg.Admin = sidecarListen, sidecarAdmin
			cfg.Realm = g.realm
			cfg.StateDir = filepath.Join(dir, "sidecar")
			if cfg.Advertise == "" {
				cfg.Advertise = "127.0.0.1"
			}
			if cfg.DrainTimeout == 0 {
				cfg.DrainTimeout = sidecar.Duration(2 * time.Second)
			}
			sc, err := sidecar.New(*cfg, log)
			if err != nil {
				return err
			}
			sc.LocalBrowsersOnly()
			if err := sc.Start(); err != nil {
				// The sidecar names its own fields (listen, admin); here
				// they are dev's --sidecar-* flags.
				var le *sidecar.ListenError
				if errors.As(err, &le) {
					flag := "--sidecar-" + le.Key
					return fmt.Errorf("%s: %v (another switchboard dev running? stop it first, or pick a free port with %s)", flag, le.Err, flag)
				}
				return err
			}
			fmt.Fprintf(g.stdout, "Switchboard dev is running (no auth, loopback only, realm %s). Ctrl-C stops it.\n\n", g.realm)
			fmt.Fprintf(g.stdout, "  dashboard       http://%s/ui/\n", ra.addr)
			fmt.Fprintf(g.stdout, "  Atlas API       http://%s/v1/services\n", ra.addr)
			fmt.Fprintf(g.stdout, "  Atlas health    http://%s/v1/health\n", ra.addr)
			fmt.Fprintf(g.stdout, "  Atlas metrics   http://%s/metrics\n", ra.addr)
			fmt.Fprintf(g.stdout, "  sidecar         http://%s  (call http://NAME.localhost:%s/...)\n", sc.ListenAddr, portOf(sc.ListenAddr))
			fmt.Fprintf(g.stdout, "  sidecar routes  http://%s/routes\n", sc.AdminAddr)
			fmt.Fprintf(g.stdout, "  data            %s\n\n", dir)
			try := selfCommand()
			if "http://"+ra.addr != client.DefaultAtlasURL || sc.ListenAddr != client.DefaultSidecar {
				// Not where services and commands look by default: say
				// how they find these.
				fmt.Fprintf(g.stdout, "Not the default addresses: services and commands find these with\n  export SWITCHBOARD_ATLAS=http://%s SWITCHBOARD_SIDECAR=%s\n\n", ra.addr, sc.ListenAddr)
				try = "SWITCHBOARD_ATLAS=http://" + ra.addr + " " + try
			}
			if len(cfg.Services) > 0 {
				// Once the service passes its checks (rise).
				// Through the sidecar to the path its check asks (a
				// service's "/" may well be a 404), else "/".
				path := "/"
				if chk := cfg.Services[0].Check; chk.HTTP != nil {
					path = *chk.HTTP
				} else if !chk.TCP && chk.GRPC == nil && !chk.None {
					path = "/healthcheck"
				}
				fmt.Fprintf(g.stdout, "Try: curl http://%s.localhost:%s%s && %s services\n", cfg.Services[0].Name, portOf(sc.ListenAddr), path, try)
			} else {
				fmt.Fprintf(g.stdout, "Try: %s register --service hello --address 127.0.0.1 --port 8080 && %s services\n", try, try)
			}
			select {
			case <-cmd.Context().Done():
			case err := <-ra.errc:
				sc.Shutdown()
				return fmt.Errorf("atlas: serve: %w", err)
			}
			sc.Shutdown()
			return nil
		}),
	}
	f := c.Flags()
	f.StringVar(&dir, "dir", ".switchboard", "directory for the embedded store and the sidecar's state")
	f.StringVar(&listen, "listen", "127.0.0.1:4400", "Atlas address (loopback only)")
	f.StringVar(&sidecarListen, "sidecar-listen", "127.0.0.1:4000", "sidecar frontend address (loopback only)")
	f.StringVar(&sidecarAdmin, "sidecar-admin", "127.0.0.1:4001", "sidecar admin address (loopback only)")
	f.StringSliceVarP(&files, "config", "c", nil, "sidecar.yaml files whose services the sidecar announces (repeatable)")
	return c
}

// isLoopback reports whether HOST:PORT listens on loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	ip := net.ParseIP(host)
	return err == nil && (host == "localhost" || ip != nil && ip.IsLoopback())
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// selfCommand is how to run this switchboard again from a shell: its name,
// or, for a binary go run built, go run and the package.
func selfCommand() string {
	exe, err := os.Executable()
	if err == nil && strings.Contains(filepath.ToSlash(exe), "/go-build") {
		return "go run ./cmd/switchboard"
	}
	return "switchboard"
}
