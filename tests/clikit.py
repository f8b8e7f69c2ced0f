"""`streamproxy run` as a user starts it: a config file, the command in a subprocess, readiness, ffprobe.

* `write_config(dir, url, rtsp, http, model_dir=None)`: a one-camera ("lobby") config on 127.0.0.1.
* `run_cli(cfg)`: `streamproxy run` to its end (CompletedProcess); `start_cli(cfg)`: the running process.
* `wait_ready(proc, http)`: until /readyz answers 200; `http_status(url)`; `probe(url, entries)`: ffprobe.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "streamproxy.cli", "run", "--config"]


def write_config(directory: Path, url: str, rtsp: int, http: int, model_dir: Path | None = None) -> Path:
    detector = (
        f"\nengine:\n  detector:\n    input_width: 640\n    model_dir: {model_dir}\n" if model_dir else "\n"
    )
    cfg = directory / "streamproxy.yaml"
    cfg.write_text(
        f"cameras:\n  - name: lobby\n    url: {url}\n"
        f"server:\n  host: 127.0.0.1\n  rtsp_port: {rtsp}\n  http_port: {http}\n" + detector
    )
    return cfg


def run_cli(cfg: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, str(cfg)], capture_output=True, text=True, timeout=timeout)


def start_cli(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def http_status(url: str) -> int:
    """The status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def wait_ready(proc: subprocess.Popen[str], http: int, timeout: float = 60, path: str = "/readyz") -> None:
    """Until `path` answers 200; fails with the process output if it died first."""
    deadline = time.monotonic() + timeout
    while http_status(f"http://127.0.0.1:{http}{path}") != 200:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"not ready within {timeout:.0f} s"
        time.sleep(0.2)


def probe(url: str, entries: str) -> str:
    """What ffprobe says about the stream (over TCP), as `a,b`."""
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries", f"stream={entries}",
         "-of", "csv=p=0", url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()
