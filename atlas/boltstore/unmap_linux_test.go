package boltstore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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
