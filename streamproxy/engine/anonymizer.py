"""The anonymization engine: detect → track → obfuscate for one stream or one file, failing closed.

Used by every output: bulk files (anonymize.py), live RTSP/WebRTC (pipeline.py). One Anonymizer per
stream; it is not thread-safe and is driven from one worker thread at a time.

Fail closed: the only way a frame leaves the engine with faces unmasked is a face the detector and
the tracker both missed. Any failure of the detector (exception, missing model) makes the engine
obfuscate the whole frame, or drop it, and count it — until the detector succeeds again.

Three ways in, one per kind of caller:
* `process_image` (stills): one picture, detected whole, no history;
* `push_offline` / `flush_offline` (bulk video): every frame waits up to a second for the frames
  after it, so that a face is masked from both directions in time (engine/temporal.py: weak
  detections confirmed by a confident one of the same face, tracklets extended before their first
  and after their last detection, gaps interpolated);
* `push_pending` / `flush_pending` (live): look-ahead. A frame the detector does not run on waits
  for the next run, on a later frame; a face first found there is masked back along its path in the
  frames that waited, and a face seen at both runs is masked where it was between them
  (interpolated). So a face is masked from the first frame in which it is visible even though the
  detector runs only on every k-th frame: the price is latency (k-1 frame intervals at most, inside
  the budget), not privacy. Look-ahead alone serves every camera; on a fixed camera a run also need
  not look at the whole picture: with change gating (engine/change.py, `change_gate`) every live
  frame is compared with how each part of the picture looked at its last look, and a run looks at
  what changed, around the tracks and at one tile of a rolling scan. A moving camera (the shared
  street clip, from a bus), a PTZ turn or a lighting step changes everywhere and gets whole looks,
  as without it.

The live and bulk video ways hand out `PendingFrame`s: the masks are decided here, the pixels are
obfuscated by `render()` in the thread that sends the frame on (`push_offline` renders at once).

Look-ahead (frames held here for the next detector run) is not detection ahead (engine/ahead.py:
bulk video's worker threads that run the detector on frames before the engine asks for them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import av
import numpy as np

from streamproxy.config import EngineConfig
from streamproxy.engine.change import ChangeGate, GateSettings, LookPlan
from streamproxy.engine.detect import FaceDetector, create_detector
from streamproxy.engine.obfuscate import (
    fill_zones,
    frame_from_planes,
    obfuscate,
    obfuscate_whole,
    planes_from_bgr,
    planes_from_yuv420,
)
from streamproxy.engine.temporal import WEAK_THRESHOLD, WINDOW_MAX_BYTES, WINDOW_S, TemporalFill
from streamproxy.engine.track import Tracker
from streamproxy.types import AnonymizedFrame, Box, Detection, Plane, Planes, Track

if TYPE_CHECKING:
    from streamproxy.metrics import FailClosedReason

log = logging.getLogger(__name__)

# Look-ahead masks for the frames that waited for a detector run (see the module docstring).
# A face first found at the run: where it was before is unknown, so its mask grows backwards in time
# by up to this many face widths per second on each side (the tracker's largest believable speed:
# a walker crossing the view), at most BACKFILL_MAX_FACES.
BACKFILL_FACES_PER_S = 8.0
BACKFILL_MAX_FACES = 1.0
# A face seen at both runs: its mask is interpolated between the two, plus this margin per side
# (face widths) for a path that was not straight.
INTERP_MARGIN_FACES = 0.15
# Bulk video: a temporal-fill mask overlapping one of the tracker's this much is merged into it.
MERGE_IOU = 0.5
# A frame whose masks were grown past the face by more than this many face sizes per side, for what
# the engine could not know (a face seen once, a gap, fast motion), is counted as widened
# (EngineStats.widened_frames, streamproxy_widened_frames_total): over-masking the engine chose for
# safety, reported as fail-closed frames are.
WIDE_MARGIN_FACES = 0.4


@dataclass(slots=True)
class _Held:
    """A frame waiting for the next detector run, with the tracker's prediction for it."""

    frame: av.VideoFrame
    t: float
    decoded_at: float
    masks: dict[int, Box]  # track id -> predicted mask
    margin: float  # the widest of their margins (face sizes per side)


