package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// countSyncs counts the log's fdatasyncs until the test ends.
func countSyncs(t *testing.T) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	syncLog = func(f *os.File) error {
		n.Add(1)
		return fdatasync(f)
	}
	t.Cleanup(func() { syncLog = fdatasync })
	return &n
}

// openLater opens a store whose writes made to be synced later wait for
// syncDelay, and whose checkpoints wait for checkpoint.
func openLater(t *testing.T, path string, syncDelay, checkpoint time.Duration) *Store {
	t.Helper()
	s, err := Open(Config{Path: path, SyncDelay: syncDelay, CheckpointInterval: checkpoint, SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor polls until cond holds, and fails the test if it does not
// within a minute: a hang, not a slow machine.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after a minute, still not: %s", what)
		}
	}
}

func put(t *testing.T, s *Store, key, value string, later bool) uint64 {
	t.Helper()
	i, err := s.Txn(context.Background(), []atlas.Op{{Key: key, Value: []byte(value), TTL: time.Hour, SyncLater: later}})
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// Writes whose ops all set SyncLater are answered without an fdatasync;
// any other write syncs them, then itself. No more than maxUnsynced
// changes wait unsynced.
func TestSyncLaterWritesShareASync(t *testing.T) {
	syncs := countSyncs(t)
	s := openLater(t, filepath.Join(t.TempDir(), "atlas.db"), time.Hour, time.Hour)
	defer s.Close()
	ctx := context.Background()

	for i := range 5 {
		put(t, s, "i/a", strings.Repeat("x", i+1), true)
	}
	if n := syncs.Load(); n != 0 {
		t.Fatalf("5 writes made to be synced later: %d syncs; want none", n)
	}
	put(t, s, "c//", "{}", false)
	if n := syncs.Load(); n != 2 {
		t.Fatalf("a write to be synced at once after them: %d syncs; want 2 (theirs, then its own)", n)
	}
	// One op that must be synced makes the whole write synced.
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "i/b", Value: []byte("1"), TTL: time.Hour, SyncLater: true}, {Key: "e/b", Value: []byte("{}")}}); err != nil {
		t.Fatal(err)
	}
	if n := syncs.Load(); n != 3 {
		t.Fatalf("a write with one op to be synced at once: %d syncs in all; want 3", n)
	}

	for i := range maxUnsynced {
		put(t, s, "i/a", strings.Repeat("y", i%7+1), true)
	}
	if n := syncs.Load(); n != 3 {
		t.Fatalf("%d writes made to be synced later: %d syncs in all; want still 3", maxUnsynced, n)
	}
	put(t, s, "i/a", "z", true)
	if n := syncs.Load(); n != 5 {
		t.Fatalf("write %d made to be synced later: %d syncs in all; want 5 (no more than %d wait)", maxUnsynced+1, n, maxUnsynced)
	}
}

// A write made to be synced later is synced SyncDelay after it, and
// before its segment is closed for a checkpoint, so that only the last
// segment can end in writes never synced.
func TestSyncLaterWritesAreSynced(t *testing.T) {
	t.Run("after SyncDelay", func(t *testing.T) {
		syncs := countSyncs(t)
		s := openLater(t, filepath.Join(t.TempDir(), "atlas.db"), 5*time.Millisecond, time.Hour)
		defer s.Close()
		put(t, s, "i/a", "1", true)
		waitFor(t, "the write synced", func() bool { return syncs.Load() > 0 })
	})
	t.Run("before a checkpoint", func(t *testing.T) {
		syncs := countSyncs(t)
		s := openLater(t, filepath.Join(t.TempDir(), "atlas.db"), time.Hour, 5*time.Millisecond)
		defer s.Close()
		put(t, s, "i/a", "1", true)
		waitFor(t, "a checkpoint", func() bool { return s.checkpoints.Load() > 0 })
		if n := syncs.Load(); n != 1 {
			t.Fatalf("a checkpoint of a segment with a write never synced: %d syncs before it; want 1", n)
		}
	})
}

