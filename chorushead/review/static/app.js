// ChorusHead review page: vanilla JS, no build step. The server is the only state that matters:
// every decision is POSTed the moment it is made, and the list is reloaded from the server on start.
"use strict";

const COLORS = ["#4fc3f7", "#ffb74d", "#ba68c8", "#81c784"];
const SHORT = { still_mouth: "mouth", jitter: "jitter", jump: "jump", low_detection: "detection",
  low_assign: "assign", short: "short", no_fit: "no fit" };

const $ = (sel) => document.querySelector(sel);
const state = {
  segments: [],          // from /api/segments, most suspicious first
  byKey: new Map(),
  flagInfo: {},
  current: null,         // key
  detail: null,          // /api/segment/... of the current key
  history: [],           // [{key, prev: {decision, reason}}] for undo, newest last
  clock: null,
  loadToken: 0,
};

// ------------------------------------------------------------------ server calls
// This run's token, written into the page by the server: every POST carries it (a page of another
// origin can neither read it nor send the header without a preflight, which the server refuses).
const TOKEN = (document.querySelector('meta[name="review-token"]') || {}).content || "";

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: ${r.status} ${(await r.json().catch(() => ({}))).error || ""}`);
  return r.json();
}

// ``frames``: the segment's [start, end) on the full timeline as this page showed it; the server
// refuses (409) when the segment now covers other frames (the build changed under the page).
async function postDecision(key, decision, reason, frames) {
  const body = { key, decision, reason: reason || null };
  if (frames) body.frames = frames;
  const r = await fetch("/api/decision", {
    method: "POST", headers: { "Content-Type": "application/json", "X-Review-Token": TOKEN },
    body: JSON.stringify(body),
  });
  const res = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(res.error || `HTTP ${r.status}`);
  return res;
}

// The frames the page shows for ``key`` (from its loaded detail), or undefined if not loaded.
function shownFrames(key) {
  const d = state.detail;
  return d && d.key === key ? [d.abs_start, d.abs_start + d.frames] : undefined;
}

function toast(msg, error = false, ms = 2500) {
  const t = $("#toast");
  t.textContent = msg;
  t.className = error ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, error ? 8000 : ms);
}

// ------------------------------------------------------------------ list, filters, summary
function passes(seg) {
  const f = $("#f-flag").value, d = $("#f-dec").value;
  if (f === "__flagged" && !seg.flags.length) return false;
  if (f === "__none" && seg.flags.length) return false;
  if (f && !f.startsWith("__") && !seg.flags.includes(f)) return false;
  if (d === "unreviewed" && seg.decision) return false;
  if (d && d !== "unreviewed" && seg.decision !== d) return false;
  return true;
}

function chips(flags) {
  return flags.map((f) => `<span class="chip" title="${escapeHtml(state.flagInfo[f] || f)}">${SHORT[f] || f}</span>`).join("");
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function renderList() {
  const ol = $("#list");
  ol.innerHTML = "";
  for (const seg of state.segments) {
    if (!passes(seg)) continue;
    const li = document.createElement("li");
    li.dataset.key = seg.key;
    li.className = [seg.decision || "", seg.key === state.current ? "current" : ""].join(" ").trim();
    li.innerHTML = `<span class="name">${escapeHtml(seg.key)}</span>` +
      `<span class="meta">${seg.seconds.toFixed(1)} s · ${seg.score.toFixed(2)}` +
      `${seg.decision ? " · " + seg.decision : ""}</span><span class="chips">${chips(seg.flags)}</span>`;
    if (seg.reason) li.title = `reason: ${seg.reason}`;
    li.addEventListener("click", () => select(seg.key, { play: false }));
    ol.appendChild(li);
  }
  const cur = ol.querySelector("li.current");
  if (cur) cur.scrollIntoView({ block: "nearest" });
}

function hours(h) {
  return h >= 1 ? `${h.toFixed(2)} h` : `${(h * 60).toFixed(1)} min`;
}

function renderSummary(sum) {
  const t = sum.total;
  $("#summary").innerHTML =
    `reviewed <b>${t.reviewed}</b>/${t.segments} · accepted <b>${t.accepted}</b> (${hours(t.accepted_hours)}) · ` +
    `rejected <b>${t.rejected}</b> (${hours(t.rejected_hours)}) · left ${hours(t.unreviewed_hours)} of ${hours(t.hours)}`;
  const tb = $("#videos tbody");
  tb.innerHTML = "";
  for (const [v, r] of Object.entries(sum.videos)) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td title="${escapeHtml(v)}">${escapeHtml(v)}</td><td>${r.segments}</td><td>${r.reviewed}</td>` +
      `<td>${r.accepted}</td><td>${r.rejected}</td><td>${r.accepted_hours.toFixed(3)}</td><td>${r.hours.toFixed(3)}</td>`;
    tb.appendChild(tr);
  }
}

