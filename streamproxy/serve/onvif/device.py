"""Cameras that are ONVIF devices of their own (`cameras[].onvif_port`), for a VMS that takes
single-channel devices only: each such camera's device and media services (its own serial and name
scope: service.py's `camera_device`) and its snapshot, on a port of its own, nothing else.

A device's port is the HTTP port's sibling, not a second server: the same connection limits (one
guard, so they count together), the same users and the same snapshot handler, lent by the HTTP server
through `HttpFront` (this room sits below serve/http/ and may not import it: ARCHITECTURE.md). The
multi-channel device stays on the HTTP port, which mounts `service.PATHS` itself.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiohttp import web

from streamproxy.serve.onvif.service import PATHS, OnvifHost, OnvifService, camera_device

log = logging.getLogger(__name__)

SNAPSHOT_ROUTE = "/api/cameras/{camera}/snapshot.jpg"  # service.snapshot_path's, as a route


class HttpFront(Protocol):
    """What a device's port takes from the HTTP port (serve/http/server.py's WebServer is one)."""

    def application(self) -> web.Application:
        """A new aiohttp application behind the HTTP port's guard and auth middlewares."""

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        """The snapshot handler of `SNAPSHOT_ROUTE` (fail closed: 503 when no recent frame)."""

    async def listen(self, app: web.Application, port: int) -> tuple[web.AppRunner, int]:
        """Serve `app` on `port` (0: any free one) under the HTTP port's limits: its runner and the
        port it is bound to. Raises OSError when it cannot listen."""


class CameraDevices:
    """The per-camera ONVIF devices of a service: `start` each (after the HTTP port), `stop` all."""

    def __init__(self, host: OnvifHost) -> None:
        cfg = host.cfg
        # camera -> (configured port, its service); cameras the service does not run are left out.
        self.services: dict[str, tuple[int, OnvifService]] = {
            c.name: (c.onvif_port, OnvifService(host, camera_device(c.name)))
            for c in cfg.cameras
            if cfg.onvif.enabled and c.onvif_port is not None and c.name in host.cameras
        }
        self.ports: dict[str, int] = {}  # camera -> bound port, of those listening
        self.host = cfg.server.host
        self._runners: list[web.AppRunner] = []

    def _build(self, camera: str, service: OnvifService, front: HttpFront) -> web.Application:
        wa = front.application()
        for path in PATHS:
            wa.router.add_post(path, service.handle)

        async def snapshot(request: web.Request) -> web.StreamResponse:
            if request.match_info["camera"] != camera:  # its own camera's, no other
                raise web.HTTPNotFound(text="not found\n")
            return await front.snapshot(request)

        wa.router.add_get(SNAPSHOT_ROUTE, snapshot)
        return wa

    async def start(self, camera: str, front: HttpFront) -> None:
        """Listen for one camera's device; idempotent."""
        if camera in self.ports:
            return
        port, service = self.services[camera]
        runner, bound = await front.listen(self._build(camera, service, front), port)
        self._runners.append(runner)
        self.ports[camera] = bound
        log.info("%s: ONVIF device of its own on %s:%d", camera, self.host, bound)

    async def stop(self) -> None:
        """Close every device's port; idempotent. Before the HTTP server's stop (which ends the guard)."""
        runners, self._runners = self._runners, []
        self.ports.clear()
        for r in runners:
            await r.cleanup()
