"""`streamproxy run` as a user runs it: a process, a config file, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from clikit import http_status, probe, start_cli, wait_ready, write_config

from streamproxy_sim.camsim import free_port


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_and_shuts_down_gracefully_on_signal(
    sim_camera: Any, model_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    rtsp, http = free_port(), free_port()
    proc = start_cli(write_config(tmp_path, sim_camera.url, rtsp, http, model_dir))
    try:
        wait_ready(proc, http)
        assert probe(f"rtsp://127.0.0.1:{rtsp}/lobby", "codec_name") == "h264"
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
    assert http_status(f"http://127.0.0.1:{http}/healthz") == 0  # listeners are closed


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
        [
            sys.executable,
            "-m",
            "streamproxy.cli",
            "demo",
            "--rtsp-port",
            str(rtsp),
            "--http-port",
            str(http),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(proc, http)
        assert probe(f"rtsp://127.0.0.1:{rtsp}/demo", "codec_name,width") == "h264,1280"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out
    assert f"rtsp://127.0.0.1:{rtsp}/demo" in out and f"http://127.0.0.1:{http}/" in out
