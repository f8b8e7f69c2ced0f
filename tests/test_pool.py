"""The shared detector pool (engine/pool.py): earliest deadline first, a camera's failure stays its
own, each camera's settings per run, no more runs at once than sessions. Pure logic: the sessions are
stand-ins (the real detector's part is tested in test_change.py and the end-to-end tests)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from streamproxy.config import DetectorConfig, EngineConfig
from streamproxy.engine.anonymizer import Anonymizer
from streamproxy.engine.pool import DetectorPool, PooledDetector, pool_key, pool_shape


class Session:
    """Stands in for an onnxruntime session: records the settings each run found on it."""

    made = 0

    def __init__(self, cfg: DetectorConfig) -> None:
        Session.made += 1
        self.input_width = cfg.input_width
        self.threshold = cfg.threshold
        self.upscale = 0.0


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_the_earliest_deadline_runs_first() -> None:
    pool = DetectorPool(DetectorConfig(), sessions=1, factory=Session)  # type: ignore[arg-type]
    gate = threading.Event()
    order: list[float] = []
    blocker = threading.Thread(target=pool.run, args=(lambda s: gate.wait(10), 0.0))
    blocker.start()
    wait_until(lambda: pool.runs == 0 and not pool._heap and len(pool._workers) == 1)
    callers = []
    for deadline in (3.0, 1.0, 2.0, 5.0, 4.0):
        t = threading.Thread(target=pool.run, args=(lambda s, d=deadline: order.append(d), deadline))
        t.start()
        callers.append(t)
    wait_until(lambda: len(pool._heap) == 5)  # all queued behind the blocker
    gate.set()
    for t in [blocker, *callers]:
        t.join(10)
    pool.close()
    assert order == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_failing_run_fails_only_its_caller() -> None:
    pool = DetectorPool(DetectorConfig(), sessions=1, factory=Session)  # type: ignore[arg-type]

    def broken(_s: Any) -> None:
        raise RuntimeError("this camera's run broke")

    with pytest.raises(RuntimeError, match="this camera's run broke"):
        pool.run(broken, 1.0)
    assert pool.run(lambda s: "fine", 2.0) == "fine"
    pool.close()


def test_a_session_that_cannot_load_fails_the_run_and_the_next_one_tries_again() -> None:
    tries = []

    def factory(cfg: DetectorConfig) -> Session:
        tries.append(1)
        if len(tries) == 1:
            raise OSError("model file unreadable")
        return Session(cfg)

    pool = DetectorPool(DetectorConfig(), sessions=1, factory=factory)  # type: ignore[arg-type]
    with pytest.raises(OSError):
        pool.run(lambda s: None, 1.0)
    assert pool.run(lambda s: "loaded", 1.0) == "loaded" and len(tries) == 2
    pool.close()


def test_no_more_runs_at_once_than_sessions_and_sessions_made_once() -> None:
    Session.made = 0
    pool = DetectorPool(DetectorConfig(), sessions=2, factory=Session)  # type: ignore[arg-type]
    lock = threading.Lock()
    now = [0]
    most = [0]

    def job(_s: Any) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.01)
        with lock:
            now[0] -= 1

    callers = [threading.Thread(target=lambda: [pool.run(job, 1.0) for _ in range(5)]) for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(20)
    pool.close()
    assert pool.runs == 20 and most[0] == 2 and Session.made == 2


def test_each_camera_runs_with_its_own_settings() -> None:
    pool = DetectorPool(DetectorConfig(), sessions=1, factory=Session)  # type: ignore[arg-type]
    a = PooledDetector(pool, DetectorConfig(input_width=1280, threshold=0.25))
    b = PooledDetector(pool, DetectorConfig(input_width=1920, threshold=0.3))
    seen = []  # the stand-in session answers its settings, not detections
    for cam in (a, b, a):
        seen.append(cam._run(lambda s: [(s.input_width, s.threshold)]))  # type: ignore[list-item]
    b.input_width = 960  # the latency controller's setting, as the engine's configure() sets it
    seen.append(b._run(lambda s: [(s.input_width, s.threshold)]))  # type: ignore[list-item]
    pool.close()
    assert seen == [[(1280, 0.25)], [(1920, 0.3)], [(1280, 0.25)], [(960, 0.3)]]


def test_a_camera_on_a_broken_pool_fails_its_frames_closed() -> None:
    import av
    import numpy as np

    def factory(cfg: DetectorConfig) -> Session:
        raise RuntimeError("no session")

    pool = DetectorPool(DetectorConfig(), sessions=1, factory=factory)  # type: ignore[arg-type]
    eng = Anonymizer(EngineConfig(detect_every=1), detector=PooledDetector(pool, DetectorConfig()))
    frame = av.VideoFrame.from_ndarray(np.full((360, 640, 3), 90, np.uint8), format="bgr24").reformat(
        format="yuv420p", threads=1
    )
    out = [p.render() for p in eng.push_pending(frame, 0.0, 0.0)]
    pool.close()
    assert len(out) == 1 and out[0].fail_closed and out[0].fail_reason == "detector_error"
    assert eng.stats.fail_closed_frames == 1


@pytest.mark.parametrize(
    ("cores", "cameras", "shape"),
    [(2, 1, (1, 2)), (2, 4, (2, 1)), (2, 2, (2, 1)), (8, 3, (3, 2)), (1, 6, (1, 1))],
)
def test_pool_shape(cores: int, cameras: int, shape: tuple[int, int]) -> None:
    assert pool_shape(cores, cameras) == shape


def test_cameras_share_a_pool_unless_their_detector_differs_beyond_per_run_settings() -> None:
    base = DetectorConfig(input_width=1280, threshold=0.25)
    assert pool_key(base) == pool_key(
        base.model_copy(update={"input_width": 1920, "threshold": 0.3, "threads": 2})
    )
    assert pool_key(base) != pool_key(base.model_copy(update={"model": "centerface"}))
    assert pool_key(base) != pool_key(base.model_copy(update={"tiles": 2}))
