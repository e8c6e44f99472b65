package scaffold_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"

	"github.com/switchboard-go/switchboard/scaffold"
)

var update = flag.Bool("update", false, "rewrite the golden tree")

// TestGoldenTree pins every generated file.
func TestGoldenTree(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	err := scaffold.Generate(scaffold.Options{Name: "identity", Dir: dir, Module: "example.com/identity", Port: 5004, Source: "/src/switchboard", GoVersion: "1.26"})
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "golden", "identity")
	if *update {
		os.RemoveAll(golden)
		os.MkdirAll(golden, 0o755)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 10 {
		t.Fatalf("generated %d files; want 10", len(entries))
	}
	for _, e := range entries {
		got, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		// A golden ".gitignore" would be read by git: keep it under another name.
		gname := strings.TrimPrefix(e.Name(), ".") + ".golden"
		if *update {
			os.WriteFile(filepath.Join(golden, gname), got, 0o644)
			continue
		}
		want, err := os.ReadFile(filepath.Join(golden, gname))
		if err != nil {
			t.Fatalf("%s: no golden file (run go test ./scaffold -update): %v", e.Name(), err)
		}
		if string(got) != string(want) {
			t.Errorf("%s differs from %s:\n%s", e.Name(), gname, got)
		}
	}
}

func TestRefusals(t *testing.T) {
	full := t.TempDir()
	os.WriteFile(filepath.Join(full, "keep.txt"), []byte("mine"), 0o644)
	tests := []struct {
		o    scaffold.Options
		want string
	}{
		{scaffold.Options{Name: "Bad_Name", Dir: t.TempDir(), Port: 5000}, "NAME: must match"},
		{scaffold.Options{Name: "ok", Dir: full, Port: 5000}, "exists and is not empty"},
		{scaffold.Options{Name: "ok", Dir: t.TempDir(), Port: 0}, "--port: must be 1-65535"},
		{scaffold.Options{Name: "ok", Dir: t.TempDir(), Port: 1, Module: "bad module"}, "--module: must be a Go module path"},
		// Valid service names that Go refuses as a module path (the
		// default module is the name): go mod tidy or go test would fail.
		{scaffold.Options{Name: "context", Dir: t.TempDir(), Port: 1}, "NAME: \"context\" cannot be a Go module path"},
		{scaffold.Options{Name: "main", Dir: t.TempDir(), Port: 1}, "NAME: \"main\" cannot be a Go module path"},
		{scaffold.Options{Name: "toolchain", Dir: t.TempDir(), Port: 1}, "cannot be a Go module path"},
		{scaffold.Options{Name: "aux", Dir: t.TempDir(), Port: 1}, "cannot be a Go module path"},
		{scaffold.Options{Name: "ok", Dir: t.TempDir(), Port: 1, Module: "example.com/ok@v1"}, "--module: must be a Go module path"},
		{scaffold.Options{Name: "ok", Dir: t.TempDir(), Port: 1, Module: "example.com//ok"}, "--module: must be a Go module path"},
		{scaffold.Options{Name: "ok", Dir: t.TempDir(), Port: 1, Module: "example.com/../ok"}, "--module: must be a Go module path"},
		{scaffold.Options{Name: "ok", Dir: t.TempDir(), Port: 1, Module: "-ok"}, "--module: must be a Go module path"},
		{scaffold.Options{Name: "ok", Dir: t.TempDir(), Port: 1, Module: "fmt"}, "standard library"},
	}
	for _, tt := range tests {
		err := scaffold.Generate(tt.o)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Generate(%+v) = %v; want %q", tt.o, err, tt.want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(full, "keep.txt")); string(b) != "mine" {
		t.Fatal("a refused generation touched the directory")
	}
	if entries, _ := os.ReadDir(full); len(entries) != 1 {
		t.Fatalf("a refused generation wrote %d entries", len(entries))
	}
}

func TestSourceDir(t *testing.T) {
	t.Setenv("SWITCHBOARD_SOURCE", "")
	dir, err := scaffold.SourceDir()
	if err != nil {
		t.Fatalf("from a source checkout: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "scaffold", "scaffold.go")); err != nil {
		t.Fatalf("SourceDir = %s, not this checkout", dir)
	}
	t.Setenv("SWITCHBOARD_SOURCE", t.TempDir())
	if _, err := scaffold.SourceDir(); err == nil || !strings.Contains(err.Error(), "no go.mod of") {
		t.Fatalf("SWITCHBOARD_SOURCE without a checkout: %v", err)
	}
}

// A Switchboard checkout at a path with a space in it: go.mod's replace
// was written unquoted, and go mod tidy refused the file.
func TestSourcePathWithASpace(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "identity")
	src := "/src/my projects/switchboard"
	if err := scaffold.Generate(scaffold.Options{Name: "identity", Dir: dir, Port: 5004, Source: src, GoVersion: "1.27"}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "go.mod"))
	f, err := modfile.Parse("go.mod", data, nil)
	if err != nil {
		t.Fatalf("go.mod does not parse: %v\n%s", err, data)
	}
	if len(f.Replace) != 1 || f.Replace[0].New.Path != src {
		t.Fatalf("go.mod replaces with %+v; want %q\n%s", f.Replace, src, data)
	}
	docker, _ := os.ReadFile(filepath.Join(dir, "Dockerfile"))
	for _, want := range []string{"--build-context 'switchboard=" + src + "'", "FROM golang:1.27 AS build"} {
		if !strings.Contains(string(docker), want) {
			t.Errorf("Dockerfile lacks %q:\n%s", want, docker)
		}
	}
}
