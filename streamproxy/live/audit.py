"""The live cameras' audit log: one JSON line per camera and UTC day, for a DPO to file.

`<data_dir>/audit/live.jsonl`, appended (one write per batch of lines, then fsync), never rewritten:

* at start, one `{"event": "start", ...}` line per camera with the hash of its effective configuration,
  so that a configuration changed between two runs is on record (`config_changed`);
* at each UTC midnight, one `{"day": ...}` line per camera: the frames it processed, failed closed and
  shed for overload (and dropped for any other reason) since the previous line of this process, the
  privacy floor and the face model in force, and its configuration hash;
* at shutdown, the same line for the day so far, marked `"partial": true` (as is the first day line
  after a start: the process did not run the whole day).

Counts are differences between two readings of the camera's single tally (its `PipelineStatus`, as
the API and Prometheus read it), not totals since boot. A line that cannot be written is logged (camera
name first) and its counts stay for the next line, whose `from` then says since when it counts: the
service never stops for its audit log.

No URL, user or password goes into a line or into the hash: the configuration hashed is the camera's
engine, privacy floor, budget, transport, sub stream and encoder settings, and whether it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from streamproxy import __version__
from streamproxy.config import AppConfig, CameraConfig
from streamproxy.engine.models import MODELS
from streamproxy.status import PipelineStatus

log = logging.getLogger(__name__)

DAY_S = 86400.0
# How often the audit wakes at most (it sleeps until the next midnight when that is sooner): each wake
# notes the floor in force, so that a line written after the camera went down still names it.
CHECK_S = 60.0
# At start, the end of the log is read for each camera's previous configuration hash. A day of 100
# cameras is ~40 KB of lines; a camera not in this window counts as never seen (config_changed: null).
TAIL_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Tally:
    """One reading of a camera's counters and of what protects it now."""

    frames_in: int  # decoded from the camera: each one anonymized, failed closed or dropped
    frames_out: int  # anonymized frames that left
    failed_closed: int  # fully obfuscated or dropped because detection could not vouch for them
    drops: Mapping[str, int]  # frames that never left, by reason (metrics.DropReason)
    floor: Mapping[str, float | int] | None  # the privacy floor; None until the first frame sets it
    model: str  # the face detector's model
    detector_error: str | None = None  # the detector could not be built: every frame fails closed


def tally_of(s: PipelineStatus) -> Tally:
    """The reading of one camera's status (camera.Camera.snapshot())."""
    f = s.privacy_floor
    floor = (
        None
        if f is None
        else {
            "min_face_px": f.min_face_px,
            "min_input_width": f.min_input_width,
            "max_unmasked_frames": f.max_unmasked_frames,
            "max_detect_every": f.max_detect_every,
        }
    )
    d = s.dropped
    drops = {
        "latency_budget": d.latency_budget,
        "fail_closed": d.fail_closed,
        "queue_full": d.queue_full,
        "encoder": d.encoder,
        "worker": d.worker,
        "overload": d.overload,
    }
    return Tally(
        s.frames_in, s.frames_out, s.fail_closed_frames, drops, floor, s.detector.model, s.detector.error
    )


@dataclass(frozen=True, slots=True)
class AuditedCamera:
    name: str
    config_sha256: str
    read: Callable[[], Tally]


class _Camera(Protocol):
    """What the audit reads of a running camera (camera.Camera)."""

    @property
    def cfg(self) -> CameraConfig: ...

    def snapshot(self) -> PipelineStatus: ...


def _reader(camera: _Camera) -> Callable[[], Tally]:
    return lambda: tally_of(camera.snapshot())


def data_dir(cfg: AppConfig) -> Path:
    return cfg.data_path()


def audit_path(cfg: AppConfig) -> Path:
    return data_dir(cfg) / "audit" / "live.jsonl"


