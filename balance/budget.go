package balance

import (
	"sync"
	"time"
)

// Budget caps retries as Linkerd does: within any window of Window, the
// retries may not exceed Ratio of the requests plus MinPerSecond per
// second. The zero value is the SPEC's budget: 20% of requests + 10/s over
// 10 s.
type Budget struct {
	// Ratio of requests that may be retried. Zero means 0.2.
	Ratio float64
	// MinPerSecond retries are always allowed. Zero means 10.
	MinPerSecond float64
	// Window is how far back requests and retries count. Zero means 10s;
	// at most 60s.
	Window time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	// mu guards buckets.
	mu      sync.Mutex
	buckets [60]bucket
}

type bucket struct {
	sec               int64
	requests, retries float64
}

func (b *Budget) params() (ratio, perSec float64, secs int) {
	ratio, perSec, secs = b.Ratio, b.MinPerSecond, int(b.Window/time.Second)
	if ratio == 0 {
		ratio = 0.2
	}
	if perSec == 0 {
		perSec = 10
	}
	if secs <= 0 {
		secs = 10
	}
	return ratio, perSec, min(secs, len(b.buckets))
}

func (b *Budget) now() int64 {
	if b.Now != nil {
		return b.Now().Unix()
	}
	return time.Now().Unix()
}

// bucketLocked returns the bucket of second sec, cleared if it held an
// older second.
func (b *Budget) bucketLocked(sec int64) *bucket {
	bk := &b.buckets[sec%int64(len(b.buckets))]
	if bk.sec != sec {
		*bk = bucket{sec: sec}
	}
	return bk
}

// Request counts one request (not a retry).
func (b *Budget) Request() {
	sec := b.now()
	b.mu.Lock()
	b.bucketLocked(sec).requests++
	b.mu.Unlock()
}

// Retry reports whether one more retry fits the budget, and counts it if
// so.
func (b *Budget) Retry() bool {
	ratio, perSec, secs := b.params()
	sec := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	var requests, retries float64
	for i := range int64(secs) {
		bk := &b.buckets[(sec-i)%int64(len(b.buckets))]
		if bk.sec == sec-i {
			requests += bk.requests
			retries += bk.retries
		}
	}
	if retries+1 > ratio*requests+perSec*float64(secs) {
		return false
	}
	b.bucketLocked(sec).retries++
	return true
}
