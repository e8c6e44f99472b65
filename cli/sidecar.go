package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchboard-go/switchboard/sidecar"
)

func sidecarCmd(g *globals) *cobra.Command {
	var (
		file                          string
		listen, admin, stateDir, host string
		advertise                     string
		drain                         time.Duration
	)
	c := &cobra.Command{
		Use:   "sidecar [-c sidecar.yaml]",
		Short: "Run the per-host agent: announce this host's services, route its outgoing calls",
		Long: `Run the sidecar: it registers and health-checks the services listed in
sidecar.yaml, heartbeats their status to Atlas, and routes every outgoing call
made to its frontend (127.0.0.1:4000) to a healthy instance of the target
service. Flags override the file's fields. SIGTERM drains this host's
instances before it deregisters them.`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			cfg := &sidecar.Config{}
			if file != "" {
				var err error
				if cfg, err = sidecar.LoadConfig(file); err != nil {
					return usagef("%v", err)
				}
			}
			f := cmd.Flags()
			set := func(flag, env string) bool { return f.Changed(flag) || (env != "" && os.Getenv(env) != "") }
			if set("atlas", "SWITCHBOARD_ATLAS") {
				cfg.Atlas = g.atlas
			}
			if set("realm", "SWITCHBOARD_REALM") {
				cfg.Realm = g.realm
			}
			for _, o := range []struct {
				flag string
				dst  *string
				val  string
			}{{"listen", &cfg.Listen, listen}, {"admin", &cfg.Admin, admin}, {"state-dir", &cfg.StateDir, stateDir}, {"host", &cfg.Host, host}, {"advertise", &cfg.Advertise, advertise}} {
				if f.Changed(o.flag) {
					*o.dst = o.val
				}
			}
			if f.Changed("drain-timeout") {
				cfg.DrainTimeout = sidecar.Duration(drain)
			}
			// --token overrides token_file, as every flag overrides its
			// field (README "The sidecar"): the file is then not read. An
			// exported SWITCHBOARD_TOKEN does not: an operator's shell
			// token must not silently replace the host's own.
			if f.Changed("token") {
				cfg.TokenFile = ""
			}
			if err := cfg.Check(); err != nil {
				// A bad value from a flag is named by its flag.
				if key, rule := sidecar.BadField(err); key != "" {
					if flag := strings.ReplaceAll(key, "_", "-"); f.Changed(flag) {
						return usagef("--%s: %s", flag, rule)
					}
				}
				return usagef("%v", err)
			}
			// A proxy's garbage is short-lived and its heap small: collect
			// less often (GOGC, when set, decides).
			if os.Getenv("GOGC") == "" {
				debug.SetGCPercent(400)
			}
			log := slog.New(slog.NewJSONHandler(g.stderr, nil))
			sc, err := sidecar.New(*cfg, log)
			if err != nil {
				return err
			}
			switch {
			case f.Changed("token"):
				sc.SetToken(g.token)
			case os.Getenv("SWITCHBOARD_TOKEN") != "":
				// Not taken (README "The sidecar"): an operator's token,
				// often an admin's, would lift least authority unseen.
				log.Warn("sidecar: SWITCHBOARD_TOKEN is set but not used: the sidecar takes its token from token_file or --token only")
			}
			err = sc.Run(cmd.Context())
			var le *sidecar.ListenError
			if errors.As(err, &le) {
				// Named by its flag when the address came from one.
				where := le.Key
				if f.Changed(le.Key) {
					where = "--" + le.Key
				}
				return fmt.Errorf("%s: %v (another sidecar or switchboard dev running here? pick a free address with --%s)", where, le.Err, le.Key)
			}
			return err
		}),
	}
	f := c.Flags()
	f.StringVarP(&file, "config", "c", "", "sidecar.yaml (none: route only, announce nothing)")
	f.StringVar(&listen, "listen", "", "HTTP frontend address (default 127.0.0.1:4000)")
	f.StringVar(&admin, "admin", "", "admin address (default 127.0.0.1:4001)")
	f.StringVar(&stateDir, "state-dir", "", "directory for the last known routes")
	f.StringVar(&host, "host", "", "this host's name in instance ids (default the hostname)")
	f.StringVar(&advertise, "advertise", "", "address other hosts reach this host's services at")
	f.DurationVar(&drain, "drain-timeout", 0, "how long SIGTERM waits for watchers to drop this host (default 10s)")
	return c
}
