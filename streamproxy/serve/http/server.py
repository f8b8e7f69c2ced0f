"""HTTP: the live view page, the JSON API, health/readiness, Prometheus metrics and WHEP.

Routes
  GET  /                               the page (static/index.html)
  GET  /static/{file}                  page assets (package data streamproxy/serve/http/web/*)
  GET  /api/cameras                    JSON list of the pipelines' snapshots (never URLs or credentials),
                                       each with its privacy state in words (`privacy`)
  GET  /api/cameras/{camera}/snapshot.jpg  JPEG of the newest anonymized frame (or the slate); 503 if none;
                                       `?w=320`: a tile of at most that width (the page's grid), each
                                       encoded once per frame and size for every viewer; ETag / 304
  GET  /api/tiles?w=N[&cameras=a,b][&have=t1,t2]  the grid's tiles in one multipart/form-data answer:
                                       a JPEG per camera whose newest frame the viewer lacks, else a word
  GET  /api/history[?since=N][&camera=C]  each camera's last 10 minutes, sampled every 2 s (history.py)
  GET  /healthz                        200 "ok" while the process serves HTTP
  GET  /readyz                         200 when config, models and listeners are up; 503 with reasons
  GET  /metrics                        Prometheus exposition
  POST /{camera}/whep                  WHEP: SDP offer in, 201 + SDP answer + Location out
  DELETE /{camera}/whep/{session}      WHEP: end the session
  OPTIONS /{camera}/whep[/{session}]   CORS preflight
  POST /onvif/device_service           ONVIF device service, when `onvif.enabled` (serve/onvif/service.py)
  POST /onvif/media_service            ONVIF media service (ver10); ONVIF authenticates on its own
  POST /onvif/media2_service           ONVIF media2 service (ver20, serve/onvif/media2.py)
  GET  /files, /api/files/...          the Files page and its API, when given a FileJobs (serve/http/files.py)
A camera with `cameras[].onvif_port` is also a device on a port of its own (serve/onvif/device.py),
which this server lends its limits, users and snapshot handler (`application`, `listen`, `snapshot`).

Limits (`server.limits`, serve/http/limits.py): connections in total and per client address, idle
and slow-request timeouts, head and body size (a WHEP offer is a body); refusals are 503/408/413/431
with the reason, counted in streamproxy_limit_rejections_total{listener="http"} and logged at most
once a second. WebRTC sessions have their own limits (serve/webrtc.py).

Auth: when `server.users` is set, HTTP Basic (the RTSP users, checked by rtsp/auth.py's
Authenticator: constant time, failures counted per address with back-off) guards the page, its
assets, the API and WHEP; snapshots take HTTP Digest as well (what ONVIF clients fetch them with):
with qop="auth", bound to the request's target and each request counter taken once, so a captured
header opens neither another URI nor anything on a new connection (rtsp/auth.py). /healthz and
/readyz stay open: orchestrators probe them without credentials. /metrics stays open too unless
`server.metrics_auth` is set: a default Prometheus scrape config has no credentials, and the
exposition carries no picture and no camera URL, only counters and the camera names (the paths
viewers ask for). Where those names are sensitive, set `metrics_auth: true` and give Prometheus
`basic_auth`, or firewall the HTTP port to the scraper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Protocol

import av
import cv2
from aiohttp import web

from streamproxy import metrics
from streamproxy.files.manager import FileJobs
from streamproxy.rtsp.auth import Authenticator, AuthResult
from streamproxy.rtsp.protocol import log_text
from streamproxy.serve.http.files import USER, FilesRoutes, is_upload
from streamproxy.serve.http.history import SAMPLE_S, History, privacy_state
from streamproxy.serve.http.limits import HttpGuard
from streamproxy.serve.http.review import ReviewRoutes
from streamproxy.serve.limits import LimitEvents, Throttled
from streamproxy.serve.onvif.service import PATHS as ONVIF_PATHS
from streamproxy.serve.onvif.service import OnvifHost, OnvifService
from streamproxy.serve.webrtc import WebRtcGateway, WhepError
from streamproxy.status import CameraStatus, PipelineStatus
from streamproxy.view import CameraView


class Service(OnvifHost, Protocol):
    """What the HTTP side reads of the running service (`app.App` is one): what the ONVIF side reads
    (`OnvifHost`: cfg, cameras, rtsp_port), and whether it is ready. A protocol, not the App class: the
    HTTP room may not import the room that composes it (ARCHITECTURE.md). Read-only: plain attributes
    satisfy it as well as properties."""

    @property
    def ready(self) -> bool:
        """Config, models and listeners are up (/readyz)."""


log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization",
    "Access-Control-Expose-Headers": "Location",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def camera_json(status: CameraStatus) -> dict[str, Any]:
    """One /api/cameras entry: the pipeline's fields, then `whep`, then `publish` (if any)."""
    out: dict[str, Any] = (
        asdict(status.pipeline) if status.pipeline is not None else {"name": status.name, "state": "unknown"}
    )
    # The read-model carries no URL; drop any key that could, in case that ever changes.
    for key in ("url", "source_url"):
        out.pop(key, None)
    out["whep"] = status.whep
    if status.publish is not None:
        # State of the push to an external server; its URL stays out, like the camera's.
        out["publish"] = {k: v for k, v in asdict(status.publish).items() if k != "url"}
    return out


