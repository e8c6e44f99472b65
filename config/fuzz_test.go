package config_test

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// FuzzDuration: Values.Duration reads a Go duration string or a number of
// seconds; a value it cannot read as one, a number of seconds past what a
// Duration holds (292 years) included, gives the default, never another
// duration. The kit reads drain_timeout with it.
func FuzzDuration(f *testing.F) {
	for _, s := range []string{"2s", `"1m30s"`, "10", "1.5", "-3", "9.2e9", "1e-12", `"-1s"`, "true", "[1]"} {
		f.Add(s)
	}
	const def = -7 * time.Nanosecond // no value below reads as it
	f.Fuzz(func(t *testing.T, val string) {
		if strings.ContainsAny(val, "\x00") {
			return
		}
		c, err := config.Load(context.Background(), config.Options{Service: "svc", Environ: []string{"SWITCHBOARD_CONFIG_D=" + val}})
		if err != nil {
			t.Fatal(err)
		}
		got := c.Values().Duration("d", def)
		// The variable's value is JSON when it reads as JSON.
		var x any = val
		dec := json.NewDecoder(strings.NewReader(val))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) == nil && !dec.More() {
			x = v
		}
		switch x := x.(type) {
		case string:
			want, err := time.ParseDuration(x)
			if err != nil {
				want = def
			}
			if got != want {
				t.Fatalf("Duration of %q = %v; want %v", val, got, want)
			}
		case json.Number:
			secs, err := x.Float64()
			if err != nil || math.Abs(secs) >= float64(math.MaxInt64)/float64(time.Second) {
				if got != def {
					t.Fatalf("Duration of %s seconds = %v; want the default", val, got)
				}
				return
			}
			if want := time.Duration(secs * float64(time.Second)); got != want {
				t.Fatalf("Duration of %s seconds = %v; want %v", val, got, want)
			}
		default:
			if got != def {
				t.Fatalf("Duration of %s = %v; want the default", val, got)
			}
		}
	})
}
