package atlas_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

// opsStore passes every call to the real store, and keeps the ops of each
// Txn.
type opsStore struct {
	atlas.Store
	mu   sync.Mutex
	txns [][]atlas.Op
}

func (s *opsStore) Txn(ctx context.Context, ops []atlas.Op) (uint64, error) {
	s.mu.Lock()
	s.txns = append(s.txns, ops)
	s.mu.Unlock()
	return s.Store.Txn(ctx, ops)
}

// since returns the ops of the Txns after the first n.
func (s *opsStore) since(n int) [][]atlas.Op {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.txns[n:]
}

func (s *opsStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.txns)
}

// Writes that a caller that heartbeats (?sync=later, as a sidecar) makes
// again by itself when a crash of the machine took them back may be synced
// after they are answered; every other write is synced first.
func TestOnlyWritesSidecarsMakeAgainAreSyncedLater(t *testing.T) {
	var st *opsStore
	a := startIn(t, t.TempDir(), true, func(c *atlas.Config) {
		st = &opsStore{Store: c.Store}
		c.Store = st
	})
	for _, tc := range []struct {
		name         string
		method, path string
		body         string
		later        bool
	}{
		{"a new registration", "PUT", "/v1/instances/a-1?sync=later", `{"service":"a","address":"127.0.0.1","port":1000,"tags":["v1"],"meta":{"v":"1"}}`, true},
		{"the same again, another status", "PUT", "/v1/instances/a-1?sync=later", `{"service":"a","address":"127.0.0.1","port":1000,"tags":["v1"],"meta":{"v":"1"},"status":"warning"}`, true},
		{"the same, from a caller that does not heartbeat", "PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":1000,"tags":["v1"],"meta":{"v":"1"}}`, false},
		{"a new registration from a caller that does not heartbeat", "PUT", "/v1/instances/a-2", `{"service":"a","address":"127.0.0.1","port":1001}`, false},
		{"a heartbeat with a new status", "PUT", "/v1/instances/a-1/status?sync=later", `{"status":"critical","output":"down"}`, true},
		{"a heartbeat with a new status, once", "PUT", "/v1/instances/a-1/status", `{"status":"warning","output":"slow"}`, false},
		{"a batch heartbeat with a new status", "PUT", "/v1/heartbeats?sync=later", `{"heartbeats":[{"id":"a-1","status":"passing"}]}`, true},
		{"a batch heartbeat with a new status, once", "PUT", "/v1/heartbeats", `{"heartbeats":[{"id":"a-1","status":"critical"}]}`, false},
		{"new meta", "PUT", "/v1/instances/a-1?sync=later", `{"service":"a","address":"127.0.0.1","port":1000,"tags":["v1"],"meta":{"v":"2"}}`, false},
		{"new tags", "PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":1000,"tags":["v2"],"meta":{"v":"2"}}`, false},
		{"a new address", "PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.2","port":1000,"tags":["v2"],"meta":{"v":"2"}}`, false},
		{"a new port", "PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.2","port":1001,"tags":["v2"],"meta":{"v":"2"}}`, false},
		{"a new TTL", "PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.2","port":1001,"tags":["v2"],"meta":{"v":"2"},"ttl":"1m"}`, false},
		{"another service", "PUT", "/v1/instances/a-1", `{"service":"b","address":"127.0.0.2","port":1001,"tags":["v2"],"meta":{"v":"2"},"ttl":"1m"}`, false},
		{"an operator switch", "PUT", "/v1/instances/a-1/enabled", `{"enabled":false,"reason":"maintenance"}`, false},
		{"a deregistration", "DELETE", "/v1/instances/a-1", ``, false},
		{"a config layer", "PUT", "/v1/config/layer", `{"log":"info"}`, false},
		{"a port", "POST", "/v1/services/a/port", ``, false},
	} {
		n := st.count()
		a.must(tc.method, tc.path, tc.body)
		txns := st.since(n)
		if len(txns) != 1 {
			t.Fatalf("%s: %d writes; want 1", tc.name, len(txns))
		}
		for _, op := range txns[0] {
			if op.SyncLater != tc.later {
				t.Errorf("%s: op on %s has SyncLater %v; want %v", tc.name, op.Key, op.SyncLater, tc.later)
			}
		}
	}
}

// refusingStore refuses every write, as etcd does without space (its
// NOSPACE alarm) while it still answers reads.
type refusingStore struct{ atlas.Store }

func (refusingStore) Txn(context.Context, []atlas.Op) (uint64, error) {
	return 0, fmt.Errorf("etcd: mvcc: database space exceeded: %w", atlas.ErrUnavailable)
}

// A write the store refused answered 503 "Atlas's log says which", and the
// log said nothing: etcd's reason could not be found.
func TestARefusedWriteIsLogged(t *testing.T) {
	logs := &syncbuf.Buffer{}
	a := startIn(t, t.TempDir(), true, func(c *atlas.Config) {
		c.Store = refusingStore{c.Store}
		c.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	})
	if r := a.do("PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":1000}`); r.status != 503 {
		t.Fatalf("a refused write = %d %s; want 503", r.status, r.body)
	}
	if out := logs.String(); !strings.Contains(out, "the store refused a write") || !strings.Contains(out, "database space exceeded") {
		t.Fatalf("log: %s\nwant the store's reason", out)
	}
}
