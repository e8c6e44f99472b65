package atlas_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
)

// FuzzRegistration: any body either is refused with an invalid_argument
// error or yields a registration that validates and survives a round trip.
func FuzzRegistration(f *testing.F) {
	f.Add([]byte(`{"service":"identity","address":"10.0.0.5","port":5000,"tags":["v2"],"meta":{"version":"1.4.2"},"ttl":"10s"}`))
	f.Add([]byte(`{"service":"a","address":"host.example","port":1,"status":"warning","realm":"production"}`))
	f.Add([]byte(`{"service":"a","address":"::1","port":65535,"ttl":"24h","output":"ok"}`))
	f.Add([]byte(`{"service":"a","port":1e3}`))
	f.Add([]byte(`{"ttl":"-1s"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var reg sb.Registration
		if err := atlas.DecodeJSON(body, &reg); err != nil {
			if sb.ErrorCode(err) != sb.EInvalid || sb.ErrorMessage(err) == "" {
				t.Fatalf("decode error %v is not invalid_argument with a message", err)
			}
			return
		}
		reg.Normalize()
		if err := reg.Validate(); err != nil {
			if sb.ErrorCode(err) != sb.EInvalid || !strings.Contains(sb.ErrorMessage(err), ":") {
				t.Fatalf("validate error %v does not name a field", err)
			}
			return
		}
		b, err := json.Marshal(reg)
		if err != nil {
			t.Fatal(err)
		}
		var again sb.Registration
		if err := atlas.DecodeJSON(b, &again); err != nil {
			t.Fatalf("round trip of %s: %v", b, err)
		}
		// An empty list and no list are the same registration.
		if diff := cmp.Diff(reg, again, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip changed the registration:\n%s", diff)
		}
	})
}

// FuzzMerge: a layer that ParseLayer accepts merges without panic, every
// source names a real leaf, and merging a layer over itself changes nothing.
func FuzzMerge(f *testing.F) {
	f.Add([]byte(`{"db":{"dsn":"x","pool":5},"log":"info"}`), []byte(`{"db":{"pool":null},"log":{"level":"warn"}}`))
	f.Add([]byte(`{"a":[1,2,{"b":null}]}`), []byte(`{"a":null}`))
	f.Add([]byte(`{"a.b":1,"a":{"b":2}}`), []byte(`{}`))
	f.Add([]byte(`{}`), []byte(`{"x":{"y":{"z":{}}}}`))
	f.Fuzz(func(t *testing.T, lo, hi []byte) {
		l1, err1 := atlas.ParseLayer(lo)
		l2, err2 := atlas.ParseLayer(hi)
		if err1 != nil || err2 != nil {
			return
		}
		keys := []sb.LayerKey{{}, {Service: "s"}}
		merged, sources := atlas.Merge(keys, []json.RawMessage{l1, l2})
		if _, err := json.Marshal(merged); err != nil {
			t.Fatalf("merged config does not marshal: %v", err)
		}
		for path, src := range sources {
			if src != "global" && src != "service=s" {
				t.Fatalf("source %q of %q names no layer", src, path)
			}
		}
		once, _ := atlas.Merge(keys[:1], []json.RawMessage{l1})
		twice, _ := atlas.Merge(keys, []json.RawMessage{l1, l1})
		if diff := cmp.Diff(once, twice); diff != "" {
			t.Fatalf("merging a layer over itself changed it:\n%s", diff)
		}
	})
}

// FuzzAPI sends arbitrary requests to a real Atlas: it never panics, never
// answers 500, and every error has the JSON error body.
func FuzzAPI(f *testing.F) {
	h := atlastest.Start(f, true).Server.Handler()
	f.Add("PUT", "/v1/instances/a-1", `{"service":"a","address":"127.0.0.1","port":5000}`)
	f.Add("PUT", "/v1/instances/a-1/status", `{"status":"warning","output":"slow"}`)
	f.Add("PUT", "/v1/instances/a-1/enabled", `{"enabled":false,"reason":"x"}`)
	f.Add("GET", "/v1/services/a?status=passing&tag=v2&leases=true&index=1&wait=1ms", "")
	f.Add("GET", "/v1/services?realm=production&index=99999999999999999999", "")
	f.Add("PUT", "/v1/config/layer?realm=dev&service=a&cas=0", `{"x":{"y":null}}`)
	f.Add("GET", "/v1/config?realm=dev&service=a&index=1&wait=1ms", "")
	f.Add("POST", "/v1/services/a/port", "")
	f.Add("POST", "/v1/tokens", `{"name":"n","role":"service","services":["a"],"realms":["dev"]}`)
	f.Add("PUT", "/v1/policies/a?realm=dev", `{"may_call":["b"]}`)
	f.Add("DELETE", "/v1/instances/a-1", "")
	f.Add("GET", "/v1/instances/%zz", "")
	f.Add("GET", "/v1/watch?realm=dev&service=a&service=b", "7")
	f.Add("GET", "/v1/watch", "99999999999999999999")
	f.Fuzz(func(t *testing.T, method, target, body string) {
		// A stream does not end by itself: it is asked for with its
		// context over already, and so ends after its first events. Its
		// body, which a GET has no use for, is sent as Last-Event-ID.
		stream := strings.Contains(target, "/v1/watch")
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n\t#") {
			return
		}
		switch method {
		case "GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS":
		default:
			return
		}
		req, err := http.NewRequest(method, "http://atlas"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		if stream {
			if strings.ContainsAny(body, "\r\n\x00") {
				return // no header value
			}
			req.Header.Set("Last-Event-ID", body)
			ctx, cancel := context.WithCancel(req.Context())
			cancel()
			req = req.WithContext(ctx)
		}
		q := req.URL.Query()
		if q.Has("index") {
			q.Set("wait", "1ms") // never block the fuzzer
			req.URL.RawQuery = q.Encode()
		}
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q = %d %s", method, target, body, rec.Code, rec.Body)
		}
		if stream && rec.Code == http.StatusOK && rec.Body.Len() > 0 && !strings.HasPrefix(rec.Body.String(), "event: ") {
			t.Fatalf("%s %s (Last-Event-ID %q) = 200 with %q; want events", method, target, body, rec.Body)
		}
		if rec.Code >= 400 && method != "HEAD" {
			var e struct{ Error sb.Error }
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
				t.Fatalf("%s %s = %d with body %q; want the JSON error", method, target, rec.Code, rec.Body)
			}
		}
	})
}

// FuzzAuthorization sends any Authorization header ("$TOKEN" in it stands
// for the admin token) to an Atlas with authentication on: a call is let
// through only with the token itself after "Bearer " (any case, spaces
// around it aside); anything else is unauthenticated, with the JSON error
// body and a message about the header.
func FuzzAuthorization(f *testing.F) {
	a := atlastest.Start(f, false)
	token := a.AdminToken
	id, _, _ := strings.Cut(strings.TrimPrefix(token, "sb."), ".")
	h := a.Server.Handler()
	for _, s := range []string{"Bearer $TOKEN", "bearer  $TOKEN ", "Bearer $TOKEN.", "Bearer $TOKENx", "Basic $TOKEN", "Bearer", "Bearer sb." + id + ".", "Bearer sb." + id, "Bearer sb..x", "$TOKEN", "Bearer\t$TOKEN"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		header = strings.ReplaceAll(header, "$TOKEN", token)
		req := httptest.NewRequest("GET", "/v1/services", nil)
		req.Header["Authorization"] = []string{header}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		scheme, tok, _ := strings.Cut(header, " ")
		if strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(tok) == token {
			if rec.Code != http.StatusOK {
				t.Fatalf("Authorization %q = %d %s; want 200", header, rec.Code, rec.Body)
			}
			return
		}
		var e struct{ Error sb.Error }
		if rec.Code != http.StatusUnauthorized || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error.Code != sb.EUnauthenticated || !strings.HasPrefix(e.Error.Message, "authorization: ") ||
			rec.Header().Get("WWW-Authenticate") != `Bearer realm="atlas"` {
			t.Fatalf("Authorization %q = %d %v %s; want 401 unauthenticated about the header, asking for a bearer token", header, rec.Code, rec.Header(), rec.Body)
		}
	})
}

// FuzzStoredValues writes any value under any of Atlas's keys straight
// into its store, as a damaged file, another version of Atlas or a hand
// edit of etcd might: Atlas never panics and never answers 500 to a read
// of it, shows no instance that a registration could not have made, and
// forgets it when the key goes.
func FuzzStoredValues(f *testing.F) {
	a := atlastest.Start(f, true)
	h := a.Server.Handler()
	for i, seed := range []struct{ name, value string }{
		{"a-1", `{"id":"a-1","service":"a","realm":"dev","address":"10.0.0.1","port":5000,"status":"passing","ttl":"30s"}`},
		{"a-1", `{"enabled":false,"reason":"drain"}`},
		{"dev/a", `{"db":{"pool":5}}`},
		{"tok1", `{"name":"n","role":"service","hash":"00","services":["a"],"realms":["dev"]}`},
		{"a", `5000`},
		{"5000", `"a"`},
		{"dev/a", `["b","c"]`},
	} {
		f.Add(uint8(i), seed.name, []byte(seed.value))
	}
	f.Add(uint8(0), "x", []byte(`{"service":"","port":-1,"status":"up","tags":[""],"meta":{"":""}}`))
	f.Add(uint8(2), "//", []byte(`null`))
	f.Add(uint8(4), "b", []byte(`70000`))
	f.Add(uint8(5), "-1", []byte(`""`))
	f.Add(uint8(5), "5000", []byte(`{`))
	f.Fuzz(func(t *testing.T, kind uint8, name string, value []byte) {
		key := atlas.StorePrefixes[int(kind)%len(atlas.StorePrefixes)] + name
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		write := func(op atlas.Op) {
			index, err := a.Store.Txn(ctx, []atlas.Op{op})
			if err != nil {
				t.Fatalf("writing %q: %v", key, err)
			}
			if err := a.Server.WaitApplied(ctx, index); err != nil {
				t.Fatal(err)
			}
		}
		write(atlas.Op{Key: key, Value: value})
		var loose struct{ Service, Realm string }
		_ = json.Unmarshal(value, &loose)
		realm, service, _ := strings.Cut(name, "/")
		reads := []string{
			"/v1/services",
			"/v1/services?realm=" + url.QueryEscape(loose.Realm),
			"/v1/services/" + url.PathEscape(loose.Service) + "?leases=true&realm=" + url.QueryEscape(loose.Realm),
			"/v1/services/" + url.PathEscape(name) + "?realm=" + url.QueryEscape(realm),
			"/v1/instances/" + url.PathEscape(name),
			"/v1/config?realm=" + url.QueryEscape(realm) + "&service=" + url.QueryEscape(service),
			"/v1/config/layer?realm=" + url.QueryEscape(realm) + "&service=" + url.QueryEscape(service),
			"/v1/config/layers",
			"/v1/tokens",
			"/v1/policies?realm=" + url.QueryEscape(realm),
		}
		for _, target := range reads {
			req, err := http.NewRequestWithContext(ctx, "GET", "http://atlas"+target, nil)
			if err != nil {
				continue
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code >= 500 {
				t.Fatalf("with %q = %q stored: GET %s = %d %s", key, value, target, rec.Code, rec.Body)
			}
			if rec.Code != http.StatusOK {
				continue
			}
			var shown struct{ Instances []*sb.Instance }
			if strings.HasPrefix(target, "/v1/instances/") {
				var in sb.Instance
				if json.Unmarshal(rec.Body.Bytes(), &in) == nil {
					shown.Instances = append(shown.Instances, &in)
				}
			} else if strings.HasPrefix(target, "/v1/services/") {
				_ = json.Unmarshal(rec.Body.Bytes(), &shown)
			}
			for _, in := range shown.Instances {
				reg := sb.Registration{Service: in.Service, Realm: in.Realm, Address: in.Address, Port: in.Port,
					Tags: in.Tags, Meta: in.Meta, Status: in.Status, TTL: in.TTL}
				if err := reg.Validate(); err != nil || sb.ValidateID(in.ID) != nil {
					t.Fatalf("with %q = %q stored: GET %s shows an instance no registration makes (%v): %+v", key, value, target, err, in)
				}
			}
		}
		// A write through the API replaces what is there, valid or not.
		do := func(method, target, body string) *httptest.ResponseRecorder {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, method, target, strings.NewReader(body)))
			return rec
		}
		switch prefix := atlas.StorePrefixes[int(kind)%len(atlas.StorePrefixes)]; {
		case prefix == "i/" && sb.ValidateID(name) == nil:
			rec := do("PUT", "/v1/instances/"+url.PathEscape(name), `{"service":"fz","address":"127.0.0.1","port":5000}`)
			if rec.Code != http.StatusOK {
				t.Fatalf("with %q = %q stored: registering %s = %d %s", key, value, name, rec.Code, rec.Body)
			}
		case prefix == "p/" && sb.ValidateName("service", name) == nil, prefix == "q/":
			service := name
			if prefix == "q/" {
				service = "fz"
			}
			rec := do("POST", "/v1/services/"+url.PathEscape(service)+"/port", "")
			var pa sb.PortAssignment
			if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &pa) != nil {
				t.Fatalf("with %q = %q stored: a port for %s = %d %s", key, value, service, rec.Code, rec.Body)
			}
			write(atlas.Op{Key: "q/" + strconv.Itoa(pa.Port), Delete: true})
			write(atlas.Op{Key: "p/" + service, Delete: true})
		}
		write(atlas.Op{Key: key, Delete: true})
		if name != "" && kind%uint8(len(atlas.StorePrefixes)) == 0 {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/instances/"+url.PathEscape(name), nil))
			if rec.Code == http.StatusOK {
				t.Fatalf("after %q was deleted: GET /v1/instances/%s = 200 %s", key, name, rec.Body)
			}
		}
	})
}
