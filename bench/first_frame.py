#!/usr/bin/env python3
"""How long a viewer with FFmpeg's default settings waits for the first picture of a camera that is
down (the slate), over RTSP/TCP and RTSP/UDP.

FFmpeg reads ~30 frames before it plays (avformat_find_stream_info); at the slate's own 2 fps that was
~15 s of nothing. The pipeline now sends the slate at SLATE_BURST_FPS for SLATE_BURST_S when a viewer
arrives. The same run measures the baseline first: the burst off (SLATE_BURST_S = 0, as before it
existed), then on. `--slate-fps 25` shows what a steady fast slate would give instead.

    .venv/bin/python bench/first_frame.py [--runs 2] [--slate-fps 2]

The whole service runs in this process (streamproxy_sim.harness) with one camera whose address
refuses connections (127.0.0.1, a port nothing listens on); ffprobe is Debian's. Loopback only.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import time

from streamproxy.config import parse_config
from streamproxy.live import pipeline
from streamproxy_sim.harness import AppThread


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def first_frame_s(url: str, transport: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(
        ["ffprobe", "-v", "error", *transport, "-show_entries", "frame=width", "-read_intervals", "%+#1",
         "-of", "csv=p=0", url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--slate-fps", type=float, default=2.0, help="slate.fps (default: the product's)")
    args = ap.parse_args()
    cfg = parse_config(
        {
            "cameras": [{"name": "cam", "url": f"rtsp://127.0.0.1:{dead_port()}/down"}],
            "server": {"host": "127.0.0.1"},
            "slate": {"fps": args.slate_fps},
        }
    )
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"rtsp_port": 0, "http_port": 0})})
    burst_s = pipeline.SLATE_BURST_S
    for label, burst in (("baseline, no burst", 0.0), ("burst on a viewer's arrival", burst_s)):
        pipeline.SLATE_BURST_S = burst  # read when a viewer arrives
        host = AppThread(cfg)
        host.start()
        try:
            time.sleep(3)  # the slate starts a second after start-up
            url = host.rtsp_url("cam")
            for name, transport in (("tcp", ["-rtsp_transport", "tcp"]), ("udp (default)", [])):
                took = [first_frame_s(url, transport) for _ in range(args.runs)]
                times = ", ".join(f"{t:.1f}" for t in took)
                print(f"{label}: slate.fps {args.slate_fps:g}, rtsp {name}: first frame after {times} s")
        finally:
            host.stop()
    pipeline.SLATE_BURST_S = burst_s


if __name__ == "__main__":
    main()