@dataclass(frozen=True, slots=True)
class _OfflineHeld:
    """A bulk video frame waiting for later frames (push_offline), its detector outcome decided."""

    frame: av.VideoFrame
    index: int
    t: float
    decoded_at: float
    masks: tuple[Box, ...]  # the forward tracker's
    margin: float  # the widest of their margins (face sizes per side)
    faces: int
    ran: bool
    ms: float
    fail_reason: str = ""
    drop: bool = False
    detections: tuple[Detection, ...] = ()  # at or above the counted threshold, where the detector ran


@dataclass(frozen=True, slots=True)
class PendingFrame:
    """A live frame whose masks are decided, to be rendered by the thread that sends it on.

    `render()` copies the decoded frame and obfuscates it: the masks and privacy zones, or the whole
    frame when failing closed (or nothing at all: dropped). It is the only way to the pixels, so a
    pending frame cannot leave un-anonymized; rendering in the encoder's thread takes that work off
    the thread that runs the detector (engine state is not touched: the masks are fixed here).
    """

    _frame: av.VideoFrame
    decoded_at: float
    masks: tuple[Box, ...]
    faces: int  # detections on this frame (0 where the detector did not run)
    detector_ran: bool
    detector_ms: float
    _cfg: EngineConfig
    fail_reason: str = ""  # set: failed closed (whole frame obfuscated, or dropped)
    _drop: bool = False
    widened: bool = False  # a mask was grown past WIDE_MARGIN_FACES for safety (counted)
    # Bulk video: the detections that counted on this frame (the review log of issue #23 shows them).
    detections: tuple[Detection, ...] = ()

    @property
    def fail_closed(self) -> bool:
        return bool(self.fail_reason)

    def render(self) -> AnonymizedFrame:
        frame = self._frame
        if self.fail_closed and self._drop:
            return AnonymizedFrame(
                None, self.decoded_at, 0, 0, True, self.detector_ms, True, self.fail_reason
            )
        planes, buf = planes_from_yuv420(frame)
        fill_zones(planes, self._cfg.privacy_zones)
        if self.fail_closed:
            obfuscate_whole(planes, self._cfg.obfuscation)
            out = frame_from_planes(buf, frame)
            return AnonymizedFrame(out, self.decoded_at, 0, 0, True, self.detector_ms, True, self.fail_reason)
        w, h = frame.width, frame.height
        obfuscate(planes, [m.clipped(w, h) for m in self.masks], self._cfg.obfuscation)
        return AnonymizedFrame(
            frame_from_planes(buf, frame),
            self.decoded_at,
            self.faces,
            len(self.masks),
            self.detector_ran,
            self.detector_ms,
            False,
            widened=self.widened,
        )


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """The frame's luma plane as a (height x width) uint8 view, without conversion where it is plane 0."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"):
        plane = frame.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        return rows[:, : plane.width]
    gray: np.ndarray = frame.to_ndarray(format="gray", threads=1)
    return gray


def _merged(masks: tuple[Box, ...], more: list[Box]) -> tuple[Box, ...]:
    """`masks` with `more` added; one that mostly overlaps a mask widens it instead (the same face
    from the tracker and the temporal fill: one blur of the union, not two of nearly the same area)."""
    out = list(masks)
    for m in more:
        k = next((i for i, o in enumerate(out) if o.iou(m) >= MERGE_IOU), None)
        if k is None:
            out.append(m)
        else:
            out[k] = out[k].union(m)
    return tuple(out)


class EngineEvents(Protocol):
    """Who else hears of the engine's events as they are counted (live: the camera's metrics)."""

    def detection(self, seconds: float, faces: int) -> None: ...

    def fail_closed_frame(self, reason: FailClosedReason) -> None: ...

    def widened_frame(self) -> None: ...

    def look(self, kind: str, share: float) -> None: ...


@dataclass
class EngineStats:
    """The engine's events, counted once, where they happen; `events` (if any) is told of each in
    the same call, so that a camera's metrics and its status read the same numbers."""

    frames: int = 0
    detector_runs: int = 0
    faces_detected: int = 0
    fail_closed_frames: int = 0
    dropped_frames: int = 0  # failed closed with fail_closed.action = drop
    widened_frames: int = 0  # masks grown past the face for safety (WIDE_MARGIN_FACES)
    detector_ms_total: float = 0.0
    # Live change gating (engine/change.py): runs by what they looked at, and the picture looked at.
    whole_looks: int = 0
    region_looks: int = 0
    quiet_runs: int = 0  # nothing changed and no face followed: nothing to look at
    looked_share_total: float = 0.0  # sum over runs of the share of the picture looked at
    # CPU of this thread (time.thread_time) in the detector calls and in the change gate's
    # comparisons: where a camera's worker time goes (bench/profile_live.py).
    detect_cpu_s: float = 0.0
    observe_cpu_s: float = 0.0
    events: EngineEvents | None = field(default=None, repr=False, compare=False)

    def detector_ran(self, ms: float, faces: int) -> None:
        """One detector run that succeeded, taking `ms` and finding `faces`."""
        self.detector_runs += 1
        self.detector_ms_total += ms
        self.faces_detected += faces
        if self.events is not None:
            self.events.detection(ms / 1000, faces)

    def looked(self, kind: str, share: float) -> None:
        """One live run's look: "whole", "regions" or "quiet", covering `share` of the picture."""
        if kind == "whole":
            self.whole_looks += 1
        elif kind == "regions":
            self.region_looks += 1
        else:
            self.quiet_runs += 1
        self.looked_share_total += share
        if self.events is not None:
            self.events.look(kind, share)

    def frame_widened(self) -> None:
        """One frame whose masks were grown past the face for safety (WIDE_MARGIN_FACES)."""
        self.widened_frames += 1
        if self.events is not None:
            self.events.widened_frame()

    def failed_closed(self, reason: FailClosedReason, dropped: bool) -> None:
        """One frame failed closed (whole frame obfuscated, or dropped)."""
        self.fail_closed_frames += 1
        if dropped:
            self.dropped_frames += 1
        if self.events is not None:
            self.events.fail_closed_frame(reason)


