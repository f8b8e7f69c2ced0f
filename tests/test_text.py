"""objects: [faces, plates]: the text detector (PP-OCRv4 DB), text masks in stills and videos, fail closed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from facekit import changed_fraction

from streamproxy.anonymize import collect_jobs, iter_results
from streamproxy.config import ConfigError, EngineConfig, load_config
from streamproxy.engine.models import MODELS, ModelError, model_path
from streamproxy.engine.text import MODEL, TextDetector, TextMasker, create_text_detector
from streamproxy.types import Box, Detection

CLI = [sys.executable, "-m", "streamproxy.cli"]
PLATE_TEXT = "AB12 CDE"
W, H = 640, 360


def run_cli(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def textured(width: int = W, height: int = H, seed: int = 1) -> np.ndarray:
    """Blocky coloured texture: busy like a street, no text in it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (height // 10, width // 10, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def draw_plate(img: np.ndarray, x: int, y: int) -> Box:
    """Big black text on a white plate with its left-top at (x, y); returns the ink's bounding box."""
    cv2.rectangle(img, (x, y), (x + 240, y + 60), (255, 255, 255), -1)
    cv2.putText(img, PLATE_TEXT, (x + 12, y + 47), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (0, 0, 0), 4, cv2.LINE_AA)
    roi = img[y : y + 60, x : x + 240]
    ys, xs = np.nonzero(roi.max(axis=2) < 128)
    return Box(float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1))


