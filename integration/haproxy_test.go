package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// masterReloads asks HAProxy's master CLI how many reloads it has done.
// The master re-executes itself on a reload: its socket may refuse, or
// answer nothing, for a moment.
func masterReloads(t *testing.T, dir string) int {
	t.Helper()
	var last error
	for range 100 {
		n, err := askMaster(filepath.Join(dir, "master.sock"), 2)
		if err == nil {
			return n
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("master CLI: %v", last)
	return 0
}

// askMaster asks the HAProxy master CLI at sock to show its processes,
// and returns a field of the master's line: 0 its pid, 2 its reloads.
func askMaster(sock string, field int) (int, error) {
	out, err := askSocket(sock, "show proc; quit")
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == "master" {
			return strconv.Atoi(f[field])
		}
	}
	return 0, fmt.Errorf("no master line in the answer")
}

// askSocket sends one command line to a HAProxy CLI socket (the master's
// or the Runtime API) and returns the answer, read until HAProxy closes.
func askSocket(sock, cmd string) (string, error) {
	c, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func haproxySidecar(t *testing.T, atlasURL string) (*sidecarProc, string) {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Fatal("haproxy is not installed: test.sh installs it (apt-get install haproxy)")
	}
	dir := t.TempDir()
	s := startSidecar(t, fmt.Sprintf("atlas: %s\nproxy: haproxy\nstate_dir: %s\nupstreams: [{name: files}]\n", atlasURL, dir))
	return s, filepath.Join(dir, "haproxy")
}

func register(t *testing.T, atlasURL, id, service string, port int) {
	t.Helper()
	body := fmt.Sprintf(`{"service":%q,"address":"127.0.0.1","port":%d,"ttl":"1h"}`, service, port)
	if st, b, err := call(context.Background(), "PUT", atlasURL+"/v1/instances/"+id, body); err != nil || st != 200 {
		t.Fatalf("register %s: %d %s %v", id, st, b, err)
	}
}

// filesThroughHAProxy serves h as the one instance of files, with Atlas and
// a sidecar in haproxy mode, and returns once HAProxy routes to it.
func filesThroughHAProxy(t *testing.T, h http.HandlerFunc) *sidecarProc {
	t.Helper()
	port := serveHTTP(t, h)
	a := startAtlas(t, t.TempDir(), "--insecure")
	register(t, a.url, "files-1", "files", port)
	s, dir := haproxySidecar(t, a.url)
	waitFor(t, "the instance routable", 20*time.Second, func() bool { return len(s.routed("files")) == 1 })
	// HAProxy's worker has the backend (until then the built-in proxy
	// answers for it), and the instance answers through it.
	waitFor(t, "HAProxy routes files", 20*time.Second, func() bool {
		st, body, _ := s.get("files", "/")
		return haproxyHas(dir, "be_files") && st == 200 && body == "ok"
	})
	return s
}

// serveHTTP serves h on a loopback port until the test ends, and returns
// the port.
func serveHTTP(t *testing.T, h http.Handler) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// serveStatus serves every request with status (and its text) until the
// test ends, and returns the port.
func serveStatus(t *testing.T, status int) int {
	return serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		io.WriteString(w, http.StatusText(status))
	}))
}

