package sidecar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
)

// Config is sidecar.yaml. The zero value of every field is useful:
// Defaults fills what is left out.
type Config struct {
	// Atlas lists the Atlas URLs, tried in turn. Default http://127.0.0.1:4400.
	Atlas StringList `yaml:"atlas"`
	// TokenFile holds the bearer token. Empty: no token.
	TokenFile string `yaml:"token_file"`
	// Realm of this host's services and of the instances it routes to.
	// Default dev.
	Realm string `yaml:"realm"`
	// Host names this host in instance ids. Default os.Hostname().
	Host string `yaml:"host"`
	// Advertise is the address other hosts reach this host's services at.
	// Default the first non-loopback address.
	Advertise string `yaml:"advertise"`
	// Listen is the HTTP frontend. Default 127.0.0.1:4000.
	Listen string `yaml:"listen"`
	// Admin serves /routes, /healthcheck and /metrics. Default 127.0.0.1:4001.
	Admin string `yaml:"admin"`
	// StateDir keeps the last known routes, for starting while Atlas is
	// down. Empty: routes are not kept.
	StateDir string `yaml:"state_dir"`
	// DrainTimeout bounds the wait, on SIGTERM, for watchers to drop this
	// host's instances. Default 10s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// Proxy is builtin or haproxy. Default builtin.
	Proxy string `yaml:"proxy"`
	// HAProxy configures haproxy mode.
	HAProxy HAProxyConfig `yaml:"haproxy"`
	// Services are what this host provides: registered, checked,
	// heartbeated.
	Services []ServiceConfig `yaml:"services"`
	// Upstreams are services watched from the start; those with Listen get
	// an L4 TCP listener.
	Upstreams []UpstreamConfig `yaml:"upstreams"`

	// tokenFileAt is "FILE:LINE" of token_file when it came from a file:
	// errors reading it point there.
	tokenFileAt string
}

// HAProxyConfig configures haproxy mode.
type HAProxyConfig struct {
	// Binary is the haproxy executable. Default haproxy.
	Binary string `yaml:"binary"`
	// Dir holds haproxy.cfg and the sockets. Default STATE_DIR/haproxy.
	Dir string `yaml:"dir"`
}

// ServiceConfig is one service this host provides.
type ServiceConfig struct {
	Name string            `yaml:"name"`
	Port int               `yaml:"port"`
	Tags []string          `yaml:"tags"`
	Meta map[string]string `yaml:"meta"`
	// Address overrides the sidecar's advertise address for this service.
	Address string      `yaml:"address"`
	Check   CheckConfig `yaml:"check"`
}

// CheckConfig is how a service is checked. Exactly one of HTTP, TCP, GRPC
// or None; none given means an HTTP check of /healthcheck.
type CheckConfig struct {
	// HTTP is the path of an HTTP GET check: 2xx passing, 429 warning,
	// anything else critical.
	HTTP *string `yaml:"http"`
	// TCP checks that a connection opens.
	TCP bool `yaml:"tcp"`
	// GRPC is the service name for grpc.health.v1 ("" = the whole server).
	GRPC *string `yaml:"grpc"`
	// None registers the service as passing without checking it.
	None bool `yaml:"none"`
	// Interval between checks. Default 2s.
	Interval Duration `yaml:"interval"`
	// Timeout of one check. Default 1s.
	Timeout Duration `yaml:"timeout"`
	// Rise is how many passes in a row make a failing service passing.
	// Default 2.
	Rise int `yaml:"rise"`
	// Fall is how many failures in a row make a passing service critical.
	// Default 2.
	Fall int `yaml:"fall"`
}

// UnmarshalYAML reads a check. "grpc:" with no value is a gRPC check of
// the whole server, as grpc: "" is, where it read as no gRPC check at all
// and so an HTTP check of /healthcheck.
func (c *CheckConfig) UnmarshalYAML(n *yaml.Node) error {
	type plain CheckConfig
	if err := n.Decode((*plain)(c)); err != nil {
		return err
	}
	if null, _ := grpcKey(n); c.GRPC == nil && null {
		c.GRPC = new(string)
	}
	return nil
}

