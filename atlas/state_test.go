package atlas

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"

	sb "github.com/switchboard-go/switchboard"
)

func instanceKV(t *testing.T, in *sb.Instance, index uint64) ChangedKV {
	t.Helper()
	val, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	return ChangedKV{KV: KV{Key: pfxInstance + in.ID, Value: val, Index: index, TTL: time.Minute}}
}

// Changes applied together must each be indexed and recorded as if applied
// one by one: two writes to one service in one batch leave the service at
// the second's index, with a history entry for each.
func TestStateApplyBatch(t *testing.T) {
	st := newState()
	a := &sb.Instance{ID: "a", Service: "web", Realm: "dev", Address: "10.0.0.1", Port: 80, TTL: sb.Duration(time.Minute), Status: sb.Passing, Tags: []string{}}
	b := &sb.Instance{ID: "b", Service: "web", Realm: "dev", Address: "10.0.0.2", Port: 80, TTL: sb.Duration(time.Minute), Status: sb.Passing, Tags: []string{}}
	c := &sb.Instance{ID: "c", Service: "db", Realm: "dev", Address: "10.0.0.3", Port: 5432, TTL: sb.Duration(time.Minute), Status: sb.Passing, Tags: []string{}}
	waitWeb, _ := st.waitChan(svcKey("dev", "web"))
	waitDB, _ := st.waitChan(svcKey("dev", "db"))
	st.apply(
		Change{Index: 5, KVs: []ChangedKV{instanceKV(t, a, 5)}},
		Change{Index: 6, KVs: []ChangedKV{instanceKV(t, b, 6)}},
		Change{Index: 7, KVs: []ChangedKV{instanceKV(t, c, 7)}},
		Change{Index: 6, KVs: []ChangedKV{instanceKV(t, c, 6)}}, // already applied: ignored
	)
	for name, ch := range map[string]<-chan struct{}{"web": waitWeb, "db": waitDB} {
		select {
		case <-ch:
		default:
			t.Errorf("waiters of %s not woken", name)
		}
	}
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.applied != 7 {
		t.Errorf("applied = %d, want 7", st.applied)
	}
	if got := st.indexOfLocked(svcKey("dev", "web")); got != 6 {
		t.Errorf("index of web = %d, want 6", got)
	}
	if got := st.indexOfLocked(svcKey("dev", "db")); got != 7 {
		t.Errorf("index of db = %d, want 7", got)
	}
	if got := st.indexOfLocked(instKey("a")); got != 5 {
		t.Errorf("index of instance a = %d, want 5", got)
	}
	var web []uint64
	for _, e := range st.history {
		if e.svc.Value().service == "web" {
			web = append(web, e.index)
		}
	}
	if len(web) != 2 || web[0] != 5 || web[1] != 6 {
		t.Errorf("history of web = %v, want [5 6]", web)
	}
}

// A hint stands in for decoding only for exactly the value it was given
// with; any other value of the key is decoded.
func TestStateDecodeHint(t *testing.T) {
	st := newState()
	mine := &sb.Instance{ID: "a", Service: "web", Realm: "dev", Address: "10.0.0.1", Port: 80, TTL: sb.Duration(time.Minute), Status: sb.Passing, Tags: []string{"v1"}}
	kv := instanceKV(t, mine, 3)
	st.hint(kv.Key, kv.Value, mine)

	// Another writer's value for the same key got there first.
	theirs := *mine
	theirs.Address = "10.0.0.9"
	st.apply(Change{Index: 2, KVs: []ChangedKV{instanceKV(t, &theirs, 2)}})
	st.mu.RLock()
	got := st.instances["a"].address
	st.mu.RUnlock()
	if got != "10.0.0.9" {
		t.Fatalf("address = %q, want the applied value's 10.0.0.9", got)
	}

	// Then ours, which takes the hint; the record shares nothing the
	// writer could still change.
	st.apply(Change{Index: 3, KVs: []ChangedKV{kv}})
	st.mu.RLock()
	r := st.instances["a"]
	in := st.visibleLocked("a")
	st.mu.RUnlock()
	if r.address != "10.0.0.1" || r.index != 3 || !in.Enabled || in.ID != "a" || in.Tags[0] != "v1" {
		t.Fatalf("stored %+v at %d, want the hinted instance at 3", in, r.index)
	}
	if &r.tags[0] == &mine.Tags[0] {
		t.Error("record shares its tags with the hinted instance")
	}
	st.hmu.Lock()
	left := len(st.hints)
	st.hmu.Unlock()
	if left != 0 {
		t.Errorf("%d hints left after apply took it", left)
	}
	st.unhint(kv.Key, kv.Value) // after apply took it: nothing to do
}

