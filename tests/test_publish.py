"""publish_url: the anonymized stream pushed to a real RTSP server that accepts RECORD.

The server is GStreamer's gst-rtsp-server in RECORD mode (`streamproxy_sim/gst/gst_record.py`, run by
Debian's /usr/bin/python3), which depayloads and decodes what it receives with avdec_h264 and
reports each decoded frame: a FRAME line is proof of decodable H.264 on the far side. Everything
binds 127.0.0.1; every wait is bounded. The publisher's RTSP client itself (ANNOUNCE/RECORD, a 401
answered with Digest, sender reports, a server that stops reading, rtsps) is tested against a
scripted server in test_rtsp_client.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from livekit import make_config

from streamproxy.config import ConfigError, DetectorConfig, EncoderConfig, parse_config
from streamproxy.h264 import has_sps
from streamproxy.hub import StreamHub
from streamproxy.live.encode import H264Encoder
from streamproxy.serve.publish import Publisher
from streamproxy_sim.camsim import SYSTEM_PYTHON, free_port, read_ready, system_gst_available
from streamproxy_sim.harness import AppThread

log = logging.getLogger(__name__)

RECORD_SCRIPT = Path(__file__).resolve().parent.parent / "streamproxy_sim" / "gst" / "gst_record.py"
W, H = 320, 240
LATE_S = 0.5  # a Feeder frame begun this long after its slot is late (the camera lost its pace)
USER, PASSWORD = "pub", "pa55-w0rd"


# --- the recording server -------------------------------------------------------------------------


class RecordServer:
    """gst_record.py in a child process; counts the frames it decoded from what was published."""

    def __init__(self, port: int | None = None, path: str = "pub", dump: Path | None = None,
                 user: str | None = None, password: str | None = None, auth: str = "basic") -> None:  # fmt: skip
        self.port = port if port is not None else free_port()
        self.path = path
        self.dump = dump
        self.user, self.password, self.auth = user, password, auth
        self.frames = 0
        self.sizes: set[str] = set()
        self.dumped: tuple[Path, int, int] | None = None
        self.lines: deque[str] = deque(maxlen=50)
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/{self.path}"

    def start(self, timeout: float = 20.0) -> RecordServer:
        cmd = [SYSTEM_PYTHON, str(RECORD_SCRIPT), "--port", str(self.port), "--path", self.path,
               "--bind", "127.0.0.1", "--exit-on-stdin-eof"]  # fmt: skip
        if self.dump is not None:
            cmd += ["--dump", str(self.dump), "--dump-at", "15"]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or "", "--auth", self.auth]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,  # never written: EOF when this process dies, and the server exits
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "GST_DEBUG": "1"},
        )
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        ready, buf = read_ready(proc, timeout)
        if not ready:
            err = proc.stderr.read1(65536) if proc.poll() is not None else b""  # type: ignore[attr-defined]
            self.stop()
            raise RuntimeError(f"record server did not start: {buf!r} {err!r}")
        rest = buf[buf.index(b"READY ") :].split(b"\n", 1)[1]
        for line in rest.decode().splitlines():
            self._line(line)
        self._threads = [
            threading.Thread(target=self._read, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()
        return self

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self._line(raw.decode(errors="replace").rstrip())

    def _line(self, line: str) -> None:
        self.lines.append(line)
        parts = line.split()
        with self._cond:
            if parts[:1] == ["FRAME"] and len(parts) == 3:
                self.frames = max(self.frames, int(parts[1]))
                self.sizes.add(parts[2])
            elif parts[:1] == ["DUMP"] and len(parts) == 3:
                w, h = (int(v) for v in parts[2].split("x"))
                self.dumped = (Path(parts[1]), w, h)
            self._cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout)

    def wait_frames(self, n: int, timeout: float) -> bool:
        return self.wait(lambda: self.frames >= n, timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is read: a stalled server."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused server could not act on SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        for t in self._threads:
            t.join(2)


@pytest.fixture(scope="session")
def _gst() -> None:
    why = system_gst_available()
    if why:
        pytest.skip(why)


@pytest.fixture
def record_server_factory(_gst: None) -> Iterator[Callable[..., RecordServer]]:
    servers: list[RecordServer] = []

    def make(start: bool = True, **kw: Any) -> RecordServer:
        s = RecordServer(**kw)
        servers.append(s)
        return s.start() if start else s

    yield make
    for s in servers:
        s.stop()


# --- a synthetic camera: encoder -> hub, on the test's loop -------------------------------------------


class Feeder:
    """Encodes a moving test pattern at `fps` into a hub, as the pipeline does (codec, then packets)."""

    def __init__(
        self, hub: StreamHub, width: int = W, height: int = H, fps: int = 25, noise_kbps: int = 0
    ) -> None:
        self.hub = hub
        # noise_kbps > 0: a noisy picture encoded at that rate (a real camera's bitrate), so that
        # socket buffers toward a stalled server fill in seconds rather than minutes.
        self.noise_kbps = noise_kbps
        self._rng = np.random.default_rng(1)
        self.fps = fps
        self.size = (width, height)
        self.frames = 0
        # Frames begun more than LATE_S after their slot on the feeder's schedule. It catches up
        # after a hiccup (no sleep while behind), so a busy box makes few; an event loop blocked
        # for seconds (by a publisher) makes most frames of the block late.
        self.late = 0
        self._t0 = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def late_slots(self) -> int:
        """Frames begun late, and slots already more than LATE_S overdue that are not begun yet (a
        loop that is blocked right now has not begun them: they count as late all the same)."""
        overdue = math.ceil((time.monotonic() - LATE_S - self._t0) * self.fps) - self.frames
        return self.late + max(0, overdue)

    def resize(self, width: int, height: int) -> None:
        self.size = (width, height)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        enc: H264Encoder | None = None
        t0 = self._t0 = time.monotonic()
        while True:
            if time.monotonic() - (t0 + self.frames / self.fps) > LATE_S:
                self.late += 1
            w, h = self.size
            if enc is None or (enc.width, enc.height) != (w, h):
                kbps = self.noise_kbps or 500
                enc = H264Encoder(EncoderConfig(bitrate_kbps=kbps), w, h, self.fps, name="feeder")
            if self.noise_kbps:
                img = self._rng.integers(64, 192, (h * 3 // 2, w), np.uint8)
            else:
                img = np.full((h * 3 // 2, w), 128, np.uint8)
            x = (self.frames * 4) % (w - 40)
            img[40:80, x : x + 40] = 235  # a moving white square: real motion, real P-frames
            frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
            packets = enc.encode(frame, time.monotonic(), force_keyframe=self.hub.take_keyframe_request())
            if enc.codec_info is not None and self.hub.codec != enc.codec_info:
                self.hub.set_codec(enc.codec_info)
            for p in packets:
                self.hub.publish(p)
            self.frames += 1
            await asyncio.sleep(max(0.0, t0 + self.frames / self.fps - time.monotonic()))


async def _until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(step)
    return pred()


async def _wait_frames(server: RecordServer, n: int, timeout: float) -> bool:
    return await asyncio.to_thread(server.wait_frames, n, timeout)


# --- unit-level -------------------------------------------------------------------------------------


def test_config_publish_url_validated() -> None:
    base = {"name": "a", "url": "rtsp://cam/x"}
    cfg = parse_config({"cameras": [{**base, "publish_url": "rtsps://u:p@mtx.example:8322/a"}]})
    assert cfg.cameras[0].publish_url == "rtsps://u:p@mtx.example:8322/a"
    assert parse_config({"cameras": [base]}).cameras[0].publish_url is None
    for bad in ("http://mtx/a", "rtsp:///nohost", "mtx:8554/a"):
        with pytest.raises(ConfigError, match=r"cameras\[0\]\.publish_url"):
            parse_config({"cameras": [{**base, "publish_url": bad}]})


def test_has_sps() -> None:
    """The first access unit of a session carries SPS/PPS in-band (publish._with_parameter_sets)."""
    assert has_sps(b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68\xce")
    assert not has_sps(b"\x00\x00\x00\x01\x41\x9a")
    assert not has_sps(b"")


async def test_unreachable_server_backs_off_without_touching_the_hub(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens: attempts back off exponentially (capped), no subscription is held, the URL's
    password never reaches the logs."""
    hub = StreamHub("cam", 8)
    feeder = Feeder(hub)
    feeder.start()
    port = free_port()  # nothing listens there
    pub = Publisher(hub, f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{port}/pub", backoff_initial_s=0.05,
                    backoff_max_s=0.2, io_timeout_s=1.0)  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="streamproxy")
    try:
        pub.start()
        assert await _until(lambda: pub.attempts >= 5, 10)
        assert not pub.up and pub.sessions == 0
        assert "Connection refused" in pub.last_error or "ConnectionRefused" in pub.last_error
        assert hub.viewers() == 0  # never subscribed while the server is down
    finally:
        await pub.stop(timeout=5)
        await feeder.stop()
    assert PASSWORD not in caplog.text and PASSWORD not in str(pub.snapshot())
    assert "***@127.0.0.1" in caplog.text


