// Package haproxy drives a real HAProxy (2.4 or later) as the sidecar's
// proxy, as SmartStack's Synapse does: it renders haproxy.cfg with one
// shared HTTP frontend, a backend per service with pre-allocated server
// slots, and TCP frontends for L4 upstreams; it applies membership and
// status changes through the Runtime API with no reload; and it reloads
// (seamlessly, in master-worker mode with expose-fd listeners) only when a
// backend or frontend must be added or removed or slots run out, at most
// once per 2 s, and only after `haproxy -c` accepts the new file.
package haproxy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"text/template"
)

// Slot is one pre-allocated server line of a backend.
type Slot struct {
	Addr   string // ip:port; "" for a free slot
	Weight int    // 0 takes no new traffic
	Ready  bool   // false: maint
}

// Backend is one service's backend.
type Backend struct {
	Service string
	Slots   []Slot
}

// TCPFrontend is an L4 upstream's listener and backend.
type TCPFrontend struct {
	Backend
	Listen string
}

// Spec is everything haproxy.cfg says.
type Spec struct {
	// Listen is the shared HTTP frontend.
	Listen string
	// Dir holds the sockets.
	Dir string
	// Realm is named in HAProxy's own error answers.
	Realm string
	// Fallback is the sidecar's built-in frontend, for services HAProxy
	// does not know yet (the first call to a service subscribes to it).
	Fallback string
	// Lua is the path of luaActions (written by writeLua); "" when HAProxy
	// has no Lua: the headers Connection names then go on, and requests
	// that carry Switchboard-Timeout go to Fallback.
	Lua string
	// Exporter: HAProxy has its Prometheus exporter, served on a socket
	// in Dir for the sidecar's /metrics (Driver.Gather).
	Exporter bool
	HTTP     []Backend
	TCP      []TCPFrontend
}

// freeAddr is where a free slot points; it is always in maintenance.
const freeAddr = "127.0.0.1:9"

