"""The Files page's job queue: START becomes a job; its files run through the CLI's engine.

    submit(user, JobRequest) -> job id        inputs checked against the roots, files collected as the
                                              CLI collects them (anonymize.collect_jobs), all in SQLite
    worker (one per `files.concurrent_jobs`)  takes the oldest queued job; a thread of its own runs its
                                              files one by one through `anonymize.Batch.run` (models
                                              loaded once per job), with cancel, progress and thumbnail
    job(id) / jobs()                          what the page polls: the rows plus the running file's live
                                              progress (frames done, frame/s, ETA)

The engine is the CLI's (`Batch`), so a fix in one holds in the other. A bad file is a failed row and
the batch goes on; cancel stops a file between two frames (its temporary output removed) or takes a
queued one off the queue. A graceful stop puts the running file back in the queue; a crash leaves it
`running` in the database, and the next start marks it failed (store.py).

Uploads are written under `<data_dir>/files/uploads/<id>/` within the `files.max_upload_*` limits and
leave with their job (`files.retention_days` after it ended); uploads no job took leave after a day.
Inside a live service the job threads run at a lower CPU priority than the cameras (`nice`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import cv2
import numpy as np
from pydantic import ValidationError

from streamproxy.anonymize import BulkSummary, FileResult, Job, collect_jobs, count_frames
from streamproxy.config import EngineConfig, FilesConfig, User
from streamproxy.files.roots import PathRefused, Roots, clean_relative
from streamproxy.files.store import FINAL_FILE, FileRow, JobRow, Store

log = logging.getLogger(__name__)

THUMB_WIDTH = 320
# In a file's review folder while its review video is older than its re-rendered output.
PROXY_STALE = ".proxy-stale"
THUMBS_KEPT = 64  # thumbnails of finished files kept in memory (the running ones always are)
ORPHAN_UPLOAD_S = 24 * 3600  # an upload no job took is removed after this
SWEEP_EVERY_S = 600.0


class TooLarge(Exception):
    """An upload over one of the files.max_upload_* limits (HTTP 413); the message names the limit."""


class BatchRunner(Protocol):
    """What the manager needs of `anonymize.Batch` (a protocol so that tests can hand in their own)."""

    def run(
        self,
        job: Job,
        *,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
        on_picture: Callable[[np.ndarray], None] | None = None,
        review_dir: Path | None = None,
    ) -> FileResult: ...

    def rerender(
        self,
        job: Job,
        review_dir: Path,
        edits: Any,
        *,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
        user: str = "",
        proxy: bool = True,
    ) -> FileResult: ...

    def settings(self) -> dict[str, Any]: ...


BatchFactory = Callable[[EngineConfig, bool, str], BatchRunner]


def default_batch(cfg: EngineConfig, keep_audio: bool, user: str) -> BatchRunner:
    from streamproxy.anonymize import Batch

    return Batch(cfg, keep_audio=keep_audio, audit=True, user=user)


# --- what START asks for ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputRef:
    """A file or folder under a root (root + path), or an upload (upload id, optionally a path in it)."""

    root: str | None = None
    path: str | None = None
    upload: str | None = None


@dataclass(frozen=True, slots=True)
class OutputRef:
    root: str
    path: str


@dataclass(frozen=True, slots=True)
class JobRequest:
    inputs: list[InputRef]
    output: OutputRef | None = None
    quality: str | None = None
    style: str = "blur"
    shape: str = "ellipse"
    objects: list[str] = field(default_factory=lambda: ["faces"])
    keep_audio: bool = False

    @classmethod
    def from_json(cls, data: Any) -> JobRequest:
        """The page's JSON; ValueError names the key that is wrong."""
        if not isinstance(data, dict):
            raise ValueError("body: a JSON object is expected")
        known = {"inputs", "output", "quality", "style", "shape", "objects", "keep_audio"}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"{extra[0]}: not a known key ({', '.join(sorted(known))})")
        raw = data.get("inputs")
        if not isinstance(raw, list) or not raw:
            raise ValueError("inputs: a list of at least one {root, path} or {upload}")
        inputs = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or not set(item) <= {"root", "path", "upload"}:
                raise ValueError(f"inputs[{i}]: {{root, path}} or {{upload[, path]}}")
            vals = {k: item.get(k) for k in ("root", "path", "upload")}
            if any(v is not None and not isinstance(v, str) for v in vals.values()):
                raise ValueError(f"inputs[{i}]: root, path and upload are strings")
            if (vals["upload"] is None) == (vals["root"] is None):
                raise ValueError(f"inputs[{i}]: give either root (with path) or upload")
            inputs.append(InputRef(**vals))
        out = data.get("output")
        output = None
        if out is not None:
            if not isinstance(out, dict) or not isinstance(out.get("root"), str):
                raise ValueError("output: {root, path} or null (results kept in the job)")
            output = OutputRef(out["root"], str(out.get("path") or ""))
        objects = data.get("objects", ["faces"])
        if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
            raise ValueError('objects: a list such as ["faces"] or ["faces", "plates"]')
        for key in ("quality", "style", "shape"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise ValueError(f"{key}: a string")
        if not isinstance(data.get("keep_audio", False), bool):
            raise ValueError("keep_audio: true or false")
        return cls(
            inputs=inputs,
            output=output,
            quality=data.get("quality"),
            style=data.get("style") or "blur",
            shape=data.get("shape") or "ellipse",
            objects=objects,
            keep_audio=bool(data.get("keep_audio", False)),
        )

    def engine(self, model_dir: Path | None) -> EngineConfig:
        """The engine settings, built as the CLI builds them (same defaults, same meanings)."""
        det: dict[str, Any] = {}
        if model_dir is not None:
            det["model_dir"] = model_dir
        body: dict[str, Any] = {
            "detector": det,
            "obfuscation": {"style": self.style, "shape": self.shape},
            "objects": self.objects,
            "fail_closed": {"action": "obfuscate"},
        }
        if self.quality is not None:
            body["quality"] = self.quality
        try:
            return EngineConfig.model_validate(body)
        except ValidationError as err:
            e = err.errors()[0]
            loc = [str(p) for p in e["loc"]]
            key = loc[-1] if loc[0] == "obfuscation" else loc[0]
            raise ValueError(f"{key}: {e['msg'].removeprefix('Value error, ')}") from None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- uploads ----------------------------------------------------------------------------------------


class Upload:
    """One upload (several files, a folder's relative paths kept) within the files limits."""

    def __init__(self, folder: Path, cfg: FilesConfig) -> None:
        self.id = folder.name
        self.folder = folder
        self.cfg = cfg
        self.files = 0
        self.bytes = 0

    def open(self, name: str) -> UploadFile:
        """A file of this upload under its relative name (a folder upload's path kept); PathRefused for
        a name that is not a plain relative path, TooLarge past the count limit."""
        rel = clean_relative(name.replace("\\", "/"))
        if not rel.parts:
            raise PathRefused("an uploaded file needs a name")
        if self.files >= self.cfg.max_upload_files:
            raise TooLarge(
                f"more than {self.cfg.max_upload_files} files in one upload (files.max_upload_files)"
            )
        self.files += 1
        dst = self.folder / rel
        stem, n = dst, 2
        while dst.exists():
            dst = stem.with_name(f"{stem.stem} ({n}){stem.suffix}")
            n += 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        return UploadFile(self, dst)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class UploadFile:
    def __init__(self, upload: Upload, dst: Path) -> None:
        self.upload = upload
        self.dst = dst
        self.size = 0
        self._tmp = dst.with_name(f".{dst.name}.upload")
        self._fh: IO[bytes] | None = open(self._tmp, "wb")

    def write(self, data: bytes) -> None:
        cfg = self.upload.cfg
        self.size += len(data)
        self.upload.bytes += len(data)
        if self.size > cfg.max_upload_bytes:
            self.abort()
            raise TooLarge(f"a file over {cfg.max_upload_bytes} bytes (files.max_upload_bytes)")
        if self.upload.bytes > cfg.max_upload_total_bytes:
            self.abort()
            raise TooLarge(
                f"an upload over {cfg.max_upload_total_bytes} bytes (files.max_upload_total_bytes)"
            )
        assert self._fh is not None
        self._fh.write(data)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._tmp.replace(self.dst)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._tmp.unlink(missing_ok=True)


# --- live progress ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Live:
    """A running file's progress, in memory only (the database gets the start and the end)."""

    total: int
    done: int = 0
    first_at: float | None = None  # when the first frame was done: the rate excludes model loading
    first_done: int = 0
    now: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    thumb: bytes | None = None
    thumb_at: float = 0.0

    def frame(self, done: int) -> None:
        self.now = time.monotonic()
        if self.first_at is None:
            self.first_at, self.first_done = self.now, done
        self.done = done

    @property
    def fps(self) -> float:
        if self.first_at is None or self.now - self.first_at < 0.5:
            return 0.0
        return (self.done - self.first_done) / (self.now - self.first_at)

    @property
    def eta_s(self) -> float | None:
        fps = self.fps
        if fps <= 0 or self.total <= 0:
            return None
        return max(0.0, (self.total - self.done) / fps)


def _thumb(bgr: np.ndarray) -> bytes | None:
    h, w = bgr.shape[:2]
    if w > THUMB_WIDTH:
        bgr = cv2.resize(bgr, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
    ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 75])
    return enc.tobytes() if ok else None


