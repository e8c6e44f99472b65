package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// crash stops the store as a crash would: no checkpoint, the log left as
// it is.
func (s *Store) crash() {
	s.closed.Do(func() {
		s.cancel()
		s.wg.Wait()
		if s.seg != nil { // nil after a failed sync, until its checkpoint
			s.seg.f.Close()
		}
		s.db.Close()
	})
}

func openT(t *testing.T, path string, checkpoint time.Duration, log *bytes.Buffer) *Store {
	t.Helper()
	cfg := Config{Path: path, CheckpointInterval: checkpoint, SweepInterval: time.Hour}
	if log != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	}
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeSome makes puts (one leased), a delete of a key the file already
// has, a conditional write and a transaction of two keys, and returns the
// entries the store must then hold.
func writeSome(t *testing.T, s *Store) map[string]string {
	t.Helper()
	ctx := context.Background()
	txn := func(ops ...atlas.Op) uint64 {
		t.Helper()
		i, err := s.Txn(ctx, ops)
		if err != nil {
			t.Fatal(err)
		}
		return i
	}
	txn(atlas.Op{Key: "a", Value: []byte("1")})
	i := txn(atlas.Op{Key: "b", Value: []byte("2"), TTL: time.Hour})
	txn(atlas.Op{Key: "b", Value: []byte("3"), TTL: time.Hour, IfIndex: atlas.IfIndex(i)})
	txn(atlas.Op{Key: "a", Delete: true})
	txn(atlas.Op{Key: "c", Value: []byte{}}, atlas.Op{Key: "d", Value: []byte("4")})
	return map[string]string{"b": "3", "c": "", "d": "4"}
}

func snapshotOf(t *testing.T, s *Store) (uint64, map[string]string) {
	t.Helper()
	index, kvs, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for i, kv := range kvs {
		if i > 0 && kvs[i-1].Key >= kv.Key {
			t.Fatalf("snapshot not in key order: %q then %q", kvs[i-1].Key, kv.Key)
		}
		got[kv.Key] = string(kv.Value)
	}
	return index, got
}

// afterCrash is the index a store opened after a crash is at, when its
// last write was index: Open moves it past the writes a crash of the
// machine may have taken back.
func afterCrash(index uint64) uint64 { return index + maxUnsynced }

// reopen opens the store at path again, checks that it holds want at index
// and returns what Open logged; the store is closed at the end of the test.
func reopen(t *testing.T, path string, index uint64, want map[string]string) (*Store, string) {
	t.Helper()
	var log bytes.Buffer
	s := openT(t, path, time.Hour, &log)
	t.Cleanup(func() { s.Close() })
	if index2, got := snapshotOf(t, s); index2 != index || !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopening: index %d %v; want %d %v", index2, got, index, want)
	}
	return s, log.String()
}

func logSegments(t *testing.T, path string) []string {
	t.Helper()
	paths, _, err := segments(walDir(path))
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// A crash leaves acknowledged writes in the log only (no checkpoint ran);
// Open replays them into the file.
func TestCrashKeepsAcknowledgedWrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openT(t, path, time.Hour, nil)
	want := writeSome(t, s)
	index, got := snapshotOf(t, s)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("before the crash: %v; want %v", got, want)
	}
	s.crash()

	s, log := reopen(t, path, afterCrash(index), want)
	if !strings.Contains(log, "replayed the write-ahead log") {
		t.Fatalf("Open replayed nothing; log: %s", log)
	}
	// The file has them now: the old segments are gone.
	if segs := logSegments(t, path); len(segs) != 1 {
		t.Fatalf("segments after Open: %v; want only the new one", segs)
	}
	if _, err := s.KeepAlive(context.Background(), "b"); err != nil {
		t.Fatalf("the replayed leased key has no lease: %v", err)
	}
}

// Checkpoints copy the writes into the file and delete the log behind them.
func TestCheckpointEmptiesTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openT(t, path, 10*time.Millisecond, nil)
	want := writeSome(t, s)
	index, _ := snapshotOf(t, s)
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.pending)
		s.mu.Unlock()
		if n == 0 && len(logSegments(t, path)) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d writes pending, segments %v", n, logSegments(t, path))
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.crash()
	// Nothing is left to replay: the file alone has every write.
	if _, log := reopen(t, path, afterCrash(index), want); strings.Contains(log, "replayed") {
		t.Fatalf("Open replayed writes a checkpoint had copied: %s", log)
	}
}

