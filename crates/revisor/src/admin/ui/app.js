// revisor's dashboard. Reads the admin API it is served by (the login cookie authenticates), follows
// /ui/stream (Server-Sent Events, one `tick` a second) for live rates and Rollouts, and draws its own
// charts on canvases: no library, no build step.
"use strict";

const SERVING = "/apis/serving.knative.dev/v1";
const ROLLOUTS = "/apis/revisor.dev/v1alpha1";
const KEEP = 300; // points kept per series: five minutes at one a second
const COLORS = { stable: "#2f6fdf", canary: "#e07a1f", other: "#8a93a6" };

const state = {
  services: [], revisions: [], events: [], rollouts: [],
  selected: null,        // "namespace/name" of the service shown
  series: {},            // "namespace/revision" -> [{t, rps, err, p50, p99}]
  weights: {},           // "namespace/rollout" -> [{t, w}]
  rates: {},             // "namespace/revision" -> the last tick's numbers
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};
const key = (o) => `${o.metadata.namespace}/${o.metadata.name}`;
const age = (ts) => {
  if (!ts) return "";
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
};
const cond = (o, type) => ((o.status || {}).conditions || []).find((c) => c.type === type);
const ready = (o) => (cond(o, "Ready") || {}).status === "True";
const fmt = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));

async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

let refreshing = false;

async function refresh() {
  if (refreshing) return; // the last one is still on its way
  refreshing = true;
  try {
    // Events of the selected service's namespace only.
    const ns = state.selected ? state.selected.split("/")[0] : null;
    const [svcs, revs, evs] = await Promise.all([
      getJSON(`${SERVING}/services`), getJSON(`${SERVING}/revisions`),
      getJSON(ns ? `/api/v1/namespaces/${encodeURIComponent(ns)}/events` : "/api/v1/events"),
    ]);
    state.services = svcs.items || [];
    state.revisions = revs.items || [];
    state.events = evs.items || [];
    if (!state.selected && state.services.length) state.selected = key(state.services[0]);
    render();
  } catch (e) {
    $("conn").textContent = `reading the API failed: ${e.message}`;
    $("conn").className = "badge off";
  } finally {
    refreshing = false;
  }
}

function follow() {
  const src = new EventSource("/ui/stream");
  src.addEventListener("open", () => { $("conn").textContent = "live"; $("conn").className = "badge ok"; });
  src.addEventListener("error", () => { $("conn").textContent = "reconnecting"; $("conn").className = "badge off"; });
  src.addEventListener("tick", (m) => {
    const tick = JSON.parse(m.data);
    for (const r of tick.revisions) {
      const k = `${r.namespace}/${r.revision}`;
      state.rates[k] = r;
      const s = (state.series[k] = state.series[k] || []);
      s.push({ t: tick.time, rps: r.requestsPerSecond, err: r.errorRate, p50: r.p50, p99: r.p99 });
      if (s.length > KEEP) s.shift();
    }
    state.rollouts = tick.rollouts || [];
    for (const ro of state.rollouts) {
      const w = (state.weights[key(ro)] = state.weights[key(ro)] || []);
      w.push({ t: tick.time, w: (ro.status || {}).canaryWeight || 0 });
      if (w.length > KEEP) w.shift();
    }
    render();
  });
}

function serviceOf(rev) {
  return ((rev.metadata.labels || {})["serving.knative.dev/service"]) || "";
}

function render() {
  renderServices();
  const svc = state.services.find((s) => key(s) === state.selected);
  $("empty").hidden = !!svc;
  $("svc").hidden = !svc;
  if (!svc) return;
  const ns = svc.metadata.namespace;
  const revs = state.revisions.filter((r) => r.metadata.namespace === ns && serviceOf(r) === svc.metadata.name);
  const ro = state.rollouts.find((r) => r.metadata.namespace === ns && r.spec.serviceRef.name === svc.metadata.name);
  $("svc-name").textContent = svc.metadata.name;
  $("svc-url").textContent = (svc.status || {}).url || "";
  const url = (svc.status || {}).url || "";
  $("svc-url").href = /^https?:\/\//.test(url) ? url : "#";
  renderRollout(svc, ro, revs);
  renderCharts(svc, ro, revs);
  renderRevisions(svc, revs);
  renderTimeline(svc, ro, revs);
}