var cfgTemplate = template.Must(template.New("haproxy.cfg").Funcs(template.FuncMap{
	"quote": regexp.QuoteMeta,
}).Parse(`# Written by the switchboard sidecar; changes are overwritten.
global
    master-worker
    stats socket {{.Dir}}/admin.sock mode 600 level admin expose-fd listeners
    stats timeout 10s
    log stderr format raw local0 warning
    # No per-request log lines (the sidecar's metrics count requests):
    # HAProxy's own alerts and warnings only.
    hard-stop-after 30s
    # Connections at once, as Synapse's example sets it. Left unset,
    # HAProxy derives it from the file limit (about 10,000 here), and
    # measured 13% more CPU per request.
    maxconn 4096
{{- if .Lua}}
    lua-load-per-thread {{.Lua}}
{{- end}}

defaults
    mode http
    option redispatch 1
    option http-keep-alive
    retries 3
    retry-on conn-failure empty-response
    timeout connect 2s
    timeout client 2m
    timeout server 30s
    timeout tunnel 1h
    timeout http-keep-alive 2m
    # Idle connections to servers in maintenance close within a second or
    # two, so that a slot given to another instance (SlotRest, driver.go)
    # never reuses one to the instance that held it.
    default-server pool-purge-delay 1s
    timeout http-request 30s

frontend http-in
    bind {{.Listen}}
    # X-Forwarded-For gets the caller's address last, on one line, as in
    # the built-in proxy: with option forwardfor if-none a caller could
    # name any address, and without if-none HAProxy adds a second line,
    # which a backend reading the first alone never sees. (Of several
    # lines a caller sent, the last is kept.) The service header is
    # matched ignoring case, without converters: the cheapest form.
    http-request set-header X-Forwarded-For "%[req.fhdr(x-forwarded-for)], %[src]" if { req.fhdr(x-forwarded-for) -m found }
    http-request set-header X-Forwarded-For %[src] unless { req.fhdr(x-forwarded-for) -m found }
    # Hop-by-hop headers go no further, either way, as in the built-in
    # proxy. (HAProxy deals with Connection's close and keep-alive and with
    # Transfer-Encoding itself; the backends strip what Connection names.)
    http-request del-header ^(keep-alive|proxy-connection|proxy-authorization|te|trailer)$ -m reg
    http-response del-header ^(keep-alive|proxy-connection|proxy-authenticate|trailer)$ -m reg
    acl has_service req.hdr(switchboard-service) -m found
    # Two names ("a, b", or the header twice) go to the built-in proxy,
    # which decides as in built-in mode ("a, b" is refused, 400): HAProxy
    # would take whichever backend its config lists first.
    acl many_services req.hdr_cnt(switchboard-service) gt 1
    use_backend fallback_sidecar if many_services
{{- if not .Lua}}
    # Without Lua HAProxy cannot read Switchboard-Timeout as the built-in
    # proxy does: that proxy routes the requests that carry one.
    use_backend fallback_sidecar if { req.hdr_cnt(switchboard-timeout) gt 0 }
{{- end}}
{{- range .HTTP}}
    acl hdr_{{.Service}} req.hdr(switchboard-service) -i {{.Service}}
    acl host_{{.Service}} req.hdr(host),lower,field(1,:) -m reg ^{{quote .Service}}(\.([a-z0-9-]+\.)*localhost\.?)?$
{{- end}}
{{- range .HTTP}}
    use_backend be_{{.Service}} if hdr_{{.Service}} || !has_service host_{{.Service}}
{{- end}}
    default_backend fallback_sidecar
{{if .Exporter}}
# HAProxy's own metrics of its backends, which the sidecar's /metrics
# serves with its own.
frontend metrics
    bind unix@{{.Dir}}/prom.sock mode 600
    http-request use-service prometheus-exporter
{{end}}
# Services HAProxy does not route yet go to the sidecar's built-in proxy,
# which starts watching them. (Not be_*: a service may be named sidecar.)
backend fallback_sidecar
    # The built-in proxy bounds each request itself (Switchboard-Timeout, up
    # to an hour, or its 30 s): HAProxy waits for its answer.
    timeout server 3601s
    server sidecar {{.Fallback}}
{{range .HTTP}}
backend be_{{.Service}}
    balance leastconn
{{- if $.Lua}}
    # Switchboard-Timeout, read as the built-in proxy reads it (its first
    # line; switchboard.lua): a value it refuses is answered 400, the
    # others bound the wait for the answer. Here, once the service is
    # known, as in the built-in proxy, which decides what goes to it.
    http-request set-var(txn.sb_timeout) req.fhdr(switchboard-timeout,1),lua.sb_timeout_ms if { req.hdr_cnt(switchboard-timeout) gt 0 }
    http-request return status 400 content-type application/json hdr X-Switchboard-Error 1 lf-string "%[req.fhdr(switchboard-timeout,1),lua.sb_timeout_error]" if { var(txn.sb_timeout) -m int lt 0 }
    http-request set-timeout server var(txn.sb_timeout) if { var(txn.sb_timeout) -m int gt 0 }
{{- /* Then, first of the others: a retry's rule (Idempotency-Key) reads the request the instance gets. */}}
    http-request lua.sb_hop_req if { req.fhdr_cnt(connection) gt 0 }
    http-response lua.sb_hop_res if { res.fhdr_cnt(connection) gt 0 }
{{- end}}
    # A request whose answer never started is retried only when idempotent
    # or carrying Idempotency-Key (connect failures always are).
    acl idempotent method GET HEAD PUT DELETE OPTIONS
    acl idempotency_key req.hdr(idempotency-key) -m found
    http-request disable-l7-retry if !idempotent !idempotency_key
    http-request del-header switchboard-service
    http-request del-header switchboard-timeout
    http-error status 503 content-type application/json hdr X-Switchboard-Error 1 lf-string "{\"error\":{\"code\":\"unavailable\",\"message\":\"service {{.Service}} in realm {{$.Realm}} has no routable instance\"}}"
    http-error status 502 content-type application/json hdr X-Switchboard-Error 1 lf-string "{\"error\":{\"code\":\"bad_gateway\",\"message\":\"service {{.Service}} in realm {{$.Realm}}: every try failed\"}}"
    http-error status 504 content-type application/json hdr X-Switchboard-Error 1 lf-string "{\"error\":{\"code\":\"deadline_exceeded\",\"message\":\"service {{.Service}} in realm {{$.Realm}}: no answer in time\"}}"
{{- range $i, $s := .Slots}}
    server s{{$i}} {{if $s.Addr}}{{$s.Addr}} weight {{$s.Weight}}{{if not $s.Ready}} disabled{{end}}{{else}}` + freeAddr + ` weight 0 disabled{{end}}
{{- end}}
{{end}}
{{- range .TCP}}
frontend tcp_{{.Service}}
    mode tcp
    bind {{.Listen}}
    default_backend tcpbe_{{.Service}}

backend tcpbe_{{.Service}}
    mode tcp
    balance leastconn
{{- range $i, $s := .Slots}}
    server s{{$i}} {{if $s.Addr}}{{$s.Addr}} weight {{$s.Weight}}{{if not $s.Ready}} disabled{{end}}{{else}}` + freeAddr + ` weight 0 disabled{{end}}
{{- end}}
{{end}}`))

// Render writes haproxy.cfg for spec. Services are written in name order,
// so the same spec always gives the same file.
func Render(spec Spec) (string, error) {
	spec.HTTP = slices.Clone(spec.HTTP)
	spec.TCP = slices.Clone(spec.TCP)
	slices.SortFunc(spec.HTTP, func(a, b Backend) int { return strings.Compare(a.Service, b.Service) })
	slices.SortFunc(spec.TCP, func(a, b TCPFrontend) int { return strings.Compare(a.Service, b.Service) })
	var b strings.Builder
	if err := cfgTemplate.Execute(&b, spec); err != nil {
		return "", fmt.Errorf("haproxy: render: %w", err)
	}
	return b.String(), nil
}

// Shape is what forces a reload when it changes: the frontends, the
// backends and their slot counts (not who is in the slots).
func (s Spec) Shape() string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen=%s fallback=%s", s.Listen, s.Fallback)
	http := slices.Clone(s.HTTP)
	slices.SortFunc(http, func(a, b Backend) int { return strings.Compare(a.Service, b.Service) })
	for _, be := range http {
		fmt.Fprintf(&b, " http:%s/%d", be.Service, len(be.Slots))
	}
	tcp := slices.Clone(s.TCP)
	slices.SortFunc(tcp, func(a, b TCPFrontend) int { return strings.Compare(a.Service, b.Service) })
	for _, t := range tcp {
		fmt.Fprintf(&b, " tcp:%s@%s/%d", t.Service, t.Listen, len(t.Slots))
	}
	return b.String()
}
