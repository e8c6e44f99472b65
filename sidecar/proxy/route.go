package proxy

import (
	"bytes"
	"net"
	"strings"

	sb "github.com/switchboard-go/switchboard"
)

// ServiceHeader names the target service of a request to the frontend.
const ServiceHeader = "Switchboard-Service"

// TimeoutHeader bounds one request ("2s"); the default is 30 s.
const TimeoutHeader = sb.TimeoutHeader

// ServiceOf returns the service a request is for: the Switchboard-Service
// header; else the first label of a Host ending in .localhost
// (identity.localhost:4000); else a Host that is a bare service name. It
// returns an invalid_argument error naming what it looked at otherwise.
func ServiceOf(header, host string) (string, error) {
	if header != "" {
		name := strings.ToLower(strings.TrimSpace(header))
		if sb.ValidateName(ServiceHeader, name) != nil {
			// The error quotes what was sent, not its lower-case form
			// (which is no more valid).
			return "", sb.ValidateName(ServiceHeader, strings.TrimSpace(header))
		}
		return name, nil
	}
	h := strings.ToLower(host)
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(h, ".")
	if label, ok := strings.CutSuffix(h, ".localhost"); ok {
		if i := strings.IndexByte(label, '.'); i >= 0 {
			label = label[:i]
		}
		if err := sb.ValidateName("host", label); err != nil {
			return "", sb.Errorf(sb.EInvalid, "host: %q names no service: the first label of NAME.localhost must be a service name", host)
		}
		return label, nil
	}
	if h != "localhost" && sb.ValidateName("host", h) == nil {
		return h, nil
	}
	return "", sb.Errorf(sb.EInvalid, "no target service: send the %s header, or use a Host such as NAME.localhost (got Host %q)", ServiceHeader, host)
}

// validName reports whether b is a service name, with no allocation.
func validName(b []byte) bool {
	if len(b) == 0 || len(b) > 63 || b[0] < 'a' || b[0] > 'z' {
		return false
	}
	for _, c := range b[1:] {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// serviceOfFast is ServiceOf for the common forms (a lower-case header,
// or a lower-case NAME.localhost[:port] Host) without allocating: it
// returns a slice of its input. ok is false when the slow path must decide.
func serviceOfFast(header, host []byte) (name []byte, ok bool) {
	if len(header) > 0 {
		return header, validName(header)
	}
	h := host
	if i := bytes.LastIndexByte(h, ':'); i >= 0 && bytes.IndexByte(h, ']') < 0 {
		h = h[:i]
	}
	label, found := bytes.CutSuffix(h, []byte(".localhost"))
	if !found || bytes.IndexByte(label, '.') >= 0 {
		return nil, false
	}
	return label, validName(label)
}
