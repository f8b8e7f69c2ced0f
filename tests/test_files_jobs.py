"""The Files page's job queue (streamproxy/files/): roots, the SQLite store, the manager.

* roots: `..`, absolute paths, NUL/backslash and links leading outside a root are refused; a listing
  never shows a link to elsewhere.
* the queue, with a scripted batch (the queue's own logic: order, states, cancel, restart): files run
  in order, one bad file does not stop the others, cancel per file and per job, a graceful stop puts
  the running file back in the queue, a crash (the row left `running`) marks it failed on the next
  start and removes its temporary output, the queued rest still runs.
* the real engine: two photos and a video with a face through FileJobs and anonymize.Batch: the
  outputs have no face YuNet finds, the audit record's SHA-256 are the files', the thumbnail shown
  while running was an anonymized picture.
* uploads: past files.max_upload_bytes the file is refused and nothing of it stays on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from facekit import background, make_video, paste_face

from streamproxy.anonymize import FileResult, Job
from streamproxy.config import EngineConfig, FilesConfig
from streamproxy.files import store as store_mod
from streamproxy.files.manager import FileJobs, JobRequest, TooLarge
from streamproxy.files.roots import PathRefused, Roots
from streamproxy.files.store import INTERRUPTED, Store

# --- roots ---------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")
    (tmp_path / "in" / "sub" / "b.mp4").write_bytes(b"y")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwd.jpg").write_bytes(b"z")
    (tmp_path / "in" / "escape").symlink_to(tmp_path / "secret")
    (tmp_path / "in" / "escape.jpg").symlink_to(tmp_path / "secret" / "passwd.jpg")
    (tmp_path / "in" / "inside.jpg").symlink_to(tmp_path / "in" / "a.jpg")
    return tmp_path


@pytest.mark.parametrize(
    "rel",
    [
        "../secret",
        "sub/../../secret",
        "/etc/passwd",
        "~/x",
        "escape",
        "escape/passwd.jpg",
        "escape.jpg",
        "a\\..\\b",
        "a\x00b",
    ],
)
def test_paths_outside_a_root_are_refused(tree: Path, rel: str) -> None:
    roots = Roots({"cctv": str(tree / "in")})
    with pytest.raises(PathRefused):
        roots.resolve("cctv", rel)


def test_paths_inside_a_root_resolve(tree: Path) -> None:
    roots = Roots({"cctv": str(tree / "in")})
    assert roots.resolve("cctv", "sub/b.mp4") == (tree / "in" / "sub" / "b.mp4").resolve()
    assert roots.resolve("cctv", "") == (tree / "in").resolve()
    assert roots.resolve("cctv", "./inside.jpg") == (tree / "in" / "a.jpg").resolve()
    with pytest.raises(PathRefused, match="no root"):
        roots.resolve("other", "a.jpg")
    with pytest.raises(FileNotFoundError):
        roots.resolve("cctv", "nope.jpg")


def test_listing_hides_links_to_elsewhere(tree: Path) -> None:
    entries, cut = Roots({"cctv": str(tree / "in")}).listing("cctv", "")
    assert [(e.name, e.kind) for e in entries] == [
        ("sub", "dir"),
        ("a.jpg", "image"),
        ("inside.jpg", "image"),
    ]
    assert not cut


# --- the queue with a scripted batch ------------------------------------------------------------


class ScriptedBatch:
    """Writes a small output per file; a file named 'bad*' fails, 'slow*' waits for `gate` (or cancel)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate or threading.Event()
        self.started: list[str] = []
        self.running = threading.Event()

    def rerender(self, job: Job, review_dir: Path, edits: Any, **kw: Any) -> FileResult:
        raise AssertionError("not re-rendered in this test")

    def settings(self) -> dict[str, Any]:
        return {"quality": "balanced", "style": "blur"}

    def run(
        self,
        job: Job,
        *,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
        on_picture: Callable[[np.ndarray], None] | None = None,
        review_dir: Path | None = None,
    ) -> FileResult:
        self.started.append(job.src.name)
        if job.src.name.startswith("bad"):
            return FileResult(job.src, None, False, error="not a readable image")
        if job.src.name.startswith("slow"):
            tmp = job.dst.with_name(f".{job.dst.stem}.part{job.dst.suffix}")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(b"half")
            self.running.set()
            for i in range(600):  # bounded: 60 s
                if on_frame:
                    on_frame(i)
                if (cancel is not None and cancel.is_set()) or self.gate.wait(0.1):
                    break
            if cancel is not None and cancel.is_set():
                tmp.unlink()
                return FileResult(job.src, None, False, error="cancelled", cancelled=True)
            tmp.replace(job.dst)
        else:
            job.dst.parent.mkdir(parents=True, exist_ok=True)
            job.dst.write_bytes(b"out:" + job.src.read_bytes())
        if on_picture:
            on_picture(np.zeros((8, 8, 3), np.uint8))
        return FileResult(job.src, job.dst, True, faces=1, frames=1, tracks=1)