// Decisions standing on frames that no segment covers now (after a rebuild): listed, applied to nothing.
function renderUnmatched(rows) {
  const box = $("#unmatched"), tb = $("#unmatched tbody");
  tb.innerHTML = "";
  for (const u of rows) {
    const tr = document.createElement("tr");
    tr.title = `frames ${u.frames[0]}–${u.frames[1]}, made on segment ${u.made_on}`;
    tr.innerHTML = `<td>${escapeHtml(u.video)}</td><td>${u.seconds[0].toFixed(1)}–${u.seconds[1].toFixed(1)} s</td>` +
      `<td class="${escapeHtml(u.decision)}">${escapeHtml(u.decision)}</td><td>${escapeHtml(u.reason || "")}</td>`;
    tb.appendChild(tr);
  }
  box.hidden = rows.length === 0;
}

async function loadUnmatched() {
  try { renderUnmatched((await getJSON("/api/unmatched")).unmatched); }
  catch (e) { toast(`Cannot load the unmatched decisions: ${e.message || e}`, true); }
}

// Next/previous in suspicion order among segments the filters show. Works even when the current
// segment has just left the filtered list (e.g. "unreviewed" after a decision).
function neighbour(step) {
  const keys = state.segments.map((s) => s.key);
  let i = keys.indexOf(state.current);
  for (let n = 0; n < keys.length; n++) {
    i += step;
    if (i < 0 || i >= keys.length) return null;
    if (passes(state.byKey.get(keys[i]))) return keys[i];
  }
  return null;
}

// ------------------------------------------------------------------ clock: the video, or a timer without one
class VideoClock {
  constructor(video) { this.v = video; }
  get time() { return this.v.currentTime; }
  set time(t) { this.v.currentTime = t; }
  get playing() { return !this.v.paused; }
  play() { return this.v.play().catch(() => toast("Press space to play (the browser blocked autoplay).")); }
  pause() { this.v.pause(); }
}

class TimerClock {       // drives crops and plots when the source video is missing
  constructor(duration) { this.duration = duration; this.t = 0; this.started = null; }
  get time() {
    if (this.started === null) return this.t;
    const t = this.t + (performance.now() - this.started) / 1000;
    return this.duration > 0 ? t % this.duration : 0;     // loops, like the video
  }
  set time(t) { this.t = t; if (this.started !== null) this.started = performance.now(); }
  get playing() { return this.started !== null; }
  play() { if (this.started === null) this.started = performance.now(); return Promise.resolve(); }
  pause() { if (this.started !== null) { this.t = this.time; this.started = null; } }
}

function togglePlay() {
  if (!state.clock) return;
  if (state.clock.playing) state.clock.pause(); else state.clock.play();
}

// ------------------------------------------------------------------ images that follow the clock
// Loads one frame at a time off-screen and paints it on a canvas once loaded, so the picture never
// blanks while the next frame loads, and frames it cannot keep up with are skipped (meshes render on
// the server's CPU). ``canvas.dataset.frame`` says which frame is shown.
class FrameCanvas {
  constructor(canvas, urlFor) {
    this.canvas = canvas; this.urlFor = urlFor; this.want = null; this.loading = null;
    this.loader = new Image();
    this.loader.addEventListener("load", () => this.loaded(true));
    this.loader.addEventListener("error", () => this.loaded(false));
  }
  show(frame) { this.want = frame; if (this.loading === null && String(frame) !== this.canvas.dataset.frame) this.fetch(); }
  fetch() { this.loading = this.want; this.loader.src = this.urlFor(this.want); }
  loaded(ok) {
    if (ok) {
      const c = this.canvas;
      if (c.width !== this.loader.naturalWidth) { c.width = this.loader.naturalWidth; c.height = this.loader.naturalHeight; }
      c.getContext("2d").drawImage(this.loader, 0, 0);
      c.dataset.frame = String(this.loading);
    }
    const done = this.loading;
    this.loading = null;
    if (this.want !== done) this.fetch();
  }
}

