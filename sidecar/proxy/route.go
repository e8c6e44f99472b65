package proxy

import (
	"net"
	"strings"

	sb "github.com/switchboard-go/switchboard"
)

// ServiceHeader names the target service of a request to the frontend.
const ServiceHeader = "Switchboard-Service"

// TimeoutHeader bounds one request ("2s"); the default is 30 s.
const TimeoutHeader = "Switchboard-Timeout"

// ServiceOf returns the service a request is for: the Switchboard-Service
// header; else the first label of a Host ending in .localhost
// (identity.localhost:4000); else a Host that is a bare service name. It
// returns an invalid_argument error naming what it looked at otherwise.
func ServiceOf(header, host string) (string, error) {
	if header != "" {
		name := strings.ToLower(strings.TrimSpace(header))
		if err := sb.ValidateName(ServiceHeader, name); err != nil {
			return "", err
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