SNAPSHOT_MAX_AGE_S = 5.0  # an older frame is not "the latest" any more: the pipeline is stuck
SNAPSHOT_QUALITY = 85
# Tiles (`?w=`): a requested width is rounded up to one of these, so that every viewer's request
# lands on a picture already encoded; wider asks get the full frame. Scaling a 720p frame to 320 px
# and encoding it costs about 0.3 ms (libswscale straight to BGR, then libjpeg): done on the loop,
# cheaper than a hop to a thread; the full frame (2 ms at 720p) goes to a thread.
TILE_WIDTHS = (160, 320, 480, 640)
TILE_QUALITY = 70
PICTURE_IDLE_S = 10.0  # a camera's cached pictures nobody asked for in this long are let go


def _is_snapshot(path: str) -> bool:
    return path.startswith("/api/cameras/") and path.endswith("/snapshot.jpg")


def _jpeg(frame: av.VideoFrame, width: int = 0) -> bytes:
    """The frame as a JPEG, full size (`width` 0) or scaled to `width` (aspect kept, even height)."""
    if width and width < frame.width:
        height = max(2, round(frame.height * width / frame.width / 2) * 2)
        img = frame.reformat(
            width=width, height=height, format="bgr24", interpolation="AREA", threads=1
        ).to_ndarray()
        quality = TILE_QUALITY
    else:
        img, quality = frame.to_ndarray(format="bgr24", threads=1), SNAPSHOT_QUALITY
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf)


def tile_width(asked: int, frame_width: int) -> int:
    """The width a `?w=` request is served at: the next TILE_WIDTHS step, 0 (full size) past them or
    at the frame's own width (never scaled up)."""
    for w in TILE_WIDTHS:
        if asked <= w:
            return w if w < frame_width else 0
    return 0


@dataclass(slots=True)
class _Pictures:
    """One camera's newest frame as JPEGs, by width (0: full size), each encoded once for every viewer.

    Keyed by the frame object itself (held here, so its identity cannot be reused by another frame):
    while the pipeline's newest frame is this one, every request is answered from here. Holds at most
    one frame per camera beyond the pipeline's own, and none once nobody has asked for PICTURE_IDLE_S.
    """

    frame: av.VideoFrame
    seq: int  # this frame's number for the camera: its ETag
    used: float
    jpegs: dict[int, bytes] = field(default_factory=dict)


def _load_static() -> dict[str, bytes]:
    """The page assets, read once from package data (works from a wheel, no network needed)."""
    out: dict[str, bytes] = {}
    root = resources.files("streamproxy.serve.http") / "web"
    if not root.is_dir():
        log.warning("web assets missing from the package: the page is unavailable")
        return out
    for entry in root.iterdir():
        if entry.is_file() and "." + entry.name.rsplit(".", 1)[-1] in STATIC_TYPES:
            out[entry.name] = entry.read_bytes()
    return out


def _width(asked: str) -> int:
    """A `w=` query value: a width in pixels (otherwise 400 Bad Request)."""
    width = int(asked) if asked.isdecimal() and len(asked) <= 5 else 0
    if width < 1:
        raise web.HTTPBadRequest(text="w must be a width in pixels\n")
    return width


