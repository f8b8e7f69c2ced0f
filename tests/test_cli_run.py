"""`streamproxy run` as a user runs it: a process, a config file, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streamproxy_sim.camsim import free_port


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except OSError:
        return 0


def _wait_ready(proc: subprocess.Popen[str], http: int, timeout: float = 60) -> None:
    """Until /readyz answers 200; fails with the process output if it died first."""
    deadline = time.monotonic() + timeout
    while _get(f"http://127.0.0.1:{http}/readyz") != 200:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"not ready within {timeout:.0f} s"
        time.sleep(0.2)


def _probe(url: str, entries: str) -> str:
    """What ffprobe says about the stream (over TCP), as `a,b`."""
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries", f"stream={entries}",
         "-of", "csv=p=0", url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_and_shuts_down_gracefully_on_signal(
    sim_camera: Any, model_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    rtsp, http = free_port(), free_port()
    cfg = tmp_path / "streamproxy.yaml"
    cfg.write_text(
        f"""
cameras:
  - name: lobby
    url: {sim_camera.url}
server:
  host: 127.0.0.1
  rtsp_port: {rtsp}
  http_port: {http}
engine:
  detector:
    input_width: 640
    model_dir: {model_dir}
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamproxy.cli", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_ready(proc, http)
        assert _probe(f"rtsp://127.0.0.1:{rtsp}/lobby", "codec_name") == "h264"
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out
    assert took < 10, f"shutdown took {took:.1f} s"
    assert "Traceback" not in out and " ERROR " not in out, out
    assert "shutting down" in out
    # Credentials never reach the logs (the sim's URL has none; the redaction itself is unit-tested).
    assert _get(f"http://127.0.0.1:{http}/healthz") == 0  # listeners are closed


@pytest.mark.slow
@pytest.mark.parametrize("own_video", [False, True])
def test_demo_serves_anonymized_video(
    tmp_path: Path, model_dir: Path, _sim_gst_available: None, own_video: bool
) -> None:
    """The README's main command: a simulated camera + the proxy; also with the user's own video."""
    args = ["--seconds", "25"]
    if own_video:
        from facekit import make_video

        src = tmp_path / "mine.mp4"
        make_video(src, frames=25, audio=False)
        args += ["--source", str(src)]
    rtsp, http = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamproxy.cli", "demo", "--rtsp-port", str(rtsp), "--http-port", str(http), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_ready(proc, http)
        assert _probe(f"rtsp://127.0.0.1:{rtsp}/demo", "codec_name,width") == "h264,1280"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out
    assert f"rtsp://127.0.0.1:{rtsp}/demo" in out and f"http://127.0.0.1:{http}/" in out
