package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
)

func servicesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "services",
		Short: "List the services of the realm with their instance counts",
		Args:  cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			list, err := g.client().Services(cmd.Context(), g.realm, client.QueryOptions{})
			if err != nil {
				return err
			}
			return g.print(list, func(w io.Writer) {
				fmt.Fprintln(w, "SERVICE\tINSTANCES\tPASSING\tWARNING\tCRITICAL\tDISABLED")
				for _, s := range list.Services {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\n", s.Name, s.Instances, s.Passing, s.Warning, s.Critical, s.Disabled)
				}
			})
		}),
	}
}

func instancesCmd(g *globals) *cobra.Command {
	var statuses, tags []string
	c := &cobra.Command{
		Use:   "instances SERVICE",
		Short: "List the instances of a service in the realm",
		Args:  cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if err := sb.ValidateName("SERVICE", args[0]); err != nil {
				return usagef("%s", sb.ErrorMessage(err))
			}
			opts := client.ServiceOptions{Tags: tags, Leases: true}
			for _, s := range statuses {
				st, err := sb.ParseStatus("--status", s)
				if err != nil {
					return usagef("%s", sb.ErrorMessage(err))
				}
				opts.Status = append(opts.Status, st)
			}
			si, err := g.client().Service(cmd.Context(), g.realm, args[0], opts)
			if err != nil {
				return err
			}
			if len(si.Instances) == 0 && g.output == "table" && len(opts.Status) == 0 && len(tags) == 0 {
				fmt.Fprintf(g.stderr, "switchboard: no instance of %s in realm %s%s\n", args[0], si.Realm, g.unknownServiceHint(cmd.Context(), si.Realm, args[0]))
			}
			return g.print(si, func(w io.Writer) { instanceTable(w, si.Instances) })
		}),
	}
	c.Flags().StringSliceVar(&statuses, "status", nil, "only these statuses (passing, warning, critical)")
	c.Flags().StringSliceVar(&tags, "tag", nil, "only instances with all these tags")
	return c
}

// unknownServiceHint says more about a service with no instance in realm:
// Atlas answers a name it never heard of as a service with no instance,
// and a typo looks like that too. It names the closest known service, or
// points at the list; it says nothing when the token may not list the
// services (a service token) or the service is known.
func (g *globals) unknownServiceHint(ctx context.Context, realm, name string) string {
	list, err := g.client().Services(ctx, realm, client.QueryOptions{})
	if err != nil {
		return ""
	}
	best, bestDist := "", 3 // as far as a suggestion goes
	for _, s := range list.Services {
		if s.Name == name {
			return ""
		}
		if d := editDistance(name, s.Name); d < bestDist {
			best, bestDist = s.Name, d
		}
	}
	if best != "" {
		return fmt.Sprintf(": no service of that name there; did you mean %s?", best)
	}
	return ": no service of that name there (switchboard services lists them)"
}

// editDistance is the Levenshtein distance of a and b, in bytes (service
// names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func instanceTable(w io.Writer, ins []*sb.Instance) {
	fmt.Fprintln(w, "ID\tADDRESS\tSTATUS\tENABLED\tTAGS\tEXPIRES\tOUTPUT")
	for _, in := range ins {
		enabled := "yes"
		if !in.Enabled {
			enabled = "no"
			if in.DisabledReason != "" {
				enabled += " (" + in.DisabledReason + ")"
			}
		}
		expires := "-"
		if in.ExpiresAt != nil {
			expires = time.Until(*in.ExpiresAt).Round(time.Second).String()
		}
		out := strings.ReplaceAll(in.Output, "\n", " ")
		if len(out) > 60 {
			out = sb.Truncate(out, 57) + "..."
		}
		fmt.Fprintf(w, "%s\t%s:%d\t%s\t%s\t%s\t%s\t%s\n", in.ID, in.Address, in.Port, in.Status, cell(enabled), cell(strings.Join(in.Tags, ",")), expires, cell(out))
	}
}

