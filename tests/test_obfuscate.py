"""Obfuscation on yuv420p and BGR planes: only mask pixels change, and what is hidden stays hidden."""

from __future__ import annotations

import itertools
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from streamproxy.config import ObfuscationConfig, PrivacyZone
from streamproxy.engine.obfuscate import (
    fill_zones,
    frame_from_planes,
    obfuscate,
    obfuscate_whole,
    planes_from_bgr,
    planes_from_yuv420,
)
from streamproxy.types import Box, Planes

STYLES = ["blur", "pixelate", "solid"]
SHAPES = ["ellipse", "box"]


def noise_frame(w: int, h: int, seed: int = 0) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    f = av.VideoFrame(w, h, "yuv420p")
    for p in f.planes:
        a = np.frombuffer(memoryview(p), np.uint8)
        a[:] = rng.integers(0, 256, a.shape, dtype=np.uint8)
    f.pts = 1234
    f.time_base = Fraction(1, 90000)
    return f


def av_plane(p: av.video.plane.VideoPlane) -> np.ndarray:
    rows = np.frombuffer(memoryview(p), np.uint8)[: p.height * p.line_size].reshape(p.height, p.line_size)
    return rows[:, : p.width]


def plane_arrays(planes: Planes) -> list[np.ndarray]:
    return [p.data.copy() for p in planes.planes]


def outside_masks(planes: Planes, masks: list[Box]) -> list[np.ndarray]:
    """Per plane: True where no mask box (rounded outwards on that plane) reaches."""
    out = []
    for p in planes.planes:
        ph, pw = p.data.shape
        free = np.ones((ph, pw), bool)
        for m in masks:
            x1, y1, x2, y2 = m.mapped(p.scale, p.scale).int_bounds()
            free[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = False
        out.append(free)
    return out


def outside_ellipses(planes: Planes, masks: list[Box], margin: float = 1.5) -> list[np.ndarray]:
    """Per plane: True clearly outside every inscribed ellipse (by `margin` plane pixels)."""
    out = []
    for p in planes.planes:
        ph, pw = p.data.shape
        yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float64) + 0.5
        free = np.ones((ph, pw), bool)
        for m in masks:
            ax = m.width * p.scale / 2 + margin
            ay = m.height * p.scale / 2 + margin
            inside = ((xx - m.cx * p.scale) / ax) ** 2 + ((yy - m.cy * p.scale) / ay) ** 2 <= 1.0
            free &= ~inside
        out.append(free)
    return out


MASKS = [
    Box(40, 30, 140, 150),  # inside
    Box(-30, 100, 50, 200),  # partly outside left
    Box(250, 180, 400, 400),  # partly outside bottom-right
    Box(-100, -100, -10, -10),  # wholly outside
    Box(150, 40, 150, 90),  # empty
]


@pytest.mark.parametrize(("style", "shape"), list(itertools.product(STYLES, SHAPES)))
@pytest.mark.parametrize("size", [(320, 240), (321, 239), (333, 201)])
def test_yuv_only_mask_pixels_change(style: str, shape: str, size: tuple[int, int]) -> None:
    w, h = size
    src = noise_frame(w, h)
    src_before = [bytes(p) for p in src.planes]
    planes, buf = planes_from_yuv420(src)
    before = plane_arrays(planes)
    cfg = ObfuscationConfig(style=style, shape=shape)  # type: ignore[arg-type]
    masks = [m for m in MASKS if m.x1 < w]
    obfuscate(planes, masks, cfg)
    for free, a, p in zip(outside_masks(planes, masks), before, planes.planes, strict=True):
        assert np.array_equal(a[free], p.data[free])
        assert not np.array_equal(a, p.data), "the masks changed nothing"
    if shape == "ellipse":
        # Inside the box but outside the ellipse: untouched too (masks at the frame edge excepted:
        # those are masked as boxes).
        inner = [m for m in masks if m.x1 > 0 and m.y1 > 0 and m.x2 < w and m.y2 < h and m.area > 0]
        edge = [m for m in masks if m not in inner]
        for free, box_free, a, p in zip(
            outside_ellipses(planes, inner), outside_masks(planes, edge), before, planes.planes, strict=True
        ):
            keep = free & box_free
            assert np.array_equal(a[keep], p.data[keep])
    # The decoder's frame is never written to.
    assert [bytes(p) for p in src.planes] == src_before
    out = frame_from_planes(buf, src)
    assert (out.width, out.height, out.format.name) == (w, h, "yuv420p")
    assert out.pts == 1234 and out.time_base == Fraction(1, 90000)


