package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/cli"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

func startAtlas(t *testing.T) string { return atlastest.Start(t, true).URL }

// run runs the command line and returns stdout, stderr and the exit code.
func run(t *testing.T, url string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	full := args
	if url != "" { // commands that call no Atlas (atlas itself) pass ""
		full = append([]string{"--atlas", url}, args...)
	}
	err := cli.Run(context.Background(), full, &out, &errb)
	code := cli.ExitCode(err, &errb)
	return out.String(), errb.String(), code
}

func TestCommands(t *testing.T) {
	url := startAtlas(t)
	tests := []struct {
		args       []string
		code       int
		out, errIn string
	}{
		{[]string{"register", "--service", "identity", "--address", "127.0.0.1", "--port", "5000", "--id", "identity-h1-5000", "--tag", "v2", "--meta", "version=1.4.2"}, 0, "identity-h1-5000", ""},
		{[]string{"register", "--service", "identity", "--address", "127.0.0.1", "--port", "5001", "--id", "identity-h2-5001", "--status", "warning", "--realm", "production"}, 0, "warning", ""},
		// -o is the global output flag, not the check output.
		{[]string{"register", "--service", "identity", "--address", "127.0.0.1", "--port", "5002", "--id", "identity-h3-5002", "--check-output", "slow disk", "-o", "json", "--realm", "test"}, 0, `"output": "slow disk"`, ""},
		// A meta value may hold a comma.
		{[]string{"register", "--service", "notes", "--address", "127.0.0.1", "--port", "5003", "--id", "notes-h1-5003", "--meta", "owners=ana,bo", "-o", "json"}, 0, `"owners": "ana,bo"`, ""},
		{[]string{"deregister", "notes-h1-5003"}, 0, "deregistered notes-h1-5003", ""},
		{[]string{"services"}, 0, "identity  1          1", ""},
		{[]string{"services", "--realm", "production"}, 0, "identity  1          0        1", ""},
		{[]string{"instances", "identity"}, 0, "127.0.0.1:5000  passing  yes      v2", ""},
		{[]string{"disable", "identity-h1-5000", "--reason", "kernel upgrade"}, 0, "no (kernel upgrade)", ""},
		{[]string{"enable", "identity-h1-5000"}, 0, "yes", ""},
		{[]string{"config", "layers"}, 0, "LAYER", ""},
		{[]string{"deregister", "identity-h1-5000"}, 0, "deregistered identity-h1-5000", ""},
		{[]string{"token", "list"}, 0, "ID", ""},
		{[]string{"policy", "set", "identity", "--may-call", "billing"}, 0, "identity in dev may call: billing", ""},
		{[]string{"policy", "set", "billing"}, 0, "billing in dev may call no other service (its own only)", ""},
		{[]string{"policy", "list"}, 0, "identity  dev    billing", ""},
		// Usage errors: exit 2, one line naming the flag or argument.
		{[]string{"register", "--service", "Identity", "--address", "x", "--port", "1"}, 2, "", "--service: must match"},
		{[]string{"register", "--service", "a", "--address", "x", "--port", "70000"}, 2, "", "--port: must be 1-65535, got 70000"},
		{[]string{"register", "--service", "a", "--address", "x", "--port", "1", "--meta", "novalue"}, 2, "", "--meta: must be KEY=VALUE"},
		{[]string{"register", "--service", "a", "--address", "x", "--port", "1", "--meta", "v=1", "--meta", "v=2"}, 2, "", `--meta: key "v" given twice`},
		{[]string{"instances"}, 2, "", "accepts 1 arg(s)"},
		{[]string{"instances", "Bad"}, 2, "", "SERVICE: must match"},
		{[]string{"disable", "x"}, 2, "", "--reason: required"},
		{[]string{"services", "-o", "yaml"}, 2, "", "-o: must be table or json"},
		{[]string{"services", "--realm", "Prod"}, 2, "", "--realm: must match"},
		{[]string{"services", "--bogus"}, 2, "", "unknown flag: --bogus"},
		{[]string{"nonsense"}, 2, "", `unknown command "nonsense"`},
		{[]string{"config", "bogus"}, 2, "", `unknown command "bogus" for "switchboard config"`},
		{[]string{"register", "--service", "a", "--address", "x", "--port", "1", "--ttl", "0s"}, 2, "", "--ttl: must be between 1s and 24h, got 0s"},
		{[]string{"token", "bogus"}, 2, "", `unknown command "bogus" for "switchboard token"`},
		{[]string{"policy", "bogus"}, 2, "", `unknown command "bogus" for "switchboard policy"`},
		{[]string{"completion", "bogus"}, 2, "", `unknown command "bogus" for "switchboard completion"`},
		{[]string{"config"}, 0, "Available Commands", ""},
		{[]string{"config", "set", "service=identity", "realm=dev", "-"}, 2, "", `LAYER is one argument, its parts joined by a comma: service=identity,realm=dev`},
		{[]string{"policy", "set", "identity", "--may-call", "Billing"}, 2, "", `--may-call: must match`},
		{[]string{"policy", "set", "Identity"}, 2, "", `SERVICE: must match`},
		{[]string{"help", "bogus"}, 2, "", `unknown help topic "bogus" (see 'switchboard --help')`},
		{[]string{"help", "config", "bogus"}, 2, "", `unknown help topic "config bogus"`},
		{[]string{"help", "config", "get"}, 0, "merged config", ""},
		{[]string{"help"}, 0, "Available Commands", ""},
		{[]string{"config", "get", "realm=prod,colour=red"}, 2, "", "LAYER: must be global, realm=R"},
		{[]string{"token", "create", "--name", "x", "--role", "root"}, 2, "", "--role: must be admin, reader or service"},
		{[]string{"atlas", "--ports", "9-1"}, 2, "", "--ports: must be a range"},
		{[]string{"atlas", "--listen", "bogus", "--data", "TMP"}, 2, "", `--listen: must be HOST:PORT or :PORT, got "bogus"`},
		{[]string{"atlas", "--store", "redis://x:1", "--listen", "127.0.0.1:0", "--data", "TMP"}, 2, "", "--store: must be etcd://HOST:PORT"},
		{[]string{"atlas", "--store", "etcd://127.0.0.1:abc", "--listen", "127.0.0.1:0", "--data", "TMP"}, 2, "", `--store: "127.0.0.1:abc" is not HOST:PORT`},
		{[]string{"atlas", "--store", "etcd://127.0.0.1:99999", "--listen", "127.0.0.1:0", "--data", "TMP"}, 2, "", `--store: "127.0.0.1:99999" is not HOST:PORT`},
		{[]string{"atlas", "--store", "etcd://:2379", "--listen", "127.0.0.1:0", "--data", "TMP"}, 2, "", `--store: ":2379" is not HOST:PORT`},
		{[]string{"atlas", "--store", "etcd://10.0.0.2:2379/", "--listen", "127.0.0.1:0", "--data", "TMP"}, 2, "", `--store: "10.0.0.2:2379/" is not HOST:PORT`},
		{[]string{"atlas", "--store", "etcd://http://10.0.0.2:2379", "--listen", "127.0.0.1:0", "--data", "TMP"}, 2, "", `--store: "http://10.0.0.2:2379" is not HOST:PORT`},
		// Runtime errors: exit 1 with the API's code and message.
		{[]string{"deregister", "nope"}, 1, "", "not_found: instance nope: not registered"},
		{[]string{"config", "get", "service=nope"}, 1, "", "not_found: config layer service=nope: not set"},
	}
	for _, tt := range tests {
		for i, a := range tt.args {
			if a == "TMP" {
				tt.args[i] = t.TempDir()
			}
		}
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, errs, code := run(t, url, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.errIn) {
				t.Fatalf("switchboard %s = exit %d\nstdout: %s\nstderr: %s\nwant exit %d, stdout containing %q, stderr containing %q",
					strings.Join(tt.args, " "), code, out, errs, tt.code, tt.out, tt.errIn)
			}
			if code != 0 && strings.Count(strings.TrimSpace(errs), "\n") != 0 {
				t.Errorf("stderr is more than one line: %q", errs)
			}
		})
	}
}

