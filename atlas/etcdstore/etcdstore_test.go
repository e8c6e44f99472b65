package etcdstore_test

import (
	"testing"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/etcdstore"
	"github.com/switchboard-go/switchboard/atlas/storetest"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// TestConformance runs the store suite on a real (embedded) etcd, each
// test under a prefix of its own.
func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	n := 0
	storetest.Run(t, func(t *testing.T) atlas.Store {
		n++
		s, err := etcdstore.Open(etcdstore.Config{Endpoints: cluster.Endpoints(), Prefix: "/t" + string(rune('a'+n)) + "/"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
