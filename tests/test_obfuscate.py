"""Obfuscation on yuv420p and BGR planes: only mask pixels change, and what is hidden stays hidden."""

from __future__ import annotations

import functools
import itertools
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from streamproxy.config import MAX_SAMPLES_ACROSS_FACE, MIN_BLUR_STRENGTH, ObfuscationConfig, PrivacyZone
from streamproxy.engine import obfuscate as obfuscate_module
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
    cfg = ObfuscationConfig(style=style, shape=shape)
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
    obfuscate(planes, masks, ObfuscationConfig(style=style, shape=shape))
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
        obfuscate(planes, [], ObfuscationConfig(style=style))
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
    cfg = ObfuscationConfig(style="pixelate", shape="box", pixel_blocks=4, mask_scale=1.0)
    obfuscate(planes_from_bgr(img), [Box(100, 100, 260, 260)], cfg)
    row = img[180, 100:260]
    changes = int(np.count_nonzero(np.diff(row.astype(int))))
    assert changes <= 4  # 4 blocks across the face: at most 3 edges (+1 for ties)


# --- a face matcher's view: how many independent samples across the face survive -----------------
# The re-identification benchmark (bench/reid.py: dlib's face descriptor, 100 MB of weights, not a test
# dependency) found that at most MAX_SAMPLES_ACROSS_FACE samples across a face keep it from being
# re-identified. What the matcher feeds on is the face's detail at the scale of its features; here, on a
# real face photo, the detail band at k samples across the face (a difference of Gaussians with sigma
# = face / 2k) is compared between the original and the obfuscated face: the finest k at which they still
# correlate (>= 0.5) is what survives. It must be <= MAX_SAMPLES_ACROSS_FACE for every style at every
# allowed extreme; the old bounds (32 blocks, blur down to 5-6 samples) fail it.

SAMPLE_BANDS = (2, 3, 4, 5, 6, 8, 12, 16, 24)


def samples_kept(orig: np.ndarray, obf: np.ndarray, face: Box) -> int:
    """The finest band (samples across the face) whose detail still correlates >= 0.5 with the original's."""
    # Around the face only (the widest Gaussian reaches a face width), inside it the inner 80 % (the
    # mask's own edge is not the face's detail).
    h, w = orig.shape
    cx1, cy1, cx2, cy2 = face.scaled(3.0).clipped(w, h).int_bounds()
    x1, y1, x2, y2 = face.scaled(0.8).mapped(1.0, 1.0, -cx1, -cy1).int_bounds()
    crops = [im[cy1:cy2, cx1:cx2].astype(np.float32) for im in (orig, obf)]
    kept = 0
    for k in SAMPLE_BANDS:
        s = face.width / (2.0 * k)
        a, b = (
            (cv2.GaussianBlur(c, (0, 0), s / 1.6) - cv2.GaussianBlur(c, (0, 0), s))[y1:y2, x1:x2].ravel()
            for c in crops
        )
        if np.std(b) > 1e-3 and np.corrcoef(a, b)[0, 1] >= 0.5:
            kept = k
    return kept


@functools.lru_cache(maxsize=4)
def _astronaut_gray(scale: float) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    gray = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)


def astronaut_gray(scale: float) -> tuple[np.ndarray, Box]:
    # A copy (callers obfuscate theirs) and the face box (both detectors agree on it).
    return _astronaut_gray(scale).copy(), Box(180, 62, 270, 176).mapped(scale, scale)


EXTREMES = [
    {"style": "blur", "blur_strength": MIN_BLUR_STRENGTH},
    {"style": "blur", "blur_strength": 0.5},
    {"style": "blur", "blur_strength": 2.0},
    {"style": "pixelate", "pixel_blocks": MAX_SAMPLES_ACROSS_FACE},
    {"style": "pixelate", "pixel_blocks": 3},
    {"style": "solid"},
]


@pytest.mark.parametrize("settings", EXTREMES, ids=lambda d: "-".join(str(v) for v in d.values()))
@pytest.mark.parametrize("mask_scale", [1.0, 1.3, 3.0])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_no_style_keeps_more_samples_across_the_face_than_the_matcher_allows(
    settings: dict[str, object], mask_scale: float, shape: str, scale: float
) -> None:
    img, face = astronaut_gray(scale)
    assert samples_kept(img, img, face) == SAMPLE_BANDS[-1]  # sanity: the face itself keeps every band
    cfg = ObfuscationConfig.model_validate({**settings, "mask_scale": mask_scale, "shape": shape})
    out = img.copy()
    obfuscate(planes_from_bgr(out), [face.scaled(cfg.box_factor)], cfg)
    assert samples_kept(img, out, face) <= MAX_SAMPLES_ACROSS_FACE


@pytest.mark.parametrize(
    ("settings", "kept_at_least"),
    [({"style": "pixelate", "pixel_blocks": 32}, 16), ({"style": "pixelate", "pixel_blocks": 8}, 6),
     ({"style": "blur", "blur_strength": 0.2}, 5)],
)  # fmt: skip
def test_the_old_bounds_keep_more_samples(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, object], kept_at_least: int
) -> None:
    # The measure above has teeth: with the clamps lifted, the settings the config allowed before keep
    # more than MAX_SAMPLES_ACROSS_FACE samples of the face's detail (8 blocks: the old default).
    monkeypatch.setattr(obfuscate_module, "MAX_SAMPLES_ACROSS_FACE", 64)
    monkeypatch.setattr(obfuscate_module, "BLUR_MAX_SAMPLES", 6.0)
    img, face = astronaut_gray(1.0)
    cfg = ObfuscationConfig.model_construct(
        **{**ObfuscationConfig().model_dump(), **settings, "mask_scale": 1.0}
    )
    out = img.copy()
    obfuscate(planes_from_bgr(out), [face.scaled(cfg.box_factor)], cfg)
    assert samples_kept(img, out, face) >= kept_at_least > MAX_SAMPLES_ACROSS_FACE


