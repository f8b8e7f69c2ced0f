"""The audit record a DPO files: each file's and each job's, as JSON and as a printable page.

Hashes are checked against hashlib on the real files; the engine's records come from real runs
(a photo and a short video with the astronaut's face, tests/facekit.py)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import cv2
import pytest
from facekit import background, make_video, paste_face

from streamproxy import __version__
from streamproxy.anonymize import Batch, Job, audit_path
from streamproxy.config import EngineConfig
from streamproxy.engine.models import MODELS, model_path
from streamproxy.files.audit import (
    BAND_S,
    file_record,
    job_record,
    report_html,
    sha256_file,
    utc_iso,
    write_job_files,
)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_file_streams_a_file_larger_than_its_chunk(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    p.write_bytes(bytes(range(256)) * 9000)  # 2.3 MB: three 1 MiB reads
    assert sha256_file(p) == sha(p)


def test_times_are_iso_8601_utc() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00Z"
    assert utc_iso(61.9) == "1970-01-01T00:01:01Z"
    assert utc_iso(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    assert utc_iso(None) == "" and utc_iso("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"


def test_file_record_fields(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    src.write_bytes(b"input bytes")
    dst.write_bytes(b"output bytes, longer")
    bands = [
        {
            "start_s": 0.0,
            "end_s": 10.0,
            "frames": 250,
            "frames_with_faces": 200,
            "faces_masked": 300,
            "plates": 2,
        },
        {
            "start_s": 10.0,
            "end_s": 12.0,
            "frames": 50,
            "frames_with_faces": 0,
            "faces_masked": 0,
            "plates": 0,
        },
    ]
    r = file_record(src=src, dst=dst, kind="video", state="done", duration_s=12.0, frames=300,
                    models=[{"name": "yunet", "sha256": "ab"}], settings={"style": "blur"}, audio="removed",
                    faces=2, bands=bands, fail_closed={"detector_error": 3, "model_missing": 0},
                    user="dpo", started=0, finished=60)  # fmt: skip
    assert (r["tool"], r["version"], r["kind"], r["state"]) == ("streamproxy", __version__, "video", "done")
    assert r["input"] == {"name": "in.mp4", "size": 11, "sha256": sha(src)}
    assert r["output"] == {"name": "out.mp4", "size": 20, "sha256": sha(dst)}
    assert r["found"]["faces"] == 2 and r["found"]["face_masks"] == 300 and r["found"]["plates"] == 2
    assert r["found"]["frames_with_faces"] == 200 and r["found"]["bands"] == bands
    assert r["fail_closed"]["frames"] == 3 and r["fail_closed"]["reasons"] == {"detector_error": 3}
    assert "failed" in r["fail_closed"]["why"]["detector_error"]
    assert (r["user"], r["started"], r["finished"]) == ("dpo", "1970-01-01T00:00:00Z", "1970-01-01T00:01:00Z")
    assert str(tmp_path) not in json.dumps(r), "names only: no folder path travels with the record"
    # A failed file has no output; a vanished input is said, not raised.
    gone = file_record(src=tmp_path / "gone.jpg", dst=None, kind="image", state="failed", error="x")
    assert gone["output"] is None and gone["input"]["name"] == "gone.jpg" and gone["input"]["sha256"] is None


def test_job_record_totals_and_models_once(tmp_path: Path) -> None:
    a = {"state": "done", "frames": 1, "found": {"faces": 2, "plates": 0},
         "fail_closed": {"frames": 0}, "models": [{"name": "yunet", "sha256": "ab"}]}  # fmt: skip
    b = {"state": "done", "frames": 30, "found": {"faces": 1, "plates": 4},
         "fail_closed": {"frames": 2}, "models": [{"name": "yunet", "sha256": "ab"}]}  # fmt: skip
    c = {"input": {"name": "never.jpg"}, "state": "cancelled", "error": "cancelled"}  # what a manager knows
    j = job_record(7, "dpo", 0, 10, {"quality": "best"}, [a, b, c])
    assert j["job"] == 7 and j["user"] == "dpo" and j["started"] == "1970-01-01T00:00:00Z"
    assert j["models"] == [{"name": "yunet", "sha256": "ab"}]
    assert j["totals"] == {"files": 3, "states": {"done": 2, "cancelled": 1}, "faces": 3, "plates": 4,
                           "frames": 31, "fail_closed_frames": 2}  # fmt: skip
    js, page = write_job_files(tmp_path / "o", "anonymize-x", j)
    assert json.loads(js.read_text()) == j and page.read_text().startswith("<!DOCTYPE html>")
    assert not list((tmp_path / "o").glob(".*")), "no temporary file left"


def test_report_is_self_contained_printable_and_escaped(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script><img src=http://example.com/x.png>.jpg'
    src = tmp_path / "in.jpg"
    src.write_bytes(b"x")
    f = file_record(src=src, dst=None, kind="image", state="failed", error=evil, user=evil)
    f["input"]["name"] = evil
    page = report_html(job_record(None, evil, 0, 1, {"style": evil, "nested": {"list": [1, 2]}}, [f]))
    assert "<script" not in page and "<img" not in page and "<link" not in page
    assert not re.search(r"<[^>]*\b(src|href)\s*=", page), "no external asset, no link"
    assert "&lt;script&gt;" in page
    assert "@media print" in page and "nested.list" in page
    assert sha(src) in page and "1970-01-01T00:00:00Z" in page
    # What the Files page knows of a file that never ran, and settings of any shape, still render.
    assert "never.jpg" in report_html({"files": [{"input": {"name": "never.jpg"}, "state": "queued"}]})


@pytest.fixture
def photo_and_video(tmp_path: Path) -> tuple[Path, Path]:
    img = background(640, 480)
    paste_face(img, 200, 100, 180)
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), img)
    video = tmp_path / "in" / "clip.mp4"
    make_video(video, frames=30)
    return photo, video


def test_batch_writes_each_files_record_beside_its_output(
    tmp_path: Path, model_dir: Path, photo_and_video: tuple[Path, Path]
) -> None:
    photo, video = photo_and_video
    cfg = EngineConfig.model_validate({"detector": {"model_dir": str(model_dir), "input_width": 640}})
    batch = Batch(cfg, audit=True, user="dpo")
    out = tmp_path / "out"
    for src, kind in ((photo, "image"), (video, "video")):
        res = batch.run(Job(src, out / src.name, kind))
        assert res.ok, res.error
        assert res.audit is not None
        on_disk = json.loads(audit_path(out / src.name).read_text())
        assert on_disk == res.audit
        assert on_disk["input"]["sha256"] == sha(src) and on_disk["output"]["sha256"] == sha(out / src.name)
        assert on_disk["input"]["size"] == src.stat().st_size
        assert (
            on_disk["user"] == "dpo"
            and ISO_UTC.match(on_disk["started"])
            and ISO_UTC.match(on_disk["finished"])
        )
        assert on_disk["settings"] == batch.settings()
        face = next(m for m in on_disk["models"] if m["role"] == "faces")
        assert face["name"] == "yunet" and face["file"] == MODELS["yunet"].filename
        assert face["sha256"] == sha(model_path("yunet", model_dir)) == MODELS["yunet"].sha256
        assert face["loaded_sha256"] == MODELS["yunet"].dynamic_sha256
        assert on_disk["found"]["faces"] == 1, on_disk["found"]
        assert on_disk["fail_closed"] == {"frames": 0, "reasons": {}, "why": {}}
    clip = json.loads(audit_path(out / "clip.mp4").read_text())
    assert clip["frames"] == 30 and abs(clip["duration_s"] - 1.2) < 0.05
    assert clip["audio"] == "removed" and clip["settings"]["audio"] == "removed"
    bands = clip["found"]["bands"]
    assert len(bands) == 1 and bands[0]["start_s"] == 0.0 and bands[0]["end_s"] <= BAND_S
    assert bands[0]["frames"] == 30 and bands[0]["frames_with_faces"] == 30
    settings = clip["settings"]
    assert settings["quality"] == "balanced" and settings["style"] == "blur" and settings["mask_scale"] == 1.3
    assert settings["detector"]["video"]["input_width"] == 640 and settings["fail_closed"] == "obfuscate"


def test_bands_of_ten_seconds_and_failed_closed_frames_by_reason(tmp_path: Path) -> None:
    """25 s of video at 2 fps with a detector that fails on some frames: three bands, reasons counted."""
    src = tmp_path / "long.mp4"
    make_video(src, frames=50, fps=2, audio=False)

    class Flaky:
        model = "flaky"
        input_width = 320
        upscale = 0.0
        last_ms = 0.0
        calls = 0

        def detect_bgr(self, img: object) -> list:
            return []

        def detect_frame(self, frame: object) -> list:
            self.calls += 1
            if self.calls in (3, 30):
                raise RuntimeError("broken on purpose")
            return []

    batch = Batch(EngineConfig(), detector=Flaky(), audit=True)
    res = batch.run(Job(src, tmp_path / "out.mp4", "video"))
    assert res.ok and res.audit is not None
    bands = res.audit["found"]["bands"]
    assert [(b["start_s"], b["frames"]) for b in bands] == [(0.0, 20), (10.0, 20), (20.0, 10)]
    assert bands[-1]["end_s"] == pytest.approx(25.0, abs=0.6)
    assert res.audit["fail_closed"]["frames"] == res.fail_closed_frames == 2
    assert res.audit["fail_closed"]["reasons"] == {"detector_error": 2}
    assert res.audit["models"][0]["role"].startswith("faces (a detector handed in")
