package config_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchboard-go/switchboard/config"
)

// FuzzLoad: any config.yaml and SWITCHBOARD_CONFIG_* variable either loads
// or is refused with an error naming the file or variable; what loads
// answers every getter without panicking, and every source names a layer.
func FuzzLoad(f *testing.F) {
	f.Add("defaults:\n  log: info\nrealms:\n  dev: {log: debug}\n", "SWITCHBOARD_CONFIG_DB__DSN=x")
	f.Add("defaults: {a: {b: [1, 2]}}\n", `SWITCHBOARD_CONFIG_A={"b":null}`)
	f.Add("realms:\n  Prod: {}\n", "SWITCHBOARD_CONFIG_=1")
	f.Add("", "SWITCHBOARD_CONFIG_A____B=2")
	f.Add("defaults: [1]\n", "SWITCHBOARD_CONFIG_X=1e400")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, file, env string) {
		path := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load(context.Background(), config.Options{Service: "svc", Realm: "dev", File: path, Environ: []string{env}})
		if err != nil {
			if !strings.Contains(err.Error(), "config:") {
				t.Fatalf("error %q does not say where it comes from", err)
			}
			return
		}
		v := c.Values()
		for p, src := range v.Sources() {
			if !(src == "file" || src == "file:realm=dev" || strings.HasPrefix(src, "env:")) {
				t.Fatalf("source %q of %q names no layer", src, p)
			}
			_ = v.String(p, "")
			_ = v.Int(p, 0)
			_ = v.Duration(p, 0)
		}
		_ = v.Map()
	})
}
