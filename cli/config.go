package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
)

// parseLayer reads a layer name in the notation of the merged view's
// "sources": global, realm=R, service=S or service=S,realm=R.
func parseLayer(s string) (sb.LayerKey, error) {
	var k sb.LayerKey
	if s == "global" {
		return k, nil
	}
	for _, part := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(part, "=")
		if ok && val == "" && (name == "realm" || name == "service") {
			// realm=$REALM with REALM unset: not the layer of every realm.
			return k, usagef("LAYER: %s: must not be empty, got %q", name, s)
		}
		switch {
		case ok && name == "realm" && k.Realm == "":
			k.Realm = val
		case ok && name == "service" && k.Service == "":
			k.Service = val
		default:
			return k, usagef("LAYER: must be global, realm=R, service=S or service=S,realm=R, got %q", s)
		}
	}
	if err := k.Validate(); err != nil {
		return k, usagef("LAYER: %s", sb.ErrorMessage(err))
	}
	return k, nil
}

// layerArg parses a command's LAYER, which names its realm itself
// ("realm=R,service=S"; without realm=, the layer of every realm). The
// global --realm chooses no layer: given with one of another realm, it is
// refused, where it was ignored and the layer of every realm written. A
// SWITCHBOARD_REALM in the environment, which may be there for every
// command, gets a note instead.
func (g *globals) layerArg(cmd *cobra.Command, arg string) (sb.LayerKey, error) {
	k, err := parseLayer(arg)
	if err != nil {
		return k, err
	}
	switch {
	case cmd.Flags().Changed("realm") && g.realm != k.Realm:
		return k, usagef("--realm: LAYER names its realm itself (realm=%s,... for that realm's layer; without realm=, the layer of every realm), got --realm %s with LAYER %s", g.realm, g.realm, k)
	case !cmd.Flags().Changed("realm") && os.Getenv("SWITCHBOARD_REALM") != "" && g.realm != k.Realm:
		fmt.Fprintf(g.stderr, "note: layer %s is not of realm %s (SWITCHBOARD_REALM): LAYER names its realm itself\n", k, g.realm)
	}
	return k, nil
}

func configCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Read and write layered config",
		Long: `Config is layered: global < realm=R < service=S < service=S,realm=R. Objects
merge key by key, anything else replaces, null deletes. Layers are named as the
merged view's sources name them, so what 'config get' shows is what you edit.`,
	}
	c.AddCommand(configGetCmd(g), configSetCmd(g), configEditCmd(g), configDeleteCmd(g), configLayersCmd(g))
	return c
}

func configGetCmd(g *globals) *cobra.Command {
	var service string
	c := &cobra.Command{
		Use:   "get [LAYER]",
		Short: "Show the merged config of --service in --realm with each key's source, or one LAYER",
		Example: `  switchboard config get --service identity --realm production
  switchboard config get service=identity,realm=production`,
		Args: cobra.MaximumNArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			c := g.client()
			if len(args) == 1 {
				k, err := g.layerArg(cmd, args[0])
				if err != nil {
					return err
				}
				l, err := c.Layer(cmd.Context(), k)
				if err != nil {
					return err
				}
				if g.output == "json" {
					return g.print(l, nil)
				}
				return writeIndented(g.stdout, l.Config)
			}
			if service != "" {
				if err := sb.ValidateName("--service", service); err != nil {
					return usagef("%s", sb.ErrorMessage(err))
				}
			}
			m, err := c.Config(cmd.Context(), g.realm, service, client.QueryOptions{})
			if err != nil {
				return err
			}
			return g.print(m, func(w io.Writer) {
				paths := make([]string, 0, len(m.Sources))
				for p := range m.Sources {
					paths = append(paths, p)
				}
				slices.Sort(paths)
				fmt.Fprintln(w, "KEY\tVALUE\tFROM")
				for _, p := range paths {
					v, _ := json.Marshal(lookup(m.Config, p))
					fmt.Fprintf(w, "%s\t%s\t%s\n", cell(p), unescapeHTML(v), cell(m.Sources[p]))
				}
			})
		}),
	}
	c.Flags().StringVar(&service, "service", "", "service whose merged config to show (none: global and realm layers only)")
	return c
}

