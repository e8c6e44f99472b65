package config_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/client"
	"github.com/switchboard-go/switchboard/config"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

func startAtlas(t *testing.T) *client.Atlas { return atlastest.Start(t, true).Client() }

const fileYAML = `defaults:
  log: info
  db: {pool: 5, dsn: "postgres://localhost/identity"}
  listen: ":5000"
realms:
  production:
    log: warn
    db: {dsn: "postgres://prod/identity"}
  test:
    log: debug
`

// TestPrecedenceAndProvenance: defaults < file < file realm < Atlas < env,
// each value with its source.
func TestPrecedenceAndProvenance(t *testing.T) {
	a := startAtlas(t)
	ctx := context.Background()
	a.PutLayer(ctx, sb.LayerKey{}, json.RawMessage(`{"feature":{"x":true},"timeout":"2s"}`), nil)
	a.PutLayer(ctx, sb.LayerKey{Realm: "production", Service: "identity"}, json.RawMessage(`{"db":{"pool":20}}`), nil)
	file := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(file, []byte(fileYAML), 0o600)
	c, err := config.Load(ctx, config.Options{
		Service: "identity", Realm: "production", File: file, Atlas: a,
		Defaults: map[string]any{"log": "error", "retries": 3, "listen": ":8080"},
		Environ:  []string{"SWITCHBOARD_CONFIG_FEATURE__X=false", "SWITCHBOARD_CONFIG_NAME=svc", "OTHER=1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := c.Values()
	tests := []struct {
		path, want, source string
	}{
		{"retries", "3", "default"},
		{"listen", ":5000", "file"},
		{"log", "warn", "file:realm=production"},
		{"db.dsn", "postgres://prod/identity", "file:realm=production"},
		{"db.pool", "20", "atlas:service=identity,realm=production"},
		{"timeout", "2s", "atlas:global"},
		{"feature.x", "false", "env:SWITCHBOARD_CONFIG_FEATURE__X"},
		{"name", "svc", "env:SWITCHBOARD_CONFIG_NAME"},
	}
	for _, tt := range tests {
		if got, src := v.String(tt.path, ""), v.Source(tt.path); got != tt.want || src != tt.source {
			t.Errorf("%s = %q from %q; want %q from %q", tt.path, got, src, tt.want, tt.source)
		}
	}
	if v.Int("db.pool", 0) != 20 || v.Bool("feature.x", true) || v.Duration("timeout", 0) != 2*time.Second {
		t.Errorf("typed: pool %d, x %v, timeout %v", v.Int("db.pool", 0), v.Bool("feature.x", true), v.Duration("timeout", 0))
	}
	var db struct {
		DSN  string
		Pool int
	}
	if err := v.Decode("db", &db); err != nil || db.Pool != 20 || db.DSN != "postgres://prod/identity" {
		t.Errorf("Decode(db) = %+v, %v", db, err)
	}
	if !c.FromAtlas() {
		t.Error("FromAtlas = false")
	}
}

func TestAtlasUnreachableRunsOnLocalConfig(t *testing.T) {
	dead := &client.Atlas{URLs: []string{"http://127.0.0.1:1"}}
	c, err := config.Load(context.Background(), config.Options{Service: "identity", Atlas: dead, Defaults: map[string]any{"log": "info"}, Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if c.FromAtlas() || c.Values().String("log", "") != "info" {
		t.Fatalf("FromAtlas %v, log %q", c.FromAtlas(), c.Values().String("log", ""))
	}
}

func TestChangeInAtlasReachesTheService(t *testing.T) {
	a := startAtlas(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := config.Load(ctx, config.Options{Service: "identity", Atlas: a, Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	changed := make(chan string, 10)
	c.OnChange(func(old, new *config.Values) { changed <- new.String("log", "") })
	go c.Watch(ctx)
	// A change to another service's layer must not wake it.
	a.PutLayer(ctx, sb.LayerKey{Service: "billing"}, json.RawMessage(`{"log":"x"}`), nil)
	a.PutLayer(ctx, sb.LayerKey{Service: "identity", Realm: "dev"}, json.RawMessage(`{"log":"debug"}`), nil)
	select {
	case got := <-changed:
		if got != "debug" {
			t.Fatalf("change seen: log=%q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the change in Atlas did not reach the service")
	}
	if c.Values().Source("log") != "atlas:service=identity,realm=dev" {
		t.Fatalf("source = %q", c.Values().Source("log"))
	}
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown.yaml":  "defaults: {}\nrealm: {}\n",
		"badrealm.yaml": "realms:\n  Prod: {}\n",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		if _, err := config.Load(context.Background(), config.Options{Service: "a", File: p, Environ: []string{}}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := config.Load(context.Background(), config.Options{Service: "a", File: filepath.Join(dir, "missing.yaml")}); err == nil {
		t.Error("a missing file was accepted")
	}
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, nil, 0o600)
	if _, err := config.Load(context.Background(), config.Options{Service: "a", File: empty, Environ: []string{}}); err != nil {
		t.Errorf("an empty file: %v", err)
	}
}

func TestMergeInto(t *testing.T) {
	dst := map[string]any{}
	src := map[string]string{}
	config.MergeInto(dst, map[string]any{"a": map[string]any{"b": 1, "c": 2}, "d": 3}, "one", src)
	config.MergeInto(dst, map[string]any{"a": map[string]any{"b": nil}, "d": map[string]any{"e": 4}}, "two", src)
	want := map[string]any{"a": map[string]any{"c": 2}, "d": map[string]any{"e": 4}}
	if diff := cmp.Diff(want, dst); diff != "" {
		t.Fatalf("merged (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"a.c": "one", "d.e": "two"}, src); diff != "" {
		t.Fatalf("sources (-want +got):\n%s", diff)
	}
}

// An empty object is a leaf: it has a source, until keys come into it.
func TestEmptyObjectsHaveASource(t *testing.T) {
	dst := map[string]any{}
	src := map[string]string{}
	config.MergeInto(dst, map[string]any{"a": map[string]any{}, "b": map[string]any{"c": 1}}, "one", src)
	if diff := cmp.Diff(map[string]string{"a": "one", "b.c": "one"}, src); diff != "" {
		t.Fatalf("sources (-want +got):\n%s", diff)
	}
	config.MergeInto(dst, map[string]any{"a": map[string]any{"x": 1}, "b": map[string]any{"c": nil}}, "two", src)
	if diff := cmp.Diff(map[string]string{"a.x": "two", "b": "two"}, src); diff != "" {
		t.Fatalf("sources after the second layer (-want +got):\n%s", diff)
	}
}

// TestSourcesFollowReplacedKeys: when Atlas or the environment replaces a
// local object with a scalar, or deletes a key (null), the keys that are
// gone must leave Sources too (GET /environment lists Sources).
func TestSourcesFollowReplacedKeys(t *testing.T) {
	a := startAtlas(t)
	ctx := context.Background()
	a.PutLayer(ctx, sb.LayerKey{}, json.RawMessage(`{"db":"postgres://atlas/identity"}`), nil)
	file := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(file, []byte("defaults:\n  db: {pool: 5, dsn: x}\n  cache: {size: 10}\n  greeting: hello\n"), 0o600)
	c, err := config.Load(ctx, config.Options{
		Service: "identity", File: file, Atlas: a,
		Environ: []string{"SWITCHBOARD_CONFIG_CACHE=off", "SWITCHBOARD_CONFIG_GREETING=null"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"db":    "atlas:global",
		"cache": "env:SWITCHBOARD_CONFIG_CACHE",
	}
	if diff := cmp.Diff(want, c.Values().Sources()); diff != "" {
		t.Fatalf("sources (-want +got):\n%s", diff)
	}
	for p := range c.Values().Sources() {
		if c.Values().Get(p) == nil {
			t.Errorf("Sources names %s, which has no value", p)
		}
	}
}

// TestAtlasIntegersKeepTheirDigits: an integer in an Atlas layer beyond
// float64's 2^53 (a 64-bit id) reaches the service as it was written, as
// the same integer in config.yaml or the environment does.
func TestAtlasIntegersKeepTheirDigits(t *testing.T) {
	a := startAtlas(t)
	ctx := context.Background()
	a.PutLayer(ctx, sb.LayerKey{}, json.RawMessage(`{"tenant":9007199254740993,"big":12345678901234567890}`), nil)
	c, err := config.Load(ctx, config.Options{Service: "identity", Atlas: a, Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	v := c.Values()
	if got := v.Int("tenant", 0); got != 9007199254740993 {
		t.Errorf("Int(tenant) = %d; want 9007199254740993", got)
	}
	if got := v.String("big", ""); got != "12345678901234567890" {
		t.Errorf("String(big) = %q; want 12345678901234567890", got)
	}
}

// TestMapKeepsNumbers: Map's copy holds numbers as Get has them
// (json.Number), so that a 64-bit id keeps its digits.
func TestMapKeepsNumbers(t *testing.T) {
	c, err := config.Load(context.Background(), config.Options{Service: "identity", Environ: []string{"SWITCHBOARD_CONFIG_TENANT=9007199254740993"}})
	if err != nil {
		t.Fatal(err)
	}
	v := c.Values()
	if got, want := v.Map()["tenant"], v.Get("tenant"); got != want {
		t.Fatalf("Map()[tenant] = %#v; want %#v, as Get(tenant)", got, want)
	}
}

// TestEnvObjectsAndLeavesCombine: a variable holding a JSON object and one
// naming a key inside it both count, whatever their order in the
// environment, and each key's source is the variable that set it.
func TestEnvObjectsAndLeavesCombine(t *testing.T) {
	for _, env := range [][]string{
		{"SWITCHBOARD_CONFIG_DB__POOL=7", `SWITCHBOARD_CONFIG_DB={"dsn":"x","maxConns":3}`},
		{`SWITCHBOARD_CONFIG_DB={"dsn":"x","maxConns":3}`, "SWITCHBOARD_CONFIG_DB__POOL=7"},
	} {
		c, err := config.Load(context.Background(), config.Options{Service: "identity", Environ: env})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"db.dsn":      "env:SWITCHBOARD_CONFIG_DB",
			"db.maxConns": "env:SWITCHBOARD_CONFIG_DB",
			"db.pool":     "env:SWITCHBOARD_CONFIG_DB__POOL",
		}
		if diff := cmp.Diff(want, c.Values().Sources()); diff != "" {
			t.Errorf("environment %q: sources (-want +got):\n%s", env, diff)
		}
		if got := c.Values().Int("db.pool", 0); got != 7 {
			t.Errorf("environment %q: db.pool = %d; want 7", env, got)
		}
	}
}

// TestFileKeysAndScalarsAsWritten: config.yaml's keys that YAML reads as
// numbers or booleans are keys like any other (JSON's are strings), a date
// stays the text written, and a key holding "." is refused, as Atlas
// refuses it, rather than loaded where no lookup finds it.
func TestFileKeysAndScalarsAsWritten(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	os.WriteFile(file, []byte("defaults:\n  codes: {404: retry, 500: fail}\n  flags: {true: on}\n  since: 2024-01-01\nrealms:\n  dev:\n    codes: {503: wait}\n"), 0o600)
	c, err := config.Load(context.Background(), config.Options{Service: "identity", File: file, Environ: []string{}})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	v := c.Values()
	for path, want := range map[string]string{"codes.404": "retry", "codes.503": "wait", "flags.true": "on", "since": "2024-01-01"} {
		if got := v.String(path, ""); got != want {
			t.Errorf("String(%s) = %q; want %q", path, got, want)
		}
	}
	dotted := filepath.Join(dir, "dotted.yaml")
	os.WriteFile(dotted, []byte("realms:\n  dev:\n    db: {pool.size: 5}\n"), 0o600)
	_, err = config.Load(context.Background(), config.Options{Service: "identity", File: dotted, Environ: []string{}})
	if err == nil || !strings.Contains(err.Error(), `realms.dev: key "pool.size" in db: must be non-empty and hold no "."`) {
		t.Fatalf("Load of a file with key db.\"pool.size\" = %v; want it refused, naming the key", err)
	}
}

// TestBoolReadsYAMLWords: `debug: yes` in config.yaml is a string to YAML
// 1.2 (yaml.v3); Bool still reads it as the boolean it was written as.
func TestBoolReadsYAMLWords(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(file, []byte("defaults:\n  debug: yes\n  verbose: Off\n  trace: \"on\"\n  quiet: no\n"), 0o600)
	c, err := config.Load(context.Background(), config.Options{Service: "identity", File: file, Environ: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	v := c.Values()
	for path, want := range map[string]bool{"debug": true, "verbose": false, "trace": true, "quiet": false} {
		if got := v.Bool(path, !want); got != want {
			t.Errorf("Bool(%s, %v) = %v; want %v", path, !want, got, want)
		}
	}
}

// Why Atlas gave no config is kept for the service to say (a missing token
// looked like Atlas being down), and Watch logs a failure that differs
// from the last one, not only the loss of an Atlas it had reached.
func TestAtlasFailuresAreSaidOnceEach(t *testing.T) {
	var calls atomic.Int32
	var denied atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if denied.Load() {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"error":{"code":"permission_denied","message":"token x may not read service=identity"}}`)
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":{"code":"unauthenticated","message":"authorization: a bearer token is required"}}`)
	}))
	defer srv.Close()
	logs := &syncbuf.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := config.Load(ctx, config.Options{Service: "identity", Atlas: &client.Atlas{URLs: []string{srv.URL}}, Environ: []string{},
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if sb.ErrorCode(c.LoadError()) != sb.EUnauthenticated {
		t.Fatalf("LoadError() = %v; want the 401", c.LoadError())
	}
	done := make(chan struct{})
	go func() { defer close(done); c.Watch(ctx) }()
	for calls.Load() < 2 { // Watch's first try: the same 401
		time.Sleep(time.Millisecond) // (it tries again and again)
	}
	denied.Store(true)
	for i := 0; !strings.Contains(logs.String(), "permission_denied"); i++ {
		if i == 2000 { // 20 s
			t.Fatalf("the 403 that followed the 401 was not logged:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if n := strings.Count(logs.String(), "unauthenticated"); n != 1 {
		t.Fatalf("the 401 was logged %d times; want once:\n%s", n, logs.String())
	}
}

// Keys a key path cannot name (empty, or holding the "." that joins paths)
// were refused in files only: from the environment or the defaults they
// made lookups, sources and the merged map disagree.
func TestEnvAndDefaultKeysAreChecked(t *testing.T) {
	for _, opts := range []config.Options{
		{Environ: []string{`SWITCHBOARD_CONFIG_DB={"dsn.host":"a"}`}},
		{Environ: []string{`SWITCHBOARD_CONFIG_DB={"dsn":{"":"b"}}`}},
		{Environ: []string{}, Defaults: map[string]any{"db.dsn": "x"}},
	} {
		opts.Service = "identity"
		_, err := config.Load(context.Background(), opts)
		if err == nil || !strings.Contains(err.Error(), `: must be non-empty and hold no ".", which joins key paths`) {
			t.Errorf("Load(%v, defaults %v) = %v; want the key refused", opts.Environ, opts.Defaults, err)
		}
	}
}

// A layer that deletes a key under an object no layer below has made that
// object, empty, credited to the layer: an app asking "is db configured"
// was told yes.
func TestDeletingWhatIsNotThereMakesNothing(t *testing.T) {
	dst := map[string]any{"x": 1, "cache": map[string]any{"ttl": 5}}
	src := map[string]string{"x": "global", "cache.ttl": "global"}
	config.MergeInto(dst, map[string]any{"db": map[string]any{"dsn": nil}, "cache": map[string]any{"ttl": nil}}, "service=api", src)
	want := map[string]any{"x": 1, "cache": map[string]any{}}
	if diff := cmp.Diff(want, dst); diff != "" {
		t.Fatalf("merged (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"x": "global", "cache": "service=api"}, src); diff != "" {
		t.Fatalf("sources (-want +got):\n%s", diff)
	}
}
