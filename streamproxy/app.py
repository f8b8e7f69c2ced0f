"""The live service's lifecycle (uvicorn's shape): signals → startup → serve → graceful shutdown.

Owns one `Camera` per camera (camera.py: its hubs, metrics, pipeline and publisher), the shared
detector pools, the RTSP server, the HTTP server (web page, API, WHEP, metrics, ONVIF), the cameras'
own ONVIF devices and WS-Discovery. A second Ctrl+C forces the exit.

SIGHUP reloads the configuration file (`App.reload`, as MediaMTX and most daemons do; systemd's
ExecReload): cameras added, removed or changed start, stop or restart alone, the others and their
viewers are untouched; what is read once at start (ports, users, limits, ONVIF, the Files page, the
data dir) is named in a warning and kept until a restart; a file that is not valid is refused, with
check-config's words, and everything goes on as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from streamproxy import metrics
from streamproxy.camera import Camera
from streamproxy.config import AppConfig, CameraConfig, ConfigError, config_secrets, load_config
from streamproxy.engine.pool import DetectorPool, PooledDetector, pool_key, pool_shape
from streamproxy.files.manager import FileJobs
from streamproxy.host import usable_cores
from streamproxy.hub import StreamHub
from streamproxy.live.audit import LiveAudit
from streamproxy.live.pipeline import CameraPipeline, live_engine_config
from streamproxy.redact import SecretFilter
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


# --- reload ----------------------------------------------------------------------------------------

# What a reload applies, camera by camera: the cameras and the sections their parts are built from.
LIVE_SECTIONS = (
    "cameras",
    "ingest",
    "engine",
    "privacy",
    "encoder",
    "slate",
    "sub_stream",
    "latency_budget_ms",
)
# Read once at start (the listeners, users, limits, ONVIF, the Files page, the data dir, the log
# level): a reload names the keys that changed and keeps the running values until a restart.
RESTART_SECTIONS = ("server", "onvif", "files", "data_dir", "logging")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did, cameras by name; `error` when it was refused (then nothing changed)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    not_applied: tuple[str, ...] = ()  # keys that changed but apply at a restart only
    error: str | None = None

    @property
    def applied(self) -> bool:
        return self.error is None


def live_config_problems(cfg: AppConfig) -> list[str]:
    """What `run` refuses in a config that loads (check-config says the same): plates on live cameras."""
    if "plates" not in cfg.engine.objects:
        return []
    from streamproxy.engine.text import live_refusal

    return [live_refusal(c.name, cfg.engine_for(c), cfg.budget_for(c)) for c in cfg.cameras if c.enabled]


def read_config(path: str | Path) -> AppConfig:
    """The configuration `run` would start with; ConfigError (one problem a line) otherwise. Blocking:
    it reads the file (and, with plates, measures the text detector)."""
    cfg = load_config(path)
    problems = live_config_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg


def camera_settings(cfg: AppConfig, cam: CameraConfig) -> dict[str, Any]:
    """Everything a camera's parts are built from: its own keys and the effective settings of the
    global sections. Equal before and after a reload: the running camera stays as it is. (Its
    onvif_port is not among them: a device's port changes at a restart only.)"""
    sub = cfg.sub_stream_for(cam)
    return {
        "camera": cam.model_dump(mode="json", exclude={"onvif_port"}),
        "engine": cfg.engine_for(cam).model_dump(mode="json"),
        "privacy": cfg.privacy_for(cam).model_dump(mode="json"),
        "latency_budget_ms": cfg.budget_for(cam),
        "transport": cfg.transport_for(cam),
        "sub_stream": sub.model_dump(mode="json") if sub is not None else None,
        "encoder": cfg.encoder.model_dump(mode="json"),
        "slate": cfg.slate.model_dump(mode="json"),
        "ingest": cfg.ingest.model_dump(mode="json"),
    }


def changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    """The dotted names of the keys that differ, never their values (a value can be a password)."""
    if isinstance(old, BaseModel) and type(old) is type(new):
        out: list[str] = []
        for key in type(old).model_fields:
            out += changed_keys(getattr(old, key), getattr(new, key), f"{prefix}.{key}")
        return out
    return [] if old == new else [prefix]


def _guard_secrets(cfg: AppConfig) -> None:
    """The new configuration's credentials join those every log line is scrubbed of (cli.py puts the
    filters on the handlers at start), before anything of it can be logged. The old ones stay: a
    line about a camera that is stopping may still come."""
    secrets = config_secrets(cfg)
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, SecretFilter):
                f.secrets = sorted(set(f.secrets).union(secrets), key=len, reverse=True)


