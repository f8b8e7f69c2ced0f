"""Text regions (licence plates, and every other text) for `objects: [faces, plates]`.

The detector is PaddleOCR's PP-OCRv4 DB text detector (`ppocr_det`, Apache-2.0, fetched from the
pinned `rapidocr-onnxruntime` wheel by `streamproxy models fetch`) on onnxruntime. It finds text of
any kind: a licence plate is masked because it is text, and so are street signs, shop names, house
numbers and writing on clothes. There is no permissively licensed plate-only detector in a package.

Input: RGB (BGR gives an almost empty map), (x/255 - 0.5)/0.5, sides multiples of 32, any size.
Output: a text-probability map at the input's size; DB post-processing turns it into boxes
(threshold, connected regions, a minimum size and mean probability, "unclip" growth), returned in
the pixel coordinates of the picture that was given. Errors propagate: the callers fail closed.

Videos (`TextMasker`): the detector costs ~0.4 s per 960x544 picture on 2 cores, so it runs on every
`text.detect_every`-th frame. The frames in between wait for the next run (look-ahead, as the live
face path does) and get the masks of both runs around them: a region seen at both is interpolated
between its two boxes, a region seen at one only is masked where it was seen, grown; so a plate is
masked in every frame, including the ones the detector never looked at.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import onnxruntime as ort

from streamproxy.config import EngineConfig, ObfuscationConfig, TextConfig
from streamproxy.engine.models import model_path
from streamproxy.engine.obfuscate import (
    obfuscate,
    obfuscate_whole,
    obfuscated_frame,
    planes_from_bgr,
)
from streamproxy.host import usable_cores
from streamproxy.types import Box, Detection, Plane, Planes, align32

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

MODEL = "ppocr_det"
# input_width 0: the picture's own longer side, clamped. Below 960 px plates of a 540p street clip
# vanish from the map; above 1920 the cost (~area) buys little for text that big.
AUTO_MIN_SIDE, AUTO_MAX_SIDE = 960, 1920
MAX_SIDE = 4096
MAX_REGIONS = 1000  # contours looked at per picture: bounds the cost on a picture full of texture
MIN_SIDE_PX = 3.0  # DB's min_size: thinner regions (detector pixels) are noise
# A region in one run and one in the next are the same text when their centres are closer than
# this many region widths and their sizes within a factor of MATCH_SIZE_RATIO.
MATCH_CENTRE_WIDTHS = 1.5
MATCH_SIZE_RATIO = 2.0


def text_obfuscation(cfg: ObfuscationConfig) -> ObfuscationConfig:
    """The face style, made for text: box-shaped (an ellipse inscribed in a wide text box would leave
    the first and last characters' corners readable) and, for pixelate, the coarsest blocks (8 blocks
    across a plate would leave each character about one block: guessable)."""
    return cfg.model_copy(update={"shape": "box", "pixel_blocks": 3})


class TextDetector:
    """PP-OCRv4 DB text detector on one onnxruntime session; one thread at a time."""

    model = MODEL

    def __init__(self, cfg: TextConfig, model_dir: Path, threads: int = 0, spinning: bool = False) -> None:
        self.cfg = cfg
        self.last_ms = 0.0
        self._input_width = cfg.input_width
        path = model_path(MODEL, model_dir)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or min(2, usable_cores())
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Beside the face detector's session: spinning pools of two sessions starve each other.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        so.log_severity_level = 3
        t0 = time.perf_counter()
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name
        log.info(
            "text detector: %s loaded from %s in %.0f ms", MODEL, path, (time.perf_counter() - t0) * 1000
        )

    @property
    def input_width(self) -> int:
        """Longer side of the detector picture; 0 = the picture's own (clamped to 960..1920)."""
        return self._input_width

    @input_width.setter
    def input_width(self, value: int) -> None:
        self._input_width = max(0, min(MAX_SIDE, int(value)))

    def work_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a width x height picture is resized to (aspect kept) before padding to 32."""
        if width < 1 or height < 1:
            raise ValueError(f"text detector got an empty picture {width}x{height}")
        longer = max(width, height)
        target = self._input_width or min(AUTO_MAX_SIDE, max(AUTO_MIN_SIDE, longer))
        target = align32(target)
        s = target / longer
        return max(1, round(width * s)), max(1, round(height * s))

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        """Text regions of a BGR (or grey, or BGRA) uint8 picture, in its pixel coordinates."""
        t0 = time.perf_counter()
        try:
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3):
                raise ValueError(
                    f"text detector needs a uint8 HxW(xC) image, got {getattr(img, 'shape', img)!r}"
                )
            if img.ndim == 2:
                rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
            elif img.shape[2] == 4:
                rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
            else:
                rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            h, w = rgb.shape[:2]
            tw, th = self.work_size(w, h)
            if (tw, th) != (w, h):
                rgb = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR)
            return self._detect(rgb, w, h)
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        """Text regions of a decoded video frame, in the frame's pixel coordinates."""
        t0 = time.perf_counter()
        try:
            w, h = int(frame.width), int(frame.height)
            tw, th = self.work_size(w, h)
            rgb: np.ndarray = frame.reformat(width=tw, height=th, format="rgb24", threads=1).to_ndarray()
            return self._detect(rgb, w, h)
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    def _detect(self, rgb: np.ndarray, width: int, height: int) -> list[Detection]:
        h, w = rgb.shape[:2]
        ph, pw = align32(h, "up"), align32(w, "up")
        blob = np.zeros((1, 3, ph, pw), np.float32)  # 0 after normalising = mid grey padding
        norm = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
        blob[0, :, :h, :w] = norm.transpose(2, 0, 1)
        out = self.session.run(None, {self._input: blob})[0]
        prob = np.asarray(out, np.float32)[0, 0, :h, :w]
        return self._boxes(prob, width / w, height / h, width, height)

    def _boxes(self, prob: np.ndarray, sx: float, sy: float, width: int, height: int) -> list[Detection]:
        """DB post-processing: regions of the thresholded map, scored, grown, as axis-aligned boxes."""
        cfg = self.cfg
        # A 2x2 dilation joins the characters of one word (RapidOCR's use_dilation).
        bitmap = cv2.dilate((prob > cfg.threshold).astype(np.uint8), np.ones((2, 2), np.uint8))
        contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        if len(contours) > MAX_REGIONS:
            contours = sorted(contours, key=cv2.contourArea, reverse=True)[:MAX_REGIONS]
        dets: list[Detection] = []
        for c in contours:
            (cx, cy), (rw, rh), angle = cv2.minAreaRect(c)
            if min(rw, rh) < MIN_SIDE_PX:
                continue
            x, y, bw, bh = cv2.boundingRect(c)
            m = np.zeros((bh, bw), np.uint8)
            cv2.fillPoly(m, [c - np.array([x, y], np.int32)], 1)
            score = float(cv2.mean(prob[y : y + bh, x : x + bw], mask=m)[0])
            if score < cfg.box_threshold:
                continue
            # DB's unclip: the region was shrunk in training; push each side out by area * r / perimeter.
            d = rw * rh * cfg.unclip / max(1e-6, 2.0 * (rw + rh))
            pts = cv2.boxPoints(((cx, cy), (rw + 2 * d, rh + 2 * d), angle))
            x1, y1 = float(pts[:, 0].min()) * sx, float(pts[:, 1].min()) * sy
            x2, y2 = float(pts[:, 0].max() + 1) * sx, float(pts[:, 1].max() + 1) * sy
            box = Box(max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
            if box.area > 0:
                dets.append(Detection(box, score))
        return dets


def create_text_detector(cfg: EngineConfig) -> TextDetector:
    """The text detector of `cfg` (threads as the face detector's); raises ModelError naming the fix."""
    return TextDetector(cfg.text, cfg.detector.model_dir, cfg.detector.threads, cfg.detector.spinning)


def mask_text_image(
    img: np.ndarray, detector: TextDetector, cfg: EngineConfig, applied: list[Box] | None = None
) -> tuple[int, bool]:
    """Mask the text regions of a still in place. Returns (regions, failed closed); the masks
    applied are appended to `applied` when given (the review log of issue #23).

    A detector failure obfuscates the whole picture (fail closed), as the face engine does.
    """
    color = img if img.ndim == 2 else np.ascontiguousarray(img[:, :, :3])
    h, w = img.shape[:2]
    planes = Planes(w, h, (Plane(img, 1.0, 0),)) if img.ndim == 2 else planes_from_bgr(img[:, :, :3])
    try:
        dets = detector.detect_bgr(color)
    except Exception as err:
        log.error("text detector failed, the picture is obfuscated whole: %s", err, exc_info=True)
        obfuscate_whole(planes, cfg.obfuscation)
        return 0, True
    # Grown like the video masks: DB's boxes hug the ink and can cut the edge of the first letter.
    boxes = [grow_region(d.box, cfg.text.margin).clipped(w, h) for d in dets]
    if applied is not None:
        applied.extend(boxes)
    obfuscate(planes, boxes, text_obfuscation(cfg.obfuscation))
    return len(dets), False


# --- videos: cadence with look-ahead ---------------------------------------------------------


def grow_region(b: Box, margin: float) -> Box:
    """A text box grown by `margin` region heights per side (at least 2 px)."""
    return b.grown(max(2.0, margin * b.height))


@dataclass(slots=True)
class _Region:
    box: Box
    missed: int = 0  # runs since the detector last saw it (coasting when > 0)
    prev: Box | None = None  # its box at the run before, when it was seen there too


@dataclass(slots=True)
class _Waiting:
    frame: av.VideoFrame | None  # None: dropped upstream (kept in order, nothing to mask)
    t: float


@dataclass(frozen=True, slots=True)
class TextOut:
    frame: av.VideoFrame | None
    regions: int
    fail_closed: bool
    masks: tuple[Box, ...] = ()  # the text masks applied (before clipping; the review log, issue #23)


@dataclass
class TextStats:
    runs: int = 0
    regions: int = 0
    ms_total: float = 0.0
    fail_closed_frames: int = 0

    @property
    def ms_per_run(self) -> float:
        return self.ms_total / self.runs if self.runs else 0.0


@dataclass
class TextMasker:
    """Masks text in a stream of (already face-anonymized) frames, in order, with look-ahead.

    `push` takes one frame and returns those that may leave (often none: they wait for the next
    detector run, at most `detect_every - 1` of them); `flush` runs the detector on the last waiting
    frame and releases everything. Frames leave in the order they came.
    """

    cfg: EngineConfig
    detector: TextDetector
    name: str = "-"
    stats: TextStats = field(default_factory=TextStats)
    _waiting: list[_Waiting] = field(default_factory=list)
    _regions: list[_Region] = field(default_factory=list)
    _run_t: float | None = None
    _since_run: int | None = None
    _failing: bool = False
    _size: tuple[int, int] | None = None

    def push(self, frame: av.VideoFrame | None, t: float) -> list[TextOut]:
        out: list[TextOut] = []
        if frame is not None:
            size = (frame.width, frame.height)
            if self._size is not None and size != self._size:
                out += self.flush()
                self._regions, self._run_t = [], None
            self._size = size
        every = max(1, self.cfg.text.detect_every)
        due = self._since_run is None or self._since_run + 1 >= every or self._failing
        if frame is None or not due:
            self._waiting.append(_Waiting(frame, t))
            self._since_run = (self._since_run or 0) + 1
            return out
        return out + self._run(frame, t)

    def flush(self) -> list[TextOut]:
        """Release every waiting frame: the detector runs on the newest one that has pixels."""
        real = [i for i, w in enumerate(self._waiting) if w.frame is not None]
        if not real:
            out = [TextOut(None, 0, False) for _ in self._waiting]
            self._waiting = []
            return out
        last = real[-1]
        tail = self._waiting[last + 1 :]
        run = self._waiting[last]
        self._waiting = self._waiting[:last]
        assert run.frame is not None
        return self._run(run.frame, run.t) + [TextOut(None, 0, False) for _ in tail]

    def _run(self, frame: av.VideoFrame, t: float) -> list[TextOut]:
        waiting, self._waiting = self._waiting, []
        self._since_run = 0
        t0 = time.perf_counter()
        try:
            dets = self.detector.detect_frame(frame)
        except Exception as err:
            if not self._failing:
                log.error("%s: text detector failed, failing closed: %s", self.name, err, exc_info=True)
            self._failing = True
            return [self._fail(w.frame) for w in waiting] + [self._fail(frame)]
        ms = (time.perf_counter() - t0) * 1000
        if self._failing:
            log.warning("%s: text detector recovered", self.name)
        self._failing = False
        self.stats.runs += 1
        self.stats.ms_total += ms
        self.stats.regions += len(dets)
        t_prev = self._run_t
        self._regions = self._match([d.box for d in dets])
        self._run_t = t
        out = [self._render(w.frame, self._between(w.t, t_prev, t)) for w in waiting]
        out.append(self._render(frame, [self._margin(r.box, 1.0) for r in self._regions]))
        return out

    def _match(self, boxes: list[Box]) -> list[_Region]:
        """This run's regions: each box linked to the nearest like region of the last run; regions
        of the last run not seen again coast for `coast_runs` runs."""
        old = list(self._regions)
        new: list[_Region] = []
        for b in sorted(boxes, key=lambda b: -b.area):
            best, best_d = -1, float("inf")
            for i, r in enumerate(old):
                size = max(r.box.width, 1.0)
                ratio = max(b.width, 1.0) / size
                if not (1 / MATCH_SIZE_RATIO <= ratio <= MATCH_SIZE_RATIO):
                    continue
                dist = float(np.hypot(b.cx - r.box.cx, b.cy - r.box.cy))
                if dist < MATCH_CENTRE_WIDTHS * max(size, b.width) and dist < best_d:
                    best, best_d = i, dist
            prev = old.pop(best).box if best >= 0 else None
            new.append(_Region(b, 0, prev))
        coast = self.cfg.text.coast_runs
        new += [_Region(r.box, r.missed + 1, r.box) for r in old if r.missed + 1 <= coast]
        return new

    def _margin(self, b: Box, k: float) -> Box:
        return grow_region(b, k * self.cfg.text.margin)

    def _between(self, t: float, t_prev: float | None, t_run: float) -> list[Box]:
        """Masks for a frame that waited: matched regions interpolated between the two runs; a region
        seen at one run only is masked where it was seen there, grown twice as much."""
        span = t_run - t_prev if t_prev is not None else 0.0
        f = min(1.0, max(0.0, (t - t_prev) / span)) if t_prev is not None and span > 1e-9 else 1.0
        masks: list[Box] = []
        for r in self._regions:
            if r.prev is not None and r.missed == 0:
                masks.append(self._margin(r.prev.lerp(r.box, f), 1.0))
            else:
                masks.append(self._margin(r.box, 2.0))
        return masks

    def _render(self, frame: av.VideoFrame | None, masks: list[Box]) -> TextOut:
        if frame is None:
            return TextOut(None, 0, False)
        if not masks:
            return TextOut(frame, 0, False)
        return TextOut(
            obfuscated_frame(frame, masks, text_obfuscation(self.cfg.obfuscation)), len(masks), False,
            tuple(masks),
        )  # fmt: skip

    def _fail(self, frame: av.VideoFrame | None) -> TextOut:
        if frame is None:
            return TextOut(None, 0, True)
        self.stats.fail_closed_frames += 1
        if self.cfg.fail_closed.action == "drop":
            return TextOut(None, 0, True)
        return TextOut(obfuscated_frame(frame, None, self.cfg.obfuscation), 0, True)


# --- live cameras -----------------------------------------------------------------------------


def live_refusal(
    camera: str, cfg: EngineConfig, budget_ms: float, size: tuple[int, int] = (1280, 720)
) -> str:
    """Why a live camera may not run with `objects: plates`, with the detector's measured cost.

    Live text masking would have to fit a detector run of this cost into the latency budget at the
    privacy floor's cadence beside the face detector; it is measured here (one warm-up, then one
    timed run on a textured picture of the camera's size) so the message says what it costs.
    """
    try:
        det = create_text_detector(cfg)
    except Exception as err:
        return f'{camera}: engine.objects: "plates" needs the text detector: {err}'
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    det.detect_bgr(img)
    det.detect_bgr(img)
    ms = det.last_ms
    tw, th = det.work_size(*size)
    log.info(
        "%s: text detector %.0f ms per run at %dx%d (live budget %.0f ms)", camera, ms, tw, th, budget_ms
    )
    verdict = (
        f"more than the camera's whole latency budget of {budget_ms:.0f} ms"
        if ms > budget_ms
        else f"and live text masking is not implemented yet (a run would have to fit the {budget_ms:.0f} ms "
        "budget beside the face detector's privacy floor)"
    )
    return (
        f'{camera}: engine.objects: "plates" is for bulk mode (streamproxy anonymize --objects faces,plates): '
        f"the text detector took {ms:.0f} ms per run at {tw}x{th} on this machine, {verdict}. "
        'Remove "plates" from engine.objects for live cameras (or use privacy_zones for fixed text).'
    )
