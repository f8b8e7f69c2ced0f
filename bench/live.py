"""Live proxy benchmark: N simulated cameras through the whole proxy in one process, against the ceiling.

A script, not a test: it prints a table. For each N (default 1, 2, 4, 6) of simulated cameras
(gst-rtsp-server child processes, `camsim.SimCamera`, 720p25 with real faces and a wall-clock barcode):

1. proxy: the whole service (`streamproxy_sim.harness.running_app`: ingest, detector, tracker, obfuscation, libx264,
   RTSP server) runs for `--seconds`, after a warm-up in which the latency controller settles.
   Reported per N: output fps per camera (min/mean, from the pipelines' published frames), proxy-added
   latency p50/p99 (every sample of the window: decoder out → packets handed to viewers), dropped
   frames by reason, the detector cadence/width the controller settled at, and CPU: this process's
   (the proxy) and the camera simulators' (their own processes, from /proc/<pid>/stat), each as % of
   one core over the window.
2. glass-to-glass on loopback: a PyAV viewer decodes camera 0 through the proxy and computes
   `now - capture stamp` per frame (the simulator stamps the capture wall time in a barcode before
   encoding); the same directly from the camera is the baseline. Median/p95.
3. time to first frame: a new viewer, from `av.open` to the first decoded picture (median of tries),
   through the proxy and directly from the camera.
4. ceiling: bare transcode of the same N camera streams in this process (PyAV decode + the proxy's own
   H264Encoder with the same settings, one thread per camera, no detection): fps and CPU.
5. (first N only) camera back → video: camera 0 is killed and restarted while a viewer stays
   connected; time from the camera listening again to the first live frame at the viewer.

Simulator mode (`--sims`, default replay): in steps 1 and 4 every camera is a "replay" simulator,
which loops a clip encoded once up front and only packetizes it (~1.5 % of one core per 720p25 camera),
like a real camera that encodes on its own hardware. "live" simulators encode every frame with x264
(~14 % of one core each), which on a 2-core machine takes CPU from the proxy under test. Replayed
frames carry no wall-clock barcode, so for steps 2, 3 and 5 camera 0 is restarted, on the same port
and path, as a live stamped simulator: the proxy reconnects to it as to a restarted camera (same
config, same process, the other N-1 cameras keep running); camera 0 goes back to replay before step 4.
With `--sims live` every camera is live throughout (the earlier set-up).

Viewers in steps 2-3 run in this process and add their decode CPU; the CPU numbers come from step 1,
which has no viewers. Everything is bounded in time. The machine this was written on has 2 shared
cores: treat numbers as orders of magnitude and re-run before relying on one.

    .venv/bin/python bench/live.py --cameras 1,2,4 --seconds 15 [--sims live|replay]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamproxy.config import AppConfig, EncoderConfig, parse_config
from streamproxy.live.encode import H264Encoder
from streamproxy.live.pipeline import CameraPipeline
from streamproxy.live.source import CameraSource
from streamproxy_sim.camsim import SimCamera, SimMode, free_port, read_stamp, system_gst_available
from streamproxy_sim.harness import AppThread

log = logging.getLogger("bench.live")

LOW_DELAY = {"probesize": "32", "analyzeduration": "0", "flags": "low_delay"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- CPU accounting -----------------------------------------------------------------------------------


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_s(pid: int | None) -> float:
    """utime + stime of a process (all its threads) from /proc; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuWindow:
    """CPU time of this process and of the simulators over a wall-clock window."""

    def __init__(self, sims: list[SimCamera]) -> None:
        self.pids = [s.pid for s in sims]
        self.t0 = time.monotonic()
        self.self0 = self_cpu_s()
        self.sims0 = sum(proc_cpu_s(p) for p in self.pids)

    def end(self) -> tuple[float, float, float]:
        """(wall s, this process's CPU % of one core, simulators' CPU % of one core)."""
        wall = time.monotonic() - self.t0
        me = (self_cpu_s() - self.self0) / wall * 100
        sims = (sum(proc_cpu_s(p) for p in self.pids) - self.sims0) / wall * 100
        return wall, me, sims


# --- the app on its own loop (the bench itself uses blocking clients) ----------------------------------