def test_mask_at_edge_is_a_box_so_the_face_corner_is_covered() -> None:
    planes, _ = planes_from_yuv420(noise_frame(320, 240))
    before = plane_arrays(planes)
    obfuscate(planes, [Box(0, 0, 60, 80)], ObfuscationConfig(style="solid", shape="ellipse"))
    assert (planes.planes[0].data[:80, :60] == 16).all()
    assert (planes.planes[1].data[:40, :30] == 128).all()
    assert np.array_equal(planes.planes[0].data[80:], before[0][80:])


@pytest.mark.parametrize(("style", "shape"), list(itertools.product(STYLES, SHAPES)))
def test_bgr_only_mask_pixels_change(style: str, shape: str) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (239, 321, 3), dtype=np.uint8)
    before = img.copy()
    planes = planes_from_bgr(img)
    masks = [m for m in MASKS]
    obfuscate(planes, masks, ObfuscationConfig(style=style, shape=shape))  # type: ignore[arg-type]
    free = outside_masks(planes, masks)[0]
    assert np.array_equal(before[free], img[free])
    assert not np.array_equal(before, img)
    if style == "solid" and shape == "box":
        assert (img[30:150, 40:140] == 0).all()


def test_bgr_view_of_bgra_leaves_alpha() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (100, 120, 4), dtype=np.uint8)
    alpha = img[:, :, 3].copy()
    obfuscate(planes_from_bgr(img[:, :, :3]), [Box(10, 10, 90, 90)], ObfuscationConfig())
    assert np.array_equal(alpha, img[:, :, 3])


def test_grayscale_image() -> None:
    img = np.random.default_rng(3).integers(0, 256, (100, 120), dtype=np.uint8)
    before = img.copy()
    obfuscate(planes_from_bgr(img), [Box(10, 10, 60, 60)], ObfuscationConfig(style="pixelate"))
    assert np.array_equal(before[60:], img[60:])
    assert not np.array_equal(before[10:60, 10:60], img[10:60, 10:60])


def test_empty_mask_list_changes_nothing() -> None:
    planes, _ = planes_from_yuv420(noise_frame(320, 240))
    before = plane_arrays(planes)
    for style in STYLES:
        obfuscate(planes, [], ObfuscationConfig(style=style))  # type: ignore[arg-type]
    assert all(np.array_equal(a, p.data) for a, p in zip(before, planes.planes, strict=True))


def test_roundtrip_without_masks_is_lossless() -> None:
    for w, h in [(320, 240), (321, 239)]:
        src = noise_frame(w, h)
        _, buf = planes_from_yuv420(src)
        out = frame_from_planes(buf, src)
        for a, b in zip(src.planes, out.planes, strict=True):
            assert np.array_equal(av_plane(a), av_plane(b))
    _, buf = planes_from_yuv420(noise_frame(320, 240))
    assert buf.shape == (360, 320)  # the layout of yuv420p to_ndarray()


def test_other_pixel_formats_and_full_range() -> None:
    rgb = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
    planes, buf = planes_from_yuv420(rgb)
    assert planes.planes[0].data.shape == (48, 64)
    assert frame_from_planes(buf, rgb).format.name == "yuv420p"
    j = av.VideoFrame(64, 48, "yuvj420p")
    _, buf = planes_from_yuv420(j)
    assert frame_from_planes(buf, j).color_range == 2


