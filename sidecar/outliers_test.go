package sidecar

import (
	"math/rand/v2"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

// reportCounts replays HAProxy's counts in a random order: a run of
// EjectAfter failures ejects, also across looks with no answer between;
// fewer failures than that between answers never do; failures among
// answers eject about as soon as where each request is seen (at half of
// them failing, within about 62 results on average), and rare ones do not.
func TestReportCounts(t *testing.T) {
	for _, tt := range []struct {
		looks [][2]uint64 // answered, failed
		eject bool
	}{
		{[][2]uint64{{0, 5}}, true},
		{[][2]uint64{{0, 4}}, false},
		{[][2]uint64{{0, 2}, {0, 3}}, true},
		{[][2]uint64{{1, 3}}, false},
		{[][2]uint64{{4, 4}, {4, 4}, {4, 4}}, false},
		{[][2]uint64{{10, 0}}, false},
		{[][2]uint64{{500, 500}}, true},
		{[][2]uint64{{50_000, 50_000}}, true}, // scaled down to 10,000
		{[][2]uint64{{1000, 5}, {1000, 5}, {1000, 5}}, false},
	} {
		p := balance.NewPool("a", "dev")
		p.Update([]*sb.Instance{
			{ID: "x", Address: "127.0.0.1", Port: 1, Status: sb.Passing, Enabled: true},
			{ID: "y", Address: "127.0.0.1", Port: 2, Status: sb.Passing, Enabled: true},
		}, 1)
		e := p.Endpoints()[0]
		r := rand.New(rand.NewPCG(1, 2))
		for _, l := range tt.looks {
			reportCounts(p, e, l[0], l[1], r)
		}
		if ej, _ := e.Ejected(time.Now()); ej != tt.eject {
			t.Errorf("looks %v: ejected %v; want %v", tt.looks, ej, tt.eject)
		}
	}
}
