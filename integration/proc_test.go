package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binary is the switchboard binary built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "switchboard-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "switchboard")
	// Built with -race, to catch races across real processes; set
	// SWITCHBOARD_NORACE=1 to time things with a normal build.
	args := []string{"build", "-race", "-o", binary, "../cmd/switchboard"}
	if os.Getenv("SWITCHBOARD_NORACE") != "" {
		args = []string{"build", "-o", binary, "../cmd/switchboard"}
	}
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building switchboard:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a switchboard process started by a test; it is killed when the
// test ends if the test did not stop it.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	url    string
	mu     sync.Mutex
	stderr strings.Builder
	done   chan struct{}
	err    error
}

// startAtlas runs `switchboard atlas --insecure` on a free loopback port
// with its data in dir, and waits until it listens.
func startAtlas(t *testing.T, dir string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"atlas", "--listen", "127.0.0.1:0", "--data", dir}, extra...)
	p := &proc{t: t, cmd: exec.Command(binary, args...), done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.stderr.WriteString(line + "\n")
			p.mu.Unlock()
			var rec struct{ Msg, URL string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "atlas: listening" {
				urlc <- rec.URL
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.kill)
	select {
	case p.url = <-urlc:
	case <-p.done:
		t.Fatalf("atlas exited before listening: %v\n%s", p.err, p.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("atlas did not listen within 30s\n%s", p.log())
	}
	p.logOnFailure("atlas")
	return p
}

// logOnFailure has the end of the process's log printed if the test
// fails: a wait that timed out says little on its own.
func (p *proc) logOnFailure(name string) {
	p.t.Cleanup(func() {
		if p.t.Failed() {
			p.t.Logf("%s (pid %d), the end of its log:\n%s", name, p.cmd.Process.Pid, tail(p.log(), 60))
		}
	})
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "")
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// kill sends SIGKILL and waits for the process to end.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and returns the exit error (nil for status 0).
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(30 * time.Second):
		p.kill()
		return fmt.Errorf("did not stop within 30s of SIGTERM")
	}
}

var httpc = &http.Client{Timeout: 10 * time.Second}

// adminToken reads the admin token an Atlas with auth on wrote to dir.
func adminToken(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func call(ctx context.Context, method, url, body string) (int, []byte, error) {
	return callAs(ctx, "", method, url, body)
}

// callAs is call with a bearer token ("" sends none).
func callAs(ctx context.Context, token, method, url, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := httpc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}
