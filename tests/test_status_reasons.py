"""Why a camera is not live, and nothing stale while it is down (issue 20, item 6); one reconnect
count for the API and Prometheus (item 5).

* `not_live_reason`: the source's error texts (our RTSP client's, FFmpeg's, the source's own) as
  the API's one word; every word has its words on the page.
* A real CameraPipeline that was live and goes down reports its last session's rate, faces,
  latency and overload as None, with the reason; the JSON says null.
* `reconnects`: the API and `streamproxy_reconnects_total` read the source's one counter (a stand-in
  source, and a real CameraSource retrying a port where nothing listens).
* The page in headless Chromium: a live camera's values, then "–" and the reason once it is down;
  and the whole service with real cameras (gst-rtsp-server): refused, unauthorized, not found,
  and a live camera that stalls.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browserkit import Chromium, needs_chromium
from pipekit import Rig, StubDetector, feed, settled, until
from pipekit import make_cfg as pipeline_cfg
from prometheus_client import REGISTRY

from streamproxy.config import parse_config
from streamproxy.hub import StreamHub
from streamproxy.live.pipeline import CameraPipeline
from streamproxy.serve.http.server import camera_json
from streamproxy.status import REASONS, CameraStatus, LossStatus, not_live_reason

pytestmark = pytest.mark.timeout(60)

APP_JS = Path(__file__).resolve().parents[1] / "streamproxy" / "serve" / "http" / "web" / "app.js"


# --- the reason words ---

TEXTS = [
    # Our RTSP client (rtsp/client.py) and the source (live/source.py `_describe`).
    ("reconnecting", "cannot connect to 127.0.0.1:9: Connection refused", "refused"),
    ("reconnecting", "cannot connect to 10.0.0.9:401: Connection refused", "refused"),
    ("unauthorized", "camera rejects our credentials: DESCRIBE answered 401 Unauthorized (check ...)", "unauthorized"),
    ("unauthorized", "camera requires credentials: DESCRIBE answered 401 Unauthorized (the URL ...)", "unauthorized"),
    ("reconnecting", "DESCRIBE answered 403 Forbidden", "forbidden"),
    ("reconnecting", "DESCRIBE answered 404 Not Found (check the camera's path)", "not_found"),
    ("reconnecting", "stalled: no data for 3 s", "stalled"),
    ("reconnecting", "no answer within 5.0 s (open timeout 5 s)", "unreachable"),
    ("reconnecting", "no answer to DESCRIBE within 5 s", "unreachable"),
    ("reconnecting", "cannot connect to cam.example:554: No route to host", "unreachable"),
    ("reconnecting", "cannot connect to 10.1.2.3:554: timed out", "unreachable"),
    ("reconnecting", "gaierror: [Errno -2] Name or service not known", "unreachable"),
    ("reconnecting", "the camera's port answers HTTP, not RTSP (wrong port?)", "unsupported"),
    ("reconnecting", "camera offers no H.264/H.265 video (SDP has: audio MPEG4-GENERIC)", "unsupported"),
    ("reconnecting", "camera sent a malformed RTSP message (bad Content-Length)", "unsupported"),
    ("reconnecting", "camera's video does not decode (50 errors in a row, no picture for 3 s)", "undecodable"),
    ("reconnecting", "connection lost (Connection reset by peer)", "disconnected"),
    ("reconnecting", "the camera closed the connection", "disconnected"),
    ("reconnecting", "stream ended", "disconnected"),
    ("reconnecting", "stalled: no whole picture for 10 s, 5.1 % of RTP packets lost", "lossy"),
    ("reconnecting", "DESCRIBE answered 503 Service Unavailable", "error"),
    # FFmpeg's, through the pyav demuxer (the URL in them is redacted by the source).
    ("reconnecting", "HTTPNotFoundError: [Errno 1330794744] Server returned 404 Not Found: '...'", "not_found"),
    ("reconnecting", "HTTPUnauthorizedError: [Errno 825242872] Server returned 401 Unauthorized", "unauthorized"),
    ("reconnecting", "ConnectionRefusedError: [Errno 111] Connection refused: 'rtsp://127.0.0.1:9/x'", "refused"),
    ("reconnecting", "InvalidDataError: [Errno 1094995529] Invalid data found when processing input", "unsupported"),
    # The states themselves.
    ("connecting", None, "connecting"),
    ("reconnecting", None, "connecting"),
    ("unauthorized", None, "unauthorized"),
    ("stopped", "stalled: no data for 3 s", "stopped"),
    ("live", "stalled: no data for 3 s", None),  # live again: the old failure is no reason
]  # fmt: skip


@pytest.mark.parametrize(("state", "text", "reason"), TEXTS)
def test_reason_words_from_the_sources_texts(state: str, text: str | None, reason: str | None) -> None:
    assert not_live_reason(state, text) == reason


def test_every_reason_has_words_on_the_page() -> None:
    js = APP_JS.read_text()
    block = js[js.index("const REASONS = {") : js.index("};", js.index("const REASONS = {"))]
    assert set(re.findall(r"^\s*(\w+): \[", block, re.MULTILINE)) == set(REASONS)


# --- the real pipeline ---


def _prom_reconnects(camera: str) -> float | None:
    return REGISTRY.get_sample_value("streamproxy_reconnects_total", {"camera": camera})


async def test_a_camera_that_goes_down_reports_nothing_stale() -> None:
    async with Rig(pipeline_cfg(), "down-cam", StubDetector(), keep=True) as rig:
        pipe, src = rig.pipe, rig.src
        await feed(pipe, src, 12)
        await until(settled(pipe))
        pipe.controller.keep_ratio = 0.5  # shedding when the camera went: "overloaded: 0 of 25 fps"
        live = pipe.snapshot()
        assert live.state == "live" and live.reason is None
        assert live.faces == 1 and live.tracks == 1 and live.fps_camera == 25.0 and live.overloaded
        assert live.latency_ms.p50 is not None and live.latency_ms.p99 is not None
        # The camera stalls: the source says why (its last_error) and changes state.
        src.last_error = "stalled: no data for 3 s"  # type: ignore[attr-defined]
        src.on_state("cam", "reconnecting")
        down = pipe.snapshot()
        assert down.state == "reconnecting" and down.reason == "stalled"
        assert (down.faces, down.tracks, down.fps_camera, down.overloaded) == (None, None, None, None)
        assert (down.latency_ms.p50, down.latency_ms.p99) == (None, None)
        assert down.latency_ms.budget == live.latency_ms.budget  # the budget is config, not a reading
        assert down.frames_in == live.frames_in  # counters keep counting (nothing was lost)
        out = json.loads(json.dumps(camera_json(CameraStatus("down-cam", "/down-cam/whep", down))))
        assert out["reason"] == "stalled" and out["faces"] is None and out["overloaded"] is None
        assert out["latency_ms"]["p50"] is None and out["fps_camera"] is None
        # A stand-in source without last_error: "connecting"; live again: the values are back.
        del src.last_error  # type: ignore[attr-defined]
        assert pipe.snapshot().reason == "connecting"
        src.on_state("cam", "live")
        back = pipe.snapshot()
        assert back.reason is None and back.faces == 1 and back.fps_camera is not None


async def test_reconnects_are_one_count_for_the_api_and_prometheus() -> None:
    async with Rig(pipeline_cfg(), "count-rc-cam", StubDetector(), keep=False) as rig:
        assert rig.pipe.snapshot().reconnects == 0 == _prom_reconnects("count-rc-cam")
        # The source counts its attempts; a session that ends while live is no second tally.
        rig.src.reconnects = 3
        rig.src.on_state("cam", "live")
        rig.src.on_state("cam", "reconnecting")
        assert rig.pipe.snapshot().reconnects == 3 == _prom_reconnects("count-rc-cam")
        rig.src.reconnects = 37
        assert _prom_reconnects("count-rc-cam") == 37 == rig.pipe.metrics.reconnects_total


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port where nothing listens (bound, never listening: nobody else gets it meanwhile)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


async def test_a_real_source_that_is_refused_counts_once_and_says_refused(dead_port: int) -> None:
    cfg = parse_config(
        {
            "cameras": [{"name": "refused-cam", "url": f"rtsp://127.0.0.1:{dead_port}/cam"}],
            "ingest": {"backoff_initial_s": 0.05, "backoff_max_s": 0.1, "open_timeout_s": 2},
            "sub_stream": {"enabled": False},
            "slate": {"fps": 2, "width": 64, "height": 64},
        }
    )
    pipe = CameraPipeline(cfg.cameras[0], cfg, StreamHub("refused-cam", 8), asyncio.get_running_loop(),
                          detector=StubDetector())  # fmt: skip
    pipe.start()
    try:
        await until(lambda: pipe.source.reconnects >= 3 and pipe.snapshot().reason == "refused", 30)
        snap = pipe.snapshot()
        assert snap.state == "reconnecting" and snap.faces is None and snap.latency_ms.p50 is None
        before, api, after = _prom_reconnects("refused-cam"), snap.reconnects, _prom_reconnects("refused-cam")
        assert before is not None and after is not None and before <= api <= after
    finally:
        await asyncio.to_thread(pipe.stop)
    # Stopped: the count stands still, and the two read the same number.
    assert pipe.snapshot().reconnects == _prom_reconnects("refused-cam") == pipe.source.reconnects >= 3
    assert pipe.snapshot().reason == "stopped"


# --- the page ---

CARD = """(() => {
  const c = document.querySelector('[data-camera="%s"]');
  if (!c) return null;
  const r = c.querySelector('.reason');
  return {reason: r ? r.dataset.reason : null, reasonText: r ? r.textContent : null,
          badge: c.querySelector('.badge').textContent, overloaded: !!c.querySelector('.badge.overloaded'),
          rows: Object.fromEntries([...c.querySelectorAll('dt')].map(d => [d.textContent, d.nextSibling.textContent]))};
})()"""


async def _card(browser: Chromium, camera: str, cond: str, timeout: float = 15) -> dict[str, Any]:
    """The camera's card once `cond` (JS over `card`) holds; the last one seen otherwise."""
    expr = f"(() => {{ const card = {CARD % camera}; return card && ({cond}) ? card : null; }})()"
    card = await browser.wait_js(expr, timeout)
    if not card:
        card = await browser.evaluate(CARD % camera)
        raise AssertionError(f"{camera}: {cond} not seen in {timeout} s; card: {card}")
    assert isinstance(card, dict)
    return card


