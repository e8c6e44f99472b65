package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// freePort returns a loopback port nothing listens on now, and one it has
// not returned before in this run: the kernel may hand out a port again as
// soon as it is closed, and two calls of one test then got the same one
// (a sidecar.yaml listing one service twice on it).
func freePort(t *testing.T) int {
	t.Helper()
	handedMu.Lock()
	defer handedMu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !handed[port] {
			handed[port] = true
			return port
		}
	}
}

// handed holds the ports freePort returned.
var (
	handedMu sync.Mutex
	handed   = map[int]bool{}
)

// pyServer runs `python3 -m http.server PORT` in a directory that holds a
// file named after the instance, so that answers say who served them. It
// is a service not written in Go.
type pyServer struct {
	name string
	port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// startPy starts a python3 server named name on a free port. A port
// freePort returned can be taken before python3 binds it, by any process
// on the machine (go test runs packages side by side); then it tries
// another, rather than have the test wait on a server that is not there,
// or that is someone else's.
func startPy(t *testing.T, name string) *pyServer {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "who"), []byte(name), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &pyServer{name: name, dir: dir}
	for attempt := 1; ; attempt++ {
		p.port = freePort(t)
		err := p.run(t)
		if err == nil {
			return p
		}
		if attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("%v; trying another port", err)
	}
}

// tailBuffer keeps the last 8 KiB written to it: python3 logs every
// request it serves, and the load tests make hundreds of thousands.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 8<<10; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// start starts the server again on its port, after a kill.
func (p *pyServer) start(t *testing.T) {
	t.Helper()
	if err := p.run(t); err != nil {
		t.Fatal(err)
	}
}

// run starts python3 on p.port and waits until it answers GET /who with
// p.name: until it is this server that listens there.
func (p *pyServer) run(t *testing.T) error {
	p.cmd = exec.Command("python3", "-m", "http.server", fmt.Sprint(p.port), "--bind", "127.0.0.1", "--directory", p.dir)
	var stderr tailBuffer
	p.cmd.Stderr = &stderr
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("python3: %v", err)
	}
	p.done = make(chan struct{})
	cmd, done := p.cmd, p.done
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(p.kill)
	url := fmt.Sprintf("http://127.0.0.1:%d/who", p.port)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("python3 http.server on %d exited: %s", p.port, tail(stderr.String(), 5))
		default:
		}
		if res, err := httpc.Get(url); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if string(b) == p.name {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.kill()
	return fmt.Errorf("python3 http.server on %d did not answer GET /who with %q within 15s: %s", p.port, p.name, tail(stderr.String(), 5))
}

func (p *pyServer) kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Kill()
		<-p.done
	}
}

// sidecarProc runs `switchboard sidecar -c FILE`.
type sidecarProc struct {
	*proc
	listen, admin string
}

// startSidecar runs a sidecar on free ports. A port can be taken between
// freePort and the sidecar's bind, by any process on the machine; then it
// tries others.
func startSidecar(t *testing.T, yaml string) *sidecarProc {
	t.Helper()
	return startSidecarWith(t, func() string { return yaml })
}

// startSidecarWith is startSidecar with the file written anew for each try
// (one that names ports of its own, L4 listeners, takes fresh ones), and
// the command run through shell lines first (ulimit, say).
func startSidecarWith(t *testing.T, yamlFor func() string, shell ...string) *sidecarProc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		listen, admin := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
		s, err := launchSidecar(t, yamlFor(), listen, admin, shell...)
		if err == nil {
			return s
		}
		// HAProxy (haproxy mode) says "Address already in use".
		if attempt == 5 || !strings.Contains(strings.ToLower(s.log()), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("%v; trying other ports", err)
	}
}