function renderServices() {
  const body = $("svc-table").tBodies[0];
  body.replaceChildren(...state.services.map((s) => {
    const traffic = ((s.status || {}).traffic || []).filter((t) => t.percent)
      .map((t) => `${t.revisionName} ${t.percent}%`).join(", ");
    const tr = el("tr", { class: key(s) === state.selected ? "selected" : "" },
      el("td", { text: s.metadata.name }),
      el("td", {}, el("span", { class: `badge ${ready(s) ? "ok" : "bad"}`, text: ready(s) ? "Ready" : "Not ready" })),
      el("td", { text: traffic }),
      el("td", { text: age(s.metadata.creationTimestamp) }));
    tr.onclick = () => { state.selected = key(s); render(); };
    return tr;
  }));
}

/// Which role a revision plays: the Rollout's stable or canary, else other.
function role(ro, name) {
  const st = (ro && ro.status) || {};
  if (name === st.canaryRevision) return "canary";
  if (name === st.stableRevision) return "stable";
  return "other";
}

function steps(ro) {
  const s = ro.spec.strategy || {};
  if (s.blueGreen) return [{ text: "preview" }, { text: "switch all at once" }];
  const list = (s.canary && s.canary.steps) || [];
  return list.map((step) => {
    const [kind, v] = Object.entries(step)[0] || ["?", ""];
    if (kind === "setWeight") return { text: `weight ${v}%` };
    if (kind === "pause") return { text: v && v.duration ? `pause ${v.duration}` : "pause (until promoted)" };
    if (kind === "analysis") return { text: `analysis ×${(v && v.count) || 1}` };
    if (kind === "setMirrorRoute") return { text: `mirror ${v.percentage}%` };
    if (kind === "setHeaderRoute") return { text: "header route" };
    return { text: kind };
  });
}

function renderRollout(svc, ro, revs) {
  $("rollout").hidden = !ro;
  if (!ro) return;
  const st = ro.status || {};
  const phase = st.phase || "New";
  $("ro-name").textContent = ro.metadata.name;
  $("ro-phase").textContent = phase;
  $("ro-phase").className = `badge ${phase}`;
  const strategy = (ro.spec.strategy || {}).blueGreen ? "blue-green" : "canary";
  $("ro-summary").replaceChildren(
    el("span", { text: `${strategy} · stable ` }), el("b", { text: st.stableRevision || "–" }),
    el("span", { text: " · canary " }), el("b", { text: st.canaryRevision || "–" }));
  const active = phase === "Progressing" || phase === "Paused";
  $("ro-steps").replaceChildren(...steps(ro).map((s, i) => el("li", {
    class: active && i === st.currentStep ? "current" : (active && i < st.currentStep) || phase === "Succeeded" ? "done" : "",
    text: `${i + 1}. ${s.text}`,
  })));
  const actual = ((svc.status || {}).traffic || []).filter((t) => t.revisionName === st.canaryRevision)
    .reduce((n, t) => n + (t.percent || 0), 0);
  const set = st.canaryWeight || 0;
  $("ro-weights").replaceChildren(
    el("div", { text: `canary weight: set ${set}% · actual ${actual}%` + (st.mirrorPercentage ? ` · mirroring ${st.mirrorPercentage}%` : "") }),
    el("div", { class: "bar" }, el("span", { style: `width:${actual}%` })));
  $("ro-message").textContent = st.message || "";
  renderVerdicts(ro);
  renderWarm(ro, revs);
  // Rebuilt only when the revisions change, so that a choice stays while the page refreshes.
  const undo = $("undo-to");
  const names = revs.map((r) => r.metadata.name).join(",");
  if (undo.dataset.names !== names) {
    const current = undo.value;
    undo.dataset.names = names;
    undo.replaceChildren(...revs.map((r) => el("option", { value: r.metadata.name, text: r.metadata.name })));
    undo.value = current || st.previousStableRevision || st.stableRevision || "";
  }
}

