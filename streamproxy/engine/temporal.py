"""Offline temporal fill for bulk video: masks from both directions in time.

Bulk mode is not live: it may hold a second of frames before it writes them. Then a face found at
frame t can be masked in the frames before t as well as after it, and a weak detection can be
trusted when the same face is confirmed by a confident one nearby in time (hysteresis, as in
Canny's edges or ByteTrack's low-score pass):

* every detection down to `weak` (below the detector threshold) is linked frame to frame into
  tracklets (constant-velocity prediction, centre distance bounded by face size and time, gaps up
  to LINK_GAP_S);
* a tracklet counts once one of its detections scores at least `strong` (the detector threshold):
  a weak-only tracklet (a dark patch, a pattern on a coat) masks nothing;
* a counted tracklet masks every frame from EXTEND_S before its first detection to EXTEND_S after
  its last: its detections as they are, the frames between two of them interpolated (plus a margin
  for a path that was not straight), the frames before and after it grown by the speed bound.

The caller (engine/anonymizer.py) holds each frame until `window_s` of later frames have been
linked, so a face confirmed up to that long after a frame still masks it; the forward tracker's
masks are kept as well (this only adds masks). Measured on the shared clips with exact face boxes
(bench/video_leak.py, bench/README.md): dev_night 13.3 % -> 3.8 % of face-frames leaked, dev_street
1.04 % -> 0.0 %, at the same detector cost.

Only boxes, scores and times are kept: nothing about a face's appearance.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from streamproxy.engine.track import MAX_SPEED_FACES_PER_S
from streamproxy.types import Box, Detection

# Weak candidates are linked down to this score (the detector threshold stays the bar for a
# tracklet to count). Measured on the shared clips: 0.25 left 7.8 % of night face-frames leaked,
# 0.15 4.2 %, 0.1 3.3 % at 20 % more masked area than 0.15.
WEAK_THRESHOLD = 0.15
# How long a frame waits for later frames (the most a later confirmation can reach back).
# 0.25 s gave 4.7 % on the night clip, 0.5 s 4.2 %, 1 s and more 3.8 %.
WINDOW_S = 1.0
# Frames held at most, whatever the frame rate (memory: ~1.4 MB a 720p frame, ~12 MB at 4K).
WINDOW_MAX_BYTES = 256 * 1024 * 1024
# A tracklet continues across frames without a detection for up to this long.
LINK_GAP_S = 0.6
# Linking distance: centre distance in face widths below LINK_BASE_FACES + speed x time, the speed
# bound being the tracker's (a walker crossing the view), the time term capped.
LINK_BASE_FACES = 0.5
LINK_FACES_PER_S = 8.0
LINK_MAX_EXTRA_FACES = 2.0
LINK_MAX_SIZE_RATIO = 2.0
# Masks before the first and after the last detection of a counted tracklet: this long, each side
# of the box moving out by GROW_FACES_PER_S face widths per second, at most GROW_MAX_FACES.
# 0.2 s took dev_street from 0.09 % to 0.0 % and dev_night from 4.2 % to 3.8 % (proxy), 0.4 s
# added as much masked area again for 0.4 point on the night clip. Growth 2 -> 1 face per second
# (with the box moving on at the tracklet's velocity): dev_street's over-masking 1.10 -> 0.93 %
# median, 4.0 -> 3.4 % p90, worst frame 15.3 -> 9.7 %; leak unchanged (bench/README.md).
EXTEND_S = 0.2
GROW_FACES_PER_S = 1.0
GROW_MAX_FACES = 1.0
# Before the first and after the last detection the box moves at the tracklet's velocity, measured
# over this span of its detections, at most the tracker's MAX_SPEED_FACES_PER_S face widths a second
# (the fastest face of the dev clips moves 8.3: 0.33 face widths a frame at 25 fps).
VELOCITY_SPAN_S = 0.2
# Between two detections: this margin per side (face widths), plus a quarter of the growth above
# for the time to the nearer detection.
INTERP_MARGIN_FACES = 0.15
_EPS = 1e-6  # frame times are sums of float steps


@dataclass(frozen=True, slots=True)
class _Entry:
    index: int
    t: float
    box: Box
    score: float


@dataclass(slots=True)
class _Tracklet:
    entries: list[_Entry] = field(default_factory=list)
    confirmed: bool = False

    @property
    def last(self) -> _Entry:
        return self.entries[-1]

    def predicted(self, t: float) -> Box:
        """Where the face is expected at `t`: constant velocity from the last two detections."""
        last = self.last
        if len(self.entries) < 2:
            return last.box
        prev = self.entries[-2]
        span = last.t - prev.t
        if span <= 1e-6:
            return last.box
        k = (t - last.t) / span
        a, b = prev.box, last.box
        return Box(
            b.x1 + (b.x1 - a.x1) * k,
            b.y1 + (b.y1 - a.y1) * k,
            b.x2 + (b.x2 - a.x2) * k,
            b.y2 + (b.y2 - a.y2) * k,
        )


def _velocity(entries: list[_Entry], forward: bool) -> tuple[float, float]:
    """Centre velocity (px/s) at one end of a tracklet, over up to VELOCITY_SPAN_S of its detections
    (two neighbouring detections alone jitter), clamped to MAX_SPEED_FACES_PER_S; 0 when seen once."""
    ends = entries[::-1] if forward else entries
    a = ends[0]
    b = a
    for e in ends[1:]:
        b = e
        if abs(e.t - a.t) >= VELOCITY_SPAN_S:
            break
    dt = a.t - b.t
    if b is a or abs(dt) < 1e-6:
        return 0.0, 0.0
    vx, vy = (a.box.cx - b.box.cx) / dt, (a.box.cy - b.box.cy) / dt
    speed, cap = math.hypot(vx, vy), MAX_SPEED_FACES_PER_S * max(a.box.width, 1.0)
    if speed > cap:
        vx, vy = vx * cap / speed, vy * cap / speed
    return vx, vy


def _grown_faces(box: Box, faces: float) -> Box:
    return box.grown(faces * box.width, faces * box.height)


class TemporalFill:
    """Tracklets over the frames of one video, in order; masks for any frame still held.

    `add` each frame's detections (None: the detector did not run on it) as it is detected;
    `masks` for a frame once the frames after it that should count have been added; `forget`
    what no frame still to be asked about needs.
    """

    def __init__(self, strong: float, weak: float, mask_factor: float) -> None:
        self.strong = strong
        self.weak = min(weak, strong)
        self.mask_factor = mask_factor
        self._tracklets: list[_Tracklet] = []

    @property
    def tracklets(self) -> int:
        return len(self._tracklets)

    def add(self, index: int, t: float, detections: list[Detection] | None) -> None:
        if detections is None:
            return
        cands = [d for d in detections if d.score >= self.weak]
        active = [tl for tl in self._tracklets if t - tl.last.t <= LINK_GAP_S and tl.last.index < index]
        pairs: list[tuple[float, int, int]] = []
        for ti, tl in enumerate(active):
            last = tl.last
            pred = tl.predicted(t)
            dt = t - last.t
            for di, d in enumerate(cands):
                small, big = sorted((max(last.box.width, 1.0), max(d.box.width, 1.0)))
                if big / small > LINK_MAX_SIZE_RATIO:
                    continue
                dist = math.hypot(pred.cx - d.box.cx, pred.cy - d.box.cy) / big
                if dist < LINK_BASE_FACES + min(LINK_FACES_PER_S * dt, LINK_MAX_EXTRA_FACES):
                    pairs.append((dist, ti, di))
        pairs.sort()
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            self._append(active[ti], index, t, cands[di])
        for di, d in enumerate(cands):
            if di not in used_d:
                tl = _Tracklet()
                self._append(tl, index, t, d)
                self._tracklets.append(tl)

    def _append(self, tl: _Tracklet, index: int, t: float, d: Detection) -> None:
        tl.entries.append(_Entry(index, t, d.box, d.score))
        if d.score >= self.strong:
            tl.confirmed = True

    def masks(self, index: int, t: float) -> list[Box]:
        """Masks for frame `index` at time `t` from every counted tracklet (frame coordinates,
        not clipped)."""
        return self.masks_and_margin(index, t)[0]

    def masks_and_margin(self, index: int, t: float) -> tuple[list[Box], float]:
        """`masks`, and the widest margin any of them got for time away from a detection (face
        sizes per side)."""
        out: list[Box] = []
        widest = 0.0
        for tl in self._tracklets:
            if not tl.confirmed:
                continue
            box, margin = self._mask_at(tl, index, t)
            if box is not None:
                out.append(box.scaled(self.mask_factor))
                widest = max(widest, margin)
        return out, widest

    @staticmethod
    def _mask_at(tl: _Tracklet, index: int, t: float) -> tuple[Box | None, float]:
        """The tracklet's face box at frame `index` (None: out of its reach) and the margin added
        to it, in face sizes per side."""
        first, last = tl.entries[0], tl.entries[-1]
        if index < first.index or index > last.index:
            end, gap = (first, first.t - t) if index < first.index else (last, t - last.t)
            if gap > EXTEND_S + _EPS:
                return None, 0.0
            # Before the first and after the last detection the face moves on as it moved over
            # the tracklet's first (last) VELOCITY_SPAN_S; seen once, it stays where it was.
            vx, vy = _velocity(tl.entries, forward=index > last.index)
            sign = 1.0 if index > last.index else -1.0
            moved = Box(
                end.box.x1 + sign * vx * gap, end.box.y1 + sign * vy * gap,
                end.box.x2 + sign * vx * gap, end.box.y2 + sign * vy * gap,
            )  # fmt: skip
            faces = min(GROW_FACES_PER_S * gap, GROW_MAX_FACES)
            return _grown_faces(moved, faces), faces
        k = bisect.bisect_left([e.index for e in tl.entries], index)
        e = tl.entries[k]
        if e.index == index:
            return e.box, 0.0
        a, b = tl.entries[k - 1], e
        span = b.t - a.t
        f = (t - a.t) / span if span > 1e-9 else 0.0
        near = min(t - a.t, b.t - t)
        faces = INTERP_MARGIN_FACES + 0.25 * min(GROW_FACES_PER_S * near, GROW_MAX_FACES)
        side = faces * max(a.box.width, b.box.width)
        return a.box.lerp(b.box, f).grown(side), faces

    def forget(self, before_index: int, before_t: float, now_t: float) -> None:
        """Drop what no frame from `before_index` (at `before_t`) on can need, `now_t` being the
        newest frame added: tracklets that can neither be continued nor reach that frame, and
        entries older than the one before it."""
        keep: list[_Tracklet] = []
        for tl in self._tracklets:
            last = tl.last
            if (
                last.index < before_index
                and before_t - last.t > EXTEND_S + _EPS
                and now_t - last.t > LINK_GAP_S
            ):
                continue
            k = bisect.bisect_left([e.index for e in tl.entries], before_index)
            if k > 1:
                del tl.entries[: k - 1]
            keep.append(tl)
        self._tracklets = keep
