package switchboard

import "testing"

func TestLocalHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.0.0.1:4100": true, "[::1]:4100": true, "[::1]": true, "::1": true,
		"10.0.0.5:80": true, // an address: no name to point anywhere
		"localhost":   true, "LOCALHOST:4000": true, "localhost.": true, "identity.localhost:4000": true,
		"evil.example": false, "evil.example:4000": false, "localhost.evil.example": false,
		"notlocalhost": false, "": false,
	} {
		if got := LocalHost(host); got != want {
			t.Errorf("LocalHost(%q) = %v; want %v", host, got, want)
		}
	}
}
