"""The review page in a real browser (Debian's headless Chromium over CDP, tests/browserkit.py), on the
real HTTP server with a real FileJobs and the real engine: issue #23's test.

test_review_edits_rerender_and_the_cli: a video with exact boxes: person A (a face the detector
finds, walking right), person B (found, walking left), a "poster" (a face on the wall the detector
finds, that the user says is no person) and a face the detector cannot see (seen from far, zoomed
in: square pixels). In the page: the poster's track is removed (its box clicked, "remove mask"), A kept
visible (subject access request), a box drawn on the hidden face and followed 2 s both ways (a
second keyframe drawn further on, "end here"), RE-RENDER. Then the output, frame by frame, with the
exact boxes: A shows its own pixels (most frames), the poster unmasked, the added box masks its
object in every frame of its range, B masked in every frame. The CLI with the saved
`<output>.edits.json` gives the same frames (`streamproxy anonymize IN --edits ... -o OUT2`). The
original shows only when the user (who has the role) asks for it, and the page fits a phone. The
picture comes first: with the tracks' answer held on the server, the page shows its picture, says the
tracks are loading (track edits off), then draws them when they come (the order of events, no clock). With
$STREAMPROXY_SCREENSHOT_REVIEW set, JPEGs of the page (desktop, and phone-<name>) are written there.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
import pytest
from browserkit import Chromium, needs_chromium
from facekit import FACE_IN_CROP, background, face_crop, paste_face
from webkit import files_serving

from streamproxy.types import Box

USER, PASSWORD = "dpo", "review-page-pass"
USER_ENTRY = {"username": USER, "password": PASSWORD, "originals": True}
CREDS = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
W, H, FPS, FRAMES = 960, 540, 25, 75
FACE_W = 120
SAME_MAD = 6.0  # mean |difference| inside a box under which the output shows the original's pixels
MASKED_MAD = 12.0  # ... over which the box is obfuscated
SCREENSHOT_ENV = "STREAMPROXY_SCREENSHOT_REVIEW"  # a JPEG of the page is written there (and phone-<name>)
SCREENSHOT_MAX = 160 * 1024
OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"
STATE = "window.streamproxyReview"


def a_box(i: int) -> tuple[int, int]:
    return 40 + 2 * i, 40  # person A: walking right


def b_box(i: int) -> tuple[int, int]:
    return 600 - 2 * i, 330  # person B: walking left


POSTER = (800, 30)  # on the wall: still
HIDDEN_Y = 200


def paste_lowres(img: np.ndarray, x: int, y: int, width: int) -> Box:
    """The face seen from far and zoomed in: 16 pixels across, enlarged with square pixels (a person
    still recognises a face; the detector finds none, even at score 0.15); its face box."""
    crop = face_crop()
    k = width / crop.shape[1]
    h = round(crop.shape[0] * k)
    small = cv2.resize(crop, (16, round(16 * crop.shape[0] / crop.shape[1])), interpolation=cv2.INTER_AREA)
    img[y : y + h, x : x + width] = cv2.resize(small, (width, h), interpolation=cv2.INTER_NEAREST)
    fx1, fy1, fx2, fy2 = FACE_IN_CROP
    return Box(x + fx1 * k, y + fy1 * k, x + fx2 * k, y + fy2 * k)


def make_scene(path: Path) -> dict[str, list[Box]]:
    """The test video (no audio) and every object's exact box per frame."""
    truth: dict[str, list[Box]] = {"A": [], "B": [], "poster": [], "hidden": []}
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "16"}
        for i in range(FRAMES):
            img = background(W, H, seed=5)
            truth["A"].append(paste_face(img, *a_box(i), FACE_W))
            truth["B"].append(paste_face(img, *b_box(i), FACE_W))
            truth["poster"].append(paste_face(img, *POSTER, 110))
            truth["hidden"].append(paste_lowres(img, 250 + i, HIDDEN_Y, 130))
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    return truth


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24", threads=1) for f in c.decode(video=0)]


def inner(b: Box, k: float = 0.15) -> Box:
    """The box without a margin of k of its size per side (what must be masked, whatever the shape)."""
    dx, dy = (b.x2 - b.x1) * k, (b.y2 - b.y1) * k
    return Box(b.x1 + dx, b.y1 + dy, b.x2 - dx, b.y2 - dy)