// TestHAProxyMembershipChangesWithoutReload: 100 membership changes while
// a steady stream of GETs runs through HAProxy: no request fails and
// HAProxy never reloads (the master's own count).
func TestHAProxyMembershipChangesWithoutReload(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2, p3 := startPy(t, "one"), startPy(t, "two"), startPy(t, "three")
	register(t, a.url, "files-1", "files", p1.port)
	register(t, a.url, "files-2", "files", p2.port)
	s, dir := haproxySidecar(t, a.url)
	waitFor(t, "both instances routable", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
	// Let the first reload (adding the files backend) settle.
	waitFor(t, "HAProxy routes files", 20*time.Second, func() bool {
		st, body, _ := s.get("files", "/who")
		return st == 200 && (body == "one" || body == "two")
	})
	before := masterReloads(t, dir)
	l := startLoad(s, "files", 4)
	for i := range 50 {
		register(t, a.url, "files-3", "files", p3.port)
		time.Sleep(40 * time.Millisecond)
		if st, _, err := call(context.Background(), "DELETE", a.url+"/v1/instances/files-3", ""); err != nil || st != 200 {
			t.Fatalf("change %d: deregister: %d %v", i, st, err)
		}
		time.Sleep(40 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	l.end()
	after := masterReloads(t, dir)
	t.Logf("%d GETs through HAProxy during 100 membership changes, %d failed; split %v; HAProxy reloads %d -> %d; runtime commands %s",
		l.ok.Load()+l.failed.Load(), l.failed.Load(), l.by, before, after, s.metric("switchboard_sidecar_haproxy_runtime_commands_total"))
	if l.failed.Load() != 0 {
		t.Fatalf("%d GETs failed: %v", l.failed.Load(), l.errs)
	}
	if after != before {
		t.Fatalf("HAProxy reloaded %d times for membership changes; want none", after-before)
	}
	if l.by["three"] == 0 {
		t.Fatalf("the instance that came and went never got traffic: %v", l.by)
	}
}

// TestHAProxyReloadsLoseNothing: 10 new services, each a reload, while a
// steady stream of GETs runs through HAProxy: no request fails.
func TestHAProxyReloadsLoseNothing(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1 := startPy(t, "one")
	register(t, a.url, "files-1", "files", p1.port)
	s, dir := haproxySidecar(t, a.url)
	waitFor(t, "HAProxy routes files", 20*time.Second, func() bool {
		st, body, _ := s.get("files", "/who")
		return st == 200 && body == "one"
	})
	before := masterReloads(t, dir)
	l := startLoad(s, "files", 4)
	for i := range 10 {
		svc := fmt.Sprintf("extra%d", i)
		register(t, a.url, svc+"-1", svc, p1.port)
		// The first call to a new service goes through the sidecar's own
		// proxy, which starts watching it; HAProxy gets a backend for it.
		if st, body, err := s.get(svc, "/who"); err != nil || st != 200 {
			t.Fatalf("first call to %s: %d %q %v", svc, st, body, err)
		}
		want := before + i + 1
		waitFor(t, fmt.Sprintf("reload %d", i+1), 20*time.Second, func() bool { return masterReloads(t, dir) >= want })
	}
	time.Sleep(300 * time.Millisecond)
	l.end()
	after := masterReloads(t, dir)
	t.Logf("%d GETs through HAProxy during %d reloads, %d failed", l.ok.Load()+l.failed.Load(), after-before, l.failed.Load())
	if l.failed.Load() != 0 {
		t.Fatalf("%d GETs failed: %v", l.failed.Load(), l.errs)
	}
	if after-before < 10 {
		t.Fatalf("%d reloads; want 10", after-before)
	}
}

// TestHAProxyKillNineOfAnInstance: in haproxy mode, kill -9 of one of two
// instances in the middle of a stream of GETs: HAProxy's retries and
// redispatch answer every GET, and the dead instance leaves rotation when
// its check fails.
func TestHAProxyKillNineOfAnInstance(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	dir := t.TempDir()
	yaml := fmt.Sprintf(`atlas: %s
proxy: haproxy
state_dir: %s
host: itest
advertise: 127.0.0.1
upstreams: [{name: files}]
services:
  - {name: files, port: %d, check: {http: /who, interval: 300ms}}
  - {name: files, port: %d, check: {http: /who, interval: 300ms}}
`, a.url, dir, p1.port, p2.port)
	s := startSidecar(t, yaml)
	waitFor(t, "both instances routable", 20*time.Second, func() bool { return len(s.routed("files")) == 2 })
	waitFor(t, "HAProxy routes to both", 20*time.Second, func() bool {
		seen := map[string]bool{}
		for range 20 {
			if st, body, _ := s.get("files", "/who"); st == 200 {
				seen[body] = true
			}
		}
		return seen["one"] && seen["two"]
	})
	l := startLoad(s, "files", 4)
	time.Sleep(500 * time.Millisecond)
	p1.kill()
	waitFor(t, "the dead instance leaves", 20*time.Second, func() bool { return len(s.routed("files")) == 1 })
	time.Sleep(500 * time.Millisecond)
	l.end()
	t.Logf("%d GETs through HAProxy around a kill -9, %d failed; split %v", l.ok.Load()+l.failed.Load(), l.failed.Load(), l.by)
	if l.failed.Load() != 0 {
		t.Fatalf("%d GETs failed: %v", l.failed.Load(), l.errs)
	}
}

// TestHAProxyFrontendHeaders: the HAProxy frontend the sidecar renders
// routes on the service header whatever its case, strips it, and adds
// the caller's address last to X-Forwarded-For, on one line, as the
// built-in proxy does (it added one only when the caller sent none, so a
// caller could name any address; option forwardfor adds a second line,
// which a backend reading the first alone never sees). Hop-by-hop headers,
// and those a Connection header names, go no further either way, as in
// the built-in proxy.
func TestHAProxyFrontendHeaders(t *testing.T) {
	type seen struct {
		xff, svc string
		h        http.Header
	}
	got := make(chan seen, 16)
	s := filesThroughHAProxy(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case got <- seen{strings.Join(r.Header.Values("X-Forwarded-For"), "\n"), r.Header.Get("Switchboard-Service"), r.Header.Clone()}:
		default:
		}
		if r.URL.Path == "/ws" {
			// An upgrade: 101, then an echo of what comes.
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(c, brw)
			return
		}
		if r.URL.Path == "/hop" {
			w.Header().Set("Connection", "X-Resp-Hop, Upgrade")
			w.Header().Set("Upgrade", "h2c")
			w.Header().Set("X-Resp-Hop", "1")
			w.Header().Set("Proxy-Authenticate", "Basic")
			w.Header().Set("X-Resp-Kept", "1")
		}
		io.WriteString(w, "ok")
	})
	for len(got) > 0 {
		<-got
	}
	// send sends req through HAProxy and wants 200; next is what the
	// instance saw of it.
	send := func(req *http.Request) *http.Response {
		t.Helper()
		res, err := httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("%s %s: %d", req.Method, req.URL.Path, res.StatusCode)
		}
		return res
	}
	next := func() seen {
		t.Helper()
		select {
		case g := <-got:
			return g
		case <-time.After(5 * time.Second):
			t.Fatal("the instance saw no request")
			return seen{}
		}
	}
	for _, tc := range []struct {
		header, xff, want string
	}{
		{"FILES", "", "127.0.0.1"},
		{"files", "10.9.8.7", "10.9.8.7, 127.0.0.1"},
	} {
		req, _ := http.NewRequest("GET", "http://"+s.listen+"/", nil)
		req.Header.Set("Switchboard-Service", tc.header)
		if tc.xff != "" {
			req.Header.Set("X-Forwarded-For", tc.xff)
		}
		send(req)
		if g := next(); g.xff != tc.want || g.svc != "" {
			t.Errorf("Switchboard-Service: %s, X-Forwarded-For: %q: the instance saw X-Forwarded-For %q and Switchboard-Service %q; want %q and none",
				tc.header, tc.xff, g.xff, g.svc, tc.want)
		}
	}

	req, _ := http.NewRequest("GET", "http://"+s.listen+"/hop", nil)
	req.Header.Set("Switchboard-Service", "files")
	req.Header.Set("Connection", "X-Hop, keep-alive")
	for _, k := range []string{"X-Hop", "Proxy-Authorization", "Keep-Alive", "Proxy-Connection", "Te", "X-Kept"} {
		req.Header.Set(k, "1")
	}
	res := send(req)
	for _, k := range []string{"X-Resp-Hop", "Proxy-Authenticate", "Upgrade"} {
		if v := res.Header.Values(k); len(v) > 0 {
			t.Errorf("the caller got the instance's hop-by-hop %s: %q", k, v)
		}
	}
	if res.Header.Get("X-Resp-Kept") == "" {
		t.Error("the caller did not get X-Resp-Kept")
	}
	g := next()
	for _, k := range []string{"X-Hop", "Proxy-Authorization", "Keep-Alive", "Proxy-Connection", "Te", "Connection"} {
		if v := g.h.Values(k); len(v) > 0 {
			t.Errorf("the instance got the caller's hop-by-hop %s: %q", k, v)
		}
	}
	if g.h.Get("X-Kept") == "" {
		t.Error("the instance did not get X-Kept")
	}

	// An upgrade still goes through: Connection keeps its upgrade token
	// and loses the names of other headers.
	c, err := net.Dial("tcp", s.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: files.localhost\r\nConnection: Upgrade, X-Hop\r\nUpgrade: echo\r\nX-Hop: 1\r\n\r\n")
	br := bufio.NewReader(c)
	up, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if up.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", up.Status)
	}
	io.WriteString(c, "ping")
	echo := make([]byte, 4)
	if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "ping" {
		t.Fatalf("upgrade: echo %q, %v", echo, err)
	}
	if g := next(); g.h.Get("X-Hop") != "" || g.h.Get("Connection") != "Upgrade" || g.h.Get("Upgrade") != "echo" {
		t.Errorf("upgrade: the instance got X-Hop %q, Connection %q, Upgrade %q; want none, Upgrade, echo", g.h.Get("X-Hop"), g.h.Get("Connection"), g.h.Get("Upgrade"))
	}
}