function renderVerdicts(ro) {
  const st = ro.status || {};
  const canary = st.canaryRevision || st.rejectedRevision || st.stableRevision;
  const latest = new Map();
  for (const m of st.measurements || []) if (m.revision === canary) latest.set(m.metric, m);
  const range = (t) => [t && t.min !== undefined ? `≥ ${t.min}` : "", t && t.max !== undefined ? `≤ ${t.max}` : ""].filter(Boolean).join(", ");
  $("verdicts").tBodies[0].replaceChildren(...[...latest.values()].map((m) => {
    const evidence = [`${m.samples} requests`];
    if (m.baseline !== undefined) evidence.push(`stable ${fmt(m.baseline, 2)}`);
    if (m.comparison) evidence.push(m.comparison);
    if (m.verdict === "Inconclusive") evidence.push("too little evidence yet: the step waits");
    return el("tr", {},
      el("td", { text: m.metric }), el("td", { text: fmt(m.value, 2) }), el("td", { text: range(m.threshold) }),
      el("td", { class: `verdict-${m.verdict}`, text: m.verdict }), el("td", { class: "wrap", text: evidence.join(" · ") }),
      el("td", { text: age(m.time) + " ago" }));
  }));
  if (!latest.size) $("verdicts").tBodies[0].replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "muted", text: "no measurement of this revision yet" })));
  const r = state.rates[`${ro.metadata.namespace}/${st.canaryRevision}`];
  $("agreement").textContent = r && r.compared ? `prediction agreement on mirrored requests: ${fmt(100 * r.agreed / r.compared)}% of ${r.compared}` : "";
}

function renderWarm(ro, revs) {
  const st = ro.status || {};
  const readyOf = (name) => {
    const rev = revs.find((r) => r.metadata.name === name);
    return rev ? ((rev.status || {}).actualReplicas || 0) : 0;
  };
  if ((st.phase === "Progressing" || st.phase === "Paused") && st.stableRevision) {
    $("ro-warm").textContent = `Abort sends every request back to ${st.stableRevision}, serving now (${readyOf(st.stableRevision)} ready).`;
    return;
  }
  const prev = st.previousStableRevision;
  if (!prev) { $("ro-warm").textContent = "no previous revision to go back to"; return; }
  const replicas = readyOf(prev);
  const windowS = (ro.spec.strategy || {}).blueGreen
    ? (((ro.spec.strategy.blueGreen || {}).scaleDownDelaySeconds) ?? 30)
    : parseDuration(ro.spec.rollbackWindow || "10m");
  const left = st.promotedAt ? windowS - (Date.now() - Date.parse(st.promotedAt)) / 1000 : null;
  $("ro-warm").replaceChildren(
    el("div", { text: `previous: ${prev} — ${replicas > 0 ? `warm (${replicas} ready)` : "scaled to zero (undo waits for a cold start)"}` }),
    el("div", { class: "muted", text: left !== null && left > 0 ? `rollback window: ${Math.ceil(left)} s left` : "rollback window: over" }));
}

function parseDuration(text) {
  let s = 0;
  for (const [, n, u] of String(text).matchAll(/([\d.]+)(ms|s|m|h)/g)) s += Number(n) * { ms: 0.001, s: 1, m: 60, h: 3600 }[u];
  return s;
}

