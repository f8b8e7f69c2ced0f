// streamproxy live view: a grid of every camera's newest anonymized picture with its state, privacy
// state and plots of its last 10 minutes; click a tile to play it over WHEP (standard WebRTC APIs only).
"use strict";

(function () {
  const POLL_MS = 1500; // /api/cameras: state, numbers, privacy words
  const HISTORY_MS = 2000; // /api/history: the service samples every 2 s
  const WINDOW_S = 600; // the plots' span
  const PICTURE_MS = 500; // a tile in view: its newest picture at most twice a second
  const PICTURE_STALE_MS = 5000; // a picture that could not be refreshed this long is taken down
  const ICE_GATHER_TIMEOUT_MS = 3000;
  const $ = (id) => document.getElementById(id);

  // Read by tests and benchmarks (headless browser): the current playback and its decode stats.
  const stats = {
    camera: null, state: "idle", error: null, framesDecoded: 0, framesDropped: 0, framesReceived: 0,
    bytesReceived: 0, width: 0, height: 0, codec: null, playStartedAt: null, firstFrameMs: null,
  };
  window.streamproxyStats = stats;

  // Read by tests and benchmarks: per tile, when its first picture came (ms since the page opened),
  // pictures shown, unchanged ("same"), failures, whether one is shown now; picture requests and
  // history polls done.
  const grid = { tiles: {}, historyPolls: 0, requests: 0 };
  window.streamproxyGrid = grid;

  let session = null; // {camera, pc, location, statsTimer}
  let cameras = [];
  const tiles = new Map(); // camera -> its tile's elements and picture state
  const history = new Map(); // camera -> {t: [...], cols: {field: [...]}} (the last WINDOW_S)
  let historySeq = 0;
  let picturesBusy = false;
  let lastPictures = -Infinity;

  // Why a camera is not live (the API's `reason`, streamproxy/status.py REASONS): a word and what it means.
  const REASONS = {
    connecting: ["connecting", "first connection to the camera under way"],
    unauthorized: ["unauthorized", "the camera rejects the proxy's user name or password (check the camera URL)"],
    forbidden: ["forbidden", "the camera refuses this user or address (HTTP 403)"],
    not_found: ["not found", "the camera has no stream at the URL's path"],
    refused: ["refused", "nothing listens at the camera's address and port"],
    unreachable: ["unreachable", "no answer from the camera's address"],
    lossy: ["lossy", "too many packets are lost for a whole picture to come through"],
    stalled: ["stalled", "the camera stopped sending video"],
    disconnected: ["disconnected", "the camera closed or lost the connection"],
    undecodable: ["undecodable", "video arrives but does not decode"],
    unsupported: ["unsupported", "not an RTSP stream with H.264/H.265 video the proxy can read"],
    error: ["error", "see the proxy's log"],
    stopped: ["stopped", "the camera's pipeline is stopped"],
  };

  function uiState(pipelineState) {
    if (pipelineState === "live") return "live";
    if (pipelineState === "connecting" || pipelineState === "reconnecting") return "reconnecting";
    return "offline";
  }

  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return typeof v === "number" ? v.toFixed(digits) : String(v);
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  // --- the grid: one tile per camera, its newest anonymized picture and its last minutes ---

  // The tile's head: the camera's name, its state and, when frames are shed, "overloaded".
  function headFor(cam) {
    const live = cam.state === "live";
    const st = uiState(cam.state);
    const h = document.createElement("h3");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = cam.name;
    const badge = document.createElement("span");
    badge.className = "badge " + st;
    badge.textContent = st;
    h.append(name, badge);
    if (live && cam.overloaded) {
      // The camera cannot be carried at its privacy floor: frames are shed, never the protection.
      const over = document.createElement("span");
      over.className = "badge overloaded";
      over.textContent = "overloaded: " + fmt(cam.fps_out, 0) + " of " + fmt(cam.fps_camera, 0) + " fps";
      over.title = "Not enough CPU to anonymize every frame at the privacy floor: frames are shed (dropped, counted).";
      h.append(over);
    }
    return h;
  }

  // The tile's words and numbers: the privacy state, why it is down, the current readings.
  function infoFor(cam) {
    // Values that describe the live picture are shown only while it is live: a camera that is down
    // shows "–" and why, never its last session's rate, faces or latency as if they were current.
    const live = cam.state === "live";
    const lat = (live && cam.latency_ms) || {};
    const viewers = cam.viewers || {};
    const parts = [];
    if (cam.privacy) {
      const p = document.createElement("p");
      p.className = "privacy";
      p.dataset.level = cam.privacy.level;
      p.textContent = cam.privacy.text;
      parts.push(p);
    }
    if (!live) {
      const code = cam.reason || (cam.state === "stopped" ? "stopped" : "connecting");
      const [word, meaning] = REASONS[code] || [String(code), ""];
      const reason = document.createElement("p");
      reason.className = "reason";
      reason.dataset.reason = code;
      reason.textContent = meaning ? word + " — " + meaning : word;
      parts.push(reason);
    }
    const dl = document.createElement("dl");
    const rows = [
      ["fps in / out", live ? fmt(cam.fps_in, 1) + " / " + fmt(cam.fps_out, 1) : fmt(null)],
      ["viewers", "rtsp " + (viewers.rtsp ?? 0) + " · webrtc " + (viewers.webrtc ?? 0)],
      ["faces masked", live ? fmt(cam.tracks ?? cam.faces, 0) : fmt(null)],
      ["added latency", live ? "p50 " + fmt(lat.p50, 0) + " ms · p99 " + fmt(lat.p99, 0) + " ms" : fmt(null)],
    ];
    const loss = cam.loss;
    if (loss && (loss.rtp_packets_lost > 0 || loss.damaged_frames > 0 || loss.tcp_fallback)) {
      // Packets the camera's stream lost on the way (the built-in RTSP client counts them).
      const now = live && loss.percent != null ? fmt(loss.percent, 1) + " % now · " : "";
      const tcp = loss.tcp_fallback ? " · over TCP (UDP lost too much)" : "";
      rows.push(["packet loss", now + loss.rtp_packets_lost + " packets lost · " + loss.damaged_frames + " frames damaged" + tcp]);
    }
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
    parts.push(dl);
    return parts;
  }

  // The plots: plain SVG paths (no charting library to vendor: four small line plots per tile need
  // a scale and a path, and the page stays a few kilobytes that work offline).
  const PLOT_W = 300;
  const PLOT_H = 40;
  const PLOTS = [
    { key: "fps", title: "fps in/out", series: ["fps_in", "fps_out"], digits: 1 },
    { key: "latency", title: "latency ms p50/p99", series: ["p50", "p99"], digits: 0 },
    { key: "faces", title: "faces", series: ["faces"], digits: 0 },
    {
      key: "drops", title: "/s dropped·failed·widened", series: ["dropped", "failed_closed", "widened"], digits: 1,
      help: "Frames per second dropped for time (shed under overload, late for the budget), failed closed " +
        "(detection failed or late: obfuscated whole or dropped) and widened (masks grown past the face for " +
        "safety: the over-masking the engine chooses). Over-masking against the true faces is not measured live.",
    },
  ];

  function plotFor(spec) {
    const fig = document.createElement("figure");
    fig.className = "plot";
    fig.dataset.plot = spec.key;
    if (spec.help) fig.title = spec.help;
    // Parsed as HTML, the <svg> gets the SVG namespace (no namespace URI to write out here).
    const paths = spec.series.map((_, i) => '<path class="s' + i + '" vector-effect="non-scaling-stroke" data-points="0"></path>');
    fig.innerHTML = '<figcaption></figcaption><svg viewBox="0 0 ' + PLOT_W + " " + PLOT_H +
      '" preserveAspectRatio="none" role="img">' + paths.join("") + "</svg>";
    fig.querySelector("svg").setAttribute("aria-label", spec.title + ", last 10 minutes");
    return { spec, fig, cap: fig.querySelector("figcaption"), paths: [...fig.querySelectorAll("path")] };
  }

  // A path through the points of one series; a null (the camera down, no reading) breaks it.
  function pathOf(ts, values, t0, ymax) {
    let d = "";
    let pen = false;
    let n = 0;
    for (let i = 0; i < ts.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || ts[i] < t0) { pen = false; continue; }
      const x = ((ts[i] - t0) / WINDOW_S) * PLOT_W;
      const y = PLOT_H - 1 - (Math.min(v, ymax) / ymax) * (PLOT_H - 2);
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      pen = true;
      n++;
    }
    return [d, n];
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawPlots(tile) {
    const h = history.get(tile.name);
    const ts = h ? h.t : [];
    const tEnd = ts.length ? ts[ts.length - 1] : 0;
    const t0 = tEnd - WINDOW_S;
    for (const plot of tile.plots) {
      const cols = plot.spec.series.map((f) => (h && h.cols[f]) || []);
      let max = 0;
      for (const col of cols) for (let i = 0; i < col.length; i++) if (col[i] > max && ts[i] >= t0) max = col[i];
      const ymax = niceMax(max);
      cols.forEach((col, i) => {
        const [d, n] = pathOf(ts, col, t0, ymax);
        plot.paths[i].setAttribute("d", d);
        plot.paths[i].dataset.points = String(n);
      });
      const last = cols.map((col) => fmt(col.length ? col[col.length - 1] : null, plot.spec.digits));
      plot.cap.textContent = plot.spec.title + " " + last.join(" / ") + " · max " + ymax;
      plot.cap.title = plot.cap.textContent;
    }
  }

  const observer = "IntersectionObserver" in window
    ? new IntersectionObserver((entries) => {
      for (const e of entries) {
        const t = tiles.get(e.target.dataset.camera);
        if (t) t.inView = e.isIntersecting;
      }
    }, { rootMargin: "200px" })
    : null;

  function tileFor(name) {
    let t = tiles.get(name);
    if (t) return t;
    const el = document.createElement("article");
    el.className = "card";
    el.dataset.camera = name;
    el.tabIndex = 0;
    el.setAttribute("role", "button");
    el.title = "Play " + name;
    const head = document.createElement("div");
    head.className = "head";
    const pic = document.createElement("div");
    pic.className = "pic";
    const img = document.createElement("img");
    img.alt = "newest anonymized picture of " + name;
    img.hidden = true;
    const nopic = document.createElement("span");
    nopic.className = "nopic";
    nopic.textContent = "waiting for a picture";
    pic.append(img, nopic);
    const info = document.createElement("div");
    info.className = "info";
    const plotBox = document.createElement("div");
    plotBox.className = "plots";
    const plots = PLOTS.map(plotFor);
    plotBox.append(...plots.map((p) => p.fig));
    el.append(head, pic, info, plotBox);
    el.addEventListener("click", () => play(name));
    el.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); play(name); }
    });
    t = {
      name, el, head, pic, img, nopic, info, plots, inView: !observer, observed: false,
      lastOk: null, token: null, width: 0, src: null,
    };
    grid.tiles[name] = { firstPictureMs: null, pictures: 0, notModified: 0, failures: 0, shown: false };
    tiles.set(name, t); // observed once it is in the page (render)
    drawPlots(t);
    return t;
  }

  function blank(t, why) {
    t.img.hidden = true;
    t.img.removeAttribute("src");
    if (t.src) URL.revokeObjectURL(t.src);
    t.src = null;
    t.token = null;
    t.lastOk = null;
    t.nopic.textContent = why;
    t.nopic.hidden = false;
    grid.tiles[t.name].shown = false;
  }

  // The tiles' newest pictures, every tile in view in one request (/api/tiles): a JPEG the size of
  // a tile for each camera whose newest frame this page does not have yet (the token it sends back
  // says which it has), "same" for the others. Never a stale picture: a camera with no recent frame
  // ("none": its pipeline is stuck) or a service that cannot be reached blanks the tile.
  async function refreshPictures(due) {
    picturesBusy = true;
    lastPictures = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(160, Math.min(640, Math.ceil(Math.max(...due.map((t) => t.pic.clientWidth || 320)) * dpr)));
    const have = due.map((t) => (t.width === w && t.token) || "");
    const url = "/api/tiles?w=" + w + "&cameras=" + due.map((t) => encodeURIComponent(t.name)).join(",") +
      "&have=" + have.map(encodeURIComponent).join(",");
    try {
      const r = await fetch(url, { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const parts = await r.formData();
      await Promise.all(due.map((t) => showPicture(t, parts.get(t.name), w)));
    } catch (e) {
      for (const t of due) {
        if (!grid.tiles[t.name]) continue;
        grid.tiles[t.name].failures++;
        blank(t, "cannot reach the proxy");
      }
    } finally {
      picturesBusy = false;
      grid.requests++;
    }
  }

  async function showPicture(t, part, w) {
    const g = grid.tiles[t.name];
    if (!g) return; // the camera left meanwhile
    if (part === "same") {
      t.lastOk = performance.now();
      g.notModified++;
      return;
    }
    if (!(part instanceof Blob)) {
      g.failures++;
      blank(t, part === "none" ? "no anonymized picture now" : "no picture");
      return;
    }
    const src = URL.createObjectURL(part);
    const old = t.src;
    t.img.src = src;
    await t.img.decode().catch(() => { /* shown when it loads */ });
    if (old) URL.revokeObjectURL(old);
    if (!tiles.has(t.name)) { URL.revokeObjectURL(src); return; }
    t.src = src;
    t.token = (part.name || "").replace(/\.jpg$/, "");
    t.width = w;
    t.lastOk = performance.now();
    t.img.hidden = false;
    t.nopic.hidden = true;
    g.pictures++;
    g.shown = true;
    if (g.firstPictureMs === null) g.firstPictureMs = performance.now(); // since the page opened
  }

  // Pictures refresh only for tiles in view, only while the page is shown, at most every PICTURE_MS,
  // one request at a time.
  function pictureTick() {
    const now = performance.now();
    for (const t of tiles.values()) {
      if (t.lastOk !== null && now - t.lastOk > PICTURE_STALE_MS) blank(t, "no recent picture");
    }
    if (document.visibilityState !== "visible" || picturesBusy || now - lastPictures < PICTURE_MS) return;
    const due = [...tiles.values()].filter((t) => t.inView);
    if (due.length) refreshPictures(due);
  }

  function mergeHistory(h) {
    for (const [name, cols] of Object.entries(h.cameras)) {
      let e = history.get(name);
      if (!e) { e = { t: [], cols: {} }; history.set(name, e); }
      e.t.push(...h.t);
      for (const [f, values] of Object.entries(cols)) (e.cols[f] = e.cols[f] || []).push(...values);
      const tEnd = e.t.length ? e.t[e.t.length - 1] : 0;
      let drop = 0;
      while (drop < e.t.length && e.t[drop] < tEnd - WINDOW_S) drop++;
      if (drop) {
        e.t.splice(0, drop);
        for (const f of Object.keys(e.cols)) e.cols[f].splice(0, drop);
      }
    }
  }

  async function pollHistory() {
    try {
      if (document.visibilityState === "visible") {
        const r = await fetch("/api/history?since=" + historySeq, { cache: "no-store" });
        if (!r.ok) throw new Error("HTTP " + r.status);
        const h = await r.json();
        if (h.seq < historySeq) history.clear(); // the service restarted: it sent its whole ring
        mergeHistory(h);
        historySeq = h.seq;
        grid.historyPolls++;
        for (const t of tiles.values()) drawPlots(t);
      }
    } catch (e) {
      /* shown by the camera poll's status line */
    } finally {
      setTimeout(pollHistory, HISTORY_MS);
    }
  }

  function render() {
    const names = new Set(cameras.map((c) => c.name));
    for (const [name, t] of tiles) {
      if (names.has(name)) continue;
      if (observer) observer.unobserve(t.el);
      blank(t, "");
      tiles.delete(name);
      delete grid.tiles[name];
    }
    const els = cameras.map((cam) => {
      const t = tileFor(cam.name);
      t.el.classList.toggle("playing", !!(session && session.camera === cam.name));
      t.head.replaceChildren(headFor(cam));
      t.info.replaceChildren(...infoFor(cam));
      return t.el;
    });
    const box = $("grid");
    if (box.children.length !== els.length || els.some((el, i) => box.children[i] !== el)) box.replaceChildren(...els);
    for (const t of tiles.values()) {
      if (observer && !t.observed) { observer.observe(t.el); t.observed = true; }
    }
    $("empty").hidden = cameras.length > 0;
  }

  async function poll() {
    try {
      const r = await fetch("/api/cameras", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      cameras = await r.json();
      render();
      setStatus("updated " + new Date().toLocaleTimeString(), false);
    } catch (e) {
      setStatus("cannot reach the proxy: " + e.message, true);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  function waitIceGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      pc.addEventListener("icegatheringstatechange", check);
      // Non-trickle WHEP: send what was gathered if gathering does not finish in time.
      setTimeout(done, ICE_GATHER_TIMEOUT_MS);
    });
  }

  function showMessage(text) {
    $("player-msg").textContent = text || "";
  }

  function setPlayerState(state) {
    stats.state = state;
    const b = $("player-state");
    b.textContent = state;
    b.className = "badge " + (state === "playing" ? "live" : state === "failed" ? "offline" : "reconnecting");
  }

  async function pollStats() {
    if (!session) return;
    try {
      const report = await session.pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && (s.kind === "video" || s.mediaType === "video")) {
          stats.framesDecoded = s.framesDecoded || 0;
          stats.framesDropped = s.framesDropped || 0;
          stats.framesReceived = s.framesReceived || 0;
          stats.bytesReceived = s.bytesReceived || 0;
          // Where a browser's own delay goes (ms per frame): jitter buffer, decode, total processing.
          const n = s.jitterBufferEmittedCount || 0;
          stats.jitterBufferMs = n ? (1000 * s.jitterBufferDelay) / n : null;
          stats.decodeMs = s.framesDecoded ? (1000 * (s.totalDecodeTime || 0)) / s.framesDecoded : null;
          stats.processingMs = s.framesDecoded ? (1000 * (s.totalProcessingDelay || 0)) / s.framesDecoded : null;
          stats.width = s.frameWidth || 0;
          stats.height = s.frameHeight || 0;
          if (s.codecId && report.get(s.codecId)) stats.codec = report.get(s.codecId).mimeType;
        }
      });
      if (stats.framesDecoded > 0 && stats.firstFrameMs === null && stats.playStartedAt !== null) {
        stats.firstFrameMs = performance.now() - stats.playStartedAt;
      }
      $("player-stats").textContent =
        (stats.codec || "") + " " + stats.width + "×" + stats.height + " · decoded " + stats.framesDecoded +
        " · dropped " + stats.framesDropped + " · " + Math.round(stats.bytesReceived / 1024) + " KiB";
    } catch (e) {
      /* the connection is closing */
    }
  }

  async function stop() {
    const s = session;
    session = null;
    $("player").hidden = true;
    $("video").srcObject = null;
    stats.camera = null;
    setPlayerState("idle");
    render();
    if (!s) return;
    clearInterval(s.statsTimer);
    s.pc.close();
    if (s.location) {
      try { await fetch(s.location, { method: "DELETE", keepalive: true }); } catch (e) { /* server gone: nothing to end */ }
    }
  }

  async function play(camera) {
    await stop();
    Object.assign(stats, {
      camera, error: null, framesDecoded: 0, framesDropped: 0, framesReceived: 0, bytesReceived: 0,
      width: 0, height: 0, codec: null, playStartedAt: performance.now(), firstFrameMs: null,
    });
    $("player").hidden = false;
    $("player-title").textContent = camera;
    $("player").scrollIntoView({ block: "nearest" });
    showMessage("");
    setPlayerState("connecting");
    const pc = new RTCPeerConnection({ iceServers: [] });
    const s = { camera, pc, location: null, statsTimer: null };
    session = s;
    render();
    const video = $("video");
    const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
    // Live view: ask for the smallest playout buffer the browser allows (standard in Chromium;
    // an unsupported property is simply ignored).
    try {
      if ("jitterBufferTarget" in transceiver.receiver) transceiver.receiver.jitterBufferTarget = 0;
      else if ("playoutDelayHint" in transceiver.receiver) transceiver.receiver.playoutDelayHint = 0;
    } catch (e) { /* not supported: keep the browser's default */ }
    // The first picture the viewer can see: the moment "time to first frame" ends.
    video.addEventListener("loadeddata", () => {
      if (session === s && stats.firstFrameMs === null) stats.firstFrameMs = performance.now() - stats.playStartedAt;
    }, { once: true });
    pc.addEventListener("track", (ev) => {
      video.srcObject = ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]);
      video.play().catch(() => { /* autoplay of muted video is allowed; ignore the race */ });
    });
    pc.addEventListener("connectionstatechange", () => {
      if (session !== s) return;
      const st = pc.connectionState;
      if (st === "connected") setPlayerState("playing");
      else if (st === "failed") fail("the WebRTC connection failed (network or firewall between you and the proxy?)");
      else if (st === "disconnected") setPlayerState("reconnecting");
    });
    try {
      const offer = await pc.createOffer();
      // The proxy sends its one shared H.264 encode (no per-viewer re-encode): say so plainly when
      // this browser cannot take H.264 (e.g. Firefox without its OpenH264 plugin on a closed network).
      if (!/H264/i.test(offer.sdp || "")) {
        fail("this browser offers no H.264 for WebRTC. Use Chromium/Chrome/Edge, or in Firefox enable the " +
          "OpenH264 plugin (about:addons > Plugins); the RTSP stream plays in VLC/ffplay.");
        return;
      }
      await pc.setLocalDescription(offer);
      await waitIceGathering(pc);
      const r = await fetch("/" + encodeURIComponent(camera) + "/whep", {
        method: "POST",
        headers: { "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
      if (r.status !== 201) {
        const text = (await r.text()).trim();
        throw new Error("the proxy refused playback (HTTP " + r.status + (text ? ": " + text : "") + ")");
      }
      const loc = r.headers.get("Location");
      s.location = loc ? new URL(loc, location.href).href : null;
      const answer = await r.text();
      if (session !== s) { // stopped while waiting
        pc.close();
        if (s.location) fetch(s.location, { method: "DELETE" }).catch(() => {});
        return;
      }
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
      s.statsTimer = setInterval(pollStats, 500);
    } catch (e) {
      if (session === s) fail(e.message || String(e));
    }
  }

  function fail(message) {
    stats.error = message;
    setPlayerState("failed");
    showMessage("Playback failed: " + message);
  }

  // Draws the picture being shown into a canvas: what a viewer sees, as a PNG data URL.
  function grabFrame() {
    const video = $("video");
    if (!video.videoWidth) return null;
    const c = document.createElement("canvas");
    c.width = video.videoWidth;
    c.height = video.videoHeight;
    c.getContext("2d").drawImage(video, 0, 0);
    return c.toDataURL("image/png");
  }

  // A region of the shown picture and the wall-clock time it was drawn (glass-to-glass benchmarks).
  function grabRegion(x, y, w, h) {
    const video = $("video");
    if (!video.videoWidth) return null;
    const c = document.createElement("canvas");
    c.width = w;
    c.height = h;
    c.getContext("2d").drawImage(video, x, y, w, h, 0, 0, w, h);
    const t = Date.now();
    return { t, url: c.toDataURL("image/png"), videoWidth: video.videoWidth, videoHeight: video.videoHeight };
  }

  // The same, taken when the next frame is presented (requestVideoFrameCallback): the time is
  // when the picture reached the screen, not a random moment while it was up.
  function grabRegionOnFrame(x, y, w, h) {
    const video = $("video");
    if (!video.videoWidth || !video.requestVideoFrameCallback) return Promise.resolve(grabRegion(x, y, w, h));
    return new Promise((resolve) => {
      video.requestVideoFrameCallback(() => resolve(grabRegion(x, y, w, h)));
    });
  }

  // A tile's picture as shown (PNG data URL of the image element's pixels), null when it has none.
  function grabTile(camera) {
    const t = tiles.get(camera);
    if (!t || t.img.hidden || !t.img.naturalWidth) return null;
    const c = document.createElement("canvas");
    c.width = t.img.naturalWidth;
    c.height = t.img.naturalHeight;
    c.getContext("2d").drawImage(t.img, 0, 0);
    return c.toDataURL("image/png");
  }

  // Points drawn in each of a tile's plots, by plot and series.
  function plotPoints(camera) {
    const t = tiles.get(camera);
    if (!t) return null;
    return Object.fromEntries(t.plots.map((p) => [p.spec.key, p.paths.map((el) => Number(el.dataset.points))]));
  }

  window.streamproxy = { play, stop, grabFrame, grabRegion, grabRegionOnFrame, grabTile, plotPoints };
  $("stop").addEventListener("click", stop);
  // Leaving the page ends the session at once instead of waiting for the ICE consent timeout.
  window.addEventListener("pagehide", () => { stop(); });
  document.addEventListener("visibilitychange", pictureTick);
  setInterval(pictureTick, 100);
  poll();
  pollHistory();
})();
