// Switchboard's dashboard: plain modules, no build step, nothing fetched
// from anywhere but this Atlas. Live updates come from the event stream
// (GET /v1/watch), read with fetch so that the token goes in a header.

const $ = (sel) => document.querySelector(sel);
const state = {
  token: sessionStorage.getItem("switchboard-token") || "",
  realm: "dev",
  admin: false,
  services: new Map(), // name -> summary
  selected: "",
  stream: null, // AbortController of the event stream
  layer: null, // the layer being edited: {realm, service, index, text}
};

// The fragment says what to show: #services, #services/NAME (a service's
// instances; links to it can be shared), #config, #tokens, each with
// &realm=R when not dev. A token in it (&token=...) is taken and removed:
// the fragment never reaches the server.
const frag = hashParams();
if (frag.get("token")) {
  state.token = frag.get("token");
  sessionStorage.setItem("switchboard-token", state.token);
  frag.delete("token");
  const view = location.hash.replace(/^#/, "").split("&")[0];
  history.replaceState(null, "", location.pathname + "#" + (view.includes("=") ? "services" : view) + (frag.size ? "&" + frag : ""));
}

// hashParams returns the fragment's parameters: what follows the view.
function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, "").replace(/^[^&=]*(&|$)/, ""));
}

// realmPattern is a realm name's rule (the SPEC's, as for services).
const realmPattern = /^[a-z][a-z0-9-]{0,62}$/;

class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { ...opts, headers });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!res.ok) {
    const e = (body && body.error) || { code: "unknown", message: res.status + " " + res.statusText };
    if (res.status === 401) showLogin(e.message);
    throw new APIError(res.status, e.code, e.message);
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function ago(iso) {
  if (!iso) return "—";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 0 ? "in " + -s + "s" : s + "s ago";
}

function until(iso) {
  if (!iso) return "—";
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  return s >= 0 ? "in " + s + "s" : s + "s";
}

function showError(err) {
  $("#error").textContent = err ? (err.message || String(err)) : "";
}

// ---- login and role -------------------------------------------------------

function showLogin(message) {
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "login";
  $("#login-error").textContent = state.token ? message || "" : "";
  // Ended and forgotten, so that logging in again starts a new one.
  if (state.stream) state.stream.abort();
  state.stream = null;
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  state.token = $("#login-token").value.trim();
  sessionStorage.setItem("switchboard-token", state.token);
  await start();
});

$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem("switchboard-token");
  state.token = "";
  location.hash = "#services";
  location.reload();
});

// The role decides what the page offers: an admin may change things; a
// reader (or an Atlas without auth? then everyone is admin) only looks.
async function detectRole() {
  try {
    await api("/v1/tokens");
    state.admin = true;
  } catch (e) {
    if (e.status === 401) throw e;
    state.admin = false;
  }
  document.body.classList.toggle("readonly", !state.admin);
  $("#who").textContent = state.admin ? (state.token ? "admin" : "no auth") : "read-only";
  $("#logout").hidden = !state.token;
}

// ---- views ----------------------------------------------------------------