# --- what the review's answers need of a log ------------------------------------------------------

REVIEWS_KEPT = 4  # files whose review index is kept (each: its tracks JSON, ~8 MB for a 10-minute crowd)
_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = True


@contextlib.contextmanager
def _gc_paused() -> Any:
    """No cyclic garbage collection while a review log is read and linked.

    A 10-minute crowd video's log and tracks are ~470k tracked objects made in a few seconds: they
    survive young collections, and every time they grow the oldest generation by a quarter CPython
    runs a full collection of the whole process with the GIL held. Measured on such a log, three in a
    row with each kept as before: 6, 4 and 2 full collections while they were read and linked, the
    longest 0.30, 0.88 and 1.23 s: the status answers that stalled 0.29, 0.92 and 1.14 s as the
    benchmark's 1st, 2nd and 3rd video finished (every thread waits, live cameras too). They are
    acyclic (a frame holds boxes; a track holds boxes), so reference counting frees them once the
    index is made; nothing of them is kept (`_ReviewIndex`). Now: no full collection, the longest wait
    of another thread 15-27 ms. Counted, so that two threads making indexes do not re-enable early."""
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()  # an embedding program may run without it: left so
        _gc_pausers += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


@dataclass(frozen=True, slots=True)
class _ReviewIndex:
    """What the answers need of a file's review log, without the log: its header and size, each
    frame's pts (for an original frame), the frames that failed closed, the track ids (what an edit may
    name), and the tracks as the page's JSON. Holding the parsed log and tracks instead kept ~470k
    objects a long video in the process for every full collection to walk."""

    mtime: float
    header: dict[str, Any]
    size: tuple[int, int]
    pts: np.ndarray
    failed: tuple[int, ...]
    track_ids: frozenset[int]
    tracks_json: bytes

    @classmethod
    def build(cls, folder: Path, mtime: float) -> _ReviewIndex:
        from streamproxy.files.edits import link_tracks, read_log

        with _gc_paused():
            log_ = read_log(folder)
            tracks = link_tracks(log_)
            # One json.dumps per track, not one of the whole list: the C encoder holds the GIL for all
            # of a call (0.33 s for the 7.3 MB of a 10-minute crowd); between calls other threads run.
            # The same bytes as json.dumps({"tracks": [...]}, separators=(",", ":")) of the whole.
            parts = [json.dumps(_track_json(t), separators=(",", ":")) for t in tracks]
            index = cls(
                mtime=mtime,
                header=dict(log_.header),
                size=(log_.width, log_.height),
                pts=np.fromiter((fr.pts for fr in log_.frames), np.int64, len(log_.frames)),
                failed=tuple(fr.i for fr in log_.frames if fr.fail),
                track_ids=frozenset(t.id for t in tracks),
                tracks_json=('{"tracks":[' + ",".join(parts) + "]}").encode(),
            )
            # Freed here, before collection resumes (what the collector has not seen it never walks),
            # and a slice at a time: freeing 470k objects at once is one C call, ~70 ms with the GIL.
            for objs in (tracks, log_.frames):
                while objs:
                    del objs[-2000:]
        return index


