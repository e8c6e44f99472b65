package proxy

import (
	"reflect"
	"strings"
	"testing"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

func TestSweepDropsPoolsNoCallAskedFor(t *testing.T) {
	started := map[string]int{}
	stopped := map[string]int{}
	tab := &Table{Realm: "dev", OnNew: func(pool *balance.Pool) func() {
		started[pool.Service]++
		return func() { stopped[pool.Service]++ }
	}}
	tab.Get("a")
	tab.Pin("b")
	tab.RouteBytes([]byte("c"))
	if got := tab.Sweep(); len(got) != 0 {
		t.Fatalf("first sweep dropped %v; want nothing (each was asked for since)", got)
	}
	tab.RouteBytes([]byte("a"))
	if got := tab.Sweep(); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("second sweep dropped %v; want [c] (a was asked for, b is pinned)", got)
	}
	if stopped["c"] != 1 || tab.Lookup("c") != nil {
		t.Fatalf("c: stopped %d times, still in the table: %v", stopped["c"], tab.Lookup("c") != nil)
	}
	if got := tab.Sweep(); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("third sweep dropped %v; want [a]", got)
	}
	for range 3 {
		if got := tab.Sweep(); len(got) != 0 {
			t.Fatalf("a pinned pool was dropped: %v", got)
		}
	}
	// Asked for again, a dropped service is followed again.
	tab.Get("c")
	if started["c"] != 2 || tab.Lookup("c") == nil {
		t.Fatalf("c asked for again: started %d times; want 2", started["c"])
	}
	// Pinning a pool that exists keeps it from then on.
	tab.Pin("c")
	tab.Sweep()
	if got := tab.Sweep(); len(got) != 0 || tab.Lookup("c") == nil {
		t.Fatalf("c, pinned after its creation, was dropped: %v", got)
	}
}

// At MaxPools a new name takes the place of a pool Atlas says is empty,
// or else of one no call asked for since the last sweep; when every pool
// is in use it is refused (503), and pinned pools never count.
func TestMaxPoolsBoundsTheNamesFollowed(t *testing.T) {
	stopped := map[string]int{}
	tab := &Table{Realm: "dev", MaxPools: 2, OnNew: func(pool *balance.Pool) func() {
		return func() { stopped[pool.Service]++ }
	}}
	tab.Pin("pinned")
	route := func(name string) error {
		_, err := tab.Route(name)
		return err
	}
	live := []*sb.Instance{{ID: "x-1", Address: "127.0.0.1", Port: 5001, Status: sb.Passing, Enabled: true}}
	for _, name := range []string{"a", "b"} {
		if err := route(name); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		tab.Lookup(name).Update(live, 1)
	}
	err := route("c")
	if sb.ErrorCode(err) != sb.EUnavailable || !strings.Contains(sb.ErrorMessage(err), "the most it will") {
		t.Fatalf("a third name with two pools in use: %v; want unavailable, too many services", err)
	}
	// b turns out empty: c takes its place.
	tab.Lookup("b").Update(nil, 2)
	if err := route("c"); err != nil || tab.Lookup("b") != nil || stopped["b"] != 1 {
		t.Fatalf("c with b empty: %v; b still there: %v, stopped %d times", err, tab.Lookup("b") != nil, stopped["b"])
	}
	// A pool asked for since the sweep is kept; one that was not makes room.
	tab.Lookup("c").Update(live, 3)
	tab.Sweep()
	route("a")
	if err := route("d"); err != nil || tab.Lookup("c") != nil || tab.Lookup("a") == nil {
		t.Fatalf("d with c unused since the sweep: %v; c there: %v, a there: %v", err, tab.Lookup("c") != nil, tab.Lookup("a") != nil)
	}
	if tab.Lookup("pinned") == nil {
		t.Fatal("the pinned pool was dropped")
	}
	// A service Atlas denies makes room; one Keep keeps does not.
	tab.Lookup("a").Deny(sb.Errorf(sb.EPermissionDenied, "no policy"))
	tab.Keep = func(service string) bool { return service == "d" }
	tab.Sweep()
	if err := route("e"); err != nil || tab.Lookup("a") != nil || tab.Lookup("d") == nil {
		t.Fatalf("e with a denied and d kept: %v; a there: %v, d there: %v", err, tab.Lookup("a") != nil, tab.Lookup("d") != nil)
	}
	if err := route("f"); err == nil {
		t.Fatal("f with e in use and d kept: routed; want it refused")
	}
}
