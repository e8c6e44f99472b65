package sidecar

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const specExample = `atlas: [http://10.0.0.2:4400, http://10.0.0.3:4400]   # tried in turn
token_file: /etc/switchboard/token
realm: production
host: host001                 # default: os.Hostname()
advertise: 10.0.0.5           # default: the first non-loopback address
listen: 127.0.0.1:4000        # HTTP frontend
admin: 127.0.0.1:4001
state_dir: /var/lib/switchboard   # last known routes, for starting while Atlas is down
drain_timeout: 10s            # SIGTERM: how long to wait for watchers to drop this host
proxy: builtin                # or haproxy
haproxy: {binary: haproxy, dir: /var/lib/switchboard/haproxy}
services:                     # what this host provides: registered, checked, heartbeated
  - name: identity
    port: 5000
    tags: [v2]
    meta: {version: 1.4.2}
    check: {http: /healthcheck, interval: 2s, timeout: 1s, rise: 2, fall: 2}
    # or check: {tcp: true} | {grpc: ""} | {none: true}
upstreams:                    # services to watch from the start; TCP ones get a port
  - name: billing
  - name: sessions-redis
    listen: 127.0.0.1:6380
`

func TestParseSpecExample(t *testing.T) {
	cfg, err := ParseConfig("sidecar.yaml", []byte(specExample))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Atlas) != 2 || cfg.Realm != "production" || cfg.Services[0].Meta["version"] != "1.4.2" ||
		*cfg.Services[0].Check.HTTP != "/healthcheck" || time.Duration(cfg.Services[0].Check.Interval) != 2*time.Second ||
		cfg.Upstreams[1].Listen != "127.0.0.1:6380" || cfg.HAProxy.Dir != "/var/lib/switchboard/haproxy" {
		t.Fatalf("parsed = %+v", cfg)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"realm: production\ncolour: red\n", "sidecar.yaml:2: colour: unknown key; the file takes atlas, token_file, realm,"},
		{"services:\n  - name: a\n    port: 0\n", "sidecar.yaml:3: services[0].port: must be 1-65535, got 0"},
		{"services:\n  - name: a\n    port: x\n", `sidecar.yaml:3: services[0].port: must be a whole number, got "x"`},
		{"services:\n  - name: A\n    port: 1\n", "sidecar.yaml:2: services[0].name: must match"},
		{"services:\n  - name: a\n    port: 1\n    check: {http: /h, interval: fast}\n", `sidecar.yaml:4: services[0].check.interval: must be a duration such as 2s, got "fast"`},
		{"services:\n  - name: a\n    port: 1\n    check: {http: h}\n", `sidecar.yaml:4: services[0].check.http: must be a path starting with /`},
		{"services:\n  - name: a\n    port: 1\n    check: {tcp: true, none: true}\n", "sidecar.yaml:4: services[0].check: give one of http, tcp, grpc or none"},
		{"services:\n  - name: a\n    port: 1\n    check:\n      rise: -1\n", "sidecar.yaml:5: services[0].check.rise: must be 1-100, got -1"},
		{"services:\n  - name: a\n    port: 1\n    chek: {}\n", "sidecar.yaml:4: services[0].chek: unknown key; services[0] takes name, port, tags, meta, address, check"},
		{"atlas: ftp://x\n", `sidecar.yaml:1: atlas[0]: must be an http:// or https:// URL such as http://127.0.0.1:4400, got "ftp://x"`},
		{"atlas: http://10.0.0.2:4400/v1\n", `sidecar.yaml:1: atlas[0]: must be Atlas's base URL, such as http://127.0.0.1:4400, without a path (the client adds /v1/...), got "http://10.0.0.2:4400/v1"`},
		{"atlas: http://ops:hunter2@10.0.0.2:4400/v1\n", `got "http://ops:xxxxx@10.0.0.2:4400/v1"`},
		{"listen: 4000\n", `sidecar.yaml:1: listen: must be host:port, got "4000"`},
		{"proxy: nginx\n", `sidecar.yaml:1: proxy: must be builtin or haproxy, got "nginx"`},
		{"realm: Prod\n", `sidecar.yaml:1: realm: must match`},
		{"drain_timeout: 1h\n", `sidecar.yaml:1: drain_timeout: must be at most 10m (0 or none: 10s), got 1h0m0s`},
		{"services:\n  - name: a\n    port: 1\n    check: {http: \"/h%zz\"}\n", `sidecar.yaml:4: services[0].check.http: must be a path (and query) that makes a URL, got "/h%zz": invalid URL escape "%zz"`},
		{"realm: dev\n---\nrealm: production\n", "sidecar.yaml:3: the file must hold one YAML document; this is a second"},
		{"realm: dev\ndrain_timeout: soon\n", `sidecar.yaml:2: drain_timeout: must be a duration such as 2s, got "soon"`},
		{"services:\n  - name: a\n    port: 1\n    meta: {v: [1]}\n", `sidecar.yaml:4: services[0].meta.v: must be a string`},
		{"services:\n  - name: a\n    port: 1\n    check: {tcp: maybe}\n", `sidecar.yaml:4: services[0].check.tcp: must be true or false, got "maybe"`},
		{"upstreams: b\n", `sidecar.yaml:1: upstreams: must be a list`},
		{"services:\n  - name: a\n    port: 1\n    check: {<<: {intervl: 2s}}\n", `sidecar.yaml:4: services[0].check.intervl: unknown key`},
		{"atlas: [http://a:1, {x: 1}]\n", `sidecar.yaml:1: atlas[1]: must be a string`},
		{"upstreams:\n  - name: b\n  - name: b\n", "sidecar.yaml:3: upstreams[1].name: b is listed twice"},
		{"upstreams:\n  - name: b\n    listen: nope\n", `sidecar.yaml:3: upstreams[0].listen: must be host:port, got "nope"`},
		{"services: [\n", "sidecar.yaml:"},
		{"- a\n- b\n", "sidecar.yaml:1: the file: must be a mapping of atlas, token_file,"},
	}
	for _, tt := range tests {
		_, err := ParseConfig("sidecar.yaml", []byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseConfig(%q) = %v; want an error containing %q", tt.yaml, err, tt.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(specExample))
	f.Add([]byte("services:\n  - name: a\n    port: 1\n    check: {grpc: \"\"}\n"))
	f.Add([]byte("atlas: http://127.0.0.1:4400\nupstreams: [{name: x, listen: ':0'}]\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("f.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if err := cfg.validate(); err != nil {
			t.Fatalf("accepted config fails validation: %v", err)
		}
	})
}

// "grpc:" with no value, the natural YAML for a check of the whole server,
// read as no gRPC check and so an HTTP check of /healthcheck, which a gRPC
// server always fails.
func TestGRPCCheckWithNoValue(t *testing.T) {
	for _, check := range []string{"{grpc: }", "{grpc: ~}", `{grpc: ""}`, "\n      grpc:\n      interval: 5s"} {
		cfg, err := ParseConfig("sidecar.yaml", []byte("services:\n  - name: a\n    port: 1\n    check: "+check+"\n"))
		if err != nil {
			t.Fatalf("check %s: %v", check, err)
		}
		if c := cfg.Services[0].Check; c.GRPC == nil || *c.GRPC != "" || c.HTTP != nil {
			t.Errorf("check %s: read as %+v; want a gRPC check of the whole server", check, c)
		}
	}
	// Through a merge key too.
	cfg, err := ParseConfig("sidecar.yaml", []byte("services:\n  - name: a\n    port: 1\n    check: &c {grpc: , interval: 5s}\n  - name: b\n    port: 2\n    check: {<<: [{timeout: 2s}, *c]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c := cfg.Services[1].Check; c.GRPC == nil || *c.GRPC != "" || time.Duration(c.Interval) != 5*time.Second {
		t.Errorf("a merged grpc with no value: read as %+v; want a gRPC check of the whole server", c)
	}
	// A trailing "---" starts no document.
	if _, err := ParseConfig("sidecar.yaml", []byte("realm: dev\n---\n")); err != nil {
		t.Errorf("a trailing ---: %v", err)
	}
}

// What YAML itself allows passes the shape check: merge keys and the
// other ways to write an integer.
func TestConfigYAMLForms(t *testing.T) {
	cfg, err := ParseConfig("sidecar.yaml", []byte(`
defaults: &check
  interval: 5s
  fall: 0x3
services:
  - name: a
    port: 1_000
    check:
      <<: *check
      http: /healthcheck
`[1:]))
	if err == nil {
		t.Fatalf("an unknown top-level key (defaults) was accepted: %+v", cfg)
	}
	cfg, err = ParseConfig("sidecar.yaml", []byte("services:\n  - name: a\n    port: 1_000\n    check:\n      <<: [{interval: 5s}, {fall: 0x3}]\n      http: /healthcheck\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Services[0]
	if c.Port != 1000 || time.Duration(c.Check.Interval) != 5*time.Second || c.Check.Fall != 3 {
		t.Fatalf("parsed %+v", c)
	}
}

// The default advertise address: a global IPv4 address first, then a
// global IPv6 one (an IPv6-only host), never a link-local one, and
// loopback only when there is nothing else.
func TestDefaultAdvertiseAddress(t *testing.T) {
	nets := func(cidrs ...string) []net.Addr {
		var out []net.Addr
		for _, c := range cidrs {
			ip, n, err := net.ParseCIDR(c)
			if err != nil {
				t.Fatal(err)
			}
			n.IP = ip
			out = append(out, n)
		}
		return out
	}
	for _, tt := range []struct {
		addrs []net.Addr
		want  string
	}{
		{nets("127.0.0.1/8", "::1/128", "fe80::1/64", "2001:db8::5/64", "10.0.0.5/24"), "10.0.0.5"},
		{nets("127.0.0.1/8", "169.254.3.4/16", "fe80::1/64", "2001:db8::5/64"), "2001:db8::5"},
		{nets("127.0.0.1/8", "169.254.3.4/16", "fe80::1/64"), "127.0.0.1"},
		{nil, "127.0.0.1"},
	} {
		if got := pickAddress(tt.addrs); got != tt.want {
			t.Errorf("pickAddress(%v) = %s, want %s", tt.addrs, got, tt.want)
		}
	}
}

// Relative paths in sidecar.yaml are relative to the file, whatever the
// working directory (a service manager's is /).
func TestRelativePathsAreTheFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sidecar.yaml")
	if err := os.WriteFile(path, []byte("token_file: token\nstate_dir: ./state\nhaproxy: {binary: bin/haproxy, dir: /abs/hap}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenFile != filepath.Join(dir, "token") || c.StateDir != filepath.Join(dir, "state") ||
		c.HAProxy.Binary != filepath.Join(dir, "bin/haproxy") || c.HAProxy.Dir != "/abs/hap" {
		t.Fatalf("paths: token_file %s, state_dir %s, haproxy %+v", c.TokenFile, c.StateDir, c.HAProxy)
	}

	// A file named relative to the working directory gives absolute
	// paths: HAProxy reads a relative socket path as an address.
	t.Chdir(dir)
	if c, err = LoadConfig("sidecar.yaml"); err != nil {
		t.Fatal(err)
	}
	if c.StateDir != filepath.Join(dir, "state") || c.TokenFile != filepath.Join(dir, "token") {
		t.Fatalf("paths with sidecar.yaml relative: token_file %s, state_dir %s", c.TokenFile, c.StateDir)
	}
}

// A token_file that cannot be read stops the sidecar with the line of
// sidecar.yaml that names it, as any other bad value does.
func TestUnreadableTokenFileIsNamedByItsLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sidecar.yaml")
	if err := os.WriteFile(path, []byte("realm: dev\ntoken_file: missing\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(*c, nil)
	if want := path + ":2: token_file: open "; err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("New with a token_file that does not exist: %v; want it to start %q and say why", err, want)
	}
}
