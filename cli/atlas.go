package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/boltstore"
)

// atlasOptions are what `switchboard atlas` and `switchboard dev` need to
// run an Atlas.
type atlasOptions struct {
	listen   string
	dataDir  string
	insecure bool
	ports    string
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
	return c
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

// runAtlas serves Atlas until ctx ends, then stops in order: answer the
// blocking queries, let requests finish (10 s at most), close the store.
// ready is called with the listening address.
func runAtlas(ctx context.Context, o atlasOptions, log *slog.Logger, ready func(addr string)) error {
	lo, hi, err := parsePorts(o.ports)
	if err != nil {
		return err
	}
	if o.dataDir == "" {
		return usagef("--data: must name a directory")
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("--data: %w", err)
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	defer ln.Close()
	store, err := boltstore.Open(boltstore.Config{Path: filepath.Join(o.dataDir, "atlas.db"), Logger: log})
	if err != nil {
		return err
	}
	defer store.Close()
	srv, err := atlas.New(atlas.Config{Store: store, DataDir: o.dataDir, Insecure: o.insecure, PortMin: lo, PortMax: hi, Logger: log})
	if err != nil {
		return err
	}
	defer srv.Close()
	hs := srv.HTTPServer()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	ready(ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("atlas: serve: %w", err)
	case <-ctx.Done():
	}
	srv.StopWaiting()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("atlas: requests still running at shutdown", "err", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func devCmd(g *globals) *cobra.Command {
	var dir, listen string
	c := &cobra.Command{
		Use:   "dev",
		Short: "Run Switchboard on a laptop: Atlas, no auth, loopback only",
		Long: `Run everything a laptop needs in one process: Atlas with its embedded store
under ./.switchboard/, without auth, on 127.0.0.1 only. Ctrl-C stops it.`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			host, _, err := net.SplitHostPort(listen)
			if err != nil {
				return usagef("--listen: %v", err)
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				return usagef("--listen: switchboard dev runs without auth and listens on loopback only, got %q", listen)
			}
			log := slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			o := atlasOptions{listen: listen, dataDir: dir, insecure: true, ports: "5000-5999"}
			return runAtlas(cmd.Context(), o, log, func(addr string) {
				fmt.Fprintf(g.stdout, "Switchboard dev is running (no auth, loopback only). Ctrl-C stops it.\n\n")
				fmt.Fprintf(g.stdout, "  Atlas API  http://%s/v1/services\n", addr)
				fmt.Fprintf(g.stdout, "  health     http://%s/v1/health\n", addr)
				fmt.Fprintf(g.stdout, "  metrics    http://%s/metrics\n", addr)
				fmt.Fprintf(g.stdout, "  data       %s\n\n", dir)
				fmt.Fprintf(g.stdout, "Try: switchboard register --service hello --address 127.0.0.1 --port 8080 && switchboard services\n")
			})
		}),
	}
	c.Flags().StringVar(&dir, "dir", ".switchboard", "directory for the embedded store")
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:4400", "Atlas address (loopback only)")
	return c
}
