"""HTTP API, health, readiness, metrics, the page and its auth, on a real server on 127.0.0.1:0."""

from __future__ import annotations

import dataclasses
import json
import socket

import aiohttp
import pytest
from prometheus_client import REGISTRY
from webkit import make_cfg, serving

from streamproxy.camera import Camera
from streamproxy.config import parse_config
from streamproxy.serve.http.server import camera_json
from streamproxy.status import CameraStatus, FloorStatus
from streamproxy.view import CameraView

# The /api/cameras entry as the page (serve/http/web/app.js), the benchmarks and users' scripts know it.
API_KEYS = [
    "name", "state", "reason", "fps_in", "fps_out", "fps_camera", "frames_in", "frames_out", "dropped",
    "fail_closed_frames", "widened_frames", "faces", "tracks", "latency_ms", "overloaded", "keep_ratio", "detector",
    "privacy_floor", "resolution", "viewers", "reconnects", "encode_cpu_s", "sub_stream", "loss", "whep", "publish",
]  # fmt: skip
DETECTOR_KEYS = [
    "model",
    "detect_every",
    "input_width",
    "max_detect_every",
    "min_input_width",
    "keep_ratio",
    "error",
]


@pytest.mark.timeout(30)
async def test_page_api_health_metrics() -> None:
    async with serving(make_cfg(cameras=("cam1", "cam2")), feed=False) as (app, server, base):
        # The port it reports (asked for any: http_port 0) is the one it holds: binding it again fails.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(OSError):
            s.bind(("127.0.0.1", server.port))
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"{base}/")
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            # Everything the page needs is served locally (closed networks: no CDN).
            assert "/static/app.js" in page and "/static/style.css" in page
            assert "http://" not in page and "https://" not in page
            for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
                r = await http.get(f"{base}/static/{name}")
                assert r.status == 200 and r.content_type == ctype
                body = await r.text()
                assert "https://" not in body and "http://" not in body
            assert (await http.get(f"{base}/static/nope.js")).status == 404
            assert (await http.get(f"{base}/static/..%2fweb.py")).status == 404

            r = await http.get(f"{base}/api/cameras")
            assert r.status == 200
            cams = await r.json()
            assert [c["name"] for c in cams] == ["cam1", "cam2"]
            assert cams[0]["state"] == "live" and cams[0]["whep"] == "/cam1/whep"
            assert "rtsp://" not in await r.text()  # camera URLs (maybe with credentials) never leave

            r = await http.get(f"{base}/healthz")
            assert r.status == 200 and (await r.text()).strip() == "ok"
            r = await http.get(f"{base}/readyz")
            assert r.status == 200
            app.ready = False
            r = await http.get(f"{base}/readyz")
            assert r.status == 503 and "not ready" in await r.text()

            r = await http.get(f"{base}/metrics")
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            assert "# TYPE" in await r.text()


@pytest.mark.timeout(30)
async def test_auth_guards_page_api_and_whep_but_not_probes() -> None:
    cfg = make_cfg(users=[{"username": "alice", "password": "s3cret"}])
    async with serving(cfg, feed=False) as (_app, _server, base):
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/static/app.js", "/api/cameras"):
                r = await http.get(f"{base}{path}")
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"] == 'Basic realm="streamproxy", charset="UTF-8"'
                r = await http.get(
                    f"{base}{path}", headers={"Authorization": aiohttp.encode_basic_auth("bob", "s3cret")}
                )
                assert r.status == 401, path
                r = await http.get(f"{base}{path}", headers={"Authorization": "Basic !!notbase64"})
                assert r.status == 401, path
                r = await http.get(
                    f"{base}{path}", headers={"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
                )
                assert r.status == 200, path
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await http.get(f"{base}{path}")).status == 200, path
            # CORS preflight carries no credentials by design.
            assert (await http.options(f"{base}/cam1/whep")).status == 204


@pytest.mark.timeout(30)
async def test_stop_is_idempotent_and_frees_the_port() -> None:
    async with serving(make_cfg(), feed=False) as (_app, server, base):
        port = server.port
        assert port > 0 and base.endswith(f":{port}")
    await server.stop()  # a second stop: no error
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{base}/healthz", timeout=aiohttp.ClientTimeout(total=2))
    # Freed: another server can listen on the port now (the bind fails while anything still listens there).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's own listener does
        s.bind(("127.0.0.1", port))
        s.listen()


