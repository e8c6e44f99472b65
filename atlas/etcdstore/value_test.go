package etcdstore

import (
	"bytes"
	"testing"
	"time"
)

// FuzzValue: a value read from etcd decodes to the TTL and payload it was
// encoded from, and a value of 8 bytes or more encodes back to the same
// bytes; the payload is a copy. A shorter value, which Atlas never
// writes, is read as a payload with no TTL rather than refused.
func FuzzValue(f *testing.F) {
	f.Add(int64(30*time.Second), []byte(`{"id":"a-1"}`), []byte(encode(30*time.Second, []byte(`{"id":"a-1"}`))))
	f.Add(int64(0), []byte{}, []byte(`"x"`))
	f.Add(int64(-1), []byte{0}, bytes.Repeat([]byte{0xff}, 9))
	f.Fuzz(func(t *testing.T, ttl int64, payload, raw []byte) {
		gotTTL, got := decode([]byte(encode(time.Duration(ttl), payload)))
		if gotTTL != time.Duration(ttl) || !bytes.Equal(got, payload) {
			t.Fatalf("decode(encode(%d, %q)) = %d, %q", ttl, payload, gotTTL, got)
		}

		gotTTL, got = decode(raw)
		if len(raw) < 8 {
			if gotTTL != 0 || !bytes.Equal(got, raw) {
				t.Fatalf("decode(%x) = %d, %x; want no TTL and the bytes as they are", raw, gotTTL, got)
			}
			return
		}
		if enc := encode(gotTTL, got); enc != string(raw) {
			t.Fatalf("decode(%x) = %d, %x, which encodes to %x", raw, gotTTL, got, enc)
		}
		before := bytes.Clone(got)
		for i := range raw {
			raw[i] ^= 0xff
		}
		if !bytes.Equal(got, before) {
			t.Fatal("the decoded payload shares the value's memory")
		}
	})
}
