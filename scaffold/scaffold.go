// Package scaffold is `switchboard new`: it writes a new service on the
// smart service kit from templates embedded in the binary, then resolves
// its dependencies and makes its first git commit.
package scaffold

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"go/build"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/template"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"

	sb "github.com/switchboard-go/switchboard"
)

//go:embed templates/*.tmpl
var templates embed.FS

// Module is the module path of Switchboard itself.
const Module = "github.com/switchboard-go/switchboard"

// files maps each template to the file it writes.
var files = []struct{ tmpl, out string }{
	{"main.go.tmpl", "main.go"},
	{"handler.go.tmpl", "handler.go"},
	{"handler_test.go.tmpl", "handler_test.go"},
	{"config.yaml.tmpl", "config.yaml"},
	{"sidecar.yaml.tmpl", "sidecar.yaml"},
	{"Makefile.tmpl", "Makefile"},
	{"Dockerfile.tmpl", "Dockerfile"},
	{"README.md.tmpl", "README.md"},
	{"gitignore.tmpl", ".gitignore"},
	{"go.mod.tmpl", "go.mod"},
}

// Options say what to generate.
type Options struct {
	// Name of the service. Required.
	Name string
	// Dir to write into; must not exist or be empty. Required.
	Dir string
	// Module path of the new service; empty means the name.
	Module string
	// Port the service listens on. Required.
	Port int
	// Source is a Switchboard source checkout for go.mod's replace; empty
	// requires the published module.
	Source string
	// GoVersion for go.mod; empty means this toolchain's (e.g. 1.26).
	GoVersion string
}

// Validate checks the options, naming the bad one.
func (o *Options) Validate() error {
	if err := sb.ValidateName("NAME", o.Name); err != nil {
		return errors.New(sb.ErrorMessage(err))
	}
	if o.Dir == "" {
		return errors.New("--dir: required")
	}
	if o.Port < 1 || o.Port > 65535 {
		return fmt.Errorf("--port: must be 1-65535, got %d", o.Port)
	}
	if err := CheckModule(o.Name, o.Module); err != nil {
		return err
	}
	if o.Module == "" {
		o.Module = o.Name
	}
	if o.GoVersion == "" {
		v := strings.TrimPrefix(runtime.Version(), "go")
		if parts := strings.Split(v, "."); len(parts) >= 2 {
			v = parts[0] + "." + parts[1]
		}
		o.GoVersion = v
	}
	return nil
}

// CheckModule refuses a module path (empty: the service name) that the
// go command would refuse for the new module, or that go mod tidy or go
// test would fail on: a standard library package such as "context", or a
// name the go command reserves such as "main".
func CheckModule(name, module string) error {
	if module == "" {
		if err := checkModulePath(name); err != nil {
			return fmt.Errorf("NAME: %q cannot be a Go module path (%v): give one with --module, e.g. --module example.com/%s", name, err, name)
		}
		return nil
	}
	if err := checkModulePath(module); err != nil {
		return fmt.Errorf("--module: must be a Go module path such as example.com/%s, got %q (%v)", name, module, err)
	}
	return nil
}

// checkModulePath refuses what the go command refuses as the path of a
// main module (module.CheckImportPath), the names it reserves, and the
// packages of the standard library, which would shadow the module.
func checkModulePath(path string) error {
	if err := module.CheckImportPath(path); err != nil {
		var perr *module.InvalidPathError
		if errors.As(err, &perr) {
			return perr.Err
		}
		return err
	}
	switch path {
	case "main", "std", "cmd", "all", "go", "toolchain":
		return errors.New("reserved by the go command")
	}
	if first, _, _ := strings.Cut(path, "/"); !strings.Contains(first, ".") {
		if p, err := build.Default.Import(path, "", 0); err == nil && p.Goroot {
			return errors.New("a package of Go's standard library")
		}
	}
	return nil
}

// replacePath is the source for go.mod's replace: relative when the new
// service lives inside the source tree (examples/), so that it stays valid
// in every clone; absolute otherwise.
func replacePath(source, dir string) string {
	if source == "" || !filepath.IsAbs(source) || !filepath.IsAbs(dir) {
		return source
	}
	rel, err := filepath.Rel(dir, source)
	if err != nil || !strings.HasPrefix(dir, source+string(filepath.Separator)) {
		return source
	}
	return filepath.ToSlash(rel)
}

