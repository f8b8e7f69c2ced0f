"""Face detection on a real photo (scikit-image's astronaut) with both models, at many frame sizes."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from streamproxy.config import DetectorConfig
from streamproxy.engine import detect, models
from streamproxy.engine.detect import (
    CenterFaceDetector,
    FaceDetector,
    OnnxFaceDetector,
    YuNetDetector,
    create_detector,
    fit_size,
    nms,
    tile_rects,
)
from streamproxy.engine.models import MODELS as MODEL_SPECS
from streamproxy.engine.models import ModelError
from streamproxy.types import Box, Detection, align32

skimage_data = pytest.importorskip("skimage.data")

MODELS = ["yunet", "centerface"]
# The astronaut's face in the 512x512 photo (checked by eye; both models agree within a few px).
FACE = Box(180, 62, 270, 176)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    img: np.ndarray = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    return img


def make(model_dir: Path, model: str, **kw: object) -> OnnxFaceDetector:
    # threads=1: the test machine is shared; the numbers do not matter here.
    return create_detector(DetectorConfig(model=model, model_dir=model_dir, threads=1, **kw))


def place(
    photo: np.ndarray, size: tuple[int, int], face_w: float, positions: list[tuple[int, int]]
) -> tuple[np.ndarray, list[Box]]:
    """A grey WxH canvas with the photo scaled so its face is `face_w` px wide, at each position."""
    w, h = size
    s = face_w / FACE.width
    n = max(1, round(512 * s))
    small = cv2.resize(photo, (n, n), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    canvas = np.full((h, w, 3), 110, np.uint8)
    faces = []
    for x, y in positions:
        canvas[y : y + n, x : x + n] = small[: h - y, : w - x]
        faces.append(FACE.mapped(n / 512, n / 512, x, y))
    return canvas, faces


def assert_found(dets: list[Detection], faces: list[Box], min_iou: float = 0.4) -> None:
    for face in faces:
        best = max((d.box.iou(face) for d in dets), default=0.0)
        assert best >= min_iou, f"face {face} not found (best IoU {best:.2f}) in {dets}"
    # Nothing on the grey background: every box touches a face (tile-cut partial boxes may exist).
    for d in dets:
        assert any(d.box.intersection(f) > 0 for f in faces), f"false positive {d}"


# -- pure helpers --------------------------------------------------------------------------------


def test_round_and_fit() -> None:
    assert align32(640) == 640
    assert align32(650) == 640
    assert align32(1000) == 992
    assert align32(1) == 32
    # "up": padding, so nothing is cut off; never below 32 either.
    assert align32(640, "up") == 640
    assert align32(641, "up") == 672
    assert align32(0, "up") == 32
    assert align32(1279.5, "up") == 1280
    assert fit_size(1280, 720, 640) == (640, 360)
    assert fit_size(333, 517, 640) == (412, 640)  # the longer side gets the target


@pytest.mark.parametrize(
    ("w", "h", "tiles", "overlap"), [(1280, 720, 2, 0.15), (333, 517, 3, 0.3), (1920, 1080, 4, 0.0)]
)
def test_tile_rects_cover_with_overlap(w: int, h: int, tiles: int, overlap: float) -> None:
    rects = tile_rects(w, h, tiles, overlap)
    assert len(rects) == tiles * tiles
    cover = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    xs = sorted({(r[0], r[2]) for r in rects})
    tile_w = xs[0][1] - xs[0][0]
    for (a1, a2), (b1, _b2) in itertools.pairwise(xs):
        assert a2 - b1 == pytest.approx(overlap * tile_w, abs=2)
        assert a2 - a1 == pytest.approx(tile_w, abs=2)


def test_nms_keeps_best_of_overlapping() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], float)
    scores = np.array([0.6, 0.9, 0.5, 0.3])
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.4).tolist() == []


# -- detectors -------------------------------------------------------------------------------


def test_create_detector_types(model_dir: Path) -> None:
    y = make(model_dir, "yunet")
    c = make(model_dir, "centerface")
    assert isinstance(y, YuNetDetector) and isinstance(c, CenterFaceDetector)
    assert isinstance(y, FaceDetector) and isinstance(c, FaceDetector)


def _copy_model(model_dir: Path, model: str, tmp_path: Path) -> tuple[Path, Path]:
    """The model alone in a new folder; returns (folder, where its edited copy goes)."""
    d = tmp_path / "models"
    d.mkdir(exist_ok=True)
    name = MODEL_SPECS[model].filename
    shutil.copy2(model_dir / name, d / name)
    return d, d / f"{Path(name).stem}.dynamic.onnx"


@pytest.mark.parametrize("model", MODELS)
def test_the_edited_model_is_kept_and_a_new_process_starts_without_onnx(
    model_dir: Path, model: str, tmp_path: Path, astronaut: np.ndarray
) -> None:
    d, kept = _copy_model(model_dir, model, tmp_path)
    cls = type(make(d, model, input_width=640))
    edit = models._edit_dims(d / MODEL_SPECS[model].filename, cls.input_name, cls.dynamic_batch)
    if hashlib.sha256(edit).hexdigest() != MODEL_SPECS[model].dynamic_sha256:
        import onnx

        pytest.skip(
            f"onnx {onnx.__version__} writes another edit than the pinned one (the next test covers that)"
        )
    assert kept.read_bytes() == edit
    code = (
        "import json, sys, cv2\n"
        "from skimage import data\n"
        "from streamproxy.config import DetectorConfig\n"
        "from streamproxy.engine.detect import create_detector\n"
        f"det = create_detector(DetectorConfig(model={model!r}, model_dir={str(d)!r}, input_width=640, threads=1))\n"
        "dets = det.detect_bgr(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))\n"
        "print(json.dumps(['onnx' in sys.modules, 'ml_dtypes' in sys.modules, "
        "[[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in dets]]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    onnx_loaded, ml_dtypes_loaded, boxes = json.loads(r.stdout.strip().splitlines()[-1])
    assert (onnx_loaded, ml_dtypes_loaded) == (False, False), r.stdout
    found = [Box(*b) for b in boxes]
    assert len(found) == 1 and found[0].iou(FACE) > 0.75, r.stdout


def test_a_kept_model_that_is_not_the_pinned_edit_is_made_again(
    model_dir: Path, tmp_path: Path, astronaut: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    d, kept = _copy_model(model_dir, "yunet", tmp_path)
    make(d, "yunet")
    good = kept.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte (or a planted model): refused, made again
    kept.write_bytes(bytes(bad))
    models._dynamic_models.clear()
    with caplog.at_level(logging.WARNING, logger="streamproxy.engine.models"):
        dets = make(d, "yunet", input_width=640).detect_bgr(astronaut)
    assert "is not the pinned edit" in caplog.text
    assert len(dets) == 1 and dets[0].box.iou(FACE) > 0.75
    assert kept.read_bytes() == good


def test_an_edit_that_differs_from_the_pin_is_used_but_not_kept(
    model_dir: Path, tmp_path: Path, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another onnx version could serialise the edit differently: the detector still starts."""
    d, kept = _copy_model(model_dir, "yunet", tmp_path)
    monkeypatch.setitem(
        models.MODELS, "yunet", dataclasses.replace(MODEL_SPECS["yunet"], dynamic_sha256="0" * 64)
    )
    dets = make(d, "yunet", input_width=640).detect_bgr(astronaut)
    assert len(dets) == 1 and not kept.exists()


