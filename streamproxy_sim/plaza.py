"""The demo's camera scene: a real plaza seen from a wall camera, with real faces on three walkers.

The scene is OpenCV's sample video `vtest.avi` (768x576 at 10 fps, people crossing a campus lawn
and road, seen from above by a fixed camera; Debian ships it in opencv-doc, under OpenCV's
Apache-2.0/BSD-3-Clause). Its own people are too far away for a face detector to be sure of them
(their heads are ~15 px; the detector finds some, and the proxy masks those too), so the clip pastes a
real face photo a package ships (scikit-image's astronaut, a public-domain NASA portrait) on the
heads of three of them, following them as they walk: a couple crossing the lawn towards the road
and a man waiting on the road. The faces are drawn about 1.5x a real head's size so that they stay
above the proxy's privacy floor (18 px faces at 1280x720); the proxy's masks then hide them.

The clip: 10 s of the video (source frames 505..604), the lower 768x432 of the picture (16:9: the
lawn and the crossing, people whole; the building's windows above are left out) scaled to 1280x720,
the standard 720p of the rest of the project, at 25 fps (each source frame shown 2 or 3 times, as a
10 fps camera streamed at 25 fps: the people move in 10 fps steps and their faces with them). It
loops seamlessly: its last second dissolves into the second before its first frame, and every face
is pasted whole (never half-faded) on the timeline that dominates the dissolve.

Built once (~3 s on 2 cores: decode, paste, encode with libx264) and cached as a replay file (camsim's
"replay" mode: pre-encoded, the simulated camera only pushes the access units, looping). Where the
video is missing (opencv-doc not installed and scripts/fetch-plaza-video.sh not run) the demo falls
back to camsim's synthetic clip and says so.

The walkers' head positions (`_TRACKS`) were measured once on this exact file (template tracking of
each head from a hand-placed start, checked frame by frame, smoothed over 5 frames); `VIDEO_SHA256`
guards against another file under the same name.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamproxy.types import Box
from streamproxy_sim.camsim import (
    _FACE_IN_PHOTO,
    _HEAD_CROP,
    REPLAY_MAGIC,
    _head_crop_bgr,
    bgr_to_i420,
    clip_cache_dir,
    encode_frames,
)

log = logging.getLogger(__name__)

DEBIAN_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
VIDEO_SHA256 = "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"
FETCH_COMMAND = "scripts/fetch-plaza-video.sh"

WIDTH, HEIGHT, FPS = 1280, 720, 25
SOURCE_FPS = 10
_SOURCE_SIZE = (768, 576)
_CROP_Y = 144  # source rows 144..575: 768x432, 16:9
_SCALE = WIDTH / _SOURCE_SIZE[0]  # 5/3
_START = 505  # first source frame of the loop
_SOURCE_FRAMES = 100  # 10 s
N_FRAMES = _SOURCE_FRAMES * FPS // SOURCE_FPS  # 250
_FADE = 25  # output frames of the dissolve at the loop point (1 s)
_FIRST_SOURCE = _START + (-_FADE * SOURCE_FPS) // FPS  # 495: the dissolve shows the second before _START
_LAST_SOURCE = _START + _SOURCE_FRAMES - 1  # 604
# Face size: the astronaut's face box (YuNet's, 90 px wide in the photo) drawn this wide, in output
# pixels: 12 % of the walker's height (a real face is ~8 %), at least 26 px (the privacy floor masks
# faces from 18 px at 1280 wide; a margin so that every pasted face is masked).
_FACE_PER_BODY = 0.12
_MIN_FACE_PX = 26.0
_VERSION = 1  # bump when the picture changes: names the cached file

# Head centres (source pixels) of the three walkers, one per source frame from the first frame given.
# (name, first source frame, mirrored, positions)
_TRACKS: tuple[tuple[str, int, bool, tuple[tuple[int, int], ...]], ...] = (
    (
        "woman, lawn",
        505,
        False,
        (
            (724, 445), (717, 445), (708, 445), (693, 443), (680, 442), (667, 440), (655, 438), (642, 435),
            (628, 433), (613, 432), (597, 430), (580, 429), (564, 427), (548, 425), (534, 423), (520, 421),
            (505, 417), (493, 414), (480, 412), (467, 409), (453, 407), (440, 405), (427, 404), (413, 402),
            (400, 401), (390, 398), (381, 396), (371, 395), (362, 393), (352, 391), (342, 390), (332, 389),
            (321, 387), (313, 387), (305, 386), (298, 384), (292, 383), (288, 382), (284, 381), (281, 380),
            (278, 379), (275, 378), (271, 378), (267, 379), (262, 380), (256, 380), (251, 381), (245, 382),
            (240, 384), (235, 386), (230, 389), (227, 391), (224, 394), (220, 396), (217, 398), (212, 399),
            (208, 400), (204, 401), (200, 404), (198, 406), (197, 410), (196, 413), (196, 416), (195, 418),
            (193, 419), (191, 420), (188, 421), (186, 421), (184, 423), (183, 425), (183, 428), (184, 431),
            (187, 433), (192, 435), (199, 436), (205, 436), (214, 436), (224, 435), (233, 434), (242, 433),
            (252, 434), (260, 435), (268, 437), (274, 439), (278, 440), (281, 441), (284, 441), (285, 441),
            (286, 441), (287, 441), (288, 441), (290, 441), (292, 441), (295, 441), (299, 440), (304, 439),
            (310, 438), (316, 436), (319, 436), (322, 435),
        ),
    ),
    (
        "man in red, lawn then road",
        506,
        True,
        (
            (741, 460), (731, 458), (723, 456), (709, 454), (694, 452), (679, 450), (663, 450), (647, 449),
            (629, 448), (612, 447), (595, 445), (578, 443), (561, 440), (546, 438), (529, 436), (509, 433),
            (493, 432), (477, 430), (461, 429), (445, 427), (432, 424), (419, 421), (403, 417), (387, 414),
            (373, 410), (359, 408), (345, 406), (333, 404), (321, 401), (310, 399), (298, 396), (287, 394),
            (277, 392), (268, 390), (259, 388), (250, 387), (241, 387), (231, 386), (221, 384), (211, 383),
            (204, 381), (200, 380), (197, 378), (195, 376), (194, 374), (193, 372), (191, 370), (189, 368),
            (187, 366), (185, 364), (184, 363), (183, 361), (184, 361), (186, 360), (189, 360), (193, 360),
            (196, 359), (199, 358), (201, 357), (202, 356), (203, 355), (203, 354), (203, 353), (204, 352),
            (204, 352), (205, 351), (207, 350), (209, 349), (213, 349), (218, 348), (223, 348), (229, 347),
            (236, 346), (243, 344), (250, 342), (260, 340), (270, 338), (280, 336), (292, 334), (305, 333),
            (316, 332), (328, 330), (340, 327), (350, 326), (363, 326), (376, 325), (388, 325), (400, 324),
            (412, 323), (423, 322), (432, 319), (441, 316), (451, 314), (460, 312), (468, 311), (478, 309),
            (488, 308), (492, 308), (497, 307),
        ),
    ),
    (
        "man waiting on the road",
        495,
        False,
        (
            (634, 275), (634, 276), (633, 277), (633, 279), (632, 280), (632, 281), (632, 281), (633, 281),
            (633, 280), (634, 280), (634, 280), (635, 279), (635, 279), (636, 279), (636, 279), (635, 279),
            (635, 279), (635, 279), (636, 279), (636, 279), (637, 279), (638, 279), (640, 278), (642, 278),
            (644, 278), (646, 277), (647, 277), (648, 276), (649, 276), (650, 276), (651, 275), (652, 275),
            (652, 275), (653, 275), (653, 276), (653, 277), (653, 278), (653, 280), (653, 281), (653, 283),
            (654, 285), (655, 287), (656, 289), (657, 291), (658, 292), (659, 294), (658, 296), (657, 298),
            (656, 300), (654, 301), (653, 303), (653, 304), (653, 306), (653, 307), (654, 309), (654, 310),
            (655, 310), (655, 311), (656, 311), (656, 311), (657, 311), (657, 311), (657, 311), (657, 311),
            (657, 311), (657, 311), (657, 311), (657, 311), (657, 311), (657, 311), (657, 311), (657, 311),
            (657, 311), (657, 311), (657, 311), (657, 311), (657, 311), (657, 311), (657, 311), (657, 311),
            (656, 311), (656, 311), (656, 311), (656, 311), (656, 311), (655, 311), (655, 311), (655, 311),
            (655, 311), (655, 311), (654, 312), (654, 312), (655, 312), (655, 312), (656, 312), (657, 313),
            (657, 313), (657, 313), (657, 312), (657, 312), (656, 312), (656, 312), (656, 312), (655, 312),
            (655, 312), (654, 312), (653, 312), (653, 312), (652, 312), (652, 312),
        ),
    ),
)  # fmt: skip


def cached_video_path() -> Path:
    """Where scripts/fetch-plaza-video.sh puts vtest.avi when opencv-doc is not installed."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "streamproxy" / "demo" / "vtest.avi"


