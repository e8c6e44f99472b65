package boltstore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/boltstore"
	"github.com/switchboard-go/switchboard/atlas/storetest"
)

func open(t *testing.T, path string) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(boltstore.Config{Path: path, SweepInterval: 20 * time.Millisecond, History: 64})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) atlas.Store { return open(t, filepath.Join(t.TempDir(), "atlas.db")) })
}

// The store behaves the same whether the writes are still in the log only
// (no checkpoint during a test) or copied into the file at once.
func TestConformanceAcrossCheckpoints(t *testing.T) {
	for name, every := range map[string]time.Duration{"never": time.Hour, "constantly": time.Millisecond} {
		t.Run(name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) atlas.Store {
				s, err := boltstore.Open(boltstore.Config{Path: filepath.Join(t.TempDir(), "atlas.db"), SweepInterval: 20 * time.Millisecond, History: 64, CheckpointInterval: every})
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
		})
	}
}

func TestReopenKeepsIndexAndGivesLeasesAFullTTL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := open(t, path)
	ctx := context.Background()
	idx, err := s.Txn(ctx, []atlas.Op{{Key: "k", Value: []byte("v"), TTL: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s.Close()                           // idempotent
	time.Sleep(2500 * time.Millisecond) // the lease would have run out meanwhile
	s = open(t, path)
	defer s.Close()
	got, kvs, err := s.Snapshot(ctx)
	if err != nil || got != idx || len(kvs) != 1 {
		t.Fatalf("after reopen: index %d (want %d), %d keys, %v", got, idx, len(kvs), err)
	}
	exp, err := s.KeepAlive(ctx, "k")
	if err != nil || time.Until(exp) < time.Second {
		t.Fatalf("after reopen the lease ends in %v (%v); want a full TTL", time.Until(exp), err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("store file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
}

func TestWatchTooOldIsCompacted(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "atlas.db"))
	defer s.Close()
	ctx := context.Background()
	for range 200 { // more than twice History (64)
		if _, err := s.Txn(ctx, []atlas.Op{{Key: "k", Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Watch(ctx, 1); err != atlas.ErrCompacted {
		t.Fatalf("Watch from a forgotten index: %v; want ErrCompacted", err)
	}
	if _, err := s.Watch(ctx, 1000); err != atlas.ErrCompacted {
		t.Fatalf("Watch from a future index: %v; want ErrCompacted", err)
	}
}

func TestClosedStoreRefusesWrites(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "atlas.db"))
	s.Close()
	if _, err := s.Txn(context.Background(), []atlas.Op{{Key: "k", Value: []byte("v")}}); err != atlas.ErrClosed {
		t.Fatalf("Txn on a closed store: %v; want ErrClosed", err)
	}
}

func TestOpenInUseSaysSo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := open(t, path)
	defer s.Close()
	if _, err := boltstore.Open(boltstore.Config{Path: path}); err == nil || !strings.Contains(err.Error(), "another process has it open") {
		t.Fatalf("a second Open of one file: %v; want it to say the file is in use", err)
	}
}

// A bbolt file cut short or with damaged pages crashed Atlas at start: a
// SIGBUS with a goroutine dump, or a panic in the load. Open now says the
// file is damaged and what to do.
func TestDamagedFileIsAnErrorNotACrash(t *testing.T) {
	for name, damage := range map[string]func(path string) error{
		"cut short": func(path string) error { return os.Truncate(path, 20000) },
		"pages overwritten": func(path string) error {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			junk := bytes.Repeat([]byte{0xff}, 4096)
			for off := int64(2 * 4096); off < 12*4096; off += 4096 {
				if _, err := f.WriteAt(junk, off); err != nil {
					return err
				}
			}
			return nil
		},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atlas.db")
			s, err := boltstore.Open(boltstore.Config{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			for i := range 300 {
				if _, err := s.Txn(ctx, []atlas.Op{{Key: fmt.Sprintf("k/%04d", i), Value: bytes.Repeat([]byte("v"), 200), TTL: time.Hour}}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil { // checkpoints the log into the file
				t.Fatal(err)
			}
			if err := damage(path); err != nil {
				t.Fatal(err)
			}
			s, err = boltstore.Open(boltstore.Config{Path: path})
			if err == nil {
				s.Close()
				t.Skip("this damage went unnoticed by bbolt") // not a crash, at least
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "damaged") {
				t.Fatalf("Open of a damaged file: %v; want an error naming it as damaged", err)
			}
		})
	}
}
