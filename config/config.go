// Package config is a service's smart config: layers of defaults (in code
// and in config.yaml, per realm), the Atlas merged config of the service in
// its realm, and SWITCHBOARD_CONFIG_* environment variables, merged in that
// order, with the layer every value came from. It watches Atlas and tells
// the service about changes; when Atlas is unreachable it runs on its
// local layers alone.
package config

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/client"
)

// EnvPrefix starts the environment variables that set config keys:
// SWITCHBOARD_CONFIG_DB__DSN=x sets db.dsn ("__" nests, names are
// lower-cased; a value that is valid JSON is taken as JSON).
const EnvPrefix = "SWITCHBOARD_CONFIG_"

// Source names of the local layers.
const (
	SourceDefault = "default"
	SourceFile    = "file"
	SourceEnv     = "env"
)

// Options say where a service's config comes from. The zero value of every
// field but Service is useful.
type Options struct {
	// Service whose config this is. Required.
	Service string
	// Realm; empty means dev.
	Realm string
	// Defaults are the code's defaults: a map or a struct (encoded as
	// JSON). Nil: none.
	Defaults any
	// File is a config.yaml: "defaults:" for every realm, "realms:" with
	// one section per realm. Empty: none. A missing file is an error.
	File string
	// Atlas serves the merged config of the service in its realm; nil: no
	// Atlas layer.
	Atlas *client.Atlas
	// Environ is the environment to read SWITCHBOARD_CONFIG_* from; nil
	// means os.Environ().
	Environ []string
	// Logger; nil discards.
	Logger *slog.Logger
}

// Values is one merged view: immutable.
type Values struct {
	data    map[string]any
	sources map[string]string
	// AtlasIndex is the index of the Atlas layer merged in (0: none).
	AtlasIndex uint64
}

// Empty returns a view with nothing in it.
func Empty() *Values { return &Values{data: map[string]any{}, sources: map[string]string{}} }

// Get returns the value at a dotted path, or nil.
func (v *Values) Get(path string) any {
	var cur any = v.data
	for _, k := range strings.Split(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = obj[k]; !ok {
			return nil
		}
	}
	return cur
}

// String returns the value at path as a string, or def when it is absent.
func (v *Values) String(path, def string) string {
	switch x := v.Get(path).(type) {
	case nil:
		return def
	case string:
		return x
	case json.Number:
		return x.String()
	default:
		b, _ := json.Marshal(x)
		return string(b)
	}
}

// Int returns the value at path as an int, or def when absent or not an
// integer.
func (v *Values) Int(path string, def int) int {
	switch x := v.Get(path).(type) {
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return int(n)
		}
	case string:
		if n, err := strconv.Atoi(x); err == nil {
			return n
		}
	}
	return def
}

// Bool returns the value at path as a bool, or def. A string may be what
// strconv.ParseBool takes, or yes/no/on/off in any case: words that
// config.yaml's YAML (1.2) reads as strings, not booleans.
func (v *Values) Bool(path string, def bool) bool {
	switch x := v.Get(path).(type) {
	case bool:
		return x
	case string:
		if b, err := strconv.ParseBool(x); err == nil {
			return b
		}
		switch strings.ToLower(x) {
		case "yes", "on":
			return true
		case "no", "off":
			return false
		}
	}
	return def
}

// Duration returns the value at path ("2s", or a number of seconds), or
// def; def too for a number of seconds a Duration cannot hold (292
// years), which would otherwise wrap to a negative duration.
func (v *Values) Duration(path string, def time.Duration) time.Duration {
	switch x := v.Get(path).(type) {
	case string:
		if d, err := time.ParseDuration(x); err == nil {
			return d
		}
	case json.Number:
		if f, err := x.Float64(); err == nil && math.Abs(f) < float64(math.MaxInt64)/float64(time.Second) {
			return time.Duration(f * float64(time.Second))
		}
	}
	return def
}

