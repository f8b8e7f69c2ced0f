"""Jobs and their files in SQLite (`<data_dir>/files/jobs.sqlite3`): the queue survives a restart.

A job is what one START asked for; its files are the images and videos found in its inputs. States:

    job:  queued -> running -> done | cancelled      (a job with failed files is done: see its files)
    file: queued -> running -> done | failed | cancelled

What a restart finds: a file that was `running` is marked failed ("interrupted by a restart") and its
temporary output removed, so nothing half-written is ever presented as done (outputs are written under
a temporary name and renamed when complete: anonymize.py); the job goes back to the queue and its
files still `queued` run. Progress of a running file (frames done, speed, thumbnail) is kept in memory
by the manager, not written here frame by frame.

One connection, used under a lock from the event loop and the job threads (sqlite3 with
check_same_thread=False); writes are a handful per file, so the lock is never held long.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    user TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,        -- the settings asked for (JSON)
    output_dir TEXT NOT NULL,     -- where outputs go (a folder under a root, or the job's own)
    own_output INTEGER NOT NULL,  -- 1: the job's own folder in the data dir (removed with the job)
    uploads TEXT NOT NULL,        -- upload ids this job reads from (JSON list), removed with the job
    summary TEXT NOT NULL DEFAULT '',
    record TEXT,                  -- the job's audit record (JSON), when finished
    expired INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS files (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    n INTEGER NOT NULL,
    src TEXT NOT NULL,
    dst TEXT,
    name TEXT NOT NULL,           -- what the page shows (the path inside the input, never the absolute one)
    kind TEXT NOT NULL,           -- image | video | "" (found unusable while collecting)
    state TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    result TEXT,                  -- counts of the finished file (JSON)
    audit TEXT,                   -- the file's audit record (JSON)
    started REAL,
    finished REAL,
    edits TEXT,                   -- the review's edits (JSON, files/edits.py's format), saved as made
    seq INTEGER NOT NULL DEFAULT 0, -- the change counter when the row last changed (Store.changes)
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS access (
    job_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    user TEXT NOT NULL,
    at REAL NOT NULL,
    what TEXT NOT NULL            -- "original file" or "original frame <i>"
);
"""

INTERRUPTED = "interrupted by a restart of the service: nothing was written; run the file again"
RENDER_INTERRUPTED = "re-rendering was interrupted by a restart: the earlier output stands; re-render again"
FINAL_FILE = ("done", "failed", "cancelled")
# Every change to a file row stamps it with the next value of one counter (evaluated once per statement,
# inside the write's transaction): a status poll that says `since` gets only the rows stamped after it.
NEXT_SEQ = "(SELECT coalesce(max(seq), 0) + 1 FROM files)"


@dataclass(slots=True)
class FileRow:
    job_id: int
    n: int
    src: str
    dst: str | None
    name: str
    kind: str
    state: str
    total: int = 0
    done: int = 0
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    audit: dict[str, Any] | None = None
    started: float | None = None
    finished: float | None = None
    edits: dict[str, Any] | None = None


@dataclass(slots=True)
class JobRow:
    id: int
    created: float
    started: float | None
    finished: float | None
    user: str
    state: str
    request: dict[str, Any]
    output_dir: str
    own_output: bool
    uploads: list[str]
    summary: str
    record: dict[str, Any] | None
    expired: bool


@dataclass(slots=True)
class FileChanges:
    """Store.changes: a job's files changed after a poll's `since`, its state counts, the counter now."""

    seq: int
    counts: dict[str, int]
    files: list[FileRow]