// grpcKey looks for grpc in the check mapping n, then in what it merges
// ("<<: *defaults"), in order, as YAML merges them: whether it is there,
// and whether with no value.
func grpcKey(n *yaml.Node) (null, found bool) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.MappingNode {
		return false, false
	}
	var merged []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Value == "grpc":
			return v.Kind == yaml.ScalarNode && v.Tag == "!!null", true
		case k.Tag == "!!merge":
			if v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			if v.Kind == yaml.SequenceNode {
				merged = append(merged, v.Content...)
			} else {
				merged = append(merged, v)
			}
		}
	}
	for _, m := range merged {
		if null, found := grpcKey(m); found {
			return null, true
		}
	}
	return false, false
}

// UpstreamConfig is a service watched from the start.
type UpstreamConfig struct {
	Name string `yaml:"name"`
	// Listen, when set, opens an L4 TCP listener balanced over the
	// service's instances.
	Listen string `yaml:"listen"`
}

// Duration is a time.Duration written as "2s" in YAML.
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &fieldError{line: n.Line, msg: "must be a duration such as 2s"}
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return &fieldError{line: n.Line, msg: fmt.Sprintf("must be a duration such as 2s, got %q", n.Value)}
	}
	*d = Duration(v)
	return nil
}

// StringList is a list of strings that may also be written as one string.
type StringList []string

// UnmarshalYAML reads a string or a list of strings.
func (l *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*l = StringList{n.Value}
		return nil
	}
	var s []string
	if err := n.Decode(&s); err != nil {
		return &fieldError{line: n.Line, msg: "must be a URL or a list of URLs"}
	}
	*l = s
	return nil
}

type fieldError struct {
	line int
	msg  string
}

func (e *fieldError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// LoadConfig reads and checks a sidecar.yaml file. Relative paths in it
// (token_file, state_dir, haproxy.dir, a haproxy.binary with a slash) are
// relative to the file's directory, not to the working directory, which a
// service manager sets elsewhere (systemd: /).
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseConfig(path, data)
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	for _, p := range []*string{&c.TokenFile, &c.StateDir, &c.HAProxy.Dir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if b := c.HAProxy.Binary; strings.Contains(b, "/") && !filepath.IsAbs(b) {
		c.HAProxy.Binary = filepath.Join(dir, b)
	}
	return c, nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// ParseConfig parses sidecar.yaml content; name is the file name used in
// errors, which read "NAME:LINE: field: rule".
func ParseConfig(name string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(name, err)
	}
	var cfg Config
	if len(root.Content) == 0 {
		return &cfg, nil // an empty file: every default
	}
	if err := checkShape(root.Content[0], reflect.TypeFor[Config](), nil); err != nil {
		return nil, yamlError(name, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, yamlError(name, err)
	}
	for {
		var next yaml.Node
		err := dec.Decode(&next)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, yamlError(name, err)
		}
		if len(next.Content) > 0 && next.Content[0].Tag != "!!null" {
			return nil, fmt.Errorf("%s:%d: the file must hold one YAML document; this is a second", name, next.Content[0].Line)
		}
	}
	if err := cfg.validate(); err != nil {
		var pe *pathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s", name, lineOf(root.Content[0], pe.path), pe.msg)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if cfg.TokenFile != "" {
		cfg.tokenFileAt = fmt.Sprintf("%s:%d", name, lineOf(root.Content[0], []any{"token_file"}))
	}
	return &cfg, nil
}

// yamlError turns the YAML library's errors into "NAME:LINE: message"
// lines.
func yamlError(name string, err error) error {
	var fe *fieldError
	if errors.As(err, &fe) {
		return fmt.Errorf("%s:%d: %s", name, fe.line, fe.msg)
	}
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var out []string
	for _, m := range msgs {
		m = strings.TrimSpace(m)
		if sub := yamlLine.FindStringSubmatch(m); sub != nil {
			out = append(out, fmt.Sprintf("%s:%s: %s", name, sub[1], sub[2]))
		} else {
			out = append(out, fmt.Sprintf("%s: %s", name, strings.TrimPrefix(m, "yaml: ")))
		}
	}
	return errors.New(strings.Join(out, "; "))
}

// pathError is a validation error at a path of keys and list indexes.
type pathError struct {
	path []any
	msg  string
}

func (e *pathError) Error() string { return e.msg }

// BadField returns the top-level key of the field an error of Check
// names, and the rule it broke; key is "" when err names no field. The
// command line uses them to name a flag rather than a key of the file.
func BadField(err error) (key, rule string) {
	var pe *pathError
	if !errors.As(err, &pe) || len(pe.path) == 0 {
		return "", ""
	}
	key, _ = pe.path[0].(string)
	_, rule, _ = strings.Cut(pe.msg, ": ")
	return key, rule
}

func errAt(path []any, format string, args ...any) error {
	return &pathError{path: path, msg: fmt.Sprintf(format, args...)}
}

// lineOf finds the line of the deepest node of path that exists.
func lineOf(n *yaml.Node, path []any) int {
	line := n.Line
	for _, p := range path {
		switch p := p.(type) {
		case string:
			if n.Kind != yaml.MappingNode {
				return line
			}
			found := false
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == p {
					n, line, found = n.Content[i+1], n.Content[i].Line, true
					break
				}
			}
			if !found {
				return line
			}
		case int:
			if n.Kind != yaml.SequenceNode || p >= len(n.Content) {
				return line
			}
			n, line = n.Content[p], n.Content[p].Line
		}
	}
	return line
}

