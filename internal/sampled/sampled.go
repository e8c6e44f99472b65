// Package sampled spaces out a log line that many callers may cause.
package sampled

import (
	"sync"
	"time"
)

// Every is the least time between two lines of a Log.
const Every = 10 * time.Second

// Log lets a line through at most once every Every, the next saying how
// many were not logged. Its zero value is ready.
type Log struct {
	mu      sync.Mutex
	next    time.Time
	skipped int
}

// Allow reports whether to log now, and how many were not logged since
// the last line.
func (l *Log) Allow(now time.Time) (ok bool, skipped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.skipped++
		return false, 0
	}
	l.next, skipped, l.skipped = now.Add(Every), l.skipped, 0
	return true, skipped
}
