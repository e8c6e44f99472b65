package atlas

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestRenderCacheSharesOneRenderAndIsBounded(t *testing.T) {
	var c renderCache
	// Many callers of one key at one index: one render.
	var (
		renders int
		mu      sync.Mutex
		wg      sync.WaitGroup
		start   = make(chan struct{})
	)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c.get("k", 1, func() []byte {
				mu.Lock()
				renders++
				mu.Unlock()
				return []byte("body")
			})
		}()
	}
	close(start)
	wg.Wait()
	if renders != 1 {
		t.Fatalf("50 callers of one key at one index rendered %d times; want 1", renders)
	}
	if got := string(c.get("k", 1, func() []byte { t.Fatal("rendered again at the same index"); return nil })); got != "body" {
		t.Fatalf("cached body = %q", got)
	}
	// A new index replaces the body, and the count follows.
	c.get("k", 2, func() []byte { return []byte("longer body") })
	if c.bytes != len("longer body") {
		t.Fatalf("bytes = %d after a replacement; want %d", c.bytes, len("longer body"))
	}
	// Large bodies: the cache never holds much more than maxCacheBytes.
	big := strings.Repeat("x", 1<<20)
	for i := range 64 {
		c.get(fmt.Sprint("big", i), 1, func() []byte { return []byte(big) })
		if c.bytes > maxCacheBytes+len(big) {
			t.Fatalf("after %d bodies of 1 MiB the cache holds %d bytes; want at most %d", i+1, c.bytes, maxCacheBytes+len(big))
		}
	}
	held := 0
	for _, e := range c.m {
		held += len(e.body)
	}
	if held != c.bytes {
		t.Fatalf("bytes = %d, but the bodies in the map hold %d", c.bytes, held)
	}
}
