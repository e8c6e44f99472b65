package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestKillNineLosesNoAcknowledgedWrite: writers register instances and
// write config layers while Atlas is killed with SIGKILL; after a restart
// on the same data every write that was answered 200 is there.
func TestKillNineLosesNoAcknowledgedWrite(t *testing.T) {
	dir := t.TempDir()
	a := startAtlas(t, dir, "--insecure")
	var (
		mu      sync.Mutex
		acked   []string // instance ids answered 200
		layers  = map[string]int{}
		lastIdx uint64
	)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100000 && ctx.Err() == nil; n++ {
				id := fmt.Sprintf("svc%d-h-%d", w, n)
				body := fmt.Sprintf(`{"service":"svc%d","address":"127.0.0.1","port":%d,"ttl":"1h"}`, w, 1000+n%60000)
				status, _, err := call(ctx, "PUT", a.url+"/v1/instances/"+id, body)
				if err != nil {
					return // Atlas is gone
				}
				if status != 200 {
					t.Errorf("register %s = %d", id, status)
					return
				}
				layer := fmt.Sprintf(`{"writer":%d,"n":%d}`, w, n)
				status, _, err = call(ctx, "PUT", fmt.Sprintf("%s/v1/config/layer?service=svc%d", a.url, w), layer)
				mu.Lock()
				acked = append(acked, id)
				if err == nil && status == 200 {
					layers[fmt.Sprintf("svc%d", w)] = n
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	// Kill once a good number of writes have been acknowledged.
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 400 {
			break
		}
		select {
		case <-a.done:
			t.Fatalf("atlas died on its own: %v\n%s", a.err, a.log())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, body, err := call(ctx, "GET", a.url+"/v1/services", ""); err == nil {
		var list struct{ Index uint64 }
		_ = json.Unmarshal(body, &list)
		lastIdx = list.Index
	}
	a.kill()
	wg.Wait()

	b := startAtlas(t, dir, "--insecure")
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d registrations acknowledged before SIGKILL", len(acked))
	for _, id := range acked {
		status, body, err := call(ctx, "GET", b.url+"/v1/instances/"+id, "")
		if err != nil || status != 200 {
			t.Fatalf("acknowledged instance %s after restart: %d %s %v", id, status, body, err)
		}
	}
	for svc, n := range layers {
		status, body, err := call(ctx, "GET", b.url+"/v1/config/layer?service="+svc, "")
		if err != nil || status != 200 {
			t.Fatalf("layer of %s after restart: %d %s %v", svc, status, body, err)
		}
		var l struct{ Config struct{ N int } }
		if err := json.Unmarshal(body, &l); err != nil {
			t.Fatal(err)
		}
		if l.Config.N < n {
			t.Fatalf("layer of %s went back to write %d; write %d was acknowledged", svc, l.Config.N, n)
		}
	}
	_, body, err := call(ctx, "GET", b.url+"/v1/services", "")
	if err != nil {
		t.Fatal(err)
	}
	var list struct{ Index uint64 }
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	if list.Index < lastIdx {
		t.Fatalf("index went backwards across the crash: %d -> %d", lastIdx, list.Index)
	}
	if err := b.stop(); err != nil {
		t.Fatalf("atlas did not exit 0 on SIGTERM: %v\n%s", err, b.log())
	}
}

// TestAtlasRestartKeepsInstances: an instance with a short lease is still
// there right after a restart (one TTL from the restart), and expires after.
func TestAtlasRestartKeepsInstances(t *testing.T) {
	dir := t.TempDir()
	a := startAtlas(t, dir, "--insecure")
	ctx := context.Background()
	if status, body, err := call(ctx, "PUT", a.url+"/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":5000,"ttl":"3s"}`); err != nil || status != 200 {
		t.Fatalf("register: %d %s %v", status, body, err)
	}
	a.kill()
	time.Sleep(4 * time.Second) // longer than the TTL, while Atlas is down
	b := startAtlas(t, dir, "--insecure")
	status, body, err := call(ctx, "GET", b.url+"/v1/instances/a-1", "")
	if err != nil || status != 200 {
		t.Fatalf("instance right after restart: %d %s %v; want it kept for one TTL", status, body, err)
	}
	// And it expires one TTL later: a blocking query sees it go.
	_, body, _ = call(ctx, "GET", b.url+"/v1/services/a", "")
	var si struct {
		Index     uint64
		Instances []json.RawMessage
	}
	_ = json.Unmarshal(body, &si)
	_, body, err = call(ctx, "GET", b.url+"/v1/services/a?wait=8s&index="+strconv.FormatUint(si.Index, 10), "")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(body, &si)
	if len(si.Instances) != 0 {
		t.Fatalf("instance still there a TTL after the restart: %s", body)
	}
}

// TestAtlasStoppedKeepsInstances: an Atlas that does not run for longer
// than a TTL (SIGSTOP here; a frozen VM, a host overloaded) expired every
// instance whose heartbeat did not get in first once it ran again, while no
// heartbeat could arrive meanwhile. Each instance now gets one TTL from
// then, as after a restart, and expires after it.
func TestAtlasStoppedKeepsInstances(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	ctx := context.Background()
	if status, body, err := call(ctx, "PUT", a.url+"/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":5000,"ttl":"2s"}`); err != nil || status != 200 {
		t.Fatalf("register: %d %s %v", status, body, err)
	}
	_, body, _ := call(ctx, "GET", a.url+"/v1/services/a", "")
	var si struct {
		Index     uint64
		Instances []json.RawMessage
	}
	if err := json.Unmarshal(body, &si); err != nil || len(si.Instances) != 1 {
		t.Fatalf("service a: %s %v", body, err)
	}
	index := strconv.FormatUint(si.Index, 10)
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // twice the TTL
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Without the grace, the first sweep after (every 100 ms) deletes it,
	// and this query answers at once.
	_, body, err := call(ctx, "GET", a.url+"/v1/services/a?wait=1s&index="+index, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &si); err != nil || len(si.Instances) != 1 {
		t.Fatalf("after Atlas was stopped for twice the TTL: %s %v; want the instance kept", body, err)
	}
	if !strings.Contains(a.log(), "did not run for a while") {
		t.Errorf("Atlas's log does not say it kept the leases:\n%s", a.log())
	}
	_, body, err = call(ctx, "GET", a.url+"/v1/services/a?wait=8s&index="+index, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &si); err != nil || len(si.Instances) != 0 {
		t.Fatalf("instance still there a TTL after Atlas ran again: %s %v", body, err)
	}
}