func TestConfigSetAndGet(t *testing.T) {
	url := startAtlas(t)
	var out, errb bytes.Buffer
	set := func(layer, body string) {
		t.Helper()
		out.Reset()
		errb.Reset()
		cmd := []string{"--atlas", url, "config", "set", layer, filepath.Join(t.TempDir(), "x.json")}
		path := cmd[len(cmd)-1]
		if err := writeFile(path, body); err != nil {
			t.Fatal(err)
		}
		if err := cli.Run(context.Background(), cmd, &out, &errb); err != nil {
			t.Fatalf("config set %s: %v %s", layer, err, errb.String())
		}
	}
	set("global", `{"db":{"pool":5},"log":"info"}`)
	set("service=identity,realm=production", `{"db":{"dsn":"prod"}}`)
	stdout, stderr, code := run(t, url, "config", "get", "--service", "identity", "--realm", "production", "-o", "json")
	if code != 0 {
		t.Fatalf("config get: %d %s", code, stderr)
	}
	var m sb.MergedConfig
	if err := json.Unmarshal([]byte(stdout), &m); err != nil {
		t.Fatal(err)
	}
	if m.Sources["db.dsn"] != "service=identity,realm=production" || m.Sources["db.pool"] != "global" {
		t.Fatalf("sources = %v", m.Sources)
	}
	stdout, _, _ = run(t, url, "config", "get", "--service", "identity", "--realm", "production")
	if !strings.Contains(stdout, `db.dsn   "prod"  service=identity,realm=production`) {
		t.Fatalf("table:\n%s", stdout)
	}
	// An integer beyond float64's 2^53 is shown as it was set.
	set("realm=production", `{"tenant":9007199254740993}`)
	stdout, _, _ = run(t, url, "config", "get", "--service", "identity", "--realm", "production")
	if !strings.Contains(stdout, "9007199254740993") {
		t.Fatalf("table after setting tenant 9007199254740993:\n%s", stdout)
	}
	stdout, _, _ = run(t, url, "config", "get", "--service", "identity", "--realm", "production", "-o", "json")
	if !strings.Contains(stdout, `"tenant": 9007199254740993`) {
		t.Fatalf("-o json after setting tenant 9007199254740993:\n%s", stdout)
	}
	// Invalid JSON never leaves the machine.
	_, stderr, code = runWithFile(t, url, "config", "set", "global", `{"x":`)
	if code != 2 || !strings.Contains(stderr, "must hold one JSON object") {
		t.Fatalf("bad JSON: exit %d %s", code, stderr)
	}
}

func TestWatchPrintsEvents(t *testing.T) {
	url := startAtlas(t)
	run(t, url, "register", "--service", "a", "--address", "127.0.0.1", "--port", "1", "--id", "a-1")
	ctx, cancel := context.WithCancel(context.Background())
	var out syncbuf.Buffer
	done := make(chan error, 1)
	go func() { done <- cli.Run(ctx, []string{"--atlas", url, "watch", "a", "-o", "json"}, &out, &out) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), `"event":"snapshot"`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	run(t, url, "register", "--service", "a", "--address", "127.0.0.1", "--port", "2", "--id", "a-2")
	for !strings.Contains(out.String(), `"event":"update"`) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("watch ended with %v", err)
	}
	if !strings.Contains(out.String(), `"event":"update"`) || !strings.Contains(out.String(), `"id":"a-2"`) {
		t.Fatalf("watch printed:\n%s", out.String())
	}
}

