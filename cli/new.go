package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/scaffold"
)

func newCmd(g *globals) *cobra.Command {
	var (
		dir, module string
		port        int
	)
	c := &cobra.Command{
		Use:   "new NAME",
		Short: "Generate a new service on the smart service kit",
		Long: `Generate a service that has, from its first minute, health checks, config,
logging, metrics, the smart client and a graceful shutdown: main.go, a handler
and its test, config.yaml, sidecar.yaml, Makefile, Dockerfile, README.md and
.gitignore; then resolve its dependencies and make the first git commit.

The port comes from Atlas (every service its own, stable) or, with no Atlas, is
a free local one. Until Switchboard is published, go.mod points at a source
checkout: SWITCHBOARD_SOURCE, else the one this binary was built from.`,
		Example: `  switchboard new identity
  switchboard new billing --dir ~/src/billing --module example.com/billing`,
		Args: cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			o := scaffold.Options{Name: args[0], Dir: dir, Module: module, Port: port}
			if err := sb.ValidateName("NAME", o.Name); err != nil {
				return usagef("%s", sb.ErrorMessage(err))
			}
			// Before Atlas gives the service a port.
			if err := scaffold.CheckModule(o.Name, o.Module); err != nil {
				return usagef("%v", err)
			}
			if o.Dir == "" {
				o.Dir = o.Name
			}
			abs, err := filepath.Abs(o.Dir)
			if err != nil {
				return err
			}
			o.Dir = abs
			if err := scaffold.CheckDir(o.Dir); err != nil {
				return usagef("%v", err)
			}
			if cmd.Flags().Changed("port") && (port < 1 || port > 65535) {
				return usagef("--port: must be 1-65535, got %d", port)
			}
			source, err := scaffold.SourceDir()
			if err != nil {
				return err
			}
			o.Source = source
			from := "--port"
			if o.Port == 0 {
				o.Port, from, err = pickPort(cmd.Context(), g, o.Name)
				if err != nil {
					return err
				}
			}
			if err := o.Validate(); err != nil {
				return usagef("%v", err)
			}
			fmt.Fprintf(g.stdout, "service    %s\n", o.Name)
			fmt.Fprintf(g.stdout, "directory  %s\n", o.Dir)
			fmt.Fprintf(g.stdout, "module     %s\n", o.Module)
			fmt.Fprintf(g.stdout, "port       %d (%s)\n", o.Port, from)
			fmt.Fprintf(g.stdout, "switchboard source  %s (go.mod replace; Switchboard is not published yet)\n", o.Source)
			// What a failed or interrupted run made is removed, so that the
			// next run starts clean (it refuses a directory with files).
			// Only a directory that did not exist, or held nothing, is
			// cleaned: never one with someone's files (Create refuses it).
			before, statErr := os.ReadDir(o.Dir)
			made := errors.Is(statErr, fs.ErrNotExist)
			empty := statErr == nil && len(before) == 0
			if err := scaffold.Create(cmd.Context(), o, g.stdout); err != nil {
				msg := strings.TrimSpace(err.Error())
				_, statErr := os.Stat(o.Dir)
				switch {
				case made && statErr != nil:
					// It failed before it made the directory: nothing to remove.
				case made && os.RemoveAll(o.Dir) == nil:
					return fmt.Errorf("%s\n(%s removed: fix the cause and run switchboard new again)", msg, o.Dir)
				case empty && emptyDir(o.Dir) == nil:
					return fmt.Errorf("%s\n(what it wrote in %s removed: fix the cause and run switchboard new again)", msg, o.Dir)
				}
				return err
			}
			rel := o.Dir
			if wd, err := os.Getwd(); err == nil {
				if r, err := filepath.Rel(wd, o.Dir); err == nil && !strings.HasPrefix(r, "..") {
					rel = r // below here; else the absolute path reads better
				}
			}
			// dev from here, not from the service's directory: one dev
			// per machine, whose store (ports, config) all services share.
			// The sidecar the service's calls go to: where a dev started
			// elsewhere is, SWITCHBOARD_SIDECAR says.
			sidecar := client.DefaultSidecar
			if v := os.Getenv("SWITCHBOARD_SIDECAR"); v != "" && v != "none" {
				sidecar = v
			}
			fmt.Fprintf(g.stdout, "\nready in %s. Next:\n  switchboard dev -c %s &   # one dev per machine: stop a running one first, and give it every service's -c\n  (cd %s && go run .) &\n  curl http://%s.localhost:%s/hello\n",
				time.Since(start).Round(100*time.Millisecond), filepath.Join(rel, "sidecar.yaml"), rel, o.Name, portOf(sidecar))
			return nil
		}),
	}
	c.Flags().StringVar(&dir, "dir", "", "directory to create (default ./NAME)")
	c.Flags().StringVar(&module, "module", "", "Go module path (default NAME)")
	c.Flags().IntVar(&port, "port", 0, "port (default: assigned by Atlas, else a free local one)")
	return c
}

// emptyDir removes everything in dir.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// pickPort asks Atlas for the service's port; with no Atlas it takes a
// free local port from 5000-5999.
func pickPort(ctx context.Context, g *globals, name string) (int, string, error) {
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	port, err := g.client().AssignPort(actx, name)
	if err == nil {
		return port, "assigned by Atlas", nil
	}
	if !sb.Transient(err) {
		return 0, "", err
	}
	why := sb.ErrorMessage(err)
	for p := 5000; p <= 5999; p++ {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			ln.Close()
			return p, "free here; Atlas gave none: " + why, nil
		}
	}
	return 0, "", fmt.Errorf("Atlas gave no port (%s) and no port in 5000-5999 is free here; give --port", why)
}