def mad(a: np.ndarray, b: np.ndarray, box: Box) -> float:
    x1, y1, x2, y2 = (round(v) for v in (box.x1, box.y1, box.x2, box.y2))
    return float(np.abs(a[y1:y2, x1:x2].astype(np.int16) - b[y1:y2, x1:x2].astype(np.int16)).mean())


def iou(a: list[float], b: Box) -> float:
    ix = max(0.0, min(a[2], b.x2) - max(a[0], b.x1))
    iy = max(0.0, min(a[3], b.y2) - max(a[1], b.y1))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def whose(track: dict[str, Any], truth: dict[str, list[Box]]) -> str | None:
    """The object a track follows: the one its boxes overlap most, over its frames."""
    score = {name: 0.0 for name in truth}
    for k, b in track["boxes"].items():
        for name, boxes in truth.items():
            score[name] += iou(b, boxes[int(k)])
    best = max(score, key=lambda n: score[n])
    return best if score[best] / max(1, len(track["boxes"])) > 0.2 else None


async def wait_state(browser: Chromium, cond: str, timeout: float, what: str) -> Any:
    value = await browser.wait_js(
        f"(() => {{ const s = {STATE}; return s && ({cond}) ? s : null; }})()", timeout
    )
    if not value:
        state = await browser.evaluate(
            f"JSON.stringify({STATE}, (k, v) => k === 'review' || k === 'doc' ? undefined : v)"
        )
        raise AssertionError(
            f"{what}: not within {timeout} s; state: {state}; console: {browser.console[-5:]}"
        )
    return value


async def click(browser: Chromium, selector: str) -> None:
    ok = await browser.evaluate(
        f"(() => {{ const b = document.querySelector({json.dumps(selector)});"
        " if (!b || b.disabled) return false; b.click(); return true; })()"
    )
    assert ok, f"{selector}: not there or disabled"


async def mouse(browser: Chromium, kind: str, x: float, y: float) -> None:
    params = {"type": kind, "x": x, "y": y, "button": "left", "buttons": 0 if kind == "mouseReleased" else 1,
              "clickCount": 1}  # fmt: skip
    if kind == "mouseMoved":
        params["clickCount"] = 0
    await browser.send("Input.dispatchMouseEvent", params)


async def screen_box(browser: Chromium, box: list[float]) -> dict[str, float]:
    """Where a box of the file is on the screen (the overlay scrolled into view first)."""
    await browser.evaluate("(document.getElementById('overlay').scrollIntoView({block: 'center'}), true)")
    rect = await browser.evaluate(f"{STATE}.toScreen({json.dumps(box)})")
    assert isinstance(rect, dict), rect
    return rect


async def click_box(browser: Chromium, box: list[float]) -> None:
    r = await screen_box(browser, box)
    x, y = (r["x1"] + r["x2"]) / 2, (r["y1"] + r["y2"]) / 2
    await mouse(browser, "mousePressed", x, y)
    await mouse(browser, "mouseReleased", x, y)


async def draw_box(browser: Chromium, box: list[float]) -> None:
    r = await screen_box(browser, box)
    await mouse(browser, "mousePressed", r["x1"], r["y1"])
    for t in (0.3, 0.7, 1.0):
        await mouse(
            browser, "mouseMoved", r["x1"] + t * (r["x2"] - r["x1"]), r["y1"] + t * (r["y2"] - r["y1"])
        )
    await mouse(browser, "mouseReleased", r["x2"], r["y2"])


async def seek(browser: Chromium, frame: int) -> None:
    await browser.evaluate(f"({STATE}.seek({frame}), true)")
    await wait_state(browser, f"s.frame === {frame}", 5, f"frame {frame}")


async def select_and(browser: Chromium, track: dict[str, Any], button: str) -> None:
    """Go to the track's first frame, click its box, press the button."""
    first = int(track["first"])
    await seek(browser, first)
    await click_box(browser, track["boxes"][str(first)][:4])
    await wait_state(browser, f"s.selected.length === 1 && s.selected[0] === {track['id']}", 5, "selected")
    await click(browser, f"#{button}")


