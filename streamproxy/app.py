"""The live service's lifecycle (uvicorn's shape): signals → startup → serve → graceful shutdown.

Owns one `Camera` per camera (camera.py: its hubs, metrics, pipeline and publisher), the shared
detector pools, the RTSP server, the HTTP server (web page, API, WHEP, metrics, ONVIF), the cameras'
own ONVIF devices and WS-Discovery. A second Ctrl+C forces the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from streamproxy import metrics
from streamproxy.camera import Camera
from streamproxy.config import AppConfig, CameraConfig
from streamproxy.engine.pool import DetectorPool, PooledDetector, pool_key, pool_shape
from streamproxy.files.manager import FileJobs
from streamproxy.host import usable_cores
from streamproxy.hub import StreamHub
from streamproxy.live.audit import LiveAudit
from streamproxy.live.pipeline import CameraPipeline, live_engine_config
from streamproxy.serve.http.server import WebServer
from streamproxy.serve.onvif.device import CameraDevices
from streamproxy.serve.onvif.discovery import DiscoveryResponder
from streamproxy.serve.publish import Publisher
from streamproxy.serve.rtsp.server import RtspServer

log = logging.getLogger(__name__)

# Descriptors the service needs besides its viewers' connections: per camera (the camera's
# connection, threads' pipes, codecs) and for the process (models, logs, the UDP ports, epoll).
FD_MARGIN_BASE = 64
FD_MARGIN_PER_CAMERA = 16
# Errors of accept() that mean "out of descriptors or memory": asyncio pauses that listener for a
# second and reports each one to the loop's exception handler, with a traceback.
_OUT_OF_RESOURCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# CPU priority of the Files page's jobs below the cameras' (Linux nice steps, per job thread).
FILES_NICE = 10
# Idle RTSP connections closed when the process runs out of descriptors, so a viewer can get in.
SHED_ON_EMFILE = 8


def raise_fd_limit(cfg: AppConfig, cameras: int) -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (both servers' connections need descriptors),
    log it, and warn when the configured connection limits could not all be held. The soft limit, or
    None where the platform has none."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, want, err)
    lim = cfg.server.limits
    need = 2 * lim.max_connections + FD_MARGIN_BASE + FD_MARGIN_PER_CAMERA * cameras
    if soft != resource.RLIM_INFINITY and need > soft:
        log.warning(
            "open-files limit %d is below what server.limits allows (2 x max_connections %d + %d for "
            "%d camera(s) = %d): at the limit new viewers fail with 'out of descriptors'; raise the limit "
            "(ulimit -n, LimitNOFILE=) or lower server.limits.max_connections",
            soft, lim.max_connections, need - 2 * lim.max_connections, cameras, need,
        )  # fmt: skip
    else:
        log.info("open-files limit %s (needs %d at the configured connection limits)",
                 "unlimited" if soft == resource.RLIM_INFINITY else soft, need)  # fmt: skip
    return None if soft == resource.RLIM_INFINITY else int(soft)


class DescriptorAlarm:
    """The loop's exception handler: asyncio reports every accept() that fails for want of
    descriptors (EMFILE) with a traceback, thousands a second under a flood. Here they are counted
    (limit="descriptors", by listener), logged as one WARNING line a second at most, and the RTSP
    server sheds a few idle connections; everything else goes to the previous handler."""

    def __init__(self, app: App, interval_s: float = 1.0) -> None:
        self.app = app
        self.interval_s = interval_s
        self.count = 0  # every such event
        self._unlogged = 0
        self._last_line = -1e9
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.get_exception_handler() is self:
            loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (
            isinstance(exc, OSError)
            and exc.errno in _OUT_OF_RESOURCE
            and "accept" in context.get("message", "")
        ):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        listener = self._listener(context.get("socket"))
        metrics.LIMIT_REJECTIONS.labels(listener=listener, limit="descriptors").inc()
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            # A few descriptors back, once a second: asyncio retries each listener a second later.
            shed = self.app.rtsp.shed_idle(SHED_ON_EMFILE) if self.app.rtsp is not None else 0
            log.warning(
                "-: out of descriptors accepting on the %s port (%s): accepts paused 1 s, %d idle RTSP "
                "connection(s) closed; %d time(s) since the last such line",
                listener.upper(), os.strerror(exc.errno or 0), shed, self._unlogged,
            )  # fmt: skip
            self._last_line = now
            self._unlogged = 0

    def _listener(self, sock: Any) -> str:
        port = None
        try:
            port = sock.getsockname()[1] if sock is not None else None
        except (OSError, IndexError, TypeError):
            pass
        web_port = self.app.web.port if self.app.web is not None else None
        if port is not None and web_port is not None and port == web_port:
            return "http"
        return "rtsp"


def shard_of(name: str, count: int) -> int:
    """Stable shard of a camera: the same name always lands on the same replica (no state, no leader)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count


