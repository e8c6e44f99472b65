package integration

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

// kitProc is the examples/identity service (the smart service kit) run as
// a process.
type kitProc struct {
	port int
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	out  *syncbuf.Buffer
}

var identityBinary string

func buildIdentity(t *testing.T) string {
	t.Helper()
	if identityBinary != "" {
		return identityBinary
	}
	out := filepath.Join(filepath.Dir(binary), "identity")
	build := exec.Command("go", "build", "-o", out, ".")
	build.Dir = "../examples/identity" // a module of its own, as switchboard new made it
	b, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("building examples/identity: %v\n%s", err, b)
	}
	identityBinary = out
	return out
}

func startKit(t *testing.T, atlasURL string, port int) *kitProc {
	t.Helper()
	k := &kitProc{port: port, done: make(chan struct{}), out: &syncbuf.Buffer{}}
	k.cmd = exec.Command(buildIdentity(t))
	k.cmd.Dir = t.TempDir()
	k.cmd.Env = append(os.Environ(),
		fmt.Sprintf("SWITCHBOARD_LISTEN=127.0.0.1:%d", port),
		"SWITCHBOARD_ATLAS="+atlasURL,
		fmt.Sprintf("SWITCHBOARD_INSTANCE=identity-itest-%d", port),
		"SWITCHBOARD_CONFIG_DRAIN_TIMEOUT=5s")
	k.cmd.Stdout, k.cmd.Stderr = k.out, k.out
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.err = k.cmd.Wait(); close(k.done) }()
	t.Cleanup(func() {
		select {
		case <-k.done:
		default:
			k.cmd.Process.Kill()
			<-k.done
		}
	})
	return k
}

// startKitOnAFreePort starts the identity kit service on a port found
// free, and waits until it answers there. The kit binds the port a moment
// after it was found free, and another test's socket may take it first:
// another port is tried then (5 at most).
func startKitOnAFreePort(t *testing.T, atlasURL string) *kitProc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		k := startKit(t, atlasURL, freePort(t))
		url := fmt.Sprintf("http://127.0.0.1:%d/livez", k.port)
		c := &http.Client{Timeout: time.Second} // a port taken by a server that does not answer
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			select {
			case <-k.done:
			default:
				if res, err := c.Get(url); err == nil {
					res.Body.Close()
					if res.StatusCode == http.StatusOK {
						return k
					}
				}
				continue
			}
			break
		}
		if attempt == 5 {
			t.Fatalf("identity did not start on 5 ports; the last said:\n%s", k.out.String())
		}
		t.Logf("identity did not start on port %d; trying another:\n%s", k.port, k.out.String())
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (k *kitProc) stop(t *testing.T) {
	t.Helper()
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.done:
		if k.err != nil {
			t.Fatalf("identity on %d exited with %v", k.port, k.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("identity on %d did not stop within 20s of SIGTERM", k.port)
	}
}

// TestKitServiceRestartedTwiceUnderLoad: two instances of a kit service
// behind a sidecar; each SIGTERM makes the instance fail readiness, wait
// for the sidecars to drop it, and drain; restarted twice, one instance at
// a time, under steady load: no request fails.
func TestKitServiceRestartedTwiceUnderLoad(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	kits := []*kitProc{startKitOnAFreePort(t, a.url), startKitOnAFreePort(t, a.url)}
	p1, p2 := kits[0].port, kits[1].port
	yaml := fmt.Sprintf(`atlas: %s
host: itest
advertise: 127.0.0.1
upstreams: [{name: identity}]
services:
  - {name: identity, port: %d, check: {http: /readyz, interval: 300ms, rise: 1, fall: 1}}
  - {name: identity, port: %d, check: {http: /readyz, interval: 300ms, rise: 1, fall: 1}}
`, a.url, p1, p2)
	s := startSidecar(t, yaml)
	waitFor(t, "both instances routable", 30*time.Second, func() bool { return len(s.routed("identity")) == 2 })
	l := startLoadPath(s, "identity", "/teams", 4)
	restarts := 0
	for round := range 2 {
		for i, k := range kits {
			k.stop(t)
			// It waited for the sidecars before draining: Atlas confirmed.
			if !strings.Contains(k.out.String(), `"msg":"service: out of rotation"`) {
				t.Fatalf("instance %d did not see itself out of rotation before stopping:\n%s", i, k.out.String())
			}
			kits[i] = startKit(t, a.url, k.port)
			restarts++
			waitFor(t, fmt.Sprintf("round %d: instance %d back", round, i), 30*time.Second, func() bool { return len(s.routed("identity")) == 2 })
		}
	}
	time.Sleep(300 * time.Millisecond)
	l.end()
	t.Logf("%d GETs through the sidecar during %d restarts (each instance twice), %d failed", l.ok.Load()+l.failed.Load(), restarts, l.failed.Load())
	if l.failed.Load() != 0 {
		t.Fatalf("%d GETs failed: %v", l.failed.Load(), l.errs)
	}
	if !strings.Contains(kits[0].out.String(), "listening") {
		t.Fatalf("identity log:\n%s", kits[0].out.String())
	}
}

// A kit service announced with a tcp check waited its whole drain_timeout
// at every stop: the sidecar never asks for readiness, so the instance
// stays passing until the port closes. The kit now sees that no check
// asked for readiness within the lease, says so, and stops without the
// wait.
func TestKitServiceWithATCPCheckDoesNotWaitForTheSidecars(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	k := startKitOnAFreePort(t, a.url)
	port := k.port
	s := startSidecar(t, fmt.Sprintf(`atlas: %s
host: itest
advertise: 127.0.0.1
upstreams: [{name: identity}]
services:
  - {name: identity, port: %d, check: {tcp: true, interval: 300ms, rise: 1, fall: 1}}
`, a.url, port))
	waitFor(t, "the instance routable", 30*time.Second, func() bool { return len(s.routed("identity")) == 1 })
	time.Sleep(1500 * time.Millisecond) // past the lease (1s), so the kit can tell
	k.stop(t)
	out := k.out.String()
	if !strings.Contains(out, "no check has asked for readiness within the lease") {
		t.Fatalf("the kit did not say that the sidecars cannot see it drain:\n%s", out)
	}
	if strings.Contains(out, "still in rotation at the end of the drain timeout") {
		t.Fatalf("the kit waited out its drain timeout for a change a tcp check never makes:\n%s", out)
	}
}
