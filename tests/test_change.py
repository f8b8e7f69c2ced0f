"""Change gating (engine/change.py): the live detector looks only where the picture changed, and
around the faces it follows, between whole looks; never less than the privacy invariant needs.

The gate on scripted frames (noise, a fade, a lighting step, a face cut by a region's edge, the full
scan's period); the engine with a stand-in detector that reports a face only where it is made to look
(what these tests check is where the engine looks and which frames get a mask); the real detector's
region look against its whole-frame look on a real face.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from facekit import background, changed_fraction, paste_face

from streamproxy.config import DetectorConfig, EngineConfig
from streamproxy.engine.anonymizer import Anonymizer
from streamproxy.engine.change import TRACK_GROW_FACES, ChangeGate, GateSettings
from streamproxy.types import AnonymizedFrame, Box, Detection

W, H, FPS = 1280, 720, 25
SETTINGS = GateSettings(min_face_px=18.0, threshold=12.0, full_scan_s=1.0)


def luma(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, :, 1])  # any one channel stands in for luma here


def gate(full_scan_s: float = 100.0) -> ChangeGate:
    return ChangeGate(W, H, min_face_px=18.0, threshold=12.0, full_scan_s=full_scan_s)


def covers(regions: tuple[tuple[int, int, int, int], ...], box: Box) -> bool:
    return any(x1 <= box.x1 and y1 <= box.y1 and box.x2 <= x2 and box.y2 <= y2 for x1, y1, x2, y2 in regions)


def noisy(img: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)


# --- the gate alone ------------------------------------------------------------------------


def test_the_first_look_is_whole_and_noise_alone_marks_nothing() -> None:
    rng = np.random.default_rng(7)
    still = background(W, H, seed=5)
    g = gate()
    g.observe(luma(noisy(still, rng)))
    first = g.plan(0.0)
    assert first.whole and first.reason == "whole: first"
    g.looked(first, 0.0)
    for i in range(1, 40):  # sensor noise of sigma 3 levels, frame after frame
        g.observe(luma(noisy(still, rng)))
        plan = g.plan(i / FPS)
        assert not plan.looks, f"frame {i}: noise marked {plan.regions}"
        g.looked(plan, i / FPS)
    assert g.quiet_runs == 39


def test_a_slow_fade_adds_up_against_the_last_look_not_the_previous_frame() -> None:
    """A face fading in over 20 frames changes the (small) picture by less than the threshold from one
    frame to the next, so compared with the frame before nothing would ever be marked; compared with
    the last look it is marked, and the region looked at holds the whole face, before half of its
    contrast is there."""
    import cv2

    still = background(W, H, seed=5)
    with_face = still.copy()
    box = paste_face(with_face, 600, 300, 40)
    g = gate()
    g.observe(luma(still))
    g.looked(g.plan(0.0), 0.0)
    steps = 20

    def small(y: np.ndarray) -> np.ndarray:
        return cv2.resize(y, (g._sw, g._sh), interpolation=cv2.INTER_AREA).astype(np.int16)

    marked_at = None
    prev = small(luma(still))
    for i in range(1, steps + 1):
        a = i / steps
        img = (still * (1 - a) + with_face * a).astype(np.uint8)
        y = luma(img)
        assert int(np.abs(small(y) - prev).max()) <= SETTINGS.threshold, (
            "each step alone is under the threshold"
        )
        prev = small(y)
        g.observe(y)
        plan = g.plan(i / FPS)
        if plan.looks and marked_at is None:
            marked_at = i
            assert not plan.whole and covers(plan.regions, box), (plan, box)
        g.looked(plan, i / FPS)
    assert marked_at is not None and marked_at <= steps // 2


def test_a_lighting_step_means_a_whole_look() -> None:
    still = background(W, H, seed=5)
    g = gate()
    g.observe(luma(still))
    g.looked(g.plan(0.0), 0.0)
    g.observe(luma((still * 0.75).astype(np.uint8)))  # the whole picture 25 % darker
    plan = g.plan(0.04)
    assert plan.whole and plan.reason == "whole: wide change"


def test_a_region_cut_at_a_face_is_grown_to_hold_it() -> None:
    """Only the face's lower half changes (a mouth, a chin): the region looked at holds the whole face."""
    still = background(W, H, seed=5)
    face = still.copy()
    box = paste_face(face, 700, 200, 60)
    half = still.copy()
    cut = int((box.y1 + box.y2) / 2)
    half[cut:] = face[cut:]
    g = gate()
    g.observe(luma(still))
    g.looked(g.plan(0.0), 0.0)
    g.observe(luma(half))
    plan = g.plan(0.04)
    assert plan.looks and not plan.whole
    assert covers(plan.regions, box), (plan.regions, box)
    assert plan.share < 0.1