def test_a_read_only_model_folder_still_starts(
    model_dir: Path, tmp_path: Path, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, kept = _copy_model(model_dir, "yunet", tmp_path)

    def refuse(path: Path, data: bytes) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(models, "atomic_write", refuse)
    dets = make(d, "yunet", input_width=640).detect_bgr(astronaut)
    assert len(dets) == 1 and not kept.exists()


def test_prepare_models_makes_the_edited_copies_ahead(model_dir: Path, tmp_path: Path) -> None:
    d, kept_yunet = _copy_model(model_dir, "yunet", tmp_path)
    _, kept_centerface = _copy_model(model_dir, "centerface", tmp_path)
    detect.prepare_models(d, ["yunet"])
    assert kept_yunet.exists() and not kept_centerface.exists()
    detect.prepare_models(d)
    assert kept_centerface.exists()


def test_missing_model_dir_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="streamproxy models fetch"):
        create_detector(DetectorConfig(model="yunet", model_dir=tmp_path))


@pytest.mark.parametrize("model", MODELS)
def test_astronaut_512(model_dir: Path, model: str, astronaut: np.ndarray) -> None:
    det = make(model_dir, model, input_width=640)
    dets = det.detect_bgr(astronaut)
    assert len(dets) == 1
    assert dets[0].box.iou(FACE) > 0.75
    assert 0.5 <= dets[0].score <= 1.0
    assert det.last_ms > 0


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("size", "face_w", "pos", "input_width"),
    [
        ((1280, 720), 126.6, (280, 0), 640),  # astronaut letterboxed into 720p
        ((333, 517), 58.5, (0, 100), 320),  # odd portrait size
        ((1917, 1083), 150, (1000, 200), 960),  # odd landscape size, downscaled 2x
        ((160, 120), 30, (20, 0), 640),  # tiny image, upscaled 4x
    ],
)
def test_any_frame_size(
    model_dir: Path,
    model: str,
    astronaut: np.ndarray,
    size: tuple[int, int],
    face_w: float,
    pos: tuple[int, int],
    input_width: int,
) -> None:
    img, faces = place(astronaut, size, face_w, [pos])
    dets = make(model_dir, model, input_width=input_width).detect_bgr(img)
    assert_found(dets, faces, min_iou=0.6)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("face_w", [20, 28])
