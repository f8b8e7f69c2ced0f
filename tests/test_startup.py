"""A start that fails (a port in use) stops everything it started and says which port, in one line."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from clikit import run_cli, start_cli, wait_ready, write_config

from streamproxy.app import App, ListenError
from streamproxy.config import AppConfig, parse_config
from streamproxy.live.source import CameraSource

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
    assert len(app.cameras) == 2
    for camera in app.cameras.values():
        source = camera.pipeline.source
        assert isinstance(source, CameraSource) and not source.running


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
        r = run_cli(write_config(tmp_path, "rtsp://127.0.0.1:9/lobby", rtsp, 0, model_dir))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert errors[0].endswith(
        f"cannot start: RTSP server cannot listen on 127.0.0.1:{rtsp}: Address already in use"
    )


def test_run_with_a_bad_config_exits_1_with_one_line_and_listens_nowhere(tmp_path: Path) -> None:
    """A config error (here two listeners on one port) is one line naming the key, exit status 1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli(write_config(tmp_path, "rtsp://127.0.0.1:9/lobby", port, port))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("invalid config: ") and "port" in lines[0], out
    assert _refused(port)


def _interleaved(data: bytes) -> list[tuple[int, bytes]]:
    """The `$`-framed packets of an RTSP/TCP byte stream (responses in between skipped)."""
    frames, i = [], 0
    while i < len(data):
        if data[i : i + 1] == b"$" and i + 4 <= len(data):
            n = int.from_bytes(data[i + 2 : i + 4], "big")
            frames.append((data[i + 1], data[i + 4 : i + 4 + n]))
            i += 4 + n
        else:
            end = data.find(b"\r\n\r\n", i)
            if end < 0:
                break
            i = end + 4
    return frames


def _request(sock: socket.socket, text: str) -> str:
    sock.sendall(text.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    return buf.decode(errors="replace")


def test_sigterm_with_a_viewer_sends_rtcp_bye_closes_cleanly_and_exits_0(
    model_dir: Path, tmp_path: Path
) -> None:
    """`streamproxy run`, a viewer PLAYing over TCP (the camera is down: no RTP yet), SIGTERM: the
    viewer gets an RTCP BYE and a clean close (FIN, not RST), and the process exits 0 within seconds."""
    import signal
    import time

    from streamproxy_sim.camsim import free_port

    rtsp, http = free_port(), free_port()
    proc = start_cli(write_config(tmp_path, "rtsp://127.0.0.1:9/lobby", rtsp, http, model_dir))
    try:
        wait_ready(proc, http, path="/healthz")  # the HTTP server starts after the RTSP one
        with socket.create_connection(("127.0.0.1", rtsp), timeout=10) as v:
            url = f"rtsp://127.0.0.1:{rtsp}/lobby"
            head = _request(v, f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\n"
                               "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n")  # fmt: skip
            assert head.startswith("RTSP/1.0 200"), head
            session = next(line.split(":", 1)[1].split(";")[0].strip() for line in head.split("\r\n")
                           if line.lower().startswith("session:"))  # fmt: skip
            assert _request(v, f"PLAY {url} RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\n\r\n").startswith(
                "RTSP/1.0 200"
            )
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            data = b""
            while True:
                chunk = v.recv(65536)  # a reset would raise ConnectionResetError here
                if not chunk:
                    break
                data += chunk
            closed_after = time.monotonic() - t0
        out, _ = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    print(f"\nSIGTERM: viewer closed after {closed_after:.2f} s, process exited after {took:.2f} s")
    assert proc.returncode == 0, out
    assert "Traceback" not in out and " ERROR " not in out, out
    rtcp = [p for ch, p in _interleaved(data) if ch == 1]
    assert rtcp and rtcp[-1][-8:-4] == bytes([0x81, 203, 0, 1]), rtcp  # the last packet ends in a BYE
    assert took < 10  # ~1 s here; the target is ~3 s, with room for a busy machine