def _etags(header: str | None) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare as strong: same frame, same bytes)."""
    if not header:
        return set()
    return {t.strip().removeprefix("W/") for t in header.split(",")}


def _pipeline_status(name: str, camera: CameraView) -> PipelineStatus | None:
    try:
        return camera.snapshot()
    except Exception:
        log.exception("%s: snapshot failed", name)
        return None


class WebServer:
    """aiohttp server of the live proxy; `start`/`stop` are idempotent."""

    def __init__(self, app: Service, files: FileJobs | None = None) -> None:
        self.app = app
        self.cfg = app.cfg.server
        self.files = files  # the Files page's jobs (serve/http/files.py), when it is on
        self.webrtc = WebRtcGateway(self.cfg)
        self.guard = HttpGuard(self.cfg.limits)
        if files is not None:
            self.guard.streamed_body = is_upload  # uploads are streamed to disk by their handler
        self.refused = Throttled(log)  # requests refused for what they asked (4xx): logged, throttled
        self.guard.body_events = self._body_events
        self.port: int = 0
        self._runner: web.AppRunner | None = None
        self._static = _load_static()
        self._users = {u.username: u.password for u in self.cfg.users}
        self.auth = Authenticator(
            self.cfg.users,
            self.cfg.realm,
            protocol="http",
            on_failure=metrics.AUTH_FAILURES.labels(protocol="http").inc,
        )
        self._open_paths = OPEN_PATHS - {"/metrics"} if self.cfg.metrics_auth else OPEN_PATHS
        self.onvif = OnvifService(app) if app.cfg.onvif.enabled else None
        if self.onvif is not None:
            # ONVIF checks its own credentials (WS-Security or HTTP Digest/Basic) and answers SOAP faults;
            # GetSystemDateAndTime must answer without any.
            self._open_paths = self._open_paths | set(ONVIF_PATHS)
        # Each camera's last minutes (the page's plots) and its newest pictures as JPEGs (the grid).
        self.history = History()
        self._sampler: asyncio.Task[None] | None = None
        self._pictures: dict[str, _Pictures] = {}
        self._picture_seq = 0
        self._boot = os.urandom(4).hex()  # ETags of an earlier run never match this one's
        self.encodes = 0  # JPEGs encoded (read by tests: one per frame and size, however many viewers)
        self.web_app = self._build()

    # --- lifecycle ---
    def application(self) -> web.Application:
        """A new aiohttp application behind this server's guard and auth (a camera's own ONVIF device
        port is one too: serve/onvif/device.py)."""
        # The guard's middleware first: it ends the request timer and reads the body within the limits.
        return web.Application(
            middlewares=[self.guard.middleware, self._auth_middleware, self._refused_middleware],
            client_max_size=self.cfg.limits.max_body_bytes,
        )

    @web.middleware
    async def _refused_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request refused for what it asked (a bad parameter, no such camera or path: 4xx) is
        logged, at most one line a second with how many it stands for (a scan is not a log flood)."""
        try:
            return await handler(request)
        except web.HTTPException as err:
            if 400 <= err.status < 500 and err.status != 401:
                self.refused.hit(
                    f"http: {err.status} for {request.method} {log_text(request.path_qs)} "
                    f"from {request.remote or '?'}: {log_text(err.text or err.reason)}",
                    logging.INFO,
                )
            raise

    def _build(self) -> web.Application:
        wa = self.application()
        wa.router.add_get("/", self._index)
        wa.router.add_get("/static/{name}", self._static_file)
        wa.router.add_get("/api/cameras", self._cameras)
        wa.router.add_get("/api/cameras/{camera}/snapshot.jpg", self.snapshot)
        wa.router.add_get("/api/tiles", self._tiles)
        wa.router.add_get("/api/history", self._history)
        wa.router.add_get("/healthz", self._healthz)
        wa.router.add_get("/readyz", self._readyz)
        wa.router.add_get("/metrics", self._metrics)
        wa.router.add_post("/{camera}/whep", self._whep_post)
        wa.router.add_route("OPTIONS", "/{camera}/whep", self._whep_options)
        wa.router.add_delete("/{camera}/whep/{session}", self._whep_delete)
        wa.router.add_route("OPTIONS", "/{camera}/whep/{session}", self._whep_options)
        if self.onvif is not None:
            for path in ONVIF_PATHS:
                wa.router.add_post(path, self.onvif.handle)
        if self.files is not None:
            routes = FilesRoutes(self.files, self._asset, self.cfg.limits.request_timeout_s)
            routes.add(wa.router)
            ReviewRoutes(routes).add(wa.router)  # a finished file's review (serve/http/review.py)
        return wa

    async def listen(self, app: web.Application, port: int) -> tuple[web.AppRunner, int]:
        """Serve `app` on `port` (0: any free one) under this server's connection limits (one guard:
        every port lent them counts together); its runner and bound port. Raises OSError."""
        runner = web.AppRunner(app, handle_signals=False, **self.guard.handler_kwargs())
        await runner.setup()
        site = self.guard.site(runner, self.cfg.host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        sockets = site.sockets
        return runner, sockets[0].getsockname()[1] if sockets else port

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._runner, self.port = await self.listen(self.web_app, self.cfg.http_port)
        log.info("http: listening on %s:%d", self.cfg.host, self.port)
        self._sampler = asyncio.create_task(self._sample_loop(), name="http-history")

    async def stop(self) -> None:
        """After the ports it lent (serve/onvif/device.py) closed: their guard ends here."""
        await self.webrtc.close_all()
        if self._sampler is not None:
            sampler, self._sampler = self._sampler, None
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self.guard.close()

    def _body_events(self, request: web.Request) -> LimitEvents:
        # A WHEP offer too big is the WebRTC listener's limit (body_size), any other body HTTP's.
        return (
            self.webrtc.events
            if request.method == "POST" and request.path.endswith("/whep")
            else self.guard.events
        )

    # --- auth ---
    async def _authorized(self, request: web.Request) -> AuthResult:
        # The RTSP server's parser and checker, with its failure counter and back-off.
        client = request.remote or "?"
        if _is_snapshot(request.path):
            # ONVIF clients (and NVRs) fetch snapshots with HTTP Digest: both schemes, one checker.
            # The digest must be for the target as sent (raw_path: path and query, undecoded, as the
            # client signed it); its nonce's request counter is taken once (rtsp/auth.py).
            try:
                return await self.auth.verify(
                    request.method, request.raw_path, request.headers.get("Authorization"), client
                )
            except Exception:  # a Digest uri= that does not parse is a wrong credential, not a crash
                return AuthResult(None, True, self.auth.challenge(client=client))
        return await self.auth.verify_basic(request.headers.get("Authorization"), client)

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._users or request.path in self._open_paths or request.method == "OPTIONS":
            # Probes and metrics (unless metrics_auth) are open; preflights carry no credentials by design.
            return await handler(request)
        res = await self._authorized(request)
        if res.user is not None:
            request[USER] = res.user  # who asked, for what the handler records (the Files page's jobs)
            return await handler(request)
        resp = web.Response(status=401, text="authentication required\n", headers=CORS_HEADERS)
        if _is_snapshot(request.path):
            # The checker's challenge: Digest (stale=TRUE after a replayed or expired nonce) and Basic.
            for name, value in res.challenge or self.auth.challenge(client=request.remote or "?"):
                resp.headers.add(name, value)
        else:
            resp.headers["WWW-Authenticate"] = f'Basic realm="{self.cfg.realm}", charset="UTF-8"'
        return resp

    # --- page and API ---
    async def _index(self, request: web.Request) -> web.StreamResponse:
        if self.files is not None and not self.app.cameras:
            raise web.HTTPFound("/files")  # `streamproxy files`: the Files page is the whole service
        return self._asset("index.html")

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        return self._asset(request.match_info["name"])

    def _asset(self, name: str) -> web.StreamResponse:
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound(text="not found\n")
        ctype = STATIC_TYPES["." + name.rsplit(".", 1)[-1]]
        return web.Response(
            body=body,
            content_type=ctype,
            charset="utf-8" if ctype.startswith("text/") else None,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    def _fail_closed_action(self, name: str) -> str:
        """The camera's fail-closed action, read from the service's config in force (a reload changes it)."""
        for cam in self.app.cfg.cameras:
            if cam.name == name:
                return self.app.cfg.engine_for(cam).fail_closed.action
        return "obfuscate"

    async def _cameras(self, request: web.Request) -> web.StreamResponse:
        out = []
        for name, camera in self.app.cameras.items():
            status = self._camera_status(name, camera)
            entry = camera_json(status)
            level, text = privacy_state(
                status.pipeline,
                self._fail_closed_action(name),
                self.history.recent_failed_closed(name),
            )
            entry["privacy"] = {"level": level, "text": text}
            out.append(entry)
        return web.json_response(out, dumps=lambda o: json.dumps(o, default=str))

    def _camera_status(self, name: str, camera: CameraView) -> CameraStatus:
        return CameraStatus(name, f"/{name}/whep", _pipeline_status(name, camera), camera.publisher_status())

    async def _history(self, request: web.Request) -> web.StreamResponse:
        """The plots' data: every camera's ticks after `since` (one request for the whole grid)."""
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a number\n") from None
        names = list(self.app.cameras)
        only = request.query.get("camera")
        if only is not None:
            if only not in self.app.cameras:
                raise web.HTTPNotFound(text=f"no camera {only!r}\n")
            names = [only]
        return web.json_response(self.history.since(since, names), headers={"Cache-Control": "no-store"})

    async def _sample_loop(self) -> None:
        """A history tick every SAMPLE_S while the server runs (`stop` cancels it)."""
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_S)

    def sample(self) -> None:
        """One history tick of every camera; cached pictures nobody asked for lately are let go."""
        statuses = {name: _pipeline_status(name, c) for name, c in self.app.cameras.items()}
        now = time.monotonic()
        self.history.record(statuses, time.time(), now)
        for name in [n for n, p in self._pictures.items() if now - p.used > PICTURE_IDLE_S]:
            del self._pictures[name]

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        """The newest frame that left for the encoder: anonymized, or the slate. Fail closed: when there
        is none recent enough (just started, or the pipeline stalled), 503, never an older or raw one.

        `?w=N`: a tile at most N px wide (TILE_WIDTHS). Each picture is encoded once per frame and
        width and shared by every viewer; its ETag names the frame, so a viewer that already has it
        gets a 304 (nothing encoded or sent). `no-store`: no cache keeps a picture past its frame."""
        camera = request.match_info["camera"]
        view = self.app.cameras.get(camera)
        if view is None:
            raise web.HTTPNotFound(text=f"no camera {camera!r}\n")
        asked = request.query.get("w")
        width = _width(asked) if asked is not None else 0
        newest = self._newest(camera, view, width)
        if newest is None:
            return web.Response(
                status=503,
                text="no anonymized frame yet\n",
                headers={"Retry-After": "1", "Cache-Control": "no-store"},
            )
        pictures, width = newest
        etag = f'"{self._token(pictures, width)}"'
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "ETag": etag}
        if etag in _etags(request.headers.get("If-None-Match")):
            return web.Response(status=304, headers=headers)
        body = pictures.jpegs.get(width)
        if body is None:
            if width:
                body = self._encode(pictures, width)
            else:
                body = await asyncio.get_running_loop().run_in_executor(None, _jpeg, pictures.frame)
                pictures.jpegs[width] = body
                self.encodes += 1
        return web.Response(body=body, content_type="image/jpeg", headers=headers)

    async def _tiles(self, request: web.Request) -> web.StreamResponse:
        """The grid's pictures, several cameras in one answer: one request per refresh for the whole
        grid instead of one per tile (the per-request cost, not the JPEG, is most of a tile's).

        `?w=N&cameras=a,b,c&have=t1,,t3`: for each camera (default: all), in order, one part of a
        multipart/form-data body (what `Response.formData()` reads in a browser) named after it: a
        JPEG tile (filename `<token>.jpg`: the token to send back in `have`) when the viewer's token
        is not the newest frame's, the word `same` when it is, `none` when there is no recent frame
        (fail closed, as the snapshot's 503). A name that is no camera: 404."""
        asked = request.query.get("w")
        if asked is None:
            raise web.HTTPBadRequest(text="w must be a width in pixels\n")
        width = _width(asked)
        listed = request.query.get("cameras")
        names = list(dict.fromkeys(listed.split(","))) if listed else list(self.app.cameras)
        unknown = [n for n in names if n not in self.app.cameras]
        if unknown:  # (and no name from the query is ever written into the body's part headers)
            raise web.HTTPNotFound(text=f"no camera {unknown[0]!r}\n")
        have = request.query.get("have", "").split(",")
        parts: list[tuple[str, str, bytes]] = []  # (camera, token, JPEG) or (camera, word, b"")
        for i, name in enumerate(names):
            newest = self._newest(name, self.app.cameras[name], width)
            if newest is None:
                parts.append((name, "none", b""))
                continue
            pictures, w = newest
            token = self._token(pictures, w)
            if i < len(have) and have[i] == token:
                parts.append((name, "same", b""))
                continue
            jpeg = pictures.jpegs.get(w)
            parts.append((name, token, jpeg if jpeg is not None else self._encode(pictures, w)))
        boundary = "tiles" + os.urandom(12).hex()
        while any(boundary.encode() in jpeg for _, _, jpeg in parts):
            boundary = "tiles" + os.urandom(12).hex()  # never inside a picture (vanishingly rare)
        out = bytearray()
        for name, token_or_word, jpeg in parts:
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
            if jpeg:
                out += f'{head}; filename="{token_or_word}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                out += jpeg
            else:
                out += f"{head}\r\n\r\n{token_or_word}".encode()
            out += b"\r\n"
        out += f"--{boundary}--\r\n".encode()
        return web.Response(
            body=bytes(out),
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
            },
        )

    def _newest(self, camera: str, view: CameraView, width: int) -> tuple[_Pictures, int] | None:
        """The camera's newest frame's pictures and the width `width` (0: full size) is served at;
        None when it has no recent frame (fail closed: never an older one)."""
        slate_interval = 1.0 / max(0.5, self.app.cfg.slate.fps)
        frame = view.latest_frame(max_age_s=max(SNAPSHOT_MAX_AGE_S, 3 * slate_interval))
        if frame is None:
            return None
        now = time.monotonic()
        pictures = self._pictures.get(camera)
        if pictures is None or pictures.frame is not frame:
            self._picture_seq += 1
            pictures = self._pictures[camera] = _Pictures(frame, self._picture_seq, now)
        pictures.used = now
        return pictures, tile_width(width, frame.width) if width else 0

    def _token(self, pictures: _Pictures, width: int) -> str:
        """Names one picture: this run, the frame, the width (the ETag, and the tiles' `have`)."""
        return f"{self._boot}-{pictures.seq}-{width}"

    def _encode(self, pictures: _Pictures, width: int) -> bytes:
        """A tile, encoded here on the loop (about 0.3 ms: cheaper than the hop to a thread), once."""
        try:
            body = _jpeg(pictures.frame, width)
        except Exception:
            log.exception("tile encoding failed")
            raise web.HTTPInternalServerError(text="tile encoding failed\n") from None
        pictures.jpegs[width] = body
        self.encodes += 1
        return body

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        if self.app.ready:
            return web.Response(text="ready\n")
        reasons = []
        if not self.app.cameras:
            reasons.append("no camera pipeline yet (starting?)")
        if not self.app.rtsp_port:
            reasons.append("RTSP listener not up")
        if self._runner is None:
            reasons.append("HTTP listener not up")
        if not reasons:
            reasons.append("starting or stopping")
        return web.Response(status=503, text="not ready: " + "; ".join(reasons) + "\n")

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        # Sampled at scrape time: a task leak (a handler or session that never ends) shows as growth.
        metrics.ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
        body, ctype = metrics.render_latest(request.headers.get("Accept", ""))
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    # --- WHEP ---
    async def _whep_options(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=204, headers={**CORS_HEADERS, "Accept-Post": "application/sdp"})

    async def _whep_post(self, request: web.Request) -> web.StreamResponse:
        camera = request.match_info["camera"]
        view = self.app.cameras.get(camera)
        if view is None:
            raise web.HTTPNotFound(text=f"no camera {camera!r}\n", headers=CORS_HEADERS)
        if request.content_type != "application/sdp":
            raise web.HTTPUnsupportedMediaType(
                text="Content-Type must be application/sdp\n", headers=CORS_HEADERS
            )
        try:
            offer = await request.text()  # read (within the size and time limits) by the guard
        except UnicodeDecodeError:
            raise web.HTTPBadRequest(text="unreadable SDP offer\n", headers=CORS_HEADERS) from None
        try:
            sid, answer = await self.webrtc.create_session(view.hub, offer, client=request.remote or "?")
        except WhepError as err:
            log.info("%s: WHEP offer refused: %s", camera, err.message)
            return web.Response(status=err.status, text=err.message + "\n", headers=CORS_HEADERS)
        return web.Response(
            status=201,
            body=answer.encode(),
            headers={
                "Content-Type": "application/sdp",
                "Location": f"/{camera}/whep/{sid}",
                **CORS_HEADERS,
            },
        )

    async def _whep_delete(self, request: web.Request) -> web.StreamResponse:
        camera = request.match_info["camera"]
        sid = request.match_info["session"]
        if camera not in self.app.cameras or self.webrtc.get(camera, sid) is None:
            raise web.HTTPNotFound(text="no such session\n", headers=CORS_HEADERS)
        await self.webrtc.close_session(sid)
        return web.Response(status=200, text="closed\n", headers=CORS_HEADERS)