def find_video() -> Path | None:
    """The plaza video (opencv-doc's, else the fetched copy), or None."""
    for path in (DEBIAN_VIDEO, cached_video_path()):
        if path.is_file():
            return path
    return None


def check_video(path: Path) -> None:
    """Raise ValueError unless `path` is the file the walkers were tracked on (else faces would float)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != VIDEO_SHA256:
        raise ValueError(
            f"{path}: sha256 {digest[:12]}..., expected {VIDEO_SHA256[:12]}... (another vtest.avi)"
        )


@dataclass(frozen=True, slots=True)
class PlazaFace:
    """One pasted face in an output frame: the detector-style box (forehead to chin) in output pixels."""

    walker: str
    box: Box
    occluded: bool  # partly covered by a nearer walker's pasted head (tests judge only whole faces)


def _timeline(index: int) -> tuple[int, int | None, float]:
    """(source frame, the dissolve's other source frame or None, the other's weight) for an output frame."""
    i = index % N_FRAMES
    main = _START + i * SOURCE_FPS // FPS
    if i < N_FRAMES - _FADE:
        return main, None, 0.0
    # The last second dissolves into the second before _START: at the wrap the picture is continuous.
    other = _START + (i - N_FRAMES) * SOURCE_FPS // FPS
    return main, other, (i - (N_FRAMES - _FADE) + 1) / (_FADE + 1)


def _face_source_frame(index: int) -> int:
    """The source frame whose walkers carry faces in an output frame: in the dissolve, the dominant one
    (a face is pasted whole or not at all: a half-faded face is neither a real face nor masked)."""
    main, other, weight = _timeline(index)
    return other if other is not None and weight >= 0.5 else main


def _head_scale(face_w: float) -> float:
    return face_w / (_FACE_IN_PHOTO[2] - _FACE_IN_PHOTO[0])


def _placements(source_frame: int) -> list[tuple[str, bool, float, float, float]]:
    """(walker, mirrored, face centre x, y, face width) in output pixels, farthest first (pasting order)."""
    out = []
    for name, first, mirrored, positions in _TRACKS:
        k = source_frame - first
        if not 0 <= k < len(positions):
            continue
        x, y = positions[k]
        body = (0.3 * y + 25) * _SCALE  # walker height: the camera looks down, nearer is lower and taller
        face_w = max(_MIN_FACE_PX, _FACE_PER_BODY * body)
        out.append((name, mirrored, x * _SCALE, (y - _CROP_Y) * _SCALE, face_w))
    out.sort(key=lambda p: p[3])
    return out


def _head_rect(cx: float, cy: float, face_w: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the pasted head crop whose face centre lands on (cx, cy)."""
    s = _head_scale(face_w)
    hx1, hy1, hx2, hy2 = _HEAD_CROP
    fx1, fy1, fx2, fy2 = _FACE_IN_PHOTO
    fcx, fcy = (fx1 + fx2) / 2 - hx1, (fy1 + fy2) / 2 - hy1
    w, h = round((hx2 - hx1) * s), round((hy2 - hy1) * s)
    return round(cx - fcx * s), round(cy - fcy * s), w, h