// ------------------------------------------------------------------ plots
function setupCanvas(c) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(c.clientWidth * dpr)), h = Math.max(1, Math.round(c.clientHeight * dpr));
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w: c.clientWidth, h: c.clientHeight };
}

const PAD = { l: 46, r: 8, t: 16, b: 16 };

function frame(ctx, w, h, title, ylo, yhi, n, fps, yLabels = true) {
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#1d2027"; ctx.fillRect(0, 0, w, h);
  ctx.fillStyle = "#9aa0aa"; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "top";
  ctx.fillText(title, PAD.l, 2);
  ctx.strokeStyle = "#2c313a"; ctx.lineWidth = 1;
  ctx.strokeRect(PAD.l, PAD.t, w - PAD.l - PAD.r, h - PAD.t - PAD.b);
  ctx.textBaseline = "middle"; ctx.textAlign = "right";
  if (yLabels) { ctx.fillText(fmt(yhi), PAD.l - 4, PAD.t); ctx.fillText(fmt(ylo), PAD.l - 4, h - PAD.b); }
  ctx.textBaseline = "top";
  const secs = (n - 1) / fps, step = secs > 60 ? 10 : secs > 20 ? 5 : 1;
  for (let s = 0; s <= secs; s += step) {
    const x = PAD.l + (s * fps / Math.max(1, n - 1)) * (w - PAD.l - PAD.r);
    ctx.textAlign = x > w - PAD.r - 12 ? "right" : "center";
    ctx.fillText(`${s}s`, x, h - PAD.b + 2);
  }
  ctx.textAlign = "left";
}

function fmt(v) { return Math.abs(v) >= 10 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(1) : v.toFixed(2); }

function xy(w, h, n, ylo, yhi) {
  const sx = (w - PAD.l - PAD.r) / Math.max(1, n - 1), sy = (h - PAD.t - PAD.b) / ((yhi - ylo) || 1);
  return [(i) => PAD.l + i * sx, (v) => h - PAD.b - (v - ylo) * sy];
}

function range(arrays, pad = 0.05) {
  let lo = Infinity, hi = -Infinity;
  for (const a of arrays) for (const v of a) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (!isFinite(lo)) return [0, 1];
  if (hi - lo < 1e-6) { lo -= 0.05; hi += 0.05; }
  const p = (hi - lo) * pad;
  return [lo - p, hi + p];
}

function line(ctx, X, Y, arr, color, width = 1.5, dash = []) {
  ctx.strokeStyle = color; ctx.lineWidth = width; ctx.setLineDash(dash);
  ctx.beginPath();
  arr.forEach((v, i) => (i ? ctx.lineTo(X(i), Y(v)) : ctx.moveTo(X(i), Y(v))));
  ctx.stroke(); ctx.setLineDash([]);
}

function message(ctx, w, h, text) {
  ctx.fillStyle = "#9aa0aa"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
  ctx.fillText(text, w / 2, h / 2); ctx.textAlign = "left";
}

