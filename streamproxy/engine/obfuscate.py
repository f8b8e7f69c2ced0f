"""Obfuscation of faces and privacy zones, in place on image planes.

Video frames are worked on as yuv420p planes (no BGR round trip: converting back to YUV costs
4-17 ms a frame, copying the planes 1-2 ms). Still images are BGR, split into three channel
planes. Every function takes `Planes` and edits the planes' pixels inside the masks only.

Why the blur is a downscale: a Gaussian with a fixed sigma on a large face keeps enough of the
spectrum to be partly sharpened back, and a Gaussian big enough not to is expensive (10-14 ms
for four faces). Averaging the face down to a handful of samples (INTER_AREA) removes every
frequency above that sampling rate for good; upscaling smoothly and a box filter then hide the
grid. The cost is ~0.1 ms per face, and the strength follows the face size.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import av
import cv2
import numpy as np

from streamproxy.config import MAX_SAMPLES_ACROSS_FACE, ObfuscationConfig, PrivacyZone
from streamproxy.types import Box, Plane, Planes

log = logging.getLogger(__name__)

# yuv420p black (limited range) and BGR black.
Y_BLACK, UV_NEUTRAL, BGR_BLACK = 16, 128, 0
# Blur: samples across a face = BLUR_SAMPLES_K / blur_strength, clamped: blur_strength is the blur
# radius as a fraction of the face, so 0.5 (default) -> 2 samples, 0.25 (the least allowed) -> 4,
# 2.0 -> 2. Measured on the astronaut photo and the demo clip: at 8 samples YuNet still scored blurred
# faces 0.84, at 4 up to 0.53 (a face-shaped blob is still a face to a detector), at 2 nothing above
# 0.2. The most samples of any style (blur samples, pixelate blocks) is the config's
# MAX_SAMPLES_ACROSS_FACE, from a face matcher (bench/reid.py); the config refuses settings over it,
# and the clamps here hold it for configs built in code without validation (model_copy).
BLUR_SAMPLES_K = 1.0
BLUR_MIN_SAMPLES, BLUR_MAX_SAMPLES = 2.0, float(MAX_SAMPLES_ACROSS_FACE)
# Never sample finer than this many frame pixels, so tiny faces are still coarsened.
MIN_CELL_PX = 2.0
# Fail-closed whole-frame pixelation: blocks across the frame width.
WHOLE_FRAME_BLOCKS = 16


# --- building Planes --------------------------------------------------------------------------


def _plane_sizes(w: int, h: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    cw, ch = (w + 1) // 2, (h + 1) // 2
    return (w, h), (cw, ch), (cw, ch)


def _plane_view(plane: Any, pw: int, ph: int) -> np.ndarray:
    """2-D (ph, pw) view of an av plane's buffer, whose rows are line_size apart (padding)."""
    flat = np.frombuffer(memoryview(plane), np.uint8)
    return flat[: ph * plane.line_size].reshape(ph, plane.line_size)[:, :pw]


def _i420_planes(buf: np.ndarray, w: int, h: int) -> Planes:
    flat = buf.reshape(-1)
    out: list[Plane] = []
    off = 0
    for (pw, ph), scale, fill in zip(
        _plane_sizes(w, h), (1.0, 0.5, 0.5), (Y_BLACK, UV_NEUTRAL, UV_NEUTRAL), strict=True
    ):
        out.append(Plane(flat[off : off + pw * ph].reshape(ph, pw), scale, fill))
        off += pw * ph
    return Planes(w, h, tuple(out))