function renderRevisions(svc, revs) {
  const traffic = (svc.status || {}).traffic || [];
  const colds = coldStarts(svc);
  $("rev-table").tBodies[0].replaceChildren(...revs.map((r) => {
    const name = r.metadata.name;
    const share = traffic.filter((t) => t.revisionName === name).reduce((n, t) => n + (t.percent || 0), 0);
    const tags = traffic.filter((t) => t.revisionName === name && t.tag).map((t) => t.tag).join(", ");
    const st = r.status || {};
    return el("tr", {},
      el("td", { text: name }), el("td", { text: `${share}%` }), el("td", { text: tags }),
      el("td", { text: `${st.desiredReplicas ?? "–"}/${st.actualReplicas ?? "–"}` }),
      el("td", {}, el("span", { class: `badge ${ready(r) ? "ok" : "bad"}`, text: ready(r) ? "Ready" : "Not ready" })),
      el("td", { text: colds[name] ? `${colds[name]} ms` : "" }),
      el("td", { text: age(r.metadata.creationTimestamp) }));
  }));
}

/// The last cold start of each revision, from its ColdStart events ("... after N ms ...").
function coldStarts(svc) {
  const out = {};
  for (const e of state.events) {
    if (e.reason !== "ColdStart" || e.metadata.namespace !== svc.metadata.namespace) continue;
    const m = /after (\d+) ms/.exec(e.message || "");
    if (m) out[e.involvedObject.name] = m[1];
  }
  return out;
}

function renderTimeline(svc, ro, revs) {
  const names = new Set([svc.metadata.name, ...revs.map((r) => r.metadata.name)]);
  if (ro) names.add(ro.metadata.name);
  const mine = state.events.filter((e) => e.metadata.namespace === svc.metadata.namespace && names.has(e.involvedObject.name))
    .sort((a, b) => Date.parse(b.lastTimestamp) - Date.parse(a.lastTimestamp)).slice(0, 100);
  $("timeline").replaceChildren(...mine.map((e) => el("li", { class: e.type },
    el("span", { class: "muted", text: `${new Date(e.lastTimestamp).toLocaleTimeString()} ` }),
    el("b", { text: `${e.reason} ` }),
    el("span", { class: "muted", text: `${e.involvedObject.kind.toLowerCase()}/${e.involvedObject.name}: ` }),
    el("span", { text: e.message }))));
}

/// The analysis thresholds that belong on a chart: error rate from a success-rate minimum, latency
/// from a latency maximum.
function thresholds(ro) {
  const out = { err: [], lat: [] };
  for (const m of ((ro && ro.spec.analysis) || {}).metrics || []) {
    const t = m.thresholdRange || {};
    if (m.name === "success-rate" && t.min !== undefined) out.err.push({ v: 100 - t.min, label: `success-rate ≥ ${t.min}` });
    if (m.name === "error-rate" && t.max !== undefined) out.err.push({ v: t.max, label: `error-rate ≤ ${t.max}` });
    if (m.name === "latency" && t.max !== undefined) out.lat.push({ v: t.max, label: `p${m.percentile || 99} ≤ ${t.max} ms` });
  }
  return out;
}

function renderCharts(svc, ro, revs) {
  const lines = revs.map((r) => ({ name: r.metadata.name, role: role(ro, r.metadata.name), data: state.series[key(r)] || [] }))
    .filter((l) => l.data.length);
  const th = thresholds(ro);
  const weights = ro ? state.weights[key(ro)] || [] : [];
  chart($("c-rps"), lines.map((l) => ({ ...l, y: "rps", width: 2 })), [], weights);
  chart($("c-err"), lines.map((l) => ({ ...l, y: "err", width: 2 })), th.err, []);
  chart($("c-lat"), lines.flatMap((l) => [{ ...l, y: "p50", width: 1 }, { ...l, y: "p99", width: 2.5 }]), th.lat, []);
  $("legend").replaceChildren(...lines.map((l) => el("span", {},
    el("i", { style: `background:${COLORS[l.role]}` }), `${l.name}${l.role === "other" ? "" : ` (${l.role})`}`)));
}

