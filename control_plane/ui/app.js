// meshlet dashboard: polls the control plane's read API and draws it. Plain JS, no build step.
// Every value from the API goes into the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 2000;
const state = { window: "1m", cy: null, layoutKey: "", tap: null, proxies: [] };
window.meshlet = state; // for people (and tests) poking at the page from the console

async function api(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { location.href = "/ui/"; throw new Error("signed out"); }
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

const fmtRps = (v) => (v == null ? "-" : v.toFixed(2));
const fmtPct = (v) => (v == null ? "-" : (v * 100).toFixed(2) + "%");
const fmtMs = (v) => (v == null ? "-" : v >= 1000 ? (v / 1000).toFixed(2) + "s" : v.toFixed(1) + "ms");
const fmtBytes = (v) => {
  let n = v || 0;
  for (const u of ["B", "KiB", "MiB"]) {
    if (n < 1024) return u === "B" ? `${n}B` : `${n.toFixed(1)}${u}`;
    n /= 1024;
  }
  return `${n.toFixed(1)}GiB`;
};
const rateClass = (v) => (v == null ? "" : v >= 0.99 ? "ok" : v >= 0.9 ? "warn" : "bad");

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      const cell = typeof c === "object" && c !== null ? c : { text: c };
      td.textContent = cell.text == null ? "-" : String(cell.text);
      if (cell.cls) td.className = cell.cls;
      tr.appendChild(td);
    }
    return tr;
  }));
}

// -- topology --------------------------------------------------------------------------------
function nodeOf(name, version) {
  const known = version && version !== "unknown";
  return { id: known ? `${name}:${version}` : name, label: known ? `${name}\n${version}` : name, service: name };
}

const PALETTE = ["#2f6fde", "#1f9d55", "#9b51e0", "#d98a00", "#d64545", "#0f9fb5", "#6b7385"];
function colorOf(service) {
  let h = 0;
  for (const ch of service) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return service === "unknown" ? "#8a93a6" : PALETTE[h % PALETTE.length];
}

function graphInit() {
  state.cy = cytoscape({
    container: document.getElementById("graph"),
    style: [
      { selector: "node", style: {
          "label": "data(label)", "text-wrap": "wrap", "text-valign": "center", "text-halign": "center",
          "color": "#fff", "font-size": 13, "font-weight": 600, "width": 92, "height": 52,
          "shape": "round-rectangle", "background-color": "data(color)",
          "border-width": 2, "border-color": "#1d2433" } },
      { selector: "edge", style: {
          "label": "data(label)", "curve-style": "bezier", "target-arrow-shape": "triangle",
          "width": "data(width)", "line-color": "data(color)", "target-arrow-color": "data(color)",
          "font-size": 12, "text-background-color": "#fff", "text-background-opacity": 0.9,
          "text-background-padding": 3, "text-rotation": "autorotate", "color": "#1d2433" } },
    ],
    elements: [],
  });
}

