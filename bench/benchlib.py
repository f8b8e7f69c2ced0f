"""Shared helpers for the side-by-side benchmarks against deface (bench/recall.py, bench/bulk_speed.py).

These are benchmark scripts, not tests: they print numbers. Evaluation data is read in place from
``<repo>/../shared/eval`` (never copied into the repository).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EVAL_DIR = REPO.parent / "shared" / "eval"
OURS_BIN = REPO / ".venv" / "bin" / "streamproxy"
DEFACE_BIN = REPO / "bench" / ".venv-deface" / "bin" / "deface"


@dataclass
class RunResult:
    """One external tool invocation: wall-clock time, exit status and the tail of its output."""

    cmd: list[str]
    wall_s: float
    rc: int
    output_tail: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


def run_timed(cmd: list[str], timeout_s: float, cwd: Path | None = None) -> RunResult:
    """Run a command, wall-clock timed, killed after ``timeout_s`` (rc 124 then) so a benchmark stays bounded."""
    log.info("run: %s", " ".join(cmd))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
        rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, exc.stdout or b""
    wall = time.perf_counter() - t0
    text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
    return RunResult(cmd=cmd, wall_s=wall, rc=rc, output_tail=text[-3000:])


def ours_available() -> tuple[bool, str]:
    """Whether our CLI exists and has an ``anonymize`` command (it is written in parallel with this bench)."""
    if not OURS_BIN.exists():
        return False, f"{OURS_BIN} missing"
    try:
        proc = subprocess.run(
            [str(OURS_BIN), "anonymize", "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "`streamproxy anonymize --help` timed out"
    text = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        return False, f"`streamproxy anonymize --help` failed (rc {proc.returncode}): {text[-400:]}"
    return True, text


def ours_help_has(help_text: str, option: str) -> bool:
    return option in help_text


def deface_available() -> tuple[bool, str]:
    if not DEFACE_BIN.exists():
        return False, f"{DEFACE_BIN} missing: run bench/setup_deface.sh"
    return True, str(DEFACE_BIN)


def ffprobe_frame_count(path: Path, timeout_s: float = 120) -> int | None:
    """Decoded video frame count (ffprobe -count_frames), or None when ffprobe cannot read the file."""
    if shutil.which("ffprobe") is None:
        return None
    try:
        proc = subprocess.run(
            [
                "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                "-show_entries", "stream=nb_read_frames,width,height", "-of", "json", str(path),
            ],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    streams = json.loads(proc.stdout or b"{}").get("streams", [])
    if not streams or "nb_read_frames" not in streams[0]:
        return None
    return int(streams[0]["nb_read_frames"])


def cpu_note() -> str:
    """Machine context to print with every result: timings here are noisy (2 shared cores)."""
    try:
        load = os.getloadavg()
        load_s = f"load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    except OSError:
        load_s = "load avg n/a"
    return f"{os.cpu_count()} CPUs, {load_s}"
