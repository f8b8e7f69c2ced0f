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
import itertools
import threading
from typing import Any

import numpy as np
from pipekit import (
    FACE,
    Y_SOLID,
    FakeSource,
    H,
    RecordingHub,
    Rig,
    StubDetector,
    W,
    camera_packets,
    feed,
    make_cfg,
    settled,
    until,
)

from streamproxy.live.encode import H264Encoder
from streamproxy.live.pipeline import SLATE_BURST_S, CameraPipeline
from streamproxy.live.slate import make_slate
from streamproxy.live.source import OnFrame, OnState
from streamproxy.status import DropCounts


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
    slate = make_slate(64, 64, "slate-cam").to_ndarray(format="yuv420p", threads=1)[:64]
    assert all(np.array_equal(y, slate) for _, y in rig.encoders[0].frames)
    assert pipe.latest_frame(max_age_s=60) is not None
    # Our own picture: not a camera frame, so not counted out or measured.
    assert pipe.metrics.frames_out_total == 0 and pipe.latency.percentile(0.5) is None
    # A camera that never sent a frame cost no engine (no detector session), and its status says so.
    assert pipe._engine is None and rig.detector.calls == 0
    assert snap.fail_closed_frames == 0 and snap.detector.model == "yunet" and snap.detector.error is None
    assert pipe._engine is None  # reading the status did not make one


async def test_a_viewer_joining_while_the_camera_is_down_gets_the_slate_fast_for_a_moment() -> None:
    """FFmpeg with default settings reads ~30 frames before it plays: at the slate's 2 fps that is
    ~15 s of black for a viewer of a down camera. A viewer's arrival brings SLATE_BURST_FPS for
    SLATE_BURST_S, then the slate's own rate again (counted in equal windows: a rate, not a time)."""

    async def slates_in(hub: RecordingHub, seconds: float) -> int:
        n0 = len(hub.packets)
        await asyncio.sleep(seconds)
        return len(hub.packets) - n0

    cfg = make_cfg(slate={"fps": 2, "width": 64, "height": 64})  # the default rate
    async with Rig(cfg, "slate-cam", StubDetector(), keep=True) as rig:
        pipe, hub = rig.pipe, rig.hub
        await until(lambda: len(hub.packets) >= 1)
        calm = await slates_in(hub, SLATE_BURST_S)
        pipe.viewer_joined()
        burst = await slates_in(hub, SLATE_BURST_S)
        after = await slates_in(hub, SLATE_BURST_S)
    # 2 fps: ~4 slates a window; the burst ~50 (fewer on a busy box, never near 4).
    assert calm <= 6 and burst >= 3 * max(calm, 2) and after * 3 <= burst, (calm, burst, after)


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
