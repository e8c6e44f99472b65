package proxy

import (
	"reflect"
	"testing"

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
	tab.GetBytes([]byte("c"))
	if got := tab.Sweep(nil); len(got) != 0 {
		t.Fatalf("first sweep dropped %v; want nothing (each was asked for since)", got)
	}
	tab.GetBytes([]byte("a"))
	if got := tab.Sweep(nil); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("second sweep dropped %v; want [c] (a was asked for, b is pinned)", got)
	}
	if stopped["c"] != 1 || tab.Lookup("c") != nil {
		t.Fatalf("c: stopped %d times, still in the table: %v", stopped["c"], tab.Lookup("c") != nil)
	}
	if got := tab.Sweep(nil); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("third sweep dropped %v; want [a]", got)
	}
	for range 3 {
		if got := tab.Sweep(nil); len(got) != 0 {
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
	tab.Sweep(nil)
	if got := tab.Sweep(nil); len(got) != 0 || tab.Lookup("c") == nil {
		t.Fatalf("c, pinned after its creation, was dropped: %v", got)
	}
}
