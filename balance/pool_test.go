package balance

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

func inst(id string, port int, st sb.Status, enabled bool) *sb.Instance {
	return &sb.Instance{ID: id, Address: "127.0.0.1", Port: port, Status: st, Enabled: enabled}
}

func TestPickPrefersPassingNeverCritical(t *testing.T) {
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{
		inst("p", 1, sb.Passing, true), inst("w", 2, sb.Warning, true),
		inst("c", 3, sb.Critical, true), inst("off", 4, sb.Passing, false),
	}, 1)
	for range 100 {
		if e := p.Pick(nil); e.ID != "p" {
			t.Fatalf("Pick = %s; want the only passing, enabled instance", e.ID)
		}
	}
	p.Update([]*sb.Instance{inst("w", 2, sb.Warning, true), inst("c", 3, sb.Critical, true)}, 2)
	if e := p.Pick(nil); e == nil || e.ID != "w" {
		t.Fatalf("with no passing instance Pick = %v; want the warning one", e)
	}
	p.Update([]*sb.Instance{inst("c", 3, sb.Critical, true), inst("off", 4, sb.Passing, false)}, 3)
	if e := p.Pick(nil); e != nil {
		t.Fatalf("Pick = %s; want none: critical and disabled get no traffic", e.ID)
	}
}

func TestPickBalancesOnInflight(t *testing.T) {
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{inst("x", 1, sb.Passing, true), inst("y", 2, sb.Passing, true)}, 1)
	x := p.Endpoints()[0]
	x.inflight.Store(10)
	for range 50 {
		if e := p.Pick(nil); e.ID != "y" {
			t.Fatalf("Pick = %s; want the idle instance", e.ID)
		}
	}
	if e := p.Pick([]*Endpoint{p.Endpoints()[1]}); e.ID != "x" {
		t.Fatalf("Pick excluding y = %s", e.ID)
	}
}

func TestUpdateKeepsLearntState(t *testing.T) {
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{inst("x", 1, sb.Passing, true)}, 1)
	x := p.Endpoints()[0]
	done := p.Acquire(x)
	p.Update([]*sb.Instance{inst("x", 1, sb.Warning, true), inst("y", 2, sb.Passing, true)}, 2)
	if p.Endpoints()[0] != x || x.Info().Status != sb.Warning || x.Inflight() != 1 {
		t.Fatalf("endpoint after update: same=%v status=%s inflight=%d", p.Endpoints()[0] == x, x.Info().Status, x.Inflight())
	}
	done(Answered)
	if x.Inflight() != 0 {
		t.Fatalf("inflight = %d after done", x.Inflight())
	}
	removed := p.Update([]*sb.Instance{inst("x", 9, sb.Passing, true)}, 3)
	if len(removed) != 2 || p.Endpoints()[0] == x {
		t.Fatalf("a moved instance is a new endpoint and the old one is removed: removed %d", len(removed))
	}
}

// The sidecar's restore created each pool, which starts its watch, and
// then wrote the saved routes into it: an answer from Atlas in between was
// replaced by the older routes until the service next changed. Seed takes
// saved routes only into a pool that has heard nothing yet, and lifts no
// denial.
func TestSeedNeverReplacesAnAnswer(t *testing.T) {
	saved := []*sb.Instance{inst("old", 1, sb.Passing, true)}
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{inst("new", 2, sb.Passing, true)}, 10)
	if p.Seed(saved, 5) || p.Endpoints()[0].ID != "new" || p.Index() != 10 {
		t.Fatalf("Seed after an answer: endpoints %s at index %d; want Atlas's answer kept", p.Endpoints()[0].ID, p.Index())
	}
	p = NewPool("a", "dev")
	if !p.Seed(saved, 5) || p.Endpoints()[0].ID != "old" {
		t.Fatal("Seed of a pool that heard nothing yet did not take the saved routes")
	}
	select {
	case <-p.Ready():
	default:
		t.Fatal("a seeded pool is not ready: calls would wait for Atlas")
	}
	p = NewPool("a", "dev")
	p.Deny(fmt.Errorf("no policy"))
	if p.Seed(saved, 5) || p.Denied() == nil {
		t.Fatal("Seed replaced a denial")
	}
}

