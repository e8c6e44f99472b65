package ui_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	sb "github.com/switchboard-go/switchboard"
	"github.com/switchboard-go/switchboard/atlas/atlastest"
	"github.com/switchboard-go/switchboard/client"
)

// dashboard runs an Atlas with auth on and some state.
type dashboard struct {
	url, admin, reader string
	api                *client.Atlas
	atlas              *atlastest.Atlas
}

func startAtlas(t *testing.T) *dashboard {
	t.Helper()
	a := atlastest.Start(t, false)
	d := &dashboard{url: a.URL, admin: a.AdminToken, api: a.Client(), atlas: a}
	ctx := context.Background()
	for i, st := range []sb.Status{sb.Passing, sb.Passing, sb.Warning} {
		_, err := d.api.Register(ctx, fmt.Sprintf("identity-h%d-5000", i), sb.Registration{Service: "identity", Address: "10.0.0.5", Port: 5000 + i,
			Status: st, Output: "3 checks passed", Tags: []string{"v2"}, Meta: map[string]string{"version": "1.4.2"}, TTL: sb.Duration(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
	}
	d.api.PutLayer(ctx, sb.LayerKey{}, json.RawMessage(`{"log":"info","db":{"pool":5}}`), nil)
	d.api.PutLayer(ctx, sb.LayerKey{Service: "identity", Realm: "dev"}, json.RawMessage(`{"db":{"pool":9}}`), nil)
	r, err := d.api.CreateToken(ctx, sb.TokenRequest{Name: "oncall", Role: sb.RoleReader})
	if err != nil {
		t.Fatal(err)
	}
	d.reader = r.Secret
	return d
}

// browser starts Debian's chromium, headless.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: test.sh installs it (apt-get install chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true), chromedp.UserDataDir(t.TempDir()))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	ctx, cancel3 := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancel3)
	return ctx
}

func text(ctx context.Context, t *testing.T, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// answerDialogs makes the page's prompt (the reason for a disable) and
// confirm answer at once, as a person would.
func answerDialogs(ctx context.Context, t *testing.T) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.prompt = () => "kernel upgrade"; window.confirm = () => true; true`)); err != nil {
		t.Fatal(err)
	}
}

func TestLoginFormWithoutToken(t *testing.T) {
	d := startAtlas(t)
	ctx := browser(t)
	if err := chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#login-form"))); err != nil {
		t.Fatalf("no login form for a page without a token: %v", err)
	}
	// Logging in with a reader token shows the services, read-only.
	err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#login-token"), d.reader),
		chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="identity"]`)),
		chromedp.Click(chromedp.CSS(`tr[data-service="identity"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#instances-table tr[data-id="identity-h0-5000"]`)))
	if err != nil {
		t.Fatal(err)
	}
	if got := text(ctx, t, "#who"); got != "read-only" {
		t.Fatalf("a reader is shown as %q", got)
	}
	// Heartbeats send no event; the lease fields are fetched again.
	hb := `#instances-table tr[data-id="identity-h0-5000"] td:nth-child(7)`
	first := text(ctx, t, hb)
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := chromedp.Run(pctx, chromedp.Poll[bool](fmt.Sprintf(`document.querySelector(%q).textContent !== %q`, hb, first))); err != nil {
		t.Fatalf("last heartbeat still shows %q after 15s: %v", first, err)
	}
	buttons, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#instances-table button").length`))
	if buttons != 0 {
		t.Fatalf("a reader sees %d enable/disable buttons", buttons)
	}
	// The token deleted, Atlas ends the page's event stream and refuses
	// it again: the page asks for a token rather than retry for ever.
	toks, err := d.api.Tokens(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		if tok.Name == "oncall" {
			if err := d.api.DeleteToken(context.Background(), tok.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#login-form"))); err != nil {
		t.Fatalf("no login form after the token was deleted: %v", err)
	}
	// Logging in again brings live updates back.
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#login-token"), d.admin),
		chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="identity"]`)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.api.Register(context.Background(), "billing-h1-6000", sb.Registration{Service: "billing", Address: "10.0.0.6", Port: 6000}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(wctx, chromedp.WaitVisible(chromedp.CSS(`tr[data-service="billing"]`))); err != nil {
		live, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#live")))
		t.Fatalf("after logging in again, a new service did not appear within 10s (live indicator %q): %v", live, err)
	}
}

func TestServicesLiveAndSwitch(t *testing.T) {
	d := startAtlas(t)
	ctx := browser(t)
	err := chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/#token="+d.admin),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="identity"]`)))
	if err != nil {
		t.Fatal(err)
	}
	if row := text(ctx, t, `tr[data-service="identity"]`); !strings.Contains(row, "identity\t3\t2\t1\t0\t0") {
		t.Fatalf("identity row = %q; want 3 instances: 2 passing, 1 warning", row)
	}
	// A registration appears without a reload: the event stream.
	start := time.Now()
	if _, err := d.api.Register(context.Background(), "billing-h1-6000", sb.Registration{Service: "billing", Address: "10.0.0.6", Port: 6000}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`tr[data-service="billing"]`))); err != nil {
		t.Fatalf("a new service did not appear live: %v", err)
	}
	t.Logf("a registration through the API appeared on the page %s later, without a reload", time.Since(start).Round(time.Millisecond))
	// The instances, and the switch with its reason.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr[data-service="identity"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#instances-table button[data-id="identity-h1-5000"]`)))
	if err != nil {
		t.Fatal(err)
	}
	row := text(ctx, t, `#instances-table tr[data-id="identity-h1-5000"]`)
	for _, want := range []string{"10.0.0.5:5001", "passing", "3 checks passed", "v2", "version=1.4.2", "ago", "in "} {
		if !strings.Contains(row, want) {
			t.Fatalf("instance row %q lacks %q", row, want)
		}
	}
	// The rows are drawn again every 5 s, for the lease fields: the
	// switch that has the keyboard's focus keeps it (it went back to the
	// page's body, and a keyboard user could not reach the switch).
	btn := `#instances-table button[data-id="identity-h1-5000"]`
	hb := `#instances-table tr[data-id="identity-h1-5000"] td:nth-child(7)`
	first := text(ctx, t, hb)
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf(`document.querySelector(%q).focus(); true`, btn))); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := chromedp.Run(pctx, chromedp.Poll[bool](fmt.Sprintf(`document.querySelector(%q).textContent !== %q`, hb, first))); err != nil {
		t.Fatalf("the rows were not drawn again within 15 s: %v", err)
	}
	if id, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.activeElement.getAttribute("data-id") || document.activeElement.tagName`)); id != "identity-h1-5000" {
		t.Fatalf("after the rows were drawn again, the focus is on %q; want the switch of identity-h1-5000", id)
	}
	answerDialogs(ctx, t)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#instances-table button[data-id="identity-h1-5000"]`))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		in, _ := d.api.Instance(context.Background(), "identity-h1-5000")
		if in != nil && !in.Enabled {
			if in.DisabledReason != "kernel upgrade" {
				t.Fatalf("disabled with reason %q", in.DisabledReason)
			}
			if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#instances-table tr.disabled[data-id="identity-h1-5000"]`))); err != nil {
				t.Fatalf("the disabled instance is not shown disabled: %v", err)
			}
			shot(ctx, t, "services")
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("the disable button did not disable the instance")
}

