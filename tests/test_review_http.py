"""The review's HTTP API (serve/http/review.py) on a real server on 127.0.0.1, around a real FileJobs
running the real engine (anonymize.Batch, YuNet): a job of a short video with a real face and a photo.

* test_review_routes: every route's answers: 401 without credentials, 404 for an unknown job or file,
  the page and its data (size, fps, frames, tracks), the proxy with Range requests (206), edits saved
  as made (400 naming the key, 403 cross-site, `<output>.edits.json` beside the output), follow
  (400 naming the key, a box per frame of the range), re-render (202, "rendering" then "done", the
  output replaced), the original frame for a user with the role (200, on the audit record), a photo.
* test_no_original_pixels_without_the_role: a user without the `originals` role goes through a whole
  review session (every route the page and the Files page use, the proxy whole and in ranges, the
  output, the thumbnail, edits, follow, re-render): 403 for the original frame and file, logged; and
  no picture or video any route returned shows the original's face pixels (each decoded and compared
  with every frame of the original where the face is), while the original frame a user with the role
  gets does (the comparison is not vacuous).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
import pytest
from facekit import background, make_video, paste_face
from webkit import files_serving

from streamproxy.files.manager import FileJobs
from streamproxy.serve.http.server import WebServer
from streamproxy.types import Box

DPO, VIEWER, PASSWORD = "dpo", "viewer", "review-pass"
AUTH = {u: {"Authorization": aiohttp.encode_basic_auth(u, PASSWORD)} for u in (DPO, VIEWER)}
FRAMES = 40
LEAK_MAD = 10.0  # mean |difference| inside the face box under which a picture IS the original there
ROUTES = [  # the review's routes, for job {j} file {n}
    ("GET", "/files/jobs/{j}/files/{n}/review"),
    ("GET", "/api/files/jobs/{j}/files/{n}/review"),
    ("GET", "/api/files/jobs/{j}/files/{n}/review?tracks=0"),
    ("GET", "/api/files/jobs/{j}/files/{n}/review/tracks"),
    ("GET", "/api/files/jobs/{j}/files/{n}/proxy.mp4"),
    ("PUT", "/api/files/jobs/{j}/files/{n}/edits"),
    ("POST", "/api/files/jobs/{j}/files/{n}/follow"),
    ("POST", "/api/files/jobs/{j}/files/{n}/rerender"),
    ("GET", "/api/files/jobs/{j}/files/{n}/original/0.jpg"),
]


def review_server(
    tmp_path: Path, model_dir: Path
) -> contextlib.AbstractAsyncContextManager[tuple[WebServer, FileJobs, str]]:
    """The HTTP server with users dpo (originals role) and viewer (none), root "cctv" = tmp/in."""
    users: list[dict[str, Any]] = [
        {"username": DPO, "password": PASSWORD, "originals": True},
        {"username": VIEWER, "password": PASSWORD},
    ]
    return files_serving(tmp_path, model_dir, users)


def make_inputs(folder: Path) -> list[Box]:
    """clip.mp4 (FRAMES frames, 640x360, the real face moving) and photo.jpg; the clip's face boxes."""
    folder.mkdir(parents=True)
    boxes = make_video(folder / "clip.mp4", FRAMES, 25, False)
    img = background(640, 480, seed=3)
    paste_face(img, 200, 100, 180)
    cv2.imwrite(str(folder / "photo.jpg"), img)
    return boxes


async def wait_for(
    get: Callable[[], Any], cond: Callable[[Any], bool], timeout: float, what: str
) -> Any:  # fmt: skip
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await get()
        if cond(value):
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s: {value}")


