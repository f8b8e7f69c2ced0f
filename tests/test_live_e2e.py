"""The whole live proxy end to end, against real third-party peers on loopback.

A real camera (gst-rtsp-server serving real faces, `camsim.SimCamera`) → the whole service
(`streamproxy_sim.harness.running_app`: ingest, detector, tracker, obfuscation, encoder, RTSP server) → real clients:
PyAV, ffprobe, ffmpeg, GStreamer's rtspsrc and raw sockets. What a viewer decodes is judged with the
real face detector: the camera shows faces, the proxy must not.

The app runs on its own event loop in a thread (`LiveHost`), so that these tests can use blocking
clients directly, the way a viewer on another machine would. Every wait is bounded.
"""

from __future__ import annotations

import base64
import itertools
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import (
    PASSWORD,
    USER,
    H,
    LiveHost,
    Viewer,
    W,
    camera_and_host,
    face_scores,
    live,
    make_config,
    rtsp_exchange,
    rtsp_status,
    visible_faces,
)

from streamproxy import metrics
from streamproxy.engine.detect import OnnxFaceDetector
from streamproxy_sim.camsim import SimCamera

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

log = logging.getLogger(__name__)


# --- one camera and one proxy shared by the non-destructive tests -------------------------------------


@pytest.fixture(scope="module")
def shared(model_dir: Path) -> Iterator[tuple[SimCamera, LiveHost]]:
    with camera_and_host(
        lambda url: make_config(url, model_dir, [{"username": USER, "password": PASSWORD}])
    ) as pair:
        yield pair


def _authed(host: LiveHost, path: str = "cam") -> str:
    return host.url(path, USER, PASSWORD)


def test_frames_flow_and_faces_are_masked(
    shared: tuple[SimCamera, LiveHost], judge: OnnxFaceDetector
) -> None:
    sim, host = shared
    raw = Viewer(sim.url, keep_images=True, max_frames=10, max_s=30)
    raw.start()
    raw.done(40)
    assert raw.error is None and len(raw.frames) == 10, raw.error
    raw_faces = visible_faces(face_scores(judge, raw.frames))
    assert sum(1 for n in raw_faces if n >= 2) >= 8, f"the camera itself shows its 2 faces: {raw_faces}"

    v = Viewer(_authed(host), keep_images=True, max_frames=40, max_s=30)
    v.start()
    v.done(40)
    assert v.error is None, v.error
    got = live(v.frames)
    assert len(got) >= 25, f"only {len(got)} live frames of {len(v.frames)}"
    assert (got[0].bgr is not None) and got[0].bgr.shape == (H, W, 3)
    scores = face_scores(judge, got)
    best = max((x[0] for x in scores if x), default=0.0)
    print(f"\nproxy output: best face score {best:.2f} (camera's faces: 0.9+)")
    assert sum(visible_faces(scores)) == 0, f"faces visible in proxy output: {scores}"
    lat = sorted(f.wall_ms - f.stamp for f in got if f.stamp is not None)
    snap = host.snapshot()
    added = snap.latency_ms
    print(
        f"\nglass-to-glass via proxy (test load): median {lat[len(lat) // 2]:.0f} ms over {len(lat)} frames; "
        f"proxy-added p50 {added.p50} ms, p99 {added.p99} ms (budget {added.budget:.0f} ms)"
    )
    # The budget holds: a frame that would leave late is dropped before its encode, so what is left
    # over the budget is the encode running longer than its recent mean and the hop to the event loop.
    # Half the budget again covers that on a loaded 2-core machine; a budget not enforced (frames held
    # for whole detector cadences, a late frame let through) shows as a p99 of several budgets.
    assert added.p99 is not None and added.p99 <= 1.5 * added.budget, added
    assert snap.fail_closed_frames == 0


def _ffprobe(url: str, transport: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", transport, "-show_entries", "stream=codec_name,width,height",
         "-of", "default=nw=1", url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_ffprobe(shared: tuple[SimCamera, LiveHost], transport: str) -> None:
    _, host = shared
    r = _ffprobe(_authed(host), transport)
    assert r.returncode == 0, r.stderr
    assert "codec_name=h264" in r.stdout and f"width={W}" in r.stdout and f"height={H}" in r.stdout, r.stdout


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_decodes_over_udp(shared: tuple[SimCamera, LiveHost]) -> None:
    _, host = shared
    n = 20
    r = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-rtsp_transport", "udp", "-i", _authed(host),
         "-frames:v", str(n), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        capture_output=True, timeout=40, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert len(r.stdout) // (W * H) == n


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="GStreamer tools not installed")
def test_gstreamer_rtspsrc(shared: tuple[SimCamera, LiveHost]) -> None:
    _, host = shared
    r = subprocess.run(
        ["gst-launch-1.0", "rtspsrc", f"location={host.url()}", f"user-id={USER}", f"user-pw={PASSWORD}",
         "protocols=tcp", "latency=0", "!", "rtph264depay", "!", "h264parse", "!", "avdec_h264", "!",
         "fakesink", "num-buffers=20"],
        capture_output=True, text=True, timeout=40, check=False,
    )  # fmt: skip
    # EOS after 20 decoded buffers is the proof. At shutdown rtspsrc sends PAUSE and TEARDOWN from two
    # threads and, rarely (seen once in CI, 0 of 24 tries by hand), one of them finds the connection
    # the other already closed, and gst-launch exits 1 after all frames arrived: not the server's doing.
    assert 'Got EOS from element "pipeline0"' in r.stdout, r.stdout + r.stderr


