// streamproxy live view: camera grid from /api/cameras, playback over WHEP (standard WebRTC APIs only).
"use strict";

(function () {
  const POLL_MS = 1500;
  const ICE_GATHER_TIMEOUT_MS = 3000;
  const $ = (id) => document.getElementById(id);

  // Read by tests and benchmarks (headless browser): the current playback and its decode stats.
  const stats = {
    camera: null, state: "idle", error: null, framesDecoded: 0, framesDropped: 0, framesReceived: 0,
    bytesReceived: 0, width: 0, height: 0, codec: null, playStartedAt: null, firstFrameMs: null,
  };
  window.streamproxyStats = stats;

  let session = null; // {camera, pc, location, statsTimer}
  let cameras = [];

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

  function cardFor(cam) {
    // Values that describe the live picture are shown only while it is live: a camera that is down
    // shows "–" and why, never its last session's rate, faces or latency as if they were current.
    const live = cam.state === "live";
    const lat = (live && cam.latency_ms) || {};
    const viewers = cam.viewers || {};
    const st = uiState(cam.state);
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card" + (session && session.camera === cam.name ? " playing" : "");
    card.dataset.camera = cam.name;
    card.title = "Play " + cam.name;
    const h = document.createElement("h3");
    const name = document.createElement("span");
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
    const parts = [h];
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
    card.append(...parts);
    card.addEventListener("click", () => play(cam.name));
    return card;
  }

  function render() {
    const grid = $("grid");
    grid.replaceChildren(...cameras.map(cardFor));
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

  window.streamproxy = { play, stop, grabFrame, grabRegion, grabRegionOnFrame };
  $("stop").addEventListener("click", stop);
  // Leaving the page ends the session at once instead of waiting for the ICE consent timeout.
  window.addEventListener("pagehide", () => { stop(); });
  poll();
})();