async def run_job(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """START on the clip and the photo (the job's own folder for outputs), until done."""
    inputs = [{"root": "cctv", "path": "clip.mp4"}, {"root": "cctv", "path": "photo.jpg"}]
    async with http.post(f"{base}/api/files/jobs", json={"inputs": inputs, "output": None}) as r:
        assert r.status == 201, await r.text()
        job_id = (await r.json())["id"]

    async def get() -> dict[str, Any]:
        async with http.get(f"{base}/api/files/jobs/{job_id}") as r:
            return dict(await r.json())

    job = await wait_for(get, lambda j: j["state"] in ("done", "failed", "cancelled"), 240, "the job")
    assert job["state"] == "done" and [f["state"] for f in job["files"]] == ["done", "done"], job
    return job


def numbered(job: dict[str, Any]) -> tuple[int, int]:
    """The clip's and the photo's file numbers."""
    by = {f["name"].rsplit("/", 1)[-1]: f["n"] for f in job["files"]}
    return by["clip.mp4"], by["photo.jpg"]


async def review_of(http: aiohttp.ClientSession, base: str, job_id: int, n: int) -> dict[str, Any]:
    async with http.get(f"{base}/api/files/jobs/{job_id}/files/{n}/review") as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


def decoded(data: bytes) -> list[np.ndarray]:
    """Every picture in a body: an image, or a video's frames ([] when it is neither)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is not None:
        return [img]
    try:
        with av.open(io.BytesIO(data), "r") as c:
            if not c.streams.video:
                return []
            return [f.to_ndarray(format="bgr24", threads=1) for f in c.decode(video=0)]
    except (av.error.FFmpegError, ValueError):
        return []


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24", threads=1) for f in c.decode(video=0)]


def mad(a: np.ndarray, b: np.ndarray, box: Box) -> float:
    x1, y1, x2, y2 = (round(v) for v in (box.x1, box.y1, box.x2, box.y2))
    return float(np.abs(a[y1:y2, x1:x2].astype(np.int16) - b[y1:y2, x1:x2].astype(np.int16)).mean())


def closest_original(pic: np.ndarray, originals: list[np.ndarray], boxes: list[Box]) -> float:
    """How close a picture comes to the original's face: the smallest mean difference inside the face
    box over every frame of the original (a picture of another size is scaled to the original's)."""
    h, w = originals[0].shape[:2]
    if pic.shape[:2] != (h, w):
        pic = cv2.resize(pic, (w, h), interpolation=cv2.INTER_AREA)
    return min(mad(pic, o, b) for o, b in zip(originals, boxes, strict=True))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_review_routes(tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamproxy.serve.http")
    boxes = await asyncio.to_thread(make_inputs, tmp_path / "in")
    async with (
        review_server(tmp_path, model_dir) as (server, jobs, base),
        aiohttp.ClientSession(headers=AUTH[DPO]) as http,
    ):
        job = await run_job(http, base)
        job_id = job["id"]
        clip, photo = numbered(job)
        api = f"{base}/api/files/jobs/{job_id}/files/{clip}"

        # No credentials: 401 on every route, nothing of the file in the answer.
        async with aiohttp.ClientSession() as anon:
            for method, path in ROUTES:
                async with anon.request(method, base + path.format(j=job_id, n=clip), json={}) as r:
                    assert r.status == 401, (path, r.status)
                    assert "clip" not in await r.text()
        # Unknown jobs and files: 404 on every route.
        for j, n in [(999, 0), (job_id, 7), ("abc", 0), (job_id, "x")]:
            for method, path in ROUTES:
                async with http.request(method, base + path.format(j=j, n=n), json={}) as r:
                    assert r.status == 404, (method, path, j, n, r.status)

        # The page: our own assets only.
        async with http.get(f"{base}/files/jobs/{job_id}/files/{clip}/review") as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
            assert "/static/review.js" in page and "http://" not in page and "https://" not in page
        async with http.get(f"{base}/static/review.js") as r:
            js = await r.text()
            assert r.status == 200 and "streamproxyReview" in js
            assert "http://" not in js and "https://" not in js

        # Its data: the clip's size, rate and length; tracks of the face with a box per frame.
        review = await review_of(http, base, job_id, clip)
        assert (review["kind"], review["width"], review["height"], review["frames"]) == (
            "video",
            640,
            360,
            FRAMES,
        )
        assert abs(review["fps"] - 25) < 0.01 and review["state"] == "done" and review["originals"] is True
        assert review["reviewable"] is True and review["proxy"] is True and review["proxy_updating"] is False
        tracks = review["tracks"]
        assert tracks and all(t["boxes"] for t in tracks), tracks
        face_track = max(tracks, key=lambda t: len(t["boxes"]))
        assert len(face_track["boxes"]) >= FRAMES // 2
        for k, b in face_track["boxes"].items():  # where the face is
            x1, y1, x2, y2, score = b
            gt = boxes[int(k)]
            assert x1 < gt.x2 and gt.x1 < x2 and y1 < gt.y2 and gt.y1 < y2, (k, b, gt)
            assert 0 <= score <= 1
        async with aiohttp.ClientSession(headers=AUTH[VIEWER]) as viewer:
            assert (await review_of(viewer, base, job_id, clip))["originals"] is False
        # What the page asks first: the same without the tracks; then the tracks alone (gzip when taken).
        async with http.get(f"{api}/review", params={"tracks": "0"}) as r:
            assert r.status == 200, await r.text()
            short = await r.json()
        assert "tracks" not in short and short == {k: v for k, v in review.items() if k != "tracks"}
        async with http.get(f"{api}/review", params={"tracks": "yes"}) as r:
            assert r.status == 400 and "tracks" in await r.text()
        async with http.get(f"{api}/review/tracks") as r:  # aiohttp asks for gzip and unpacks it
            assert r.status == 200 and r.content_type == "application/json"
            assert r.headers.get("Content-Encoding") == "gzip"
            assert (await r.json())["tracks"] == tracks
        async with http.get(f"{api}/review/tracks", headers={"Accept-Encoding": "identity"}) as r:
            assert r.status == 200 and "Content-Encoding" not in r.headers
            assert json.loads(await r.read())["tracks"] == tracks

        # The proxy: an MP4 of the clip's frames, answering Range requests (the player seeks).
        async with http.get(f"{api}/proxy.mp4") as r:
            assert r.status == 200 and r.content_type == "video/mp4"
            proxy = await r.read()
        assert len(decoded(proxy)) == FRAMES
        size = len(proxy)
        async with http.get(f"{api}/proxy.mp4", headers={"Range": "bytes=0-99"}) as r:
            assert r.status == 206 and r.headers["Content-Range"] == f"bytes 0-99/{size}"
            assert await r.read() == proxy[:100]
        async with http.get(f"{api}/proxy.mp4", headers={"Range": f"bytes={size // 2}-"}) as r:
            assert r.status == 206 and await r.read() == proxy[size // 2 :]

        # Edits: the whole document, saved as made; 400 naming the key; cross-site refused.
        out = jobs.output_path(job_id, clip)
        assert out is not None
        edits_file = out.with_name(out.name + ".edits.json")
        for body, word in [
            ({"format": "streamproxy-edits/1", "edits": [{"op": "remove", "track": 9999}]}, "edits[0]"),
            ({"format": "streamproxy-edits/1", "edits": [{"op": "paint"}]}, "edits[0]"),
            ([1, 2], "object"),
        ]:
            async with http.put(f"{api}/edits", json=body) as r:
                text = await r.text()
                assert r.status == 400 and word in text, (body, r.status, text)
        async with http.put(f"{api}/edits", data=b"{no", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and "JSON" in await r.text()
        async with http.put(f"{api}/edits", data={"edits": "x"}) as r:
            assert r.status == 400 and "JSON" in await r.text()
        doc = {"format": "streamproxy-edits/1", "edits": [{"op": "remove", "track": face_track["id"]}]}
        async with http.put(f"{api}/edits", json=doc, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403 and "cross-site" in await r.text()
        assert not edits_file.exists()
        async with http.put(f"{api}/edits", json=doc) as r:
            assert r.status == 200, await r.text()
            stored = await r.json()
        assert stored["by"] == DPO and [e["op"] for e in stored["edits"]] == ["remove"]
        assert (
            edits_file.is_file()
            and (await review_of(http, base, job_id, clip))["edits"]["edits"] == stored["edits"]
        )

        # Follow: a drawn box, a box per frame of its range back; 400 naming the key.
        gt = boxes[10]
        drawn = [gt.x1, gt.y1, gt.x2, gt.y2]
        follows: list[tuple[Any, str]] = [
            ({"frame": "ten", "box": drawn}, "frame"),
            ({"frame": FRAMES + 5, "box": drawn}, "frame"),
            ({"frame": 10, "box": [1, 2, 3]}, "box"),
            ({"frame": 10, "box": [50, 50, 10, 10]}, "box"),
            ({"frame": 10, "box": drawn, "start": 12, "end": 20}, "frame"),
            ({"frame": 10, "box": drawn, "start": 5, "end": 20, "keyframes": {"30": drawn}}, "keyframes"),
            ({"frame": 10, "box": drawn, "end": 5, "start": 8}, "end"),
            ({"frame": 10, "box": drawn, "keyframes": {"x": drawn}}, "keyframes"),
            ({"frame": 10, "box": drawn, "colour": 1}, "colour"),
        ]
        for body, word in follows:
            async with http.post(f"{api}/follow", json=body) as r:
                text = await r.text()
                assert r.status == 400 and word in text, (body, r.status, text)
        async with http.post(
            f"{api}/follow", json={"frame": 10, "box": drawn}, headers={"Origin": "http://evil.example"}
        ) as r:
            assert r.status == 403
        async with http.post(f"{api}/follow", json={"frame": 10, "box": drawn, "start": 4, "end": 20}) as r:
            assert r.status == 200, await r.text()
            followed = (await r.json())["boxes"]
        assert sorted(map(int, followed)) == list(range(4, 21))
        near = sum(1 for k, b in followed.items() if abs(b[0] - boxes[int(k)].x1) < 20)
        assert near >= 14, followed  # it follows the moving face

        # The original frame: for the role only; each access on the job's audit record.
        async with http.get(f"{api}/original/5.jpg") as r:
            assert r.status == 200 and r.content_type == "image/jpeg"
            assert (await r.read())[:2] == b"\xff\xd8"
        async with http.get(f"{api}/original/5.jpg", headers={"Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
        async with http.get(f"{api}/original/{FRAMES + 3}.jpg") as r:
            assert r.status == 404
        async with aiohttp.ClientSession(headers=AUTH[VIEWER]) as viewer:
            async with viewer.get(f"{api}/original/6.jpg") as r:
                assert r.status == 403 and "originals" in await r.text()
        assert any("ORIGINAL frame" in m and VIEWER in m and "refused" in m for m in caplog.messages)
        async with http.get(f"{base}/api/files/jobs/{job_id}/audit.json") as r:
            views = (await r.json())["original_views"]
        assert [(v["user"], v["what"]) for v in views] == [(DPO, "original frame 5")], views

        # Re-render: 202, the file "rendering" then "done", the output replaced (the face now shown).
        before = hashlib.sha256(out.read_bytes()).hexdigest()
        async with http.post(f"{api}/rerender", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with http.post(f"{api}/rerender") as r:
            assert r.status == 202, await r.text()
            assert (await r.json())["state"] == "rendering"
        seen: list[str] = []

        async def state() -> str:
            s = str((await review_of(http, base, job_id, clip))["state"])
            seen.append(s)
            return s

        await wait_for(state, lambda s: s == "done", 120, "the re-render")
        assert hashlib.sha256(out.read_bytes()).hexdigest() != before

        # Then the review video, made again from the new output (the page waits for proxy_updating).
        async def first_answer() -> dict[str, Any]:
            async with http.get(f"{api}/review?tracks=0") as r:
                assert r.status == 200
                return dict(await r.json())

        await wait_for(first_answer, lambda rv: rv["proxy_updating"] is False, 120, "the review video")
        async with http.get(f"{api}/proxy.mp4") as r:
            assert r.status == 200
            new_proxy = await r.read()
        assert new_proxy != proxy and len(decoded(new_proxy)) == FRAMES, "the review video of the edits"
        after = await review_of(http, base, job_id, clip)
        assert after["error"] in ("", None)
        async with http.get(f"{api}/review/tracks") as r:  # the kept answer is still the review's
            assert r.status == 200 and (await r.json())["tracks"] == after["tracks"]
        assert any("asked to re-render" in m and DPO in m for m in caplog.messages)

        # A photo: its anonymized output is its review picture; nothing to follow.
        review = await review_of(http, base, job_id, photo)
        assert review["kind"] == "image" and review["originals"] is True
        async with http.get(f"{base}/api/files/jobs/{job_id}/files/{photo}/proxy.mp4") as r:
            assert r.status == 200 and r.content_type == "image/jpeg"
            assert decoded(await r.read())[0].shape[:2] == (480, 640)
        async with http.post(
            f"{base}/api/files/jobs/{job_id}/files/{photo}/follow", json={"frame": 0, "box": [10, 10, 50, 50]}
        ) as r:
            assert r.status in (400, 404), await r.text()
        assert server.refused.count > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_no_original_pixels_without_the_role(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamproxy.serve.http")
    boxes = await asyncio.to_thread(make_inputs, tmp_path / "in")
    original_bytes = (tmp_path / "in" / "clip.mp4").read_bytes()
    originals = await asyncio.to_thread(frames_of, tmp_path / "in" / "clip.mp4")
    assert len(originals) == FRAMES
    async with (
        review_server(tmp_path, model_dir) as (_server, jobs, base),
        aiohttp.ClientSession(headers=AUTH[VIEWER]) as http,
    ):
        job = await run_job(http, base)
        job_id = job["id"]
        clip, photo = numbered(job)
        api = f"{base}/api/files/jobs/{job_id}/files/{clip}"
        bodies: list[tuple[str, int, bytes]] = []  # every answer of the session: (what, status, body)

        async def call(method: str, url: str, **kw: Any) -> tuple[int, bytes]:
            async with http.request(method, url, **kw) as r:
                body = await r.read()
            bodies.append((f"{method} {url} {kw.get('headers', '')}", r.status, body))
            return r.status, body

        # What the page loads, and what the person does in it.
        assert (await call("GET", f"{base}/files/jobs/{job_id}/files/{clip}/review"))[0] == 200
        for asset in ("review.js", "style.css", "files.js"):
            assert (await call("GET", f"{base}/static/{asset}"))[0] == 200
        status, body = await call("GET", f"{api}/review?tracks=0")
        review = json.loads(body)
        assert status == 200 and review["originals"] is False
        status, body = await call("GET", f"{api}/review/tracks")
        assert status == 200 and json.loads(body)["tracks"]
        status, body = await call("GET", f"{api}/review")
        assert status == 200 and json.loads(body)["originals"] is False
        status, proxy = await call("GET", f"{api}/proxy.mp4")
        assert status == 200 and len(decoded(proxy)) == FRAMES
        pieces = []
        for start in range(0, len(proxy), 4096):  # the player's seeks, range by range
            status, piece = await call(
                "GET", f"{api}/proxy.mp4", headers={"Range": f"bytes={start}-{start + 4095}"}
            )
            assert status == 206
            pieces.append(piece)
        assert b"".join(pieces) == proxy
        for frame in (0, 10, FRAMES - 1):
            status, _ = await call("GET", f"{api}/original/{frame}.jpg")
            assert status == 403
        # An edit that masks more (a zone): every picture the service makes stays anonymized.
        doc = {"format": "streamproxy-edits/1", "edits": [{"op": "zone", "box": [0, 0, 60, 40]}]}
        assert (await call("PUT", f"{api}/edits", json=doc))[0] == 200
        gt = boxes[20]
        status, _ = await call(
            "POST", f"{api}/follow", json={"frame": 20, "box": [gt.x1, gt.y1, gt.x2, gt.y2]}
        )
        assert status == 200
        assert (await call("POST", f"{api}/rerender"))[0] == 202

        async def state() -> str:
            _status, body = await call("GET", f"{api}/review")
            return str(json.loads(body)["state"])

        await wait_for(state, lambda s: s == "done", 120, "the re-render")
        await call("GET", f"{api}/proxy.mp4")
        # And what the Files page offers around it.
        for path in (
            f"/api/files/jobs/{job_id}",
            f"/api/files/jobs/{job_id}/files/{clip}/thumb.jpg",
            f"/api/files/jobs/{job_id}/files/{clip}/output",
            f"/api/files/jobs/{job_id}/files/{clip}/input?confirm=1",
            f"/api/files/jobs/{job_id}/files/{clip}/input?confirm=1&inline=1",
            f"/api/files/jobs/{job_id}/files/{photo}/proxy.mp4",
            f"/api/files/jobs/{job_id}/files/{photo}/original/0.jpg",
            f"/api/files/jobs/{job_id}/audit.json",
            f"/files/jobs/{job_id}/report",
        ):
            await call("GET", base + path)
        assert [s for w, s, _ in bodies if "/input?" in w or "/original/" in w] == [403] * 6
        assert sum(1 for m in caplog.messages if "ORIGINAL frame" in m and "refused" in m) >= 4

        # No answer holds the original file; no picture or video answered shows the original's face.
        pictures = 0
        for what, status, body in bodies:
            assert original_bytes not in body, what
            if status != 200:
                continue
            for pic in decoded(body):
                pictures += 1
                closest = closest_original(pic, originals, boxes)
                assert closest > LEAK_MAD, (what, closest)
        assert pictures >= 3 * FRAMES + 2  # the proxy twice, the output, the thumbnail, the photo

        # Not vacuous: the original frame a user with the role gets IS the original there.
        async with aiohttp.ClientSession(headers=AUTH[DPO]) as dpo:
            async with dpo.get(f"{api}/original/10.jpg") as r:
                assert r.status == 200
                seen = decoded(await r.read())
        assert closest_original(seen[0], originals, boxes) < LEAK_MAD
        assert jobs.output_path(job_id, clip) is not None
