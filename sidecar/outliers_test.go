package sidecar

import (
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/balance"
)

// reportCounts takes HAProxy's failures as spread evenly among its
// answers: a run of EjectAfter of them ejects, rare failures among many
// answers do not, and failures across looks with no answer between add up.
func TestReportCounts(t *testing.T) {
	for _, tt := range []struct {
		looks [][2]uint64 // answered, failed
		eject bool
	}{
		{[][2]uint64{{0, 5}}, true},
		{[][2]uint64{{0, 4}}, false},
		{[][2]uint64{{0, 2}, {0, 3}}, true},
		{[][2]uint64{{0, 2}, {1, 3}}, false}, // 3 after the answer: ceil(3/2) = 2
		{[][2]uint64{{100, 5}, {100, 5}, {100, 5}, {100, 5}, {100, 5}}, false},
		{[][2]uint64{{1, 9}}, true}, // ceil(9/2) = 5
		{[][2]uint64{{1, 8}}, false},
		{[][2]uint64{{10, 0}}, false},
	} {
		p := balance.NewPool("a", "dev")
		p.Update([]*sb.Instance{
			{ID: "x", Address: "127.0.0.1", Port: 1, Status: sb.Passing, Enabled: true},
			{ID: "y", Address: "127.0.0.1", Port: 2, Status: sb.Passing, Enabled: true},
		}, 1)
		e := p.Endpoints()[0]
		for _, l := range tt.looks {
			reportCounts(p, e, l[0], l[1])
		}
		if ej, _ := e.Ejected(time.Now()); ej != tt.eject {
			t.Errorf("looks %v: ejected %v; want %v", tt.looks, ej, tt.eject)
		}
	}
}
