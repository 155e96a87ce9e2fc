// CitySense console: one page, no dependencies, every request to the gateway's own origin.
// Data comes from /api/v1 (the same API machines use); alert changes are pushed over
// server-sent events (/api/v1/alerts/stream). Text from the site, rules and operators is
// always inserted as text, never as HTML.
"use strict";

const I18N = {
  zh: {
    "nav.situation": "态势", "nav.alerts": "告警", "nav.devices": "设备", "logout": "退出",
    "live.on": "实时", "live.off": "未连接", "mute": "静音", "unmute": "取消静音", "lang": "English",
    "login.title": "城市运行感知网 · 值班台", "login.name": "账号", "login.password": "密码", "login.submit": "登录",
    "login.failed": "登录失败", "open.alerts": "未结束告警", "devices.online": "在线设备",
    "devices.offline": "离线设备", "devices.low_battery": "低电量", "areas": "景区", "segments": "路段",
    "assets": "管网设施", "name": "名称", "occupancy": "在园人数", "capacity": "最大承载量", "ratio": "占比",
    "forecast": "30 分钟预测", "grade": "等级", "updated": "更新", "speed": "速度 km/h", "tpi": "交通指数",
    "state": "状态", "values": "读数", "normal": "正常", "no.data": "无数据", "unplaced": "未标注位置",
    "severity": "级别", "subject": "对象", "category": "类别", "district": "区县", "started": "开始",
    "value": "数值", "ack": "确认", "assigned": "指派", "actions": "操作", "all": "全部",
    "acked": "已确认", "unacked": "未确认", "note": "备注", "acknowledge": "确认", "assign.to": "指派给",
    "assign": "指派", "comment": "评论", "send": "发送", "resolved.recent": "最近结束的告警",
    "no.open": "没有未结束的告警", "timeline": "时间线", "rule": "规则", "standard": "依据",
    "advice": "处置建议", "diversion": "分流与绕行", "divert_to": "可分流至", "avoid": "避开道路",
    "alternatives": "替代路线", "walk": "步行", "drive": "驾车", "duty": "网格与值班",
    "on_duty": "值班", "supervisor": "带班", "head": "单位负责人", "nobody": "无人值班", "chart": "近 4 小时数值与阈值", "no.chart": "此规则没有可绘制的序列",
    "device": "设备", "kind": "类型", "presence": "在线", "last.seen": "最后上报", "battery": "电量",
    "signal": "信号", "completeness": "完整率", "recent.readings": "最近读数", "time": "时间",
    "reading": "内容", "online": "在线", "offline": "离线", "unknown": "未知", "back": "返回",
    "crowd": "客流", "traffic": "交通", "pipe": "管网", "gateway": "网关",
    "raised": "触发", "escalated": "升级", "renotified": "再次通知", "escalated_to": "无人确认，升级至", "resolved": "结束",
    "acknowledged": "确认", "retrospective": "事后补记", "commented": "评论", "firing": "进行中",
    "error": "出错了", "ago": "前", "by": "操作人", "grades.at": "阈值",
    "water_main": "供水干管", "drainage_well": "排水井", "utility_tunnel": "综合管廊",
    "manhole": "井盖", "pump_station": "泵站",
    "occupancy.unknown": "未知", "inflow": "入园", "count": "人工清点", "count.set": "录入",
    "g1": "畅通", "g2": "基本畅通", "g3": "轻度拥堵", "g4": "中度拥堵", "g5": "严重拥堵",
    "device_cat": "设备",
  },
  en: {
    "nav.situation": "Situation", "nav.alerts": "Alerts", "nav.devices": "Devices", "logout": "Log out",
    "live.on": "live", "live.off": "not connected", "mute": "Mute", "unmute": "Unmute", "lang": "中文",
    "login.title": "City operations console", "login.name": "Account", "login.password": "Password",
    "login.submit": "Log in", "login.failed": "Login failed", "open.alerts": "Open alerts",
    "devices.online": "Devices online", "devices.offline": "Devices offline", "devices.low_battery": "Low battery",
    "areas": "Scenic areas", "segments": "Road segments", "assets": "Pipe assets", "name": "Name",
    "occupancy": "Visitors inside", "capacity": "Capacity", "ratio": "Share", "forecast": "In 30 min",
    "grade": "Grade", "updated": "Updated", "speed": "Speed km/h", "tpi": "TPI", "state": "State",
    "values": "Values", "normal": "normal", "no.data": "no data", "unplaced": "not on the map",
    "severity": "Severity", "subject": "Subject", "category": "Category", "district": "District",
    "started": "Started", "value": "Value", "ack": "Acknowledged", "assigned": "Assigned",
    "actions": "Actions", "all": "all", "acked": "acknowledged", "unacked": "not acknowledged",
    "note": "note", "acknowledge": "Acknowledge", "assign.to": "account", "assign": "Assign",
    "comment": "Comment", "send": "Send", "resolved.recent": "Recently resolved", "no.open": "No open alerts",
    "timeline": "Timeline", "rule": "Rule", "standard": "Standard", "advice": "What to do",
    "diversion": "Diversion", "divert_to": "Send visitors to", "avoid": "Keep off", "alternatives": "Alternative roads",
    "walk": "walk", "drive": "drive", "duty": "Grid and duty", "on_duty": "On duty",
    "supervisor": "Supervisor", "head": "Head of unit", "nobody": "nobody on duty",
    "chart": "Values over the last 4 hours, with thresholds", "no.chart": "This rule has no series to chart",
    "device": "Device", "kind": "Kind", "presence": "Presence", "last.seen": "Last seen",
    "battery": "Battery", "signal": "Signal", "completeness": "Completeness",
    "recent.readings": "Recent readings", "time": "Time", "reading": "Reading", "online": "online",
    "offline": "offline", "unknown": "unknown", "back": "Back", "crowd": "crowd", "traffic": "traffic",
    "pipe": "pipe", "gateway": "gateway", "raised": "raised", "escalated": "escalated",
    "renotified": "re-notified", "escalated_to": "unacknowledged, escalated to", "resolved": "resolved", "acknowledged": "acknowledged",
    "retrospective": "retrospective", "commented": "commented", "firing": "firing", "error": "Error",
    "ago": "ago", "by": "by", "grades.at": "threshold",
    "water_main": "water main", "drainage_well": "drainage well", "utility_tunnel": "utility tunnel",
    "manhole": "manhole", "pump_station": "pump station",
    "occupancy.unknown": "unknown", "inflow": "in", "count": "head count", "count.set": "Set",
    "g1": "free", "g2": "light", "g3": "slow", "g4": "congested", "g5": "jammed",
    "device_cat": "device",
  },
};

