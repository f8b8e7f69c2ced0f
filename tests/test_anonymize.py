"""`streamproxy anonymize` end to end: real files in, anonymized files out, the batch survives bad files."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from facekit import background, changed_fraction, make_video, paste_face

from streamproxy.anonymize import (
    HELPER_NICE,
    PICTURE_EVERY_S,
    Batch,
    FileResult,
    Job,
    Progress,
    _encoder_threads,
    _Stages,
    clock_text,
    collect_jobs,
    describe_error,
    distinct_faces,
    iter_results,
    progress_text,
)
from streamproxy.config import DetectorConfig, EngineConfig
from streamproxy.engine.detect import create_detector
from streamproxy.types import Box

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


def test_video_keeps_resolution_rate_frames_and_audio_when_asked(tmp_path: Path, detector: object) -> None:
    src = tmp_path / "clip.mp4"
    boxes = make_video(src, frames=30)
    out = tmp_path / "out"
    r = run_cli("anonymize", src, "-o", out, "--style", "pixelate", "--keep-audio", "-q")
    assert r.returncode == 0, r.stderr
    assert "audio kept in 1 video(s)" in r.stderr and "--keep-audio keeps it" not in r.stderr
    assert json.loads((out / "clip.mp4.audit.json").read_text())["audio"] == "kept"
    dst = out / "clip.mp4"
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert (vb.width, vb.height) == (va.width, va.height)
        assert vb.average_rate == va.average_rate == Fraction(25)
        assert len(b.streams.audio) == 1
        fa = [f.to_ndarray(format="bgr24", threads=1) for f in a.decode(video=0)]
    with av.open(str(dst)) as b:
        fb = [f.to_ndarray(format="bgr24", threads=1) for f in b.decode(video=0)]
    assert len(fb) == len(fa) == 30
    for i, (x, y) in enumerate(zip(fa, fb, strict=True)):
        assert changed_fraction(x, y, boxes[i]) > 0.8, f"frame {i}"
        assert detector.detect_bgr(y) == [], f"face detectable in output frame {i}"  # type: ignore[attr-defined]


def test_audio_is_removed_by_default_and_no_audio_is_still_accepted(tmp_path: Path) -> None:
    """Speech is personal data: audio goes unless --keep-audio; old scripts' --no-audio still runs."""
    src = tmp_path / "clip.mkv"
    make_video(src, frames=10)
    for flags in ([], ["--no-audio"]):
        out = tmp_path / f"out{len(flags)}"
        r = run_cli("anonymize", src, "-o", out, *flags, "-q")
        assert r.returncode == 0, r.stderr
        assert "audio removed from 1 video(s); --keep-audio keeps it" in r.stderr
        with av.open(str(out / "clip.mkv")) as b:
            assert not b.streams.audio and len(b.streams.video) == 1
        record = json.loads((out / "clip.mkv.audit.json").read_text())
        assert record["audio"] == "removed" and record["settings"]["audio"] == "removed"


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
        frames = [f.to_ndarray(format="bgr24", threads=1) for f in b.decode(video=0)]
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


# --- Batch: the engine the CLI and the Files page share ---------------------------------------------


def small_cfg(model_dir: Path, **extra: object) -> EngineConfig:
    return EngineConfig.model_validate(
        {"detector": {"model_dir": str(model_dir), "input_width": 640}, **extra}
    )


def test_batch_cancel_stops_the_file_and_leaves_nothing_then_runs_the_next(
    tmp_path: Path, model_dir: Path
) -> None:
    src = tmp_path / "clip.mp4"
    make_video(src, frames=60)
    batch = Batch(small_cfg(model_dir), audit=True)
    cancel = threading.Event()
    seen: list[int] = []

    def on_frame(n: int) -> None:
        seen.append(n)
        if n == 10:
            cancel.set()

    dst = tmp_path / "out" / "clip.mp4"
    res = batch.run(Job(src, dst, "video"), cancel=cancel, on_frame=on_frame)
    assert (res.ok, res.cancelled, res.error, res.dst) == (False, True, "cancelled", None)
    assert seen == list(range(1, 11)), "stopped at the frame after the cancel"
    assert not dst.exists() and not list((tmp_path / "out").iterdir()), "no output, no temporary file"
    assert res.audit is not None and res.audit["state"] == "cancelled" and res.audit["output"] is None
    # The same batch goes on with the next file, its detector as it was.
    res = batch.run(Job(src, dst, "video"), on_frame=seen.append)
    assert res.ok and res.frames == 60 and seen[-1] == 60
    assert sorted(p.name for p in dst.parent.iterdir()) == ["clip.mp4", "clip.mp4.audit.json"]
    # A cancel set before the run: nothing is read.
    cancel.set()
    res = batch.run(Job(src, tmp_path / "o2" / "clip.mp4", "video"), cancel=cancel)
    assert res.cancelled and not (tmp_path / "o2").exists()