async def test_api_entry_keeps_its_shape_and_reads_the_single_counters() -> None:
    cfg = parse_config(
        {
            "cameras": [
                {
                    "name": "shape-cam",
                    "url": "rtsp://127.0.0.1:1/cam",
                    "publish_url": "rtsp://u:pw0rd@127.0.0.1:1/out",
                }
            ]
        }
    )
    cam = cfg.cameras[0]
    # The camera as App makes it, never started: nothing connects; its status is what the API would
    # serve before the first frame (read through status.CameraView, as serve/http/server.py does).
    camera = await Camera.create(cam, cfg, cameras=1, position=0, detector=None)
    view: CameraView = camera
    m = camera.metrics
    m.frame_in()
    m.frame_in()
    m.drop("overload")
    m.drop("slow_viewer", 2)
    camera.pipeline.engine.stats.failed_closed("detector_error", dropped=False)
    camera.pipeline.engine.stats.frame_widened()
    status = CameraStatus(cam.name, f"/{cam.name}/whep", view.snapshot(), view.publisher_status())
    camera.close()
    text = json.dumps(camera_json(status))
    out = json.loads(text)
    assert list(out) == API_KEYS
    assert out["loss"] == {"rtp_packets_lost": 0, "damaged_frames": 0, "percent": None, "tcp_fallback": False}
    assert out["dropped"] == {
        "latency_budget": 0,
        "fail_closed": 0,
        "queue_full": 0,
        "encoder": 0,
        "worker": 0,
        "overload": 1,
    }
    assert list(out["latency_ms"]) == ["p50", "p99", "budget"] and out["latency_ms"]["p50"] is None
    assert list(out["detector"]) == DETECTOR_KEYS
    assert out["privacy_floor"] is None and out["resolution"] is None
    assert [f.name for f in dataclasses.fields(FloorStatus)] == [
        "min_face_px", "min_input_width", "max_unmasked_frames", "max_detect_every",
    ]  # fmt: skip
    assert out["viewers"] == {"rtsp": 0, "webrtc": 0} and out["whep"] == "/shape-cam/whep"
    assert list(out["publish"]) == ["up", "sessions", "attempts", "packets_sent", "bytes_sent", "last_error"]
    assert "pw0rd" not in text and "rtsp://" not in text
    # One tally: the API and Prometheus read the same numbers.
    prom = REGISTRY.get_sample_value
    assert out["frames_in"] == 2 == prom("streamproxy_frames_in_total", {"camera": "shape-cam"})
    assert out["fail_closed_frames"] == 1
    assert out["widened_frames"] == 1 == prom("streamproxy_widened_frames_total", {"camera": "shape-cam"})
    assert (
        prom("streamproxy_fail_closed_frames_total", {"camera": "shape-cam", "reason": "detector_error"}) == 1
    )
    # A snapshot that failed: the entry still names the camera and its WHEP endpoint.
    assert camera_json(CameraStatus("gone", "/gone/whep", None)) == {
        "name": "gone",
        "state": "unknown",
        "whep": "/gone/whep",
    }


async def test_a_cameras_viewers_and_slow_viewer_drops_are_those_of_both_its_streams() -> None:
    """camera.Camera wires its hubs to its one tally: RTSP viewers of the main and the sub stream
    count together, WebRTC ones (main stream only) apart; slow-viewer drops of either land in it."""
    cfg = make_cfg(cameras=("both-cam",))
    camera = await Camera.create(cfg.cameras[0], cfg, cameras=1, position=0, detector=None)
    assert camera.sub_hub is not None  # on by default
    prom = REGISTRY.get_sample_value
    try:
        subs = [
            camera.hub.subscribe("rtsp"),
            camera.sub_hub.subscribe("rtsp"),
            camera.hub.subscribe("webrtc"),
        ]
        assert prom("streamproxy_viewers", {"camera": "both-cam", "protocol": "rtsp"}) == 2
        assert prom("streamproxy_viewers", {"camera": "both-cam", "protocol": "webrtc"}) == 1
        assert camera.hubs() == (camera.hub, camera.sub_hub) and camera.publisher_status() is None
        subs[1].close()
        assert prom("streamproxy_viewers", {"camera": "both-cam", "protocol": "rtsp"}) == 1
        assert camera.sub_hub.on_slow_viewer_drop is not None
        camera.sub_hub.on_slow_viewer_drop("rtsp", 3)
        assert prom("streamproxy_frames_dropped_total", {"camera": "both-cam", "reason": "slow_viewer"}) == 3
    finally:
        camera.close()
    assert prom("streamproxy_viewers", {"camera": "both-cam", "protocol": "rtsp"}) == 0


async def test_a_viewer_arriving_not_leaving_asks_the_pipeline_for_the_fast_slate() -> None:
    """camera.Camera tells its pipeline when a viewer comes to either stream (the slate then comes
    fast for a moment while the camera is down: test_pipeline), not when one leaves."""
    cfg = make_cfg(cameras=("join-cam",))
    camera = await Camera.create(cfg.cameras[0], cfg, cameras=1, position=0, detector=None)
    assert camera.sub_hub is not None
    try:
        assert camera.pipeline._slate_burst_until == 0.0
        sub = camera.sub_hub.subscribe("rtsp")
        asked = camera.pipeline._slate_burst_until
        assert asked > 0.0
        camera.pipeline._slate_burst_until = 0.0
        sub.close()
        assert camera.pipeline._slate_burst_until == 0.0  # a viewer left: nothing asked
        main = camera.hub.subscribe("webrtc")
        assert camera.pipeline._slate_burst_until > 0.0
        main.close()
    finally:
        camera.close()


@pytest.mark.timeout(30)
async def test_metrics_sample_the_event_loops_tasks() -> None:
    async with serving(make_cfg(), feed=False) as (_app, _server, base), aiohttp.ClientSession() as http:
        r = await http.get(f"{base}/metrics")
        assert r.status == 200
        lines = [ln for ln in (await r.text()).splitlines() if ln.startswith("streamproxy_asyncio_tasks ")]
        assert len(lines) == 1
        assert float(lines[0].split()[1]) >= 1  # at least the scrape's own handler task