// Severities that stand out and sound when they are raised or escalated to.
const URGENT = new Set(["orange", "red", "alarm", "critical"]);

const state = {
  me: null, csrf: null, lang: localStorage.getItem("cs.lang") || "zh",
  muted: localStorage.getItem("cs.muted") === "1", situation: null,
  urgent: new Set(), stream: null, audio: null, refresh: null,
};

const t = (key) => (I18N[state.lang][key] ?? I18N.en[key] ?? key);
const $ = (sel) => document.querySelector(sel);

// Builds an element: attributes (on* are listeners) and children (strings become text).
function el(tag, attrs, ...children) {
  const svg = ["svg", "line", "circle", "rect", "text", "polyline", "g", "title"].includes(tag);
  const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(path, opts = {}) {
  const headers = { Accept: "application/json" };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  if (opts.method && opts.method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const r = await fetch(path, {
    method: opts.method || "GET", headers, credentials: "same-origin",
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  if (r.status === 401 && !opts.login) { showLogin(); throw new Error(body?.error || "401"); }
  if (!r.ok) throw new Error(body?.error || `HTTP ${r.status}`);
  return body;
}

const pad = (n) => String(n).padStart(2, "0");
function clock(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function age(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const v = s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
  return state.lang === "zh" ? `${v}${t("ago")}` : `${v} ${t("ago")}`;
}
const pct = (x) => (x === undefined || x === null ? "—" : `${Math.round(x * 100)}%`);
const num = (x, d = 1) => (typeof x === "number" ? x.toFixed(d) : "—");
const badge = (severity, label) => el("span", { class: `badge sev-${severity}` }, label);
function districtName(code) {
  const d = state.situation?.districts.find((x) => x.code === code);
  return d ? d.name : code;
}
function canOperate() { return state.me && (state.me.role === "operator" || state.me.role === "admin"); }

// ---- shell ------------------------------------------------------------------------------

function translate() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = t(e.dataset.t);
  $("#lang").textContent = t("lang");
  $("#login-lang").textContent = t("lang");
  $("#mute").textContent = state.muted ? t("unmute") : t("mute");
  $("#live").textContent = t(state.stream?.readyState === 1 ? "live.on" : "live.off");
}

function showLogin(message) {
  state.me = null;
  if (state.stream) { state.stream.close(); state.stream = null; }
  $("#bar").hidden = true;
  $("#view").replaceChildren();
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#login-name").focus();
}

async function logIn(ev) {
  ev.preventDefault();
  const f = ev.target;
  try {
    const who = await api("/api/v1/login", {
      method: "POST", login: true, body: { name: f.name.value, password: f.password.value },
    });
    state.csrf = who.csrf;
    f.password.value = "";
    await start();
  } catch (e) {
    $("#login-error").textContent = `${t("login.failed")}: ${e.message}`;
  }
}

async function start() {
  const who = await api("/api/v1/whoami");
  state.me = who;
  if (who.csrf) state.csrf = who.csrf;
  $("#login").hidden = true;
  $("#bar").hidden = false;
  $("#me").textContent = `${who.name} (${who.role})`;
  try { state.situation = await api("/api/v1/situation"); } catch { /* shown by the page */ }
  if (state.situation) $("#site").textContent = `CitySense · ${state.situation.site.name}`;
  connect();
  route();
}

function connect() {
  if (state.stream) state.stream.close();
  const s = new EventSource("/api/v1/alerts/stream");
  state.stream = s;
  s.onopen = () => { $("#live").className = "live on"; translate(); };
  s.onerror = () => { $("#live").className = "live"; translate(); };
  s.addEventListener("alert", (m) => {
    const ev = JSON.parse(m.data);
    const a = ev.alert;
    if ((ev.kind === "raised" || ev.kind === "escalated") && URGENT.has(a.severity)) {
      state.urgent.add(a.id);
      beep();
    }
    clearTimeout(state.refresh);
    state.refresh = setTimeout(() => refresh(), 50);
  });
}

// A short two-tone alarm, made here (no sound file to fetch).
function beep() {
  if (state.muted) return;
  try {
    state.audio = state.audio || new AudioContext();
    const ctx = state.audio;
    [880, 660].forEach((f, i) => {
      const o = ctx.createOscillator(), g = ctx.createGain();
      o.frequency.value = f;
      g.gain.value = 0.15;
      o.connect(g).connect(ctx.destination);
      o.start(ctx.currentTime + i * 0.25);
      o.stop(ctx.currentTime + i * 0.25 + 0.2);
    });
  } catch { /* no audio device */ }
}

// Re-renders the current page, keeping what the operator was typing.
async function refresh() {
  const kept = [...document.querySelectorAll("#view input[id], #view select[id]")].map((i) => [i.id, i.value]);
  const focused = document.activeElement?.id;
  await route(true);
  for (const [id, v] of kept) { const i = document.getElementById(id); if (i) i.value = v; }
  if (focused) document.getElementById(focused)?.focus();
}

async function route(quiet) {
  if (!state.me) return;
  const [, page, id] = (location.hash || "#/situation").split("/");
  for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("on", a.id === `nav-${page}` || (page === "alert" && a.id === "nav-alerts") || (page === "device" && a.id === "nav-devices"));
  const view = $("#view");
  try {
    let content;
    if (page === "alerts") content = await alertsPage();
    else if (page === "alert") content = await alertPage(decodeURIComponent(id));
    else if (page === "devices") content = await devicesPage();
    else if (page === "device") content = await devicePage(decodeURIComponent(id));
    else content = await situationPage();
    view.replaceChildren(content);
  } catch (e) {
    if (!quiet && state.me) view.replaceChildren(el("p", { class: "error" }, `${t("error")}: ${e.message}`));
  }
}

// ---- situation --------------------------------------------------------------------------

function areaSeverity(a) { return a.alert ? a.alert.severity : a.latest ? "ok" : null; }
const COLOURS = { ok: "#2e9e5b", blue: "#2f6fd6", yellow: "#e0b000", orange: "#ef7d1a", red: "#d92d20", warning: "#ef7d1a", alarm: "#d92d20", critical: "#d92d20", attention: "#7a5af8" };
const GRADE_COLOURS = ["#98a2b3", "#2e9e5b", "#84c341", "#e0b000", "#ef7d1a", "#d92d20"];

// One schematic map per district: places projected onto the district's own extent.
function districtMap(code, s) {
  const areas = s.areas.filter((a) => a.zone === code && a.location);
  const segs = s.segments.filter((r) => r.zone === code && r.ends);
  const assets = s.assets.filter((a) => a.zone === code && a.location);
  const pts = [...areas.map((a) => a.location), ...segs.flatMap((r) => r.ends), ...assets.map((a) => a.location)];
  if (!pts.length) return null;
  const big = pts.length > 4;
  const W = big ? 960 : 480, P = 40;
  let [minLat, maxLat, minLon, maxLon] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [la, lo] of pts) { minLat = Math.min(minLat, la); maxLat = Math.max(maxLat, la); minLon = Math.min(minLon, lo); maxLon = Math.max(maxLon, lo); }
  const midLat = (minLat + maxLat) / 2, midLon = (minLon + maxLon) / 2;
  const kx = Math.cos(midLat * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * kx, 0.01), spanY = Math.max(maxLat - minLat, 0.01);
  // As tall as the places need, within bounds; a district of one or two places stays small.
  const H = pts.length <= 2 ? 160 : Math.round(Math.min(Math.max((W - 2 * P) * spanY / spanX + 2 * P, 260), 560));
  const k = Math.min((W - 2 * P) / spanX, (H - 2 * P) / spanY);
  const xy = ([la, lo]) => [W / 2 + (lo - midLon) * kx * k, H / 2 - (la - midLat) * k];
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": districtName(code) });
  for (const r of segs) {
    const [[x1, y1], [x2, y2]] = r.ends.map(xy);
    const g = r.latest?.fields.grade || 0;
    svg.append(el("line", { x1, y1, x2, y2, stroke: GRADE_COLOURS[g], "stroke-width": 6, "stroke-linecap": "round", "data-segment": r.id },
      el("title", {}, `${r.name}: ${g ? t(`g${g}`) : t("no.data")}`)));
    svg.append(el("text", { x: (x1 + x2) / 2 + 4, y: (y1 + y2) / 2 - 6 }, r.name));
  }
  for (const a of assets) {
    const [x, y] = xy(a.location);
    const sev = a.alert ? a.alert.severity : "ok";
    svg.append(el("rect", { x: x - 5, y: y - 5, width: 10, height: 10, fill: COLOURS[sev] || "#667085", "data-asset": a.id },
      el("title", {}, `${a.name}: ${a.alert ? a.alert.label : t("normal")}`)));
  }
  for (const a of areas) {
    const [x, y] = xy(a.location);
    const sev = areaSeverity(a);
    const ratio = a.latest?.fields.occupancy_ratio;
    svg.append(el("circle", { cx: x, cy: y, r: 11, fill: COLOURS[sev] || "#98a2b3", stroke: "#fff", "stroke-width": 2, "data-area": a.id },
      el("title", {}, `${a.name}: ${pct(ratio)}`)));
    svg.append(el("text", { x: x + 14, y: y + 4 }, ratio === undefined ? a.name : `${a.name} ${pct(ratio)}`));
  }
  return el("div", { class: `card map${big ? " big" : ""}` }, el("h2", {}, districtName(code)), svg);
}

// An operator's head count of an area: the baseline its occupancy continues from (after a
// restart in opening hours, or when the gates drifted).
function countForm(a) {
  if (!canOperate()) return null;
  const input = el("input", { id: `count-${a.id}`, type: "number", min: "0", placeholder: t("count"), class: "count-input" });
  return el("div", { class: "actions" }, input,
    el("button", { class: "act", type: "button", "data-count": a.id, onclick: () => {
      if (input.value !== "") act(`/api/v1/areas/${encodeURIComponent(a.id)}/occupancy`, { count: Number(input.value) }, input);
    } }, t("count.set")));
}

async function situationPage() {
  const s = await api("/api/v1/situation");
  state.situation = s;
  $("#firing").textContent = s.open_alerts || "";
  const fresh = (l) => l && s.now_ms - l.at_ms < 10 * 60_000;
  const strip = el("div", { class: "strip" },
    el("a", { class: "card", href: "#/alerts" }, t("open.alerts"), el("b", { id: "open-count" }, s.open_alerts)),
    el("div", { class: "card" }, t("devices.online"), el("b", {}, s.devices.online)),
    el("a", { class: "card", href: "#/devices" }, t("devices.offline"), el("b", { id: "offline-count" }, s.devices.offline)),
    el("a", { class: "card", href: "#/devices" }, t("devices.low_battery"), el("b", {}, s.devices.low_battery)));
  // The districts with many places side by side; those with one or two stacked beside them.
  const drawn = s.districts.map((d) => districtMap(d.code, s)).filter(Boolean);
  const maps = el("div", { class: "maps" },
    el("div", { class: "maps-main" }, drawn.filter((m) => m.classList.contains("big"))),
    el("div", { class: "maps-side" }, drawn.filter((m) => !m.classList.contains("big"))));
  const areaRow = (a, inner) => {
    const f = a.latest?.fields || {};
    const occupancy = f.occupancy ?? (f.occupancy_known === false ? t("occupancy.unknown") : "—");
    return el("tr", { class: fresh(a.latest) ? "" : "stale", "data-area": a.id },
      el("td", {}, inner ? `└ ${a.name}` : a.name),
      el("td", {}, occupancy, a.latest ? el("div", { class: "muted" }, `${t("inflow")} ${f.inflow_per_min ?? 0}/min`) : null, countForm(a)),
      el("td", {}, a.capacity),
      el("td", {}, pct(f.occupancy_ratio)),
      el("td", {}, a.alert ? badge(a.alert.severity, a.alert.label) : a.latest ? badge("ok", t("normal")) : "—"),
      el("td", {}, pct(f.forecast_ratio)), el("td", { class: "muted" }, a.latest ? age(a.latest.at_ms) : t("no.data")));
  };
  const areas = el("table", {}, el("tr", {}, ["name", "occupancy", "capacity", "ratio", "grade", "forecast", "updated"].map((k) => el("th", {}, t(k)))),
    s.areas.flatMap((a) => [areaRow(a), ...(a.choke_points || []).map((c) => areaRow(c, true))]));
  const segments = el("table", {}, el("tr", {}, ["name", "grade", "speed", "tpi", "updated"].map((k) => el("th", {}, t(k)))),
    s.segments.map((r) => {
      const f = r.latest?.fields || {};
      return el("tr", { class: fresh(r.latest) ? "" : "stale", "data-segment": r.id }, el("td", {}, r.name),
        el("td", {}, f.grade ? el("span", { class: `badge g${f.grade}` }, t(`g${f.grade}`)) : "—"),
        el("td", {}, num(f.speed_kmh)), el("td", {}, num(f.tpi)),
        el("td", { class: "muted" }, r.latest ? age(r.latest.at_ms) : t("no.data")));
    }));
  const assets = el("table", {}, el("tr", {}, ["name", "kind", "values", "state"].map((k) => el("th", {}, t(k)))),
    s.assets.map((a) => el("tr", { "data-asset": a.id }, el("td", {}, a.name), el("td", {}, t(a.kind)),
      el("td", {}, Object.entries(a.fields || {}).map(([k, v]) => `${k} ${num(v, 2)}`).join(" · ") || t("no.data")),
      el("td", {}, a.alert ? el("a", { href: `#/alert/${encodeURIComponent(a.alert.id)}` }, badge(a.alert.severity, a.alert.label)) : badge("ok", t("normal"))))));
  return el("section", { id: "situation" }, strip, el("p", { id: "action-error", class: "error" }), maps,
    el("h2", {}, t("areas")), areas, el("h2", {}, t("segments")), segments, el("h2", {}, t("assets")), assets);
}

// ---- alerts -----------------------------------------------------------------------------

function filterSelect(id, options, value, onchange) {
  return el("select", { id, onchange },
    options.map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
}

const filters = { category: "", zone: "", severity: "", acked: "" };

function alertActions(a) {
  if (!canOperate() || a.status !== "firing") return null;
  const note = el("input", { id: `note-${a.id}`, placeholder: t("note"), "data-note": a.id });
  return el("div", { class: "actions" }, note,
    el("button", { class: "act", type: "button", "data-ack": a.id, onclick: async (e) => {
      e.stopPropagation();
      await act(`/api/v1/alerts/${encodeURIComponent(a.id)}/ack`, { note: note.value }, note);
    } }, t("acknowledge")));
}

async function act(path, body, input) {
  try {
    await api(path, { method: "POST", body });
    input.value = "";
    await refresh();
  } catch (e) {
    alertError(e.message);
  }
}
function alertError(message) {
  const p = $("#action-error");
  if (p) p.textContent = `${t("error")}: ${message}`;
}

async function alertsPage() {
  const data = await api("/api/v1/alerts?events=200");
  $("#firing").textContent = data.firing || "";
  const open = data.alerts.slice().sort((x, y) => y.grade - x.grade || x.started_ms - y.started_ms);
  const shown = open.filter((a) => (!filters.category || a.category === filters.category)
    && (!filters.zone || a.zone === filters.zone) && (!filters.severity || a.severity === filters.severity)
    && (!filters.acked || (filters.acked === "yes") === !!a.ack));
  const set = (k) => (e) => { filters[k] = e.target.value; route(true); };
  const sevs = [...new Set(open.map((a) => a.severity))];
  const zones = [...new Set(open.map((a) => a.zone))];
  const bar = el("div", { class: "filters" },
    filterSelect("f-category", [["", `${t("category")}: ${t("all")}`], ...["crowd", "traffic", "pipe", "device", "gateway"].map((c) => [c, t(c === "device" ? "device_cat" : c)])], filters.category, set("category")),
    filterSelect("f-zone", [["", `${t("district")}: ${t("all")}`], ...zones.map((z) => [z, districtName(z)])], filters.zone, set("zone")),
    filterSelect("f-severity", [["", `${t("severity")}: ${t("all")}`], ...sevs.map((s) => [s, s])], filters.severity, set("severity")),
    filterSelect("f-acked", [["", `${t("ack")}: ${t("all")}`], ["yes", t("acked")], ["no", t("unacked")]], filters.acked, set("acked")));
  const head = el("tr", {}, ["severity", "subject", "category", "district", "started", "value", "ack", "assigned", "actions"].map((k) => el("th", {}, t(k))));
  const rows = shown.map((a) => el("tr", {
    class: `clickable${state.urgent.has(a.id) ? " urgent" : ""}`, "data-alert": a.id,
    onclick: (e) => { if (!e.target.closest(".actions")) location.hash = `#/alert/${encodeURIComponent(a.id)}`; },
  },
    el("td", {}, badge(a.severity, a.label)),
    el("td", {}, a.subject_name || a.subject, el("div", { class: "muted" }, a.summary),
      a.advice ? el("div", { class: "advice" }, a.advice.text) : ""),
    el("td", {}, t(a.category === "device" ? "device_cat" : a.category)),
    el("td", {}, districtName(a.zone)),
    el("td", {}, clock(a.started_ms), el("div", { class: "muted" }, age(a.started_ms))),
    el("td", {}, `${num(a.value, 2)} / ${num(a.threshold, 2)}`),
    el("td", { class: "acked-by" }, a.ack ? [a.ack.by, el("div", { class: "muted" }, a.ack.note, " ", clock(a.ack.at_ms))] : "—"),
    el("td", {}, a.assigned_to || "—"),
    el("td", {}, alertActions(a))));
  const resolved = data.events.filter((e) => e.kind === "resolved").slice(0, 30);
  return el("section", { id: "alerts" }, el("h1", {}, t("nav.alerts")), bar,
    el("p", { id: "action-error", class: "error" }),
    shown.length ? el("table", { id: "open-alerts" }, head, rows) : el("p", { class: "muted", id: "open-alerts" }, t("no.open")),
    el("h2", {}, t("resolved.recent")),
    el("table", { id: "resolved-alerts" }, resolved.map((e) => el("tr", { class: "clickable", onclick: () => { location.hash = `#/alert/${encodeURIComponent(e.alert.id)}`; } },
      el("td", {}, badge(e.alert.severity, e.alert.label)), el("td", {}, e.alert.subject_name || e.alert.subject),
      el("td", {}, clock(e.alert.started_ms), " – ", clock(e.at_ms)), el("td", { class: "muted" }, e.alert.summary)))));
}

function timelineText(e) {
  const a = e.alert;
  const last = a.comments?.[a.comments.length - 1];
  switch (e.kind) {
    case "acknowledged": return a.ack ? `${a.ack.by}${a.ack.note ? `: ${a.ack.note}` : ""}` : "";
    case "assigned": case "commented": return last ? `${last.by}: ${last.text}` : "";
    case "escalated": return `${e.previous_severity} → ${a.severity} (${num(a.value, 2)})`;
    case "escalated_to": return a.escalation?.to ? `${a.escalation.to.name} ${a.escalation.to.phone}` : "";
    default: return `${a.label} (${num(a.value, 2)})`;
  }
}

async function alertPage(id) {
  const d = await api(`/api/v1/alerts/${encodeURIComponent(id)}`);
  const a = d.alert;
  const timeline = el("ol", { class: "timeline", id: "timeline" }, d.timeline.map((e) => el("li", { "data-kind": e.kind },
    el("b", {}, t(e.kind)), " ", clock(e.at_ms), " ", timelineText(e))));
  let actions = null;
  if (canOperate() && a.status === "firing") {
    const note = el("input", { id: "ack-note", placeholder: t("note") });
    const to = el("input", { id: "assign-to", placeholder: t("assign.to") });
    const text = el("input", { id: "comment-text", placeholder: t("comment") });
    const path = (what) => `/api/v1/alerts/${encodeURIComponent(a.id)}/${what}`;
    actions = el("div", { class: "card actions" },
      note, el("button", { class: "act", type: "button", "data-ack": a.id, onclick: () => act(path("ack"), { note: note.value }, note) }, t("acknowledge")),
      to, el("button", { class: "act", type: "button", id: "assign", onclick: () => act(path("assign"), { to: to.value }, to) }, t("assign")),
      text, el("button", { class: "act", type: "button", id: "comment", onclick: () => act(path("comment"), { text: text.value }, text) }, t("comment")),
      el("span", { id: "action-error", class: "error" }));
  }
  const rule = d.rule && el("div", { class: "card", id: "rule" },
    el("h2", {}, `${t("rule")}: ${d.rule.id}`), el("p", {}, d.rule.description),
    d.rule.standard && el("p", {}, el("b", {}, `${t("standard")}: `), d.rule.standard),
    el("table", {}, el("tr", {}, el("th", {}, t("grade")), el("th", {}, t("grades.at")), el("th", {}, t("advice"))),
      d.rule.grades.map((g) => el("tr", { class: g.name === a.severity ? "urgent" : "" },
        el("td", {}, badge(g.name, g.label)), el("td", {}, num(g.at, 2)), el("td", {}, g.advice || d.rule.advice || "—")))));
  const chart = el("div", { class: "card chart", id: "chart" }, el("h2", {}, t("chart")));
  if (d.chart) drawChart(chart, d.chart, d.rule);
  else chart.append(el("p", { class: "muted" }, t("no.chart")));
  return el("section", { id: "alert" },
    el("p", {}, el("a", { href: "#/alerts" }, `← ${t("back")}`)),
    el("h1", {}, badge(a.severity, a.label), " ", a.subject_name || a.subject, " ",
      el("span", { class: "muted" }, a.status === "firing" ? t("firing") : t("resolved"))),
    el("p", {}, a.summary),
    a.advice ? diversionCard(a.advice) : "",
    a.duty ? dutyCard(a.duty) : "",
    el("p", {}, `${t("ack")}: `, el("span", { id: "ack-by" }, a.ack ? `${a.ack.by} ${a.ack.note}` : "—"),
      ` · ${t("assigned")}: `, a.assigned_to || "—"),
    actions,
    chart,
    el("div", { class: "grid2" }, el("div", { class: "card" }, el("h2", {}, t("timeline")), timeline), rule));
}

// Where to send the crowd and which roads to avoid or take, as the alert has it now.
function diversionCard(advice) {
  const road = (r) => el("li", {}, r.name, " ", el("span", { class: "muted" }, r.label));
  const list = (key, items, item) => items && items.length
    ? [el("h3", {}, t(key)), el("ul", { class: key }, items.map(item))] : [];
  return el("div", { class: "card", id: "diversion" }, el("h2", {}, t("diversion")),
    el("p", {}, advice.text),
    ...list("divert_to", advice.divert_to, (d) => el("li", {}, d.name, " ",
      el("span", { class: "muted" }, `${Math.round(d.occupancy_ratio * 100)}%`,
        d.distance_km != null ? ` · ${num(d.distance_km, 1)} km · ${t(d.mode)}` : ""))),
    ...list("avoid", advice.avoid, road),
    ...list("alternatives", advice.alternatives, road));
}

// The alert's grid, its unit and the people it goes to, as the roster had them.
function dutyCard(d) {
  const person = (key, p) => el("li", { "data-role": key }, `${t(key)}: `,
    p ? [p.name, " ", el("a", { href: `tel:${p.phone}` }, p.phone)] : el("span", { class: "muted" }, t("nobody")));
  return el("div", { class: "card", id: "duty" }, el("h2", {}, t("duty")),
    el("p", {}, d.grid_name, " ", el("span", { class: "muted" }, d.unit)),
    el("ul", {}, person("on_duty", d.on_duty), person("supervisor", d.supervisor), person("head", d.head)));
}

// The subject's values over the last four hours under the rule's threshold lines.
async function drawChart(box, spec, rule) {
  const q = new URLSearchParams({ measurement: spec.measurement, subject: spec.subject, minutes: "240", limit: "5000" });
  let points;
  try { points = await api(`/api/v1/series?${q}`); } catch (e) { box.append(el("p", { class: "error" }, e.message)); return; }
  const tagsOk = (p) => Object.entries(spec.where || {}).every(([k, v]) => {
    const found = p.tags.find(([tk]) => tk === k);
    return v === "" ? !found : v === "*" ? !!found : found && found[1] === v;
  });
  const value = (p) => {
    const f = p.fields.find(([k]) => k === spec.field);
    if (!f) return null;
    const v = Object.values(f[1])[0];
    return typeof v === "boolean" ? Number(v) : v;
  };
  const series = points.filter(tagsOk).map((p) => [p.time_ms, value(p)]).filter(([, v]) => typeof v === "number");
  if (!series.length) { box.append(el("p", { class: "muted" }, t("no.data"))); return; }
  const W = 1300, H = 220, L = 50, R = 90, T = 10, B = 24;
  const lines = (rule?.grades || []).map((g) => g.at);
  const ys = [...series.map(([, v]) => v), ...lines];
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (hi === lo) { hi += 1; lo -= 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const t0 = series[0][0], t1 = Math.max(series[series.length - 1][0], t0 + 60_000);
  const x = (ms) => L + ((ms - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  for (const g of rule?.grades || []) {
    svg.append(el("line", { x1: L, x2: W - R, y1: y(g.at), y2: y(g.at), stroke: COLOURS[g.name] || "#d92d20", "stroke-dasharray": "6 4", "data-threshold": g.at }));
    svg.append(el("text", { x: W - R + 4, y: y(g.at) + 4 }, `${g.label} ${num(g.at, 2)}`));
  }
  svg.append(el("polyline", { points: series.map(([ms, v]) => `${x(ms).toFixed(1)},${y(v).toFixed(1)}`).join(" "), fill: "none", stroke: "#1d2430", "stroke-width": 2 }));
  // Dots while there are few points (a single one draws no line).
  if (series.length <= 120) for (const [ms, v] of series) svg.append(el("circle", { cx: x(ms), cy: y(v), r: 3, fill: "#1d2430" }, el("title", {}, `${clock(ms)} ${num(v, 3)}`)));
  for (const v of [lo + pad, hi - pad]) svg.append(el("text", { x: 4, y: y(v) + 4 }, num(v, 2)));
  svg.append(el("text", { x: L, y: H - 6 }, clock(t0)));
  svg.append(el("text", { x: W - R - 90, y: H - 6 }, clock(t1)));
  box.append(svg);
}

// ---- devices ----------------------------------------------------------------------------

const PRESENCE_ORDER = { offline: 0, unknown: 1, online: 2 };
const completeness = (d) => (d.ledger && d.ledger.expected ? d.ledger.received / d.ledger.expected : null);

async function devicesPage() {
  const list = await api("/api/v1/devices");
  list.sort((a, b) => PRESENCE_ORDER[a.presence] - PRESENCE_ORDER[b.presence] || a.id.localeCompare(b.id));
  return el("section", { id: "devices" }, el("h1", {}, t("nav.devices")),
    el("table", {}, el("tr", {}, ["device", "kind", "district", "presence", "last.seen", "battery", "signal", "completeness"].map((k) => el("th", {}, t(k)))),
      list.map((d) => el("tr", { class: "clickable", "data-device": d.id, onclick: () => { location.hash = `#/device/${encodeURIComponent(d.id)}`; } },
        el("td", {}, d.id), el("td", {}, d.kind), el("td", {}, districtName(d.zone)),
        el("td", {}, el("span", { class: `badge ${d.presence === "online" ? "sev-ok" : d.presence === "offline" ? "sev-red" : ""}` }, t(d.presence))),
        el("td", {}, d.last_seen_ms ? age(d.last_seen_ms) : "—"),
        el("td", {}, d.battery_pct ?? "—", d.battery_pct !== null && d.battery_pct !== undefined ? "%" : ""),
        el("td", {}, d.signal_dbm !== null && d.signal_dbm !== undefined ? `${d.signal_dbm} dBm` : "—"),
        el("td", {}, pct(completeness(d)))))));
}

function readingText(m) {
  return Object.entries(m).filter(([k]) => k !== "type").map(([k, v]) => `${k}=${typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : JSON.stringify(v)}`).join(" ");
}

async function devicePage(id) {
  const d = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
  const facts = [["kind", d.kind], ["district", districtName(d.zone)], ["presence", t(d.presence)],
    ["last.seen", d.last_seen_ms ? `${clock(d.last_seen_ms)} (${age(d.last_seen_ms)})` : "—"],
    ["battery", d.battery_pct ?? "—"], ["signal", d.signal_dbm ?? "—"], ["completeness", pct(completeness(d))]];
  return el("section", { id: "device" },
    el("p", {}, el("a", { href: "#/devices" }, `← ${t("back")}`)),
    el("h1", {}, `${t("device")} ${d.id}`),
    el("table", { class: "card" }, facts.map(([k, v]) => el("tr", {}, el("th", {}, t(k)), el("td", {}, v)))),
    el("h2", {}, t("recent.readings")),
    el("table", { id: "readings" }, el("tr", {}, el("th", {}, t("time")), el("th", {}, "type"), el("th", {}, t("reading"))),
      d.recent_readings.slice().reverse().map((r) => el("tr", {}, el("td", {}, clock(r.time_ms)), el("td", {}, r.measurement.type), el("td", {}, readingText(r.measurement))))));
}

// ---- wiring -----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", logIn);
  const flip = () => { state.lang = state.lang === "zh" ? "en" : "zh"; localStorage.setItem("cs.lang", state.lang); translate(); route(true); };
  $("#lang").addEventListener("click", flip);
  $("#login-lang").addEventListener("click", flip);
  $("#mute").addEventListener("click", () => { state.muted = !state.muted; localStorage.setItem("cs.muted", state.muted ? "1" : "0"); translate(); });
  $("#logout").addEventListener("click", async () => {
    try { await api("/api/v1/logout", { method: "POST" }); } catch { /* ended anyway */ }
    state.csrf = null;
    showLogin();
  });
  window.addEventListener("hashchange", () => route());
  // The alarm sound needs a user gesture before it may play.
  document.addEventListener("click", () => { if (!state.audio) try { state.audio = new AudioContext(); } catch { /* none */ } }, { once: true });
  setInterval(() => { if (state.me) refresh(); }, 15_000);
  translate();
  start().catch(() => showLogin());
});
