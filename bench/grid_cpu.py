"""The camera grid's cost to the service: its CPU with the page's grid open on N cameras, beside the
same service with no grid open, in the same run; and the time to the first picture of every tile.

The whole service runs here on this process's event loop (`streamproxy_sim.harness.running_app`):
N proxy cameras read from simulated cameras (gst-rtsp-server in replay mode: the clip is encoded
once and only packetized, so the cameras cost the box little; several proxy cameras share one sim
server, which serves every client from one stream, as a camera does), each decoded, anonymized
(YuNet at the privacy floor) and encoded by the service. A headless Chromium (its own processes,
not counted) either shows the grid page, at a viewport where every tile is in view (the most the
grid asks for: every tile refreshes), or about:blank; the windows alternate (blank, grid, blank,
grid, ...) so that drift in the box's load falls on both. Nothing talks to the browser during a
window.

Printed per window and as the mean difference, in % of one core:
  * the service process's CPU (all its threads: pipelines, encoders, the event loop),
  * the event loop thread's CPU alone (where the grid's requests are served and its tiles encoded;
    less noisy than the whole process, whose pipelines dominate),
and the page's picture requests (one per refresh for every tile in view: /api/tiles), the new
pictures it got and those it already had ("same") per second, and, for every time the
grid was opened, when the last of the N tiles showed its first picture (ms since the page opened).

    .venv/bin/python bench/grid_cpu.py                       # 16 cameras 640x360 at 5 fps, 3 pairs of 20 s
    .venv/bin/python bench/grid_cpu.py --cameras 4 --seconds 10 --pairs 1   # a quick look

Target (issue #25): the grid on 16 cameras adds at most 5 % of one core; every tile's first picture
within 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the CDP client lives with the tests

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

ALL_SHOWN = """(() => {
  const t = window.streamproxyGrid && window.streamproxyGrid.tiles;
  const names = t ? Object.keys(t) : [];
  return names.length === %d && names.every((n) => t[n].shown);
})()"""
COUNTS = """(() => {
  const t = window.streamproxyGrid.tiles;
  let pictures = 0, notModified = 0, failures = 0;
  for (const n of Object.keys(t)) { pictures += t[n].pictures; notModified += t[n].notModified; failures += t[n].failures; }
  return {pictures, notModified, failures, requests: window.streamproxyGrid.requests,
          first: Object.values(t).map((x) => x.firstPictureMs)};
})()"""


def thread_cpu_s(native_id: int) -> float:
    """A thread's CPU time (user + system) from /proc (clock ticks: 10 ms steps)."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


