package sidecar

import (
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/sidecar/proxy"
)

// A damaged state file (it parses, but holds nulls and instances that
// cannot be routed to) is restored without what is damaged, never with a
// panic.
func TestRestoreLeavesOutDamagedEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.json")
	err := os.WriteFile(path, []byte(`{"realm":"dev","services":[null,
		{"service":"billing","index":3,"instances":[null,
			{"id":"b-1","service":"billing","realm":"dev","address":"127.0.0.1","port":5001,"status":"passing","enabled":true},
			{"id":"b-2","service":"billing","realm":"dev","address":"","port":5002,"status":"passing","enabled":true},
			{"id":"b-3","service":"billing","realm":"dev","address":"127.0.0.1","port":0,"status":"passing","enabled":true}]},
		{"service":"Bad Name","index":1,"instances":[]}]}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	table := &proxy.Table{Realm: "dev"}
	f := &stateFile{path: path, log: slog.New(slog.DiscardHandler)}
	if err := f.restore(table); err != nil {
		t.Fatal(err)
	}
	p := table.Lookup("billing")
	if p == nil {
		t.Fatal("billing was not restored")
	}
	eps := p.Endpoints()
	if len(eps) != 1 || eps[0].Instance().ID != "b-1" {
		t.Fatalf("restored %d instances; want b-1 alone", len(eps))
	}
	// An instance at an address the sidecar listens on (a file of an
	// older version, or listen addresses changed since) is left out too.
	table = &proxy.Table{Realm: "dev"}
	f.self = newSelfAddrs("127.0.0.1:5001")
	if err := f.restore(table); err != nil {
		t.Fatal(err)
	}
	if eps := table.Lookup("billing").Endpoints(); len(eps) != 0 {
		t.Fatalf("restored %d instances; want none: b-1 is at the sidecar's own address", len(eps))
	}
}

// A Start that fails (here on an upstream's listen address, taken) leaves
// nothing running: not the watch of the upstream pinned before it, nor
// those of the restored services.
func TestAFailedStartLeavesNothingRunning(t *testing.T) {
	a := atlastest.Start(t, true)
	dir := t.TempDir()
	err := os.WriteFile(stateFilePath(dir), []byte(`{"realm":"dev","services":[{"service":"billing","index":3,"instances":[
		{"id":"b-1","service":"billing","realm":"dev","address":"127.0.0.1","port":5001,"status":"passing","enabled":true}]}]}`), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	s, err := New(Config{Atlas: StringList{a.URL}, StateDir: dir, Listen: "127.0.0.1:0", Admin: "127.0.0.1:0",
		Upstreams: []UpstreamConfig{{Name: "identity"}, {Name: "ledger", Listen: taken.Addr().String()}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		s.Shutdown()
		t.Fatal("Start succeeded on a taken address")
	}
	stopped := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("goroutines still running 10s after Start failed")
	}
}

// A sidecar without state_dir says what it gives up: routing while Atlas
// is down after a restart.
func TestNoStateDirIsWarnedOf(t *testing.T) {
	var out strings.Builder
	if _, err := New(Config{Atlas: StringList{"http://127.0.0.1:1"}}, slog.New(slog.NewTextHandler(&out, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "no state_dir") {
		t.Fatalf("no warning of a missing state_dir: %q", out.String())
	}
}

// A token file other users can read is warned of, as ssh warns of a key.
func TestReadableTokenFileIsWarnedOf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := os.WriteFile(path, []byte("sb.x.y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644) // whatever the umask
	var out strings.Builder
	if _, err := New(Config{Atlas: StringList{"http://127.0.0.1:1"}, TokenFile: path, StateDir: dir}, slog.New(slog.NewTextHandler(&out, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "token_file can be read by other users") || strings.Contains(out.String(), "sb.x.y") {
		t.Fatalf("log: %q; want a warning, without the token", out.String())
	}
}

// FuzzRestoreRoutes: any routes.json (a crash or a full disk may have
// damaged it) is refused with an error naming the file, restoring
// nothing, or restored with only what can be routed to; and what is
// restored is saved and restored again unchanged.
func FuzzRestoreRoutes(f *testing.F) {
	f.Add([]byte(`{"realm":"dev","saved_at":"2024-05-01T10:00:00Z","services":[{"index":7,"service":"billing","realm":"dev","instances":[
		{"id":"b-1","service":"billing","realm":"dev","address":"10.0.0.5","port":5001,"tags":["v2"],"status":"passing","enabled":true},
		{"id":"b-2","service":"billing","realm":"dev","address":"::1","port":5002,"status":"critical","enabled":false}]}]}`))
	f.Add([]byte(`{"realm":"dev","services":[null,{"service":"a","index":1,"instances":[null,{"id":"x","address":"h","port":70000}]}]}`))
	f.Add([]byte(`{"realm":"prod","services":[]}`))
	f.Add([]byte(`{"realm":"dev","services":[{"service":"a","index":2,"instances":[{"id":"a-1","address":"h","port":1,"status":"passing","enabled":true}]}`))
	f.Add([]byte{})
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, data []byte) {
		sf := &stateFile{path: "routes.json", log: log}
		table := &proxy.Table{Realm: "dev"}
		if err := sf.restoreFrom(data, table); err != nil {
			if !strings.HasPrefix(err.Error(), "routes.json: ") {
				t.Fatalf("restore error %q does not name the file", err)
			}
			if n := len(table.All()); n != 0 {
				t.Fatalf("a refused file restored %d services", n)
			}
			return
		}
		for _, p := range table.All() {
			if err := sb.ValidateName("service", p.Service); err != nil {
				t.Fatalf("restored service %q: %v", p.Service, err)
			}
			for _, e := range p.Endpoints() {
				in := e.Instance()
				if sb.ValidateID(in.ID) != nil || sb.ValidateAddress(in.Address) != nil || in.Port < 1 || in.Port > 65535 || !in.Status.Valid() {
					t.Fatalf("restored %s: %+v (endpoint %s), which cannot be routed to", p.Service, in, e.Addr)
				}
			}
		}
		saved, err := json.Marshal(routesOf(table, time.Time{}))
		if err != nil {
			t.Fatalf("restored routes do not save: %v", err)
		}
		again := &proxy.Table{Realm: "dev"}
		if err := sf.restoreFrom(saved, again); err != nil {
			t.Fatalf("saved routes %s do not restore: %v", saved, err)
		}
		if diff := cmp.Diff(routesOf(table, time.Time{}), routesOf(again, time.Time{})); diff != "" {
			t.Fatalf("saved and restored again, the routes changed:\n%s", diff)
		}
	})
}
