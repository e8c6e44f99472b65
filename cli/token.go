package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
)

func tokenCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "token", Short: "Create, list and delete Atlas tokens (admin)"}
	var req sb.TokenRequest
	create := &cobra.Command{
		Use:   "create --name NAME --role admin|reader|service [--services a,b --realms r1,r2]",
		Short: "Create a token; its secret is shown once",
		Args:  cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if err := req.Validate(); err != nil {
				return usagef("--%s", strings.Replace(sb.ErrorMessage(err), "services, realms:", "services, --realms:", 1))
			}
			tok, err := g.client().CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			if tok.Warning != "" {
				fmt.Fprintf(g.stderr, "switchboard: warning: %s\n", tok.Warning)
			}
			return g.print(tok, func(w io.Writer) {
				fmt.Fprintf(w, "id\t%s\nname\t%s\nrole\t%s\n", tok.ID, cell(tok.Name), tok.Role)
				if len(tok.Services) > 0 {
					fmt.Fprintf(w, "services\t%s\nrealms\t%s\n", strings.Join(tok.Services, ","), strings.Join(tok.Realms, ","))
				}
				fmt.Fprintf(w, "secret\t%s\t(shown once: store it now)\n", tok.Secret)
			})
		}),
	}
	f := create.Flags()
	f.StringVar(&req.Name, "name", "", "what the token is for (required)")
	f.StringVar(&req.Role, "role", "", "admin, reader or service (required)")
	f.StringSliceVar(&req.Services, "services", nil, "services a service token acts for")
	f.StringSliceVar(&req.Realms, "realms", nil, "realms a service token acts in")
	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			l, err := g.client().TokenList(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(l, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tNAME\tROLE\tSERVICES\tREALMS\tCREATED")
				for _, t := range l.Tokens {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, cell(t.Name), t.Role, strings.Join(t.Services, ","), strings.Join(t.Realms, ","), t.CreatedAt.Format("2006-01-02 15:04"))
				}
			})
		}),
	}
	del := &cobra.Command{
		Use:   "delete ID|NAME",
		Short: "Revoke a token, by its id or its name when one token has it",
		Args:  cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			id := args[0]
			err := g.client().DeleteToken(cmd.Context(), id)
			if client.IsNotFound(err) {
				// Not an id: the name of one token, then.
				l, lerr := g.client().TokenList(cmd.Context())
				if lerr != nil {
					return err
				}
				var ids []string
				for _, t := range l.Tokens {
					if t.Name == id {
						ids = append(ids, t.ID)
					}
				}
				switch len(ids) {
				case 0:
					return sb.Errorf(sb.ENotFound, "token %s: no token has this id or name (token list shows them)", id)
				case 1:
					id = ids[0]
					err = g.client().DeleteToken(cmd.Context(), id)
				default:
					return usagef("ID|NAME: %d tokens are named %q (%s): give the id", len(ids), id, strings.Join(ids, ", "))
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "deleted token %s\n", id)
			return nil
		}),
	}
	c.AddCommand(create, list, del)
	return c
}

func policyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "Say which services a service may call (admin)"}
	var mayCall []string
	set := &cobra.Command{
		Use:   "set SERVICE --may-call a,b",
		Short: "Replace the services SERVICE may call in --realm",
		Args:  cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			// Named as the command line gives them; Validate names the
			// API's fields.
			if err := sb.ValidateName("SERVICE", args[0]); err != nil {
				return usagef("%s", sb.ErrorMessage(err))
			}
			for _, m := range mayCall {
				if err := sb.ValidateName("--may-call", m); err != nil {
					return usagef("%s", sb.ErrorMessage(err))
				}
			}
			p := sb.Policy{Service: args[0], Realm: g.realm, MayCall: mayCall}
			if err := p.Validate(); err != nil {
				return usagef("%s", sb.ErrorMessage(err))
			}
			out, err := g.client().PutPolicy(cmd.Context(), g.realm, args[0], mayCall)
			if err != nil {
				return err
			}
			if len(out.MayCall) == 0 {
				fmt.Fprintf(g.stdout, "%s in %s may call no other service (its own only)\n", out.Service, out.Realm)
				return nil
			}
			fmt.Fprintf(g.stdout, "%s in %s may call: %s\n", out.Service, out.Realm, strings.Join(out.MayCall, ", "))
			return nil
		}),
	}
	set.Flags().StringSliceVar(&mayCall, "may-call", nil, "services it may call (empty: none)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the call policies of --realm",
		Args:  cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			l, err := g.client().PolicyList(cmd.Context(), g.realm)
			if err != nil {
				return err
			}
			return g.print(l, func(w io.Writer) {
				fmt.Fprintln(w, "SERVICE\tREALM\tMAY CALL")
				for _, p := range l.Policies {
					fmt.Fprintf(w, "%s\t%s\t%s\n", p.Service, p.Realm, strings.Join(p.MayCall, ","))
				}
			})
		}),
	}
	c.AddCommand(set, list)
	return c
}
