"""The grid's service side: tile pictures (`snapshot.jpg?w=`: once per frame and size, ETag/304,
fail closed), the health ring (serve/http/history.py: bounded, rates from the single counters,
nothing stale while down), the privacy state in words, and `/api/history`; on the real HTTP server
around the test doubles of tests/webkit.py (no camera, no browser: tests/test_grid_browser.py)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import cv2
import numpy as np
import pytest
from webkit import make_cfg, serving, synthetic_frame

from streamproxy.serve.http.history import FIELDS, History, privacy_state
from streamproxy.serve.http.server import tile_width
from streamproxy.status import DetectorStatus, DropCounts, LatencyStatus, PipelineStatus, ViewerCounts


def status(
    state: str = "live",
    *,
    overload: int = 0,
    late: int = 0,
    fail_closed: int = 0,
    widened: int = 0,
    keep_ratio: float = 1.0,
    detect_every: int = 1,
    input_width: int = 1280,
    error: str | None = None,
) -> PipelineStatus:
    live = state == "live"
    return PipelineStatus(
        name="cam",
        state=state,
        reason=None if live else "stalled",
        fps_in=25.0 if live else 0.0,
        fps_out=25.0 * keep_ratio if live else 0.0,
        fps_camera=25.0 if live else None,
        frames_in=0,
        frames_out=0,
        dropped=DropCounts(latency_budget=late, overload=overload),
        fail_closed_frames=fail_closed,
        widened_frames=widened,
        faces=2 if live else None,
        tracks=2 if live else None,
        latency_ms=LatencyStatus(40.0, 90.0, 200.0) if live else LatencyStatus(None, None, 200.0),
        overloaded=keep_ratio < 1 if live else None,
        keep_ratio=keep_ratio,
        detector=DetectorStatus("yunet", detect_every, input_width, 3, 960, keep_ratio, error),
        privacy_floor=None,
        resolution=(1280, 720),
        viewers=ViewerCounts(0, 0),
        reconnects=0,
    )


def test_history_rates_gaps_and_bounds() -> None:
    h = History(samples=5)
    h.record({"cam": status(overload=10, fail_closed=4, widened=1)}, wall=1000.0, now=0.0)
    h.record({"cam": status(overload=30, late=10, fail_closed=8, widened=3)}, wall=1002.0, now=2.0)
    out = h.since(0, ["cam"])
    cam = out["cameras"]["cam"]
    assert list(cam) == list(FIELDS) and out["t"] == [1000.0, 1002.0] and out["seq"] == 2
    # The first tick has no rate (nothing to take the difference from); then per second over the tick.
    assert (
        cam["dropped"] == [None, 15.0]
        and cam["failed_closed"] == [None, 2.0]
        and cam["widened"] == [None, 1.0]
    )
    assert cam["fps_in"] == [25.0, 25.0] and cam["p99"] == [90.0, 90.0] and cam["faces"] == [2, 2]
    # Down: no latency or faces (a gap in the plot, not the last session's values), live 0.
    h.record({"cam": status("reconnecting", overload=30, late=10, fail_closed=8, widened=3)}, 1004.0, 4.0)
    # The engine rebuilt (a new frame size): its counters start again, and count from zero.
    h.record({"cam": status(overload=30, late=10, fail_closed=2, widened=3)}, 1006.0, 6.0)
    cam = h.since(2, ["cam"])["cameras"]["cam"]
    assert cam["live"] == [0, 1] and cam["p50"] == [None, 40.0] and cam["faces"] == [None, 2]
    assert cam["fps_out"] == [0.0, 25.0] and cam["failed_closed"] == [0.0, 1.0]
    assert h.recent_failed_closed("cam") == 4 + 2
    # Bounded: the ring keeps its last 5 ticks, and a `since` it no longer holds gets all it has.
    for i in range(10):
        h.record({"cam": status(), "other": None}, 1008.0 + 2 * i, 8.0 + 2 * i)
    everything = h.since(0, ["cam", "other"])
    assert len(everything["t"]) == 5 and everything["seq"] == 14
    assert everything["cameras"]["other"]["fps_in"] == [None] * 5  # its snapshot failed: no sample
    assert h.since(14, ["cam"])["t"] == [] and len(h.since(99, ["cam"])["t"]) == 5  # 99: a restarted service
    assert h.recent_failed_closed("cam") == 0


def test_privacy_state_in_words() -> None:
    assert privacy_state(None, "obfuscate") == ("unknown", "status unavailable (see the log)")
    assert privacy_state(status(error="model file missing"), "obfuscate") == (
        "failed",
        "detector failed: every frame blurred whole",
    )
    assert privacy_state(status(error="x"), "drop")[1] == "detector failed: every frame dropped"
    assert privacy_state(status("reconnecting"), "obfuscate")[0] == "down"
    assert privacy_state(status(), "obfuscate") == (
        "protected",
        "above the floor: detector every frame at 1280 px",
    )
    floor = status(detect_every=3, input_width=960)
    assert privacy_state(floor, "obfuscate") == ("floor", "at the floor: detector every 3 frames at 960 px")
    shedding = status(detect_every=3, input_width=960, keep_ratio=0.8)
    assert privacy_state(shedding, "obfuscate") == ("shedding", "at the floor, shedding 20 %")
    level, text = privacy_state(floor, "drop", failed_closed_recent=12)
    assert level == "floor" and text.endswith("; 12 frames failed closed (dropped) in the last minute")


def test_tile_widths_round_up_and_never_scale_up() -> None:
    assert [tile_width(w, 1280) for w in (1, 160, 161, 320, 500, 640, 641, 5000)] == [
        160, 160, 320, 320, 640, 640, 0, 0,
    ]  # fmt: skip
    assert tile_width(300, 320) == 0 and tile_width(300, 640) == 320  # 0: the frame as it is


def _jpeg_size(body: bytes) -> tuple[int, int]:
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img.shape[1], img.shape[0]


@pytest.mark.timeout(30)
async def test_tiles_are_encoded_once_per_frame_and_size_and_answer_304(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        serving(make_cfg(cameras=("cam1", "cam2")), feed=False) as (app, server, base),
        aiohttp.ClientSession() as http,
    ):
        url = f"{base}/api/cameras/cam1/snapshot.jpg"
        # Twenty viewers at once ask for the same tile: one encode serves them all.
        replies = await asyncio.gather(*(http.get(f"{url}?w=160") for _ in range(20)))
        bodies = {await r.read() for r in replies}
        assert {r.status for r in replies} == {200} and len(bodies) == 1 and server.encodes == 1
        first = replies[0]
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"] == "no-store" and first.content_type == "image/jpeg"
        assert _jpeg_size(bodies.pop()) == (160, 120)
        # A viewer that has this frame gets a 304: nothing encoded, nothing sent.
        async with http.get(f"{url}?w=160", headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and r.headers["ETag"] == etag and await r.read() == b""
        # Another width is another picture: 200 rounds up to 320, the frame's own width, so it is the
        # full frame, the same picture (and ETag) as a snapshot without `w`.
        async with http.get(f"{url}?w=200") as r:
            assert r.status == 200 and r.headers["ETag"] != etag
            assert _jpeg_size(await r.read()) == (320, 240)
            full_etag = r.headers["ETag"]
        async with http.get(url) as r:
            assert r.status == 200 and r.headers["ETag"] == full_etag
        assert server.encodes == 2
        # A new frame: a new ETag, so the viewer's old one no longer matches.
        app.cameras["cam1"].latest = synthetic_frame(7)
        async with http.get(f"{url}?w=160", headers={"If-None-Match": etag}) as r:
            assert r.status == 200 and r.headers["ETag"] != etag and server.encodes == 3
        # Fail closed: no recent frame, no picture (and no ETag an old one could be kept under).
        app.cameras["cam2"].latest = None
        async with http.get(f"{base}/api/cameras/cam2/snapshot.jpg?w=320") as r:
            assert r.status == 503 and "ETag" not in r.headers and r.headers["Cache-Control"] == "no-store"
        with caplog.at_level(logging.INFO, "streamproxy.serve.http.server"):
            for bad in ("0", "-5", "abc", "123456"):
                async with http.get(f"{url}?w={bad}") as r:
                    assert r.status == 400, bad
            async with http.get(f"{base}/api/cameras/nope/snapshot.jpg?w=320") as r:
                assert r.status == 404
        # Refused, and said so: every refusal counted, the first at once in the log (the rest of the
        # burst in one line a second later: a scan is not a log flood).
        assert server.refused.count == 5
        refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("http: 400 for GET")]
        assert refused and "snapshot.jpg?w=0" in refused[0], refused
        # Pictures nobody asks for are let go at the next tick.
        for pictures in server._pictures.values():
            pictures.used -= 60
        server.sample()
        assert not server._pictures


@pytest.mark.timeout(30)
async def test_history_and_privacy_endpoints() -> None:
    async with (
        serving(make_cfg(cameras=("cam1", "cam2")), feed=False) as (app, server, base),
        aiohttp.ClientSession() as http,
    ):
        cam2 = app.cameras["cam2"]
        server.sample()
        cam2.state, cam2.reason = "reconnecting", "stalled"
        server.sample()
        async with http.get(f"{base}/api/history") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            h = await r.json()
        assert set(h["cameras"]) == {"cam1", "cam2"} and h["interval_s"] == 2.0 and h["window_s"] == 600.0
        assert len(h["t"]) == h["seq"] >= 2 and h["t"] == sorted(h["t"])
        # (The server's own sampler ticks too: it started with the server.)
        live2 = h["cameras"]["cam2"]["live"]
        assert 1 in live2 and live2[-1] == 0 and h["cameras"]["cam2"]["p50"][-1] is None
        async with http.get(f"{base}/api/history", params={"since": str(h["seq"]), "camera": "cam1"}) as r:
            later = await r.json()
        assert list(later["cameras"]) == ["cam1"] and len(later["t"]) == later["seq"] - h["seq"]
        async with http.get(f"{base}/api/history?since=x") as r:
            assert r.status == 400
        async with http.get(f"{base}/api/history?camera=nope") as r:
            assert r.status == 404
        async with http.get(f"{base}/api/cameras") as r:
            cams = {c["name"]: c for c in await r.json()}
        assert cams["cam1"]["privacy"] == {
            "level": "protected",
            "text": "above the floor: detector every frame at 1280 px",
        }
        assert cams["cam2"]["privacy"]["level"] == "down"


@pytest.mark.timeout(30)
async def test_history_and_tiles_are_behind_the_users() -> None:
    cfg = make_cfg(users=[{"username": "op", "password": "pw-123456"}])
    async with serving(cfg, feed=False) as (_app, _server, base), aiohttp.ClientSession() as http:
        for path in ("/api/history", "/api/cameras/cam1/snapshot.jpg?w=320"):
            async with http.get(base + path) as r:
                assert r.status == 401, path
            auth = {"Authorization": aiohttp.encode_basic_auth("op", "pw-123456")}
            async with http.get(base + path, headers=auth) as r:
                assert r.status == 200, path


async def _parts(r: aiohttp.ClientResponse) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data answer: name -> (filename, body)."""
    out: dict[str, tuple[str | None, bytes]] = {}
    reader = aiohttp.MultipartReader.from_response(r)
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader) and part.name is not None
        out[part.name] = (part.filename, bytes(await part.read()))
    return out