func validateHostPort(path []any, field, v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return errAt(path, "%s: must be host:port, got %q", field, v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return errAt(path, "%s: port must be 0-65535, got %q", field, port)
	}
	_ = host
	return nil
}

func name(path []any) string {
	var b strings.Builder
	for _, p := range path {
		switch p := p.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(p)
		case int:
			fmt.Fprintf(&b, "[%d]", p)
		}
	}
	return b.String()
}

// Check validates a Config built or changed in code (flags over a file);
// ParseConfig already checks what it parses.
func (c *Config) Check() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("sidecar config: %w", err)
	}
	return nil
}

// validate checks every value and names the first bad one.
func (c *Config) validate() error {
	for i, u := range c.Atlas {
		p := []any{"atlas", i}
		if err := client.CheckURL(u); err != nil {
			return errAt(p, "%s: %v", name(p), err)
		}
	}
	if c.Realm != "" {
		if err := sb.ValidateName("realm", c.Realm); err != nil {
			return errAt([]any{"realm"}, "%s", sb.ErrorMessage(err))
		}
	}
	if c.Host != "" {
		if err := sb.ValidateID(c.Host); err != nil {
			return errAt([]any{"host"}, "host: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, got %q", c.Host)
		}
	}
	if c.Advertise != "" {
		if err := sb.ValidateAddress(c.Advertise); err != nil {
			return errAt([]any{"advertise"}, "advertise: %s", strings.TrimPrefix(sb.ErrorMessage(err), "address: "))
		}
	}
	for _, f := range []struct{ key, v string }{{"listen", c.Listen}, {"admin", c.Admin}} {
		if f.v != "" {
			if err := validateHostPort([]any{f.key}, f.key, f.v); err != nil {
				return err
			}
		}
	}
	if c.DrainTimeout < 0 || time.Duration(c.DrainTimeout) > 10*time.Minute {
		return errAt([]any{"drain_timeout"}, "drain_timeout: must be at most 10m (0 or none: 10s), got %s", time.Duration(c.DrainTimeout))
	}
	switch c.Proxy {
	case "", "builtin", "haproxy":
	default:
		return errAt([]any{"proxy"}, "proxy: must be builtin or haproxy, got %q", c.Proxy)
	}
	seen := map[string]bool{}
	for i, s := range c.Services {
		p := []any{"services", i}
		if err := sb.ValidateName("name", s.Name); err != nil {
			return errAt(append(p, "name"), "%s.%s", name(p), sb.ErrorMessage(err))
		}
		if s.Port < 1 || s.Port > 65535 {
			return errAt(append(p, "port"), "%s.port: must be 1-65535, got %d", name(p), s.Port)
		}
		key := fmt.Sprintf("%s:%d", s.Name, s.Port)
		if seen[key] {
			return errAt(p, "%s: service %s on port %d is listed twice", name(p), s.Name, s.Port)
		}
		seen[key] = true
		if err := sb.ValidateTags(s.Tags); err != nil {
			return errAt(append(p, "tags"), "%s.%s", name(p), sb.ErrorMessage(err))
		}
		if err := sb.ValidateMeta(s.Meta); err != nil {
			return errAt(append(p, "meta"), "%s.%s", name(p), sb.ErrorMessage(err))
		}
		if s.Address != "" {
			if err := sb.ValidateAddress(s.Address); err != nil {
				return errAt(append(p, "address"), "%s.%s", name(p), sb.ErrorMessage(err))
			}
		}
		if err := s.Check.validate(append(p, "check")); err != nil {
			return err
		}
	}
	ups := map[string]bool{}
	for i, u := range c.Upstreams {
		p := []any{"upstreams", i}
		if err := sb.ValidateName("name", u.Name); err != nil {
			return errAt(append(p, "name"), "%s.%s", name(p), sb.ErrorMessage(err))
		}
		if ups[u.Name] {
			return errAt(append(p, "name"), "%s.name: %s is listed twice", name(p), u.Name)
		}
		ups[u.Name] = true
		if u.Listen != "" {
			if err := validateHostPort(append(p, "listen"), name(p)+".listen", u.Listen); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *CheckConfig) validate(p []any) error {
	kinds := 0
	for _, set := range []bool{c.HTTP != nil, c.TCP, c.GRPC != nil, c.None} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		return errAt(p, "%s: give one of http, tcp, grpc or none", name(p))
	}
	if c.HTTP != nil && !strings.HasPrefix(*c.HTTP, "/") {
		return errAt(append(p, "http"), "%s.http: must be a path starting with /, got %q", name(p), *c.HTTP)
	}
	if c.HTTP != nil {
		if _, err := url.ParseRequestURI(*c.HTTP); err != nil {
			return errAt(append(p, "http"), "%s.http: must be a path (and query) that makes a URL, got %q: %v", name(p), *c.HTTP, errors.Unwrap(err))
		}
	}
	if c.Interval != 0 && (time.Duration(c.Interval) < 100*time.Millisecond || time.Duration(c.Interval) > time.Hour) {
		return errAt(append(p, "interval"), "%s.interval: must be 100ms-1h, got %s", name(p), time.Duration(c.Interval))
	}
	if c.Timeout != 0 && (time.Duration(c.Timeout) < 10*time.Millisecond || time.Duration(c.Timeout) > time.Minute) {
		return errAt(append(p, "timeout"), "%s.timeout: must be 10ms-1m, got %s", name(p), time.Duration(c.Timeout))
	}
	if c.Rise < 0 || c.Rise > 100 {
		return errAt(append(p, "rise"), "%s.rise: must be 1-100, got %d", name(p), c.Rise)
	}
	if c.Fall < 0 || c.Fall > 100 {
		return errAt(append(p, "fall"), "%s.fall: must be 1-100, got %d", name(p), c.Fall)
	}
	return nil
}