def make_config(sims: list[SimCamera], args: argparse.Namespace) -> AppConfig:
    engine: dict[str, Any] = {}
    if args.input_width:
        engine["detector"] = {"input_width": args.input_width}
    if getattr(args, "detector_threads", 0):
        # A session of its own per camera with this many threads, not the shared pool (engine/pool.py).
        engine.setdefault("detector", {})["threads"] = args.detector_threads
    return parse_config(
        {
            "cameras": [{"name": f"cam{i}", "url": s.url} for i, s in enumerate(sims)],
            "server": {
                "host": "127.0.0.1",
                "rtsp_port": free_port(),
                "http_port": free_port(),
                "rtp_port_min": 41000,
                "rtp_port_max": 41998,
            },
            "ingest": {"read_timeout_s": 2, "backoff_max_s": 1, "backoff_initial_s": 0.2},
            "engine": engine,
            "latency_budget_ms": args.budget_ms,
            # live_leak.py / profile_live.py: change gating and the floor's keys (`--no-gating`, `--min-face-px`)
            **({"privacy": dict(args.privacy)} if getattr(args, "privacy", None) else {}),
            "sub_stream": {"enabled": getattr(args, "sub_stream", "on") == "on"},  # live_leak.py: on
            **(
                {"encoder": {"bitrate_kbps": args.encoder_kbps}}
                if getattr(args, "encoder_kbps", None)
                else {}
            ),
        }
    )


# --- viewers ----------------------------------------------------------------------------------------------


def stamped_latencies(url: str, seconds: float, open_timeout: float = 10) -> tuple[list[float], str | None]:
    """now - capture stamp (ms) of every stamped frame a PyAV viewer decodes in `seconds`."""
    out: list[float] = []
    try:
        with av.open(url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(open_timeout, 5)) as c:
            t_end = time.monotonic() + seconds
            for f in c.decode(video=0):
                now_ms = time.time() * 1000
                stamp = read_stamp(f.to_ndarray(format="gray", threads=1))
                if stamp is not None and abs(now_ms - stamp) < 60_000:  # the slate reads as 0
                    out.append(now_ms - stamp)
                if time.monotonic() > t_end:
                    break
    except Exception as err:
        return out, f"{type(err).__name__}: {err}"
    return out, None


def first_frame_s(url: str) -> float | None:
    t0 = time.monotonic()
    try:
        with av.open(url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(10, 5)) as c:
            for _ in c.decode(video=0):
                return time.monotonic() - t0
    except Exception as err:
        log.warning("first frame from %s: %s", url, err)
    return None


def camera_back_s(host: AppThread, sim: SimCamera, name: str) -> float | None:
    """Kill and restart a camera under a connected viewer; seconds from 'listening' to a live frame."""
    seen: list[tuple[float, bool]] = []
    halt = threading.Event()

    def view() -> None:
        try:
            with av.open(
                host.rtsp_url(name), options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(10, 5)
            ) as c:
                for f in c.decode(video=0):
                    stamp = read_stamp(f.to_ndarray(format="gray", threads=1))
                    is_live = stamp is not None and abs(time.time() * 1000 - stamp) < 60_000
                    seen.append((time.monotonic(), is_live))
                    if halt.is_set():
                        break
        except Exception as err:
            log.warning("restart viewer: %s", err)

    t = threading.Thread(target=view, daemon=True)
    t.start()
    try:
        if not _wait(lambda: sum(1 for _, lv in seen if lv) >= 10, 15):
            return None
        sim.kill()
        killed = time.monotonic()
        if not _wait(lambda: any(ts > killed and not lv for ts, lv in seen), 10):
            log.warning("no slate after the camera died")
        time.sleep(1.0)
        sim.start()
        back = time.monotonic()
        if not _wait(lambda: any(ts > back and lv for ts, lv in seen), 15):
            return None
        return next(ts for ts, lv in seen if ts > back and lv) - back
    finally:
        halt.set()
        t.join(10)


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