// A write cut short by a crash was never acknowledged: Open drops it and
// keeps everything before it.
func TestTornTailIsDropped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openT(t, path, time.Hour, nil)
	want := writeSome(t, s)
	index, _ := snapshotOf(t, s)
	s.crash()
	segs := logSegments(t, path)
	last := segs[len(segs)-1]
	frame := appendChanges(nil, []atlas.Change{{Index: index + 1, KVs: []atlas.ChangedKV{{KV: atlas.KV{Key: "e", Value: []byte("5")}}}}})
	f, err := os.OpenFile(last, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A header that promises more than follows.
	f.Write([]byte{byte(len(frame) + 10), 0, 0, 0, 1, 2, 3, 4})
	f.Write(frame)
	f.Close()

	if _, log := reopen(t, path, afterCrash(index), want); !strings.Contains(log, "incomplete write") {
		t.Fatalf("the dropped bytes were not logged: %s", log)
	}
}

// A checkpoint with nothing to copy still moves the file's index, or the log
// it deletes leaves a gap that Open refuses (and a clean Close would let the
// index go backwards). Nothing to copy: a delete of a key that is not there
// (a change with no entries), or writes all rewritten since.
func TestCheckpointWithNothingToCopyKeepsTheIndex(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openT(t, path, time.Millisecond, nil)
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "gone", Delete: true}}); err != nil {
		t.Fatal(err)
	}
	first := logSegments(t, path)[0]
	deadline := time.Now().Add(10 * time.Second)
	for slices.Contains(logSegments(t, path), first) {
		if time.Now().After(deadline) {
			t.Fatal("the segment of the delete was not checkpointed within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	i, err := s.Txn(ctx, []atlas.Op{{Key: "a", Value: []byte("1")}})
	if err != nil {
		t.Fatal(err)
	}
	s.crash()
	reopen(t, path, afterCrash(i), map[string]string{"a": "1"})

	// Hot keys: each checkpoint finds its writes rewritten in the next
	// segment already.
	path = filepath.Join(t.TempDir(), "atlas.db")
	s = openT(t, path, time.Millisecond, nil)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if _, err := s.Txn(ctx, []atlas.Op{{Key: "hot", Value: []byte{byte('a' + w)}}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	index, want := snapshotOf(t, s)
	s.crash()
	reopen(t, path, afterCrash(index), want)

	// A clean Close after a change with no entries: the index stays.
	path = filepath.Join(t.TempDir(), "atlas.db")
	s = openT(t, path, time.Hour, nil)
	s.Txn(ctx, []atlas.Op{{Key: "a", Value: []byte("1")}})
	i, _ = s.Txn(ctx, []atlas.Op{{Key: "gone", Delete: true}})
	s.Close()
	reopen(t, path, i, map[string]string{"a": "1"})
}

// Damage anywhere but at the end of the last segment is not a torn write:
// Open refuses the log rather than lose acknowledged writes silently.
func TestDamagedLogIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string, segs []string)
		want   string
		file   string // the segment the error names
	}{
		{"damage before a later segment", func(t *testing.T, dir string, segs []string) {
			alter(t, segs[0], func(data []byte) { data[len(data)-1] ^= 0xff })
			// A later segment, as after a rotation.
			os.WriteFile(filepath.Join(dir, segmentName(99)), nil, 0o600)
		}, "later segments follow", segmentName(1)},
		{"damage in the middle of the last segment", func(t *testing.T, dir string, segs []string) {
			alter(t, segs[len(segs)-1], func(data []byte) { data[frameHeader] ^= 0xff }) // the first frame's payload
		}, "damaged frame at byte 0", segmentName(1)},
		// A length that reaches past the end of the file, or a header
		// read as zeros, is what an incomplete last write leaves: with
		// whole frames after it, it is damage.
		{"a damaged length before whole frames", func(t *testing.T, dir string, segs []string) {
			alter(t, segs[len(segs)-1], func(data []byte) { data[2] = 0x30 })
		}, "with a whole frame at byte", segmentName(1)},
		{"a header read as zeros before whole frames", func(t *testing.T, dir string, segs []string) {
			alter(t, segs[len(segs)-1], func(data []byte) { clear(data[:frameHeader]) })
		}, "with a whole frame at byte", segmentName(1)},
		{"a missing segment", func(t *testing.T, dir string, segs []string) {
			g, err := createSegment(dir, 99, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			g.append([]atlas.Change{{Index: 1000, KVs: []atlas.ChangedKV{{KV: atlas.KV{Key: "z", Value: []byte("9")}}}}}, false)
			g.f.Close()
		}, "changes are missing", segmentName(99)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atlas.db")
			s := openT(t, path, time.Hour, nil)
			writeSome(t, s)
			s.crash()
			tc.damage(t, walDir(path), logSegments(t, path))
			_, err := Open(Config{Path: path})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open of a damaged log: %v; want an error saying %q", err, tc.want)
			}
			// The operator is told which file, and what to do.
			if file := filepath.Join(walDir(path), tc.file); !strings.Contains(err.Error(), file+": ") {
				t.Errorf("Open of a damaged log: %v; want it to name %s", err, file)
			}
			if !strings.Contains(err.Error(), "restore the data directory from a backup") {
				t.Errorf("Open of a damaged log: %v; want it to say what to do", err)
			}
		})
	}
}