def _jobs(data: Path, roots: dict[str, str], batch: ScriptedBatch) -> FileJobs:
    return FileJobs(FilesConfig(roots=roots), data, batch_factory=lambda cfg, audio, user: batch)


async def _until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not seen within {timeout} s: {what}")


def _inputs(tmp_path: Path, names: list[str]) -> dict[str, str]:
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for n in names:
        (src / n).write_bytes(n.encode())
    (tmp_path / "out").mkdir(exist_ok=True)
    return {"in": str(src), "out": str(tmp_path / "out")}


def _request(**kw: Any) -> JobRequest:
    body: dict[str, Any] = {"inputs": [{"root": "in", "path": ""}], "output": {"root": "out", "path": "run1"}}
    body.update(kw)
    return JobRequest.from_json(body)


def test_a_job_runs_its_files_in_order_and_a_bad_one_does_not_stop_it(tmp_path: Path) -> None:
    roots = _inputs(tmp_path, ["a.jpg", "bad.jpg", "c.png", "notes.txt"])
    batch = ScriptedBatch()

    async def main() -> dict[str, Any]:
        jobs = _jobs(tmp_path / "data", roots, batch)
        await jobs.start()
        try:
            job_id = jobs.submit("dpo", _request())
            await _until(lambda: (j := jobs.job(job_id)) is not None and j["state"] == "done", "job done")
            job = jobs.job(job_id)
            assert job is not None
            return job
        finally:
            await jobs.stop()

    job = asyncio.run(main())
    assert batch.started == ["a.jpg", "bad.jpg", "c.png"]  # notes.txt is not a picture: not collected
    states = {f["name"]: (f["state"], f["error"]) for f in job["files"]}
    assert states == {
        "in/a.jpg": ("done", ""),
        "in/bad.jpg": ("failed", "not a readable image"),
        "in/c.png": ("done", ""),
    }
    assert (tmp_path / "out" / "run1" / "in" / "a.jpg").read_bytes() == b"out:a.jpg"
    assert job["user"] == "dpo" and "2 file(s) anonymized, 1 failed" in job["summary"]
    record = json.loads((tmp_path / "out" / "run1" / "streamproxy-job-1.audit.json").read_text())
    assert record["user"] == "dpo"
    assert (tmp_path / "out" / "run1" / "streamproxy-job-1.report.html").read_text().lstrip().startswith("<!")
    # Nothing of the absolute paths reaches the page's view of the job.
    assert str(tmp_path) not in json.dumps(job)


def test_cancel_a_file_and_a_job(tmp_path: Path) -> None:
    roots = _inputs(tmp_path, ["a.jpg", "slow.mp4", "z.jpg"])
    batch = ScriptedBatch()

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        jobs = _jobs(tmp_path / "data", roots, batch)
        await jobs.start()
        try:
            first = jobs.submit("dpo", _request())
            second = jobs.submit("dpo", _request(output={"root": "out", "path": "run2"}))
            await _until(batch.running.is_set, "slow.mp4 running")
            await _until(lambda: (jobs.job(first) or {})["files"][1]["done"] > 0, "progress reported")
            assert jobs.cancel_file(first, 1)
            await _until(lambda: (jobs.job(first) or {})["state"] == "done", "first job done")
            await _until(lambda: batch.started.count("slow.mp4") == 2, "second job's slow.mp4 running")
            assert jobs.cancel_job(second)
            await _until(lambda: (jobs.job(second) or {})["state"] == "cancelled", "second job cancelled")
            a, b = jobs.job(first), jobs.job(second)
            assert a is not None and b is not None
            return a, b
        finally:
            await jobs.stop()

    a, b = asyncio.run(main())
    assert [f["state"] for f in a["files"]] == ["done", "cancelled", "done"]
    assert [f["state"] for f in b["files"]] == ["done", "cancelled", "cancelled"]
    assert batch.started == ["a.jpg", "slow.mp4", "z.jpg", "a.jpg", "slow.mp4"]  # z.jpg of job 2 never ran
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").rglob("*")), (
        "a temporary output was left"
    )
    assert not (tmp_path / "out" / "run1" / "in" / "slow.mp4").exists()


