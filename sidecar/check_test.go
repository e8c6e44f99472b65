package sidecar

import (
	"encoding/json"
	"strings"
	"testing"

	sb "github.com/switchboard-go/switchboard"
)

// FuzzHealthOutput: any body a local service answers a check with gives
// an output without panicking: "" for what is no Runscope healthcheck
// report, else one naming every checker, failures first (the 4 KiB Atlas
// keeps of an output starts with one).
func FuzzHealthOutput(f *testing.F) {
	f.Add([]byte(`{"hostname":"h","status":"failure","results":[{"checker":"db","output":"connection refused","passed":false},{"checker":"disk","output":{"free":"2G"},"passed":true}]}`))
	f.Add([]byte(`{"status":"success","results":[]}`))
	f.Add([]byte(`{"status":"success","results":[null,{"output":null},{"checker":"x","output":12}]}`))
	f.Add([]byte(`{"status":"","results":[{"checker":"a"}]}`))
	f.Add([]byte(`{"status":1}`))
	f.Add([]byte(`ok`))
	f.Fuzz(func(t *testing.T, body []byte) {
		out := healthOutput(body)
		var rep struct {
			Status  string `json:"status"`
			Results []struct {
				Checker string `json:"checker"`
				Passed  bool   `json:"passed"`
			} `json:"results"`
		}
		if json.Unmarshal(body, &rep) != nil || rep.Status == "" {
			if out != "" {
				t.Fatalf("healthOutput(%q) = %q; want \"\" for what is no report", body, out)
			}
			return
		}
		if out == "" {
			t.Fatalf("healthOutput(%q) = \"\"; want the report's output", body)
		}
		failed := false
		for _, r := range rep.Results {
			failed = failed || !r.Passed
			if !strings.Contains(out, r.Checker) {
				t.Fatalf("healthOutput(%q) = %q; want it to name checker %q", body, out, r.Checker)
			}
		}
		if failed && !strings.HasPrefix(out, "FAIL ") {
			t.Fatalf("healthOutput(%q) = %q; want a failure first", body, out)
		}
	})
}

// An instance whose check passes three times and fails three times, over
// and over, went in and out of rotation every three checks, for ever: a
// write to Atlas and an event to every sidecar each time, and calls sent to
// it half the time. Once it flaps it needs flapRise times rise good checks
// in a row, and so stays out until it is steady; then it comes back.
func TestAFlappingInstanceStaysOutUntilSteady(t *testing.T) {
	rf := riseFall{rise: 2, fall: 2, status: sb.Critical}
	cycle := []sb.Status{sb.Passing, sb.Passing, sb.Passing, sb.Critical, sb.Critical, sb.Critical}
	moves, last := 0, rf.status
	var inRotation []int
	for i := range 120 {
		st := rf.observe(cycle[i%len(cycle)])
		if st != last {
			moves++
			last = st
		}
		if st != sb.Critical {
			inRotation = append(inRotation, i)
		}
	}
	// Two moves a cycle without damping: 40 in 120 checks.
	if moves > flapLimit+1 {
		t.Fatalf("%d moves in and out of critical in 120 checks of a flapping instance; want it held out after %d", moves, flapLimit)
	}
	if n := len(inRotation); n == 0 || inRotation[n-1] > flapWindow {
		t.Fatalf("in rotation at checks %v; want the first few only", inRotation)
	}
	// Steady again: back after rise × flapRise good checks.
	for i := range rf.rise * flapRise {
		if st := rf.observe(sb.Passing); st != sb.Critical && i < rf.rise*flapRise-1 {
			t.Fatalf("back after %d good checks; want %d", i+1, rf.rise*flapRise)
		}
	}
	if rf.status != sb.Passing {
		t.Fatalf("after %d good checks in a row: %s; want passing", rf.rise*flapRise, rf.status)
	}
	// A single failure and recovery later is no flapping.
	for range flapWindow {
		rf.observe(sb.Passing)
	}
	rf.observe(sb.Critical)
	rf.observe(sb.Critical)
	rf.observe(sb.Passing)
	if st := rf.observe(sb.Passing); st != sb.Passing {
		t.Fatalf("after one failure, two good checks (rise 2) gave %s; want passing", st)
	}
}
