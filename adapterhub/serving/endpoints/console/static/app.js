// The adapterhub console: a small static app (no build step, no dependency) over the server's own JSON
// API (/ui/api/...) and its OpenAI API (/v1/...). Every value from the server is put into the page as text
// (textContent / SVG text), never as HTML. Pages are hash routes, so a link to any page can be shared.

const KEY_STORE = "adapterhub.key";
const state = { key: sessionStorage.getItem(KEY_STORE), session: null, timer: null, page: 0 };
const SVG_NS = "http://www.w3.org/2000/svg";

// ------------------------------------------------------------------ DOM helpers
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function main(...children) {
  const m = document.getElementById("main");
  m.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return m;
}

function message(text, kind = "error", id = null) {
  return h("div", { class: `message ${kind}`, id, role: kind === "error" ? "alert" : "status" }, text);
}

// ------------------------------------------------------------------ formatting
const fmtBytes = (n) => (n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB`
  : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
const fmtTime = (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC" : "—");
const fmtMs = (s) => (s === null || s === undefined ? "—" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);
const fmtNum = (v) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v));
const refOf = (name, version) => `${name}@${version}`;
const link = (href, text) => h("a", { href }, text);
const versionLink = (name, version) => link(`#/v/${encodeURIComponent(name)}/${version}`, refOf(name, version));

// ------------------------------------------------------------------ talking to the server
class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra = {}) {
  const out = { "Content-Type": "application/json", ...extra };
  if (state.key) out.Authorization = `Bearer ${state.key}`;
  return out;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: headers(opts.headers) });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", body: JSON.stringify(body) });
}

// ------------------------------------------------------------------ sign in and routing
async function boot() {
  try {
    state.session = await api("/ui/api/session");
  } catch (e) {
    if (e.status === 401) return signIn(state.key ? e.message : null);
    return main(message(`The server did not answer: ${e.message}`));
  }
  const s = state.session;
  const who = document.getElementById("who");
  who.replaceChildren();
  if (s.signed_in_as || state.key) {
    append(who, [`signed in as ${!s.signed_in_as || s.signed_in_as === "-" ? "the server's key" : s.signed_in_as}`,
      s.admin ? " (admin)" : "",
      h("button", { class: "secondary", id: "signout", onclick: signOut }, "Sign out")]);
  } else append(who, [`base: ${s.base}`]);
  route();
}

function signIn(error) {
  const input = h("input", { type: "password", id: "key", placeholder: "API key", autocomplete: "off" });
  const form = h("form", { class: "card signin", id: "signin", onsubmit: (ev) => {
    ev.preventDefault();
    state.key = input.value.trim();
    sessionStorage.setItem(KEY_STORE, state.key);
    boot();
  } }, h("h1", {}, "Sign in"), h("p", { class: "muted" },
    "This server needs a key. It is kept in this tab only (sessionStorage) and sent as a Bearer token."),
  input, h("button", { type: "submit" }, "Sign in"), error ? message(error) : null);
  main(form);
  input.focus();
}

function signOut() {
  sessionStorage.removeItem(KEY_STORE);
  state.key = null;
  state.session = null;
  document.getElementById("who").replaceChildren();
  signIn(null);
}

const PAGES = { "": pageAdapters, v: pageVersion, rollouts: pageRollouts, live: pageLive, playground: pagePlayground };

async function route() {
  if (!state.session) return;
  clearInterval(state.timer);
  state.timer = null;
  const page = ++state.page; // a page still loading when the user moves on must not draw over the next one
  const parts = location.hash.replace(/^#\/?/, "").split("?")[0].split("/").filter(Boolean).map(decodeURIComponent);
  const fn = PAGES[parts[0] || ""] || pageAdapters;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.nav === ({ "": "adapters", v: "adapters" }[parts[0] || ""] || parts[0]));
  }
  try {
    await fn(parts.slice(1), () => page === state.page);
  } catch (e) {
    if (page !== state.page) return;
    if (e.status === 401) return signIn(e.message);
    main(h("h1", {}, e.status === 404 ? "Not found" : "Error"), message(e.message));
  }
}