// startSidecarAt is startSidecar on given listen and admin addresses (a
// restart on the same ones).
func startSidecarAt(t *testing.T, yaml, listen, admin string) *sidecarProc {
	t.Helper()
	s, err := launchSidecar(t, yaml, listen, admin)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// launchSidecar starts the sidecar and waits until it runs; the error says
// why it did not.
func launchSidecar(t *testing.T, yaml, listen, admin string, shell ...string) (*sidecarProc, error) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "sidecar.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "sidecar", "-c", file, "--listen", listen, "--admin", admin)
	if len(shell) > 0 {
		cmd = exec.Command("sh", append([]string{"-c", strings.Join(shell, "; ") + `; exec "$0" "$@"`}, cmd.Args...)...)
	}
	p := &proc{t: t, cmd: cmd, done: make(chan struct{})}
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	running, logged := make(chan struct{}, 1), make(chan struct{})
	go func() {
		defer close(logged)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), `"msg":"sidecar: running"`) {
				running <- struct{}{}
			}
		}
	}()
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	// SIGTERM first: a sidecar in haproxy mode stops its HAProxy on the way
	// out, which a SIGKILL would leave running.
	t.Cleanup(func() { p.stop() })
	s := &sidecarProc{proc: p, listen: listen, admin: admin}
	select {
	case <-running:
		// Printed if the test fails; a sidecar that did not start says
		// why in the error.
		p.logOnFailure("sidecar")
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("sidecar (pid %d) /routes: %s", p.cmd.Process.Pid, s.routes())
			}
		})
		return s, nil
	case <-p.done:
		select { // the rest of its log, unless a child holds the pipe
		case <-logged:
		case <-time.After(2 * time.Second):
		}
		return s, fmt.Errorf("sidecar exited: %v\n%s", p.err, p.log())
	case <-time.After(30 * time.Second):
		p.stop()
		return s, fmt.Errorf("sidecar did not start within 30s\n%s", p.log())
	}
}

// routes returns the sidecar's /routes as it printed it, or the error.
func (s *sidecarProc) routes() string {
	res, err := httpc.Get("http://" + s.admin + "/routes")
	if err != nil {
		return err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// get calls service through the sidecar and returns the status and body.
func (s *sidecarProc) get(service, path string) (int, string, error) {
	req, _ := http.NewRequest("GET", "http://"+s.listen+path, nil)
	req.Header.Set("Switchboard-Service", service)
	res, err := httpc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), nil
}

// routed returns the ids of the routable (enabled, passing, not ejected)
// instances of service in the sidecar's /routes.
func (s *sidecarProc) routed(service string) []string { return s.instances(service, false) }

// passing returns the ids of the instances Atlas says are passing, as the
// sidecar knows them, ejected or not.
func (s *sidecarProc) passing(service string) []string { return s.instances(service, true) }

func (s *sidecarProc) instances(service string, evenEjected bool) []string {
	res, err := httpc.Get("http://" + s.admin + "/routes")
	if err != nil {
		return nil
	}
	defer res.Body.Close()
	var r struct {
		Services []struct {
			Service   string
			Instances []struct {
				ID      string
				Status  string
				Enabled bool
				Ejected bool
			}
		}
	}
	json.NewDecoder(res.Body).Decode(&r)
	var ids []string
	for _, svc := range r.Services {
		if svc.Service != service {
			continue
		}
		for _, in := range svc.Instances {
			if in.Enabled && in.Status == "passing" && (evenEjected || !in.Ejected) {
				ids = append(ids, in.ID)
			}
		}
	}
	return ids
}

// metric returns the value of one sample of the sidecar's /metrics.
func (s *sidecarProc) metric(name string) string {
	res, err := httpc.Get("http://" + s.admin + "/metrics")
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			// Gauges print large integers in exponent form.
			var f float64
			fmt.Sscan(v, &f)
			return fmt.Sprint(uint64(f))
		}
	}
	return ""
}

func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s", what, limit)
	return 0
}

// load sends GETs through the sidecar from several goroutines until
// stopped, counting answers by body and failures.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	by         map[string]int
	errs       []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(s *sidecarProc, service string, workers int) *load {
	return startLoadPath(s, service, "/who", workers)
}