def _result_json(res: FileResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(res):
        if f.name in ("src", "dst", "audit", "error", "ok"):
            continue
        out[f.name] = getattr(res, f.name)
    return out


def _result_from_row(row: FileRow) -> FileResult:
    names = {f.name for f in dataclasses.fields(FileResult)}
    kw = {k: v for k, v in row.result.items() if k in names and k not in ("src", "dst", "ok", "error")}
    return FileResult(
        Path(row.src), Path(row.dst) if row.dst else None, row.state == "done", error=row.error, **kw
    )


def _lower_priority(nice: int) -> None:
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as err:
        log.debug("files: job thread priority unchanged (%s)", err)


# --- the queue --------------------------------------------------------------------------------------


class FileJobs:
    """The job queue of the Files page (see the module docstring)."""

    def __init__(
        self,
        cfg: FilesConfig,
        data_dir: Path,
        model_dir: Path | None = None,
        *,
        batch_factory: BatchFactory = default_batch,
        nice: int = 0,
        users: list[User] | None = None,
    ) -> None:
        self.cfg = cfg
        # Who may see originals (server.users[].originals); without users, the one local user may.
        self._any_user = not users
        self._originals = {u.username for u in users or [] if u.originals}
        # What the answers need of each file's review log (_ReviewIndex), kept while the log is unchanged.
        self._reviews: OrderedDict[tuple[int, int], _ReviewIndex] = OrderedDict()
        self.roots = Roots(cfg.roots)
        self.dir = data_dir / "files"
        self.uploads_dir = self.dir / "uploads"
        self.jobs_dir = self.dir / "jobs"
        self.model_dir = model_dir
        self.batch_factory = batch_factory
        self.nice = nice
        self.store: Store | None = None
        self._live: dict[tuple[int, int], _Live] = {}
        # Files whose review proxy is being made again after a re-render, and what stops that.
        self._proxy_updating: dict[tuple[int, int], threading.Event] = {}
        self._thumbs: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._job_cancel: dict[int, threading.Event] = {}
        self._running: set[int] = set()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = threading.Event()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._renders: set[asyncio.Future[None]] = set()
        self.jobs_run = 0  # read by tests

    # --- lifecycle ---
    async def start(self) -> None:
        if self.store is not None:
            return
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.dir / "jobs.sqlite3")
        for row in self.store.recover():
            if row.dst:
                _tmp_of(Path(row.dst)).unlink(missing_ok=True)
            log.warning(
                "files: job %d: %s: %s", row.job_id, row.name, "interrupted by a restart: marked failed"
            )
        self._stopping.clear()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake.set()  # jobs queued before the restart run now
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.cfg.concurrent_jobs, thread_name_prefix="files-job"
        )
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"files-worker-{i}")
            for i in range(self.cfg.concurrent_jobs)
        ]
        self._tasks.append(asyncio.create_task(self._sweeper(), name="files-sweeper"))

    async def stop(self) -> None:
        """The running files stop between two frames and go back to the queue (they run again after
        the next start)."""
        if self.store is None:
            return
        self._stopping.set()
        with self._lock:
            for live in self._live.values():
                live.cancel.set()
            for stop_proxy in self._proxy_updating.values():  # the earlier proxy stays
                stop_proxy.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._renders:  # stopped between two frames: the earlier output stays, the file says so
            await asyncio.gather(*self._renders, return_exceptions=True)
        if self._pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown)
            self._pool = None
        self.store.close()
        self.store = None

    def _db(self) -> Store:
        if self.store is None:
            raise RuntimeError("files: the job queue is not started")
        return self.store

    # --- uploads ---
    def new_upload(self) -> Upload:
        folder = self.uploads_dir / secrets.token_hex(8)
        folder.mkdir(parents=True)
        return Upload(folder, self.cfg)

    def _upload_dir(self, upload_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16}", upload_id):
            raise PathRefused("no such upload")
        folder = self.uploads_dir / upload_id
        if not folder.is_dir():
            raise PathRefused("no such upload (it may have been removed: upload again)")
        return folder

    # --- submit ---
    def submit(self, user: str, req: JobRequest) -> int:
        """Check the request, collect its files, queue the job; PathRefused or ValueError (the key named)."""
        db = self._db()
        engine = req.engine(self.model_dir)  # ValueError names the key
        paths: list[Path] = []
        allowed: list[Path] = []
        uploads: list[str] = []
        for i, ref in enumerate(req.inputs):
            if ref.upload is not None:
                folder = self._upload_dir(ref.upload)
                uploads.append(ref.upload)
                allowed.append(folder.resolve())
                if ref.path:
                    sub = (folder / clean_relative(ref.path)).resolve()
                    if not sub.is_relative_to(folder.resolve()) or not sub.exists():
                        raise PathRefused(f"inputs[{i}]: no such file in the upload")
                    paths.append(sub)
                else:
                    paths.extend(sorted(p for p in folder.iterdir() if not p.name.startswith(".")))
            else:
                assert ref.root is not None
                try:
                    paths.append(self.roots.resolve(ref.root, ref.path or ""))
                except FileNotFoundError as err:
                    raise ValueError(f"inputs[{i}]: {err}") from None
        allowed.extend(self.roots.base(r) for r in self.roots.names())
        if req.output is not None:
            out_dir = self.roots.resolve(req.output.root, req.output.path, must_exist=False)
            out_base = self.roots.base(req.output.root)
            own = False
        else:
            out_dir = out_base = Path()  # set below, once the job has its id
            own = True
        request = req.as_json()
        # The job's row first (its id names its own folder), then its files.
        tmp_dir = self.jobs_dir / f"new-{secrets.token_hex(4)}"
        collect_out = tmp_dir / "out" if own else out_dir
        found, errors = collect_jobs(paths, collect_out)
        rows: list[tuple[str, str | None, str, str, str, str]] = []
        for job in found:
            src_real = job.src.resolve()
            name = _display_name(job.src, paths)
            if not any(src_real == a or src_real.is_relative_to(a) for a in allowed):
                rows.append(
                    (
                        str(job.src),
                        None,
                        name,
                        job.kind,
                        "failed",
                        "a link leading outside the allowed folders: skipped",
                    )
                )
                continue
            if not own and not _inside(job.dst, out_base):
                rows.append(
                    (
                        str(job.src),
                        None,
                        name,
                        job.kind,
                        "failed",
                        "its output would land outside the output root (a link): skipped",
                    )
                )
                continue
            rows.append((str(job.src), str(job.dst), name, job.kind, "queued", ""))
        for e in errors:
            rows.append((str(e.src), None, _display_name(e.src, paths), "", "failed", e.error))
        if not rows:
            raise ValueError("inputs: no photos or videos found in what was chosen")
        job_id = db.add_job(user, request, out_dir, own, uploads, rows)
        if own:
            # The job's own results folder, named by its id; the rows are rewritten to it.
            final = self.jobs_dir / str(job_id) / "out"
            for f in db.files(job_id):
                if f.dst:
                    db.set_file(job_id, f.n, dst=str(final / Path(f.dst).relative_to(collect_out)))
            db.set_job(job_id, output_dir=str(final))
        log.info(
            "files: job %d queued by %s: %d file(s), engine %s",
            job_id,
            user or "-",
            len(rows),
            engine.quality,
        )
        if self._wake is not None:
            self._wake.set()
        return job_id

    # --- cancel ---
    def cancel_job(self, job_id: int) -> bool:
        db = self._db()
        row = db.job(job_id)
        if row is None:
            return False
        with self._lock:
            ev = self._job_cancel.get(job_id)
            if ev is not None:
                ev.set()
            for (j, _n), live in self._live.items():
                if j == job_id:
                    live.cancel.set()
        db.cancel_queued(job_id)
        if row.state == "queued":
            db.set_job(job_id, state="cancelled", finished=time.time(), summary=self._summary(job_id))
        return True

    def cancel_file(self, job_id: int, n: int) -> bool:
        db = self._db()
        if db.file(job_id, n) is None:
            return False
        with self._lock:
            live = self._live.get((job_id, n))
            if live is not None:
                live.cancel.set()
        db.cancel_queued(job_id, n)
        return True

    # --- what the page reads ---
    def jobs(self) -> list[dict[str, Any]]:
        return [self._job_json(r, files=False) for r in self._db().jobs()]

    def job(self, job_id: int, since: int | None = None) -> dict[str, Any] | None:
        """A job with its files; with `since` (the `seq` of an earlier answer) only the files that changed
        after it and the running ones: a page polling a 1000-photo job every second then reads, encodes and
        sends a few rows, not a thousand (measured: ~45 ms of the event loop per poll on an idle box)."""
        row = self._db().job(job_id)
        return self._job_json(row, files=True, since=since) if row is not None else None

    def job_exists(self, job_id: int) -> bool:
        return self._db().job(job_id) is not None

    def file_exists(self, job_id: int, n: int) -> bool:
        return self._db().has_file(job_id, n)

    def file_status(self, job_id: int, n: int) -> dict[str, Any] | None:
        """One file as the job's answer shows it (None: no such file): one row, not the job's every file."""
        row = self._db().file(job_id, n)
        return self._file_json(row) if row is not None else None

    def thumbnail(self, job_id: int, n: int) -> bytes | None:
        with self._lock:
            live = self._live.get((job_id, n))
            if live is not None:
                return live.thumb
            return self._thumbs.get((job_id, n))

    def output_path(self, job_id: int, n: int) -> Path | None:
        row = self._db().file(job_id, n)
        if row is None or row.state != "done" or not row.dst:
            return None
        path = Path(row.dst)
        return path if path.is_file() else None

    def input_path(self, job_id: int, n: int) -> Path | None:
        """The original, only when it is still where it was and inside a root or the job's uploads."""
        db = self._db()
        row, job = db.file(job_id, n), db.job(job_id)
        if row is None or job is None:
            return None
        path = Path(row.src)
        inside_upload = any(
            path.resolve().is_relative_to((self.uploads_dir / u).resolve()) for u in job.uploads
        )
        if not path.is_file() or not (inside_upload or self.roots.contains(path)):
            return None
        return path

    def audit(self, job_id: int) -> dict[str, Any] | None:
        db = self._db()
        row = db.job(job_id)
        if row is None:
            return None
        record = dict(row.record) if row.record is not None else self._record(row)
        # Who opened an original, and when: read at each request (an access after the job ended counts too).
        names = {f.n: f.name for f in db.files(job_id)}
        record["original_views"] = [
            {
                "file": names.get(a["n"], str(a["n"])),
                "user": a["user"] or "-",
                "at": _iso(a["at"]),
                "what": a["what"],
            }
            for a in db.accesses(job_id)
        ]
        return record

    def report_html(self, job_id: int) -> str | None:
        from streamproxy.files.audit import report_html

        record = self.audit(job_id)
        return report_html(record) if record is not None else None

    def _job_json(self, row: JobRow, files: bool, since: int | None = None) -> dict[str, Any]:
        changes = self._db().changes(row.id, -1 if since is None else since, rows=files)
        counts = changes.counts
        out: dict[str, Any] = {
            "id": row.id,
            "state": row.state,
            "user": row.user,
            "created": row.created,
            "started": row.started,
            "finished": row.finished,
            "settings": {k: v for k, v in row.request.items() if k not in ("inputs", "output")},
            "output": _shown_output(row, self.roots),
            "files_total": sum(counts.values()),
            "files_by_state": counts,
            "summary": row.summary,
            "expired": row.expired,
            # The next poll's `since`: it then gets only the files that changed after this answer.
            "seq": changes.seq,
        }
        if files:
            out["files"] = [self._file_json(f) for f in changes.files]
            if since is not None:
                out["since"] = since  # "files" holds the changes since then, not every file
        return out

    def _file_json(self, f: FileRow) -> dict[str, Any]:
        with self._lock:
            live = self._live.get((f.job_id, f.n))
            has_thumb = (live is not None and live.thumb is not None) or (f.job_id, f.n) in self._thumbs
        out: dict[str, Any] = {
            "n": f.n,
            "name": f.name,
            "kind": f.kind,
            "state": f.state,
            "done": f.done,
            "total": f.total,
            "fps": None,
            "eta_s": None,
            "error": f.error,
            "result": f.result,
            "output": Path(f.dst).name if f.dst and f.state == "done" else None,
            "thumb": has_thumb,
        }
        if live is not None:
            out.update(done=live.done, total=live.total, fps=round(live.fps, 1), eta_s=live.eta_s)
        return out

    # --- review (issue #23): tracks, edits, re-render, originals ---
    def review_dir(self, job_id: int, n: int) -> Path:
        return self.jobs_dir / str(job_id) / "review" / str(n)

    def can_see_originals(self, user: str) -> bool:
        return self._any_user or user in self._originals

    def _review_index(self, job_id: int, n: int) -> _ReviewIndex | None:
        """What the answers need of the file's review log, made once per log (None: no log)."""
        folder = self.review_dir(job_id, n)
        try:
            mtime = (folder / "log.jsonl.gz").stat().st_mtime
        except OSError:
            return None
        with self._lock:
            hit = self._reviews.get((job_id, n))
            if hit is not None and hit.mtime == mtime:
                self._reviews.move_to_end((job_id, n))
                return hit
        index = _ReviewIndex.build(folder, mtime)
        with self._lock:
            self._reviews[(job_id, n)] = index
            while len(self._reviews) > REVIEWS_KEPT:
                self._reviews.popitem(last=False)
        return index

    def review(self, job_id: int, n: int, *, tracks: bool = True) -> dict[str, Any] | None:
        """The review's data; without `tracks` (the page's first ask) no "tracks" key: those come from
        review_tracks_json."""
        row = self._db().file(job_id, n)
        if row is None:
            return None
        got = self._review_index(job_id, n) if row.state in ("done", "rendering") else None
        out: dict[str, Any] = {
            "name": row.name,
            "kind": row.kind,
            "state": row.state,
            "rendering": row.state == "rendering",
            "error": row.error,
            "edits": row.edits,
            "reviewable": got is not None,
            "proxy": self.proxy_path(job_id, n) is not None,
            # The output is re-rendered and done; the review's video is still the one before the
            # edits until this is false (the page waits for it, then loads the new one).
            "proxy_updating": self.proxy_updating(job_id, n),
            # The output was re-rendered, and the review video could not be made again from it (a
            # stop, a crash, an error): it shows the output before those edits until the next re-render.
            "proxy_stale": not self.proxy_updating(job_id, n)
            and (self.review_dir(job_id, n) / PROXY_STALE).exists(),
        }
        if got is None:
            return out
        head = got.header
        out.update(
            width=head["width"],
            height=head["height"],
            fps=head["fps"],
            frames=head["frames"],
            failed_frames=list(got.failed),
        )
        if tracks:
            out["tracks"] = json.loads(got.tracks_json)["tracks"]
        return out

    def review_tracks_json(self, job_id: int, n: int) -> bytes | None:
        """{"tracks": [...]} (review()'s tracks) as JSON bytes, made once per log; None: no review."""
        row = self._db().file(job_id, n)
        if row is None or row.state not in ("done", "rendering"):
            return None
        got = self._review_index(job_id, n)
        return got.tracks_json if got is not None else None

    def proxy_updating(self, job_id: int, n: int) -> bool:
        """The file's review proxy is being made again from its re-rendered output."""
        with self._lock:
            return (job_id, n) in self._proxy_updating

    def proxy_path(self, job_id: int, n: int) -> Path | None:
        """What the review shows: the anonymized proxy of a video, the output of a photo."""
        row = self._db().file(job_id, n)
        if row is None or row.state not in ("done", "rendering"):
            return None
        if row.kind == "image":
            return self.output_path(job_id, n) if row.state == "done" else None
        proxy = self.review_dir(job_id, n) / "proxy.mp4"
        return proxy if proxy.is_file() else None

    def save_edits(self, job_id: int, n: int, user: str, data: Any) -> dict[str, Any]:
        """The whole edits document, checked (ValueError names the key), saved in the database and beside
        the output as `<output>.edits.json` (what the CLI's --edits takes)."""
        from streamproxy.files.edits import edits_json, parse_edits

        db = self._db()
        row = db.file(job_id, n)
        got = self._review_index(job_id, n)
        if row is None or got is None or not row.dst:
            raise ValueError(
                "file: this file has no review (not finished, or made before the review existed)"
            )
        edits = parse_edits(data, got.header["frames"], tracks=got.track_ids, size=got.size)
        doc = edits_json(edits)
        doc["by"] = user or "-"
        doc["saved"] = _iso(time.time())
        db.set_file(job_id, n, edits=doc)
        dst = Path(row.dst)
        try:
            tmp = dst.with_name(f".{dst.name}.edits.json.part")
            tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
            tmp.replace(dst.with_name(f"{dst.name}.edits.json"))
        except OSError as err:
            log.warning(
                "files: job %d: %s: the edits could not be written beside the output: %s",
                job_id,
                row.name,
                err,
            )
        return doc

    def follow(
        self, job_id: int, n: int, frame: int, box: list[float], start: int, end: int,
        keyframes: dict[int, list[float]] | None = None,
    ) -> dict[int, list[float]]:  # fmt: skip
        """Boxes of an added mask, followed on the original from the user's keyframes (slow: a thread)."""
        from streamproxy.files.edits import follow
        from streamproxy.types import Box

        row = self._db().file(job_id, n)
        if row is None or row.kind != "video":
            raise ValueError("file: only a video's masks are followed")
        src = self.input_path(job_id, n)
        if src is None:
            raise ValueError("file: the original is no longer kept: the mask cannot follow its object")
        keys = {int(k): Box(*map(float, v)) for k, v in (keyframes or {}).items()}
        boxes = follow(src, frame, Box(*map(float, box)), start, end, keys)
        return {i: _box_list(b) for i, b in boxes.items()}

    def rerender(self, job_id: int, n: int, user: str) -> None:
        """Queue the file's re-render with its saved edits (the earlier output stays until it is done)."""
        db = self._db()
        row = db.file(job_id, n)
        if row is None or row.state != "done":
            raise ValueError("file: only a finished file can be re-rendered")
        if self.proxy_updating(job_id, n):
            # Two remakes of one proxy would write the same temporary file: the second waits its turn.
            raise ValueError("file: its review video is still being updated: re-render in a moment")
        if self._review_index(job_id, n) is None:
            raise ValueError(
                "file: this file has no review data (made before the review existed): run it again"
            )
        if self.input_path(job_id, n) is None:
            raise ValueError("file: the original is no longer kept: nothing to re-render from")
        assert self._loop is not None
        db.set_file(job_id, n, state="rendering", error="")
        fut = self._loop.run_in_executor(self._pool, self._rerender, job_id, n, user)
        self._renders.add(fut)
        fut.add_done_callback(self._renders.discard)

    def _rerender(self, job_id: int, n: int, user: str) -> None:
        from streamproxy.files.edits import parse_edits

        _lower_priority(self.nice)
        db = self._db()
        row, job = db.file(job_id, n), db.job(job_id)
        if row is None or job is None or not row.dst:
            return
        got = self._review_index(job_id, n)
        live = _Live(total=got.header["frames"] if got else 1)
        with self._lock:
            self._live[(job_id, n)] = live
        try:
            assert got is not None
            req = JobRequest.from_json(job.request)
            batch = self.batch_factory(req.engine(self.model_dir), req.keep_audio, user)
            edits = parse_edits(
                row.edits or {"format": "streamproxy-edits/1", "edits": []},
                live.total,
                tracks=got.track_ids,
                size=got.size,
            )
            # The user waits for the output: the review proxy is made after it, from it (below).
            res = batch.rerender(
                Job(Path(row.src), Path(row.dst), row.kind), self.review_dir(job_id, n), edits,
                cancel=live.cancel, on_frame=live.frame, user=user, proxy=False,
            )  # fmt: skip
        except Exception as err:
            log.exception("files: job %d: %s: re-render failed", job_id, row.name)
            res = FileResult(Path(row.src), None, False, error=f"{type(err).__name__}: {err}")
        finally:
            with self._lock:
                self._live.pop((job_id, n), None)
        remake = res.ok and row.kind == "video"
        stop_proxy = threading.Event()
        stale = self.review_dir(job_id, n) / PROXY_STALE
        if remake:
            # Until the remake has put the new review video in place, the one there shows the output
            # before the edits: marked on disk, so that a stop, a crash or a failed remake still says so.
            try:
                stale.touch()
            except OSError as err:
                log.warning("files: job %d: %s: %s", job_id, row.name, err)
            with self._lock:  # set before the file says done: the page never sees done without it
                self._proxy_updating[(job_id, n)] = stop_proxy
        if res.ok:
            db.set_file(job_id, n, state="done", error="", audit=res.audit)
            log.info("files: job %d: %s re-rendered by %s with %d edit(s)", job_id, row.name, user or "-",
                     len((row.edits or {}).get("edits", [])))  # fmt: skip
        else:
            why = "stopped" if res.cancelled else res.error
            db.set_file(job_id, n, state="done", error=f"re-render failed ({why}): the earlier output stands")
        try:
            job = db.job(job_id)
            if job is not None and job.finished is not None:
                record = self._record(job)
                db.set_job(job_id, record=record)
                self._write_record(job, record)
            if remake and not self._stopping.is_set():
                if self._remake_proxy(batch, job_id, n, Path(row.dst), stop_proxy):
                    stale.unlink(missing_ok=True)
        finally:
            with self._lock:
                self._proxy_updating.pop((job_id, n), None)

    def _remake_proxy(
        self, batch: BatchRunner, job_id: int, n: int, dst: Path, stop: threading.Event
    ) -> bool:
        """The review proxy made again from the re-rendered output (Batch.remake_proxy): the earlier
        one stays on any failure or a stop (said in the log; False); never raises."""
        remake: Callable[..., bool] | None = getattr(batch, "remake_proxy", None)
        if remake is None:  # a stand-in batch without it (tests): the earlier proxy stays
            return False
        if self._stopping.is_set():
            stop.set()
        try:
            t0 = time.monotonic()
            ok = bool(remake(Job(dst, dst, "video"), self.review_dir(job_id, n), cancel=stop))
            log.info("files: job %d: %s: review video %s in %.1f s", job_id, dst.name,
                     "made again" if ok else "NOT made again (the earlier one stays)",
                     time.monotonic() - t0)  # fmt: skip
            return ok
        except Exception:
            log.exception("files: job %d: %s: the review video could not be made again", job_id, dst.name)
            return False

    def record_original(self, job_id: int, n: int, user: str, what: str) -> None:
        """An original (not anonymized) file or frame was shown: on the job's audit record."""
        self._db().add_access(job_id, n, user, what)

    def original_frame(self, job_id: int, n: int, frame: int, user: str) -> bytes | None:
        """JPEG of the ORIGINAL picture at frame `frame` (the caller checked can_see_originals); recorded."""
        src = self.input_path(job_id, n)
        got = self._review_index(job_id, n)
        row = self._db().file(job_id, n)
        if src is None or got is None or row is None:
            return None
        if not 0 <= frame < len(got.pts):
            return None
        bgr = _decode_at(src, row.kind, int(got.pts[frame]), got.header)
        if bgr is None:
            return None
        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return None
        self.record_original(job_id, n, user, f"original frame {frame}")
        return enc.tobytes()

    # --- running ---
    async def _worker(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            with self._lock:
                job = self._db().next_queued_job(self._running)
                if job is None:
                    self._wake.clear()
                    continue
                self._running.add(job.id)
                self._job_cancel[job.id] = threading.Event()
            try:
                await loop.run_in_executor(self._pool, self._run_job, job)
            finally:
                with self._lock:
                    self._running.discard(job.id)
                    self._job_cancel.pop(job.id, None)

    def _run_job(self, job: JobRow) -> None:
        _lower_priority(self.nice)
        db = self._db()
        started = job.started or time.time()
        db.set_job(job.id, state="running", started=started)
        try:
            req = JobRequest.from_json(job.request)
            engine = req.engine(self.model_dir)
            batch = self.batch_factory(engine, req.keep_audio, job.user)
        except Exception as err:  # a missing model, a bad setting: every file says why
            log.error("files: job %d: cannot start: %s", job.id, err)
            for f in db.files(job.id):
                if f.state == "queued":
                    db.set_file(
                        job.id,
                        f.n,
                        state="failed",
                        error=f"the job could not start: {err}",
                        finished=time.time(),
                    )
            self._finish_job(job.id, None)
            return
        cancel_job = self._job_cancel[job.id]
        for f in db.files(job.id):
            if f.state != "queued":
                continue
            if self._stopping.is_set():
                return  # the job stays queued: it goes on after the next start
            if cancel_job.is_set():
                break
            current = db.file(job.id, f.n)
            if current is None or current.state != "queued":
                continue  # cancelled while waiting
            self._run_file(job, f, batch)
        if self._stopping.is_set():
            db.set_job(job.id, state="queued")
            return
        self._finish_job(job.id, batch)
        self.jobs_run += 1

    def _run_file(self, job: JobRow, f: FileRow, batch: BatchRunner) -> None:
        db = self._db()
        src, dst = Path(f.src), Path(f.dst or "")
        total = 1 if f.kind == "image" else max(1, count_frames(src))
        live = _Live(total=total)
        with self._lock:
            self._live[(job.id, f.n)] = live
        db.set_file(job.id, f.n, state="running", total=total, done=0, started=time.time())

        def on_picture(bgr: np.ndarray) -> None:
            jpeg = _thumb(bgr)
            if jpeg is not None:
                live.thumb, live.thumb_at = jpeg, time.monotonic()

        # A run makes the review video anew: a mark left by an earlier re-render no longer holds.
        (self.review_dir(job.id, f.n) / PROXY_STALE).unlink(missing_ok=True)
        try:
            res = batch.run(
                Job(src, dst, f.kind),
                cancel=live.cancel,
                on_frame=live.frame,
                on_picture=on_picture,
                review_dir=self.review_dir(job.id, f.n),
            )
        except Exception as err:  # Batch.run reports bad files itself; this is the net under it
            log.exception("files: job %d: %s: failed", job.id, f.name)
            res = FileResult(src, None, False, error=f"{type(err).__name__}: {err}")
        with self._lock:
            self._live.pop((job.id, f.n), None)
            if live.thumb is not None:
                self._thumbs[(job.id, f.n)] = live.thumb
                while len(self._thumbs) > THUMBS_KEPT:
                    self._thumbs.popitem(last=False)
        if res.cancelled and self._stopping.is_set():
            db.set_file(job.id, f.n, state="queued", done=0, started=None)
            return
        state = "done" if res.ok else ("cancelled" if res.cancelled else "failed")
        db.set_file(
            job.id,
            f.n,
            state=state,
            done=live.total if res.ok else live.done,
            error=res.error,
            result=_result_json(res),
            audit=res.audit,
            finished=time.time(),
        )
        if not res.ok:
            log.info("files: job %d: %s: %s", job.id, f.name, res.error)
        elif f.kind == "video" and not self._stopping.is_set():
            # The review's tracks are linked (and their JSON made) here, in the job's thread, not when the
            # review is first opened (a 10-minute crowd video: ~20 s of linking the page would wait for).
            try:
                self.review_tracks_json(job.id, f.n)
            except (OSError, ValueError) as err:
                log.warning("files: job %d: %s: its review could not be prepared: %s", job.id, f.name, err)

    def _summary(self, job_id: int) -> str:
        rows = self._db().files(job_id)
        summary = BulkSummary(results=[_result_from_row(r) for r in rows if r.state in FINAL_FILE])
        summary.seconds = sum(float(r.result.get("seconds", 0.0)) for r in rows)
        line = summary.line()
        cancelled = sum(r.state == "cancelled" for r in rows)
        if cancelled:
            line += f"; {cancelled} cancelled"
        return line

    def _record(self, job: JobRow, batch: BatchRunner | None = None) -> dict[str, Any]:
        from streamproxy.files.audit import job_record

        files = []
        for r in self._db().files(job.id):
            files.append(r.audit or {"input": {"name": r.name}, "state": r.state, "error": r.error})
        settings = batch.settings() if batch is not None else dict(job.request.get("settings", {}))
        if not settings:
            settings = {k: v for k, v in job.request.items() if k not in ("inputs", "output")}
        return job_record(
            job_id=job.id,
            user=job.user,
            started=job.started or job.created,
            finished=job.finished or time.time(),
            settings=settings,
            files=files,
        )

    def _finish_job(self, job_id: int, batch: BatchRunner | None) -> None:
        db = self._db()
        job = db.job(job_id)
        if job is None:
            return
        cancelled = self._job_cancel.get(job_id)
        state = "cancelled" if cancelled is not None and cancelled.is_set() else "done"
        now = time.time()
        db.set_job(job_id, state=state, finished=now, summary=self._summary(job_id))
        job = db.job(job_id)
        assert job is not None
        record = self._record(job, batch)
        db.set_job(job_id, record=record)
        self._write_record(job, record)
        log.info("files: job %d %s: %s", job_id, state, job.summary)

    def _write_record(self, job: JobRow, record: dict[str, Any]) -> None:
        """The job's record beside its outputs, as JSON and as the printable report."""
        from streamproxy.files.audit import report_html

        out = Path(job.output_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            texts = {
                f"streamproxy-job-{job.id}.audit.json": json.dumps(record, indent=2, ensure_ascii=False),
                f"streamproxy-job-{job.id}.report.html": report_html(record),
            }
            for name, text in texts.items():
                tmp = out / f".{name}.part"
                tmp.write_text(text, encoding="utf-8")
                tmp.replace(out / name)
        except OSError as err:
            log.warning("files: job %d: the record could not be written beside the outputs: %s", job.id, err)

    # --- retention ---
    async def _sweeper(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(None, self.sweep)
            await asyncio.sleep(SWEEP_EVERY_S)

    def sweep(self, now: float | None = None) -> int:
        """Remove what retention says is due: finished jobs' uploads and own results folders, and
        uploads no job took. Outputs under a root are never removed. How many jobs expired."""
        now = time.time() if now is None else now
        db = self._db()
        expired = 0
        if self.cfg.retention_days > 0:
            for job in db.finished_before(now - self.cfg.retention_days * 86400):
                for u in job.uploads:
                    shutil.rmtree(self.uploads_dir / u, ignore_errors=True)
                if job.own_output:
                    shutil.rmtree(self.jobs_dir / str(job.id), ignore_errors=True)
                db.set_job(job.id, expired=1)
                expired += 1
        taken = {u for j in db.jobs(limit=100_000) for u in j.uploads}
        for folder in self.uploads_dir.iterdir() if self.uploads_dir.is_dir() else []:
            if folder.name in taken:
                continue
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > ORPHAN_UPLOAD_S:
                    shutil.rmtree(folder, ignore_errors=True)
        return expired


def _tmp_of(dst: Path) -> Path:
    return dst.with_name(f".{dst.stem}.part{dst.suffix}")


def _inside(path: Path, base: Path) -> bool:
    """Whether `path` (which may not exist yet) stays inside `base` once its existing part is resolved."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    real = probe.resolve()
    return real == base or real.is_relative_to(base)


def _display_name(src: Path, chosen: list[Path]) -> str:
    """The file as the page shows it: its path inside what was chosen, never the absolute path."""
    for p in chosen:
        with contextlib.suppress(ValueError):
            rel = src.relative_to(p)
            return str(Path(p.name) / rel) if str(rel) != "." else p.name
    return src.name


def _shown_output(job: JobRow, roots: Roots) -> str:
    out = job.request.get("output")
    if isinstance(out, dict) and out.get("root"):
        return f"{out['root']}/{out.get('path') or ''}".rstrip("/")
    return "kept in the job (download below)"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _box_list(b: Any) -> list[float]:
    return [round(float(v), 1) for v in (b.x1, b.y1, b.x2, b.y2)]


def _track_json(t: Any) -> dict[str, Any]:
    """A review track as the page reads it: a box [x1, y1, x2, y2, score] per frame number."""
    return {
        "id": t.id,
        "first": t.first,
        "last": t.last,
        "boxes": {str(i): [*_box_list(b), round(float(sc), 3)] for i, (b, sc) in t.boxes.items()},
    }


def _decode_at(src: Path, kind: str, pts: int | None, header: dict[str, Any]) -> np.ndarray | None:
    """The original picture of one frame (a photo: the image, EXIF orientation applied)."""
    import av

    from streamproxy.anonymize import RAW_FORMATS, exif_orientation, upright

    if kind == "image":
        data = np.fromfile(src, dtype=np.uint8)
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        return upright(img, exif_orientation(data)) if img is not None else None
    try:
        with av.open(str(src), format=RAW_FORMATS.get(src.suffix.lower())) as c:
            vs = c.streams.video[0]
            if pts is not None:
                c.seek(pts, stream=vs, backward=True, any_frame=False)
            for f in c.decode(vs):
                if pts is None or f.pts is None or f.pts >= pts:
                    return f.to_ndarray(format="bgr24", threads=1)
    except (av.FFmpegError, OSError, IndexError):
        return None
    return None
