"""`streamproxy demo` (scripts/demo.sh): a simulated camera with real faces plus the proxy, for a first look.

It lives with the simulator it drives, in the source checkout's tools (streamproxy_sim), not in the
product's wheel: the product's CLI imports it lazily and says what is missing when it is not there.

The camera is GStreamer's RTSP server (the same simulator the tests use) looping a clip built from a
photo that a package ships (scikit-image's astronaut), or a video file the user passes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from streamproxy.app import App
from streamproxy.config import parse_config
from streamproxy_sim.camsim import SimCamera, build_clip, free_port

log = logging.getLogger(__name__)


def run_demo(args: argparse.Namespace) -> int:
    try:
        # The face photo of the demo clip comes from the demo extra.
        import skimage  # noqa: F401
    except ImportError as err:
        print(
            f"streamproxy demo: the simulated camera needs the demo extra ({err.name} is missing): "
            "pip install 'streamproxy[demo]' (scripts/demo.sh does)",
            file=sys.stderr,
        )
        return 1

    if shutil.which("/usr/bin/python3") is None:
        print(
            "streamproxy demo: Debian's python3 with GStreamer is needed: run scripts/setup.sh",
            file=sys.stderr,
        )
        return 1
    cam_port = free_port()
    tmpdir = tempfile.mkdtemp(prefix="streamproxy-demo-")
    try:
        clip = None
        if args.source is not None:
            # The camera simulator loops raw frames: decode (up to) 10 s of the user's video once.
            print(f"preparing {args.source} as a looping camera ...", file=sys.stderr, flush=True)
            clip = build_clip(Path(tmpdir) / "source.i420", 1280, 720, 25, 10, source=args.source)
        camera = SimCamera(port=cam_port, path="camera", clip=clip)
        camera.start()
    except Exception as err:
        shutil.rmtree(tmpdir, ignore_errors=True)
        print(f"streamproxy demo: the simulated camera did not start: {err}", file=sys.stderr)
        return 1
    try:
        cfg = parse_config(
            {
                "cameras": [{"name": "demo", "url": camera.url}],
                "server": {
                    "host": args.host,
                    "rtsp_port": args.rtsp_port,
                    "http_port": args.http_port,
                    "ice_hosts": ["127.0.0.1"] if args.host in ("127.0.0.1", "localhost") else [],
                },
                "ingest": {"transport": "tcp"},
            }
        )
        app = App(cfg)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host

        async def main() -> None:
            serve = asyncio.create_task(app.serve())
            ready = asyncio.create_task(app.ready_event.wait())
            await asyncio.wait([serve, ready], return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if app.ready:
                rtsp_port = app.rtsp.port if app.rtsp else args.rtsp_port
                http_port = app.web.port if app.web else args.http_port
                print(
                    "\n  streamproxy demo is running: a simulated camera with real faces, anonymized live.\n"
                    f"    RTSP (VLC, ffplay, a VMS):  rtsp://{host}:{rtsp_port}/demo\n"
                    f"        ffplay -rtsp_transport tcp rtsp://{host}:{rtsp_port}/demo\n"
                    f"    Browser (WebRTC):          http://{host}:{http_port}/\n"
                    f"    Metrics:                   http://{host}:{http_port}/metrics\n"
                    f"    The raw camera (for comparison, NOT anonymized): {camera.url}\n"
                    "  Ctrl+C stops.\n",
                    flush=True,
                )
            if args.seconds:
                try:
                    await asyncio.wait_for(asyncio.shield(serve), args.seconds)
                except TimeoutError:
                    app.request_stop()
            await serve

        try:
            asyncio.run(main())
        except OSError as err:
            print(f"streamproxy demo: cannot start: {err}", file=sys.stderr)
            return 1
    finally:
        camera.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0
