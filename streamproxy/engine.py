"""The anonymization engine: detect → track → obfuscate for one stream or one file, failing closed.

Used by every output: bulk files (anonymize.py), live RTSP/WebRTC (pipeline.py). One Anonymizer per
stream; it is not thread-safe and is driven from one worker thread at a time.

Fail closed: the only way a frame leaves `process_frame` with faces unmasked is a face the detector
and the tracker both missed. Any failure of the detector (exception, missing model) makes the engine
obfuscate the whole frame, or drop it, and count it — until the detector succeeds again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import av
import numpy as np

from .config import EngineConfig
from .detect import FaceDetector, create_detector
from .obfuscate import (
    fill_zones,
    frame_from_planes,
    obfuscate,
    obfuscate_whole,
    planes_from_bgr,
    planes_from_yuv420,
)
from .track import Tracker
from .types import AnonymizedFrame, Detection, Plane, Planes, Track

log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    frames: int = 0
    detector_runs: int = 0
    faces_detected: int = 0
    fail_closed_frames: int = 0
    dropped_frames: int = 0
    detector_ms_total: float = 0.0


class Anonymizer:
    """Anonymizes the frames of one stream (or a single image) in order."""

    def __init__(self, cfg: EngineConfig, name: str = "", detector: FaceDetector | None = None) -> None:
        self.cfg = cfg
        self.name = name or "-"
        self.detect_every = cfg.detect_every
        # Which frames of each cadence cycle get the detector, as a fraction of the cycle: cameras of
        # one process are spread over the cycle so their detector runs do not all land on the same
        # moment (they compete for the same cores and each would take several frame intervals).
        self.detect_phase = 0.0
        self.stats = EngineStats()
        self._tracker = Tracker(cfg.tracker, cfg.obfuscation.box_factor)
        self._frame_size: tuple[int, int] | None = None
        # The last detector run failed: every frame is failed closed until one succeeds, since the
        # tracker's masks are no longer backed by fresh detections.
        self._detector_failing = False
        self.last_fail_reason = ""
        self.detector: FaceDetector | None = detector
        self.detector_error: str = ""
        self.active_tracks = 0
        if self.detector is None:
            try:
                self.detector = create_detector(cfg.detector)
            except Exception as err:  # model missing/corrupt: keep running, but fail closed on every frame
                self.detector_error = str(err)
                log.error("%s: detector unavailable, every frame will be failed closed: %s", self.name, err)

    def _detect(self, run: bool, frame: av.VideoFrame | None, img: np.ndarray | None) -> tuple[
        list[Detection] | None, float, str
    ]:
        """Run the detector when due. Returns (detections or None if not run, ms, failure reason)."""
        if self.detector is None:
            return None, 0.0, "model_missing"
        if not run and not self._detector_failing:
            return None, 0.0, ""
        t0 = time.perf_counter()
        try:
            dets = self.detector.detect_frame(frame) if frame is not None else self.detector.detect_bgr(img)  # type: ignore[arg-type]
        except Exception as err:
            ms = (time.perf_counter() - t0) * 1000
            if not self._detector_failing:
                log.error("%s: detector failed, failing closed: %s", self.name, err, exc_info=True)
            self._detector_failing = True
            return None, ms, "detector_error"
        ms = (time.perf_counter() - t0) * 1000
        if self._detector_failing:
            log.warning("%s: detector recovered", self.name)
        self._detector_failing = False
        self.stats.detector_runs += 1
        self.stats.detector_ms_total += ms
        self.stats.faces_detected += len(dets)
        return dets, ms, ""

    def _masks(self, dets: list[Detection] | None, t: float, w: int, h: int) -> list[Track]:
        if self._frame_size != (w, h):
            if self._frame_size is not None:
                log.info("%s: frame size changed %s -> %s, tracker reset", self.name, self._frame_size, (w, h))
            self._tracker.reset()
            self._frame_size = (w, h)
        tracks = self._tracker.update(dets, t, w, h)
        self.active_tracks = len(tracks)
        return tracks

    def _fail_closed(self, planes: Planes, reason: str) -> bool:
        """Apply the fail-closed action. Returns True if the frame must be dropped."""
        self.stats.fail_closed_frames += 1
        self.last_fail_reason = reason
        if self.cfg.fail_closed.action == "drop":
            self.stats.dropped_frames += 1
            return True
        obfuscate_whole(planes, self.cfg.obfuscation)
        return False

    def process_frame(
        self, frame: av.VideoFrame, t: float, decoded_at: float = 0.0, force_detect: bool = False
    ) -> AnonymizedFrame:
        """Anonymize one decoded video frame. `t` is the frame's time in seconds (for motion/coasting).

        The decoder's frame is never modified (decoders keep reference frames): the output is a new frame.
        """
        index = self.stats.frames
        self.stats.frames += 1
        every = max(1, self.detect_every)
        run = force_detect or (index + int(self.detect_phase * every)) % every == 0
        dets, ms, reason = self._detect(run, frame, None)
        planes, buf = planes_from_yuv420(frame)
        fill_zones(planes, self.cfg.privacy_zones)
        if reason:
            drop = self._fail_closed(planes, reason)
            out = None if drop else frame_from_planes(buf, frame)
            return AnonymizedFrame(out, decoded_at, 0, 0, True, ms, True, reason)
        tracks = self._masks(dets, t, frame.width, frame.height)
        obfuscate(planes, [tr.mask for tr in tracks], self.cfg.obfuscation)
        return AnonymizedFrame(
            frame=frame_from_planes(buf, frame),
            decoded_at=decoded_at,
            faces=len(dets) if dets is not None else 0,
            tracks=len(tracks),
            detector_ran=dets is not None,
            detector_ms=ms,
            fail_closed=False,
        )

    def process_image(self, img: np.ndarray) -> tuple[np.ndarray | None, int, bool]:
        """Anonymize a still image (BGR, BGRA or grey, uint8) in place of a copy.

        Returns (image or None if dropped, faces found, failed_closed). A still is one frame: the
        detector always runs and there is no tracking history to lean on.
        """
        out = img.copy()
        if out.ndim == 2:
            color = np.repeat(out[:, :, None], 3, axis=2)
        else:
            color = np.ascontiguousarray(out[:, :, :3])
        self.stats.frames += 1
        dets, _ms, reason = self._detect(True, None, color)
        self._tracker.reset()
        h, w = out.shape[:2]
        if out.ndim == 2:
            planes = Planes(w, h, (Plane(out, 1.0, 0),))
        else:
            planes = planes_from_bgr(out[:, :, :3])  # alpha, if any, is left as it is
        fill_zones(planes, self.cfg.privacy_zones)
        if reason:
            drop = self._fail_closed(planes, reason)
            return (None if drop else out), 0, True
        tracks = self._masks(dets or [], 0.0, w, h)
        obfuscate(planes, [tr.mask for tr in tracks], self.cfg.obfuscation)
        return out, len(dets or []), False