# --- against the real RECORD server -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_publishes_decodable_h264_and_restarts_on_resize(
    record_server_factory: Callable[..., RecordServer], tmp_path: Path
) -> None:
    # Digest: the server answers our first ANNOUNCE with a challenge (the app test below: Basic).
    server = record_server_factory(dump=tmp_path / "frame.i420", user=USER, password=PASSWORD, auth="digest")
    hub = StreamHub("cam", 50)
    feeder = Feeder(hub)
    feeder.start()
    pub = Publisher(hub, server.url(USER, PASSWORD), backoff_initial_s=0.1, backoff_max_s=0.5)
    try:
        pub.start()
        assert await _wait_frames(server, 25, 20), list(server.lines)
        assert pub.up and pub.sessions == 1
        assert server.sizes == {f"{W}x{H}"}
        assert server.dumped is not None
        path, w, h = server.dumped
        y = np.frombuffer(path.read_bytes(), np.uint8)[: w * h].reshape(h, w)
        # The decoded picture is the pattern (grey field, white square), not decoder garbage.
        assert abs(float(np.median(y)) - 128) < 6
        assert (y > 200).sum() > 0.5 * 40 * 40

        # Resolution change: a new RTSP session with the new parameters.
        before = server.frames
        feeder.resize(352, 288)
        assert await asyncio.to_thread(server.wait, lambda: "352x288" in server.sizes, 20), list(server.lines)
        assert await _wait_frames(server, before + 40, 20)
        assert pub.sessions == 2 and pub.up
    finally:
        await pub.stop(timeout=10)
        await feeder.stop()
    assert not pub.up
    assert hub.viewers() == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_aborting_one_session_spares_another_camera_on_the_same_server(
    record_server_factory: Callable[..., RecordServer],
) -> None:
    """Several cameras usually publish to one media server: the stall watchdog's abort() ends only
    its own session (it shuts down that session's own socket), and that one reconnects."""
    server = record_server_factory()
    hubs = [StreamHub(f"cam{i}", 50) for i in range(2)]
    feeders = [Feeder(h) for h in hubs]
    for f in feeders:
        f.start()
    pubs = [Publisher(h, server.url(), backoff_initial_s=0.1, backoff_max_s=0.5) for h in hubs]
    try:
        for p in pubs:
            p.start()
        for _ in range(400):  # <= 20 s
            if all(p.up for p in pubs):
                break
            await asyncio.sleep(0.05)
        assert all(p.up for p in pubs) and [p.sessions for p in pubs] == [1, 1]
        session = pubs[0]._current
        assert session is not None
        session.abort()
        for _ in range(400):  # <= 20 s
            if pubs[0].sessions >= 2:
                break
            await asyncio.sleep(0.05)
        assert pubs[0].sessions == 2  # the aborted one reconnected ...
        await asyncio.sleep(1.0)
        assert pubs[1].sessions == 1 and pubs[1].up  # ... and the other never noticed
    finally:
        for p in pubs:
            await p.stop(timeout=10)
        for f in feeders:
            await f.stop()


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_server_down_at_start_then_up_then_gone_then_back(
    record_server_factory: Callable[..., RecordServer],
) -> None:
    server = record_server_factory(start=False)
    hub = StreamHub("cam", 50)
    feeder = Feeder(hub)
    feeder.start()
    pub = Publisher(hub, server.url(), backoff_initial_s=0.1, backoff_max_s=0.8, io_timeout_s=2.0)
    try:
        pub.start()
        assert await _until(lambda: pub.attempts >= 2, 10)
        assert not pub.up and hub.viewers() == 0

        t_up = time.monotonic()
        await asyncio.to_thread(server.start)
        assert await _wait_frames(server, 25, 20), list(server.lines)
        log.info("published frames %.1f s after the server came up", time.monotonic() - t_up)
        assert pub.up

        # The server goes away mid-stream: the publisher notices, and resumes once it is back.
        await asyncio.to_thread(server.stop)
        assert await _until(lambda: not pub.up, 15), pub.snapshot()
        assert feeder.frames > 0
        attempts = pub.attempts
        server2 = record_server_factory(port=server.port)
        assert await _until(lambda: pub.attempts > attempts, 10)
        assert await _wait_frames(server2, 25, 20), list(server2.lines)
        assert pub.up and pub.sessions >= 2
    finally:
        await pub.stop(timeout=10)
        await feeder.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_stalled_server_costs_only_the_publisher(
    record_server_factory: Callable[..., RecordServer],
) -> None:
    """The server stops reading mid-stream: the camera keeps its pace and another viewer of the hub
    loses nothing; the publisher drops to keyframes, times out, and reconnects once it is back."""
    server = record_server_factory()
    hub = StreamHub("cam", 50)
    feeder = Feeder(hub, 640, 360, noise_kbps=4000)
    feeder.start()
    pub = Publisher(hub, server.url(), backoff_initial_s=0.1, backoff_max_s=0.5, io_timeout_s=2.0)
    lost: dict[str, int] = {}  # frames shed per protocol (the publisher's are "publish")
    hub.on_slow_viewer_drop = lambda protocol, n: lost.__setitem__(protocol, lost.get(protocol, 0) + n)
    viewer = hub.subscribe("rtsp")
    got = 0

    async def watch() -> None:
        nonlocal got
        while True:
            await viewer.get()
            got += 1

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        pub.start()
        assert await _wait_frames(server, 25, 20), list(server.lines)
        frames0, late0, t0, dropped0 = (
            feeder.frames,
            feeder.late_slots(),
            time.monotonic(),
            lost.get("rtsp", 0),
        )
        server.pause()
        # Detected once the socket buffers are full (a few MB here) and a write times out.
        assert await _until(lambda: not pub.up, 45), pub.snapshot()
        stall_s = time.monotonic() - t0
        made, late = feeder.frames - frames0, feeder.late_slots() - late0
        # Counts, not a wall-clock rate: the camera kept its pace if hardly any of its frames was
        # late. A publisher that blocked the loop until its write timed out (io_timeout_s, 2 s)
        # makes ~40 late in a window of 5-10 s (125-250 frames); a busy box, hardly any.
        assert made > 0 and late * 10 <= made, (
            f"{late} of {made} camera frames late while the publish server stalled"
        )
        assert lost.get("rtsp", 0) == dropped0, "another viewer lost frames to the stalled publish server"
        log.info(
            "stall detected after %.1f s (%s); %d camera frames meanwhile, %d late",
            stall_s,
            pub.last_error,
            made,
            late,
        )
        server.resume()
        before = server.frames
        assert await _until(lambda: pub.up, 20), pub.snapshot()
        assert await _wait_frames(server, before + 25, 20), list(server.lines)
        assert pub.sessions >= 2
    finally:
        watcher.cancel()
        viewer.close()
        await pub.stop(timeout=10)
        await feeder.stop()
    assert got > 0


