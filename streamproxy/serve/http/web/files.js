// streamproxy Files page: choose photos and videos (upload, or pick them on the server), START, and
// follow the jobs: progress per file, a live thumbnail of the newest ANONYMIZED frame, cancel, downloads,
// and the job's audit record and report. Plain fetch/XHR, polling (no websocket), no external asset.
"use strict";

(function () {
  const POLL_MS = 1000; // a running job: its files' progress about once a second
  const LIST_MS = 5000; // the job list (jobs started elsewhere, finished ones)
  const THUMB_MS = 1000; // a running file's thumbnail: about once a second
  const FINAL = new Set(["done", "failed", "cancelled"]);
  const DETAILED = 20; // the newest jobs shown with their files on load (older ones: an outline)
  const MAX_WALK = 20000; // entries walked in a dropped folder (bounded)
  const $ = (id) => document.getElementById(id);

  // Read by tests (headless browser): what the page knows and did.
  const state = {
    chosen: [], // [{name, size}] to upload
    picked: [], // [{root, path, kind}] on the server
    jobs: {}, // id -> the job as GET /api/files/jobs/{id} gave it
    submitted: [], // ids this page started
    polls: 0,
    changesPolls: 0, // answers that held a job's changes only (`?since=`), merged into what the page had
    thumbs: {}, // "id/n" -> thumbnails shown
    uploading: false,
    uploadedBytes: 0,
    error: null,
    roots: [],
  };
  window.streamproxyFiles = state;

  const chosen = []; // {file, rel}
  const picked = new Map(); // "root\0path" -> {root, path, kind}
  const cards = new Map(); // job id -> {el, rows: Map(n -> row elements)}
  let pickRoot = "";
  let pickPath = "";

  // --- small helpers ---
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  function formMsg(text) {
    $("form-msg").textContent = text || "";
    state.error = text || null;
  }

  function bytes(n) {
    if (!Number.isFinite(n)) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(sec).padStart(2, "0");
  }

  function when(t) {
    if (!t) return "";
    const d = new Date(typeof t === "number" ? t * 1000 : t);
    return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
  }

  // The API's refusal in words: its text body (the server writes it for people).
  async function why(r) {
    const text = (await r.text().catch(() => "")).trim();
    if (r.status === 401) return "not signed in (reload the page to sign in)";
    return text || "the service answered HTTP " + r.status;
  }

  // --- 1. inputs: uploads ---
  function addFiles(list) {
    for (const f of list) {
      const rel = f.relPath || f.webkitRelativePath || f.name;
      if (!chosen.some((c) => c.rel === rel && c.file.size === f.size)) chosen.push({ file: f, rel });
    }
    renderChosen();
  }

  function renderChosen() {
    state.chosen = chosen.map((c) => ({ name: c.rel, size: c.file.size }));
    state.picked = [...picked.values()];
    const items = [];
    chosen.forEach((c, i) => {
      const rm = el("button", { type: "button", class: "link", textContent: "remove", title: "Do not upload this file" });
      rm.addEventListener("click", () => { chosen.splice(i, 1); renderChosen(); });
      items.push(el("li", { dataset: { upload: c.rel } }, el("span", { class: "fname", textContent: c.rel }),
        el("span", { class: "dim", textContent: bytes(c.file.size) }), rm));
    });
    for (const [key, p] of picked) {
      const rm = el("button", { type: "button", class: "link", textContent: "remove" });
      rm.addEventListener("click", () => { picked.delete(key); renderChosen(); renderPicker(); });
      items.push(el("li", { dataset: { picked: key } },
        el("span", { class: "fname", textContent: p.root + ": " + (p.path || "(the whole folder)") + (p.kind === "dir" ? "/" : "") }),
        el("span", { class: "dim", textContent: "on the server" }), rm));
    }
    $("chosen").replaceChildren(...items);
  }

  // A dropped folder: walk it (bounded) and keep each file's path inside the drop.
  async function walkEntry(entry, prefix, out) {
    if (out.length >= MAX_WALK) return;
    if (entry.isFile) {
      const f = await new Promise((res) => entry.file(res, () => res(null)));
      if (f) { f.relPath = prefix + f.name; out.push(f); }
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (let round = 0; round < 1000 && out.length < MAX_WALK; round++) {
        const batch = await new Promise((res) => reader.readEntries(res, () => res([])));
        if (!batch.length) break;
        for (const e of batch) await walkEntry(e, prefix + entry.name + "/", out);
      }
    }
  }

  async function onDrop(ev) {
    ev.preventDefault();
    $("drop").classList.remove("over");
    const items = ev.dataTransfer && ev.dataTransfer.items;
    const entries = items ? [...items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null)) : [];
    if (entries.length && entries.every((e) => e)) {
      const out = [];
      for (const e of entries) await walkEntry(e, "", out);
      addFiles(out);
    } else if (ev.dataTransfer) {
      addFiles(ev.dataTransfer.files);
    }
  }

  // --- 1. inputs: on the server (roots) ---
  async function loadRoots() {
    const r = await fetch("/api/files/roots", { cache: "no-store" });
    if (!r.ok) throw new Error(await why(r));
    const roots = await r.json();
    state.roots = roots.map((x) => x.name);
    const has = roots.length > 0;
    $("server-picker").hidden = !has;
    $("out-roots").hidden = !has;
    $("out-none").hidden = has;
    if (!has) return;
    $("pick-root").replaceChildren(...roots.map((x) => el("option", { value: x.name, textContent: x.name })));
    for (const x of roots) $("out-root").append(el("option", { value: x.name, textContent: x.name }));
    pickRoot = roots[0].name;
    await openFolder("");
  }

  let listing = { entries: [], cut: false };

  async function openFolder(path) {
    $("pick-msg").textContent = "";
    const q = "root=" + encodeURIComponent(pickRoot) + "&path=" + encodeURIComponent(path);
    const r = await fetch("/api/files/list?" + q, { cache: "no-store" });
    if (!r.ok) { $("pick-msg").textContent = await why(r); return; }
    listing = await r.json();
    pickPath = path;
    renderPicker();
  }

  function renderPicker() {
    const crumbs = [el("button", { type: "button", class: "link", textContent: pickRoot + ":" })];
    crumbs[0].addEventListener("click", () => openFolder(""));
    const parts = pickPath ? pickPath.split("/") : [];
    parts.forEach((p, i) => {
      const b = el("button", { type: "button", class: "link", textContent: p + "/" });
      b.addEventListener("click", () => openFolder(parts.slice(0, i + 1).join("/")));
      crumbs.push(b);
    });
    $("pick-path").replaceChildren(...crumbs);
    const rows = [];
    if (pickPath) {
      const up = el("button", { type: "button", class: "link", textContent: "↑ up" });
      up.addEventListener("click", () => openFolder(parts.slice(0, -1).join("/")));
      rows.push(el("li", {}, up));
    }
    for (const e of listing.entries) {
      if (e.kind === "other") continue; // neither photo nor video: nothing to anonymize
      const path = pickPath ? pickPath + "/" + e.name : e.name;
      const key = pickRoot + "\0" + path;
      const box = el("input", { type: "checkbox", checked: picked.has(key), "aria-label": "use " + e.name });
      box.addEventListener("change", () => {
        if (box.checked) picked.set(key, { root: pickRoot, path, kind: e.kind });
        else picked.delete(key);
        renderChosen();
      });
      let name;
      if (e.kind === "dir") {
        name = el("button", { type: "button", class: "link fname", textContent: e.name + "/" });
        name.addEventListener("click", () => openFolder(path));
      } else {
        name = el("span", { class: "fname", textContent: e.name });
      }
      rows.push(el("li", { dataset: { kind: e.kind } }, box, name,
        el("span", { class: "dim", textContent: e.kind === "dir" ? "folder" : e.kind + " · " + bytes(e.size) })));
    }
    if (listing.cut) rows.push(el("li", { class: "dim", textContent: "(more entries than shown: pick a folder below)" }));
    if (rows.length === 0 || (rows.length === 1 && pickPath)) rows.push(el("li", { class: "dim", textContent: "no photo, video or folder here" }));
    $("pick-list").replaceChildren(...rows);
  }

  // --- START ---
  function upload(files) {
    // XHR, not fetch: fetch has no upload progress. One multipart body; each part's filename keeps the
    // path inside a chosen folder.
    return new Promise((resolve, reject) => {
      const fd = new FormData();
      for (const c of files) fd.append("file", c.file, c.rel);
      const total = files.reduce((n, c) => n + c.file.size, 0);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/files/uploads");
      xhr.responseType = "text";
      xhr.upload.onprogress = (ev) => {
        state.uploadedBytes = ev.loaded;
        const pct = total ? Math.min(100, Math.floor((100 * ev.loaded) / (ev.total || total))) : 100;
        $("upload-state").textContent = "uploading " + files.length + " file(s): " + pct + " % of " + bytes(total);
      };
      xhr.onload = () => {
        if (xhr.status === 201) resolve(JSON.parse(xhr.responseText).upload);
        else reject(new Error(xhr.status === 401 ? "not signed in (reload the page to sign in)"
          : (xhr.responseText || "").trim() || "upload refused (HTTP " + xhr.status + ")"));
      };
      xhr.onerror = () => reject(new Error("the upload was cut off (connection lost, or refused as too large)"));
      xhr.send(fd);
    });
  }

  async function start(ev) {
    if (ev) ev.preventDefault();
    formMsg("");
    if (state.uploading) return;
    if (!chosen.length && !picked.size) { formMsg("Choose at least one photo, video or folder first."); return; }
    const outRoot = $("out-root").value;
    const body = {
      inputs: [...picked.values()].map((p) => ({ root: p.root, path: p.path })),
      output: outRoot ? { root: outRoot, path: $("out-path").value.trim() } : null,
      quality: $("quality").value,
      style: $("style").value,
      shape: $("shape").value,
      objects: $("objects").value.split(","),
      keep_audio: $("keep-audio").checked,
    };
    state.uploading = true;
    $("start").disabled = true;
    try {
      if (chosen.length) {
        const id = await upload(chosen.slice());
        body.inputs.unshift({ upload: id });
      }
      $("upload-state").textContent = "";
      const r = await fetch("/api/files/jobs", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if (r.status !== 201) throw new Error(await why(r));
      const { id } = await r.json();
      state.submitted.push(id);
      chosen.length = 0;
      picked.clear();
      renderChosen();
      if (pickRoot) renderPicker();
      await refreshJob(id);
    } catch (e) {
      formMsg(e.message);
      $("upload-state").textContent = "";
    } finally {
      state.uploading = false;
      $("start").disabled = false;
    }
  }

  // --- the queue ---
  const filesOf = (job) => (Array.isArray(job.files) ? job.files : []);
  const isActive = (job) => !FINAL.has(job.state);

  async function post(url) {
    const r = await fetch(url, { method: "POST" });
    if (!r.ok) setStatus(await why(r), true);
    return r.ok;
  }

  function jobCard(id) {
    let c = cards.get(id);
    if (c) return c;
    const head = el("div", { class: "job-head" });
    const summary = el("p", { class: "summary" });
    const list = el("ul", { class: "file-list" });
    const links = el("div", { class: "job-links" });
    const node = el("article", { class: "card job", dataset: { job: String(id) } }, head, summary, list, links);
    c = { el: node, head, summary, list, links, rows: new Map() };
    cards.set(id, c);
    return c;
  }

  function fileRow(c, id, f) {
    let row = c.rows.get(f.n);
    if (row) return row;
    const img = el("img", { alt: "newest anonymized frame", hidden: true, decoding: "async" });
    const pic = el("div", { class: "thumb" }, img);
    const name = el("span", { class: "fname" });
    const badge = el("span", { class: "badge" });
    const bar = el("progress", { max: 1, value: 0 });
    const nums = el("span", { class: "nums" });
    const err = el("p", { class: "ferr", role: "alert" });
    const acts = el("span", { class: "acts" });
    const body = el("div", { class: "fbody" },
      el("div", { class: "fhead" }, name, badge), bar, el("div", { class: "fline" }, nums, acts), err);
    const li = el("li", { class: "file", dataset: { n: String(f.n) } }, pic, body);
    row = { li, img, name, badge, bar, nums, err, acts, actsKey: "", thumbAt: 0, thumbBusy: false };
    img.addEventListener("load", () => { img.hidden = false; });
    img.addEventListener("error", () => { img.hidden = true; });
    c.rows.set(f.n, row);
    return row;
  }

  function fileActions(row, id, f) {
    const key = f.state + "|" + !!f.output;
    if (row.actsKey === key) return;
    row.actsKey = key;
    const base = "/api/files/jobs/" + id + "/files/" + f.n;
    const acts = [];
    if (!FINAL.has(f.state)) {
      const b = el("button", { type: "button", class: "small danger", textContent: "cancel" });
      b.addEventListener("click", () => post(base + "/cancel").then(() => refreshJob(id)));
      acts.push(b);
    }
    if (f.state === "done") {
      acts.push(el("a", { href: base + "/output", textContent: "download", class: "dl", download: "" }));
      acts.push(el("a", { href: base + "/output?inline=1", textContent: "open", target: "_blank", rel: "noopener" }));
    }
    if (f.state === "done" || f.state === "rendering") {
      // The review: every track, the edits, re-render (review.html).
      acts.push(el("a", { href: "/files/jobs/" + id + "/files/" + f.n + "/review", textContent: "review", class: "review" }));
    }
    if (f.input !== false) {
      const orig = el("button", { type: "button", class: "link dim", textContent: "original…" });
      orig.addEventListener("click", () => {
        if (window.confirm("Show the ORIGINAL file, NOT anonymized?\n\nFaces in it are visible. Only open it if you are allowed to.")) {
          window.open(base + "/input?confirm=1&inline=1", "_blank", "noopener");
        }
      });
      acts.push(orig);
    }
    row.acts.replaceChildren(...acts);
  }

  function progressText(f) {
    const parts = [];
    const total = f.total || 0, done = f.done || 0;
    if (f.kind === "video" || total > 1) parts.push(done + " / " + (total >= done ? total : "?") + " frames");
    if (f.state === "running") {
      if (f.fps) parts.push(f.fps.toFixed(1) + " frame/s");
      parts.push("ETA " + duration(f.eta_s));
    }
    if (f.state === "done" && f.result) {
      const r = f.result;
      // A photo: the faces masked; a video: the distinct faces (tracks) it showed.
      const found = f.kind === "image" ? r.faces : r.tracks;
      if (typeof found === "number") parts.push(found + (f.kind === "image" ? " face(s) masked" : " face(s) tracked"));
      if (r.text_regions) parts.push(r.text_regions + " text region(s) masked");
      if (r.audio) parts.push("sound " + r.audio);
    }
    return parts.join(" · ");
  }

  function renderFile(c, id, f) {
    const row = fileRow(c, id, f);
    row.li.dataset.state = f.state;
    row.name.textContent = f.name;
    row.badge.textContent = f.state;
    row.badge.className = "badge " + f.state;
    const total = f.total || (f.state === "done" ? 1 : 0);
    row.bar.max = Math.max(1, total);
    row.bar.value = f.state === "done" ? row.bar.max : Math.min(f.done || 0, row.bar.max);
    row.nums.textContent = progressText(f);
    row.err.textContent = f.state === "failed" || (f.state === "cancelled" && f.error && f.error !== "cancelled") ? f.error || "failed" : "";
    fileActions(row, id, f);
    // The live thumbnail: the newest anonymized frame, about once a second while the file runs; a
    // finished file keeps its last one. Nothing is shown before the service has one.
    const now = performance.now();
    if (f.state === "running" && f.thumb && !row.thumbBusy && now - row.thumbAt >= THUMB_MS) {
      row.thumbAt = now;
      row.thumbBusy = true;
      loadThumb(row, id, f.n).finally(() => { row.thumbBusy = false; });
    } else if (FINAL.has(f.state) && f.thumb && !row.finalThumb) {
      row.finalThumb = true;
      loadThumb(row, id, f.n);
    }
    return row.li;
  }

  async function loadThumb(row, id, n) {
    try {
      const r = await fetch("/api/files/jobs/" + id + "/files/" + n + "/thumb.jpg", { cache: "no-store" });
      if (!r.ok) return;
      const blob = await r.blob();
      const src = URL.createObjectURL(blob);
      const old = row.img.src;
      row.img.src = src;
      if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
      const k = id + "/" + n;
      state.thumbs[k] = (state.thumbs[k] || 0) + 1;
    } catch (e) {
      /* the next poll tries again */
    }
  }

  // `changed`: the files the last poll brought (null: all of them). A 1000-photo job is rendered whole
  // once; after that only its changed and running rows are touched.
  function renderJob(job, changed) {
    const id = job.id;
    const c = jobCard(id);
    c.el.dataset.state = job.state;
    const files = filesOf(job);
    const title = el("h3", {}, el("span", { class: "name", textContent: "Job " + id }),
      el("span", { class: "badge " + job.state, textContent: job.state }));
    const meta = el("p", { class: "dim meta", textContent: [
      job.user ? "by " + job.user : "",
      job.started ? "started " + when(job.started) : job.created ? "queued " + when(job.created) : "",
      job.finished ? "finished " + when(job.finished) : "",
      job.output ? "→ " + job.output : "",
    ].filter(Boolean).join(" · ") });
    const headParts = [title, meta];
    if (isActive(job)) {
      const b = el("button", { type: "button", class: "small danger", textContent: "cancel job" });
      b.addEventListener("click", () => post("/api/files/jobs/" + id + "/cancel").then(() => refreshJob(id)));
      headParts.push(b);
    }
    c.head.replaceChildren(...headParts);
    c.summary.textContent = job.summary || counts(files);
    for (const f of changed || files) renderFile(c, id, f);
    if (!changed || c.list.children.length !== files.length) {
      const items = files.map((f) => fileRow(c, id, f).li);
      if (c.list.children.length !== items.length || items.some((li, i) => c.list.children[i] !== li)) c.list.replaceChildren(...items);
    }
    if (!isActive(job) && !c.linked) {
      c.linked = true;
      c.links.replaceChildren(
        el("a", { href: "/api/files/jobs/" + id + "/audit.json", textContent: "audit record (JSON)", target: "_blank", rel: "noopener" }),
        el("a", { href: "/files/jobs/" + id + "/report", textContent: "report (printable)", target: "_blank", rel: "noopener" }),
      );
    }
  }

  function counts(files) {
    const by = {};
    for (const f of files) by[f.state] = (by[f.state] || 0) + 1;
    return Object.entries(by).map(([k, v]) => v + " " + k).join(", ");
  }

  function renderJobs() {
    const ids = Object.keys(state.jobs).map(Number).sort((a, b) => b - a);
    const els = ids.map((id) => cards.get(id)).filter(Boolean).map((c) => c.el);
    const box = $("jobs");
    if (box.children.length !== els.length || els.some((e, i) => box.children[i] !== e)) box.replaceChildren(...els);
    $("no-jobs").hidden = ids.length > 0;
  }

  async function refreshJob(id) {
    // A job the page holds whole is asked for its changes since the last answer (`seq`): the running
    // file and the few that finished, not every file each second.
    const known = state.jobs[id];
    const partial = known && Array.isArray(known.files) && typeof known.seq === "number";
    const r = await fetch("/api/files/jobs/" + id + (partial ? "?since=" + known.seq : ""), { cache: "no-store" });
    if (r.status === 404) {
      delete state.jobs[id];
      const c = cards.get(id);
      if (c) { c.el.remove(); cards.delete(id); }
      renderJobs();
      return;
    }
    if (!r.ok) throw new Error(await why(r));
    const job = await r.json();
    let changed = null;
    if (partial && typeof job.since === "number") {
      const byN = new Map(known.files.map((f) => [f.n, f]));
      changed = filesOf(job);
      for (const f of changed) byN.set(f.n, f);
      job.files = [...byN.values()].sort((a, b) => a.n - b.n);
      delete job.since;
      state.changesPolls++;
      if (job.files.length !== job.files_total) {
        delete state.jobs[id]; // files the page never saw (cannot happen; if it does, ask for the whole job)
        return refreshJob(id);
      }
    }
    state.jobs[id] = job;
    renderJob(job, changed);
    renderJobs();
  }

  async function refreshList() {
    const r = await fetch("/api/files/jobs", { cache: "no-store" });
    if (!r.ok) throw new Error(await why(r));
    const list = await r.json();
    const seen = new Set();
    for (const [i, job] of list.entries()) {
      seen.add(job.id);
      // The list is each job's outline (no files): a recent job new to the page, or whose state
      // moved, is read whole (the running ones are read every poll anyway); older ones stay outlines.
      const known = state.jobs[job.id];
      if (known && known.state === job.state) continue;
      if (i < DETAILED || isActive(job) || known) await refreshJob(job.id);
      else { state.jobs[job.id] = job; renderJob(job); }
    }
    for (const id of Object.keys(state.jobs).map(Number)) {
      if (!seen.has(id)) {
        delete state.jobs[id];
        const c = cards.get(id);
        if (c) { c.el.remove(); cards.delete(id); }
      }
    }
    renderJobs();
  }

  let lastList = -Infinity;
  async function poll() {
    try {
      if (document.visibilityState === "visible") {
        const now = performance.now();
        if (now - lastList >= LIST_MS) {
          lastList = now;
          await refreshList();
        }
        for (const job of Object.values(state.jobs)) if (isActive(job)) await refreshJob(job.id);
        state.polls++;
        setStatus("updated " + new Date().toLocaleTimeString(), false);
      }
    } catch (e) {
      setStatus("cannot reach the service: " + e.message, true);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // --- wiring ---
  $("file-input").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
  $("folder-input").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", onDrop);
  $("pick-root").addEventListener("change", (ev) => { pickRoot = ev.target.value; openFolder(""); });
  $("job-form").addEventListener("submit", start);
  state.start = start;

  loadRoots().catch((e) => setStatus("cannot list the folders: " + e.message, true));
  // The Files page alone (`streamproxy files`): no camera, no Cameras tab.
  fetch("/api/cameras", { cache: "no-store" }).then((r) => (r.ok ? r.json() : null)).then((cams) => {
    if (Array.isArray(cams) && cams.length === 0) $("tab-cameras").hidden = true;
  }).catch(() => { /* the tab stays */ });
  renderChosen();
  poll();
})();
