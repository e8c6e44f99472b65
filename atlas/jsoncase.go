package atlas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"

	sb "github.com/switchboard-go/switchboard"
)

// encoding/json matches an object's keys to a struct's fields without
// regard to case ("Service" sets service; so do "SERVICE" and "ſervice",
// its long s folding to s), and the last of two such keys wins: a body
// with "service" and "Service" named two services and was taken as the
// second. The API's names are case-sensitive, as Consul's answers and
// the SPEC spell them, so checkKeyCase refuses a key that is not spelled
// as its field, as an unknown field.

// checkKeyCase reports the first key of body, a JSON value decoded into a
// value of type t without error, that names a field of a struct in t only
// without regard to case. Bodies whose keys are all plain lower-case
// ASCII, which every client of the API sends, are not walked.
func checkKeyCase(body []byte, t reflect.Type) error {
	if !foldableKey(body) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	return walkKeyCase(dec, t, "")
}

// foldableKey reports whether an object key in body might match a field
// name only by case: it holds an upper-case ASCII letter, a byte of a
// multi-byte character, or an escape.
func foldableKey(body []byte) bool {
	for i := 0; i < len(body); i++ {
		if body[i] != '"' {
			continue
		}
		suspect := false
		j := i + 1
		for ; j < len(body) && body[j] != '"'; j++ {
			switch c := body[j]; {
			case c == '\\':
				suspect = true
				j++
			case c >= 'A' && c <= 'Z', c >= 0x80:
				suspect = true
			}
		}
		k := j + 1
		for k < len(body) && (body[k] == ' ' || body[k] == '\t' || body[k] == '\n' || body[k] == '\r') {
			k++
		}
		if suspect && k < len(body) && body[k] == ':' {
			return true
		}
		i = j
	}
	return false
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// walkKeyCase reads the next value of dec, whose Go type is t (nil: one
// whose keys are free, a map's or one that decodes itself), and checks its
// keys; path is its dotted name, as in encoding/json's errors.
func walkKeyCase(dec *json.Decoder, t reflect.Type, path string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && (t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType)) {
		t = nil
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	var fields map[string]reflect.Type
	var elem reflect.Type
	switch {
	case t == nil:
	case t.Kind() == reflect.Struct:
		fields = jsonFields(t)
	case t.Kind() == reflect.Map, t.Kind() == reflect.Slice, t.Kind() == reflect.Array:
		elem = t.Elem()
	}
	for dec.More() {
		next, at := elem, path
		if delim == '{' {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
			if fields != nil {
				ft, ok := fields[key]
				if !ok {
					return sb.Errorf(sb.EInvalid, "%s: unknown field%s", joinPath(path, key), spelledAs(fields, key))
				}
				next, at = ft, joinPath(path, key)
			}
		}
		if err := walkKeyCase(dec, next, at); err != nil {
			return err
		}
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// spelledAs names the field key matches without regard to case.
func spelledAs(fields map[string]reflect.Type, key string) string {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return fmt.Sprintf(" (names are case-sensitive: %q)", name)
		}
	}
	return ""
}

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields returns the JSON names of a struct's fields, with those of
// embedded structs, and their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	var promoted []map[string]reflect.Type
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" && ft.Kind() == reflect.Struct {
			promoted = append(promoted, jsonFields(ft))
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	for _, p := range promoted {
		for name, ft := range p {
			if _, ok := m[name]; !ok {
				m[name] = ft
			}
		}
	}
	fieldCache.Store(t, m)
	return m
}