function currentView() {
  const v = location.hash.replace(/^#/, "").split("&")[0].split("/")[0];
  return ["services", "config", "tokens"].includes(v) ? v : "services";
}

// linkedService is the service #services/NAME names, or "".
function linkedService() {
  const m = /^#services\/([^&]+)/.exec(location.hash);
  try {
    return m ? decodeURIComponent(m[1]) : "";
  } catch {
    return "";
  }
}

// setHash records the view (and service) in the address, for links and
// reloads, without a hashchange.
function setHash(view) {
  const realm = state.realm === "dev" ? "" : "&realm=" + state.realm;
  history.replaceState(null, "", location.pathname + "#" + view + realm);
}

async function route() {
  const view = currentView();
  // A realm the address names (a link); one it leaves out (a tab of the
  // page) keeps the realm shown.
  const realm = hashParams().get("realm") || "";
  if (realmPattern.test(realm) && realm !== state.realm) {
    state.realm = realm;
    state.selected = "";
    $("#realm").value = realm;
  }
  if (view === "services" && linkedService()) state.selected = linkedService();
  setHash(view === "services" && state.selected ? "services/" + encodeURIComponent(state.selected) : view);
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  showError(null);
  try {
    if (view === "services") await showServices();
    if (view === "config") await showConfig();
    if (view === "tokens") await showTokens();
  } catch (e) {
    if (e.status !== 401) showError(e);
  }
}

window.addEventListener("hashchange", route);

$("#realm").addEventListener("change", async () => {
  const r = $("#realm").value.trim();
  if (!realmPattern.test(r)) {
    showError(new Error("realm: must match ^[a-z][a-z0-9-]{0,62}$"));
    return;
  }
  state.realm = r;
  state.selected = "";
  setHash(currentView());
  await route();
});

// ---- services: counts live from the event stream ---------------------------

function summarize(si) {
  const sum = { name: si.service, instances: 0, passing: 0, warning: 0, critical: 0, disabled: 0 };
  for (const i of si.instances) {
    sum.instances++;
    sum[i.status]++;
    if (!i.enabled) sum.disabled++;
  }
  return sum;
}

function serviceRow(n) {
  const s = state.services.get(n);
  const open = () => selectService(n);
  return el("tr", { class: "clickable" + (n === state.selected ? " selected" : ""), "data-service": n, tabindex: "0",
    onclick: open, onkeydown: (ev) => { if (ev.key === "Enter") open(); } },
  el("td", {}, n), el("td", {}, s.instances), el("td", { class: "passing" }, s.passing),
  el("td", { class: "warning" }, s.warning), el("td", { class: "critical" }, s.critical), el("td", {}, s.disabled));
}

// renderServices draws the whole table (on load); renderService replaces
// one row (on an event), so that a realm of 1,000 services stays cheap.
function renderServices() {
  const tbody = $("#services-table tbody");
  const names = [...state.services.keys()].filter((n) => state.services.get(n).instances > 0).sort();
  tbody.replaceChildren(...names.map(serviceRow));
  $("#services-empty").hidden = names.length > 0;
}

function renderService(n) {
  const tbody = $("#services-table tbody");
  const old = tbody.querySelector(`tr[data-service="${CSS.escape(n)}"]`);
  const gone = state.services.get(n).instances === 0;
  if (old && gone) old.remove();
  else if (old) old.replaceWith(serviceRow(n));
  else if (!gone) {
    const next = [...tbody.children].find((tr) => tr.dataset.service > n);
    tbody.insertBefore(serviceRow(n), next || null);
  }
  $("#services-empty").hidden = tbody.children.length > 0;
}

async function showServices() {
  const list = await api("/v1/services?realm=" + encodeURIComponent(state.realm));
  state.services = new Map(list.services.map((s) => [s.name, s]));
  renderServices();
  if (state.selected) await selectService(state.selected);
  else $("#service-detail").hidden = true;
  watch();
}

// watch reads the realm's event stream and applies every event: no
// polling. It reconnects with Last-Event-ID when the stream breaks.
async function watch() {
  if (state.stream && state.stream.realm === state.realm) return;
  if (state.stream) state.stream.abort();
  const ctl = new AbortController();
  ctl.realm = state.realm;
  state.stream = ctl;
  let last = "";
  let wait = 1000; // before the next try: doubles to 30 s while tries fail
  while (!ctl.signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (state.token) headers["Authorization"] = "Bearer " + state.token;
      if (last) headers["Last-Event-ID"] = last;
      const res = await fetch("/v1/watch?service=*&realm=" + encodeURIComponent(ctl.realm), { headers, signal: ctl.signal });
      if (res.status === 401) {
        // The token was deleted (Atlas then ends its streams): log in again.
        showLogin("the token is no longer valid");
        return;
      }
      if (!res.ok) {
        res.body?.cancel().catch(() => {});
        throw new Error("event stream: " + res.status);
      }
      $("#live").textContent = "● live";
      wait = 1000;
      if (last) dropGone(ctl.realm, Number(last)); // a reconnection: what went meanwhile
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let data = "", id = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("data: ")) data += line.slice(6);
            else if (line.startsWith("id: ")) id = line.slice(4);
          }
          if (!data) continue;
          if (id) last = id;
          onEvent(JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    $("#live").textContent = "○ reconnecting";
    // Jittered, so that the pages of a whole team do not come back at once.
    await new Promise((r) => setTimeout(r, wait / 2 + Math.random() * wait / 2));
    wait = Math.min(wait * 2, 30000);
  }
}

