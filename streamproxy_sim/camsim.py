"""Simulated camera: a looping clip with real faces, served by a real RTSP server (gst-rtsp-server).

Two halves, two interpreters:

* this module (the project's venv) builds the clip, knows where the faces are in every frame
  (ground truth for tests), decodes the wall-clock barcode, and starts/stops the server process;
* `gst/gst_camera.py` runs under Debian's `/usr/bin/python3` (the only interpreter that can import
  GStreamer's `gi` bindings here) and serves the clip as H.264/H.265 over RTSP, stamping every frame
  with its wall-clock time just before it enters the encoder.

The clip is raw I420 (no container): the server only has to slice it into frames, and the frame
bytes are patched in place with the barcode.

Two modes (`SimCamera(mode=...)`):

* "live" (default): the server encodes every frame (x264enc/x265enc) after stamping the barcode;
  glass-to-glass measurements need this mode. Its encoder costs this machine real CPU (~14 % of one
  core per 720p25 camera), which a real camera would spend on its own hardware.
* "replay": the clip is encoded once, here, with PyAV's libx264 (`encode_clip`, same settings as the
  live encoder: 2 s GOP, no B-frames, zerolatency, the configured bitrate; cached next to the raw
  clip) and the server only pushes the access units, looping, with live timestamps (~1.5 % of one
  core per 720p25 camera). For throughput benchmarks. H.264 only, and NO wall-clock barcode (the
  frames cannot be stamped without re-encoding): `read_stamp` returns None on replay frames.

`SimCamera(user=..., password=..., auth="basic"|"digest")` protects the stream with RTSP Basic or
Digest authentication (the server then offers only that method).

The faces come from `skimage.data.astronaut()` (a public-domain NASA portrait shipped inside
scikit-image), so detectors see a real face, not a drawing. Each face moves in its own vertical lane
(faces never overlap, so every ground-truth box is fully visible) on a path that is periodic in the
clip length: the loop is seamless.

The barcode ("stamp") sits in the top-left corner: 2 rows of 28 square blocks, black (Y=16) or white
(Y=235) with neutral chroma, encoding 48 bits of `time.time()` in ms and a CRC-8. Faces are kept
below it, and a checkerboard of hard-edged squares does not look like a face to a detector.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import cv2
import numpy as np

from streamproxy.types import Box

log = logging.getLogger(__name__)

SIM_SCRIPT = Path(__file__).with_name("gst") / "gst_camera.py"
SYSTEM_PYTHON = "/usr/bin/python3"

Codec = Literal["h264", "h265"]
AuthMethod = Literal["basic", "digest"]
SimMode = Literal["live", "replay"]

# --- the wall-clock barcode -------------------------------------------------------------------
# Keep in sync with gst/gst_camera.py (tests check both writers give identical bytes).
STAMP_ROWS = 2
STAMP_COLS = 28
STAMP_BITS = STAMP_ROWS * STAMP_COLS  # 48 bits of milliseconds + 8 bits of CRC
STAMP_BLACK = 16
STAMP_WHITE = 235
_STAMP_MS_BITS = 48


def stamp_block(width: int) -> int:
    """Side of one barcode block for a frame this wide: 16 px (one H.264 macroblock) when it fits.

    Block edges on the macroblock grid survive compression best; narrow test frames get smaller,
    even-sized blocks (even, so that the chroma area is whole pixels).
    """
    b = min(16, width // STAMP_COLS)
    b -= b % 2
    if b < 4:
        raise ValueError(f"frame width {width} is too narrow for the stamp (needs >= {4 * STAMP_COLS})")
    return b


def stamp_area(width: int) -> tuple[int, int]:
    """(width, height) in pixels of the barcode in the top-left corner of a frame this wide."""
    b = stamp_block(width)
    return STAMP_COLS * b, STAMP_ROWS * b


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07): rejects random block patterns that happen to be black or white."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def stamp_bits(ms: int) -> list[int]:
    """The 56 bits for a time in ms, most significant first, CRC last."""
    ms &= (1 << _STAMP_MS_BITS) - 1
    payload = ms.to_bytes(6, "big")
    value = (ms << 8) | crc8(payload)
    return [(value >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)]


def write_stamp(y_plane: np.ndarray, ms: int, uv_planes: Sequence[np.ndarray] = ()) -> None:
    """Draw the barcode for `ms` into a luma plane (and set the chroma under it to neutral)."""
    b = stamp_block(y_plane.shape[1])
    bits = stamp_bits(ms)
    for i, bit in enumerate(bits):
        r, c = divmod(i, STAMP_COLS)
        y_plane[r * b : (r + 1) * b, c * b : (c + 1) * b] = STAMP_WHITE if bit else STAMP_BLACK
    for uv in uv_planes:
        uv[: STAMP_ROWS * b // 2, : STAMP_COLS * b // 2] = 128


def read_stamp(y_plane: np.ndarray) -> int | None:
    """The wall-clock time (ms since the epoch) stamped into a frame's luma plane, or None.

    Each block is judged on its inner half (its edges ring after compression) against mid-grey.
    A block too close to mid-grey, or a CRC mismatch, means "no stamp" (an unstamped frame, a
    masked or blurred corner): better no measurement than a wrong one.
    """
    if y_plane.ndim != 2:
        return None
    try:
        b = stamp_block(y_plane.shape[1])
    except ValueError:
        return None
    if y_plane.shape[0] < STAMP_ROWS * b:
        return None
    q = b // 4
    area = y_plane[: STAMP_ROWS * b, : STAMP_COLS * b].astype(np.float32)
    blocks = area.reshape(STAMP_ROWS, b, STAMP_COLS, b)[:, q : b - q, :, q : b - q].mean(axis=(1, 3))
    mid = (STAMP_BLACK + STAMP_WHITE) / 2
    if float(np.min(np.abs(blocks - mid))) < 0.25 * (STAMP_WHITE - STAMP_BLACK) / 2:
        return None
    value = 0
    for bit in (blocks.reshape(-1) > mid).tolist():
        value = (value << 1) | int(bit)
    ms, crc = value >> 8, value & 0xFF
    if ms == 0 or crc8(ms.to_bytes(6, "big")) != crc:
        # All-black blocks (a dark picture such as the proxy's slate) pass the CRC as 0: not a stamp.
        return None
    return ms


# --- the clip ---------------------------------------------------------------------------------
# Head crop of the 512x512 astronaut photo (x1, y1, x2, y2), and the face box inside the photo as
# YuNet sees it (x 178..268, y 63..176): the ground truth is that face box carried through the
# crop, scale and placement.
_HEAD_CROP = (143, 20, 303, 200)
_FACE_IN_PHOTO = (178.0, 63.0, 268.0, 176.0)
# Head heights as fractions of the frame height, largest first: near, middle, far.
_HEAD_SIZES = (0.40, 0.24, 0.13)
_SIZE_WOBBLE = 0.06  # heads grow and shrink a little (a person walking towards the camera)


@dataclass(frozen=True, slots=True)
class _Placement:
    x: int  # top-left of the pasted head crop
    y: int
    w: int
    h: int


@functools.cache
def _head_crop_bgr() -> np.ndarray:
    from skimage import data  # imported here: only clip building needs scikit-image

    x1, y1, x2, y2 = _HEAD_CROP
    return np.ascontiguousarray(data.astronaut()[y1:y2, x1:x2, ::-1])


def _placements(
    index: int, width: int, height: int, fps: float, seconds: float, faces: int
) -> list[_Placement]:
    if not 1 <= faces <= len(_HEAD_SIZES):
        raise ValueError(f"faces must be 1..{len(_HEAD_SIZES)}, got {faces}")
    n_frames = max(1, round(fps * seconds))
    phase = 2 * math.pi * (index % n_frames) / n_frames
    crop_w, crop_h = _HEAD_CROP[2] - _HEAD_CROP[0], _HEAD_CROP[3] - _HEAD_CROP[1]
    top = stamp_area(width)[1] + 16  # faces stay clear of the barcode
    lane_w = width / faces
    out = []
    for k in range(faces):
        scale = 1 + _SIZE_WOBBLE * math.sin(phase * (k + 1) + k)
        h = max(16, round(_HEAD_SIZES[k] * height * scale))
        w = max(14, round(h * crop_w / crop_h))
        max_h = _HEAD_SIZES[k] * height * (1 + _SIZE_WOBBLE)
        max_w = max_h * crop_w / crop_h
        # Centre ranges that keep the largest head inside its lane and below the barcode.
        x_lo, x_hi = k * lane_w + max_w / 2, (k + 1) * lane_w - max_w / 2
        y_lo, y_hi = top + max_h / 2, height - max_h / 2
        if x_lo > x_hi or y_lo > y_hi:
            raise ValueError(f"{width}x{height} is too small for {faces} faces")
        # Integer frequencies: the path closes at the end of the clip (seamless loop).
        # Amplitudes capped so that faces move at walking pace (~1 % of the frame per frame at 4 s).
        ax = min(0.95 * (x_hi - x_lo) / 2, 0.2 * width)
        ay = min(0.95 * (y_hi - y_lo) / 2, 0.15 * height)
        cx = (x_lo + x_hi) / 2 + ax * math.sin(phase + 1.3 * k)
        cy = (y_lo + y_hi) / 2 + ay * math.sin(phase * (1 + k % 2) + 0.7 + k)
        out.append(_Placement(round(cx - w / 2), round(cy - h / 2), w, h))
    return out


def face_boxes(
    index: int, width: int = 1280, height: int = 720, fps: float = 25, seconds: float = 4, faces: int = 2
) -> list[Box]:
    """Ground truth: the face boxes (detector-style, forehead to chin) in frame `index` of the clip.

    The clip loops, so any index works (index modulo the clip length).
    """
    crop_w, crop_h = _HEAD_CROP[2] - _HEAD_CROP[0], _HEAD_CROP[3] - _HEAD_CROP[1]
    fx1, fy1, fx2, fy2 = _FACE_IN_PHOTO
    ox, oy = _HEAD_CROP[0], _HEAD_CROP[1]
    boxes = []
    for p in _placements(index, width, height, fps, seconds, faces):
        sx, sy = p.w / crop_w, p.h / crop_h
        boxes.append(
            Box(p.x + (fx1 - ox) * sx, p.y + (fy1 - oy) * sy, p.x + (fx2 - ox) * sx, p.y + (fy2 - oy) * sy)
        )
    return boxes


def _background(width: int, height: int) -> np.ndarray:
    """A static scene: colour gradients, soft blobs and fine noise (so the encoder has texture)."""
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx / width, yy / height
    bgr = np.empty((height, width, 3), np.float32)
    bgr[..., 0] = 90 + 70 * u
    bgr[..., 1] = 110 + 50 * v
    bgr[..., 2] = 150 - 60 * u * v
    low = cv2.resize(
        rng.normal(0, 1, (9, 16, 3)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
    )
    bgr += 12 * low
    bgr += rng.normal(0, 4, (height, width, 3)).astype(np.float32)
    # A "floor" and a "door": straight edges, as in a real scene.
    bgr[int(height * 0.82) :, :, :] *= 0.7
    x0, x1 = int(width * 0.08), int(width * 0.16)
    bgr[int(height * 0.3) : int(height * 0.82), x0:x1, :] *= 0.8
    return np.clip(bgr, 0, 255).astype(np.uint8)


def _soft_ellipse(w: int, h: int) -> np.ndarray:
    """Alpha for a pasted head: an ellipse with a feathered edge (no hard rectangle around faces)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2)
    return np.clip((1.0 - r) / 0.12, 0.0, 1.0)[..., None]


