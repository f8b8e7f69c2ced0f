"""The HTTP listener's limits (`server.limits`): connections in total and per client address, idle
and slow-request (slowloris) timeouts, request head and body size, and a quiet log of malformed
requests.

aiohttp (3.9+) has none of these for a server: its keep-alive timer (an hour by default) closes a
connection that never completes a request, but nothing bounds how many connections it holds, or
how long a request may take to trickle in. Here:

* `GuardedRequestHandler` is aiohttp's own protocol (`RequestHandler`) with the bookkeeping
  added in the asyncio callbacks: `connection_made` admits or refuses the connection (at a limit
  the oldest *idle* connection, no request in progress, is closed for the newcomer first; only
  when none is idle is the newcomer answered 503 with the reason and closed), `data_received`
  arms the request timer at a request's first byte and counts its head's bytes, and an idle timer
  closes a keep-alive connection that stays silent. `GuardedSite` listens with it.
* `HttpGuard.middleware` (the first middleware) sees the head complete: it stops the request
  timer, reads the body within `request_timeout_s` and `max_body_bytes` (408 / 413), and marks the
  connection idle again when the handler is done. A request `streamed_body` names (the Files page's
  uploads) is left to its handler, which reads it in chunks within limits of its own.
* aiohttp logs every malformed request (a port scanner, a fuzzer) as an ERROR with a traceback;
  `log_exception` turns those into one WARNING line a second with a count. The client still gets
  aiohttp's 400. A client that disconnects mid-request is DEBUG. A bug in a handler keeps its
  traceback.

Every refusal, reclaim and timeout is counted in `streamproxy_limit_rejections_total{listener="http"}`
and logged at most once a second per kind (`limits.LimitEvents`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from streamproxy.config import LimitsConfig
from streamproxy.serve.limits import LimitEvents, Throttled

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 1.0
# Where a request head ends; LF-only is what a lenient client sends (aiohttp then answers 400).
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")


def plain_response(status: int, reason: str, text: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, for refusals made before (or
    instead of) aiohttp's request handling."""
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class HttpGuard:
    """The connections of one HTTP listener, held against `server.limits`."""

    def __init__(self, limits: LimitsConfig, listener: str = "http") -> None:
        self.limits = limits
        self.listener = listener
        self.events = LimitEvents(listener, log)
        self.malformed = Throttled(log)
        self._conns: dict[GuardedRequestHandler, None] = {}  # insertion order: oldest first
        self._per_client: dict[str, int] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        # Which listener's tally an oversized or slow body counts in (WHEP offers: "webrtc").
        self.body_events: Callable[[web.Request], LimitEvents] = lambda _request: self.events
        # Requests whose handler reads the body itself, as a stream, within limits of its own (the
        # Files page's uploads: gigabytes, never whole in memory): the guard does not read them.
        self.streamed_body: Callable[[web.Request], bool] = lambda _request: False

    # --- what aiohttp is given ---
    def handler_kwargs(self) -> dict[str, Any]:
        lim = self.limits
        return {
            # One header line may be as long as the whole head may be; the head's total is counted here.
            "max_line_size": lim.max_request_bytes,
            "max_field_size": lim.max_request_bytes,
            # Our idle and request timers come first; aiohttp's keep-alive timer is only a backstop.
            "keepalive_timeout": lim.idle_timeout_s + lim.request_timeout_s,
            # An unread body (a handler that does not read it) is drained this long, then closed.
            "lingering_time": lim.request_timeout_s,
            "access_log": None,
        }

    def site(self, runner: web.BaseRunner, host: str, port: int) -> GuardedSite:
        server = runner.server
        assert server is not None, "runner.setup() first"
        kwargs = self.handler_kwargs()

        def factory() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, guard=self, loop=asyncio.get_running_loop(), **kwargs)

        return GuardedSite(runner, host, port, factory)

    # --- counting ---
    def connections(self, client: str | None = None) -> int:
        return len(self._conns) if client is None else self._per_client.get(client, 0)

    def hit(self, kind: str, detail: str, level: int = logging.WARNING) -> None:
        self.events.hit(kind, detail, level)
        if self._flush_timer is None:
            # The last burst's count, logged when its second is over.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._flush_timer = loop.call_later(LOG_INTERVAL_S * 1.05, self._flush, level)

    def _flush(self, level: int) -> None:
        self._flush_timer = None
        self.events.flush(level)

    def admit(self, conn: GuardedRequestHandler) -> str | None:
        """Take a new connection in; None, or why it is refused. At a limit an idle connection (the
        one idle the longest) is closed for it first."""
        lim = self.limits
        client = conn.client
        if self._per_client.get(client, 0) >= lim.max_connections_per_client:
            victim = self._oldest_idle(client)
            if victim is None:
                self.hit("connections_per_client", f"refused {client}: {lim.max_connections_per_client} "
                         "connections from this address, none idle")  # fmt: skip
                return "too many connections from this address"
            self.hit("connections_per_client", f"closed an idle connection of {client} for a new one")
            self._reclaim(victim)
        if len(self._conns) >= lim.max_connections:
            victim = self._oldest_idle(None)
            if victim is None:
                self.hit("connections", f"refused {client}: {lim.max_connections} connections, none idle")
                return "too many connections"
            self.hit("connections", f"closed an idle connection of {victim.client} for {client}")
            self._reclaim(victim)
        self._conns[conn] = None
        self._per_client[client] = self._per_client.get(client, 0) + 1
        return None

    def release(self, conn: GuardedRequestHandler) -> None:
        """Idempotent: a reclaimed connection is released at once, and again when it is lost."""
        if self._conns.pop(conn, "gone") == "gone":
            return
        n = self._per_client.get(conn.client, 0) - 1
        if n > 0:
            self._per_client[conn.client] = n
        else:
            self._per_client.pop(conn.client, None)

    def _oldest_idle(self, client: str | None) -> GuardedRequestHandler | None:
        best: GuardedRequestHandler | None = None
        for c in self._conns:
            if (
                c.idle
                and (client is None or c.client == client)
                and (best is None or c.idle_since < best.idle_since)
            ):
                best = c
        return best

    def _reclaim(self, victim: GuardedRequestHandler) -> None:
        self.release(victim)  # its slot is free now, not when the close completes
        victim.force_close()

    def close(self) -> None:
        self.malformed.close()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self.events.flush()

    # --- the request's side ---
    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The first middleware: the head is complete here. The body is read within the limits
        before any handler runs (a handler then gets it from aiohttp's cache), unless the request is
        one whose handler streams its body (`streamed_body`)."""
        proto = request.protocol
        conn = proto if isinstance(proto, GuardedRequestHandler) else None
        if conn is not None:
            conn.request_started()
        try:
            if request.body_exists and not self.streamed_body(request):
                refused = await self._read_body(request)
                if refused is not None:
                    return refused
            return await handler(request)
        finally:
            if conn is not None:
                conn.request_done()

    async def _read_body(self, request: web.Request) -> web.StreamResponse | None:
        lim = self.limits
        events = self.body_events(request)
        client = request.remote or "?"
        length = request.content_length
        try:
            if length is not None and length > lim.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=lim.max_body_bytes, actual_size=length)
            async with asyncio.timeout(lim.request_timeout_s):
                await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
        except web.HTTPRequestEntityTooLarge:
            events.hit(
                "body_size",
                f"{client}: {request.method} {request.path}: body over {lim.max_body_bytes} bytes",
            )
            return _closing(413, f"request body over {lim.max_body_bytes} bytes\n")
        except TimeoutError:
            self.hit("request_timeout", f"{client}: {request.method} {request.path}: body not complete "
                     f"within {lim.request_timeout_s:g} s")  # fmt: skip
            return _closing(408, "request body too slow\n")
        return None


def _closing(status: int, text: str) -> web.Response:
    resp = web.Response(status=status, text=text)
    resp.force_close()  # what is left of the body is not read
    return resp


class GuardedRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol, with the listener's limits (see the module docstring)."""

    __slots__ = (
        "_evloop",
        "_head_bytes",
        "_head_tail",
        "_idle_timer",
        "_in_head",
        "_refused",
        "_request_timer",
        "client",
        "guard",
        "idle",
        "idle_since",
    )  # fmt: skip

    def __init__(
        self, manager: web.Server, *, guard: HttpGuard, loop: asyncio.AbstractEventLoop, **kw: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kw)
        self.guard = guard
        self.client = "?"
        self.idle = False  # no request in progress: may be closed for a newcomer at a limit
        self.idle_since = 0.0
        self._evloop = loop
        self._refused = False
        self._in_head = False
        self._head_bytes = 0
        self._head_tail = b""
        self._request_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- asyncio's callbacks ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        reason = self.guard.admit(self)
        if reason is not None:
            self._refused = True
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(plain_response(503, "Service Unavailable", reason + "\n"))
            self.force_close()  # the transport flushes the 503, then closes
            return
        self._set_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if data and self.idle:
            self._start_request()
        if self._in_head and data:
            scan = self._head_tail + data
            ends = [i + len(end) for end in _HEAD_ENDS if (i := scan.find(end)) >= 0]
            if ends:
                self._head_bytes += min(ends) - len(self._head_tail)
                self._in_head = False
            else:
                self._head_bytes += len(data)
                self._head_tail = scan[-3:]
            limit = self.guard.limits.max_request_bytes
            if self._head_bytes > limit:
                self.guard.hit("request_size", f"{self.client}: request head over {limit} bytes")
                self._refuse(431, "Request Header Fields Too Large", f"request head over {limit} bytes\n")
                return
        super().data_received(data)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, ConnectionError):
            # The client went away while its request was read or handled (aiohttp cancels the
            # request with ConnectionResetError): nothing of ours failed, and nobody to answer.
            log.debug("-: HTTP client %s gone during its request: %s", self.client, exc)
            return
        if not isinstance(exc, HttpProcessingError):
            super().log_exception(*args, **kw)  # a bug of ours: keep its traceback
            return
        # A malformed request (scanner, fuzzer, a client's bug): aiohttp answers it 400. What it
        # was is named, never quoted (it may carry a credential).
        if isinstance(exc, LineTooLong) or "too long" in str(exc).lower() or "too many" in str(exc).lower():
            self.guard.hit("request_size", f"{self.client}: request line or header over the limit "
                           f"({type(exc).__name__}), answered 400")  # fmt: skip
        else:
            self.guard.malformed.hit(f"-: HTTP malformed request from {self.client} ({type(exc).__name__}), "
                                     "answered 400")  # fmt: skip

    # --- the middleware's side ---
    def request_started(self) -> None:
        """The head is complete and a handler runs: the request timer stops here (the body is
        read within its own timeout)."""
        self.idle = False
        self._in_head = False
        self._cancel_timers()

    def request_done(self) -> None:
        # Bytes of a next request that arrived while this one was handled (pipelining) get no
        # request timer: the idle timer closes such a connection if nothing follows; a next byte
        # arms the request timer as usual.
        if not self._refused and self.transport is not None:
            self._set_idle()

    # --- timers ---
    def _start_request(self) -> None:
        self.idle = False
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._cancel_timers()
        self._request_timer = self._evloop.call_later(
            self.guard.limits.request_timeout_s, self._on_request_timeout
        )

    def _set_idle(self) -> None:
        self.idle = True
        self.idle_since = time.monotonic()
        self._cancel_timers()
        self._idle_timer = self._evloop.call_later(self.guard.limits.idle_timeout_s, self._on_idle_timeout)

    def _on_request_timeout(self) -> None:
        self._request_timer = None
        lim = self.guard.limits
        self.guard.hit(
            "request_timeout", f"{self.client}: request not complete within {lim.request_timeout_s:g} s"
        )
        self._refuse(408, "Request Timeout", "request too slow\n")

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if not self.idle:
            return
        # Routine for a keep-alive connection a client forgot: counted, logged only at DEBUG.
        self.guard.hit(
            "idle_timeout", f"{self.client}: idle {self.guard.limits.idle_timeout_s:g} s", logging.DEBUG
        )
        self.guard.release(self)
        self.force_close()

    def _cancel_timers(self) -> None:
        for timer in (self._request_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._request_timer = self._idle_timer = None

    def _refuse(self, status: int, reason: str, text: str) -> None:
        """Answer and close a connection whose request aiohttp has not answered yet."""
        self._refused = True
        self._cancel_timers()
        self.guard.release(self)
        if self.transport is not None:
            self.transport.write(plain_response(status, reason, text))
        self.force_close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are `GuardedRequestHandler`s (web.TCPSite's, otherwise)."""

    __slots__ = ("_factory", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, factory: Callable[[], GuardedRequestHandler]
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._factory = factory

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def sockets(self) -> list[Any]:
        server = self._server
        return list(server.sockets) if isinstance(server, asyncio.Server) else []

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self._host, self._port, backlog=self._backlog)
