package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSidecarRoutesAgainAfterRunningOutOfFiles: a burst of connections
// that takes the sidecar to its file limit makes accepting fail for a
// while. fasthttp's serve loop, and the L4 one, ended at the first such
// error: routing stopped for good while the listeners stayed open, and
// /healthcheck kept passing. Now both accept again once files are free,
// and the health check fails meanwhile.
func TestSidecarRoutesAgainAfterRunningOutOfFiles(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p := startPy(t, "one")
	var l4 string
	const limit = 256
	s := startSidecarWith(t, func() string {
		l4 = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		return l4YAML(a.url, l4, p.port)
	}, fmt.Sprintf("ulimit -n %d", limit))
	waitFor(t, "files routable", 20*time.Second, func() bool { return len(s.routed("files")) == 1 })

	// More idle connections than the process may have files, to both
	// listeners; the kernel completes their handshakes.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, addr := range []string{s.listen, l4} {
		for range limit {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	health := func() (int, string) {
		res, err := httpc.Get("http://" + s.admin + "/healthcheck")
		if err != nil {
			return 0, err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	waitFor(t, "the health check saying the sidecar cannot accept", 20*time.Second, func() bool {
		st, body := health()
		return st == 503 && strings.Contains(body, "too many open files")
	})
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	waitFor(t, "routing again through the frontend", 20*time.Second, func() bool {
		st, body, _ := s.get("files", "/who")
		return st == 200 && strings.TrimSpace(body) == "one"
	})
	l4c := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, "routing again through the l4 listener", 20*time.Second, func() bool {
		res, err := l4c.Get("http://" + l4 + "/who")
		if err != nil {
			return false
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode == 200 && strings.TrimSpace(string(b)) == "one"
	})
	waitFor(t, "the health check passing again", 20*time.Second, func() bool {
		st, _ := health()
		return st == 200
	})
	if log := s.log(); strings.Contains(log, `stopped","err"`) || !strings.Contains(log, "accepts connections again") {
		t.Fatalf("the log does not say that accepting failed and recovered, or says a listener stopped:\n%s", log)
	}
}

// TestSidecarLeavesOutInstancesAtItsOwnAddress: an instance registered at
// the sidecar's own frontend or L4 listener would send each call routed to
// it back into the sidecar: an HTTP call looped until a header grew too
// large (about 1,500 connections each), an L4 connection until the
// process ran out of files. Such instances are left out of rotation.
func TestSidecarLeavesOutInstancesAtItsOwnAddress(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	p := startPy(t, "one")
	var l4 string
	s := startSidecarWith(t, func() string {
		l4 = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		return l4YAML(a.url, l4, p.port)
	})
	for id, addr := range map[string]string{"files-loop-http": s.listen, "files-loop-l4": l4} {
		host, port, _ := net.SplitHostPort(addr)
		body := fmt.Sprintf(`{"service":"files","address":%q,"port":%s,"ttl":"1h"}`, host, port)
		if st, b, err := call(context.Background(), "PUT", a.url+"/v1/instances/"+id, body); err != nil || st != 200 {
			t.Fatalf("register %s: %d %s %v", id, st, b, err)
		}
	}
	waitFor(t, "the real instance routable", 20*time.Second, func() bool { return len(s.routed("files")) == 1 })
	for i := range 30 {
		if st, body, err := s.get("files", "/who"); err != nil || st != 200 || strings.TrimSpace(body) != "one" {
			t.Fatalf("call %d through the frontend: %d %q %v", i, st, body, err)
		}
	}
	l4c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 30 {
		res, err := l4c.Get("http://" + l4 + "/who")
		if err != nil {
			t.Fatalf("call %d through the l4 listener: %v", i, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || strings.TrimSpace(string(b)) != "one" {
			t.Fatalf("call %d through the l4 listener: %d %q", i, res.StatusCode, b)
		}
	}
	if got := s.routed("files"); len(got) != 1 {
		t.Fatalf("routed %v; want the real instance alone", got)
	}
	if log := s.log(); strings.Count(log, "left out of rotation") != 2 {
		t.Fatalf("the log does not say, once for each, that the two instances at the sidecar's addresses are left out:\n%s", log)
	}
}

// l4YAML is a sidecar's yaml with one instance of files, on port, and an
// L4 listener for files on l4.
func l4YAML(atlasURL, l4 string, port int) string {
	return fmt.Sprintf(`atlas: %s
host: itest
advertise: 127.0.0.1
upstreams: [{name: files, listen: "%s"}]
services:
  - name: files
    port: %d
    check: {http: /who, interval: 300ms, timeout: 500ms}
`, atlasURL, l4, port)
}