// TestHAProxySwitchboardTimeout: in haproxy mode, as in the built-in
// mode, Switchboard-Timeout bounds the wait for an instance's answer (504
// with the JSON error), and a value the built-in proxy refuses gets its 400.
func TestHAProxySwitchboardTimeout(t *testing.T) {
	s := filesThroughHAProxy(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			// Longer than the caller's timeout, shorter than HAProxy's
			// 30 s: without the header's bound the caller gets 200.
			select {
			case <-r.Context().Done():
				return
			case <-time.After(8 * time.Second):
			}
		}
		io.WriteString(w, "ok")
	})
	client := &http.Client{Timeout: 20 * time.Second}
	for _, tc := range []struct {
		path, timeout string
		status        int
		code          string
	}{
		{"/slow", "300ms", 504, "deadline_exceeded"},
		{"/slow", "0.3s", 504, "deadline_exceeded"},
		{"/", "2m0s", 200, ""}, // as the smart client writes a deadline
		{"/", "2 s", 400, "invalid_argument"},
		{"/", "90m", 400, "invalid_argument"},
	} {
		req, _ := http.NewRequest("GET", "http://"+s.listen+tc.path, nil)
		req.Header.Set("Switchboard-Service", "files")
		req.Header.Set("Switchboard-Timeout", tc.timeout)
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("Switchboard-Timeout: %s: %v", tc.timeout, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.status {
			t.Errorf("GET %s with Switchboard-Timeout: %s: %d %s; want %d", tc.path, tc.timeout, res.StatusCode, body, tc.status)
			continue
		}
		if tc.code == "" {
			continue
		}
		if res.Header.Get("X-Switchboard-Error") != "1" {
			t.Errorf("Switchboard-Timeout: %s: %d without X-Switchboard-Error: 1", tc.timeout, res.StatusCode)
		}
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != tc.code || !strings.Contains(e.Error.Message, tc.timeout) && tc.status == 400 {
			t.Errorf("Switchboard-Timeout: %s: body %s; want the JSON error %s naming the value", tc.timeout, body, tc.code)
		}
	}
	// A request HAProxy hands to the built-in proxy gets its answer: here,
	// with no service named, that it names none, whatever the timeout.
	req, _ := http.NewRequest("GET", "http://"+s.listen+"/", nil)
	req.Host = "example.com"
	req.Header.Set("Switchboard-Timeout", "soon")
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 400 || !strings.Contains(string(body), "no target service") {
		t.Errorf("no service and a bad timeout: %d %s; want the built-in proxy's 400 naming no service", res.StatusCode, body)
	}
}