class App:
    """The service: what serve/ reads of it is its `cfg`, `cameras`, `rtsp_port` and `ready`
    (serve/http/server.py's `Service`, serve/onvif/service.py's `OnvifHost`)."""

    def __init__(
        self,
        cfg: AppConfig,
        shard_index: int = 0,
        shard_count: int = 1,
        config_path: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.shard = (shard_index, shard_count)
        self.assigned = cameras_for_shard(cfg, shard_index, shard_count)  # what this replica runs
        self.cameras: dict[str, Camera] = {}  # the running ones, in config order, as `start` makes them
        # One detector for all cameras (engine/pool.py): pools by detector settings, sessions by cores.
        self.detector_pools: dict[str, DetectorPool] = {}
        self._pool_of: dict[str, DetectorPool] = {}  # camera -> the pool its detector runs on
        self.config_path = Path(config_path) if config_path is not None else None  # what SIGHUP reads
        self.last_reload: ReloadResult | None = None
        self._reload_lock = asyncio.Lock()  # one reload at a time
        self._reload_wanted = asyncio.Event()
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

    def _pooled_detector(
        self, cam: CameraConfig, cfg: AppConfig | None = None, assigned: list[CameraConfig] | None = None
    ) -> PooledDetector | None:
        """The camera's detector on the shared pool; None (a session of its own, made by its engine)
        when its config sets detector.threads, or when its engine settings are refused (the pipeline
        says why). `cfg`/`assigned`: a reload's (else the running ones); a camera whose pool does not
        exist gets one, shaped for the cameras of `assigned` that share it."""
        cfg = cfg or self.cfg
        assigned = assigned if assigned is not None else self.assigned
        if cfg.engine_for(cam).detector.threads != 0:
            return None
        try:
            det_cfg = live_engine_config(cam, cfg, len(assigned)).detector
        except ValueError:
            return None
        key = pool_key(det_cfg)
        pool = self.detector_pools.get(key)
        if pool is None:
            pooled = sum(1 for c in assigned if cfg.engine_for(c).detector.threads == 0)
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
            detector = self._pooled_detector(cam)
            self.cameras[cam.name] = await Camera.create(
                cam, self.cfg, cameras=len(self.assigned), position=position, detector=detector
            )
            if detector is not None:
                self._pool_of[cam.name] = detector.pool
        self.rtsp = RtspServer(self.stream_hub, self.cfg.server)
        await _listen("RTSP", host, self.cfg.server.rtsp_port, self.rtsp.start())
        if self.cfg.files.enabled:
            # Bulk jobs run below the cameras' priority: a long video must not make a camera shed frames.
            self.files = FileJobs(
                self.cfg.files,
                self.cfg.data_path(),
                self.cfg.engine.detector.model_dir,
                nice=FILES_NICE,
                users=self.cfg.server.users,
            )
            try:
                await self.files.start()
            except (OSError, sqlite3.Error) as err:
                # The cameras matter more than the Files page: they run, the page says it is off.
                log.error("-: the Files page is off: its data directory %s cannot be used (%s); set data_dir "
                          "to a writable folder", self.cfg.data_path(), err)  # fmt: skip
                self.files = None
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

    # --- reload ---
    async def reload_file(self) -> ReloadResult:
        """Read the configuration file again (off the loop) and apply it (`reload`); a file that is
        not valid is refused with check-config's words, and the service goes on as it was."""
        path = self.config_path
        if path is None:
            log.warning("-: reload: the service was started without a configuration file: nothing to read")
            return self._reloaded(ReloadResult(error="no configuration file"))
        try:
            new = await asyncio.to_thread(read_config, path)
        except ConfigError as err:
            for line in str(err).splitlines():
                log.error("invalid config: %s", line)
            log.error("-: reload refused: %s is not valid; the service goes on with the configuration it "
                      "had (check the file with `streamproxy check-config`, then reload again)", path)  # fmt: skip
            return self._reloaded(ReloadResult(error=str(err)))
        return await self.reload(new)

    async def reload(self, new: AppConfig) -> ReloadResult:
        """Apply a new configuration to the running service, camera by camera (the module docstring)."""
        async with self._reload_lock:
            if not self.ready:
                log.warning("-: reload: the service is not running: nothing reloaded")
                return self._reloaded(ReloadResult(error="the service is not running"))
            return self._reloaded(await self._reload(new))

    def _reloaded(self, result: ReloadResult) -> ReloadResult:
        self.last_reload = result
        return result

    async def _reload(self, new: AppConfig) -> ReloadResult:
        old = self.cfg
        _guard_secrets(new)
        kept: dict[str, Any] = {}
        not_applied: list[str] = []
        for section in RESTART_SECTIONS:
            keys = changed_keys(getattr(old, section), getattr(new, section), section)
            if keys:
                kept[section] = getattr(old, section)
                not_applied += keys
        cfg = new.model_copy(update=kept) if kept else new  # what runs from now on
        if old.onvif.enabled:  # a camera's own device listens from start to stop
            before = {c.name: c.onvif_port for c in old.cameras}
            not_applied += [f"cameras[{i}].onvif_port" for i, c in enumerate(cfg.cameras)
                            if c.onvif_port != before.get(c.name)]  # fmt: skip
        assigned = cameras_for_shard(cfg, *self.shard)
        was = {c.name: c for c in self.assigned}
        now = {c.name: c for c in assigned}
        removed = [n for n in was if n not in now]
        added = [n for n in now if n not in was]
        restarted = [
            n for n in now if n in was and camera_settings(old, was[n]) != camera_settings(cfg, now[n])
        ]
        unchanged = [n for n in now if n in was and n not in restarted]
        for key in not_applied:
            log.warning("-: reload: %s changed: restart the service to apply (the running value stays)", key)

        # The new cameras are built first (off the loop): one refused leaves everything as it was.
        fresh: dict[str, Camera] = {}
        fresh_pools: dict[str, DetectorPool] = {}
        pools_before = set(self.detector_pools)
        name = ""
        try:
            for name in (n for n in now if n in added or n in restarted):
                cam = now[name]
                detector = self._pooled_detector(cam, cfg, assigned)
                fresh[name] = await Camera.create(
                    cam, cfg, cameras=len(assigned), position=assigned.index(cam), detector=detector
                )
                if detector is not None:
                    fresh_pools[name] = detector.pool
        except Exception as err:
            for camera in fresh.values():
                camera.close()  # never started: nothing runs in it
            await self._close_pools([k for k in self.detector_pools if k not in pools_before])
            log.error("-: reload refused: camera %s: %s; the service goes on with the configuration it had",
                      name, err)  # fmt: skip
            return ReloadResult(error=f"{name}: {err}")

        stale = {n: self.cameras[n] for n in (*removed, *restarted)}
        self.cfg, self.assigned = cfg, assigned
        # Requests look cameras up at each turn: from here on they find the new ones (config order).
        self.cameras = {n: fresh.get(n) or self.cameras[n] for n in now}
        for gone in (*removed, *restarted):
            self._pool_of.pop(gone, None)
        self._pool_of.update(fresh_pools)
        self._serve_config(cfg)
        await self._detach_cameras(stale, removed)
        for camera in fresh.values():
            camera.start()  # before the old pipelines are joined: the viewers that come back get a stream
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, c.stop_pipeline) for c in stale.values()))
        if stale or fresh:
            # A configuration change is on the audit record: the day so far of every camera (the
            # stopped ones' final counts), then start lines with each camera's configuration hash
            # (config_changed: true for a restarted one).
            if self.audit is not None:
                await self.audit.stop()
            self.audit = LiveAudit.of_cameras(cfg, self.cameras)
            await self.audit.start()
        for camera in stale.values():
            camera.close()
        in_use = {id(p) for n, p in self._pool_of.items() if n in self.cameras}
        await self._close_pools([k for k, p in self.detector_pools.items() if id(p) not in in_use])
        result = ReloadResult(
            tuple(added), tuple(removed), tuple(restarted), tuple(unchanged), tuple(not_applied)
        )
        log.info(
            "-: configuration reloaded: %s",
            "; ".join(f"{what} {', '.join(names)}" for what, names in (
                ("added", added), ("removed", removed), ("restarted", restarted), ("unchanged", unchanged)
            ) if names) or "no camera",
        )  # fmt: skip
        return result

    def _serve_config(self, cfg: AppConfig) -> None:
        """What the serving side read of the configuration at start and keeps (its server-level
        sections are the running ones: a reload keeps them), brought to the new one."""
        if self.web is not None:
            if self.web.onvif is not None:
                self.web.onvif.cfg = cfg  # profiles: the encoder, the slate, each camera's sub stream
        if self.devices is not None:
            for _port, service in self.devices.services.values():
                service.cfg = cfg

    async def _detach_cameras(self, cameras: dict[str, Camera], removed: list[str]) -> None:
        """The first half of stopping cameras that are no longer served as they were, in `stop`'s
        order: their pushes first (their servers get a TEARDOWN; a restarted camera's new push then
        finds the path free), then their RTSP viewers (an RTCP BYE, the connection closed: they come
        back, to the new camera). Their pipelines stop next, their hubs close last (`close`)."""
        if not cameras:
            return
        await asyncio.gather(*(c.stop_publishing(timeout=5.0) for c in cameras.values()))
        if self.rtsp is not None:
            for name, camera in cameras.items():
                why = "camera removed by a reload" if name in removed else "camera restarted by a reload"
                await self.rtsp.end_sessions(camera.hubs(), why)

    async def _close_pools(self, keys: list[str]) -> None:
        """Close detector pools no camera uses any more (their sessions' threads end)."""
        loop = asyncio.get_running_loop()
        for key in keys:
            pool = self.detector_pools.pop(key)
            await loop.run_in_executor(None, pool.close)

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

        def on_hangup() -> None:
            if self._stopping.is_set():
                return
            log.info("-: SIGHUP: reloading %s", self.config_path or "the configuration")
            self._reload_wanted.set()  # several before the reload starts are one reload

        handlers: list[tuple[signal.Signals, Callable[[], None]]] = [
            (signal.SIGINT, on_signal), (signal.SIGTERM, on_signal), (signal.SIGHUP, on_hangup)
        ]  # fmt: skip
        for sig, handler in handlers:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        reloader = asyncio.create_task(self._reload_loop(), name="config-reload")
        try:
            await self.start()  # inside: a start that fails half-way stops what it started
            await self._stopping.wait()
        finally:
            self._stopping.set()
            self._reload_wanted.set()
            if not self._reload_lock.locked():
                reloader.cancel()  # a reload under way ends first: its cameras are then the ones stopped
            with contextlib.suppress(asyncio.CancelledError):
                await reloader
            await self.stop()
            for sig, _ in handlers:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _reload_loop(self) -> None:
        """One reload per SIGHUP (those that come during one make one more), once the service runs."""
        await self.ready_event.wait()
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            if self._stopping.is_set():
                return
            try:
                await self.reload_file()
            except Exception:  # a reload must never end the service
                log.exception("-: reload failed")


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


def run_app(
    cfg: AppConfig, shard_index: int = 0, shard_count: int = 1, config_path: str | Path | None = None
) -> int:
    """`streamproxy run`: the service until SIGINT/SIGTERM; SIGHUP reloads `config_path`."""
    app = App(cfg, shard_index, shard_count, config_path=config_path)
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
        self.files = FileJobs(
            cfg.files, cfg.data_path(), cfg.engine.detector.model_dir, users=cfg.server.users
        )
        self.web = WebServer(self, files=self.files)
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve(self, on_ready: Callable[[str], None] | None = None) -> None:
        # SIGHUP (the terminal closed) stops it as Ctrl+C does: the running file goes back to the queue.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)


def run_files(cfg: AppConfig, on_ready: Callable[[str], None] | None = None) -> int:
    try:
        asyncio.run(FilesService(cfg).serve(on_ready))
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    return 0