function updateGraph(edges, proxies) {
  const cy = state.cy;
  const nodes = new Map();
  for (const p of proxies) {
    const n = nodeOf(p.service, p.version);
    nodes.set(n.id, n);
  }
  const wanted = [];
  for (const e of edges) {
    const s = nodeOf(e.source.workload, e.source.version);
    const d = nodeOf(e.destination.name, e.destination.version);
    nodes.set(s.id, s);
    nodes.set(d.id, d);
    const lock = e.mtls ? " 🔒" : "";
    // opaque TCP on the edge: connections and bytes sent/received, only when there were any
    const tcp = e.tcp_connections || e.tcp_sent_bytes || e.tcp_received_bytes
      ? `tcp ${e.tcp_connections || 0} conn ${fmtBytes(e.tcp_sent_bytes)}↑ ${fmtBytes(e.tcp_received_bytes)}↓`
      : "";
    const http = e.requests > 0
      ? `${fmtRps(e.rps)} rps · ${fmtPct(e.success_rate)} · p99 ${fmtMs(e.p99_ms)}` : "";
    wanted.push({
      id: `${s.id}->${d.id}`, source: s.id, target: d.id,
      label: [http, tcp].filter(Boolean).join(" · ") + lock,
      rps: e.rps, success_rate: e.success_rate, p99_ms: e.p99_ms, mtls: e.mtls,
      color: e.success_rate == null ? "#6b7280"
        : e.success_rate >= 0.99 ? "#1f9d55" : e.success_rate >= 0.9 ? "#d98a00" : "#d64545",
      width: Math.min(8, 1.5 + Math.log2(1 + e.rps)),
    });
  }
  const key = [...nodes.keys()].sort().join("|") + "#" + wanted.map((w) => w.id).sort().join("|");
  cy.batch(() => {
    for (const n of nodes.values()) {
      const el = cy.getElementById(n.id);
      const data = { ...n, color: colorOf(n.service) };
      if (el.empty()) cy.add({ group: "nodes", data }); else el.data(data);
    }
    const ids = new Set(wanted.map((w) => w.id));
    cy.edges().forEach((el) => { if (!ids.has(el.id())) cy.remove(el); });
    cy.nodes().forEach((el) => { if (!nodes.has(el.id())) cy.remove(el); });
    for (const w of wanted) {
      const el = cy.getElementById(w.id);
      if (el.empty()) cy.add({ group: "edges", data: w }); else el.data(w);
    }
  });
  if (key !== state.layoutKey) {
    state.layoutKey = key;
    // Callers on the left, callees in columns to the right: a node's column is one more than
    // its deepest caller's (longest path; relaxation bounded by the node count, so a cycle
    // cannot loop), so no edge runs inside a column and labels stay horizontal-ish.
    const depth = new Map(cy.nodes().map((n) => [n.id(), 0]));
    for (let i = 0; i < cy.nodes().length; i++) {
      let changed = false;
      cy.edges().forEach((e) => {
        const d = depth.get(e.source().id()) + 1;
        if (d > depth.get(e.target().id()) && d < cy.nodes().length) { depth.set(e.target().id(), d); changed = true; }
      });
      if (!changed) break;
    }
    const columns = new Map();
    for (const n of cy.nodes().sort((a, b) => a.id().localeCompare(b.id()))) {
      const d = depth.get(n.id());
      if (!columns.has(d)) columns.set(d, []);
      columns.get(d).push(n);
    }
    const positions = {};
    for (const [d, ns] of columns) {
      ns.forEach((n, i) => { positions[n.id()] = { x: d * 330, y: (i - (ns.length - 1) / 2) * 150 }; });
    }
    cy.layout({ name: "preset", positions, padding: 30 }).run();
    cy.fit(undefined, 30);
  }
  document.getElementById("graph-empty").hidden = edges.length > 0;
}

// -- tables ----------------------------------------------------------------------------------
function split(r) {
  if (!r.destinations) return "-";
  return r.destinations.map((d) => `${d.host.split(".")[0]}${d.subset ? "/" + d.subset : ""} ${d.weight}%`).join(" · ");
}

function syncState(p, current) {
  if (!p.connected) return "DISCONNECTED";
  if (p.nack_error && p.nack_version === p.sent_version) return `NACK: ${p.nack_error}`;
  if (!p.sent_version) return "NOT SENT";
  return p.acked_version === current ? "SYNCED" : "STALE";
}

function expiry(t) {
  if (!t) return "-";
  const s = t - Date.now() / 1000;
  const a = Math.abs(s);
  const d = a < 120 ? `${Math.floor(a)}s` : a < 7200 ? `${Math.floor(a / 60)}m` : a < 172800 ? `${Math.floor(a / 3600)}h` : `${Math.floor(a / 86400)}d`;
  return s >= 0 ? `in ${d}` : `EXPIRED ${d} ago`;
}

async function refresh() {
  const w = state.window;
  try {
    const [edges, services, routes, proxies] = await Promise.all([
      api(`/v1/stats/edges?window=${w}`), api(`/v1/stats/services?window=${w}`),
      api(`/v1/stats/routes?window=${w}`), api("/v1/proxies"),
    ]);
    state.proxies = proxies.proxies;
    state.lastEdges = edges.edges;
    updateGraph(edges.edges, proxies.proxies);
    fillTable("services", services.services.map((s) => [
      s.name + (s.namespace ? "." + s.namespace : ""), s.version, { text: fmtRps(s.rps), cls: "num" },
      { text: fmtPct(s.success_rate), cls: "num " + rateClass(s.success_rate) },
      { text: fmtMs(s.p50_ms), cls: "num" }, { text: fmtMs(s.p99_ms), cls: "num" }]));
    fillTable("routes", routes.routes.map((r) => [
      r.name, r.route, split(r), { text: fmtRps(r.rps), cls: "num" },
      { text: fmtPct(r.success_rate), cls: "num " + rateClass(r.success_rate) },
      { text: fmtMs(r.p50_ms), cls: "num" }, { text: fmtMs(r.p99_ms), cls: "num" }]));
    fillTable("edges", edges.edges.map((e) => [
      nodeOf(e.source.workload, e.source.version).label.replace("\n", " "),
      nodeOf(e.destination.name, e.destination.version).label.replace("\n", " "),
      { text: fmtRps(e.rps), cls: "num" },
      { text: fmtPct(e.success_rate), cls: "num " + rateClass(e.success_rate) },
      { text: fmtMs(e.p99_ms), cls: "num" }, e.mtls ? "🔒 yes" : "no"]));
    fillTable("proxies", proxies.proxies.map((p) => {
      const sync = syncState(p, proxies.snapshot_version);
      return [p.node_id, `${p.service}.${p.namespace}`, p.version || "-",
              { text: sync, cls: sync === "SYNCED" ? "ok" : "warn" }, expiry(p.cert_expiry)];
    }));
    updateTapServices();
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  }
}