// A crash of the machine may take back writes acknowledged unsynced:
// Open starts from the last frame synced at once, and moves the index on
// past any index those writes had, so that a blocking query at one of
// them is answered when the store next changes.
func TestMachineCrashTakesBackOnlyUnsyncedWrites(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(data []byte, synced int) []byte
	}{
		{"their pages never written", func(data []byte, synced int) []byte { return data[:synced] }},
		{"the file's size written, not their pages", func(data []byte, synced int) []byte {
			clear(data[synced:])
			return data
		}},
		{"a page of the first of them lost, the next whole", func(data []byte, synced int) []byte {
			data[synced+frameHeader+2] ^= 0xff
			return data
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "atlas.db")
			s := openLater(t, path, time.Hour, time.Hour)
			synced := put(t, s, "i/a", "1", false)
			size := int(s.seg.size) // the answer orders this read after the writer's
			put(t, s, "i/b", "2", true)
			last := put(t, s, "i/c", "3", true)
			s.crash()
			data, err := os.ReadFile(logSegments(t, path)[0])
			if err != nil {
				t.Fatal(err)
			}
			data = tc.damage(data, size)
			if err := os.WriteFile(logSegments(t, path)[0], data, 0o600); err != nil {
				t.Fatal(err)
			}

			_, log := reopen(t, path, afterCrash(synced), map[string]string{"i/a": "1"})
			if afterCrash(synced) <= last {
				t.Fatalf("after the crash the store is at %d, and its next write would repeat %d, an index answered before", afterCrash(synced), last)
			}
			if len(data) > size && !strings.Contains(log, "dropped") {
				t.Errorf("Open dropped the writes never synced without a word; log: %s", log)
			}
		})
	}
}

// A frame synced at once after damage means the damage is in writes that
// were synced: Open refuses the log rather than drop them.
func TestDamageBeforeASyncedFrameIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, time.Hour, time.Hour)
	put(t, s, "i/a", "1", false)
	size := int(s.seg.size)
	put(t, s, "i/b", "2", true)
	put(t, s, "c//", "{}", false)
	s.crash()
	alter(t, logSegments(t, path)[0], func(data []byte) { data[size+frameHeader+2] ^= 0xff })
	_, err := Open(Config{Path: path})
	if err == nil || !strings.Contains(err.Error(), "with a whole frame at byte") {
		t.Fatalf("Open of a log damaged before a frame synced at once: %v; want it refused", err)
	}
}

// A clean Close loses nothing: the index goes on from where it was.
func TestCleanCloseKeepsTheIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, time.Hour, time.Hour)
	last := put(t, s, "i/b", "2", true)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, path, time.Hour, nil)
	if i := put(t, s, "i/c", "3", true); i != last+1 {
		t.Fatalf("after a clean close the next write is %d; want %d", i, last+1)
	}
	// A crash after that moves it on.
	s.crash()
	reopen(t, path, afterCrash(last+1), map[string]string{"i/b": "2", "i/c": "3"})
}

// A frame synced at once is written only once the frames waiting for a
// sync are synced: a crash of the machine during its own fdatasync could
// otherwise leave it whole after one of them that is not, and Open would
// refuse a log in which nothing acknowledged was lost.
func TestSyncedFrameFollowsOnlySyncedFrames(t *testing.T) {
	var sizes []int64 // the segment's size at each fdatasync
	syncLog = func(f *os.File) error {
		if fi, err := f.Stat(); err == nil {
			sizes = append(sizes, fi.Size())
		}
		return fdatasync(f)
	}
	t.Cleanup(func() { syncLog = fdatasync })
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, time.Hour, time.Hour)
	put(t, s, "i/a", "1", true)
	put(t, s, "i/b", "2", true)
	waiting := s.seg.size
	put(t, s, "c//", "{}", false)
	s.crash()
	if len(sizes) != 2 || sizes[0] != waiting || sizes[1] <= waiting {
		t.Fatalf("fdatasyncs at segment sizes %v; want one at %d (the frames waiting), then one after the frame synced at once", sizes, waiting)
	}
}

