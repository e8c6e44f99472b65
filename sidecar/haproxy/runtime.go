package haproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runtimeAPI talks to HAProxy's admin socket (the Runtime API): one
// connection per batch of commands, separated by ";".
type runtimeAPI struct {
	path string
}

// maxBatch is how many commands go in one connection.
const maxBatch = 32

// run sends commands and returns HAProxy's answer to each batch; an answer
// that reports an error is returned as an error.
func (r runtimeAPI) run(ctx context.Context, cmds []string) error {
	for len(cmds) > 0 {
		n := min(len(cmds), maxBatch)
		out, err := r.send(ctx, strings.Join(cmds[:n], ";"))
		if err != nil {
			return err
		}
		if bad := errorLine(out); bad != "" {
			return fmt.Errorf("haproxy runtime API: %s (after %q)", bad, strings.Join(cmds[:n], ";"))
		}
		cmds = cmds[n:]
	}
	return nil
}

// send sends one line and reads the answer until HAProxy closes.
func (r runtimeAPI) send(ctx context.Context, line string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", r.path)
	if err != nil {
		return "", fmt.Errorf("haproxy runtime API: %w", err)
	}
	defer c.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(5 * time.Second)
	}
	c.SetDeadline(dl)
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return "", fmt.Errorf("haproxy runtime API: %w", err)
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return b.String(), fmt.Errorf("haproxy runtime API: %w", err)
	}
	return b.String(), nil
}

// errorLine returns the first line of an answer that reports a failure.
// "set server ... addr" answers "IP changed from ..." on success, and the
// other commands used here answer nothing.
func errorLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "IP changed from") || strings.HasPrefix(l, "no need to change") || strings.HasPrefix(l, "port changed from") {
			continue
		}
		return l
	}
	return ""
}

// lastSessions reads `show stat` for the backends: for each, the seconds
// since it was last given a request, or -1 for never (since the worker
// started).
func (r runtimeAPI) lastSessions(ctx context.Context) (map[string]int, error) {
	out, err := r.send(ctx, "show stat -1 2 -1")
	if err != nil {
		return nil, err
	}
	return parseLastSessions(out)
}

// parseLastSessions reads the answer to `show stat -1 2 -1`.
func parseLastSessions(out string) (map[string]int, error) {
	at, rows, err := statRows(out, "pxname", "lastsess")
	if err != nil {
		return nil, err
	}
	seen := map[string]int{}
	for _, f := range rows {
		n, err := strconv.Atoi(f[at[1]])
		if err != nil {
			n = -1 // empty: never
		}
		seen[f[at[0]]] = n
	}
	return seen, nil
}

// statRows reads an answer of `show stat`: CSV after a header line
// "# pxname,svname,...". It returns where each of names is in a row, and
// the rows split on commas; a row too short to hold them is left out.
func statRows(out string, names ...string) (at []int, rows [][]string, err error) {
	lines := strings.Split(out, "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "# ") {
		return nil, nil, fmt.Errorf("haproxy runtime API: show stat: no header line in %q", firstLine(out))
	}
	cols := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	at = make([]int, len(names))
	for i, n := range names {
		if at[i] = slices.Index(cols, n); at[i] < 0 {
			return nil, nil, fmt.Errorf("haproxy runtime API: show stat: no %s column in %q", n, lines[0])
		}
	}
	for _, l := range lines[1:] {
		if f := strings.Split(l, ","); len(f) > slices.Max(at) {
			rows = append(rows, f)
		}
	}
	return at, rows, nil
}

// Outcomes is what `show stat` counts of one server slot since its worker
// started, as outlier ejection counts requests: answered (under 500), and
// failed (a 5xx from the instance, or a connection to it that failed:
// econ, or wredis, a request sent elsewhere after its try here failed).
// HAProxy's response errors (eresp) are not counted: they mix broken
// connections with timeouts, and a short timeout the caller chose says
// nothing of the instance. In TCP mode a connection tried again on the
// same instance (wretr) failed too, and every other try (stot counts
// them all) counts as answered.
type Outcomes struct {
	Answered, Failed uint64
}

