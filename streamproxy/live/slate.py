"""The 'camera offline' picture a camera's streams show while the camera sends nothing.

Our own pixels, never the camera's: it needs no anonymization, and the pipeline sends it through
the same encoder and hub as the camera's frames, so viewers stay connected through an outage.
"""

from __future__ import annotations

import functools

import av
import cv2
import numpy as np


@functools.lru_cache(maxsize=8)
def make_slate(width: int, height: int, name: str) -> av.VideoFrame:
    """A still 'camera offline' picture of width x height naming the camera, in yuv420p.

    Drawn once per size and reused (the encoder leaves the caller's frame as it came)."""
    img = np.full((height, width, 3), 40, np.uint8)
    scale = max(0.5, width / 1280)
    for i, (text, s) in enumerate(((name, 1.6), ("camera offline - reconnecting", 1.0))):
        size, _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, s * scale, 2)
        org = ((width - size[0]) // 2, height // 2 + int((i * 60 - 10) * scale))
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, s * scale, (230, 230, 230), 2, cv2.LINE_AA)
    return av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)