func lookup(m map[string]any, path string) any {
	var cur any = m
	for _, k := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = obj[k]
	}
	return cur
}

func writeIndented(w io.Writer, raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(unescapeHTML(buf.Bytes()))
	return err
}

// unescapeHTML writes back the &, < and > that Go's JSON encoders escape
// as \u0026, \u003c and \u003e (Atlas's answers among them), the same
// JSON values: a DSN's "&" is read and edited as written. An escaped
// backslash before "u0026" stays as it is.
func unescapeHTML(b []byte) []byte {
	if !bytes.Contains(b, []byte(`\u00`)) {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			out = append(out, b[i])
			continue
		}
		if b[i+1] == 'u' && i+6 <= len(b) {
			switch strings.ToLower(string(b[i+2 : i+6])) {
			case "0026":
				out, i = append(out, '&'), i+5
				continue
			case "003c":
				out, i = append(out, '<'), i+5
				continue
			case "003e":
				out, i = append(out, '>'), i+5
				continue
			}
		}
		out, i = append(out, b[i], b[i+1]), i+1 // an escape: both bytes as they are
	}
	return out
}

// readObject reads a JSON object from a file or "-" (stdin), checking it
// before it is sent.
func readObject(name string, stdin io.Reader) (json.RawMessage, error) {
	var (
		data []byte
		err  error
	)
	if name == "-" {
		data, err = io.ReadAll(io.LimitReader(stdin, sb.MaxLayerBytes+1))
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, err
	}
	if len(data) > sb.MaxLayerBytes {
		// Not "malformed JSON": stdin is read no further than the limit.
		return nil, usagef("%s: a config layer must be at most %d bytes", name, sb.MaxLayerBytes)
	}
	// The values are left raw: decoded, a number beyond float64 (which
	// Atlas takes, as json.Number) would be refused, and misnamed as the
	// whole layer's type.
	var obj map[string]json.RawMessage
	err = json.Unmarshal(data, &obj)
	var (
		typeErr   *json.UnmarshalTypeError
		syntaxErr *json.SyntaxError
	)
	switch {
	case errors.As(err, &typeErr):
		return nil, usagef("%s: must hold one JSON object, got a JSON %s", name, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return nil, usagef("%s: must hold one JSON object: malformed JSON at byte %d: %v", name, syntaxErr.Offset, syntaxErr)
	case err != nil:
		return nil, usagef("%s: must hold one JSON object: %v", name, err)
	case obj == nil:
		return nil, usagef("%s: must hold one JSON object, got null", name)
	}
	return json.RawMessage(data), nil
}

func configSetCmd(g *globals) *cobra.Command {
	var cas int64
	c := &cobra.Command{
		Use:     "set LAYER FILE|-",
		Short:   "Replace one layer with the JSON object in FILE (or stdin)",
		Example: `  echo '{"db":{"dsn":"postgres://prod/identity"}}' | switchboard config set service=identity,realm=production -`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 2 && strings.Contains(args[0], "=") && strings.Contains(args[1], "=") {
				return usagef("LAYER is one argument, its parts joined by a comma: %s, got %q and %q apart", strings.Join(args[:2], ","), args[0], args[1])
			}
			return cobra.ExactArgs(2)(cmd, args)
		},
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("cas") && cas < 0 {
				return usagef("--cas: must be an index (0 or more), got %d", cas)
			}
			k, err := g.layerArg(cmd, args[0])
			if err != nil {
				return err
			}
			obj, err := readObject(args[1], cmd.InOrStdin())
			if err != nil {
				return err
			}
			var casp *uint64
			if cas >= 0 {
				u := uint64(cas)
				casp = &u
			}
			l, err := g.client().PutLayer(cmd.Context(), k, obj, casp)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "layer %s set at index %d\n", k, l.Index)
			return nil
		}),
	}
	c.Flags().Int64Var(&cas, "cas", -1, "refuse unless the layer is at this index (0: unless it does not exist)")
	return c
}

func configDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete LAYER",
		Short: "Remove one layer",
		Args:  cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			k, err := g.layerArg(cmd, args[0])
			if err != nil {
				return err
			}
			if err := g.client().DeleteLayer(cmd.Context(), k); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "layer %s deleted\n", k)
			return nil
		}),
	}
}

func configEditCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "edit LAYER",
		Short: "Edit one layer in $EDITOR; refused if someone changed it meanwhile",
		Args:  cobra.ExactArgs(1),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			k, err := g.layerArg(cmd, args[0])
			if err != nil {
				return err
			}
			return editLayer(cmd.Context(), g, k, cmd.InOrStdin())
		}),
	}
}

func editLayer(ctx context.Context, g *globals, k sb.LayerKey, stdin io.Reader) error {
	c := g.client()
	var cas uint64
	content := json.RawMessage("{}")
	l, err := c.Layer(ctx, k)
	switch {
	case err == nil:
		cas, content = l.Index, l.Config
	case client.IsNotFound(err):
	default:
		return err
	}
	dir, err := os.MkdirTemp("", "switchboard-config-")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "layer.json")
	// An edit that cannot be saved is kept, and the error says where.
	saved := false
	defer func() {
		if saved {
			os.RemoveAll(dir)
		}
	}()
	keep := func(err error) error {
		// Not a usage error any more: the command line was right.
		return errors.New(err.Error() + "; your edit is kept in " + path)
	}
	var buf bytes.Buffer
	_ = json.Indent(&buf, content, "", "  ")
	buf.WriteByte('\n')
	edited := unescapeHTML(buf.Bytes())
	if err := os.WriteFile(path, edited, 0o600); err != nil {
		return err
	}
	editor := strings.TrimSpace(os.Getenv("VISUAL"))
	if editor == "" {
		editor = strings.TrimSpace(os.Getenv("EDITOR"))
	}
	if editor == "" {
		editor = "vi"
	}
	// Through the shell, as git runs it: "code --wait" and a quoted path
	// with spaces both work.
	ed := exec.CommandContext(ctx, "/bin/sh", "-c", editor+` "$@"`, editor, path)
	ed.Stdin, ed.Stdout, ed.Stderr = stdin, g.stdout, g.stderr
	if err := ed.Run(); err != nil {
		return keep(fmt.Errorf("editor %s: %w", editor, err))
	}
	obj, err := readObject(path, nil)
	if err != nil {
		return keep(err)
	}
	if bytes.Equal(bytes.TrimSpace(obj), bytes.TrimSpace(edited)) {
		saved = true
		fmt.Fprintf(g.stdout, "layer %s unchanged\n", k)
		return nil
	}
	nl, err := c.PutLayer(ctx, k, obj, &cas)
	if sb.ErrorCode(err) == sb.EConflict {
		return keep(errors.New("someone else changed layer " + k.String() + " while you edited it; it was not saved"))
	}
	if err != nil {
		return keep(err)
	}
	saved = true
	fmt.Fprintf(g.stdout, "layer %s set at index %d\n", k, nl.Index)
	return nil
}

func configLayersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "layers",
		Short: "List every config layer",
		Args:  cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("realm") {
				return usagef("--realm: config layers lists the layers of every realm")
			}
			l, err := g.client().Layers(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(l, func(w io.Writer) {
				fmt.Fprintln(w, "LAYER\tINDEX\tBYTES")
				for _, x := range l.Layers {
					fmt.Fprintf(w, "%s\t%d\t%d\n", sb.LayerKey{Realm: x.Realm, Service: x.Service}, x.Index, x.Size)
				}
			})
		}),
	}
}
