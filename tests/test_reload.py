"""Reloading the configuration (SIGHUP, `App.reload`): cameras added, removed or changed start, stop or
restart alone; the others keep their viewers; a bad file or a key that needs a restart changes nothing
it should not. The real service on loopback, simulated cameras where a picture is needed."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from clikit import CLI, http_status
from livekit import Viewer, rtsp_status

from streamproxy.app import LIVE_SECTIONS, RESTART_SECTIONS, App, ReloadResult, changed_keys
from streamproxy.config import AppConfig, parse_config
from streamproxy.redact import SecretFilter
from streamproxy_sim.camsim import free_port
from streamproxy_sim.harness import AppThread

T = TypeVar("T")


def _config(cameras: list[dict[str, Any]], model_dir: Path, data_dir: Path) -> dict[str, Any]:
    base = random.randrange(20000, 60000, 2)  # the server scans the range for a free UDP pair
    return {
        "cameras": cameras,
        "server": {
            "host": "127.0.0.1",
            "rtsp_port": free_port(),
            "http_port": free_port(),
            "rtp_port_min": base,
            "rtp_port_max": base + 60,
        },
        "ingest": {"read_timeout_s": 2, "backoff_max_s": 1, "backoff_initial_s": 0.2},
        "engine": {"detector": {"input_width": 640, "model_dir": str(model_dir)}},
        "slate": {"width": 640, "height": 360, "fps": 5},
        "files": {"enabled": False},
        "data_dir": str(data_dir),
    }


def _offline_url() -> str:
    """A camera that never answers: its pipeline serves the slate (cheap, no gst needed)."""
    return f"rtsp://127.0.0.1:{free_port()}/none"


def _on_loop(host: AppThread, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    assert host.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, host.loop).result(timeout)


async def _sessions(app: App, camera: str) -> set[str]:
    """The RTSP session ids of a camera's main stream (read on the loop)."""
    assert app.rtsp is not None
    hub = app.cameras[camera].hub
    return {sid for sid, s in app.rtsp.sessions.items() if s.hub is hub}


def _write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _api_cameras(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/cameras", timeout=5) as r:
        return [c["name"] for c in json.loads(r.read())]


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.1)


def _live(app: App, name: str) -> bool:
    s = app.cameras[name].snapshot() if name in app.cameras else None
    return s is not None and s.state == "live" and s.frames_out > 0


def test_every_section_is_either_live_or_restart_only() -> None:
    """A section added to the config later must be classified here, or a reload would ignore it."""
    assert set(LIVE_SECTIONS) | set(RESTART_SECTIONS) == set(AppConfig.model_fields)
    assert not set(LIVE_SECTIONS) & set(RESTART_SECTIONS)


def test_changed_keys_names_keys_never_values() -> None:
    a = parse_config({"cameras": [{"name": "a", "url": "rtsp://u:pw1@h/x"}], "server": {"users": []}})
    b = parse_config(
        {
            "cameras": [{"name": "a", "url": "rtsp://u:pw1@h/x"}],
            "server": {"rtsp_port": 9554, "users": [{"username": "u", "password": "secret-pw"}]},
        }
    )
    keys = changed_keys(a.server, b.server, "server")
    assert keys == ["server.rtsp_port", "server.users"]
    assert changed_keys(a.engine, b.engine, "engine") == []


