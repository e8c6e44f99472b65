package cli

import (
	"bytes"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/switchboard-go/switchboard/atlas"
)

// FuzzParseLayer: a layer name either parses into a layer whose name
// parses back to it, or is refused as a usage error.
func FuzzParseLayer(f *testing.F) {
	for _, s := range []string{"global", "realm=production", "service=identity,realm=dev", "realm=x,realm=y", "service=", "a=b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := parseLayer(s)
		if err != nil {
			if _, ok := err.(*UsageError); !ok {
				t.Fatalf("parseLayer(%q) error %T is not a usage error", s, err)
			}
			return
		}
		again, err := parseLayer(k.String())
		if err != nil || again != k {
			t.Fatalf("parseLayer(%q) = %+v, whose name %q parses to %+v, %v", s, k, k.String(), again, err)
		}
	})
}

// FuzzParseStore: --store is refused as a usage error, or gives one etcd
// endpoint per HOST:PORT, each a URL whose host is that HOST:PORT, with a
// port in range: an endpoint that is not would be dialled for --store's
// whole timeout, then reported as etcd being unreachable.
func FuzzParseStore(f *testing.F) {
	for _, s := range []string{"", "bolt", "etcd://127.0.0.1:2379", "etcd://a:1,b:2", "etcd://[::1]:2379", "etcd://h:0", "etcd://h", "etcd://u@h:1", "http://h:1"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, secure bool) {
		eps, err := parseStore(s, secure)
		if err != nil {
			if _, ok := err.(*UsageError); !ok || !strings.Contains(err.Error(), "--store") {
				t.Fatalf("parseStore(%q): error %v is not a usage error naming --store", s, err)
			}
			return
		}
		rest, _ := strings.CutPrefix(s, "etcd://")
		if len(eps) == 0 {
			if s != "" && s != "bolt" {
				t.Fatalf("parseStore(%q) = no endpoints", s)
			}
			return
		}
		hps := strings.Split(rest, ",")
		if len(eps) != len(hps) {
			t.Fatalf("parseStore(%q) = %q; want one endpoint per HOST:PORT", s, eps)
		}
		for i, ep := range eps {
			u, err := url.Parse(ep)
			if err != nil || u.Host != hps[i] || u.Hostname() == "" || u.User != nil || u.Path != "" || (u.Scheme == "https") != secure {
				t.Fatalf("parseStore(%q) = %q: %q is not the URL of %q (%v)", s, eps, ep, hps[i], err)
			}
			if p, err := strconv.Atoi(u.Port()); err != nil || p < 1 || p > 65535 {
				t.Fatalf("parseStore(%q) = %q: %q has no port in range", s, eps, ep)
			}
		}
	})
}

// FuzzParsePorts: --ports is refused as a usage error, or is a range
// within 1-65535 that reads back the same written plainly.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"5000-5999", "1-65535", "5-5", "6-5", "0-1", "+1-2", "1-", "-1-2", "1-2-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lo, hi, err := parsePorts(s)
		if err != nil {
			if _, ok := err.(*UsageError); !ok || !strings.Contains(err.Error(), "--ports") {
				t.Fatalf("parsePorts(%q): error %v is not a usage error naming --ports", s, err)
			}
			return
		}
		if lo < 1 || hi > 65535 || lo > hi {
			t.Fatalf("parsePorts(%q) = %d-%d", s, lo, hi)
		}
		if lo2, hi2, err := parsePorts(fmt.Sprintf("%d-%d", lo, hi)); err != nil || lo2 != lo || hi2 != hi {
			t.Fatalf("parsePorts(%q) = %d-%d, which reads back as %d-%d, %v", s, lo, hi, lo2, hi2, err)
		}
	})
}

// FuzzReadObject: `config set` checks a layer before it sends it: a
// refusal is a usage error naming the file, and no layer Atlas takes is
// refused; what it takes goes out as it was read.
func FuzzReadObject(f *testing.F) {
	for _, s := range []string{`{"db":{"dsn":"x","pool":5}}`, `{}`, `null`, `[1]`, `{"a":1} {}`, `{"a.b":1}`, `{"x":`, " {\"a\":null}\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		obj, err := readObject("-", bytes.NewReader(data))
		_, aerr := atlas.ParseLayer(data)
		if err != nil {
			if _, ok := err.(*UsageError); !ok || !strings.HasPrefix(err.Error(), "-: ") {
				t.Fatalf("readObject(%q): error %v is not a usage error naming the file", data, err)
			}
			if aerr == nil {
				t.Fatalf("readObject(%q) refuses a layer Atlas takes: %v", data, err)
			}
			return
		}
		if !bytes.Equal(obj, data) {
			t.Fatalf("readObject(%q) = %q", data, obj)
		}
	})
}

// A fully qualified host name, with its trailing dot, is a host name.
func TestParseStoreTakesAFullyQualifiedName(t *testing.T) {
	eps, err := parseStore("etcd://etcd-1.corp.:2379,10.0.0.2:2379", false)
	if err != nil || len(eps) != 2 || eps[0] != "http://etcd-1.corp.:2379" {
		t.Fatalf("parseStore = %q, %v; want the two endpoints", eps, err)
	}
}

// FuzzParseMeta: --meta entries (here one per line) are refused as a usage
// error, or each gives its key its value, all of the value, whatever it
// holds ("=" and "," too).
func FuzzParseMeta(f *testing.F) {
	for _, s := range []string{"version=1.4.2", "a=1\nb=2", "note=a,b", "k==", "=v", "k=1\nk=2", "novalue", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		entries := strings.Split(s, "\n")
		meta, err := parseMeta(entries)
		if err != nil {
			if _, ok := err.(*UsageError); !ok || !strings.HasPrefix(err.Error(), "--meta: ") {
				t.Fatalf("parseMeta(%q) error %T %q; want a usage error about --meta", entries, err, err)
			}
			return
		}
		if len(meta) != len(entries) {
			t.Fatalf("parseMeta(%q) = %q: %d entries for %d", entries, meta, len(meta), len(entries))
		}
		for _, e := range entries {
			k, v, _ := strings.Cut(e, "=")
			if got, ok := meta[k]; !ok || got != v || k+"="+got != e {
				t.Fatalf("parseMeta(%q)[%q] = %q, want %q", entries, k, got, v)
			}
		}
	})
}