// alter changes a file's bytes in place with change.
func alter(t *testing.T, path string, change func(data []byte)) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	change(data)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A store whose log cannot be written (a full disk, say) refuses writes
// and says so, and takes them again once the log can be written, without
// a restart: whether cutting the refused frame off worked at once or only
// before the next append, the log then holds the acknowledged writes, in
// order, and nothing else.
func TestLogWriteFailureRefusesWritesUntilItWorks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cutFails bool // truncating fails too while the disk is full
	}{
		{"the frame's sync fails, and the cut works", false},
		// The refused frame then stays in the file until the next append
		// cuts it off first: appending after it would put acknowledged
		// writes behind a frame the log must not replay.
		{"cutting the frame off fails too", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atlas.db")
			var log bytes.Buffer
			s := openT(t, path, time.Hour, &log)
			ctx := context.Background()
			write := func(k, v string) (uint64, error) {
				return s.Txn(ctx, []atlas.Op{{Key: k, Value: []byte(v)}})
			}
			if _, err := write("a", "1"); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			full := true
			isFull := func() bool {
				mu.Lock()
				defer mu.Unlock()
				return full
			}
			syncLog = func(f *os.File) error {
				if isFull() && s.seg != nil && f == s.seg.f && !s.seg.torn {
					return syscall.ENOSPC // the frame's sync
				}
				if isFull() && (tc.cutFails || f != s.seg.f) {
					return syscall.ENOSPC // the cut's, or the probe's
				}
				return fdatasync(f)
			}
			truncateLog = func(f *os.File, size int64) error {
				if isFull() && tc.cutFails {
					return syscall.ENOSPC
				}
				return f.Truncate(size)
			}
			t.Cleanup(func() { syncLog, truncateLog = fdatasync, (*os.File).Truncate })
			for _, k := range []string{"b", "c"} {
				if _, err := write(k, "refused"); !errors.Is(err, atlas.ErrUnavailable) || !strings.Contains(err.Error(), "write-ahead log") {
					t.Fatalf("write while the log fails: %v; want ErrUnavailable naming the write-ahead log", err)
				}
			}
			if err := s.Ping(ctx); err == nil {
				t.Fatal("Ping is fine while the log cannot be written")
			}
			if n := strings.Count(log.String(), "writing the write-ahead log failed"); n != 1 {
				t.Fatalf("the failure was logged %d times; want once while it lasts:\n%s", n, log.String())
			}

			mu.Lock()
			full = false // space was freed
			mu.Unlock()
			if err := s.Ping(ctx); err != nil {
				t.Fatalf("Ping once the log can be written again: %v", err)
			}
			i, err := write("d", "4")
			if err != nil {
				t.Fatalf("write once the log can be written again: %v", err)
			}
			if _, err := write("e", "5"); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(log.String(), "works again") {
				t.Fatalf("the recovery was not logged:\n%s", log.String())
			}
			want := map[string]string{"a": "1", "d": "4", "e": "5"}
			if _, got := snapshotOf(t, s); !reflect.DeepEqual(got, want) {
				t.Fatalf("the store holds %v; want %v", got, want)
			}
			// The log, replayed, holds the same: no refused frame came
			// back, and nothing was lost behind a hole where one was. A
			// probe file the crash left is removed.
			s.crash()
			probe := filepath.Join(walDir(path), "probe-1.tmp")
			if err := os.WriteFile(probe, make([]byte, 4096), 0o600); err != nil {
				t.Fatal(err)
			}
			reopen(t, path, afterCrash(i+1), want)
			if _, err := os.Stat(probe); !os.IsNotExist(err) {
				t.Fatalf("a probe file the crash left is still there: %v", err)
			}
		})
	}
}