// TestHAProxyEjectsOutliers: in haproxy mode, as in the built-in mode, an
// instance that answers 5xx is ejected (the sidecar reads HAProxy's
// counters) and takes no more requests; of a service whose instances all
// fail, no more than half are ejected.
func TestHAProxyEjectsOutliers(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	register(t, a.url, "files-good", "files", serveStatus(t, 200))
	register(t, a.url, "files-bad", "files", serveStatus(t, 500))
	register(t, a.url, "flaky-1", "flaky", serveStatus(t, 503))
	register(t, a.url, "flaky-2", "flaky", serveStatus(t, 503))
	s, dir := haproxySidecar(t, a.url)
	// Both services through HAProxy: a request to a service HAProxy does
	// not route yet goes to the built-in proxy (checked below), and the
	// first one is all it takes.
	for _, svc := range []string{"files", "flaky"} {
		s.get(svc, "/")
		waitFor(t, svc+" routed by HAProxy", 20*time.Second, func() bool {
			return len(s.routed(svc)) == 2 && haproxyHas(dir, "be_"+svc)
		})
	}
	codes := map[int]int{}
	waitFor(t, "files-bad ejected", 30*time.Second, func() bool {
		for range 5 {
			st, _, _ := s.get("files", "/")
			codes[st]++
			s.get("flaky", "/")
		}
		return len(s.routed("files")) == 1 && len(s.routed("flaky")) == 1
	})
	if got := s.routed("files"); got[0] != "files-good" {
		t.Fatalf("routed after the ejection: %v; want files-good", got)
	}
	t.Logf("before the ejection: %v", codes)
	// The ejected instance takes no more requests; of flaky's two failing
	// instances one stays, whatever more requests fail, for the looks of
	// several seconds.
	for range 4 {
		for range 10 {
			if st, body, _ := s.get("files", "/"); st != 200 {
				t.Fatalf("files after the ejection: %d %s", st, body)
			}
			s.get("flaky", "/")
		}
		time.Sleep(time.Second)
	}
	if got := s.routed("flaky"); len(got) != 1 {
		t.Fatalf("flaky: routed %v; want one of its two instances (never more than half ejected)", got)
	}
	for svc, want := range map[string]string{"files": "1", "flaky": "1"} {
		if got := s.metric(`switchboard_sidecar_ejections_total{service="` + svc + `"}`); got != want {
			t.Errorf("ejections of %s: %q; want %s", svc, got, want)
		}
	}
	// HAProxy's own metrics of the requests it routed are in the sidecar's.
	if n, _ := strconv.Atoi(s.metric(`haproxy_backend_http_responses_total{code="2xx",proxy="be_files"}`)); n < 40 {
		t.Errorf("the sidecar's /metrics: HAProxy answered %d requests to files with 2xx; want 40 or more", n)
	}
	// The failures the built-in proxy saw (before HAProxy routed the
	// services) could not have ejected anything by themselves.
	for _, svc := range []string{"files", "flaky"} {
		for _, code := range []string{"500", "503"} {
			if n, _ := strconv.Atoi(s.metric(`switchboard_sidecar_requests_total{code="` + code + `",service="` + svc + `"}`)); n >= 5 {
				t.Fatalf("the built-in proxy answered %d requests to %s with %s: it may have ejected by itself", n, svc, code)
			}
		}
	}
}

