package service_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/switchboard-go/switchboard/service"
)

// FuzzRedactURLs: /environment shows a variable's value (a URL, or a list
// of them separated by commas) with no text of a password in it: whether
// the value is read whole, as SWITCHBOARD_SIDECAR is, or as a list, as
// SWITCHBOARD_ATLAS is, no text of a URL's password (or of a piece of it
// that a comma cut off) is shown that the value would not show with that
// password masked.
func FuzzRedactURLs(f *testing.F) {
	for _, s := range []string{
		"http://admin:hunter2@127.0.0.1:4001",
		"http://a:x1@10.0.0.2:4400, http://b:y2@10.0.0.3:4400",
		"http://admin:hunter3@127.0.0.1:4001/%zz",
		"/usr/local/bin:/usr/bin",
		"http://10.0.0.2:4400,http://10.0.0.3:4400",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		shown := service.RedactURLs(v)
		readings := []string{v}
		if strings.Contains(v, ",") {
			readings = append(readings, strings.Split(v, ",")...)
		}
		for _, r := range readings {
			u, err := url.Parse(strings.TrimSpace(r))
			if err != nil || u.User == nil {
				continue
			}
			p, ok := u.User.Password()
			if !ok {
				continue
			}
			// The value with the URL as it may be shown: its password
			// masked.
			without := strings.Replace(v, r, u.Redacted(), 1) + "\n" + service.Masked
			// Nor a piece of it that a list's commas cut off.
			for _, s := range append(strings.Split(p, ","), p) {
				if s != "" && strings.Contains(shown, s) && !strings.Contains(without, s) {
					t.Fatalf("redactURLs(%q) = %q, showing %q of the password %q of %q", v, shown, s, p, r)
				}
			}
		}
	})
}
