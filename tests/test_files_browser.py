"""The Files page in a real browser (Debian's headless Chromium over CDP, tests/browserkit.py), on the
real HTTP server with a real FileJobs and the real engine (anonymize.Batch, YuNet).

* test_files_page_anonymizes_uploads: two photos and a short video with a real face are chosen in the
  page's file input (CDP DOM.setFileInputFiles), balanced preset, START; the page shows each file
  done; the outputs downloaded over HTTP (as the page's links do) show no face the detector finds
  (while the inputs show one), the audit record's SHA-256 are the downloaded files', the thumbnails
  the page showed are anonymized too; at phone width (390 px) nothing overflows. With
  $STREAMPROXY_SCREENSHOT_FILES set, a JPEG of the page (at most 120 KB) is written there (README).
* test_files_page_cancels_a_running_job: a longer video runs; the job's cancel button stops it: the
  file shows cancelled, and there is no output.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
import pytest
from browserkit import Chromium, needs_chromium
from facekit import background, make_video, paste_face
from webkit import FakeApp

from streamproxy.config import parse_config
from streamproxy.files.manager import FileJobs
from streamproxy.serve.http.server import WebServer

USER, PASSWORD = "dpo", "page-pass"
CREDS = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
VISIBLE = 0.5  # a face a matcher would find (the judge reports down to 0.3)
SCREENSHOT_ENV = "STREAMPROXY_SCREENSHOT_FILES"
SCREENSHOT_MAX = 120 * 1024
OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"

JOB = "(() => { const s = window.streamproxyFiles; const id = s.submitted[%d]; return id ? s.jobs[id] : null; })()"


@contextlib.asynccontextmanager
async def files_page(tmp_path: Path, model_dir: Path) -> AsyncIterator[tuple[FileJobs, str]]:
    """The HTTP server (with users) and a FileJobs running the real engine; no roots: uploads only."""
    cfg = parse_config(
        {
            "cameras": [{"name": "cam1", "url": "rtsp://127.0.0.1:1/cam1"}],
            "server": {
                "host": "127.0.0.1",
                "ice_hosts": ["127.0.0.1"],
                "users": [{"username": USER, "password": PASSWORD}],
            },
        }
    )
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"http_port": 0})})
    jobs = FileJobs(cfg.files, tmp_path / "data", model_dir)
    await jobs.start()
    server = WebServer(FakeApp(cfg), files=jobs)
    await server.start()
    try:
        yield jobs, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await jobs.stop()


async def open_page(browser: Chromium, base: str) -> None:
    """The Files page, signed in (the browser sends the Basic credentials with every request)."""
    await browser.send("Network.enable")
    await browser.send("Network.setExtraHTTPHeaders", {"headers": CREDS})
    await browser.goto(f"{base}/files", "window.streamproxyFiles && window.streamproxyFiles.polls > 0")


async def choose_files(browser: Chromium, paths: list[Path]) -> None:
    """What a person does in the file dialog: the page's file input gets these files."""
    doc = await browser.send("DOM.getDocument")
    node = await browser.send(
        "DOM.querySelector", {"nodeId": doc["root"]["nodeId"], "selector": "#file-input"}
    )
    await browser.send("DOM.setFileInputFiles", {"files": [str(p) for p in paths], "nodeId": node["nodeId"]})
    chosen = await browser.wait_js(f"window.streamproxyFiles.chosen.length === {len(paths)}", 10)
    assert chosen, await browser.evaluate("window.streamproxyFiles.chosen")


async def wait_job(browser: Chromium, index: int, cond: str, timeout: float) -> dict[str, Any]:
    """The page's view of the index-th job it started, once `cond` (JS over `job`) holds."""
    expr = f"(() => {{ const job = {JOB % index}; return job && ({cond}) ? job : null; }})()"
    job = await browser.wait_js(expr, timeout, interval=0.5)
    if not job:
        raise AssertionError(
            f"job: {cond} not seen in {timeout} s: {await browser.evaluate(JOB % index)}; "
            f"error: {await browser.evaluate('window.streamproxyFiles.error')}; console: {browser.console[-5:]}"
        )
    assert isinstance(job, dict)
    return job