func TestConfigEdit(t *testing.T) {
	url := startAtlas(t)
	run(t, url, "config", "get", "global")          // not set yet: edit starts from {}
	t.Setenv("VISUAL", " ")                         // blank: as if unset
	t.Setenv("EDITOR", `sed -i 's/{}/{"pool":1}/'`) // run by the shell, as git runs it
	out, errs, code := run(t, url, "config", "edit", "realm=dev")
	if code != 0 || !strings.Contains(out, "layer realm=dev set") {
		t.Fatalf("edit of a new layer: exit %d %s %s", code, out, errs)
	}
	t.Setenv("EDITOR", `sed -i s/1/2/`)
	if out, errs, code = run(t, url, "config", "edit", "realm=dev"); code != 0 {
		t.Fatalf("edit: exit %d %s %s", code, out, errs)
	}
	out, _, _ = run(t, url, "config", "get", "realm=dev")
	if !strings.Contains(out, `"pool": 2`) {
		t.Fatalf("after edit: %s", out)
	}
	// Someone else changes the layer while it is being edited: the edit is
	// refused, and their change stays.
	t.Setenv("SB_RACE_EDITOR", url)
	t.Setenv("EDITOR", os.Args[0])
	if out, errs, code = run(t, url, "config", "edit", "realm=dev"); code != 1 || !strings.Contains(errs, "someone else changed layer realm=dev") {
		t.Fatalf("racing edit: exit %d %s %s", code, out, errs)
	}
	if _, kept, ok := strings.Cut(strings.TrimSpace(errs), "your edit is kept in "); ok {
		os.RemoveAll(filepath.Dir(kept))
	}
	t.Setenv("SB_RACE_EDITOR", "")
	if out, _, _ = run(t, url, "config", "get", "realm=dev"); !strings.Contains(out, `"pool": 9`) {
		t.Fatalf("the other writer's change was lost: %s", out)
	}
	// An edit that breaks the JSON is refused and nothing is sent.
	t.Setenv("EDITOR", `sed -i s/}//`)
	if _, errs, code = run(t, url, "config", "edit", "realm=dev"); code != 1 || !strings.Contains(errs, "must hold one JSON object") {
		t.Fatalf("broken edit: exit %d %s", code, errs)
	}
	// ... and kept, where the message says.
	_, kept, ok := strings.Cut(strings.TrimSpace(errs), "your edit is kept in ")
	data, err := os.ReadFile(kept)
	if !ok || err != nil || !strings.Contains(string(data), `"pool": 9`) {
		t.Fatalf("the broken edit was not kept: %q (%v): %s", kept, err, data)
	}
	os.RemoveAll(filepath.Dir(kept))
	// An editor whose path holds a space, quoted as for the shell.
	dir := filepath.Join(t.TempDir(), "my editors")
	os.Mkdir(dir, 0o700)
	script := filepath.Join(dir, "ed it")
	os.WriteFile(script, []byte("#!/bin/sh\nsed -i 's/9/3/' \"$1\"\n"), 0o700)
	t.Setenv("EDITOR", "'"+script+"'")
	if out, errs, code = run(t, url, "config", "edit", "realm=dev"); code != 0 {
		t.Fatalf("edit with an editor at %q: exit %d %s %s", script, code, out, errs)
	}
	if out, _, _ = run(t, url, "config", "get", "realm=dev"); !strings.Contains(out, `"pool": 3`) {
		t.Fatalf("after the edit at a path with spaces: %s", out)
	}
	// A file that holds another JSON value than an object says which.
	arr := filepath.Join(t.TempDir(), "array.json")
	os.WriteFile(arr, []byte("[1]"), 0o600)
	if _, errs, code = run(t, url, "config", "set", "realm=dev", arr); code != 2 || !strings.Contains(errs, "array.json: must hold one JSON object, got a JSON array") {
		t.Fatalf("config set of an array: exit %d %s", code, errs)
	}
}

// TestConfigLayerFlagsAreChecked: a LAYER with an empty name (realm=$REALM
// with REALM unset) and a negative --cas are usage errors; neither may
// write or delete another layer than the one meant, unconditionally.
func TestConfigLayerFlagsAreChecked(t *testing.T) {
	url := startAtlas(t)
	if _, errs, code := runWithFile(t, url, "config", "set", "global", `{"x":1}`); code != 0 {
		t.Fatalf("config set global: exit %d %s", code, errs)
	}
	tests := []struct {
		args  []string
		errIn string
	}{
		{[]string{"config", "set", "realm=", `{"x":2}`}, "LAYER: realm: must not be empty"},
		{[]string{"config", "set", "service=,realm=dev", `{"x":2}`}, "LAYER: service: must not be empty"},
		{[]string{"config", "set", "global", "--cas", "-2", `{"x":2}`}, "--cas: must be an index (0 or more), got -2"},
	}
	for _, tt := range tests {
		_, errs, code := runWithFile(t, url, tt.args...)
		if code != 2 || !strings.Contains(errs, tt.errIn) {
			t.Errorf("switchboard %s = exit %d %q; want exit 2 with %q", strings.Join(tt.args, " "), code, errs, tt.errIn)
		}
	}
	if _, errs, code := run(t, url, "config", "delete", "realm="); code != 2 || !strings.Contains(errs, "LAYER: realm: must not be empty") {
		t.Errorf("config delete realm= = exit %d %q; want exit 2", code, errs)
	}
	if out, _, _ := run(t, url, "config", "get", "global"); !strings.Contains(out, `"x": 1`) {
		t.Fatalf("global layer changed: %s", out)
	}
}

// TestListJSONIsTheAPIs: -o json prints what the API answers, as it does
// for services and instances, so that scripts read one shape.
func TestListJSONIsTheAPIs(t *testing.T) {
	a := atlastest.Start(t, false)
	if _, errs, code := run(t, a.URL, "--token", a.AdminToken, "policy", "set", "identity", "--may-call", "billing"); code != 0 {
		t.Fatalf("policy set: exit %d %s", code, errs)
	}
	for _, tt := range []struct {
		args []string
		path string
	}{
		{[]string{"token", "list"}, "/v1/tokens"},
		{[]string{"policy", "list"}, "/v1/policies?realm=dev"},
		{[]string{"services"}, "/v1/services?realm=dev"},
	} {
		out, errs, code := run(t, a.URL, append([]string{"--token", a.AdminToken, "-o", "json"}, tt.args...)...)
		if code != 0 {
			t.Fatalf("%s: exit %d %s", tt.args, code, errs)
		}
		req, _ := http.NewRequest("GET", a.URL+tt.path, nil)
		req.Header.Set("Authorization", "Bearer "+a.AdminToken)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var got, want any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s -o json: %v\n%s", tt.args, err, out)
		}
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("switchboard %s -o json differs from GET %s (-api +cli):\n%s", strings.Join(tt.args, " "), tt.path, diff)
		}
	}
}

// TestConfigSetTooLargeFromStdin: a layer over the limit read from stdin
// is refused for its size, as from a file, not called malformed JSON.
func TestConfigSetTooLargeFromStdin(t *testing.T) {
	url := startAtlas(t)
	path := filepath.Join(t.TempDir(), "big.json")
	if err := writeFile(path, `{"x":"`+strings.Repeat("y", sb.MaxLayerBytes)+`"}`); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stdin := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = stdin }()
	_, errs, code := run(t, url, "config", "set", "global", "-")
	if code == 0 || strings.Contains(errs, "malformed") || !strings.Contains(errs, "524288 bytes") {
		t.Fatalf("config set of %d bytes from stdin = exit %d %q; want it refused naming the limit", sb.MaxLayerBytes+8, code, errs)
	}
}

// TestNewRefusesANameGoRefuses: "context" is a valid service name but not a
// module path the go command takes (the default module is the name): new
// must refuse it as a usage error and write nothing, rather than leave a
// service that go mod tidy fails on.
func TestNewRefusesANameGoRefuses(t *testing.T) {
	url := startAtlas(t)
	for _, name := range []string{"context", "main", "aux"} {
		dir := filepath.Join(t.TempDir(), name)
		_, errs, code := run(t, url, "new", name, "--dir", dir, "--port", "5100")
		if code != 2 || !strings.Contains(errs, "NAME: \""+name+"\" cannot be a Go module path") {
			t.Errorf("switchboard new %s = exit %d, stderr %q; want 2 and NAME: ... cannot be a Go module path", name, code, errs)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("switchboard new %s wrote %s", name, dir)
		}
	}
	if _, errs, code := run(t, url, "new", "ok", "--module", "example.com/ok@v1", "--dir", filepath.Join(t.TempDir(), "ok")); code != 2 || !strings.Contains(errs, "--module: must be a Go module path") {
		t.Errorf("switchboard new ok --module example.com/ok@v1 = exit %d, stderr %q", code, errs)
	}
}

