package switchboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultRealm is the realm of anything that does not name one.
const DefaultRealm = "dev"

// Limits of the API (SPEC "Atlas HTTP API").
const (
	MaxBodyBytes   = 1 << 20   // any request body
	MaxLayerBytes  = 512 << 10 // one config layer
	MaxTags        = 32
	MaxTagBytes    = 128
	MaxMetaEntries = 64
	MaxMetaBytes   = 512 // a meta key or value
	MaxOutputBytes = 4 << 10
	MinTTL         = time.Second
	MaxTTL         = 24 * time.Hour
	DefaultTTL     = 30 * time.Second
)

var (
	nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	idRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// ValidateName checks a service or realm name; field names the field in the
// error message.
func ValidateName(field, name string) error {
	if name == "" {
		return Errorf(EInvalid, "%s: required", field)
	}
	if !nameRE.MatchString(name) {
		return Errorf(EInvalid, "%s: must match ^[a-z][a-z0-9-]{0,62}$ (a DNS label), got %q", field, clip(name))
	}
	return nil
}

// Hostname is this host's name as instance ids use it (SERVICE-HOST-PORT):
// os.Hostname(), lower-cased. The whole name, as Consul's node names are:
// hosts web1.a.example and web1.b.example must not share ids.
func Hostname() (string, error) {
	h, err := os.Hostname()
	return strings.ToLower(h), err
}

// ValidateID checks an instance id.
func ValidateID(id string) error {
	if id == "" {
		return Errorf(EInvalid, "id: required")
	}
	if !idRE.MatchString(id) {
		return Errorf(EInvalid, "id: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, got %q", clip(id))
	}
	return nil
}

// clip shortens user input quoted back in an error message.
func clip(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "..."
}

// Status is an instance's health.
type Status string

// The three statuses. Routing prefers passing, falls back to warning, never
// uses critical.
const (
	Passing  Status = "passing"
	Warning  Status = "warning"
	Critical Status = "critical"
)

// Valid reports whether s is one of the three statuses.
func (s Status) Valid() bool { return s == Passing || s == Warning || s == Critical }

// ParseStatus validates a status named in field.
func ParseStatus(field, s string) (Status, error) {
	st := Status(s)
	if !st.Valid() {
		return "", Errorf(EInvalid, "%s: must be passing, warning or critical, got %q", field, clip(s))
	}
	return st, nil
}

// Duration is a time.Duration that reads and writes Go duration strings
// ("10s") in JSON.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string such as "1m30s". null leaves d
// as it was, as encoding/json does for its own types.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("must be a duration string such as \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("must be a duration such as \"30s\", got %q", clip(s))
	}
	*d = Duration(v)
	return nil
}

// Instance is one running copy of a service, as Atlas knows it.
type Instance struct {
	ID      string            `json:"id"`
	Service string            `json:"service"`
	Realm   string            `json:"realm"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags"`
	Meta    map[string]string `json:"meta"`
	Status  Status            `json:"status"`
	Output  string            `json:"output"`
	Enabled bool              `json:"enabled"`
	// DisabledReason is the operator's reason when Enabled is false.
	DisabledReason  string    `json:"disabled_reason,omitempty"`
	TTL             Duration  `json:"ttl"`
	RegisteredAt    time.Time `json:"registered_at"`
	StatusChangedAt time.Time `json:"status_changed_at"`
	// The lease fields are filled only where the SPEC shows them: a single
	// instance, or a listing asked for with ?leases=true.
	LastHeartbeat *time.Time `json:"last_heartbeat,omitempty"`
	ExpiresAt     *time.Time `json:"expires_at,omitempty"`
}

// Routable reports whether the instance may get new traffic at all.
func (in *Instance) Routable() bool { return in.Enabled && in.Status != Critical }

