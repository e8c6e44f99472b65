package switchboard

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// plainInstance and plainList are Instance and ServiceInstances without
// their MarshalJSON: what encoding/json writes for them by reflection.
type plainInstance Instance

type plainList struct {
	Index     uint64           `json:"index"`
	Service   string           `json:"service"`
	Realm     string           `json:"realm"`
	Instances []*plainInstance `json:"instances"`
}

// checkSameJSON fails unless the appender writes exactly what
// encoding/json writes, or both fail.
func checkSameJSON(t *testing.T, in *Instance) {
	t.Helper()
	want, wantErr := json.Marshal((*plainInstance)(in))
	got, gotErr := in.AppendJSON(nil)
	if (wantErr != nil) != (gotErr != nil) {
		t.Fatalf("encoding/json error %v, AppendJSON error %v", wantErr, gotErr)
	}
	if wantErr == nil && !bytes.Equal(got, want) {
		t.Fatalf("AppendJSON wrote\n%s\nencoding/json writes\n%s", got, want)
	}
	// Through json.Marshal, which calls MarshalJSON.
	if wantErr == nil {
		via, err := json.Marshal(in)
		if err != nil || !bytes.Equal(via, want) {
			t.Fatalf("json.Marshal(*Instance) = %s, %v; want %s", via, err, want)
		}
	}

	list := &ServiceInstances{Index: 7, Service: in.Service, Realm: in.Realm, Instances: []*Instance{in, nil, in}}
	plain := &plainList{Index: 7, Service: in.Service, Realm: in.Realm, Instances: []*plainInstance{(*plainInstance)(in), nil, (*plainInstance)(in)}}
	want, wantErr = json.Marshal(plain)
	got, gotErr = list.AppendJSON(nil)
	if (wantErr != nil) != (gotErr != nil) {
		t.Fatalf("list: encoding/json error %v, AppendJSON error %v", wantErr, gotErr)
	}
	if wantErr == nil && !bytes.Equal(got, want) {
		t.Fatalf("list: AppendJSON wrote\n%s\nencoding/json writes\n%s", got, want)
	}
}

func TestInstanceJSON(t *testing.T) {
	at := time.Date(2026, 11, 27, 19, 4, 5, 123456789, time.UTC)
	hb := at.Add(time.Second)
	for _, in := range []*Instance{
		{},
		{ID: "web-1", Service: "web", Realm: "dev", Address: "10.0.0.1", Port: 8080, Tags: []string{"v2", "canary"},
			Meta: map[string]string{"version": "1.4.2", "az": "b", "": "empty key"}, Status: Passing, Output: "ok",
			Enabled: true, TTL: Duration(30 * time.Second), RegisteredAt: at, StatusChangedAt: at},
		{ID: "x", Tags: []string{}, Meta: map[string]string{}, Enabled: false, DisabledReason: "deploy <b>&</b>",
			Output: "line\nnext\t\"quoted\" \\ \b\f\x00\x1f\x7f é \u2028\u2029 \xff\xfe bad", TTL: Duration(1500 * time.Microsecond),
			RegisteredAt: at.In(time.FixedZone("", -7*3600-30*60)), LastHeartbeat: &hb, ExpiresAt: &hb},
		{RegisteredAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},                                                                          // year out of range
		{StatusChangedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600))},                                                     // zone hour 24
		{RegisteredAt: at, StatusChangedAt: at, ExpiresAt: func() *time.Time { t := time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC); return &t }()}, // negative year
	} {
		checkSameJSON(t, in)
	}
}

// FuzzInstanceJSON holds the appenders to encoding/json's bytes for any
// strings, times and zones.
func FuzzInstanceJSON(f *testing.F) {
	f.Add("web-1", "web", "dev", "10.0.0.1", 8080, "v2\x00canary", "version\x001.4.2\x00az\x00b", "passing", "ok", true, "",
		int64(30e9), int64(1_795_000_000_000_000_000), int64(0), 0, true, true, false)
	f.Add("<&>", "\u2028", "\xff", "", -1, "", "\x00", "critical", "a\"b\\c\nd\x01", false, "reason \xe2\x80",
		int64(-5), int64(-9_000_000_000_000_000_000), int64(9_000_000_000_000_000_000), 86399, false, false, true)
	f.Fuzz(func(t *testing.T, id, service, realm, address string, port int, tags, meta, status, output string,
		enabled bool, reason string, ttl, reg, changed int64, zone int, nilTags, nilMeta, leases bool) {
		in := &Instance{ID: id, Service: service, Realm: realm, Address: address, Port: port, Status: Status(status),
			Output: output, Enabled: enabled, DisabledReason: reason, TTL: Duration(ttl)}
		if !nilTags {
			in.Tags = strings.Split(tags, "\x00")
		}
		if !nilMeta {
			in.Meta = map[string]string{}
			kv := strings.Split(meta, "\x00")
			for i := 0; i+1 < len(kv); i += 2 {
				in.Meta[kv[i]] = kv[i+1]
			}
		}
		loc := time.FixedZone("", zone%(48*3600))
		in.RegisteredAt = time.Unix(0, reg).In(loc)
		in.StatusChangedAt = time.Unix(0, changed).UTC()
		if leases {
			a, b := in.RegisteredAt.Add(time.Duration(ttl)), in.StatusChangedAt
			in.LastHeartbeat, in.ExpiresAt = &a, &b
		}
		checkSameJSON(t, in)
	})
}

// TruncateOutput cuts at a rune boundary, and keeps the output whatever
// invalid bytes it holds before the cut: it cut them all away, with
// everything after the first.
func TestTruncateOutput(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int // length of the result
	}{
		{"short", "ok", 2},
		{"exactly the limit", strings.Repeat("a", MaxOutputBytes), MaxOutputBytes},
		{"ascii", strings.Repeat("a", 5000), MaxOutputBytes},
		{"a rune across the cut", strings.Repeat("a", MaxOutputBytes-1) + "€€", MaxOutputBytes - 1},
		{"a rune ending at the cut", strings.Repeat("a", MaxOutputBytes-3) + "€€", MaxOutputBytes},
		{"an invalid byte early", "ab\xffc" + strings.Repeat("a", 5000), MaxOutputBytes},
	} {
		got := TruncateOutput(tc.in)
		if len(got) != tc.want || !strings.HasPrefix(tc.in, got) {
			t.Errorf("%s: %d bytes, want the first %d", tc.name, len(got), tc.want)
		}
		if utf8.ValidString(tc.in) && !utf8.ValidString(got) {
			t.Errorf("%s: cut inside a rune", tc.name)
		}
	}
}