// Decode decodes the value at path ("" for everything) into out, as JSON.
func (v *Values) Decode(path string, out any) error {
	var val any = v.data
	if path != "" {
		val = v.Get(path)
	}
	b, err := json.Marshal(val)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// Map returns a deep copy of everything, numbers as json.Number (as Get
// returns them).
func (v *Values) Map() map[string]any {
	if out := numbers(v.data); out != nil {
		return out
	}
	return map[string]any{}
}

// Source returns the layer a leaf path came from: "default", "file",
// "file:realm=R", "atlas:LAYER" (LAYER as Atlas names it) or
// "env:VARIABLE"; "" when the path is not a leaf.
func (v *Values) Source(path string) string { return v.sources[path] }

// Sources returns the source of every leaf path.
func (v *Values) Sources() map[string]string {
	out := make(map[string]string, len(v.sources))
	for k, s := range v.sources {
		out[k] = s
	}
	return out
}

// Config is a service's config, kept current.
type Config struct {
	opts  Options
	local []layer // defaults, file, file realm: below Atlas
	env   []layer // above Atlas: one per SWITCHBOARD_CONFIG_* variable, by name
	cur   atomic.Pointer[Values]
	log   *slog.Logger

	// mu guards watchers.
	mu       sync.Mutex
	watchers []func(old, new *Values)
	// atlasOK reports whether the last call to Atlas worked.
	atlasOK atomic.Bool
	// loadErr is why Load got no config from Atlas (set by Load only).
	loadErr error
}

type layer struct {
	source string
	data   map[string]any
}

// Load builds the local layers, asks Atlas once (a failure is logged, not
// returned: the service runs on its local layers), and returns the config.
func Load(ctx context.Context, opts Options) (*Config, error) {
	if err := sb.ValidateName("service", opts.Service); err != nil {
		return nil, fmt.Errorf("config: %s", sb.ErrorMessage(err))
	}
	if opts.Realm == "" {
		opts.Realm = sb.DefaultRealm
	}
	if err := sb.ValidateName("realm", opts.Realm); err != nil {
		return nil, fmt.Errorf("config: %s", sb.ErrorMessage(err))
	}
	if opts.Environ == nil {
		opts.Environ = os.Environ()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Config{opts: opts, log: opts.Logger}
	if opts.Defaults != nil {
		m, err := toMap(opts.Defaults)
		if err == nil {
			err = CheckKeys(m)
		}
		if err != nil {
			return nil, fmt.Errorf("config: defaults: %w", err)
		}
		c.local = append(c.local, layer{SourceDefault, m})
	}
	if opts.File != "" {
		def, realm, err := readFile(opts.File, opts.Realm)
		if err != nil {
			return nil, err
		}
		c.local = append(c.local, layer{SourceFile, def}, layer{SourceFile + ":realm=" + opts.Realm, realm})
	}
	env, err := envLayers(opts.Environ)
	if err != nil {
		return nil, err
	}
	c.env = env
	var atlasCfg *sb.MergedConfig
	if opts.Atlas != nil {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		atlasCfg, err = opts.Atlas.Config(actx, opts.Realm, opts.Service, client.QueryOptions{})
		cancel()
		if err != nil {
			c.log.Warn("config: no config from Atlas; running on local config alone", "err", err)
			c.loadErr = err
			atlasCfg = nil
		} else {
			c.atlasOK.Store(true)
		}
	}
	c.cur.Store(c.merge(atlasCfg))
	return c, nil
}

// SetLogger replaces the logger given in Options; call it before Watch.
func (c *Config) SetLogger(l *slog.Logger) { c.log = l }

// Values returns the current merged view.
func (c *Config) Values() *Values { return c.cur.Load() }

// FromAtlas reports whether the Atlas layer is in the current view.
func (c *Config) FromAtlas() bool { return c.atlasOK.Load() }

// LoadError returns why Load got no config from Atlas, or nil.
func (c *Config) LoadError() error { return c.loadErr }

// OnChange registers fn to be called, from Watch's goroutine, after every
// change.
func (c *Config) OnChange(fn func(old, new *Values)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watchers = append(c.watchers, fn)
}

// Watch follows the service's merged config in Atlas with blocking
// queries until ctx ends, applying every change. Without Atlas it returns
// at once.
func (c *Config) Watch(ctx context.Context) {
	if c.opts.Atlas == nil {
		return
	}
	backoff := time.Second
	// What failed last, logged once: Load's failure was logged by Load.
	var failed string
	if c.loadErr != nil {
		failed = c.loadErr.Error()
	}
	for ctx.Err() == nil {
		index := c.Values().AtlasIndex
		m, err := c.opts.Atlas.Config(ctx, c.opts.Realm, c.opts.Service, client.QueryOptions{Index: index, Wait: 5 * time.Minute})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if c.atlasOK.Swap(false) {
				c.log.Warn("config: lost Atlas; keeping the last config", "err", err)
			} else if err.Error() != failed {
				c.log.Warn("config: still no config from Atlas; running on local config alone", "err", err)
			}
			failed = err.Error()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		failed = ""
		if !c.atlasOK.Swap(true) {
			c.log.Info("config: Atlas reachable again")
		}
		if m.Index < index {
			index = 0 // Atlas went back: start again (Consul's rule)
		}
		if m.Index == index {
			continue
		}
		old := c.Values()
		next := c.merge(m)
		if same(old, next) {
			c.cur.Store(next)
			continue
		}
		c.cur.Store(next)
		c.log.Info("config: changed in Atlas", "index", m.Index)
		c.mu.Lock()
		ws := slices.Clone(c.watchers)
		c.mu.Unlock()
		for _, fn := range ws {
			fn(old, next)
		}
	}
}

func same(a, b *Values) bool {
	x, _ := json.Marshal(a.data)
	y, _ := json.Marshal(b.data)
	return bytes.Equal(x, y)
}

// merge builds a view from the local layers, the Atlas answer (may be nil)
// and the environment.
func (c *Config) merge(atlasCfg *sb.MergedConfig) *Values {
	v := &Values{data: map[string]any{}, sources: map[string]string{}}
	for _, l := range c.local {
		MergeInto(v.data, l.data, l.source, v.sources)
	}
	// Each layer merges into v.sources itself, so that the keys it replaces
	// or deletes leave it; its keys are then renamed from the bare source.
	if atlasCfg != nil {
		v.AtlasIndex = atlasCfg.Index
		// Keep Atlas's own provenance: which of its layers each key is from.
		MergeInto(v.data, numbers(atlasCfg.Config), "atlas", v.sources)
		for p, s := range v.sources {
			if src, ok := atlasCfg.Sources[p]; ok && s == "atlas" {
				v.sources[p] = "atlas:" + src
			}
		}
	}
	for _, l := range c.env {
		MergeInto(v.data, l.data, l.source, v.sources)
	}
	return v
}

// numbers copies m deeply, its numbers as json.Number, as the local
// layers and Get have them; nil when m cannot be copied.
func numbers(m map[string]any) map[string]any {
	b, _ := json.Marshal(m)
	out, _ := decodeObject(b)
	return out
}

func decodeObject(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		m = map[string]any{}
	}
	return m, nil
}

func toMap(v any) (map[string]any, error) {
	if m, ok := v.(map[string]any); ok {
		b, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		return decodeObject(b)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	m, err := decodeObject(b)
	if err != nil {
		return nil, errors.New("must encode as a JSON object")
	}
	return m, nil
}

// readFile reads config.yaml and returns its defaults and the section of
// realm.
func readFile(path, realm string) (defaults, realmSection map[string]any, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	var f struct {
		Defaults yaml.Node            `yaml:"defaults"`
		Realms   map[string]yaml.Node `yaml:"realms"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("config: %s: %v (the file has \"defaults:\" and \"realms:\" sections)", path, err)
	}
	for r := range f.Realms {
		if sb.ValidateName("realm", r) != nil {
			return nil, nil, fmt.Errorf("config: %s: realms: %q is not a realm name (^[a-z][a-z0-9-]{0,62}$)", path, r)
		}
	}
	if defaults, err = yamlToJSON(f.Defaults); err != nil {
		return nil, nil, fmt.Errorf("config: %s: defaults: %w", path, err)
	}
	section := f.Realms[realm]
	if realmSection, err = yamlToJSON(section); err != nil {
		return nil, nil, fmt.Errorf("config: %s: realms.%s: %w", path, realm, err)
	}
	return defaults, realmSection, nil
}

// yamlToJSON brings a YAML mapping to the JSON model (string keys,
// json.Number). A key YAML reads as a number or boolean (404:, true:) is
// the text written, as JSON's keys are strings; so is a date, which YAML
// would otherwise turn into a time and back into other text.
func yamlToJSON(n yaml.Node) (map[string]any, error) {
	if n.Kind == 0 {
		return map[string]any{}, nil
	}
	asWritten(&n, map[*yaml.Node]bool{})
	var m map[string]any
	if err := n.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return map[string]any{}, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("must hold JSON-compatible values: %w", err)
	}
	out, err := decodeObject(b)
	if err != nil {
		return nil, err
	}
	return out, CheckKeys(out)
}

// asWritten retags scalars that JSON would not keep as YAML reads them:
// mapping keys other than strings (and the merge key <<), and timestamps.
func asWritten(n *yaml.Node, seen map[*yaml.Node]bool) {
	if n == nil || seen[n] {
		return
	}
	seen[n] = true
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Kind == yaml.ScalarNode {
				switch k.ShortTag() {
				case "!!int", "!!float", "!!bool", "!!timestamp":
					k.Tag = "!!str"
				}
			}
		}
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!timestamp" {
		n.Tag = "!!str"
	}
	for _, c := range n.Content {
		asWritten(c, seen)
	}
	asWritten(n.Alias, seen)
}

// envLayers reads SWITCHBOARD_CONFIG_* variables: one layer each, its
// source "env:NAME", sorted by name, so that a variable holding an object
// (SWITCHBOARD_CONFIG_DB={...}) comes before the ones naming keys inside it
// (SWITCHBOARD_CONFIG_DB__POOL), whatever the environment's order.
func envLayers(environ []string) ([]layer, error) {
	var layers []layer
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) || len(name) == len(EnvPrefix) {
			continue
		}
		out := map[string]any{}
		path := strings.ToLower(strings.ReplaceAll(name[len(EnvPrefix):], "__", "."))
		var v any = val
		if d, err := decodeValue(val); err == nil {
			v = d
		}
		keys := strings.Split(path, ".")
		cur := out
		for i, k := range keys {
			if k == "" {
				return nil, fmt.Errorf("config: %s: an empty key in the path %q", name, path)
			}
			if i == len(keys)-1 {
				if m, ok := v.(map[string]any); ok {
					if err := CheckKeys(m); err != nil {
						return nil, fmt.Errorf("config: %s: %w", name, err)
					}
				}
				cur[k] = v
				break
			}
			next, ok := cur[k].(map[string]any)
			if !ok {
				next = map[string]any{}
				cur[k] = next
			}
			cur = next
		}
		layers = append(layers, layer{SourceEnv + ":" + name, out})
	}
	slices.SortStableFunc(layers, func(a, b layer) int { return strings.Compare(a.source, b.source) })
	return layers, nil
}

func decodeValue(s string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data")
	}
	return v, nil
}