const plots = {
  jaw(c, d) {
    const { ctx, w, h } = setupCanvas(c);
    if (!d.jaw) { frame(ctx, w, h, c.dataset.title, 0, 1, d.frames, d.fps); return message(ctx, w, h, "no fitted coefficients yet"); }
    const [lo, hi] = range(d.jaw.concat(d.jaw_raw));
    frame(ctx, w, h, c.dataset.title, lo, hi, d.frames, d.fps);
    const [X, Y] = xy(w, h, d.frames, lo, hi);
    d.jaw_raw.forEach((a, k) => line(ctx, X, Y, a, COLORS[k % 4] + "66", 1));
    d.jaw.forEach((a, k) => line(ctx, X, Y, a, COLORS[k % 4], 2));
  },
  pose(c, d) {
    const { ctx, w, h } = setupCanvas(c);
    if (!d.pose) { frame(ctx, w, h, c.dataset.title, 0, 1, d.frames, d.fps); return message(ctx, w, h, "no fitted coefficients yet"); }
    const [lo, hi] = range(d.pose.flat());
    frame(ctx, w, h, c.dataset.title, lo, hi, d.frames, d.fps);
    const [X, Y] = xy(w, h, d.frames, lo, hi);
    const dashes = [[], [6, 4], [2, 3]];
    d.pose.forEach((axes, k) => axes.forEach((a, j) => line(ctx, X, Y, a, COLORS[k % 4], 1.5, dashes[j])));
  },
  audio(c, d) {
    const { ctx, w, h } = setupCanvas(c);
    frame(ctx, w, h, c.dataset.title, -1, 1, d.frames, d.fps, false);
    if (!d.audio.length) return message(ctx, w, h, "no voice tracks (vad not run)");
    const lanes = d.audio.length, lh = (h - PAD.t - PAD.b) / lanes;
    const peak = Math.max(1e-6, ...d.audio.map((a) => Math.max(...a.max.map(Math.abs), ...a.min.map(Math.abs))));
    const sx = (w - PAD.l - PAD.r) / Math.max(1, d.frames);
    d.audio.forEach((a, lane) => {
      const mid = PAD.t + lh * (lane + 0.5), amp = lh / 2 / peak * 0.95;
      ctx.fillStyle = COLORS[a.strip % 4];
      for (let i = 0; i < a.max.length; i++) {
        const y0 = mid - a.max[i] * amp, y1 = mid - a.min[i] * amp;
        ctx.fillRect(PAD.l + i * sx, y0, Math.max(1, sx), Math.max(1, y1 - y0));
      }
      ctx.fillStyle = "#e6e6e6"; ctx.textBaseline = "top";
      ctx.fillText(`singer ${a.strip} ← track ${a.track}${a.assigned ? "" : " (not assigned yet)"}`, PAD.l + 4, PAD.t + lh * lane + 2);
    });
  },
};

// Plots are drawn once per segment onto the canvas; a copy is kept so the cursor can be redrawn
// every animation frame without redrawing the curves.
const plotCache = new Map();

function drawPlots() {
  const d = state.detail;
  if (!d) return;
  for (const [name, id] of [["jaw", "#plot-jaw"], ["pose", "#plot-pose"], ["audio", "#plot-audio"]]) {
    const c = $(id);
    plots[name](c, d);
    const copy = document.createElement("canvas");
    copy.width = c.width; copy.height = c.height;
    copy.getContext("2d").drawImage(c, 0, 0);
    plotCache.set(c, copy);
  }
}

function drawCursor(f) {
  const d = state.detail;
  for (const [c, copy] of plotCache) {
    const ctx = c.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(copy, 0, 0);
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const x = PAD.l + f / Math.max(1, d.frames - 1) * (c.clientWidth - PAD.l - PAD.r);
    ctx.strokeStyle = "#ffffff"; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.moveTo(x, PAD.t); ctx.lineTo(x, c.clientHeight - PAD.b); ctx.stroke();
  }
}

function seekFromPlot(ev) {
  const d = state.detail, c = ev.currentTarget;
  if (!d || !state.clock) return;
  const r = c.getBoundingClientRect();
  const u = (ev.clientX - r.left - PAD.l) / (r.width - PAD.l - PAD.r);
  state.clock.time = Math.min(Math.max(u, 0), 1) * (d.frames - 1) / d.fps;
}

// ------------------------------------------------------------------ selecting a segment
const video = $("#video");
let frameImages = [];

