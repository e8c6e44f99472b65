package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// buildSwitchboard builds ./cmd/switchboard of the module at root into dir.
func buildSwitchboard(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "switchboard")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/switchboard")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/switchboard: %v\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot is the directory of the main module the benchmark runs in.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the benchmark inside the switchboard module (go run ./bench/atlas)")
	}
	return filepath.Dir(gomod), nil
}

// atlasProc is a running `switchboard atlas`.
type atlasProc struct {
	cmd  *exec.Cmd
	url  string
	pid  int
	log  *logSink
	done chan struct{} // closed when the process has exited
	err  error         // Wait's error, set before done closes

	stopOnce sync.Once
}

// logSink copies Atlas's stderr into a file, line by line, and reports the
// URL from the first JSON line that carries one.
type logSink struct {
	mu    sync.Mutex
	file  *os.File
	buf   []byte
	found bool
	url   chan string
	tail  []string // last lines, for error reports
}

func (l *logSink) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.file.Write(p)
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		line := string(l.buf[:i])
		l.buf = l.buf[i+1:]
		l.tail = append(l.tail, line)
		if len(l.tail) > 20 {
			l.tail = l.tail[1:]
		}
		if l.found {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if u, ok := rec["url"].(string); ok && strings.HasPrefix(u, "http://") {
			l.found = true
			l.url <- u
		}
	}
	return len(p), nil
}

func (l *logSink) Tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.tail, "\n")
}

// startAtlas runs `switchboard atlas --insecure --listen 127.0.0.1:0 --data
// dataDir [extra...]` and waits for the line that says where it listens.
func startAtlas(ctx context.Context, bin, dataDir, logPath string, extra ...string) (*atlasProc, error) {
	args := append([]string{"atlas", "--insecure", "--listen", "127.0.0.1:0", "--data", dataDir}, extra...)
	p, err := spawn(bin, args, logPath)
	if err != nil {
		return nil, err
	}
	sink := p.log
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case p.url = <-sink.url:
	case <-p.done:
		return nil, fmt.Errorf("atlas exited before listening (%v):\n%s", p.err, sink.Tail())
	case <-timer.C:
		p.stop()
		return nil, fmt.Errorf("atlas logged no listening URL in 30s:\n%s", sink.Tail())
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
	if !strings.HasPrefix(p.url, "http://127.0.0.1:") {
		p.stop()
		return nil, fmt.Errorf("atlas listens on %s, not on 127.0.0.1", p.url)
	}
	return p, nil
}

// spawn starts bin with args in its own process group, its output going
// to logPath.
func spawn(bin string, args []string, logPath string) (*atlasProc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	sink := &logSink{file: f, url: make(chan string, 1)}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = sink
	cmd.Stderr = sink
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	p := &atlasProc{cmd: cmd, pid: cmd.Process.Pid, log: sink, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// stop ends Atlas: SIGTERM (it answers blocking queries, drains requests
// for up to 10 s and closes the store), then SIGKILL after 15 s.
func (p *atlasProc) stop() {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(15 * time.Second):
		}
		fmt.Fprintln(os.Stderr, "atlas did not stop within 15s of SIGTERM; killing it")
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
	})
}

// alive returns an error when Atlas has exited.
func (p *atlasProc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("atlas exited (%v):\n%s", p.err, p.log.Tail())
	default:
		return nil
	}
}

// memory is what /proc/PID/status says of a process, in KiB.
type memory struct {
	RSS, Anon, File, HWM int64
}

func (p *atlasProc) memory() (memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return memory{}, err
	}
	var m memory
	for _, line := range strings.Split(string(b), "\n") {
		name, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch name {
		case "VmRSS":
			m.RSS = n
		case "RssAnon":
			m.Anon = n
		case "RssFile":
			m.File = n
		case "VmHWM":
			m.HWM = n
		}
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("/proc/%d/status: no VmRSS", p.pid)
	}
	return m, nil
}

// cpu is the CPU time Atlas has used (user + system, all threads). Linux
// reports it in USER_HZ ticks, which is 100 on every platform Go supports.
func (p *atlasProc) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// writeBytes is write_bytes of /proc/PID/io: bytes Atlas sent to storage.
func (p *atlasProc) writeBytes() (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", p.pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// machineCPU is the CPU time every process on the machine has used, from
// the first line of /proc/stat (USER_HZ ticks), counting steal time as
// busy: what other processes (and the hypervisor) take is what Atlas and
// the load generator did not get.
func machineCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// loadAverage is the first field of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// selfCPU is the CPU time the benchmark itself has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// metrics scrapes Atlas's /metrics into name{labels} -> value.
func metrics(ctx context.Context, c *http.Client, base string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := send(ctx, c, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}