// A record gives back every field it was stored with, and instances with
// equal tags and meta share one copy of them.
func TestStateRecordRoundTrip(t *testing.T) {
	st := newState()
	at := time.Date(2026, 11, 27, 19, 4, 5, 123456789, time.UTC)
	want := &sb.Instance{ID: "a", Service: "web", Realm: "prod", Address: "10.0.0.1", Port: 8080,
		Tags: []string{"v2", "canary"}, Meta: map[string]string{"version": "1.4.2"}, Status: sb.Warning,
		Output: "slow", TTL: sb.Duration(30 * time.Second), RegisteredAt: at, StatusChangedAt: at.Add(time.Second)}
	other := *want
	other.ID, other.Tags, other.Meta = "b", []string{"v2", "canary"}, map[string]string{"version": "1.4.2"}
	st.apply(Change{Index: 1, KVs: []ChangedKV{instanceKV(t, want, 1), instanceKV(t, &other, 1)}})
	st.switches["a"] = switchRecord{Reason: "deploy"}

	st.mu.RLock()
	got := st.visibleLocked("a")
	ra, rb := st.instances["a"], st.instances["b"]
	st.mu.RUnlock()
	exp := *want
	exp.DisabledReason = "deploy"
	if diff := cmp.Diff(&exp, got); diff != "" {
		t.Errorf("visible instance (-want +got):\n%s", diff)
	}
	if &ra.tags[0] != &rb.tags[0] {
		t.Error("equal tag lists are not shared")
	}
	if reflect.ValueOf(ra.meta).UnsafePointer() != reflect.ValueOf(rb.meta).UnsafePointer() {
		t.Error("equal meta maps are not shared")
	}
}

// Tag lists and meta maps are shared only when equal: no separator can
// make two different ones look alike.
func TestStateSharesOnlyEqualTagsAndMeta(t *testing.T) {
	st := newState()
	a := &sb.Instance{ID: "a", Service: "web", Realm: "dev", Address: "10.0.0.1", Port: 80, TTL: sb.Duration(time.Minute), Status: sb.Passing,
		Tags: []string{"x\x00y"}, Meta: map[string]string{"k": "\x00"}}
	b := &sb.Instance{ID: "b", Service: "web", Realm: "dev", Address: "10.0.0.1", Port: 80, TTL: sb.Duration(time.Minute), Status: sb.Passing,
		Tags: []string{"x", "y"}, Meta: map[string]string{"k\x00": ""}}
	st.apply(Change{Index: 1, KVs: []ChangedKV{instanceKV(t, a, 1), instanceKV(t, b, 1)}})
	st.mu.RLock()
	ga, gb := st.visibleLocked("a"), st.visibleLocked("b")
	st.mu.RUnlock()
	if !reflect.DeepEqual(ga.Tags, a.Tags) || !reflect.DeepEqual(gb.Tags, b.Tags) {
		t.Errorf("tags = %q and %q, want %q and %q", ga.Tags, gb.Tags, a.Tags, b.Tags)
	}
	if !reflect.DeepEqual(ga.Meta, a.Meta) || !reflect.DeepEqual(gb.Meta, b.Meta) {
		t.Errorf("meta = %q and %q, want %q and %q", ga.Meta, gb.Meta, a.Meta, b.Meta)
	}
}