def face_boxes(index: int) -> list[PlazaFace]:
    """Ground truth: the faces pasted in output frame `index` (any index: the clip loops)."""
    placed = _placements(_face_source_frame(index))
    fx1, fy1, fx2, fy2 = _FACE_IN_PHOTO
    out = []
    for k, (name, _, cx, cy, face_w) in enumerate(placed):
        s = _head_scale(face_w)
        box = Box.from_center(cx, cy, (fx2 - fx1) * s, (fy2 - fy1) * s)
        occluded = False
        for _, _, ncx, ncy, nw in placed[k + 1 :]:
            x, y, w, h = _head_rect(ncx, ncy, nw)
            occluded |= box.x1 < x + w and x < box.x2 and box.y1 < y + h and y < box.y2
        out.append(PlazaFace(name, box, occluded))
    return out


@functools.cache
def _head_alpha() -> np.ndarray:
    """Alpha of the astronaut's head crop: her head and hair, without the photo's pale backdrop.

    The backdrop is light and grey (saturation < 45, value > 150 in OpenCV's HSV), her hair and skin
    are not; an ellipse around the head drops the collar and the photo's corners; edges feathered.
    """
    head = _head_crop_bgr()
    hsv = cv2.cvtColor(head, cv2.COLOR_BGR2HSV)
    backdrop = (hsv[..., 1] < 45) & (hsv[..., 2] > 150)
    opened = cv2.morphologyEx((~backdrop).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    fg = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    h, w = fg.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((xx - 82) / 68) ** 2 + ((yy - 86) / 86) ** 2)
    ellipse = np.clip((1 - r) / 0.1, 0, 1)
    alpha: np.ndarray = cv2.GaussianBlur(fg.astype(np.float32), (0, 0), 1.5) * ellipse
    return alpha


