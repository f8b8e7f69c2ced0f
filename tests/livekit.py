"""The live service under test, its viewers and the face judge, shared by the end-to-end tests.

* `make_config(url, model_dir)`: one camera "cam" on loopback (640x360 sims, free ports).
* `LiveHost`: the service on its own loop in a thread (streamproxy_sim.harness.AppThread) plus what the
  tests ask of it (`url`, `snapshot`, `wait_live`); `camera_and_host(config_for)`: a gst camera and the
  live service on it, started and live (skips where gst is missing), for module fixtures.
* `Viewer`: a PyAV viewer in a thread that records every decoded frame (`Seen`) with the camera's
  barcode stamp; `live()` keeps the camera's frames (not the slate).
* `rtsp_exchange` / `rtsp_status`: raw RTSP over a socket.
* `face_scores` / `visible_faces`: the face judge (the fixture `judge` in conftest.py is the detector).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamproxy.config import AppConfig, parse_config
from streamproxy.engine.detect import OnnxFaceDetector
from streamproxy.status import PipelineStatus
from streamproxy_sim.camsim import SimCamera, free_port, read_stamp, system_gst_available
from streamproxy_sim.harness import AppThread

W, H = 640, 360
USER, PASSWORD = "alice", "s3cret-pw"
LOW_DELAY = {"probesize": "32", "analyzeduration": "0", "flags": "low_delay"}


def make_config(
    url: str,
    model_dir: Path,
    users: list[dict[str, str]] | None = None,
    ingest: dict[str, Any] | None = None,
    **camera: Any,
) -> AppConfig:
    """One camera "cam" (640x360 sims) on loopback; `ingest` replaces keys of the ingest section,
    `camera` adds keys to the camera's section."""
    base = random.randrange(20000, 60000, 2)  # the server scans the range for a free UDP pair
    return parse_config(
        {
            "cameras": [{"name": "cam", "url": url, **camera}],
            "server": {
                "host": "127.0.0.1",
                "rtsp_port": free_port(),
                "http_port": free_port(),
                "rtp_port_min": base,
                "rtp_port_max": base + 60,
                "users": users or [],
            },
            "ingest": {"read_timeout_s": 2, "backoff_max_s": 1, "backoff_initial_s": 0.2, **(ingest or {})},
            # The camera is 640 wide: detecting at 640 (not the default upscale to 1280) keeps CPU low.
            "engine": {"detector": {"input_width": 640, "model_dir": str(model_dir)}},
            "slate": {"width": W, "height": H},
        }
    )