// ------------------------------------------------------------------ Adapters
async function pageAdapters(_, current) {
  const data = await api("/ui/api/adapters");
  if (!current()) return;
  const rows = [];
  for (const a of data.adapters) {
    for (const v of a.versions) {
      const splits = a.aliases.filter((x) => x.split && x.split[v.version]); // every version a split serves
      const plain = v.aliases.filter((al) => !a.aliases.some((x) => x.alias === al && x.split));
      rows.push({ ...v, name: a.name, aliases: [...plain, ...splits.map((x) => x.alias)], splits });
    }
  }
  const sort = { key: "created_at", desc: true };
  const filter = h("input", { type: "text", id: "filter", placeholder: "Filter by name, alias, base or metric" });
  const servedOnly = h("input", { type: "checkbox", id: "served-only" });
  const body = h("tbody", { id: "versions" });
  const columns = [["name", "Adapter"], ["version", "Version", "num"], ["aliases", "Aliases"], ["base", "Base"],
    ["rank", "Rank", "num"], ["size", "Size", "num"], ["created_at", "Created"], ["metrics", "Metrics"]];
  const head = h("tr", {}, columns.map(([key, label, cls]) => h("th", {
    class: `${cls || ""} ${["aliases", "metrics"].includes(key) ? "" : "sortable"}`, "data-key": key,
    onclick: ["aliases", "metrics"].includes(key) ? null : () => {
      sort.desc = sort.key === key ? !sort.desc : false;
      sort.key = key;
      draw();
    },
  }, label)));

  function draw() {
    const q = filter.value.trim().toLowerCase();
    const shown = rows.filter((r) => (!servedOnly.checked || r.served_here) && (!q || [r.name, r.base, ...r.aliases,
      ...Object.keys(r.metrics || {})].some((x) => String(x || "").toLowerCase().includes(q))));
    shown.sort((a, b) => {
      const x = a[sort.key], y = b[sort.key];
      const c = typeof x === "number" && typeof y === "number" ? x - y : String(x ?? "").localeCompare(String(y ?? ""));
      return sort.desc ? -c : c;
    });
    for (const th of head.children) th.classList.toggle("sorted", th.dataset.key === sort.key);
    body.replaceChildren(...shown.map((r) => h("tr", { "data-ref": refOf(r.name, r.version) },
      h("td", {}, link(`#/rollouts/${encodeURIComponent(r.name)}`, r.name)),
      h("td", { class: "num" }, versionLink(r.name, r.version)),
      h("td", {}, r.aliases.map((al) => {
        const sp = r.splits.find((s) => s.alias === al);
        if (!sp) return h("span", { class: "badge" }, `@${al}`);
        const total = Object.values(sp.split).reduce((x, y) => x + y, 0);
        return h("span", { class: "badge split" }, `@${al} ${Math.round((100 * sp.split[r.version]) / total)}% (split)`);
      })),
      h("td", {}, r.base || "—", r.served_here ? "" : h("span", { class: "muted" }, " (not this server's base)")),
      h("td", { class: "num" }, r.rank ?? "—"),
      h("td", { class: "num" }, fmtBytes(r.size)),
      h("td", {}, fmtTime(r.created_at)),
      h("td", {}, Object.entries(r.metrics || {}).filter(([, v]) => typeof v === "number").slice(0, 4)
        .map(([k, v]) => h("span", { class: "badge gate" }, `${k} ${fmtNum(v)}`))))));
    document.getElementById("count").textContent =
      `${shown.length} of ${rows.length} versions · ${data.adapters.length} adapters`;
  }

  filter.addEventListener("input", draw);
  servedOnly.addEventListener("change", draw);
  main(h("h1", {}, "Adapters"),
    h("div", { class: "toolbar" }, filter, h("label", {}, servedOnly, " servable on this server"),
      h("span", { class: "muted", id: "count" })),
    data.adapters.length ? h("table", {}, h("thead", {}, head), body)
      : h("p", { class: "muted", id: "empty" }, `No adapters yet. Base model: ${data.base}.`));
  if (data.adapters.length) draw();
}