def test_clamps_hold_for_configs_built_without_validation() -> None:
    # engine/text.py and others build configs with model_copy (no validation): obfuscate() itself
    # never samples a face finer than the bound.
    img, face = astronaut_gray(1.0)
    cfg = ObfuscationConfig().model_copy(update={"style": "pixelate", "pixel_blocks": 32, "mask_scale": 1.0})
    out = img.copy()
    obfuscate(planes_from_bgr(out), [face], cfg)
    assert samples_kept(img, out, face) <= MAX_SAMPLES_ACROSS_FACE


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
    obfuscate_whole(planes, ObfuscationConfig(style=style))
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
    cfg = ObfuscationConfig(style=style)
    obfuscate(planes_from_bgr(img), [face.scaled(cfg.mask_scale)], cfg)
    for test_img in (img, unsharp(img)):
        left = [d for d in det.detect_bgr(test_img) if d.box.intersection(face) > 0.3 * face.area]  # type: ignore[attr-defined]
        assert left == [], left


@pytest.mark.parametrize("size", [(64, 48), (63, 47)], ids=["even", "odd"])
def test_writable_copy_is_the_frame_and_edits_land_in_the_copy(size: tuple[int, int]) -> None:
    """The re-render's one copy: the same pixels as the decoder's frame, planes over the NEW frame's
    buffers (what is obfuscated there is what is encoded), the decoder's frame untouched."""
    from streamproxy.engine.obfuscate import planes_from_yuv420, writable_copy

    w, h = size
    rng = np.random.default_rng(3)
    src = av.VideoFrame(w, h, "yuv420p")
    for plane in src.planes:
        plane.update(rng.integers(0, 255, plane.buffer_size, dtype=np.uint8).tobytes())
    src.pts = 7
    before = [bytes(p) for p in src.planes]
    planes, out = writable_copy(src)
    ref, _ = planes_from_yuv420(src)
    assert out.pts == 7 and (out.width, out.height) == (w, h)
    for mine, theirs in zip(planes.planes, ref.planes, strict=True):
        assert np.array_equal(mine.data, theirs.data)
    planes.planes[0].data[:4, :4] = 0
    assert np.all(out.to_ndarray(format="gray", threads=1)[:4, :4] == 0), "the edit is in the new frame"
    assert [bytes(p) for p in src.planes] == before, "the decoder's frame is never written to"


@pytest.mark.parametrize(
    ("src", "dst"), [((1280, 720), (640, 360)), ((1281, 721), (640, 360)), ((640, 480), (426, 320))],
    ids=["half", "odd-source", "two-thirds"],
)  # fmt: skip
def test_shrink_is_an_average_of_each_plane_like_swscale_area(
    src: tuple[int, int], dst: tuple[int, int]
) -> None:
    """The review proxy's and the sub stream's downscale: every plane averaged (a 2x2 cell of a
    halving is its mean, to the rounding), the picture swscale's AREA gives to a few levels, the
    timing and range kept, the source untouched."""
    from streamproxy.engine.obfuscate import _plane_sizes, shrink_yuv420

    w, h = src
    rng = np.random.default_rng(5)
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, (pw, ph) in zip(frame.planes, _plane_sizes(w, h), strict=True):
        # Smooth ramps plus noise: a picture, not only noise (where both would average to grey).
        yy, xx = np.mgrid[0:ph, 0:pw]
        pic = (xx * 255 // max(1, pw - 1) + yy * 97 // max(1, ph - 1)) % 256
        pic = np.clip(pic + rng.integers(-20, 21, pic.shape), 0, 255).astype(np.uint8)
        obfuscate_module._plane_view(plane, pw, ph)[:] = pic
    frame.pts, frame.time_base, frame.color_range = 9, Fraction(1, 25), 2
    before = [bytes(p) for p in frame.planes]

    small = shrink_yuv420(frame, *dst)
    assert (small.width, small.height, small.format.name) == (*dst, "yuv420p")
    assert (small.pts, small.time_base, small.color_range) == (9, Fraction(1, 25), 2)
    assert [bytes(p) for p in frame.planes] == before
    mine = small.to_ndarray().astype(int)
    theirs = frame.reformat(
        width=dst[0], height=dst[1], format="yuv420p", interpolation="AREA", threads=1
    ).to_ndarray()
    diff = np.abs(mine - theirs.astype(int))
    assert diff.max() <= 8 and diff.mean() < 0.5, (diff.max(), diff.mean())
    if src == (1280, 720):
        y = obfuscate_module._plane_view(frame.planes[0], w, h).astype(float)
        cells = (y[0::2, 0::2] + y[1::2, 0::2] + y[0::2, 1::2] + y[1::2, 1::2]) / 4
        assert np.abs(mine[:360] - cells).max() <= 0.5 + 1e-9


def test_shrink_of_other_formats_goes_through_swscale() -> None:
    """A frame that is not yuv420p (here full-range yuvj420p and rgb24) still comes out yuv420p at the size asked."""
    from streamproxy.engine.obfuscate import shrink_yuv420

    for fmt in ("yuvj420p", "rgb24"):
        frame = noise_frame(320, 240).reformat(format=fmt, threads=1)
        small = shrink_yuv420(frame, 160, 120)
        assert (small.width, small.height, small.format.name) == (160, 120, "yuv420p")