// TestHAProxyHearsOfBuiltInEjections: the built-in proxy routes the calls
// HAProxy does not (here sent to it directly), to the same pools; an
// instance it ejects gets weight 0 in HAProxy too, until the ejection ends.
func TestHAProxyHearsOfBuiltInEjections(t *testing.T) {
	ports := map[int]int{200: serveStatus(t, 200), 500: serveStatus(t, 500)} // status -> port
	a := startAtlas(t, t.TempDir(), "--insecure")
	register(t, a.url, "lists-good", "lists", ports[200])
	register(t, a.url, "lists-bad", "lists", ports[500])
	s, dir := haproxySidecar(t, a.url)
	s.get("lists", "/")
	waitFor(t, "lists routed by HAProxy", 20*time.Second, func() bool {
		return len(s.routed("lists")) == 2 && haproxyHas(dir, "be_lists") && haproxyWeight(dir, "be_lists", ports[500]) == 100
	})
	cfg, err := os.ReadFile(filepath.Join(dir, "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(cfg), "server sidecar ")
	builtin, _, _ := strings.Cut(rest, "\n")
	waitFor(t, "lists-bad ejected by the built-in proxy", 20*time.Second, func() bool {
		req, _ := http.NewRequest("GET", "http://"+builtin+"/", nil)
		req.Header.Set("Switchboard-Service", "lists")
		if res, err := httpc.Do(req); err == nil {
			res.Body.Close()
		}
		return len(s.routed("lists")) == 1
	})
	waitFor(t, "lists-bad at weight 0 in HAProxy", 10*time.Second, func() bool {
		return haproxyWeight(dir, "be_lists", ports[500]) == 0
	})
	// And back when its ejection ends (30 s for a first one).
	waitFor(t, "lists-bad back at weight 100 in HAProxy", 45*time.Second, func() bool {
		return haproxyWeight(dir, "be_lists", ports[500]) == 100
	})
	if got := s.routed("lists"); len(got) != 2 {
		t.Fatalf("routed after the ejection: %v; want both", got)
	}
}

// haproxyWeight returns the weight HAProxy in dir gives the server of
// backend at 127.0.0.1:port (show servers state), or -1.
func haproxyWeight(dir, backend string, port int) int {
	out, _ := askSocket(filepath.Join(dir, "admin.sock"), "show servers state "+backend)
	var cols []string
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		if len(f) > 1 && f[0] == "#" {
			cols = f[1:]
			continue
		}
		row := map[string]string{}
		for i, v := range f {
			if i < len(cols) {
				row[cols[i]] = v
			}
		}
		if row["srv_port"] == strconv.Itoa(port) && row["srv_admin_state"] == "0" {
			w, _ := strconv.Atoi(row["srv_uweight"])
			return w
		}
	}
	return -1
}

// haproxyHas reports whether the HAProxy worker in dir has a proxy named
// px (its Runtime API's show stat).
func haproxyHas(dir, px string) bool {
	out, _ := askSocket(filepath.Join(dir, "admin.sock"), "show stat -1 2 -1")
	return strings.Contains(out, "\n"+px+",BACKEND,")
}

// TestHAProxyPolicyWithdrawn: in haproxy mode, a call a policy no longer
// allows gets 403 as in the built-in mode: HAProxy must not go on routing
// it to the service's last instances.
func TestHAProxyPolicyWithdrawn(t *testing.T) {
	dir := t.TempDir()
	a := startAtlas(t, dir)
	admin := adminToken(t, dir)
	as := func(method, path, body string) []byte {
		t.Helper()
		st, b, err := callAs(context.Background(), admin, method, a.url+path, body)
		if err != nil || st != 200 {
			t.Fatalf("%s %s: %d %s %v", method, path, st, b, err)
		}
		return b
	}
	p := startPy(t, "billing")
	as("PUT", "/v1/instances/billing-1", fmt.Sprintf(`{"service":"billing","address":"127.0.0.1","port":%d,"ttl":"1h"}`, p.port))
	as("PUT", "/v1/policies/web?realm=dev", `{"may_call":["billing"]}`)
	var tok struct{ Secret string }
	json.Unmarshal(as("POST", "/v1/tokens", `{"name":"host001","role":"service","services":["web"],"realms":["dev"]}`), &tok)
	tokFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokFile, []byte(tok.Secret+"\n"), 0o600)
	state := t.TempDir()
	s := startSidecar(t, fmt.Sprintf("atlas: %s\ntoken_file: %s\nproxy: haproxy\nstate_dir: %s\nhost: host001\nupstreams: [{name: billing}]\n", a.url, tokFile, state))
	waitFor(t, "HAProxy has a backend for billing", 20*time.Second, func() bool {
		cfg, _ := os.ReadFile(filepath.Join(state, "haproxy", "haproxy.cfg"))
		return strings.Contains(string(cfg), "backend be_billing")
	})
	waitFor(t, "billing reachable through HAProxy", 20*time.Second, func() bool {
		st, body, _ := s.get("billing", "/who")
		return st == 200 && body == "billing"
	})
	as("PUT", "/v1/policies/web?realm=dev", `{"may_call":[]}`)
	var st int
	var body string
	waitFor(t, "billing refused once the policy is withdrawn", 30*time.Second, func() bool {
		st, body, _ = s.get("billing", "/who")
		return st == 403
	})
	if !strings.Contains(body, "may not call service billing in realm dev") {
		t.Fatalf("billing = %d %s; want 403 naming both services", st, body)
	}
}

