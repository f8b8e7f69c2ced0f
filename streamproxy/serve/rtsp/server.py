"""The embedded RTSP server: every camera's anonymized stream at rtsp://HOST:PORT/<name>.

One asyncio task per connection reads requests (and the `$`-framed RTCP clients interleave with
them), one task per playing session writes RTP. Nothing here blocks: a viewer that stops reading
only fills its own bounded buffer.

What anyone who reaches the port may hold is bounded by `server.limits`: connections in total and
per client address, the time a request's head and body may take (slowloris), how long a connection
with no session may sit idle, sessions in total and the time from SETUP to PLAY. At a limit the
oldest idle connection (or a session that never started) is reclaimed for the newcomer; only when
there is none is it refused (503 for a connection, 453 for a session). A session belongs to its
connection (TCP) or its client address (UDP): another connection naming its id gets 454.

The log cannot be forged or flooded from the port: every string a client sent (a path, percent-
decoded; a version; a method) is written through `protocol.log_text`, which escapes CR, LF, NUL
and every other unprintable character, and what a request got wrong (malformed, an unknown path)
is summarised per kind, one line a second at most with the count it stands for (`limits.Throttled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from streamproxy import metrics
from streamproxy.config import LimitsConfig, ServerConfig
from streamproxy.hub import CodecInfo, StreamHub
from streamproxy.rtsp import sdp
from streamproxy.rtsp.auth import Authenticator
from streamproxy.rtsp.protocol import (
    KNOWN_METHODS,
    MAX_LINE_BYTES,
    SUPPORTED_METHODS,
    RtspError,
    RtspRequest,
    base_url,
    find_cseq,
    format_response,
    log_text,
    parse_path,
    parse_request_head,
    parse_transport,
    safe_uri,
)
from streamproxy.rtsp.rtp import PayloadCache
from streamproxy.serve.limits import LimitEvents, Throttled
from streamproxy.serve.rtsp.session import RtspSession, TcpOutput, UdpOutput

log = logging.getLogger(__name__)

HubLookup = Callable[[str], StreamHub | None] | Mapping[str, StreamHub]

TRACK = "trackID=0"
SERVER_NAME = "streamproxy"
MAX_SESSIONS_PER_CONNECTION = 16
# At stop: how long viewers' connections get to take their RTCP BYE and close before they are cut.
STOP_FLUSH_S = 2.0
# Errors of a request that was too large for server.limits (the metric's `request_size`).
_SIZE_ERRORS = {"request line too long", "request header too large", "request head too large"}


def build_sdp(name: str, codec: CodecInfo, server_ip: str) -> bytes:
    """The DESCRIBE answer for a camera's stream (rtsp/sdp.py writes it)."""
    return sdp.build_video(
        session_name=name,
        tool=SERVER_NAME,
        origin_ip=server_ip,
        control=TRACK,
        sps=codec.sps,
        pps=codec.pps,
        profile_level_id=codec.profile_level_id,
        fps=codec.fps,
        width=codec.width,
        height=codec.height,
    )


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str  # "addr:port", for logs and the authenticator
    addr: str  # the client address the per-client limit counts
    sessions: list[RtspSession] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    last_activity: float = field(default_factory=time.monotonic)
    reading_since: float | None = None  # a request (or interleaved frame) is being read since then
    handling: bool = False  # a request is being answered
    requests: int = 0  # answered so far
    dropped: bool = False  # closed by the server (a limit, a timeout, stop): no longer counted

    def idle(self) -> bool:
        return not self.sessions and self.reading_since is None and not self.handling

    def reclaim_rank(self) -> tuple[int, float] | None:
        """Which connection a newcomer may take the place of, lowest first; None: not reclaimable.

        One that never sent a request, then one idle between requests, then one whose sessions
        never started; the longest quiet first. A viewer between DESCRIBE and SETUP is thus
        the last idle one a flood of empty connections can push out.
        """
        if self.dropped or self.reading_since is not None or self.handling:
            return None
        if not self.sessions:
            return (0 if self.requests == 0 else 1, self.last_activity)
        if all(not s.started for s in self.sessions):
            return (2, self.last_activity)
        return None