func startLoadPath(s *sidecarProc, service, path string, workers int) *load {
	l := &load{by: map[string]int{}, stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; n < 200000; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				status, body, err := s.get(service, path)
				if err != nil || status != 200 {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 10 {
						l.errs = append(l.errs, fmt.Sprintf("%d %q %v", status, body, err))
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
				l.mu.Lock()
				l.by[body]++
				l.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return l
}

func (l *load) end() {
	close(l.stop)
	l.wg.Wait()
}

func twoBackendYAML(atlasURL string, p1, p2 int, interval string) string {
	return fmt.Sprintf(`atlas: %s
host: itest
advertise: 127.0.0.1
drain_timeout: 3s
upstreams: [{name: files}]
services:
  - name: files
    port: %d
    check: {http: /who, interval: %s, timeout: 500ms, rise: 2, fall: 2}
  - name: files
    port: %d
    check: {http: /who, interval: %s, timeout: 500ms, rise: 2, fall: 2}
`, atlasURL, p1, interval, p2, interval)
}

// TestSidecarKillNineOfABackend: two python instances behind one sidecar;
// load spreads over both; kill -9 of one in the middle of a stream of GETs
// fails none of them, and the dead instance leaves the rotation.
func TestSidecarKillNineOfABackend(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	s := startSidecar(t, twoBackendYAML(a.url, p1.port, p2.port, "500ms"))
	waitFor(t, "both instances routable", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })

	l := startLoad(s, "files", 4)
	time.Sleep(time.Second)
	p1.kill()
	left := waitFor(t, "the dead instance leaves the rotation", 20*time.Second, func() bool { return len(s.routed("files")) == 1 })
	time.Sleep(500 * time.Millisecond)
	l.end()
	t.Logf("%d GETs, %d failed; split %v; dead instance out of rotation %s after kill -9 (check interval 500ms x fall 2; ejection may come first)",
		l.ok.Load()+l.failed.Load(), l.failed.Load(), l.by, left)
	if l.failed.Load() != 0 {
		t.Fatalf("%d GETs failed: %v", l.failed.Load(), l.errs)
	}
	if l.by["one"] == 0 || l.by["two"] == 0 {
		t.Fatalf("load did not spread over both instances: %v", l.by)
	}
}

// TestSidecarFailingCheckAndRecovery: an instance whose check fails leaves
// the rotation; when the check passes again it comes back.
func TestSidecarFailingCheckAndRecovery(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	s := startSidecar(t, twoBackendYAML(a.url, p1.port, p2.port, "300ms"))
	waitFor(t, "both instances routable", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
	// The check GETs /who: take the file away and it answers 404.
	os.Rename(filepath.Join(p1.dir, "who"), filepath.Join(p1.dir, "gone"))
	waitFor(t, "failing instance leaves", 20*time.Second, func() bool { return len(s.routed("files")) == 1 })
	for range 20 {
		if _, body, _ := s.get("files", "/who"); body != "two" {
			t.Fatalf("a call went to the failing instance: %q", body)
		}
	}
	os.Rename(filepath.Join(p1.dir, "gone"), filepath.Join(p1.dir, "who"))
	waitFor(t, "recovered instance comes back", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
}

// TestSidecarStaticStability: with Atlas killed the sidecar keeps routing;
// a sidecar restarted while Atlas is still down routes from its state_dir.
func TestSidecarStaticStability(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	state := t.TempDir()
	// Two upstreams: they share a stream, which must leave what the
	// state file restored in place while Atlas is down.
	yaml := fmt.Sprintf("atlas: %s\nstate_dir: %s\nupstreams: [{name: files}, {name: billing}]\n", a.url, state)
	// The instances are registered by hand, with a long lease.
	for i, p := range []*pyServer{p1, p2} {
		body := fmt.Sprintf(`{"service":"files","address":"127.0.0.1","port":%d,"ttl":"1h"}`, p.port)
		if st, b, err := call(context.Background(), "PUT", fmt.Sprintf("%s/v1/instances/files-%d", a.url, i), body); err != nil || st != 200 {
			t.Fatalf("register: %d %s %v", st, b, err)
		}
	}
	s := startSidecar(t, yaml)
	waitFor(t, "both instances routable", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
	time.Sleep(1500 * time.Millisecond) // the state file is written at most once a second
	a.kill()
	for range 20 {
		if st, body, err := s.get("files", "/who"); err != nil || st != 200 {
			t.Fatalf("with Atlas down: %d %q %v", st, body, err)
		}
	}
	if err := s.stop(); err != nil {
		t.Fatalf("sidecar did not exit 0 on SIGTERM with Atlas down: %v\n%s", err, s.log())
	}
	s2 := startSidecar(t, yaml)
	seen := map[string]bool{}
	for range 40 {
		st, body, err := s2.get("files", "/who")
		if err != nil || st != 200 {
			t.Fatalf("restarted sidecar, Atlas still down: %d %q %v", st, body, err)
		}
		seen[body] = true
	}
	if !seen["one"] || !seen["two"] {
		t.Fatalf("restarted sidecar used %v; want both instances", seen)
	}
}

// TestSidecarRollingRestart: both instances restarted one after the other
// under steady load: no request fails.
func TestSidecarRollingRestart(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	s := startSidecar(t, twoBackendYAML(a.url, p1.port, p2.port, "300ms"))
	waitFor(t, "both instances routable", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
	l := startLoad(s, "files", 4)
	for _, p := range []*pyServer{p1, p2} {
		time.Sleep(500 * time.Millisecond)
		p.kill()
		waitFor(t, "the stopped instance's check fails", 20*time.Second, func() bool { return len(s.passing("files")) == 1 })
		p.start(t)
		waitFor(t, "the restarted instance comes back", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
	}
	time.Sleep(500 * time.Millisecond)
	l.end()
	t.Logf("%d GETs during a rolling restart, %d failed, split %v", l.ok.Load()+l.failed.Load(), l.failed.Load(), l.by)
	if l.failed.Load() != 0 {
		t.Fatalf("%d GETs failed: %v", l.failed.Load(), l.errs)
	}
}

// TestSidecarDrainOnSIGTERM: the sidecar that announces an instance gets
// SIGTERM; before it exits, another host's sidecar has stopped routing to
// the instance (disabled, confirmed, then deregistered), and no request
// through that other sidecar fails.
func TestSidecarDrainOnSIGTERM(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	announceOne := fmt.Sprintf("atlas: %s\nhost: hosta\nadvertise: 127.0.0.1\ndrain_timeout: 5s\nservices:\n  - {name: files, port: %d, check: {http: /who, interval: 300ms}}\n", a.url, p1.port)
	// b follows files on the stream its upstreams share: the drain's
	// confirmation must count that stream too.
	announceTwo := fmt.Sprintf("atlas: %s\nhost: hostb\nadvertise: 127.0.0.1\nupstreams: [{name: files}, {name: billing}]\nservices:\n  - {name: files, port: %d, check: {http: /who, interval: 300ms}}\n", a.url, p2.port)
	sa := startSidecar(t, announceOne)
	sb := startSidecar(t, announceTwo)
	waitFor(t, "both instances routable through b", 20*time.Second, func() bool { return len(sb.routed("files")) == 2 })
	l := startLoad(sb, "files", 4)
	time.Sleep(500 * time.Millisecond)
	if err := sa.stop(); err != nil {
		t.Fatalf("sidecar a did not exit 0 on SIGTERM: %v\n%s", err, sa.log())
	}
	// The moment a has exited, b no longer routes to a's instance...
	if got := sb.routed("files"); len(got) != 1 || got[0] != fmt.Sprintf("files-hostb-%d", p2.port) {
		t.Fatalf("right after a drained, b routes to %v", got)
	}
	// ...so the backend may go at once.
	p1.kill()
	time.Sleep(500 * time.Millisecond)
	l.end()
	if l.failed.Load() != 0 {
		t.Fatalf("%d of %d GETs failed during the drain: %v", l.failed.Load(), l.ok.Load()+l.failed.Load(), l.errs)
	}
	if !strings.Contains(sa.log(), `"msg":"sidecar: drained"`) {
		t.Fatalf("sidecar a did not confirm its drain:\n%s", sa.log())
	}
	status, _, _ := call(context.Background(), "GET", a.url+fmt.Sprintf("/v1/instances/files-hosta-%d", p1.port), "")
	if status != 404 {
		t.Fatalf("a's instance after the drain: %d; want it deregistered", status)
	}
	t.Logf("%d GETs through b while a drained, none failed", l.ok.Load())
}

// TestSecondSignalEndsTheDrain: a sidecar draining on SIGTERM (here for
// as long as its drain_timeout: Atlas is stopped, so the drain waits)
// ends at once on a second signal, as a second Ctrl-C is meant.
func TestSecondSignalEndsTheDrain(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p := startPy(t, "one")
	s := startSidecar(t, fmt.Sprintf("atlas: %s\nhost: hosta\nadvertise: 127.0.0.1\ndrain_timeout: 60s\nservices:\n  - {name: files, port: %d, check: {http: /who, interval: 300ms}}\n", a.url, p.port))
	waitFor(t, "the instance registered", 20*time.Second, func() bool {
		status, _, _ := call(context.Background(), "GET", a.url+fmt.Sprintf("/v1/instances/files-hosta-%d", p.port), "")
		return status == 200
	})
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.cmd.Process.Signal(syscall.SIGCONT) })
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Readiness fails once the shutdown has begun.
	waitFor(t, "the sidecar's readiness to fail", 20*time.Second, func() bool {
		res, err := httpc.Get("http://" + s.admin + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode != 200
	})
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the sidecar still drained 30s after a second SIGTERM\n%s", s.log())
	}
	var ee *exec.ExitError
	if !errors.As(s.err, &ee) {
		t.Fatalf("the sidecar exited with %v after a second SIGTERM; want killed by it", s.err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("the sidecar exited with %v after a second SIGTERM; want killed by it", s.err)
	}
}

// rss returns a process's resident memory in KiB.
func rss(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb
		}
	}
	return 0
}

// TestSidecarTenThousandInstances: a service with 10,000 instances in
// Atlas; the sidecar routes to it, applies a change to it, and says what
// that costs (memory and time to apply an update), without bounds: the
// figures are for the note, not a pass/fail.
func TestSidecarTenThousandInstances(t *testing.T) {
	if testing.Short() {
		t.Skip("registers 10,000 instances")
	}
	a := startAtlas(t, t.TempDir(), "--insecure")
	const n = 10000
	ctx := context.Background()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				body := fmt.Sprintf(`{"service":"big","address":"10.0.%d.%d","port":%d,"ttl":"1h"}`, i/250, i%250+1, 1000+i%50000)
				if st, _, err := call(ctx, "PUT", fmt.Sprintf("%s/v1/instances/big-%05d", a.url, i), body); err != nil || st != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d registrations failed", failed.Load())
	}
	s := startSidecar(t, fmt.Sprintf("atlas: %s\nupstreams: [{name: big}]\n", a.url))
	idle := rss(s.cmd.Process.Pid)
	waitFor(t, "10,000 instances in the sidecar", 60*time.Second, func() bool { return len(s.routed("big")) == n })
	loaded := rss(s.cmd.Process.Pid)
	// One change: how long until the sidecar has applied it, read from
	// its metrics (cheap) rather than /routes (10,000 entries).
	var lat []time.Duration
	for i := range 5 {
		start := time.Now()
		req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/v1/instances/big-%05d/enabled", a.url, i), strings.NewReader(`{"enabled":false}`))
		res, err := httpc.Do(req)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("disable: %v %v", res, err)
		}
		res.Body.Close()
		want := res.Header.Get("Switchboard-Index")
		waitFor(t, "the change applied", 30*time.Second, func() bool {
			return s.metric(`switchboard_sidecar_atlas_index{service="big"}`) == want
		})
		lat = append(lat, time.Since(start))
	}
	if got := len(s.routed("big")); got != n-5 {
		t.Fatalf("after 5 disables the sidecar routes to %d instances; want %d", got, n-5)
	}
	t.Logf("sidecar with a 10,000-instance service: RSS %d KiB idle, %d KiB with the service (%.2f KiB per instance); a change applied in %v (each update carries the whole service, %d instances)",
		idle, loaded, float64(loaded-idle)/n, lat, n)
}
