package sidecar

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzHealthOutput: any body a local service answers a check with gives
// an output without panicking: "" for what is no Runscope healthcheck
// report, else one naming every checker, failures first (the 4 KiB Atlas
// keeps of an output starts with one).
func FuzzHealthOutput(f *testing.F) {
	f.Add([]byte(`{"hostname":"h","status":"failure","results":[{"checker":"db","output":"connection refused","passed":false},{"checker":"disk","output":{"free":"2G"},"passed":true}]}`))
	f.Add([]byte(`{"status":"success","results":[]}`))
	f.Add([]byte(`{"status":"success","results":[null,{"output":null},{"checker":"x","output":12}]}`))
	f.Add([]byte(`{"status":"","results":[{"checker":"a"}]}`))
	f.Add([]byte(`{"status":1}`))
	f.Add([]byte(`ok`))
	f.Fuzz(func(t *testing.T, body []byte) {
		out := healthOutput(body)
		var rep struct {
			Status  string `json:"status"`
			Results []struct {
				Checker string `json:"checker"`
				Passed  bool   `json:"passed"`
			} `json:"results"`
		}
		if json.Unmarshal(body, &rep) != nil || rep.Status == "" {
			if out != "" {
				t.Fatalf("healthOutput(%q) = %q; want \"\" for what is no report", body, out)
			}
			return
		}
		if out == "" {
			t.Fatalf("healthOutput(%q) = \"\"; want the report's output", body)
		}
		failed := false
		for _, r := range rep.Results {
			failed = failed || !r.Passed
			if !strings.Contains(out, r.Checker) {
				t.Fatalf("healthOutput(%q) = %q; want it to name checker %q", body, out, r.Checker)
			}
		}
		if failed && !strings.HasPrefix(out, "FAIL ") {
			t.Fatalf("healthOutput(%q) = %q; want a failure first", body, out)
		}
	})
}
