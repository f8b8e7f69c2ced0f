"""The live cameras' audit log (streamproxy/live/audit.py): a line per camera and day, differences since
the previous line, configuration changes on record across restarts, a write failure never fatal."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamproxy.engine.models import MODELS
from streamproxy.live.audit import AuditedCamera, LiveAudit, Tally, camera_config_sha256

CUT = '{"day":"2026-03-03","camera":"lobby","config_sha'
FLOOR = {"min_face_px": 18.0, "min_input_width": 640, "max_unmasked_frames": 0, "max_detect_every": 3}


class FakeCamera:
    """A camera's counters, moved by the test."""

    def __init__(self, frames: int = 0) -> None:
        self.frames_in = frames
        self.failed_closed = 0
        self.drops: dict[str, int] = {"overload": 0, "latency_budget": 0, "fail_closed": 0}
        self.floor: dict[str, float | int] | None = None

    def add(self, frames: int, failed_closed: int = 0, overload: int = 0, late: int = 0) -> None:
        self.frames_in += frames
        self.failed_closed += failed_closed
        self.drops["overload"] += overload
        self.drops["latency_budget"] += late

    def read(self) -> Tally:
        out = self.frames_in - sum(self.drops.values())
        return Tally(self.frames_in, out, self.failed_closed, dict(self.drops), self.floor, "yunet")


class Clock:
    def __init__(self, iso: str) -> None:
        self.t = 0.0
        self.at(iso)

    def at(self, iso: str) -> None:
        self.t = datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.t


def lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_text().splitlines():
        if raw != CUT:  # the line a test cut, as a crash mid-write would
            out.append(json.loads(raw))
    return out


def days(path: Path) -> list[dict[str, Any]]:
    return [r for r in lines(path) if "day" in r]


