package haproxy

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func goldenSpec(dir string) Spec {
	return Spec{
		Listen: "127.0.0.1:4000", Dir: dir, Realm: "production", Fallback: "127.0.0.1:41234", Lua: filepath.Join(dir, luaFile), Exporter: true,
		HTTP: []Backend{
			{Service: "identity", Slots: []Slot{{Addr: "10.0.0.5:5000", Weight: 100, Ready: true}, {Addr: "10.0.0.6:5000", Weight: 0, Ready: true}, {}, {}}},
			{Service: "billing", Slots: []Slot{{Addr: "10.0.0.7:6000", Weight: 100, Ready: false}, {}}},
		},
		TCP: []TCPFrontend{{Backend: Backend{Service: "sessions-redis", Slots: []Slot{{Addr: "10.0.0.8:6379", Weight: 100, Ready: true}, {}}}, Listen: "127.0.0.1:6380"}},
	}
}

// TestRenderGolden pins haproxy.cfg, and has the real haproxy check it.
func TestRenderGolden(t *testing.T) {
	got, err := Render(goldenSpec("/var/lib/switchboard/haproxy"))
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "haproxy.cfg.golden")
	if *update {
		os.WriteFile(golden, []byte(got), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("haproxy.cfg differs from %s:\n%s", golden, got)
	}
	// The same spec in a temp dir is a config HAProxy accepts.
	dir := t.TempDir()
	spec := goldenSpec(dir)
	if err := writeLua(spec.Lua); err != nil {
		t.Fatal(err)
	}
	text, _ := Render(spec)
	accepts(t, dir, text, "the rendered config")
}

// accepts has Debian's haproxy check text, written to a file in dir.
func accepts(t *testing.T, dir, text, what string) {
	t.Helper()
	path := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(path, []byte(text), 0o600)
	if out, err := exec.Command("haproxy", "-c", "-q", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c refuses %s: %v\n%s", what, err, out)
	}
}

func TestShapeIgnoresMembership(t *testing.T) {
	a, b := goldenSpec("/d"), goldenSpec("/d")
	b.HTTP[0].Slots = []Slot{{}, {}, {Addr: "10.9.9.9:1", Weight: 100, Ready: true}, {}}
	if a.Shape() != b.Shape() {
		t.Fatal("a membership change changed the shape: it would reload")
	}
	b.HTTP = append(b.HTTP, Backend{Service: "new", Slots: make([]Slot, 8)})
	if a.Shape() == b.Shape() {
		t.Fatal("a new backend did not change the shape")
	}
}

func TestSlotCommands(t *testing.T) {
	tests := []struct {
		old, new Slot
		want     string
	}{
		{Slot{}, Slot{}, ""},
		{Slot{}, Slot{Addr: "10.0.0.1:80", Weight: 100, Ready: true}, "set server be/s3 addr 10.0.0.1 port 80;set server be/s3 weight 100;set server be/s3 state ready"},
		{Slot{Addr: "10.0.0.1:80", Weight: 100, Ready: true}, Slot{}, "set server be/s3 state maint"},
		{Slot{Addr: "10.0.0.1:80", Weight: 100, Ready: true}, Slot{Addr: "10.0.0.1:80", Weight: 100, Ready: false}, "set server be/s3 state maint"},
		{Slot{Addr: "10.0.0.1:80", Weight: 100, Ready: true}, Slot{Addr: "10.0.0.1:80", Weight: 0, Ready: true}, "set server be/s3 weight 0"},
		{Slot{Addr: "10.0.0.1:80", Weight: 100, Ready: true}, Slot{Addr: "10.0.0.2:81", Weight: 100, Ready: true}, "set server be/s3 state maint;set server be/s3 addr 10.0.0.2 port 81;set server be/s3 weight 100;set server be/s3 state ready"},
	}
	for _, tt := range tests {
		if got := strings.Join(slotCommands("be", 3, tt.old, tt.new), ";"); got != tt.want {
			t.Errorf("slotCommands(%+v -> %+v) = %q; want %q", tt.old, tt.new, got, tt.want)
		}
	}
}

// A HAProxy built without Lua gets the config without the Lua action,
// and accepts it; Debian's has Lua, and the driver finds it.
func TestRenderWithoutLua(t *testing.T) {
	dir := t.TempDir()
	spec := goldenSpec(dir)
	spec.Lua = ""
	text, err := Render(spec)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(text, "lua") {
		t.Fatalf("the config without Lua names Lua:\n%s", text)
	}
	// Switchboard-Timeout is then read by the built-in proxy.
	if !strings.Contains(text, "use_backend fallback_sidecar if { req.hdr_cnt(switchboard-timeout) gt 0 }") {
		t.Fatalf("the config without Lua does not send requests with Switchboard-Timeout to the built-in proxy:\n%s", text)
	}
	accepts(t, dir, text, "the config without Lua")
	if lua, _ := features("haproxy"); !lua {
		t.Error("features: Debian's haproxy has Lua (haproxy -vv lists +LUA)")
	}
}
