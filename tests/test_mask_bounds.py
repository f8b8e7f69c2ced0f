"""Masks follow the face, within a bounded multiple of its size (live look-ahead and bulk video).

Scripted tracks that used to give picture-wide rectangles: a fast face, a gap of several frames
without a detection, two faces crossing, a face leaving at one edge while another enters at the
other. The detector is a stand-in that reports the scripted boxes of the frame it is run on; what
is checked is the masks the engine decides (`PendingFrame.masks`): every scripted face inside a
mask on every frame (privacy), and no mask wider or taller than BOUND x the largest face of the
scene (the picture).
"""

from __future__ import annotations

from collections.abc import Callable

import av
import numpy as np
import pytest

from streamproxy.config import EngineConfig
from streamproxy.engine import track
from streamproxy.engine.anonymizer import Anonymizer, PendingFrame
from streamproxy.types import Box, Detection

W, H, FPS, N = 1280, 720, 25, 60
FACE_W, FACE_H = 60.0, 75.0
# The widest mask the engine may draw, in face sizes: a coasting mask covers the prediction and where
# the face was last seen while both fit in COAST_PATH_FACES, then grows by at most MAX_MARGIN_FACES
# per side (the look-ahead back-fill adds at most as much).
BOUND = track.COAST_PATH_FACES + 2 * track.MAX_MARGIN_FACES + 1e-6

Script = dict[int, list[Box]]


def face(cx: float, cy: float) -> Box:
    return Box.from_center(cx, cy, FACE_W, FACE_H)


def fast_face() -> tuple[Script, Script]:
    """8 face widths a second (the fastest face of the dev clips moves 8.3), across the picture."""
    boxes = {i: [face(100 + 480 * i / FPS, 300)] for i in range(N)}
    return boxes, boxes


def gap() -> tuple[Script, Script]:
    """Walks at 200 px/s; the detector misses it for 0.6 s after following it for 1 s."""
    boxes = {i: [face(100 + 200 * i / FPS, 300 + 40 * i / FPS)] for i in range(N)}
    seen = {i: b for i, b in boxes.items() if not 25 <= i < 40}
    return boxes, seen


def crossing() -> tuple[Script, Script]:
    """Two faces at 300 px/s towards each other on the same line; they cross at frame 30."""
    boxes = {i: [face(340 + 300 * i / FPS, 300), face(940 - 300 * i / FPS, 300)] for i in range(N)}
    return boxes, boxes


def edges() -> tuple[Script, Script]:
    """One face leaves at the right edge (frames 0-19), another enters at the left (20 on)."""
    boxes = {
        i: [face(W - 140 + 200 * i / FPS, 300)] if i < 20 else [face(-20 + 200 * (i - 20) / FPS, 500)]
        for i in range(N)
    }
    return boxes, boxes


class ScriptDetector:
    def __init__(self, seen: Script) -> None:
        self.seen = seen
        self.input_width = W

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        return [Detection(b, 0.9) for b in self.seen.get(int(frame.pts or 0), [])]

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        raise AssertionError("not used for video")


def blank(i: int) -> av.VideoFrame:
    f = av.VideoFrame.from_ndarray(np.zeros((H * 3 // 2, W), np.uint8), format="yuv420p")
    f.pts = i
    return f


def live(seen: Script) -> list[PendingFrame]:
    eng = Anonymizer(EngineConfig(detect_every=3), detector=ScriptDetector(seen))  # type: ignore[arg-type]
    out: list[PendingFrame] = []
    for i in range(N):
        out += eng.push_pending(blank(i), i / FPS, decoded_at=float(i))
    return out + eng.flush_pending()


def bulk(seen: Script) -> list[PendingFrame]:
    eng = Anonymizer(EngineConfig(), detector=ScriptDetector(seen))  # type: ignore[arg-type]
    out: list[PendingFrame] = []
    for i in range(N):
        out += eng.push_offline_pending(blank(i), i / FPS, decoded_at=float(i))
    return out + eng.flush_offline_pending()


def inside(outer: Box, inner: Box) -> bool:
    return outer.x1 <= inner.x1 and outer.y1 <= inner.y1 and outer.x2 >= inner.x2 and outer.y2 >= inner.y2


@pytest.mark.parametrize("scenario", [fast_face, gap, crossing, edges])
@pytest.mark.parametrize("run", [live, bulk])
def test_masks_cover_the_faces_within_the_bound(
    scenario: Callable[[], tuple[Script, Script]], run: Callable[[Script], list[PendingFrame]]
) -> None:
    boxes, seen = scenario()
    out = run(seen)
    assert [int(p.decoded_at) for p in out] == list(range(N))  # every frame, in order
    for i, p in enumerate(out):
        assert not p.fail_closed
        masks = [m.clipped(W, H) for m in p.masks]
        for b in boxes[i]:
            visible = b.clipped(W, H)
            if visible.area > 0:
                assert any(inside(m, visible) for m in masks), f"frame {i}: face {b} not inside {masks}"
        for m in masks:
            assert m.width <= BOUND * FACE_W and m.height <= BOUND * FACE_H, f"frame {i}: mask {m} too large"


def test_the_old_masks_were_unbounded() -> None:
    """What the bound rules out: a fast face coasting with the old geometry (the union of where it
    was seen and where it is predicted, grown 2 faces per side) -- the assertion above would fail."""
    seen = Box.from_center(100, 300, FACE_W, FACE_H)
    predicted = Box.from_center(100 + 480 * 0.8, 300, FACE_W, FACE_H)  # 0.8 s at 8 faces/s
    old = seen.scaled(1.6).union(predicted.scaled(1.6)).grown(2 * FACE_W, 2 * FACE_H)
    assert old.width > BOUND * FACE_W


def test_widened_frames_are_counted() -> None:
    """A gap forces masks grown past the face for safety: those frames are counted, the others not
    (a slow walker: its speed alone does not widen its mask past WIDE_MARGIN_FACES)."""
    boxes = {i: [face(100 + 40 * i / FPS, 300)] for i in range(N)}
    seen = {i: b for i, b in boxes.items() if not 25 <= i < 40}
    eng = Anonymizer(EngineConfig(detect_every=3), detector=ScriptDetector(seen))  # type: ignore[arg-type]
    out: list[PendingFrame] = []
    for i in range(N):
        out += eng.push_pending(blank(i), i / FPS, decoded_at=float(i))
    out += eng.flush_pending()
    widened = [int(p.decoded_at) for p in out if p.widened]
    assert widened and all(25 <= i < 45 for i in widened), widened  # in or just after the gap only
    assert eng.stats.widened_frames == len(widened)
