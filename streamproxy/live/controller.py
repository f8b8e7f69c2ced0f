"""The privacy floor and the latency controller of one live camera.

The controller trades CPU for latency and frame rate, but only above a floor that follows from what
the camera must protect (`privacy` in the config):

* the smallest face to mask sets the detector's smallest input width: YuNet masks faces reliably
  from about DETECTOR_MIN_FACE_PX of its own input (measured on the shared clips with exact face
  boxes, bulk mode, detector widths 640-1280: faces of >= 18 detector px leaked 1.0 % of face-frames
  at every width, faces of 13-15 px 18 %, and below that the leak depends on the face, not the
  width), so a camera whose smallest face is F px wide needs `frame width x 18 / F`;
* how long a newly visible face may stay unmasked sets the largest gap between detector runs: frames
  wait (look-ahead, engine/anonymizer.py) for a detector run on themselves or a later frame, so the
  gap may grow by as many frames as can wait inside the latency budget, plus `max_unmasked_frames`.

Below that floor a face leaks, so the controller never goes there: when the CPU cannot carry the
camera at the floor it sheds whole frames (counted as `overload`), and the output frame rate falls,
visibly, instead of the protection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from streamproxy.config import PrivacyConfig
from streamproxy.types import align32

# Smallest face, in detector-input pixels, the model masks reliably (see the module docstring).
# CenterFace was not measured this way; its recall of small faces is lower than YuNet's on the WIDER
# sample (bench/recall.py), so it is given YuNet's number, not a smaller one.
DETECTOR_MIN_FACE_PX = {"yunet": 18.0, "centerface": 18.0}
MAX_DETECTOR_SIDE = 3840
# A hard cap on the cadence, whatever the budget would allow: the tracker's predictions between runs
# are only as good as a constant-velocity guess.
MAX_DETECT_EVERY = 6
# The share of the budget that look-ahead may plan to use (waiting + detector run + encodes); the
# rest absorbs jitter, so frames are not dropped as late for a few milliseconds.
HOLD_BUDGET_SHARE = 0.85
# Shedding: the kept share of frames moves in these steps, never below MIN_KEEP (a camera at 1/5 of
# its frame rate is shown as overloaded; below that the operator has to act, not the controller).
SHED_STEP = 0.8
MIN_KEEP = 0.2
# The worker (or the encoder) busy above this share of the time it has per frame: overloaded. A
# step up in frame rate is taken only when the load it projects stays below KEEP_UP_BELOW.
BUSY_HIGH = 0.95
KEEP_UP_BELOW = 0.85
# Latency alone lowers the cadence only on a worker this idle (see observe).
LATE_STEP_BELOW = 0.5
# A setting that overloaded the camera is not tried again for this long.
BAD_SETTING_S = 30.0
# One push (a detector run and the release of its look-ahead group) longer than this many frame
# intervals overflows the worker's mailbox (pipeline.MAILBOX_FRAMES = 5, less a margin).
LONG_PUSH_FRAMES = 4.5


@dataclass(frozen=True, slots=True)
class PrivacyFloor:
    """What the controller may never go below, for one camera at one frame size."""

    min_face_px: float
    min_input_width: int  # detector input, longer side, in pixels
    max_unmasked_frames: int

    def max_detect_every(self, hold_frames: int) -> int:
        """Largest detector cadence when `hold_frames` frames can wait for the next run."""
        return max(1, min(MAX_DETECT_EVERY, 1 + hold_frames + self.max_unmasked_frames))


def privacy_floor(privacy: PrivacyConfig, model: str, frame_long_side: int) -> PrivacyFloor:
    """The floor for a frame whose longer side is `frame_long_side` pixels.

    A 1280x720 camera with the default 18-px smallest face needs the detector at 1280 (native); a
    1920x1080 camera at 1920; min_face_px 36 halves both."""
    need = frame_long_side * DETECTOR_MIN_FACE_PX.get(model, 18.0) / privacy.min_face_px
    width = min(MAX_DETECTOR_SIDE, align32(need, "up"))
    return PrivacyFloor(privacy.min_face_px, width, privacy.max_unmasked_frames)


def hold_frames_allowed(budget_ms: float, interval_ms: float, run_ms: float, encode_ms: float) -> int:
    """Frames that can wait for the next detector run and still leave inside the budget.

    The first frame of a group waits `hold` intervals, then the detector runs, then it is encoded
    first (about `encode_ms`; the encoder has its own thread); the frame the detector ran on is
    encoded last, after the whole group."""
    hold = 0
    while hold < MAX_DETECT_EVERY - 1:
        nxt = hold + 1
        planned = max(nxt * interval_ms + run_ms + encode_ms, run_ms + (nxt + 1) * encode_ms)
        if planned > HOLD_BUDGET_SHARE * budget_ms:
            break
        hold = nxt
    return hold


@dataclass
class LatencyController:
    """Adapts detector cadence, detector resolution and (last) the frame rate, never below the floor.

    Three limits, checked once a second at most:
    * latency: p90 of proxy-added latency above 85 % of the budget (look-ahead plans to 85 %): the
      detector runs more often, so that frames wait less for it, when the CPU for that is there;
    * throughput: the worker or the encoder busy (mean work per frame) above 95 % of the time it
      has per frame (the camera's frame interval, longer while frames are shed), or a frame lost. On a shared CPU a busy worker is one bad second away from
      dropping frames, which latency alone never shows;
    * long frames: p95 of the per-frame work above LONG_PUSH_FRAMES frame intervals (what the
      worker's 5-frame mailbox absorbs), i.e. detector runs of several cameras colliding on the cores.
    The other two cost a step: the detector runs less often, while the gap stays within what the floor and
    the budget allow (frames wait for the next run, so no face goes unmasked); then on a smaller
    picture, down to the floor's width (for long frames on a worker not busy on average the picture
    shrinks first, since running the detector less often does not make one run shorter); then whole
    frames are shed. A step back up needs a clear margin (p95 work < 100 % of the
    interval, no lost frame for 10 s) and restores the frame rate first (when the projected load
    stays below 85 %), then the picture (busy < 50 %), then the cadence (busy < 45 %); a setting that overloaded the camera is not tried
    again for BAD_SETTING_S: without that memory the controller oscillates, losing frames each time
    it steps up into the setting it just left.
    """

    budget_ms: float
    detect_every: int
    input_width: int
    max_input_width: int
    base_detect_every: int
    min_input_width: int = 160
    max_detect_every: int = MAX_DETECT_EVERY
    keep_ratio: float = 1.0
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    _work: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    _drops: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    _last_change: float = 0.0
    last_reason: str = ""  # what the last decision saw (logs, debugging)
    _bad_until: dict[tuple[int, int, float], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.set_floor(self.min_input_width, self.max_detect_every)

    def set_floor(self, min_input_width: int, max_detect_every: int) -> None:
        """Apply the floor (frame size known, budget measured). Settings below it are raised at once."""
        self.min_input_width = min_input_width
        self.max_input_width = max(self.max_input_width, min_input_width)
        self.input_width = max(self.input_width, min_input_width)
        self.max_detect_every = max(1, max_detect_every)
        self.base_detect_every = min(self.base_detect_every, self.max_detect_every)
        self.detect_every = min(self.detect_every, self.max_detect_every)

    @property
    def overloaded(self) -> bool:
        """True while frames are being shed: the camera cannot be carried at the floor."""
        return self.keep_ratio < 1.0

    def dropped(self, now: float) -> None:
        """A frame was overwritten in the mailbox: the worker is slower than the camera."""
        self._drops.append(now)

    def observe(
        self,
        latency_ms: float,
        now: float,
        work_ms: float = 0.0,
        interval_ms: float = 40.0,
        frame_work_ms: float = 0.0,
    ) -> bool:
        """Record one frame: its added latency, the busier thread's mean work per frame, the time it
        has per frame (the camera's interval, longer while frames are shed) and this frame's own
        work. True when the settings changed."""
        self._recent.append(latency_ms)
        self._work.append(frame_work_ms)
        if len(self._recent) < 10 or now - self._last_change < 1.0:
            return False
        ordered = sorted(self._recent)
        p90 = ordered[int(len(ordered) * 0.9) - 1]
        works = sorted(self._work)
        p95_work = works[int(len(works) * 0.95) - 1]
        spiky = p95_work > LONG_PUSH_FRAMES * interval_ms
        drops = tuple(self._drops)  # appended by the ingest thread
        # Only losses under the current setting count against it (one loss, one step).
        lost = sum(1 for t in drops if now - t < 2.0 and t >= self._last_change)
        dropped_recently = lost > 0
        util = work_ms / max(interval_ms, 1e-3)
        late = p90 > HOLD_BUDGET_SHARE * self.budget_ms
        self.last_reason = (
            f"busy={work_ms:.0f}/{interval_ms:.0f}ms p95work={p95_work:.0f} p90lat={p90:.0f} "
            f"dropped={dropped_recently} spiky={spiky}"
        )
        changed = False
        # Shedding while the threads are mostly idle: the frames lost now are late ones, and they are
        # late because a shed camera's frames come further apart and wait longer for the next run
        # (look-ahead), not for want of CPU. Shedding more would make that worse (measured: 4 cameras
        # stuck at 40 % of their frames with a worker busy 13 % of the time); taking frames back
        # shortens the wait. Only while the projected load stays low (below LATE_STEP_BELOW).
        idle_shedding = self.keep_ratio < 1.0 and not spiky and util / self.keep_ratio < LATE_STEP_BELOW
        if util > BUSY_HIGH or spiky or (dropped_recently and not idle_shedding):
            self._bad_until[self.setting] = now + BAD_SETTING_S
            # One lost frame on a camera that is not busy on average is jitter (a neighbour's long run):
            # it may cost a cadence step, not a fifth of the frames for the next BAD_SETTING_S
            # (measured: 4 cameras at 24.4-24.8 fps and one shed to 21.6 for a single lost frame).
            may_shed = util > BUSY_HIGH or spiky or lost >= 2
            changed = self._back_off(shrink_first=spiky and util < BUSY_HIGH, util=util, may_shed=may_shed)
        elif idle_shedding and p95_work < interval_ms and now - self._last_change >= 5.0:
            keep = min(1.0, self.keep_ratio / SHED_STEP)
            self.keep_ratio = 1.0 if keep > 0.99 else round(keep, 3)
            changed = True
        elif late and self.detect_every > 1 and util < LATE_STEP_BELOW and self.keep_ratio >= 1.0:
            # Late on an idle worker (and no frame shed: shedding says the CPU is short, even where
            # one camera's worker looks idle while others take the cores): frames wait too long for the next detector run (a slower run
            # than planned). Run it more often. On a busy worker that would cost CPU it does not
            # have (measured: it then flip-flops between the two cadences, losing frames at each
            # step); frames that would leave late are dropped as late instead, and counted.
            self._bad_until[self.setting] = now + BAD_SETTING_S
            self.detect_every -= 1
            changed = True
        elif p95_work < interval_ms and not any(now - t < 10.0 for t in drops):
            # No latency condition: with look-ahead the wait for the next run is latency by design,
            # and every step up costs CPU, not waiting.
            changed = self._step_up(now, util)
        if changed:
            self._last_change = now
            self._recent.clear()
            self._work.clear()
        return changed

    def _step_up(self, now: float, util: float) -> bool:
        if self.keep_ratio < 1.0 and self.detect_every < self.max_detect_every:
            # Shedding while the floor and the budget would let the detector skip more frames (the
            # gap allowed grew since, e.g. the runs got faster): a lower cadence costs no privacy
            # (look-ahead), shed frames do cost the viewer. Measured: 2 cameras sat at every frame
            # and 35 % of the frames without this.
            self.detect_every += 1
            return True
        if self.keep_ratio < 1.0:
            # More frames: the work grows with them. Step only when the projected load stays
            # clearly below the back-off line (hysteresis), and not more often than every 5 s.
            keep = min(1.0, self.keep_ratio / SHED_STEP)
            if keep > 0.99:
                keep = 1.0
            if util * keep / self.keep_ratio < KEEP_UP_BELOW and now - self._last_change >= 5.0:
                self.keep_ratio = round(keep, 3)
                return True
            return False
        step: tuple[int, int, float] | None = None
        if self.input_width < self.max_input_width and util < 0.5:
            width = min(self.max_input_width, int(self.input_width / 0.75) // 32 * 32 + 32)
            step = (self.detect_every, width, 1.0)
        elif (
            self.input_width >= self.max_input_width
            and self.detect_every > self.base_detect_every
            and util < 0.45
        ):
            step = (self.detect_every - 1, self.input_width, 1.0)
        if step is not None and self._bad_until.get(step, 0.0) <= now:
            self.detect_every, self.input_width, self.keep_ratio = step
            return True
        return False

    def _back_off(self, shrink_first: bool, util: float = 1.0, may_shed: bool = True) -> bool:
        if shrink_first and self.input_width > self.min_input_width:
            self.input_width = max(self.min_input_width, int(self.input_width * 0.75) // 32 * 32)
        elif self.detect_every < self.max_detect_every:
            self.detect_every += 1
        elif self.input_width > self.min_input_width:
            self.input_width = max(self.min_input_width, int(self.input_width * 0.75) // 32 * 32)
        elif self.keep_ratio > MIN_KEEP and may_shed:
            # At the floor and still short of CPU: shed whole frames, never the protection. Aim at
            # the share of frames the measured load says fits (at most one step a second).
            target = (
                self.keep_ratio * KEEP_UP_BELOW / util if util > BUSY_HIGH else self.keep_ratio * SHED_STEP
            )
            self.keep_ratio = round(max(MIN_KEEP, min(self.keep_ratio * 0.95, target)), 3)
        else:
            return False
        return True

    @property
    def setting(self) -> tuple[int, int, float]:
        return (self.detect_every, self.input_width, self.keep_ratio)


class FrameShedder:
    """Keeps `keep_ratio` of the frames, evenly spread (a credit counter, like a token bucket)."""

    def __init__(self) -> None:
        self._credit = 0.0

    def keep(self, keep_ratio: float) -> bool:
        if keep_ratio >= 1.0:
            self._credit = 0.0
            return True
        self._credit += keep_ratio
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False


# --- capacity estimate (check-config) --------------------------------------------------------
# CPU per frame, in core-milliseconds per megapixel, measured on this project's 2-core machine with
# bench/profile_live.py (2026-12-07, 4 dev_plaza cameras at 720p25 on the shared detector): ingest and
# decode 1.2, change gate 0.65, engine 0.7, copy and obfuscate 1.9, libx264 main 3.7 and sub stream
# 0.7, the rest ~1 ms per frame (~10 ms, 11 per megapixel); one YuNet look at the whole 1280x736
# picture ~24 core-ms on one thread (26 per megapixel; 30 with the Python around it); CenterFace ~5x.
FRAME_CORE_MS_PER_MPIX = 11.0
DETECT_CORE_MS_PER_MPIX = {"yunet": 30.0, "centerface": 150.0}
# Change gating on a fixed camera (engine/change.py): a run looks at GATED_LOOK_SHARE of the picture
# on average, the rolling scan's tiles and the whole looks included (dev_plaza, a plaza with 5-10
# walkers at all times, full_scan_s 1: 0.44; a quiet corridor looks at far less).
GATED_LOOK_SHARE = 0.45
# The cadence the controller settles at with several cameras on the reference machine (measured 2-3,
# gated or not): it may go up to the floor's largest gap, but a longer wait costs latency it lacks.
TYPICAL_EVERY = 2
# The share of the machine the cameras may plan to use (the event loop, viewers and the OS need the rest).
USABLE_CPU_SHARE = 0.85


@dataclass(frozen=True, slots=True)
class CameraLoad:
    name: str
    floor_width: int
    max_detect_every: int
    core_share: (
        float  # cores this camera needs at its floor, at full frame rate, looking at the whole picture
    )
    fixed_core_share: float  # the same for a fixed camera with change gating (= core_share without gating)


def camera_load(
    name: str,
    privacy: PrivacyConfig,
    model: str,
    budget_ms: float,
    width: int = 1280,
    height: int = 720,
    fps: float = 25.0,
) -> CameraLoad:
    """What one camera costs at its privacy floor (an estimate from measured per-pixel costs): looking
    at the whole picture every run (a moving camera, a scene that changes everywhere, or no change
    gating), and as a fixed camera of a busy scene with change gating."""
    floor = privacy_floor(privacy, model, max(width, height))
    # Under load the controller may go down to the floor's width (never below): the cheapest it may run.
    det_w = floor.min_input_width
    det_mpix = det_w * (det_w * min(width, height) / max(width, height)) / 1e6
    run_core_ms = det_mpix * DETECT_CORE_MS_PER_MPIX.get(model, 32.0)
    frame_core_ms = width * height / 1e6 * FRAME_CORE_MS_PER_MPIX
    # The detector uses up to 2 threads: its wall time is about half its CPU time when they are free.
    hold = hold_frames_allowed(budget_ms, 1000.0 / fps, run_core_ms / 2, frame_core_ms / 2)
    every = floor.max_detect_every(hold)
    typical = min(every, TYPICAL_EVERY)
    share = fps * (frame_core_ms + run_core_ms / typical) / 1000.0
    fixed = share
    if privacy.change_gating:
        fixed = fps * (frame_core_ms + run_core_ms * GATED_LOOK_SHARE / typical) / 1000.0
    return CameraLoad(name, floor.min_input_width, every, share, fixed)
