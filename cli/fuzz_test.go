package cli

import "testing"

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