func TestConfigEditor(t *testing.T) {
	d := startAtlas(t)
	ctx := browser(t)
	err := chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/#token="+d.admin),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="identity"]`)),
		chromedp.Navigate(d.url+"/ui/#config"),
		chromedp.WaitVisible(chromedp.CSS(`#merged-table tr[data-key="log"]`)),
		chromedp.SetValue(chromedp.CSS("#merged-service"), "identity"),
		chromedp.Click(chromedp.CSS("#merged-form button")))
	if err != nil {
		t.Fatal(err)
	}
	// The global view has a db.pool row too: wait for identity's.
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(pctx, chromedp.Poll[bool](`(document.querySelector('#merged-table tr[data-key="db.pool"]') || {}).textContent?.includes("service=identity,realm=dev")`)); err != nil {
		t.Logf("waiting for identity's merged view: %v", err)
	}
	if row := text(ctx, t, `#merged-table tr[data-key="db.pool"]`); !strings.Contains(row, "9") || !strings.Contains(row, "service=identity,realm=dev") {
		t.Fatalf("merged db.pool row = %q; want 9 from service=identity,realm=dev", row)
	}
	// Invalid JSON is refused before anything is sent.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr[data-layer="global"]`)),
		chromedp.WaitVisible(chromedp.CSS("#editor-text")),
		chromedp.SetValue(chromedp.CSS("#editor-text"), `{"log": `),
		chromedp.Click(chromedp.CSS("#editor-save")))
	if err != nil {
		t.Fatal(err)
	}
	if msg := text(ctx, t, "#editor-error"); !strings.Contains(msg, "Not valid JSON, nothing sent") {
		t.Fatalf("invalid JSON: %q", msg)
	}
	// Someone else changes the layer meanwhile: 409, both versions shown.
	l, _ := d.api.Layer(context.Background(), sb.LayerKey{})
	if _, err := d.api.PutLayer(context.Background(), sb.LayerKey{}, json.RawMessage(`{"log":"debug"}`), &l.Index); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#editor-text"), `{"log": "warn"}`),
		chromedp.Click(chromedp.CSS("#editor-save")),
		chromedp.WaitVisible(chromedp.CSS("#editor-conflict")))
	if err != nil {
		t.Fatalf("a conflicting save did not show the conflict: %v", err)
	}
	if theirs := text(ctx, t, "#conflict-theirs"); !strings.Contains(theirs, `"debug"`) {
		t.Fatalf("theirs = %q", theirs)
	}
	shot(ctx, t, "config")
	got, _ := d.api.Layer(context.Background(), sb.LayerKey{})
	if !strings.Contains(string(got.Config), "debug") {
		t.Fatalf("the other writer's change was overwritten: %s", got.Config)
	}
	// Take theirs, edit, save: the edit round-trips.
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS("#conflict-take-theirs")),
		chromedp.SetValue(chromedp.CSS("#editor-text"), `{"log": "error", "db": {"pool": 6}}`),
		chromedp.Click(chromedp.CSS("#editor-save")),
		chromedp.WaitVisible(chromedp.CSS(`#merged-table tr[data-key="log"]`)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		got, _ = d.api.Layer(context.Background(), sb.LayerKey{})
		if string(got.Config) == `{"log":"error","db":{"pool":6}}` {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the saved layer is %s", got.Config)
}

func TestTokens(t *testing.T) {
	d := startAtlas(t)
	ctx := browser(t)
	err := chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/#token="+d.admin),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="identity"]`)),
		chromedp.Navigate(d.url+"/ui/#tokens"),
		chromedp.WaitVisible(chromedp.CSS(`#tokens-table tbody tr`)),
		chromedp.SendKeys(chromedp.CSS("#token-name"), "ci"),
		chromedp.Click(chromedp.CSS("#token-form button")),
		chromedp.WaitVisible(chromedp.CSS("#token-secret")))
	if err != nil {
		t.Fatal(err)
	}
	secret := text(ctx, t, "#token-secret")
	if !strings.Contains(secret, "shown once") || !strings.Contains(secret, "sb.") {
		t.Fatalf("secret line = %q", secret)
	}
	toks, _ := d.api.Tokens(context.Background())
	if len(toks) != 3 {
		t.Fatalf("%d tokens after create; want 3", len(toks))
	}
	var id string
	for _, tk := range toks {
		if tk.Name == "ci" {
			id = tk.ID
		}
	}
	answerDialogs(ctx, t)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(fmt.Sprintf(`tr[data-token="%s"] button`, id))),
		chromedp.WaitNotPresent(chromedp.CSS(fmt.Sprintf(`tr[data-token="%s"]`, id)))); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if toks, _ := d.api.Tokens(context.Background()); len(toks) != 2 {
		t.Fatalf("%d tokens after delete; want 2", len(toks))
	}
}

