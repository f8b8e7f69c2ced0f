"""`streamproxy demo` (scripts/demo.sh): a simulated camera with real faces plus the proxy, for a first look.

It lives with the simulator it drives, in the source checkout's tools (streamproxy_sim), not in the
product's wheel: the product's CLI imports it lazily and says what is missing when it is not there.

The camera is GStreamer's RTSP server (the same simulator the tests use) looping a real fixed-camera
scene: OpenCV's sample plaza video with a face photo a package ships pasted on three walkers
(streamproxy_sim/plaza.py; the video comes from Debian's opencv-doc, scripts/fetch-plaza-video.sh).
Without that video it loops camsim's synthetic clip and says so; `--source` loops the user's video.
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
from streamproxy_sim import plaza
from streamproxy_sim.camsim import SimCamera, build_clip, free_port

log = logging.getLogger(__name__)


def _camera(args: argparse.Namespace, tmpdir: Path) -> tuple[SimCamera, str]:
    """The simulated camera (not started yet) and what it shows, in words."""
    port = free_port()
    if args.source is not None:
        # The camera simulator loops raw frames: decode (up to) 10 s of the user's video once.
        print(f"preparing {args.source} as a looping camera ...", file=sys.stderr, flush=True)
        clip = build_clip(tmpdir / "source.i420", 1280, 720, 25, 10, source=args.source)
        return SimCamera(port=port, path="camera", clip=clip), f"your video {args.source}, looping"
    video = plaza.find_video()
    why = f"the plaza video (opencv-doc's vtest.avi) is not here ({plaza.FETCH_COMMAND} fetches it)"
    if video is not None:
        try:
            if not plaza.replay_path().exists():
                print("preparing the plaza camera (once, a few seconds) ...", file=sys.stderr, flush=True)
            replay = plaza.cached_replay(video)
        except (ValueError, OSError) as err:
            why = f"the plaza clip could not be built: {err}"
        else:
            cam = SimCamera(
                port=port, path="camera", width=plaza.WIDTH, height=plaza.HEIGHT, fps=plaza.FPS,
                mode="replay", replay_file=replay,
            )  # fmt: skip
            return cam, "a plaza seen from a wall camera, three walkers with real faces"
    print(f"streamproxy demo: {why}: showing a synthetic scene instead", file=sys.stderr, flush=True)
    return SimCamera(port=port, path="camera"), "a synthetic scene with real faces"


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
    tmpdir = tempfile.mkdtemp(prefix="streamproxy-demo-")
    try:
        camera, scene = _camera(args, Path(tmpdir))
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
                    f"\n  streamproxy demo is running: a simulated camera ({scene}), anonymized live.\n"
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
