package atlas

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/config"
)

// ParseLayer checks that b is one JSON object within the layer limit and
// returns it compacted.
func ParseLayer(b []byte) (json.RawMessage, error) {
	if len(b) > sb.MaxLayerBytes {
		return nil, sb.Errorf(sb.ETooLarge, "config: a layer must be at most %d bytes, got %d", sb.MaxLayerBytes, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, sb.Errorf(sb.EInvalid, "config: must be a JSON object: %v", err)
	}
	if len(bytes.TrimSpace(b[dec.InputOffset():])) > 0 {
		return nil, sb.Errorf(sb.EInvalid, "config: must be a single JSON object, found data after it")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, sb.Errorf(sb.EInvalid, "config: must be a JSON object, got %s", jsonKind(v))
	}
	if err := config.CheckKeys(m); err != nil {
		return nil, sb.Errorf(sb.EInvalid, "config: %v", err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, sb.Errorf(sb.EInvalid, "config: %v", err)
	}
	return buf.Bytes(), nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	}
	return "an object"
}

// Merge deep-merges layers, lowest precedence first: objects merge key by
// key, anything else replaces, null deletes. sources names, for every leaf
// path (keys joined with "."), the layer its value came from.
func Merge(layers []sb.LayerKey, raws []json.RawMessage) (merged map[string]any, sources map[string]string) {
	merged = map[string]any{}
	sources = map[string]string{}
	for i, raw := range raws {
		if raw == nil {
			continue
		}
		var obj map[string]any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if dec.Decode(&obj) != nil {
			continue
		}
		config.MergeInto(merged, obj, layers[i].String(), sources)
	}
	return merged, sources
}

func (s *Server) mergedLocked(realm, service string) *sb.MergedConfig {
	keys := sb.Layers(realm, service)
	raws := make([]json.RawMessage, len(keys))
	wkeys := make([]string, len(keys))
	for i, k := range keys {
		raws[i] = s.st.layers[k].raw
		wkeys[i] = layerKey(k)
	}
	cfg, src := Merge(keys, raws)
	return &sb.MergedConfig{Index: s.st.indexOfLocked(wkeys...), Config: cfg, Sources: src}
}

func (s *Server) layerLocked(k sb.LayerKey) (*sb.ConfigLayer, error) {
	r, ok := s.st.layers[k]
	if !ok {
		return nil, sb.Errorf(sb.ENotFound, "config layer %s: not set", k)
	}
	return &sb.ConfigLayer{Index: r.index, Realm: k.Realm, Service: k.Service, Config: r.raw}, nil
}

func (s *Server) layersLocked() *sb.LayerList {
	out := &sb.LayerList{Index: s.st.indexOfLocked(layersKey), Layers: []sb.LayerInfo{}}
	for k, r := range s.st.layers {
		out.Layers = append(out.Layers, sb.LayerInfo{Realm: k.Realm, Service: k.Service, Index: r.index, Size: len(r.raw)})
	}
	slices.SortFunc(out.Layers, func(a, b sb.LayerInfo) int {
		return strings.Compare(a.Realm+"/"+a.Service, b.Realm+"/"+b.Service)
	})
	return out
}

// putLayer replaces a layer; cas, when not nil, is the index the layer must
// have (0: must not exist).
func (s *Server) putLayer(ctx context.Context, k sb.LayerKey, raw json.RawMessage, cas *uint64) (*sb.ConfigLayer, error) {
	op := Op{Key: pfxLayer + k.Realm + "/" + k.Service, Value: raw, IfIndex: cas}
	index, err := s.txn(ctx, op)
	if errors.Is(err, ErrConflict) {
		s.st.mu.RLock()
		cur := s.st.layers[k].index
		s.st.mu.RUnlock()
		switch {
		case *cas == 0:
			return nil, sb.Errorf(sb.EConflict, "cas: layer %s already exists (at index %d); cas=0 writes only a layer that does not", k, cur)
		case cur == 0:
			return nil, sb.Errorf(sb.EConflict, "cas: layer %s does not exist (any more), so it is not at index %d", k, *cas)
		}
		return nil, sb.Errorf(sb.EConflict, "cas: layer %s is at index %d, not %d", k, cur, *cas)
	}
	if err != nil {
		return nil, err
	}
	return &sb.ConfigLayer{Index: index, Realm: k.Realm, Service: k.Service, Config: raw}, nil
}

func (s *Server) deleteLayer(ctx context.Context, k sb.LayerKey, cas *uint64) error {
	key := pfxLayer + k.Realm + "/" + k.Service
	ok, err := s.found(ctx, func() bool {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		_, ok := s.st.layers[k]
		_, damaged := s.st.damaged[key] // in no answer, but deleted on demand
		return ok || damaged
	})
	if err != nil {
		return err
	}
	if !ok {
		return sb.Errorf(sb.ENotFound, "config layer %s: not set", k)
	}
	_, err = s.txn(ctx, Op{Key: key, Delete: true, IfIndex: cas})
	if errors.Is(err, ErrConflict) {
		return sb.Errorf(sb.EConflict, "cas: layer %s has changed since index %d", k, *cas)
	}
	return err
}