async function refreshAnalyze() {
  try {
    const a = await api("/v1/analyze");
    const ul = document.getElementById("analyze");
    const items = a.findings.length ? a.findings.map((f, i) => {
      const li = document.createElement("li");
      li.className = f.level;
      li.textContent = a.text[i];
      return li;
    }) : [Object.assign(document.createElement("li"), { textContent: "No issues found.", className: "ok" })];
    ul.replaceChildren(...items);
  } catch (err) { /* shown on the next try */ }
}

// -- tap -------------------------------------------------------------------------------------
function updateTapServices() {
  const sel = document.getElementById("tap-service");
  const names = [...new Set(state.proxies.map((p) => `${p.service}.${p.namespace}`))].sort();
  const cur = [...sel.options].map((o) => o.value).join("|");
  if (cur === names.join("|")) return;
  const keep = sel.value;
  sel.replaceChildren(...names.map((n) => Object.assign(document.createElement("option"), { value: n, textContent: n })));
  if (names.includes(keep)) sel.value = keep;
}

function addTapRow(ev) {
  const body = document.querySelector("#tap tbody");
  const tr = document.createElement("tr");
  const cells = [new Date(ev.ts * 1000).toLocaleTimeString(), ev.direction === "inbound" ? "in" : "out",
    ev.method, ev.authority, ev.path, ev.status, ev.flags, fmtMs(ev.latency_ms), ev.route || "-",
    ev.upstream || "-", ev.source, ev.destination, ev.mtls ? "🔒" : "no"];
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c == null ? "-" : String(c);
    tr.appendChild(td);
  }
  tr.className = ev.status >= 500 || ev.status === 0 ? "bad" : "";
  body.prepend(tr);
  while (body.children.length > 200) body.lastChild.remove();
}

async function startTap(e) {
  e.preventDefault();
  stopTap();
  const svc = document.getElementById("tap-service").value;
  if (!svc) return;
  const q = new URLSearchParams({ duration: "600", max_rate: "20" });
  const path = document.getElementById("tap-path").value.trim();
  const method = document.getElementById("tap-method").value.trim();
  if (path) q.set("path_prefix", path);
  if (method) q.set("method", method.toUpperCase());
  const ctl = new AbortController();
  state.tap = ctl;
  const status = document.getElementById("tap-status");
  document.getElementById("tap-stop").disabled = false;
  status.textContent = `tapping ${svc} ...`;
  try {
    const r = await fetch(`/v1/tap/${encodeURIComponent(svc)}?${q}`, { signal: ctl.signal, credentials: "same-origin" });
    if (!r.ok) { status.textContent = (await r.json()).error || `error ${r.status}`; return; }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line);
        if (msg.type === "event") addTapRow(msg);
        else if (msg.type === "started") status.textContent = `tapping ${msg.service} on ${msg.sidecars.length} sidecar(s)`;
        else if (msg.type === "end") status.textContent = `tap ended: ${msg.events} shown, ${msg.dropped} dropped`;
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") status.textContent = "tap failed: " + err.message;
  } finally {
    if (state.tap === ctl) { state.tap = null; document.getElementById("tap-stop").disabled = true; }
  }
}

function stopTap() {
  if (state.tap) { state.tap.abort(); state.tap = null; }
  document.getElementById("tap-stop").disabled = true;
}

// -- start -----------------------------------------------------------------------------------
graphInit();
document.getElementById("window").addEventListener("change", (e) => { state.window = e.target.value; refresh(); });
document.getElementById("tap-form").addEventListener("submit", startTap);
document.getElementById("tap-stop").addEventListener("click", () => {
  stopTap();
  document.getElementById("tap-status").textContent = "tap stopped";
});
refresh();
refreshAnalyze();
setInterval(refresh, POLL_MS);
setInterval(refreshAnalyze, 10 * POLL_MS);
