"""Face tracker: associates detections over time, smooths them, and says what to mask on every frame.

The detector may run only every k-th frame, and it misses faces now and then (profile, motion blur,
occlusion). The tracker turns its sparse, jittery boxes into one mask per face per frame:

- association: IoU of each track's predicted box with each detection, with a centre-distance
  fallback for fast faces whose boxes no longer overlap; greedy on a sorted cost list;
- motion: an alpha-beta filter (constant velocity, px/s) per track centre, so the mask follows a
  walking face between detector runs instead of trailing behind it;
- coasting: a lost track stays masked (0.2 s; as long as it had been followed, up to
  `coast_seconds`, once followed for half a second), where it is predicted to be, the mask
  growing with the time since and the speed by a bounded margin (MAX_MARGIN_FACES per side);
- privacy before aesthetics: the smoothed mask is widened to contain the raw detection whenever
  smoothing lags, and with `min_hits=1` a face is masked on first sight.

A mask follows the face, not the path the face could have taken: never the union of where a face
was and where it may be a second later (that rectangle grew to half the picture for a fast face:
7.5 % of dev_street's picture changed outside the faces in the median frame). Live, a coasting
mask also covers where the face was last seen while both fit in COAST_PATH_FACES, and masks grow
with speed on every frame (the look-ahead masks the frames between two runs along the line between
them): tests/test_camera_faults.py's viewer saw a face without that. Bulk video (`offline`) detects
every frame and its temporal fill knows both directions: its tracker masks stay tight.

Only ids, boxes and velocities are kept: nothing about a face's appearance.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from streamproxy.config import TrackerConfig
from streamproxy.types import Box, Detection, Track

log = logging.getLogger(__name__)

# Prediction uncertainty, per second since the face was last seen: each side of the mask moves out
# by this many face sizes, plus `speed_grow` x the speed in face sizes per second (a fast face's
# velocity is known less well in absolute terms). A track seen once has no velocity yet: its mask
# stays where it was seen and grows faster.
UNCERTAINTY_FACES_PER_S = 1.0
UNKNOWN_VELOCITY_FACES_PER_S = 4.0
# The margin stops growing here (face sizes per side): a mask is at most 1 + 2 x this many face
# sizes across beyond the configured mask scale, never a picture-wide rectangle.
MAX_MARGIN_FACES = 1.0
MAX_MARGIN_OFFLINE_FACES = 0.5
# A coasting mask also covers where the face was last seen while the two boxes together are at most
# this many face sizes across.
COAST_PATH_FACES = 4.0
# Predicted motion is clamped to this many face widths per second (a bad match must not send the
# mask across the picture; a walker crossing the view is ~2-5).
MAX_SPEED_FACES_PER_S = 8.0
# A lost track is kept this long (one or two detector runs at the live cadence); one followed for at
# least LONG_TRACK_S is kept as long as it had been followed, up to coast_seconds (Tracker._coast_s).
# Measured in bulk mode (bench/video_leak.py): coasting every track 1 s left 2.6 % of dev_street's
# picture changed outside the faces in the median frame; no coasting 0.64 % but leaked 0.26 % of its
# face-frames and 1.1 % of dev_plaza's (faces that stand still or turn away); half the followed time
# leaked dev_plaza's too; this rule: 0 leak on both, dev_plaza 0.52 -> 0.44 % median.
MIN_COAST_S = 0.2
LONG_TRACK_S = 0.5
# Snap instead of smoothing when the detection's centre is further than this many face widths from
# the prediction: smoothing would trail the face over several frames.
SNAP_FACES = 0.5


@dataclass(slots=True)
class _State:
    """Mutable per-track state. Centre and velocity are at time `t`."""

    track_id: int
    cx: float
    cy: float
    w: float
    h: float
    vx: float
    vy: float
    t: float  # time of cx, cy
    t_seen: float  # last time a detection matched
    t_first: float  # first time it was seen
    seen_box: Box  # where it was last seen: the smoothed box and the raw detection
    last_det: Box | None  # raw detection of the current frame (None on frames without a match)
    hits: int
    misses: int

    def velocity(self) -> tuple[float, float]:
        """The velocity used for prediction: the estimate, its speed clamped to MAX_SPEED_FACES_PER_S."""
        speed = math.hypot(self.vx, self.vy)
        cap = MAX_SPEED_FACES_PER_S * max(self.w, 1.0)
        if speed <= cap:
            return self.vx, self.vy
        return self.vx * cap / speed, self.vy * cap / speed

    def box_at(self, t: float) -> Box:
        dt = max(0.0, t - self.t)
        vx, vy = self.velocity()
        return Box.from_center(self.cx + vx * dt, self.cy + vy * dt, self.w, self.h)


class Tracker:
    """Per-camera tracker. Not thread-safe: one camera's frames are fed in order from one thread."""

    def __init__(self, cfg: TrackerConfig, mask_scale: float, name: str = "") -> None:
        self.cfg = cfg
        self.mask_scale = mask_scale
        self.name = name  # camera name, for logs
        # Live (False): the look-ahead only knows the runs before and at a frame, so a face's mask
        # grows with its speed on the frames it is seen on too (the frames between two runs are
        # masked along the line between them), and a coasting mask also covers where the face was
        # last seen. Bulk video (True) detects every frame and its temporal fill interpolates
        # between real detections in both directions: the tracker's masks stay tight there, and
        # their margin stops at MAX_MARGIN_OFFLINE_FACES.
        self.offline = False
        self._tracks: list[_State] = []
        self._next_id = 1
        self._last_t: float | None = None
        self._size: tuple[int, int] | None = None

    def reset(self) -> None:
        """Forget every track (resolution change, stream restart). Ids keep increasing."""
        self._tracks.clear()
        self._last_t = None
        self._size = None

    @property
    def track_count(self) -> int:
        """All live tracks, including tentative ones (below min_hits) that are not masked yet."""
        return len(self._tracks)

    @property
    def started(self) -> int:
        """Tracks started since this tracker was made (ids handed out): the faces followed, a face
        lost for longer than its coast counted again when it comes back (bulk mode's audit)."""
        return self._next_id - 1

    def update(self, detections: list[Detection] | None, t: float, frame_w: int, frame_h: int) -> list[Track]:
        """Advance to frame time `t` (seconds) and return the tracks to mask on this frame.

        `detections=None`: the detector did not run on this frame (predict only).
        `detections=[]`: it ran and saw nothing (every track misses).
        """
        if self._size is not None and self._size != (frame_w, frame_h):
            log.info("%s: frame size %dx%d -> %dx%d, tracker reset", self.name, *self._size, frame_w, frame_h)
            self.reset()
        self._size = (frame_w, frame_h)
        if self._last_t is not None and t < self._last_t:
            # A clock going backwards (pts wrap, stream restart): rebase every track on the new
            # clock rather than predicting with a negative dt; keep them (fail closed).
            shift = t - self._last_t
            for s in self._tracks:
                s.t += shift
                s.t_seen += shift
                s.t_first += shift
        self._last_t = t

        for s in self._tracks:
            s.last_det = None
        if detections is not None:
            self._associate(detections, t)
            # A track the detector has missed is deleted once it has coasted long enough. Tracks the
            # detector has not yet had a chance to re-check (frames with detections=None) are kept.
            self._tracks = [s for s in self._tracks if s.misses == 0 or t - s.t_seen <= self._coast_s(s)]

        out: list[Track] = []
        for s in self._tracks:
            if s.hits < self.cfg.min_hits:
                continue
            tr = self._to_track(s, t, frame_w, frame_h)
            if tr.mask.area > 0:
                out.append(tr)
        return out

    def predicted(self, t: float) -> list[Box]:
        """Where every track (tentative ones too) may be at `t`: the prediction and where it was last
        seen. For the change gate, which looks around each of them at every run."""
        return [s.box_at(t).union(s.seen_box) for s in self._tracks]

    # --- association -------------------------------------------------------------------------

    def _associate(self, detections: list[Detection], t: float) -> None:
        preds = [s.box_at(t) for s in self._tracks]
        # Candidate pairs: IoU matches first (best IoU first), then centre-distance matches
        # (closest first). Greedy on this order is what SORT-like trackers do without scipy.
        cands: list[tuple[int, float, int, int]] = []
        for ti, p in enumerate(preds):
            for di, d in enumerate(detections):
                iou = p.iou(d.box)
                if iou > 0 and iou >= self.cfg.iou_match:
                    cands.append((0, -iou, ti, di))
                    continue
                scale = max(p.width, d.box.width, 1.0)
                dist = math.hypot(p.cx - d.box.cx, p.cy - d.box.cy) / scale
                if dist < self.cfg.center_match and self._similar_size(p, d.box):
                    cands.append((1, dist, ti, di))
        cands.sort()
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, _, ti, di in cands:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            self._correct(self._tracks[ti], detections[di].box, t)
        for ti, s in enumerate(self._tracks):
            if ti not in used_t:
                s.misses += 1
        for di, d in enumerate(detections):
            if di not in used_d:
                self._spawn(d.box, t)

    def _coast_s(self, s: _State) -> float:
        """How long a lost track stays masked: MIN_COAST_S for a track followed less than
        LONG_TRACK_S, else as long as it had been followed, at most `coast_seconds`. A detection of a
        few frames (often a false one: a pattern, a wheel) must not leave a mask behind for a second;
        a face followed for seconds may."""
        followed = s.t_seen - s.t_first
        if followed < LONG_TRACK_S:
            return min(self.cfg.coast_seconds, MIN_COAST_S)
        return min(self.cfg.coast_seconds, max(MIN_COAST_S, followed))

    @staticmethod
    def _similar_size(a: Box, b: Box) -> bool:
        # The distance fallback is for the same face moving fast, not for a small face next to a big one.
        wa, wb = max(a.width, 1.0), max(b.width, 1.0)
        return max(wa, wb) / min(wa, wb) < 2.0

    def _spawn(self, box: Box, t: float) -> None:
        s = _State(
            track_id=self._next_id,
            cx=box.cx,
            cy=box.cy,
            w=box.width,
            h=box.height,
            vx=0.0,
            vy=0.0,
            t=t,
            t_seen=t,
            t_first=t,
            seen_box=box,
            last_det=box,
            hits=1,
            misses=0,
        )
        self._next_id += 1
        self._tracks.append(s)

    def _correct(self, s: _State, z: Box, t: float) -> None:
        """Alpha-beta update of a matched track with detection `z` at time `t`."""
        dt = t - s.t
        alpha = 1.0 - self.cfg.smoothing
        if s.hits == 1 and dt > 1e-6:
            # Two-point initialisation: the first velocity is the measured one, so a walking
            # face does not start with a prediction that trails it.
            s.vx = (z.cx - s.cx) / dt
            s.vy = (z.cy - s.cy) / dt
            s.cx, s.cy = z.cx, z.cy
        else:
            px = s.cx + s.vx * max(dt, 0.0)
            py = s.cy + s.vy * max(dt, 0.0)
            rx, ry = z.cx - px, z.cy - py
            if math.hypot(rx, ry) > SNAP_FACES * max(z.width, 1.0):
                # The face turned or jumped: trust the detection, restart the velocity from what was seen.
                if dt > 1e-6:
                    s.vx = (z.cx - s.cx) / dt
                    s.vy = (z.cy - s.cy) / dt
                s.cx, s.cy = z.cx, z.cy
            else:
                # Benedict-Bordner: beta from alpha gives a well-damped constant-velocity filter.
                beta = alpha * alpha / (2.0 - alpha)
                s.cx = px + alpha * rx
                s.cy = py + alpha * ry
                if dt > 1e-6:
                    s.vx += beta * rx / dt
                    s.vy += beta * ry / dt
        s.w += alpha * (z.width - s.w)
        s.h += alpha * (z.height - s.h)
        s.t = t
        s.t_seen = t
        s.seen_box = Box.from_center(s.cx, s.cy, s.w, s.h).union(z)
        s.last_det = z
        s.hits += 1
        s.misses = 0

    # --- masks -------------------------------------------------------------------------------

    def _to_track(self, s: _State, t: float, frame_w: int, frame_h: int) -> Track:
        box = s.box_at(t)
        mask = box.scaled(self.mask_scale)
        if s.last_det is not None:
            # Smoothing may lag the face: the mask always contains the raw detection itself.
            mask = mask.union(s.last_det)
        since = max(0.0, t - s.t_seen)
        side = 0.0
        cap = MAX_MARGIN_OFFLINE_FACES if self.offline else MAX_MARGIN_FACES
        if since > 0:
            # Between detector runs and while coasting the face may have turned or stopped: the
            # mask around the prediction grows with time (faster while the velocity is unknown), up
            # to a bounded margin. Live, where the face was last seen is covered too while that and
            # the prediction fit in COAST_PATH_FACES; past it the prediction alone is kept, never a
            # picture-wide rectangle.
            both = mask.union(s.seen_box.scaled(self.mask_scale))
            wide = max(both.width / max(s.w, 1.0), both.height / max(s.h, 1.0))
            if not self.offline and wide <= COAST_PATH_FACES:
                mask = both
            rate = UNKNOWN_VELOCITY_FACES_PER_S if s.hits < 2 else UNCERTAINTY_FACES_PER_S
            side = min(rate * since, cap)
        # Motion the detector's box lags or the next run will not show (a live camera's detector
        # runs every k-th frame; the frames between are masked along the line between runs):
        # speed_grow x the speed in face widths per second, in total, capped with the margin.
        if since > 0 or not self.offline:
            speed = math.hypot(*s.velocity()) / max(s.w, 1.0)
            side = min(side + self.cfg.speed_grow * speed / 2, cap)
        if side > 0:
            mask = mask.grown(side * s.w, side * s.h)
        return Track(
            track_id=s.track_id,
            box=box,
            mask=mask.clipped(frame_w, frame_h),
            vx=s.vx,
            vy=s.vy,
            hits=s.hits,
            misses=s.misses,
            coasting=s.misses > 0,
            margin=side,
        )
