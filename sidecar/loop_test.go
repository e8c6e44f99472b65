package sidecar

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"

	sb "github.com/switchboard-go/switchboard"
)

func TestSelfAddrs(t *testing.T) {
	s := newSelfAddrs("127.0.0.1:4000", "0.0.0.0:5000", "[::1]:6000", ":7000", "localhost:8000", "not-an-address")
	local := ""
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() {
				local = p.Addr().String()
				break
			}
		}
	}
	type tc struct {
		addr string
		port int
		here bool
	}
	cases := []tc{
		{"127.0.0.1", 4000, true},
		{"localhost", 4000, true},
		{"0.0.0.0", 4000, true},
		{"127.0.0.2", 4000, false}, // another loopback address: not the listener's
		{"10.1.1.1", 4000, false},
		{"127.0.0.1", 4001, false},
		{"127.0.0.1", 5000, true},
		{"127.0.0.9", 5000, true},
		{"192.0.2.1", 5000, false}, // not the host's
		{"::1", 6000, true},
		{"::ffff:127.0.0.1", 4000, true},
		{"127.0.0.1", 7000, true},
		{"127.0.0.1", 8000, true},
		{"db.internal", 4000, false}, // a name is not resolved
	}
	if local != "" {
		cases = append(cases, tc{local, 5000, true}, tc{local, 4000, false})
	}
	for _, c := range cases {
		if got := s.here(&sb.Instance{Address: c.addr, Port: c.port}); got != c.here {
			t.Errorf("%s:%d here = %v; want %v", c.addr, c.port, got, c.here)
		}
	}
	ins := []*sb.Instance{{ID: "a", Address: "10.0.0.1", Port: 4000}, {ID: "loop", Address: "127.0.0.1", Port: 4000}, {ID: "b", Address: "10.0.0.2", Port: 4000}}
	if got := s.leaveOut(ins, slog.New(slog.DiscardHandler)); len(got) != 2 || got[0].ID != "a" || got[1].ID != "b" {
		t.Fatalf("leaveOut kept %v; want a and b", got)
	}
}