# --- steps ------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    n: int
    fps: list[float] = field(default_factory=list)
    lat_p50: float | None = None
    lat_p99: float | None = None
    lat_n: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    frames_in: int = 0
    detect_every: list[int] = field(default_factory=list)
    input_width: list[int] = field(default_factory=list)
    cpu_proxy: float = 0.0
    cpu_sims: float = 0.0
    g2g_proxy: list[float] = field(default_factory=list)
    g2g_direct: list[float] = field(default_factory=list)
    g2g_ingest: list[float] = field(default_factory=list)  # capture -> the proxy's decoder, camera 0
    g2g_added: list[float] = field(default_factory=list)  # proxy-added, all cameras, during the g2g run
    ttff_proxy: list[float] = field(default_factory=list)
    ttff_direct: list[float] = field(default_factory=list)
    ceil_fps: list[float] = field(default_factory=list)
    ceil_cpu: float = 0.0
    ceil_cpu_sims: float = 0.0
    camera_back: float | None = None
    enc_cpu_main: float = 0.0  # CPU seconds of the main encoders over the window (all cameras)
    enc_cpu_sub: float = 0.0  # CPU seconds of the sub streams (scale + encode) over the window
    window_s: float = 0.0
    sims: str = "live"  # simulator mode of the throughput steps (1 and 4)
    notes: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def set_sim_mode(sim: SimCamera, mode: SimMode) -> None:
    """Restart a simulator in another mode on the same port and path (no-op if it is in that mode)."""
    if sim.mode == mode and sim.running:
        return
    sim.stop()
    sim.mode = mode
    sim.start()


def camera_source(pipe: CameraPipeline) -> CameraSource:
    """The pipeline's real camera ingest, whose frame callback these measurements tap."""
    src = pipe.source
    assert isinstance(src, CameraSource), src
    return src


def swap_to_live(host: AppThread, sims: list[SimCamera], res: StepResult) -> None:
    """Camera 0 becomes a live, stamped simulator; wait until the proxy shows its stamped frames."""
    set_sim_mode(sims[0], "live")
    back = time.monotonic()
    stamped: list[float] = []
    src = camera_source(host.app.pipelines["cam0"]) if host.app is not None else None
    if src is None:
        res.notes.append("swap to live: no pipeline cam0")
        return
    orig_on_frame = src.on_frame

    def on_frame(df: Any) -> None:
        if len(stamped) < 25:
            plane = df.frame.planes[0]
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            if read_stamp(np.ascontiguousarray(rows[:64, : df.frame.width])) is not None:
                stamped.append(time.monotonic())
        orig_on_frame(df)

    src.on_frame = on_frame
    try:
        if not _wait(lambda: len(stamped) >= 25, 20):
            res.notes.append(f"camera 0 live again: only {len(stamped)} stamped frames in 20 s")
        else:
            log.info("cam0: live stamped frames %.2f s after the swap", stamped[0] - back)
    finally:
        src.on_frame = orig_on_frame
    time.sleep(1.0)  # the controller reacts to the reconnect at most once a second


