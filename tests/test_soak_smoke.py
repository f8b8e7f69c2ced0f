"""bench/soak.py runs end to end with small numbers (~35 s) and reports what the issue asks of it.

Not a soak: the growth targets need minutes (RSS still settles in the first half minute), so only the
shape of the summary and the targets that hold from the first second are checked: the service stays
up, the judge sees the camera's faces and none in what the viewers decoded, the restart is recovered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamproxy_sim.camsim import system_gst_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parent.parent


def test_soak_runs_and_reports(tmp_path: Path) -> None:
    why = system_gst_available()
    if why:
        pytest.skip(why)
    out = tmp_path / "soak.json"
    cmd = [
        sys.executable, str(REPO / "bench" / "soak.py"),
        "--minutes", "0.6", "--cameras", "1", "--webrtc", "1",
        "--sample-s", "6", "--warmup-s", "12",
        "--restart-min-s", "6", "--restart-max-s", "8", "--down-min-s", "1", "--down-max-s", "2",
        "--stay-min-s", "5", "--stay-max-s", "10", "--off-min-s", "1", "--off-max-s", "2",
        "--fuzz-rate", "3", "--judge-every-s", "3", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=220, check=False)
    tail = (proc.stdout + proc.stderr)[-4000:]
    # 0: all targets held; 1: one failed (growth may, on a busy machine, in 36 s); 2: no run at all.
    assert proc.returncode in (0, 1), tail
    assert "=== soak summary" in proc.stdout and "target no_raw_face" in proc.stdout, tail
    s = json.loads(out.read_text())

    assert {"growth", "restarts", "recovery_s", "viewers", "fuzz", "judge", "targets", "samples"} <= s.keys()
    assert len(s["samples"]) >= 3, tail
    first = s["samples"][0]
    assert first["rss_mb"] > 0 and first["fds"] > 0 and first["threads"] > 0 and first["tasks"] > 0
    assert first["healthz"] == 200
    assert s["growth"]["tasks_min"] > 0 and "tasks_flat" in s["targets"]

    t = s["targets"]
    assert t["service_stayed_up"]["ok"], tail
    assert t["no_raw_face"]["judge_calibrated"], s["judge"]
    assert t["no_raw_face"]["judged"] >= 5 and t["no_raw_face"]["value"] == 0, s["judge"]
    assert t["no_raw_face"]["ok"]

    kinds = s["viewers_by_kind"]
    assert {"tcp", "udp"} <= kinds.keys() and all(kinds[k]["live_frames"] > 0 for k in ("tcp", "udp")), kinds
    assert s["restarts"], "no camera restart in the run"
    assert all(r["worst_s"] is not None for r in s["restarts"]), s["restarts"]
    assert s["fuzz"]["total"] >= 10 and s["shutdown"]["returncode"] == 0, (s["fuzz"], s["shutdown"])
