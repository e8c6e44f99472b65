package haproxy

import (
	"bufio"
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
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// timeoutProbe is a HAProxy that runs the backends' Switchboard-Timeout
// rules of haproxy.cfg and answers with what they decided: 200 and the
// timeout in milliseconds, their 400, or 204 when the request names no
// timeout.
type timeoutProbe struct {
	addr string
	conn net.Conn
	br   *bufio.Reader
}

func startTimeoutProbe(tb testing.TB) *timeoutProbe {
	tb.Helper()
	dir := tb.TempDir()
	lua := filepath.Join(dir, luaFile)
	if err := writeLua(lua); err != nil {
		tb.Fatal(err)
	}
	// The backends' rules are taken from the rendered config, so that the
	// probe runs what the sidecar writes.
	cfg, err := Render(Spec{Listen: "127.0.0.1:1", Dir: dir, Fallback: "127.0.0.1:9", Lua: lua, HTTP: []Backend{{Service: "a", Slots: make([]Slot, 1)}}})
	if err != nil {
		tb.Fatal(err)
	}
	var rules []string
	for line := range strings.Lines(cfg) {
		if strings.Contains(line, "lua.sb_timeout") {
			rules = append(rules, line)
		}
	}
	if len(rules) != 2 { // the call and the 400, in be_a
		tb.Fatalf("the rendered config has %d of the backend's lines about sb_timeout; want 2:\n%s", len(rules), cfg)
	}
	probe := &timeoutProbe{addr: unusedAddr(tb)}
	text := fmt.Sprintf(`global
    lua-load-per-thread %s
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend probe
    bind %s
%s    http-request return status 200 content-type text/plain lf-string "%%[var(txn.sb_timeout)]" if { var(txn.sb_timeout) -m int gt 0 }
    http-request return status 204
`, lua, probe.addr, strings.Join(rules, ""))
	path := filepath.Join(dir, "probe.cfg")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("haproxy", "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("haproxy: %v (test.sh installs it)", err)
	}
	tb.Cleanup(func() {
		if probe.conn != nil {
			probe.conn.Close()
		}
		cmd.Process.Kill()
		cmd.Wait()
	})
	if !poll(func() bool {
		c, err := net.Dial("tcp", probe.addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		tb.Fatalf("the probe HAProxy does not listen on %s", probe.addr)
	}
	return probe
}

// ask sends v as the value of Switchboard-Timeout.
func (p *timeoutProbe) ask(v string) (*http.Response, string, error) {
	if p.conn == nil {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			return nil, "", err
		}
		p.conn, p.br = c, bufio.NewReader(c)
	}
	p.conn.SetDeadline(time.Now().Add(10 * time.Second))
	res, body, err := func() (*http.Response, string, error) {
		if _, err := io.WriteString(p.conn, "GET / HTTP/1.1\r\nHost: probe\r\nSwitchboard-Timeout: "+v+"\r\n\r\n"); err != nil {
			return nil, "", err
		}
		res, err := http.ReadResponse(p.br, nil)
		if err != nil {
			return nil, "", err
		}
		b, err := io.ReadAll(res.Body)
		return res, string(b), err
	}()
	if err != nil || res.Close {
		p.conn.Close()
		p.conn = nil
	}
	return res, body, err
}

// FuzzTimeoutHeader holds haproxy mode's reading of Switchboard-Timeout
// (sb_timeout_ms and sb_timeout_error in switchboard.lua, run by the real
// HAProxy) to the built-in proxy's (sb.ParseTimeout): the same values
// taken, as the same milliseconds (rounded up), and the same refused with
// the same message.
func FuzzTimeoutHeader(f *testing.F) {
	probe := startTimeoutProbe(f)
	f.Fuzz(func(t *testing.T, v string) {
		// What a header value can hold; HAProxy and fasthttp both drop
		// the blanks around it.
		if strings.ContainsFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			t.Skip()
		}
		v = strings.Trim(v, " \t")
		res, body, err := probe.ask(v)
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		d, perr := sb.ParseTimeout(v)
		switch {
		case v == "":
			if res.StatusCode != 204 {
				t.Fatalf("an empty value: %d %q; want no timeout (204)", res.StatusCode, body)
			}
		case perr == nil:
			want := strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10)
			if res.StatusCode != 200 || body != want {
				t.Fatalf("%q: HAProxy %d %q; the built-in proxy takes it as %v (%s ms)", v, res.StatusCode, body, d, want)
			}
		default:
			var e struct {
				Error sb.Error `json:"error"`
			}
			if res.StatusCode != 400 || res.Header.Get("X-Switchboard-Error") != "1" || res.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%q: HAProxy %d %q; the built-in proxy refuses it (%v)", v, res.StatusCode, body, perr)
			}
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Code != sb.EInvalid {
				t.Fatalf("%q: HAProxy's 400 body %q: %v", v, body, err)
			}
			if e.Error.Message != sb.ErrorMessage(perr) {
				t.Fatalf("%q: HAProxy says %q; the built-in proxy %q", v, e.Error.Message, sb.ErrorMessage(perr))
			}
		}
	})
}