func FuzzWALPayload(f *testing.F) {
	f.Add(appendChanges(nil, []atlas.Change{
		{Index: 7, KVs: []atlas.ChangedKV{{KV: atlas.KV{Key: "i/a", Value: []byte(`{"x":1}`), TTL: time.Minute}}}},
		{Index: 8, KVs: []atlas.ChangedKV{{KV: atlas.KV{Key: "i/a"}, Deleted: true, Expired: true}, {KV: atlas.KV{Key: "c/", Value: []byte{}}}}},
	}))
	f.Add([]byte{})
	f.Add([]byte{1, 200, 200, 200, 200, 1})
	f.Fuzz(func(t *testing.T, p []byte) {
		cs, err := decodeChanges(p)
		if err != nil {
			return
		}
		// What decodes encodes back to the same changes.
		again, err := decodeChanges(appendChanges(nil, cs))
		if err != nil {
			t.Fatalf("re-encoded changes do not decode: %v", err)
		}
		if !reflect.DeepEqual(again, cs) {
			t.Fatalf("round trip: %+v became %+v", cs, again)
		}
	})
}

// frameOf is a log frame of cs, as segment.append writes it.
func frameOf(cs []atlas.Change) []byte { return frameWith(cs, false, false) }

// frameWith is frameOf for a frame acknowledged before it was synced when
// later is set, written when every frame before it was synced when synced
// is set too.
func frameWith(cs []atlas.Change, later, synced bool) []byte {
	payload := appendChanges(nil, cs)
	word := uint32(len(payload))
	if later {
		word |= frameLater
		if synced {
			word |= frameSynced
		}
	}
	frame := binary.LittleEndian.AppendUint32(nil, word)
	frame = binary.LittleEndian.AppendUint32(frame, crc32.Checksum(payload, castagnoli))
	return append(frame, payload...)
}

