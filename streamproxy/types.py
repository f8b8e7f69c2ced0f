"""Values that cross stages. Frozen dataclasses, never positional tuples.

A frame's journey, and which value carries it between stages:

    live/source.py        -> DecodedFrame     (a decoded av.VideoFrame + when it left the decoder)
    engine/detect.py      -> list[Detection]  (face boxes in full-frame pixel coordinates)
    engine/track.py       -> list[Track]      (smoothed, coasting, speed-grown mask boxes)
    engine/anonymizer.py  -> PendingFrame     (masks decided; defined there: its render() is the only
                                               way to the pixels, so it lives with the engine)
    PendingFrame.render   -> AnonymizedFrame  (the frame that may leave, and what happened to it;
                                               engine/obfuscate.py edits its Planes in place: YUV 4:2:0
                                               for video, BGR for still images)
    live/encode.py        -> EncodedPacket    (one H.264 access unit, shared by every viewer)
    hub.py                   fans EncodedPackets out to viewers (RTSP, WebRTC, publish)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import av

# Both face models and the text model downsample by 32: a detector input's sides are multiples of it.
ALIGN = 32


def align32(value: float, rounding: Literal["nearest", "up"] = "nearest") -> int:
    """A detector-input side on the 32-px grid, at least 32: the nearest multiple (a setting, such as
    `input_width`, from the controller or the config) or the next one up (padding a picture so that
    nothing of it is cut off)."""
    steps = math.ceil(value / ALIGN) if rounding == "up" else round(value / ALIGN)
    return max(ALIGN, steps * ALIGN)


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box in pixels, (x1, y1) inclusive top-left, (x2, y2) exclusive bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def cx(self) -> float:
        return (self.x1 + self.x2) / 2

    @property
    def cy(self) -> float:
        return (self.y1 + self.y2) / 2

    @property
    def area(self) -> float:
        return self.width * self.height

    @staticmethod
    def from_center(cx: float, cy: float, w: float, h: float) -> Box:
        return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    def intersection(self, other: Box) -> float:
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        return w * h if w > 0 and h > 0 else 0.0

    def iou(self, other: Box) -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def scaled(self, sx: float, sy: float | None = None) -> Box:
        """Grow or shrink around the centre (sx, sy are factors of width and height)."""
        sy = sx if sy is None else sy
        return Box.from_center(self.cx, self.cy, self.width * sx, self.height * sy)

    def grown(self, dx: float, dy: float | None = None) -> Box:
        """Each side pushed out by `dx` (left, right) and `dy` (top, bottom; default `dx`) pixels."""
        dy = dx if dy is None else dy
        return Box(self.x1 - dx, self.y1 - dy, self.x2 + dx, self.y2 + dy)

    def union(self, other: Box) -> Box:
        """The smallest box holding both."""
        return Box(
            min(self.x1, other.x1), min(self.y1, other.y1), max(self.x2, other.x2), max(self.y2, other.y2)
        )

    def lerp(self, other: Box, f: float) -> Box:
        """The box a fraction `f` of the way from this one to `other` (each corner on its line)."""
        return Box(
            self.x1 + (other.x1 - self.x1) * f,
            self.y1 + (other.y1 - self.y1) * f,
            self.x2 + (other.x2 - self.x2) * f,
            self.y2 + (other.y2 - self.y2) * f,
        )

    def mapped(self, scale_x: float, scale_y: float, dx: float = 0.0, dy: float = 0.0) -> Box:
        """Map into another coordinate system: x' = x * scale_x + dx (detector input -> frame)."""
        return Box(
            self.x1 * scale_x + dx, self.y1 * scale_y + dy, self.x2 * scale_x + dx, self.y2 * scale_y + dy
        )

    def clipped(self, width: int, height: int) -> Box:
        return Box(
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            min(max(self.x2, 0.0), width),
            min(max(self.y2, 0.0), height),
        )

    def int_bounds(self) -> tuple[int, int, int, int]:
        """Pixel bounds that fully contain the box (rounded outwards: a mask never shrinks)."""
        return math.floor(self.x1), math.floor(self.y1), math.ceil(self.x2), math.ceil(self.y2)


@dataclass(frozen=True, slots=True)
class Detection:
    """One face the detector saw in one frame."""

    box: Box
    score: float


@dataclass(frozen=True, slots=True)
class Track:
    """A face followed across frames. An id only: nothing about the face itself is kept."""

    track_id: int
    box: Box  # smoothed face box (what the detector would say now)
    mask: Box  # the area to obfuscate: box * mask_scale, grown while the face is not seen
    vx: float  # px per second, for motion prediction
    vy: float
    hits: int  # frames with a matching detection
    misses: int  # consecutive detector runs without a match
    coasting: bool  # True while masked on prediction alone
    margin: float = 0.0  # face sizes added per side of the mask for what the tracker cannot know


@dataclass(frozen=True, slots=True)
class Plane:
    """One image plane to obfuscate in place.

    `data` is a writable 2-D uint8 view. `scale` maps frame coordinates to this plane
    (1.0 for luma and BGR channels, 0.5 for 4:2:0 chroma). `fill` is the plane's value
    for a solid mask (black: Y=16, U=V=128; BGR 0).
    """

    data: np.ndarray
    scale: float
    fill: int


@dataclass(frozen=True, slots=True)
class Planes:
    """An image as planes: yuv420p video frames (3 planes) or BGR stills (3 channel planes)."""

    width: int
    height: int
    planes: tuple[Plane, ...]


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A frame as it left the camera's decoder."""

    frame: av.VideoFrame
    decoded_at: float  # time.monotonic() when it left the decoder: the start of proxy-added latency
    pts_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class AnonymizedFrame:
    """What the engine let out for one input frame. `frame` is None when the frame was dropped."""

    frame: av.VideoFrame | None
    decoded_at: float
    faces: int  # faces detected in this frame (0 on frames where the detector did not run)
    tracks: int  # masks applied (tracked faces, including coasting ones)
    detector_ran: bool
    detector_ms: float
    fail_closed: bool  # True when the whole frame was obfuscated or dropped because detection failed
    fail_reason: str = ""
    widened: bool = (
        False  # a mask was grown past the face for safety (engine/anonymizer.py: WIDE_MARGIN_FACES)
    )


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One encoded H.264 access unit (Annex B), shared read-only by every viewer of a camera."""

    data: bytes
    pts90k: int  # presentation time on a 90 kHz clock (RTP's clock for video)
    keyframe: bool
    decoded_at: float  # time.monotonic() the source frame left the decoder
    encoded_at: float  # time.monotonic() the packet left the encoder
    next_pts90k: int | None = None  # the next frame's timestamp, announced ahead (see live/encode.py)