// Registration is the body of PUT /v1/instances/{id}.
type Registration struct {
	Service string            `json:"service"`
	Realm   string            `json:"realm,omitempty"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
	Status  Status            `json:"status,omitempty"`
	Output  string            `json:"output,omitempty"`
	TTL     Duration          `json:"ttl,omitempty"`
}

// Normalize fills defaults: realm dev, status passing, ttl 30s; and
// truncates an over-long output.
func (r *Registration) Normalize() {
	if r.Realm == "" {
		r.Realm = DefaultRealm
	}
	if r.Status == "" {
		r.Status = Passing
	}
	if r.TTL == 0 {
		r.TTL = Duration(DefaultTTL)
	}
	r.Output = TruncateOutput(r.Output)
}

// Validate checks every field; call Normalize first.
func (r *Registration) Validate() error {
	if err := ValidateName("service", r.Service); err != nil {
		return err
	}
	if err := ValidateName("realm", r.Realm); err != nil {
		return err
	}
	if err := ValidateAddress(r.Address); err != nil {
		return err
	}
	if r.Port == 0 {
		return Errorf(EInvalid, "port: required, 1-65535")
	}
	if r.Port < 1 || r.Port > 65535 {
		return Errorf(EInvalid, "port: must be 1-65535, got %d", r.Port)
	}
	if err := ValidateTags(r.Tags); err != nil {
		return err
	}
	if err := ValidateMeta(r.Meta); err != nil {
		return err
	}
	if !r.Status.Valid() {
		return Errorf(EInvalid, "status: must be passing, warning or critical, got %q", clip(string(r.Status)))
	}
	if d := time.Duration(r.TTL); d < MinTTL || d > MaxTTL {
		return Errorf(EInvalid, "ttl: must be between 1s and 24h, got %s", d)
	}
	return nil
}

// ValidateAddress accepts an IP address or a DNS host name.
func ValidateAddress(a string) error {
	if a == "" {
		return Errorf(EInvalid, "address: required")
	}
	if _, err := netip.ParseAddr(a); err == nil {
		return nil
	}
	if len(a) > 253 {
		return Errorf(EInvalid, "address: must be an IP address or a host name of at most 253 bytes")
	}
	for _, label := range strings.Split(a, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return Errorf(EInvalid, "address: must be an IP address or a host name, got %q", clip(a))
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return Errorf(EInvalid, "address: must be an IP address or a host name, got %q", clip(a))
			}
		}
	}
	return nil
}

// LocalHost reports whether host (a Host header's value, with or without
// a port) is an IP address, localhost, or a name under .localhost (RFC
// 6761: never sent to DNS, so no one else can point it anywhere): a
// browser's request under any other name may come from a page whose name
// an attacker points at 127.0.0.1 (DNS rebinding).
func LocalHost(host string) bool {
	if ap, err := netip.ParseAddrPort(host); err == nil && ap.Addr().IsValid() {
		return true
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[:i], ":") {
		host = host[:i] // name:port
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return true
	}
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// ValidateTags checks the tag limits.
func ValidateTags(tags []string) error {
	if len(tags) > MaxTags {
		return Errorf(EInvalid, "tags: at most %d allowed, got %d", MaxTags, len(tags))
	}
	for i, t := range tags {
		if t == "" || len(t) > MaxTagBytes {
			return Errorf(EInvalid, "tags[%d]: must be 1-%d bytes, got %d", i, MaxTagBytes, len(t))
		}
		if !utf8.ValidString(t) {
			return Errorf(EInvalid, "tags[%d]: must be UTF-8, got %q", i, clip(t))
		}
	}
	return nil
}

// ValidateMeta checks the meta limits.
func ValidateMeta(meta map[string]string) error {
	if len(meta) > MaxMetaEntries {
		return Errorf(EInvalid, "meta: at most %d entries allowed, got %d", MaxMetaEntries, len(meta))
	}
	for k, v := range meta {
		if k == "" || len(k) > MaxMetaBytes || !utf8.ValidString(k) {
			return Errorf(EInvalid, "meta: keys must be 1-%d bytes of UTF-8, got %q", MaxMetaBytes, clip(k))
		}
		if len(v) > MaxMetaBytes {
			return Errorf(EInvalid, "meta[%q]: value must be at most %d bytes, got %d", clip(k), MaxMetaBytes, len(v))
		}
		if !utf8.ValidString(v) {
			return Errorf(EInvalid, "meta[%q]: value must be UTF-8, got %q", clip(k), clip(v))
		}
	}
	return nil
}

// TruncateOutput cuts a check output to MaxOutputBytes on a rune boundary:
// longer output is truncated, not refused.
func TruncateOutput(s string) string { return Truncate(s, MaxOutputBytes) }

// Truncate cuts s to at most n bytes (none when n < 1), backing up to the
// start of the rune the cut falls in: at most utf8.UTFMax-1 bytes,
// whatever the rest of s holds.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := max(n, 0)
	for i := 1; i < utf8.UTFMax && cut > 0 && !utf8.RuneStart(s[cut]); i++ {
		cut--
	}
	return s[:cut]
}

// Heartbeat is the body of PUT /v1/instances/{id}/status.
type Heartbeat struct {
	Status Status `json:"status"`
	Output string `json:"output"`
}

// Validate checks the status.
func (h *Heartbeat) Validate() error {
	if !h.Status.Valid() {
		return Errorf(EInvalid, "status: must be passing, warning or critical, got %q", clip(string(h.Status)))
	}
	return nil
}

// MaxBatch is how many heartbeats one PUT /v1/heartbeats may carry.
const MaxBatch = 10000

// HeartbeatBatch is the body of PUT /v1/heartbeats: the heartbeats of many
// instances (a sidecar's) in one request.
type HeartbeatBatch struct {
	Heartbeats []BatchHeartbeat `json:"heartbeats"`
}

// BatchHeartbeat is one heartbeat of a batch.
type BatchHeartbeat struct {
	ID     string `json:"id"`
	Status Status `json:"status"`
	Output string `json:"output,omitempty"`
}

// Validate checks every entry, naming the first bad one.
func (b *HeartbeatBatch) Validate() error {
	if len(b.Heartbeats) > MaxBatch {
		return Errorf(EInvalid, "heartbeats: at most %d in one request, got %d", MaxBatch, len(b.Heartbeats))
	}
	for i, h := range b.Heartbeats {
		if err := ValidateID(h.ID); err != nil {
			return Errorf(EInvalid, "heartbeats[%d].%s", i, ErrorMessage(err))
		}
		if !h.Status.Valid() {
			return Errorf(EInvalid, "heartbeats[%d].status: must be passing, warning or critical, got %q", i, clip(string(h.Status)))
		}
	}
	return nil
}

// BatchResult is the outcome of one heartbeat of a batch: Error is nil when
// it was taken; a not_found error means the caller must register again.
type BatchResult struct {
	ID    string `json:"id"`
	Error *Error `json:"error,omitempty"`
}

// EnabledSwitch is the body of PUT /v1/instances/{id}/enabled.
type EnabledSwitch struct {
	Enabled *bool  `json:"enabled"`
	Reason  string `json:"reason,omitempty"`
}

// Validate checks that enabled is present and the reason is short.
func (e *EnabledSwitch) Validate() error {
	if e.Enabled == nil {
		return Errorf(EInvalid, "enabled: required (true or false)")
	}
	if len(e.Reason) > MaxMetaBytes {
		return Errorf(EInvalid, "reason: must be at most %d bytes", MaxMetaBytes)
	}
	return nil
}

// ServiceSummary is one row of GET /v1/services.
type ServiceSummary struct {
	Name      string `json:"name"`
	Instances int    `json:"instances"`
	Passing   int    `json:"passing"`
	Warning   int    `json:"warning"`
	Critical  int    `json:"critical"`
	Disabled  int    `json:"disabled"`
}

// ServiceList is the answer of GET /v1/services.
type ServiceList struct {
	Index    uint64           `json:"index"`
	Services []ServiceSummary `json:"services"`
}

// ServiceInstances is the answer of GET /v1/services/{name} and the data of
// every event on /v1/watch.
type ServiceInstances struct {
	Index     uint64      `json:"index"`
	Service   string      `json:"service"`
	Realm     string      `json:"realm"`
	Instances []*Instance `json:"instances"`
}

// PortAssignment is the answer of POST /v1/services/{name}/port.
type PortAssignment struct {
	Service string `json:"service"`
	Port    int    `json:"port"`
}

// LayerKey names one config layer: both empty is the global layer.
type LayerKey struct {
	Realm   string `json:"realm"`
	Service string `json:"service"`
}

// Validate checks the names that are present.
func (k LayerKey) Validate() error {
	if k.Realm != "" {
		if err := ValidateName("realm", k.Realm); err != nil {
			return err
		}
	}
	if k.Service != "" {
		if err := ValidateName("service", k.Service); err != nil {
			return err
		}
	}
	return nil
}

// String names the layer the way "sources" does: "global", "realm=R",
// "service=S" or "service=S,realm=R".
func (k LayerKey) String() string {
	switch {
	case k.Realm == "" && k.Service == "":
		return "global"
	case k.Service == "":
		return "realm=" + k.Realm
	case k.Realm == "":
		return "service=" + k.Service
	}
	return "service=" + k.Service + ",realm=" + k.Realm
}

// Layers returns the keys that make up the merged config of service in
// realm, lowest precedence first.
func Layers(realm, service string) []LayerKey {
	return []LayerKey{{}, {Realm: realm}, {Service: service}, {Realm: realm, Service: service}}
}

// ConfigLayer is one layer: GET /v1/config/layer.
type ConfigLayer struct {
	Index   uint64          `json:"index"`
	Realm   string          `json:"realm"`
	Service string          `json:"service"`
	Config  json.RawMessage `json:"config"`
}

// LayerInfo is one row of GET /v1/config/layers.
type LayerInfo struct {
	Realm   string `json:"realm"`
	Service string `json:"service"`
	Index   uint64 `json:"index"`
	Size    int    `json:"size"`
}

// LayerList is the answer of GET /v1/config/layers.
type LayerList struct {
	Index  uint64      `json:"index"`
	Layers []LayerInfo `json:"layers"`
}

// MergedConfig is the answer of GET /v1/config.
type MergedConfig struct {
	Index   uint64            `json:"index"`
	Config  map[string]any    `json:"config"`
	Sources map[string]string `json:"sources"`
}

// UnmarshalJSON decodes numbers in Config as json.Number, not float64: an
// integer beyond 2^53 (a 64-bit id) keeps its digits, as Atlas stores it.
func (m *MergedConfig) UnmarshalJSON(b []byte) error {
	type plain MergedConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode((*plain)(m))
}

// Roles a token may have.
const (
	RoleAdmin   = "admin"
	RoleReader  = "reader"
	RoleService = "service"
)

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Name     string   `json:"name"`
	Role     string   `json:"role"`
	Services []string `json:"services,omitempty"`
	Realms   []string `json:"realms,omitempty"`
}

// Validate checks the role and, for service tokens, the bindings.
func (t *TokenRequest) Validate() error {
	if t.Name == "" {
		return Errorf(EInvalid, "name: required: what the token is for, 1-128 bytes of UTF-8")
	}
	if len(t.Name) > 128 || !utf8.ValidString(t.Name) {
		return Errorf(EInvalid, "name: must be 1-128 bytes of UTF-8")
	}
	if !slices.Contains([]string{RoleAdmin, RoleReader, RoleService}, t.Role) {
		return Errorf(EInvalid, "role: must be admin, reader or service, got %q", clip(t.Role))
	}
	if t.Role != RoleService && (len(t.Services) > 0 || len(t.Realms) > 0) {
		return Errorf(EInvalid, "services, realms: only a service token is bound to services and realms")
	}
	if t.Role == RoleService && len(t.Services) == 0 {
		return Errorf(EInvalid, "services: a service token needs at least one service")
	}
	if t.Role == RoleService && len(t.Realms) == 0 {
		return Errorf(EInvalid, "realms: a service token needs at least one realm")
	}
	for i, s := range t.Services {
		if err := ValidateName(fmt.Sprintf("services[%d]", i), s); err != nil {
			return err
		}
	}
	for i, r := range t.Realms {
		if err := ValidateName(fmt.Sprintf("realms[%d]", i), r); err != nil {
			return err
		}
	}
	return nil
}

// Token is a token as listed: never its secret.
type Token struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Services  []string  `json:"services,omitempty"`
	Realms    []string  `json:"realms,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Secret is set only in the answer to the request that created it.
	Secret string `json:"secret,omitempty"`
	// Warning, in that answer too, says that Atlas runs without
	// authentication (--insecure), so that the token checks nothing yet.
	Warning string `json:"warning,omitempty"`
}

