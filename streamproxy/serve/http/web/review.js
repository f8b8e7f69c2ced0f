// streamproxy review page (issue #23): a finished file's ANONYMIZED picture with every track's box, a
// timeline with one lane per track, and the edits (remove a mask, keep a track visible, mask everything
// except some tracks, add a mask that follows its object, a zone), saved as made; undo/redo; re-render.
// The original is shown only where the API says this user may (each frame fetched is on the record).
// No external asset; plain fetch. State for tests: window.streamproxyReview.
"use strict";

(function () {
  const FORMAT = "streamproxy-edits/1";
  const LANE = 16; // px per timeline lane
  const LABEL = 46; // px of the timeline's left column (track ids)
  const FOLLOW_S = 2; // an added mask follows its object this long both ways by default
  const POLL_MS = 1000; // while re-rendering
  const MIN_BOX = 4; // px (file pixels): a smaller drawing is a click, not a box
  const $ = (id) => document.getElementById(id);

  const m = location.pathname.match(/^\/files\/jobs\/(\d+)\/files\/(\d+)\/review\/?$/);
  const jobId = m ? Number(m[1]) : NaN;
  const fileN = m ? Number(m[2]) : NaN;
  const API = "/api/files/jobs/" + jobId + "/files/" + fileN;

  const state = {
    ready: false, // the review loaded and the first picture shown (the tracks may still be on their way)
    review: null, // GET .../review?tracks=0 as it came; .tracks set when GET .../review/tracks answers
    tracksReady: false, // the tracks came and their boxes and lanes are drawn
    tracksError: null, // why the tracks could not be loaded
    events: [], // "picture", "tracks": in the order they happened (for tests)
    pictureMs: null, // ms from the navigation's start to the first picture shown (for benchmarks)
    tracksMs: null, // ... to the tracks drawn
    lanes: null, // the timeline: {rows, first, drawn, height, view}: lanes in all, the first in view, drawn
    kind: "",
    frame: 0,
    frames: 1,
    fps: 25,
    playing: false,
    selected: [], // track ids
    doc: { format: FORMAT, edits: [] }, // the edits document (PUT whole on every change)
    undo: 0, // lengths of the history stacks
    redo: 0,
    saves: 0, // PUTs answered 200
    saveError: null,
    saved: null, // the last stored document the server returned
    mode: "", // "" (select) | "add" | "zone"
    adding: null, // the id of the add edit being drawn
    following: false,
    follows: 0,
    originals: false, // this user may see originals (the API says so)
    originalOn: false,
    originalShown: null, // the frame whose original is on screen (null: none)
    originalFetches: 0,
    renders: 0, // re-renders this page asked for
    rendering: false,
    proxyUpdating: false, // re-rendered; the review video is being made again (the old one on screen)
    proxyLoads: 0,
    draws: 0,
    error: null,
  };
  window.streamproxyReview = state;

  const video = $("video");
  const still = $("still");
  const orig = $("orig");
  const stage = $("stage");
  const overlay = $("overlay");
  const timeline = $("timeline");
  let tracks = []; // [{id, first, last, boxes: {frame: [x1,y1,x2,y2,score]}}]
  let byId = new Map();
  let failed = new Set();
  const undoStack = [];
  const redoStack = [];
  let drawing = null; // {x0, y0, x1, y1} in file pixels while the pointer is down
  // The timeline draws only the lanes in view: a crowd's 15,687 lanes would be a canvas ~251,000 px tall,
  // which Chromium leaves blank. A spacer as tall as all the lanes gives the box its scrollbar; the canvas,
  // the box's visible size, sticks to its top (CSS) and is drawn again on scroll.
  let lanes = null; // {rows, w, h, px}: every lane (h: their height in CSS px), laid out once per change
  let lanesView = null; // {img, top, vh}: the lanes in view (top: their offset in the spacer), on img
  const lanesSpace = $("lanes-space");

  // --- helpers ---
  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", !!isError);
  }

  function msg(text) {
    $("rv-msg").textContent = text || "";
    state.error = text || null;
  }

  async function why(r) {
    const text = (await r.text().catch(() => "")).trim();
    if (r.status === 401) return "not signed in (reload the page to sign in)";
    return text || "the service answered HTTP " + r.status;
  }

  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const last = () => Math.max(0, state.frames - 1);
  const covers = (e, f) => (e.from === null || e.from === undefined || f >= e.from) && (e.to === null || e.to === undefined || f <= e.to);

  function timeText(f) {
    const s = f / state.fps;
    const mm = Math.floor(s / 60);
    return mm + ":" + (s - mm * 60).toFixed(2).padStart(5, "0");
  }

  function rangeText(e) {
    const hasFrom = e.from !== null && e.from !== undefined;
    const hasTo = e.to !== null && e.to !== undefined;
    if (!hasFrom && !hasTo) return "whole file";
    return "frames " + (hasFrom ? e.from : 0) + "–" + (hasTo ? e.to : last());
  }

  // --- what each track is at a frame, from the edits (the server's files/edits.py decides the output) ---
  function trackStatus(id, f) {
    let st = "masked";
    for (const e of state.doc.edits) {
      if (!covers(e, f)) continue;
      if (e.op === "remove" && e.track === id) st = "removed";
      else if (e.op === "keep" && e.track === id) st = "kept";
      else if (e.op === "only" && Array.isArray(e.tracks) && e.tracks.includes(id)) st = "kept";
    }
    return st;
  }

  function onlyAt(f) {
    return state.doc.edits.find((e) => e.op === "only" && covers(e, f)) || null;
  }

  function boxAt(t, f) {
    return f >= t.first && f <= t.last ? t.boxes[f] || null : null;
  }

  // --- the picture and its overlay ---
  function fitStage() {
    const r = state.review;
    if (!r || !r.width || !r.height) return;
    stage.style.aspectRatio = r.width + " / " + r.height;
    stage.style.maxWidth = "calc(70vh * " + (r.width / r.height).toFixed(4) + ")";
  }

  function sizeCanvas(c, w, h) {
    const dpr = window.devicePixelRatio || 1;
    const W = Math.max(1, Math.round(w * dpr)), H = Math.max(1, Math.round(h * dpr));
    if (c.width !== W || c.height !== H) { c.width = W; c.height = H; }
    c.style.height = h + "px";
    return dpr;
  }

  // File pixels -> overlay (CSS px) and back: the picture fills the stage (same aspect ratio).
  function scale() {
    const r = state.review;
    return r && r.width ? stage.clientWidth / r.width : 1;
  }

  function toFile(ev) {
    const rect = overlay.getBoundingClientRect();
    const k = scale();
    const r = state.review;
    return [clamp((ev.clientX - rect.left) / k, 0, r.width), clamp((ev.clientY - rect.top) / k, 0, r.height)];
  }

  // For tests: a box in file pixels -> its rectangle in the viewport (CSS px).
  state.toScreen = function (box) {
    const rect = overlay.getBoundingClientRect();
    const k = scale();
    return { x1: rect.left + box[0] * k, y1: rect.top + box[1] * k, x2: rect.left + box[2] * k, y2: rect.top + box[3] * k };
  };

  function rect(ctx, b, k) {
    ctx.strokeRect(b[0] * k, b[1] * k, (b[2] - b[0]) * k, (b[3] - b[1]) * k);
  }

  function label(ctx, text, x, y, color) {
    ctx.font = "600 12px system-ui, sans-serif";
    const w = ctx.measureText(text).width + 8;
    const ty = y < 16 ? y + 16 : y;
    x = Math.max(0, Math.min(x, stage.clientWidth - w)); // a box at the right edge keeps its label inside
    ctx.fillStyle = "rgba(0,0,0,.65)";
    ctx.fillRect(x, ty - 15, w, 15);
    ctx.fillStyle = color;
    ctx.fillText(text, x + 4, ty - 3);
  }

  const COLORS = { masked: "#4c8dff", removed: "#9aa0a6", kept: "#2fb344", add: "#e0a800", zone: "#d63939" };

  function drawOverlay() {
    const dpr = sizeCanvas(overlay, stage.clientWidth, stage.clientHeight);
    overlay.style.width = stage.clientWidth + "px";
    const ctx = overlay.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    if (!state.review || !state.review.width) return;
    const f = state.frame, k = scale();
    const sel = new Set(state.selected);
    ctx.lineWidth = 2;
    for (const z of state.doc.edits) {
      if (z.op !== "zone" || !covers(z, f)) continue;
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = COLORS.zone;
      rect(ctx, z.box, k);
      label(ctx, "zone", z.box[0] * k, z.box[1] * k, COLORS.zone);
    }
    for (const t of tracks) {
      const b = boxAt(t, f);
      if (!b) continue;
      const st = trackStatus(t.id, f);
      ctx.setLineDash(st === "removed" ? [5, 4] : []);
      ctx.lineWidth = sel.has(t.id) ? 4 : 2;
      ctx.strokeStyle = sel.has(t.id) ? "#ffffff" : COLORS[st];
      rect(ctx, b, k);
      const words = st === "removed" ? " unmasked" : st === "kept" ? " visible" : "";
      label(ctx, "#" + t.id + words, b[0] * k, b[1] * k, COLORS[st]);
    }
    ctx.lineWidth = 2;
    for (const e of state.doc.edits) {
      if (e.op !== "add" || !covers(e, f) || !e.boxes) continue;
      const b = e.boxes[f];
      if (!b) continue;
      const key = e.keyframes && e.keyframes[f];
      ctx.setLineDash(key ? [] : [3, 3]);
      ctx.strokeStyle = COLORS.add;
      ctx.lineWidth = e.id === state.adding ? 3 : 2;
      rect(ctx, b, k);
      label(ctx, "added " + e.id + (key ? " (keyframe)" : ""), b[0] * k, b[1] * k, COLORS.add);
    }
    ctx.setLineDash([]);
    const only = onlyAt(f);
    if (only) label(ctx, "everything masked except " + only.tracks.map((x) => "#" + x).join(", "), 4, 20, COLORS.kept);
    if (failed.has(f)) label(ctx, "failed closed: the whole frame stays masked", 4, 40, COLORS.zone);
    // Until the tracks come no box is drawn: say so (the picture itself is the anonymized output).
    if (!state.tracksReady) label(ctx, state.tracksError ? "tracks not loaded: no boxes shown" : "loading tracks…", 4, stage.clientHeight - 4, "#fff");
    if (drawing) {
      ctx.setLineDash([4, 3]);
      ctx.strokeStyle = "#fff";
      rect(ctx, [Math.min(drawing.x0, drawing.x1), Math.min(drawing.y0, drawing.y1),
        Math.max(drawing.x0, drawing.x1), Math.max(drawing.y0, drawing.y1)], k);
      ctx.setLineDash([]);
    }
    state.draws++;
  }

  // --- the timeline: one lane per track (presence, score as shade), the added masks below, a playhead ---
  function laneRows() {
    const rows = tracks.map((t) => ({ kind: "track", id: t.id, t }));
    for (const e of state.doc.edits) if (e.op === "add") rows.push({ kind: "add", id: e.id, e });
    return rows;
  }

  function drawLanes() {
    const rows = laneRows();
    // 16 px a lane: 15,687 lanes are 251 k px of spacer, far under Chromium's ~33 M px for a box (that
    // is about 2 million lanes); only the canvas must stay small.
    const h = Math.max(1, rows.length) * LANE;
    lanesSpace.style.height = h + "px"; // first: the scrollbar it brings narrows the box
    const w = $("lanes").clientWidth || 300;
    lanes = { rows, w, h, px: (w - LABEL) / Math.max(1, state.frames) };
    paintLanes();
  }

  // The lanes in view onto an offscreen canvas of the visible size (the playhead is drawn over it per frame).
  function paintLanes() {
    if (!lanes) return;
    const { rows, w, h, px } = lanes;
    const vh = Math.max(1, Math.min(h, $("lanes").clientHeight || h));
    sizeCanvas(timeline, w, vh);
    timeline.style.width = w + "px";
    // Where the (sticky) canvas is in the spacer: the first lane it shows.
    const top = clamp(timeline.getBoundingClientRect().top - lanesSpace.getBoundingClientRect().top, 0, h - vh);
    const dpr = window.devicePixelRatio || 1;
    const img = lanesView && lanesView.img || document.createElement("canvas");
    img.width = Math.round(w * dpr);
    img.height = Math.round(vh * dpr);
    const ctx = img.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, -top * dpr);
    const x = (f) => LABEL + f * px;
    const sel = new Set(state.selected);
    ctx.font = "11px system-ui, sans-serif";
    const i0 = Math.floor(top / LANE), i1 = Math.min(rows.length, Math.ceil((top + vh) / LANE));
    for (let i = i0; i < i1; i++) {
      const row = rows[i];
      const y = i * LANE;
      ctx.fillStyle = i % 2 ? "#1b1e21" : "#202327";
      ctx.fillRect(0, y, w, LANE);
      if (row.kind === "track") {
        if (sel.has(row.id)) { ctx.fillStyle = "#34404f"; ctx.fillRect(0, y, w, LANE); }
        for (const [k, b] of Object.entries(row.t.boxes)) {
          const f = Number(k);
          const score = b.length > 4 ? b[4] : 0;
          ctx.globalAlpha = 0.35 + 0.65 * clamp(score, 0, 1);
          ctx.fillStyle = COLORS[trackStatus(row.id, f)];
          ctx.fillRect(x(f), y + 3, Math.max(1, px), LANE - 6);
        }
        ctx.globalAlpha = 1;
        ctx.fillStyle = sel.has(row.id) ? "#fff" : "#9aa0a6";
        ctx.fillText("#" + row.id, 4, y + 12);
      } else {
        const e = row.e;
        const a = e.from === null || e.from === undefined ? 0 : e.from;
        const b = e.to === null || e.to === undefined ? last() : e.to;
        ctx.fillStyle = COLORS.add;
        ctx.globalAlpha = 0.8;
        ctx.fillRect(x(a), y + 3, Math.max(1, (b - a + 1) * px), LANE - 6);
        ctx.globalAlpha = 1;
        ctx.fillStyle = "#fff";
        for (const kf of Object.keys(e.keyframes || {})) ctx.fillRect(x(Number(kf)), y + 1, Math.max(2, px), LANE - 2);
        ctx.fillStyle = COLORS.add;
        ctx.fillText(e.id, 4, y + 12);
      }
    }
    // Failed-closed frames: marked along the top of the view, whichever lanes are scrolled to.
    for (const f of failed) { ctx.fillStyle = COLORS.zone; ctx.fillRect(x(f), top, Math.max(1, px), 2); }
    lanesView = { img, top, vh };
    state.lanes = { rows: rows.length, first: i0, drawn: i1 - i0, height: h, view: vh };
    drawTimeline();
  }

  function drawTimeline() {
    if (!lanes || !lanesView) return;
    const { img, vh } = lanesView;
    const dpr = sizeCanvas(timeline, lanes.w, vh);
    const ctx = timeline.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, timeline.width, timeline.height);
    ctx.drawImage(img, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(LABEL + state.frame * lanes.px, 0, Math.max(1, Math.min(2, lanes.px)), vh);
  }

  // --- frames: seek, step, play ---
  function showFrame() {
    $("pos").textContent = state.kind === "image" ? "photo" :
      "frame " + state.frame + " / " + last() + " · " + timeText(state.frame);
    drawOverlay();
    drawTimeline();
    loadOriginal();
  }

  function seek(f) {
    f = clamp(Math.round(f), 0, last());
    state.frame = f;
    if (state.kind === "video" && video.src) {
      // The middle of the frame's time slot: the player shows frame f, and round(t * fps) is f.
      const t = (f + 0.25) / state.fps;
      if (Math.abs(video.currentTime - t) > 0.1 / state.fps) video.currentTime = t;
    }
    showFrame();
  }
  state.seek = seek;

  function pause() {
    if (state.kind === "video" && !video.paused) video.pause();
  }

  function togglePlay() {
    if (state.kind !== "video") return;
    if (video.paused) {
      if (state.frame >= last()) seek(0);
      video.play().catch((e) => setStatus("cannot play: " + e.message, true));
    } else {
      video.pause();
    }
  }

  function onVideoFrame(_now, meta) {
    if (!video.paused) {
      const f = clamp(Math.round(meta.mediaTime * state.fps), 0, last());
      if (f !== state.frame) { state.frame = f; showFrame(); }
    }
    video.requestVideoFrameCallback(onVideoFrame);
  }

  function nextTrackStart() {
    if (!state.tracksReady) return;
    const starts = tracks.map((t) => t.first).filter((f) => f > state.frame);
    if (!starts.length) return;
    pause();
    seek(Math.min(...starts));
  }

  // --- selection ---
  function select(ids, add) {
    const next = add ? [...state.selected] : [];
    for (const id of ids) {
      const i = next.indexOf(id);
      if (add && i >= 0) next.splice(i, 1);
      else if (i < 0) next.push(id);
    }
    state.selected = next.filter((id) => byId.has(id));
    renderTools();
    drawLanes();
    drawOverlay();
  }
  state.select = (ids) => select(Array.isArray(ids) ? ids : [ids], false);

  function hitTrack(px, py) {
    let best = null, area = Infinity;
    for (const t of tracks) {
      const b = boxAt(t, state.frame);
      if (!b || px < b[0] || px > b[2] || py < b[1] || py > b[3]) continue;
      const a = (b[2] - b[0]) * (b[3] - b[1]);
      if (a < area) { area = a; best = t.id; }
    }
    return best;
  }

  // --- the edits document: every change is a step of the history and saved at once ---
  function change(mutate) {
    const before = JSON.stringify(state.doc.edits);
    const edits = JSON.parse(before);
    mutate(edits);
    if (JSON.stringify(edits) === before) return;
    undoStack.push(before);
    redoStack.length = 0;
    state.doc.edits = edits;
    changed();
  }

  function undo() {
    if (!undoStack.length) return;
    redoStack.push(JSON.stringify(state.doc.edits));
    state.doc.edits = JSON.parse(undoStack.pop());
    changed();
  }

  function redo() {
    if (!redoStack.length) return;
    undoStack.push(JSON.stringify(state.doc.edits));
    state.doc.edits = JSON.parse(redoStack.pop());
    changed();
  }
  state.undoEdit = undo;
  state.redoEdit = redo;

  function changed() {
    state.undo = undoStack.length;
    state.redo = redoStack.length;
    if (state.adding && !state.doc.edits.some((e) => e.op === "add" && e.id === state.adding)) setMode("");
    renderEdits();
    renderTools();
    drawLanes();
    drawOverlay();
    save();
  }

  let saving = null;
  let dirty = false;

  function save() {
    dirty = true;
    if (!saving) saving = flush().finally(() => { saving = null; });
    return saving;
  }

  async function flush() {
    while (dirty) {
      dirty = false;
      const body = { format: FORMAT, edits: state.doc.edits };
      if (state.doc.input) body.input = state.doc.input;
      $("saved").textContent = "saving…";
      try {
        const r = await fetch(API + "/edits", {
          method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
        });
        if (!r.ok) throw new Error(await why(r));
        state.saved = await r.json();
        state.saves++;
        state.saveError = null;
        if (state.saved && state.saved.input && !state.doc.input) state.doc.input = state.saved.input;
        $("saved").textContent = "saved " + new Date().toLocaleTimeString();
        msg("");
      } catch (e) {
        state.saveError = e.message;
        $("saved").textContent = "not saved";
        msg("The edits were not saved: " + e.message);
      }
    }
  }

  function range() {
    const read = (id) => {
      const v = $(id).value.trim();
      if (v === "") return null;
      const n = Number(v);
      return Number.isInteger(n) ? clamp(n, 0, last()) : NaN;
    };
    const from = read("from"), to = read("to");
    if (Number.isNaN(from) || Number.isNaN(to)) { msg("The frame range takes whole frame numbers."); return null; }
    if (from !== null && to !== null && from > to) { msg("The frame range ends before it starts."); return null; }
    msg("");
    return { from, to };
  }

  function trackEdit(op) {
    const r = range();
    if (!r || !state.selected.length) return;
    if (op === "only") {
      change((edits) => edits.push({ op: "only", tracks: [...state.selected].sort((a, b) => a - b), from: r.from, to: r.to }));
      return;
    }
    change((edits) => {
      for (const id of state.selected) edits.push({ op, track: id, from: r.from, to: r.to });
    });
  }

  // --- drawing: an added mask (followed) or a zone ---
  function setMode(mode) {
    state.mode = mode;
    if (mode !== "add") state.adding = null;
    if (mode) pause();
    overlay.classList.toggle("drawing", !!mode);
    $("add").classList.toggle("on", mode === "add");
    $("zone").classList.toggle("on", mode === "zone");
    $("mode").textContent = mode === "add" ? (state.adding ? "adding " + state.adding + ": draw on another frame to correct it" : "draw a box around what to mask")
      : mode === "zone" ? "draw the zone to mask in every frame" : "";
    $("add-tools").hidden = !(mode === "add" && state.adding);
    drawOverlay();
  }

  function addEditOf(id) {
    return state.doc.edits.find((e) => e.op === "add" && e.id === id) || null;
  }

  function newAddId() {
    let n = 0;
    for (const e of state.doc.edits) {
      const mm = e.op === "add" && /^a(\d+)$/.exec(String(e.id));
      if (mm) n = Math.max(n, Number(mm[1]));
    }
    for (const s of undoStack.concat(redoStack)) {
      for (const e of JSON.parse(s)) {
        const mm = e.op === "add" && /^a(\d+)$/.exec(String(e.id));
        if (mm) n = Math.max(n, Number(mm[1]));
      }
    }
    return "a" + (n + 1);
  }

  async function follow(frame, box, from, to, keyframes) {
    state.following = true;
    $("mode").textContent = "following the box…";
    try {
      const r = await fetch(API + "/follow", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ frame, box, start: from, end: to, keyframes }),
      });
      if (!r.ok) throw new Error(await why(r));
      const got = await r.json();
      state.follows++;
      return got.boxes || {};
    } finally {
      state.following = false;
    }
  }

  const round2 = (b) => b.map((v) => Math.round(v * 100) / 100);

  async function drawnAdd(box) {
    const f = state.frame;
    const span = Math.max(1, Math.round(FOLLOW_S * state.fps));
    const cur = state.adding ? addEditOf(state.adding) : null;
    const id = cur ? cur.id : newAddId();
    const keyframes = Object.assign({}, cur ? cur.keyframes : {}, { [f]: box });
    let from = cur ? cur.from : Math.max(0, f - span);
    let to = cur ? cur.to : Math.min(last(), f + span);
    if (f < from) from = Math.max(0, f - span);
    if (f > to) to = Math.min(last(), f + span);
    let boxes;
    if (state.kind === "image") {
      boxes = { 0: box };
      from = 0; to = 0;
    } else {
      try {
        boxes = await follow(f, box, from, to, keyframes);
      } catch (e) {
        msg("The box could not be followed: " + e.message);
        setMode("add");
        return;
      }
    }
    const edit = { op: "add", id, keyframes, boxes, from, to };
    change((edits) => {
      const i = edits.findIndex((e) => e.op === "add" && e.id === id);
      if (i >= 0) edits[i] = edit; else edits.push(edit);
    });
    state.adding = id;
    setMode("add");
  }

  function trimAdd(which) {
    const cur = state.adding ? addEditOf(state.adding) : null;
    if (!cur) return;
    const f = state.frame;
    const from = which === "start" ? f : cur.from;
    const to = which === "end" ? f : cur.to;
    if (from > to) { msg(which === "end" ? "The mask cannot end before it starts." : "The mask cannot start after it ends."); return; }
    msg("");
    change((edits) => {
      const e = edits.find((x) => x.op === "add" && x.id === cur.id);
      e.from = from;
      e.to = to;
      for (const k of Object.keys(e.boxes)) if (Number(k) < from || Number(k) > to) delete e.boxes[k];
      for (const k of Object.keys(e.keyframes)) if (Number(k) < from || Number(k) > to) delete e.keyframes[k];
    });
  }

  function onDown(ev) {
    if (!state.review || !state.review.width) return;
    const [x, y] = toFile(ev);
    if (!state.mode) {
      const id = hitTrack(x, y);
      if (id !== null) select([id], ev.ctrlKey || ev.metaKey || ev.shiftKey);
      else if (!(ev.ctrlKey || ev.metaKey || ev.shiftKey)) select([], false);
      return;
    }
    if (state.following) return;
    ev.preventDefault();
    overlay.setPointerCapture(ev.pointerId);
    drawing = { x0: x, y0: y, x1: x, y1: y };
    drawOverlay();
  }

  function onMove(ev) {
    if (!drawing) return;
    [drawing.x1, drawing.y1] = toFile(ev);
    drawOverlay();
  }

  function onUp(ev) {
    if (!drawing) return;
    [drawing.x1, drawing.y1] = toFile(ev);
    const d = drawing;
    drawing = null;
    const box = round2([Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)]);
    drawOverlay();
    if (box[2] - box[0] < MIN_BOX || box[3] - box[1] < MIN_BOX) return;
    if (state.mode === "zone") {
      change((edits) => edits.push({ op: "zone", box, from: null, to: null }));
      setMode("");
    } else if (state.mode === "add") {
      drawnAdd(box);
    }
  }

  // --- timeline clicks: select the lane's track and go to that frame ---
  function onTimeline(ev) {
    if (!lanes) return;
    // Lanes are counted from the spacer's top (the canvas shows only those scrolled into view).
    const row = lanes.rows[Math.floor((ev.clientY - lanesSpace.getBoundingClientRect().top) / LANE)];
    const xx = ev.clientX - timeline.getBoundingClientRect().left;
    if (xx >= LABEL) { pause(); seek((xx - LABEL) / lanes.px); }
    if (row && row.kind === "track") select([row.id], ev.ctrlKey || ev.metaKey || ev.shiftKey);
    else if (row && row.kind === "add") {
      if (row.e.from !== null && row.e.from !== undefined && xx < LABEL) seek(row.e.from);
    }
  }

  // --- the original: only where allowed; the paused frame only ---
  let origTimer = 0;
  let origWanted = -1;

  function loadOriginal() {
    const want = state.originals && state.originalOn && (state.kind === "image" || video.paused) ? state.frame : -1;
    if (want < 0) {
      orig.hidden = true;
      $("orig-badge").hidden = true;
      state.originalShown = null;
      origWanted = -1;
      return;
    }
    if (want === state.originalShown || want === origWanted) return;
    origWanted = want;
    clearTimeout(origTimer);
    origTimer = setTimeout(async () => {
      if (origWanted !== want) return;
      try {
        const r = await fetch(API + "/original/" + want + ".jpg", { cache: "no-store" });
        if (!r.ok) throw new Error(await why(r));
        const blob = await r.blob();
        state.originalFetches++;
        if (origWanted !== want || !state.originalOn) return;
        const old = orig.src;
        orig.src = URL.createObjectURL(blob);
        if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
        orig.hidden = false;
        $("orig-badge").hidden = false;
        state.originalShown = want;
      } catch (e) {
        msg("The original could not be shown: " + e.message);
        origWanted = -1;
      }
    }, 120);
  }

  // --- re-render ---
  async function rerender() {
    if (state.rendering) return;
    $("rerender").disabled = true;
    if (saving) await saving;
    if (state.saveError) { msg("Save the edits first: " + state.saveError); $("rerender").disabled = false; return; }
    try {
      const r = await fetch(API + "/rerender", { method: "POST" });
      if (r.status !== 202) throw new Error(await why(r));
      state.renders++;
      state.rendering = true;
      renderState("rendering");
      pollRender();
    } catch (e) {
      msg("Re-render refused: " + e.message);
      $("rerender").disabled = false;
    }
  }

  async function pollRender() {
    for (;;) {
      await new Promise((res) => setTimeout(res, POLL_MS));
      try {
        const r = await fetch(API + "/review?tracks=0", { cache: "no-store" });
        if (!r.ok) throw new Error(await why(r));
        const rv = await r.json();
        if (rv.state === "rendering" || rv.rendering) { renderState("rendering"); continue; }
        // The output is done, the review video not yet: the picture on screen is from before the edits.
        state.proxyUpdating = rv.proxy_updating === true;
        if (state.proxyUpdating) { renderState(rv.state, rv.error); continue; }
        state.rendering = false;
        state.review = Object.assign(state.review, { state: rv.state, error: rv.error, proxy: rv.proxy, proxy_stale: rv.proxy_stale });
        renderState(rv.state, rv.error);
        loadPicture(true);
        return;
      } catch (e) {
        setStatus("cannot reach the service: " + e.message, true);
      }
    }
  }

  function renderState(st, error) {
    const badge = $("rv-state");
    badge.textContent = st || "";
    badge.className = "badge " + (st === "rendering" ? "running" : st || "");
    $("render-state").textContent = st === "rendering" ? "re-rendering from the original…"
      : state.proxyUpdating ? "re-rendered: updating the review video… (the picture is from before the edits)"
      : error ? error
      : state.review && state.review.proxy_stale ? "the review video is from before the last re-render (it could not be made again): re-render to make it anew"
      : state.renders ? "re-rendered with the edits" : "";
    $("render-state").classList.toggle("ferr", (!!error || !!(state.review && state.review.proxy_stale)) && !state.proxyUpdating);
    $("rerender").disabled = st !== "done" || state.proxyUpdating || !state.review || !state.review.reviewable;
  }

  // --- the lists and buttons ---
  function describe(e) {
    const r = rangeText(e);
    switch (e.op) {
      case "remove": return "mask removed from track #" + e.track + " · " + r;
      case "keep": return "track #" + e.track + " kept visible · " + r;
      case "only": return "everything masked except " + (e.tracks || []).map((x) => "#" + x).join(", ") + " · " + r;
      case "add": return "mask " + e.id + " added · " + r + " · " + Object.keys(e.keyframes || {}).length + " keyframe(s)";
      case "zone": return "zone masked (" + e.box.map((v) => Math.round(v)).join(", ") + ") · " + r;
      default: return e.op;
    }
  }

  function renderEdits() {
    const items = state.doc.edits.map((e, i) => {
      const text = document.createElement("button");
      text.type = "button";
      text.className = "link fname";
      text.textContent = describe(e);
      text.addEventListener("click", () => {
        pause();
        const ids = e.op === "only" ? e.tracks : e.track !== undefined ? [e.track] : [];
        if (ids.length) select(ids, false);
        const t = e.track !== undefined ? byId.get(e.track) : null;
        const start = e.from !== null && e.from !== undefined ? e.from : t ? t.first : null;
        if (start !== null) seek(start);
      });
      const del = document.createElement("button");
      del.type = "button";
      del.className = "small danger";
      del.textContent = "delete";
      del.addEventListener("click", () => change((edits) => edits.splice(i, 1)));
      const li = document.createElement("li");
      li.dataset.op = e.op;
      li.append(text, del);
      return li;
    });
    $("edits").replaceChildren(...items);
    $("no-edits").hidden = items.length > 0;
    $("undo").disabled = !undoStack.length;
    $("redo").disabled = !redoStack.length;
  }

  function renderTools() {
    const n = state.selected.length;
    $("sel").textContent = n ? "Selected: " + state.selected.map((x) => "#" + x).join(", ") + (n === 1 ? " (Ctrl or Shift: select more)" : "")
      : state.tracksError ? "The tracks could not be loaded: " + state.tracksError + " (reload the page). Zones and added masks still work."
      : !state.tracksReady ? "Loading the tracks… (a track's edits once they are here)"
      : tracks.length ? "Click a box or a lane to select a track (Ctrl or Shift: several)." : "No face was found in this file.";
    for (const id of ["remove", "keep", "only"]) $(id).disabled = !n || !state.tracksReady;
    if (state.kind === "video") $("next-start").disabled = !state.tracksReady;
  }

  // --- loading ---
  function loadPicture(again) {
    const bust = again ? "?v=" + Date.now() : "";
    if (state.kind === "image") {
      still.hidden = false;
      video.hidden = true;
      still.onload = () => { state.proxyLoads++; shown(); showFrame(); };
      still.onerror = () => { pictureSettled(); msg("The anonymized photo could not be shown."); };
      still.src = API + "/proxy.mp4" + bust;
      return;
    }
    video.hidden = false;
    still.hidden = true;
    const keep = state.frame;
    video.onloadeddata = () => { state.proxyLoads++; shown(); seek(keep); };
    video.onerror = () => { pictureSettled(); msg("The review video could not be played (HTTP or format error)."); };
    video.src = API + "/proxy.mp4" + bust;
    video.load();
  }

  // The first picture shown (or failed): the tracks' parsing and drawing wait for it, not their download.
  let pictureSettled = () => {};
  const pictureFirst = new Promise((res) => { pictureSettled = res; });

  function shown() {
    if (!state.ready) { state.events.push("picture"); state.pictureMs = Math.round(performance.now()); }
    state.ready = true;
    pictureSettled();
  }

  // The tracks (a crowd's are megabytes) come on their own, while the picture loads; drawn when here.
  async function loadTracks() {
    const note = $("lanes-note");
    note.hidden = false;
    note.textContent = "loading tracks…";
    try {
      const r = await fetch(API + "/review/tracks", { cache: "no-store" });
      if (!r.ok) throw new Error(await why(r));
      const text = await r.text();
      // A crowd's tracks take the page's thread a while to parse and draw: after the picture, not before.
      await pictureFirst;
      const got = JSON.parse(text);
      tracks = Array.isArray(got.tracks) ? got.tracks : [];
    } catch (e) {
      state.tracksError = e.message;
      note.textContent = "The tracks could not be loaded: " + e.message + " (reload the page).";
      renderTools();
      drawOverlay();
      return;
    }
    byId = new Map(tracks.map((t) => [t.id, t]));
    state.review.tracks = tracks;
    state.tracksReady = true;
    state.events.push("tracks");
    note.hidden = true;
    renderTools();
    drawLanes();
    drawOverlay();
    state.tracksMs = Math.round(performance.now());
  }

  async function load() {
    if (!m) { msg("This address is not a file's review."); return; }
    $("rv-name").textContent = "Job " + jobId + " · file " + fileN;
    // Everything but the tracks first: the picture starts at once, the tracks follow (loadTracks).
    const r = await fetch(API + "/review?tracks=0", { cache: "no-store" });
    if (!r.ok) { msg(await why(r)); return; }
    const rv = await r.json();
    state.review = rv;
    state.kind = rv.kind || "";
    state.originals = rv.originals === true;
    $("orig-label").hidden = !state.originals;
    if (rv.name) { $("rv-name").textContent = rv.name; document.title = "streamproxy — review " + rv.name; }
    state.proxyUpdating = rv.proxy_updating === true;
    renderState(rv.state, rv.error);
    if (!rv.reviewable) {
      msg("Nothing to review for this file" + (rv.error ? ": " + rv.error : " (it has not finished, or was made before the review existed).") );
      stage.hidden = true;
      return;
    }
    state.frames = Math.max(1, rv.frames || 1);
    state.fps = rv.fps > 0 ? rv.fps : 25;
    failed = new Set(rv.failed_frames || []);
    if (rv.edits && Array.isArray(rv.edits.edits)) {
      state.doc = { format: FORMAT, edits: rv.edits.edits };
      if (rv.edits.input) state.doc.input = rv.edits.input;
      state.saved = rv.edits;
      if (rv.edits.saved) $("saved").textContent = "saved " + new Date(rv.edits.saved).toLocaleString() + (rv.edits.by ? " by " + rv.edits.by : "");
    }
    const isVideo = state.kind === "video";
    for (const id of ["play", "back1", "fwd1", "next-start"]) { $(id).disabled = !isVideo; $(id).hidden = !isVideo; }
    document.querySelector(".range").hidden = !isVideo; // a photo is one frame: no range to choose
    fitStage();
    renderEdits();
    renderTools();
    drawLanes();
    loadPicture(false);
    loadTracks();
    // Opened during a re-render or its review video's update: the new picture replaces this one when ready.
    if (rv.state === "rendering" || state.proxyUpdating) { state.rendering = true; pollRender(); }
  }

  // --- wiring ---
  $("play").addEventListener("click", togglePlay);
  $("back1").addEventListener("click", () => { pause(); seek(state.frame - 1); });
  $("fwd1").addEventListener("click", () => { pause(); seek(state.frame + 1); });
  $("next-start").addEventListener("click", nextTrackStart);
  $("remove").addEventListener("click", () => trackEdit("remove"));
  $("keep").addEventListener("click", () => trackEdit("keep"));
  $("only").addEventListener("click", () => trackEdit("only"));
  $("from-here").addEventListener("click", () => { $("from").value = state.frame; });
  $("to-here").addEventListener("click", () => { $("to").value = state.frame; });
  $("range-clear").addEventListener("click", () => { $("from").value = ""; $("to").value = ""; msg(""); });
  $("add").addEventListener("click", () => setMode(state.mode === "add" ? "" : "add"));
  $("zone").addEventListener("click", () => setMode(state.mode === "zone" ? "" : "zone"));
  $("add-start").addEventListener("click", () => trimAdd("start"));
  $("add-end").addEventListener("click", () => trimAdd("end"));
  $("add-done").addEventListener("click", () => setMode(""));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("rerender").addEventListener("click", rerender);
  $("orig-toggle").addEventListener("change", (ev) => {
    state.originalOn = state.originals && ev.target.checked;
    loadOriginal();
  });
  overlay.addEventListener("pointerdown", onDown);
  overlay.addEventListener("pointermove", onMove);
  overlay.addEventListener("pointerup", onUp);
  overlay.addEventListener("pointercancel", () => { drawing = null; drawOverlay(); });
  timeline.addEventListener("click", onTimeline);
  $("lanes").addEventListener("scroll", paintLanes, { passive: true });
  video.addEventListener("play", () => { state.playing = true; $("play").textContent = "❚❚ pause"; loadOriginal(); });
  video.addEventListener("pause", () => {
    state.playing = false;
    $("play").textContent = "▶ play";
    state.frame = clamp(Math.round(video.currentTime * state.fps), 0, last());
    showFrame();
  });
  video.addEventListener("seeked", () => drawOverlay());
  video.addEventListener("timeupdate", () => {
    if (video.paused || "requestVideoFrameCallback" in video) return;
    const f = clamp(Math.round(video.currentTime * state.fps), 0, last());
    if (f !== state.frame) { state.frame = f; showFrame(); }
  });
  if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(onVideoFrame);
  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
    if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z") { ev.preventDefault(); if (ev.shiftKey) redo(); else undo(); return; }
    if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "y") { ev.preventDefault(); redo(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === " " && !(ev.target instanceof HTMLButtonElement)) { ev.preventDefault(); togglePlay(); }
    else if (ev.key === "ArrowLeft") { ev.preventDefault(); pause(); seek(state.frame - 1); }
    else if (ev.key === "ArrowRight") { ev.preventDefault(); pause(); seek(state.frame + 1); }
    else if (ev.key === "Escape") { drawing = null; setMode(""); }
  });
  if (window.ResizeObserver) new ResizeObserver(() => { drawLanes(); drawOverlay(); }).observe(stage);
  window.addEventListener("resize", () => { drawLanes(); drawOverlay(); });
  fetch("/api/cameras", { cache: "no-store" }).then((r) => (r.ok ? r.json() : null)).then((cams) => {
    if (Array.isArray(cams) && cams.length === 0) $("tab-cameras").hidden = true;
  }).catch(() => { /* the tab stays */ });

  load().catch((e) => { msg("The review could not be loaded: " + e.message); setStatus("cannot reach the service", true); });
})();
