"""Change gating: where the live detector must look, on a camera whose picture mostly stands still.

A fixed CCTV camera sees the same plaza, corridor or car park most of the time, and a face can only
become visible where the picture changes. Running the detector over the whole picture at every run
costs most of a camera's CPU (YuNet on 1280x736: ~35 ms, memory-bound; on 320x192: ~1.4 ms). So
between full looks the detector looks only at the regions that changed, and at the regions around
the faces it is following. Frigate gates its detector on motion the same way; unlike Frigate this
product may not miss a face, hence the invariant below and the choices that hold it.

The privacy invariant (held here, tested in tests/test_change.py):

    every pixel that leaves has either been looked at by the detector, in its own frame or in the
    look-ahead frame whose run released it, at the floor's scale; or it has not changed, by more
    than the camera's noise, since the last detector run that looked at it.

How:
* every frame (not only the frames the detector runs on) is compared with a reference: the picture
  as each cell looked at its last look. Not with the previous frame, so a slow change (a head
  turning towards the camera over a few frames, a face fading in) adds up until it is seen. A cell
  that differs by more than `threshold` luma levels anywhere (on a small grey copy of the picture
  where the smallest face to mask is still SMALL_FACE_PX wide) is marked, and stays marked until a
  run looks at it: a face that crosses a cell between two runs is looked for in the run's frame, as
  the full-picture detector would (look-ahead masks it back along its path);
* a run looks at the marked cells and at the cells around every live track (the faces being
  followed are looked at every run: a face that stops moving stays found), grown by REGION_GROW_CELLS
  so that a face cut by a region's edge is whole in the detector's crop;
* when the regions would cover more than WHOLE_SHARE of the picture (lights switched, the camera
  moved, a PTZ turn, a camera on a bus like the shared street clip: every pixel changes), the run
  looks at the whole picture, as without gating;
* and every part of the picture is looked at, changed or not, at least every `full_scan_s` (plus
  one detector interval): a rolling scan of overlapping tiles, one tile per run, so a face the
  detector missed once (a turned head, a poor frame) is looked for again within that time even if
  it stands perfectly still; tiles rather than whole looks, because one whole look costs as much as
  several region looks and a long run on a shared CPU holds the camera's next frames up;
* the reference of a cell is replaced only where the run looked at that cell with its context (a
  marked cell inside a region, a scan tile's core, any cell on a whole look); the first run on a
  camera, and the first after a frame-size change or a detector failure, is a whole look.

The detector's scale is the floor's whatever the regions: crops are cut from the picture scaled to
the detector's input width, never magnified or shrunk on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from streamproxy.config import PrivacyConfig
from streamproxy.types import Box

# The small grey copy is compared at a scale where the smallest face to mask is at least this many
# pixels wide: a face of min_face_px is then several small pixels, and its appearance changes them
# by about as much as it changes the face's own pixels (an area average over a face-sized patch).
SMALL_FACE_PX = 4.0
# A cell is CELL_SMALL x CELL_SMALL small pixels (32x32 camera pixels at 720p with min_face_px 18).
CELL_SMALL = 8
# Regions are grown by this many cells per side: a face that a marked cell cuts is whole in the crop
# up to 2 cells (64 px at 720p); a larger face changes more cells when it moves or appears, and once
# found it is a track, whose cells are looked at every run. (2 cells: dev_plaza's regions covered 56 %
# of the picture per run instead of 35 %, for faces the tracks' regions cover anyway.)
REGION_GROW_CELLS = 1
# Around a live track (its predicted box and where it was last seen): this many face sizes per side,
# at least MIN_TRACK_CONTEXT_PX (the distance a face walks in a run interval, with room to spare,
# and the context the detector needs around a small face).
TRACK_GROW_FACES = 0.5
MIN_TRACK_CONTEXT_PX = 24.0
# Regions covering more than this share of the picture: look at the whole picture (a change that wide
# means the camera or the light changed, not a passer-by; and crops cost ~75 % per pixel of a whole
# look on the reference machine: YuNet 21 core-ms per megapixel on 320-640-px crops, 29 on 1280x736,
# so past about 3/4 of the picture in crops the whole look is cheaper).
WHOLE_SHARE = 0.7
# The rolling full scan (every part of the picture looked at at least every full_scan_s, changed or
# not): a SCAN_GRID x SCAN_GRID grid of tiles overlapping by SCAN_OVERLAP of the longer side (64 px at
# 720p: a face up to 128 px is whole in one tile), one tile per run, not the whole picture at once: a
# whole look costs ~5 region looks, and on a shared CPU that one long run made the latency
# controller shed frames (measured: 4 dev_plaza cameras on 2 cores).
SCAN_GRID = 2
SCAN_OVERLAP = 0.05


@dataclass(frozen=True, slots=True)
class GateSettings:
    """A live camera's change gating (the `privacy` keys change_threshold, full_scan_s, min_face_px)."""

    min_face_px: float
    threshold: float
    full_scan_s: float