def test_day_lines_count_differences_and_restart_records_config_change(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "live.jsonl"
    lobby, gate = FakeCamera(frames=1000), FakeCamera(frames=500)  # counted before the audit started
    clock = Clock("2026-03-01T10:00:00")
    cams = [AuditedCamera("lobby", "a" * 64, lobby.read), AuditedCamera("gate", "b" * 64, gate.read)]
    audit = LiveAudit(path, cams, clock=clock)
    assert audit.open() == 2
    starts = lines(path)
    assert [(r["event"], r["camera"], r["config_changed"]) for r in starts] == [
        ("start", "lobby", None),  # never seen before: nothing to compare with
        ("start", "gate", None),
    ]
    assert starts[0]["model"] == {
        "name": "yunet",
        "file": MODELS["yunet"].filename,
        "sha256": MODELS["yunet"].sha256,
        "source": MODELS["yunet"].requirement,
    }

    lobby.floor = FLOOR
    lobby.add(100, failed_closed=3, overload=7, late=2)
    gate.add(50)
    clock.at("2026-03-01T23:59:59")
    assert audit.tick() == 0  # the same day: nothing written
    lobby.add(1)
    clock.at("2026-03-02T00:00:01")
    assert audit.tick() == 2
    first = {r["camera"]: r for r in days(path)}
    assert first["lobby"]["day"] == "2026-03-01" and first["gate"]["day"] == "2026-03-01"
    assert first["lobby"]["partial"] is True  # started at 10:00: not the whole day
    assert first["lobby"]["from"] == "2026-03-01T10:00:00Z" and first["lobby"]["to"] == "2026-03-02T00:00:01Z"
    assert first["lobby"]["frames_processed"] == 101  # since the start, not since the counters began
    assert first["lobby"]["frames_failed_closed"] == 3
    assert first["lobby"]["frames_shed_overload"] == 7
    assert first["lobby"]["frames_dropped"] == {"latency_budget": 2}
    assert first["lobby"]["floor"] == FLOOR
    assert first["gate"]["frames_processed"] == 50 and first["gate"]["frames_dropped"] == {}
    assert first["gate"]["floor"] is None  # no frame has set it yet
    assert first["lobby"]["config_sha256"] == "a" * 64 and first["lobby"]["config_changed"] is None

    lobby.add(40)
    clock.at("2026-03-02T12:00:00")
    assert audit.tick() == 0
    clock.at("2026-03-03T00:00:00.5")
    assert audit.tick() == 2
    second = {r["camera"]: r for r in days(path)[2:]}
    assert second["lobby"]["day"] == "2026-03-02" and second["lobby"]["partial"] is False  # a whole day
    assert second["lobby"]["frames_processed"] == 40 and second["gate"]["frames_processed"] == 0
    assert second["lobby"]["frames_shed_overload"] == 0
    assert second["lobby"]["config_changed"] is False

    lobby.add(5)
    clock.at("2026-03-03T08:00:00")
    assert audit.close() == 2
    assert audit.close() == 0  # once
    assert audit.tick() == 0
    last = {r["camera"]: r for r in days(path)[4:]}
    assert last["lobby"]["day"] == "2026-03-03" and last["lobby"]["partial"] is True
    assert last["lobby"]["frames_processed"] == 5
    # Every line is one JSON object; the three day lines of a camera add up to what it counted.
    assert sum(r["frames_processed"] for r in days(path) if r["camera"] == "lobby") == lobby.frames_in - 1000

    # A crash cut the last line half-way; then a restart with lobby's configuration changed.
    with path.open("a") as f:
        f.write(CUT)
    clock.at("2026-03-03T09:00:00")
    cams2 = [AuditedCamera("lobby", "c" * 64, lobby.read), AuditedCamera("gate", "b" * 64, gate.read)]
    again = LiveAudit(path, cams2, clock=clock)
    before = len(path.read_text().splitlines())
    assert again.open() == 2
    assert path.read_text().splitlines()[before - 1] == CUT  # the new lines start on a line of their own
    restart = [json.loads(raw) for raw in path.read_text().splitlines()[before:]]
    assert [(r["camera"], r["config_changed"]) for r in restart] == [("lobby", True), ("gate", False)]
    lobby.add(9)
    clock.at("2026-03-03T10:00:00")
    assert again.close() == 2
    after = {r["camera"]: r for r in lines(path)[-2:]}
    assert after["lobby"]["frames_processed"] == 9  # not the counters' total: differences in this process
    assert after["lobby"]["config_changed"] is True and after["gate"]["config_changed"] is False
    assert after["lobby"]["floor"] == FLOOR  # the floor seen last, named even before a new frame


def test_a_write_failure_is_logged_and_its_counts_go_on_the_next_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the audit folder should be")
    path = blocker / "audit" / "live.jsonl"
    cam = FakeCamera()
    clock = Clock("2026-03-01T10:00:00")
    audit = LiveAudit(path, [AuditedCamera("lobby", "a" * 64, cam.read)], clock=clock)
    with caplog.at_level(logging.WARNING, logger="streamproxy.live.audit"):
        assert audit.open() == 0
        cam.add(30)
        clock.at("2026-03-02T00:00:01")
        assert audit.tick() == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Reading the old lines failed too (not per camera: "-"); each line not written is named by its camera.
    assert [w.split(": ", 1)[0] for w in warnings] == ["-", "lobby", "lobby"], warnings
    assert "start line was not written" in warnings[1] and "Not a directory" in warnings[1]
    assert "day line was not written" in warnings[2] and "next line" in warnings[2]

    blocker.unlink()  # the disk is back
    cam.add(12)
    clock.at("2026-03-02T09:00:00")
    assert audit.close() == 1
    (line,) = lines(path)
    assert line["frames_processed"] == 42  # nothing lost: the unwritten line's counts are in this one
    assert line["from"] == "2026-03-01T10:00:00Z"  # and it says since when it counts


def test_a_camera_that_cannot_be_read_does_not_stop_the_others(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    good = FakeCamera()
    broken_now = [False]

    def flaky() -> Tally:
        if broken_now[0]:
            raise RuntimeError("pipeline gone")
        return good.read()

    clock = Clock("2026-03-01T10:00:00")
    cams = [AuditedCamera("bad", "a" * 64, flaky), AuditedCamera("good", "b" * 64, good.read)]
    audit = LiveAudit(path, cams, clock=clock)
    assert audit.open() == 2
    good.add(10)
    broken_now[0] = True
    clock.at("2026-03-01T11:00:00")
    assert audit.close() == 1
    assert [(r["camera"], r["frames_processed"]) for r in days(path)] == [("good", 10)]


async def test_the_task_writes_a_line_at_each_period_end(tmp_path: Path) -> None:
    """The event-loop side with a real clock and a 0.5 s "day": a line per period, then a partial one."""
    path = tmp_path / "live.jsonl"
    cam = FakeCamera()
    audit = LiveAudit(path, [AuditedCamera("lobby", "a" * 64, cam.read)], day_s=0.5, check_s=0.2)
    await audit.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(days(path)) < 2:
        cam.add(1)
        await asyncio.sleep(0.05)
    await audit.stop()
    got = days(path)
    assert len(got) >= 3, got  # at least two period ends, then the partial line at stop
    assert got[-1]["partial"] is True and got[1]["partial"] is False
    assert sum(r["frames_processed"] for r in got) == cam.frames_in
    assert len({r["day"] for r in got[:-1]}) == len(got) - 1  # one line per period


def test_config_hash_leaves_out_credentials_and_follows_settings(tmp_path: Path) -> None:
    from streamproxy.config import parse_config

    def cfg(url: str, **cam: Any) -> Any:
        return parse_config({"cameras": [{"name": "lobby", "url": url, **cam}]})

    a = cfg("rtsp://admin:one@10.0.0.5/stream")
    b = cfg("rtsp://admin:two@10.0.0.6/other")
    c = cfg("rtsp://admin:one@10.0.0.5/stream", privacy={"min_face_px": 36})
    h = camera_config_sha256(a, a.cameras[0])
    assert h == camera_config_sha256(b, b.cameras[0])  # only the URL differs: not part of it
    assert h != camera_config_sha256(c, c.cameras[0])  # the floor differs


@pytest.mark.slow
def test_the_service_writes_a_partial_line_per_camera_at_stop(
    sim_camera: Any, model_dir: Path, tmp_path: Path
) -> None:
    """The real service on a simulated camera (two cameras on it): after a short run and a stop, the log
    has a start line and a partial day line per camera, with the frames it processed and its floor."""
    from livekit import LiveHost, make_config

    base = make_config(sim_camera.url, model_dir)
    second = base.cameras[0].model_copy(update={"name": "cam2"})
    cfg = base.model_copy(update={"cameras": [base.cameras[0], second], "data_dir": str(tmp_path / "state")})
    host = LiveHost(cfg)
    try:
        app = host.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snaps = [p.snapshot() for p in app.pipelines.values()]
            if all(s.frames_out >= 10 for s in snaps):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"cameras not live: {snaps}")
    finally:
        host.stop()
    path = tmp_path / "state" / "audit" / "live.jsonl"
    got = lines(path)
    starts = [r for r in got if r.get("event") == "start"]
    ends = [r for r in got if "day" in r]
    assert sorted(r["camera"] for r in starts) == ["cam", "cam2"]
    assert sorted(r["camera"] for r in ends) == ["cam", "cam2"]
    for r in ends:
        assert r["partial"] is True
        assert r["frames_processed"] >= 10
        assert r["frames_failed_closed"] == 0
        assert r["floor"] is not None and r["floor"]["min_input_width"] > 0
        assert r["model"]["sha256"] == MODELS["yunet"].sha256
        assert r["config_sha256"] == camera_config_sha256(cfg, cfg.cameras[0 if r["camera"] == "cam" else 1])
    text = path.read_text()
    assert sim_camera.url not in text and "rtsp://" not in text  # no URL, ever
