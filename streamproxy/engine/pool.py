"""One detector for all live cameras: a pool of sessions, earliest deadline first.

Why: each camera with a session of its own runs its detector whenever its worker gets there, and on
a small machine four cameras' runs then share two cores by the operating system's time slices: every
run takes four times as long and all four come late together. A pool of as many sessions as the
process has cores (its CPU set, not the host's count) runs at most that many at once, and always
the run whose frames must leave first (the camera's deadline: when its oldest waiting frame must be
encoded to leave inside the budget). A camera whose picture is quiet (change gating: small or no
looks) leaves its share to a busy one, and N cameras hold as many sessions as there are cores, not N
(~50 MB each).

What stays per camera: its settings (input width, threshold: set on the session for each run), its
deadline, its failures (a run that raises, raises in that camera's engine only, which fails that
camera's frames closed), and the shedding at its floor (the pipeline's, as before). The engine sees
a FaceDetector (`PooledDetector`) and does not know about the pool.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from streamproxy.config import DetectorConfig
from streamproxy.engine.detect import OnnxFaceDetector, create_detector
from streamproxy.types import Detection, align32

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

T = TypeVar("T")
_Job = tuple[float, int, Callable[[OnnxFaceDetector], object], Future[object]]


def pool_key(cfg: DetectorConfig) -> str:
    """Cameras whose detector settings differ only in what a run sets (input width, threshold,
    threads) share a pool; any other difference (model, tiles, flip, ...) gets a pool of its own."""
    return cfg.model_copy(
        update={"input_width": 640, "threshold": 0.5, "threads": 1, "upscale": 0.0}
    ).model_dump_json()


def pool_shape(cores: int, cameras: int) -> tuple[int, int]:
    """(sessions, threads per session) for `cameras` cameras on `cores` cores.

    One session per core, single-threaded, once there are as many cameras as cores: runs of
    different cameras in parallel use the cores best (YuNet at 1280x736 is memory-bound: two
    one-thread runs get more done than one two-thread run). Fewer cameras than cores: each
    camera's worker runs one look at a time, so its session gets the cores' threads (measured, one
    720p camera on 2 cores: 20.5 fps with 2 threads, 14 with 1)."""
    sessions = max(1, min(cores, cameras))
    return sessions, max(1, min(2, cores // sessions))


class DetectorPool:
    """Sessions of one detector configuration, shared by cameras; `run` blocks its caller (a
    camera's worker thread) until a session has run the job, earliest deadline first."""

    def __init__(
        self,
        cfg: DetectorConfig,
        sessions: int,
        threads: int = 1,
        name: str = "detector",
        factory: Callable[[DetectorConfig], OnnxFaceDetector] = create_detector,
    ) -> None:
        self.cfg = cfg.model_copy(update={"threads": threads})
        self._factory = factory  # makes a session (tests: a stand-in)
        self.size = max(1, sessions)
        self.name = name
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._closed = False
        self.runs = 0

    def check(self) -> None:
        """Raise models.ModelError now if the model file is missing (the engine reports it per camera)."""
        from streamproxy.engine.models import model_path

        model_path(self.cfg.model, self.cfg.model_dir)

    def run(self, fn: Callable[[OnnxFaceDetector], T], deadline: float) -> T:
        """Run `fn` on a session; jobs wait in order of `deadline` (time.monotonic()), then arrival."""
        fut: Future[object] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{self.name}: detector pool is closed")
            if len(self._workers) < self.size:
                # Sessions start with the first jobs: a process whose cameras never send loads none.
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._workers)}", daemon=True)
                self._workers.append(t)
                t.start()
            heapq.heappush(
                self._heap, (deadline if math.isfinite(deadline) else math.inf, next(self._seq), fn, fut)
            )
            self._cv.notify()
        return fut.result()  # type: ignore[return-value]

    def _work(self) -> None:
        det: OnnxFaceDetector | None = None
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if not self._heap:
                    return
                _deadline, _seq, fn, fut = heapq.heappop(self._heap)
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if det is None:
                    det = self._factory(self.cfg)
                fut.set_result(fn(det))
                self.runs += 1
            except BaseException as err:  # the caller's engine fails its frames closed
                fut.set_exception(err)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._workers:
            t.join(timeout=5)


class PooledDetector:
    """One camera's detector (the engine's FaceDetector) on a shared pool: the camera's own settings
    and deadline, the pool's sessions."""

    def __init__(self, pool: DetectorPool, cfg: DetectorConfig) -> None:
        self.pool = pool
        self.model: str = cfg.model
        self.threshold = cfg.threshold
        self.upscale = cfg.upscale
        self._input_width = align32(cfg.input_width)
        self._regions = (
            cfg.tiles <= 1 and cfg.upscale <= 1.0 and not any(u > 1.0 for u in cfg.upscales) and not cfg.flip
        )
        self.last_ms = 0.0
        # When this camera's next run must be done (time.monotonic()); set by the pipeline before
        # each push. Without one (tests, a single camera), runs are served in arrival order.
        self.deadline = math.inf

    @property
    def input_width(self) -> int:
        return self._input_width

    @input_width.setter
    def input_width(self, value: int) -> None:
        self._input_width = align32(value)

    @property
    def regions_supported(self) -> bool:
        return self._regions

    def _run(self, call: Callable[[OnnxFaceDetector], list[Detection]]) -> list[Detection]:
        width, threshold, upscale = self._input_width, self.threshold, self.upscale

        def job(det: OnnxFaceDetector) -> list[Detection]:
            det.input_width, det.threshold, det.upscale = width, threshold, upscale
            return call(det)

        t0 = time.perf_counter()
        try:
            return self.pool.run(job, self.deadline)
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        return self._run(lambda det: det.detect_frame(frame))

    def detect_regions(
        self, frame: av.VideoFrame, regions: Sequence[tuple[int, int, int, int]]
    ) -> list[Detection]:
        return self._run(lambda det: det.detect_regions(frame, regions))

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        return self._run(lambda det: det.detect_bgr(img))