// TestHelpDoesNotPrintTheToken: --help shows every flag's default; the
// token from SWITCHBOARD_TOKEN is a secret and must not be one of them,
// yet it must still be used.
func TestHelpDoesNotPrintTheToken(t *testing.T) {
	a := atlastest.Start(t, false)
	t.Setenv("SWITCHBOARD_TOKEN", a.AdminToken)
	for _, args := range [][]string{{"--help"}, {"services", "--help"}, {"config", "set", "--help"}} {
		out, errs, code := run(t, a.URL, args...)
		if code != 0 || strings.Contains(out+errs, a.AdminToken) {
			t.Errorf("switchboard %s = exit %d and prints the token:\n%s%s", strings.Join(args, " "), code, out, errs)
		}
	}
	if out, errs, code := run(t, a.URL, "services"); code != 0 {
		t.Fatalf("services with SWITCHBOARD_TOKEN = exit %d\n%s%s", code, out, errs)
	}
	if _, errs, code := run(t, a.URL, "services", "--token", "sb.x.y"); code != 1 || !strings.Contains(errs, "unauthenticated") {
		t.Fatalf("services --token sb.x.y = exit %d %q; want the flag over the environment", code, errs)
	}
	// Nor a password in SWITCHBOARD_ATLAS, which is used all the same.
	t.Setenv("SWITCHBOARD_ATLAS", strings.Replace(a.URL, "http://", "http://user:hunter2@", 1))
	var out, errb bytes.Buffer
	code := cli.ExitCode(cli.Run(context.Background(), []string{"--help"}, &out, &errb), &errb)
	if code != 0 || strings.Contains(out.String()+errb.String(), "hunter2") {
		t.Errorf("switchboard --help = exit %d and prints the password in SWITCHBOARD_ATLAS:\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := cli.ExitCode(cli.Run(context.Background(), []string{"services"}, &out, &errb), &errb); code != 0 {
		t.Fatalf("services with SWITCHBOARD_ATLAS = exit %d\n%s%s", code, out.String(), errb.String())
	}
}

// TestListenAddressesAreChecked: a port out of range is a usage error
// naming the flag, found before anything is started or written.
func TestListenAddressesAreChecked(t *testing.T) {
	tests := []struct {
		args []string
		flag string
	}{
		{[]string{"dev", "--listen", "127.0.0.1:99999", "--sidecar-listen", "127.0.0.1:0", "--sidecar-admin", "127.0.0.1:0"}, "--listen"},
		{[]string{"dev", "--listen", "127.0.0.1:0", "--sidecar-listen", "127.0.0.1:99999", "--sidecar-admin", "127.0.0.1:0"}, "--sidecar-listen"},
		{[]string{"dev", "--listen", "127.0.0.1:0", "--sidecar-listen", "127.0.0.1:0", "--sidecar-admin", "127.0.0.1:-1"}, "--sidecar-admin"},
		{[]string{"atlas", "--listen", "127.0.0.1:99999", "--insecure"}, "--listen"},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "data")
		args := append(tt.args, "--dir", dir)
		if tt.args[0] == "atlas" {
			args = append(tt.args, "--data", dir)
		}
		_, errs, code := run(t, "http://127.0.0.1:1", args...)
		if code != 2 || !strings.HasPrefix(errs, "switchboard: "+tt.flag+": ") {
			t.Errorf("switchboard %s = exit %d, stderr %q; want 2 naming %s", strings.Join(args, " "), code, errs, tt.flag)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("switchboard %s created %s", strings.Join(args, " "), dir)
		}
	}
}

// TestDevListensOnLoopbackOnly: dev runs without auth, so an upstream
// listener from a -c file must not open on every interface either.
func TestDevListensOnLoopbackOnly(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "sidecar.yaml")
	if err := writeFile(file, "upstreams:\n  - name: sessions-redis\n    listen: 0.0.0.0:0\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err := cli.Run(ctx, []string{"dev", "--dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0",
		"--sidecar-listen", "127.0.0.1:0", "--sidecar-admin", "127.0.0.1:0", "-c", file}, &out, &errb)
	code := cli.ExitCode(err, &errb)
	if code != 2 || !strings.Contains(errb.String(), "sessions-redis") || !strings.Contains(errb.String(), "loopback only") {
		t.Fatalf("dev with an upstream on 0.0.0.0 = exit %d\nstdout: %s\nstderr: %s\nwant exit 2 naming the upstream", code, out.String(), errb.String())
	}
}