// dropGone removes, after a reconnection, the services that went while the
// stream was down: a stream that could not resume sends a snapshot of the
// services there are, and none for those that are gone. Only those whose
// last event is older than the list, which the stream may have passed;
// seen is the index of the last event before the stream broke.
async function dropGone(realm, seen) {
  try {
    const list = await api("/v1/services?realm=" + encodeURIComponent(realm));
    if (realm !== state.realm) return;
    const there = new Set(list.services.map((s) => s.name));
    // An index below the last event's (a new data directory, a restored
    // store) says nothing of the services the page knew: those not
    // listed go.
    const back = list.index < seen;
    for (const [name, sum] of state.services) {
      if (!there.has(name) && sum.instances > 0 && (back || (sum.index || 0) <= list.index)) {
        onEvent({ service: name, realm, index: list.index, instances: [] });
      }
    }
  } catch {
    // the next reconnection tries again
  }
}

function onEvent(si) {
  if (si.realm !== state.realm) return;
  state.services.set(si.service, { ...summarize(si), index: si.index });
  renderService(si.service);
  if (si.service === state.selected) selectService(si.service).catch(() => {}); // the next event or refresh tries again
}

// At most this many instances are drawn; the filter finds the others.
const maxRows = 500;

// selectSeq numbers selectService's calls: an answer that comes back after
// a later call's (a click on another service, a newer event) is dropped.
let selectSeq = 0;

async function selectService(name) {
  const seq = ++selectSeq;
  const changed = state.selected !== name;
  state.selected = name;
  // Not from an event while another tab of the page is shown.
  if (currentView() === "services") setHash("services/" + encodeURIComponent(name));
  for (const tr of document.querySelectorAll("#services-table tr.selected")) tr.classList.remove("selected");
  const row = document.querySelector(`#services-table tr[data-service="${CSS.escape(name)}"]`);
  if (row) row.classList.add("selected");
  if (changed) $("#instance-filter").value = "";
  const si = await api("/v1/services/" + encodeURIComponent(name) + "?leases=true&realm=" + encodeURIComponent(state.realm));
  if (seq !== selectSeq) return;
  $("#service-detail").hidden = false;
  $("#service-name").textContent = name + " in " + state.realm;
  state.instances = si.instances;
  renderInstances();
}

function renderInstances() {
  const f = $("#instance-filter").value.trim().toLowerCase();
  const match = (i) => !f || (i.id + " " + i.address + " " + i.status + " " + (i.tags || []).join(" ")).toLowerCase().includes(f);
  const all = state.instances.filter(match);
  const shown = all.slice(0, maxRows);
  $("#instances-count").textContent = all.length > shown.length
    ? `showing ${shown.length} of ${all.length}: filter to find the others`
    : `${all.length} instance${all.length === 1 ? "" : "s"}`;
  const tbody = $("#instances-table tbody");
  // The rows are drawn again every few seconds (leaseRefresh): the
  // switch that has the keyboard's focus keeps it.
  const focused = tbody.contains(document.activeElement) ? document.activeElement.getAttribute("data-id") : null;
  tbody.replaceChildren();
  for (const i of shown) {
    const meta = Object.entries(i.meta || {}).map(([k, v]) => k + "=" + v).join(" ");
    const sw = state.admin
      ? el("button", { "data-id": i.id, onclick: () => toggle(i) }, i.enabled ? "Disable…" : "Enable")
      : el("span", {}, i.enabled ? "yes" : "no");
    tbody.append(el("tr", { class: i.enabled ? "" : "disabled", "data-id": i.id },
      el("td", {}, i.id), el("td", {}, i.address + ":" + i.port), el("td", { class: i.status }, i.status),
      el("td", { class: "output" }, i.output), el("td", {}, (i.tags || []).join(", ")), el("td", {}, meta),
      el("td", {}, ago(i.last_heartbeat)), el("td", {}, until(i.expires_at)),
      el("td", {}, sw, i.enabled ? "" : " " + (i.disabled_reason || ""))));
  }
  if (focused) tbody.querySelector(`button[data-id="${CSS.escape(focused)}"]`)?.focus();
}

