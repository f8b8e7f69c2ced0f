"""Where a live camera's CPU goes: per camera and per frame, by stage, at N cameras.

A script, not a test: it prints a table. For each N in `--cameras` (default 1,2,4), N replay simulators
(real gst-rtsp-server children, `camsim.SimCamera(mode="replay")`) serve the same clip: by default the
fixed-camera `dev_plaza` from `<repo>/../shared/eval/videos_gt` (read in place, stamped and cached
outside the repository as bench/live_leak.py does: `--cache-dir`), or OpenCV's `vtest.avi` (the
Debian package opencv-doc) scaled to 720p when the shared clip is absent. The whole service runs in
this process (`AppThread`, bench/live.py's config: ingest, change gate, detector, tracker, render,
libx264 main + sub stream, RTSP server); no viewer, so no packets are sent (packetize/send is
measured by bench/live.py and live_leak.py, which have viewers).

CPU per stage, milliseconds of CPU per output frame of one camera, over `--seconds` after `--warmup`:
* ingest: the camera's RTSP client thread (depacketize + H.264 decode), from /proc/self/task/<tid>/stat;
* gate: the change gate's comparison of every frame (EngineStats.observe_cpu_s);
* detector: the detector calls: the shared pool's session threads (engine/pool.py; `--detector-threads`
  N gives each camera a session of its own instead, measured in its worker: EngineStats.detect_cpu_s);
  onnxruntime's own threads, where a session has more than one, are in `native`;
* engine rest: the worker thread's other CPU (tracker, look-ahead, queues);
* render: the encoder thread's copy + obfuscation (its CPU less the two encodes);
* encode main / sub: libx264 for the main stream and the sub stream (the pipeline's own counters);
* loop: the event loop thread (API, hubs; with no viewers, no sending);
* native: threads Python did not start (onnxruntime's pool, FFmpeg's frame threads): per frame of
  all cameras together.
Also: output fps of every camera, the share of detector runs that were whole / region / quiet looks
and the mean share of the picture looked at, the process's RSS and its growth per camera, the GIL
check (the sum of Python threads' CPU against the cores: a process that cannot use more than one
core while frames are shed is GIL-bound), and the proxy's total CPU.

    .venv/bin/python bench/profile_live.py --cameras 1,2,4 --seconds 20
    .venv/bin/python bench/profile_live.py --cameras 4 --no-gating      # the same without change gating
    .venv/bin/python bench/profile_live.py --cameras 1 --down 10        # + what 10 unreachable cameras cost

Loopback only; every wait is bounded; simulators are stopped in `finally`. 2 shared cores: re-run
before relying on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from live import _wait, make_config  # noqa: E402
from live_leak import (  # noqa: E402
    choose_stamp,
    default_cache_dir,
    load_clip,
    make_sim,
    outside_repo,
    stamped_raw,
)

from streamproxy_sim.camsim import cached_replay, system_gst_available  # noqa: E402
from streamproxy_sim.harness import AppThread  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, float]:
    """CPU seconds of every thread of this process, by native thread id."""
    out: dict[int, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(parts[11]) + int(parts[12])) / TICKS
        except (OSError, IndexError, ValueError):
            continue
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def role_of(name: str) -> str:
    if name.startswith("pipeline-"):
        return "worker"
    if name.startswith("encode-"):
        return "encoder"
    if name.startswith("ingest-") or name.startswith("camera-") or name.startswith("source-"):
        return "ingest"
    if name == "app-thread":
        return "loop"
    if name.startswith("detector-"):
        return "pool"  # the shared detector's sessions (engine/pool.py)
    return "other-python"


@dataclass
class Profile:
    n: int
    gating: bool
    pooled: bool = True  # one detector pool for all cameras (engine/pool.py), or a session each
    window_s: float = 0.0
    fps_out: list[float] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    ms_per_frame: dict[str, float] = field(default_factory=dict)  # per camera-frame, mean over cameras
    cores_used: float = 0.0  # the whole process, in cores
    python_cores: float = 0.0  # threads Python started
    looks: dict[str, int] = field(default_factory=dict)
    looked_share: float = 0.0
    rss_mb: float = 0.0
    rss_base_mb: float = 0.0
    detect_every: list[int] = field(default_factory=list)
    keep_ratio: list[float] = field(default_factory=list)
    controller: list[str] = field(default_factory=list)  # what each camera's controller last saw


def profile(clip: Any, stamp: Any, n: int, args: argparse.Namespace) -> Profile:
    prof = Profile(n, not args.no_gating, pooled=not args.detector_threads)
    sims = [make_sim(clip, stamp, i, args) for i in range(n)]
    host: AppThread | None = None
    try:
        for s in sims:
            s.start()
        prof.rss_base_mb = rss_mb()
        host = AppThread(make_config(sims, args))
        app = host.start()
        pipes = list(app.pipelines.values())
        _wait(lambda: all(p.state == "live" and p.snapshot().frames_out > 0 for p in pipes), 30)
        time.sleep(args.warmup)
        names = {t.native_id: t.name for t in threading.enumerate()}
        # The ingest threads: a camera's source names its thread after the camera (source.py).
        before = [p.snapshot() for p in pipes]
        eng0 = [_engine_counters(p) for p in pipes]
        cpu0, t0, proc0 = thread_cpu(), time.monotonic(), _proc_cpu()
        time.sleep(args.seconds)
        cpu1, t1, proc1 = thread_cpu(), time.monotonic(), _proc_cpu()
        after = [p.snapshot() for p in pipes]
        eng1 = [_engine_counters(p) for p in pipes]
        prof.rss_mb = rss_mb()
        wall = prof.window_s = t1 - t0
        frames = [a.frames_out - b.frames_out for a, b in zip(after, before, strict=True)]
        prof.fps_out = [round(f / wall, 1) for f in frames]
        total_frames = max(1, sum(frames))
        for a, b in zip(after, before, strict=True):
            for k, v in asdict(a.dropped).items():
                more = int(v) - int(asdict(b.dropped).get(k, 0))
                if more:
                    prof.dropped[k] = prof.dropped.get(k, 0) + more
        prof.detect_every = [a.detector.detect_every for a in after]
        prof.keep_ratio = [a.keep_ratio for a in after]
        prof.controller = [p.controller.last_reason for p in pipes]
        # Thread CPU by role.
        by_role: dict[str, float] = {}
        python_cpu = 0.0
        for tid, c1 in cpu1.items():
            d = c1 - cpu0.get(tid, 0.0)
            name = names.get(tid)
            role = role_of(name) if name is not None else "native"
            if name is not None:
                python_cpu += d
            if role == "other-python" and name is not None and any(name.endswith(p.name) for p in pipes):
                role = "ingest"
            by_role[role] = by_role.get(role, 0.0) + d
        prof.cores_used = (proc1 - proc0) / wall
        prof.python_cores = python_cpu / wall
        e = {k: sum(x[k] for x in eng1) - sum(x[k] for x in eng0) for k in eng1[0]}
        enc_main = sum(a.encode_cpu_s for a in after) - sum(b.encode_cpu_s for b in before)
        enc_sub = sum((a.sub_stream.encode_cpu_s if a.sub_stream else 0.0) for a in after) - sum(
            (b.sub_stream.encode_cpu_s if b.sub_stream else 0.0) for b in before
        )
        per = 1000.0 / total_frames
        ms = prof.ms_per_frame
        ms["ingest"] = by_role.get("ingest", 0.0) * per
        ms["gate"] = e["observe_cpu_s"] * per
        # The camera's own session (its worker's CPU in the calls), or the shared pool's threads.
        ms["detector"] = (e["detect_cpu_s"] + by_role.get("pool", 0.0)) * per
        ms["engine rest"] = (by_role.get("worker", 0.0) - e["observe_cpu_s"] - e["detect_cpu_s"]) * per
        ms["render"] = (by_role.get("encoder", 0.0) - enc_main - enc_sub) * per
        ms["encode main"] = enc_main * per
        ms["encode sub"] = enc_sub * per
        ms["loop"] = by_role.get("loop", 0.0) * per
        ms["native"] = by_role.get("native", 0.0) * per
        ms["other"] = by_role.get("other-python", 0.0) * per
        ms["total"] = (proc1 - proc0) * per
        prof.looks = {k: int(e[k]) for k in ("whole_looks", "region_looks", "quiet_runs")}
        runs = max(1, sum(prof.looks.values()))
        prof.looked_share = e["looked_share_total"] / runs
    finally:
        try:
            if host is not None:
                host.stop()
        finally:
            for s in sims:
                s.stop()
    return prof


def down_cameras(n: int, seconds: float, args: argparse.Namespace) -> tuple[float, float, float]:
    """N cameras that never answer (closed loopback ports): (CPU % of one core, RSS MB added, MB per
    camera). What a camera that is down costs: its reconnect attempts and its slate, nothing more."""
    from types import SimpleNamespace

    from streamproxy_sim.camsim import free_port

    fake = [SimpleNamespace(url=f"rtsp://127.0.0.1:{free_port()}/down{i}") for i in range(n)]
    base = rss_mb()
    host = AppThread(make_config(fake, args))  # type: ignore[arg-type]
    try:
        host.start()
        time.sleep(3.0)  # start-up (the app, its servers) is not what a down camera costs
        c0, t0 = _proc_cpu(), time.monotonic()
        time.sleep(seconds)
        cpu = (_proc_cpu() - c0) / (time.monotonic() - t0) * 100
        added = rss_mb() - base
    finally:
        host.stop()
    return cpu, added, added / max(1, n)


def _engine_counters(p: Any) -> dict[str, float]:
    s = p.engine.stats
    return {
        "observe_cpu_s": s.observe_cpu_s,
        "detect_cpu_s": s.detect_cpu_s,
        "whole_looks": s.whole_looks,
        "region_looks": s.region_looks,
        "quiet_runs": s.quiet_runs,
        "looked_share_total": s.looked_share_total,
    }


def _proc_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def print_profiles(profiles: list[Profile], clip_name: str) -> None:
    stages = ["ingest", "gate", "detector", "engine rest", "render", "encode main", "encode sub", "loop", "native",
              "other", "total"]  # fmt: skip
    print(
        f"\nclip {clip_name}: CPU in ms per output frame of one camera (mean over cameras), {os.cpu_count()} CPUs"
    )
    head = f"{'N':>3} {'gating':>6} {'pool':>4} | " + " | ".join(f"{s:>11}" for s in stages)
    print(
        head + " | fps out per camera | cores (python) | looks whole/regions/quiet, share | RSS MB (+/camera)"
    )
    print("-" * (len(head) + 100))
    for p in profiles:
        cells = " | ".join(f"{p.ms_per_frame.get(s, 0.0):>11.2f}" for s in stages)
        looks = (
            f"{p.looks.get('whole_looks', 0)}/{p.looks.get('region_looks', 0)}/{p.looks.get('quiet_runs', 0)}"
        )
        per_cam = (p.rss_mb - p.rss_base_mb) / max(1, p.n)
        print(
            f"{p.n:>3} {'on' if p.gating else 'off':>6} {'yes' if p.pooled else 'no':>4} | {cells} | {','.join(f'{f:.1f}' for f in p.fps_out):>18} | "
            f"{p.cores_used:.2f} ({p.python_cores:.2f}) | {looks}, {p.looked_share:.2f} | {p.rss_mb:.0f} (+{per_cam:.0f})"
        )
        if p.dropped:
            print(f"      drops: {p.dropped}; detect_every {p.detect_every}; keep {p.keep_ratio}")
        for i, reason in enumerate(p.controller):
            print(f"      cam{i} controller: {reason}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="dev_plaza")
    p.add_argument("--gt-dir", type=Path, default=BENCH.parent.parent / "shared" / "eval" / "videos_gt")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    p.add_argument("--cameras", default="1,2,4")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--bitrate", type=int, default=6000)
    p.add_argument("--budget-ms", type=float, default=200.0)
    p.add_argument("--input-width", type=int, default=0)
    p.add_argument("--no-gating", action="store_true", help="privacy.change_gating: false")
    p.add_argument(
        "--detector-threads",
        type=int,
        default=0,
        help="engine.detector.threads: > 0 gives each camera a session of its own (no shared pool)",
    )
    p.add_argument("--full-scan-s", type=float, default=None, help="privacy.full_scan_s")
    p.add_argument("--min-face-px", type=float, default=None, help="privacy.min_face_px")
    p.add_argument("--sub-stream", choices=["on", "off"], default="on")
    p.add_argument("--down", type=int, default=0, help="also measure this many cameras that never answer")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    why = system_gst_available()
    if why:
        print(f"profile_live: needs GStreamer's RTSP server: {why}", file=sys.stderr)
        return 2
    args.privacy = {}
    if args.no_gating:
        args.privacy["change_gating"] = False
    if args.full_scan_s is not None:
        args.privacy["full_scan_s"] = args.full_scan_s
    if args.min_face_px is not None:
        args.privacy["min_face_px"] = args.min_face_px
    cache = outside_repo(args.cache_dir, "--cache-dir")
    clip = load_clip(args.gt_dir, args.clip, cache)
    stamp = choose_stamp(clip)
    raw = stamped_raw(clip, stamp, cache)
    stamp.raw = str(raw)
    stamp.replay = str(cached_replay(raw, clip.width, clip.height, clip.fps, args.bitrate))
    profiles = []
    for n in [int(x) for x in args.cameras.split(",") if x.strip()]:
        print(f"{clip.name}: N={n} ({args.warmup:.0f} s warm-up + {args.seconds:.0f} s) ...", flush=True)
        profiles.append(profile(clip, stamp, n, args))
    print_profiles(profiles, clip.name)
    if args.down:
        cpu, added, per = down_cameras(args.down, args.seconds, args)
        print(
            f"\n{args.down} cameras down (nothing listening): {cpu:.1f} % of one core, +{added:.0f} MB RSS ({per:.1f} MB each)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(x) for x in profiles], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