def camera_config_sha256(cfg: AppConfig, cam: CameraConfig) -> str:
    """SHA-256 of the camera's effective settings (the global ones with its overrides), without its
    URL or its publish URL (credentials), in a canonical JSON form: equal settings, equal hash."""
    sub = cfg.sub_stream_for(cam)
    doc: dict[str, Any] = {
        "camera": cam.name,
        "enabled": cam.enabled,
        "engine": cfg.engine_for(cam).model_dump(mode="json"),
        "privacy": cfg.privacy_for(cam).model_dump(mode="json"),
        "latency_budget_ms": cfg.budget_for(cam),
        "transport": cfg.transport_for(cam),
        "sub_stream": sub.model_dump(mode="json") if sub is not None else None,
        "encoder": cfg.encoder.model_dump(mode="json"),
        "publishes": cam.publish_url is not None,
        "onvif_port": cam.onvif_port,
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_record(name: str, error: str | None = None) -> dict[str, Any]:
    """The model in force; its file's SHA-256 is the pinned one (engine/models.py loads no other)."""
    spec = MODELS.get(name)
    rec: dict[str, Any] = {"name": name}
    if spec is not None:
        rec.update(file=spec.filename, sha256=spec.sha256, source=spec.requirement)
    if error:
        rec["error"] = error
    return rec


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _State:
    cam: AuditedCamera
    base: Tally | None = None  # the reading the next line counts from
    since: float = 0.0  # when that reading was taken
    floor: Mapping[str, float | int] | None = None  # the last floor seen
    last_config: str | None = None  # the hash on the camera's previous line in the file
    last_day_config: str | None = None  # the hash on its previous day line
    whole: bool = False  # the next day line covers a whole day (not the first one after start)
    model: str = ""
    detector_error: str | None = None


class LiveAudit:
    """Writes the audit lines of the live cameras (see the module docstring).

    `clock` (wall time, s) and `day_s` (the period between lines; a day) are injectable so that a test
    runs days in seconds; `open`, `tick` and `close` are synchronous (file I/O), `start`/`stop` run
    them off the event loop with a task that wakes at each period's end."""

    def __init__(
        self,
        path: Path,
        cameras: Sequence[AuditedCamera],
        *,
        clock: Callable[[], float] = time.time,
        day_s: float = DAY_S,
        check_s: float = CHECK_S,
    ) -> None:
        self.path = path
        self.clock = clock
        self.day_s = day_s
        self.check_s = check_s
        self._cams = [_State(c) for c in cameras]
        self._period = 0  # index of the period the next day line is for
        self._lock = threading.Lock()  # tick (a thread) and close never interleave
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self._closed = False

    @classmethod
    def of_cameras(cls, cfg: AppConfig, cameras: Mapping[str, _Camera], **kw: Any) -> LiveAudit:
        """The audit of the service's running cameras, written under the config's data dir."""
        audited = [
            AuditedCamera(name, camera_config_sha256(cfg, c.cfg), _reader(c)) for name, c in cameras.items()
        ]
        return cls(audit_path(cfg), audited, **kw)

    # --- periods ---
    def _period_of(self, t: float) -> int:
        return int(t // self.day_s)

    def _label(self, period: int) -> str:
        start = datetime.fromtimestamp(period * self.day_s, UTC)
        if self.day_s == DAY_S:
            return start.date().isoformat()
        spec = "seconds" if self.day_s == int(self.day_s) else "milliseconds"  # a test's short "days"
        return start.isoformat(timespec=spec).replace("+00:00", "Z")

    # --- synchronous work ---
    def open(self) -> int:
        """Read the log's tail, take each camera's first reading, write the start lines. Lines written."""
        with self._lock:
            now = self.clock()
            self._period = self._period_of(now)
            self._read_tail()
            lines: list[tuple[_State, dict[str, Any]]] = []
            for st in self._cams:
                self._take(st, now)
                st.since = now
                changed = None if st.last_config is None else st.last_config != st.cam.config_sha256
                lines.append(
                    (
                        st,
                        {
                            "event": "start",
                            "time": _iso(now),
                            "camera": st.cam.name,
                            "tool": "streamproxy",
                            "version": __version__,
                            "config_sha256": st.cam.config_sha256,
                            "config_changed": changed,
                            "model": model_record(st.model, st.detector_error),
                        },
                    )
                )
            written = self._write(lines, "start")
            if written:
                for st in self._cams:
                    st.last_config = st.cam.config_sha256
            self._opened = True
            return written

    def tick(self) -> int:
        """At a period's end, one line per camera for the period that ended; else note the floors."""
        with self._lock:
            if not self._opened or self._closed:
                return 0
            now = self.clock()
            if self._period_of(now) <= self._period:
                for st in self._cams:
                    self._read(st)
                return 0
            written = self._day_lines(now, partial=False)
            self._period = self._period_of(now)
            return written

    def close(self) -> int:
        """At shutdown: the day so far, one line per camera marked partial. Idempotent."""
        with self._lock:
            if not self._opened or self._closed:
                return 0
            self._closed = True
            return self._day_lines(self.clock(), partial=True)

    def _day_lines(self, now: float, partial: bool) -> int:
        lines: list[tuple[_State, dict[str, Any]]] = []
        news: list[tuple[_State, Tally]] = []
        for st in self._cams:
            cur = self._read(st)
            if cur is None or st.base is None:
                continue  # the camera could not be read (logged): its counts go on the next line
            lines.append((st, self._day_line(st, cur, now, partial)))
            news.append((st, cur))
        written = self._write(lines, "day")
        if written:
            for st, cur in news:
                st.base, st.since, st.whole = cur, now, True
                st.last_config = st.last_day_config = st.cam.config_sha256
        return written

    def _day_line(self, st: _State, cur: Tally, now: float, partial: bool) -> dict[str, Any]:
        base = st.base
        assert base is not None

        def diff(new: int, old: int) -> int:
            # A counter that went back was started again (a new engine): all of it is new.
            return new - old if new >= old else new

        # Other drops: late frames, a full queue, an encoder or worker error, and frames failed closed
        # with fail_closed.action "drop" (also among frames_failed_closed).
        drops = {r: diff(n, base.drops.get(r, 0)) for r, n in cur.drops.items() if r != "overload"}
        changed = None if st.last_day_config is None else st.last_day_config != st.cam.config_sha256
        line: dict[str, Any] = {
            "day": self._label(self._period),
            "camera": st.cam.name,
            "from": _iso(st.since),
            "to": _iso(now),
            "partial": partial or not st.whole,
            "frames_processed": diff(cur.frames_in, base.frames_in),
            "frames_out": diff(cur.frames_out, base.frames_out),
            "frames_failed_closed": diff(cur.failed_closed, base.failed_closed),
            "frames_shed_overload": diff(cur.drops.get("overload", 0), base.drops.get("overload", 0)),
            "frames_dropped": {r: n for r, n in drops.items() if n},
            "floor": dict(st.floor) if st.floor is not None else None,
            "model": model_record(cur.model, cur.detector_error),
            "config_sha256": st.cam.config_sha256,
            "config_changed": changed,
        }
        return line

    def _take(self, st: _State, now: float) -> None:
        cur = self._read(st)
        if cur is not None:
            st.base = cur
        else:  # not readable yet: count from zero (nothing it counted is lost, at worst counted once more)
            st.base = Tally(0, 0, 0, {}, None, st.model)

    def _read(self, st: _State) -> Tally | None:
        try:
            cur = st.cam.read()
        except Exception as err:  # a camera's reading must not stop the others' lines
            log.warning("%s: audit: cannot read the camera's counters: %s", st.cam.name, err)
            return None
        if cur.floor is not None:
            st.floor = cur.floor
        st.model, st.detector_error = cur.model, cur.detector_error
        return cur

    def _read_tail(self) -> None:
        """Each camera's previous configuration hashes, from the end of the log."""
        by_name = {st.cam.name: st for st in self._cams}
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                start = max(0, size - TAIL_BYTES)
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as err:
            log.warning("-: audit: cannot read %s (configuration changes since the last run not known): %s",
                        self.path, err.strerror)  # fmt: skip
            return
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first one is cut
        for raw in lines:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # an empty line, or one cut by a crash mid-write
            if not isinstance(rec, dict):
                continue
            st = by_name.get(rec.get("camera"))  # type: ignore[arg-type]
            h = rec.get("config_sha256")
            if st is None or not isinstance(h, str):
                continue
            st.last_config = h
            if "day" in rec:
                st.last_day_config = h

    def _write(self, lines: list[tuple[_State, dict[str, Any]]], what: str) -> int:
        """Append the lines in one write, then fsync. 0 (and a warning per camera) if that failed."""
        if not lines:
            return 0
        data = "".join(json.dumps(line, separators=(",", ":")) + "\n" for _, line in lines).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A line cut by a crash mid-write: ours start on a line of their own, readable.
                    data = b"\n" + data
                view = memoryview(data)
                while view:  # O_APPEND: one write is one append; a short write goes on where it stopped
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            reason = err.strerror or str(err)
            then = "; its counts go on the next line" if what == "day" else ""
            for st, _ in lines:
                log.warning("%s: audit: the %s line was not written to %s (%s)%s",
                            st.cam.name, what, self.path, reason, then)  # fmt: skip
            return 0
        return len(lines)

    # --- on the event loop ---
    async def start(self) -> None:
        await asyncio.to_thread(self.open)
        self._task = asyncio.create_task(self._run(), name="live-audit")

    async def stop(self) -> None:
        """Cancel the wake-ups, then write the partial lines (after the pipelines stopped: final counts)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.close)

    def _sleep_s(self) -> float:
        now = self.clock()
        to_end = (self._period_of(now) + 1) * self.day_s - now
        return max(0.05, min(self.check_s, to_end + 0.05))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._sleep_s())
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # never let the audit end the service; the next wake tries again
                log.exception("-: audit: a periodic check failed")