def planes_from_yuv420(frame: av.VideoFrame) -> tuple[Planes, np.ndarray]:
    """Copy a decoded frame into one new contiguous I420 buffer and return planes over it.

    The decoder's frame is never written to: decoders keep it as a reference for later frames.
    The buffer is (h*3/2, w) for even sizes (what `to_ndarray()` gives), flat for odd ones
    (chroma planes are ceil(w/2) x ceil(h/2) then). Other pixel formats are converted first.
    """
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p", threads=1)
    w, h = frame.width, frame.height
    sizes = _plane_sizes(w, h)
    buf: np.ndarray = np.empty(sum(pw * ph for pw, ph in sizes), np.uint8)
    off = 0
    for plane, (pw, ph) in zip(frame.planes, sizes, strict=True):
        buf[off : off + pw * ph].reshape(ph, pw)[:] = _plane_view(plane, pw, ph)
        off += pw * ph
    if w % 2 == 0 and h % 2 == 0:
        buf = buf.reshape(h * 3 // 2, w)
    return _i420_planes(buf, w, h), buf


def frame_from_planes(buf: np.ndarray, frame: av.VideoFrame) -> av.VideoFrame:
    """A new yuv420p frame holding `buf` (from planes_from_yuv420), with `frame`'s timing.

    Written plane by plane rather than with `VideoFrame.from_ndarray`: that refuses odd sizes, and
    the direct copy measured faster here (0.06 vs 0.3 ms at 720p).
    """
    w, h = frame.width, frame.height
    out = av.VideoFrame(w, h, "yuv420p")
    flat = buf.reshape(-1)
    off = 0
    for plane, (pw, ph) in zip(out.planes, _plane_sizes(w, h), strict=True):
        _plane_view(plane, pw, ph)[:] = flat[off : off + pw * ph].reshape(ph, pw)
        off += pw * ph
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    # yuvj420p is full range: keep saying so, or the encoder would squeeze the levels.
    out.color_range = 2 if frame.format.name == "yuvj420p" else frame.color_range
    out.colorspace = frame.colorspace
    return out


def writable_copy(frame: av.VideoFrame) -> tuple[Planes, av.VideoFrame]:
    """A new yuv420p frame with `frame`'s pixels and timing, and planes over ITS buffers: what is
    obfuscated there is what the encoder gets. One copy of the picture instead of the two of
    planes_from_yuv420 + frame_from_planes (for a re-render, which keeps no buffer of its own);
    the same pixels come out."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        src = frame.reformat(format="yuv420p", threads=1)
    else:
        src = frame
    w, h = frame.width, frame.height
    out = av.VideoFrame(w, h, "yuv420p")
    planes: list[Plane] = []
    for p_in, p_out, (pw, ph), scale, fill in zip(
        src.planes, out.planes, _plane_sizes(w, h), (1.0, 0.5, 0.5), (Y_BLACK, UV_NEUTRAL, UV_NEUTRAL),
        strict=True,
    ):  # fmt: skip
        view = _plane_view(p_out, pw, ph)
        view[:] = _plane_view(p_in, pw, ph)
        planes.append(Plane(view, scale, fill))
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    out.color_range = 2 if frame.format.name == "yuvj420p" else frame.color_range
    out.colorspace = frame.colorspace
    return Planes(w, h, tuple(planes)), out


def shrink_yuv420(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """A new, smaller yuv420p frame: each plane averaged down with OpenCV's INTER_AREA.

    For the pictures that only show what already left (the review proxy, the live sub stream).
    Measured on dev_street at 720p -> 640x360 (100 frames, 8 interleaved runs): 0.47 ms of CPU a
    frame, swscale's AREA 0.70 and BILINEAR 0.67 (median); the pictures differ by at most 4 levels,
    0.04 on average. Other pixel formats, or a larger size, go through swscale."""
    if frame.format.name != "yuv420p" or width > frame.width or height > frame.height:
        return frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA", threads=1)
    out = av.VideoFrame(width, height, "yuv420p")
    src_sizes = _plane_sizes(frame.width, frame.height)
    for p_in, p_out, (sw, sh), (dw, dh) in zip(
        frame.planes, out.planes, src_sizes, _plane_sizes(width, height), strict=True
    ):
        cv2.resize(
            _plane_view(p_in, sw, sh), (dw, dh), dst=_plane_view(p_out, dw, dh), interpolation=cv2.INTER_AREA
        )
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    out.color_range = frame.color_range
    out.colorspace = frame.colorspace
    return out


def planes_from_bgr(img: np.ndarray) -> Planes:
    """Planes over a BGR (H, W, 3) or grayscale (H, W) uint8 image: views, so edits land in `img`."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWxC image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if img.ndim == 2:
        return Planes(w, h, (Plane(img, 1.0, BGR_BLACK),))
    return Planes(w, h, tuple(Plane(img[:, :, c], 1.0, BGR_BLACK) for c in range(img.shape[2])))


# --- faces ------------------------------------------------------------------------------------


def _plane_bounds(box: Box, scale: float, pw: int, ph: int) -> tuple[int, int, int, int] | None:
    """Integer bounds of `box` on a plane, rounded outwards and clipped; None when empty."""
    x1, y1, x2, y2 = box.mapped(scale, scale).int_bounds()
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, pw), min(y2, ph)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2