// Frames synced after they were answered are not taken for an unsynced
// tail once a frame written after their sync follows them: damage in them
// is refused, not dropped with everything after it.
func TestDamageInFramesSyncedLaterIsRefused(t *testing.T) {
	syncs := countSyncs(t)
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, time.Millisecond, time.Hour)
	put(t, s, "i/a", "1", true)
	waitFor(t, "the timer's sync", func() bool { return syncs.Load() > 0 })
	put(t, s, "i/b", "2", true) // written when every frame before it was synced
	s.crash()
	alter(t, logSegments(t, path)[0], func(data []byte) { data[frameHeader+2] ^= 0xff })
	_, err := Open(Config{Path: path})
	if err == nil || !strings.Contains(err.Error(), "with a whole frame at byte") {
		t.Fatalf("Open of a log damaged in a frame synced later, with a frame written after that sync: %v; want it refused", err)
	}
}

// failSyncs makes the log's fdatasyncs fail while the returned flag is
// set, until the test ends.
func failSyncs(t *testing.T) *atomic.Bool {
	t.Helper()
	var failing atomic.Bool
	syncLog = func(f *os.File) error {
		if failing.Load() {
			return syscall.EIO
		}
		return fdatasync(f)
	}
	t.Cleanup(func() { syncLog = fdatasync })
	return &failing
}

// refuseAppends makes s's segment take no writes: its file is swapped for
// one open read-only. The answer to the write before orders this before
// the writer's next look at the segment.
func refuseAppends(t *testing.T, s *Store) {
	t.Helper()
	ro, err := os.Open(s.seg.path)
	if err != nil {
		t.Fatal(err)
	}
	rw := s.seg.f
	s.seg.f = ro
	t.Cleanup(func() { rw.Close() })
}

// While a deferred sync has failed, the store refuses writes and says so
// in Ping, and a later fdatasync that works does not end that (it may not
// have written what the failed one lost); the next rotation hands the
// segment over unsynced and makes no new one, so that a crash meanwhile
// leaves the log as one whose last segment ends in writes never synced.
func TestFailingSyncRefusesWritesUntilACheckpoint(t *testing.T) {
	failing := failSyncs(t)
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, time.Millisecond, time.Hour)
	ctx := context.Background()
	failing.Store(true)
	put(t, s, "i/a", "1", true) // answered before its sync, which fails
	waitFor(t, "Ping reporting the failed sync", func() bool { return s.Ping(ctx) != nil })
	failing.Store(false)
	for _, later := range []bool{true, false} {
		if _, err := s.Txn(ctx, []atlas.Op{{Key: "i/b", Value: []byte("2"), TTL: time.Hour, SyncLater: later}}); !errors.Is(err, atlas.ErrUnavailable) {
			t.Fatalf("a write (SyncLater %v) after a failed sync, before a checkpoint: %v; want it refused as unavailable", later, err)
		}
	}
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping with writes refused after a failed sync: nil; want the error")
	}
	s.crash()
	reopen(t, path, afterCrash(2), map[string]string{"i/a": "1"})
}

// After a failed sync, the checkpoint of its segment ends the refusal
// without a restart: also when an append had failed before it, and left
// the store failed and the segment torn (its cut failed) or not. The
// segment goes to the checkpointer as it is.
func TestFailedSyncIsCheckpointed(t *testing.T) {
	for _, cutFails := range []bool{false, true} {
		t.Run(fmt.Sprintf("cut fails %v", cutFails), func(t *testing.T) {
			failing := failSyncs(t)
			path := filepath.Join(t.TempDir(), "atlas.db")
			s := openLater(t, path, time.Hour, time.Hour)
			defer s.Close()
			ctx := context.Background()
			put(t, s, "i/a", "1", true) // waits for a sync

			// The next append fails: the segment's file takes no writes.
			refuseAppends(t, s)
			seg := s.seg.path
			truncateLog = func(_ *os.File, size int64) error {
				if cutFails {
					return syscall.EIO
				}
				return os.Truncate(seg, size)
			}
			t.Cleanup(func() { truncateLog = (*os.File).Truncate })
			if _, err := s.Txn(ctx, []atlas.Op{{Key: "i/b", Value: []byte("2"), TTL: time.Hour, SyncLater: true}}); !errors.Is(err, atlas.ErrUnavailable) {
				t.Fatalf("a write the log cannot take: %v; want it refused", err)
			}
			// A write synced at once syncs i/a first, which fails.
			failing.Store(true)
			if _, err := s.Txn(ctx, []atlas.Op{{Key: "c//", Value: []byte("{}")}}); !errors.Is(err, atlas.ErrUnavailable) {
				t.Fatalf("a write synced at once while syncs fail: %v; want it refused", err)
			}
			if err := s.Ping(ctx); err == nil {
				t.Fatal("Ping after the failed sync: nil; want the error")
			}
			failing.Store(false)
			waitFor(t, "writes taken again", func() bool {
				_, err := s.Txn(ctx, []atlas.Op{{Key: "c//", Value: []byte("{}")}})
				return err == nil
			})
			if err := s.Ping(ctx); err != nil {
				t.Fatalf("Ping once writes are taken again: %v", err)
			}
			if _, kvs, err := s.Snapshot(ctx); err != nil || len(kvs) != 2 {
				t.Fatalf("after the checkpoint: %d entries, %v; want i/a and c//", len(kvs), err)
			}
		})
	}
}

