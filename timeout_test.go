package switchboard

import (
	"strings"
	"testing"
	"time"
)

// FuzzParseTimeout: a Switchboard-Timeout (the sidecar's and the smart
// client's, one rule) is taken when it is a Go duration from 1ms to 1h,
// and is then what it says (its String reads back the same); anything else
// is invalid_argument naming the header and quoting the value (quoteValue).
func FuzzParseTimeout(f *testing.F) {
	for _, s := range []string{"", "2s", "1ms", "1h", "1h0m0.000000001s", "999us", "0", "-1s", "1.5m", "+3s", "2", "9223372036854775807ns", " 2s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, err := ParseTimeout(v)
		want, perr := time.ParseDuration(v)
		ok := perr == nil && want >= time.Millisecond && want <= time.Hour
		if err != nil {
			if ok {
				t.Fatalf("ParseTimeout(%q): %v; want %v", v, err, want)
			}
			if ErrorCode(err) != EInvalid || !strings.Contains(ErrorMessage(err), TimeoutHeader+": ") || !strings.Contains(ErrorMessage(err), quoteValue(v)) {
				t.Fatalf("ParseTimeout(%q): error %v is not invalid_argument naming the header and the value", v, err)
			}
			if len(ErrorMessage(err)) > 400 {
				t.Fatalf("ParseTimeout(%q): a message of %d bytes; want it short, whatever the value", v, len(ErrorMessage(err)))
			}
			return
		}
		if !ok || d != want {
			t.Fatalf("ParseTimeout(%q) = %v; ParseDuration says %v, %v", v, d, want, perr)
		}
		if again, err := ParseTimeout(d.String()); err != nil || again != d {
			t.Fatalf("ParseTimeout(%q) = %v, whose String parses to %v, %v", v, d, again, err)
		}
	})
}

func TestQuoteValue(t *testing.T) {
	for v, want := range map[string]string{
		"2x":                    `"2x"`,
		`a"b\c`:                 `"a\"b\\c"`,
		"2\tµs":                 `"2\x09\xc2\xb5s"`,
		strings.Repeat("a", 65): `"` + strings.Repeat("a", 64) + `"...`,
	} {
		if got := quoteValue(v); got != want {
			t.Errorf("quoteValue(%q) = %s; want %s", v, got, want)
		}
	}
}