async function toggle(inst) {
  try {
    if (inst.enabled) {
      const reason = prompt("Why disable " + inst.id + "? (whoever finds it disabled will read this)");
      if (!reason) return;
      await api("/v1/instances/" + encodeURIComponent(inst.id) + "/enabled", { method: "PUT", body: JSON.stringify({ enabled: false, reason }) });
    } else {
      await api("/v1/instances/" + encodeURIComponent(inst.id) + "/enabled", { method: "PUT", body: JSON.stringify({ enabled: true }) });
    }
  } catch (e) {
    showError(e);
  }
}

$("#instance-filter").addEventListener("input", () => { if (state.instances) renderInstances(); });

// ---- config: layers, merged view with sources, an editor that checks ------

function layerName(l) {
  if (!l.realm && !l.service) return "global";
  if (!l.service) return "realm=" + l.realm;
  if (!l.realm) return "service=" + l.service;
  return "service=" + l.service + ",realm=" + l.realm;
}

function parseLayerName(s) {
  const l = { realm: "", service: "" };
  if (s === "global") return l;
  for (const part of s.split(",")) {
    const [k, v] = part.split("=");
    if ((k === "realm" || k === "service") && /^[a-z][a-z0-9-]{0,62}$/.test(v || "")) l[k] = v;
    else throw new Error("layer: must be global, realm=R, service=S or service=S,realm=R");
  }
  return l;
}

function layerQuery(l) {
  const q = new URLSearchParams();
  if (l.realm) q.set("realm", l.realm);
  if (l.service) q.set("service", l.service);
  return q;
}

async function showConfig() {
  const list = await api("/v1/config/layers");
  const tbody = $("#layers-table tbody");
  tbody.replaceChildren();
  for (const l of list.layers) {
    const open = () => openLayer(l).catch(showError);
    tbody.append(el("tr", { class: "clickable", "data-layer": layerName(l), tabindex: "0", onclick: open, onkeydown: (ev) => { if (ev.key === "Enter") open(); } },
      el("td", {}, layerName(l)), el("td", {}, l.index), el("td", {}, l.size)));
  }
  await showMerged();
}

// mergedSeq numbers showMerged's calls: an answer that comes back after a
// newer call's (the page's first load, overtaken by a submit) is dropped.
let mergedSeq = 0;

async function showMerged() {
  const seq = ++mergedSeq;
  const q = new URLSearchParams({ realm: state.realm });
  const svc = $("#merged-service").value.trim();
  if (svc) q.set("service", svc);
  const m = await api("/v1/config?" + q);
  if (seq !== mergedSeq) return;
  const tbody = $("#merged-table tbody");
  tbody.replaceChildren();
  for (const key of Object.keys(m.sources).sort()) {
    let v = m.config;
    for (const part of key.split(".")) v = v == null ? v : v[part];
    tbody.append(el("tr", { "data-key": key }, el("td", {}, key), el("td", {}, JSON.stringify(v)), el("td", {}, m.sources[key])));
  }
}

$("#merged-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try { await showMerged(); } catch (e) { showError(e); }
});

$("#new-layer").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await openLayer(parseLayerName($("#new-layer-name").value.trim()));
  } catch (e) {
    showError(e);
  }
});

async function openLayer(l) {
  let index = 0, text = "{}";
  try {
    const got = await api("/v1/config/layer?" + layerQuery(l));
    index = got.index;
    text = JSON.stringify(got.config, null, 2);
  } catch (e) {
    if (e.status !== 404) throw e;
  }
  state.layer = { realm: l.realm || "", service: l.service || "", index, text };
  $("#editor").hidden = false;
  $("#editor-conflict").hidden = true;
  $("#editor-layer").textContent = layerName(state.layer);
  $("#editor-index").textContent = index ? "index " + index : "new layer";
  $("#editor-text").value = text;
  $("#editor-error").textContent = "";
}

// save refuses text that is not one JSON object before sending anything,
// and sends with cas so that a concurrent change is not overwritten.
async function save(force) {
  if (state.saving) return; // a second click would send the same cas again, and read its own 409 as someone else's
  state.saving = true;
  try {
    await saveLayer(force);
  } finally {
    state.saving = false;
  }
}