// ------------------------------------------------------------------ A version
async function pageVersion([name, version], current) {
  const v = await api(`/ui/api/adapters/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`);
  if (!current()) return;
  const m = v.manifest;
  const files = Object.entries(m.files).map(([path, f]) => h("tr", {}, h("td", {}, path),
    h("td", { class: "num" }, fmtBytes(f.size)), h("td", {}, h("code", {}, f.sha256.slice(0, 16) + "…"))));
  const metrics = Object.entries(v.metrics || {});
  main(
    h("h1", {}, v.ref, " ", v.aliases.map((a) => h("span", { class: "badge" }, `@${a}`))),
    h("p", { class: "muted" }, `${m.kind} · base ${m.base_model ? m.base_model.id : "—"} · `,
      `created ${fmtTime(m.created_at)} by ${m.created_by || "—"} · `, h("code", {}, m.content_hash.slice(0, 23) + "…"),
      " · ", link(`#/rollouts/${encodeURIComponent(name)}`, "rollouts"),
      v.served_here ? [" · ", link(`#/playground?m=${encodeURIComponent(v.ref)}`, "try it")] : ""),
    h("div", { class: "card" }, h("h2", {}, "Lineage"), lineageGraph(v.lineage)),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "Loss curve"), v.loss_curve && v.loss_curve.length
        ? lossCurve(v.loss_curve) : h("p", { class: "muted", id: "no-curve" }, "No loss curve stored with this version.")),
      h("div", { class: "card" }, h("h2", {}, "Evaluation"), metrics.length
        ? h("table", { id: "metrics" }, metrics.map(([k, val]) => h("tr", {}, h("th", {}, k),
          h("td", { class: "num" }, typeof val === "object" ? JSON.stringify(val) : fmtNum(val)))))
        : h("p", { class: "muted" }, "No metrics recorded."),
      v.samples ? [h("h2", {}, "Sample answers (end of training)"),
        h("table", { id: "samples" }, Object.entries(v.samples).map(([q, a]) => h("tr", {}, h("th", {}, q),
          h("td", {}, a))))] : null)),
    h("div", { class: "grid2" },
      h("div", { class: "card" }, h("h2", {}, "Training"), v.training && Object.keys(v.training).length
        ? h("table", {}, Object.entries(v.training).map(([k, val]) => h("tr", {}, h("th", {}, k),
          h("td", {}, typeof val === "object" ? JSON.stringify(val) : String(val)))))
        : h("p", { class: "muted" }, "Registered without a training record."),
      v.config ? [h("h2", {}, "Training config"), h("pre", { id: "config" }, JSON.stringify(v.config, null, 2))] : null),
      h("div", { class: "card" }, h("h2", {}, "Files"), h("table", {}, files),
        m.lora ? [h("h2", {}, "LoRA"), h("pre", {}, JSON.stringify(m.lora, null, 2))] : null)),
    h("div", { class: "card" }, h("h2", {}, "Model card"), h("pre", { id: "card" }, v.card)),
  );
}

function lineageGraph(lineage) {
  const W = 190, H = 36, GAP = 60;
  const chain = lineage.nodes.filter((n) => !n.id.includes(":") || n.id.startsWith("base:"));
  const side = lineage.nodes.filter((n) => !chain.includes(n));
  const pos = {};
  chain.forEach((n, i) => { pos[n.id] = { x: 10 + i * (W + GAP), y: 10 }; });
  const thisNode = chain.find((n) => n.kind === "this") || chain[chain.length - 1];
  side.forEach((n, i) => { pos[n.id] = { x: (pos[thisNode.id]?.x || 10) + i * (W + 20), y: 10 + H + 50 }; });
  const width = Math.max(...Object.values(pos).map((p) => p.x)) + W + 20;
  const height = side.length ? 10 + 2 * H + 60 : H + 20;
  const g = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, id: "lineage", role: "img",
    "aria-label": lineage.nodes.map((n) => n.label).join(" → ") },
  svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7385" }))));
  for (const e of lineage.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const sameRow = a.y === b.y;
    const d = sameRow ? `M ${a.x + W} ${a.y + H / 2} L ${b.x} ${b.y + H / 2}`
      : `M ${a.x + W / 2} ${a.y} L ${b.x + W / 2} ${b.y + H}`;
    g.append(svg("path", { class: "edge", d }),
      svg("text", { x: sameRow ? a.x + W + 4 : a.x + W / 2 + 6, y: sameRow ? a.y + H / 2 - 6 : a.y - 18 }, e.label));
  }
  for (const n of lineage.nodes) {
    const p = pos[n.id];
    const label = n.label.length > 28 ? `…${n.label.slice(-27)}` : n.label;
    const box = svg("g", { "data-node": n.id }, svg("title", {}, n.label),
      svg("rect", { class: `node ${n.kind}`, x: p.x, y: p.y, width: W, height: H, rx: 5 }),
      svg("text", { x: p.x + 8, y: p.y + 22 }, label));
    const [nm, ver] = n.id.split("@");
    g.append(/^\d+$/.test(ver || "") && !n.id.includes(":")
      ? (() => { const a = svg("a", { href: `#/v/${encodeURIComponent(nm)}/${ver}` }); a.append(box); return a; })() : box);
  }
  return g;
}