// TestHAProxyLeftByAKilledSidecarStops: a sidecar killed without stopping
// its HAProxy (kill -9, a panic) and started again on the same listen
// address: the HAProxy it left shares the address (SO_REUSEPORT) with
// routes that no longer follow Atlas. The new sidecar must stop it, so
// that every call follows the current instances.
func TestHAProxyLeftByAKilledSidecarStops(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p1, p2 := startPy(t, "one"), startPy(t, "two")
	register(t, a.url, "files-1", "files", p1.port)
	state := t.TempDir()
	yaml := fmt.Sprintf("atlas: %s\nproxy: haproxy\nstate_dir: %s\nupstreams: [{name: files}]\n", a.url, state)
	listen, admin := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := startSidecarAt(t, yaml, listen, admin)
	waitFor(t, "HAProxy routes files", 20*time.Second, func() bool {
		st, body, _ := s.get("files", "/who")
		return st == 200 && body == "one"
	})
	var old int
	waitFor(t, "the master CLI", 20*time.Second, func() bool {
		pid, err := askMaster(filepath.Join(state, "haproxy", "master.sock"), 0)
		old = pid
		return err == nil
	})
	t.Cleanup(func() { syscall.Kill(old, syscall.SIGKILL) })
	s.kill()
	// While the sidecar is down, files moves to another instance.
	register(t, a.url, "files-2", "files", p2.port)
	if st, _, err := call(context.Background(), "DELETE", a.url+"/v1/instances/files-1", ""); err != nil || st != 200 {
		t.Fatalf("deregister: %d %v", st, err)
	}
	s = startSidecarAt(t, yaml, listen, admin)
	// New connections each time: the kernel spreads them over every
	// process listening on the address.
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	run, last := 0, ""
	for deadline := time.Now().Add(60 * time.Second); run < 50; {
		if time.Now().After(deadline) {
			t.Fatalf("60s after the restart, calls still reach a HAProxy that does not follow Atlas: last %s", last)
		}
		req, _ := http.NewRequest("GET", "http://"+listen+"/who", nil)
		req.Header.Set("Switchboard-Service", "files")
		res, err := fresh.Do(req)
		if err != nil {
			run, last = 0, err.Error()
			continue
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(b) != "two" {
			run, last = 0, fmt.Sprintf("%d %q", res.StatusCode, b)
			time.Sleep(20 * time.Millisecond)
			continue
		}
		run++
	}
}