def faces(judge: Any, img: np.ndarray) -> int:
    return sum(1 for d in judge.detect_bgr(img) if d.score >= VISIBLE)


def video_frames(data: bytes, path: Path, every: int = 4) -> list[np.ndarray]:
    path.write_bytes(data)
    with av.open(str(path)) as c:
        return [
            f.to_ndarray(format="bgr24", threads=1) for i, f in enumerate(c.decode(video=0)) if i % every == 0
        ]


def photo(path: Path, seed: int) -> Path:
    img = background(640, 480, seed=seed)
    paste_face(img, 160 + 60 * seed, 90, 190)
    cv2.imwrite(str(path), img)
    return path


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_files_page_anonymizes_uploads(tmp_path: Path, model_dir: Path, judge: Any) -> None:
    src = tmp_path / "chosen"
    src.mkdir()
    inputs = [photo(src / "front door.jpg", 0), photo(src / "yard.png", 1), src / "hall.mp4"]
    await asyncio.to_thread(make_video, inputs[2], 40)
    for p in inputs[:2]:  # not vacuous: the detector finds the face in what goes in
        img = cv2.imread(str(p))
        assert img is not None and faces(judge, img) == 1, p
    assert any(faces(judge, f) for f in video_frames(inputs[2].read_bytes(), tmp_path / "in.mp4"))

    async with files_page(tmp_path, model_dir) as (_jobs, base), Chromium() as browser:
        await browser.viewport(1100, 900)
        await open_page(browser, base)
        assert await browser.evaluate("document.getElementById('quality').value") == "balanced"
        assert await browser.evaluate("window.streamproxyFiles.roots.length") == 0  # uploads only
        await choose_files(browser, inputs)
        await browser.evaluate("(document.getElementById('start').click(), true)")
        job = await wait_job(browser, 0, "job.state === 'done'", 240)
        names = {f["name"].rsplit("/", 1)[-1]: f for f in job["files"]}
        assert sorted(names) == ["front door.jpg", "hall.mp4", "yard.png"], job
        assert all(f["state"] == "done" for f in job["files"]), job["files"]
        assert job["user"] == USER
        # The page shows each file done, with its download link, and the job's record links.
        shown = await browser.evaluate(
            f"""(() => {{ const c = document.querySelector('[data-job="{job["id"]}"]');
                return {{ states: [...c.querySelectorAll('.file')].map(f => f.dataset.state),
                          downloads: [...c.querySelectorAll('a.dl')].map(a => a.getAttribute('href')),
                          links: [...c.querySelectorAll('.job-links a')].map(a => a.getAttribute('href')) }}; }})()"""
        )
        assert shown["states"] == ["done"] * 3, shown
        # It got there from answers that held only what changed (`?since=`), merged into the whole job.
        assert await browser.evaluate("window.streamproxyFiles.changesPolls") > 0
        assert len(shown["downloads"]) == 3, shown
        assert shown["links"] == [
            f"/api/files/jobs/{job['id']}/audit.json",
            f"/files/jobs/{job['id']}/report",
        ]

        async with aiohttp.ClientSession(headers=CREDS) as http:
            outputs: dict[str, bytes] = {}
            for href in shown["downloads"]:
                async with http.get(base + href) as r:
                    assert r.status == 200, href
                    name = r.content_disposition.filename if r.content_disposition else None
                    assert name is not None and name in names, (href, name)
                    outputs[name] = await r.read()
            async with http.get(f"{base}/api/files/jobs/{job['id']}/audit.json") as r:
                record = await r.json()
            thumbs = []
            for f in job["files"]:
                async with http.get(f"{base}/api/files/jobs/{job['id']}/files/{f['n']}/thumb.jpg") as r:
                    if r.status == 200:
                        thumb = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
                        assert thumb is not None
                        thumbs.append(thumb)
        # No face the detector finds in any output; the video keeps its length.
        for name in ("front door.jpg", "yard.png"):
            img = cv2.imdecode(np.frombuffer(outputs[name], np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape[:2] == (480, 640), name
            assert faces(judge, img) == 0, name
        frames = video_frames(outputs["hall.mp4"], tmp_path / "out.mp4", every=1)
        assert len(frames) == 40
        assert [faces(judge, f) for f in frames[::4]] == [0] * 10
        # The record names each output with the SHA-256 of the bytes downloaded.
        by_name = {f["output"]["name"]: f for f in record["files"] if f.get("output")}
        assert sorted(by_name) == sorted(outputs), record["files"]
        for name, data in outputs.items():
            assert by_name[name]["output"]["sha256"] == hashlib.sha256(data).hexdigest(), name
        # What the page showed as thumbnails: anonymized pictures too.
        assert thumbs and await browser.evaluate("Object.keys(window.streamproxyFiles.thumbs).length") >= 1
        assert [faces(judge, cv2.resize(t, (640, round(640 * t.shape[0] / t.shape[1])))) for t in thumbs] == [
            0
        ] * len(thumbs)

        if os.environ.get(SCREENSHOT_ENV):
            await asyncio.sleep(1.5)  # the thumbnails decoded
            await asyncio.to_thread(Path(os.environ[SCREENSHOT_ENV]).write_bytes, await screenshot(browser))

        # A phone: nothing wider than the screen.
        await browser.viewport(390, 844, mobile=True)
        await asyncio.sleep(0.5)
        assert await browser.evaluate(OVERFLOW) <= 0
        assert await browser.evaluate(
            f"(() => {{ const r = document.querySelector('[data-job=\"{job['id']}\"]').getBoundingClientRect();"
            " return r.left >= 0 && r.right <= window.innerWidth; })()"
        )


async def screenshot(browser: Chromium) -> bytes:
    """The page as a JPEG of at most SCREENSHOT_MAX bytes (lower quality until it fits)."""
    for quality in (70, 55, 40, 30):
        shot = await browser.send("Page.captureScreenshot", {"format": "jpeg", "quality": quality})
        jpeg = base64.b64decode(shot["data"])
        if len(jpeg) <= SCREENSHOT_MAX:
            assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) is not None
            return jpeg
    raise AssertionError(f"screenshot over {SCREENSHOT_MAX} bytes even at quality 30: {len(jpeg)}")


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_files_page_cancels_a_running_job(tmp_path: Path, model_dir: Path) -> None:
    long = tmp_path / "long.mp4"
    await asyncio.to_thread(make_video, long, 200, 25, False, (1280, 720))  # the face crosses once
    async with files_page(tmp_path, model_dir) as (jobs, base), Chromium() as browser:
        await open_page(browser, base)
        await choose_files(browser, [long])
        await browser.evaluate("(document.getElementById('start').click(), true)")
        running = await wait_job(
            browser, 0, "job.files && job.files[0].state === 'running' && job.files[0].done >= 3", 120
        )
        assert running["files"][0]["total"] == 200
        job_id = running["id"]
        # The person presses "cancel job" on the job's card.
        t0 = time.monotonic()
        clicked = await browser.evaluate(
            f"(() => {{ const b = document.querySelector('[data-job=\"{job_id}\"] .job-head button.danger');"
            " if (!b) return false; b.click(); return true; })()"
        )
        assert clicked
        job = await wait_job(
            browser, 0, "job.state === 'cancelled' && job.files[0].state === 'cancelled'", 60
        )
        assert job["files"][0]["done"] < 200, job["files"][0]
        assert time.monotonic() - t0 < 60
        badge = await browser.evaluate(
            f"document.querySelector('[data-job=\"{job_id}\"] .file .badge').textContent"
        )
        assert badge == "cancelled"
        # No output, neither offered nor on disk (no temporary file left either).
        assert (
            await browser.evaluate(f"document.querySelectorAll('[data-job=\"{job_id}\"] a.dl').length") == 0
        )
        async with aiohttp.ClientSession(headers=CREDS) as http:
            async with http.get(f"{base}/api/files/jobs/{job_id}/files/0/output") as r:
                assert r.status == 404
        left = [p for p in (jobs.jobs_dir / str(job_id)).rglob("*") if p.is_file() and p.suffix == ".mp4"]
        assert left == [], left
        assert json.dumps(job)  # the page's view is plain JSON