async def window(seconds: float, loop_tid: int) -> dict[str, float]:
    cpu0, loop0, t0 = time.process_time(), thread_cpu_s(loop_tid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, loop1, t1 = time.process_time(), thread_cpu_s(loop_tid), time.monotonic()
    span = t1 - t0
    return {
        "seconds": round(span, 1),
        "process_pct": round(100 * (cpu1 - cpu0) / span, 1),
        "loop_pct": round(100 * (loop1 - loop0) / span, 1),
    }


def config(args: argparse.Namespace, urls: list[str], model_dir: Path) -> Any:
    from streamproxy.config import parse_config

    cfg = parse_config(
        {
            "cameras": [{"name": f"cam{i + 1:02d}", "url": u} for i, u in enumerate(urls)],
            "server": {"host": "127.0.0.1", "ice_hosts": ["127.0.0.1"]},
            # The detector at the camera's own width (its privacy floor for the default smallest face):
            # the default 1280 would upscale these small cameras and keep the controller stepping
            # down under load, a moving baseline that hides a few % of a core.
            "engine": {"detector": {"model_dir": str(model_dir), "input_width": args.width}},
            "latency_budget_ms": 1000,  # many cameras on a small box: shed frames, not fail the bench
            "slate": {"width": args.width, "height": args.height},
        }
    )
    return cfg.model_copy(update={"server": cfg.server.model_copy(update={"rtsp_port": 0, "http_port": 0})})


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from browserkit import Chromium

    from streamproxy.config import default_model_dir
    from streamproxy.engine.models import fetch_models
    from streamproxy_sim.camsim import SimCamera, system_gst_available
    from streamproxy_sim.harness import running_app

    missing = system_gst_available()
    if missing:
        raise SystemExit(f"simulated cameras unavailable: {missing}")
    model_dir = default_model_dir()
    fetch_models(model_dir)
    sims = [
        SimCamera(
            width=args.width, height=args.height, fps=args.fps, faces=2, mode="replay", bitrate_kbps=600
        )
        for _ in range(min(args.sims, args.cameras))
    ]
    for sim in sims:  # one after the other: the first builds the clip they all serve
        await asyncio.to_thread(sim.start)
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores (shared)",
        "cameras": args.cameras,
        "camera": f"{args.width}x{args.height} at {args.fps} fps, 2 faces, {len(sims)} sim servers (replay)",
        "window_s": args.seconds,
        "viewport": f"{args.viewport[0]}x{args.viewport[1]}",
    }
    try:
        urls = [sims[i % len(sims)].url for i in range(args.cameras)]
        async with running_app(config(args, urls, model_dir)) as app, Chromium() as browser:
            assert app.web is not None
            base = f"http://127.0.0.1:{app.web.port}"
            loop_tid = threading.get_native_id()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:  # every camera live, bounded
                if all(c.snapshot().state == "live" for c in app.cameras.values()):
                    break
                await asyncio.sleep(0.5)
            report["live_at_start"] = sum(c.snapshot().state == "live" for c in app.cameras.values())
            await browser.viewport(*args.viewport)
            await browser.goto("about:blank")
            await asyncio.sleep(args.warmup)
            rows: list[dict[str, Any]] = []
            firsts: list[float | None] = []
            for _pair in range(args.pairs):
                await browser.goto("about:blank")
                await asyncio.sleep(1)
                rows.append({"grid": False, **await window(args.seconds, loop_tid)})
                await browser.goto(f"{base}/", "window.streamproxyGrid")
                shown = await browser.wait_js(ALL_SHOWN % args.cameras, 15)
                c0 = await browser.evaluate(COUNTS)
                first = [v for v in c0["first"] if v is not None]
                firsts.append(round(max(first), 0) if shown and len(first) == args.cameras else None)
                await asyncio.sleep(1)
                c0 = await browser.evaluate(COUNTS)
                row = {"grid": True, **await window(args.seconds, loop_tid)}
                c1 = await browser.evaluate(COUNTS)
                span = row["seconds"]
                row["requests_per_s"] = round((c1["requests"] - c0["requests"]) / span, 1)
                row["pictures_per_s"] = round((c1["pictures"] - c0["pictures"]) / span, 1)
                row["not_modified_per_s"] = round((c1["notModified"] - c0["notModified"]) / span, 1)
                row["failures"] = c1["failures"] - c0["failures"]
                rows.append(row)
            snaps = [c.snapshot() for c in app.cameras.values()]
            report["fps_out_per_camera_at_end"] = round(statistics.fmean(s.fps_out for s in snaps), 1)
            report["live_at_end"] = sum(s.state == "live" for s in snaps)
            report["jpeg_encodes"] = app.web.encodes
    finally:
        await asyncio.gather(*(asyncio.to_thread(s.stop) for s in sims))
    report["windows"] = rows
    off = [r for r in rows if not r["grid"]]
    on = [r for r in rows if r["grid"]]
    for key in ("process_pct", "loop_pct"):
        report[f"{key}_without_grid"] = round(statistics.fmean(r[key] for r in off), 1)
        report[f"{key}_with_grid"] = round(statistics.fmean(r[key] for r in on), 1)
        report[f"{key}_added_by_grid"] = round(report[f"{key}_with_grid"] - report[f"{key}_without_grid"], 1)
        report[f"{key}_added_per_pair"] = [round(b[key] - a[key], 1) for a, b in zip(off, on, strict=True)]
    report["last_tile_first_picture_ms"] = firsts
    return report


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{r['cameras']} cameras ({r['camera']}), {r['machine']}, viewport {r['viewport']}")
    print(
        f"live at start/end: {r['live_at_start']}/{r['live_at_end']}; fps out per camera {r['fps_out_per_camera_at_end']}"
    )
    print(
        f"{'window':<8} {'grid':<5} {'process % core':>15} {'loop thread %':>14} {'requests/s':>11}"
        f" {'pictures/s':>11} {'same/s':>7}"
    )
    for i, w in enumerate(r["windows"]):
        req, pics, same = (w.get(k, "") for k in ("requests_per_s", "pictures_per_s", "not_modified_per_s"))
        print(
            f"{i:<8} {w['grid']!s:<5} {w['process_pct']:>15} {w['loop_pct']:>14} {req:>11} {pics:>11} {same:>7}"
        )
    print(
        f"mean without grid / with grid / added: process {r['process_pct_without_grid']} / "
        f"{r['process_pct_with_grid']} / {r['process_pct_added_by_grid']:+} % of one core "
        f"(per pair {r['process_pct_added_per_pair']}); loop thread {r['loop_pct_without_grid']} / "
        f"{r['loop_pct_with_grid']} / {r['loop_pct_added_by_grid']:+} (per pair {r['loop_pct_added_per_pair']})"
    )
    print(
        f"last of {r['cameras']} tiles' first picture, ms after the page opened: {r['last_tile_first_picture_ms']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--sims", type=int, default=4, help="sim servers the cameras share")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20.0, help="each measuring window")
    ap.add_argument("--pairs", type=int, default=3, help="windows without and with the grid")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--viewport", type=int, nargs=2, default=(1920, 2600), metavar=("W", "H"))
    ap.add_argument("--json", action="store_true", help="print the report as JSON too")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    report = asyncio.run(asyncio.wait_for(main(args), timeout=120 + args.pairs * 2 * (args.seconds + 25)))
    print_table(report)
    if args.json:
        print(json.dumps(report))
