package proxy

import (
	"strings"
	"testing"
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