// TestSidecarTokenFlagOverridesTheFile: --token overrides token_file, as
// every flag overrides its field; the file is then not read.
func TestSidecarTokenFlagOverridesTheFile(t *testing.T) {
	a := atlastest.Start(t, false)
	dir := t.TempDir()
	file := filepath.Join(dir, "sidecar.yaml")
	backend := httptest.NewServer(http.NotFoundHandler())
	defer backend.Close()
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())
	if err := writeFile(file, "token_file: "+filepath.Join(dir, "missing")+"\nhost: h1\nadvertise: 127.0.0.1\nservices:\n  - name: files\n    port: "+port+"\n    check: {none: true}\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb bytes.Buffer
	done := make(chan int)
	go func() {
		err := cli.Run(ctx, []string{"sidecar", "-c", file, "--atlas", a.URL, "--token", a.AdminToken,
			"--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, &out, &errb)
		done <- cli.ExitCode(err, &errb)
	}()
	for range 1000 { // 20 s
		if _, err := a.Client().Instance(context.Background(), "files-h1-"+port); err == nil {
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("sidecar exit %d: %s", code, errb.String())
			}
			return
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("sidecar with --token and a token_file that does not exist = exit %d\nstderr: %s", code, errb.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	<-done
	t.Fatalf("the sidecar never registered with --token\nstderr: %s", errb.String())
}

// TestSidecarFlagsAreNamed: a bad value given by a flag is a usage error
// naming the flag, not the key of sidecar.yaml it overrides.
func TestSidecarFlagsAreNamed(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"sidecar", "--drain-timeout", "20m"}, "switchboard: --drain-timeout: must be at most 10m (0 or none: 10s), got 20m0s"},
		{[]string{"sidecar", "--listen", "127.0.0.1:99999"}, "switchboard: --listen: "},
		{[]string{"sidecar", "--host", "no spaces"}, "switchboard: --host: must match"},
		{[]string{"sidecar", "--realm", "PROD"}, "switchboard: --realm: "},
	} {
		_, errs, code := run(t, "http://127.0.0.1:1", tt.args...)
		if code != 2 || !strings.HasPrefix(errs, tt.want) {
			t.Errorf("switchboard %s = exit %d, stderr %q; want 2 and %q", strings.Join(tt.args, " "), code, errs, tt.want)
		}
	}
}

// TestErrorsANewUserMeetsHint: no token, and no Atlas, say what to do.
func TestErrorsANewUserMeetsHint(t *testing.T) {
	a := atlastest.Start(t, false)
	t.Setenv("SWITCHBOARD_TOKEN", "")
	if _, errs, code := run(t, a.URL, "services"); code != 1 || !strings.Contains(errs, "switchboard: hint: give a token with --token or SWITCHBOARD_TOKEN") {
		t.Errorf("services without a token = exit %d, stderr %q; want a hint naming --token", code, errs)
	}
	if _, errs, code := run(t, "http://127.0.0.1:1", "services"); code != 1 || !strings.Contains(errs, "switchboard: hint: is Atlas running there?") {
		t.Errorf("services with no Atlas = exit %d, stderr %q; want a hint", code, errs)
	}
}

// TestNewFailingLeavesNothingBehind: when new fails after writing (here go
// is not on PATH, so go mod tidy cannot run), what it wrote is removed, so
// that running it again works; a directory that held files is never
// touched.
func TestNewFailingLeavesNothingBehind(t *testing.T) {
	url := startAtlas(t)
	t.Setenv("PATH", t.TempDir())
	dir := filepath.Join(t.TempDir(), "hello")
	_, errs, code := run(t, url, "new", "hello", "--dir", dir, "--port", "5100")
	if code != 1 || !strings.Contains(errs, dir+" removed: fix the cause and run switchboard new again") {
		t.Fatalf("switchboard new with no go on PATH = exit %d, stderr %q", code, errs)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Fatalf("%s is still there", dir)
	}
	empty := t.TempDir()
	if _, errs, code = run(t, url, "new", "hello", "--dir", empty, "--port", "5100"); code != 1 || !strings.Contains(errs, "removed") {
		t.Fatalf("switchboard new into an empty directory, failing = exit %d, stderr %q", code, errs)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Fatalf("the empty directory holds %d entries after a failed new", len(entries))
	}
	full := t.TempDir()
	writeFile(filepath.Join(full, "mine.txt"), "keep")
	if _, _, code = run(t, url, "new", "hello", "--dir", full, "--port", "5100"); code == 0 {
		t.Fatal("switchboard new into a directory with files succeeded")
	}
	if b, err := os.ReadFile(filepath.Join(full, "mine.txt")); err != nil || string(b) != "keep" {
		t.Fatalf("a failed new touched a file that was there: %q %v", b, err)
	}
	// A directory it could not make: it said it removed it.
	under := "/proc/switchboard-new-test" // procfs takes no new directory, even from root
	if _, errs, code = run(t, url, "new", "hello", "--dir", under, "--port", "5100"); code != 1 || strings.Contains(errs, "removed") {
		t.Fatalf("switchboard new into a directory it cannot make = exit %d, stderr %q; want 1, and nothing said removed", code, errs)
	}
}

// TestAtlasURLWithAPathIsRefused: --atlas http://h:4400/v1 would call
// /v1/v1/...: it is refused, naming the rule, without echoing a password.
func TestAtlasURLWithAPathIsRefused(t *testing.T) {
	_, errs, code := run(t, "http://ops:hunter2@127.0.0.1:4400/v1", "services")
	if code != 2 || !strings.Contains(errs, "--atlas: must be Atlas's base URL") || strings.Contains(errs, "hunter2") {
		t.Fatalf("services --atlas http://…/v1 = exit %d, stderr %q", code, errs)
	}
}

// A bad value from the environment is reported under the variable's name,
// not under the flag's, which the user never typed.
func TestBadEnvironmentIsNamed(t *testing.T) {
	for env, want := range map[string]string{
		"SWITCHBOARD_ATLAS": "SWITCHBOARD_ATLAS: must be",
		"SWITCHBOARD_REALM": "SWITCHBOARD_REALM: must match",
	} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, "Bogus/x")
			var out, errb bytes.Buffer
			code := cli.ExitCode(cli.Run(context.Background(), []string{"services"}, &out, &errb), &errb)
			if code != 2 || !strings.Contains(errb.String(), want) {
				t.Fatalf("services with %s=Bogus/x = exit %d, stderr %q; want 2 and %q", env, code, errb.String(), want)
			}
		})
	}
}