def proxy_step(sims: list[SimCamera], args: argparse.Namespace, res: StepResult, restart: bool) -> None:
    host = AppThread(make_config(sims, args))
    app = host.start()
    try:
        pipes = list(app.pipelines.values())
        if not _wait(lambda: all(p.state == "live" and p.snapshot().frames_out > 0 for p in pipes), 30):
            res.notes.append("not all cameras live after 30 s")
        time.sleep(args.warmup)  # the latency controller settles (it changes at most once a second)
        samples: list[float] = []
        for p in pipes:
            orig = p.latency.add

            def add(ms: float, orig: Callable[[float], None] = orig) -> None:
                samples.append(ms)
                orig(ms)

            p.latency.add = add  # type: ignore[method-assign]
        before = [p.snapshot() for p in pipes]
        cpu = CpuWindow(sims)
        time.sleep(args.seconds)
        wall, res.cpu_proxy, res.cpu_sims = cpu.end()
        lat = list(samples)
        for p, b in zip(pipes, before, strict=True):
            a = p.snapshot()
            res.fps.append((a.frames_out - b.frames_out) / wall)
            res.frames_in += a.frames_in - b.frames_in
            drop0 = asdict(b.dropped)
            for k, v in asdict(a.dropped).items():
                if v - drop0[k]:
                    res.dropped[k] = res.dropped.get(k, 0) + v - drop0[k]
            res.detect_every.append(p.controller.detect_every)
            res.input_width.append(p.controller.input_width)
            res.enc_cpu_main += a.encode_cpu_s - b.encode_cpu_s
            if a.sub_stream is not None and b.sub_stream is not None:
                res.enc_cpu_sub += a.sub_stream.encode_cpu_s - b.sub_stream.encode_cpu_s
        res.window_s = wall
        res.lat_p50, res.lat_p99, res.lat_n = pct(lat, 0.5), pct(lat, 0.99), len(lat)
        if sims[0].mode != "live" and (not args.no_g2g or restart):
            swap_to_live(host, sims, res)  # the next steps read the wall-clock barcode

        if not args.no_g2g:
            # Where the glass-to-glass time goes: capture -> the proxy's decoder (ingest), measured
            # inside the proxy on camera 0 while the viewer runs.
            src = camera_source(pipes[0])
            orig_on_frame = src.on_frame

            def on_frame(df: Any) -> None:
                plane = df.frame.planes[0]
                rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
                stamp = read_stamp(np.ascontiguousarray(rows[:64, : df.frame.width]))
                now_ms = time.time() * 1000
                if stamp is not None and abs(now_ms - stamp) < 60_000:
                    res.g2g_ingest.append(now_ms - stamp)
                orig_on_frame(df)

            src.on_frame = on_frame
            added_before = len(samples)
            res.g2g_proxy, err = stamped_latencies(host.rtsp_url("cam0"), args.g2g_seconds)
            src.on_frame = orig_on_frame
            res.g2g_added = samples[added_before:]
            if err:
                res.notes.append(f"g2g proxy viewer: {err}")
            res.g2g_direct, err = stamped_latencies(sims[0].url, args.g2g_seconds)
            if err:
                res.notes.append(f"g2g direct viewer: {err}")
            for _ in range(args.ttff_tries):
                ttff = first_frame_s(host.rtsp_url("cam0"))
                if ttff is not None:
                    res.ttff_proxy.append(ttff)
                ttff = first_frame_s(sims[0].url)
                if ttff is not None:
                    res.ttff_direct.append(ttff)
        if restart:
            res.camera_back = camera_back_s(host, sims[0], "cam0")
    finally:
        host.stop()


def ceiling_step(sims: list[SimCamera], args: argparse.Namespace, res: StepResult) -> None:
    """Bare transcode of the same streams: decode + the proxy's encoder settings, no detection."""
    enc_cfg = EncoderConfig()
    stop = threading.Event()
    counting = threading.Event()
    counts = [0] * len(sims)
    errors: list[str] = []

    def run(i: int, url: str) -> None:
        enc: H264Encoder | None = None
        # A camera that was just restarted (camera 0, back from the live glass-to-glass sim) may
        # refuse or stall the first open: retry while still warming up, at most 3 times.
        for attempt in range(3):
            try:
                with av.open(url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(10, 5)) as c:
                    stream = c.streams.video[0]
                    stream.codec_context.thread_type = "SLICE"  # as the proxy's ingest decodes
                    stream.codec_context.thread_count = 2
                    for f in c.decode(stream):
                        if enc is None:
                            enc = H264Encoder(enc_cfg, f.width, f.height, 25.0)
                        enc.encode(f, time.monotonic())
                        if counting.is_set():
                            counts[i] += 1
                        if stop.is_set():
                            break
                return
            except Exception as err:
                if counting.is_set() or stop.is_set() or attempt == 2:
                    errors.append(f"{type(err).__name__}: {err}")
                    return
            finally:
                if enc is not None:
                    enc.close()
                    enc = None

    threads = [threading.Thread(target=run, args=(i, s.url), daemon=True) for i, s in enumerate(sims)]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    counting.set()
    c0 = list(counts)
    cpu = CpuWindow(sims)
    time.sleep(args.seconds)
    wall, res.ceil_cpu, res.ceil_cpu_sims = cpu.end()
    res.ceil_fps = [(c - b) / wall for c, b in zip(counts, c0, strict=True)]
    stop.set()
    for t in threads:
        t.join(10)
    if errors:
        res.notes.append(f"ceiling: {errors[:2]}")


# --- report -----------------------------------------------------------------------------------------------