// An append that failed, and whose cut's fdatasync failed too, while a
// frame waited for its sync: that EIO may be the waiting frame's lost
// writeback, and Linux reports it once, so the next sync works. The store
// took writes again at once, and the frame's write counted as on disk. It
// refuses them now until a checkpoint has copied the waiting writes into
// the file from memory, as when their own sync fails.
func TestAFailedAppendWithWritesWaitingIsCheckpointed(t *testing.T) {
	failing := failSyncs(t)
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, time.Hour, 50*time.Millisecond)
	ctx := context.Background()
	put(t, s, "i/a", "1", true) // waits for a sync

	// The segment's file takes no writes, and the cut's sync fails.
	refuseAppends(t, s)
	failing.Store(true)
	if _, err := s.Txn(ctx, []atlas.Op{{Key: "i/b", Value: []byte("2"), SyncLater: true}}); !errors.Is(err, atlas.ErrUnavailable) {
		t.Fatalf("a write the log cannot take: %v; want it refused", err)
	}
	failing.Store(false)
	s.mu.Lock()
	syncFailed := s.syncFailed
	s.mu.Unlock()
	if syncFailed == nil {
		t.Fatal("the append failed with a write waiting for its sync, and the store goes on as if that write were on disk")
	}
	// The segment goes to the checkpointer as it is; a new one takes the
	// next writes.
	waitFor(t, "writes taken again after the checkpoint", func() bool {
		_, err := s.Txn(ctx, []atlas.Op{{Key: "i/c", Value: []byte("3")}})
		return err == nil
	})
	s.crash()
	// The crash keeps what the checkpoint put in the file, i/a with it.
	s2 := openT(t, path, time.Hour, nil)
	t.Cleanup(func() { s2.Close() })
	if _, got := snapshotOf(t, s2); got["i/a"] != "1" || got["i/c"] != "3" {
		t.Fatalf("after a crash: %v; want i/a and i/c", got)
	}
}

// Zeros from any byte of the frames never synced on (a crash that kept
// the file's size and lost its last pages, wherever a page boundary falls)
// read as those frames lost, never as damage.
func TestZerosFromAnyByteOfUnsyncedFramesAreDropped(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s := openLater(t, path, time.Hour, time.Hour)
	synced := put(t, s, "i/a", "1", false)
	size := int(s.seg.size)
	put(t, s, "i/b", "2", true)
	put(t, s, "i/c", strings.Repeat("3", 300), true)
	put(t, s, "i/d", "4", true)
	s.crash()
	seg := logSegments(t, path)[0]
	log, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	for at := size; at < len(log); at++ {
		data := slices.Clone(log)
		clear(data[at:])
		cs, _, err := readSegment(writeTemp(t, data))
		if err != nil {
			t.Fatalf("zeros from byte %d of %d (frames never synced from %d): %v", at, len(log), size, err)
		}
		if len(cs) == 0 || cs[0].Index != synced {
			t.Fatalf("zeros from byte %d: %d changes; want the synced one first", at, len(cs))
		}
	}
}

