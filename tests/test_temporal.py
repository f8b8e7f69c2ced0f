"""Bulk video's temporal fill (Anonymizer.push_offline, engine/temporal.py) on scripted frames.

The detector is a stand-in that reports the real face pasted into each frame with the score the
script gives it, or not at all: what these tests check is which frames get a mask (before the first
confident detection, after the last, between, and not beyond the bounded window) and that a broken
detector still fails closed.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from facekit import background, changed_fraction, make_video, paste_face

from streamproxy.anonymize import collect_jobs, iter_results
from streamproxy.config import EngineConfig
from streamproxy.engine import temporal
from streamproxy.engine.anonymizer import Anonymizer
from streamproxy.engine.temporal import TemporalFill
from streamproxy.types import AnonymizedFrame, Box, Detection

W, H, FPS = 640, 360, 25
FACE = 60
N = 60
EXTEND = round(temporal.EXTEND_S * FPS)  # frames the fill reaches before the first / after the last detection


class ScoreDetector:
    """Reports the face of frame i (frame.pts) with scores[i]; nothing where the script has no score."""

    def __init__(self, box: Box, scores: dict[int, float], fail_at: frozenset[int] = frozenset()) -> None:
        self.box = box
        self.scores = scores
        self.fail_at = fail_at
        self.input_width = W
        self.upscale = 0.0
        self.last_ms = 0.0
        self.model = "script"

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        i = int(frame.pts or 0)
        if i in self.fail_at:
            raise RuntimeError("detector broken on purpose")
        s = self.scores.get(i)
        return [Detection(self.box, s)] if s is not None else []

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        raise AssertionError("not used for video")


def scene() -> tuple[np.ndarray, Box]:
    img = background(W, H, seed=5)
    return img, paste_face(img, 300, 120, FACE)


def to_frame(img: np.ndarray, i: int) -> av.VideoFrame:
    f = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)
    f.pts = i
    return f


def run_offline(eng: Anonymizer, img: np.ndarray, n: int = N) -> list[AnonymizedFrame]:
    out: list[AnonymizedFrame] = []
    for i in range(n):
        out += eng.push_offline(to_frame(img, i), i / FPS, decoded_at=float(i))
    out += eng.flush_offline()
    assert [int(r.decoded_at) for r in out] == list(range(n))  # one result per frame, in order
    return out


def masked_frames(img: np.ndarray, box: Box, out: list[AnonymizedFrame]) -> list[int]:
    res = []
    for i, r in enumerate(out):
        assert r.frame is not None
        if changed_fraction(img, r.frame.to_ndarray(format="bgr24", threads=1), box, tol=6) > 0.5:
            res.append(i)
    return res


def engine(det: ScoreDetector, coast: float = 0.0) -> Anonymizer:
    # coast 0: the forward tracker masks only the frames it detects on, so what else is masked is
    # the temporal fill's doing.
    cfg = EngineConfig.model_validate({"tracker": {"coast_seconds": coast}})
    return Anonymizer(cfg, detector=det)


def test_masks_before_the_first_and_after_the_last_detection_within_the_window() -> None:
    img, box = scene()
    first, last = 20, 35
    det = ScoreDetector(box, {i: 0.9 for i in range(first, last + 1)})
    got = masked_frames(img, box, run_offline(engine(det), img))
    assert got == list(range(first - EXTEND, last + EXTEND + 1))


def test_weak_detections_count_when_a_confident_one_confirms_the_face() -> None:
    # The face scores 0.2 (under the 0.4 threshold) on frames 10-29 and 0.9 only on 30-32: the weak
    # run is masked back from the confirmation, as far as the window reaches.
    img, box = scene()
    scores = {i: 0.2 for i in range(10, 30)} | {i: 0.9 for i in range(30, 33)}
    det = ScoreDetector(box, scores)
    got = masked_frames(img, box, run_offline(engine(det), img))
    reach = 30 - round(temporal.WINDOW_S * FPS)  # frames before this left the window unconfirmed
    first = max(10 - EXTEND, reach)
    assert got == list(range(first, 33 + EXTEND))


def test_weak_only_face_is_not_masked() -> None:
    img, box = scene()
    det = ScoreDetector(box, {i: 0.2 for i in range(10, 40)})
    assert masked_frames(img, box, run_offline(engine(det), img)) == []


def test_gap_between_detections_is_interpolated() -> None:
    img, box = scene()
    det = ScoreDetector(box, {i: 0.9 for i in (10, 11, 12, 20, 21)})  # 7 frames without a detection
    got = masked_frames(img, box, run_offline(engine(det), img))
    assert set(range(10, 22)) <= set(got)


def test_interpolated_box_follows_a_moving_face() -> None:
    fill = TemporalFill(strong=0.4, weak=0.15, mask_factor=1.0)
    fill.add(0, 0.0, [Detection(Box(100, 100, 140, 140), 0.9)])
    for i in range(1, 5):
        fill.add(i, i / FPS, [])
    fill.add(5, 5 / FPS, [Detection(Box(150, 100, 190, 140), 0.9)])
    (mid,) = fill.masks(3, 3 / FPS)
    assert mid.x1 < 130 < mid.x2 and mid.x1 > 100  # around the lerped box, not the whole path
    assert fill.masks(20, 20 / FPS) == []  # beyond EXTEND_S after the last detection


def test_broken_detector_fails_closed_in_offline_mode() -> None:
    img, box = scene()
    det = ScoreDetector(box, {i: 0.9 for i in range(N)}, fail_at=frozenset(range(10, 14)))
    eng = engine(det)
    out = run_offline(eng, img, 30)
    assert [i for i, r in enumerate(out) if r.fail_closed] == [10, 11, 12, 13]
    assert eng.stats.fail_closed_frames == 4
    whole = Box(0, 0, W, H)
    for i in (10, 13):
        frame = out[i].frame
        assert frame is not None
        assert changed_fraction(img, frame.to_ndarray(format="bgr24", threads=1), whole, tol=6) > 0.5


def test_broken_detector_drops_when_told_to() -> None:
    img, box = scene()
    det = ScoreDetector(box, {}, fail_at=frozenset({3}))
    cfg = EngineConfig.model_validate({"fail_closed": {"action": "drop"}})
    out = run_offline(Anonymizer(cfg, detector=det), img, 8)
    assert [i for i, r in enumerate(out) if r.frame is None] == [3]


@pytest.mark.parametrize("fail_at", [frozenset({2, 5}), frozenset(range(30))])
def test_bulk_video_with_a_broken_detector_fails_closed(tmp_path: Path, fail_at: frozenset[int]) -> None:
    class Broken:
        input_width = 640
        upscale = 0.0
        last_ms = 0.0
        model = "broken"
        calls = 0

        def detect_bgr(self, img: np.ndarray) -> list[Detection]:
            raise AssertionError("not used for video")

        def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
            i = Broken.calls
            Broken.calls += 1
            if i in fail_at:
                raise RuntimeError("broken on purpose")
            return []

    video = tmp_path / "v.mp4"
    make_video(video, frames=30, audio=False)
    jobs, errors = collect_jobs([video], tmp_path / "out")
    assert not errors
    (res,) = list(iter_results(jobs, EngineConfig(), detector=Broken()))
    assert res.ok and res.frames == 30 and res.fail_closed_frames == len(fail_at)
    with av.open(str(tmp_path / "out" / "v.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 30
