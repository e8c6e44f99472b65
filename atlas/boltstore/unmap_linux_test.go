package boltstore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/switchboard-go/switchboard/atlas"
)

// mappedKiB is how much of the file at path is mapped into this process
// (the Rss of its mappings in /proc/self/smaps).
func mappedKiB(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kib, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":"):
			in = fields[len(fields)-1] == path // a mapping's first line
		case in && len(fields) == 3 && fields[0] == "Rss:":
			n, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatalf("smaps: %q", sc.Text())
			}
			kib += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kib
}

// The file's pages leave the process's page tables after the checkpoints
// and snapshots that touched them (its state is in memory: the mapped copy
// only doubled the RSS), and reading the file again finds every value.
func TestFilePagesAreUnmapped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, 0, time.Millisecond)
	defer s.Close()
	const keys = 2000
	value := []byte(strings.Repeat("v", 1000))
	var index uint64
	for i := 0; i < keys; i += 100 {
		var ops []atlas.Op
		for k := i; k < i+100; k++ {
			ops = append(ops, atlas.Op{Key: fmt.Sprintf("k/%05d", k), Value: value})
		}
		var err error
		if index, err = s.Txn(context.Background(), ops); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every write checkpointed", func() bool { return s.checkpointed.Load() >= index })
	snapshot := func() {
		t.Helper()
		_, kvs, err := s.Snapshot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(kvs) != keys {
			t.Fatalf("snapshot: %d keys, want %d", len(kvs), keys)
		}
		for _, kv := range kvs {
			if string(kv.Value) != string(value) {
				t.Fatalf("%s: %d bytes, not the value written", kv.Key, len(kv.Value))
			}
		}
	}
	snapshot() // reads every page of the file
	t.Logf("mapped after the snapshot: %d KiB", mappedKiB(t, path))
	waitFor(t, "the file's pages unmapped", func() bool { return mappedKiB(t, path) < 256 })
	snapshot()
}

// A file whose meta counts more pages than it holds (cut short after its
// last pages were freed: bbolt opens it, and never reads them) is mapped
// only as far as it goes. Unmapping as many pages as the meta counts took
// the memory after the mapping, the Go runtime's, out too: it read back
// as zeros, and the next collection crashed the process. The unmapping
// stops at the mapping's end.
func TestUnmappingAShortFileStopsAtItsMapping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	value := make([]byte, 3000)
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketKV)
		if err != nil {
			return err
		}
		for i := range 30 {
			if err := b.Put(fmt.Appendf(nil, "k/%02d", i), value); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketKV)
			for i := range 30 {
				if err := b.Delete(fmt.Appendf(nil, "k/%02d", i)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	var size int64
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
	}
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := os.Truncate(path, 36<<10); err != nil {
		t.Fatal(err)
	}
	t.Logf("the meta counts %d KiB; the file holds 36", size>>10)

	// Memory the runtime fills and checks, made before and after the
	// store maps the file: some of it may lie just past the mapping.
	var keep [][]byte
	fill := func() {
		for range 256 {
			b := make([]byte, 4096)
			for i := range b {
				b[i] = 0xa5
			}
			keep = append(keep, b)
		}
	}
	fill()
	s := openLater(t, path, 0, time.Hour)
	defer s.Close()
	fill()
	waitFor(t, "the file's pages unmapped", func() bool { return mappedKiB(t, path) == 0 })
	runtime.GC()
	for _, b := range keep {
		for _, c := range b {
			if c != 0xa5 {
				t.Fatal("memory past the file's mapping was unmapped: it reads back as zeros")
			}
		}
	}
	put(t, s, "k/after", "v", false)
}