// CheckDir refuses a directory that exists and is not empty.
func CheckDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("--dir: %s exists and is not empty; choose a new directory", dir)
	}
	return nil
}

// templateFuncs quote paths for the files they go in: go.mod (a path with
// a space in it must be quoted there, where go mod tidy refused it) and a
// shell command line.
var templateFuncs = template.FuncMap{
	"modQuote": modfile.AutoQuote,
	"shQuote": func(s string) string {
		if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@=,") == "" {
			return s
		}
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	},
}

// data is what the templates see.
type data struct {
	Options
	Replace string
	Listen  string
}

// Generate writes the service's files; it writes nothing when the options
// or the directory are refused.
func Generate(o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	if err := CheckDir(o.Dir); err != nil {
		return err
	}
	d := data{Options: o, Replace: replacePath(o.Source, o.Dir), Listen: fmt.Sprintf("127.0.0.1:%d", o.Port)}
	rendered := map[string][]byte{}
	for _, f := range files {
		t, err := template.New(f.tmpl).Funcs(templateFuncs).ParseFS(templates, "templates/"+f.tmpl)
		if err != nil {
			return fmt.Errorf("scaffold: %s: %w", f.tmpl, err)
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, d); err != nil {
			return fmt.Errorf("scaffold: %s: %w", f.tmpl, err)
		}
		rendered[f.out] = buf.Bytes()
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(o.Dir, f.out), rendered[f.out], 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Create generates the service, resolves its dependencies (go mod tidy)
// and makes its first commit, unless the directory is inside a git
// repository already. Progress goes to out.
func Create(ctx context.Context, o Options, out io.Writer) error {
	if err := Generate(o); err != nil {
		return err
	}
	run := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = o.Dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, b)
		}
		return nil
	}
	fmt.Fprintln(out, "  resolving dependencies (go mod tidy)")
	if err := run("go", "mod", "tidy"); err != nil {
		return err
	}
	// Inside an existing repository (a monorepo, examples/), the service
	// joins it: no repository of its own.
	probe := exec.CommandContext(ctx, "git", "rev-parse", "--is-inside-work-tree")
	probe.Dir = filepath.Dir(o.Dir)
	if b, err := probe.Output(); err == nil && strings.TrimSpace(string(b)) == "true" {
		fmt.Fprintln(out, "  inside a git repository already: no git init, no commit")
		return nil
	}
	fmt.Fprintln(out, "  git init and a first commit")
	if err := run("git", "init", "-q"); err != nil {
		return err
	}
	if err := run("git", "add", "-A"); err != nil {
		return err
	}
	args := []string{"commit", "-q", "-m", "Generated by switchboard new " + o.Name}
	if b, _ := exec.Command("git", "config", "user.email").Output(); len(bytes.TrimSpace(b)) == 0 {
		args = append([]string{"-c", "user.name=switchboard new", "-c", "user.email=switchboard@localhost"}, args...)
	}
	return run("git", args...)
}

// SourceDir finds a Switchboard source checkout for go.mod's replace: the
// one SWITCHBOARD_SOURCE names, else the one this binary was built from
// when its sources are still there. It returns "" and an error saying to
// set SWITCHBOARD_SOURCE otherwise.
func SourceDir() (string, error) {
	if dir := os.Getenv("SWITCHBOARD_SOURCE"); dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", err
		}
		if !isSource(abs) {
			return "", fmt.Errorf("SWITCHBOARD_SOURCE=%s: no go.mod of %s there", dir, Module)
		}
		return abs, nil
	}
	_, file, _, ok := runtime.Caller(0)
	if ok && filepath.IsAbs(file) {
		dir := filepath.Dir(filepath.Dir(file))
		if isSource(dir) {
			return dir, nil
		}
	}
	return "", errors.New("cannot tell where the Switchboard source is (it is not published yet): set SWITCHBOARD_SOURCE to a checkout")
}

func isSource(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	return err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module "+Module+"\n"))
}