def _f(v: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def print_table(results: list[StepResult], args: argparse.Namespace) -> None:
    print()
    print(
        f"streamproxy live benchmark: {args.width}x{args.height}@{args.fps} cameras, {args.seconds:g} s per step, "
        f"budget {args.budget_ms:g} ms; {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}"
    )
    print(
        "CPU columns are % of ONE core (100 % = one core busy); 'sims' = the camera simulators' own processes."
    )
    if args.sims == "replay":
        print(
            "sims: REPLAY (pre-encoded clip, packetized only) for proxy and ceiling throughput; camera 0 "
            "restarted as a LIVE stamped sim for glass-to-glass, first frame and camera-back."
        )
    else:
        print("sims: LIVE (x264 encode per frame, stamped) for every step.")
    hdr = (
        f"{'N':>2} | {'fps/cam min/mean':>16} | {'added ms p50/p99':>16} | {'dropped':>22} | {'det every/width':>15} | "
        f"{'proxy CPU':>9} | {'sims CPU':>8} || {'ceiling fps min/mean':>20} | {'ceil CPU':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        drops = ",".join(f"{k[:6]}={v}" for k, v in sorted(r.dropped.items())) or "0"
        de = f"{min(r.detect_every)}-{max(r.detect_every)}" if r.detect_every else "-"
        iw = f"{min(r.input_width)}-{max(r.input_width)}" if r.input_width else "-"
        if de.split("-")[0] == de.split("-")[-1]:
            de = de.split("-")[0]
        if iw.split("-")[0] == iw.split("-")[-1]:
            iw = iw.split("-")[0]
        fps = f"{min(r.fps):.1f}/{statistics.mean(r.fps):.1f}" if r.fps else "-"
        cfps = f"{min(r.ceil_fps):.1f}/{statistics.mean(r.ceil_fps):.1f}" if r.ceil_fps else "-"
        print(
            f"{r.n:>2} | {fps:>16} | {_f(r.lat_p50) + '/' + _f(r.lat_p99):>16} | {drops:>22} | {de + ' / ' + iw:>15} | "
            f"{r.cpu_proxy:>8.0f}% | {r.cpu_sims:>7.0f}% || {cfps:>20} | {r.ceil_cpu:>7.0f}%"
        )
    print()
    hdr2 = (
        f"{'N':>2} | {'g2g proxy med/p95 ms':>20} | {'g2g camera med/p95 ms':>21} | {'1st frame proxy/camera s':>24} | "
        f"{'camera back -> video s':>22} | {'g2g split: ingest + added p50 ms':>32}"
    )
    print(hdr2)
    print("-" * len(hdr2))
    for r in results:
        gp = f"{_f(pct(r.g2g_proxy, 0.5))}/{_f(pct(r.g2g_proxy, 0.95))} (n={len(r.g2g_proxy)})"
        gd = f"{_f(pct(r.g2g_direct, 0.5))}/{_f(pct(r.g2g_direct, 0.95))} (n={len(r.g2g_direct)})"
        tf = f"{_f(pct(r.ttff_proxy, 0.5), '{:.2f}')}/{_f(pct(r.ttff_direct, 0.5), '{:.2f}')}"
        split = f"{_f(pct(r.g2g_ingest, 0.5))} + {_f(pct(r.g2g_added, 0.5))}"
        print(f"{r.n:>2} | {gp:>20} | {gd:>21} | {tf:>24} | {_f(r.camera_back, '{:.2f}'):>22} | {split:>32}")
    print()
    print(
        f"sub stream ({args.sub_stream}; 640 wide, <= 10 fps): encoder CPU over the window, % of one core "
        "(thread CPU time; target: sub <= 25 % of main)"
    )
    for r in results:
        if r.window_s <= 0:
            continue
        main_pct, sub_pct = 100 * r.enc_cpu_main / r.window_s, 100 * r.enc_cpu_sub / r.window_s
        share = f"{100 * r.enc_cpu_sub / r.enc_cpu_main:.1f} % of main" if r.enc_cpu_main > 0 else "-"
        print(f"  N={r.n}: main encode {main_pct:.1f} %, sub scale+encode {sub_pct:.1f} % = {share}")
    print_leak(results, args)
    for r in results:
        for note in r.notes:
            print(f"note (N={r.n}): {note}")
    print(
        "targets: 4 cameras at full rate with added p99 <= 150 ms; glass-to-glass median <= 100 ms; "
        "first frame <= 0.5 s; camera back -> video <= 3 s"
    )


def leak_at_load(path: Path | None) -> dict[int, tuple[float | None, float | None, float | None]]:
    """{N: (leak %, leak % of faces >= 20 px, viewer fps)} for dev_street from bench/live_leak.py --json."""
    if path is None or not path.exists():
        return {}
    data = json.loads(path.read_text())
    runs = data.get("clips", {}).get("dev_street", {}).get("runs", [])
    out: dict[int, tuple[float | None, float | None, float | None]] = {}
    for r in runs:
        if r.get("kind") != "proxy":
            continue
        sc = r.get("score") or {}
        leak, ge20 = sc.get("leak"), sc.get("leak_ge20")
        out[int(r["n"])] = (
            None if leak is None else 100 * leak,
            None if ge20 is None else 100 * ge20,
            r.get("fps_out_cam0"),
        )
    return out


def print_leak(results: list[StepResult], args: argparse.Namespace) -> None:
    """ "Cameras at full frame rate" is only quoted with the leak measured at that load."""
    leaks = leak_at_load(args.leak_json)
    print()
    if not leaks:
        print(
            "leak at this load: NOT MEASURED - run bench/live_leak.py --json FILE and pass --leak-json FILE: "
            "a frame rate without the leak measured at that load says nothing about privacy."
        )
        return
    print(f"leak at this load (dev_street, frame-exact, from {args.leak_json}):")
    for r in results:
        got = leaks.get(r.n)
        fps = f"{min(r.fps):.1f}" if r.fps else "-"
        if got is None:
            print(f"  N={r.n}: {fps} fps/cam min here; leak not measured at N={r.n}")
            continue
        leak, ge20, lfps = got
        print(
            f"  N={r.n}: {fps} fps/cam min here; leak {_f(leak, '{:.2f}')} % of face-frames "
            f"({_f(ge20, '{:.2f}')} % for faces >= 20 px) at {_f(lfps, '{:.1f}')} fps out in the leak run"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", default="1,2,4,6", help="comma-separated camera counts to run")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per step")
    p.add_argument(
        "--warmup", type=float, default=5.0, help="seconds before each window (controller settles)"
    )
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--budget-ms", type=float, default=200.0)
    p.add_argument("--input-width", type=int, default=0, help="detector input width (0 = config default)")
    p.add_argument("--g2g-seconds", type=float, default=6.0)
    p.add_argument("--ttff-tries", type=int, default=5)
    p.add_argument("--no-g2g", action="store_true", help="skip glass-to-glass and first-frame measurements")
    p.add_argument("--no-ceiling", action="store_true", help="skip the bare-transcode ceiling")
    p.add_argument("--no-restart", action="store_true", help="skip the camera restart measurement")
    p.add_argument(
        "--sims",
        choices=["live", "replay"],
        default="replay",
        help="camera simulators for the throughput and ceiling steps: replay (pre-encoded, cheap) or live "
        "(x264 per frame); glass-to-glass, first frame and restart always use a live stamped camera 0",
    )
    p.add_argument(
        "--sub-stream",
        choices=["on", "off"],
        default="on",
        help="encode each camera's sub stream (the default)",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--leak-json",
        type=Path,
        help="results of bench/live_leak.py --json: the leak measured at each N is printed beside the frame rate",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    why = system_gst_available()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.cameras.split(",") if x.strip()]
    results: list[StepResult] = []
    for k, n in enumerate(counts):
        res = StepResult(n, sims=args.sims)
        sims = [
            SimCamera(width=args.width, height=args.height, fps=args.fps, path=f"cam{i}", mode=args.sims)
            for i in range(n)
        ]
        try:
            for s in sims:
                s.start()
            print(f"N={n}: proxy ...", file=sys.stderr, flush=True)
            proxy_step(sims, args, res, restart=k == 0 and not args.no_restart)
            if not args.no_ceiling:
                print(f"N={n}: ceiling ...", file=sys.stderr, flush=True)
                set_sim_mode(sims[0], args.sims)  # camera 0 was live for glass-to-glass
                ceiling_step(sims, args, res)
        finally:
            for s in sims:
                s.stop()
        results.append(res)
    print_table(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
