package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/sidecar/proxy"
)

// stateFile keeps the last known instances of every watched service on
// disk, so that a sidecar started while Atlas is down still routes.
type stateFile struct {
	path    string
	log     *slog.Logger
	changed atomic.Bool
	// failing: the last save failed (and that was logged). A state_dir
	// that cannot be written (a full disk, a read-only file system) fails
	// every save, once a second while routes change: it is said once.
	failing atomic.Bool
	// self, set before restore, leaves out the instances restored that
	// point at the sidecar (a file of an older version, or listen
	// addresses changed since).
	self *selfAddrs
}

func stateFilePath(dir string) string { return filepath.Join(dir, "routes.json") }

// savedState is the file's format.
type savedState struct {
	Realm    string                 `json:"realm"`
	SavedAt  time.Time              `json:"saved_at"`
	Services []*sb.ServiceInstances `json:"services"`
}

func (f *stateFile) dirty() { f.changed.Store(true) }

// run saves the routes at most once a second while they change.
func (f *stateFile) run(ctx context.Context, t *proxy.Table) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if f.changed.Swap(false) {
				f.save(t)
			}
		}
	}
}

// save writes the file atomically (a temporary file renamed over it),
// mode 0600.
func (f *stateFile) save(t *proxy.Table) {
	b, err := json.MarshalIndent(routesOf(t, time.Now().UTC()), "", " ")
	if err == nil {
		err = writeFileAtomic(f.path, b)
	}
	switch {
	case err != nil && !f.failing.Swap(true):
		f.log.Warn("sidecar: could not save the last known routes: a sidecar restarted while Atlas is down would route on an older copy, or on none (logged once until a save works)", "path", f.path, "err", err)
	case err == nil && f.failing.Swap(false):
		f.log.Info("sidecar: the last known routes are saved again", "path", f.path)
	}
}

// routesOf is what the file keeps of the table.
func routesOf(t *proxy.Table, now time.Time) savedState {
	st := savedState{Realm: t.Realm, SavedAt: now}
	for _, p := range t.All() {
		if p.Index() == 0 {
			continue // never heard of: nothing to keep
		}
		if p.Denied() != nil {
			// Calls to it are refused: a restart while Atlas is down
			// must not route them on its instances again.
			continue
		}
		si := &sb.ServiceInstances{Index: p.Index(), Service: p.Service, Realm: p.Realm, Instances: []*sb.Instance{}}
		for _, e := range p.Endpoints() {
			si.Instances = append(si.Instances, e.Instance())
		}
		st.Services = append(st.Services, si)
	}
	return st
}

func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".routes-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// The rename itself survives a power loss once the directory is synced.
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// restore fills the table from the file, if there is one. Atlas's first
// answer for each service replaces what it restored.
func (f *stateFile) restore(t *proxy.Table) error {
	b, err := os.ReadFile(f.path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.restoreFrom(b, t)
}

// restoreFrom fills the table from b, the file's contents.
func (f *stateFile) restoreFrom(b []byte, t *proxy.Table) error {
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", f.path, err)
	}
	if st.Realm != t.Realm {
		return fmt.Errorf("%s: saved for realm %s, this sidecar routes in %s", f.path, st.Realm, t.Realm)
	}
	dropped := 0
	for _, si := range st.Services {
		if si == nil || sb.ValidateName("service", si.Service) != nil {
			dropped++
			continue
		}
		// What a damaged file holds is left out, not routed to.
		ins := make([]*sb.Instance, 0, len(si.Instances))
		for _, in := range si.Instances {
			if !restorable(in) {
				dropped++
				continue
			}
			ins = append(ins, in)
		}
		// A watch starts with the pool: what Atlas may have answered
		// already is newer than the file.
		t.Get(si.Service).Seed(f.self.leaveOut(ins, f.log), si.Index)
	}
	if dropped > 0 {
		f.log.Warn("sidecar: left out entries of the saved routes that are not services or instances", "path", f.path, "entries", dropped)
	}
	f.log.Info("sidecar: restored the last known routes", "path", f.path, "services", len(st.Services), "saved_at", st.SavedAt)
	return nil
}

// restorable reports whether a saved instance is one save writes: an id,
// an address and a port Atlas would take, and a status. Any other was
// damaged in the file; with no status it would be routed to as passing.
func restorable(in *sb.Instance) bool {
	return in != nil && sb.ValidateID(in.ID) == nil && sb.ValidateAddress(in.Address) == nil &&
		in.Port >= 1 && in.Port <= 65535 && in.Status.Valid()
}
