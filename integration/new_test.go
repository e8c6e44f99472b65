package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/internal/syncbuf"
)

// TestNewServiceRunsAndRegisters: `switchboard new` against an Atlas; the
// generated service passes go vet and go test at once; built and run, it
// serves /healthcheck, and a sidecar started with its sidecar.yaml
// registers it and routes to it by name. The time from `switchboard new`
// to a registered, routable service is logged.
func TestNewServiceRunsAndRegisters(t *testing.T) {
	a := startAtlas(t, t.TempDir(), "--insecure")
	work := t.TempDir()
	start := time.Now()
	newCmd := exec.Command(binary, "new", "greeter", "--atlas", a.url)
	newCmd.Dir = work
	newCmd.Env = append(os.Environ(), "SWITCHBOARD_SOURCE="+mustAbs(t, ".."), "SWITCHBOARD_SIDECAR=127.0.0.1:14999")
	out, err := newCmd.CombinedOutput()
	if err != nil {
		t.Fatalf("switchboard new: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "curl http://greeter.localhost:14999/hello") {
		t.Errorf("switchboard new's hint does not call the sidecar SWITCHBOARD_SIDECAR names:\n%s", out)
	}
	generated := time.Since(start)
	m := regexp.MustCompile(`port\s+(\d+) \(assigned by Atlas\)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("switchboard new did not print an Atlas-assigned port:\n%s", out)
	}
	port, _ := strconv.Atoi(string(m[1]))
	dir := filepath.Join(work, "greeter")
	for _, args := range [][]string{{"vet", "./..."}, {"test", "./..."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s in the generated service: %v\n%s", strings.Join(args, " "), err, b)
		}
	}
	checked := time.Since(start)
	bin := filepath.Join(work, "greeter-bin")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = dir
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	runStart := time.Now()
	svc := exec.Command(bin)
	svc.Dir = dir // its config.yaml sets the listen address
	svc.Env = append(os.Environ(), "SWITCHBOARD_ATLAS="+a.url)
	var logs syncbuf.Buffer
	svc.Stdout, svc.Stderr = &logs, &logs
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { svc.Process.Kill(); svc.Wait() }()
	waitFor(t, "the generated service serves /healthcheck", 20*time.Second, func() bool {
		res, err := httpc.Get(fmt.Sprintf("http://127.0.0.1:%d/healthcheck", port))
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	})
	yaml, _ := os.ReadFile(filepath.Join(dir, "sidecar.yaml"))
	s := startSidecar(t, fmt.Sprintf("atlas: %s\nhost: newtest\nadvertise: 127.0.0.1\nupstreams: [{name: greeter}]\n%s", a.url, yaml))
	waitFor(t, "the generated service registered and routable", 30*time.Second, func() bool { return len(s.routed("greeter")) == 1 })
	registered := time.Since(runStart)
	status, body, err := s.get("greeter", "/hello")
	if err != nil || status != 200 || !strings.Contains(body, `"service":"greeter"`) {
		t.Fatalf("GET /hello through the sidecar = %d %q %v\nservice log:\n%s", status, body, err, logs.String())
	}
	t.Logf("switchboard new: %s to generate (go mod tidy, git commit); %s with go vet and go test; %s from starting the built service to registered and routable through the sidecar (check interval 2s, rise 2)",
		generated.Round(time.Millisecond), checked.Round(time.Millisecond), registered.Round(time.Millisecond))
}

func mustAbs(t *testing.T, p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}
