package proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

func TestServiceOf(t *testing.T) {
	tests := []struct {
		header, host, want, err string
	}{
		{"identity", "127.0.0.1:4000", "identity", ""},
		{" Identity ", "billing.localhost", "identity", ""},
		{"", "identity.localhost:4000", "identity", ""},
		{"", "IDENTITY.LOCALHOST", "identity", ""},
		{"", "identity.localhost.", "identity", ""},
		{"", "v2.identity.localhost:4000", "v2", ""},
		{"", "identity", "identity", ""},
		{"", "identity:4000", "identity", ""},
		{"", "127.0.0.1:4000", "", "no target service"},
		{"", "localhost:4000", "", "no target service"},
		{"", "", "", "no target service"},
		{"", "example.com", "", "no target service"},
		{"", "_x.localhost", "", "names no service"},
		{"bad_name", "", "", "Switchboard-Service: must match"},
		{"Bad!", "", "", `Switchboard-Service: must match ^[a-z][a-z0-9-]{0,62}$ (a DNS label), got "Bad!"`},
	}
	for _, tt := range tests {
		got, err := ServiceOf(tt.header, tt.host)
		if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("ServiceOf(%q, %q) = %q, %v; want %q, %q", tt.header, tt.host, got, err, tt.want, tt.err)
		}
	}
}

func FuzzServiceOf(f *testing.F) {
	f.Add("identity", "")
	f.Add("", "identity.localhost:4000")
	f.Add("", "[::1]:4000")
	f.Add("", "a.b.c.localhost")
	f.Fuzz(func(t *testing.T, header, host string) {
		// The allocation-free path agrees with the full one whenever it
		// decides.
		if fast, ok := serviceOfFast([]byte(header), []byte(host)); ok {
			if slow, err := ServiceOf(header, host); err != nil || slow != string(fast) {
				t.Fatalf("serviceOfFast(%q, %q) = %q; ServiceOf = %q, %v", header, host, fast, slow, err)
			}
		}
		name, err := ServiceOf(header, host)
		if err != nil {
			return
		}
		// Whatever it returns is a valid service name.
		if again, err := ServiceOf(name, ""); err != nil || again != name {
			t.Fatalf("ServiceOf(%q, %q) = %q, which is not a service name", header, host, name)
		}
	})
}

// FuzzTimeoutHeader: a Switchboard-Timeout is taken when it is a Go
// duration from 1ms to 1h, and is then what it says (its String reads
// back the same); anything else is invalid_argument naming the header and
// quoting the value.
func FuzzTimeoutHeader(f *testing.F) {
	for _, s := range []string{"2s", "1ms", "1h", "1h0m0.000000001s", "999us", "0", "-1s", "1.5m", "+3s", "2", "9223372036854775807ns", " 2s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, err := parseTimeout([]byte(v))
		want, perr := time.ParseDuration(v)
		ok := perr == nil && want >= MinTimeout && want <= MaxTimeout
		if err != nil {
			if ok {
				t.Fatalf("parseTimeout(%q): %v; want %v", v, err, want)
			}
			if sb.ErrorCode(err) != sb.EInvalid || !strings.Contains(sb.ErrorMessage(err), TimeoutHeader+": ") || !strings.Contains(sb.ErrorMessage(err), fmt.Sprintf("%q", v)) {
				t.Fatalf("parseTimeout(%q): error %v is not invalid_argument naming the header and the value", v, err)
			}
			return
		}
		if !ok || d != want {
			t.Fatalf("parseTimeout(%q) = %v; ParseDuration says %v, %v", v, d, want, perr)
		}
		if again, err := parseTimeout([]byte(d.String())); err != nil || again != d {
			t.Fatalf("parseTimeout(%q) = %v, whose String parses to %v, %v", v, d, again, err)
		}
	})
}
