"""Look-ahead (Anonymizer.push_pending/flush_pending) on scripted frames: a face is masked from its first frame.

The detector is a stand-in that reports the face wherever the script put it, but only on the frames
it is run on: what these tests check is which frames get a mask, which is the engine's logic.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from facekit import background, changed_fraction, paste_face

from streamproxy.config import EngineConfig
from streamproxy.engine.anonymizer import Anonymizer
from streamproxy.types import AnonymizedFrame, Box, Detection

W, H, FPS = 640, 360, 25
FACE = 60


class ScriptDetector:
    """Reports the scripted face box of the frame it is given (frame.pts is the frame's index)."""

    def __init__(self, boxes: dict[int, Box], fail_at: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.boxes = boxes
        self.fail_at = fail_at
        self.input_width = W
        self.runs: list[int] = []

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        i = int(frame.pts or 0)
        self.runs.append(i)
        if i in self.fail_at:
            raise RuntimeError("detector broken on purpose")
        box = self.boxes.get(i)
        return [Detection(box, 0.9)] if box is not None else []

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        raise AssertionError("not used for video")


def clip(face_x: dict[int, int], n: int) -> tuple[list[np.ndarray], dict[int, Box]]:
    """n frames of a textured background; frame i shows a real face at x = face_x[i] (if present)."""
    frames, boxes = [], {}
    for i in range(n):
        img = background(W, H, seed=3)
        if i in face_x:
            boxes[i] = paste_face(img, face_x[i], 120, FACE)
        frames.append(img)
    return frames, boxes


def to_frame(img: np.ndarray, i: int) -> av.VideoFrame:
    f = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)
    f.pts = i
    return f


def push(eng: Anonymizer, frame: av.VideoFrame, t: float, decoded_at: float = 0.0) -> list[AnonymizedFrame]:
    """The live way in, each released frame rendered (as the pipeline's encoder thread does)."""
    return [p.render() for p in eng.push_pending(frame, t, decoded_at)]


def flush(eng: Anonymizer) -> list[AnonymizedFrame]:
    return [p.render() for p in eng.flush_pending()]


def run_live(eng: Anonymizer, imgs: list[np.ndarray]) -> list[tuple[int, AnonymizedFrame]]:
    """Push every frame; returns (input index, output) in output order, flushing at the end."""
    out: list[tuple[int, AnonymizedFrame]] = []
    pending: list[int] = []
    for i, img in enumerate(imgs):
        pending.append(i)
        for res in push(eng, to_frame(img, i), i / FPS, decoded_at=float(i)):
            out.append((int(res.decoded_at), res))
    for res in flush(eng):
        out.append((int(res.decoded_at), res))
    return out


def masked(before: np.ndarray, res: AnonymizedFrame, box: Box) -> float:
    assert res.frame is not None
    return changed_fraction(before, res.frame.to_ndarray(format="bgr24", threads=1), box, tol=6)


def engine(det: ScriptDetector, every: int, unmasked: int = 0) -> Anonymizer:
    return Anonymizer(EngineConfig(detect_every=every), detector=det, max_unmasked_frames=unmasked)  # type: ignore[arg-type]


def test_a_face_appearing_between_detector_runs_is_masked_in_its_first_frame() -> None:
    # Runs on frames 0, 3, 6, 9; the face steps in at frame 4 and walks right 6 px a frame.
    face_x = {i: 200 + 6 * (i - 4) for i in range(4, 12)}
    imgs, boxes = clip(face_x, 12)
    det = ScriptDetector(boxes)
    out = run_live(engine(det, every=3), imgs)
    assert [i for i, _ in out] == list(range(12)), "every frame leaves, once, in order"
    assert det.runs == [0, 3, 6, 9, 11], "the detector ran on every 3rd frame (and the last, at flush)"
    by_index = dict(out)
    for i in range(4, 12):
        assert masked(imgs[i], by_index[i], boxes[i]) > 0.9, f"frame {i}: face visible"

    # Without look-ahead (frames leave on the tracker's prediction: max_unmasked_frames) the same
    # cadence sends frames 4 and 5 raw: what this test guards against.
    raw = dict(run_live(engine(ScriptDetector(boxes), every=3, unmasked=2), imgs))
    assert masked(imgs[4], raw[4], boxes[4]) < 0.2 and masked(imgs[5], raw[5], boxes[5]) < 0.2


def test_a_face_between_two_runs_is_masked_on_its_path() -> None:
    """Seen at runs 0 and 4 (every 4th frame), moving 12 px a frame: frames 1-3 are masked where it
    was (interpolated), not only where the tracker guessed."""
    face_x = {i: 100 + 12 * i for i in range(9)}
    imgs, boxes = clip(face_x, 9)
    out = dict(run_live(engine(ScriptDetector(boxes), every=4), imgs))
    for i in range(9):
        assert masked(imgs[i], out[i], boxes[i]) > 0.9, f"frame {i}"


def test_no_face_no_mask_and_the_frames_wait_for_the_run() -> None:
    imgs, boxes = clip({}, 6)
    eng = engine(ScriptDetector(boxes), every=3)
    released = [len(push(eng, to_frame(img, i), i / FPS, float(i))) for i, img in enumerate(imgs)]
    # Frame 0 runs at once (first run), 1-2 wait for the run on 3, 4-5 stay waiting.
    assert released == [1, 0, 0, 3, 0, 0]
    assert eng.held == 2 and eng.oldest_held_at == 4.0
    rest = flush(eng)
    assert [r.decoded_at for r in rest] == [4.0, 5.0] and eng.held == 0
    for i, res in zip((4, 5), rest, strict=True):
        assert res.frame is not None
        assert np.array_equal(
            res.frame.to_ndarray(format="bgr24", threads=1),
            to_frame(imgs[i], i).to_ndarray(format="bgr24", threads=1),
        )


def test_max_unmasked_frames_lets_frames_out_on_prediction() -> None:
    imgs, boxes = clip({}, 6)
    eng = engine(ScriptDetector(boxes), every=3, unmasked=1)
    released = [len(push(eng, to_frame(img, i), i / FPS, float(i))) for i, img in enumerate(imgs)]
    assert released == [1, 1, 0, 2, 1, 0]


def test_a_failing_detector_fails_every_waiting_frame_closed() -> None:
    face_x = {i: 200 for i in range(7)}
    imgs, boxes = clip(face_x, 7)
    det = ScriptDetector(boxes, fail_at={3})
    out = run_live(engine(det, every=3), imgs)
    by_index = dict(out)
    for i in (1, 2, 3):
        res = by_index[i]
        assert res.fail_closed and res.fail_reason == "detector_error"
        # The whole frame is obfuscated, far from the face too.
        far = Box(450, 250, 630, 350)
        assert masked(imgs[i], res, far) > 0.5
    # After a failure the detector runs on the next frame (every frame until it succeeds).
    assert 4 in det.runs


def test_drop_action_drops_the_waiting_frames_too() -> None:
    imgs, boxes = clip({}, 4)
    det = ScriptDetector(boxes, fail_at={3})
    eng = Anonymizer(
        EngineConfig(detect_every=3, fail_closed={"action": "drop"}),
        detector=det,  # type: ignore[arg-type]
    )
    out = run_live(eng, imgs)
    assert [(i, r.frame is None) for i, r in out] == [(0, False), (1, True), (2, True), (3, True)]


def test_a_new_frame_size_releases_the_frames_of_the_old_one_first() -> None:
    imgs, boxes = clip({}, 3)
    eng = engine(ScriptDetector(boxes), every=3)
    push(eng, to_frame(imgs[0], 0), 0.0, 0.0)
    assert push(eng, to_frame(imgs[1], 1), 0.04, 1.0) == []
    small = av.VideoFrame.from_ndarray(np.zeros((180, 320, 3), np.uint8), format="bgr24").reformat(
        format="yuv420p", threads=1
    )
    small.pts = 2
    out = push(eng, small, 0.08, 2.0)
    assert [r.decoded_at for r in out][:1] == [1.0], "the old size's waiting frame left first"
    assert all(r.frame is not None for r in out)


@pytest.mark.parametrize("every", [1, 2, 5])
def test_every_frame_leaves_exactly_once(every: int) -> None:
    imgs, boxes = clip({i: 300 for i in range(0, 20, 2)}, 20)
    out = run_live(engine(ScriptDetector(boxes), every=every), imgs)
    assert [i for i, _ in out] == list(range(20))
