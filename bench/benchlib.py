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
from typing import Any

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
                "ffprobe",
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames,width,height",
                "-of",
                "json",
                str(path),
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


# --- over-masking ----------------------------------------------------------------------------------------
# The shared scorer's measure (../shared/eval/videos_gt/score_overmask.py), in process, for the live
# benchmark: there some frames never arrive (shed) and the camera's frame-index stamp changes a corner
# of every frame, so both are left out. Same definition: a pixel counts as changed when its luma differs
# by more than OVERMASK_LEVEL; pixels inside a face box grown by 50 % per side and 24 px above and below
# are left out. bench/video_leak.py runs the shared script itself (files have neither problem).
OVERMASK_LEVEL = 12
OVERMASK_FRAME_LIMIT = 0.10  # "frames over 10 %"


def overmask_keep(
    shape: tuple[int, int],
    faces: list[tuple[float, float, float, float]],
    exclude: list[tuple[int, int, int, int]],
) -> Any:
    """Bool map of the pixels that count: outside every grown face box (x, y, w, h) and every
    excluded rectangle (x0, y0, x1, y1)."""
    import numpy as np

    h_img, w_img = shape
    keep = np.ones(shape, bool)
    for x, y, w, h in faces:
        x0, y0, x1, y1 = x - 0.5 * w, y - 0.5 * h - 24, x + 1.5 * w, y + 1.5 * h + 24
        keep[max(0, int(y0)) : min(h_img, int(y1) + 1), max(0, int(x0)) : min(w_img, int(x1) + 1)] = False
    for x0, y0, x1, y1 in exclude:
        keep[max(0, y0) : min(h_img, y1), max(0, x0) : min(w_img, x1)] = False
    return keep


def overmask_share(orig_y: Any, anon_y: Any, keep: Any) -> float:
    """The share of the counted pixels whose luma changed by more than OVERMASK_LEVEL."""
    import numpy as np

    ch = (np.abs(orig_y.astype(np.int16) - anon_y.astype(np.int16)) > OVERMASK_LEVEL) & keep
    return float(ch.sum() / max(1, int(keep.sum())))


@dataclass
class Overmask:
    """Per-frame over-masking summarised as the shared scorer prints it (fractions, not %)."""

    median: float | None = None
    p90: float | None = None
    max: float | None = None
    over_10pct: float | None = None  # share of frames with more than 10 % changed
    frames: int = 0

    @staticmethod
    def of(shares: list[float]) -> Overmask:
        import numpy as np

        if not shares:
            return Overmask()
        s = np.array(shares)
        return Overmask(
            float(np.median(s)), float(np.percentile(s, 90)), float(s.max()),
            float((s > OVERMASK_FRAME_LIMIT).mean()), len(shares),
        )  # fmt: skip

    def text(self) -> str:
        if self.median is None or self.p90 is None or self.max is None or self.over_10pct is None:
            return "-"
        return (
            f"{100 * self.median:.2f} / {100 * self.p90:.2f} / {100 * self.max:.2f} %, "
            f"{100 * self.over_10pct:.1f} % of frames > 10 %"
        )


def parse_overmask(output: str) -> Overmask:
    """The shared score_overmask.py's last line (`overmask_median=.. overmask_p90=.. frames_over_10pct=..`)
    and its first (the maximum is printed only there, in %)."""
    import re

    om = Overmask()
    for line in output.splitlines():
        if line.startswith("overmask_median="):
            v = dict(kv.split("=") for kv in line.split())
            om.median, om.p90 = float(v["overmask_median"]), float(v["overmask_p90"])
            om.over_10pct = float(v["frames_over_10pct"])
        m = re.search(r"frames (\d+):.*max ([0-9.]+) %", line)
        if m:
            om.frames, om.max = int(m.group(1)), float(m.group(2)) / 100
    return om