func registerCmd(g *globals) *cobra.Command {
	var (
		id, status, output string
		reg                sb.Registration
		tags, meta         []string
		ttl                time.Duration
	)
	c := &cobra.Command{
		Use:   "register",
		Short: "Register an instance (by hand; the sidecar does this for its host)",
		Example: `  switchboard register --service identity --address 10.0.0.5 --port 5000 --tag v2 --meta version=1.4.2
  switchboard register --service identity --address 10.0.0.5 --port 5000 --ttl 24h   # a long-lived static entry`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			reg.Realm = g.realm
			reg.Tags = tags
			reg.Status = sb.Status(status)
			reg.Output = output
			reg.TTL = sb.Duration(ttl)
			if ttl <= 0 && cmd.Flags().Changed("ttl") {
				// The API reads a zero TTL as "the default": not what
				// --ttl 0s asks for.
				return usagef("--ttl: must be between 1s and 24h, got %s", ttl)
			}
			var err error
			if reg.Meta, err = parseMeta(meta); err != nil {
				return err
			}
			reg.Normalize()
			if err := reg.Validate(); err != nil {
				// The API's field names, but for the one flag named otherwise.
				msg := sb.ErrorMessage(err)
				if rest, ok := strings.CutPrefix(msg, "tags"); ok {
					msg = "tag" + rest
				}
				return usagef("--%s", msg)
			}
			if id == "" {
				host, _ := sb.Hostname()
				id = fmt.Sprintf("%s-%s-%d", reg.Service, host, reg.Port)
			}
			if err := sb.ValidateID(id); err != nil {
				return usagef("--%s", sb.ErrorMessage(err))
			}
			in, err := g.client().Register(cmd.Context(), id, reg)
			if err != nil {
				return err
			}
			return g.print(in, func(w io.Writer) { instanceTable(w, []*sb.Instance{in}) })
		}),
	}
	f := c.Flags()
	f.StringVar(&id, "id", "", "instance id (default SERVICE-HOST-PORT)")
	f.StringVar(&reg.Service, "service", "", "service name (required)")
	f.StringVar(&reg.Address, "address", "", "address other hosts reach it at (required)")
	f.IntVar(&reg.Port, "port", 0, "port (required)")
	f.StringSliceVar(&tags, "tag", nil, "tags")
	// An array, not a slice: a value may hold a comma.
	f.StringArrayVar(&meta, "meta", nil, "a meta entry KEY=VALUE (repeat for more)")
	f.StringVar(&status, "status", "passing", "initial status")
	// Not --output: that is the global -o (table or json).
	f.StringVar(&output, "check-output", "", "check output, as a health check would report it")
	f.DurationVar(&ttl, "ttl", 30*time.Second, "lease: the instance is removed if not renewed within it")
	return c
}

// parseMeta reads --meta's KEY=VALUE entries; a value may hold any byte,
// "=" and "," included.
func parseMeta(entries []string) (map[string]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	meta := make(map[string]string, len(entries))
	for _, kv := range entries {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, usagef("--meta: must be KEY=VALUE, got %q", kv)
		}
		if _, dup := meta[k]; dup {
			return nil, usagef("--meta: key %q given twice", k)
		}
		meta[k] = v
	}
	return meta, nil
}

func idArg(args []string) (string, error) {
	if err := sb.ValidateID(args[0]); err != nil {
		return "", usagef("ID: %s", sb.ErrorMessage(err))
	}
	return args[0], nil
}

func deregisterCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "deregister ID",
		Short: "Remove an instance",
		Long: `Remove an instance. One that a sidecar announces is registered again at
its next check: to keep it out of rotation, disable it instead
(switchboard disable ID --reason ...), which outlives re-registration.`,
		Args: cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			id, err := idArg(args)
			if err != nil {
				return err
			}
			if err := g.client().Deregister(cmd.Context(), id); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "deregistered %s\n", id)
			return nil
		}),
	}
}

func enableCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "enable ID",
		Short: "Let an instance get traffic again",
		Args:  cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			return g.setEnabled(cmd, args, true, "")
		}),
	}
}

func disableCmd(g *globals) *cobra.Command {
	var reason string
	c := &cobra.Command{
		Use:   "disable ID --reason TEXT",
		Short: "Drain an instance: it gets no new traffic whatever its status",
		Args:  cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return usagef("--reason: required: say why, for whoever finds it disabled")
			}
			return g.setEnabled(cmd, args, false, reason)
		}),
	}
	c.Flags().StringVar(&reason, "reason", "", "why (required)")
	return c
}

func (g *globals) setEnabled(cmd *cobra.Command, args []string, enabled bool, reason string) error {
	id, err := idArg(args)
	if err != nil {
		return err
	}
	in, err := g.client().SetEnabled(cmd.Context(), id, enabled, reason)
	if err != nil {
		return err
	}
	return g.print(in, func(w io.Writer) { instanceTable(w, []*sb.Instance{in}) })
}

func watchCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "watch [SERVICE...]",
		Short: "Follow changes to services (all of the realm's when none is named)",
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			services := args
			if len(services) == 0 {
				services = []string{"*"}
			}
			for _, s := range args {
				if err := sb.ValidateName("SERVICE", s); err != nil {
					return usagef("%s", sb.ErrorMessage(err))
				}
			}
			c := g.client()
			enc := json.NewEncoder(g.stdout)
			last := ""
			backoff := 100 * time.Millisecond
			for {
				var err error
				last, err = c.Watch(cmd.Context(), g.realm, services, last, func(ev client.Event) error {
					backoff = 100 * time.Millisecond
					if g.output == "json" {
						return enc.Encode(map[string]any{"event": ev.Kind, "id": ev.ID, "data": ev.Service})
					}
					si := ev.Service
					var p, wn, cr, off int
					for _, in := range si.Instances {
						switch in.Status {
						case sb.Passing:
							p++
						case sb.Warning:
							wn++
						case sb.Critical:
							cr++
						}
						if !in.Enabled {
							off++
						}
					}
					_, err := fmt.Fprintf(g.stdout, "%s %-8s %s index=%d instances=%d passing=%d warning=%d critical=%d disabled=%d\n",
						time.Now().Format("15:04:05.000"), ev.Kind, si.Service, si.Index, len(si.Instances), p, wn, cr, off)
					return err
				})
				if cmd.Context().Err() != nil {
					return nil
				}
				if !sb.Transient(err) {
					return err
				}
				fmt.Fprintf(g.stderr, "switchboard: watch: %s; reconnecting\n", sb.ErrorMessage(err))
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 5*time.Second)
			}
		}),
	}
}