class Anonymizer:
    """Anonymizes the frames of one stream (or a single image) in order."""

    def __init__(
        self,
        cfg: EngineConfig,
        name: str = "",
        detector: FaceDetector | None = None,
        *,
        detect_phase: float = 0.0,
        max_unmasked_frames: int = 0,
        events: EngineEvents | None = None,
        change_gate: GateSettings | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = name or "-"
        self.detect_every = cfg.detect_every
        # Which frames of each cadence cycle get the detector, as a fraction of the cycle: cameras of
        # one process are spread over the cycle so their detector runs do not all land on the same
        # moment (they compete for the same cores and each would take several frame intervals).
        self.detect_phase = detect_phase
        self.stats = EngineStats(events=events)
        self._tracker = Tracker(cfg.tracker, cfg.obfuscation.box_factor)
        self._frame_size: tuple[int, int] | None = None
        # The last detector run failed: every frame is failed closed until one succeeds, since the
        # tracker's masks are no longer backed by fresh detections.
        self._detector_failing = False
        self.detector: FaceDetector | None = detector
        self.detector_error: str = ""
        # Look-ahead (push_pending/flush_pending): frames waiting for the next detector run, frames since the last
        # run (None before the first), and the masks of the last run by track id (interpolation).
        self.max_unmasked_frames = max_unmasked_frames
        self._held: list[_Held] = []
        self._since_run: int | None = None
        self._run_masks: dict[int, Box] = {}
        self._run_t: float | None = None
        # Change gating (live only, engine/change.py): where the next run must look.
        self._gate_settings = change_gate
        self._gate: ChangeGate | None = None
        # Bulk video (push_offline): frames waiting for later frames, and their tracklets.
        self._offline: list[_OfflineHeld] = []
        self._fill: TemporalFill | None = None
        # Stills: the masks `process_image` applied to the last picture (its review log, issue #23).
        self.last_masks: tuple[Box, ...] = ()
        if self.detector is None:
            try:
                self.detector = create_detector(cfg.detector)
            except Exception as err:  # model missing/corrupt: keep running, but fail closed on every frame
                self.detector_error = str(err)
                log.error("%s: detector unavailable, every frame will be failed closed: %s", self.name, err)

    def _detect(
        self,
        run: bool,
        frame: av.VideoFrame | None,
        img: np.ndarray | None,
        regions: tuple[tuple[int, int, int, int], ...] | None = None,
    ) -> tuple[list[Detection] | None, float, FailClosedReason | None]:
        """Run the detector when due (on `regions` of `frame` only, when given). Returns (detections
        or None if not run, ms, failure reason)."""
        if self.detector is None:
            return None, 0.0, "model_missing"
        if not run and not self._detector_failing:
            return None, 0.0, None
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            if regions is not None and frame is not None:
                dets = self.detector.detect_regions(frame, regions)  # type: ignore[attr-defined]
            else:
                dets = (
                    self.detector.detect_frame(frame) if frame is not None else self.detector.detect_bgr(img)  # type: ignore[arg-type]
                )
        except Exception as err:
            ms = (time.perf_counter() - t0) * 1000
            self.stats.detect_cpu_s += time.thread_time() - c0
            if not self._detector_failing:
                log.error("%s: detector failed, failing closed: %s", self.name, err, exc_info=True)
            self._detector_failing = True
            return None, ms, "detector_error"
        ms = (time.perf_counter() - t0) * 1000
        self.stats.detect_cpu_s += time.thread_time() - c0
        if self._detector_failing:
            log.warning("%s: detector recovered", self.name)
        self._detector_failing = False
        self.stats.detector_ran(ms, len(dets))
        return dets, ms, None

    def _masks(self, dets: list[Detection] | None, t: float, w: int, h: int) -> list[Track]:
        if self._frame_size != (w, h):
            if self._frame_size is not None:
                log.info(
                    "%s: frame size changed %s -> %s, tracker reset", self.name, self._frame_size, (w, h)
                )
            self._tracker.reset()
            self._frame_size = (w, h)
        return self._tracker.update(dets, t, w, h)

    def _count_fail(self, reason: FailClosedReason) -> bool:
        """Count a frame failed closed. Returns True if the action says it must be dropped."""
        drop = self.cfg.fail_closed.action == "drop"
        self.stats.failed_closed(reason, drop)
        return drop

    def _fail_closed(self, planes: Planes, reason: FailClosedReason) -> bool:
        """Apply the fail-closed action. Returns True if the frame must be dropped."""
        if self._count_fail(reason):
            return True
        obfuscate_whole(planes, self.cfg.obfuscation)
        return False

    # --- bulk video: both directions in time (engine/temporal.py) ---------------------------

    def push_offline(
        self, frame: av.VideoFrame, t: float, strong: float | None = None, decoded_at: float = 0.0
    ) -> list[AnonymizedFrame]:
        """`push_offline_pending`, each frame rendered here (bulk video renders in its engine thread)."""
        return [p.render() for p in self.push_offline_pending(frame, t, strong, decoded_at)]

    def push_offline_pending(
        self, frame: av.VideoFrame, t: float, strong: float | None = None, decoded_at: float = 0.0
    ) -> list[PendingFrame]:
        """Bulk video: take one frame; return the frames that may be written now, in order.

        One result per frame pushed, in push order (`frame` None: dropped, failing closed); call
        `flush_offline` after the last. The detector runs on every `detect_every`-th frame (bulk mode:
        every frame; and on every frame while it is failing) and must report candidates down to `temporal.WEAK_THRESHOLD`; `strong` (default: the configured threshold)
        is the score the forward tracker and a tracklet's confirmation need. A frame leaves once
        `temporal.WINDOW_S` of later frames have been detected (fewer when they would exceed
        `temporal.WINDOW_MAX_BYTES`), masked by the tracker and by the temporal fill.
        """
        out: list[PendingFrame] = []
        if self._offline and (self._offline[0].frame.width, self._offline[0].frame.height) != (
            frame.width,
            frame.height,
        ):
            out += self.flush_offline_pending()  # a new size resets the tracker: finish the old size first
        thr = self.cfg.detector.threshold if strong is None else strong
        self._tracker.offline = True  # every frame is detected; the fill knows both directions
        if self._fill is None or self._fill.strong != thr:
            self._fill = TemporalFill(thr, WEAK_THRESHOLD, self.cfg.obfuscation.box_factor)
        index = self.stats.frames
        self.stats.frames += 1
        every = max(1, self.detect_every)
        dets, ms, reason = self._detect((index + int(self.detect_phase * every)) % every == 0, frame, None)
        if reason:
            drop = self._count_fail(reason)
            self._offline.append(
                _OfflineHeld(frame, index, t, decoded_at, (), 0.0, 0, True, ms, reason, drop)
            )
        else:
            sure = None if dets is None else [d for d in dets if d.score >= thr]
            tracks = self._masks(sure, t, frame.width, frame.height)
            self._fill.add(index, t, dets)
            masks = tuple(tr.mask for tr in tracks)
            margin = max((tr.margin for tr in tracks), default=0.0)
            faces = len(sure) if sure is not None else 0
            self._offline.append(
                _OfflineHeld(frame, index, t, decoded_at, masks, margin, faces, dets is not None, ms,
                             detections=tuple(sure or ()))
            )  # fmt: skip
        cap = max(1, WINDOW_MAX_BYTES // max(1, frame.width * frame.height * 3 // 2))
        while self._offline and (t - self._offline[0].t >= WINDOW_S or len(self._offline) > cap):
            out.append(self._release_offline())
        return out

    def flush_offline(self) -> list[AnonymizedFrame]:
        """`flush_offline_pending`, each frame rendered here."""
        return [p.render() for p in self.flush_offline_pending()]

    def flush_offline_pending(self) -> list[PendingFrame]:
        """Bulk video, end of file (or of a frame size): every held frame, masked, in order."""
        out = [self._release_offline() for _ in range(len(self._offline))]
        self._fill = None
        return out

    def _release_offline(self) -> PendingFrame:
        h = self._offline.pop(0)
        masks: tuple[Box, ...] = h.masks
        margin = h.margin
        if not h.fail_reason and self._fill is not None:
            more, fill_margin = self._fill.masks_and_margin(h.index, h.t)
            masks, margin = _merged(h.masks, more), max(margin, fill_margin)
            nxt = self._offline[0] if self._offline else h
            self._fill.forget(nxt.index, nxt.t, self._offline[-1].t if self._offline else h.t)
        return PendingFrame(
            h.frame, h.decoded_at, masks, h.faces, h.ran, h.ms, self.cfg, fail_reason=h.fail_reason, _drop=h.drop,
            widened=self._widened(margin, h.fail_reason), detections=h.detections,
        )  # fmt: skip

    # --- live: look-ahead -------------------------------------------------------------------

    def configure(self, detect_every: int, input_width: int | None = None) -> None:
        """The latency controller's settings: detector cadence and input width (the floor is the
        controller's business; the engine does what it is told)."""
        self.detect_every = max(1, detect_every)
        if input_width is not None and self.detector is not None:
            self.detector.input_width = input_width

    @property
    def tracks_started(self) -> int:
        """Faces the tracker has followed on this stream (Tracker.started): bulk mode's count of faces."""
        return self._tracker.started

    @property
    def held(self) -> int:
        """Frames waiting for the next detector run."""
        return len(self._held)

    @property
    def oldest_held_at(self) -> float | None:
        """`decoded_at` of the oldest waiting frame (its deadline is the caller's business)."""
        return self._held[0].decoded_at if self._held else None

    def push_pending(self, frame: av.VideoFrame, t: float, decoded_at: float = 0.0) -> list[PendingFrame]:
        """Live path: take one frame; return the frames that may leave now, in order (often none).

        A frame the detector does not run on waits for the next run (or leaves on the tracker's
        prediction alone when it is within `max_unmasked_frames` of the last run). The detector runs
        when the cadence says so, and on every frame while it is failing or missing.
        """
        out: list[PendingFrame] = []
        if self._held and (self._held[0].frame.width, self._held[0].frame.height) != (
            frame.width,
            frame.height,
        ):
            out += self.flush_pending()  # a new size resets the tracker: finish the old size's frames first
        self.stats.frames += 1
        self._observe(frame)
        every = max(1, self.detect_every)
        if self._since_run is None:
            # Cameras of one process are spread over the cadence cycle (detect_phase): the first
            # run of this one comes this many frames late.
            self._since_run = every - 1 - int(self.detect_phase * every) % every
        due = self._since_run + 1 >= every
        if due or self.detector is None or self._detector_failing:
            return out + self._run_on(frame, t, decoded_at)
        self._since_run += 1
        tracks = self._masks(None, t, frame.width, frame.height)
        masks = {tr.track_id: tr.mask for tr in tracks}
        margin = max((tr.margin for tr in tracks), default=0.0)
        if self._since_run <= self.max_unmasked_frames:
            out.append(self._finish(frame, decoded_at, list(masks.values()), margin=margin))
        else:
            self._held.append(_Held(frame, t, decoded_at, masks, margin))
        return out

    def flush_pending(self) -> list[PendingFrame]:
        """Run the detector now, on the newest waiting frame, and release every waiting frame.

        For a deadline (the oldest would leave late), a camera that stopped sending, or shutdown."""
        if not self._held:
            return []
        last = self._held.pop()
        return self._run_on(last.frame, last.t, last.decoded_at)

    def _run_on(self, frame: av.VideoFrame, t: float, decoded_at: float) -> list[PendingFrame]:
        """Detector on `frame`; then it and every frame waiting before it leave, masked."""
        self._since_run = 0
        held, self._held = self._held, []
        plan = self._plan(frame, t)
        dets: list[Detection] | None
        reason: FailClosedReason | None
        if plan is not None and not plan.looks:
            dets, ms, reason = [], 0.0, None  # nothing changed, no face followed: nothing to look at
        else:
            regions = None if plan is None or plan.whole else plan.regions
            dets, ms, reason = self._detect(True, frame, None, regions)
        if reason:
            if self._gate is not None:
                self._gate.reset()  # what the failed run should have looked at is looked at next time
            out = [self._fail_frame(h.frame, h.decoded_at, 0.0, reason) for h in held]
            return [*out, self._fail_frame(frame, decoded_at, ms, reason)]
        if plan is not None and self._gate is not None:
            self._gate.looked(plan, t)
            self.stats.looked("whole" if plan.whole else "regions" if plan.regions else "quiet", plan.share)
        tracks = self._masks(dets, t, frame.width, frame.height)
        out = [self._finish(h.frame, h.decoded_at, *self._backfill(h, tracks, t)) for h in held]
        self._remember_run(tracks, t)
        margin = max((tr.margin for tr in tracks), default=0.0)
        masks = [tr.mask for tr in tracks]
        out.append(self._finish(frame, decoded_at, masks, margin, faces=len(dets or []), ran=True, ms=ms))
        return out

    # --- live: change gating (engine/change.py) ------------------------------------------------

    def _observe(self, frame: av.VideoFrame) -> None:
        """Every live frame: what changed since each part of the picture was last looked at."""
        settings = self._gate_settings
        if settings is None or not getattr(self.detector, "regions_supported", False):
            return  # no gating, or a detector whose passes cannot be cut into regions: whole looks
        c0 = time.thread_time()
        w, h = frame.width, frame.height
        gate = self._gate
        if gate is None or (gate.width, gate.height) != (w, h):
            gate = self._gate = ChangeGate.for_frame(w, h, settings)
        gate.observe(_luma(frame))
        self.stats.observe_cpu_s += time.thread_time() - c0

    def _plan(self, frame: av.VideoFrame, t: float) -> LookPlan | None:
        """Where this run looks; None: the whole picture, ungated (no gate, or a detector whose
        passes cannot be cut into regions)."""
        gate = self._gate
        if gate is None or not getattr(self.detector, "regions_supported", False):
            return None
        return gate.plan(t, self._tracker.predicted(t))

    def _backfill(self, held: _Held, tracks: list[Track], t_run: float) -> tuple[list[Box], float]:
        """Masks for a frame that waited: the tracker's prediction for it, each track's mask
        widened to what the run after it showed (one box per track: overlapping masks would be
        obfuscated twice); and the widest margin added (face sizes per side).

        A face seen at both runs is masked along the line between them; a face first found at the
        run is masked where it was found, grown by BACKFILL_FACES_PER_S per second back (at most
        BACKFILL_MAX_FACES): the fastest face of the dev clips moves 0.33 face widths a frame."""
        boxes = dict(held.masks)
        margin = held.margin
        span = t_run - self._run_t if self._run_t is not None else 0.0
        for tr in tracks:
            size = max(tr.box.width, tr.box.height, 1.0)
            before = self._run_masks.get(tr.track_id)
            if before is not None and span > 1e-6 and self._run_t is not None:
                f = min(1.0, max(0.0, (held.t - self._run_t) / span))
                box = before.lerp(tr.mask, f).grown(INTERP_MARGIN_FACES * size)
                margin = max(margin, INTERP_MARGIN_FACES)
            else:
                back = max(0.0, t_run - held.t)
                faces = min(BACKFILL_FACES_PER_S * back, BACKFILL_MAX_FACES)
                box = tr.mask.grown(faces * size)
                margin = max(margin, faces)
            predicted = boxes.get(tr.track_id)
            boxes[tr.track_id] = box if predicted is None else predicted.union(box)
        return list(boxes.values()), margin

    def _remember_run(self, tracks: list[Track], t: float) -> None:
        self._run_masks = {tr.track_id: tr.mask for tr in tracks}
        self._run_t = t

    def _finish(
        self,
        frame: av.VideoFrame,
        decoded_at: float,
        masks: list[Box],
        margin: float = 0.0,
        faces: int = 0,
        ran: bool = False,
        ms: float = 0.0,
    ) -> PendingFrame:
        widened = self._widened(margin, "")
        return PendingFrame(frame, decoded_at, tuple(masks), faces, ran, ms, self.cfg, widened=widened)

    def _widened(self, margin: float, fail_reason: str) -> bool:
        """Whether a frame's masks were widened for safety (counted here, once per frame)."""
        if fail_reason or margin <= WIDE_MARGIN_FACES:
            return False
        self.stats.frame_widened()
        return True

    def _fail_frame(
        self, frame: av.VideoFrame, decoded_at: float, ms: float, reason: FailClosedReason
    ) -> PendingFrame:
        drop = self._count_fail(reason)
        return PendingFrame(frame, decoded_at, (), 0, True, ms, self.cfg, fail_reason=reason, _drop=drop)

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
        self.last_masks = ()
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
        self.last_masks = tuple(tr.mask for tr in tracks)
        obfuscate(planes, list(self.last_masks), self.cfg.obfuscation)
        return out, len(dets or []), False
