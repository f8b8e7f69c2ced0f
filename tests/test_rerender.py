"""Review before export with the real engine: Batch.run's review log and proxy, Batch.rerender (no
edits gives the run's own frames; edits change exactly what they say; fail closed stays; errors keep
the earlier output), photos, and `streamproxy anonymize --edits` giving the Files page's frames."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from facekit import background, changed_fraction, make_video, paste_face

from streamproxy.anonymize import CHANGED, Batch, FileResult, Job, audit_path, edits_path
from streamproxy.config import EngineConfig
from streamproxy.files import edits as E
from streamproxy.types import Box, Detection

SIZE = (800, 448)  # wider than the proxy: the proxy is scaled down
FRAMES = 60
CLI = [sys.executable, "-m", "streamproxy.cli"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frames_of(path: Path, fmt: str = "bgr24") -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format=fmt, threads=1) for f in c.decode(video=0)]


def cli_cfg(src: Path) -> EngineConfig:
    """The engine settings `streamproxy anonymize SRC` runs with (the CLI's defaults)."""
    from streamproxy.cli import _engine_from_args, build_parser

    return _engine_from_args(build_parser().parse_args(["anonymize", str(src), "-o", "unused"]))


@dataclass
class Ran:
    src: Path
    dst: Path
    review: Path
    boxes: list[Box]
    result: FileResult
    batch: Batch


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Ran:
    """One real run with a review folder, shared (each test copies what it changes)."""
    d = tmp_path_factory.mktemp("ran")
    src = d / "clip.mp4"
    boxes = make_video(src, frames=FRAMES, size=SIZE)
    batch = Batch(cli_cfg(src), audit=True, user="tester")
    res = batch.run(Job(src, d / "out" / "clip.mp4", "video"), review_dir=d / "review")
    assert res.ok, res.error
    return Ran(src, d / "out" / "clip.mp4", d / "review", boxes, res, batch)


def copy_run(ran: Ran, to: Path) -> Ran:
    shutil.copytree(ran.dst.parent, to / "out")
    shutil.copytree(ran.review, to / "review")
    return Ran(ran.src, to / "out" / ran.dst.name, to / "review", ran.boxes, ran.result, ran.batch)


def edits(ran: Ran, *items: dict[str, Any]) -> E.Edits:
    log_ = E.read_log(ran.review)
    return E.parse_edits({"format": E.FORMAT, "edits": list(items)}, len(log_.frames), log_=log_)


# --- the run's review -------------------------------------------------------------------------


def test_run_writes_the_review_log_and_an_anonymized_proxy(ran: Ran) -> None:
    assert sorted(p.name for p in ran.review.iterdir()) == ["log.jsonl.gz", "proxy.mp4"]
    log_ = E.read_log(ran.review)
    head = log_.header
    assert (head["kind"], head["width"], head["height"], head["frames"]) == ("video", *SIZE, FRAMES)
    assert head["input_sha256"] == sha(ran.src) and head["input_name"] == "clip.mp4"
    assert head["fps"] == 25.0 and head["rate"] == "25/1"
    assert [f.i for f in log_.frames] == list(range(FRAMES))
    pts = [f.pts for f in log_.frames]
    assert pts == sorted(set(pts)), "one line per frame, in order"
    assert all(f.masks and f.dets and not f.fail for f in log_.frames), "the face is masked on every frame"
    for f, truth in zip(log_.frames, ran.boxes, strict=True):
        assert any(m.intersection(truth) >= 0.95 * truth.area for m in f.masks), f"frame {f.i}"
    assert [(t.id, t.first, t.last) for t in E.link_tracks(log_)] == [(1, 0, FRAMES - 1)]

    with av.open(str(ran.review / "proxy.mp4")) as c:
        vs = c.streams.video[0]
        assert (vs.width, vs.height) == (640, 358)
        assert vs.average_rate == 25
        got = [(f.pts, f.key_frame, f.to_ndarray(format="bgr24", threads=1)) for f in c.decode(vs)]
    assert [p for p, _, _ in got] == list(range(FRAMES)), "frame i at pts i"
    assert [p for p, k, _ in got if k] == [0, 25, 50], "a keyframe every 25 frames"
    out, orig = frames_of(ran.dst), frames_of(ran.src)
    for i in (0, 30, 59):
        small_out = cv2.resize(out[i], (640, 358), interpolation=cv2.INTER_AREA)
        small_orig = cv2.resize(orig[i], (640, 358), interpolation=cv2.INTER_AREA)
        face = ran.boxes[i].mapped(640 / SIZE[0], 358 / SIZE[1])
        proxy = got[i][2]
        assert changed_fraction(small_orig, proxy, face, tol=12) > 0.5, f"frame {i}: the proxy is anonymized"
        assert changed_fraction(small_out, proxy, face, tol=12) < 0.1, f"frame {i}: it shows the output"


def test_a_cancelled_or_failed_run_leaves_no_review(ran: Ran, tmp_path: Path) -> None:
    cancel = threading.Event()

    def on_frame(n: int) -> None:
        if n >= 10:
            cancel.set()

    res = ran.batch.run(Job(ran.src, tmp_path / "o.mp4", "video"), cancel=cancel, on_frame=on_frame,
                        review_dir=tmp_path / "r")  # fmt: skip
    assert res.cancelled and not (tmp_path / "o.mp4").exists()
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(ran.src.read_bytes()[:3000])
    res = ran.batch.run(Job(bad, tmp_path / "o2.mp4", "video"), review_dir=tmp_path / "r2")
    assert not res.ok
    assert not (tmp_path / "r2").exists() or list((tmp_path / "r2").iterdir()) == []


# --- re-render --------------------------------------------------------------------------------


def test_rerender_without_edits_gives_the_runs_frames(ran: Ran, tmp_path: Path) -> None:
    """The key property: the same masks, the same obfuscation in the same order, the same encoder
    settings: every decoded frame is equal (and libx264 with one thread is deterministic: so are
    the bytes)."""
    r = copy_run(ran, tmp_path)
    before = frames_of(r.dst, "yuv420p")
    res = ran.batch.rerender(Job(r.src, r.dst, "video"), r.review, edits(r), user="dpo")
    assert res.ok and res.frames == FRAMES, res.error
    after = frames_of(r.dst, "yuv420p")
    assert len(after) == len(before) == FRAMES
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        assert np.array_equal(a, b), f"frame {i} differs"
    assert sha(r.dst) == sha(ran.dst), "byte for byte"
    with av.open(str(r.dst)) as c:
        assert not c.streams.audio, "audio removed, as the run decided"


def test_rerender_runs_no_detector(ran: Ran, tmp_path: Path) -> None:
    class Raising:
        model = "raising"
        input_width = 640
        upscale = 1.0
        last_ms = 0.0

        def detect_bgr(self, img: np.ndarray) -> list[Detection]:
            raise AssertionError("a re-render must not detect")

        def detect_frame(self, frame: object) -> list[Detection]:
            raise AssertionError("a re-render must not detect")

    r = copy_run(ran, tmp_path)
    batch = Batch(cli_cfg(r.src), detector=Raising(), audit=False)
    res = batch.rerender(Job(r.src, r.dst, "video"), r.review, edits(r))
    assert res.ok, res.error
    assert sha(r.dst) == sha(ran.dst)


def test_rerender_with_edits_changes_what_they_say_and_records_them(ran: Ran, tmp_path: Path) -> None:
    r = copy_run(ran, tmp_path)
    zone = [600, 300, 700, 400]
    e = edits(r, {"op": "remove", "track": 1, "from": 10, "to": 19}, {"op": "zone", "box": zone})
    seen: list[int] = []
    res = ran.batch.rerender(Job(r.src, r.dst, "video"), r.review, e, on_frame=seen.append, user="dpo")
    assert res.ok and res.error == "", res.error
    assert seen == list(range(1, FRAMES + 1))
    out, orig = frames_of(r.dst), frames_of(r.src)
    for i in range(FRAMES):
        face = ran.boxes[i]
        if 10 <= i <= 19:
            assert changed_fraction(orig[i], out[i], face, tol=12) < 0.05, f"frame {i}: the face is visible"
        else:
            assert changed_fraction(orig[i], out[i], face, tol=12) > 0.5, f"frame {i}: the face is masked"
        assert out[i][305:395, 605:695].max() < 40, f"frame {i}: the zone is filled"
    record = json.loads(audit_path(r.dst).read_text())
    assert record["output"]["sha256"] == sha(r.dst) and record["output"]["size"] == r.dst.stat().st_size
    assert record["edits"]["by"] == "dpo" and record["edits"]["count"] == {"remove": 1, "zone": 1}
    assert record["edits"]["previous_output"]["sha256"] == sha(ran.dst)
    assert [x["op"] for x in record["edits"]["edits"]] == ["remove", "zone"]
    assert record["input"]["sha256"] == sha(r.src)
    doc = json.loads(edits_path(r.dst).read_text())
    assert doc["by"] == "dpo" and doc["input"] == {"name": "clip.mp4", "sha256": sha(r.src)}
    assert E.parse_edits(doc, FRAMES, log_=E.read_log(r.review)).edits == e.edits
    assert res.audit == record


class FailsOnFrames10To12:
    """A scripted detector: the true face box on every video frame; fails on frames 10..12."""

    model = "scripted"
    input_width = 640
    upscale = 1.0
    last_ms = 0.0

    def __init__(self, truth: list[Box]) -> None:
        self.truth = truth
        self.calls = 0

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        raise AssertionError("video only")

    def detect_frame(self, frame: object) -> list[Detection]:
        i = self.calls
        self.calls += 1
        if 10 <= i <= 12:
            raise RuntimeError("failing on purpose")
        return [Detection(self.truth[i], 0.95)]


def test_rerender_keeps_failed_frames_whole(tmp_path: Path, model_dir: Path) -> None:
    """Frames that failed closed in the run stay whole-frame obfuscated whatever the edits."""
    src = tmp_path / "clip.mp4"
    truth = make_video(src, frames=30, audio=False)

    batch = Batch(cli_cfg(src), detector=FailsOnFrames10To12(truth), audit=True)
    dst = tmp_path / "out" / "clip.mp4"
    res = batch.run(Job(src, dst, "video"), review_dir=tmp_path / "review")
    assert res.ok and res.fail_closed_frames == 3
    log_ = E.read_log(tmp_path / "review")
    assert [f.i for f in log_.frames if f.fail] == [10, 11, 12]
    ids = [t.id for t in E.link_tracks(log_)]
    run_out = frames_of(dst)
    e = E.parse_edits({"edits": [{"op": "remove", "track": t} for t in ids]}, 30, log_=log_)
    res = batch.rerender(Job(src, dst, "video"), tmp_path / "review", e)
    assert res.ok and res.fail_closed_frames == 3
    out, orig = frames_of(dst), frames_of(src)
    for i in range(30):
        if 10 <= i <= 12:
            assert changed_fraction(orig[i], out[i], truth[i], tol=12) > 0.8, f"frame {i}: the face is hidden"
            # The run's whole-frame obfuscation, again (up to the encoder's references, which differ).
            diff = np.abs(out[i].astype(int) - run_out[i].astype(int))
            assert diff.mean() < 3, f"frame {i} stays whole ({diff.mean():.1f})"
        else:
            assert changed_fraction(orig[i], out[i], truth[i], tol=12) < 0.05, f"frame {i}: mask removed"


def test_an_error_or_cancel_keeps_the_earlier_output_and_record(ran: Ran, tmp_path: Path) -> None:
    r = copy_run(ran, tmp_path)
    job = Job(r.src, r.dst, "video")
    out_before, audit_before = r.dst.read_bytes(), audit_path(r.dst).read_bytes()
    e = edits(r, {"op": "remove", "track": 1})

    def unchanged() -> None:
        assert r.dst.read_bytes() == out_before and audit_path(r.dst).read_bytes() == audit_before
        assert not edits_path(r.dst).exists()
        assert sorted(p.name for p in r.dst.parent.iterdir()) == ["clip.mp4", "clip.mp4.audit.json"]

    cancel = threading.Event()

    def on_frame(n: int) -> None:
        if n >= 20:
            cancel.set()

    res = ran.batch.rerender(job, r.review, e, cancel=cancel, on_frame=on_frame)
    assert res.cancelled and not res.ok
    unchanged()
    # Edits made for another file.
    other = E.Edits(e.edits, "clip.mp4", "0" * 64)
    res = ran.batch.rerender(job, r.review, other)
    assert not res.ok and "another file" in res.error
    unchanged()
    # The original changed since it was anonymized.
    changed = tmp_path / "changed.mp4"
    make_video(changed, frames=FRAMES - 5, size=SIZE)
    res = ran.batch.rerender(Job(changed, r.dst, "video"), r.review, e)
    assert not res.ok and res.error == CHANGED
    unchanged()


# --- re-render without the proxy, and the proxy made again from the output -----------------------


def proxy_frames(path: Path, size: tuple[int, int] | None = (640, 358)) -> list[tuple[int | None, bool, Any]]:
    """(pts, keyframe, BGR picture) of each proxy frame."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        assert size is None or (vs.width, vs.height) == size
        return [(f.pts, f.key_frame, f.to_ndarray(format="bgr24", threads=1)) for f in c.decode(vs)]


def test_rerender_without_proxy_leaves_the_review_and_gives_the_same_output(ran: Ran, tmp_path: Path) -> None:
    """proxy=False (the Files page, the CLI): the same output bytes, record and edits file as with
    the proxy; the review folder untouched (the earlier proxy stays until remake_proxy)."""
    e = {"op": "remove", "track": 1, "from": 10, "to": 19}
    with_proxy = copy_run(ran, tmp_path / "with")
    res = ran.batch.rerender(Job(with_proxy.src, with_proxy.dst, "video"), with_proxy.review,
                             edits(with_proxy, e), user="dpo")  # fmt: skip
    assert res.ok, res.error
    assert sha(with_proxy.review / "proxy.mp4") != sha(ran.review / "proxy.mp4"), "the proxy was made again"
    without = copy_run(ran, tmp_path / "without")
    before = {p.name: sha(p) for p in without.review.iterdir()}
    res = ran.batch.rerender(Job(without.src, without.dst, "video"), without.review, edits(without, e),
                             user="dpo", proxy=False)  # fmt: skip
    assert res.ok and res.frames == FRAMES, res.error
    assert {p.name: sha(p) for p in without.review.iterdir()} == before, "the review folder untouched"
    assert sha(without.dst) == sha(with_proxy.dst), "the output byte for byte"
    assert sha(without.dst) != sha(ran.dst), "and the edits are in it"
    assert edits_path(without.dst).read_text() != ""
    record = json.loads(audit_path(without.dst).read_text())
    assert record["output"]["sha256"] == sha(without.dst) and record["edits"]["count"] == {"remove": 1}


def test_remake_proxy_shows_the_new_output(ran: Ran, tmp_path: Path) -> None:
    r = copy_run(ran, tmp_path)
    e = edits(r, {"op": "remove", "track": 1, "from": 10, "to": 19})
    res = ran.batch.rerender(Job(r.src, r.dst, "video"), r.review, e, proxy=False)
    assert res.ok, res.error
    old = proxy_frames(r.review / "proxy.mp4")
    assert r.batch.remake_proxy(Job(r.src, r.dst, "video"), r.review)
    assert sorted(p.name for p in r.review.iterdir()) == ["log.jsonl.gz", "proxy.mp4"], "nothing else left"
    got = proxy_frames(r.review / "proxy.mp4")
    assert [p for p, _, _ in got] == list(range(FRAMES)), "frame i at pts i"
    assert [p for p, k, _ in got if k] == [0, 25, 50], "a keyframe every 25 frames, as the run's"
    out, orig = frames_of(r.dst), frames_of(r.src)
    smalls = [cv2.resize(o, (640, 358), interpolation=cv2.INTER_AREA) for o in out]

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(int) - b.astype(int)).mean())

    for i in range(FRAMES):
        small_out = smalls[i]
        small_orig = cv2.resize(orig[i], (640, 358), interpolation=cv2.INTER_AREA)
        # The output's own frame i (a CRF 28 proxy of it: a few levels off), not a neighbour.
        near = {j: dist(smalls[j], got[i][2]) for j in range(max(0, i - 2), min(FRAMES, i + 3))}
        assert min(near, key=near.__getitem__) == i and near[i] < 6, (i, near)
        face = ran.boxes[i].mapped(640 / SIZE[0], 358 / SIZE[1])
        proxy = got[i][2]
        assert changed_fraction(small_out, proxy, face, tol=12) < 0.1, f"frame {i}: the output's face region"
        # The mask removed on 10..19: the new proxy shows the face (encoded twice: a little off), the old did not.
        if 10 <= i <= 19:
            assert changed_fraction(small_orig, proxy, face, tol=12) < 0.25, f"frame {i}: the face shown"
            assert changed_fraction(small_orig, old[i][2], face, tol=12) > 0.5, f"frame {i}: was masked"
        else:
            assert changed_fraction(small_orig, proxy, face, tol=12) > 0.5, f"frame {i}: still masked"


def test_remake_proxy_failures_keep_the_earlier_proxy(ran: Ran, tmp_path: Path) -> None:
    r = copy_run(ran, tmp_path)
    job = Job(r.src, r.dst, "video")
    before = sha(r.review / "proxy.mp4")

    def kept() -> None:
        assert sha(r.review / "proxy.mp4") == before
        assert sorted(p.name for p in r.review.iterdir()) == ["log.jsonl.gz", "proxy.mp4"], "no part left"

    # Stopped (the service stops): the earlier proxy stays.
    cancel = threading.Event()
    cancel.set()
    assert not r.batch.remake_proxy(job, r.review, cancel=cancel)
    kept()
    # An output that is not this review's (fewer frames than the log), then one that is no video.
    make_video(r.dst, frames=FRAMES - 5, size=SIZE)
    assert not r.batch.remake_proxy(job, r.review)
    kept()
    make_video(r.dst, frames=FRAMES + 5, size=SIZE)
    assert not r.batch.remake_proxy(job, r.review)
    kept()
    r.dst.write_bytes(b"not a video" * 100)
    assert not r.batch.remake_proxy(job, r.review)
    kept()
    r.dst.unlink()
    assert not r.batch.remake_proxy(job, r.review)
    kept()


def test_remake_proxy_with_dropped_frames(tmp_path: Path, model_dir: Path) -> None:
    """fail_closed: drop: the output lacks frames 10..12; the remade proxy has them, black, and every
    other frame at its own index (as the run's proxy)."""
    src = tmp_path / "clip.mp4"
    truth = make_video(src, frames=30, audio=False)

    cfg = EngineConfig.model_validate({**cli_cfg(src).model_dump(), "fail_closed": {"action": "drop"}})
    batch = Batch(cfg, detector=FailsOnFrames10To12(truth), audit=False)
    dst, review = tmp_path / "out" / "clip.mp4", tmp_path / "review"
    res = batch.run(Job(src, dst, "video"), review_dir=review)
    assert res.ok and res.fail_closed_frames == 3, res.error
    log_ = E.read_log(review)
    assert [f.i for f in log_.frames if f.drop] == [10, 11, 12]
    run_proxy = proxy_frames(review / "proxy.mp4", None)
    res = batch.rerender(Job(src, dst, "video"), review, E.parse_edits({}, 30, log_=log_), proxy=False)
    assert res.ok, res.error
    out = frames_of(dst)
    assert len(out) == 27, "the dropped frames are not in the output"
    (review / "proxy.mp4").unlink()  # made again from nothing but the output and the log
    assert batch.remake_proxy(Job(src, dst, "video"), review)
    got = proxy_frames(review / "proxy.mp4", None)
    assert [p for p, _, _ in got] == list(range(30))
    kept = [i for i in range(30) if not 10 <= i <= 12]
    h, w = got[0][2].shape[:2]
    for i in range(30):
        pic = got[i][2]
        if 10 <= i <= 12:
            assert pic.max() < 30, f"frame {i}: dropped: black"
        else:
            small = cv2.resize(out[kept.index(i)], (w, h), interpolation=cv2.INTER_AREA)
            assert np.abs(small.astype(int) - pic.astype(int)).mean() < 6, f"frame {i}: its own output frame"
        assert np.abs(run_proxy[i][2].astype(int) - pic.astype(int)).mean() < 6, f"frame {i}: as the run's"


# --- photos -----------------------------------------------------------------------------------


def test_a_photo_gets_a_one_frame_log_and_rerenders(tmp_path: Path, model_dir: Path) -> None:
    img = background(480, 360)
    face = paste_face(img, 150, 60, 140)
    src = tmp_path / "face.png"
    cv2.imwrite(str(src), img)
    batch = Batch(cli_cfg(src), audit=True)
    dst = tmp_path / "out" / "face.png"
    res = batch.run(Job(src, dst, "image"), review_dir=tmp_path / "review")
    assert res.ok, res.error
    assert sorted(p.name for p in (tmp_path / "review").iterdir()) == ["log.jsonl.gz"], "no proxy for a photo"
    log_ = E.read_log(tmp_path / "review")
    assert (log_.header["kind"], log_.header["frames"], log_.width, log_.height) == ("image", 1, 480, 360)
    assert log_.frames[0].masks and log_.frames[0].dets
    first = cv2.imread(str(dst))
    assert first is not None
    res = batch.rerender(Job(src, dst, "image"), tmp_path / "review", E.parse_edits({}, 1, log_=log_))
    assert res.ok, res.error
    again = cv2.imread(str(dst))
    assert again is not None and np.array_equal(first, again), "no edits: the same pixels"
    assert changed_fraction(img, again, face) > 0.8
    ids = [t.id for t in E.link_tracks(log_)]
    e = E.parse_edits({"edits": [{"op": "keep", "track": t} for t in ids]}, 1, log_=log_)
    res = batch.rerender(Job(src, dst, "image"), tmp_path / "review", e)
    assert res.ok, res.error
    kept = cv2.imread(str(dst))
    assert kept is not None and np.array_equal(kept, img), "every face kept: the photo as it was"


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_edits_give_the_frames_of_the_files_page_path(ran: Ran, tmp_path: Path) -> None:
    """Page: run with a review folder, then re-render with the edits. CLI: `anonymize --edits`
    detects again and re-links: the same tracks, the same frames (compared exactly)."""
    r = copy_run(ran, tmp_path / "page")
    e = edits(
        r,
        {"op": "keep", "track": 1, "from": 5, "to": 15},
        {"op": "add", "boxes": {"30": [500, 50, 600, 150], "40": [520, 60, 620, 160]}},
        {"op": "zone", "box": [0, 380, 100, 448], "from": 20},
    )
    res = ran.batch.rerender(Job(r.src, r.dst, "video"), r.review, e, user="tester")
    assert res.ok, res.error
    page = frames_of(r.dst, "yuv420p")
    # The edits file as the page saved it, given to the CLI with another input beside it.
    efile = tmp_path / "clip.mp4.edits.json"
    efile.write_text(edits_path(r.dst).read_text())
    other = tmp_path / "other" / "x.png"
    other.parent.mkdir()
    cv2.imwrite(str(other), background(64, 48))
    out = tmp_path / "cli"
    p = subprocess.run([*CLI, "anonymize", r.src, other, "--edits", efile, "-o", out, "-q"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    cli = frames_of(out / "clip.mp4", "yuv420p")
    assert len(cli) == len(page) == FRAMES
    for i, (a, b) in enumerate(zip(page, cli, strict=True)):
        assert np.array_equal(a, b), f"frame {i}: the CLI's edits differ from the page's"
    record = json.loads(audit_path(out / "clip.mp4").read_text())
    assert record["edits"]["count"] == {"keep": 1, "add": 1, "zone": 1}
    assert record["output"]["sha256"] == sha(out / "clip.mp4") and record["edits"]["previous_output"] is None
    assert (out / "x.png").exists() and not edits_path(out / "x.png").exists(), "the other input: as usual"
    assert not [x for x in out.iterdir() if x.name.startswith(".")], "no temporary folder left"


def test_cli_edits_errors_in_words(ran: Ran, tmp_path: Path) -> None:
    efile = tmp_path / "e.json"
    efile.write_text(json.dumps({"format": E.FORMAT, "input": {"name": "elsewhere.mp4"}, "edits": []}))
    other = tmp_path / "x.png"
    cv2.imwrite(str(other), background(64, 48))
    p = subprocess.run([*CLI, "anonymize", ran.src, other, "--edits", efile, "-o", tmp_path / "o", "-q"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2
    assert "the edits are for 'elsewhere.mp4', which is not among the inputs" in p.stderr
    efile.write_text("{not json")
    p = subprocess.run([*CLI, "anonymize", ran.src, "--edits", efile, "-o", tmp_path / "o", "-q"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2 and "not a JSON file" in p.stderr
    efile.write_text(json.dumps({"input": {"name": "clip.mp4"}, "edits": [{"op": "remove", "track": 7}]}))
    p = subprocess.run([*CLI, "anonymize", ran.src, "--edits", efile, "-o", tmp_path / "o", "-q"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 1 and "--edits: edits[0].track: no such track (7)" in p.stderr
    assert not (tmp_path / "o" / "clip.mp4").exists(), "no output without its edits"


def test_rerender_without_edits_is_exact_with_text_masks(tmp_path: Path, model_dir: Path) -> None:
    """objects: plates: text masks come after the faces' (their own style): the log keeps both, in
    the run's order, so a re-render without edits still gives the run's frames."""
    src = tmp_path / "plate.mp4"
    with av.open(str(src), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 640, 360, "yuv420p"
        for i in range(20):
            img = background(640, 360)
            paste_face(img, 40 + 5 * i, 60, 120)
            cv2.putText(img, "AB 123 CD", (300 + i, 300), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    cfg = cli_cfg(src).model_copy(update={"objects": ["faces", "plates"]})
    batch = Batch(cfg, audit=False)
    dst = tmp_path / "out.mp4"
    res = batch.run(Job(src, dst, "video"), review_dir=tmp_path / "review")
    assert res.ok and res.text_regions > 0, res.error
    log_ = E.read_log(tmp_path / "review")
    assert all(f.text for f in log_.frames), "the text is masked on every frame"
    before = frames_of(dst, "yuv420p")
    res = batch.rerender(Job(src, dst, "video"), tmp_path / "review", E.parse_edits({}, 20, log_=log_))
    assert res.ok, res.error
    for i, (a, b) in enumerate(zip(before, frames_of(dst, "yuv420p"), strict=True)):
        assert np.array_equal(a, b), f"frame {i} differs"
