"""WebRTC live view on loopback: glass-to-glass latency, time to first frame, CPU per viewer.

The whole service runs here (SimCamera with real faces -> App: ingest, detection, masking, one
encode -> WHEP). The camera stamps each frame's wall-clock capture time as a barcode
(`camsim.read_stamp`), so a viewer that decodes the barcode from what it shows knows how old the
picture is: glass-to-glass, minus the screen.

    .venv/bin/python bench/webrtc_latency.py                 # everything (about a minute)
    .venv/bin/python bench/webrtc_latency.py --skip-browser  # aiortc viewers only

Phases (each bounded in time):
  browser   headless Chromium plays the page; samples the barcode of the shown picture through a
            canvas; time to first frame over several plays.
  cpu       CPU of the service process with 0, 1 and 10 aiortc viewers of one camera. The viewers
            run in a child process (their decoding is not the service's cost); the child also
            reports glass-to-glass as the aiortc viewers see it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the CDP client and WHEP client live with the tests


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p90": pct(values, 0.9),
        "p99": pct(values, 0.99),
        "mean": round(statistics.fmean(values), 1) if values else None,
    }


def stamp_from_png_strip(png_b64: str, frame_width: int) -> int | None:
    from streamproxy_sim.camsim import read_stamp

    img = cv2.imdecode(np.frombuffer(base64.b64decode(png_b64), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    y = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    plane = np.zeros((max(y.shape[0], 64), frame_width), np.uint8)
    plane[: y.shape[0], : y.shape[1]] = y
    return read_stamp(plane)


# --- the service ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def service(width: int, height: int, fps: int) -> Any:
    from streamproxy.config import parse_config
    from streamproxy_sim.camsim import SimCamera
    from streamproxy_sim.harness import running_app

    cam = SimCamera(width=width, height=height, fps=fps, faces=2)
    await asyncio.to_thread(cam.start)
    try:
        cfg = parse_config(
            {
                "cameras": [{"name": "cam", "url": cam.url}],
                "server": {"host": "127.0.0.1", "ice_hosts": ["127.0.0.1"]},
            }
        )
        cfg = cfg.model_copy(
            update={"server": cfg.server.model_copy(update={"rtsp_port": 0, "http_port": 0})}
        )
        async with running_app(cfg) as app:
            assert app.web is not None  # App.start made it (and it listens)
            base = f"http://127.0.0.1:{app.web.port}"
            # Let the pipeline warm up (first detections, latency controller settling).
            await asyncio.sleep(3)
            yield app, base
    finally:
        await asyncio.to_thread(cam.stop)


@contextlib.asynccontextmanager
async def replay_service(width: int, height: int, fps: int) -> Any:
    """Only the HTTP/WebRTC side: the camsim clip encoded once, replayed into the hub at `fps`.

    With no ingest, detection or encoding running, the service's CPU is the viewers' cost alone.
    """
    from webkit import FakeApp, make_cfg

    from streamproxy.config import EncoderConfig
    from streamproxy.live.encode import H264Encoder
    from streamproxy.serve.http.server import WebServer
    from streamproxy.types import EncodedPacket
    from streamproxy_sim.camsim import cached_clip, frame_bytes

    def encode_clip() -> list[EncodedPacket]:
        import av

        raw = cached_clip(width, height, fps, 4, 2).read_bytes()
        n = len(raw) // frame_bytes(width, height)
        out: list[EncodedPacket] = []
        with H264Encoder(EncoderConfig(), width, height, fps) as enc:
            for i in range(n):
                buf = np.frombuffer(raw, np.uint8, frame_bytes(width, height), i * frame_bytes(width, height))
                frame = av.VideoFrame.from_ndarray(buf.reshape(height * 3 // 2, width), format="yuv420p")
                out += enc.encode(frame, i / fps)
        return out

    packets = await asyncio.to_thread(encode_clip)
    cfg = make_cfg(cameras=("cam",))
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"http_port": 0})})
    app = FakeApp(cfg)
    hub = app.hubs["cam"]
    server = WebServer(app)
    await server.start()
    stop = asyncio.Event()

    async def replay() -> None:
        period = round(90_000 / fps)
        i = 0
        t0 = time.monotonic()
        while not stop.is_set():
            p = packets[i % len(packets)]
            if hub.codec is None:
                from streamproxy.h264 import parameter_sets
                from streamproxy.hub import CodecInfo

                ps = parameter_sets(p.data)
                if ps:
                    hub.set_codec(CodecInfo(width, height, fps, *ps))
            now = time.monotonic()
            hub.publish(EncodedPacket(p.data, i * period, p.keyframe, now, now))
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, t0 + i / fps - time.monotonic()))

    task = asyncio.create_task(replay())
    try:
        yield app, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()
        stop.set()
        await task


# --- reference: the camera read directly (no proxy) ---------------------------------------------
def camera_direct(url: str, seconds: float) -> dict[str, Any]:
    """Glass-to-glass of a PyAV client reading the camera itself: the floor the proxy adds to."""
    import av

    from streamproxy_sim.camsim import read_stamp

    lat: list[float] = []
    opts = {"rtsp_transport": "tcp", "probesize": "32", "analyzeduration": "0", "flags": "low_delay"}
    deadline = time.monotonic() + seconds
    with av.open(url, options=opts, timeout=(10, 10)) as c:
        for frame in c.decode(video=0):
            ms = read_stamp(frame.to_ndarray(format="gray", threads=1))
            if ms is not None:
                lat.append(time.time() * 1000 - ms)
            if time.monotonic() > deadline:
                break
    return summary(lat[10:])  # the first frames come out of the open's backlog


# --- phase: browser ------------------------------------------------------------------------------
async def browser_phase(base: str, seconds: float, plays: int, width: int) -> dict[str, Any]:
    from browserkit import Chromium, play

    from streamproxy_sim.camsim import STAMP_COLS, STAMP_ROWS, stamp_block

    b = stamp_block(width)
    sw, sh = STAMP_COLS * b, STAMP_ROWS * b
    out: dict[str, Any] = {}
    async with Chromium() as browser:
        ttff: list[float] = []
        for _ in range(plays):
            stats = await play(browser, base, "cam", frames=1, timeout=20)
            if stats.get("firstFrameMs") is None:  # set on the video's loadeddata event
                await asyncio.sleep(0.6)
                stats = await browser.evaluate("window.streamproxyStats")
            if stats.get("firstFrameMs") is not None:
                ttff.append(float(stats["firstFrameMs"]))
            await browser.evaluate("window.streamproxy.stop(), true")
            await asyncio.sleep(0.5)
        out["time_to_first_frame_ms"] = summary(ttff)
        out["time_to_first_frame_note"] = "card click -> <video> loadeddata (first picture)"

        await play(browser, base, "cam", frames=25, timeout=20)
        lat: list[float] = []
        misses = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            # Sampled as each picture is presented (requestVideoFrameCallback), not at a random
            # moment while it is up (which adds half a frame interval on average).
            r = await browser.evaluate(f"window.streamproxy.grabRegionOnFrame(0, 0, {sw}, {sh})")
            if r:
                ms = stamp_from_png_strip(r["url"].split(",", 1)[1], int(r["videoWidth"]))
                if ms is None:
                    misses += 1
                else:
                    lat.append(float(r["t"]) - ms)
            await asyncio.sleep(0.1)
        stats = await browser.evaluate("window.streamproxyStats")
        out["glass_to_glass_ms"] = summary(lat)
        out["stamp_unreadable"] = misses
        out["frames_decoded"] = stats.get("framesDecoded")
        out["frames_dropped_by_browser"] = stats.get("framesDropped")
        out["browser_jitter_buffer_ms"] = stats.get("jitterBufferMs")
        out["browser_decode_ms"] = stats.get("decodeMs")
        out["browser_processing_ms"] = stats.get("processingMs")
        await browser.evaluate("window.streamproxy.stop(), true")
    return out


# --- phase: CPU with N aiortc viewers -----------------------------------------------------------
async def viewers_child(base: str, count: int, seconds: float) -> None:
    """Runs in the child process: `count` WHEP viewers; prints one JSON line of results."""
    import aiohttp
    from webkit import WhepClient

    from streamproxy_sim.camsim import read_stamp

    clients = [WhepClient() for _ in range(count)]
    lat: list[float] = []
    frames = 0
    async with aiohttp.ClientSession() as http:
        for c in clients:
            r = await c.connect(http, f"{base}/cam/whep")
            if r.status != 201:
                raise SystemExit(f"WHEP refused: {r.status} {await r.text()}")

        async def consume(c: WhepClient, measure: bool) -> None:
            nonlocal frames
            deadline = time.monotonic() + seconds
            await asyncio.wait_for(c._track_ready.wait(), 20)
            while time.monotonic() < deadline:
                try:
                    f = await asyncio.wait_for(c._track.recv(), max(0.1, deadline - time.monotonic()))
                except Exception:
                    break
                frames += 1
                if measure:
                    now_ms = time.time() * 1000
                    y = f.to_ndarray(format="gray", threads=1)
                    ms = read_stamp(y)
                    if ms is not None:
                        lat.append(now_ms - ms)

        await asyncio.gather(*(consume(c, i == 0) for i, c in enumerate(clients)))
        for c in clients:
            if c.location:
                with contextlib.suppress(Exception):
                    await http.delete(f"{base}{c.location}")
            await c.close()
    print(json.dumps({"frames": frames, "glass_to_glass_ms": summary(lat)}), flush=True)


async def cpu_phase(app: Any, base: str, counts: list[int], seconds: float) -> list[dict[str, Any]]:
    results = []
    for n in counts:
        child: asyncio.subprocess.Process | None = None
        if n:
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--child-viewers", str(n), "--base", base, "--seconds", str(seconds + 4),
                stdout=subprocess.PIPE,
            )  # fmt: skip
            # Wait for the viewers to be attached and the first keyframes sent before measuring.
            deadline = time.monotonic() + 20
            while app.hubs["cam"].viewers("webrtc") < n and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.sleep(2)
        out0 = app.hubs["cam"].packets_out
        cpu0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = time.process_time(), time.monotonic()
        row: dict[str, Any] = {
            "viewers": n,
            "attached": app.hubs["cam"].viewers("webrtc"),
            "service_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
            "hub_packets_per_s": round((app.hubs["cam"].packets_out - out0) / (t1 - t0), 1),
        }
        if child is not None:
            try:
                stdout, _ = await asyncio.wait_for(child.communicate(), seconds + 40)
                line = stdout.decode().strip().splitlines()[-1] if stdout.strip() else "{}"
                row["client"] = json.loads(line)
            except TimeoutError:
                child.kill()
                await child.wait()
                row["client"] = "timed out"
        results.append(row)
        print(json.dumps(row), flush=True)
        await asyncio.sleep(1)
    return results


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores (shared, noisy)",
        "camera": f"{args.width}x{args.height}@{args.fps}",
    }
    live_cpu = not args.skip_cpu and args.cpu_source == "live"
    if not args.skip_browser or live_cpu:
        await live_phases(args, report, live_cpu)
    if not args.skip_cpu and args.cpu_source == "replay":
        async with replay_service(args.width, args.height, args.fps) as (app, base):
            report["cpu_webrtc_only"] = await cpu_phase(app, base, [0, 1, 10], args.seconds)
    return report


async def live_phases(args: argparse.Namespace, report: dict[str, Any], live_cpu: bool) -> None:
    async with service(args.width, args.height, args.fps) as (app, base):
        report["camera_direct_glass_to_glass_ms"] = await asyncio.to_thread(
            camera_direct, app.cfg.cameras[0].url, min(args.seconds, 5)
        )
        print(json.dumps({"camera_direct": report["camera_direct_glass_to_glass_ms"]}), flush=True)
        if not args.skip_browser:
            report["browser"] = await browser_phase(base, args.seconds, args.plays, args.width)
            print(json.dumps(report["browser"]), flush=True)
        if live_cpu:
            report["cpu_live_service"] = await cpu_phase(app, base, [0, 1, 10], args.seconds)
        report["pipeline"] = asdict(app.pipelines["cam"].snapshot())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each measuring window")
    ap.add_argument("--plays", type=int, default=3, help="plays for time to first frame")
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument(
        "--cpu-source",
        choices=["replay", "live"],
        default="replay",
        help="replay: pre-encoded clip, WebRTC cost only (default); live: the whole service",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "webrtc_latency.json")
    ap.add_argument("--child-viewers", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--base", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_viewers:
        asyncio.run(
            asyncio.wait_for(viewers_child(args.base, args.child_viewers, args.seconds), args.seconds + 30)
        )
        return 0
    report = asyncio.run(asyncio.wait_for(main_async(args), 600))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
