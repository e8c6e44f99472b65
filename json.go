package switchboard

import (
	"errors"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Atlas writes instances more than anything else: into its store at every
// registration, and in every answer that lists a service (a service of
// 1,000 instances is a 300 KB answer). encoding/json spends most of that
// time in reflection; the appenders below write the same bytes directly.
// FuzzInstanceJSON holds them to encoding/json's output byte for byte.

// MarshalJSON writes in as encoding/json would write its fields.
func (in Instance) MarshalJSON() ([]byte, error) {
	return in.AppendJSON(make([]byte, 0, 384))
}

// AppendJSON appends in's JSON to b: byte for byte what encoding/json
// writes for it (fields in order, omitempty, sorted meta keys, HTML-safe
// string escapes). It fails only for a time that JSON cannot hold (a year
// outside 0–9999), as encoding/json does.
func (in *Instance) AppendJSON(b []byte) ([]byte, error) {
	var err error
	b = append(b, `{"id":`...)
	b = appendString(b, in.ID)
	b = append(b, `,"service":`...)
	b = appendString(b, in.Service)
	b = append(b, `,"realm":`...)
	b = appendString(b, in.Realm)
	b = append(b, `,"address":`...)
	b = appendString(b, in.Address)
	b = append(b, `,"port":`...)
	b = strconv.AppendInt(b, int64(in.Port), 10)
	b = append(b, `,"tags":`...)
	if in.Tags == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, t := range in.Tags {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, t)
		}
		b = append(b, ']')
	}
	b = append(b, `,"meta":`...)
	b = appendStringMap(b, in.Meta)
	b = append(b, `,"status":`...)
	b = appendString(b, string(in.Status))
	b = append(b, `,"output":`...)
	b = appendString(b, in.Output)
	b = append(b, `,"enabled":`...)
	b = strconv.AppendBool(b, in.Enabled)
	if in.DisabledReason != "" {
		b = append(b, `,"disabled_reason":`...)
		b = appendString(b, in.DisabledReason)
	}
	b = append(b, `,"ttl":`...)
	b = appendString(b, in.TTL.String())
	b = append(b, `,"registered_at":`...)
	if b, err = appendTime(b, in.RegisteredAt); err != nil {
		return nil, err
	}
	b = append(b, `,"status_changed_at":`...)
	if b, err = appendTime(b, in.StatusChangedAt); err != nil {
		return nil, err
	}
	if in.LastHeartbeat != nil {
		b = append(b, `,"last_heartbeat":`...)
		if b, err = appendTime(b, *in.LastHeartbeat); err != nil {
			return nil, err
		}
	}
	if in.ExpiresAt != nil {
		b = append(b, `,"expires_at":`...)
		if b, err = appendTime(b, *in.ExpiresAt); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// MarshalJSON writes s as encoding/json would write its fields.
func (s ServiceInstances) MarshalJSON() ([]byte, error) {
	return s.AppendJSON(make([]byte, 0, 64+320*len(s.Instances)))
}

// AppendJSON appends s's JSON to b, as Instance.AppendJSON does.
func (s *ServiceInstances) AppendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"index":`...)
	b = strconv.AppendUint(b, s.Index, 10)
	b = append(b, `,"service":`...)
	b = appendString(b, s.Service)
	b = append(b, `,"realm":`...)
	b = appendString(b, s.Realm)
	b = append(b, `,"instances":`...)
	if s.Instances == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, in := range s.Instances {
			if i > 0 {
				b = append(b, ',')
			}
			if in == nil {
				b = append(b, "null"...)
				continue
			}
			var err error
			if b, err = in.AppendJSON(b); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

func appendStringMap(b []byte, m map[string]string) []byte {
	if m == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	var keys []string
	if len(m) > 1 {
		keys = make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
	} else {
		for k := range m {
			keys = []string{k}
		}
	}
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}

// appendTime writes t as time.Time's MarshalJSON does, with its checks.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	start := len(b)
	b = t.AppendFormat(b, time.RFC3339Nano)
	s := b[start:]
	// RFC 3339 has four-digit years and zone hours below 24.
	if len(s) < 5 || s[4] != '-' {
		return nil, errors.New("json: Time.MarshalJSON: year outside of range [0,9999]")
	}
	if s[len(s)-1] != 'Z' {
		c := s[len(s)-len("Z07:00")]
		if ('0' <= c && c <= '9') || 10*(s[len(s)-5]-'0')+(s[len(s)-4]-'0') >= 24 {
			return nil, errors.New("json: Time.MarshalJSON: timezone hour outside of range [0,23]")
		}
	}
	return append(b, '"'), nil
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string the way encoding/json does with
// its default HTML escaping: '<', '>' and '&' as \u003c and so on, control
// bytes escaped, invalid UTF-8 as U+FFFD, U+2028 and U+2029 escaped.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
