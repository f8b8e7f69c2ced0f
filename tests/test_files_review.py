"""The Files queue's review side (issue #23), with the real engine on a short video with a face:

* a finished video has a review: its size, frame rate, tracks (the face's, present on most frames),
  and a proxy made of anonymized frames;
* edits are checked (the key named) and saved as made, in the database and beside the output;
* re-render with "remove" on the face's track: the output changes where the face is, nothing
  detects again, the audit record carries the edits (who, what); a restart in the middle of a
  re-render leaves the earlier output, saying so;
* the review video is made again AFTER the output (the file is done first; "proxy_updating" says so
  until the new one is in place); a stop meanwhile leaves the earlier review video;
* originals: a user without server.users[].originals may not; one with it gets the original frame
  (the input's pixels), and that access is on the job's audit record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from facekit import make_video

from streamproxy.anonymize import Batch, Job
from streamproxy.config import EngineConfig, FilesConfig, User
from streamproxy.files.manager import BatchRunner, FileJobs, JobRequest
from streamproxy.files.store import RENDER_INTERRUPTED, Store

FRAMES = 40


async def _until(cond: Any, what: str, timeout: float = 120.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not seen within {timeout} s: {what}")


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24", threads=1) for f in c.decode(c.streams.video[0])]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    make_video(tmp_path / "in" / "clip.mp4", frames=FRAMES, audio=False)
    return tmp_path, {"in": str(tmp_path / "in"), "out": str(tmp_path / "out")}


def _jobs(
    tmp_path: Path, roots: dict[str, str], model_dir: Path, users: list[User] | None = None
) -> FileJobs:
    return FileJobs(FilesConfig(roots=roots), tmp_path / "data", model_dir, users=users)


def _submit(jobs: FileJobs) -> int:
    return jobs.submit(
        "dpo",
        JobRequest.from_json(
            {"inputs": [{"root": "in", "path": "clip.mp4"}], "output": {"root": "out", "path": ""}}
        ),
    )


def test_review_edit_and_rerender(setup: tuple[Path, dict[str, str]], model_dir: Path) -> None:
    tmp_path, roots = setup
    out = tmp_path / "out" / "clip.mp4"

    async def main() -> tuple[dict[str, Any], list[np.ndarray], dict[str, Any]]:
        jobs = _jobs(tmp_path, roots, model_dir)
        await jobs.start()
        try:
            job_id = _submit(jobs)
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done")
            review = jobs.review(job_id, 0)
            assert review is not None and review["reviewable"], review
            # The page's first ask: all but the tracks; the tracks' JSON made once (when the job finished).
            short = jobs.review(job_id, 0, tracks=False)
            assert short is not None and "tracks" not in short
            assert short == {k: v for k, v in review.items() if k != "tracks"}
            body = jobs.review_tracks_json(job_id, 0)
            assert body is not None and json.loads(body) == {"tracks": review["tracks"]}
            assert jobs.review_tracks_json(job_id, 0) is body
            proxy = jobs.proxy_path(job_id, 0)
            assert proxy is not None and len(_frames(proxy)) == FRAMES
            before = _frames(out)
            proxy_before = _frames(proxy)
            with pytest.raises(ValueError, match=r"^edits\[0\]\.op"):
                jobs.save_edits(
                    job_id, 0, "dpo", {"format": "streamproxy-edits/1", "edits": [{"op": "swirl"}]}
                )
            with pytest.raises(ValueError, match=r"^edits\[0\]\.track"):
                jobs.save_edits(
                    job_id,
                    0,
                    "dpo",
                    {"format": "streamproxy-edits/1", "edits": [{"op": "remove", "track": 999}]},
                )
            face = max(review["tracks"], key=lambda t: len(t["boxes"]))
            doc = jobs.save_edits(
                job_id,
                0,
                "dpo",
                {"format": "streamproxy-edits/1", "edits": [{"op": "remove", "track": face["id"]}]},
            )
            assert doc["by"] == "dpo"
            assert json.loads(out.with_name("clip.mp4.edits.json").read_text())["edits"][0]["op"] == "remove"
            jobs.rerender(job_id, 0, "dpo")
            assert (jobs.job(job_id) or {})["files"][0]["state"] == "rendering"
            await _until(lambda: (jobs.job(job_id) or {})["files"][0]["state"] == "done", "re-rendered")
            f = (jobs.job(job_id) or {})["files"][0]
            assert f["error"] == "", f
            await _until(lambda: not jobs.proxy_updating(job_id, 0), "the review video made again")
            # The review shows what the edits made: its proxy was made again (the face's region changed).
            proxy_after = _frames(proxy)
            assert len(proxy_after) == FRAMES
            assert any(
                np.abs(a.astype(int) - b.astype(int)).mean() > 1
                for a, b in zip(proxy_before, proxy_after, strict=True)
            )
            audit = jobs.audit(job_id)
            assert audit is not None
            return review, before, audit
        finally:
            await jobs.stop()

    review, before, audit = asyncio.run(main())
    assert review["frames"] == FRAMES and review["width"] == 640 and review["height"] == 360
    face = max(review["tracks"], key=lambda t: len(t["boxes"]))
    assert len(face["boxes"]) >= FRAMES * 0.8, "the face's track is present on most frames"
    after = _frames(out)
    assert len(after) == len(before) == FRAMES
    # The face's mask removed: its box changes between the output before and after on most frames.
    changed = 0
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        box = face["boxes"].get(str(i))
        if box is None:
            continue
        x1, y1, x2, y2 = (int(v) for v in box[:4])
        diff = np.abs(a[y1:y2, x1:x2].astype(int) - b[y1:y2, x1:x2].astype(int)).mean()
        changed += diff > 10
    assert changed >= len(face["boxes"]) * 0.8, (changed, len(face["boxes"]))
    files = audit["files"]
    assert files[0]["edits"]["by"] == "dpo" and files[0]["edits"]["count"].get("remove") == 1, files[0][
        "edits"
    ]


class GatedBatch(Batch):
    """The real engine; its review-video remake waits for `gate` (or a stop) so that the test sees
    the file in between."""

    def __init__(self, gate: threading.Event, entered: threading.Event, cfg: EngineConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.gate, self.entered = gate, entered

    def remake_proxy(self, job: Job, review_dir: Path, cancel: threading.Event | None = None) -> bool:
        self.entered.set()
        for _ in range(1200):  # bounded: 60 s
            if self.gate.is_set() or (cancel is not None and cancel.is_set()):
                break
            time.sleep(0.05)
        return super().remake_proxy(job, review_dir, cancel=cancel)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("stop", [False, True], ids=["finishes", "stopped"])
def test_the_review_video_is_made_after_the_output(
    setup: tuple[Path, dict[str, str]], model_dir: Path, stop: bool
) -> None:
    """The user's re-render is done when its output is: the file says done (the output and its record
    new) while the review video is still the earlier one, and says so (proxy_updating); then the new
    one is put in place. A stop meanwhile leaves the earlier review video (no half-made one)."""
    tmp_path, roots = setup
    out = tmp_path / "out" / "clip.mp4"
    gate, entered = threading.Event(), threading.Event()

    def factory(cfg: EngineConfig, keep_audio: bool, user: str) -> BatchRunner:
        return GatedBatch(gate, entered, cfg, keep_audio=keep_audio, audit=True, user=user)

    async def main() -> None:
        jobs = FileJobs(FilesConfig(roots=roots), tmp_path / "data", model_dir, batch_factory=factory)
        await jobs.start()
        stopped = False
        try:
            job_id = _submit(jobs)
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done")
            assert entered.is_set() is False, "a run makes its proxy itself"
            review = jobs.review(job_id, 0, tracks=True)
            assert review is not None and review["proxy_updating"] is False
            proxy = jobs.proxy_path(job_id, 0)
            assert proxy is not None
            proxy_before, out_before = _sha(proxy), _sha(out)
            face = max(review["tracks"], key=lambda t: len(t["boxes"]))
            jobs.save_edits(job_id, 0, "dpo", {"format": "streamproxy-edits/1",
                                               "edits": [{"op": "remove", "track": face["id"]}]})  # fmt: skip
            jobs.rerender(job_id, 0, "dpo")
            assert await asyncio.to_thread(entered.wait, 120), "the review video's remake started"
            # The output is done (and recorded); the review video is the earlier one, and says so.
            f = (jobs.job(job_id) or {})["files"][0]
            assert (f["state"], f["error"]) == ("done", ""), f
            assert _sha(out) != out_before
            audit = jobs.audit(job_id)
            assert audit is not None and audit["files"][0]["output"]["sha256"] == _sha(out)
            short = jobs.review(job_id, 0, tracks=False)
            assert short is not None and short["proxy_updating"] is True and short["state"] == "done"
            assert _sha(proxy) == proxy_before
            with pytest.raises(ValueError, match="review video is still being updated"):
                jobs.rerender(job_id, 0, "dpo")
            assert short["proxy_stale"] is False, "updating, not stale"
            if stop:
                stopped = True
                await jobs.stop()  # stops the remake (not the gate): the earlier review video stays
                assert _sha(proxy) == proxy_before
                names = sorted(x.name for x in proxy.parent.iterdir())
                assert names == [".proxy-stale", "log.jsonl.gz", "proxy.mp4"], names
                # After a restart (the mark is on disk) the review says that its video is from before
                # the edits, instead of showing it as the new output.
                restarted = FileJobs(
                    FilesConfig(roots=roots), tmp_path / "data", model_dir, batch_factory=factory
                )
                await restarted.start()
                try:
                    after = restarted.review(job_id, 0, tracks=False)
                    assert after is not None
                    assert (after["state"], after["proxy_updating"], after["proxy_stale"]) == (
                        "done",
                        False,
                        True,
                    )
                finally:
                    await restarted.stop()
                return
            gate.set()
            await _until(lambda: not jobs.proxy_updating(job_id, 0), "the review video made again")
            assert _sha(proxy) != proxy_before
            assert len(_frames(proxy)) == FRAMES
            assert sorted(x.name for x in proxy.parent.iterdir()) == ["log.jsonl.gz", "proxy.mp4"]
            again = jobs.review(job_id, 0, tracks=False)
            assert again is not None and again["proxy_updating"] is False and again["proxy"] is True
            assert again["proxy_stale"] is False
        finally:
            gate.set()
            if not stopped:
                await jobs.stop()

    asyncio.run(main())


def test_a_restart_mid_rerender_keeps_the_earlier_output(
    setup: tuple[Path, dict[str, str]], model_dir: Path
) -> None:
    tmp_path, roots = setup

    async def run_job() -> int:
        jobs = _jobs(tmp_path, roots, model_dir)
        await jobs.start()
        try:
            job_id = _submit(jobs)
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done")
            return job_id
        finally:
            await jobs.stop()

    job_id = asyncio.run(run_job())
    # What a crash during a re-render leaves: the row `rendering`.
    store = Store(tmp_path / "data" / "files" / "jobs.sqlite3")
    store.set_file(job_id, 0, state="rendering")
    store.close()
    out = tmp_path / "out" / "clip.mp4"
    before = out.read_bytes()

    async def restart() -> dict[str, Any]:
        jobs = _jobs(tmp_path, roots, model_dir)
        await jobs.start()
        try:
            return (jobs.job(job_id) or {})["files"][0]
        finally:
            await jobs.stop()

    f = asyncio.run(restart())
    assert (f["state"], f["error"]) == ("done", RENDER_INTERRUPTED)
    assert out.read_bytes() == before


def test_originals_only_with_the_role_and_on_the_record(
    setup: tuple[Path, dict[str, str]], model_dir: Path
) -> None:
    tmp_path, roots = setup
    users = [User(username="clerk", password="x"), User(username="dpo", password="y", originals=True)]

    async def main() -> tuple[bytes | None, dict[str, Any]]:
        jobs = _jobs(tmp_path, roots, model_dir, users)
        await jobs.start()
        try:
            job_id = _submit(jobs)
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done")
            assert not jobs.can_see_originals("clerk") and jobs.can_see_originals("dpo")
            jpeg = jobs.original_frame(job_id, 0, 10, "dpo")
            audit = jobs.audit(job_id)
            assert audit is not None
            return jpeg, audit
        finally:
            await jobs.stop()

    jpeg, audit = asyncio.run(main())
    assert jpeg is not None
    shown = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert shown is not None
    originals = _frames(tmp_path / "in" / "clip.mp4")
    assert shown.shape == originals[10].shape
    # The original's frame 10 (a JPEG of it): nearer to it than to its neighbours or to the output.
    anonymized = _frames(tmp_path / "out" / "clip.mp4")[10]
    dist = {
        k: float(np.abs(shown.astype(int) - img.astype(int)).mean())
        for k, img in {"9": originals[9], "10": originals[10], "11": originals[11], "out": anonymized}.items()
    }
    assert min(dist, key=dist.__getitem__) == "10" and dist["10"] < 8, dist
    views = audit["original_views"]
    assert [(v["user"], v["what"], v["file"]) for v in views] == [("dpo", "original frame 10", "clip.mp4")]
    # Without users, the one local user may.
    assert FileJobs(FilesConfig(), tmp_path / "d2").can_see_originals("")


def _crowd_log(folder: Path, frames: int, faces: int) -> None:
    """A review log of `faces` faces walking for `frames` frames, one failed closed every 100th frame."""
    from streamproxy.files import edits as E
    from streamproxy.types import Box

    rows = []
    for i in range(frames):
        masks = tuple(Box(k * 60 + i % 50, 40 + k, k * 60 + 40 + i % 50, 90 + k) for k in range(faces))
        rows.append(
            E.ReviewFrame(i=i, pts=i * 512, masks=masks, dets=tuple((m, 0.9) for m in masks[::2]),
                          fail="detector" if i % 100 == 99 else "")
        )  # fmt: skip
    head = {
        "kind": "video",
        "width": 1280,
        "height": 720,
        "fps": 25.0,
        "rate": "25/1",
        "time_base": "1/12800",
    }
    E.write_log(folder, head, rows, "ab" * 32)


def test_the_review_index_keeps_nothing_of_the_log_and_pauses_collection_while_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the review's answers need of a long log is made with cyclic collection paused (a full
    collection of the whole process per quarter of growth, with the GIL held, stalled the status
    answers 0.5-0.9 s as a 10-minute video finished) and keeps none of the log's objects."""
    import gc

    from streamproxy.files import edits as E
    from streamproxy.files import manager as M

    folder = tmp_path / "review"
    _crowd_log(folder, 3000, 8)
    seen: list[bool] = []
    real_read, real_link = E.read_log, E.link_tracks

    def read(f: Path) -> E.ReviewLog:
        seen.append(gc.isenabled())
        return real_read(f)

    def link(lg: E.ReviewLog) -> list[E.ReviewTrack]:
        seen.append(gc.isenabled())
        return real_link(lg)

    monkeypatch.setattr(E, "read_log", read)
    monkeypatch.setattr(E, "link_tracks", link)
    gc.collect()
    before = len(gc.get_objects())
    index = M._ReviewIndex.build(folder, 1.0)
    gc.collect()
    kept = len(gc.get_objects()) - before
    assert seen == [False, False] and gc.isenabled(), "paused while reading and linking, on again after"
    # Far below the ~70k of the log and its tracks, with room for what other threads of the run make.
    assert kept < 2000, f"{kept} objects kept (the log and its tracks are ~70k)"

    log_ = real_read(folder)
    tracks = real_link(log_)
    assert index.header["frames"] == 3000 and index.size == (1280, 720)
    assert index.failed == tuple(range(99, 3000, 100))
    assert index.pts.tolist() == [fr.pts for fr in log_.frames]
    assert index.track_ids == {t.id for t in tracks} and len(tracks) >= 8
    whole = {"tracks": [M._track_json(t) for t in tracks]}
    assert index.tracks_json == json.dumps(whole, separators=(",", ":")).encode(), (
        "the same bytes as one dump"
    )


def test_collection_stays_paused_until_the_last_index_is_made_and_off_if_it_was_off() -> None:
    import gc

    from streamproxy.files import manager as M

    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with M._gc_paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10)
    with M._gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled(), "the other thread is still making its index"
    release.set()
    t.join(10)
    assert gc.isenabled()
    gc.disable()  # a program that runs without cyclic collection is left so
    try:
        with M._gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
