package config

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// MergeInto deep-merges src over dst, as Switchboard merges config layers:
// objects merge key by key, anything else replaces, null (nil) deletes.
// sources records, for every leaf path (keys joined with "."; an empty
// object is a leaf), source as the layer it came from. src is not modified; dst takes copies of its
// objects.
func MergeInto(dst, src map[string]any, source string, sources map[string]string) {
	mergeInto(dst, src, "", source, sources)
}

func mergeInto(dst, src map[string]any, prefix, source string, sources map[string]string) {
	for k, v := range src {
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		switch v := v.(type) {
		case nil:
			delete(dst, k)
			dropSources(sources, path)
		case map[string]any:
			_, had := dst[k]
			sub, ok := dst[k].(map[string]any)
			if !ok {
				sub = map[string]any{}
				dst[k] = sub
				dropSources(sources, path)
			}
			delete(sources, path) // an empty object's own entry
			mergeInto(sub, v, path, source, sources)
			switch {
			case len(sub) > 0:
			case !had && len(v) > 0:
				// Only deletions of keys that were not there: the layer
				// made nothing ({"db": {"dsn": null}} over no db).
				delete(dst, k)
			default:
				// An empty object is a leaf too.
				sources[path] = source
			}
		default:
			if _, wasObj := dst[k].(map[string]any); wasObj {
				dropSources(sources, path)
			}
			dst[k] = v
			sources[path] = source
		}
	}
}

// dropSources forgets path and everything below it.
func dropSources(sources map[string]string, path string) {
	delete(sources, path)
	for p := range sources {
		if strings.HasPrefix(p, path+".") {
			delete(sources, p)
		}
	}
}

// CheckKeys refuses object keys that a key path cannot name: empty ones,
// and ones holding the "." that joins paths (sources, lookups and the
// environment overrides all use dotted paths, so {"a.b":1} and
// {"a":{"b":2}} would be one key). Arrays are values, never merged into:
// their objects are not looked at.
func CheckKeys(m map[string]any) error { return checkKeys(m, "") }

func checkKeys(m map[string]any, path string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if k == "" || strings.Contains(k, ".") {
			where := ""
			if path != "" {
				where = " in " + path
			}
			return fmt.Errorf("key %q%s: must be non-empty and hold no \".\", which joins key paths (nest an object instead)", k, where)
		}
		if sub, ok := m[k].(map[string]any); ok {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if err := checkKeys(sub, p); err != nil {
				return err
			}
		}
	}
	return nil
}
