"""Real faces for tests, from a photo a package ships (scikit-image's astronaut), and judging helpers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamproxy.types import Box

# The astronaut's face in skimage.data.astronaut() (512x512), generous around the face.
ASTRONAUT_FACE = (160, 30, 290, 200)  # x1, y1, x2, y2
# The face itself inside that crop (what both detectors report on the photo, rounded): the ground truth.
FACE_IN_CROP = (18, 33, 108, 146)


@lru_cache(maxsize=1)
def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def face_crop() -> np.ndarray:
    x1, y1, x2, y2 = ASTRONAUT_FACE
    return astronaut_bgr()[y1:y2, x1:x2].copy()


def background(width: int, height: int, seed: int = 1) -> np.ndarray:
    """A textured background that is not a face (smooth gradient + mild noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), np.full_like(xx, 120)], axis=2
    )
    noise = rng.integers(-12, 12, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def paste_face(img: np.ndarray, x: int, y: int, face_width: int) -> Box:
    """Paste the astronaut's head with its left-top at (x, y), scaled to face_width.

    Returns the ground-truth face box (the face inside the pasted crop), clipped to the image.
    """
    import cv2

    crop = face_crop()
    h = round(crop.shape[0] * face_width / crop.shape[1])
    face = cv2.resize(crop, (face_width, h), interpolation=cv2.INTER_AREA)
    H, W = img.shape[:2]
    x2, y2 = min(W, x + face_width), min(H, y + h)
    img[y:y2, x:x2] = face[: y2 - y, : x2 - x]
    k = face_width / crop.shape[1]
    fx1, fy1, fx2, fy2 = FACE_IN_CROP
    return Box(x + fx1 * k, y + fy1 * k, min(W, x + fx2 * k), min(H, y + fy2 * k))


def changed_fraction(before: np.ndarray, after: np.ndarray, box: Box, tol: int = 2) -> float:
    """Fraction of the box's pixels that the anonymizer changed."""
    x1, y1, x2, y2 = (int(v) for v in (box.x1, box.y1, box.x2, box.y2))
    a = before[y1:y2, x1:x2].astype(np.int16)
    b = after[y1:y2, x1:x2].astype(np.int16)
    diff = np.abs(a - b)
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    return float((diff > tol).mean()) if diff.size else 0.0


def make_video(
    path: Path, frames: int = 30, fps: int = 25, audio: bool = True, size: tuple[int, int] = (640, 360)
) -> list:
    """A short video of the real face moving over a background, with a tone if `audio`."""
    boxes = []
    w, h = size
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = c.add_stream("aac", rate=48000) if audio else None
        for i in range(frames):
            img = background(w, h)
            boxes.append(paste_face(img, 40 + i * 6, 60, 130))
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        if aus is not None:
            samples = int(48000 * frames / fps)
            t = np.arange(samples) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            for start in range(0, samples, 1024):
                af = av.AudioFrame.from_ndarray(tone[:, start : start + 1024], format="fltp", layout="mono")
                af.sample_rate = 48000
                af.pts = start
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode(None):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    return boxes


# A face's inner part (eyes, nose, mouth) has edges; a blurred mask averaged down to 2 samples has
# none. Measured on 320x180 grid tiles of the sim camera: the astronaut's face 32-50 (mean |Laplacian|
# of the central 60 % of YuNet's box), masked blobs YuNet still scores 0.5-0.74 (a skin-coloured
# oval under a strip of hair) 2.0-2.5.
FACE_DETAIL_MIN = 10.0


def face_detail(bgr: np.ndarray, box: Box) -> float:
    """Mean |Laplacian| (grey levels) of the central 60 % of `box` in `bgr`: the face's own detail."""
    import cv2

    cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
    hw, hh = 0.3 * (box.x2 - box.x1), 0.3 * (box.y2 - box.y1)
    h, w = bgr.shape[:2]
    x1, y1 = max(0, int(cx - hw)), max(0, int(cy - hh))
    x2, y2 = min(w, int(cx + hw) + 1), min(h, int(cy + hh) + 1)
    if x2 - x1 < 3 or y2 - y1 < 3:
        return 0.0
    grey = cv2.cvtColor(bgr[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(grey, cv2.CV_32F)).mean())


def visible_faces(judge: Any, bgr: np.ndarray, min_score: float) -> list[tuple[float, float]]:
    """(score, detail) of each face the judge finds at `min_score` or more that still shows the
    face's detail: what a viewer could recognise. A detector also scores a masked face's smooth
    blob (its outline is a head's), up to ~0.75 on a small picture: found but not seen."""
    found = [(d.score, face_detail(bgr, d.box)) for d in judge.detect_bgr(bgr) if d.score >= min_score]
    return [(round(s, 2), round(v, 1)) for s, v in found if v >= FACE_DETAIL_MIN]
