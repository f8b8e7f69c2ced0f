"""The review's timeline with thousands of tracks, in a real browser (Debian's headless Chromium over CDP,
tests/browserkit.py), on the real HTTP server with a real FileJobs.

A crowd video gives the review one lane per track: 15,687 tracks on a 10-minute crowd video
(bench/files_speed.py). One canvas that tall (16 px a lane: ~251,000 px) is left blank by Chromium, so
the page draws the lanes in view only. test_review_lanes_with_5000_tracks: a real job on a short video,
its review log then replaced by a synthetic one with 5,000 short tracks (3 frames each, 80,000 px of
lanes: past Chromium's 32,767 px canvas limit). The page draws the first lanes' boxes (pixels read back
from the canvas), scrolling to the bottom draws the last track's lane, and clicking that lane selects
the track and goes to the clicked frame.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from browserkit import Chromium, needs_chromium
from facekit import make_video
from webkit import files_serving

from streamproxy.files import edits as E
from streamproxy.types import Box

USER, PASSWORD = "dpo", "review-lanes-pass"
USER_ENTRY = {"username": USER, "password": PASSWORD, "originals": True}
CREDS = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}
STATE = "window.streamproxyReview"
W, H = 960, 540
TRACKS = 5000
PER_BLOCK = 25  # tracks starting together, in their own cells
BLOCK = 3  # frames each track lasts
GROUPS = 3  # cell groups taken in turn: a cell is used again only after LINK_GAP frames without it
FRAMES = TRACKS // PER_BLOCK * BLOCK
LANE, LABEL = 16, 46  # review.js's lane height and label column (CSS px)

# How many pixels of lane i the canvas shows in the masked colour (#4c8dff; -1: the lane is not in view).
# Rows of the canvas are mapped to lanes through the spacer the page scrolls (the canvas itself where the
# page has none: the whole timeline on one canvas).
LANE_PIXELS = """((i) => {
  const c = document.getElementById('timeline');
  const sp = document.getElementById('lanes-space') || c;
  const r = c.getBoundingClientRect();
  const k = c.height / r.height;
  const y = Math.floor((i * 16 + 8 - (r.top - sp.getBoundingClientRect().top)) * k);
  if (y < 0 || y >= c.height) return -1;
  let d;
  try { d = c.getContext('2d').getImageData(0, y, c.width, 1).data; } catch (e) { return -2; }
  let n = 0;
  for (let p = Math.ceil(46 * k) * 4; p < d.length; p += 4) if (d[p + 2] - d[p] > 100) n++;
  return n;
})"""


def cell(group: int, j: int) -> Box:
    """The box of cell j (0..PER_BLOCK-1) of a group: GROUPS x PER_BLOCK cells that never overlap."""
    k = group * PER_BLOCK + j
    col, row = k % 15, k // 15
    x, y = col * 64 + 8, row * 100 + 20
    return Box(x, y, x + 48, y + 60)


def crowd_log(review_dir: Path) -> list[E.ReviewTrack]:
    """A review log of TRACKS tracks of BLOCK frames each, PER_BLOCK at a time; its linked tracks."""
    frames = []
    for i in range(FRAMES):
        group = (i // BLOCK) % GROUPS
        masks = tuple(cell(group, j) for j in range(PER_BLOCK))
        frames.append(E.ReviewFrame(i=i, pts=i * 512, masks=masks, dets=tuple((m, 0.9) for m in masks)))
    head = {"kind": "video", "width": W, "height": H, "fps": 25.0, "rate": "25/1", "time_base": "1/12800"}
    E.write_log(review_dir, head, frames, "cd" * 32)
    return E.link_tracks(E.read_log(review_dir))


async def lane_pixels(browser: Chromium, i: int) -> int:
    n = await browser.evaluate(f"{LANE_PIXELS}({i})")
    assert isinstance(n, int), n
    return n


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_review_lanes_with_5000_tracks(tmp_path: Path, model_dir: Path) -> None:
    src = tmp_path / "in" / "crowd.mp4"
    src.parent.mkdir()
    await asyncio.to_thread(make_video, src, 10, 25, False, (320, 180))

    async with (
        files_serving(tmp_path, model_dir, [USER_ENTRY]) as (_server, jobs, base),
        Chromium() as browser,
    ):
        async with aiohttp.ClientSession(headers=CREDS) as http:
            async with http.post(
                f"{base}/api/files/jobs", json={"inputs": [{"root": "cctv", "path": "crowd.mp4"}]}
            ) as r:
                assert r.status == 201, await r.text()
                job_id = (await r.json())["id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                async with http.get(f"{base}/api/files/jobs/{job_id}") as r:
                    job = await r.json()
                if job["state"] in ("done", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.3)
            assert job["state"] == "done" and [f["state"] for f in job["files"]] == ["done"], job
        n = job["files"][0]["n"]
        # The crowd: the run's log replaced by one with TRACKS tracks (the page reads the log, the
        # picture stays the short video's proxy).
        tracks = await asyncio.to_thread(crowd_log, jobs.review_dir(job_id, n))
        assert len(tracks) == TRACKS and all(len(t.boxes) == BLOCK for t in tracks)
        last_t = tracks[-1]

        await browser.viewport(1100, 900)
        await browser.send("Network.enable")
        await browser.send("Network.setExtraHTTPHeaders", {"headers": CREDS})
        await browser.goto(
            f"{base}/files/jobs/{job_id}/files/{n}/review", f"{STATE} && {STATE}.tracksReady", timeout=60
        )
        assert await browser.evaluate(f"{STATE}.review.tracks.length") == TRACKS
        assert await browser.evaluate(f"{STATE}.frames") == FRAMES

        # The first lanes, in view: their boxes drawn; a lane far below the view is not.
        assert await lane_pixels(browser, 0) > 0, "the first track's lane is empty"
        assert await lane_pixels(browser, 1) > 0
        assert await lane_pixels(browser, TRACKS - 1) == -1

        # Scrolled to the bottom: the last lanes drawn.
        await browser.evaluate("(document.getElementById('lanes').scrollTop = 1e9, true)")
        drawn = await browser.wait_js(f"{LANE_PIXELS}({TRACKS - 1}) > 0", 10)
        assert drawn, (
            f"the last track's lane is empty after scrolling: {await lane_pixels(browser, TRACKS - 1)}"
        )
        assert await lane_pixels(browser, 0) == -1

        # A click on the last lane, in the middle of its boxes: that track selected, its frame shown.
        mid = (last_t.first + last_t.last) / 2
        at = await browser.evaluate(
            "(() => { document.getElementById('lanes').scrollIntoView({block: 'end'});"
            " const c = document.getElementById('timeline'), r = c.getBoundingClientRect();"
            " const sp = document.getElementById('lanes-space') || c;"
            f" const px = (r.width - {LABEL}) / {STATE}.frames;"
            f" return {{x: r.left + {LABEL} + ({mid} + 0.5) * px,"
            f" y: sp.getBoundingClientRect().top + {(TRACKS - 1) * LANE + LANE // 2}}}; }})()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await browser.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": at["x"], "y": at["y"], "button": "left", "clickCount": 1},
            )
        got = await browser.wait_js(
            f"{STATE}.selected.length === 1 && {STATE}.selected[0] === {last_t.id}", 5
        )
        assert got, f"selected {await browser.evaluate(f'{STATE}.selected')}, not track {last_t.id}"
        frame = await browser.evaluate(f"{STATE}.frame")
        assert last_t.first - 2 <= frame <= last_t.last + 2, (frame, last_t.first, last_t.last)
        assert await lane_pixels(browser, TRACKS - 1) > 0, "the selected lane is drawn"

        # Only the lanes in view were drawn, on a canvas no taller than the view.
        lanes = await browser.evaluate(f"{STATE}.lanes")
        assert lanes["rows"] == TRACKS and lanes["height"] == TRACKS * LANE, lanes
        assert (
            lanes["first"] + lanes["drawn"] == TRACKS
            and 0 < lanes["drawn"] * LANE <= lanes["view"] + 2 * LANE
        )
        box_h = await browser.evaluate("document.getElementById('lanes').clientHeight")
        assert (
            await browser.evaluate("document.getElementById('timeline').getBoundingClientRect().height")
            <= box_h
        )