// serverStats reads `show stat` for the servers, per backend and server
// name, and the pid of the worker that counted them.
func (r runtimeAPI) serverStats(ctx context.Context) (pid int, stats map[string]map[string]Outcomes, idle map[string]map[string]bool, err error) {
	out, err := r.send(ctx, "show info;show stat -1 4 -1")
	if err != nil {
		return 0, nil, nil, err
	}
	info, stat, ok := strings.Cut(out, "\n# ")
	if !ok {
		return 0, nil, nil, fmt.Errorf("haproxy runtime API: show stat: no header line in %q", firstLine(out))
	}
	if pid, err = infoPID(info); err != nil {
		return 0, nil, nil, err
	}
	if stats, err = parseServerStats("# " + stat); err != nil {
		return 0, nil, nil, err
	}
	idle, err = parseIdle("# " + stat)
	return pid, stats, idle, err
}

// parseIdle reads which servers of an answer to `show stat` have no
// session open (scur 0).
func parseIdle(out string) (map[string]map[string]bool, error) {
	at, rows, err := statRows(out, "pxname", "svname", "scur")
	if err != nil {
		return nil, err
	}
	idle := map[string]map[string]bool{}
	for _, f := range rows {
		if f[at[2]] != "0" {
			continue
		}
		if idle[f[at[0]]] == nil {
			idle[f[at[0]]] = map[string]bool{}
		}
		idle[f[at[0]]][f[at[1]]] = true
	}
	return idle, nil
}

// parseServerStats reads the answer to `show stat -1 4 -1`. A line whose
// counters do not read as numbers is left out.
func parseServerStats(out string) (map[string]map[string]Outcomes, error) {
	at, rows, err := statRows(out, "pxname", "svname", "stot", "econ", "wredis", "wretr", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx")
	if err != nil {
		return nil, err
	}
	stats := map[string]map[string]Outcomes{}
	for _, f := range rows {
		var n [9]uint64        // stot ... hrsp_5xx
		http := f[at[6]] != "" // TCP backends leave the hrsp columns empty
		ok := true
		for i := range n {
			v := f[at[i+2]]
			if v == "" && i >= 4 && !http {
				continue
			}
			if n[i], ok = parseCount(v); !ok {
				break
			}
		}
		if !ok {
			continue
		}
		stot, econ, wredis, wretr := n[0], n[1], n[2], n[3]
		var sv Outcomes
		if http {
			sv = Outcomes{Answered: n[4] + n[5] + n[6] + n[7], Failed: n[8] + econ + wredis}
		} else {
			failed := econ + wredis + wretr
			sv = Outcomes{Answered: stot - min(stot, failed), Failed: failed}
		}
		px := f[at[0]]
		if stats[px] == nil {
			stats[px] = map[string]Outcomes{}
		}
		stats[px][f[at[1]]] = sv
	}
	return stats, nil
}

// parseCount reads one of show stat's counters.
func parseCount(v string) (uint64, bool) {
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// masterPID returns the pid of the master in the answer to `show proc`
// on the master CLI, or 0 when there is none. The driver signals it, and
// kill(2) takes a 32-bit pid_t: a larger number would be cut down to
// another process's pid, or to -1, every process the sidecar may signal.
func masterPID(out string) int {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[1] == "master" {
			if pid, err := strconv.ParseInt(f[0], 10, 32); err == nil && pid > 0 {
				return int(pid)
			}
		}
	}
	return 0
}

// masterReloads returns the master's count of reloads in the answer to
// `show proc`.
func masterReloads(out string) (int, error) {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == "master" {
			n, err := strconv.Atoi(f[2])
			if err != nil || n < 0 {
				return 0, fmt.Errorf("haproxy: show proc: the master's reloads are not a count in %q", l)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("haproxy: no master line in show proc: %q", out)
}

// infoPID returns the worker's pid in the answer to `show info`.
func infoPID(out string) (int, error) {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Pid: "); ok {
			pid, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || pid <= 0 {
				return 0, fmt.Errorf("haproxy: show info: no pid in %q", l)
			}
			return pid, nil
		}
	}
	return 0, errors.New("haproxy: no Pid in show info")
}