def _paste(frame: np.ndarray, cx: float, cy: float, face_w: float, mirrored: bool) -> None:
    x, y, w, h = _head_rect(cx, cy, face_w)
    head, full_alpha = _head_crop_bgr(), _head_alpha()
    if mirrored:
        head, full_alpha = head[:, ::-1], full_alpha[:, ::-1]
    # Through the scene's own resolution first: a pasted face as soft as the upscaled video around it.
    small = cv2.resize(
        head, (max(2, round(w / _SCALE)), max(2, round(h / _SCALE))), interpolation=cv2.INTER_AREA
    )
    scaled = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    alpha = cv2.resize(full_alpha, (w, h), interpolation=cv2.INTER_AREA)[..., None]
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, frame.shape[1]), min(y + h, frame.shape[0])
    if x1 >= x2 or y1 >= y2:
        return
    a = alpha[y1 - y : y2 - y, x1 - x : x2 - x]
    src = scaled[y1 - y : y2 - y, x1 - x : x2 - x]
    region = frame[y1:y2, x1:x2].astype(np.float32)
    frame[y1:y2, x1:x2] = (a * src + (1 - a) * region).astype(np.uint8)


def _source_frames(video: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(source index, the 768x432 crop) for source frames _FIRST_SOURCE.._LAST_SOURCE, in order."""
    import av

    with av.open(str(video)) as container:
        for n, frame in enumerate(container.decode(container.streams.video[0])):
            if n > _LAST_SOURCE:
                return
            if n >= _FIRST_SOURCE:
                bgr: np.ndarray = frame.to_ndarray(format="bgr24", threads=1)
                if (bgr.shape[1], bgr.shape[0]) != _SOURCE_SIZE:
                    raise ValueError(f"{video}: {bgr.shape[1]}x{bgr.shape[0]}, expected 768x576")
                yield n, bgr[_CROP_Y:]
    raise ValueError(f"{video}: ends before source frame {_LAST_SOURCE}")


def render_frames(video: Path) -> Iterator[np.ndarray]:
    """The clip's N_FRAMES BGR frames (HEIGHT, WIDTH, 3) in order, one at a time (a few MB in memory)."""
    before: dict[int, np.ndarray] = {}  # the second before _START, for the dissolve at the end
    index = 0
    for n, crop in _source_frames(video):
        if n < _START:
            before[n] = crop
            continue
        while index < N_FRAMES and _timeline(index)[0] == n:
            _, other, weight = _timeline(index)
            mixed = crop if other is None else cv2.addWeighted(crop, 1 - weight, before[other], weight, 0)
            frame = cv2.resize(mixed, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
            for _, mirrored, cx, cy, face_w in _placements(_face_source_frame(index)):
                _paste(frame, cx, cy, face_w, mirrored)
            yield frame
            index += 1
    if index != N_FRAMES:
        raise ValueError(f"{video}: {index} frames rendered, expected {N_FRAMES}")


def replay_path(bitrate_kbps: int = 3000) -> Path:
    """Where the encoded plaza clip is cached (beside camsim's clips)."""
    return (
        clip_cache_dir() / f"plaza-v{_VERSION}-{WIDTH}x{HEIGHT}-{FPS}fps-x264-{bitrate_kbps}k-g{2 * FPS}.au"
    )


def cached_replay(video: Path, bitrate_kbps: int = 3000) -> Path:
    """The plaza clip encoded for camsim's replay mode, built once (a few seconds) and reused."""
    path = replay_path(bitrate_kbps)
    try:
        if path.stat().st_size > len(REPLAY_MAGIC):
            return path
    except FileNotFoundError:
        pass
    check_video(video)
    t0 = time.monotonic()
    encode_frames((bgr_to_i420(f) for f in render_frames(video)), path, WIDTH, HEIGHT, FPS, bitrate_kbps)
    log.info("plaza clip %s built in %.1f s", path.name, time.monotonic() - t0)
    return path
