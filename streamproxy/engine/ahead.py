"""Bulk video, detection ahead: the detector runs ahead of the engine, on several frames at once.

(Not look-ahead, which holds live frames for the next detector run: see engine/__init__.py.)

Why: YuNet at 1280x736 is memory-bound on a small machine. On the 2-core reference machine one
session on 2 threads took 34 ms for 55 ms of CPU per frame, one on 1 thread 38 ms for 38 ms. Two
single-threaded sessions, each on a frame of its own, get more frames out of the same CPU. The
decode thread hands each frame over as soon as it is decoded, so the engine thread (tracker,
temporal fill, masks) waits less for the model. Measured with `bench/bulk_speed.py` (bench/README.md:
"Detection ahead of the engine").

What stays as it was: every frame is detected, by the same model at the same settings, and the
engine takes the results in frame order. `detect_frame` returns the result of exactly that frame.
A worker's exception is raised from `detect_frame`, where the engine fails the frame closed as with
any detector error. Only bulk video uses this. Live cameras keep one session each: there the
latency controller and the per-frame deadline decide.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from streamproxy.config import DetectorConfig
from streamproxy.engine.detect import OnnxFaceDetector, create_detector
from streamproxy.host import usable_cores
from streamproxy.types import Detection

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

# Beyond 4 sessions the other stages (one x264 thread, the engine's Python) limit a 720p video
# anyway, and each session holds its own buffers (~75 MB at 1280x736).
MAX_SESSIONS = 4

_Job = tuple[Callable[[OnnxFaceDetector], list[Detection]], Future[tuple[list[Detection], float]]]


def ahead_sessions(cfg: DetectorConfig, detect_every: int) -> int:
    """How many single-threaded sessions a bulk video gets; 1 means the plain detector.

    Only with automatic threads (`threads: 0`: a user who set threads keeps one session with that
    many) and with the detector on every frame (the results are matched to frames in order).
    """
    if cfg.threads != 0 or detect_every != 1:
        return 1
    return max(1, min(MAX_SESSIONS, usable_cores()))


class DetectAhead:
    """Several single-threaded sessions of one detector, fed frames by `submit` (the decode thread)
    and asked for their results in the same order by `detect_frame` (the engine).

    The sessions beyond the first are loaded on the first `running()`, so that a batch of stills
    never loads them. Outside `running()` every call runs on the caller's thread, on the first session.
    """

    def __init__(self, cfg: DetectorConfig, sessions: int) -> None:
        self.cfg = cfg.model_copy(update={"threads": 1})
        self.sessions = max(1, sessions)
        self._members: list[OnnxFaceDetector] = [create_detector(self.cfg)]
        self.model = self._members[0].model
        self.last_ms = 0.0
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending: deque[tuple[av.VideoFrame, Future[tuple[list[Detection], float]]]] = deque()
        self._workers: list[threading.Thread] = []

    # -- the settings bulk mode changes per file: every session gets them --------------------

    @property
    def input_width(self) -> int:
        return self._members[0].input_width

    @input_width.setter
    def input_width(self, value: int) -> None:
        for m in self._members:
            m.input_width = value

    @property
    def upscale(self) -> float:
        return self._members[0].upscale

    @upscale.setter
    def upscale(self, value: float) -> None:
        for m in self._members:
            m.upscale = value

    @property
    def threshold(self) -> float:
        return self._members[0].threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        for m in self._members:
            m.threshold = value

    # -- workers ------------------------------------------------------------------------------

    @contextmanager
    def running(self) -> Iterator[None]:
        """Start one worker per session for one video; stop them (and drop what is pending) after.

        Started from the caller's thread, so the workers keep its CPU priority (the decode and
        encode threads run below it)."""
        first = self._members[0]
        while len(self._members) < self.sessions:
            m = create_detector(self.cfg)
            m.input_width, m.upscale, m.threshold = first.input_width, first.upscale, first.threshold
            self._members.append(m)
        self._workers = [
            threading.Thread(target=self._work, args=(m,), name=f"detect-ahead-{i}", daemon=True)
            for i, m in enumerate(self._members)
        ]
        for t in self._workers:
            t.start()
        try:
            yield
        finally:
            # What was submitted and not asked for (a stopped video) is not detected any more.
            while self._pending:
                self._pending.popleft()[1].cancel()
            for _ in self._workers:
                self._jobs.put(None)
            for t in self._workers:
                t.join()
            self._workers = []

    def _work(self, det: OnnxFaceDetector) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result((fn(det), det.last_ms))
            except BaseException as err:  # handed to the engine, which fails the frame closed
                fut.set_exception(err)

    def _run(self, fn: Callable[[OnnxFaceDetector], list[Detection]]) -> list[Detection]:
        if not self._workers:
            det = self._members[0]
            try:
                return fn(det)
            finally:
                self.last_ms = det.last_ms
        fut: Future[tuple[list[Detection], float]] = Future()
        self._jobs.put((fn, fut))
        dets, self.last_ms = fut.result()
        return dets

    # -- the decode thread --------------------------------------------------------------------

    def submit(self, frame: av.VideoFrame) -> None:
        """Start detecting `frame` (the decode thread, as each frame is decoded)."""
        if not self._workers:
            return
        fut: Future[tuple[list[Detection], float]] = Future()
        self._pending.append((frame, fut))
        self._jobs.put((lambda det: det.detect_frame(frame), fut))

    # -- the engine (the FaceDetector protocol) -----------------------------------------------

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        """`frame`'s detections: the submitted result, waited for; run now if it was not submitted."""
        while self._pending:
            submitted, fut = self._pending.popleft()
            if submitted is frame:
                dets, self.last_ms = fut.result()
                return dets
            # Submitted but never asked for: not expected in bulk mode (every frame is detected, in
            # order). Its result is dropped; correctness does not depend on it.
            fut.cancel()
            log.debug("detect-ahead: a submitted frame was skipped by the engine")
        return self._run(lambda det: det.detect_frame(frame))

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        return self._run(lambda det: det.detect_bgr(img))