async function select(key, { play = true } = {}) {
  if (!key) return;
  const token = ++state.loadToken;
  const [vid, idx] = [key.slice(0, key.lastIndexOf(":")), key.slice(key.lastIndexOf(":") + 1)];
  let d;
  try {
    d = await getJSON(`/api/segment/${encodeURIComponent(vid)}/${idx}`);
  } catch (e) { toast(String(e.message || e), true); return; }
  if (token !== state.loadToken) return;      // the user moved on while we loaded
  state.current = key; state.detail = d;
  history.replaceState(null, "", `#${encodeURIComponent(key)}`);
  $("#seg-name").textContent = `${key}  ·  frames ${d.start}–${d.end} (${(d.frames / d.fps).toFixed(1)} s)`;
  $("#seg-flags").innerHTML = chips(d.flags);
  $("#seg-metrics").textContent = metricsText(d.metrics, d.score);
  showDecision(state.byKey.get(key));

  // media
  if (d.clip) {
    $("#no-video").hidden = true; video.hidden = false;
    video.src = d.clip;
    state.clock = new VideoClock(video);
  } else {
    video.removeAttribute("src"); video.load(); video.hidden = true; $("#no-video").hidden = false;
    state.clock = new TimerClock(d.frames / d.fps);
  }
  const box = $("#strips");
  box.innerHTML = "";
  frameImages = [];
  d.strips.forEach((s) => {
    const div = document.createElement("div");
    div.className = `strip s${s.strip % 4}`;
    div.innerHTML = `<canvas class="crop" width="224" height="224" aria-label="singer ${s.strip} crop"></canvas>` +
      `<span>singer ${s.strip} crop</span>`;
    const pad = (n) => String(n).padStart(6, "0");
    frameImages.push(new FrameCanvas(div.querySelector("canvas"), (f) => `${s.base}${pad(s.first + f)}.jpg?v=${s.version}`));
    if (d.mesh && d.mesh[s.strip]) {
      const m = Object.assign(document.createElement("canvas"), { className: "mesh", width: 256, height: 256 });
      div.append(m, Object.assign(document.createElement("span"), { textContent: "fitted mesh" }));
      frameImages.push(new FrameCanvas(m, (f) => `${d.mesh[s.strip]}${f}.png`));
    }
    box.appendChild(div);
  });
  drawPlots();
  renderList();
  lastFrame = -1;
  if (play) state.clock.play();
  // cut the next clip while this one plays, so `j` is instant
  const next = neighbour(1);
  if (next) {
    const [nv, ni] = [next.slice(0, next.lastIndexOf(":")), next.slice(next.lastIndexOf(":") + 1)];
    fetch(`/clip/${encodeURIComponent(nv)}/${ni}.mp4`, { method: "HEAD" }).catch(() => {});   // server cuts it
  }
}

function metricsText(m, score) {
  const parts = [];
  const add = (k, label, digits, unit = "") => { if (m[k] !== undefined && m[k] !== null) parts.push(`${label} ${m[k].toFixed(digits)}${unit}`); };
  add("jaw_std", "jaw σ", 3, " rad"); add("jitter", "jitter", 4, " rad/f²"); add("jump", "max jump", 3, " rad");
  if (m.det_doubt !== undefined) parts.push(`detection ${(1 - m.det_doubt).toFixed(3)}`);
  add("assign_conf", "assign", 2);
  parts.push(`suspicion ${score.toFixed(2)}`);
  return parts.join(" · ");
}

function showDecision(seg) {
  const b = $("#seg-decision");
  b.className = `badge ${seg && seg.decision ? seg.decision : ""}`;
  b.textContent = seg && seg.decision ? `${seg.decision}ed${seg.reason ? ": " + seg.reason : ""}` : "unreviewed";
}

let lastFrame = -1;
function tick() {
  const d = state.detail;
  if (d && state.clock) {
    const t = state.clock.time;
    const f = Math.min(d.frames - 1, Math.max(0, Math.floor(t * d.fps + 1e-3)));
    if (f !== lastFrame) {
      lastFrame = f;
      frameImages.forEach((fi) => fi.show(f));
      drawCursor(f);
      $("#time").textContent = `${t.toFixed(2)} s · frame ${d.start + f}`;
    }
  }
  requestAnimationFrame(tick);
}

// ------------------------------------------------------------------ decisions
async function decide(decision, reason) {
  const key = state.current;
  if (!key) return;
  const seg = state.byKey.get(key);
  const prev = { decision: seg.decision, reason: seg.reason };
  const frames = shownFrames(key);
  try {
    const res = await postDecision(key, decision, reason, frames);
    applyDecision(key, res);
    state.history.push({ key, prev, frames: res.frames });
    toast(`${key}: ${decision}ed${res.reason ? " (" + res.reason + ")" : ""}`);
  } catch (e) {
    toast(`Not saved: ${e.message || e}. Nothing changed; try again.`, true);
    return;
  }
  const next = neighbour(1);
  if (next) select(next); else { renderList(); showDecision(state.byKey.get(key)); toast("End of the list.") }
}

function applyDecision(key, res) {
  const seg = state.byKey.get(key);
  seg.decision = res.decision === "undo" ? null : res.decision;
  seg.reason = res.decision === "undo" ? null : res.reason;
  renderSummary(res.summary);
  renderList();
  loadUnmatched();
  if (key === state.current) showDecision(seg);
}