@pytest.mark.slow
def test_reload_adds_removes_and_restarts_cameras_alone(
    sim_camera_factory: Callable[..., Any], model_dir: Path, tmp_path: Path
) -> None:
    sim = sim_camera_factory(fps=10)
    first = _config(
        [{"name": n, "url": sim.url} for n in ("keep", "gone", "change")], model_dir, tmp_path / "state"
    )
    host = AppThread(parse_config(first))
    app = host.start()
    try:
        _wait(lambda: all(_live(app, n) for n in ("keep", "gone", "change")), 60, "cameras live")
        keep_viewer = Viewer(host.rtsp_url("keep"), max_s=120)
        gone_viewer = Viewer(host.rtsp_url("gone"), max_s=120)
        keep_viewer.start()
        gone_viewer.start()
        assert keep_viewer.wait_for(lambda f: len(f) >= 5, 30), keep_viewer.error
        assert gone_viewer.wait_for(lambda f: len(f) >= 5, 30), gone_viewer.error
        keep_sessions = _on_loop(host, _sessions(app, "keep"))
        assert len(keep_sessions) == 1
        keep_camera, change_camera = app.cameras["keep"], app.cameras["change"]

        second = {
            **first,
            "cameras": [
                {"name": "keep", "url": sim.url},
                {"name": "change", "url": sim.url, "latency_budget_ms": 300},
                {"name": "new", "url": sim.url},
            ],
        }
        app.config_path = _write(tmp_path / "streamproxy.yaml", second)
        result = _on_loop(host, app.reload_file())

        assert result == ReloadResult(
            added=("new",), removed=("gone",), restarted=("change",), unchanged=("keep",)
        )
        assert list(app.cameras) == ["keep", "change", "new"]
        assert app.cameras["keep"] is keep_camera  # untouched: the same pipeline, the same hub
        assert app.cameras["change"] is not change_camera
        assert app.cameras["change"].cfg.latency_budget_ms == 300
        assert change_camera.pipeline.snapshot().state == "stopped"

        # The unchanged camera's viewer goes on in the same RTSP session: no reconnect.
        seen = len(keep_viewer.frames)
        assert keep_viewer.wait_for(lambda f: len(f) >= seen + 20, 30), keep_viewer.error
        assert keep_viewer.is_alive() and keep_viewer.error is None
        assert _on_loop(host, _sessions(app, "keep")) == keep_sessions
        # The removed camera's viewer is told (RTCP BYE, connection closed): its stream ends.
        gone_viewer.done(30)
        assert rtsp_status(f"rtsp://127.0.0.1:{app.rtsp_port}/gone", app.rtsp_port or 0) == 404

        _wait(lambda: _live(app, "new") and _live(app, "change"), 60, "added and restarted cameras live")
        assert app.web is not None
        assert _api_cameras(app.web.port) == ["keep", "change", "new"]
        keep_viewer.finish()
    finally:
        host.stop()

    # On the audit record: the day so far of each camera, then a start line per camera, the restarted
    # one's configuration marked changed, the untouched one's not.
    lines = [json.loads(x) for x in (tmp_path / "state" / "audit" / "live.jsonl").read_text().splitlines()]
    starts = [x for x in lines if x.get("event") == "start"]
    assert [x["camera"] for x in starts] == ["keep", "gone", "change", "keep", "change", "new"]
    after = {x["camera"]: x["config_changed"] for x in starts[3:]}
    assert after == {"keep": False, "change": True, "new": None}
    gone_days = [x for x in lines if x.get("camera") == "gone" and "day" in x]
    assert len(gone_days) == 1 and gone_days[0]["partial"] and gone_days[0]["frames_processed"] > 0