// TokenList is the answer of GET /v1/tokens.
type TokenList struct {
	Index  uint64  `json:"index"`
	Tokens []Token `json:"tokens"`
}

// Policy says which services a service may call, in one realm.
type Policy struct {
	Service string   `json:"service"`
	Realm   string   `json:"realm"`
	MayCall []string `json:"may_call"`
	Index   uint64   `json:"index,omitempty"`
}

// Validate checks every name.
func (p *Policy) Validate() error {
	if err := ValidateName("service", p.Service); err != nil {
		return err
	}
	if err := ValidateName("realm", p.Realm); err != nil {
		return err
	}
	if len(p.MayCall) > 1024 {
		return Errorf(EInvalid, "may_call: at most 1024 services")
	}
	for i, s := range p.MayCall {
		if err := ValidateName(fmt.Sprintf("may_call[%d]", i), s); err != nil {
			return err
		}
	}
	return nil
}

// PolicyList is the answer of GET /v1/policies.
type PolicyList struct {
	Index    uint64   `json:"index"`
	Policies []Policy `json:"policies"`
}

// IndexHeader carries the index of every GET answer of the Atlas API.
const IndexHeader = "Switchboard-Index"

// TimeoutHeader is the header in which a caller gives a call's timeout,
// to the sidecar or to the smart client.
const TimeoutHeader = "Switchboard-Timeout"