// writeTemp writes data to a new segment file and returns its path.
func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), segmentName(1))
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A key written (synced) in a segment, and written again (unsynced) after
// it before the segment's checkpoint ran: the checkpoint copied the writes
// up to its segment's end only, found none of the key's (pending holds its
// latest write), and removed the segment. A power loss that took the later
// write took the earlier, synced one with it: the key went back to what
// the file had (a deregistration or an address change undone). Every
// pending write is copied now.
func TestACheckpointKeepsTheWriteOnlyItsSegmentHad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "atlas.db")
	s, err := Open(Config{Path: path, SyncDelay: time.Hour, CheckpointInterval: time.Hour, SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	release := slowCheckpoints(t, s, func() {
		put(t, s, "i/k", "v1-synced", false) // seg2: synced, acknowledged
	})
	put(t, s, "i/k", "v2-later", true) // seg3, unsynced
	release()
	waitFor(t, "checkpoint 2 done", func() bool { return len(logSegments(t, path)) == 1 && len(s.ckpts) == 0 && s.checkpointed.Load() >= 4 })
	s.crash()
	// Power loss: the frame never synced is gone.
	segs := logSegments(t, path)
	t.Logf("segments left: %v", segs)
	if err := os.Truncate(segs[0], 0); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(Config{Path: path, SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	_, kvs, _ := s2.Snapshot(context.Background())
	got := "<absent>"
	for _, kv := range kvs {
		if kv.Key == "i/k" {
			got = string(kv.Value)
		}
	}
	if got != "v1-synced" && got != "v2-later" {
		t.Fatalf("i/k after power loss = %s; want v1-synced (acknowledged after fdatasync)", got)
	}
}

// slowCheckpoints holds the checkpointer in a checkpoint (a long bbolt
// write stands for a slow one) with a second queued behind it; in2 writes
// into the second's segment. release lets them run.
func slowCheckpoints(t *testing.T, s *Store, in2 func()) (release func()) {
	t.Helper()
	big := strings.Repeat("x", maxSegment)
	tx, err := s.db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "d", big, false) // seg1 full: rotation, checkpoint 1 starts and blocks
	waitFor(t, "checkpoint 1 taken", func() bool { return len(s.ckpts) == 0 })
	in2()
	put(t, s, "e", big, false) // seg2 full: checkpoint 2 queued
	waitFor(t, "checkpoint 2 queued", func() bool { return len(s.ckpts) == 1 })
	return func() { _ = tx.Rollback() }
}

// A deferred sync that fails while a checkpoint is queued: the queued
// checkpoint copies every pending write, the failed ones too, and records
// the index of the failure. The store took that for the failed segment's
// own checkpoint, never handed the segment over, and refused every write
// until it was restarted.
func TestAFailedSyncBehindAQueuedCheckpointIsRecovered(t *testing.T) {
	failing := failSyncs(t)
	path := filepath.Join(t.TempDir(), "atlas.db")
	s, err := Open(Config{Path: path, SyncDelay: 5 * time.Millisecond, CheckpointInterval: time.Hour, SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	release := slowCheckpoints(t, s, func() {})
	failing.Store(true)
	put(t, s, "i/k", "later", true) // its deferred sync fails
	waitFor(t, "Ping reporting the failed sync", func() bool { return s.Ping(ctx) != nil })
	failing.Store(false)
	s.mu.Lock()
	failedAt := s.syncFailedAt
	s.mu.Unlock()
	release()
	// Both checkpoints done, the second with the failed write in it,
	// before the writer next looks at the failure.
	waitFor(t, "the queued checkpoint done", func() bool { return len(s.ckpts) == 0 && s.checkpointed.Load() >= failedAt })
	waitFor(t, "writes taken again", func() bool {
		_, err := s.Txn(ctx, []atlas.Op{{Key: "i/m", Value: []byte("1")}})
		return err == nil
	})
	if _, got := snapshotOf(t, s); got["i/k"] != "later" {
		t.Fatalf("after the recovery: %v; want i/k", got)
	}
}