def hf_energy(a: np.ndarray) -> float:
    return float(np.mean(cv2.Laplacian(a.astype(np.float32), cv2.CV_32F) ** 2))


def unsharp(a: np.ndarray, amount: float = 3.0) -> np.ndarray:
    f = a.astype(np.float32)
    return np.clip(f + amount * (f - cv2.GaussianBlur(f, (0, 0), 2.0)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("face", [40, 100, 300])
def test_blur_leaves_no_detail_to_sharpen(face: int) -> None:
    # A face-sized patch of fine texture: after the blur, even strong sharpening finds ~nothing.
    rng = np.random.default_rng(4)
    size = face * 2 + 100
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (0, 0), 1.0)
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
    orig = img.copy()
    cfg = ObfuscationConfig(style="blur", shape="box", mask_scale=1.3)
    mask = Box.from_center(size / 2, size / 2, face * 1.3, face * 1.3)
    obfuscate(planes_from_bgr(img), [mask], cfg)
    x1, y1, x2, y2 = Box.from_center(size / 2, size / 2, face, face).int_bounds()
    before = hf_energy(orig[y1:y2, x1:x2])
    after = hf_energy(unsharp(img)[y1:y2, x1:x2])
    assert after < 0.03 * before, (before, after)
    # The test has teeth: a plain small Gaussian over the same area leaves detail to sharpen back.
    gauss = orig.copy()
    gauss[y1:y2, x1:x2] = cv2.GaussianBlur(orig, (0, 0), 2.0)[y1:y2, x1:x2]
    assert hf_energy(unsharp(gauss)[y1:y2, x1:x2]) > 0.1 * before
    # And no correlation left with the original's fine detail.
    hp_orig = orig[y1:y2, x1:x2].astype(np.float32) - cv2.GaussianBlur(orig, (0, 0), 1.5)[y1:y2, x1:x2]
    hp_sharp = (
        unsharp(img)[y1:y2, x1:x2].astype(np.float32) - cv2.GaussianBlur(img, (0, 0), 1.5)[y1:y2, x1:x2]
    )
    corr = np.corrcoef(hp_orig.ravel(), hp_sharp.ravel())[0, 1]
    assert abs(corr) < 0.1, corr


def test_pixelate_block_count() -> None:
    img = np.random.default_rng(5).integers(0, 256, (400, 400), dtype=np.uint8)
    cfg = ObfuscationConfig(style="pixelate", shape="box", pixel_blocks=8, mask_scale=1.0)
    obfuscate(planes_from_bgr(img), [Box(100, 100, 260, 260)], cfg)
    row = img[180, 100:260]
    changes = int(np.count_nonzero(np.diff(row.astype(int))))
    assert changes <= 8  # 8 blocks across the face: at most 7 edges (+1 for ties)


def test_solid_fill_values_yuv() -> None:
    planes, _ = planes_from_yuv420(noise_frame(320, 240))
    obfuscate(planes, [Box(100, 100, 200, 180)], ObfuscationConfig(style="solid", shape="box"))
    y, u, v = (p.data for p in planes.planes)
    assert (y[100:180, 100:200] == 16).all()
    assert (u[50:90, 50:100] == 128).all() and (v[50:90, 50:100] == 128).all()


def test_fill_zones_pixel_and_relative() -> None:
    planes, _ = planes_from_yuv420(noise_frame(320, 240))
    before = plane_arrays(planes)
    zones = [
        PrivacyZone(name="door", points=[(10, 10), (110, 10), (110, 60), (10, 60)]),
        PrivacyZone(name="window", points=[(0.5, 0.5), (1.0, 0.5), (1.0, 1.0)], relative=True),
    ]
    fill_zones(planes, zones)
    y, u, _v = (p.data for p in planes.planes)
    assert (y[10:60, 10:110] == 16).all()
    assert (u[5:30, 5:55] == 128).all()
    assert (y[235, 316:320] == 16).all()  # bottom-right corner of the triangle (its hypotenuse is x = y)
    assert np.array_equal(y[235, :300], before[0][235, :300])
    assert np.array_equal(y[70:110, :150], before[0][70:110, :150])
    assert np.array_equal(y[:8], before[0][:8])
    # Cached: the second call gives the same result on a fresh frame.
    planes2, _ = planes_from_yuv420(noise_frame(320, 240))
    fill_zones(planes2, zones)
    assert np.array_equal(planes2.planes[0].data == 16, planes.planes[0].data == 16)
    fill_zones(planes2, [])


def test_fill_zones_bgr() -> None:
    img = np.full((100, 100, 3), 200, np.uint8)
    fill_zones(planes_from_bgr(img), [PrivacyZone(points=[(0, 0), (0.5, 0), (0.5, 1)], relative=True)])
    assert (img[5, 4:49] == 0).all() and (img[95, 52:] == 200).all() and (img[95, :46] == 200).all()


@pytest.mark.parametrize("style", ["blur", "pixelate", "solid"])
@pytest.mark.parametrize("size", [(1280, 720), (321, 239)])
def test_obfuscate_whole_leaves_no_detail(style: str, size: tuple[int, int]) -> None:
    w, h = size
    src = noise_frame(w, h)
    planes, _ = planes_from_yuv420(src)
    before = plane_arrays(planes)
    obfuscate_whole(planes, ObfuscationConfig(style=style))  # type: ignore[arg-type]
    for a, p in zip(before, planes.planes, strict=True):
        d = p.data
        # Changed nearly everywhere, and at most 16 blocks along any row (~16 * h / w down a column).
        assert np.mean(a != d) > 0.9
        assert max(int(np.count_nonzero(np.diff(r.astype(int)))) for r in d) <= 15
        assert max(int(np.count_nonzero(np.diff(c.astype(int)))) for c in d.T) <= round(16 * h / w) - 1
    if style == "solid":
        assert (planes.planes[0].data == 16).all()


def test_obfuscate_whole_bgr() -> None:
    img = np.random.default_rng(6).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    obfuscate_whole(planes_from_bgr(img), ObfuscationConfig())
    assert max(int(np.count_nonzero(np.diff(r.astype(int)))) for r in img[:, :, 1]) <= 15


# --- the detector can no longer find an obfuscated face (needs detect.py's models; skips without) ---


@pytest.fixture(scope="module")
def detector_and_photo() -> tuple[object, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    try:
        from streamproxy.config import DetectorConfig, default_model_dir
        from streamproxy.engine.detect import create_detector
        from streamproxy.engine.models import ModelError
    except ImportError as e:
        pytest.skip(f"detector unavailable: {e}")
    try:
        det = create_detector(DetectorConfig(model_dir=default_model_dir(), threads=1, threshold=0.4))
    except (ModelError, OSError) as e:
        pytest.skip(f"models not fetched: {e}")
    photo = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    return det, photo


@pytest.mark.parametrize("style", ["blur", "pixelate"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_detector_finds_no_face_after_obfuscation(
    detector_and_photo: tuple[object, np.ndarray], style: str, scale: float
) -> None:
    det, photo = detector_and_photo
    img = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    face = Box(180, 62, 270, 176).mapped(scale, scale)
    found = det.detect_bgr(img)  # type: ignore[attr-defined]
    assert any(d.box.iou(face) > 0.3 for d in found), "sanity: the face is found before obfuscation"
    cfg = ObfuscationConfig(style=style)  # type: ignore[arg-type]
    obfuscate(planes_from_bgr(img), [face.scaled(cfg.mask_scale)], cfg)
    for test_img in (img, unsharp(img)):
        left = [d for d in det.detect_bgr(test_img) if d.box.intersection(face) > 0.3 * face.area]  # type: ignore[attr-defined]
        assert left == [], left