def test_any_exception_inside_a_video_removes_its_temporary_output(tmp_path: Path, model_dir: Path) -> None:
    """Ctrl+C's KeyboardInterrupt (and anything else) in the middle of a video: no `.part` left."""
    src = tmp_path / "clip.mp4"
    make_video(src, frames=80, audio=False)
    batch = Batch(small_cfg(model_dir), audit=False)
    out = tmp_path / "out"
    at: list[int] = []

    def interrupt(n: int) -> None:
        # Once the temporary output is on disk (the muxer writes it at the encoder's first packet).
        if list(out.glob(".*part*")):
            at.append(n)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.run(Job(src, out / "clip.mp4", "video"), on_frame=interrupt)
    assert at and at[0] < 80, "interrupted in the middle of the video"
    assert not list(out.iterdir())
    assert threading.active_count() < 20, "the decode/encode/detection threads were joined"


def test_pictures_are_anonymized_frames_first_then_at_most_one_a_second(
    tmp_path: Path, model_dir: Path, detector: object
) -> None:
    src = tmp_path / "clip.mp4"
    make_video(src, frames=40, audio=False)
    batch = Batch(small_cfg(model_dir), audit=False)
    pictures: list[tuple[float, np.ndarray]] = []
    t0 = time.monotonic()
    res = batch.run(Job(src, tmp_path / "o" / "clip.mp4", "video"),
                    on_picture=lambda bgr: pictures.append((time.monotonic(), bgr.copy())))  # fmt: skip
    took = time.monotonic() - t0
    assert res.ok and pictures
    assert len(pictures) <= 1 + took / PICTURE_EVERY_S + 1
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(pictures)]
    assert all(g >= PICTURE_EVERY_S * 0.99 for g in gaps), gaps
    for _, bgr in pictures:
        assert bgr.shape == (360, 640, 3) and bgr.dtype == np.uint8
        assert detector.detect_bgr(bgr) == [], "a picture shows a face"  # type: ignore[attr-defined]
    # A photo: one picture, the output as written.
    img = background(480, 360)
    paste_face(img, 150, 60, 140)
    cv2.imwrite(str(tmp_path / "p.png"), img)
    shots: list[np.ndarray] = []
    res = batch.run(Job(tmp_path / "p.png", tmp_path / "o" / "p.png", "image"), on_picture=shots.append)
    assert res.ok and len(shots) == 1
    written = cv2.imread(str(tmp_path / "o" / "p.png"))
    assert written is not None and np.array_equal(shots[0], written)