function lossCurve(points) {
  const W = 520, H = 220, L = 48, B = 28, T = 10, R = 10;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0 || 1)) * (H - T - B);
  return svg("svg", { width: W, height: H, id: "loss", role: "img", "aria-label": `loss from ${ys[0]} to ${ys[ys.length - 1]}` },
    svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    svg("text", { x: 2, y: T + 8 }, y1.toFixed(3)), svg("text", { x: 2, y: H - B }, y0.toFixed(3)),
    svg("text", { x: L, y: H - 8 }, `step ${x0}`), svg("text", { x: W - R - 60, y: H - 8 }, `step ${x1}`),
    svg("polyline", { class: "curve", points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ") }));
}

// ------------------------------------------------------------------ Rollouts
async function pageRollouts([name], current) {
  if (!name) {
    const data = await api("/ui/api/adapters");
    if (!current()) return;
    return main(h("h1", {}, "Rollouts"), data.adapters.length ? h("table", { id: "rollout-names" },
      h("tr", {}, h("th", {}, "Adapter"), h("th", {}, "Aliases"), h("th", { class: "num" }, "Versions")),
      data.adapters.map((a) => h("tr", {}, h("td", {}, link(`#/rollouts/${encodeURIComponent(a.name)}`, a.name)),
        h("td", {}, a.aliases.map((x) => h("span", { class: x.split ? "badge split" : "badge" },
          `@${x.alias} → ${x.split ? Object.entries(x.split).map(([v, w]) => `${v}:${w}`).join(", ") : x.version}`))),
        h("td", { class: "num" }, a.versions.length))))
      : h("p", { class: "muted" }, "No adapters yet."));
  }
  const data = await api(`/ui/api/adapters/${encodeURIComponent(name)}/history`);
  if (!current()) return;
  const admin = state.session.admin;
  const result = h("div", { id: "action-result" });
  const reload = () => route();

  async function act(path, body, done) {
    result.replaceChildren(h("p", { class: "muted" }, "Working…"));
    try {
      const r = await post(`/ui/api/adapters/${encodeURIComponent(name)}/aliases/${encodeURIComponent(path[0])}/${path[1]}`, body);
      await reload();
      document.getElementById("action-result")?.replaceChildren(message(done(r), "ok"));
    } catch (e) {
      result.replaceChildren(message(e.message));
    }
  }

  function controls(alias) {
    if (!admin) return null;
    const pick = h("select", { "data-alias": alias, class: "promote-version" },
      [...data.versions].reverse().map((v) => h("option", { value: v }, `${name}@${v}`)));
    const force = h("input", { type: "checkbox", class: "force" });
    const split = h("input", { type: "text", class: "split-text", placeholder: "3=90,4=10" });
    return h("div", { class: "toolbar" },
      pick, h("button", { class: "promote", onclick: () => act([alias, "promote"], { version: Number(pick.value), force: force.checked },
        (r) => `${name}@${alias} → ${name}@${r.version}${r.previous ? ` (was ${r.previous})` : ""}` +
          (r.forced_past.length ? ` · forced past: ${r.forced_past.join("; ")}` : "")) }, "Promote"),
      h("label", {}, force, " force past the gate"),
      h("button", { class: "secondary rollback", onclick: () => act([alias, "rollback"], {},
        (r) => `${name}@${alias} rolled back (${r.event.note})`) }, "Roll back"),
      split, h("button", { class: "secondary split", onclick: () => act([alias, "split"], { split: split.value, force: force.checked },
        (r) => `${name}@${alias} split ${Object.entries(r.split).map(([v, w]) => `${v}=${w}`).join(",")}`) }, "Split"));
  }

  const newAlias = h("input", { type: "text", id: "new-alias", placeholder: "new alias, e.g. staging" });
  const sections = data.aliases.map((a) => h("div", { class: "card alias", "data-alias": a.alias },
    h("h2", {}, `@${a.alias} → `, a.split ? Object.entries(a.split).map(([v, w]) => `${name}@${v} (${w})`).join(", ")
      : versionLink(name, a.version)),
    h("p", {}, a.gate.length ? ["gate: ", a.gate.map((g) => h("span", { class: "badge gate" }, g))]
      : h("span", { class: "muted" }, "no gate")),
    a.split ? splitBars(a.split, a.served) : null,
    controls(a.alias),
    h("h2", {}, "History"), timeline(data.events.filter((e) => e.alias === a.alias))));
  main(h("h1", {}, `Rollouts · ${name}`), result, sections.length ? sections : h("p", { class: "muted" }, "No aliases yet."),
    admin ? h("div", { class: "card" }, h("h2", {}, "Point a new alias"), h("div", { class: "toolbar" }, newAlias,
      h("select", { id: "new-alias-version" }, [...data.versions].reverse().map((v) => h("option", { value: v }, `${name}@${v}`))),
      h("button", { id: "new-alias-go", onclick: () => act([newAlias.value.trim(), "promote"],
        { version: Number(document.getElementById("new-alias-version").value), force: false },
        (r) => `${name}@${newAlias.value.trim()} → ${name}@${r.version}`) }, "Create"))) : null);
}

function timeline(events) {
  if (!events.length) return h("p", { class: "muted" }, "No moves recorded.");
  return h("ul", { class: "timeline" }, [...events].reverse().map((e) => {
    const forced = (e.note || "").startsWith("forced");
    const target = e.version === null ? "removed" : e.split
      ? `split ${Object.entries(e.split).map(([v, w]) => `${v}=${w}`).join(",")}` : `→ version ${e.version}`;
    return h("li", { class: forced ? "forced" : (e.note || "").startsWith("rollback") ? "rollback" : "" },
      h("strong", {}, target), ` · ${e.when} · by ${e.by}`, e.note ? h("div", { class: forced ? "error" : "muted" }, e.note) : null);
  }));
}

function splitBars(configured, served) {
  const total = Object.values(configured).reduce((a, b) => a + b, 0);
  const servedTotal = Object.values(served || {}).reduce((a, b) => a + b, 0);
  const rows = Object.keys(configured);
  const W = 420, BAR = 12;
  const g = svg("svg", { width: W + 160, height: rows.length * 40 + 10, class: "split-bars" });
  rows.forEach((v, i) => {
    const y = 5 + i * 40;
    const c = configured[v] / total, s = servedTotal ? (served[v] || 0) / servedTotal : 0;
    g.append(svg("text", { x: 0, y: y + 12 }, `v${v}`),
      svg("rect", { class: "bar-configured", x: 40, y, width: Math.max(1, c * W), height: BAR }),
      svg("text", { x: 46 + c * W, y: y + 11 }, `configured ${(c * 100).toFixed(0)}%`),
      svg("rect", { class: "bar-served", x: 40, y: y + BAR + 3, width: Math.max(1, s * W), height: BAR }),
      svg("text", { x: 46 + s * W, y: y + 2 * BAR + 1 }, servedTotal ? `served ${(s * 100).toFixed(0)}% (${served[v] || 0})` : "served: no traffic yet"));
  });
  return h("div", {}, h("p", { class: "muted" }, "Configured weights vs requests this server served since it started:"), g);
}

// ------------------------------------------------------------------ Live
async function pageLive(_, current) {
  const windowSel = h("select", { id: "window" }, [[60, "last minute"], [300, "last 5 minutes"], [900, "last 15 minutes"]]
    .map(([v, t]) => h("option", { value: v, selected: v === 300 }, t)));
  const body = h("tbody", { id: "live-rows" });
  const loaded = h("div", { id: "loaded" });
  const stamp = h("span", { class: "muted", id: "updated" });
  main(h("h1", {}, "Live"), h("div", { class: "toolbar" }, windowSel, stamp),
    h("table", { id: "live" }, h("thead", {}, h("tr", {}, ["Version", "Requests", "Errors", "Cancelled", "Tokens",
      "TTFT p50", "TTFT p99", "Inter-token p50", "Inter-token p99", "Wait for slot p99", "Loads", "Requests over time"]
      .map((t, i) => h("th", { class: i && i < 11 ? "num" : "" }, t)))), body),
    h("h2", {}, "Loaded now"), loaded);

  async function refresh() {
    const w = Number(windowSel.value);
    let d;
    try {
      d = await api(`/ui/api/live?window=${w}&bucket=${w / 30}`);
    } catch (e) {
      stamp.textContent = `update failed: ${e.message}`;
      return;
    }
    if (!current()) return;
    body.replaceChildren(...(d.versions.length ? d.versions.map((r) => h("tr", { "data-version": `${r.name}@${r.version}` },
      h("td", {}, r.version === "base" ? `${r.name} (base)` : versionLink(r.name, r.version)),
      h("td", { class: "num requests" }, r.requests), h("td", { class: `num ${r.errors ? "error" : ""}` }, r.errors),
      h("td", { class: "num" }, r.cancelled), h("td", { class: "num" }, r.completion_tokens),
      h("td", { class: "num" }, fmtMs(r.ttft_p50)), h("td", { class: "num" }, fmtMs(r.ttft_p99)),
      h("td", { class: "num" }, fmtMs(r.itl_p50)), h("td", { class: "num" }, fmtMs(r.itl_p99)),
      h("td", { class: "num" }, fmtMs(r.wait_p99)),
      h("td", { class: "num" }, r.loads ? `${r.loads} (${fmtMs(r.load_p50)})` : "0"),
      h("td", {}, spark(r.series))))
      : [h("tr", {}, h("td", { colspan: 12, class: "muted" }, "No requests in this window."))]));
    loaded.replaceChildren();
    append(loaded, [d.loaded.length ? h("table", {}, h("tr", {}, h("th", {}, "Version"), h("th", {}, "Pinned"),
      h("th", { class: "num" }, "In flight")), d.loaded.map((l) => h("tr", {}, h("td", {}, l.id),
      h("td", {}, l.pinned ? "yes" : "no"), h("td", { class: "num" }, l.in_flight))))
      : h("p", { class: "muted" }, "No adapter loaded."),
    d.waiting.length ? h("p", {}, "Waiting for a load: ", d.waiting.map((x) => `${x.name}@${x.version} (${x.requests})`).join(", ")) : null,
    h("p", { class: "muted" }, `engine queue: ${d.queue_depth}`)]);
    stamp.textContent = `updated ${new Date().toLocaleTimeString()} · refreshes every 2 s`;
  }

  windowSel.addEventListener("change", refresh);
  await refresh();
  if (current()) state.timer = setInterval(refresh, 2000);
}

function spark(series) {
  const W = 150, H = 24, max = Math.max(1, ...series);
  return svg("svg", { width: W, height: H, class: "sparkline" }, svg("polyline", { class: "spark",
    points: series.map((v, i) => `${((i / Math.max(1, series.length - 1)) * W).toFixed(1)},${(H - 2 - (v / max) * (H - 4)).toFixed(1)}`).join(" ") }));
}

// ------------------------------------------------------------------ Playground
async function pagePlayground(_, current) {
  const models = (await api("/v1/models")).data.map((m) => m.id);
  if (!current()) return;
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("m");
  const defaults = [wanted, ...models.filter((m) => m !== state.session.base && /@\d+$/.test(m)), state.session.base, ...models]
    .filter((m) => m && models.includes(m));
  const count = h("select", { id: "columns" }, [2, 3, 4].map((n) => h("option", { value: n }, `${n} side by side`)));
  const system = h("textarea", { id: "system", rows: 2, placeholder: "System prompt (optional)" });
  const user = h("textarea", { id: "user", rows: 3, placeholder: "Your message" });
  const param = (id, label, attrs) => {
    const input = h("input", { type: "number", id, ...attrs });
    return [h("label", {}, label, input), input];
  };
  const [tL, temperature] = param("temperature", "temperature", { value: 0, min: 0, max: 2, step: 0.1 });
  const [pL, topP] = param("top_p", "top_p", { value: 1, min: 0, max: 1, step: 0.05 });
  const [mL, maxTokens] = param("max_tokens", "max_tokens", { value: 64, min: 1, step: 1 });
  const [sL, seed] = param("seed", "seed", { placeholder: "none" });
  const tools = h("textarea", { id: "tools", rows: 3, placeholder: "Tools (optional): a JSON array of OpenAI tool definitions" });
  const schema = h("textarea", { id: "schema", rows: 3, placeholder: "JSON schema (optional): answers must match it" });
  const status = h("div", { id: "play-status" });
  const snippet = h("pre", { id: "snippet", hidden: true });
  const grid = h("div", { id: "answers" });
  let columns = [];

  function drawColumns() {
    const n = Number(count.value);
    const old = columns;
    columns = Array.from({ length: n }, (_, i) => old[i] || { model: defaults[i % Math.max(1, defaults.length)] || models[0], history: [] });
    grid.className = `columns n${n}`;
    grid.replaceChildren(...columns.map((c, i) => {
      const sel = h("select", { class: "model", "data-col": i, onchange: () => { c.model = sel.value; c.history = []; drawColumns(); } },
        models.map((m) => h("option", { value: m, selected: m === c.model }, m)));
      c.out = h("div", { class: "answer", "data-col": i, "data-chunks": 0 });
      for (const t of c.history) c.out.append(h("div", { class: `turn ${t.role}` }, t.role === "user" ? `› ${t.content}` : t.content || ""));
      return h("div", { class: "card" }, sel, c.out);
    }));
  }

  function request(c) {
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value.trim() });
    messages.push(...c.history.map(({ role, content, tool_calls }) => (tool_calls ? { role, content, tool_calls } : { role, content })));
    const body = { model: c.model, messages, temperature: Number(temperature.value), top_p: Number(topP.value),
      max_tokens: Number(maxTokens.value) };
    if (seed.value !== "") body.seed = Number(seed.value);
    if (tools.value.trim()) body.tools = JSON.parse(tools.value);
    if (schema.value.trim()) body.response_format = { type: "json_schema", json_schema: { name: "answer", schema: JSON.parse(schema.value), strict: true } };
    return body;
  }

  async function send() {
    const text = user.value.trim();
    if (!text) return;
    try {
      for (const c of columns) request(c); // refuse bad tools / schema JSON before anything is sent
    } catch (e) {
      return status.replaceChildren(message(`Tools or schema is not valid JSON: ${e.message}`));
    }
    status.replaceChildren();
    for (const c of columns) c.history.push({ role: "user", content: text });
    drawColumns();
    user.value = "";
    sendBtn.disabled = true;
    await Promise.all(columns.map((c) => streamInto(c)));
    sendBtn.disabled = false;
  }

  async function streamInto(c) {
    const body = { ...request(c), stream: true, stream_options: { include_usage: true } };
    const turn = h("div", { class: "turn assistant" });
    const meta = h("div", { class: "meta" });
    c.out.append(turn, meta);
    let content = "", chunks = 0, finish = null, usage = null;
    const calls = [];
    const t0 = performance.now();
    let ttft = null;
    try {
      const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
            const obj = JSON.parse(line.slice(6));
            if (obj.error) throw new Error(obj.error.message);
            if (obj.usage) usage = obj.usage;
            for (const ch of obj.choices || []) {
              const d = ch.delta || {};
              if (d.content) { content += d.content; if (ttft === null) ttft = performance.now() - t0; }
              for (const tc of d.tool_calls || []) {
                const slot = calls[tc.index] || (calls[tc.index] = { id: tc.id, type: "function", function: { name: "", arguments: "" } });
                if (tc.function?.name) slot.function.name += tc.function.name;
                if (tc.function?.arguments) slot.function.arguments += tc.function.arguments;
              }
              if (ch.finish_reason) finish = ch.finish_reason;
            }
            chunks += 1;
            c.out.dataset.chunks = chunks;
            turn.textContent = content + calls.map((t) => `\n[tool call] ${t.function.name}(${t.function.arguments})`).join("");
          }
        }
      }
      c.history.push(calls.length ? { role: "assistant", content: content || null, tool_calls: calls } : { role: "assistant", content });
      meta.textContent = `finish: ${finish}${finish === "length" ? " (cut at max_tokens)" : ""}` +
        (usage ? ` · ${usage.completion_tokens} tokens` : "") + (ttft !== null ? ` · first token ${Math.round(ttft)} ms` : "") +
        ` · ${Math.round(performance.now() - t0)} ms`;
      c.out.dataset.done = "1";
    } catch (e) {
      c.history.pop();
      turn.replaceChildren(message(e.message));
      c.out.dataset.done = "1";
    }
  }

  function copy(kind) {
    const bodies = columns.map((c) => {
      const b = request(c);
      if (user.value.trim()) b.messages.push({ role: "user", content: user.value.trim() });
      return b;
    });
    const base = location.origin;
    const auth = state.key ? "$ADAPTERHUB_API_KEY" : "none";
    const text = kind === "curl"
      ? bodies.map((b) => `curl ${base}/v1/chat/completions \\\n  -H 'Content-Type: application/json' \\\n` +
          (state.key ? "  -H \"Authorization: Bearer $ADAPTERHUB_API_KEY\" \\\n" : "") +
          `  -d '${JSON.stringify(b).replace(/'/g, "'\\''")}'`).join("\n\n")
      : (state.key ? "import os\n" : "") + "from openai import OpenAI\n\n" +
        `client = OpenAI(base_url="${base}/v1", api_key=${state.key ? 'os.environ["ADAPTERHUB_API_KEY"]' : `"${auth}"`})\n` +
        bodies.map((b) => {
          const { model, messages, ...rest } = b;
          const kw = Object.entries(rest).map(([k, v]) => `    ${k}=${pyValue(v)},`).join("\n");
          return `print(client.chat.completions.create(\n    model=${JSON.stringify(model)},\n    messages=${pyValue(messages)},\n${kw}\n).choices[0].message)`;
        }).join("\n");
    snippet.hidden = false;
    snippet.textContent = text;
    navigator.clipboard?.writeText(text).then(() => status.replaceChildren(message("Copied.", "ok")), () => {});
  }

  const sendBtn = h("button", { id: "send", onclick: send }, "Send to all");
  count.addEventListener("change", drawColumns);
  main(h("h1", {}, "Playground"),
    h("div", { class: "card" }, h("div", { class: "toolbar" }, count,
      h("button", { class: "secondary", id: "clear", onclick: () => { for (const c of columns) c.history = []; drawColumns(); } }, "New conversation")),
    system, user, h("div", { class: "params" }, tL, pL, mL, sL), h("details", {}, h("summary", {}, "Tools and JSON schema"), tools, schema),
    h("div", { class: "toolbar" }, sendBtn, h("button", { class: "secondary", id: "copy-curl", onclick: () => copy("curl") }, "Copy as curl"),
      h("button", { class: "secondary", id: "copy-python", onclick: () => copy("python") }, "Copy as Python")), status, snippet),
    grid);
  drawColumns();
  user.addEventListener("keydown", (ev) => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) send(); });
}

function pyValue(v) {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (Array.isArray(v)) return `[${v.map(pyValue).join(", ")}]`;
  if (typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${pyValue(x)}`).join(", ")}}`;
  return JSON.stringify(v);
}

window.addEventListener("hashchange", route);
boot();