async def screenshot(browser: Chromium) -> bytes:
    """The page as a JPEG of at most SCREENSHOT_MAX bytes (lower quality until it fits)."""
    for quality in (70, 55, 40, 30):
        shot = await browser.send("Page.captureScreenshot", {"format": "jpeg", "quality": quality})
        jpeg = base64.b64decode(shot["data"])
        if len(jpeg) <= SCREENSHOT_MAX:
            return jpeg
    raise AssertionError(f"screenshot over {SCREENSHOT_MAX} bytes even at quality 30: {len(jpeg)}")


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "streamproxy.cli", "anonymize", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_review_edits_rerender_and_the_cli(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in" / "scene.mp4"
    src.parent.mkdir()
    truth = await asyncio.to_thread(make_scene, src)
    img = background(640, 480, seed=7)
    paste_face(img, 250, 120, 170)
    cv2.imwrite(str(src.parent / "photo.jpg"), img)
    originals = await asyncio.to_thread(frames_of, src)
    assert len(originals) == FRAMES

    async with (
        files_serving(tmp_path, model_dir, [USER_ENTRY]) as (_server, jobs, base),
        Chromium() as browser,
    ):
        async with aiohttp.ClientSession(headers=CREDS) as http:
            async with http.post(
                f"{base}/api/files/jobs",
                json={
                    "inputs": [{"root": "cctv", "path": "scene.mp4"}, {"root": "cctv", "path": "photo.jpg"}]
                },
            ) as r:
                assert r.status == 201, await r.text()
                job_id = (await r.json())["id"]
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                async with http.get(f"{base}/api/files/jobs/{job_id}") as r:
                    job = await r.json()
                if job["state"] in ("done", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.5)
            assert job["state"] == "done" and [f["state"] for f in job["files"]] == ["done", "done"], job
        n = {f["name"].rsplit("/", 1)[-1]: f["n"] for f in job["files"]}
        clip, photo = n["scene.mp4"], n["photo.jpg"]
        out = jobs.output_path(job_id, clip)
        assert out is not None

        await browser.viewport(1100, 900)
        await browser.send("Network.enable")
        await browser.send("Network.setExtraHTTPHeaders", {"headers": CREDS})
        # The Files page offers the review of the finished file.
        await browser.goto(f"{base}/files", "window.streamproxyFiles && window.streamproxyFiles.polls > 0")
        href = f"/files/jobs/{job_id}/files/{clip}/review"
        assert await browser.wait_js(f"!!document.querySelector('a.review[href=\"{href}\"]')", 15)
        # The picture does not wait for the tracks: their answer is held on the server until the page
        # has shown its picture (a crowd's tracks are megabytes).
        gate, asked = threading.Event(), threading.Event()
        tracks_json = jobs.review_tracks_json

        def held_tracks(job: int, n: int) -> bytes | None:
            asked.set()
            gate.wait(120)
            return tracks_json(job, n)

        monkeypatch.setattr(jobs, "review_tracks_json", held_tracks)
        try:
            await browser.goto(base + href, f"{STATE} && {STATE}.ready")
            assert await asyncio.to_thread(asked.wait, 20), "the page did not ask for the tracks"
            before = await browser.evaluate(
                f"(() => {{ const s = {STATE}, $ = (i) => document.getElementById(i); return {{"
                " events: s.events, tracksReady: s.tracksReady, tracks: 'tracks' in s.review,"
                " note: $('lanes-note').hidden ? '' : $('lanes-note').textContent, sel: $('sel').textContent,"
                " off: ['remove', 'keep', 'only', 'next-start'].map((i) => $(i).disabled) }; })()"
            )
            assert str(before.pop("sel")).startswith("Loading the tracks"), before
            assert before == {
                "events": ["picture"],
                "tracksReady": False,
                "tracks": False,
                "note": "loading tracks…",
                "off": [True] * 4,
            }, before
        finally:
            gate.set()
        await wait_state(browser, "s.tracksReady", 30, "the tracks")
        assert await browser.evaluate(f"{STATE}.events") == ["picture", "tracks"]
        assert await browser.evaluate("document.getElementById('lanes-note').hidden") is True
        review = await browser.evaluate(f"{STATE}.review")
        assert (review["width"], review["height"], review["frames"]) == (W, H, FRAMES)
        assert await browser.evaluate(f"{STATE}.originals") is True

        # The tracks, by whose face they follow; the far face has none (the detector misses it).
        by: dict[str | None, list[dict[str, Any]]] = {}
        for t in review["tracks"]:
            by.setdefault(whose(t, truth), []).append(t)
        assert by.get("A") and by.get("B") and by.get("poster"), {k: len(v) for k, v in by.items()}
        assert not by.get("hidden"), "the detector found the far face: the test needs one it misses"
        # Every track's box is drawn on the picture with its id; the timeline has a lane per track.
        lanes = await browser.evaluate(f"document.getElementById('timeline').height > 0 && {STATE}.draws > 0")
        assert lanes

        # The poster is no person: its mask removed. A asked to see their footage: kept visible.
        for t in by["poster"]:
            await select_and(browser, t, "remove")
        for t in by["A"]:
            await select_and(browser, t, "keep")
        doc = await browser.evaluate(f"{STATE}.doc.edits")
        assert sorted((e["op"], e["track"]) for e in doc) == sorted(
            [("remove", t["id"]) for t in by["poster"]] + [("keep", t["id"]) for t in by["A"]]
        )
        # Undo and redo the last one: the same document after.
        await click(browser, "#undo")
        await wait_state(browser, f"s.doc.edits.length === {len(doc) - 1}", 5, "undo")
        await click(browser, "#redo")
        await wait_state(browser, f"s.doc.edits.length === {len(doc)}", 5, "redo")

        # The far face: add a mask, drawn on frame 10, followed 2 s both ways; corrected on 40.
        await click(browser, "#add")
        await seek(browser, 10)
        hidden = truth["hidden"]
        grow = 6.0
        await draw_box(
            browser, [hidden[10].x1 - grow, hidden[10].y1 - grow, hidden[10].x2 + grow, hidden[10].y2 + grow]
        )
        await wait_state(browser, "s.follows === 1 && !s.following && s.adding", 60, "the first follow")
        added = await browser.evaluate(f"{STATE}.doc.edits.find(e => e.op === 'add')")
        assert (added["from"], added["to"]) == (0, 10 + 2 * FPS), added
        await seek(browser, 40)
        await draw_box(
            browser, [hidden[40].x1 - grow, hidden[40].y1 - grow, hidden[40].x2 + grow, hidden[40].y2 + grow]
        )
        await wait_state(browser, "s.follows === 2 && !s.following", 60, "the second follow")
        await seek(browser, 55)
        await click(browser, "#add-end")
        await click(browser, "#add-done")
        added = await browser.evaluate(f"{STATE}.doc.edits.find(e => e.op === 'add')")
        assert (added["from"], added["to"]) == (0, 55) and sorted(map(int, added["keyframes"])) == [10, 40]
        assert sorted(map(int, added["boxes"])) == list(range(0, 56))

        # Saved as made: the server holds the page's document.
        await wait_state(
            browser,
            "s.saves >= 1 && !s.saveError && document.getElementById('saved').textContent.startsWith('saved')",
            20,
            "saved",
        )
        page_doc = await browser.evaluate(f"{STATE}.doc.edits")
        async with aiohttp.ClientSession(headers=CREDS) as http:
            async with http.get(f"{base}/api/files/jobs/{job_id}/files/{clip}/review") as r:
                stored = (await r.json())["edits"]
        assert [e["op"] for e in stored["edits"]] == [e["op"] for e in page_doc] and stored["by"] == USER
        edits_file = out.with_name(out.name + ".edits.json")
        assert json.loads(edits_file.read_text())["edits"] == stored["edits"]

        # The original: only when asked, for the paused frame.
        assert await browser.evaluate(f"{STATE}.originalFetches") == 0
        await browser.evaluate("(document.getElementById('orig-toggle').click(), true)")
        await wait_state(browser, "s.originalShown === 55", 10, "the original frame")
        await browser.evaluate("(document.getElementById('orig-toggle').click(), true)")
        await wait_state(browser, "s.originalShown === null", 5, "the original hidden")

        # RE-RENDER: from the original, with the edits; the page shows the new picture. The review video
        # is made after the output (held here until the page has shown that it waits for it).
        before = out.read_bytes()
        remake_gate = threading.Event()
        remake = jobs._remake_proxy

        def held_remake(batch: Any, job: int, n: int, dst: Path, stop: threading.Event) -> bool:
            for _ in range(2400):  # bounded: 120 s
                if remake_gate.is_set() or stop.is_set():
                    break
                time.sleep(0.05)
            return remake(batch, job, n, dst, stop)

        monkeypatch.setattr(jobs, "_remake_proxy", held_remake)
        loads = await browser.evaluate(f"{STATE}.proxyLoads")
        await click(browser, "#rerender")
        await wait_state(browser, "s.renders === 1 && s.proxyUpdating && s.review.state === 'done'", 180,
                         "the output re-rendered, the review video not yet")  # fmt: skip
        assert out.read_bytes() != before
        assert "updating the review video" in await browser.evaluate(
            "document.getElementById('render-state').textContent"
        )
        assert await browser.evaluate("document.getElementById('rerender').disabled") is True
        assert await browser.evaluate(f"{STATE}.proxyLoads") == loads, "the earlier video not reloaded as new"
        remake_gate.set()
        await wait_state(
            browser,
            f"s.renders === 1 && !s.rendering && !s.proxyUpdating && s.review.state === 'done' && s.proxyLoads > {loads}",
            180,
            "the re-render",
        )
        assert (
            await browser.evaluate("document.getElementById('render-state').textContent")
            == "re-rendered with the edits"
        )
        assert out.read_bytes() != before

        if os.environ.get(SCREENSHOT_ENV):
            await seek(browser, 30)
            await click_box(browser, by["B"][0]["boxes"]["30"][:4])
            await asyncio.sleep(1.0)  # the picture decoded
            await asyncio.to_thread(Path(os.environ[SCREENSHOT_ENV]).write_bytes, await screenshot(browser))

        # A photo's review: its anonymized output with its face's box; a zone drawn on it is saved.
        await browser.goto(
            f"{base}/files/jobs/{job_id}/files/{photo}/review",
            f"{STATE} && {STATE}.ready && {STATE}.tracksReady",
        )
        assert await browser.evaluate(f"{STATE}.kind") == "image"
        assert await browser.evaluate("document.getElementById('still').naturalWidth") == 640
        assert await browser.evaluate("document.getElementById('play').hidden") is True
        assert len(await browser.evaluate(f"{STATE}.review.tracks")) == 1
        await click(browser, "#zone")
        await draw_box(browser, [20, 20, 120, 90])
        await wait_state(
            browser, "s.saves === 1 && s.doc.edits.length === 1 && s.doc.edits[0].op === 'zone'", 10, "zone"
        )

        # A phone: nothing wider than the screen.
        await browser.viewport(390, 844, mobile=True)
        await asyncio.sleep(0.5)
        assert await browser.evaluate(OVERFLOW) <= 0
        if os.environ.get(SCREENSHOT_ENV):
            phone = Path(os.environ[SCREENSHOT_ENV])
            await asyncio.to_thread(
                phone.with_name("phone-" + phone.name).write_bytes, await screenshot(browser)
            )

    # The output, frame by frame, against the exact boxes.
    frames = await asyncio.to_thread(frames_of, out)
    assert len(frames) == FRAMES
    a_same = [mad(o, f, inner(b)) < SAME_MAD for o, f, b in zip(originals, frames, truth["A"], strict=True)]
    assert sum(a_same) >= 0.9 * FRAMES, [
        round(mad(o, f, inner(b)), 1) for o, f, b in zip(originals, frames, truth["A"], strict=True)
    ]
    poster_same = [
        mad(o, f, inner(b)) < SAME_MAD for o, f, b in zip(originals, frames, truth["poster"], strict=True)
    ]
    assert sum(poster_same) >= 0.9 * FRAMES
    b_masked = [mad(o, f, inner(b)) for o, f, b in zip(originals, frames, truth["B"], strict=True)]
    assert min(b_masked) > MASKED_MAD, [round(v, 1) for v in b_masked]
    hidden_masked = [mad(originals[i], frames[i], inner(truth["hidden"][i], 0.2)) for i in range(0, 56)]
    assert min(hidden_masked) > MASKED_MAD, [round(v, 1) for v in hidden_masked]

    # The CLI with the saved edits: the same frames.
    out2 = tmp_path / "out2"
    cli = await asyncio.to_thread(run_cli, src, "--edits", edits_file, "-o", out2, "-q")
    assert cli.returncode == 0, cli.stderr
    made = [p for p in out2.rglob("*.mp4")]
    assert len(made) == 1, made
    again = await asyncio.to_thread(frames_of, made[0])
    assert len(again) == FRAMES
    diffs = [
        float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
        for a, b in zip(frames, again, strict=True)
    ]
    assert max(diffs) < 0.5, [round(d, 2) for d in diffs]