// TestDevSaysWhichFileFieldsItIgnores: dev sets realm, listen and the
// rest itself; a -c file that sets them is told so, not silently ignored.
func TestDevSaysWhichFileFieldsItIgnores(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "sidecar.yaml")
	if err := writeFile(file, "realm: production\nlisten: 127.0.0.1:4100\nservices:\n  - {name: hello, port: 5999, check: {http: /status}}\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncbuf.Buffer
	done := make(chan error, 1)
	go func() {
		done <- cli.Run(ctx, []string{"dev", "--dir", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0",
			"--sidecar-listen", "127.0.0.1:0", "--sidecar-admin", "127.0.0.1:0", "-c", file}, &out, &errb)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "Try: ") {
		if time.Now().After(deadline) {
			t.Fatalf("dev did not start\nstdout: %s\nstderr: %s", out.String(), errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	// The hint calls the path the service's check asks, which it serves
	// when it passes; its "/" may be a 404.
	if !regexp.MustCompile(`Try: curl http://hello\.localhost:\d+/status `).MatchString(out.String()) {
		t.Errorf("dev's hint does not call the service's checked path:\n%s", out.String())
	}
	if want := file + ": dev sets realm, listen itself; the file's are ignored"; !strings.Contains(errb.String(), want) {
		t.Errorf("stderr %q; want %q", errb.String(), want)
	}
	if !strings.Contains(out.String(), "export SWITCHBOARD_ATLAS=http://127.0.0.1:") {
		t.Errorf("dev on other ports does not say how services find them:\n%s", out.String())
	}
}

// TestTokenDeleteByName: token delete takes a token's name when one token
// has it, as people remember names; two of a name need the id.
func TestTokenDeleteByName(t *testing.T) {
	a := atlastest.Start(t, false)
	as := func(args ...string) (string, string, int) {
		return run(t, a.URL, append([]string{"--token", a.AdminToken}, args...)...)
	}
	for _, name := range []string{"oncall", "twin", "twin"} {
		if _, errs, code := as("token", "create", "--name", name, "--role", "reader"); code != 0 {
			t.Fatalf("token create %s: exit %d %s", name, code, errs)
		}
	}
	if out, errs, code := as("token", "delete", "oncall"); code != 0 || !strings.HasPrefix(out, "deleted token ") {
		t.Fatalf("token delete oncall = exit %d %q %q", code, out, errs)
	}
	if _, errs, code := as("token", "delete", "oncall"); code != 1 || !strings.Contains(errs, "no token has this id or name") {
		t.Fatalf("token delete of a name gone = exit %d %q", code, errs)
	}
	if _, errs, code := as("token", "delete", "twin"); code != 2 || !strings.Contains(errs, `2 tokens are named "twin"`) {
		t.Fatalf("token delete of a name two tokens have = exit %d %q", code, errs)
	}
	if _, errs, code := as("token", "create", "--role", "reader"); code != 2 || !strings.Contains(errs, "--name: required") {
		t.Fatalf("token create without --name = exit %d %q", code, errs)
	}
	if _, errs, _ := as("token", "create", "--name", "quiet", "--role", "reader"); strings.Contains(errs, "warning") {
		t.Fatalf("token create with auth on warned: %q", errs)
	}
}

// A token created on an Atlas without auth (switchboard dev) looked like
// it guarded something. The answer and the CLI say that it does not.
func TestTokenCreateWithoutAuthSaysSo(t *testing.T) {
	out, errs, code := run(t, startAtlas(t), "token", "create", "--name", "oncall", "--role", "reader", "-o", "json")
	if code != 0 || !strings.Contains(errs, "switchboard: warning: Atlas runs without authentication (--insecure") || !strings.Contains(out, `"warning": "Atlas runs without authentication`) {
		t.Fatalf("token create on an insecure Atlas = exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// A check output (or tag, meta, disable reason) is what a service sent:
// written raw into a table, an escape sequence in it rewrote the screen or
// the window title of the operator reading it. Tables show control
// characters as \xNN.
func TestTablesShowControlCharacters(t *testing.T) {
	url := startAtlas(t)
	if _, errs, code := run(t, url, "register", "--service", "web", "--id", "web-1", "--address", "127.0.0.1", "--port", "5000", "--check-output", "\x1b]0;pwned\x07ok \u009b31m"); code != 0 {
		t.Fatalf("register: exit %d %s", code, errs)
	}
	out, errs, code := run(t, url, "instances", "web")
	if code != 0 {
		t.Fatalf("instances: exit %d %s", code, errs)
	}
	if strings.ContainsAny(out, "\x1b\x07\u009b") || !strings.Contains(out, `\x1b]0;pwned\x07ok \x9b31m`) {
		t.Fatalf("instances printed %q; want the control characters as \\xNN", out)
	}
}

// TestInstancesOfAnUnknownServiceSaySo: a typo in the name lists nothing,
// and says so, with the closest name or where the names are. A service
// token, which may not list the services, is not sent to the list.
func TestInstancesOfAnUnknownServiceSaySo(t *testing.T) {
	a := atlastest.Start(t, false)
	if _, errs, code := run(t, a.URL, "--token", a.AdminToken, "register", "--service", "identity", "--address", "127.0.0.1", "--port", "5000"); code != 0 {
		t.Fatalf("register: %s", errs)
	}
	svc, errs, code := run(t, a.URL, "--token", a.AdminToken, "-o", "json", "token", "create", "--name", "billing", "--role", "service", "--services", "billing", "--realms", "dev")
	if code != 0 {
		t.Fatalf("token create: %s", errs)
	}
	var tok struct{ Secret string }
	if err := json.Unmarshal([]byte(svc), &tok); err != nil || tok.Secret == "" {
		t.Fatalf("token create -o json printed %q: %v", svc, err)
	}
	for _, tt := range []struct{ token, service, want string }{
		{a.AdminToken, "idnetity", "switchboard: no instance of idnetity in realm dev: no service of that name there; did you mean identity?\n"},
		{a.AdminToken, "ledger", "switchboard: no instance of ledger in realm dev: no service of that name there (switchboard services lists them)\n"},
		{tok.Secret, "billing", "switchboard: no instance of billing in realm dev\n"},
	} {
		out, errs, code := run(t, a.URL, "--token", tt.token, "instances", tt.service)
		if code != 0 || !strings.HasPrefix(out, "ID") || errs != tt.want {
			t.Errorf("instances %s = exit %d, stdout %q, stderr %q; want stderr %q", tt.service, code, out, errs, tt.want)
		}
	}
}

// TestMisspeltCommandSaysWhichOneOnOneLine: cobra's suggestion comes on
// lines of their own ("\n\nDid you mean this?\n\tservices\n"); joined as
// they were, the one line read "...; ; Did you mean this?; \tservices;  (see ...)".
func TestMisspeltCommandSaysWhichOneOnOneLine(t *testing.T) {
	_, errs, code := run(t, "http://127.0.0.1:1", "servces")
	want := `switchboard: unknown command "servces" for "switchboard"; did you mean: services (see 'switchboard --help')` + "\n"
	if code != 2 || errs != want {
		t.Fatalf("switchboard servces = exit %d, stderr %q; want 2 and %q", code, errs, want)
	}
}

// TestTablesWithControlCharactersKeepTheirColumns: the \xNN form is wider
// than the bytes it stands for; measured before escaping, a row with a
// control character in its tags pushed its later cells out of their column.
func TestTablesWithControlCharactersKeepTheirColumns(t *testing.T) {
	url := startAtlas(t)
	for _, r := range []struct{ id, tag string }{{"web-1", "plain"}, {"web-2", "t\x1b]0;x"}} {
		if _, errs, code := run(t, url, "register", "--service", "web", "--id", r.id, "--address", "127.0.0.1", "--port", "5000", "--tag", r.tag); code != 0 {
			t.Fatalf("register %s: exit %d %s", r.id, code, errs)
		}
	}
	out, errs, code := run(t, url, "instances", "web")
	if code != 0 {
		t.Fatalf("instances: exit %d %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("instances printed %q; want a header and two rows", out)
	}
	col := strings.Index(lines[0], "EXPIRES")
	for _, l := range lines[1:] {
		if len(l) <= col || l[col-2:col] != "  " || l[col] == ' ' {
			t.Errorf("row %q does not start its EXPIRES cell at column %d, under the header:\n%s", l, col, out)
		}
	}
}

// runOnATakenAddress runs the command args gives for an address another
// listener holds, and returns its exit code, its stderr and that address.
// The command must fail at once; the context is only a guard against one
// that starts after all.
func runOnATakenAddress(t *testing.T, args func(taken string) []string) (int, string, string) {
	t.Helper()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	err = cli.Run(ctx, args(taken.Addr().String()), &out, &errb)
	return cli.ExitCode(err, &errb), errb.String(), taken.Addr().String()
}

// TestDevOnAtlasPortInUseSaysWhatToDo: a second switchboard dev meets
// Atlas's port first; the sidecar's ports said what to do, Atlas's did not.
func TestDevOnAtlasPortInUseSaysWhatToDo(t *testing.T) {
	code, errs, _ := runOnATakenAddress(t, func(taken string) []string {
		return []string{"dev", "--dir", t.TempDir(), "--listen", taken, "--sidecar-listen", "127.0.0.1:0", "--sidecar-admin", "127.0.0.1:0"}
	})
	want := "(another switchboard dev running? stop it first, or pick a free port with --listen)"
	if code != 1 || !strings.Contains(errs, "address already in use") || !strings.Contains(errs, want) {
		t.Fatalf("dev on a port in use = exit %d, stderr %q; want exit 1 and %q", code, errs, want)
	}
}

// The sidecar named a busy address by its file key ("listen: ..."), also
// when --listen gave it, and said nothing of what to do.
func TestSidecarOnAnAddressInUseSaysWhatToDo(t *testing.T) {
	code, errs, taken := runOnATakenAddress(t, func(taken string) []string {
		return []string{"sidecar", "--atlas", "http://127.0.0.1:1", "--listen", "127.0.0.1:0", "--admin", taken}
	})
	want := "--admin: listen tcp " + taken
	if code != 1 || !strings.Contains(errs, want) || !strings.Contains(errs, "pick a free address with --admin)") {
		t.Fatalf("sidecar on an address in use = exit %d, stderr %q; want exit 1, %q and what to do", code, errs, want)
	}
}

// TestServiceTokenInAnotherRealmSaysWhereItActs: a service token used in a
// realm it is not bound to (a forgotten --realm) was refused as if a policy
// were missing, or without saying what the token is for.
func TestServiceTokenInAnotherRealmSaysWhereItActs(t *testing.T) {
	a := atlastest.Start(t, false)
	t.Setenv("SWITCHBOARD_TOKEN", "")
	out, errs, code := run(t, a.URL, "--token", a.AdminToken, "-o", "json", "token", "create", "--name", "dash", "--role", "service", "--services", "dashboard", "--realms", "production")
	if code != 0 {
		t.Fatalf("token create: exit %d %s", code, errs)
	}
	var tok sb.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Secret == "" {
		t.Fatalf("token create printed %q: %v", out, err)
	}
	const want = "it acts for dashboard in production only"
	for _, args := range [][]string{
		{"instances", "dashboard"},
		{"register", "--service", "dashboard", "--address", "127.0.0.1", "--port", "5000"},
	} {
		_, errs, code := run(t, a.URL, append([]string{"--token", tok.Secret}, args...)...)
		if code != 1 || !strings.Contains(errs, "realm dev") || !strings.Contains(errs, want) || strings.Contains(errs, "policy") {
			t.Errorf("switchboard %s with a production token = exit %d, stderr %q; want exit 1 and %q", strings.Join(args, " "), code, errs, want)
		}
	}
}

// TestSidecarIgnoresTheShellsToken: SWITCHBOARD_TOKEN, often an operator's
// admin token, does not become the sidecar's: it would lift least
// authority unseen. The sidecar says so, and why its registration fails.
func TestSidecarIgnoresTheShellsToken(t *testing.T) {
	a := atlastest.Start(t, false)
	t.Setenv("SWITCHBOARD_TOKEN", a.AdminToken)
	file := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := writeFile(file, "host: h1\nadvertise: 127.0.0.1\nservices:\n  - name: files\n    port: 5000\n    check: {none: true}\n"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	errb := &syncbuf.Buffer{}
	done := make(chan int)
	go func() {
		err := cli.Run(ctx, []string{"sidecar", "-c", file, "--atlas", a.URL, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, &out, errb)
		done <- cli.ExitCode(err, errb)
	}()
	defer func() {
		cancel()
		<-done
	}()
	for range 1000 { // 20 s
		if strings.Contains(errb.String(), "register failed: Atlas takes no call without a valid token") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(errb.String(), "SWITCHBOARD_TOKEN is set but not used") || !strings.Contains(errb.String(), "token_file (or --token) must hold a service token") {
		t.Fatalf("stderr: %s\nwant it to say SWITCHBOARD_TOKEN is not used, and what the failed registration needs", errb.String())
	}
	if _, err := a.Client().Instance(context.Background(), "files-h1-5000"); err == nil {
		t.Fatal("the sidecar registered with the shell's admin token")
	}
	// With a token_file too, as the README says: it said nothing then.
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("sbt_notavalidtoken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withFile := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := writeFile(withFile, "token_file: "+tokenFile+"\nhost: h1\nadvertise: 127.0.0.1\n"); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	errb2, out2 := &syncbuf.Buffer{}, &syncbuf.Buffer{}
	done2 := make(chan int)
	go func() {
		err := cli.Run(ctx2, []string{"sidecar", "-c", withFile, "--atlas", a.URL, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}, out2, errb2)
		done2 <- cli.ExitCode(err, errb2)
	}()
	defer func() {
		cancel2()
		<-done2
	}()
	for i := 0; !strings.Contains(errb2.String(), "SWITCHBOARD_TOKEN is set but not used"); i++ {
		if i == 1000 { // 20 s
			t.Fatalf("stderr: %s\nwant it to say SWITCHBOARD_TOKEN is not used, with a token_file too", errb2.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A tab or a line break in what a service sent (a tag, a check output, a
// disable reason) moved the cells after it or started a forged row: they
// show as \xNN, as the other control characters do. An output is cut for
// the table on a rune's start, not inside one.
func TestTableCellsKeepTheirRow(t *testing.T) {
	url := startAtlas(t)
	if _, errs, code := run(t, url, "register", "--service", "web", "--id", "web-1", "--address", "127.0.0.1", "--port", "5000",
		"--tag", "a\tb", "--check-output", strings.Repeat("é", 40)); code != 0 {
		t.Fatalf("register: exit %d %s", code, errs)
	}
	if _, errs, code := run(t, url, "disable", "web-1", "--reason", "line1\nweb-2  10.0.0.9:80  passing  yes"); code != 0 {
		t.Fatalf("disable: exit %d %s", code, errs)
	}
	out, errs, code := run(t, url, "instances", "web")
	if code != 0 {
		t.Fatalf("instances: exit %d %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(out, `a\x09b`) || !strings.Contains(out, `line1\x0aweb-2`) {
		t.Fatalf("instances printed %q; want a header and one row, the tab and line break as \\xNN", out)
	}
	if !utf8.ValidString(out) || !strings.Contains(out, strings.Repeat("é", 28)+"...") {
		t.Fatalf("instances printed %q; want the output cut between two runes", out)
	}
}

// The global --realm chooses no layer (LAYER names its realm): given with
// config set, it was ignored and the layer of every realm written. It is
// refused; SWITCHBOARD_REALM, which may be exported for every command,
// gets a note.
func TestRealmWithALayerIsNotIgnored(t *testing.T) {
	url := startAtlas(t)
	obj := filepath.Join(t.TempDir(), "layer.json")
	os.WriteFile(obj, []byte(`{"x":1}`), 0o600)
	t.Setenv("VISUAL", "")
	t.Setenv("EDITOR", "true") // were the edit not refused, it would change nothing
	for _, args := range [][]string{
		{"config", "set", "service=files", obj, "--realm", "production"},
		{"config", "delete", "service=files", "--realm", "production"},
		{"config", "get", "global", "--realm", "production"},
		{"config", "edit", "service=files", "--realm", "production"},
		{"config", "layers", "--realm", "production"},
	} {
		if _, errs, code := run(t, url, args...); code != 2 || !strings.HasPrefix(errs, "switchboard: --realm: ") {
			t.Errorf("%s: exit %d %q; want a usage error naming --realm", strings.Join(args, " "), code, errs)
		}
	}
	if out, errs, code := run(t, url, "config", "set", "realm=production,service=files", obj, "--realm", "production"); code != 0 || errs != "" {
		t.Fatalf("--realm with a LAYER of that realm: exit %d %s %s", code, out, errs)
	}
	t.Setenv("SWITCHBOARD_REALM", "production")
	out, errs, code := run(t, url, "config", "set", "service=files", obj)
	if code != 0 || !strings.Contains(out, "layer service=files set") || !strings.Contains(errs, "note: layer service=files is not of realm production (SWITCHBOARD_REALM)") {
		t.Fatalf("SWITCHBOARD_REALM with a LAYER of every realm: exit %d %q %q; want it set, with a note", code, out, errs)
	}
}

// Values with &, < or > (a DSN's query, most often) showed as \u0026 and
// friends, Go's JSON escapes, in config get and in config edit's buffer.
func TestConfigShowsAmpersandsAsWritten(t *testing.T) {
	url := startAtlas(t)
	layer := filepath.Join(t.TempDir(), "layer.json")
	os.WriteFile(layer, []byte(`{"dsn":"postgres://db/x?sslmode=disable&connect_timeout=5","html":"<b>","escaped":"\\u0026"}`), 0o600)
	if _, errs, code := run(t, url, "config", "set", "service=files", layer); code != 0 {
		t.Fatalf("config set: exit %d %s", code, errs)
	}
	one, _, _ := run(t, url, "config", "get", "service=files")
	merged, _, _ := run(t, url, "config", "get", "--service", "files")
	for _, out := range []string{one, merged} {
		if !strings.Contains(out, "sslmode=disable&connect_timeout=5") || !strings.Contains(out, `"<b>"`) || !strings.Contains(out, `"\\u0026"`) {
			t.Errorf("config get printed:\n%s\nwant &, < and > as written, and the escaped backslash kept", out)
		}
	}
	t.Setenv("VISUAL", "")
	t.Setenv("EDITOR", `grep -q 'disable&connect'`) // fails unless the buffer shows the & as written
	if out, errs, code := run(t, url, "config", "edit", "service=files"); code != 0 || !strings.Contains(out, "layer service=files unchanged") {
		t.Fatalf("config edit: exit %d %s %s", code, out, errs)
	}
}

// Messages name the flags as they are: the API's field names said
// --tags[0] for --tag, and "--services, realms" lost a --; a value that is
// not UTF-8 was told it was too long.
func TestFlagMessagesNameTheFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"register", "--service", "web", "--address", "127.0.0.1", "--port", "1", "--tag", strings.Repeat("a", 200)}, "switchboard: --tag[0]: must be 1-128 bytes, got 200"},
		{[]string{"register", "--service", "web", "--address", "127.0.0.1", "--port", "1", "--meta", "k=\xff"}, `switchboard: --meta["k"]: value must be UTF-8, got "\xff"`},
		{[]string{"token", "create", "--name", "x", "--role", "reader", "--services", "a"}, "switchboard: --services, --realms: only a service token"},
	} {
		_, errs, code := run(t, "http://127.0.0.1:1", tt.args...)
		if code != 2 || !strings.HasPrefix(errs, tt.want) {
			t.Errorf("%s: exit %d %q; want 2 and %q", strings.Join(tt.args, " "), code, errs, tt.want)
		}
	}
}

// A refused --store or --etcd-* flag left the data directory behind: every
// flag is checked before anything is made.
func TestAtlasRefusedFlagsMakeNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	for _, args := range [][]string{
		{"atlas", "--data", dir, "--listen", "127.0.0.1:0", "--store", "foo"},
		{"atlas", "--data", dir, "--listen", "127.0.0.1:0", "--etcd-ca", "/nonexistent/ca.pem"},
	} {
		if _, errs, code := run(t, "http://127.0.0.1:1", args...); code == 0 {
			t.Fatalf("%s: exit 0 %s; want it refused", strings.Join(args, " "), errs)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Fatalf("%s: refused, yet it made %s", strings.Join(args, " "), dir)
		}
	}
}

// --atlas is read as SWITCHBOARD_ATLAS is: "a, b" is two URLs (the flag
// refused it, the variable took it), none is refused (it went to the
// default address), and a port out of range is a usage error (it failed
// at the call, exit 1). A token with a line break after it (read from a
// file) works, where it failed as a header no request may hold.
func TestAtlasFlagAndTokenAreReadAsTheEnvironmentIs(t *testing.T) {
	a := atlastest.Start(t, false)
	for _, tt := range []struct{ atlas, want string }{
		{"", "switchboard: --atlas: must be an Atlas URL such as http://127.0.0.1:4400 (or several, comma-separated), got none"},
		{"http://127.0.0.1:99999", `switchboard: --atlas: must have a port of 1-65535, got "http://127.0.0.1:99999"`},
	} {
		var errb bytes.Buffer
		err := cli.Run(context.Background(), []string{"--atlas", tt.atlas, "services"}, io.Discard, &errb)
		if code := cli.ExitCode(err, &errb); code != 2 || !strings.HasPrefix(errb.String(), tt.want) {
			t.Errorf("--atlas %q: exit %d %q; want 2 and %q", tt.atlas, code, errb.String(), tt.want)
		}
	}
	t.Setenv("SWITCHBOARD_TOKEN", a.AdminToken+"\n")
	if out, errs, code := run(t, "http://127.0.0.1:1, "+a.URL, "services"); code != 0 || !strings.HasPrefix(out, "SERVICE") {
		t.Fatalf("--atlas 'dead, live' with a token ending in a line break: exit %d %q %q", code, out, errs)
	}
}