async function saveLayer(force) {
  $("#editor-error").textContent = "";
  const text = $("#editor-text").value;
  let obj;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    $("#editor-error").textContent = "Not valid JSON, nothing sent: " + e.message;
    return;
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    $("#editor-error").textContent = "A layer must be a JSON object, nothing sent.";
    return;
  }
  const q = layerQuery(state.layer);
  if (!force) q.set("cas", String(state.layer.index));
  try {
    const saved = await api("/v1/config/layer?" + q, { method: "PUT", body: JSON.stringify(obj) });
    state.layer.index = saved.index;
    $("#editor-index").textContent = "saved at index " + saved.index;
    $("#editor-error").textContent = "";
    $("#editor-conflict").hidden = true;
    await showConfig();
  } catch (e) {
    if (e.status !== 409) {
      $("#editor-error").textContent = e.message;
      return;
    }
    let theirs = null;
    try {
      theirs = await api("/v1/config/layer?" + layerQuery(state.layer));
    } catch (e2) {
      if (e2.status !== 404) {
        // Not known to be deleted: "take theirs" would put {} in its place.
        $("#editor-error").textContent = "Someone else changed this layer, and reading their version failed: " + e2.message;
        return;
      }
    }
    $("#conflict-theirs").textContent = theirs ? JSON.stringify(theirs.config, null, 2) : "(deleted)";
    $("#conflict-yours").textContent = JSON.stringify(obj, null, 2);
    $("#editor-conflict").hidden = false;
    state.layer.theirs = theirs;
  }
}

$("#editor-save").addEventListener("click", () => save(false));
$("#conflict-keep-mine").addEventListener("click", () => save(true));
$("#conflict-take-theirs").addEventListener("click", () => {
  const t = state.layer.theirs;
  state.layer.index = t ? t.index : 0;
  $("#editor-text").value = t ? JSON.stringify(t.config, null, 2) : "{}";
  $("#editor-conflict").hidden = true;
});
$("#editor-close").addEventListener("click", () => { $("#editor").hidden = true; });

// ---- tokens (admin) ---------------------------------------------------------

async function showTokens() {
  const list = await api("/v1/tokens");
  const tbody = $("#tokens-table tbody");
  tbody.replaceChildren();
  for (const t of list.tokens) {
    tbody.append(el("tr", { "data-token": t.id },
      el("td", {}, t.id), el("td", {}, t.name), el("td", {}, t.role), el("td", {}, (t.services || []).join(", ")),
      el("td", {}, (t.realms || []).join(", ")), el("td", {}, t.created_at),
      el("td", {}, el("button", { onclick: () => deleteToken(t) }, "Delete"))));
  }
}

async function deleteToken(t) {
  if (!confirm("Delete token " + t.name + " (" + t.id + ")? Whoever uses it loses access at once.")) return;
  try {
    await api("/v1/tokens/" + encodeURIComponent(t.id), { method: "DELETE" });
    await showTokens();
  } catch (e) {
    $("#token-error").textContent = e.message;
  }
}

$("#token-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);
  const req = { name: $("#token-name").value.trim(), role: $("#token-role").value };
  if (req.role === "service") {
    req.services = list($("#token-services").value);
    req.realms = list($("#token-realms").value);
  }
  try {
    const t = await api("/v1/tokens", { method: "POST", body: JSON.stringify(req) });
    $("#token-secret").hidden = false;
    $("#token-secret").textContent = "Secret of " + t.name + " (shown once, store it now): " + t.secret;
    $("#token-error").textContent = "";
    await showTokens();
  } catch (e) {
    $("#token-error").textContent = e.message;
  }
});

// ---- start -----------------------------------------------------------------

async function start() {
  $("#realm").value = state.realm;
  try {
    await detectRole();
  } catch (e) {
    return; // the login form is showing
  }
  await route();
}

// Heartbeats that change nothing send no event, so the selected service's
// lease fields (last heartbeat, lease expires) are fetched again every few
// seconds while the service is shown (browsers slow timers of hidden tabs).
const leaseRefresh = 5000;
setInterval(() => {
  if ($("#services").hidden || $("#service-detail").hidden || !state.selected) return;
  selectService(state.selected).catch(() => {});
}, leaseRefresh);

start();