// shot saves a screenshot under ui/testoutput (or SWITCHBOARD_UI_SHOTS).
func shot(ctx context.Context, t *testing.T, name string) {
	dir := os.Getenv("SWITCHBOARD_UI_SHOTS")
	if dir == "" {
		dir = "testoutput"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	if buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		os.WriteFile(filepath.Join(dir, name+".png"), buf, 0o644)
		t.Logf("screenshot: %s", filepath.Join(dir, name+".png"))
	}
}

// TestScale: 1,000 services of 10 instances each (10,000 instances): how
// long the page takes to show them, and to apply one live change. Logged,
// not bounded: this machine is shared.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("registers 10,000 instances")
	}
	d := startAtlas(t)
	ctx := context.Background()
	errc := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := w; i < 1000; i += 8 {
				for j := range 10 {
					if _, err := d.api.Register(ctx, fmt.Sprintf("svc%04d-%d", i, j), sb.Registration{Service: fmt.Sprintf("svc%04d", i), Address: "10.1.0.1", Port: 1000 + j, TTL: sb.Duration(time.Hour)}); err != nil {
						errc <- err
						return
					}
				}
			}
			errc <- nil
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	bctx := browser(t)
	start := time.Now()
	if err := chromedp.Do(bctx, chromedp.Navigate(d.url+"/ui/#token="+d.admin), chromedp.WaitVisible(chromedp.CSS(`tr[data-service="svc0999"]`))); err != nil {
		t.Fatal(err)
	}
	loaded := time.Since(start)
	rows, _ := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("#services-table tbody tr").length`))
	if rows < 1000 {
		t.Fatalf("%d service rows; want 1,000 or more", rows)
	}
	start = time.Now()
	if _, err := d.api.SetEnabled(ctx, "svc0500-3", false, "scale test"); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.querySelector('tr[data-service="svc0500"] td:nth-child(6)').textContent === "1"`)); err != nil {
		t.Fatalf("a change did not show: %v", err)
	}
	t.Logf("1,000 services / 10,000 instances: the page showed them %s after navigating; a change showed %s after the API call",
		loaded.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestPhone: on a phone-sized screen the page fits its width (tables
// scroll inside their box) and every control is reachable by keyboard.
func TestPhone(t *testing.T) {
	d := startAtlas(t)
	ctx := browser(t)
	err := chromedp.Do(ctx, chromedp.EmulateViewport(375, 740),
		chromedp.Navigate(d.url+"/ui/#token="+d.admin),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="identity"]`)),
		chromedp.Click(chromedp.CSS(`tr[data-service="identity"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#instances-table tr[data-id="identity-h0-5000"]`)))
	if err != nil {
		t.Fatal(err)
	}
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
	if err != nil || overflow {
		t.Fatalf("the page is wider than a phone's screen (%v)", err)
	}
	// Keyboard: a service row takes focus and opens with Enter.
	focusable, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('tr[data-service="identity"]').tabIndex === 0`))
	if !focusable {
		t.Fatal("service rows are not keyboard-reachable")
	}
	shot(ctx, t, "phone")
}

// A service's instances have an address of their own (#services/NAME, with
// &realm=R out of dev), so that a link to them can be shared; the token in
// a link is taken out of it.
func TestServiceLink(t *testing.T) {
	d := startAtlas(t)
	if _, err := d.api.Register(context.Background(), "billing-h1-6000", sb.Registration{Service: "billing", Realm: "production", Address: "10.0.0.6", Port: 6000}); err != nil {
		t.Fatal(err)
	}
	ctx := browser(t)
	err := chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/#services/identity&token="+d.admin),
		chromedp.WaitVisible(chromedp.CSS(`#instances-table tr[data-id="identity-h1-5000"]`)))
	if err != nil {
		t.Fatalf("the link to identity did not show its instances: %v", err)
	}
	hash := func() string {
		t.Helper()
		h, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash`))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := hash(); h != "#services/identity" {
		t.Fatalf("address fragment %q; want #services/identity, without the token", h)
	}
	err = chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/#services/billing&realm=production"),
		chromedp.WaitVisible(chromedp.CSS(`#instances-table tr[data-id="billing-h1-6000"]`)))
	if err != nil {
		t.Fatalf("the link to billing in production did not show its instances: %v", err)
	}
	if name := text(ctx, t, "#service-name"); name != "billing in production" {
		t.Fatalf("shown: %q; want billing in production", name)
	}
	err = chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/#services&realm=dev"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="identity"]`)))
	if err != nil {
		t.Fatal(err)
	}
	clickIn(ctx, t, `tr[data-service="identity"]`)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#instances-table tr[data-id="identity-h1-5000"]`))); err != nil {
		t.Fatal(err)
	}
	if h := hash(); h != "#services/identity" {
		t.Fatalf("after choosing identity the address fragment is %q; want #services/identity", h)
	}
	// On another tab, a change to the chosen service (its instances are
	// fetched again) leaves the address alone.
	clickIn(ctx, t, `nav a[data-view="config"]`)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#config"))); err != nil {
		t.Fatal(err)
	}
	if _, err := d.api.Heartbeat(context.Background(), "identity-h0-5000", sb.Heartbeat{Status: sb.Critical, Output: "down"}); err != nil {
		t.Fatal(err)
	}
	// The event has come once identity's row counts one critical (the
	// page chooses the service again in the same turn).
	for i := 0; ; i++ {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('tr[data-service="identity"] td.critical').textContent`))
		if err != nil {
			t.Fatal(err)
		}
		if n == "1" {
			break
		}
		if i == 500 {
			t.Fatal("the change to identity did not reach the page within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h := hash(); !strings.HasPrefix(h, "#config") {
		t.Fatalf("on the config tab, after a change to identity, the address fragment is %q; want #config", h)
	}
}

// TestAServiceThatWentWhileAtlasWasDownLeavesThePage: Atlas restarted has
// no history to resume the page's event stream from, so it sends a
// snapshot of the services there are, which says nothing of one that went
// meanwhile. The page asks for the list after a reconnection and drops
// those; before, it showed a service that was gone until a reload.
func TestAServiceThatWentWhileAtlasWasDownLeavesThePage(t *testing.T) {
	d := startAtlas(t)
	if _, err := d.api.Register(context.Background(), "billing-h1-6000", sb.Registration{Service: "billing", Address: "10.0.0.6", Port: 6000, TTL: sb.Duration(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	ctx := browser(t)
	err := chromedp.Do(ctx, chromedp.Navigate(d.url+"/ui/#token="+d.admin),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-service="billing"]`)))
	if err != nil {
		t.Fatal(err)
	}
	d.atlas.Restart(t, func(h http.Handler) {
		req := httptest.NewRequest("DELETE", "/v1/instances/billing-h1-6000", nil)
		req.Header.Set("Authorization", "Bearer "+d.admin)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("deregister while no page is connected: %d %s", rec.Code, rec.Body)
		}
	})
	for i := 0; ; i++ {
		shown, err := chromedp.Run(ctx, chromedp.Evaluate[[]bool](`[document.querySelector("#live").textContent === "● live",
			!!document.querySelector('tr[data-service="billing"]'), !!document.querySelector('tr[data-service="identity"]')]`))
		if err != nil {
			t.Fatal(err)
		}
		if shown[0] && !shown[1] && shown[2] {
			return
		}
		if i == 1000 {
			t.Fatalf("20 s after Atlas restarted: live %v, billing shown %v, identity shown %v; want live, identity alone", shown[0], shown[1], shown[2])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clickIn clicks the element sel finds from the page's own script, in one
// step: a click through the protocol finds the node first, and an event
// that redraws it meanwhile leaves it clicking a node no longer there.
func clickIn(ctx context.Context, t *testing.T, sel string) {
	t.Helper()
	js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) return false; e.click(); return true; })()`, sel)
	ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
	if err != nil || !ok {
		t.Fatalf("clicking %s: %v (found: %v)", sel, err, ok)
	}
}