class _RtcpReceiver(asyncio.DatagramProtocol):
    """Receives viewers' RTCP (and NAT-punching RTP) on the shared UDP ports: it proves they are alive."""

    def __init__(self, server: RtspServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        sess = self.server._udp_peers.get((str(addr[0]), int(addr[1])))
        if sess is not None:
            sess.touch()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a viewer that went away: its session times out on its own.
        log.debug("-: RTSP UDP socket error: %s", exc)


_Response = tuple[int, list[tuple[str, str]], bytes, Callable[[], None] | None]


class RtspServer:
    """Serves StreamHubs to RTSP clients. `start()`/`stop()` are idempotent."""

    def __init__(
        self,
        hubs: HubLookup,
        cfg: ServerConfig,
        *,
        describe_wait_s: float = 3.0,
        write_timeout_s: float = 10.0,
        tcp_sndbuf: int = 256 * 1024,
    ) -> None:
        self._lookup: Callable[[str], StreamHub | None] = hubs.get if isinstance(hubs, Mapping) else hubs
        self.cfg = cfg
        self.describe_wait_s = describe_wait_s
        self.write_timeout_s = write_timeout_s
        self.tcp_sndbuf = tcp_sndbuf
        self.auth = Authenticator(
            cfg.users, cfg.realm, on_failure=metrics.AUTH_FAILURES.labels(protocol="rtsp").inc
        )
        self.port = 0
        self.udp_ports: tuple[int, int] | None = None
        self.sessions: dict[str, RtspSession] = {}
        self._udp_peers: dict[tuple[str, int], RtspSession] = {}
        self._conns: set[_Connection] = set()
        self._by_addr: dict[str, set[_Connection]] = {}
        self.limit_events = LimitEvents("rtsp", log)
        # Requests that went wrong on the client's side: one line a second at most per kind.
        self.bad_requests = Throttled(log)
        self.unknown_paths = Throttled(log)
        self._server: asyncio.Server | None = None
        self._udp: tuple[asyncio.DatagramTransport, asyncio.DatagramTransport] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._payloads = PayloadCache()
        self._stopping = False

    # --- lifecycle ---
    async def start(self) -> None:
        if self._server is not None:
            return
        self._stopping = False
        self._server = await asyncio.start_server(
            self._handle,
            self.cfg.host,
            self.cfg.rtsp_port if self.cfg.rtsp_port else 0,
            limit=self.cfg.limits.max_request_bytes,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await self._bind_udp()
        self._reaper = asyncio.create_task(self._reap_loop(), name="rtsp-session-reaper")
        log.info(
            "-: RTSP server listening on %s:%d (UDP %s, auth %s)",
            self.cfg.host,
            self.port,
            f"{self.udp_ports[0]}-{self.udp_ports[1]}" if self.udp_ports else "off",
            "on" if self.auth.enabled else "off",
        )

    async def _bind_udp(self) -> None:
        loop = asyncio.get_running_loop()
        first = self.cfg.rtp_port_min + (self.cfg.rtp_port_min % 2)
        for port in range(first, self.cfg.rtp_port_max, 2):
            rtp_t: asyncio.DatagramTransport | None = None
            try:
                rtp_t, _ = await loop.create_datagram_endpoint(
                    lambda: _RtcpReceiver(self), local_addr=(self.cfg.host, port)
                )
                rtcp_t, _ = await loop.create_datagram_endpoint(
                    lambda: _RtcpReceiver(self), local_addr=(self.cfg.host, port + 1)
                )
            except OSError:
                if rtp_t is not None:
                    rtp_t.close()
                continue
            self._udp = (rtp_t, rtcp_t)
            self.udp_ports = (port, port + 1)
            return
        log.warning(
            "-: no free UDP port pair in %d-%d: RTSP over UDP disabled (TCP still works)",
            self.cfg.rtp_port_min,
            self.cfg.rtp_port_max,
        )

    async def stop(self) -> None:
        """Close the listener; every viewer gets an RTCP BYE for its stream and its connection is
        closed cleanly (cut only if it does not take its data within STOP_FLUSH_S); end all tasks."""
        if self._server is None or self._stopping:
            return
        self._stopping = True
        server, self._server = self._server, None
        server.close()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for sess in list(self.sessions.values()):
            await self._end_session(sess, "server stopping", bye=True)
        conns = list(self._conns)
        tasks = []
        for conn in conns:
            conn.dropped = True
            conn.writer.transport.close()  # after what is buffered (the BYE): FIN, not RST
            if conn.task is not None and conn.task is not asyncio.current_task():
                conn.task.cancel()
                tasks.append(conn.task)
        deadline = time.monotonic() + STOP_FLUSH_S
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_FLUSH_S)
        closing = [asyncio.ensure_future(c.writer.wait_closed()) for c in conns]
        if closing:
            _, late = await asyncio.wait(closing, timeout=max(0.05, deadline - time.monotonic()))
            for fut in late:
                fut.cancel()
        for conn in conns:
            conn.writer.transport.abort()  # a viewer that stopped reading: its data is dropped now
        for fut in closing:
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a reset connection is no news at shutdown
        self._conns.clear()
        self._by_addr.clear()
        if self._udp is not None:
            for t in self._udp:
                t.close()
            self._udp = None
            self.udp_ports = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        self._stopping = False
        self.bad_requests.flush()
        self.unknown_paths.flush()
        log.info("-: RTSP server stopped")

    async def __aenter__(self) -> RtspServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def viewers(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state == "playing")

    async def end_sessions(self, hubs: tuple[StreamHub, ...], reason: str) -> int:
        """End the sessions of these hubs (a camera that a reload removed or restarts): each viewer gets
        an RTCP BYE, and a connection left without sessions is closed, as at stop(), so that its
        client notices now and comes back (to the new hub) instead of waiting on a silent stream.
        The other cameras' sessions are untouched. How many ended."""
        ended = [s for s in self.sessions.values() if s.hub in hubs]
        owners = {s.owner for s in ended if isinstance(s.owner, _Connection)}
        for sess in ended:
            await self._end_session(sess, reason, bye=True)
        for conn in owners:
            if not conn.sessions and not conn.dropped:
                await self._drop(conn)
        return len(ended)

    async def _reap_loop(self) -> None:
        while True:
            lim = self.cfg.limits
            # Often enough that a timeout is kept to within a quarter of itself; 2,000 connections
            # are a millisecond's scan.
            period = max(0.1, min(1.0, self.cfg.session_timeout_s / 4, lim.request_timeout_s / 4,
                                  lim.idle_timeout_s / 4, lim.setup_timeout_s / 4))  # fmt: skip
            await asyncio.sleep(period)
            await self._reap(time.monotonic(), lim)
            self.limit_events.flush()

    async def _reap(self, now: float, lim: LimitsConfig) -> None:
        for sess in list(self.sessions.values()):
            if sess.expired(now):
                await self._end_session(sess, "timeout")
            elif not sess.started and now - sess.created > lim.setup_timeout_s:
                self.limit_events.hit(
                    "setup_timeout", f"session {sess.id} from {sess.client_ip} not played within "
                    f"{lim.setup_timeout_s:g} s, reclaimed", logging.INFO,
                )  # fmt: skip
                await self._end_session(sess, "no PLAY within setup_timeout_s")
        for conn in list(self._conns):
            if conn.dropped:
                continue
            if conn.reading_since is not None and now - conn.reading_since > lim.request_timeout_s:
                self.limit_events.hit(
                    "request_timeout", f"{conn.peer}: request not complete within {lim.request_timeout_s:g} s, "
                    "closed"
                )  # fmt: skip
                await self._drop(
                    conn, format_response(408, None, [("Server", SERVER_NAME), ("Connection", "close")])
                )
            elif conn.idle() and now - conn.last_activity > lim.idle_timeout_s:
                self.limit_events.hit(
                    "idle_timeout", f"{conn.peer}: idle for {lim.idle_timeout_s:g} s without a session, closed",
                    logging.INFO,
                )  # fmt: skip
                await self._drop(conn)

    async def _end_session(self, sess: RtspSession, reason: str, bye: bool = False) -> None:
        self.sessions.pop(sess.id, None)
        if isinstance(sess.output, UdpOutput):
            self._udp_peers.pop(sess.output.rtp_addr, None)
            self._udp_peers.pop(sess.output.rtcp_addr, None)
        owner = sess.owner
        if isinstance(owner, _Connection) and sess in owner.sessions:
            owner.sessions.remove(sess)
        await sess.close(reason, bye=bye)

    def _forget(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        same = self._by_addr.get(conn.addr)
        if same is not None:
            same.discard(conn)
            if not same:
                del self._by_addr[conn.addr]

    async def _drop(self, conn: _Connection, last_words: bytes = b"") -> None:
        """Close a connection from the server side (a limit, a timeout): its sessions end, it no
        longer counts, its handler task ends when the close arrives."""
        conn.dropped = True
        self._forget(conn)
        for sess in list(conn.sessions):
            await self._end_session(sess, "connection reclaimed")
        transport = conn.writer.transport
        if last_words and not transport.is_closing():
            transport.write(last_words)
        transport.close()  # whatever is buffered goes first ...
        # ... but a client that reads nothing would hold the descriptor until it does: cut it then.
        asyncio.get_running_loop().call_later(STOP_FLUSH_S, transport.abort)

    def shed_idle(self, count: int) -> int:
        """Close up to `count` reclaimable connections (the process is out of descriptors); how many."""
        victims = sorted((c for c in self._conns if c.reclaim_rank() is not None), key=_rank)[:count]
        for conn in victims:
            conn.dropped = True
            self._forget(conn)
            conn.writer.transport.abort()  # its handler ends its sessions
        return len(victims)

    async def _admit(self, conn: _Connection) -> bool:
        """Room for a new connection under the limits: reclaim an idle one if needed; False: refused."""
        lim = self.cfg.limits
        same = self._by_addr.get(conn.addr, set())
        for kind, pool, limit in (
            ("connections_per_client", same, lim.max_connections_per_client),
            ("connections", self._conns, lim.max_connections),
        ):
            if len(pool) < limit:
                continue
            victim = min((c for c in pool if c.reclaim_rank() is not None), key=_rank, default=None)
            if victim is None:
                self.limit_events.hit(kind, f"{conn.peer} refused: {limit} connections held, none idle (503)")
                why = "too many connections from this address" if pool is same else "too many connections"
                head = [("Server", SERVER_NAME), ("Retry-After", "5"), ("Connection", "close")]
                conn.writer.write(format_response(503, None, head, reason=f"Service Unavailable ({why})"))
                conn.writer.transport.close()
                return False
            self.limit_events.hit(
                kind, f"{limit} connections held: {victim.peer}'s idle one closed for {conn.peer}"
            )
            await self._drop(victim)
        self._conns.add(conn)
        self._by_addr.setdefault(conn.addr, set()).add(conn)
        return True

    # --- connections ---
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        conn = _Connection(
            reader, writer, peer, str(peername[0]) if peername else "?", task=asyncio.current_task()
        )
        if self._stopping or self._server is None:
            writer.transport.abort()
            return
        if not await self._admit(conn):
            return
        # A stalled viewer's data piles up in the kernel and here; drain() waits beyond this. Bounding
        # the kernel's share too (autotuning grows it to MBs) turns a slow viewer into dropped
        # frames instead of seconds of lag; 256 KB is still ~0.5 s at 4 Mbit/s of network headroom.
        writer.transport.set_write_buffer_limits(high=TcpOutput.HIGH_WATER)
        sock = writer.get_extra_info("socket")
        if sock is not None and self.tcp_sndbuf:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.tcp_sndbuf)
        log.debug("-: RTSP connection from %s", peer)
        try:
            await self._serve(conn)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        except Exception:
            log.exception("-: RTSP connection from %s failed", peer)
        finally:
            for sess in list(conn.sessions):
                await self._end_session(sess, "connection closed")
            self._forget(conn)
            if not conn.dropped:  # one the server closed is closing cleanly (stop() cuts it at its deadline)
                writer.transport.abort()
            log.debug("-: RTSP connection from %s closed", peer)

    async def _serve(self, conn: _Connection) -> None:
        reader = conn.reader
        while True:
            conn.reading_since = None
            conn.handling = False
            first = await reader.readexactly(1)
            if self._stopping:
                return
            # From its first byte a request (or frame) must be complete within request_timeout_s
            # (the reaper closes it otherwise), whatever the connection holds.
            conn.reading_since = time.monotonic()
            if first == b"$":
                # Interleaved binary (the client's RTCP receiver reports): proof of life, then skip.
                hdr = await reader.readexactly(3)
                await reader.readexactly(int.from_bytes(hdr[1:3], "big"))
                if conn.sessions:  # without a session it is noise: it does not keep the connection open
                    conn.last_activity = time.monotonic()
                for sess in conn.sessions:
                    sess.touch()
                continue
            if first in b"\r\n":
                continue  # not activity: stray line ends do not keep a connection open
            head = b""
            cseq: str | None = None
            lim = self.cfg.limits
            try:
                head = await _read_head(reader, first, lim.max_request_bytes)
                req = parse_request_head(head, lim.max_request_bytes)
                cseq = req.cseq
                length = req.body_length(lim.max_body_bytes)
                if length:
                    req.body = await reader.readexactly(length)
                conn.reading_since = None
                conn.handling = True
                try:
                    status, headers, body, after = await self._dispatch(conn, req)
                except (RtspError, asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    raise  # answered below, or the connection is gone (see _handle)
                except Exception:
                    # A bug in a handler: answer it, log it once with its traceback, and start afresh
                    # on a new connection rather than on state the failure may have left half-changed.
                    log.exception("-: RTSP %s from %s failed", req.method, conn.peer)
                    raise RtspError(500, "internal error", close=True) from None
            except RtspError as err:
                conn.reading_since = None
                conn.handling = True
                if cseq is None:
                    cseq = find_cseq(head)
                status, headers, body, after = err.status, err.headers, b"", None
                if err.status == 413:
                    self.limit_events.hit(
                        "body_size", f"{conn.peer}: body over {lim.max_body_bytes} bytes (413)"
                    )
                elif err.detail in _SIZE_ERRORS:
                    self.limit_events.hit("request_size", f"{conn.peer}: {err.detail} ({err.status})")
                elif err.status == 453:
                    pass  # counted and logged (rate-limited) where the limit was hit
                elif err.status not in (401, 404):
                    detail = f"-: RTSP {err.status} from {conn.peer}: {log_text(err.detail)}"
                    self.bad_requests.hit(detail, logging.INFO)
                # Binary garbage puts the stream out of sync: nothing after it can be parsed.
                if err.close or (err.status in (400, 505) and not head[:1].isalpha()):
                    extra = [("Server", SERVER_NAME), *headers, ("Connection", "close")]
                    await self._send(conn, format_response(status, cseq, extra))
                    return
            conn.requests += 1
            await self._send(conn, format_response(status, cseq, [("Server", SERVER_NAME), *headers], body))
            conn.last_activity = time.monotonic()
            if after is not None:
                after()

    async def _send(self, conn: _Connection, data: bytes) -> None:
        conn.writer.write(data)
        await asyncio.wait_for(conn.writer.drain(), self.write_timeout_s)

    # --- methods ---
    async def _dispatch(self, conn: _Connection, req: RtspRequest) -> _Response:
        method = req.method
        if method not in SUPPORTED_METHODS:
            if method in KNOWN_METHODS:
                raise RtspError(405, method, [("Allow", ", ".join(SUPPORTED_METHODS))])
            raise RtspError(501, method)
        if method == "OPTIONS":
            # Unauthenticated on purpose: it reveals nothing and clients probe with it.
            self._touch_session(conn, req)
            return 200, [("Public", ", ".join(SUPPORTED_METHODS))], b"", None
        path = parse_path(req.uri)
        await self._authenticate(req, path.name if path else "-", conn.peer)
        if method == "DESCRIBE":
            return await self._describe(req)
        if method == "SETUP":
            return await self._setup(conn, req)
        if method in ("GET_PARAMETER", "SET_PARAMETER"):
            sess = self._touch_session(conn, req)
            headers = [("Session", self._session_header(sess))] if sess else []
            return 200, headers, b"", None
        sess = self._require_session(conn, req)
        if method == "PLAY":
            return self._play(req, sess)
        if method == "PAUSE":
            await sess.pause()
            return 200, [("Session", self._session_header(sess))], b"", None
        # TEARDOWN
        await self._end_session(sess, "teardown")
        return 200, [("Session", sess.id)], b"", None

    async def _authenticate(self, req: RtspRequest, name: str, peer: str) -> None:
        if not self.auth.enabled:
            return
        # The authenticator binds nonces to this connection, counts failures per address, backs off
        # and logs a summary (rtsp/auth.py); `peer` is "addr:port".
        auth = req.header("authorization")
        res = await self.auth.verify(req.method, req.uri, auth, peer.rpartition(":")[0], peer, name)
        if res.user is None:
            raise RtspError(401, "authentication required", res.challenge)

    def _hub(self, req: RtspRequest) -> StreamHub:
        path = parse_path(req.uri)
        hub = self._lookup(path.name) if path else None
        if hub is None:
            name = log_text(path.name) if path else "-"
            self.unknown_paths.hit(f'-: RTSP {req.method} for unknown path "{name}" (404)', logging.INFO)
            raise RtspError(404, safe_uri(req.uri))
        return hub

    def _own_session(self, conn: _Connection, sid: str) -> RtspSession | None:
        """The session `sid` if it is this client's: TCP sessions belong to their connection, UDP ones
        to their client's address. Another's is answered exactly as an unknown id (454): its
        existence is not revealed, and nothing is done to it."""
        sess = self.sessions.get(sid)
        if sess is None:
            return None
        if sess.tcp:
            return sess if sess.owner is conn else None
        return sess if sess.client_ip == conn.addr else None

    def _touch_session(self, conn: _Connection, req: RtspRequest) -> RtspSession | None:
        sid = req.session_id
        if sid is None:
            return None
        sess = self._own_session(conn, sid)
        if sess is None:
            raise RtspError(454, "unknown session")
        sess.touch()
        return sess

    def _require_session(self, conn: _Connection, req: RtspRequest) -> RtspSession:
        sess = self._touch_session(conn, req)
        if sess is None:
            raise RtspError(454, "no Session header")
        path = parse_path(req.uri)
        if path is not None and path.name != sess.name:
            raise RtspError(454, "session belongs to another path")
        return sess

    def _session_header(self, sess: RtspSession) -> str:
        return f"{sess.id};timeout={int(self.cfg.session_timeout_s)}"

    async def _describe(self, req: RtspRequest) -> _Response:
        hub = self._hub(req)
        try:
            codec = await hub.wait_codec(self.describe_wait_s)
        except TimeoutError:
            log.info("%s: RTSP DESCRIBE: no stream yet (503)", hub.name)
            raise RtspError(503, "stream not available yet", [("Retry-After", "2")]) from None
        local = ""
        sock = self._server.sockets[0] if self._server and self._server.sockets else None
        if sock is not None:
            local = str(sock.getsockname()[0])
        sdp = build_sdp(hub.name, codec, local)
        headers = [("Content-Base", base_url(req.uri, hub.name)), ("Content-Type", "application/sdp")]
        return 200, headers, sdp, None

    async def _setup(self, conn: _Connection, req: RtspRequest) -> _Response:
        hub = self._hub(req)
        path = parse_path(req.uri)
        if path is not None and path.track not in ("", TRACK):
            raise RtspError(404, f"no track {path.track}")
        if req.session_id is not None:
            if self._own_session(conn, req.session_id) is None:
                raise RtspError(454, "unknown session")
            raise RtspError(459, "one video track per session")
        transport = req.header("transport")
        if not transport:
            raise RtspError(400, "SETUP without Transport header")
        spec = parse_transport(transport)
        if len(conn.sessions) >= MAX_SESSIONS_PER_CONNECTION:
            raise RtspError(455, "too many sessions on this connection")
        await self._room_for_session(conn)
        output: TcpOutput | UdpOutput
        if spec.tcp:
            channels = spec.interleaved
            if channels is None:
                used = {s.output.rtp_channel for s in conn.sessions if isinstance(s.output, TcpOutput)}
                base = next(c for c in range(0, 256, 2) if c not in used)
                channels = (base, base + 1)
            output = TcpOutput(conn.writer, channels, self.write_timeout_s)
        else:
            if self._udp is None or self.udp_ports is None or spec.client_port is None:
                raise RtspError(461, "UDP is not available; use RTP/AVP/TCP")
            peer_ip = str(conn.writer.get_extra_info("peername")[0])
            # RTP goes only to the address the request came from: no reflection to third parties.
            output = UdpOutput(self._udp[0], self._udp[1], peer_ip, spec.client_port, self.udp_ports)
        sess = RtspSession(hub, output, self._payloads, self.cfg.session_timeout_s, conn)
        self.sessions[sess.id] = sess
        conn.sessions.append(sess)
        if isinstance(output, UdpOutput):
            self._udp_peers[output.rtp_addr] = sess
            self._udp_peers[output.rtcp_addr] = sess
        log.info(
            "%s: RTSP session %s from %s over %s", hub.name, sess.id, conn.peer, "TCP" if spec.tcp else "UDP"
        )
        headers = [
            ("Transport", output.transport_header(sess.rtp.ssrc)),
            ("Session", self._session_header(sess)),
        ]
        return 200, headers, b"", None

    async def _room_for_session(self, conn: _Connection) -> None:
        """Under max_rtsp_sessions, reclaiming the oldest session that never started if need be; 453 if none."""
        limit = self.cfg.limits.max_rtsp_sessions
        if len(self.sessions) < limit:
            return
        victim = min(
            (s for s in self.sessions.values() if not s.started), key=lambda s: s.created, default=None
        )  # fmt: skip
        if victim is None:
            self.limit_events.hit("sessions", f"{conn.peer} refused: {limit} sessions playing (453)")
            raise RtspError(453, "too many RTSP sessions")
        self.limit_events.hit(
            "sessions", f"{limit} sessions: {victim.id} (never played) reclaimed for {conn.peer}"
        )
        await self._end_session(victim, "reclaimed for a new viewer (max_rtsp_sessions)")

    def _play(self, req: RtspRequest, sess: RtspSession) -> _Response:
        url = base_url(req.uri, sess.name) + TRACK
        headers = [
            ("Session", self._session_header(sess)),
            ("Range", "npt=now-"),
            ("RTP-Info", sess.rtp_info(url)),
        ]
        # Start sending only after the response is written, so the client sees 200 before RTP.
        return 200, headers, b"", sess.play


def _rank(conn: _Connection) -> tuple[int, float]:
    return conn.reclaim_rank() or (9, 0.0)


async def _read_head(reader: asyncio.StreamReader, first: bytes, max_head_bytes: int) -> bytes:
    """A request head up to its blank line, whether lines end in CRLF or a bare LF (both are accepted
    by the parser, so the reader must not wait for a CRLFCRLF that an LF-only client never sends).

    RtspError(414/400, close) over the line or head limits; IncompleteReadError when the peer leaves.
    """
    head = bytearray(first)
    request_line = True
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:  # no LF within the reader's limit (max_request_bytes)
            if request_line:
                raise RtspError(414, "request line too long", close=True) from None
            raise RtspError(400, "request header too large", close=True) from None
        if len(line) > MAX_LINE_BYTES + 2:
            if request_line:
                raise RtspError(414, "request line too long", close=True)
            raise RtspError(400, "request header too large", close=True)
        head += line
        if len(head) > max_head_bytes:
            raise RtspError(400, "request head too large", close=True)
        if not request_line and not line.strip(b"\r\n"):
            return bytes(head)
        request_line = False
