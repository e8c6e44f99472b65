// Package cli is the switchboard command: every subcommand, writing to the
// injected stdout and stderr so that tests run it as a function.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/spf13/cobra"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
)

// UsageError is a command line that cannot be run: exit status 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error { return &UsageError{fmt.Sprintf(format, args...)} }

// ExitCode prints err on one line to stderr and returns the exit status:
// 0 for success, 2 for a usage error, 1 for anything else.
func ExitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "switchboard: %s\n", oneLine(ue.Msg))
		return 2
	}
	var e *sb.Error
	if errors.As(err, &e) {
		fmt.Fprintf(stderr, "switchboard: %s: %s\n", e.Code, oneLine(e.Message))
		if h := hint(e); h != "" {
			fmt.Fprintf(stderr, "switchboard: hint: %s\n", h)
		}
		return 1
	}
	if errors.Is(err, context.Canceled) {
		return 1
	}
	fmt.Fprintf(stderr, "switchboard: %s\n", oneLine(err.Error()))
	return 1
}

// hint says what to do about the errors a new user meets first.
func hint(e *sb.Error) string {
	switch {
	case e.Code == sb.EUnauthenticated:
		return "give a token with --token or SWITCHBOARD_TOKEN; Atlas wrote its admin token to DATA/admin.token on its first start"
	case e.Code == sb.EUnavailable && strings.Contains(e.Message, "connection refused"):
		return "is Atlas running there? `switchboard dev` runs one on this machine; --atlas or SWITCHBOARD_ATLAS names another"
	}
	return ""
}

// oneLine joins the non-blank lines of s with "; ". cobra's suggestion for
// a misspelt command ("\n\nDid you mean this?\n\tservices\n") becomes
// "did you mean: services".
func oneLine(s string) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.ReplaceAll(strings.Join(lines, "; "), "Did you mean this?; ", "did you mean: ")
}

// globals are the flags every command takes.
type globals struct {
	atlas  []string
	token  string
	realm  string
	output string
	stdout io.Writer
	stderr io.Writer
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Run runs the switchboard command line args (without the program name).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "switchboard",
		Short:         "Service discovery, routing and config for teams with many HTTP services",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			// Not the flags' defaults: --help would print the token, and
			// any password in the Atlas URLs.
			if !cmd.Flags().Changed("token") {
				g.token = os.Getenv("SWITCHBOARD_TOKEN")
			}
			// A token read from a file into the environment may keep its
			// line break, which no header may hold.
			g.token = strings.TrimSpace(g.token)
			atlasFrom := "--atlas"
			if v := os.Getenv("SWITCHBOARD_ATLAS"); v != "" && !cmd.Flags().Changed("atlas") {
				g.atlas = client.SplitList(v)
				atlasFrom = "SWITCHBOARD_ATLAS"
			} else {
				// Read as the variable is: "a, b" is two URLs.
				g.atlas = client.SplitList(strings.Join(g.atlas, ","))
			}
			switch g.output {
			case "table", "json":
			default:
				return usagef("-o: must be table or json, got %q", g.output)
			}
			realmFrom := "--realm"
			if !cmd.Flags().Changed("realm") && os.Getenv("SWITCHBOARD_REALM") != "" {
				realmFrom = "SWITCHBOARD_REALM"
			}
			if err := sb.ValidateName(realmFrom, g.realm); err != nil {
				return usagef("%s", sb.ErrorMessage(err))
			}
			if len(g.atlas) == 0 {
				return usagef("%s: must be an Atlas URL such as %s (or several, comma-separated), got none", atlasFrom, client.DefaultAtlasURL)
			}
			for _, u := range g.atlas {
				if err := client.CheckURL(u); err != nil {
					return usagef("%s: %v", atlasFrom, err)
				}
			}
			return nil
		},
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetContext(ctx)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return &UsageError{err.Error()} })
	pf := root.PersistentFlags()
	pf.StringSliceVar(&g.atlas, "atlas", []string{client.DefaultAtlasURL}, "Atlas URLs, tried in turn ($SWITCHBOARD_ATLAS)")
	pf.StringVar(&g.token, "token", "", "bearer token (prefer $SWITCHBOARD_TOKEN: other users of the machine see a flag in ps)")
	pf.StringVar(&g.realm, "realm", envOr("SWITCHBOARD_REALM", sb.DefaultRealm), "realm ($SWITCHBOARD_REALM)")
	pf.StringVarP(&g.output, "output", "o", "table", "output of read commands: table or json")

	root.AddCommand(
		atlasCmd(g), devCmd(g), sidecarCmd(g), newCmd(g),
		servicesCmd(g), instancesCmd(g), registerCmd(g), deregisterCmd(g), enableCmd(g), disableCmd(g), watchCmd(g),
		configCmd(g), tokenCmd(g), policyCmd(g),
	)
	help := helpCmd()
	root.SetHelpCommand(help)
	// Added now rather than by ExecuteC, so that wrapArgs reaches it too.
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		wrapArgs(c)
	}
	cmd, err := root.ExecuteC()
	if err != nil && !isRuntime(err) {
		var ue *UsageError
		if !errors.As(err, &ue) {
			err = &UsageError{err.Error()}
		}
		if cmd == help {
			cmd = root
		}
		if cmd != nil {
			err = &UsageError{fmt.Sprintf("%s (see '%s --help')", strings.TrimSpace(err.Error()), cmd.CommandPath())}
		}
	}
	return err
}