# --- through the whole service --------------------------------------------------------------------------


def _decode_frames(url: str, n: int, max_s: float) -> int:
    """Frames a PyAV viewer decodes from `url` within `max_s` (stops at `n`)."""
    got = 0
    deadline = time.monotonic() + max_s
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(10, 5)) as c:
        for frame in c.decode(video=0):
            assert frame.width == 640
            got += 1
            if got >= n or time.monotonic() > deadline:
                break
    return got


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_app_publishes_only_anonymized_frames_and_survives_an_absent_server(
    sim_camera_factory: Callable[..., Any],
    record_server_factory: Callable[..., RecordServer],
    model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Camera with faces -> the whole service -> publish_url. The target is down at start: the
    service's own RTSP output is unaffected and the publisher retries; once the server comes up it
    receives decodable H.264 in which a face detector finds no face."""
    from streamproxy.engine.detect import create_detector
    from streamproxy.metrics import render_latest

    caplog.set_level(logging.INFO, logger="streamproxy")
    sim = sim_camera_factory(width=640, height=360)
    rec = record_server_factory(start=False, dump=tmp_path / "published.i420", user=USER, password=PASSWORD)
    host = AppThread(make_config(sim.url, model_dir, publish_url=rec.url(USER, PASSWORD)))
    app = host.start()
    pub = app.publishers["cam"]
    hub = app.hubs["cam"]
    try:
        # 1. Publish target unreachable: viewers of the proxy itself are served all the same.
        assert _decode_frames(host.rtsp_url("cam"), 25, 30) == 25
        deadline = time.monotonic() + 10
        while pub.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.attempts >= 2 and not pub.up and pub.sessions == 0
        assert hub.viewers("publish") == 0

        # 2. The server comes up: the publisher finds it within its backoff (capped at 1 s here).
        t_up = time.monotonic()
        rec.start()
        assert rec.wait_frames(1, 20), list(rec.lines)
        first_s = time.monotonic() - t_up
        assert rec.wait_frames(50, 30), list(rec.lines)
        log.info("first published frame decoded %.2f s after the server came up", first_s)
        assert pub.up and pub.sessions == 1 and rec.sizes == {"640x360"}

        # 3. What was published is anonymized: the face detector finds no face in a received frame.
        assert rec.dumped is not None
        path, w, h = rec.dumped
        bgr = cv2.cvtColor(
            np.frombuffer(path.read_bytes(), np.uint8).reshape(h * 3 // 2, w), cv2.COLOR_YUV2BGR_I420
        )
        assert float(bgr.std()) > 10  # a picture, not a blank
        judge = create_detector(DetectorConfig(input_width=640, threshold=0.3, model_dir=model_dir))
        scores = sorted((d.score for d in judge.detect_bgr(bgr)), reverse=True)
        assert not [s for s in scores if s >= 0.7], f"faces visible in the published stream: {scores}"
        body = render_latest()[0].decode()
        assert 'streamproxy_publish_up{camera="cam"} 1.0' in body
        # The API shows the push's state, never its URL or password.
        with urllib.request.urlopen(f"http://127.0.0.1:{app.web.port}/api/cameras", timeout=5) as resp:
            api = resp.read().decode()
        cam = next(c for c in json.loads(api) if c["name"] == "cam")
        assert cam["publish"]["up"] is True and cam["publish"]["sessions"] == 1
        assert "url" not in cam["publish"] and PASSWORD not in api
    finally:
        stop_s = host.stop()
    log.info("app stopped in %.2f s while publishing", stop_s)
    assert stop_s < 15
    assert not pub.up
    assert PASSWORD not in caplog.text
