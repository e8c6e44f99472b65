package atlas_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
)

// TestBadInput covers every 4xx of the SPEC: each answer has the JSON error
// body with the right code, and its message names the field and the rule.
func TestBadInput(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, ""))
	a.must("PUT", "/v1/config/layer?realm=production", `{"x":1}`)
	big := `{"service":"a","address":"127.0.0.1","port":1,"output":"` + strings.Repeat("x", sb.MaxBodyBytes) + `"}`
	bigLayer := `{"x":"` + strings.Repeat("y", sb.MaxLayerBytes) + `"}`
	manyTags := `["` + strings.Repeat(`t","`, 32) + `t"]`
	var manyServices strings.Builder
	for i := range 641 {
		fmt.Fprintf(&manyServices, "&service=s%d", i)
	}
	tests := []struct {
		name, method, path, body, ctype string
		status                          int
		code, msg                       string
	}{
		{"port too big", "PUT", "/v1/instances/a-2", reg("a", 70000, ""), "", 400, sb.EInvalid, "port: must be 1-65535, got 70000"},
		{"misspelt query parameter", "PUT", "/v1/config/layer?servce=identity", `{"oops":1}`, "", 400, sb.EInvalid, "servce: unknown query parameter (PUT /v1/config/layer takes realm, service, cas)"},
		{"query parameter where none is taken", "POST", "/v1/services/a/port?realm=production", "", "", 400, sb.EInvalid, "realm: unknown query parameter (POST /v1/services/{name}/port takes none)"},
		{"query parameter a route does not take", "PUT", "/v1/instances/a-2?realm=production", reg("a", 1, ""), "", 400, sb.EInvalid, "realm: unknown query parameter (PUT /v1/instances/{id} takes sync)"},
		{"sync not later", "PUT", "/v1/instances/a-2?sync=now", reg("a", 1, ""), "", 400, sb.EInvalid, `sync: must be later (the caller heartbeats, and registers again when a heartbeat gets not_found), once, or not given, got "now"`},
		{"heartbeat sync not later", "PUT", "/v1/instances/a-2/status?sync=1", `{"status":"passing"}`, "", 400, sb.EInvalid, `sync: must be later`},
		{"batch heartbeat sync not later", "PUT", "/v1/heartbeats?sync=true", `{"heartbeats":[]}`, "", 400, sb.EInvalid, `sync: must be later`},
		{"sync empty", "PUT", "/v1/instances/a-2?sync=", reg("a", 1, ""), "", 400, sb.EInvalid, `sync: must be later (the caller heartbeats, and registers again when a heartbeat gets not_found), once, or not given, got ""`},
		{"sync twice", "PUT", "/v1/instances/a-2?sync=later&sync=bogus", reg("a", 1, ""), "", 400, sb.EInvalid, `got "later&bogus"`},
		{"port request with a body", "POST", "/v1/services/a/port", `{"x":1}`, "", 400, sb.EInvalid, "x: unknown field"},
		{"port missing", "PUT", "/v1/instances/a-2", `{"service":"a","address":"127.0.0.1"}`, "", 400, sb.EInvalid, "port: required, 1-65535"},
		{"port negative", "PUT", "/v1/instances/a-2", reg("a", -1, ""), "", 400, sb.EInvalid, "port: must be 1-65535, got -1"},
		{"body null", "PUT", "/v1/instances/a-2", `null`, "", 400, sb.EInvalid, "body: a JSON object is required"},
		{"bad service name", "PUT", "/v1/instances/a-2", reg("Bad_Name", 1, ""), "", 400, sb.EInvalid, "service: must match"},
		{"missing service", "PUT", "/v1/instances/a-2", `{"address":"127.0.0.1","port":1}`, "", 400, sb.EInvalid, "service: required"},
		{"bad realm", "PUT", "/v1/instances/a-2", reg("a", 1, `,"realm":"PROD"`), "", 400, sb.EInvalid, "realm: must match"},
		{"missing address", "PUT", "/v1/instances/a-2", `{"service":"a","port":1}`, "", 400, sb.EInvalid, "address: required"},
		{"bad address", "PUT", "/v1/instances/a-2", `{"service":"a","address":"not a host!","port":1}`, "", 400, sb.EInvalid, "address: must be an IP address or a host name"},
		{"bad status", "PUT", "/v1/instances/a-2", reg("a", 1, `,"status":"ok"`), "", 400, sb.EInvalid, "status: must be passing, warning or critical"},
		{"ttl too short", "PUT", "/v1/instances/a-2", reg("a", 1, `,"ttl":"500ms"`), "", 400, sb.EInvalid, "ttl: must be between 1s and 24h"},
		{"ttl zero", "PUT", "/v1/instances/a-2", reg("a", 1, `,"ttl":"0s"`), "", 400, sb.EInvalid, "ttl: must be between 1s and 24h, got 0s"},
		{"ttl negative", "PUT", "/v1/instances/a-2", reg("a", 1, `,"ttl":"-5s"`), "", 400, sb.EInvalid, "ttl: must be between 1s and 24h, got -5s"},
		{"ttl zero in another unit", "PUT", "/v1/instances/a-2", reg("a", 1, `,"ttl":"0h"`), "", 400, sb.EInvalid, "ttl: must be between 1s and 24h, got 0s"},
		{"ttl too long", "PUT", "/v1/instances/a-2", reg("a", 1, `,"ttl":"25h"`), "", 400, sb.EInvalid, "ttl: must be between 1s and 24h"},
		{"ttl not a duration", "PUT", "/v1/instances/a-2", reg("a", 1, `,"ttl":"soon"`), "", 400, sb.EInvalid, "ttl: must be a duration"},
		{"ttl a number", "PUT", "/v1/instances/a-2", reg("a", 1, `,"ttl":30`), "", 400, sb.EInvalid, "ttl: must be a duration"},
		{"too many tags", "PUT", "/v1/instances/a-2", reg("a", 1, `,"tags":`+manyTags), "", 400, sb.EInvalid, "tags: at most 32"},
		{"tag too long", "PUT", "/v1/instances/a-2", reg("a", 1, `,"tags":["`+strings.Repeat("t", 129)+`"]`), "", 400, sb.EInvalid, "tags[0]: must be 1-128 bytes"},
		{"meta value too long", "PUT", "/v1/instances/a-2", reg("a", 1, `,"meta":{"k":"`+strings.Repeat("v", 513)+`"}`), "", 400, sb.EInvalid, `meta["k"]: value must be at most 512 bytes`},
		{"port a string", "PUT", "/v1/instances/a-2", `{"service":"a","address":"127.0.0.1","port":"80"}`, "", 400, sb.EInvalid, "port: must be a whole number, got string"},
		{"port a fraction", "PUT", "/v1/instances/a-2", `{"service":"a","address":"127.0.0.1","port":5000.5}`, "", 400, sb.EInvalid, "port: must be a whole number, got number 5000.5"},
		{"port out of range", "PUT", "/v1/instances/a-2", `{"service":"a","address":"127.0.0.1","port":99999999999999999999}`, "", 400, sb.EInvalid, "port: out of range, got number 99999999999999999999"},
		{"tag a number", "PUT", "/v1/instances/a-2", reg("a", 1, `,"tags":["ok",1]`), "", 400, sb.EInvalid, "tags: each element must be a string, got number"},
		{"meta value a number", "PUT", "/v1/instances/a-2", reg("a", 1, `,"meta":{"k":1}`), "", 400, sb.EInvalid, "meta: each value must be a string, got number"},
		{"tags an object", "PUT", "/v1/instances/a-2", reg("a", 1, `,"tags":{}`), "", 400, sb.EInvalid, "tags: must be an array, got object"},
		{"unknown field", "PUT", "/v1/instances/a-2", reg("a", 1, `,"colour":"red"`), "", 400, sb.EInvalid, "colour: unknown field"},
		{"field in upper case", "PUT", "/v1/instances/a-2", `{"Service":"a","address":"127.0.0.1","port":1}`, "", 400, sb.EInvalid, `Service: unknown field (names are case-sensitive: "service")`},
		{"field twice, in two cases", "PUT", "/v1/instances/a-2", `{"service":"a","SERVICE":"b","address":"127.0.0.1","port":1}`, "", 400, sb.EInvalid, `SERVICE: unknown field (names are case-sensitive: "service")`},
		{"field with a long s", "PUT", "/v1/instances/a-2", `{"ſervice":"a","address":"127.0.0.1","port":1}`, "", 400, sb.EInvalid, `ſervice: unknown field (names are case-sensitive: "service")`},
		{"field escaped in upper case", "PUT", "/v1/instances/a-2", `{"\u0053ervice":"a","address":"127.0.0.1","port":1}`, "", 400, sb.EInvalid, `Service: unknown field`},
		{"nested field in upper case", "PUT", "/v1/heartbeats", `{"heartbeats":[{"ID":"a-1"}]}`, "", 400, sb.EInvalid, `heartbeats.ID: unknown field (names are case-sensitive: "id")`},
		{"malformed JSON", "PUT", "/v1/instances/a-2", `{"service":`, "", 400, sb.EInvalid, "body: malformed JSON"},
		{"trailing data", "PUT", "/v1/instances/a-2", reg("a", 1, "") + `{}`, "", 400, sb.EInvalid, "body: must be a single JSON value"},
		{"empty body", "PUT", "/v1/instances/a-2", "", "", 400, sb.EInvalid, "body: a JSON object is required"},
		{"array body", "PUT", "/v1/instances/a-2", `[1]`, "", 400, sb.EInvalid, "body: must be a JSON object"},
		{"bad id", "PUT", "/v1/instances/-x", reg("a", 1, ""), "", 400, sb.EInvalid, "id: must match"},
		{"id too long", "PUT", "/v1/instances/" + strings.Repeat("i", 129), reg("a", 1, ""), "", 400, sb.EInvalid, "id: must match"},
		{"body too large", "PUT", "/v1/instances/a-2", big, "", 413, sb.ETooLarge, "body: must be at most 1048576 bytes"},
		{"wrong content type", "PUT", "/v1/instances/a-2", reg("a", 1, ""), "text/plain", 415, sb.EUnsupportedMedia, "content-type: must be application/json"},
		{"heartbeat unknown", "PUT", "/v1/instances/zz/status", `{"status":"passing"}`, "", 404, sb.ENotFound, "instance zz: not registered"},
		{"heartbeat bad status", "PUT", "/v1/instances/a-1/status", `{"status":"up"}`, "", 400, sb.EInvalid, "status: must be passing, warning or critical"},
		{"enabled missing", "PUT", "/v1/instances/a-1/enabled", `{"reason":"x"}`, "", 400, sb.EInvalid, "enabled: required"},
		{"enabled unknown instance", "PUT", "/v1/instances/zz/enabled", `{"enabled":false}`, "", 404, sb.ENotFound, "instance zz: not registered"},
		{"deregister unknown", "DELETE", "/v1/instances/zz", "", "", 404, sb.ENotFound, "instance zz: not registered"},
		{"get unknown", "GET", "/v1/instances/zz", "", "", 404, sb.ENotFound, "instance zz: not registered"},
		{"services bad realm", "GET", "/v1/services?realm=Prod", "", "", 400, sb.EInvalid, "realm: must match"},
		{"service bad status filter", "GET", "/v1/services/a?status=up", "", "", 400, sb.EInvalid, "status: must be passing, warning or critical"},
		{"service bad name", "GET", "/v1/services/A", "", "", 400, sb.EInvalid, "name: must match"},
		{"service bad leases", "GET", "/v1/services/a?leases=maybe", "", "", 400, sb.EInvalid, "leases: must be true or false"},
		{"bad index", "GET", "/v1/services/a?index=-1", "", "", 400, sb.EInvalid, "index: must be a non-negative integer"},
		{"bad wait", "GET", "/v1/services/a?index=1&wait=forever", "", "", 400, sb.EInvalid, "wait: must be a duration"},
		{"port bad name", "POST", "/v1/services/A/port", "", "", 400, sb.EInvalid, "name: must match"},
		{"layer not an object", "PUT", "/v1/config/layer", `[1,2]`, "", 400, sb.EInvalid, "config: must be a JSON object, got an array"},
		{"layer malformed", "PUT", "/v1/config/layer", `{"a":`, "", 400, sb.EInvalid, "body: malformed JSON"},
		{"layer key with a dot", "PUT", "/v1/config/layer", `{"db":{"pool.size":5}}`, "", 400, sb.EInvalid, `config: key "pool.size" in db: must be non-empty and hold no ".", which joins key paths`},
		{"layer key empty", "PUT", "/v1/config/layer", `{"":1}`, "", 400, sb.EInvalid, `config: key "": must be non-empty`},
		{"layer too large", "PUT", "/v1/config/layer", bigLayer, "", 413, sb.ETooLarge, "body: must be at most 524288 bytes"},
		{"layer bad realm", "PUT", "/v1/config/layer?realm=X", `{}`, "", 400, sb.EInvalid, "realm: must match"},
		{"layer bad service", "GET", "/v1/config/layer?service=_", "", "", 400, sb.EInvalid, "service: must match"},
		{"layer bad cas", "PUT", "/v1/config/layer?cas=x", `{}`, "", 400, sb.EInvalid, "cas: must be a non-negative integer"},
		{"layer cas conflict", "PUT", "/v1/config/layer?realm=production&cas=999", `{}`, "", 409, sb.EConflict, "cas: layer realm=production is at index"},
		{"layer cas on a layer that is not there", "PUT", "/v1/config/layer?realm=nowhere&cas=999", `{}`, "", 409, sb.EConflict, "cas: layer realm=nowhere does not exist (any more), so it is not at index 999"},
		{"layer cas=0 on a layer that is there", "PUT", "/v1/config/layer?realm=production&cas=0", `{}`, "", 409, sb.EConflict, "cas: layer realm=production already exists (at index"},
		{"layer cas must not exist", "PUT", "/v1/config/layer?realm=production&cas=0", `{}`, "", 409, sb.EConflict, "cas: layer realm=production"},
		{"layer unknown", "GET", "/v1/config/layer?service=nope", "", "", 404, sb.ENotFound, "config layer service=nope: not set"},
		{"delete unknown layer", "DELETE", "/v1/config/layer?service=nope", "", "", 404, sb.ENotFound, "config layer service=nope: not set"},
		{"config bad service", "GET", "/v1/config?service=Nope", "", "", 400, sb.EInvalid, "service: must match"},
		{"token bad role", "POST", "/v1/tokens", `{"name":"x","role":"root"}`, "", 400, sb.EInvalid, "role: must be admin, reader or service"},
		{"token no name", "POST", "/v1/tokens", `{"role":"reader"}`, "", 400, sb.EInvalid, "name: required: what the token is for"},
		{"service token unbound", "POST", "/v1/tokens", `{"name":"x","role":"service"}`, "", 400, sb.EInvalid, "services: a service token needs at least one service"},
		{"reader token bound", "POST", "/v1/tokens", `{"name":"x","role":"reader","services":["a"]}`, "", 400, sb.EInvalid, "services, realms: only a service token"},
		{"token delete unknown", "DELETE", "/v1/tokens/nope", "", "", 404, sb.ENotFound, "token nope: not found"},
		{"policy bad target", "PUT", "/v1/policies/a", `{"may_call":["B"]}`, "", 400, sb.EInvalid, "may_call[0]: must match"},
		{"watch without service", "GET", "/v1/watch", "", "", 400, sb.EInvalid, "service: at least one is required"},
		{"watch bad service", "GET", "/v1/watch?service=A", "", "", 400, sb.EInvalid, "service: must match"},
		{"watch too many services", "GET", "/v1/watch?service=a" + manyServices.String(), "", "", 400, sb.EInvalid, "service: at most 640 in one stream (service=* follows every one), got 642"},
		{"no such endpoint", "GET", "/v2/nothing", "", "", 404, sb.ENotFound, "GET /v2/nothing: no such endpoint"},
		{"wrong method", "DELETE", "/v1/health", "", "", 404, sb.ENotFound, "DELETE /v1/health: no such endpoint; /v1/health takes GET"},
		{"wrong method, several others", "POST", "/v1/instances/a-1", "", "", 404, sb.ENotFound, "POST /v1/instances/a-1: no such endpoint; /v1/instances/a-1 takes GET, PUT, DELETE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, a.http.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			ct := tt.ctype
			if ct == "" && tt.body != "" {
				ct = "application/json"
			}
			if ct != "" {
				req.Header.Set("Content-Type", ct)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var body struct{ Error sb.Error }
			if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
				t.Fatalf("%s %s: error body not JSON: %v", tt.method, tt.path, err)
			}
			if res.StatusCode != tt.status || body.Error.Code != tt.code || !strings.Contains(body.Error.Message, tt.msg) {
				t.Errorf("%s %s = %d %s %q; want %d %s containing %q", tt.method, tt.path,
					res.StatusCode, body.Error.Code, body.Error.Message, tt.status, tt.code, tt.msg)
			}
			if got := res.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q", got)
			}
			if _, takes, ok := strings.Cut(tt.msg, "no such endpoint; "+tt.path+" takes "); ok {
				if strings.Contains(takes, "GET") {
					takes = "HEAD, " + takes
				}
				if res.Header.Get("Allow") != takes {
					t.Errorf("Allow = %q, want %q", res.Header.Get("Allow"), takes)
				}
			}
		})
	}
}

