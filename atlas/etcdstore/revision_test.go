package etcdstore_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/internal/etcdtest"
)

// etcd restored from an old backup without --bump-revision numbers its
// changes again from the backup's revision. The store's watch waits for
// revisions above those it applied, so it would miss every change below
// them while Ping said all was well: Atlas served its old view as fresh.
// Ping fails instead, naming the cause, and goes on failing once etcd's
// revision has climbed past the old one.
func TestARevisionThatWentBackFailsPing(t *testing.T) {
	old := etcdtest.Start(t, 1)
	s, ctx, ch := watchingOn(t, old, false)
	var index uint64
	var err error
	for i := range 20 {
		if index, err = s.Txn(ctx, []atlas.Op{{Key: fmt.Sprint("k", i), Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
	}
	for c := range ch {
		if c.Index >= index {
			break
		}
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping before the restore: %v", err)
	}

	old.Members[0].Stop()
	etcdtest.StartAt(t, old.Members[0].ClientURL)
	pollFor(t, 30*time.Second, "Ping fails once etcd's revision went back", func() bool {
		err := s.Ping(ctx)
		return err != nil && strings.Contains(err.Error(), "revision went back") && errors.Is(err, atlas.ErrUnavailable)
	})
	// The new etcd's revision climbs past the old one: still failing.
	for i := range int(index) + 5 {
		if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprint("n", i), Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Ping(ctx); err == nil || !strings.Contains(err.Error(), "--bump-revision") {
		t.Fatalf("Ping once the revision climbed past the old one: %v; want it still failing", err)
	}
}