def test_every_part_of_a_still_picture_is_looked_at_every_full_scan_period() -> None:
    """Nothing changes: after the first whole look, the scan's tiles come one per run, staggered, and
    each part of the picture is looked at again within every full_scan_s (plus one run interval)."""
    still = background(W, H, seed=5)
    g = gate(full_scan_s=1.0)
    last_seen = np.full((H // 8, W // 8), 0.0)  # when each 8x8 block was last inside a look
    worst_gap = 0.0
    tiles_per_run = []
    for i in range(0, 4 * FPS + 1):
        t = i / FPS
        g.observe(luma(still))
        plan = g.plan(t)
        rects = [(0, 0, W, H)] if plan.whole else list(plan.regions)
        tiles_per_run.append(len(plan.scanned))
        for x1, y1, x2, y2 in rects:
            last_seen[y1 // 8 : y2 // 8, x1 // 8 : x2 // 8] = t
        worst_gap = max(worst_gap, float((t - last_seen).max()))
        g.looked(plan, t)
    assert g.whole_looks == 1, "one whole look, the first"
    assert worst_gap <= 1.0 + 1.0 / FPS, worst_gap
    assert max(tiles_per_run) == 1 and sum(tiles_per_run) >= 4 * 3, tiles_per_run


def test_a_face_a_whole_look_missed_is_found_by_the_scan_though_nothing_changes() -> None:
    """The detector misses a still face once (the first look); nothing changes after that, so only the
    scan brings the detector back to it: within full_scan_s."""
    still = background(W, H, seed=5)
    box = paste_face(still, 900, 500, 40)
    det = RegionDetector({i: box for i in range(1, 60)})  # frame 0: missed
    out = run_live(live_engine(det, every=1, full_scan_s=1.0), [still] * 60)
    first_masked = min(i for i in range(60) if masked(still, out[i], box) > 0.9)
    assert 1 <= first_masked <= FPS, first_masked


def test_tracks_are_looked_at_even_where_nothing_changed() -> None:
    still = background(W, H, seed=5)
    g = gate()
    g.observe(luma(still))
    g.looked(g.plan(0.0), 0.0)
    g.observe(luma(still))
    face = Box(400, 300, 440, 348)
    plan = g.plan(0.04, [face])
    assert plan.looks and covers(plan.regions, face.grown(TRACK_GROW_FACES * 48)), plan
    assert not g.plan(0.04).looks


def test_a_reset_makes_the_next_look_whole() -> None:
    still = background(W, H, seed=5)
    g = gate()
    g.observe(luma(still))
    g.looked(g.plan(0.0), 0.0)
    g.reset()
    g.observe(luma(still))
    assert g.plan(0.04).reason == "whole: first"


# --- the engine: where it looks, which frames get a mask -------------------------------------


class RegionDetector:
    """Reports the scripted face of a frame (frame.pts = index) only where it is made to look: on a
    whole look, or when a region holds the whole face."""

    regions_supported = True

    def __init__(self, boxes: dict[int, Box], fail_at: set[int] | None = None) -> None:
        self.boxes = boxes
        self.fail_at = fail_at or set()
        self.input_width = W
        self.upscale = 0.0
        self.model = "stub"
        self.last_ms = 0.0
        self.looks: list[tuple[int, str]] = []

    def _check(self, i: int) -> None:
        if i in self.fail_at:
            raise RuntimeError("detector broken on purpose")

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        i = int(frame.pts or 0)
        self.looks.append((i, "whole"))
        self._check(i)
        box = self.boxes.get(i)
        return [Detection(box, 0.9)] if box is not None else []

    def detect_regions(
        self, frame: av.VideoFrame, regions: tuple[tuple[int, int, int, int], ...]
    ) -> list[Detection]:
        i = int(frame.pts or 0)
        self.looks.append((i, "regions"))
        self._check(i)
        box = self.boxes.get(i)
        return [Detection(box, 0.9)] if box is not None and covers(regions, box) else []

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        raise AssertionError("not used for video")


def to_frame(img: np.ndarray, i: int) -> av.VideoFrame:
    f = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)
    f.pts = i
    return f


def live_engine(det: RegionDetector, every: int = 2, full_scan_s: float = 1.0) -> Anonymizer:
    settings = GateSettings(min_face_px=18.0, threshold=12.0, full_scan_s=full_scan_s)
    return Anonymizer(EngineConfig(detect_every=every), detector=det, change_gate=settings)


def run_live(eng: Anonymizer, frames: list[np.ndarray]) -> dict[int, AnonymizedFrame]:
    out: dict[int, AnonymizedFrame] = {}
    for i, img in enumerate(frames):
        for pending in eng.push_pending(to_frame(img, i), i / FPS, decoded_at=float(i)):
            out[int(pending.decoded_at)] = pending.render()
    for pending in eng.flush_pending():
        out[int(pending.decoded_at)] = pending.render()
    return out


def masked(before: np.ndarray, res: AnonymizedFrame, box: Box) -> float:
    assert res.frame is not None
    return changed_fraction(before, res.frame.to_ndarray(format="bgr24", threads=1), box, tol=6)


def test_a_face_fading_in_where_it_stands_is_looked_at_before_its_first_frame_leaves() -> None:
    """Every frame that shows the face at half its contrast or more leaves masked, though the face
    appears without moving and the runs between whole looks look only where the picture changed."""
    still = background(W, H, seed=5)
    with_face = still.copy()
    box = paste_face(with_face, 640, 320, 40)
    frames, boxes = [], {}
    for i in range(40):
        a = min(1.0, max(0.0, (i - 10) / 4))  # fades in over frames 11-14, then stays
        frames.append((still * (1 - a) + with_face * a).astype(np.uint8))
        if a >= 0.5:
            boxes[i] = box
    det = RegionDetector(boxes)
    out = run_live(live_engine(det, every=2, full_scan_s=10.0), frames)
    assert sorted(out) == list(range(40))
    for i in sorted(boxes):
        assert masked(frames[i], out[i], box) > 0.9, f"frame {i}: face visible"
    kinds = [k for _, k in det.looks]
    assert kinds[0] == "whole" and "regions" in kinds and kinds.count("whole") == 1, kinds


def test_a_face_that_stops_moving_stays_masked_for_ten_seconds() -> None:
    """A face walks in and stands still for 10 s: its region is looked at every run (it is a track),
    so it stays masked though the picture around it no longer changes."""
    still = background(W, H, seed=5)
    n = 12 * FPS
    frames, boxes = [], {}
    for i in range(n):
        img = still.copy()
        x = 200 + 8 * min(i, 30)  # walks 30 frames, then stands
        boxes[i] = paste_face(img, x, 300, 40)
        frames.append(img)
    det = RegionDetector(boxes)
    out = run_live(live_engine(det, every=2, full_scan_s=100.0), frames)
    leaked = [i for i in range(n) if masked(frames[i], out[i], boxes[i]) <= 0.9]
    assert leaked == []
    kinds = [k for _, k in det.looks]
    assert kinds.count("whole") == 1 and kinds.count("regions") > 100


def test_a_lighting_step_gets_a_whole_look_in_the_engine() -> None:
    still = background(W, H, seed=5)
    frames = [still] * 10 + [(still * 0.7).astype(np.uint8)] * 6
    det = RegionDetector({})
    eng = live_engine(det, every=1, full_scan_s=100.0)
    run_live(eng, frames)
    whole = [i for i, k in det.looks if k == "whole"]
    assert whole == [0, 10], det.looks
    assert eng.stats.whole_looks == 2 and eng.stats.quiet_runs == 14


def test_a_detector_failure_fails_closed_and_the_next_look_is_whole() -> None:
    still = background(W, H, seed=5)
    with_face = still.copy()
    box = paste_face(with_face, 500, 300, 40)
    frames = [still] * 6 + [with_face] * 6
    boxes = {i: box for i in range(6, 12)}
    det = RegionDetector(boxes, fail_at={6})
    eng = live_engine(det, every=1, full_scan_s=100.0)
    out = run_live(eng, frames)
    assert out[6].fail_closed and eng.stats.fail_closed_frames == 1
    assert (7, "whole") in det.looks, det.looks
    for i in range(7, 12):
        assert masked(frames[i], out[i], box) > 0.9


def test_gating_off_looks_at_the_whole_picture_every_run() -> None:
    still = background(W, H, seed=5)
    det = RegionDetector({})
    eng = Anonymizer(EngineConfig(detect_every=1), detector=det)
    run_live(eng, [still] * 5)
    assert [k for _, k in det.looks] == ["whole"] * 5


# --- the real detector: a region look sees what the whole look sees --------------------------


def test_a_region_look_finds_the_face_where_the_whole_look_does(model_dir: Path) -> None:
    from streamproxy.engine.detect import create_detector

    det = create_detector(DetectorConfig(model_dir=model_dir, input_width=W, threads=1, threshold=0.5))
    assert det.regions_supported
    img = background(W, H, seed=5)
    box = paste_face(img, 700, 260, 90)
    frame = to_frame(img, 0)
    whole = det.detect_frame(frame)
    assert len(whole) == 1 and whole[0].box.iou(box) > 0.5
    region = (640, 192, 864, 448)  # the face, with some picture around it
    part = det.detect_regions(frame, (region, (0, 0, 128, 128)))
    assert len(part) == 1
    assert part[0].box.iou(whole[0].box) > 0.9 and abs(part[0].score - whole[0].score) < 0.1
    assert det.detect_regions(frame, ((0, 0, 256, 256),)) == []


def test_a_detector_with_extra_passes_gets_whole_looks(model_dir: Path) -> None:
    """Tiles, upscale or flip passes cannot be cut into regions: the engine keeps whole looks."""
    from streamproxy.engine.detect import create_detector

    det = create_detector(DetectorConfig(model_dir=model_dir, input_width=640, threads=1, upscale=1.5))
    assert not det.regions_supported
    eng = Anonymizer(EngineConfig(detect_every=1), detector=det, change_gate=SETTINGS)
    still = background(W, H, seed=5)
    for i in range(3):
        eng.push_pending(to_frame(still, i), i / FPS, float(i))
    assert eng.stats.detector_runs == 3 and eng.stats.region_looks == 0


@pytest.mark.parametrize("threshold", [6.0, 12.0])
def test_the_threshold_is_the_configured_one(threshold: float) -> None:
    still = background(W, H, seed=5)
    g = ChangeGate(W, H, min_face_px=18.0, threshold=threshold, full_scan_s=100.0)
    g.observe(luma(still))
    g.looked(g.plan(0.0), 0.0)
    brighter = still.copy()
    brighter[300:400, 300:400] = np.clip(brighter[300:400, 300:400].astype(np.int16) + 9, 0, 255).astype(
        np.uint8
    )
    g.observe(luma(brighter))
    assert g.plan(0.04).looks == (threshold < 9)
