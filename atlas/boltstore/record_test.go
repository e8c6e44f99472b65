package boltstore

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// FuzzRecord: an entry read from the bbolt file either is refused with an
// error naming its key (too short to hold the index and TTL) or decodes
// to a KV that encodes back to the same bytes and holds its own copy of
// the value (bbolt's memory is valid only within its transaction).
func FuzzRecord(f *testing.F) {
	f.Add([]byte("i/a-1"), encode(atlas.KV{Key: "i/a-1", Index: 7, TTL: 30 * time.Second, Value: []byte(`{"id":"a-1"}`)}))
	f.Add([]byte("c//"), encode(atlas.KV{Key: "c//", Index: 1<<64 - 1}))
	f.Add([]byte(""), []byte{1, 2, 3})
	f.Add([]byte("t/\xff"), bytes.Repeat([]byte{0xff}, 16))
	f.Fuzz(func(t *testing.T, k, v []byte) {
		kv, err := decode(k, v)
		if len(v) < 16 {
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", k)) {
				t.Fatalf("decode(%q, %d bytes) = %v; want an error naming the key", k, len(v), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("decode(%q, %x): %v", k, v, err)
		}
		if kv.Key != string(k) || !bytes.Equal(encode(kv), v) {
			t.Fatalf("decode(%q, %x) = %+v, which encodes to %x", k, v, kv, encode(kv))
		}
		before := bytes.Clone(kv.Value)
		for i := range v {
			v[i] ^= 0xff
		}
		if !bytes.Equal(kv.Value, before) {
			t.Fatalf("the decoded value shares the entry's memory")
		}
	})
}
