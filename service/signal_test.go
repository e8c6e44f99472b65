//go:build unix

package service_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/service"
)

// signalChild is set in the environment of the test binary run as a
// service that Run alone stops: main's context never ends.
const signalChild = "SWITCHBOARD_TEST_SIGNAL_CHILD"

// TestMain runs the service of the signal tests when the test binary is
// started as one; otherwise the tests.
func TestMain(m *testing.M) {
	if os.Getenv(signalChild) != "" {
		os.Exit(signalChildMain())
	}
	os.Exit(m.Run())
}

// signalChildMain serves /slow (which answers once a line comes on
// stdin) on a free port with a context that never ends, prints the
// address, and reports how Run returned.
func signalChildMain() int {
	svc := service.New("signalled")
	release := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n')
		close(release)
	}()
	svc.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(os.Stdout, "slow started")
		<-release
		fmt.Fprint(w, "done")
	})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if addr, err := svc.Addr(ctx); err == nil {
			fmt.Fprintln(os.Stdout, "listening "+addr)
		}
	}()
	if err := svc.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stdout, "run: "+err.Error())
		return 1
	}
	fmt.Fprintln(os.Stdout, "run: clean")
	return 0
}

// signalled is the test binary run as a signalled service.
type signalled struct {
	cmd     *exec.Cmd
	lines   <-chan string // of its stdout and its log
	base    string        // its URL
	release func()        // lets /slow answer
	slow    chan string   // the answer to a GET /slow (startSlow)
}

// startSignalChild starts the test binary as a signalled service.
func startSignalChild(t *testing.T) *signalled {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		signalChild+"=1",
		"SWITCHBOARD_LISTEN=127.0.0.1:0",
		"SWITCHBOARD_ATLAS=http://127.0.0.1:1",
		"SWITCHBOARD_CONFIG_DRAIN_TIMEOUT=5s",
	)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout // the log, on the same pipe
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 256) // the test reads them only while it waits for one
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	addr, ok := waitLine(t, lines, "listening ")
	if !ok {
		t.Fatal("the service did not say where it listens")
	}
	c := &signalled{cmd: cmd, lines: lines, base: "http://" + addr, slow: make(chan string, 1)}
	c.release = func() { io.WriteString(in, "release\n") }
	return c
}

// startSlow sends GET /slow, whose answer (or error) comes on c.slow,
// and waits until the service has it.
func (c *signalled) startSlow(t *testing.T) {
	t.Helper()
	go func() {
		hc := &http.Client{Timeout: 30 * time.Second}
		res, err := hc.Get(c.base + "/slow")
		if err != nil {
			c.slow <- err.Error()
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		c.slow <- string(b)
	}()
	if _, ok := waitLine(t, c.lines, "slow started"); !ok {
		t.Fatal("the slow request did not start")
	}
}

// waitLine returns what follows the first occurrence of mark in the
// lines to come, reading on past lines without it.
func waitLine(t *testing.T, lines <-chan string, mark string) (string, bool) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return "", false
			}
			if _, rest, found := strings.Cut(l, mark); found {
				return rest, true
			}
		case <-timeout:
			t.Fatalf("no line with %q within 30s", mark)
		}
	}
}

// draining is in the kit's log line that starts the shutdown.
const draining = "shutting down: readiness fails from now"

// TestRunDrainsOnSIGTERM: a Run whose context never ends (the SPEC's
// snippet with context.Background()) still drains on SIGTERM: the
// shutdown starts (its log line says readiness fails), the request in
// flight is answered, Run returns nil and the process exits 0.
func TestRunDrainsOnSIGTERM(t *testing.T) {
	c := startSignalChild(t)
	c.startSlow(t)
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitLine(t, c.lines, draining); !ok {
		t.Fatal("no drain after SIGTERM")
	}
	c.release()
	if body := <-c.slow; body != "done" {
		t.Fatalf("the request in flight got %q", body)
	}
	if got, ok := waitLine(t, c.lines, "run: "); !ok || got != "clean" {
		t.Fatalf("Run returned %q; want a clean shutdown", got)
	}
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("the service exited with %v; want 0", err)
	}
}

// TestSecondSignalEndsTheProcess: a second SIGTERM while Run drains ends
// the process at once, as an uncaught signal does.
func TestSecondSignalEndsTheProcess(t *testing.T) {
	c := startSignalChild(t)
	c.startSlow(t) // never released: the drain waits for it
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, ok := waitLine(t, c.lines, draining); !ok {
		t.Fatal("no drain after SIGTERM")
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("the service exited with %v after a second SIGTERM; want killed by it", err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("the service exited with %v after a second SIGTERM; want killed by it", err)
	}
}