def test_two_batches_in_two_threads_share_no_detector_state(tmp_path: Path, model_dir: Path) -> None:
    """The Files page runs a batch in its worker thread while the CLI may run another: same outputs
    as one batch alone."""
    src = tmp_path / "clip.mp4"
    make_video(src, frames=20, audio=False)
    img = background(480, 360)
    paste_face(img, 150, 60, 140)
    cv2.imwrite(str(tmp_path / "p.png"), img)

    def decoded(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as c:
            return [f.to_ndarray(format="bgr24", threads=1) for f in c.decode(video=0)]

    solo = Batch(small_cfg(model_dir), audit=False)
    assert solo.run(Job(src, tmp_path / "solo" / "clip.mp4", "video")).ok
    results: dict[str, list[FileResult]] = {}

    def work(name: str, first: str) -> None:
        batch = Batch(small_cfg(model_dir), audit=False)
        jobs = [
            Job(src, tmp_path / name / "clip.mp4", "video"),
            Job(tmp_path / "p.png", tmp_path / name / "p.png", "image"),
        ]
        results[name] = [batch.run(j) for j in (jobs if first == "video" else jobs[::-1])]

    threads = [threading.Thread(target=work, args=(n, f)) for n, f in (("a", "video"), ("b", "image"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert all(r.ok for rs in results.values() for r in rs), results
    want = decoded(tmp_path / "solo" / "clip.mp4")
    for name in ("a", "b"):
        got = decoded(tmp_path / name / "clip.mp4")
        assert len(got) == len(want) and all(np.array_equal(x, y) for x, y in zip(got, want, strict=True))
    assert (tmp_path / "a" / "p.png").read_bytes() == (tmp_path / "b" / "p.png").read_bytes()


def test_one_face_in_a_photo_counts_one_whatever_the_passes_found(tmp_path: Path, model_dir: Path) -> None:
    """A large face: the magnified passes also find its eyes and mouth as faces (all masked, inside the
    face's mask); the photo has one face, and that is what is counted."""
    img = background(800, 600)
    paste_face(img, 20, 20, 600)
    src = tmp_path / "big.png"
    cv2.imwrite(str(src), img)
    batch = Batch(small_cfg(model_dir), audit=True)
    res = batch.run(Job(src, tmp_path / "o" / "big.png", "image"))
    assert res.ok and (res.faces, res.tracks) == (1, 1)
    assert res.audit is not None and res.audit["found"]["faces"] == 1
    boxes = [Box(10, 10, 110, 110), Box(30, 30, 60, 60), Box(70, 40, 100, 70), Box(300, 10, 400, 110)]
    assert distinct_faces(boxes) == 2 and distinct_faces([]) == 0


def test_errors_in_words(tmp_path: Path, model_dir: Path) -> None:
    batch = Batch(small_cfg(model_dir), audit=False)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(20000))
    sound = tmp_path / "voice.m4a"
    with av.open(str(sound), "w") as c:
        s = c.add_stream("aac", rate=48000)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 48000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    out = tmp_path / "out"
    errors = {p.name: batch.run(Job(p, out / p.name, k)).error for p, k in
              ((corrupt, "video"), (sound, "video"), (text, "image"))}  # fmt: skip
    assert errors == {
        "corrupt.mp4": "not a video file that can be read (damaged, incomplete, or another kind of file)",
        "voice.m4a": "no video in this file",
        "notes.jpg": "not a picture that can be read (damaged, incomplete, or another kind of file)",
    }
    assert not out.exists() or not list(out.rglob("*"))
    job = Job(corrupt, out / "corrupt.mp4", "video")
    assert describe_error(PermissionError(13, "Permission denied", str(corrupt)), job) == (
        "cannot read the file (permission denied)"
    )
    assert "cannot write the output" in describe_error(PermissionError(13, "denied", str(out / "x")), job)
    if os.geteuid() != 0:  # root reads anything: the real check only as a user
        corrupt.chmod(0)
        assert batch.run(job).error == "cannot read the file (permission denied)"


def test_progress_rate_and_time_left_from_the_first_frame() -> None:
    now = [100.0]
    p = Progress(1000, clock=lambda: now[0])
    assert (p.fps, p.eta_s, p.done) == (0.0, None, 0)
    now[0] += 30.0  # model loading and probing: not frames
    p.advance()
    now[0] += 1.0
    p.advance(20)
    assert p.fps == pytest.approx(20.0) and p.eta_s is None, "ETA -- until 2 s of measurement"
    now[0] += 1.0
    p.advance(20)
    assert p.fps == pytest.approx(20.0) and p.eta_s == pytest.approx((1000 - 41) / 20)
    p.total = 500  # a file's real frame count replaced the estimate
    assert p.eta_s == pytest.approx((500 - 41) / 20)
    assert progress_text(3, 10, p, "clip.mp4") == "file 3/10  41/500 frames  20.0 frame/s  ETA 0:23  clip.mp4"
    assert [clock_text(s) for s in (0, 161, 3723)] == ["0:00", "2:41", "1:02:03"]
