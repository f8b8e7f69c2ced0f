"""The live service's lifecycle (uvicorn's shape): signals → startup → serve → graceful shutdown.

Owns one StreamHub and one CameraPipeline per camera, the RTSP server, and the HTTP server
(web page, API, WHEP, metrics). A second Ctrl+C forces the exit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

from streamproxy import metrics
from streamproxy.config import AppConfig, CameraConfig
from streamproxy.hub import StreamHub
from streamproxy.live.pipeline import CameraPipeline
from streamproxy.serve.publish import Publisher
from streamproxy.serve.rtsp_server import RtspServer

log = logging.getLogger(__name__)


def shard_of(name: str, count: int) -> int:
    """Stable shard of a camera: the same name always lands on the same replica (no state, no leader)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count


def cameras_for_shard(cfg: AppConfig, index: int, count: int) -> list[CameraConfig]:
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    return [c for c in cfg.cameras if c.enabled and shard_of(c.name, count) == index]


class App:
    def __init__(self, cfg: AppConfig, shard_index: int = 0, shard_count: int = 1) -> None:
        self.cfg = cfg
        self.cameras = cameras_for_shard(cfg, shard_index, shard_count)
        self.hubs: dict[str, StreamHub] = {}
        self.pipelines: dict[str, CameraPipeline] = {}
        self.publishers: dict[str, Publisher] = {}  # cameras with a publish_url
        self.rtsp: RtspServer | None = None
        self.web: Any = None
        self.ready = False
        self.ready_event = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for position, cam in enumerate(self.cameras):
            hub = StreamHub(cam.name, self.cfg.server.viewer_buffer_packets)
            m = metrics.CameraMetrics(cam.name)
            hub.on_viewers_changed = lambda h, m=m: m.set_viewers(h.viewers("rtsp"), h.viewers("webrtc"))
            hub.on_sent = m.sent
            hub.on_slow_viewer_drop = lambda n, m=m: m.drop("slow_viewer", n)
            self.hubs[cam.name] = hub
            # Detector sessions are built here (model load): off the loop.
            self.pipelines[cam.name] = await loop.run_in_executor(
                None, CameraPipeline, cam, self.cfg, hub, loop, m, len(self.cameras), position
            )
            if cam.publish_url is not None:
                self.publishers[cam.name] = Publisher(
                    hub,
                    cam.publish_url,
                    backoff_initial_s=self.cfg.ingest.backoff_initial_s,
                    backoff_max_s=self.cfg.ingest.backoff_max_s,
                    metrics=m,
                )
        self.rtsp = RtspServer(self.hubs, self.cfg.server)
        await _listen("RTSP", self.cfg.server.host, self.cfg.server.rtsp_port, self.rtsp.start())
        from streamproxy.serve.http import WebServer

        self.web = WebServer(self)
        await _listen("HTTP", self.cfg.server.host, self.cfg.server.http_port, self.web.start())
        for p in self.pipelines.values():
            p.start()
        for pub in self.publishers.values():
            pub.start()
        self.ready = True
        self.ready_event.set()
        log.info(
            "serving %d camera(s): rtsp://%s:%d/<camera>, http://%s:%d/",
            len(self.pipelines),
            self.cfg.server.host,
            self.rtsp.port,
            self.cfg.server.host,
            self.web.port,
        )

    async def stop(self) -> None:
        """Stop whatever is running; also after a start that failed half-way."""
        self.ready = False
        # Publishers first, while the stream still flows: their servers get a TEARDOWN (bounded).
        await asyncio.gather(*(pub.stop(timeout=5.0) for pub in self.publishers.values()))
        if self.web is not None:
            await self.web.stop()
        if self.rtsp is not None:
            await self.rtsp.stop()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, p.stop) for p in self.pipelines.values()))
        for hub in self.hubs.values():
            hub.close()

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        presses = 0

        def on_signal() -> None:
            nonlocal presses
            presses += 1
            if presses > 1:
                log.warning("second signal: exiting now")
                raise SystemExit(1)
            log.info("shutting down (Ctrl+C again to force)")
            self._stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await self.start()  # inside: a start that fails half-way stops what it started
            await self._stopping.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.remove_signal_handler(sig)
                except (NotImplementedError, RuntimeError):
                    pass


class ListenError(OSError):
    """A server of the service cannot listen (a port in use, an address not on this host)."""

    def __str__(self) -> str:
        return str(self.strerror)  # names the server and the port already; no "[Errno 98]"


async def _listen(what: str, host: str, port: int, start: Coroutine[Any, Any, None]) -> None:
    try:
        await start
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise ListenError(err.errno, f"{what} server cannot listen on {host}:{port}: {reason}") from err


def run_app(cfg: AppConfig, shard_index: int = 0, shard_count: int = 1) -> int:
    app = App(cfg, shard_index, shard_count)
    if not app.cameras:
        log.warning("no camera is assigned to shard %d of %d", shard_index, shard_count)
    try:
        asyncio.run(app.serve())
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    return 0