func TestEjection(t *testing.T) {
	p := NewPool("a", "dev")
	var ids []*sb.Instance
	for i := range 4 {
		ids = append(ids, inst(fmt.Sprint("e", i), i+1, sb.Passing, true))
	}
	p.Update(ids, 1)
	eps := p.Endpoints()
	for range EjectAfter - 1 {
		p.Report(eps[0], Failed)
	}
	if ej, _ := eps[0].Ejected(time.Now()); ej {
		t.Fatal("ejected before 5 failures")
	}
	p.Report(eps[0], Failed)
	ej, until := eps[0].Ejected(time.Now())
	if !ej || time.Until(until) < 29*time.Second {
		t.Fatalf("after 5 failures: ejected=%v for %v; want 30s", ej, time.Until(until))
	}
	for range 100 {
		if p.Pick(nil) == eps[0] {
			t.Fatal("an ejected endpoint was picked")
		}
	}
	for range EjectAfter {
		p.Report(eps[1], Failed)
	}
	for range EjectAfter {
		p.Report(eps[2], Failed) // would be 3 of 4: refused
	}
	if ej, _ := eps[2].Ejected(time.Now()); ej {
		t.Fatal("more than half of the pool was ejected")
	}
	// A check that sees the instance down and up again ends its ejection.
	ids[0].Status = sb.Critical
	p.Update(ids, 2)
	ids[0].Status = sb.Passing
	p.Update(ids, 3)
	if ej, _ := eps[0].Ejected(time.Now()); ej {
		t.Fatal("an instance that recovered by its check stayed ejected")
	}
	// A success resets the count.
	for range EjectAfter - 1 {
		p.Report(eps[3], Failed)
	}
	p.Report(eps[3], Answered)
	p.Report(eps[3], Failed)
	if ej, _ := eps[3].Ejected(time.Now()); ej {
		t.Fatal("failures were not consecutive but ejected")
	}
}

// An ejection count decays while the instance stays in rotation: one
// ejection forgiven per EjectBase, as Envoy lowers its multiplier. It used
// to grow for good, so an instance ejected ten times in a bad hour was
// out for 300 s at every later hiccup.
func TestEjectionCountDecays(t *testing.T) {
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{inst("x", 1, sb.Passing, true), inst("y", 2, sb.Passing, true), inst("z", 3, sb.Passing, true)}, 1)
	e := p.Endpoints()[0]
	eject := func(now time.Time) time.Duration {
		t.Helper()
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.ejectLocked(e, now) {
			t.Fatal("not ejected")
		}
		_, until := e.Ejected(now)
		return until.Sub(now)
	}
	now := time.Unix(1e6, 0)
	for i := range MaxEjections + 2 { // each right as the last one ends
		want := time.Duration(min(i+1, MaxEjections)) * EjectBase
		if got := eject(now); got != want {
			t.Fatalf("ejection %d back to back: out for %v; want %v", i+1, got, want)
		}
		_, until := e.Ejected(now)
		now = until
	}
	// 90 s in rotation forgive three of the ten.
	if got, want := eject(now.Add(90*time.Second)), 8*EjectBase; got != want {
		t.Fatalf("after 90 s in rotation: out for %v; want %v", got, want)
	}
	_, until := e.Ejected(now.Add(90 * time.Second))
	// A day later it starts over.
	now = until.Add(24 * time.Hour)
	if got := eject(now); got != EjectBase {
		t.Fatalf("a day after its last ejection: out for %v; want %v", got, EjectBase)
	}
	// So does one whose check saw it down and up again.
	eject(now.Add(EjectBase))
	p.Update([]*sb.Instance{inst("x", 1, sb.Critical, true), inst("y", 2, sb.Passing, true), inst("z", 3, sb.Passing, true)}, 2)
	p.Update([]*sb.Instance{inst("x", 1, sb.Passing, true), inst("y", 2, sb.Passing, true), inst("z", 3, sb.Passing, true)}, 3)
	if got := eject(now.Add(EjectBase)); got != EjectBase {
		t.Fatalf("after its check saw it recover: out for %v; want %v", got, EjectBase)
	}
}

func TestBudget(t *testing.T) {
	now := time.Unix(1000, 0)
	b := &Budget{Now: func() time.Time { return now }}
	// With no traffic, 10/s over 10s: 100 retries.
	n := 0
	for b.Retry() {
		n++
	}
	if n != 100 {
		t.Fatalf("idle budget allowed %d retries; want 100", n)
	}
	now = now.Add(11 * time.Second)
	for range 1000 {
		b.Request()
	}
	n = 0
	for b.Retry() {
		n++
	}
	if n != 300 { // 20% of 1000 + 100
		t.Fatalf("budget after 1000 requests allowed %d retries; want 300", n)
	}
}

// Pick runs on every request through the sidecar: it allocates nothing.
func TestPickAllocatesNothing(t *testing.T) {
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{inst("x", 1, sb.Passing, true), inst("y", 2, sb.Passing, true), inst("z", 3, sb.Warning, true)}, 1)
	exclude := []*Endpoint{p.Endpoints()[0]}
	if n := testing.AllocsPerRun(100, func() {
		if p.Pick(nil) == nil || p.Pick(exclude) == nil {
			t.Fatal("no pick")
		}
	}); n != 0 {
		t.Fatalf("Pick allocates %v times per call; want 0", n)
	}
}