class LiveHost(AppThread):
    """The service on its own loop in a thread, plus what these tests ask of it."""

    def url(self, path: str = "cam", user: str | None = None, password: str | None = None) -> str:
        return self.rtsp_url(path, user, password)

    def snapshot(self) -> PipelineStatus:
        assert self.app is not None
        return self.app.pipelines["cam"].snapshot()

    def wait_live(self, timeout: float = 20) -> None:
        """Until the pipeline has published live (camera) frames."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.snapshot()
            if s.state == "live" and s.frames_out > 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"pipeline not live within {timeout} s: {self.snapshot()}")


@contextlib.contextmanager
def camera_and_host(config_for: Callable[[str], AppConfig]) -> Iterator[tuple[SimCamera, LiveHost]]:
    """A gst camera (W x H, real faces) and the live service on it (`config_for(camera_url)`), live."""
    import pytest  # only where a test asks: the kit's other helpers run without pytest (bench)

    why = system_gst_available()
    if why:
        pytest.skip(why)
    sim = SimCamera(width=W, height=H).start()
    host = LiveHost(config_for(sim.url))
    try:
        host.start()
        host.wait_live()
        yield sim, host
    finally:
        host.stop()
        sim.stop()


@dataclass
class Seen:
    t: float  # time.monotonic() when decoded
    stamp: int | None  # the camera's capture time (ms), None on the slate or a fully obfuscated frame
    wall_ms: float  # time.time() in ms when decoded
    bgr: np.ndarray | None


class Viewer(threading.Thread):
    """Decodes an RTSP URL with PyAV until told to stop, `max_frames`, `max_s`, or the stream ends."""

    def __init__(
        self,
        url: str,
        transport: str = "tcp",
        keep_images: bool = False,
        max_frames: int = 5000,
        max_s: float = 60,
    ) -> None:
        super().__init__(daemon=True, name="viewer")
        self.url, self.transport, self.keep_images = url, transport, keep_images
        self.max_frames, self.max_s = max_frames, max_s
        self.frames: list[Seen] = []
        self.error: str | None = None
        self.opened_at: float | None = None
        self.ended_at: float | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            opts = {"rtsp_transport": self.transport, **LOW_DELAY}
            with av.open(self.url, options=opts, timeout=(5, 5)) as c:
                self.opened_at = time.monotonic()
                for f in c.decode(video=0):
                    y = f.to_ndarray(format="gray", threads=1)
                    bgr = f.to_ndarray(format="bgr24", threads=1) if self.keep_images else None
                    now_ms = time.time() * 1000
                    stamp = read_stamp(y)
                    # A plain dark picture (the slate) reads as stamp 0 (all blocks black, CRC 0):
                    # only a time near now is a real capture time.
                    if stamp is not None and abs(now_ms - stamp) > 60_000:
                        stamp = None
                    self.frames.append(Seen(time.monotonic(), stamp, now_ms, bgr))
                    if (
                        self.halt.is_set()
                        or len(self.frames) >= self.max_frames
                        or time.monotonic() - t0 > self.max_s
                    ):
                        break
        except Exception as err:  # EOF/reset at shutdown, or a real failure: the test judges
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.ended_at = time.monotonic()

    def wait_for(self, pred: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.frames):
                return True
            if not self.is_alive():
                return bool(pred(self.frames))
            time.sleep(0.05)
        return False

    def finish(self, timeout: float = 10) -> None:
        """Stop now (after the next frame) and wait for the thread."""
        self.halt.set()
        self.done(timeout)

    def done(self, timeout: float) -> None:
        """Wait for the thread to reach its own limit (max_frames, max_s) or the end of the stream."""
        self.join(timeout)
        assert not self.is_alive(), "viewer thread did not end"


def live(frames: list[Seen]) -> list[Seen]:
    return [f for f in frames if f.stamp is not None]


def rtsp_exchange(
    sock: socket.socket, method: str, url: str, cseq: int, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {url} RTSP/1.0", f"CSeq: {cseq}", "User-Agent: e2e-test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before a response")
        buf += chunk
        assert len(buf) < 65536
    head, rest = buf.split(b"\r\n\r\n", 1)
    status_line, *hdr_lines = head.decode().split("\r\n")
    status = int(status_line.split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in hdr_lines if ":" in ln)}
    length = int(hdrs.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        rest += chunk
    return status, hdrs, rest[:length]


def rtsp_status(url: str, port: int, method: str = "DESCRIBE") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return rtsp_exchange(s, method, url, 1, {"Accept": "application/sdp"})[0]


# A face "is visible" when the same detector finds it with confidence: the camera's faces score
# 0.93+ here. Blurred heads keep a face-like blob (skin-coloured ellipse, dark hair on top) that YuNet
# scores up to ~0.6 with no identifiable detail left, so the judge's bar sits between the two.
VISIBLE = 0.7


def face_scores(judge: OnnxFaceDetector, frames: list[Seen]) -> list[list[float]]:
    """Per frame, the scores of what the judge finds (highest first)."""
    return [
        sorted((d.score for d in judge.detect_bgr(f.bgr)), reverse=True) for f in frames if f.bgr is not None
    ]


def visible_faces(scores: list[list[float]]) -> list[int]:
    return [sum(1 for x in per_frame if x >= VISIBLE) for per_frame in scores]
