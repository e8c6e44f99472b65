package sidecar

import (
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"

	sb "github.com/switchboard-go/switchboard"
)

// selfAddrs are the addresses the sidecar listens on. An instance
// registered at one of them (by mistake, or by a service token that wants
// to hurt) would send each call routed to it back into the sidecar, which
// routes it again: every call in a loop until a header grew too large,
// about 1,500 connections each, and an L4 connection without end until
// the process ran out of files. Such instances are left out of rotation.
type selfAddrs struct {
	// ports holds, per port listened on, the addresses: an unspecified
	// one (0.0.0.0, ::) takes every address of the host.
	ports map[int][]netip.Addr
	// local are the host's own addresses, for the unspecified ones.
	local map[netip.Addr]bool
	// warned holds the ids of instances already logged as left out.
	warned sync.Map
}

// newSelfAddrs takes host:port addresses; those that do not parse (a
// name) are skipped.
func newSelfAddrs(addrs ...string) *selfAddrs {
	s := &selfAddrs{ports: map[int][]netip.Addr{}, local: map[netip.Addr]bool{}}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		p, err := strconv.Atoi(port)
		if err != nil || p == 0 {
			continue
		}
		ip, ok := parseIP(host)
		if host == "" {
			ip, ok = netip.IPv6Unspecified(), true
		}
		if ok {
			s.ports[p] = append(s.ports[p], ip)
		}
	}
	if ifs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range ifs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				s.local[p.Addr().Unmap()] = true
			}
		}
	}
	return s
}

// parseIP parses an IP address, or localhost.
func parseIP(host string) (netip.Addr, bool) {
	if host == "localhost" {
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), true
	}
	ip, err := netip.ParseAddr(host)
	return ip.Unmap(), err == nil
}

// here reports whether a connection to in would reach the sidecar.
func (s *selfAddrs) here(in *sb.Instance) bool {
	// Most instances are at no port the sidecar listens on: the map
	// answers before any address is parsed (every instance of every
	// update comes here).
	listens, ok := s.ports[in.Port]
	if !ok {
		return false
	}
	ip, ok := parseIP(in.Address)
	if !ok {
		return false
	}
	for _, l := range listens {
		switch {
		case l == ip:
			return true
		case l.IsUnspecified() && (ip.IsLoopback() || ip.IsUnspecified() || s.local[ip]):
			return true
		case ip.IsUnspecified() && (l.IsLoopback() || s.local[l]):
			// A connection to 0.0.0.0 goes to the host itself.
			return true
		}
	}
	return false
}

// leaveOut returns instances without those that point at the sidecar,
// logging each of them once.
func (s *selfAddrs) leaveOut(instances []*sb.Instance, log *slog.Logger) []*sb.Instance {
	if s == nil {
		return instances
	}
	var out []*sb.Instance
	for i, in := range instances {
		if !s.here(in) {
			if out != nil {
				out = append(out, in)
			}
			continue
		}
		if out == nil {
			out = append(make([]*sb.Instance, 0, len(instances)-1), instances[:i]...)
		}
		if _, seen := s.warned.LoadOrStore(in.ID, true); !seen {
			log.Warn("sidecar: an instance is registered at an address this sidecar listens on; left out of rotation, as a call to it would come back here", "service", in.Service, "id", in.ID, "address", net.JoinHostPort(in.Address, strconv.Itoa(in.Port)))
		}
	}
	if out == nil {
		return instances
	}
	return out
}