DASH = "–"


@needs_chromium
@pytest.mark.timeout(90)
async def test_page_shows_the_reason_and_no_stale_values() -> None:
    from webkit import make_cfg, serving

    async with (
        serving(make_cfg(cameras=("cam1", "cam2")), feed=False) as (app, _server, base),
        Chromium() as browser,
    ):
        cam1, cam2 = app.cameras["cam1"], app.cameras["cam2"]
        cam1.faces, cam1.overloaded = 3, True
        cam2.state, cam2.reason = "unauthorized", "unauthorized"
        await browser.goto(f"{base}/", "window.streamproxy")
        live = await _card(browser, "cam1", "card.rows['faces masked'] === '3'")
        assert live["reason"] is None and live["overloaded"] and live["badge"] == "live"
        assert live["rows"]["added latency"] == "p50 10 ms · p99 20 ms"
        assert live["rows"]["fps in / out"] == "25.0 / 25.0"
        down = await _card(browser, "cam2", "card.reason")
        assert down["reason"] == "unauthorized" and down["reasonText"].startswith("unauthorized — ")
        assert down["badge"] == "offline" and not down["overloaded"]
        for row in ("fps in / out", "faces masked", "added latency"):
            assert down["rows"][row] == DASH, (row, down)
        # cam1 goes down: at the next poll its card shows why, and none of its last values.
        cam1.state, cam1.reason = "reconnecting", "stalled"
        gone = await _card(browser, "cam1", "card.reason === 'stalled'")
        assert not gone["overloaded"] and gone["reasonText"].startswith("stalled — ")
        assert [gone["rows"][r] for r in ("fps in / out", "faces masked", "added latency")] == [DASH] * 3
        # ...and comes back.
        cam1.state = "live"
        back = await _card(browser, "cam1", "!card.reason")
        assert back["rows"]["faces masked"] == "3" and back["overloaded"]
        # Packet loss shows where there was any: the rate now, the counts, the switch to TCP.
        assert "packet loss" not in back["rows"]
        cam1.loss = LossStatus(rtp_packets_lost=120, damaged_frames=7, percent=4.8, tcp_fallback=True)
        lossy = await _card(browser, "cam1", "'packet loss' in card.rows")
        assert (
            lossy["rows"]["packet loss"]
            == "4.8 % now · 120 packets lost · 7 frames damaged · over TCP (UDP lost too much)"
        )
        # The API the page read: nulls while down.
        async with aiohttp.ClientSession() as http, http.get(f"{base}/api/cameras") as r:
            cams = {c["name"]: c for c in await r.json()}
        assert cams["cam2"]["reason"] == "unauthorized" and cams["cam2"]["faces"] is None
        assert cams["cam2"]["latency_ms"]["p50"] is None and cams["cam2"]["overloaded"] is None
        assert cams["cam1"]["reason"] is None and cams["cam1"]["faces"] == 3


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_whole_service_real_cameras_reasons_on_the_page(model_dir: Path, dead_port: int) -> None:
    """The service with real cameras: one live then stalled (SIGSTOP), one with a wrong password, one
    with a wrong path (gst-rtsp-server: 401, 404), one where nothing listens; the page and the API
    say why for each, and the live one's values go to "–" when it stalls."""
    from streamproxy_sim.camsim import SimCamera, system_gst_available
    from streamproxy_sim.harness import running_app

    missing = system_gst_available()
    if missing:
        pytest.skip(f"simulated camera unavailable: {missing}")
    cam = SimCamera(width=320, height=240, fps=10, faces=1, user="cam", password="right", bitrate_kbps=500)
    await asyncio.to_thread(cam.start)
    try:
        base_url = f"127.0.0.1:{cam.port}"
        cfg = parse_config(
            {
                "cameras": [
                    {"name": "door", "url": f"rtsp://cam:right@{base_url}/{cam.path}"},
                    {"name": "locked", "url": f"rtsp://cam:wrong@{base_url}/{cam.path}"},
                    {"name": "nopath", "url": f"rtsp://cam:right@{base_url}/nothing-here"},
                    {"name": "gone", "url": f"rtsp://127.0.0.1:{dead_port}/cam"},
                ],
                "server": {"host": "127.0.0.1", "ice_hosts": ["127.0.0.1"]},
                "ingest": {
                    "backoff_initial_s": 0.1,
                    "backoff_max_s": 0.5,
                    "open_timeout_s": 5,  # the stall shows until the next attempt gives up
                    "read_timeout_s": 2,
                },
                "engine": {"detector": {"input_width": 320, "model_dir": str(model_dir)}},
                "latency_budget_ms": 1000,
                "sub_stream": {"enabled": False},
            }
        )
        cfg = cfg.model_copy(
            update={"server": cfg.server.model_copy(update={"rtsp_port": 0, "http_port": 0})}
        )
        async with running_app(cfg) as app, Chromium() as browser:
            assert app.web is not None  # App.start made it
            base = f"http://127.0.0.1:{app.web.port}"
            await browser.goto(f"{base}/", "window.streamproxy")
            for camera, reason in (("locked", "unauthorized"), ("nopath", "not_found"), ("gone", "refused")):
                card = await _card(browser, camera, f"card.reason === '{reason}'", 30)
                assert [card["rows"][r] for r in ("fps in / out", "faces masked", "added latency")] == [
                    DASH
                ] * 3
            live = await _card(
                browser, "door", "card.badge === 'live' && !card.rows['added latency'].includes('–')", 60
            )
            assert live["reason"] is None and live["rows"]["faces masked"] != DASH
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/metrics") as r:
                    prom_before = await r.text()
                async with http.get(f"{base}/api/cameras") as r:
                    api = {c["name"]: c for c in await r.json()}
                async with http.get(f"{base}/metrics") as r:
                    prom_after = await r.text()
            for camera in ("locked", "nopath", "gone"):
                lo, hi = (_scraped_reconnects(t, camera) for t in (prom_before, prom_after))
                assert lo <= api[camera]["reconnects"] <= hi, (camera, lo, api[camera]["reconnects"], hi)
            assert api["gone"]["reconnects"] >= 1 and api["door"]["reason"] is None
            # The live camera freezes (connection open, nothing sent): stalled, and nothing stale shown.
            await asyncio.to_thread(cam.pause)
            stalled = await _card(browser, "door", "card.reason === 'stalled'", 30)
            assert not stalled["overloaded"]
            assert [stalled["rows"][r] for r in ("fps in / out", "faces masked", "added latency")] == [
                DASH
            ] * 3
            await asyncio.to_thread(cam.resume)
    finally:
        await asyncio.to_thread(cam.stop)


def _scraped_reconnects(text: str, camera: str) -> float:
    m = re.search(rf'^streamproxy_reconnects_total{{camera="{camera}"}} (\S+)$', text, re.MULTILINE)
    assert m, f"no streamproxy_reconnects_total for {camera}"
    return float(m.group(1))