@pytest.mark.timeout(30)
async def test_the_grids_tiles_come_in_one_answer() -> None:
    async with (
        serving(make_cfg(cameras=("cam1", "cam2", "cam3")), feed=False) as (app, server, base),
        aiohttp.ClientSession() as http,
    ):
        app.cameras["cam3"].latest = None  # no recent frame: fail closed
        async with http.get(f"{base}/api/tiles?w=160") as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            parts = await _parts(r)
        assert list(parts) == ["cam1", "cam2", "cam3"] and parts["cam3"] == (None, b"none")
        tokens = {}
        for name in ("cam1", "cam2"):
            filename, body = parts[name]
            assert filename is not None and filename.endswith(".jpg") and _jpeg_size(body) == (160, 120)
            tokens[name] = filename.removesuffix(".jpg")
        assert server.encodes == 2
        # The tokens it has: "same", nothing encoded; a new frame for cam2: its new picture only.
        app.cameras["cam2"].latest = synthetic_frame(3)
        query = {"w": "160", "cameras": "cam2,cam1", "have": f"{tokens['cam2']},{tokens['cam1']}"}
        async with http.get(f"{base}/api/tiles", params=query) as r:
            parts = await _parts(r)
        assert list(parts) == ["cam2", "cam1"] and parts["cam1"] == (None, b"same")
        assert parts["cam2"][0] not in (None, f"{tokens['cam2']}.jpg") and server.encodes == 3
        # The snapshot endpoint shares the pictures: its ETag is the same token.
        async with http.get(f"{base}/api/cameras/cam1/snapshot.jpg?w=160") as r:
            assert r.headers["ETag"] == f'"{tokens["cam1"]}"' and server.encodes == 3
        for bad in ("w=0", "", "w=160&cameras=cam1,nope", 'w=160&cameras=x"y'):
            async with http.get(f"{base}/api/tiles?{bad}") as r:
                assert r.status in (400, 404), bad