// FuzzWALSegment reads segments that are not as written: readSegment
// never panics, and an error is the damaged-log error naming the segment.
// Any bytes: what is returned is the whole frames before the tail it
// reports, so that the file cut there reads the same with no tail. A
// valid log cut short (a torn write) gives the changes of its whole
// frames exactly; with bytes changed, it gives the frames before the
// damage or refuses the log, never more or other changes than were
// written, and never drops frames that follow the damage intact as if
// they were an incomplete last write.
func FuzzWALSegment(f *testing.F) {
	f.Add([]byte{}, []byte(`{"id":"a-1"}`), uint8(3), uint16(0), []byte{}, true)
	f.Add(frameOf([]atlas.Change{{Index: 2, KVs: []atlas.ChangedKV{{KV: atlas.KV{Key: "i/x", Value: []byte("v")}}}}}), []byte("v"), uint8(2), uint16(30), []byte{0, 0, 0, 0}, false)
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{}, uint8(4), uint16(60), []byte{0xff, 0xff, 0, 0}, false)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []byte("{}"), uint8(1), uint16(9), []byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, false)
	dir := f.TempDir()
	path := filepath.Join(dir, segmentName(1))
	read := func(t *testing.T, data []byte) ([]atlas.Change, int64, error) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cs, torn, err := readSegment(path)
		if err != nil && !(strings.HasPrefix(err.Error(), path+": ") && strings.Contains(err.Error(), "Atlas will not start")) {
			t.Fatalf("readSegment: error %q is not the damaged-log error naming the segment", err)
		}
		if err == nil && (torn < 0 || torn > int64(len(data))) {
			t.Fatalf("readSegment of %d bytes: a tail of %d bytes", len(data), torn)
		}
		return cs, torn, err
	}
	f.Fuzz(func(t *testing.T, raw, value []byte, frames uint8, at uint16, junk []byte, cut bool) {
		later := func(i int) bool { return frames>>(3+i%5)&1 == 1 }
		// Any bytes.
		cs, torn, err := read(t, raw)
		if err == nil && torn > 0 {
			again, torn2, err := read(t, raw[:int64(len(raw))-torn])
			if err != nil || torn2 != 0 || !sameChanges(again, cs) {
				t.Fatalf("cut at its tail, the segment reads %d changes, tail %d, %v; want the %d changes read with the tail and none", len(again), torn2, err, len(cs))
			}
		}

		// A valid log, damaged.
		var (
			written []atlas.Change
			log     []byte
			ends    []int // where each frame ends
		)
		for i := range int(frames%8) + 1 {
			c := atlas.Change{Index: uint64(i) + 10, KVs: []atlas.ChangedKV{
				{KV: atlas.KV{Key: fmt.Sprintf("i/k%d", i), Value: slices.Clone(value[:len(value)*i/8]), Index: uint64(i) + 10, TTL: time.Duration(i) * time.Second}},
			}}
			if c.KVs[0].Value == nil {
				c.KVs[0].Value = []byte{}
			}
			if i%3 == 2 {
				c.KVs = append(c.KVs, atlas.ChangedKV{KV: atlas.KV{Key: "c/x/", Index: c.Index}, Deleted: true})
			}
			written = append(written, c)
			// frames' bits 3-7 mark frames written to be synced later;
			// the first of a run of them is marked frameSynced, as the
			// writer marks it.
			log = append(log, frameWith([]atlas.Change{c}, later(i), i == 0 || !later(i-1))...)
			ends = append(ends, len(log))
		}
		p := int(at) % (len(log) + 1)
		whole := func(n int) int { // frames that end at or before n
			k := 0
			for k < len(ends) && ends[k] <= n {
				k++
			}
			return k
		}
		if cut {
			cs, torn, err := read(t, log[:p])
			if k := whole(p); err != nil || !sameChanges(cs, written[:k]) || int64(p)-torn != int64(endOf(ends, k)) {
				t.Fatalf("a log of %d frames cut at byte %d reads %d changes, tail %d, %v; want its %d whole frames", len(written), p, len(cs), torn, err, k)
			}
			return
		}
		damaged := slices.Clone(log)
		if grow := p + len(junk) - len(damaged); grow > 0 {
			damaged = append(damaged, make([]byte, grow)...)
		}
		copy(damaged[p:], junk)
		first := 0
		for first < len(log) && damaged[first] == log[first] {
			first++
		}
		k := whole(first) // frames before the first changed byte
		cs, torn, err = read(t, damaged)
		if err != nil {
			if k == len(written) && len(damaged) == len(log) {
				t.Fatalf("an undamaged log is refused: %v", err)
			}
			return
		}
		if len(cs) > len(written) || !sameChanges(cs, written[:len(cs)]) {
			t.Fatalf("a damaged log (byte %d on) reads changes that were not written:\n%+v\nwritten:\n%+v", first, cs, written)
		}
		if len(cs) < k {
			t.Fatalf("a log damaged from byte %d reads %d changes; want the %d frames before the damage", first, len(cs), k)
		}
		if int64(len(damaged))-torn != int64(endOf(ends, len(cs))) {
			t.Fatalf("a damaged log reads %d changes and a tail of %d bytes of %d; the tail must start where the last frame read ends", len(cs), torn, len(damaged))
		}
		// Only the last write, and writes acknowledged before they were
		// synced, can be incomplete: a frame written when every frame
		// before it was synced (one synced at once, or the first of a run
		// synced later) still whole after the damage means the damage is
		// not that, and must be refused.
		for j := len(cs) + 1; j < len(written); j++ {
			syncPoint := !later(j) || !later(j-1)
			if syncPoint && bytes.Equal(damaged[endOf(ends, j):ends[j]], log[endOf(ends, j):ends[j]]) {
				t.Fatalf("a log damaged at frame %d of %d (byte %d) reads as %d changes and a torn tail, dropping frame %d which is whole", k, len(written), first, len(cs), j)
			}
		}
	})
}

