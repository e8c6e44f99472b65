package sidecar

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// checkShape walks the YAML of sidecar.yaml beside the type it decodes into
// and names, with its line, the first key that type does not have or value
// of the wrong kind: "services[0].check.interval: must be a duration such
// as 2s, got "fast"". The YAML library's own errors say neither the field
// nor the rule ("field chek not found in type sidecar.ServiceConfig").
func checkShape(n *yaml.Node, t reflect.Type, path []any) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // an empty value: the field's zero value
	}
	fail := func(format string, args ...any) error {
		return &fieldError{line: n.Line, msg: where(path) + ": " + fmt.Sprintf(format, args...)}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case reflect.TypeFor[Duration]():
		if n.Kind != yaml.ScalarNode {
			return fail("must be a duration such as 2s")
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			return fail("must be a duration such as 2s, got %q", n.Value)
		}
		return nil
	case reflect.TypeFor[StringList]():
		if n.Kind == yaml.ScalarNode {
			return nil
		}
		return checkShape(n, reflect.TypeFor[[]string](), path)
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return fail("must be a mapping of %s", strings.Join(keysOf(t), ", "))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Tag == "!!merge" {
				// "<<: *defaults": the merged mapping (or list of
				// mappings) must fit the same type.
				if err := checkMerge(v, t, path); err != nil {
					return err
				}
				continue
			}
			f, ok := fieldByKey(t, k.Value)
			if !ok {
				return &fieldError{line: k.Line, msg: fmt.Sprintf("%s: unknown key; %s takes %s", name(append(path, k.Value)), where(path), strings.Join(keysOf(t), ", "))}
			}
			if err := checkShape(v, f.Type, append(slices.Clip(path), k.Value)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return fail("must be a list")
		}
		for i, v := range n.Content {
			if err := checkShape(v, t.Elem(), append(slices.Clip(path), i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return fail("must be a mapping")
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkShape(n.Content[i+1], t.Elem(), append(slices.Clip(path), n.Content[i].Value)); err != nil {
				return err
			}
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return fail("must be a string")
		}
	case reflect.Int:
		var i int
		if n.Kind != yaml.ScalarNode || n.Decode(&i) != nil {
			return fail("must be a whole number, got %q", n.Value)
		}
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
			return fail("must be true or false, got %q", n.Value)
		}
	}
	return nil
}

// where names path in a message; the empty path is the whole file.
func where(path []any) string {
	if len(path) == 0 {
		return "the file"
	}
	return name(path)
}

// checkMerge checks what a merge key brings into a mapping of type t.
func checkMerge(v *yaml.Node, t reflect.Type, path []any) error {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	if v.Kind == yaml.SequenceNode {
		for _, m := range v.Content {
			if err := checkMerge(m, t, path); err != nil {
				return err
			}
		}
		return nil
	}
	return checkShape(v, t, path)
}

// fieldByKey finds the field of struct t whose yaml tag is key.
func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag == key && tag != "" {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// keysOf lists the yaml keys of struct t, in declaration order.
func keysOf(t reflect.Type) []string {
	var keys []string
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			keys = append(keys, tag)
		}
	}
	return keys
}