def test_a_status_poll_with_since_gets_the_changed_and_running_files_only(tmp_path: Path) -> None:
    roots = _inputs(tmp_path, ["a.jpg", "slow.mp4", "x.jpg", "z.jpg"])
    batch = ScriptedBatch()

    async def main() -> list[dict[str, Any]]:
        jobs = _jobs(tmp_path / "data", roots, batch)
        await jobs.start()
        try:
            job_id = jobs.submit("dpo", _request())
            await _until(batch.running.is_set, "slow.mp4 running")
            answers = [jobs.job(job_id)]  # the page's first ask: the whole job
            assert jobs.cancel_file(job_id, 2)  # x.jpg, still queued: cancelled without running
            answers.append(jobs.job(job_id, since=answers[-1]["seq"]))  # type: ignore[index]
            batch.gate.set()
            await _until(lambda: (jobs.job(job_id) or {})["state"] == "done", "job done")
            answers.append(jobs.job(job_id, since=answers[-1]["seq"]))  # type: ignore[index]
            answers.append(jobs.job(job_id, since=answers[-1]["seq"]))  # type: ignore[index]
            return [a for a in answers if a is not None]
        finally:
            await jobs.stop()

    whole, during, after, nothing = asyncio.run(main())
    names = lambda job: [f["name"] for f in job["files"]]  # noqa: E731
    assert "since" not in whole and names(whole) == ["in/a.jpg", "in/slow.mp4", "in/x.jpg", "in/z.jpg"]
    # a.jpg finished before the first answer: not again; the running video always (its progress is live).
    assert names(during) == ["in/slow.mp4", "in/x.jpg"] and during["since"] == whole["seq"]
    assert during["files"][1]["state"] == "cancelled"
    assert names(after) == ["in/slow.mp4", "in/z.jpg"]
    assert [f["state"] for f in after["files"]] == ["done", "done"]
    assert names(nothing) == [] and nothing["seq"] == after["seq"]
    # The counts are always the whole job's.
    assert nothing["files_total"] == 4 and nothing["files_by_state"] == {"done": 3, "cancelled": 1}
    assert whole["seq"] < during["seq"] < after["seq"]


def test_a_database_from_before_seq_is_migrated_and_its_rows_are_shown(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    old_schema = "\n".join(
        line for line in store_mod.SCHEMA.splitlines() if not line.strip().startswith("seq ")
    )
    assert old_schema != store_mod.SCHEMA
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO jobs (created, user, state, request, output_dir, own_output, uploads) "
            "VALUES (1, 'u', 'done', '{}', '/o', 0, '[]')"
        )
        db.execute(
            "INSERT INTO files (job_id, n, src, dst, name, kind, state) VALUES (1, 0, 's', 'd', 'a', 'image', 'done')"
        )
        db.commit()
    store = Store(path)
    try:
        first = store.changes(1)
        assert [f.name for f in first.files] == ["a"] and first.seq == 0
        assert store.changes(1, first.seq).files == []
        store.set_file(1, 0, error="noted")
        later = store.changes(1, first.seq)
        assert [f.error for f in later.files] == ["noted"] and later.seq > first.seq
    finally:
        store.close()


def test_a_graceful_stop_puts_the_running_file_back_and_it_runs_after_the_restart(tmp_path: Path) -> None:
    roots = _inputs(tmp_path, ["a.jpg", "slow.mp4", "z.jpg"])
    batch = ScriptedBatch()

    async def first_run() -> int:
        jobs = _jobs(tmp_path / "data", roots, batch)
        await jobs.start()
        job_id = jobs.submit("dpo", _request())
        await _until(batch.running.is_set, "slow.mp4 running")
        await jobs.stop()
        return job_id

    job_id = asyncio.run(first_run())
    assert batch.started == ["a.jpg", "slow.mp4"]
    batch2 = ScriptedBatch(gate=threading.Event())
    batch2.gate.set()  # this time slow.mp4 finishes at once

    async def second_run() -> dict[str, Any]:
        jobs = _jobs(tmp_path / "data", roots, batch2)
        await jobs.start()
        try:
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done after restart")
            job = jobs.job(job_id)
            assert job is not None
            return job
        finally:
            await jobs.stop()

    job = asyncio.run(second_run())
    assert batch2.started == ["slow.mp4", "z.jpg"]
    assert [f["state"] for f in job["files"]] == ["done", "done", "done"]


