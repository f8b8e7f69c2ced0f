"""CameraPipeline on its own: scripted frames in, packets on a real StreamHub out, no network.

The source is a stand-in that hands frames to the pipeline's `_on_frame` as the ingest thread
would; the detector is a stub (fixed boxes, or one that fails); the encoder is libx264 or a
stand-in that keeps what it was given (the rendered pixels). The pipeline's own threads and a real
event loop run as in the product. Each test waits for counts, never for a wall-clock bound, and
feeds the next frame only once the worker has taken the last one, so that a busy machine delays
the test but cannot drop a frame from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from streamproxy.config import AppConfig, EncoderConfig, parse_config
from streamproxy.hub import CodecInfo, StreamHub
from streamproxy.live.encode import H264Encoder
from streamproxy.live.pipeline import CameraPipeline
from streamproxy.live.slate import make_slate
from streamproxy.live.source import OnFrame, OnState
from streamproxy.status import DropCounts
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
    return av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")


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
        self.frames.append((decoded_at, frame.to_ndarray(format="yuv420p")[: frame.height].copy()))
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


async def test_frames_leave_in_order_as_packets_on_the_hub() -> None:
    async with Rig(make_cfg(), "order-cam", StubDetector(), keep=False) as rig:
        pipe, hub = rig.pipe, rig.hub
        await feed(pipe, rig.src, 30)
        await until(settled(pipe))  # frames out are counted as their packets reach the hub
    sent = [df.decoded_at for df in rig.src.sent]
    assert pipe.metrics.frames_in_total == 30
    assert pipe.metrics.drops() == DropCounts(), pipe.metrics.drops()  # nothing dropped
    packets = camera_packets(hub, rig.src)
    # libx264 (zerolatency, no B-frames): one access unit per frame, in the camera's order.
    assert [p.decoded_at for p in packets] == sent
    assert all(b.pts90k > a.pts90k for a, b in itertools.pairwise(packets))
    assert packets[0].keyframe
    # The hub knew the codec before the first packet, and heard every packet on the event loop.
    assert (
        hub.events[0][0] == "codec"
        and hub.codec is not None
        and (hub.codec.width, hub.codec.height) == (W, H)
    )
    assert hub.threads == {threading.get_ident()}
    # Camera frames are measured where their packets reach the hub.
    assert pipe.metrics.frames_out_total == 30 and pipe.latency.percentile(0.5) is not None
    assert rig.detector.calls > 0


async def test_a_face_the_detector_reports_is_masked_in_every_frame_that_leaves() -> None:
    async with Rig(make_cfg(), "mask-cam", StubDetector(), keep=True) as rig:
        await feed(rig.pipe, rig.src, 12)
        await until(settled(rig.pipe))
    frames = rig.camera_frames()
    assert len(frames) == 12
    x1, y1, x2, y2 = (int(v) for v in (FACE.x1, FACE.y1, FACE.x2, FACE.y2))
    for y in frames:
        assert (y[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4] == Y_SOLID).all()  # the face (well inside its mask)
        assert (y[H - 8 :, W - 32 :] != Y_SOLID).all()  # far from it: the picture as it came


async def test_a_failing_detector_fails_closed_never_raw() -> None:
    async with Rig(make_cfg(), "broken-cam", StubDetector(fail=True), keep=True) as rig:
        pipe = rig.pipe
        await feed(pipe, rig.src, 10)
        await until(settled(pipe))
        snap = pipe.snapshot()
    frames = rig.camera_frames()
    # fail_closed.action = obfuscate: every frame left, and every pixel of each is the mask.
    assert len(frames) == 10 == pipe.metrics.frames_out_total
    assert all((y == Y_SOLID).all() for y in frames)
    assert rig.detector.calls == 10  # it is tried again on every frame while it fails
    assert snap.fail_closed_frames == 10 and pipe.engine.stats.fail_closed_frames == 10


async def test_a_failing_detector_with_action_drop_sends_nothing() -> None:
    cfg = make_cfg(engine={"fail_closed": {"action": "drop"}})
    async with Rig(cfg, "drop-cam", StubDetector(fail=True), keep=True) as rig:
        pipe = rig.pipe
        await feed(pipe, rig.src, 6)
        await until(settled(pipe))
    assert rig.camera_frames() == [] and camera_packets(rig.hub, rig.src) == []
    assert pipe.metrics.drops().fail_closed == 6 and pipe.metrics.frames_out_total == 0


async def test_a_worker_failure_is_dropped_and_counted_as_worker() -> None:
    async with Rig(make_cfg(), "worker-cam", StubDetector(), keep=True) as rig:
        pipe = rig.pipe

        def boom(*args: Any, **kw: Any) -> list[Any]:
            raise RuntimeError("worker step exploded")

        pipe.engine.push_pending = boom  # type: ignore[method-assign]
        await feed(pipe, rig.src, 4)
        await until(settled(pipe))
    drops = pipe.metrics.drops()
    assert drops.worker == 4 and drops.encoder == 0
    assert rig.camera_frames() == [] and camera_packets(rig.hub, rig.src) == []


async def test_an_encoder_failure_is_counted_as_encoder() -> None:
    async with Rig(make_cfg(), "encfail-cam", StubDetector(), keep=True) as rig:
        pipe = rig.pipe
        rig.src.send(0)
        await until(lambda: pipe.metrics.frames_out_total == 1)
        rig.encoders[-1].fail = True
        await feed(pipe, rig.src, 3)
        await until(settled(pipe))
    drops = pipe.metrics.drops()
    assert drops.encoder == 3 and drops.worker == 0 and pipe.metrics.frames_out_total == 1


async def test_the_slate_is_published_while_no_frames_arrive_and_no_detector_is_loaded() -> None:
    async with Rig(make_cfg(), "slate-cam", StubDetector(), keep=True) as rig:
        pipe, hub = rig.pipe, rig.hub
        # The slate starts a second after start-up without frames, then comes at slate.fps.
        await until(lambda: len(hub.packets) >= 3)
        snap = pipe.snapshot()
    assert all(p.keyframe for p in hub.packets)  # a viewer joining during the outage sees it at once
    assert hub.codec is not None and (hub.codec.width, hub.codec.height) == (64, 64)
    slate = make_slate(64, 64, "slate-cam").to_ndarray(format="yuv420p")[:64]
    assert all(np.array_equal(y, slate) for _, y in rig.encoders[0].frames)
    assert pipe.latest_frame(max_age_s=60) is not None
    # Our own picture: not a camera frame, so not counted out or measured.
    assert pipe.metrics.frames_out_total == 0 and pipe.latency.percentile(0.5) is None
    # A camera that never sent a frame cost no engine (no detector session), and its status says so.
    assert pipe._engine is None and rig.detector.calls == 0
    assert snap.fail_closed_frames == 0 and snap.detector.model == "yunet" and snap.detector.error is None
    assert pipe._engine is None  # reading the status did not make one


async def test_the_engine_is_made_on_the_first_frame() -> None:
    async with Rig(make_cfg(), "lazy-cam", StubDetector(), keep=True) as rig:
        pipe = rig.pipe
        assert pipe._engine is None
        await feed(pipe, rig.src, 1)
        await until(settled(pipe))
        assert pipe._engine is not None and pipe._engine.detector is rig.detector


async def test_the_sub_stream_goes_through_its_own_hub() -> None:
    cfg = make_cfg(sub_stream={"enabled": True, "width": 64, "fps": 5})
    cam = cfg.cameras[0].model_copy(update={"name": "sub-cam"})
    hub, sub_hub = RecordingHub("sub-cam"), RecordingHub("sub-cam/sub")
    sources: list[FakeSource] = []

    def source_factory(on_frame: OnFrame, on_state: OnState) -> FakeSource:
        sources.append(FakeSource(on_frame, on_state))
        return sources[-1]

    pipe = CameraPipeline(
        cam, cfg, hub, asyncio.get_running_loop(), sub_hub=sub_hub,
        source_factory=source_factory, encoder_factory=H264Encoder, detector=StubDetector(),
    )  # fmt: skip
    src, sub = sources[0], pipe.sub
    assert sub is not None
    pipe.start()
    try:
        await feed(pipe, src, 25)
        await until(settled(pipe))
    finally:
        await asyncio.to_thread(pipe.stop)  # the encoder thread is done: its hand-overs are queued
    await until(lambda: len(sub_hub.packets) == sub.frames_out)
    # 5 of 25 fps (the first frame is always kept, so 5 or 6 of these 25): in order, each one of the
    # main stream's frames, at the sub stream's size; its codec announced first.
    sent = [df.decoded_at for df in src.sent]
    assert [p.decoded_at for p in camera_packets(hub, src)] == sent
    sub_times = [p.decoded_at for p in camera_packets(sub_hub, src)]
    assert 5 <= len(sub_times) <= 6 and sub_times[0] == sent[0]
    assert sub_times == [t for t in sent if t in set(sub_times)]
    assert sub_hub.events[0][0] == "codec" and sub_hub.codec is not None and sub_hub.codec.width == 64
    # Only the main stream's frames are measured.
    assert pipe.metrics.frames_out_total == 25