// helpCmd is cobra's help command, except that a topic it does not know
// is a usage error (exit status 2), as an unknown command is; cobra's
// prints the usage and exits 0.
func helpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		Long:  "Show the help of any command: switchboard help [command ...].",
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usagef("unknown help topic %q", strings.Join(args, " "))
			}
			cmd.InitDefaultHelpFlag()
			return cmd.Help()
		},
	}
}

// runtimeError marks errors that come from running a command rather than
// from its command line.
type runtimeError struct{ err error }

func (e runtimeError) Error() string { return e.err.Error() }
func (e runtimeError) Unwrap() error { return e.err }

func isRuntime(err error) bool {
	var re runtimeError
	return errors.As(err, &re)
}

// runE wraps a command body so its errors count as runtime failures.
func runE(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := fn(cmd, args)
		if err == nil {
			return nil
		}
		var ue *UsageError
		if errors.As(err, &ue) {
			return err
		}
		return runtimeError{err}
	}
}

// wrapArgs makes cobra's argument-count errors usage errors, recursively.
func wrapArgs(c *cobra.Command) {
	if c.HasSubCommands() && !c.Runnable() {
		// A group such as "config": cobra shows its help for any
		// arguments, "config bogus" included, and exits 0.
		c.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		}
	}
	if c.Args != nil {
		check := c.Args
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return &UsageError{err.Error()}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		wrapArgs(sub)
	}
}

func (g *globals) client() *client.Atlas {
	return &client.Atlas{URLs: g.atlas, Token: g.token}
}

// print writes v as indented JSON with -o json, or calls table otherwise.
func (g *globals) print(v any, table func(w io.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(g.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	// Escaped before tabwriter measures the cells, so that a cell with
	// control characters in it stays in its column.
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	table(termSafe{tw})
	return tw.Flush()
}

// cell is s as one table cell: its tabs and line breaks, which would move
// the cells after them or start a row, shown as \xNN as termSafe shows
// the other control characters.
func cell(s string) string {
	if !strings.ContainsAny(s, "\t\n") {
		return s
	}
	return strings.NewReplacer("\t", `\x09`, "\n", `\x0a`).Replace(s)
}

// termSafe writes to w with the control characters a terminal acts on
// (escape sequences, DEL, C1) shown as \xNN, tab and newline excepted: a
// table's cells hold what services sent (check output, tags, meta, a
// disable reason), which must not move the cursor, rewrite the screen or
// retitle the window of the operator reading it.
type termSafe struct{ w io.Writer }

// controlRune reports whether termSafe shows r as \xNN.
func controlRune(r rune) bool {
	return (r < 0x20 && r != '\t' && r != '\n') || (r >= 0x7f && r <= 0x9f)
}

func (t termSafe) Write(p []byte) (int, error) {
	// ASCII with no control character in it, as most table lines are,
	// goes through as it is.
	if !slices.ContainsFunc(p, func(b byte) bool { return b >= utf8.RuneSelf || controlRune(rune(b)) }) {
		return t.w.Write(p)
	}
	out := make([]byte, 0, len(p)+16)
	for i := 0; i < len(p); {
		r, size := utf8.DecodeRune(p[i:])
		if controlRune(r) {
			out = fmt.Appendf(out, `\x%02x`, r)
		} else {
			out = append(out, p[i:i+size]...)
		}
		i += size
	}
	if _, err := t.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}