def test_a_crash_marks_the_running_file_failed_and_the_rest_still_runs(tmp_path: Path) -> None:
    roots = _inputs(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    data = tmp_path / "data"
    # What a killed service leaves: the job running, its second file `running` with a half-written
    # temporary output beside where its output would go.
    store = Store(data / "files" / "jobs.sqlite3")
    out = tmp_path / "out" / "run1" / "in"
    out.mkdir(parents=True)
    files = [
        (str(tmp_path / "in" / n), str(out / n), f"in/{n}", "image", "queued", "")
        for n in ("a.jpg", "b.jpg", "c.jpg")
    ]
    request = _request().as_json()
    job_id = store.add_job("dpo", request, out.parent, False, [], files)
    store.set_job(job_id, state="running", started=time.time())
    store.set_file(job_id, 0, state="done")
    (out / "a.jpg").write_bytes(b"out:a.jpg")
    store.set_file(job_id, 1, state="running")
    (out / ".b.part.jpg").write_bytes(b"half")
    store.close()
    batch = ScriptedBatch()

    async def restart() -> dict[str, Any]:
        jobs = _jobs(data, roots, batch)
        await jobs.start()
        try:
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done after restart")
            job = jobs.job(job_id)
            assert job is not None
            return job
        finally:
            await jobs.stop()

    job = asyncio.run(restart())
    assert [(f["state"], f["error"]) for f in job["files"]] == [
        ("done", ""),
        ("failed", INTERRUPTED),
        ("done", ""),
    ]
    assert batch.started == ["c.jpg"]
    assert not (out / ".b.part.jpg").exists() and not (out / "b.jpg").exists()
    assert job["files"][1]["output"] is None


def test_requests_outside_the_roots_and_bad_keys_are_refused(tree: Path) -> None:
    (tree / "out").mkdir()
    (tree / "out" / "link").symlink_to(tree / "secret")

    async def main() -> None:
        jobs = FileJobs(
            FilesConfig(roots={"cctv": str(tree / "in"), "out": str(tree / "out")}), tree / "data"
        )
        await jobs.start()
        try:
            for inputs, output in [
                ([{"root": "cctv", "path": "../secret"}], None),
                ([{"root": "cctv", "path": "escape"}], None),
                ([{"root": "cctv", "path": "/etc"}], None),
                ([{"root": "cctv", "path": "a.jpg"}], {"root": "out", "path": "link/x"}),
                ([{"root": "cctv", "path": "a.jpg"}], {"root": "out", "path": "../.."}),
                ([{"upload": "0123456789abcdef"}], None),
                ([{"upload": "../../etc"}], None),
            ]:
                with pytest.raises(PathRefused):
                    jobs.submit("u", JobRequest.from_json({"inputs": inputs, "output": output}))
            for body, key in [
                ({"inputs": []}, "inputs"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "style": "swirl"}, "style"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "quality": "ultra"}, "quality"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "objects": ["plates"]}, "objects"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "colour": 1}, "colour"),
                ({"inputs": [{"root": "cctv"}, 3]}, "inputs[1]"),
            ]:
                with pytest.raises(ValueError, match=rf"^{key.replace('[', '.').replace(']', '.')}"):
                    jobs.submit("u", JobRequest.from_json(body))
            assert jobs.jobs() == []
        finally:
            await jobs.stop()

    asyncio.run(main())


def test_an_oversized_upload_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        jobs = FileJobs(FilesConfig(max_upload_bytes=4096, max_upload_files=2), tmp_path / "data")
        await jobs.start()
        try:
            up = jobs.new_upload()
            f = up.open("photos/a.jpg")
            f.write(b"x" * 4000)
            f.close()
            big = up.open("b.jpg")
            with pytest.raises(TooLarge, match="max_upload_bytes"):
                big.write(b"x" * 5000)
            with pytest.raises(TooLarge, match="max_upload_files"):
                up.open("c.jpg")
            with pytest.raises(PathRefused):
                up.open("../../x.jpg")
            names = sorted(str(p.relative_to(up.folder)) for p in up.folder.rglob("*") if p.is_file())
            assert names == ["photos/a.jpg"]
        finally:
            await jobs.stop()

    asyncio.run(main())


