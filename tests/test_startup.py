"""A start that fails (a port in use) stops everything it started and says which port, in one line."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streamproxy.app import App, ListenError
from streamproxy.config import AppConfig, parse_config

# Threads the service runs per camera (pipeline worker, ingest, publisher) and for the app.
SERVICE_THREADS = ("pipeline-", "ingest-", "publish-", "app-thread")


@contextmanager
def occupied_port() -> Iterator[int]:
    """A loopback TCP port something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _config(model_dir: Path, rtsp_port: int, http_port: int) -> AppConfig:
    return parse_config(
        {
            # Nothing listens there; the cameras must not even be started when a server cannot listen.
            "cameras": [{"name": "lobby", "url": "rtsp://127.0.0.1:9/lobby"}, {"name": "yard", "url": "rtsp://127.0.0.1:9/yard"}],
            "server": {"host": "127.0.0.1", "rtsp_port": rtsp_port, "http_port": http_port},
            "engine": {"detector": {"input_width": 640, "model_dir": str(model_dir)}},
        }
    )  # fmt: skip


def _service_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.is_alive() and t.name.startswith(SERVICE_THREADS)]


def _refused(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_http_port_in_use_stops_the_rtsp_server_already_listening(model_dir: Path) -> None:
    assert not _service_threads()
    with occupied_port() as http:
        app = App(_config(model_dir, 0, http))
        with pytest.raises(ListenError, match=rf"^HTTP server cannot listen on 127\.0\.0\.1:{http}: "):
            await app.serve()
    assert app.rtsp is not None and app.rtsp.port  # the RTSP server had started before HTTP failed ...
    assert _refused(app.rtsp.port)  # ... and was stopped: its port is closed
    assert not app.ready
    assert not _service_threads()
    assert len(app.pipelines) == 2 and not any(p.source.running for p in app.pipelines.values())


async def test_rtsp_port_in_use_starts_nothing(model_dir: Path) -> None:
    with occupied_port() as rtsp:
        app = App(_config(model_dir, rtsp, 0))
        with pytest.raises(ListenError, match=rf"^RTSP server cannot listen on 127\.0\.0\.1:{rtsp}: "):
            await app.serve()
    assert app.web is None and not app.ready
    assert not _service_threads()


def test_run_with_port_in_use_exits_1_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    """`streamproxy run` as a user sees it: exit status 1, one ERROR line naming the port, no traceback."""
    with occupied_port() as rtsp:
        cfg = tmp_path / "streamproxy.yaml"
        cfg.write_text(
            f"""
cameras:
  - name: lobby
    url: rtsp://127.0.0.1:9/lobby
server:
  host: 127.0.0.1
  rtsp_port: {rtsp}
  http_port: 0
engine:
  detector:
    input_width: 640
    model_dir: {model_dir}
"""
        )
        r = subprocess.run(
            [sys.executable, "-m", "streamproxy.cli", "run", "--config", str(cfg)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert errors[0].endswith(f"cannot start: RTSP server cannot listen on 127.0.0.1:{rtsp}: Address already in use")