// When every candidate of the tier is ejected, one of them is picked
// anyway (ejection is a guess), and still before a warning instance.
func TestPickFallsBackToEjected(t *testing.T) {
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{inst("p1", 1, sb.Passing, true), inst("p2", 2, sb.Passing, true), inst("w", 3, sb.Warning, true)}, 1)
	eps := p.Endpoints()
	for range EjectAfter {
		p.Report(eps[0], Failed)
	}
	if ej, _ := eps[0].Ejected(time.Now()); !ej {
		t.Fatal("p1 not ejected")
	}
	for range 20 {
		if e := p.Pick([]*Endpoint{eps[1]}); e != eps[0] {
			t.Fatalf("Pick excluding p2 = %v; want the ejected p1", e)
		}
		if e := p.Pick(nil); e != eps[1] {
			t.Fatalf("Pick = %v; want p2, the passing one not ejected", e)
		}
	}
}

// TestEjectionNeverTakesMoreThanHalfConcurrently: two instances failing at
// the same moment (an outage of their shared dependency) must not both be
// ejected, nor one twice: the half limit holds under concurrent reports.
func TestEjectionNeverTakesMoreThanHalfConcurrently(t *testing.T) {
	for i := range 1000 {
		p := NewPool("a", "dev")
		var ejections atomic.Int32
		p.OnEject = func(string, string) { ejections.Add(1) }
		p.Update([]*sb.Instance{inst("x", 1, sb.Passing, true), inst("y", 2, sb.Passing, true)}, 1)
		eps := p.Endpoints()
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, e := range eps {
			for range 2 * EjectAfter {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					p.Report(e, Failed)
				}()
			}
		}
		close(start)
		wg.Wait()
		x, _ := eps[0].Ejected(time.Now())
		y, _ := eps[1].Ejected(time.Now())
		if n := ejections.Load(); (x && y) || n != 1 {
			t.Fatalf("round %d: x ejected %v, y ejected %v, %d ejections; want one of the two, once", i, x, y, n)
		}
	}
}

// TestPickDuringUpdates: Pick runs while updates change what it counts (a
// status that changes, an endpoint ejected); it must still return one of
// the candidates, never nil or a panic (which would take the sidecar down).
func TestPickDuringUpdates(t *testing.T) {
	p := NewPool("a", "dev")
	ids := []*sb.Instance{inst("x", 1, sb.Passing, true), inst("y", 2, sb.Passing, true), inst("z", 3, sb.Passing, true)}
	p.Update(ids, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := uint64(2); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ids[2].Status = []sb.Status{sb.Passing, sb.Warning}[i%2]
			p.Update([]*sb.Instance{ids[0], ids[1], {ID: "z", Address: "127.0.0.1", Port: 3, Status: ids[2].Status, Enabled: true}}, i)
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	for i := range 200_000 {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("Pick %d panicked: %v", i, r)
				}
			}()
			if e := p.Pick(nil); e == nil {
				t.Fatalf("Pick %d = nil with two passing instances", i)
			}
		}()
	}
}

// Choosable names the endpoints Pick chooses among: those of the first
// tier that has one (passing and not ejected, passing, warning and not
// ejected, warning), never critical or disabled ones.
func TestChoosable(t *testing.T) {
	names := func(eps []*Endpoint, ok func(*Endpoint) bool) string {
		var s string
		for _, e := range eps {
			if ok(e) {
				s += e.ID + " "
			}
		}
		return s
	}
	p := NewPool("a", "dev")
	p.Update([]*sb.Instance{
		inst("p1", 1, sb.Passing, true), inst("p2", 2, sb.Passing, true), inst("w1", 3, sb.Warning, true),
		inst("w2", 4, sb.Warning, true), inst("c", 5, sb.Critical, true), inst("off", 6, sb.Passing, false),
		inst("p3", 7, sb.Passing, true), inst("p4", 8, sb.Passing, true),
	}, 1)
	eps := p.Endpoints()
	eject := func(e *Endpoint) {
		for range EjectAfter {
			p.Report(e, Failed)
		}
		if ej, _ := e.Ejected(time.Now()); !ej {
			t.Fatalf("%s not ejected", e.ID)
		}
	}
	if got := names(eps, Choosable(eps, time.Now())); got != "p1 p2 p3 p4 " {
		t.Fatalf("Choosable: %q; want the passing ones", got)
	}
	eject(eps[0])
	if got := names(eps, Choosable(eps, time.Now())); got != "p2 p3 p4 " {
		t.Fatalf("with p1 ejected: %q; want the other passing ones", got)
	}
	eject(eps[1])
	eject(eps[6])
	eject(eps[7])
	if got := names(eps, Choosable(eps, time.Now())); got != "p1 p2 p3 p4 " {
		t.Fatalf("with every passing one ejected: %q; want them all, as Pick falls back to them", got)
	}
	p.Update([]*sb.Instance{inst("w1", 3, sb.Warning, true), inst("w2", 4, sb.Warning, true), inst("c", 5, sb.Critical, true)}, 2)
	eps = p.Endpoints()
	if got := names(eps, Choosable(eps, time.Now())); got != "w1 w2 " {
		t.Fatalf("with no passing one: %q; want the warning ones", got)
	}
	eps = eps[2:]
	if got := names(eps, Choosable(eps, time.Now())); got != "" {
		t.Fatalf("a critical one alone: %q; want none", got)
	}
}
