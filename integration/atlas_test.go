package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestKillNineLosesNoAcknowledgedWrite: writers register instances (half
// of them as sidecars do, ?sync=later; the other half also write config
// layers) while Atlas is killed with SIGKILL; after a restart on the same
// data every write that was answered 200 is there.
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
				path := "/v1/instances/" + id
				if w%2 == 1 {
					// As a sidecar registers: answered before its
					// fdatasync, which a process killed loses nothing of.
					path += "?sync=later"
				}
				status, _, err := call(ctx, "PUT", a.url+path, body)
				if err != nil {
					return // Atlas is gone
				}
				if status != 200 {
					t.Errorf("register %s = %d", id, status)
					return
				}
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
				if w%2 == 1 {
					continue // registrations alone, synced later
				}
				layer := fmt.Sprintf(`{"writer":%d,"n":%d}`, w, n)
				status, _, err = call(ctx, "PUT", fmt.Sprintf("%s/v1/config/layer?service=svc%d", a.url, w), layer)
				if err != nil {
					return
				}
				if status == 200 {
					mu.Lock()
					layers[fmt.Sprintf("svc%d", w)] = n
					mu.Unlock()
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
	resumed := time.Now()
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
	// The instance shows the end its lease has now, not the one before.
	_, body, err = call(ctx, "GET", a.url+"/v1/instances/a-1", "")
	var in struct {
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err != nil || json.Unmarshal(body, &in) != nil || !in.ExpiresAt.After(resumed) {
		t.Fatalf("instance a-1 after the stop: %s %v; want it to expire after Atlas ran again (%s)", body, err, resumed.UTC().Format(time.RFC3339Nano))
	}
	_, body, err = call(ctx, "GET", a.url+"/v1/services/a?wait=8s&index="+index, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &si); err != nil || len(si.Instances) != 0 {
		t.Fatalf("instance still there a TTL after Atlas ran again: %s %v", body, err)
	}
}

// TestAtlasWritesAgainOnceDiskSpaceIsFreed: on a full disk Atlas refuses
// writes (503) and fails its health check; once space is freed it takes
// writes again without a restart, and a kill -9 after that loses none of
// the writes it acknowledged. The disk is a small tmpfs, which needs root.
func TestAtlasWritesAgainOnceDiskSpaceIsFreed(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("mounting a small tmpfs (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })
	dir := filepath.Join(mnt, "data")
	a := startAtlas(t, dir, "--insecure")
	ctx := context.Background()
	register := func(id string) (int, string) {
		status, body, err := call(ctx, "PUT", a.url+"/v1/instances/"+id, `{"service":"a","address":"127.0.0.1","port":5000,"ttl":"1h"}`)
		if err != nil {
			t.Fatal(err)
		}
		return status, string(body)
	}
	if status, body := register("a-1"); status != 200 {
		t.Fatalf("register: %d %s", status, body)
	}

	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			break // the disk is full
		}
	}
	f.Close()
	// The log's last page may have room for a few more.
	acked := []string{"a-1"}
	for i := 2; ; i++ {
		id := fmt.Sprintf("a-%d", i)
		status, body := register(id)
		if status == 200 {
			if acked = append(acked, id); len(acked) < 1000 {
				continue
			}
		}
		if status != 503 || !strings.Contains(body, `"unavailable"`) {
			t.Fatalf("register on a full disk: %d %s; want 503 unavailable", status, body)
		}
		break
	}
	healthIs := func(want int) {
		t.Helper()
		var status int
		for range 100 { // Atlas probes its store every second
			status, _, _ = call(ctx, "GET", a.url+"/v1/health", "")
			if status == want {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("/v1/health answers %d; want %d", status, want)
	}
	healthIs(503)
	// Memory is still the truth, and there is no replica to move to: an
	// event stream still opens (a sidecar restarted now gets its routes).
	sctx, cancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(sctx, "GET", a.url+"/v1/watch?service=a", nil)
	res, err := httpc.Do(req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("an event stream while the disk is full: %v %v; want 200", res, err)
	}
	cancel()
	res.Body.Close()

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if status, body := register("b-1"); status != 200 {
		t.Fatalf("register once space is freed: %d %s", status, body)
	}
	acked = append(acked, "b-1")
	healthIs(200)
	if n := strings.Count(a.log(), "writing the write-ahead log failed"); n != 1 {
		t.Errorf("the failure was logged %d times; want once:\n%s", n, a.log())
	}

	a.kill()
	a = startAtlas(t, dir, "--insecure")
	_, body, err := call(ctx, "GET", a.url+"/v1/services/a", "")
	if err != nil {
		t.Fatal(err)
	}
	var si struct{ Instances []struct{ ID string } }
	if err := json.Unmarshal(body, &si); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, in := range si.Instances {
		ids = append(ids, in.ID)
	}
	slices.Sort(ids)
	slices.Sort(acked)
	if !slices.Equal(ids, acked) {
		t.Fatalf("after kill -9 and a restart, service a has %v; want the acknowledged %v", ids, acked)
	}
}
