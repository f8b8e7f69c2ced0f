"""The embedded RTSP server: every camera's anonymized stream at rtsp://HOST:PORT/<name>.

One asyncio task per connection reads requests (and the `$`-framed RTCP clients interleave with
them), one task per playing session writes RTP. Nothing here blocks: a viewer that stops reading
only fills its own bounded buffer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from streamproxy.config import ServerConfig
from streamproxy.hub import CodecInfo, StreamHub
from streamproxy.rtsp.auth import Authenticator
from streamproxy.rtsp.protocol import (
    KNOWN_METHODS,
    MAX_HEAD_BYTES,
    MAX_LINE_BYTES,
    SUPPORTED_METHODS,
    RtspError,
    RtspRequest,
    base_url,
    find_cseq,
    format_response,
    parse_path,
    parse_request_head,
    parse_transport,
    safe_uri,
)
from streamproxy.rtsp.rtp import PayloadCache
from streamproxy.serve.rtsp_session import RtspSession, TcpOutput, UdpOutput

log = logging.getLogger(__name__)

HubLookup = Callable[[str], StreamHub | None] | Mapping[str, StreamHub]

TRACK = "trackID=0"
SERVER_NAME = "streamproxy"
MAX_SESSIONS_PER_CONNECTION = 16


def build_sdp(name: str, codec: CodecInfo, server_ip: str) -> bytes:
    sprop = ",".join(base64.b64encode(x).decode() for x in (codec.sps, codec.pps))
    ip = server_ip if server_ip and ":" not in server_ip else "0.0.0.0"
    lines = [
        "v=0",
        f"o=- {secrets.randbits(48)} 1 IN IP4 {ip}",
        f"s={name}",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        f"a=tool:{SERVER_NAME}",
        "a=range:npt=now-",
        "a=control:*",
        "m=video 0 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        f"a=fmtp:96 packetization-mode=1;profile-level-id={codec.profile_level_id};sprop-parameter-sets={sprop}",
        f"a=control:{TRACK}",
    ]
    if codec.fps > 0:
        lines.append(f"a=framerate:{codec.fps:g}")
    lines.append(f"a=x-dimensions:{codec.width},{codec.height}")
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    sessions: list[RtspSession] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


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
        self.auth = Authenticator(cfg.users, cfg.realm)
        self.port = 0
        self.udp_ports: tuple[int, int] | None = None
        self.sessions: dict[str, RtspSession] = {}
        self._udp_peers: dict[tuple[str, int], RtspSession] = {}
        self._conns: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._udp: tuple[asyncio.DatagramTransport, asyncio.DatagramTransport] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._payloads = PayloadCache()
        self._stopping = False
        self.requests = 0
        self.auth_failures = 0

    # --- lifecycle ---
    async def start(self) -> None:
        if self._server is not None:
            return
        self._stopping = False
        self._server = await asyncio.start_server(
            self._handle, self.cfg.host, self.cfg.rtsp_port if self.cfg.rtsp_port else 0, limit=MAX_HEAD_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        await self._bind_udp()
        self._reaper = asyncio.create_task(self._reap_loop(), name="rtsp-session-reaper")
        log.info(
            "-: RTSP server listening on %s:%d (UDP %s, auth %s)",
            self.cfg.host, self.port, f"{self.udp_ports[0]}-{self.udp_ports[1]}" if self.udp_ports else "off",
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
            self.cfg.rtp_port_min, self.cfg.rtp_port_max,
        )

    async def stop(self) -> None:
        """Close the listener and every connection (no TEARDOWN needed), end all tasks."""
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
            await self._end_session(sess, "server stopping")
        tasks = []
        for conn in list(self._conns):
            conn.writer.transport.abort()
            if conn.task is not None and conn.task is not asyncio.current_task():
                conn.task.cancel()
                tasks.append(conn.task)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._conns.clear()
        if self._udp is not None:
            for t in self._udp:
                t.close()
            self._udp = None
            self.udp_ports = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        self._stopping = False
        log.info("-: RTSP server stopped")

    async def __aenter__(self) -> RtspServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def viewers(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state == "playing")

    async def _reap_loop(self) -> None:
        period = max(0.5, min(5.0, self.cfg.session_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for sess in list(self.sessions.values()):
                if sess.expired(now):
                    await self._end_session(sess, "timeout")

    async def _end_session(self, sess: RtspSession, reason: str) -> None:
        self.sessions.pop(sess.id, None)
        if isinstance(sess.output, UdpOutput):
            self._udp_peers.pop(sess.output.rtp_addr, None)
            self._udp_peers.pop(sess.output.rtcp_addr, None)
        owner = sess.owner
        if isinstance(owner, _Connection) and sess in owner.sessions:
            owner.sessions.remove(sess)
        await sess.close(reason)

    # --- connections ---
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        conn = _Connection(reader, writer, peer, task=asyncio.current_task())
        if self._stopping or self._server is None:
            writer.transport.abort()
            return
        self._conns.add(conn)
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
            self._conns.discard(conn)
            writer.transport.abort()
            log.debug("-: RTSP connection from %s closed", peer)

    async def _serve(self, conn: _Connection) -> None:
        reader = conn.reader
        while True:
            first = await reader.readexactly(1)
            if first == b"$":
                # Interleaved binary (the client's RTCP receiver reports): proof of life, then skip.
                hdr = await reader.readexactly(3)
                await reader.readexactly(int.from_bytes(hdr[1:3], "big"))
                for sess in conn.sessions:
                    sess.touch()
                continue
            if first in b"\r\n":
                continue
            head = b""
            cseq: str | None = None
            try:
                head = await _read_head(reader, first)
                req = parse_request_head(head)
                cseq = req.cseq
                if req.content_length:
                    req.body = await reader.readexactly(req.content_length)
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
                if cseq is None:
                    cseq = find_cseq(head)
                status, headers, body, after = err.status, err.headers, b"", None
                if err.status not in (401, 404):
                    log.info("-: RTSP %s from %s: %s", err.status, conn.peer, err.detail)
                # Binary garbage puts the stream out of sync: nothing after it can be parsed.
                if err.close or (err.status in (400, 505) and not head[:1].isalpha()):
                    extra = [("Server", SERVER_NAME), *headers, ("Connection", "close")]
                    await self._send(conn, format_response(status, cseq, extra))
                    return
            self.requests += 1
            await self._send(conn, format_response(status, cseq, [("Server", SERVER_NAME), *headers], body))
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
            self._touch_session(req)
            return 200, [("Public", ", ".join(SUPPORTED_METHODS))], b"", None
        path = parse_path(req.uri)
        await self._authenticate(req, path.name if path else "-", conn.peer)
        if method == "DESCRIBE":
            return await self._describe(req)
        if method == "SETUP":
            return self._setup(conn, req)
        if method in ("GET_PARAMETER", "SET_PARAMETER"):
            sess = self._touch_session(req)
            headers = [("Session", self._session_header(sess))] if sess else []
            return 200, headers, b"", None
        sess = self._require_session(req)
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
            self.auth_failures += res.failed
            raise RtspError(401, "authentication required", res.challenge)

    def _hub(self, req: RtspRequest) -> StreamHub:
        path = parse_path(req.uri)
        hub = self._lookup(path.name) if path else None
        if hub is None:
            log.info("%s: RTSP %s for unknown path", path.name if path else "-", req.method)
            raise RtspError(404, safe_uri(req.uri))
        return hub

    def _touch_session(self, req: RtspRequest) -> RtspSession | None:
        sid = req.session_id
        if sid is None:
            return None
        sess = self.sessions.get(sid)
        if sess is None:
            raise RtspError(454, "unknown session")
        sess.touch()
        return sess

    def _require_session(self, req: RtspRequest) -> RtspSession:
        sess = self._touch_session(req)
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

    def _setup(self, conn: _Connection, req: RtspRequest) -> _Response:
        hub = self._hub(req)
        path = parse_path(req.uri)
        if path is not None and path.track not in ("", TRACK):
            raise RtspError(404, f"no track {path.track}")
        if req.session_id is not None:
            if req.session_id not in self.sessions:
                raise RtspError(454, "unknown session")
            raise RtspError(459, "one video track per session")
        transport = req.header("transport")
        if not transport:
            raise RtspError(400, "SETUP without Transport header")
        spec = parse_transport(transport)
        if len(conn.sessions) >= MAX_SESSIONS_PER_CONNECTION:
            raise RtspError(455, "too many sessions on this connection")
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
        log.info("%s: RTSP session %s from %s over %s", hub.name, sess.id, conn.peer, "TCP" if spec.tcp else "UDP")
        headers = [("Transport", output.transport_header(sess.rtp.ssrc)), ("Session", self._session_header(sess))]
        return 200, headers, b"", None

    def _play(self, req: RtspRequest, sess: RtspSession) -> _Response:
        url = base_url(req.uri, sess.name) + TRACK
        headers = [
            ("Session", self._session_header(sess)),
            ("Range", "npt=now-"),
            ("RTP-Info", sess.rtp_info(url)),
        ]
        # Start sending only after the response is written, so the client sees 200 before RTP.
        return 200, headers, b"", sess.play


async def _read_head(reader: asyncio.StreamReader, first: bytes) -> bytes:
    """A request head up to its blank line, whether lines end in CRLF or a bare LF (both are accepted
    by the parser, so the reader must not wait for a CRLFCRLF that an LF-only client never sends).

    RtspError(414/400, close) over the line or head limits; IncompleteReadError when the peer leaves.
    """
    head = bytearray(first)
    request_line = True
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:  # no LF within the reader's limit (MAX_HEAD_BYTES)
            if request_line:
                raise RtspError(414, "request line too long", close=True) from None
            raise RtspError(400, "request header too large", close=True) from None
        if len(line) > MAX_LINE_BYTES + 2:
            if request_line:
                raise RtspError(414, "request line too long", close=True)
            raise RtspError(400, "request header too large", close=True)
        head += line
        if len(head) > MAX_HEAD_BYTES:
            raise RtspError(400, "request head too large", close=True)
        if not request_line and not line.strip(b"\r\n"):
            return bytes(head)
        request_line = False