// A reload from a snapshot keeps this server's lease bookkeeping (it is
// not in the store) for the instances the snapshot still has.
func TestStateReloadKeepsLeases(t *testing.T) {
	st := newState()
	in := &sb.Instance{ID: "a", Service: "web", Realm: "dev", Address: "10.0.0.1", Port: 80, TTL: sb.Duration(time.Minute), Status: sb.Passing}
	kv := instanceKV(t, in, 1)
	st.apply(Change{Index: 1, KVs: []ChangedKV{kv}})
	st.mu.Lock()
	st.instances["a"].lease.heartbeat = 42
	st.mu.Unlock()
	st.load(5, []KV{kv.KV})
	st.mu.RLock()
	defer st.mu.RUnlock()
	if r := st.instances["a"]; r == nil || r.lease == nil || r.lease.heartbeat != 42 {
		t.Fatalf("lease after reload = %+v, want the one from before", r)
	}
}

// A record fits the 128-byte size class and a history event takes 16
// bytes: at 10,000 instances each byte of a record is 10 kB of heap, and
// about twice that of RSS (bench/README.md, session 6).
func TestRecordSizes(t *testing.T) {
	if n := unsafe.Sizeof(instRecord{}); n > 128 {
		t.Errorf("instRecord is %d bytes, want 128 at most", n)
	}
	if n := unsafe.Sizeof(event{}); n > 16 {
		t.Errorf("event is %d bytes, want 16 at most", n)
	}
}

// An entry that is not a valid record (a damaged file, a hand edit of
// etcd) was left out silently, and a record already there stayed as if
// the store still held it; a registration of its id then conflicted with
// it forever. It is now reported, taken as gone, and its index kept for
// the write that replaces it.
func TestStateSetsDamagedEntriesAside(t *testing.T) {
	st := newState()
	var reported []string
	st.onDamaged = func(key, rule string) { reported = append(reported, key+": "+rule) }
	good := &sb.Instance{ID: "a", Service: "web", Realm: "dev", Address: "10.0.0.1", Port: 80, TTL: sb.Duration(time.Minute), Status: sb.Passing}
	st.load(1, []KV{instanceKV(t, good, 1).KV, {Key: pfxPort + "web", Value: []byte("70000"), Index: 1}})
	if len(reported) != 1 || !strings.Contains(reported[0], "p/web: port: must be 1-65535") {
		t.Fatalf("reported %q; want the port out of range", reported)
	}
	if st.ports["web"] != 0 || st.damagedIndex(pfxPort+"web") != 1 {
		t.Fatalf("port %d, damaged index %d; want no port and index 1", st.ports["web"], st.damagedIndex(pfxPort+"web"))
	}

	bad := *good
	bad.Port = 0
	st.apply(Change{Index: 2, KVs: []ChangedKV{instanceKV(t, &bad, 2)}})
	st.mu.RLock()
	_, kept := st.instances["a"]
	st.mu.RUnlock()
	if kept || st.damagedIndex(pfxInstance+"a") != 2 || !strings.Contains(reported[len(reported)-1], "i/a: port: required") {
		t.Fatalf("after a damaged write: instance kept %v, damaged index %d, reported %q", kept, st.damagedIndex(pfxInstance+"a"), reported)
	}
	st.apply(Change{Index: 3, KVs: []ChangedKV{instanceKV(t, good, 3)}})
	if st.damagedIndex(pfxInstance+"a") != 0 || st.instances["a"] == nil {
		t.Fatal("a valid write did not replace the damaged entry")
	}
}

// An event stream's subscription is told of every change of its keys from
// the moment it subscribes, once for changes it has not yet received, and
// of nothing after it cancels; it leaves nothing behind.
func TestSubscriptions(t *testing.T) {
	s := newState()
	ch, cancel := s.subscribe([]string{"s/dev/a", "s/dev/b"})
	told := func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	s.wake([]string{"s/dev/c"})
	if told() {
		t.Fatal("told of a change of a key it did not subscribe to")
	}
	s.wake([]string{"s/dev/b"})
	if !told() {
		t.Fatal("not told of a change of its key")
	}
	s.wake([]string{"s/dev/a"})
	s.wake([]string{"s/dev/b"})
	if !told() || told() {
		t.Fatal("two changes before it received: want it told once, then not again")
	}
	s.wakeAll()
	if !told() {
		t.Fatal("not told by a wake of every key")
	}
	cancel()
	s.wake([]string{"s/dev/a", "s/dev/b"})
	if told() {
		t.Fatal("told after it cancelled")
	}
	if len(s.subs) != 0 {
		t.Fatalf("cancelled, it left %d keys subscribed", len(s.subs))
	}
}