func TestLongOutputIsTruncatedNotRefused(t *testing.T) {
	a := start(t, true)
	var in sb.Instance
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, `,"output":"`+strings.Repeat("é", 3000)+`"`)).decode(t, &in)
	if len(in.Output) > sb.MaxOutputBytes || len(in.Output) < sb.MaxOutputBytes-1 {
		t.Fatalf("output is %d bytes; want it cut to %d", len(in.Output), sb.MaxOutputBytes)
	}
}

// TestTrailingBracketIsRefused: a body with a stray "]" or "}" after its
// object is malformed JSON, refused as any other data after the value is.
func TestTrailingBracketIsRefused(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/config/layer", `{"x":1}`)
	tests := []struct{ name, path, body string }{
		{"registration and ]", "/v1/instances/a-1", reg("a", 5000, "") + "]"},
		{"registration and }", "/v1/instances/a-1", reg("a", 5000, "") + " }"},
		{"layer and }", "/v1/config/layer", `{"x":2}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := a.do("PUT", tt.path, tt.body)
			if r.status != 400 || !strings.Contains(string(r.body), "body: must be a single JSON value, found data after it") {
				t.Fatalf("PUT %s %q = %d %s; want 400 naming the data after the value", tt.path, tt.body, r.status, r.body)
			}
		})
	}
	if r := a.do("GET", "/v1/instances/a-1", ""); r.status != 404 {
		t.Errorf("the malformed registration was stored: %d %s", r.status, r.body)
	}
	var l sb.ConfigLayer
	a.must("GET", "/v1/config/layer", "").decode(t, &l)
	if string(l.Config) != `{"x":1}` {
		t.Errorf("global layer = %s; want the malformed write refused", l.Config)
	}
	if _, err := atlas.ParseLayer([]byte(`{"x":1}]`)); sb.ErrorCode(err) != sb.EInvalid {
		t.Errorf("ParseLayer of an object and ] = %v; want invalid_argument", err)
	}
}

// TestEmptyLayerParameterIsRefused: ?realm= with no value (a script's
// unset variable) names no layer; it must not write or delete the global
// layer, which leaving the parameter out names.
func TestEmptyLayerParameterIsRefused(t *testing.T) {
	a := start(t, true)
	a.must("PUT", "/v1/config/layer", `{"x":1}`)
	a.must("PUT", "/v1/config/layer?service=identity", `{"x":1}`)
	tests := []struct{ method, path, body, msg string }{
		{"PUT", "/v1/config/layer?realm=", `{"x":2}`, "realm: must not be empty"},
		{"PUT", "/v1/config/layer?realm=&service=identity", `{"x":2}`, "realm: must not be empty"},
		{"PUT", "/v1/config/layer?service=", `{"x":2}`, "service: must not be empty"},
		{"DELETE", "/v1/config/layer?realm=", "", "realm: must not be empty"},
		{"GET", "/v1/config/layer?service=", "", "service: must not be empty"},
	}
	for _, tt := range tests {
		r := a.do(tt.method, tt.path, tt.body)
		if r.status != 400 || !strings.Contains(string(r.body), tt.msg) {
			t.Errorf("%s %s = %d %s; want 400 with %q", tt.method, tt.path, r.status, r.body, tt.msg)
		}
	}
	for _, path := range []string{"/v1/config/layer", "/v1/config/layer?service=identity"} {
		var l sb.ConfigLayer
		a.must("GET", path, "").decode(t, &l)
		if string(l.Config) != `{"x":1}` {
			t.Errorf("GET %s = %s; want it untouched", path, l.Config)
		}
	}
}

// TestNullIsNotGiven: a field sent as null is one not given, ttl as much
// as status (encoding/json's own rule for its types).
func TestNullIsNotGiven(t *testing.T) {
	a := start(t, true)
	var in sb.Instance
	a.must("PUT", "/v1/instances/a-1", reg("a", 5000, `,"ttl":null,"status":null`)).decode(t, &in)
	if time.Duration(in.TTL) != sb.DefaultTTL || in.Status != sb.Passing {
		t.Fatalf("ttl and status null = %s, %s; want the defaults %s, passing", in.TTL, in.Status, sb.DefaultTTL)
	}
}