def gate_settings(privacy: PrivacyConfig) -> GateSettings | None:
    """A camera's change gating from its `privacy` keys; None when `change_gating` is off."""
    if not privacy.change_gating:
        return None
    return GateSettings(privacy.min_face_px, privacy.change_threshold, privacy.full_scan_s)


@dataclass(frozen=True, slots=True)
class LookPlan:
    """Where one detector run looks: the whole picture, or these regions (camera pixels)."""

    whole: bool
    regions: tuple[tuple[int, int, int, int], ...]  # x1, y1, x2, y2; empty on a whole look
    reason: str  # "whole: first" | "whole: wide change" | "regions" | "quiet"
    share: float  # the share of the picture looked at (1.0 on a whole look)
    scanned: tuple[int, ...] = ()  # the scan tiles among the regions (ChangeGate.tiles)

    @property
    def looks(self) -> bool:
        """Whether the detector has anything to look at (a quiet picture with no tracks: nothing)."""
        return self.whole or bool(self.regions)


class ChangeGate:
    """Per camera, per frame size: what changed since each part of the picture was last looked at.

    `observe` every frame (the luma plane), `plan` at a detector run, `looked` after the run
    succeeded. Not thread-safe: the engine's worker thread drives it."""

    def __init__(
        self,
        width: int,
        height: int,
        *,
        min_face_px: float,
        threshold: float,
        full_scan_s: float,
        whole_share: float = WHOLE_SHARE,
    ) -> None:
        self.width, self.height = width, height
        self.threshold = threshold
        self.full_scan_s = full_scan_s
        self.whole_share = whole_share
        # Small picture: one small pixel is `factor` x `factor` camera pixels.
        self.factor = max(1, int(min_face_px // SMALL_FACE_PX))
        self.cell_px = CELL_SMALL * self.factor
        self.cols = math.ceil(width / self.cell_px)
        self.rows = math.ceil(height / self.cell_px)
        # The small picture is padded to whole cells (edge pixels repeated) so cells reshape exactly.
        self._sw = max(1, math.ceil(width / self.factor))
        self._sh = max(1, math.ceil(height / self.factor))
        self._ref: np.ndarray | None = None  # small grey picture as each cell was at its last look
        self._latest: np.ndarray | None = None  # the small picture of the newest frame observed
        self._marked = np.ones((self.rows, self.cols), dtype=bool)  # changed since last looked at
        # The rolling full scan: SCAN_GRID x SCAN_GRID overlapping tiles, each looked at every
        # full_scan_s, their times staggered so that each run carries at most about one tile.
        self.tiles = scan_tiles(width, height, self.cell_px)
        self._due = [math.inf] * len(self.tiles)
        self.whole_looks = 0
        self.region_looks = 0
        self.quiet_runs = 0

    # -- every frame ---------------------------------------------------------------------------

    @classmethod
    def for_frame(cls, width: int, height: int, settings: GateSettings) -> ChangeGate:
        return cls(
            width, height, min_face_px=settings.min_face_px, threshold=settings.threshold,
            full_scan_s=settings.full_scan_s,
        )  # fmt: skip

    def observe(self, luma: np.ndarray) -> None:
        """One frame's luma (height x width, uint8): mark the cells that differ from their reference."""
        small = cv2.resize(luma, (self._sw, self._sh), interpolation=cv2.INTER_AREA)
        self._latest = small
        if self._ref is None:
            return  # everything is marked until the first (whole) look
        changed = cv2.absdiff(small, self._ref) > self.threshold
        self._marked |= self._cells_any(changed)

    def _cells_any(self, small_mask: np.ndarray) -> np.ndarray:
        """Per cell: whether any small pixel in it is set (cells at the edges may be partial)."""
        ph, pw = self.rows * CELL_SMALL, self.cols * CELL_SMALL
        padded = np.zeros((ph, pw), dtype=bool)
        padded[: small_mask.shape[0], : small_mask.shape[1]] = small_mask
        cells = np.asarray(padded.reshape(self.rows, CELL_SMALL, self.cols, CELL_SMALL).any(axis=(1, 3)))
        return cells

    # -- at a detector run ---------------------------------------------------------------------

    def plan(self, t: float, tracks: list[Box] | tuple[Box, ...] = ()) -> LookPlan:
        """Where the run at time `t` (seconds, the frame's) must look, given the live tracks' boxes."""
        if self._ref is None:
            return LookPlan(True, (), "whole: first", 1.0)
        due = tuple(i for i, when in enumerate(self._due) if t >= when)
        regions = self._regions(self._marked) if self._marked.any() else []
        for box in tracks:
            # Around a face being followed: its own neighbourhood, not a cell grid's (a 16-px face
            # far away would otherwise cost a 128-px crop), unless a change region holds it already.
            size = max(box.width, box.height, 1.0)
            r = _int_rect(
                box.grown(max(TRACK_GROW_FACES * size, MIN_TRACK_CONTEXT_PX)), self.width, self.height
            )
            if r is not None and not any(_inside(r, o) for o in regions):
                regions.append(r)
        regions += [self.tiles[i].rect for i in due]
        if not regions:
            return LookPlan(False, (), "quiet", 0.0)
        regions = _merge_overlaps(regions)
        area = sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions)
        share = area / float(self.width * self.height)
        if share > self.whole_share:
            return LookPlan(True, (), "whole: wide change", 1.0)
        return LookPlan(False, tuple(regions), "regions", share, due)

    def looked(self, plan: LookPlan, t: float) -> None:
        """The run of `plan` succeeded on the newest observed frame: those cells are seen as they are now."""
        latest = self._latest
        if latest is None:
            return
        if plan.whole:
            self._ref = latest.copy()
            self._marked[:] = False
            # Every tile was looked at now; the next ones come staggered (one run carries one tile).
            n = len(self.tiles)
            self._due = [t + (i + 1) * self.full_scan_s / n for i in range(n)]
            self.whole_looks += 1
            return
        if not plan.regions:
            self.quiet_runs += 1
            return
        self.region_looks += 1
        assert self._ref is not None  # a regions plan needs a reference
        # Marked cells wholly inside a region were looked at with their context (a change region
        # holds REGION_GROW_CELLS around them, a track's region its face's surroundings); a scan
        # tile's core is looked at whole, changed or not.
        done = np.zeros_like(self._marked)
        c = self.cell_px
        for x1, y1, x2, y2 in plan.regions:
            done[math.ceil(y1 / c) : (y2 // c if y2 < self.height else self.rows),
                 math.ceil(x1 / c) : (x2 // c if x2 < self.width else self.cols)] = True  # fmt: skip
        done &= self._marked
        for i in plan.scanned:
            r1, c1, r2, c2 = self.tiles[i].core_cells
            done[r1:r2, c1:c2] = True
            # On its schedule (a run late by a frame does not push every later scan back), never
            # earlier than half a period from now.
            self._due[i] = max(self._due[i] + self.full_scan_s, t + self.full_scan_s / 2)
        if done.any():
            f = CELL_SMALL
            for r, col in zip(*np.nonzero(done), strict=True):
                self._ref[r * f : (r + 1) * f, col * f : (col + 1) * f] = latest[
                    r * f : (r + 1) * f, col * f : (col + 1) * f
                ]
            self._marked &= ~done

    def reset(self) -> None:
        """Forget what was seen (a detector failure, a new stream): the next run is a whole look."""
        self._ref = None
        self._marked[:] = True
        self._due = [math.inf] * len(self.tiles)

    # -- geometry ------------------------------------------------------------------------------

    def _regions(self, want: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Rectangles (camera pixels) that cover every wanted cell with REGION_GROW_CELLS of context:
        the bounding box of each connected group of wanted cells, grown. They may overlap (a pixel
        looked at twice costs a little; one box around two walkers costs the ground between them)."""
        g = REGION_GROW_CELLS
        n, _labels, stats, _ = cv2.connectedComponentsWithStats(want.astype(np.uint8), connectivity=8)
        c = self.cell_px
        out = []
        for x, y, w, h, _area in stats[1:n]:
            x1, y1 = max(0, int(x) - g), max(0, int(y) - g)
            x2, y2 = min(self.cols, int(x + w) + g), min(self.rows, int(y + h) + g)
            out.append((x1 * c, y1 * c, min(self.width, x2 * c), min(self.height, y2 * c)))
        return out


@dataclass(frozen=True, slots=True)
class ScanTile:
    """One tile of the rolling full scan: the rectangle looked at, and the cells of its core (rows
    r1:r2, cols c1:c2) that it looks at with SCAN_OVERLAP of context on every inner side."""

    rect: tuple[int, int, int, int]
    core_cells: tuple[int, int, int, int]


def scan_tiles(width: int, height: int, cell_px: int) -> list[ScanTile]:
    """SCAN_GRID x SCAN_GRID tiles over the picture, overlapping by SCAN_OVERLAP x the longer side
    (in whole cells) across every seam: a face up to twice that is whole in one of them."""
    overlap = max(1, round(SCAN_OVERLAP * max(width, height) / cell_px)) * cell_px
    cols, rows = math.ceil(width / cell_px), math.ceil(height / cell_px)
    out = []
    for gy in range(SCAN_GRID):
        for gx in range(SCAN_GRID):
            c1, c2 = cols * gx // SCAN_GRID, cols * (gx + 1) // SCAN_GRID
            r1, r2 = rows * gy // SCAN_GRID, rows * (gy + 1) // SCAN_GRID
            x1, x2 = max(0, c1 * cell_px - overlap), min(width, c2 * cell_px + overlap)
            y1, y2 = max(0, r1 * cell_px - overlap), min(height, r2 * cell_px + overlap)
            out.append(ScanTile((x1, y1, x2, y2), (r1, c1, r2, c2)))
    return out


def _int_rect(box: Box, width: int, height: int) -> tuple[int, int, int, int] | None:
    x1, y1 = max(0, math.floor(box.x1)), max(0, math.floor(box.y1))
    x2, y2 = min(width, math.ceil(box.x2)), min(height, math.ceil(box.y2))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]


def _merge_overlaps(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Overlapping rectangles merged where one crop of their union costs no more than the two
    (the detector's cost is about its pixels): the overlap is not looked at twice."""
    out = list(rects)
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] >= b[2] or b[0] >= a[2] or a[1] >= b[3] or b[1] >= a[3]:
                    continue
                u = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                if _area(u) <= _area(a) + _area(b):
                    out[i] = u
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out


def _area(r: tuple[int, int, int, int]) -> int:
    return (r[2] - r[0]) * (r[3] - r[1])