def test_retention_removes_uploads_and_the_jobs_own_results(tmp_path: Path) -> None:
    batch = ScriptedBatch()

    async def main() -> None:
        jobs = FileJobs(FilesConfig(retention_days=1), tmp_path / "data", batch_factory=lambda c, a, u: batch)
        await jobs.start()
        try:
            up = jobs.new_upload()
            f = up.open("a.jpg")
            f.write(b"pic")
            f.close()
            orphan = jobs.new_upload()
            job_id = jobs.submit("u", JobRequest.from_json({"inputs": [{"upload": up.id}]}))
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done")
            out = jobs.output_path(job_id, 0)
            assert out is not None and out.read_bytes() == b"out:pic"
            assert jobs.sweep(time.time() + 3600) == 0 and out.exists() and up.folder.exists()
            assert jobs.sweep(time.time() + 2 * 86400) == 1
            assert not out.exists() and not up.folder.exists() and not orphan.folder.exists()
            assert (jobs.job(job_id) or {})["expired"] is True
        finally:
            await jobs.stop()

    asyncio.run(main())


VISIBLE = 0.5  # a face a matcher would find (the judge reports down to 0.3)


# --- the real engine ------------------------------------------------------------------------------


def test_real_engine_photos_and_a_video_leave_no_face(tmp_path: Path, model_dir: Path, judge: Any) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        img = background(640, 480, seed=i)
        paste_face(img, 200, 100, 180)
        cv2.imwrite(str(src / f"photo{i}.jpg"), img)
    make_video(src / "clip.mp4", frames=40)
    (tmp_path / "out").mkdir()
    pictures: list[np.ndarray] = []

    def factory(cfg: EngineConfig, keep_audio: bool, user: str) -> Any:
        from streamproxy.anonymize import Batch

        batch = Batch(cfg, keep_audio=keep_audio, audit=True, user=user)
        run = batch.run

        def spy(job: Job, **kw: Any) -> FileResult:
            inner = kw.get("on_picture")

            def keep(bgr: np.ndarray) -> None:
                pictures.append(bgr.copy())
                if inner:
                    inner(bgr)

            kw["on_picture"] = keep
            return run(job, **kw)

        batch.run = spy  # type: ignore[method-assign]
        return batch

    async def main() -> dict[str, Any]:
        jobs = FileJobs(
            FilesConfig(roots={"in": str(src), "out": str(tmp_path / "out")}),
            tmp_path / "data",
            model_dir,
            batch_factory=factory,
        )
        await jobs.start()
        try:
            job_id = jobs.submit("dpo", _request(quality="balanced"))
            await _until(lambda: (jobs.job(job_id) or {}).get("state") == "done", "job done", 240)
            job = jobs.job(job_id)
            assert job is not None
            return job
        finally:
            await jobs.stop()

    job = asyncio.run(main())
    assert [f["state"] for f in job["files"]] == ["done", "done", "done"], job["files"]
    outdir = tmp_path / "out" / "run1" / "in"

    def faces(img: np.ndarray) -> int:
        return sum(1 for d in judge.detect_bgr(img) if d.score >= VISIBLE)

    for name in ("photo0.jpg", "photo1.jpg"):
        before, after = cv2.imread(str(src / name)), cv2.imread(str(outdir / name))
        assert before is not None and after is not None
        assert faces(before) == 1 and faces(after) == 0, name
    assert pictures, "no thumbnail picture was offered"
    assert [faces(p) for p in pictures] == [0] * len(pictures), "a thumbnail shows a face"
    record = json.loads((tmp_path / "out" / "run1" / "streamproxy-job-1.audit.json").read_text())
    by_name = {f["output"]["name"]: f for f in record["files"] if f.get("output")}
    for name in ("photo0.jpg", "photo1.jpg", "clip.mp4"):
        digest = hashlib.sha256((outdir / name).read_bytes()).hexdigest()
        assert by_name[name]["output"]["sha256"] == digest
        assert by_name[name]["input"]["sha256"] == hashlib.sha256((src / name).read_bytes()).hexdigest()
    assert os.path.exists(outdir / "clip.mp4.audit.json")
