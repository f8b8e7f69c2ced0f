"""`streamproxy anonymize` end to end: real files in, anonymized files out, the batch survives bad files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from facekit import background, changed_fraction, make_video, paste_face

from streamproxy.anonymize import HELPER_NICE, Job, _encoder_threads, _Stages, collect_jobs, iter_results
from streamproxy.config import DetectorConfig, EngineConfig
from streamproxy.engine.detect import create_detector

CLI = [sys.executable, "-m", "streamproxy.cli"]


def run_cli(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def detector(model_dir: Path) -> object:
    return create_detector(DetectorConfig(model_dir=model_dir, input_width=640))


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    img = background(480, 360)
    paste_face(img, 150, 60, 140)
    for ext in ("jpg", "png", "webp", "bmp", "tiff"):
        cv2.imwrite(str(src / f"face.{ext}"), img)
    cv2.imwrite(str(src / "sub" / "deep.png"), img)
    (src / "notes.txt").write_text("not media, skipped when walking folders")
    return src


def test_images_keep_format_size_and_layout_and_lose_faces(
    inputs: Path, tmp_path: Path, detector: object
) -> None:
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()}
    r = run_cli("anonymize", inputs, "--output", out, "-q")
    assert r.returncode == 0, r.stderr
    assert "6 file(s) anonymized, 0 failed" in r.stderr
    for name in ("face.jpg", "face.png", "face.webp", "face.bmp", "face.tiff", "sub/deep.png"):
        o = out / "in" / name
        assert o.exists(), f"{o} missing"
        img = cv2.imread(str(o))
        assert img is not None, "the written image reads back"
        assert img.shape == (360, 480, 3)
        assert detector.detect_bgr(img) == [], f"a face is still detectable in {name}"  # type: ignore[attr-defined]
    assert not (out / "in" / "notes.txt").exists()
    # Inputs untouched.
    assert {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()} == before


def test_video_keeps_resolution_rate_frames_and_audio(tmp_path: Path, detector: object) -> None:
    src = tmp_path / "clip.mp4"
    boxes = make_video(src, frames=30)
    out = tmp_path / "out"
    r = run_cli("anonymize", src, "-o", out, "--style", "pixelate", "-q")
    assert r.returncode == 0, r.stderr
    dst = out / "clip.mp4"
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert (vb.width, vb.height) == (va.width, va.height)
        assert vb.average_rate == va.average_rate == Fraction(25)
        assert len(b.streams.audio) == 1
        fa = [f.to_ndarray(format="bgr24") for f in a.decode(video=0)]
    with av.open(str(dst)) as b:
        fb = [f.to_ndarray(format="bgr24") for f in b.decode(video=0)]
    assert len(fb) == len(fa) == 30
    for i, (x, y) in enumerate(zip(fa, fb, strict=True)):
        assert changed_fraction(x, y, boxes[i]) > 0.8, f"frame {i}"
        assert detector.detect_bgr(y) == [], f"face detectable in output frame {i}"  # type: ignore[attr-defined]


def test_no_audio_flag(tmp_path: Path) -> None:
    src = tmp_path / "clip.mkv"
    make_video(src, frames=10)
    r = run_cli("anonymize", src, "-o", tmp_path / "out", "--no-audio", "-q")
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "out" / "clip.mkv")) as b:
        assert not b.streams.audio and len(b.streams.video) == 1


def test_bad_file_is_reported_and_the_batch_goes_on(inputs: Path, tmp_path: Path) -> None:
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (inputs / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    r = run_cli("anonymize", inputs, tmp_path / "does-not-exist", "-o", tmp_path / "out", "-q")
    assert r.returncode == 1
    assert "broken.jpg" in r.stderr and "broken.mp4" in r.stderr and "does-not-exist" in r.stderr
    assert "6 file(s) anonymized, 3 failed" in r.stderr
    assert (tmp_path / "out" / "in" / "face.png").exists()
    assert not (tmp_path / "out" / "in" / "broken.jpg").exists()
    assert not list((tmp_path / "out").rglob(".*part*")), "no half-written outputs"


def test_never_overwrites_the_input(tmp_path: Path) -> None:
    img = background(64, 64)
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), img)
    orig = p.read_bytes()
    r = run_cli("anonymize", p, "-o", tmp_path, "-q")
    assert r.returncode == 1 and "overwrite the input" in r.stderr
    assert p.read_bytes() == orig


def test_missing_model_names_the_fix(tmp_path: Path) -> None:
    img = background(64, 64)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    r = run_cli(
        "anonymize", tmp_path / "a.png", "-o", tmp_path / "o", "--model-dir", tmp_path / "nomodels", "-q"
    )
    assert r.returncode == 2 and "streamproxy models fetch" in r.stderr


def test_fail_closed_with_a_detector_that_raises(inputs: Path, tmp_path: Path, detector: object) -> None:
    class Broken:
        input_width = 640
        last_ms = 0.0

        def detect_bgr(self, img: np.ndarray) -> list:
            raise RuntimeError("broken on purpose")

        def detect_frame(self, frame: object) -> list:
            raise RuntimeError("broken on purpose")

    video = tmp_path / "v.mp4"
    boxes = make_video(video, frames=8, audio=False)
    jobs, errors = collect_jobs([inputs / "face.png", video], tmp_path / "out")
    assert not errors
    results = list(iter_results(jobs, EngineConfig(), detector=Broken()))  # type: ignore[arg-type]
    assert all(r.ok for r in results)
    assert [r.fail_closed_frames for r in results] == [1, 8]
    src_img = cv2.imread(str(inputs / "face.png"))
    assert src_img is not None, "the written image reads back"
    out_img = cv2.imread(str(tmp_path / "out" / "face.png"))
    assert out_img is not None, "the written image reads back"
    assert changed_fraction(src_img, out_img, paste_face(background(480, 360), 150, 60, 140)) > 0.9
    with av.open(str(tmp_path / "out" / "v.mp4")) as b:
        frames = [f.to_ndarray(format="bgr24") for f in b.decode(video=0)]
    assert len(frames) == 8
    for f in frames:
        assert detector.detect_bgr(f) == []  # type: ignore[attr-defined]
    del boxes


def test_layout_is_cp_r(tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir(parents=True)
    for rel in ("d/a.jpg", "d/x/b.png", "c.png"):
        cv2.imwrite(str(tmp_path / rel), background(32, 32))
    jobs, errors = collect_jobs([tmp_path / "d", tmp_path / "c.png"], tmp_path / "o")
    assert not errors
    assert sorted(str(j.dst.relative_to(tmp_path / "o")) for j in jobs) == ["c.png", "d/a.jpg", "d/x/b.png"]
    assert all(isinstance(j, Job) for j in jobs)


def test_exif_rotated_photo_is_searched_upright(tmp_path: Path, detector: object) -> None:
    """A phone photo stored sideways with an EXIF orientation: the face is found as people see it."""
    import io

    from PIL import Image

    upright_img = background(480, 360)
    box = paste_face(upright_img, 170, 60, 140)
    stored = np.ascontiguousarray(np.rot90(upright_img, 1))  # orientation 6 = "rotate 90 CW to display"
    im = Image.fromarray(stored[:, :, ::-1])
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    src = tmp_path / "phone.jpg"
    src.write_bytes(buf.getvalue())
    r = run_cli("anonymize", src, "-o", tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    out = cv2.imread(str(tmp_path / "out" / "phone.jpg"), cv2.IMREAD_UNCHANGED)
    assert out is not None, "the written image reads back"
    assert out.shape == upright_img.shape  # written upright (EXIF, with its GPS and serials, is not copied)
    assert changed_fraction(upright_img, out, box, tol=12) > 0.8
    assert detector.detect_bgr(out) == []  # type: ignore[attr-defined]
    with Image.open(tmp_path / "out" / "phone.jpg") as o:
        assert o.getexif().get(0x0112) is None


def test_one_x264_thread_up_to_1080p_and_the_codecs_own_threads_above() -> None:
    assert _encoder_threads("libx264", 1280, 720) == 1 and _encoder_threads("libx264", 1920, 1080) == 1
    assert _encoder_threads("libx264", 3840, 2160) == 0
    assert _encoder_threads("libx265", 1280, 720) == 0 and _encoder_threads("libvpx-vp9", 640, 360) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_decode_and_encode_threads_run_below_the_engine() -> None:
    """Detection is what every frame waits for: the helper threads (and the codec threads they
    start) yield the CPU to it."""
    seen: dict[str, int] = {}

    def record(name: str) -> None:
        seen[name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    stages = _Stages()
    engine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with stages.running(lambda: record("decode"), lambda: record("encode")):
        assert stages.get(stages.decoded) is None  # the producer ended
    assert seen == {"decode": min(19, engine + HELPER_NICE), "encode": min(19, engine + HELPER_NICE)}
    assert (
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == engine
    )  # the engine's own is untouched