# The columns a status poll reads: the audit record and the edits are left out (NULL).
_STATUS_COLS = (
    "job_id, n, src, dst, name, kind, state, total, done, error, result, NULL AS audit, started, finished, "
    "NULL AS edits"
)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # readers (the page) never wait for a writer
            # WAL with NORMAL: a commit is not fsync'd (a power cut may lose the last state changes, never
            # the database); a 1000-photo job makes two commits per photo. What a lost change can leave
            # (a file still `running`) is what a restart handles anyway: marked failed, output removed.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            cols = {r[1] for r in self._db.execute("PRAGMA table_info(files)")}
            if "edits" not in cols:  # a database from before the review
                self._db.execute("ALTER TABLE files ADD COLUMN edits TEXT")
            if "seq" not in cols:  # a database from before the status polls asked for changes only
                self._db.execute("ALTER TABLE files ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
            self._db.execute("CREATE INDEX IF NOT EXISTS files_seq ON files (seq)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- what a restart finds ---
    def recover(self) -> list[FileRow]:
        """Files that were running when the service stopped: marked failed (their rows returned, so
        the manager removes their temporary outputs); their jobs go back to the queue."""
        now = time.time()
        with self._tx() as db:
            rows = [self._file(r) for r in db.execute("SELECT * FROM files WHERE state = 'running'")]
            db.execute(
                f"UPDATE files SET state = 'failed', error = ?, finished = ?, seq = {NEXT_SEQ} "
                "WHERE state = 'running'",
                (INTERRUPTED, now),
            )
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")
            # A re-render writes under a temporary name: the earlier output is still whole.
            db.execute(
                f"UPDATE files SET state = 'done', error = ?, seq = {NEXT_SEQ} WHERE state = 'rendering'",
                (RENDER_INTERRUPTED,),
            )
        return rows

    # --- jobs ---
    def add_job(
        self,
        user: str,
        request: dict[str, Any],
        output_dir: Path,
        own_output: bool,
        uploads: list[str],
        files: Sequence[tuple[str, str | None, str, str, str, str]],
    ) -> int:
        """A job and its files: (src, dst, name, kind, state, error) each, in order."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO jobs (created, user, state, request, output_dir, own_output, uploads) "
                "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (
                    time.time(),
                    user,
                    json.dumps(request),
                    str(output_dir),
                    int(own_output),
                    json.dumps(uploads),
                ),
            )
            job_id = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO files (job_id, n, src, dst, name, kind, state, error, finished, seq) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {NEXT_SEQ})",
                [
                    (
                        job_id,
                        n,
                        src,
                        dst,
                        name,
                        kind,
                        state,
                        error,
                        time.time() if state in FINAL_FILE else None,
                    )
                    for n, (src, dst, name, kind, state, error) in enumerate(files)
                ],
            )
        return job_id

    def next_queued_job(self, exclude: set[int]) -> JobRow | None:
        with self._lock:
            for r in self._db.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id"):
                if r["id"] not in exclude:
                    return self._job(r)
        return None

    def set_job(self, job_id: int, **values: Any) -> None:
        if "record" in values and values["record"] is not None:
            values["record"] = json.dumps(values["record"])
        cols = ", ".join(f"{k} = ?" for k in values)  # column names from our own keywords, never the client
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values.values(), job_id))

    def job(self, job_id: int) -> JobRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(r) if r is not None else None

    def jobs(self, limit: int = 200) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def finished_before(self, when: float) -> list[JobRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE finished IS NOT NULL AND finished < ? AND expired = 0", (when,)
            ).fetchall()
        return [self._job(r) for r in rows]

    # --- files ---
    def files(self, job_id: int, records: bool = True) -> list[FileRow]:
        """A job's files; `records=False` leaves out each file's audit record and edits (what the page's
        status polls do not show: a 1000-file job's records are megabytes to parse every second)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {'*' if records else _STATUS_COLS} FROM files WHERE job_id = ? ORDER BY n",
                (job_id,),  # our own column list
            ).fetchall()
        return [self._file(r) for r in rows]

    def changes(self, job_id: int, since: int = -1, rows: bool = True) -> FileChanges:
        """What a status poll that saw the store at `since` needs (records left out, as `files(records=False)`):
        the rows stamped after it and the running or re-rendering ones (their progress lives in memory),
        every file's state counted, and the counter now (the next poll's `since`). `since=-1`: every row;
        `rows=False`: the counts alone (the job list). One read, under the lock: a row changed after it is
        stamped past `seq` and comes with the next poll."""
        with self._lock:
            seq = int(self._db.execute("SELECT coalesce(max(seq), 0) FROM files").fetchone()[0])
            counts = {
                r[0]: int(r[1])
                for r in self._db.execute(
                    "SELECT state, count(*) FROM files WHERE job_id = ? GROUP BY state", (job_id,)
                )
            }
            found = (
                self._db.execute(
                    f"SELECT {_STATUS_COLS} FROM files WHERE job_id = ? "
                    "AND (seq > ? OR state IN ('running', 'rendering')) ORDER BY n",
                    (job_id, since),
                ).fetchall()
                if rows
                else []
            )
        return FileChanges(seq=seq, counts=counts, files=[self._file(r) for r in found])

    def file(self, job_id: int, n: int) -> FileRow | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM files WHERE job_id = ? AND n = ?", (job_id, n)).fetchone()
        return self._file(r) if r is not None else None

    def has_file(self, job_id: int, n: int) -> bool:
        """Whether the job has file n: what every thumbnail, output and review request asks first,
        without reading (and parsing) the row's audit record."""
        with self._lock:
            r = self._db.execute("SELECT 1 FROM files WHERE job_id = ? AND n = ?", (job_id, n)).fetchone()
        return r is not None

    def set_file(self, job_id: int, n: int, **values: Any) -> None:
        for key in ("result", "audit", "edits"):
            if key in values and values[key] is not None:
                values[key] = json.dumps(values[key])
        cols = ", ".join(f"{k} = ?" for k in values)  # column names from our own keywords, never the client
        with self._tx() as db:
            db.execute(
                f"UPDATE files SET {cols}, seq = {NEXT_SEQ} WHERE job_id = ? AND n = ?",
                (*values.values(), job_id, n),
            )

    def cancel_queued(self, job_id: int, n: int | None = None) -> int:
        """Queued files of a job (or one of them) marked cancelled; how many."""
        q = (
            f"UPDATE files SET state = 'cancelled', error = 'cancelled', finished = ?, seq = {NEXT_SEQ} "
            "WHERE job_id = ? AND state = 'queued'"
        )
        args: tuple[Any, ...] = (time.time(), job_id)
        if n is not None:
            q += " AND n = ?"
            args += (n,)
        with self._tx() as db:
            return db.execute(q, args).rowcount

    # --- who opened an original ---
    def add_access(self, job_id: int, n: int, user: str, what: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO access (job_id, n, user, at, what) VALUES (?, ?, ?, ?, ?)",
                (job_id, n, user, time.time(), what),
            )

    def accesses(self, job_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT n, user, at, what FROM access WHERE job_id = ? ORDER BY at", (job_id,)
            ).fetchall()
        return [dict(r) for r in rows]

    @staticmethod
    def _job(r: sqlite3.Row) -> JobRow:
        return JobRow(
            id=r["id"],
            created=r["created"],
            started=r["started"],
            finished=r["finished"],
            user=r["user"],
            state=r["state"],
            request=_loads(r["request"]) or {},
            output_dir=r["output_dir"],
            own_output=bool(r["own_output"]),
            uploads=_loads(r["uploads"]) or [],
            summary=r["summary"],
            record=_loads(r["record"]),
            expired=bool(r["expired"]),
        )

    @staticmethod
    def _file(r: sqlite3.Row) -> FileRow:
        return FileRow(
            job_id=r["job_id"],
            n=r["n"],
            src=r["src"],
            dst=r["dst"],
            name=r["name"],
            kind=r["kind"],
            state=r["state"],
            total=r["total"],
            done=r["done"],
            error=r["error"],
            result=_loads(r["result"]) or {},
            audit=_loads(r["audit"]),
            started=r["started"],
            finished=r["finished"],
            edits=_loads(r["edits"]),
        )
