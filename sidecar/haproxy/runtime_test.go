package haproxy

import (
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzRuntimeAnswers feeds any text, as HAProxy's Runtime API or master
// CLI might answer, to the parsers of those answers: none panics, an
// error says what it read, and what they return is what the text says.
func FuzzRuntimeAnswers(f *testing.F) {
	f.Add("IP changed from '10.0.0.1' to '10.0.0.2', port changed from '80' to '81' by 'stats socket command'\n")
	f.Add("No such server.\n\n")
	f.Add("# pxname,svname,qcur,qmax,scur,lastsess,status\nbe_a,BACKEND,0,0,0,5,UP\nbe_b,BACKEND,0,0,0,,UP\nbe_c,BACKEND,0,0,0,-1,UP\n\n")
	f.Add("#<PID>          <type>          <reloads>       <uptime>        <version>\n3411            master          0 [failed: 0]   0d00h00m08s     2.9.0\n# workers\n3412            worker          0               0d00h00m08s     2.9.0\n")
	f.Add("Name: HAProxy\nVersion: 2.9.0\nPid: 3412\nUptime_sec: 8\n")
	f.Add(serverStatSample)
	now := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, out string) {
		if l := errorLine(out); l != "" {
			var lines []string
			for _, x := range strings.Split(out, "\n") {
				lines = append(lines, strings.TrimSpace(x))
			}
			if !slices.Contains(lines, l) || strings.HasPrefix(l, "IP changed from") {
				t.Fatalf("errorLine(%q) = %q, not a failure line of the answer", out, l)
			}
		}

		last, err := parseLastSessions(out)
		if err != nil && !strings.HasPrefix(err.Error(), "haproxy runtime API: show stat: ") {
			t.Fatalf("parseLastSessions(%q): error %q does not say what it read", out, err)
		}
		fields := map[string]bool{}
		for _, l := range strings.Split(out, "\n") {
			for _, x := range strings.Split(l, ",") {
				fields[x] = true
			}
		}
		for px, at := range servedAt(last, now) {
			if !fields[px] {
				t.Fatalf("parseLastSessions(%q) has backend %q, not in the answer", out, px)
			}
			// Called takes a backend served within the window as called:
			// one "served" in the future would always be.
			if at.After(now) {
				t.Fatalf("servedAt: %s, last given a request %d s ago, was served at %v, after now (%v)", px, last[px], at, now)
			}
		}

		stats, err := parseServerStats(out)
		if err != nil && !strings.HasPrefix(err.Error(), "haproxy runtime API: show stat: ") {
			t.Fatalf("parseServerStats(%q): error %q does not say what it read", out, err)
		}
		for px, svs := range stats {
			for sv := range svs {
				if !fields[px] || !fields[sv] {
					t.Fatalf("parseServerStats(%q) has server %s/%s, not in the answer", out, px, sv)
				}
			}
		}

		idle, err := parseIdle(out)
		if err != nil && !strings.HasPrefix(err.Error(), "haproxy runtime API: show stat: ") {
			t.Fatalf("parseIdle(%q): error %q does not say what it read", out, err)
		}
		for px, svs := range idle {
			for sv := range svs {
				if !fields[px] || !fields[sv] || !fields["0"] {
					t.Fatalf("parseIdle(%q) has server %s/%s idle, not so in the answer", out, px, sv)
				}
			}
		}

		// The driver sends SIGUSR1 to this pid: kill(2) takes a 32-bit
		// pid_t, and a larger number would reach another process, or
		// every process (-1).
		if pid := masterPID(out); pid < 0 || pid > math.MaxInt32 {
			t.Fatalf("masterPID(%q) = %d; want 0 or a pid", out, pid)
		}
		if _, err := masterReloads(out); err != nil && !strings.Contains(err.Error(), "show proc") {
			t.Fatalf("masterReloads(%q): error %q does not say what it read", out, err)
		}
		if _, err := infoPID(out); err != nil && !strings.Contains(err.Error(), "show info") {
			t.Fatalf("infoPID(%q): error %q does not say what it read", out, err)
		}
	})
}

// HAProxy's routine output (each reload's notices, the old worker's
// proxies stopping, the state changes the driver makes) was logged as
// warnings: noise for whoever alerts on them.
func TestRoutineHAProxyLinesAreInfo(t *testing.T) {
	for line, want := range map[string]slog.Level{
		"[NOTICE]   (18598) : New worker (18601) forked":                                         slog.LevelInfo,
		"[WARNING]  (18601) : Proxy http-in stopped (cumulated conns: FE: 0, BE: 0).":            slog.LevelInfo,
		"[WARNING]  (1) : Server be_web/s1 is UP/READY (leaving forced maintenance).":            slog.LevelInfo,
		"[WARNING]  (1) : Server be_web/s2 is going DOWN for maintenance. 1 active server left.": slog.LevelInfo,
		"[WARNING]  (1) : Server be_web/s1 is DOWN, reason: Layer4 connection problem":           slog.LevelWarn,
		"[ALERT]    (1) : backend 'be_web' has no server available!":                             slog.LevelWarn,
		"[WARNING]  (18611) : Exiting Master process...":                                         slog.LevelWarn,
	} {
		if got := lineLevel(line); got != want {
			t.Errorf("lineLevel(%q) = %v, want %v", line, got, want)
		}
	}
}

// serverStatSample is `show stat -1 4 -1` cut to the columns read: an
// HTTP backend's server and a TCP backend's (no hrsp columns).
const serverStatSample = "# pxname,svname,stot,econ,eresp,wretr,wredis,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx\n" +
	"be_a,s0,12,1,3,2,1,0,8,0,1,2\n" +
	"tcpbe_b,s0,9,1,0,3,1,,,,,\n" +
	"be_c,s1,x,0,0,0,0,0,0,0,0,0\n"

// parseServerStats counts answers under 500 as answered, and 5xx,
// connection errors and redispatches as failed (never eresp: timeouts);
// a TCP server's retries fail too, and its other tries count as
// answered; a line that does not read is left out.
func TestParseServerStats(t *testing.T) {
	got, err := parseServerStats(serverStatSample)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]Outcomes{
		"be_a":    {"s0": {Answered: 9, Failed: 4}},
		"tcpbe_b": {"s0": {Answered: 4, Failed: 5}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("parseServerStats = %v; want %v", got, want)
	}
}