def render_frame(
    index: int,
    width: int = 1280,
    height: int = 720,
    fps: float = 25,
    seconds: float = 4,
    faces: int = 2,
    *,
    _cache: dict[tuple[int, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Frame `index` of the synthetic clip as a BGR image (H, W, 3)."""
    cache = _cache if _cache is not None else {}
    bg = cache.get((width, height))
    if bg is None:
        bg = cache[(width, height)] = _background(width, height)
    head = _head_crop_bgr()
    frame = bg.copy()
    for p in _placements(index, width, height, fps, seconds, faces):
        scaled = cv2.resize(head, (p.w, p.h), interpolation=cv2.INTER_AREA).astype(np.float32)
        alpha = _soft_ellipse(p.w, p.h)
        # Clip to the frame (placements stay inside, but be safe about rounding).
        x1, y1 = max(p.x, 0), max(p.y, 0)
        x2, y2 = min(p.x + p.w, width), min(p.y + p.h, height)
        sx, sy = x1 - p.x, y1 - p.y
        region = frame[y1:y2, x1:x2].astype(np.float32)
        a = alpha[sy : sy + y2 - y1, sx : sx + x2 - x1]
        src = scaled[sy : sy + y2 - y1, sx : sx + x2 - x1]
        frame[y1:y2, x1:x2] = (a * src + (1 - a) * region).astype(np.uint8)
    bw, bh = stamp_area(width)
    frame[:bh, :bw] = 128  # where the server draws the barcode
    return frame


def frame_bytes(width: int, height: int) -> int:
    """Size of one raw I420 frame."""
    return width * height * 3 // 2


def bgr_to_i420(bgr: np.ndarray) -> np.ndarray:
    """(H*3/2, W) uint8: Y plane, then U, then V (each chroma plane (H/2, W/2) laid out row by row)."""
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420))


def build_clip(
    path: str | os.PathLike[str],
    width: int = 1280,
    height: int = 720,
    fps: float = 25,
    seconds: float = 4,
    faces: int = 2,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the looping clip as raw I420 frames to `path` (atomically) and return the path.

    With `source`, frames are decoded from that video file instead (scaled to width x height,
    at most fps*seconds of them); `face_boxes` then knows nothing about them.
    """
    if width % 2 or height % 2:
        raise ValueError("width and height must be even (I420)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Process and thread in the name: two cameras of one process may build the same clip at once.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    n_frames = max(1, round(fps * seconds))
    written = 0
    try:
        with open(tmp, "wb") as f:
            if source is None:
                cache: dict[tuple[int, int], np.ndarray] = {}
                for i in range(n_frames):
                    bgr_to_i420(render_frame(i, width, height, fps, seconds, faces, _cache=cache)).tofile(f)
                    written += 1
            else:
                written = _decode_source(Path(source), f, width, height, n_frames)
        if written == 0:
            raise ValueError(f"{source}: no video frames decoded")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("clip %s: %d frames %dx%d", out, written, width, height)
    return out


def _decode_source(source: Path, f: object, width: int, height: int, n_frames: int) -> int:
    import av

    written = 0
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            bgr: np.ndarray = frame.to_ndarray(format="bgr24", threads=1)
            if bgr.shape[1] != width or bgr.shape[0] != height:
                bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
            bw, bh = stamp_area(width)
            bgr[:bh, :bw] = 128
            bgr_to_i420(bgr).tofile(f)  # type: ignore[arg-type]
            written += 1
            if written >= n_frames:
                break
    return written


def clip_cache_dir() -> Path:
    """Where built clips are cached (per user, in the temporary directory: they are rebuilt in seconds)."""
    return Path(tempfile.gettempdir()) / f"streamproxy-camsim-{os.getuid()}"


def clip_cache_path(
    width: int,
    height: int,
    fps: float,
    seconds: float,
    faces: int,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    base = Path(cache_dir) if cache_dir else clip_cache_dir()
    return base / f"clip-v2-{width}x{height}-{fps:g}fps-{seconds:g}s-{faces}f.i420"


def cached_clip(width: int, height: int, fps: float, seconds: float, faces: int) -> Path:
    """The synthetic clip for these parameters, built once and reused (building takes seconds)."""
    path = clip_cache_path(width, height, fps, seconds, faces)
    expected = frame_bytes(width, height) * max(1, round(fps * seconds))
    if not path.exists() or path.stat().st_size != expected:
        build_clip(path, width, height, fps, seconds, faces)
    return path


# --- replay: the clip encoded once ---------------------------------------------------------------
# Keep in sync with gst/gst_camera.py (read_access_units): MAGIC, then per access unit a 4-byte
# big-endian length, a flags byte (1 = keyframe) and the Annex-B bytes (SPS/PPS before each IDR).
REPLAY_MAGIC = b"STREAMPROXY-AU1\n"


def replay_cache_path(raw_clip: str | os.PathLike[str], fps: int, bitrate_kbps: int) -> Path:
    """Where the encoded form of a raw clip is cached: next to it, named by the encoder settings."""
    raw = Path(raw_clip)
    return raw.with_name(f"{raw.name}.x264-{fps}fps-{bitrate_kbps}k-g{2 * fps}.au")


def encode_clip(
    raw_clip: str | os.PathLike[str],
    out: str | os.PathLike[str],
    width: int,
    height: int,
    fps: int,
    bitrate_kbps: int = 3000,
) -> Path:
    """Encode a raw I420 clip once with libx264 into a replay file (atomically); return its path."""
    raw = Path(raw_clip)
    size = frame_bytes(width, height)
    n_frames = raw.stat().st_size // size
    if n_frames == 0 or raw.stat().st_size % size:
        raise ValueError(f"{raw}: not a whole number of {width}x{height} I420 frames")

    def frames() -> Iterator[np.ndarray]:
        with open(raw, "rb") as src:
            for _ in range(n_frames):
                yield np.frombuffer(src.read(size), np.uint8).reshape(height * 3 // 2, width)

    return encode_frames(frames(), out, width, height, fps, bitrate_kbps)


def encode_frames(
    frames: Iterable[np.ndarray],
    out: str | os.PathLike[str],
    width: int,
    height: int,
    fps: int,
    bitrate_kbps: int = 3000,
) -> Path:
    """Encode I420 frames ((H*3/2, W) uint8 each, `bgr_to_i420`'s layout) with libx264 into a replay
    file (atomically); return its path. Frames come one at a time: a clip never has to sit in memory.

    The settings mirror the live simulator's x264enc (tune zerolatency, preset ultrafast, 2 sliced
    threads, CBR-like rate with a 600 ms VBV, a keyframe every 2 s, no B-frames), so the proxy decodes
    the same kind of stream from a replay camera as from a live one. The first frame is an IDR and no
    frame references across the loop point, so the clip loops seamlessly whatever its length; the
    GOP is fixed (no scene-cut keyframes).
    """
    import av

    gop = 2 * fps
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = Fraction(fps, 1)
    ctx.bit_rate = bitrate_kbps * 1000
    ctx.gop_size = gop
    ctx.max_b_frames = 0
    ctx.thread_count = 2  # x264 sliced threads: 2 slices per frame, as x264enc threads=2
    vbv = max(1, bitrate_kbps * 6 // 10)
    ctx.options = {
        "preset": "ultrafast",
        "tune": "zerolatency",
        "forced-idr": "1",
        "x264-params": (
            f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:"
            f"vbv-maxrate={bitrate_kbps}:vbv-bufsize={vbv}:nal-hrd=none"
        ),
    }
    dest = Path(out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # see build_clip
    written = 0
    keyframes = 0

    def put(f: Any, packets: list[Any]) -> None:
        nonlocal written, keyframes
        for pkt in packets:
            data = bytes(pkt)
            key = bool(pkt.is_keyframe)
            f.write(len(data).to_bytes(4, "big") + bytes([1 if key else 0]) + data)
            written += 1
            keyframes += key

    n_frames = 0
    try:
        with open(tmp, "wb") as f:
            f.write(REPLAY_MAGIC)
            for buf in frames:
                if buf.shape != (height * 3 // 2, width):
                    raise ValueError(f"frame {n_frames}: shape {buf.shape}, expected I420 {width}x{height}")
                frame = av.VideoFrame.from_ndarray(buf, format="yuv420p")
                frame.pts = n_frames
                put(f, ctx.encode(frame))
                n_frames += 1
            put(f, ctx.encode(None))
        if n_frames == 0 or written != n_frames:
            raise RuntimeError(f"{dest}: encoder gave {written} access units for {n_frames} frames")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log.debug("replay clip %s: %d access units, %d keyframes", dest, written, keyframes)
    return dest


def read_access_units(path: str | os.PathLike[str]) -> list[tuple[bytes, bool]]:
    """[(Annex-B access unit, is_keyframe)] of a replay file (tests and tools; the server has its own)."""
    data = Path(path).read_bytes()
    if not data.startswith(REPLAY_MAGIC):
        raise ValueError(f"{path}: not a replay file")
    out = []
    off = len(REPLAY_MAGIC)
    while off + 5 <= len(data):
        n = int.from_bytes(data[off : off + 4], "big")
        out.append((data[off + 5 : off + 5 + n], data[off + 4] & 1 == 1))
        off += 5 + n
    if off != len(data):
        raise ValueError(f"{path}: truncated")
    return out


def cached_replay(raw_clip: Path, width: int, height: int, fps: int, bitrate_kbps: int) -> Path:
    """The replay file for a raw clip, encoded now unless a cached one is newer than the clip."""
    path = replay_cache_path(raw_clip, fps, bitrate_kbps)
    try:
        if path.stat().st_mtime_ns >= raw_clip.stat().st_mtime_ns and path.stat().st_size > len(REPLAY_MAGIC):
            return path
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    encode_clip(raw_clip, path, width, height, fps, bitrate_kbps)
    log.info("replay clip %s encoded in %.1f s", path.name, time.monotonic() - t0)
    return path


# --- the server process -----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def system_gst_available() -> str | None:
    """None when the simulator can run here, else why not (tests skip with this reason)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "import sys; sys.exit(0 if Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('appsrc') else 3)"
    )
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"GStreamer probe failed: {err}"
    if r.returncode != 0:
        return "GStreamer RTSP server not installed (run scripts/install-system-deps.sh)"
    return None


def read_ready(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bool, bytes]:
    """Read a server child's stdout until it prints a whole "READY <url>" line (True), exits or
    times out (False). Returns what was read, which may go on past that line."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if b"READY " in buf and b"\n" in buf[buf.index(b"READY ") :]:
                return True, buf
        elif proc.poll() is not None:
            break
    return False, buf


class SimCameraError(RuntimeError):
    pass


class SimCamera:
    """A real RTSP camera on loopback: gst-rtsp-server in a child process, serving the clip.

    `start()` returns once the server listens. `kill()` is a crash (SIGKILL, no TEARDOWN);
    `start()` again brings the same camera back on the same port.
    """

    def __init__(
        self,
        port: int | None = None,
        path: str = "cam",
        width: int = 1280,
        height: int = 720,
        fps: int = 25,
        codec: Codec = "h264",
        user: str | None = None,
        password: str | None = None,
        clip: str | os.PathLike[str] | None = None,
        *,
        faces: int = 2,
        seconds: float = 4,
        bitrate_kbps: int = 3000,
        start_timeout_s: float = 20.0,
        switch_to: tuple[int, int, float] | None = None,
        auth: AuthMethod = "basic",
        mode: SimMode = "live",
        replay_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.path = path.strip("/")
        self.width, self.height, self.fps = width, height, fps
        self.codec: Codec = codec
        self.user, self.password = user, password
        if auth not in ("basic", "digest"):
            raise ValueError(f"auth must be 'basic' or 'digest', got {auth!r}")
        self.auth: AuthMethod = auth  # how the server challenges clients (only with a user)
        if mode not in ("live", "replay"):
            raise ValueError(f"mode must be 'live' or 'replay', got {mode!r}")
        if mode == "replay" and codec != "h264":
            raise ValueError(
                "replay mode serves H.264 only (the clip is pre-encoded with libx264); use mode='live'"
            )
        if mode == "replay" and switch_to is not None:
            raise ValueError("replay mode cannot switch resolution mid-stream; use mode='live'")
        if replay_file is not None and mode != "replay":
            raise ValueError("replay_file is a pre-encoded clip: it needs mode='replay'")
        # live: the server encodes every frame (x264enc) and stamps the wall-clock barcode;
        # replay: the clip is encoded once here and the server only packetizes it (no barcode).
        self.mode: SimMode = mode
        self.clip = Path(clip) if clip is not None else None
        # An already encoded replay file (encode_frames' output, e.g. the demo's plaza): served as is.
        self.replay_file = Path(replay_file) if replay_file is not None else None
        self.faces, self.seconds = faces, seconds
        self.bitrate_kbps = bitrate_kbps
        self.start_timeout_s = start_timeout_s
        # (width, height, after_s): the stream changes resolution mid-session after_s seconds after
        # its first client started it (the synthetic clip at the new size).
        self.switch_to = switch_to
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_tail: deque[str] = deque(maxlen=40)
        self._readers: list[threading.Thread] = []
        self.returncode: int | None = None  # exit status of the last server process (0 = clean)

    @property
    def url(self) -> str:
        """The camera's URL, with the credentials when it has some."""
        auth = ""
        if self.user is not None:
            auth = f"{quote(self.user, safe='')}:{quote(self.password or '', safe='')}@"
        return f"rtsp://{auth}127.0.0.1:{self.port}/{self.path}"

    @property
    def url_without_auth(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{self.path}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def face_boxes(self, index: int) -> list[Box]:
        """Ground truth of the synthetic clip (meaningless for a clip built from a user's file)."""
        return face_boxes(index, self.width, self.height, self.fps, self.seconds, self.faces)

    def _clip_path(self) -> Path:
        if self.clip is None:
            self.clip = cached_clip(self.width, self.height, self.fps, self.seconds, self.faces)
        return self.clip

    def command(self) -> list[str]:
        if self.replay_file is not None:
            source = ["--replay", str(self.replay_file)]
        elif self.mode == "replay":
            replay = cached_replay(self._clip_path(), self.width, self.height, self.fps, self.bitrate_kbps)
            source = ["--replay", str(replay)]
        else:
            source = ["--clip", str(self._clip_path())]
        cmd = [
            SYSTEM_PYTHON,
            str(SIM_SCRIPT),
            *source,
            "--width", str(self.width),
            "--height", str(self.height),
            "--fps", str(self.fps),
            "--port", str(self.port),
            "--path", self.path,
            "--codec", self.codec,
            "--bitrate", str(self.bitrate_kbps),
            "--bind", "127.0.0.1",
            "--exit-on-stdin-eof",
        ]  # fmt: skip
        if self.user is not None:
            cmd += ["--user", self.user, "--password", self.password or "", "--auth", self.auth]
        if self.switch_to is not None:
            w2, h2, after = self.switch_to
            clip2 = cached_clip(w2, h2, self.fps, self.seconds, self.faces)
            cmd += ["--switch-clip", str(clip2), "--switch-size", f"{w2}x{h2}", "--switch-after", str(after)]
        return cmd

    def start(self) -> SimCamera:
        if self.running:
            return self
        self._log_tail.clear()
        # stdin is a pipe we never write: if this process dies, the server sees EOF and exits.
        proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "GST_DEBUG": os.environ.get("GST_DEBUG", "1")},
        )
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        err_reader = threading.Thread(target=self._drain, args=(proc.stderr, "stderr"), daemon=True)
        err_reader.start()
        ready, buf = read_ready(proc, self.start_timeout_s)
        if not ready:
            self.kill()
            tail = self.log_tail() or buf.decode(errors="replace")
            raise SimCameraError(f"simulated camera on port {self.port} did not start:\n{tail}")
        out_reader = threading.Thread(target=self._drain, args=(proc.stdout, "stdout"), daemon=True)
        out_reader.start()
        self._readers = [err_reader, out_reader]
        log.info(
            "sim camera %s: serving %s (%s, %s)", self.path, self.url_without_auth, self.codec, self.mode
        )
        return self

    def log_tail(self) -> str:
        """The server's last log lines (for a test's failure message)."""
        return "\n".join(self._log_tail)

    def _drain(self, stream: object, what: str) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").rstrip()
            self._log_tail.append(line)
            log.debug("sim camera %s %s: %s", self.path, what, line)

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: SIGTERM, then SIGKILL after `timeout`."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a paused camera could not act on SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("sim camera %s: no exit after SIGTERM, killing", self.path)
                proc.kill()
                proc.wait(5)
        self._reap()

    def kill(self) -> None:
        """Crash the camera (SIGKILL): no TEARDOWN, connections reset."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self._reap()

    def pause(self) -> None:
        """Freeze the camera (SIGSTOP): connections stay open but nothing is sent, a real stall."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        for t in self._readers:
            t.join(1.0)
        self._readers = []
        self.returncode = proc.returncode
        self._proc = None

    def __enter__(self) -> SimCamera:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m streamproxy_sim.camsim`: run a simulated camera until Ctrl+C."""
    p = argparse.ArgumentParser(description="Serve a simulated RTSP camera (faces + wall-clock barcode).")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--path", default="cam")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--faces", type=int, default=2)
    p.add_argument("--codec", choices=["h264", "h265"], default="h264")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--auth", choices=["basic", "digest"], default="basic", help="with --user")
    p.add_argument(
        "--mode", choices=["live", "replay"], default="live", help="replay: pre-encoded, cheap, no barcode"
    )
    p.add_argument("--source", help="use frames from this video file instead of the synthetic clip")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clip = None
    tmpdir = None
    if args.source:
        tmpdir = tempfile.mkdtemp(prefix="camsim-")
        clip = build_clip(
            Path(tmpdir) / "source.i420", args.width, args.height, args.fps, 10, source=args.source
        )
    cam = SimCamera(
        args.port, args.path, args.width, args.height, args.fps, args.codec, args.user, args.password, clip,
        faces=args.faces, auth=args.auth, mode=args.mode,
    )  # fmt: skip
    try:
        with cam:
            print(f"serving {cam.url_without_auth} (Ctrl+C to stop)", flush=True)
            while cam.running:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