@pytest.mark.slow
def test_a_bad_config_or_a_restart_only_key_keeps_the_service_as_it_was(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamproxy")
    first = _config([{"name": "a", "url": _offline_url()}], model_dir, tmp_path / "state")
    host = AppThread(parse_config(first))
    app = host.start()
    try:
        cfg, camera = app.cfg, app.cameras["a"]
        path = tmp_path / "streamproxy.yaml"
        app.config_path = path
        bad_files = {
            "cameras[0].latency_budget_ms": yaml.safe_dump(
                {**first, "cameras": [{"name": "a", "url": _offline_url(), "latency_budget_ms": 1}]}
            ),
            "cameras[0].qualty": yaml.safe_dump(
                {**first, "cameras": [{"name": "a", "url": _offline_url(), "qualty": "high"}]}
            ),
            "not valid YAML": "cameras:\n  - name: a\n\turl: x\n",
            "plates": yaml.safe_dump(
                {**first, "engine": {**first["engine"], "objects": ["faces", "plates"]}}
            ),
        }
        for key, text in bad_files.items():
            caplog.clear()
            path.write_text(text)
            result = _on_loop(host, app.reload_file())
            assert not result.applied and key in (result.error or ""), (key, result)
            assert app.cfg is cfg and list(app.cameras) == ["a"] and app.cameras["a"] is camera
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert any(m.startswith("invalid config: ") and key in m for m in errors), (key, errors)
            assert any("reload refused" in m for m in errors), errors

        # The same file again: nothing restarts.
        same = _on_loop(host, app.reload(parse_config(first)))
        assert same == ReloadResult(unchanged=("a",)) and app.cameras["a"] is camera

        # A port is read once at start: named in a warning, the running one kept; a camera is added.
        caplog.clear()
        assert app.web is not None
        http_port = app.web.port
        # The new camera's credentials are scrubbed from the log from the reload on (cli.py's filter).
        guard = SecretFilter([])
        logging.getLogger().handlers[0].addFilter(guard)
        moved = {
            **first,
            "server": {**first["server"], "http_port": free_port()},
            "cameras": [
                *first["cameras"],
                # A detector setting the running pool does not have: a pool of its own.
                {
                    "name": "b",
                    "url": _offline_url().replace("//", "//u:n3w-s3cret@"),
                    "detector": {"flip": True},
                },
            ],
        }
        try:
            result = _on_loop(host, app.reload(parse_config(moved)))
        finally:
            logging.getLogger().handlers[0].removeFilter(guard)
        assert "n3w-s3cret" in guard.secrets
        assert result.added == ("b",) and result.unchanged == ("a",)
        assert result.not_applied == ("server.http_port",)
        assert app.cfg.server.http_port == first["server"]["http_port"] and app.web.port == http_port
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("server.http_port changed: restart the service to apply" in m for m in warnings), warnings
        assert _api_cameras(http_port) == ["a", "b"]
        assert len(app.detector_pools) == 2

        # Back to the first file: the camera goes, and with it the pool nobody uses any more.
        result = _on_loop(host, app.reload(parse_config(first)))
        assert result == ReloadResult(removed=("b",), unchanged=("a",))
        assert list(app.cameras) == ["a"] and app.cameras["a"] is camera
        assert len(app.detector_pools) == 1
    finally:
        host.stop()


@pytest.mark.slow
def test_sighup_reloads_a_running_service(sim_camera: Any, model_dir: Path, tmp_path: Path) -> None:
    """`streamproxy run` as systemd's ExecReload signals it: alive after SIGHUP (not exit 129), the new
    camera served; a bad file then is refused and the service goes on; SIGTERM still ends it cleanly."""
    cfg = _config([{"name": "lobby", "url": sim_camera.url}], model_dir, tmp_path / "state")
    path = _write(tmp_path / "streamproxy.yaml", cfg)
    http = cfg["server"]["http_port"]
    proc = subprocess.Popen(
        [*CLI, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _wait(lambda: http_status(f"http://127.0.0.1:{http}/readyz") == 200 or proc.poll() is not None, 90,
              "ready")  # fmt: skip
        assert proc.poll() is None, "".join(lines)
        _write(path, {**cfg, "cameras": [*cfg["cameras"], {"name": "hall", "url": sim_camera.url}]})
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: proc.poll() is not None or "hall" in _api_cameras(http), 60, "camera added")
        assert proc.poll() is None, "".join(lines)
        assert _api_cameras(http) == ["lobby", "hall"]

        path.write_text("cameras: [\n")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: any("reload refused" in x for x in lines) or proc.poll() is not None, 60, "refused")
        assert proc.poll() is None, "".join(lines)
        assert _api_cameras(http) == ["lobby", "hall"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "configuration reloaded: added hall; unchanged lobby" in out, out
    assert "invalid config: " in out and "not valid YAML" in out, out
    assert "Traceback" not in out, out