// sameChanges reports whether a and b hold the same changes (nil and
// empty are the same).
func sameChanges(a, b []atlas.Change) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

// endOf is where frame k starts: the end of the k frames before it.
func endOf(ends []int, k int) int {
	if k == 0 {
		return 0
	}
	return ends[k-1]
}

// A store made before new stores started at index 1 may hold its first
// write, index 1, in the log only (killed before the first checkpoint):
// it is replayed, not taken for the starting index.
func TestFirstWriteOfAnOlderStoreIsReplayed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	if err := os.Mkdir(walDir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	g, err := createSegment(walDir(path), 1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	err = g.append([]atlas.Change{{Index: 1, KVs: []atlas.ChangedKV{{KV: atlas.KV{Key: "k", Value: []byte("v"), Index: 1}}}}}, false)
	g.f.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	index, kvs, err := s.Snapshot(context.Background())
	if err != nil || index != 1 || len(kvs) != 1 || kvs[0].Key != "k" {
		t.Fatalf("Snapshot = %d, %+v, %v; want index 1 and k, replayed from the log", index, kvs, err)
	}
}

// A batch whose append to the log failed was refused (ErrUnavailable): it
// must not come back after a crash, as it does not after a clean Close.
// A failed fdatasync leaves the whole frame in the file, readable by the
// next Open.
func TestRefusedWriteDoesNotComeBackAfterACrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openT(t, path, time.Hour, nil)
	ctx := context.Background()
	i, err := s.Txn(ctx, []atlas.Op{{Key: "a", Value: []byte("1")}})
	if err != nil {
		t.Fatal(err)
	}
	failed := false
	syncLog = func(f *os.File) error {
		if !failed {
			failed = true
			return errors.New("input/output error")
		}
		return fdatasync(f)
	}
	t.Cleanup(func() { syncLog = fdatasync })
	// A conditional write: the caller, told it failed, may try it again.
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "b", Value: []byte("2"), IfIndex: atlas.IfIndex(0)}}); !errors.Is(err, atlas.ErrUnavailable) {
		t.Fatalf("write whose fdatasync failed: %v; want ErrUnavailable", err)
	}
	s.crash()
	syncLog = fdatasync
	reopen(t, path, afterCrash(i), map[string]string{"a": "1"})
}

// A crash during the last append can leave its frame reading as zeros from
// its start: the file's size was written, and maybe later pages of the
// frame, but not the page it starts in. That frame was never acknowledged:
// Open drops it and keeps everything before it, rather than refuse the log
// or take zeros for frames.
func TestZeroFilledTailIsDropped(t *testing.T) {
	for _, zeros := range []int{4, 5, 8, 12, 100, -1} {
		name := fmt.Sprintf("first %d bytes zero", zeros)
		if zeros < 0 {
			name = "all zero"
		}
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atlas.db")
			s := openT(t, path, time.Hour, nil)
			want := writeSome(t, s)
			index, _ := snapshotOf(t, s)
			s.crash()
			segs := logSegments(t, path)
			payload := appendChanges(nil, []atlas.Change{{Index: index + 1, KVs: []atlas.ChangedKV{{KV: atlas.KV{Key: "e", Value: bytes.Repeat([]byte("5"), 200)}}}}})
			frame := binary.LittleEndian.AppendUint32(nil, uint32(len(payload)))
			frame = binary.LittleEndian.AppendUint32(frame, crc32.Checksum(payload, castagnoli))
			frame = append(frame, payload...)
			if zeros < 0 {
				zeros = len(frame)
			}
			clear(frame[:zeros])
			f, err := os.OpenFile(segs[len(segs)-1], os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(frame)
			f.Close()

			if _, log := reopen(t, path, afterCrash(index), want); !strings.Contains(log, "incomplete write") {
				t.Fatalf("the dropped bytes were not logged: %s", log)
			}
		})
	}
}