/// A line chart over the last five minutes: `series` ({data, y, role, width}), dashed horizontal
/// `limits` ({v, label}), and the canary's weight as a stepped line against a 0-100% right axis.
function chart(canvas, series, limits, weights) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  const pad = { l: 42, r: weights.length ? 34 : 8, t: 8, b: 18 };
  // The last five minutes, or less while there is less to show (at least one).
  let first = Date.now();
  for (const s of series) if (s.data.length) first = Math.min(first, s.data[0].t);
  if (weights.length) first = Math.min(first, weights[0].t);
  const now = Date.now(), span = Math.min(KEEP * 1000, Math.max(60000, now - first)), t0 = now - span;
  const x = (t) => pad.l + ((t - t0) / (now - t0)) * (w - pad.l - pad.r);
  let max = 0;
  for (const s of series) for (const p of s.data) if (p[s.y] != null) max = Math.max(max, p[s.y]);
  for (const l of limits) max = Math.max(max, l.v * 1.1);
  max = max > 0 ? max * 1.1 : 1;
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  g.strokeStyle = "#dde1e8"; g.fillStyle = "#687085"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max / 4) * i;
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(v >= 100 ? v.toFixed(0) : v.toFixed(1), 2, y(v) + 4);
  }
  for (let i = 0; i <= 4; i++) {
    const ago = Math.round((span * (4 - i)) / 4 / 1000);
    g.fillText(ago ? (ago >= 120 ? `-${Math.round(ago / 60)}m` : `-${ago}s`) : "now", x(t0 + (span * i) / 4) - 10, h - 4);
  }
  if (weights.length) {
    const wy = (v) => h - pad.b - (v / 100) * (h - pad.t - pad.b);
    g.strokeStyle = COLORS.canary; g.setLineDash([4, 3]); g.lineWidth = 1.5; g.beginPath();
    weights.forEach((p, i) => {
      const px = x(p.t);
      if (i === 0) g.moveTo(px, wy(p.w)); else { g.lineTo(px, wy(weights[i - 1].w)); g.lineTo(px, wy(p.w)); }
    });
    g.stroke(); g.setLineDash([]);
    g.fillStyle = COLORS.canary;
    for (const v of [0, 50, 100]) g.fillText(`${v}%`, w - pad.r + 4, wy(v) + 4);
  }
  for (const l of limits) {
    g.strokeStyle = "#d64545"; g.setLineDash([6, 4]); g.lineWidth = 1;
    g.beginPath(); g.moveTo(pad.l, y(l.v)); g.lineTo(w - pad.r, y(l.v)); g.stroke(); g.setLineDash([]);
    g.fillStyle = "#d64545"; g.fillText(l.label, pad.l + 4, y(l.v) - 3);
  }
  for (const s of series) {
    g.strokeStyle = COLORS[s.role]; g.lineWidth = s.width; g.beginPath();
    let started = false;
    for (const p of s.data) {
      const v = p[s.y];
      if (v == null || p.t < t0) { started = false; continue; }
      if (!started) { g.moveTo(x(p.t), y(v)); started = true; } else g.lineTo(x(p.t), y(v));
    }
    g.stroke();
  }
}

async function act(action) {
  const svc = state.services.find((s) => key(s) === state.selected);
  const ro = svc && state.rollouts.find((r) => r.metadata.namespace === svc.metadata.namespace && r.spec.serviceRef.name === svc.metadata.name);
  if (!ro) return;
  const body = action === "undo" && $("undo-to").value ? { toRevision: $("undo-to").value } : {};
  const out = $("action-result");
  try {
    const r = await fetch(`${ROLLOUTS}/namespaces/${ro.metadata.namespace}/rollouts/${ro.metadata.name}/${action}`, {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(answer.message || `${r.status}`);
    out.className = "muted";
    out.textContent = `${action}: asked; the controller takes it at its next step`;
  } catch (e) {
    out.className = "error";
    out.textContent = `${action} failed: ${e.message}`;
  }
}

for (const b of document.querySelectorAll("#actions button")) b.onclick = () => act(b.dataset.action);
$("where").textContent = location.host;
refresh();
setInterval(refresh, 2000);
follow();