def _ellipse_mask(box: Box, scale: float, x1: int, y1: int, w: int, h: int) -> np.ndarray:
    """Bool mask of the ellipse inscribed in `box` (frame coords), over the ROI at (x1, y1) of size w x h."""
    m = np.zeros((h, w), np.uint8)
    shift = 4  # sub-pixel precision for cv2 drawing
    f = 1 << shift
    # cv2 puts pixel i's centre at coordinate i; in frame coordinates it is at i + 0.5.
    cx = (box.cx * scale - x1 - 0.5) * f
    cy = (box.cy * scale - y1 - 0.5) * f
    # Half a pixel extra so that rounding never shrinks the mask below the inscribed ellipse.
    ax = (box.width * scale / 2 + 0.5) * f
    ay = (box.height * scale / 2 + 0.5) * f
    cv2.ellipse(m, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, 1, -1, cv2.LINE_8, shift)
    return m.view(bool)


def _coarsen(roi: np.ndarray, cell: float, smooth: bool) -> np.ndarray:
    """Average `roi` down to one sample per `cell` px and back up: nothing finer survives."""
    h, w = roi.shape
    nx = max(1, round(w / cell))
    ny = max(1, round(h / cell))
    # Each sample averages a sparse grid of about 16 x 16 pixels of its cell rather than all of
    # them: as unidentifiable, at a fraction of the cost for the big masks of near or coasting faces.
    step = max(1, int(cell) // 16)
    src = np.ascontiguousarray(roi[::step, ::step]) if step > 1 or not roi.flags.c_contiguous else roi
    small = cv2.resize(src, (nx, ny), interpolation=cv2.INTER_AREA)
    if not smooth:
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    # A bilinear surface through so few samples still shows creases (and a detector still sees a
    # face-like blob in them); a box filter as wide as a cell smooths them away. Done at a quarter
    # of the size and enlarged: the result is as smooth, at half the cost (measured).
    sw, sh = max(2, w // 4), max(2, h // 4)
    k = max(3, (int(cell) // 4) | 1)
    soft = cv2.blur(
        cv2.resize(small, (sw, sh), interpolation=cv2.INTER_LINEAR), (k, k), borderType=cv2.BORDER_REPLICATE
    )
    return cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR)


def _cell_px(mask: Box, cfg: ObfuscationConfig) -> float:
    """Sample spacing (frame px) for a mask: a fraction of the face it was grown from."""
    # max(w, h): a mask clipped at the frame edge must not get a finer (weaker) blur.
    face = max(mask.width, mask.height) / cfg.box_factor
    if cfg.style == "pixelate":
        n = float(min(cfg.pixel_blocks, MAX_SAMPLES_ACROSS_FACE))
    else:
        n = min(BLUR_MAX_SAMPLES, max(BLUR_MIN_SAMPLES, BLUR_SAMPLES_K / cfg.blur_strength))
    return max(MIN_CELL_PX, face / n)


def obfuscate(planes: Planes, masks: list[Box], cfg: ObfuscationConfig) -> None:
    """Hide every mask (frame coordinates) in place; pixels outside the masks are not touched.

    An ellipse is inscribed in each mask box, except for masks touching the frame edge: those were
    clipped, and an ellipse inscribed in the clipped box would leave the face's corners at the edge
    uncovered, so they are masked as boxes.
    """
    fw, fh = planes.width, planes.height
    for mask in masks:
        if mask.area <= 0:
            continue
        cell = _cell_px(mask, cfg)
        at_edge = mask.x1 <= 0 or mask.y1 <= 0 or mask.x2 >= fw or mask.y2 >= fh
        ellipse = cfg.shape == "ellipse" and not at_edge
        for p in planes.planes:
            ph, pw = p.data.shape
            b = _plane_bounds(mask, p.scale, pw, ph)
            if b is None:
                continue
            x1, y1, x2, y2 = b
            view = p.data[y1:y2, x1:x2]
            if cfg.style == "solid":
                if ellipse:
                    np.copyto(
                        view, np.uint8(p.fill), where=_ellipse_mask(mask, p.scale, x1, y1, x2 - x1, y2 - y1)
                    )
                else:
                    view[...] = p.fill
                continue
            out = _coarsen(view, max(1.0, cell * p.scale), smooth=cfg.style == "blur")
            if ellipse:
                np.copyto(view, out, where=_ellipse_mask(mask, p.scale, x1, y1, x2 - x1, y2 - y1))
            else:
                view[...] = out


def obfuscate_whole(planes: Planes, cfg: ObfuscationConfig, blocks: int = WHOLE_FRAME_BLOCKS) -> None:
    """Fail closed: make the whole frame unidentifiable (solid, or `blocks` blocks across).

    Cheap on purpose (~0.3 ms at 1080p): it runs when the pipeline is already in trouble. Each
    block is the mean of a sparse grid of its pixels (a plain INTER_AREA of the full plane costs
    ~1.3 ms at 1080p); a block's value is not what hides the face, its size is.
    """
    for p in planes.planes:
        d = p.data
        ph, pw = d.shape
        if cfg.style == "solid":
            d[...] = p.fill
            continue
        nx = max(1, min(blocks, pw))
        ny = max(1, min(ph, round(blocks * ph / pw)))
        sx = max(1, pw // (nx * 8))
        sy = max(1, ph // (ny * 8))
        sparse = np.ascontiguousarray(d[sy // 2 :: sy, sx // 2 :: sx])
        small = cv2.resize(sparse, (nx, ny), interpolation=cv2.INTER_AREA)
        xe = (np.arange(nx + 1) * pw) // nx
        ye = (np.arange(ny + 1) * ph) // ny
        row = np.repeat(small, np.diff(xe), axis=1)
        for i in range(ny):
            d[ye[i] : ye[i + 1]] = row[i]


# --- privacy zones ----------------------------------------------------------------------------

_ZoneKey = tuple[int, int, int, int, float, tuple[tuple[bool, tuple[tuple[float, float], ...]], ...]]
_ZoneMask = tuple[int, int, int, int, np.ndarray] | None
_zone_cache: OrderedDict[_ZoneKey, _ZoneMask] = OrderedDict()
_zone_lock = threading.Lock()
_ZONE_CACHE_MAX = 64


def _rasterize_zones(zones: list[PrivacyZone], fw: int, fh: int, scale: float, pw: int, ph: int) -> _ZoneMask:
    """The zones' union on one plane: bounding rect and a bool mask inside it (None if empty)."""
    shift = 4
    f = 1 << shift
    polys = []
    for z in zones:
        sx, sy = (fw, fh) if z.relative else (1.0, 1.0)
        pts = np.array(
            [[round(x * sx * scale * f), round(y * sy * scale * f)] for x, y in z.points], np.int32
        )
        polys.append(pts)
    m = np.zeros((ph, pw), np.uint8)
    cv2.fillPoly(m, polys, 1, cv2.LINE_8, shift)
    # Outlines too: fillPoly alone may leave out edge pixels of thin or sub-pixel polygons.
    cv2.polylines(m, polys, True, 1, 1, cv2.LINE_8, shift)
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        return None
    y1, y2, x1, x2 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return y1, y2, x1, x2, m[y1:y2, x1:x2].view(bool).copy()


def fill_zones(planes: Planes, zones: list[PrivacyZone]) -> None:
    """Fill static privacy zones solid. Rasterized once per (frame size, zones) and cached."""
    if not zones:
        return
    zkey = tuple((z.relative, tuple((float(x), float(y)) for x, y in z.points)) for z in zones)
    for p in planes.planes:
        ph, pw = p.data.shape
        key: _ZoneKey = (planes.width, planes.height, pw, ph, p.scale, zkey)
        with _zone_lock:
            hit = key in _zone_cache
            zm = _zone_cache.get(key)
            if hit:
                _zone_cache.move_to_end(key)
        if not hit:
            zm = _rasterize_zones(zones, planes.width, planes.height, p.scale, pw, ph)
            with _zone_lock:
                _zone_cache[key] = zm
                while len(_zone_cache) > _ZONE_CACHE_MAX:
                    _zone_cache.popitem(last=False)
        if zm is None:
            continue
        y1, y2, x1, x2, m = zm
        np.copyto(p.data[y1:y2, x1:x2], np.uint8(p.fill), where=m)


def obfuscated_frame(frame: av.VideoFrame, masks: list[Box] | None, cfg: ObfuscationConfig) -> av.VideoFrame:
    """A new frame: `frame` with every mask hidden (clipped to the frame), or the whole frame when
    `masks` is None (fail closed). The decoder's frame is not written to."""
    planes, buf = planes_from_yuv420(frame)
    if masks is None:
        obfuscate_whole(planes, cfg)
    else:
        w, h = frame.width, frame.height
        obfuscate(planes, [m.clipped(w, h) for m in masks], cfg)
    return frame_from_planes(buf, frame)
