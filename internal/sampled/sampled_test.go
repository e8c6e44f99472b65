package sampled

import (
	"testing"
	"time"
)

func TestLog(t *testing.T) {
	var l Log
	t0 := time.Now()
	if ok, n := l.Allow(t0); !ok || n != 0 {
		t.Fatalf("first line: %v %d; want logged", ok, n)
	}
	for i := range 5 {
		if ok, _ := l.Allow(t0.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("line %d within %s of the last was logged", i, Every)
		}
	}
	if ok, n := l.Allow(t0.Add(Every)); !ok || n != 5 {
		t.Fatalf("after %s: %v %d; want logged, saying 5 were not", Every, ok, n)
	}
}