def cameras_for_shard(cfg: AppConfig, index: int, count: int) -> list[CameraConfig]:
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is not in 0..{count - 1}")
    return [c for c in cfg.cameras if c.enabled and shard_of(c.name, count) == index]


class App:
    """The service: what serve/ reads of it is its `cfg`, `cameras`, `rtsp_port` and `ready`
    (serve/http/server.py's `Service`, serve/onvif/service.py's `OnvifHost`)."""

    def __init__(self, cfg: AppConfig, shard_index: int = 0, shard_count: int = 1) -> None:
        self.cfg = cfg
        self.assigned = cameras_for_shard(cfg, shard_index, shard_count)  # what this replica runs
        self.cameras: dict[str, Camera] = {}  # the running ones, in config order, as `start` makes them
        # One detector for all cameras (engine/pool.py): pools by detector settings, sessions by cores.
        self.detector_pools: dict[str, DetectorPool] = {}
        self.rtsp: RtspServer | None = None
        self.web: WebServer | None = None
        self.devices: CameraDevices | None = None  # cameras that are ONVIF devices of their own
        self.discovery: DiscoveryResponder | None = None  # when ONVIF discovery is on
        self.files: FileJobs | None = None  # the Files page's jobs, when files.enabled
        self.audit: LiveAudit | None = None  # the cameras' daily line in <data_dir>/audit/live.jsonl
        self.ready = False
        self.ready_event = asyncio.Event()
        self._stopping = asyncio.Event()
        self.alarm = DescriptorAlarm(self)

    # Each camera's parts, by camera: for tests and benchmarks (the service reads them through `cameras`).
    @property
    def hubs(self) -> dict[str, StreamHub]:
        return {name: c.hub for name, c in self.cameras.items()}

    @property
    def sub_hubs(self) -> dict[str, StreamHub]:
        return {name: c.sub_hub for name, c in self.cameras.items() if c.sub_hub is not None}

    @property
    def pipelines(self) -> dict[str, CameraPipeline]:
        return {name: c.pipeline for name, c in self.cameras.items()}

    @property
    def publishers(self) -> dict[str, Publisher]:
        return {name: c.publisher for name, c in self.cameras.items() if c.publisher is not None}

    @property
    def rtsp_port(self) -> int | None:
        """The RTSP server's bound port; None until it listens."""
        return self.rtsp.port if self.rtsp is not None and self.rtsp.port else None

    def _pooled_detector(self, cam: CameraConfig) -> PooledDetector | None:
        """The camera's detector on the shared pool; None (a session of its own, made by its engine)
        when its config sets detector.threads, or when its engine settings are refused (the pipeline
        says why)."""
        if self.cfg.engine_for(cam).detector.threads != 0:
            return None
        try:
            det_cfg = live_engine_config(cam, self.cfg, len(self.assigned)).detector
        except ValueError:
            return None
        key = pool_key(det_cfg)
        pool = self.detector_pools.get(key)
        if pool is None:
            pooled = sum(1 for c in self.assigned if self.cfg.engine_for(c).detector.threads == 0)
            sessions, threads = pool_shape(usable_cores(), pooled)
            pool = self.detector_pools[key] = DetectorPool(
                det_cfg, sessions, threads, name=f"detector-{len(self.detector_pools)}"
            )
            log.info(
                "-: one %s detector for %d camera(s): %d session(s) of %d thread(s), earliest deadline first",
                det_cfg.model, pooled, sessions, threads,
            )  # fmt: skip
        return PooledDetector(pool, det_cfg)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.alarm.install(loop)
        host = self.cfg.server.host
        for position, cam in enumerate(self.assigned):
            self.cameras[cam.name] = await Camera.create(
                cam,
                self.cfg,
                cameras=len(self.assigned),
                position=position,
                detector=self._pooled_detector(cam),
            )
        self.rtsp = RtspServer(self.stream_hub, self.cfg.server)
        await _listen("RTSP", host, self.cfg.server.rtsp_port, self.rtsp.start())
        if self.cfg.files.enabled:
            # Bulk jobs run below the cameras' priority: a long video must not make a camera shed frames.
            self.files = FileJobs(
                self.cfg.files, self.cfg.data_path(), self.cfg.engine.detector.model_dir, nice=FILES_NICE
            )
            await self.files.start()
        self.web = WebServer(self, files=self.files)
        await _listen("HTTP", host, self.cfg.server.http_port, self.web.start())
        self.devices = CameraDevices(self)
        for name, (port, _service) in self.devices.services.items():
            await _listen(f"{name}'s ONVIF device", host, port, self.devices.start(name, self.web))
        if self.cfg.onvif.enabled and self.cfg.onvif.discovery.enabled:
            self.discovery = DiscoveryResponder(  # XAddrs need the bound HTTP port
                self.cfg,
                self.web.port,
                camera_ports=self.devices.ports,  # cameras that are devices of their own are announced too
                bind_host=self.cfg.onvif.discovery.bind,
            )
            await self.discovery.start()
        for camera in self.cameras.values():
            camera.start()
        self.audit = LiveAudit.of_cameras(self.cfg, self.cameras)
        await self.audit.start()
        self.ready = True
        self.ready_event.set()
        log.info("serving %d camera(s): rtsp://%s:%d/<camera>, http://%s:%d/",
                 len(self.cameras), host, self.rtsp.port, host, self.web.port)  # fmt: skip

    async def stop(self) -> None:
        """Stop whatever is running; also after a start that failed half-way."""
        self.ready = False
        if self.discovery is not None:
            await self.discovery.stop()  # the Bye first: VMSs learn at once that the device is leaving
        # Publishers first, while the stream still flows: their servers get a TEARDOWN (bounded).
        await asyncio.gather(*(c.stop_publishing(timeout=5.0) for c in self.cameras.values()))
        if self.devices is not None:
            await self.devices.stop()  # before the HTTP server: they share its guard, which it ends
        if self.web is not None:
            await self.web.stop()
        if self.files is not None:
            await self.files.stop()  # a running file goes back to the queue
        if self.rtsp is not None:
            await self.rtsp.stop()
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, c.stop_pipeline) for c in self.cameras.values()))
        if self.audit is not None:
            await self.audit.stop()  # the day so far, with the pipelines' final counts
        for pool in self.detector_pools.values():
            await loop.run_in_executor(None, pool.close)
        for camera in self.cameras.values():
            camera.close()
        self.alarm.uninstall(loop)

    def stream_hub(self, path: str) -> StreamHub | None:
        """The hub of an RTSP path: `<camera>` or `<camera>/sub` (rtsp/protocol.py's parse_path)."""
        name, _, variant = path.partition("/")
        camera = self.cameras.get(name)
        if camera is None or variant not in ("", "sub"):
            return None
        return camera.sub_hub if variant == "sub" else camera.hub

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
    if not app.assigned:
        log.warning("no camera is assigned to shard %d of %d", shard_index, shard_count)
    raise_fd_limit(cfg, len(app.assigned))
    try:
        asyncio.run(app.serve())
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    return 0


class FilesService:
    """`streamproxy files`: the Files page alone, for someone with no cameras (what serve/http reads of
    a service: `cfg`, `cameras` (none), `rtsp_port` (none), `ready`)."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.cameras: dict[str, Camera] = {}
        self.rtsp_port: int | None = None
        self.ready = False
        self.files = FileJobs(cfg.files, cfg.data_path(), cfg.engine.detector.model_dir)
        self.web = WebServer(self, files=self.files)
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self.files.start()
            host = self.cfg.server.host
            await _listen("HTTP", host, self.cfg.server.http_port, self.web.start())
            self.ready = True
            shown = f"[{host}]" if ":" in host else host
            if on_ready is not None:
                on_ready(f"http://{shown}:{self.web.port}/files")
            await self._stopping.wait()
        finally:
            self.ready = False
            await self.web.stop()
            await self.files.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)


def run_files(cfg: AppConfig, on_ready: Callable[[str], None] | None = None) -> int:
    try:
        asyncio.run(FilesService(cfg).serve(on_ready))
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    return 0
