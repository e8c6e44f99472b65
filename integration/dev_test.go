package integration

import (
	"bufio"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevStartsAndStopsCleanly: `switchboard dev` prints what runs where,
// serves Atlas, the dashboard and a sidecar, and stops with exit 0 on
// Ctrl-C (SIGINT); started again on the same directory, it works.
func TestDevStartsAndStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	for round := range 2 {
		cmd := exec.Command(binary, "dev", "--dir", dir, "--listen", "127.0.0.1:0", "--sidecar-listen", "127.0.0.1:0", "--sidecar-admin", "127.0.0.1:0")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		var dashboard string
		deadline := time.After(30 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("dev exited before printing its URLs")
				}
				if m := regexp.MustCompile(`dashboard\s+(http://\S+)`).FindStringSubmatch(l); m != nil {
					dashboard = m[1]
				}
				if strings.HasPrefix(l, "Try:") {
					// Atlas is not on the default address here: the hint
					// says where it is.
					if u, _, _ := strings.Cut(strings.TrimPrefix(dashboard, "http://"), "/"); !strings.Contains(l, "SWITCHBOARD_ATLAS=http://"+u+" switchboard") {
						t.Fatalf("the hint does not point at this Atlas (%s): %s", u, l)
					}
					break read
				}
			case <-deadline:
				cmd.Process.Kill()
				t.Fatal("dev did not print its URLs within 30s")
			}
		}
		res, err := httpc.Get(dashboard)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("round %d: dashboard %s: %v %v", round, dashboard, res, err)
		}
		res.Body.Close()
		go func() { done <- cmd.Wait() }()
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: dev exited with %v on Ctrl-C; want 0", round, err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("round %d: dev did not stop within 30s of Ctrl-C", round)
		}
	}
}