def test_small_faces_at_full_resolution(
    model_dir: Path, model: str, astronaut: np.ndarray, face_w: int
) -> None:
    positions = [(60, 60), (700, 80), (200, 450), (900, 500), (1150, 300)]
    img, faces = place(astronaut, (1280, 720), face_w, positions)
    dets = make(model_dir, model, input_width=1280).detect_bgr(img)
    assert_found(dets, faces)


def test_input_width_is_the_small_face_knob(model_dir: Path, astronaut: np.ndarray) -> None:
    img, faces = place(astronaut, (1280, 720), 16, [(60, 60), (700, 80), (200, 450), (900, 500)])
    det = make(model_dir, "yunet", input_width=1280)
    assert_found(det.detect_bgr(img), faces)
    det.input_width = 500  # the latency controller lowers it at run time
    assert det.input_width == 512
    assert len(det.detect_bgr(img)) < len(faces)  # 8 px faces are beyond YuNet
    det.input_width = 1290
    assert det.input_width == 1280
    assert_found(det.detect_bgr(img), faces)


def test_tiles_find_faces_the_whole_frame_pass_misses(model_dir: Path, astronaut: np.ndarray) -> None:
    # One face sits in the overlap of the left and right tiles (x 588..692): found once, not twice.
    positions = [(60, 60), (700, 80), (200, 450), (900, 500), (620, 330)]
    img, faces = place(astronaut, (1280, 720), 16, positions)
    plain = make(model_dir, "yunet", input_width=640).detect_bgr(img)
    assert len(plain) < len(faces)
    det = make(model_dir, "yunet", input_width=640, tiles=2)
    dets = det.detect_bgr(img)
    assert_found(dets, faces)
    seam = faces[-1]
    assert sum(d.box.iou(seam) > 0.3 for d in dets) == 1


@pytest.mark.parametrize("model", MODELS)
def test_tiles_with_large_face_and_shrinking(model_dir: Path, model: str, astronaut: np.ndarray) -> None:
    # 1920x1080 at input_width 640 with 2x2 tiles: tiles are shrunk (the swscale/resize-once path).
    img, faces = place(astronaut, (1920, 1080), 60, [(100, 100), (1300, 600)])
    dets = make(model_dir, model, input_width=640, tiles=2).detect_bgr(img)
    assert_found(dets, faces)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("tiles", [1, 2])
def test_no_faces_on_flat_or_noise(model_dir: Path, model: str, tiles: int) -> None:
    rng = np.random.default_rng(1)
    det = make(model_dir, model, input_width=640, tiles=tiles)
    flat = np.full((720, 1280, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert det.detect_bgr(flat) == []
    assert det.detect_bgr(noise) == []


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("tiles", [1, 2])
def test_detect_frame_yuv420p(model_dir: Path, model: str, astronaut: np.ndarray, tiles: int) -> None:
    img, faces = place(astronaut, (1280, 720), 28, [(60, 60), (700, 80), (900, 500)])
    frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)
    assert frame.format.name == "yuv420p"
    det = make(model_dir, model, input_width=1280 if tiles == 1 else 640, tiles=tiles)
    dets = det.detect_frame(frame)
    assert_found(dets, faces)
    # Same boxes as from the BGR image, up to colour conversion / scaler differences.
    ref = det.detect_bgr(img)
    assert len(ref) == len(dets)
    for d in dets:
        assert max(r.box.iou(d.box) for r in ref) > 0.8


@pytest.mark.parametrize("model", MODELS)
def test_detect_frame_odd_size_downscaled(model_dir: Path, model: str, astronaut: np.ndarray) -> None:
    img, faces = place(astronaut, (1282, 722), 90, [(500, 100)])
    frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)
    dets = make(model_dir, model, input_width=480).detect_frame(frame)
    assert_found(dets, faces, min_iou=0.6)


def test_grey_and_bgra_images(model_dir: Path, astronaut: np.ndarray) -> None:
    det = make(model_dir, "yunet", input_width=640)
    grey = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    assert_found(det.detect_bgr(grey), [FACE], min_iou=0.6)
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    assert_found(det.detect_bgr(bgra), [FACE], min_iou=0.6)


def test_bad_input_raises(model_dir: Path) -> None:
    det = make(model_dir, "yunet")
    with pytest.raises(ValueError):
        det.detect_bgr(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError):
        det.detect_bgr(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError):
        det.detect_bgr(np.zeros((10, 10, 2), np.uint8))


def test_inference_errors_propagate(
    model_dir: Path, astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: a broken detector must raise, never return 'no faces'."""
    det = make(model_dir, "yunet", input_width=320)

    class Boom(RuntimeError):
        pass

    def broken(*a: object, **k: object) -> object:
        raise Boom("onnxruntime failed")

    monkeypatch.setattr(det.session, "run", broken)
    with pytest.raises(Boom):
        det.detect_bgr(astronaut)
    frame = av.VideoFrame.from_ndarray(astronaut, format="bgr24")
    with pytest.raises(Boom):
        det.detect_frame(frame)