def test_auth_required(shared: tuple[SimCamera, LiveHost]) -> None:
    _, host = shared
    assert host.app is not None and host.app.rtsp is not None
    port = host.app.rtsp.port
    assert rtsp_status(host.url(), port) == 401
    for url in (host.url(), host.url("cam", USER, "wrong-password"), host.url("cam", "mallory", PASSWORD)):
        r = _ffprobe(url, "tcp")
        assert r.returncode != 0, url
        assert "401" in r.stderr or "Unauthorized" in r.stderr, r.stderr
    assert _ffprobe(_authed(host), "tcp").returncode == 0


def test_unknown_path_is_404(shared: tuple[SimCamera, LiveHost]) -> None:
    _, host = shared
    assert host.app is not None and host.app.rtsp is not None
    # With credentials (an unknown path must not be told apart from a known one before auth).
    r = _ffprobe(_authed(host, "nope"), "tcp")
    assert r.returncode != 0 and "404" in r.stderr, r.stderr
    v = Viewer(_authed(host, "nope"), max_s=10)
    v.start()
    v.done(20)
    assert v.error is not None and not v.frames


def _basic() -> dict[str, str]:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_stalled_viewer_does_not_stall_another(shared: tuple[SimCamera, LiveHost]) -> None:
    _, host = shared
    assert host.app is not None and host.app.rtsp is not None
    port, url = host.app.rtsp.port, host.url()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: it fills at once
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    try:
        st, _, sdp = rtsp_exchange(s, "DESCRIBE", url, 1, {"Accept": "application/sdp", **_basic()})
        assert st == 200 and b"H264" in sdp
        transport = {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
        st, hdrs, _ = rtsp_exchange(s, "SETUP", f"{url}/trackID=0", 2, {**transport, **_basic()})
        assert st == 200, st
        session = hdrs["session"].split(";")[0]
        st, _, _ = rtsp_exchange(s, "PLAY", url, 3, {"Session": session, "Range": "npt=0.000-", **_basic()})
        assert st == 200
        # From here on this viewer never reads again.
        time.sleep(1.0)
        v = Viewer(_authed(host), max_s=60)
        v.start()
        assert v.wait_for(lambda fr: len(fr) >= 1, 15), v.error
        # The healthy viewer against what the pipeline published in the same window (not against the
        # clock: on a loaded machine the camera and the pipeline slow down too, and that is no fault).
        t0, out0 = time.monotonic(), host.snapshot().frames_out
        time.sleep(5.0)
        t1, out1 = time.monotonic(), host.snapshot().frames_out
        v.finish(20)
        assert v.error is None, v.error
        got = [f for f in v.frames if t0 < f.t <= t1]
        published = out1 - out0
        gaps = [b.t - a.t for a, b in itertools.pairwise(got)]
        slow = metrics.REGISTRY.get_sample_value(
            "streamproxy_frames_dropped_total", {"camera": "cam", "reason": "slow_viewer"}
        )
        print(
            f"\nhealthy viewer next to a stalled one: {len(got)} of {published} frames published meanwhile, "
            f"max gap {max(gaps, default=0.0) * 1000:.0f} ms, slow-viewer drops (both viewers) {slow}"
        )
        assert published >= 10, "the pipeline hardly published: the window measures nothing"
        # Catches the stalled viewer holding up the fan-out (a blocking send, a shared queue): the healthy
        # one then gets a fraction of the frames. The slack is the frames still in flight at t1.
        assert len(got) >= 0.8 * published, f"healthy viewer got {len(got)} of {published} frames"
    finally:
        s.close()


# --- camera outages ---------------------------------------------------------------------------------


def test_camera_killed_and_back(sim_camera_factory: Any, host_factory: Any, record_property: Any) -> None:
    sim = sim_camera_factory(width=W, height=H)
    host = host_factory(sim.url)
    host.wait_live()
    v = Viewer(host.url(), max_s=60)
    v.start()
    try:
        assert v.wait_for(lambda fr: len(live(fr)) >= 10, 15), f"no live video: {v.error}"
        killed = time.monotonic()
        sim.kill()
        # The viewer stays connected and gets the slate.
        assert v.wait_for(lambda fr: any(f.stamp is None and f.t > killed for f in fr), 10), (
            f"no slate after the camera died: {v.error}, {host.snapshot()}"
        )
        slate_after = next(f.t for f in v.frames if f.stamp is None and f.t > killed) - killed
        time.sleep(1.0)
        t_start = time.monotonic()
        sim.start()
        back = time.monotonic()
        assert v.wait_for(lambda fr: any(f.stamp is not None and f.t > back for f in fr), 10), (
            f"no live video after the camera came back: {v.error}, {host.snapshot()}"
        )
        first = next(f.t for f in v.frames if f.stamp is not None and f.t > back)
        assert v.is_alive() and v.error is None, v.error
    finally:
        v.finish()
    print(f"\ncamera killed: slate at viewer after {slate_after:.2f} s; camera back (listening) -> live frame "
          f"at viewer {first - back:.2f} s ({first - t_start:.2f} s incl. camera start)")  # fmt: skip
    record_property("camera_back_to_video_s", round(first - back, 2))
    assert first - back <= 5.0
    snap = host.snapshot()
    assert snap.reconnects >= 1 and snap.state == "live"


def test_camera_down_at_start(sim_camera_factory: Any, host_factory: Any, record_property: Any) -> None:
    sim = sim_camera_factory(start=False, width=W, height=H)
    host = host_factory(sim.url)
    v = Viewer(host.url(), max_s=60)
    v.start()
    try:
        assert v.wait_for(lambda fr: len(fr) >= 2, 15), f"no slate from an absent camera: {v.error}"
        assert not live(v.frames), "live frames from a camera that is not running?"
        assert host.snapshot().state != "live"
        sim.start()
        back = time.monotonic()
        assert v.wait_for(lambda fr: len(live(fr)) >= 5, 15), f"no live video: {v.error}, {host.snapshot()}"
        first = next(f.t for f in v.frames if f.stamp is not None)
        assert v.error is None, v.error
    finally:
        v.finish()
    print(f"\ncamera down at start: first live frame {first - back:.2f} s after the camera started listening")
    record_property("late_camera_to_video_s", round(first - back, 2))
    assert first - back <= 5.0


# --- shutdown and fail closed -------------------------------------------------------------------------


def test_clean_shutdown_with_viewers(
    sim_camera_factory: Any, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sim = sim_camera_factory(width=W, height=H)
    host = LiveHost(make_config(sim.url, model_dir))
    host.start()
    viewers = [Viewer(host.url(), max_s=60) for _ in range(2)]
    try:
        host.wait_live()
        for v in viewers:
            v.start()
        for v in viewers:
            assert v.wait_for(lambda fr: len(fr) >= 5, 15), v.error
        took = host.stop()
        # The viewers see the end of the stream (EOF or a reset), they are not left hanging.
        for v in viewers:
            v.join(10)
            assert not v.is_alive(), "viewer still blocked after shutdown"
    finally:
        host.stop()
        for v in viewers:
            v.halt.set()
    print(f"\nshutdown with 2 viewers: {took:.2f} s; viewers ended with: {[v.error for v in viewers]}")
    assert took < 5.0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    with pytest.raises(OSError):
        socket.create_connection(
            ("127.0.0.1", int(host.url().rsplit(":", 1)[1].split("/")[0])), timeout=2
        ).close()


class _BrokenDetector:
    """A detector that fails on every call (e.g. a corrupt model, an onnxruntime error)."""

    model = "broken"
    last_ms = 0.0

    def __init__(self) -> None:
        self.input_width = 640
        self.calls = 0

    def detect_frame(self, frame: Any) -> list[Any]:
        self.calls += 1
        raise RuntimeError("detector exploded")

    def detect_bgr(self, img: Any) -> list[Any]:
        self.calls += 1
        raise RuntimeError("detector exploded")


def test_fail_closed_end_to_end(sim_camera_factory: Any, host_factory: Any, judge: OnnxFaceDetector) -> None:
    sim = sim_camera_factory(width=W, height=H)
    host = host_factory(sim.url)
    host.wait_live()
    assert host.app is not None
    broken = _BrokenDetector()
    host.app.pipelines["cam"].engine.detector = broken
    swapped = time.monotonic()
    v = Viewer(host.url(), keep_images=True, max_frames=60, max_s=30)
    v.start()
    try:
        # Frames anonymized before the swap may still be in flight: judge the ones after it.
        assert v.wait_for(lambda fr: len([f for f in fr if f.t > swapped + 0.5]) >= 25, 30), v.error
    finally:
        v.finish()
    after = [f for f in v.frames if f.t > swapped + 0.5][:25]
    scores = face_scores(judge, after)
    assert len(scores) == 25 and sum(visible_faces(scores)) == 0, (
        f"faces visible with a broken detector: {scores}"
    )
    snap = host.snapshot()
    assert broken.calls > 0
    assert snap.fail_closed_frames > 0, snap