// Undo the newest decision of this session (back to what it was before); without any, clear the
// current segment's decision.
async function undo() {
  const last = state.history.pop();
  const key = last ? last.key : state.current;
  if (!key) return;
  const prev = last ? last.prev : { decision: null };
  try {
    const res = await postDecision(key, prev.decision || "undo", prev.reason, last ? last.frames : shownFrames(key));
    applyDecision(key, res);
    toast(`${key}: back to ${prev.decision || "unreviewed"}`);
  } catch (e) {
    if (last) state.history.push(last);
    toast(`Undo not saved: ${e.message || e}`, true);
    return;
  }
  if (key !== state.current) select(key, { play: false });
}

function openReason() {
  if (!state.current) return;
  $("#reason-key").textContent = state.current;
  $("#reason").value = "";
  $("#reason-dialog").hidden = false;
  $("#reason").focus();
}

function closeReason() {
  $("#reason-dialog").hidden = true;
  $("#reason").blur();
}

// ------------------------------------------------------------------ keys
document.addEventListener("keydown", (ev) => {
  if (!$("#reason-dialog").hidden) {
    if (ev.key === "Escape") { ev.preventDefault(); closeReason(); }
    return;                          // Enter submits the form
  }
  const tag = (ev.target && ev.target.tagName) || "";
  if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const actions = {
    a: () => decide("accept"), r: openReason, u: undo,
    j: () => select(neighbour(1)), ArrowRight: () => select(neighbour(1)),
    k: () => select(neighbour(-1)), ArrowLeft: () => select(neighbour(-1)),
    " ": togglePlay,
  };
  const act = actions[ev.key];
  if (act) { ev.preventDefault(); act(); }
});

$("#reason-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const reason = $("#reason").value.trim();
  closeReason();
  decide("reject", reason);
});

// buttons: mouse users too; blur so space/enter keep meaning play/confirm, not "press the button again"
const click = (id, fn) => $(id).addEventListener("click", (ev) => { ev.currentTarget.blur(); fn(); });
click("#b-accept", () => decide("accept"));
click("#b-reject", openReason);
click("#b-undo", undo);
click("#b-prev", () => select(neighbour(-1)));
click("#b-next", () => select(neighbour(1)));
click("#b-play", togglePlay);
for (const id of ["#f-flag", "#f-dec"]) $(id).addEventListener("change", (ev) => { ev.target.blur(); renderList(); });
for (const id of ["#plot-jaw", "#plot-pose", "#plot-audio"]) $(id).addEventListener("click", seekFromPlot);
video.addEventListener("click", togglePlay);
$("#reason-dialog").addEventListener("click", (ev) => { if (ev.target.id === "reason-dialog") closeReason(); });
// A clip that cannot be cut (damaged source, ffmpeg error): keep reviewing from the crops on a timer.
video.addEventListener("error", () => {
  if (!video.getAttribute("src") || !state.detail) return;
  toast("The clip could not be loaded (see the server's terminal); showing the crops only.", true);
  video.removeAttribute("src"); video.hidden = true; $("#no-video").hidden = false;
  state.clock = new TimerClock(state.detail.frames / state.detail.fps);
});
let resizeTimer;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(() => { drawPlots(); lastFrame = -1; }, 100); });

// ------------------------------------------------------------------ start
async function start() {
  try {
    const [list, sum] = await Promise.all([getJSON("/api/segments"), getJSON("/api/summary")]);
    state.segments = list.segments;
    state.flagInfo = list.flag_info;
    state.byKey = new Map(state.segments.map((s) => [s.key, s]));
    const sel = $("#f-flag");
    for (const [f, text] of Object.entries(list.flag_info)) sel.add(new Option(`${SHORT[f] || f}: ${text}`, f));
    renderSummary(sum);
    renderList();
    loadUnmatched();
    const fromHash = decodeURIComponent(location.hash.slice(1));
    const first = state.byKey.has(fromHash) ? fromHash
      : (state.segments.find((s) => !s.decision) || state.segments[0] || {}).key;
    if (first) await select(first, { play: false });
    else $("#seg-name").textContent = "No segments yet: run `chorushead build` up to the contiguity stage.";
  } catch (e) {
    toast(`Cannot load the segment list: ${e.message || e}`, true);
  }
  requestAnimationFrame(tick);
}
start();