def hf_energy(img: np.ndarray, box: Box) -> float:
    """High-frequency energy in a region: the variance of the Laplacian (what makes text readable)."""
    x1, y1, x2, y2 = (int(v) for v in (box.x1, box.y1, box.x2, box.y2))
    grey = cv2.cvtColor(img[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def plates_cfg(**text: object) -> EngineConfig:
    # 640 px keeps the detector at ~0.2 s a run on a busy 2-core machine; the plate is large.
    return EngineConfig.model_validate(
        {
            "objects": ["faces", "plates"],
            "text": {"input_width": 640, **text},
            "detector": {"input_width": 640},
        }
    )


@pytest.fixture(scope="module")
def text_detector(model_dir: Path) -> TextDetector:
    return create_text_detector(plates_cfg())


def covers(det: Box, ink: Box) -> bool:
    return det.x1 <= ink.x1 and det.y1 <= ink.y1 and det.x2 >= ink.x2 and det.y2 >= ink.y2


# --- the model ---------------------------------------------------------------------------------


def test_model_is_pinned_and_hash_checked(model_dir: Path, tmp_path: Path) -> None:
    spec = MODELS[MODEL]
    assert spec.requirement == "rapidocr-onnxruntime==1.4.4"
    assert spec.path_in_wheel == "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
    assert spec.licence == "Apache-2.0" and spec.size == 4745517
    assert model_path(MODEL, model_dir).stat().st_size == spec.size  # fetched by `models fetch` (conftest)
    bad = tmp_path / "models"
    bad.mkdir()
    data = bytearray((model_dir / spec.filename).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other hash
    (bad / spec.filename).write_bytes(bytes(data))
    cfg = plates_cfg().model_copy(
        update={"detector": plates_cfg().detector.model_copy(update={"model_dir": bad})}
    )
    with pytest.raises(ModelError, match="SHA-256"):
        create_text_detector(cfg)
    with pytest.raises(ModelError, match="models fetch"):
        TextDetector(cfg.text, tmp_path / "empty")


# --- stills ------------------------------------------------------------------------------------


def test_detects_plate_text_in_image_pixels(text_detector: TextDetector) -> None:
    img = textured()
    ink = draw_plate(img, 200, 150)
    dets = text_detector.detect_bgr(img)
    assert any(covers(d.box, ink) for d in dets), dets
    # Coordinates are the picture's whatever the detector's size: the same picture at 2x.
    big = cv2.resize(img, (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    dets2 = text_detector.detect_bgr(big)
    assert any(d.box.iou(b.box.mapped(2.0, 2.0)) > 0.7 for d in dets2 for b in dets), (dets, dets2)
    # No text, no regions: the texture alone is not masked.
    assert text_detector.detect_bgr(textured(seed=2)) == []


def test_image_text_masked_only_with_plates(tmp_path: Path, model_dir: Path) -> None:
    img = textured()
    ink = draw_plate(img, 200, 150)
    src = tmp_path / "street.png"
    cv2.imwrite(str(src), img)
    energy = hf_energy(img, ink)

    jobs, _ = collect_jobs([src], tmp_path / "faces")
    (res,) = iter_results(jobs, EngineConfig.model_validate({"detector": {"input_width": 640}}))
    assert res.ok and res.text_regions == 0
    out = cv2.imread(str(tmp_path / "faces" / "street.png"))
    assert out is not None, "the written image reads back"
    assert changed_fraction(img, out, ink) == 0.0  # without plates the text is left as it is

    jobs, _ = collect_jobs([src], tmp_path / "plates")
    (res,) = iter_results(jobs, plates_cfg())
    assert res.ok and res.text_regions >= 1 and res.fail_closed_frames == 0
    out = cv2.imread(str(tmp_path / "plates" / "street.png"))
    assert out is not None, "the written image reads back"
    assert changed_fraction(img, out, ink) > 0.8
    assert hf_energy(out, ink) < energy / 20, (hf_energy(out, ink), energy)
    # The rest of the picture is left alone.
    far = Box(20, 20, 150, 120)
    assert changed_fraction(img, out, far) == 0.0


# --- videos ------------------------------------------------------------------------------------


def plate_video(path: Path, frames: int, step: int) -> list[Box]:
    """The plate moving `step` px a frame; returns the ink box of each frame (lossless-ish x264)."""
    inks = []
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "12", "preset": "ultrafast"}
        bg = textured()
        for i in range(frames):
            img = bg.copy()
            inks.append(draw_plate(img, 60 + i * step, 150))
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    return inks


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24", threads=1) for f in c.decode(video=0)]


def test_video_masks_text_in_every_frame_between_runs(tmp_path: Path, model_dir: Path) -> None:
    src = tmp_path / "plate.mp4"
    inks = plate_video(src, frames=23, step=6)  # 23: the last frames wait for the flush's run
    before = decode(src)
    jobs, _ = collect_jobs([src], tmp_path / "out")
    (res,) = iter_results(jobs, plates_cfg(detect_every=5))
    assert res.ok and res.frames == 23 and res.fail_closed_frames == 0
    after = decode(tmp_path / "out" / "plate.mp4")
    assert len(after) == 23
    for i, (b, a, ink) in enumerate(zip(before, after, inks, strict=True)):
        assert changed_fraction(b, a, ink, tol=8) > 0.8, f"frame {i}: plate not masked"
        assert hf_energy(a, ink) < hf_energy(b, ink) / 10, f"frame {i}: plate still sharp"


class _ScriptedDetector:
    """Stands in for TextDetector: the plate is at x0 + step * frame index (read from pts)."""

    def __init__(self, fail_at: set[int] | None = None) -> None:
        self.calls: list[int] = []
        self.fail_at = fail_at or set()
        self.last_ms = 0.0

    def box(self, i: int) -> Box:
        return Box(40.0 + 10 * i, 100.0, 140.0 + 10 * i, 130.0)

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        i = int(frame.pts or 0)
        self.calls.append(i)
        if i in self.fail_at:
            raise RuntimeError("broken on purpose")
        return [Detection(self.box(i), 0.9)]


def _frames(n: int) -> list[av.VideoFrame]:
    out = []
    rng = np.random.default_rng(3)
    for i in range(n):
        noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)  # every pixel changes when blurred
        f = av.VideoFrame.from_ndarray(noise, format="bgr24").reformat(format="yuv420p", threads=1)
        f.pts = i
        out.append(f)
    return out


def test_masker_interpolates_between_runs_and_keeps_order() -> None:
    det = _ScriptedDetector()
    masker = TextMasker(plates_cfg(detect_every=4, margin=0.1), det)  # type: ignore[arg-type]
    frames = _frames(14)
    outs = []
    for f in frames:
        got = masker.push(f, (f.pts or 0) / 25)
        assert len(masker._waiting) <= 3  # bounded look-ahead: detect_every - 1
        outs += got
    outs += masker.flush()
    assert det.calls == [0, 4, 8, 12, 13]  # the cadence, and the flush's run on the last frame
    assert [o.frame.pts for o in outs if o.frame is not None] == list(range(14))
    for i, (f, o) in enumerate(zip(frames, outs, strict=True)):
        assert o.frame is not None and not o.fail_closed
        a, b = f.to_ndarray(format="bgr24", threads=1), o.frame.to_ndarray(format="bgr24", threads=1)
        assert changed_fraction(a, b, det.box(i), tol=6) > 0.9, f"frame {i}: the moving text is not masked"


def test_broken_text_detector_fails_closed() -> None:
    det = _ScriptedDetector(fail_at={4})
    masker = TextMasker(plates_cfg(detect_every=4), det)  # type: ignore[arg-type]
    frames = _frames(10)
    outs = []
    for f in frames:
        outs += masker.push(f, (f.pts or 0) / 25)
    outs += masker.flush()
    # Run on 4 fails: 1..4 (waiting for it) are obfuscated whole; the detector then runs on every frame
    # until it works again (5), and the cadence resumes from there.
    assert [o.fail_closed for o in outs] == [False, True, True, True, True] + [False] * 5
    assert det.calls == [0, 4, 5, 9]
    assert masker.stats.fail_closed_frames == 4
    whole = Box(0, 0, 320, 240)
    for f, o in zip(frames[1:5], outs[1:5], strict=True):
        assert o.frame is not None
        assert (
            changed_fraction(
                f.to_ndarray(format="bgr24", threads=1),
                o.frame.to_ndarray(format="bgr24", threads=1),
                whole,
                6,
            )
            > 0.8
        )


def test_broken_text_detector_fails_closed_in_bulk(tmp_path: Path, model_dir: Path) -> None:
    class Broken:
        input_width = 640
        last_ms = 0.0

        def detect_bgr(self, img: np.ndarray) -> list[Detection]:
            raise RuntimeError("broken on purpose")

        def detect_frame(self, frame: object) -> list[Detection]:
            raise RuntimeError("broken on purpose")

    img = textured()
    draw_plate(img, 200, 150)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    video = tmp_path / "v.mp4"
    plate_video(video, frames=7, step=4)
    jobs, _ = collect_jobs([tmp_path / "a.png", video], tmp_path / "out")
    results = list(iter_results(jobs, plates_cfg(), text_detector=Broken()))  # type: ignore[arg-type]
    assert [r.ok for r in results] == [True, True]
    assert [r.fail_closed_frames for r in results] == [1, 7]
    out = cv2.imread(str(tmp_path / "out" / "a.png"))
    assert out is not None, "the written image reads back"
    assert changed_fraction(img, out, Box(0, 0, W, H), tol=6) > 0.8
    src, dst = decode(video), decode(tmp_path / "out" / "v.mp4")
    assert len(dst) == 7
    for a, b in zip(src, dst, strict=True):
        assert changed_fraction(a, b, Box(0, 0, W, H), tol=6) > 0.8


def test_missing_text_model_names_the_fix(tmp_path: Path, model_dir: Path) -> None:
    only_faces = tmp_path / "models"
    only_faces.mkdir()
    for name in ("yunet",):
        shutil.copy(model_path(name, model_dir), only_faces)
    cv2.imwrite(str(tmp_path / "a.png"), textured())
    r = run_cli("anonymize", tmp_path / "a.png", "-o", tmp_path / "o", "--model-dir", only_faces,
                "--objects", "faces,plates", "-q")  # fmt: skip
    assert r.returncode == 2 and "ppocr_det" in r.stderr and "streamproxy models fetch" in r.stderr


# --- config and command line -------------------------------------------------------------------


def _config(tmp_path: Path, engine: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(f"cameras:\n  - name: cam\n    url: rtsp://127.0.0.1:1/x\nengine:\n{engine}")
    return p


@pytest.mark.parametrize(
    ("engine", "needle"),
    [
        ("  objects: [plates]\n", 'engine.objects: must include "faces"'),
        ("  objects: [faces, cars]\n", "engine.objects"),
        ("  objects: [faces, faces]\n", "engine.objects: each object may be listed once"),
        ("  text:\n    detect_every: 0\n", "engine.text.detect_every"),
        ("  text:\n    colour: red\n", "engine.text.colour"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, engine: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_config(tmp_path, engine))
    assert needle in str(ei.value)


def test_cli_objects_errors_name_the_option(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), textured(64, 64))
    for value, needle in (("plates", "must include"), ("faces,cars", "'faces' or 'plates'")):
        r = run_cli("anonymize", tmp_path / "a.png", "-o", tmp_path / "o", "--objects", value, "-q")
        assert r.returncode == 2, r.stderr
        assert "--objects" in r.stderr and needle in r.stderr, r.stderr


def test_live_camera_with_plates_is_refused_with_the_measured_cost(tmp_path: Path, model_dir: Path) -> None:
    cfg = _config(tmp_path, f"  objects: [faces, plates]\n  detector:\n    model_dir: {model_dir}\n")
    load_config(cfg)  # valid as a config: bulk mode may use it
    r = run_cli("check-config", cfg)
    assert r.returncode == 1, r.stderr
    assert "cam: engine.objects" in r.stderr and "ms per run" in r.stderr and "bulk mode" in r.stderr, (
        r.stderr
    )
    ok = _config(tmp_path, f"  objects: [faces]\n  detector:\n    model_dir: {model_dir}\n")
    assert run_cli("check-config", ok).returncode == 0
