"""CameraPipeline without a camera, x264 defaults or a model: a scripted source, stub detector and encoders,
a recording hub (tests/test_pipeline.py, tests/test_status_reasons.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from streamproxy.config import AppConfig, EncoderConfig, parse_config
from streamproxy.hub import CodecInfo, StreamHub
from streamproxy.live.pipeline import CameraPipeline
from streamproxy.live.source import OnFrame, OnState
from streamproxy.types import Box, DecodedFrame, Detection, EncodedPacket

W, H, FPS = 256, 192, 25.0
FACE = Box(40, 30, 72, 70)  # where the stub detector "sees" a face on every frame
Y_SOLID = 16  # the luma of a solid mask (engine/obfuscate.py: black)


def make_cfg(**over: Any) -> AppConfig:
    """One camera, nothing of its own reachable; a generous budget (no budget drops on a busy
    machine), solid masks (easy to check), no sub stream unless asked."""
    cfg: dict[str, Any] = {
        "cameras": [{"name": "cam", "url": "rtsp://127.0.0.1:1/cam"}],
        "latency_budget_ms": 5000,
        "engine": {"obfuscation": {"style": "solid"}},
        "sub_stream": {"enabled": False},
        "slate": {"fps": 10, "width": 64, "height": 64},
    }
    cfg.update(over)
    return parse_config(cfg)


def picture(i: int) -> av.VideoFrame:
    """Frame `i`: bright, with a fine pattern (no region of it is uniform at the solid mask's value)."""
    img = np.full((H, W, 3), 200, np.uint8)
    img[::2, ::2] = 255
    img[:8, : (i % W) + 1] = 90  # a frame number you can see
    return av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)


class StubDetector:
    """A FaceDetector that sees FACE on every frame, or fails when `fail` is set."""

    model = "yunet"
    last_ms = 0.0
    upscale = 1.0

    def __init__(self, fail: bool = False) -> None:
        self.input_width = 640
        self.fail = fail
        self.calls = 0

    def _detect(self) -> list[Detection]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("detector exploded")
        return [Detection(FACE, 0.95)]

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        return self._detect()

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        return self._detect()


class FakeSource:
    """The camera: frames are sent by the test, on the test's thread, as the ingest thread would."""

    frame_rate: float | None = FPS
    reconnects = 0

    def __init__(self, on_frame: OnFrame, on_state: OnState) -> None:
        self.on_frame = on_frame
        self.on_state = on_state
        self.sent: list[DecodedFrame] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def send(self, i: int) -> DecodedFrame:
        if not self.sent:
            self.on_state("cam", "live")
        df = DecodedFrame(picture(i), decoded_at=time.monotonic(), pts_seconds=i / FPS)
        self.sent.append(df)
        self.on_frame(df)
        return df


class KeepingEncoder:
    """An encoder that keeps the luma of every frame it is given (the pixels that would have left),
    by the frame's decoded_at, and turns each into one keyframe packet; `fail` makes it raise."""

    def __init__(self, cfg: EncoderConfig, width: int, height: int, fps: float, name: str = "") -> None:
        self.width, self.height, self.fps = width, height, fps
        self.frames: list[tuple[float, np.ndarray]] = []
        self.fail = False
        self.closed = False
        self._info = CodecInfo(width, height, fps, b"\x67sps", b"\x68pps")

    @property
    def codec_info(self) -> CodecInfo | None:
        return self._info

    def encode(
        self, frame: av.VideoFrame, decoded_at: float, force_keyframe: bool = False
    ) -> list[EncodedPacket]:
        if self.fail:
            raise RuntimeError("encoder exploded")
        self.frames.append((decoded_at, frame.to_ndarray(format="yuv420p", threads=1)[: frame.height].copy()))
        n = len(self.frames)
        return [EncodedPacket(b"\x00\x00\x00\x01\x65", n * 3600, True, decoded_at, time.monotonic())]

    def close(self) -> None:
        self.closed = True


class RecordingHub(StreamHub):
    """A real hub that also notes what reached it, in order, and on which thread."""

    def __init__(self, name: str) -> None:
        super().__init__(name, 64)
        self.events: list[tuple[str, Any]] = []
        self.threads: set[int] = set()

    def set_codec(self, codec: CodecInfo) -> None:
        self.events.append(("codec", codec))
        super().set_codec(codec)

    def publish(self, pkt: EncodedPacket) -> None:
        self.events.append(("packet", pkt))
        self.threads.add(threading.get_ident())
        super().publish(pkt)

    @property
    def packets(self) -> list[EncodedPacket]:
        return [p for kind, p in self.events if kind == "packet"]


async def until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait (letting the loop run the pipeline's hand-overs) until `cond()`; the timeout only ends a
    test that is broken, it is not what a passing test is measured by."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def feed(pipe: CameraPipeline, src: FakeSource, n: int) -> None:
    """n frames, each once the worker has taken the one before (the mailbox never overflows)."""
    for i in range(n):
        src.send(i)
        await until(pipe._mailbox.empty)


def settled(pipe: CameraPipeline) -> Callable[[], bool]:
    """Every frame that came in has left or is counted as dropped."""
    m = pipe.metrics
    return lambda: m.frames_in_total == m.frames_out_total + sum(dataclasses.astuple(m.drops()))


# A machine stalled for over a second between two frames sees a slate in between (the camera looks
# down): the checks below pick the camera's frames out by their decoded_at.
def camera_packets(hub: RecordingHub, src: FakeSource) -> list[EncodedPacket]:
    sent = {df.decoded_at for df in src.sent}
    return [p for p in hub.packets if p.decoded_at in sent]


class Rig:
    """A started pipeline on the test's loop, with what it was given to run on."""

    def __init__(self, cfg: AppConfig, name: str, detector: StubDetector, keep: bool) -> None:
        self.hub = RecordingHub(name)
        self.detector = detector
        self.encoders: list[KeepingEncoder] = []
        self.sources: list[FakeSource] = []

        def source_factory(on_frame: OnFrame, on_state: OnState) -> FakeSource:
            self.sources.append(FakeSource(on_frame, on_state))
            return self.sources[-1]

        def keeping(cfg: EncoderConfig, width: int, height: int, fps: float, name: str) -> KeepingEncoder:
            self.encoders.append(KeepingEncoder(cfg, width, height, fps, name))
            return self.encoders[-1]

        cam = cfg.cameras[0].model_copy(update={"name": name})
        self.pipe = CameraPipeline(
            cam,
            cfg,
            self.hub,
            asyncio.get_running_loop(),
            source_factory=source_factory,
            encoder_factory=keeping if keep else None,
            detector=detector,
        )
        self.src = self.sources[0]

    async def __aenter__(self) -> Rig:
        self.pipe.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.pipe.stop)

    def camera_frames(self) -> list[np.ndarray]:
        """The luma of each camera frame that reached an encoder, in order."""
        sent = {df.decoded_at for df in self.src.sent}
        return [y for enc in self.encoders for t, y in enc.frames if t in sent]