// MinTimeout and MaxTimeout bound the Switchboard-Timeout accepted. A
// shorter one would fail at once, and count against the instance tried.
const (
	MinTimeout = time.Millisecond
	MaxTimeout = time.Hour
)

// HungAfter is how long a call must have waited when a timeout its caller
// chose runs out, with no answer, for it to count against the instance, as
// running out of the default timeout does: a second with no answer at all
// is a hung instance for every purpose (the smart client sets the header
// from every context deadline), while a caller that asks for 5 ms must not
// eject healthy instances.
const HungAfter = time.Second

// ParseTimeout reads a Switchboard-Timeout header's value.
func ParseTimeout(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < MinTimeout || d > MaxTimeout {
		return 0, Errorf(EInvalid, "%s: must be a duration from 1ms to 1h such as 2s, got %s", TimeoutHeader, quoteValue(v))
	}
	return d, nil
}

// quoteValue quotes a header's value for a message, as the sidecar's
// HAProxy does too (switchboard.lua), so that both proxies say the same:
// printable ASCII as it is, with \" and \\ escaped, every other byte as
// \xNN, and no more than the first 64 bytes (then "..." after the quotes),
// so that the answer stays small whatever the header holds.
func quoteValue(v string) string {
	more := ""
	if len(v) > 64 {
		v, more = v[:64], "..."
	}
	b := []byte{'"'}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < ' ' || c > '~':
			b = fmt.Appendf(b, "\\x%02x", c)
		default:
			b = append(b, c)
		}
	}
	return string(append(b, '"')) + more
}

// Propagation is the answer of GET /v1/services/{name}/propagation: how
// many event streams watch a service, and how many of them have been sent
// every change up to Index.
type Propagation struct {
	Service   string `json:"service"`
	Realm     string `json:"realm"`
	Index     uint64 `json:"index"`
	Watchers  int    `json:"watchers"`
	Confirmed int    `json:"confirmed"`
}
