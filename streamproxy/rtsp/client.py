"""Camera side of RTSP: pull one camera's video over RTP (TCP interleaved or UDP), frame by frame.

Why our own client rather than PyAV's RTSP demuxer (PyAV still decodes every frame): FFmpeg's demuxer
passes H.264/H.265 through its parser, which closes an access unit only when the next one starts,
so every frame reaches the decoder one frame interval late (40 ms at 25 fps: measured, 40 of the
~64 ms from camera to our decoder). Here an access unit goes to the decoder the moment the packet
with the RTP marker bit arrives (depay.py). `ingest.demuxer: pyav` keeps FFmpeg's path available.

What a camera needs from a client, and this one does (RFC 2326, as Hikvision/Dahua/Axis/ONVIF
cameras, gst-rtsp-server and MediaMTX expect it): OPTIONS, DESCRIBE (SDP with the video track's
codec, control URL and sprop parameter sets), SETUP of the first H.264/H.265 video track over TCP
interleaved or UDP unicast, PLAY, keepalive within the session timeout (GET_PARAMETER when the
camera lists it, else OPTIONS), TEARDOWN; Digest (MD5, with or without qop=auth) and Basic auth.
Audio and other tracks are never set up. Blocking sockets on the ingest thread: every wait is
sliced into short timeouts so that `stop` is seen within ~0.2 s, and bounded by a deadline.

A broken camera fails fast and says how (issue 12): a port that answers HTTP or garbage instead of
RTSP (MAX_GARBAGE_BYTES before any answer), a 401 to our credentials (`ClientUnauthorized`, which
the ingest reports once and backs off from), malformed numbers in the SDP or headers. Interleaved
data whose length lied is skipped up to the next `$` frame: the session goes on.

`RecordClient` is the same client the other way round (go2rtc's client also `Announce`s): it pushes
the proxy's stream to a media server (serve/publish.py) with ANNOUNCE/SETUP mode=record/RECORD and
the RTP packetizer of our RTSP server (rtp.py), over TCP interleaved, rtsp:// or rtsps://.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import random
import re
import secrets
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from streamproxy.rtsp import sdp
from streamproxy.rtsp.auth import parse_auth_params
from streamproxy.rtsp.depay import AccessUnit, Codec, Depacketizer, parse_rtp
from streamproxy.rtsp.rtp import SR_INTERVAL_S, RtpStream, access_unit_payloads, sdes_cname
from streamproxy.types import EncodedPacket

log = logging.getLogger(__name__)

USER_AGENT = "streamproxy"
TICK_S = 0.2  # longest a blocking call waits before looking at the stop flag again
RR_INTERVAL_S = 5.0  # RTCP receiver reports (RFC 3550's minimum interval): some cameras expect them
MAX_MESSAGE_BYTES = 64 * 1024  # an RTSP head + body larger than this is not a camera
# Bytes that are not RTSP, skipped before the first answer, after which the peer is not a camera
# (a random-byte or HTTP service on the camera's port): fail now rather than at the open timeout.
MAX_GARBAGE_BYTES = 4096
MAX_EARLY_PACKETS = 256  # interleaved packets kept while awaiting an answer (the first frame's)
RECV_BYTES = 256 * 1024


class ClientError(Exception):
    """The camera refused or broke the session; the message says what, without credentials."""


class ClientStopped(Exception):
    """`stop` was set while waiting."""


class ClientStalled(ClientError):
    """Connected, but no video packet for the read timeout."""


class ClientLossy(ClientError):
    """RTP over UDP loses so many packets that no whole picture comes through: the camera is to be
    read over TCP (interleaved), which loses nothing, instead."""


class ClientUnauthorized(ClientError):
    """The camera answered 401 to our credentials (or wants some and the URL has none): retrying
    at once cannot help, only a changed password on either side can."""


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lower-case, in order
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass(frozen=True, slots=True)
class VideoTrack:
    """The SDP's first H.264/H.265 video track."""

    codec: Codec
    payload_type: int
    clock_rate: int
    control_url: str
    parameter_sets: tuple[bytes, ...]  # from sprop-parameter-sets / sprop-vps,sps,pps


def parse_sdp(text: str, base: str) -> VideoTrack:
    """The first video track this client can decode; ClientError naming what the camera offers otherwise."""
    desc = sdp.parse(text)
    if desc.control and desc.control != "*":
        base = _join(base, desc.control)
    offered: list[str] = []
    for m in desc.media:
        if m.kind != "video":
            continue
        for pt in m.payload_types:
            name, rate = m.encoding(pt)
            offered.append(name or f"payload type {pt}")
            if name not in ("H264", "H265"):
                continue
            codec: Codec = "h264" if name == "H264" else "h265"
            payload_type, clock_rate = _number(pt, 0, 127), _number(rate, 1, 10**7) if rate else 90000
            if payload_type is None or clock_rate is None:
                raise ClientError(
                    f"camera's SDP has a malformed {name} track (payload type {pt!r}, rate {rate!r})"
                )
            url = base if m.control in (None, "*") else _join(base, str(m.control))
            return VideoTrack(
                codec=codec,
                payload_type=payload_type,
                clock_rate=clock_rate,
                control_url=url,
                parameter_sets=_parameter_sets(codec, m.params(pt)),
            )
    what = ", ".join(offered) if offered else "no video track"
    raise ClientError(f"camera offers no H.264/H.265 video (SDP has: {what})")


def _number(text: str, low: int, high: int) -> int | None:
    """A decimal number in [low, high] from the camera's text, or None."""
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        return None
    n = int(text)
    return n if low <= n <= high else None


def _join(base: str, control: str) -> str:
    if "://" in control:
        return control
    return urljoin(base if base.endswith("/") else base + "/", control)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return b""


def _parameter_sets(codec: Codec, params: dict[str, str]) -> tuple[bytes, ...]:
    if codec == "h264":
        return tuple(
            b for b in (_b64(s) for s in params.get("sprop-parameter-sets", "").split(",") if s) if b
        )
    out: list[bytes] = []
    for key in ("sprop-vps", "sprop-sps", "sprop-pps"):
        out += [b for b in (_b64(s) for s in params.get(key, "").split(",") if s) if b]
    return tuple(out)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class _Auth:
    """Answers a camera's 401 challenge (Digest preferred over Basic), then signs every request."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.scheme: Literal["digest", "basic"] | None = None
        self.params: dict[str, str] = {}
        self.nc = 0

    def challenge(self, values: list[str]) -> bool:
        """Take the WWW-Authenticate headers of a 401; False when none is usable."""
        digest = next((v for v in values if v.lower().startswith("digest")), None)
        if digest is not None:
            self.scheme, self.params, self.nc = "digest", parse_auth_params(digest[6:]), 0
            return "nonce" in self.params
        if any(v.lower().startswith("basic") for v in values):
            self.scheme = "basic"
            return True
        return False

    def header(self, method: str, uri: str) -> str | None:
        if self.scheme == "basic":
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return f"Basic {token}"
        if self.scheme != "digest":
            return None
        p = self.params
        realm, nonce = p.get("realm", ""), p["nonce"]
        ha1 = _md5(f"{self.user}:{realm}:{self.password}")
        ha2 = _md5(f"{method}:{uri}")
        fields = [f'username="{self.user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
        qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
        if "auth" in qops:
            self.nc += 1
            nc, cnonce = f"{self.nc:08x}", os.urandom(8).hex()
            response = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        else:
            response = _md5(f"{ha1}:{nonce}:{ha2}")
        fields.append(f'response="{response}"')
        if "opaque" in p:
            fields.append(f'opaque="{p["opaque"]}"')
        if "algorithm" in p:
            fields.append(f"algorithm={p['algorithm']}")
        return "Digest " + ", ".join(fields)


class RtspClient:
    """One RTSP session with a camera. Use as a context manager: `open()`, then `access_units()`."""

    peer = "camera"  # who is at the other end, as errors name it
    schemes: tuple[str, ...] = ("rtsp",)  # rtsps:// cameras are read by FFmpeg (live/source.py)

    def __init__(
        self,
        url: str,
        transport: Literal["tcp", "udp"],
        open_timeout_s: float,
        stop: threading.Event,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in self.schemes or not parts.hostname:
            raise ClientError(
                f"the built-in client reads {' or '.join(s + '://' for s in self.schemes)} URLs only"
            )
        self.host = parts.hostname
        self.tls = parts.scheme == "rtsps"
        self.port = parts.port or (322 if self.tls else 554)
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port:
            netloc += f":{parts.port}"
        # Requests never carry the credentials in the URL: they go in the Authorization header.
        self.url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self._auth = _Auth(unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        self.transport = transport
        self.open_timeout_s = open_timeout_s
        self.stop = stop
        self._sock: socket.socket | None = None
        self._udp: tuple[socket.socket, socket.socket] | None = None
        self._buf = bytearray()
        self._cseq = 0
        self._session: str | None = None
        self._session_timeout_s = 60.0
        self._keepalive_method = "OPTIONS"
        self._interleaved = (0, 1)
        self.track: VideoTrack | None = None
        self.depay: Depacketizer | None = None
        self._playing = False
        self._early: list[tuple[int, bytes]] = []  # interleaved packets read while awaiting an answer
        self._answered = False  # a well-formed RTSP response has come on this connection
        self._garbage = 0  # bytes skipped as not RTSP before that
        self._sources: set[str] = set()  # addresses RTP over UDP may come from (the camera's)
        self._server_rtcp_port: int | None = None  # UDP: where the camera receives RTCP

    # --- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> RtspClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        sock = self._sock
        if sock is not None and self._session is not None:
            # Polite TEARDOWN, also when the service stops, so the camera frees the session now
            # rather than at its timeout (many cameras allow only a few). Not waited for.
            try:
                sock.settimeout(0.5)
                sock.sendall(self._format("TEARDOWN", self.url, []))
            except OSError:
                pass
        for s in (sock, *(self._udp or ())):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self._sock, self._udp, self._session = None, None, None

    def open(self) -> VideoTrack:
        """Connect, DESCRIBE, SETUP the video track, PLAY. Raises ClientError / ClientStopped."""
        deadline = time.monotonic() + self.open_timeout_s
        self._connect(deadline)
        options = self._request("OPTIONS", self.url, [], deadline, allow_fail=True)
        public = (options.header("public") or "").upper() if options is not None else ""
        if "GET_PARAMETER" in public:
            self._keepalive_method = "GET_PARAMETER"
        resp = self._request("DESCRIBE", self.url, [("Accept", "application/sdp")], deadline)
        assert resp is not None
        base = resp.header("content-base") or resp.header("content-location") or self.url
        track = parse_sdp(resp.body.decode("utf-8", "replace"), base)
        self.track = track
        self.depay = Depacketizer(track.codec, list(track.parameter_sets))
        resp = self._request("SETUP", track.control_url, [("Transport", self._transport_header())], deadline)
        assert resp is not None
        self._take_session(resp)
        self._take_transport(resp.header("transport") or "")
        self._request("PLAY", self.url, [("Range", "npt=0.000-")], deadline)
        self._playing = True
        return track

    def access_units(
        self, read_timeout_s: float, on_tick: Callable[[], None] | None = None
    ) -> AccessUnitIterator:
        """The session's access units; `on_tick` is called on every turn of the read loop (each
        packet or batch of packets, at least every TICK_S), also while no whole access unit comes:
        the caller's watchdog, which may raise to end the session."""
        return AccessUnitIterator(self, read_timeout_s, on_tick)

    # --- RTSP messages ----------------------------------------------------------------------------
    def _connect(self, deadline: float) -> None:
        last: OSError | None = None
        for family, kind, proto, _name, addr in socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        ):
            self._check_stop()
            sock = socket.socket(family, kind, proto)
            sock.settimeout(max(0.05, min(deadline - time.monotonic(), 3.0)))
            try:
                sock.connect(addr)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls:
                    sock = _tls_context().wrap_socket(sock, server_hostname=self.host)
            except OSError as err:  # ssl.SSLError included
                sock.close()
                last = err
                continue
            sock.settimeout(TICK_S)
            self._sock = sock
            self._sources.add(sock.getpeername()[0])
            return
        reason = last.strerror if last is not None and last.strerror else str(last or "no address")
        raise ClientError(f"cannot connect to {self.host}:{self.port}: {reason}")

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise ClientStopped

    def _format(self, method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
        self._cseq += 1
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {self._cseq}", f"User-Agent: {USER_AGENT}"]
        if self._session is not None:
            lines.append(f"Session: {self._session}")
        if self._auth is not None:
            auth = self._auth.header(method, uri)
            if auth is not None:
                lines.append(f"Authorization: {auth}")
        lines += [f"{k}: {v}" for k, v in headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body

    def _request(
        self,
        method: str,
        uri: str,
        headers: list[tuple[str, str]],
        deadline: float,
        allow_fail: bool = False,
        body: bytes = b"",
    ) -> Response | None:
        for attempt in range(3):
            assert self._sock is not None
            try:
                self._sock.sendall(self._format(method, uri, headers, body))
            except OSError as err:
                raise ClientError(f"{method}: connection lost ({err.strerror or err})") from None
            resp = self._read_response(self._cseq, deadline, method)
            if resp.status == 401 and self._auth is not None and attempt < 2:
                stale = (
                    self._auth.scheme is not None
                    and "stale=true" in " ".join(resp.all("www-authenticate")).lower()
                )
                if (self._auth.scheme is None or stale) and self._auth.challenge(
                    resp.all("www-authenticate")
                ):
                    continue  # answer the challenge (or a renewed nonce) once
            if 200 <= resp.status < 300:
                return resp
            if allow_fail and resp.status != 401:
                return None
            if resp.status == 401:
                if self._auth is not None:
                    raise ClientUnauthorized(
                        f"{self.peer} rejects our credentials: {method} answered 401 {resp.reason}"
                        f" (check the {self.peer}'s user and password)"
                    )
                raise ClientUnauthorized(
                    f"{self.peer} requires credentials: {method} answered 401 {resp.reason} (the URL needs user:password@)"
                )
            hint = f" (check the {self.peer}'s path)" if resp.status == 404 else ""
            raise ClientError(f"{method} answered {resp.status} {resp.reason}{hint}")
        raise ClientError(f"{method}: authentication failed")

    def _read_response(self, cseq: int, deadline: float, method: str) -> Response:
        while True:
            msg = self._read_message(deadline, method)
            if isinstance(msg, Response):
                got = msg.header("cseq")
                if got is None or got.strip() == str(cseq):
                    return msg
                continue  # the answer to an earlier keepalive
            # RTP that arrives before PLAY's answer (TCP interleaved) is the first frame: keep it
            # (bounded: a peer that floods interleaved junk instead of answering gets the open timeout).
            if len(self._early) >= MAX_EARLY_PACKETS:
                del self._early[0]
            self._early.append(msg)

    def _fill(self, deadline: float, what: str) -> None:
        """Read more bytes from the RTSP connection into the buffer; raise at the deadline or on stop."""
        assert self._sock is not None
        while True:
            self._check_stop()
            if time.monotonic() > deadline:
                raise (
                    ClientStalled(f"no answer to {what} within the timeout")
                    if self._playing
                    else ClientError(f"no answer to {what} within {self.open_timeout_s:g} s")
                )
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            except OSError as err:
                raise ClientError(f"connection lost ({err.strerror or err})") from None
            if not data:
                raise ClientError(f"the {self.peer} closed the connection")
            self._buf += data
            return

    def _read_message(self, deadline: float, what: str) -> Response | tuple[int, bytes]:
        """The next RTSP response or interleaved packet (channel, bytes) from the TCP connection."""
        while True:
            msg = self._take_message()
            if msg is not None:
                return msg
            self._fill(deadline, what)

    def _take_message(self) -> Response | tuple[int, bytes] | None:
        """A whole message from the front of the buffer, or None until more bytes have come."""
        buf = self._buf
        while buf:
            if buf[:1] == b"$":
                if len(buf) < 4:
                    return None
                size = int.from_bytes(buf[2:4], "big")
                if len(buf) < 4 + size:
                    return None
                channel = buf[1]
                data = bytes(buf[4 : 4 + size])
                del buf[: 4 + size]
                if not self._answered:
                    self._skipped(4 + size)  # no camera sends RTP before it has answered anything
                    continue
                return channel, data
            if buf.startswith(b"HTTP/"):
                # Some other service on the camera's port (a web page, a proxy): not a camera.
                raise ClientError(f"the {self.peer}'s port answers HTTP, not RTSP (wrong port?)")
            if not buf.startswith(b"RTSP/") and not _could_be_request(buf):
                # Not a message start: skip to one (a camera's stray bytes, or interleaved data
                # whose length lied, must not wedge us nor end the session).
                idx = min((i for i in (buf.find(b"$"), buf.find(b"RTSP/")) if i > 0), default=len(buf))
                self._skipped(idx)
                del buf[:idx]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_MESSAGE_BYTES or (not self._answered and len(buf) > MAX_GARBAGE_BYTES):
                    raise ClientError(
                        f"{self.peer} sent an oversized RTSP message" if self._answered else self._not_rtsp()
                    )
                return None
            resp = _parse_head(bytes(buf[:end]).decode("utf-8", "replace"))
            try:
                length = int(resp.header("content-length") or "0")
            except ValueError:
                raise ClientError(f"{self.peer} sent a malformed RTSP message (bad Content-Length)") from None
            if length > MAX_MESSAGE_BYTES or length < 0:
                raise ClientError(f"{self.peer} sent an oversized RTSP message")
            if len(buf) < end + 4 + length:
                return None
            resp.body = bytes(buf[end + 4 : end + 4 + length])
            del buf[: end + 4 + length]
            if resp.status >= 0:
                self._answered = True
                return resp
            # A request from the camera (e.g. ANNOUNCE): not needed, ignored.
            self._skipped(end + 4 + length)
        return None

    def _skipped(self, n: int) -> None:
        """Count bytes that were not RTSP; before the first answer, too many mean the peer is no camera."""
        if self._answered:
            return
        self._garbage += n
        if self._garbage > MAX_GARBAGE_BYTES:
            raise ClientError(self._not_rtsp())

    def _not_rtsp(self) -> str:
        return f"the {self.peer}'s port does not answer RTSP (garbage instead of a response)"

    def _transport_header(self) -> str:
        if self.transport == "tcp":
            return "RTP/AVP/TCP;unicast;interleaved=0-1"
        rtp, rtcp = self._bind_udp_pair()
        self._udp = (rtp, rtcp)
        return f"RTP/AVP;unicast;client_port={rtp.getsockname()[1]}-{rtcp.getsockname()[1]}"

    def _bind_udp_pair(self) -> tuple[socket.socket, socket.socket]:
        """An even/odd UDP port pair on the address our RTSP connection uses (loopback in tests)."""
        assert self._sock is not None
        local = self._sock.getsockname()[0]
        family = self._sock.family
        for _ in range(50):
            rtp = socket.socket(family, socket.SOCK_DGRAM)
            rtp.bind((local, 0))
            port = rtp.getsockname()[1]
            if port % 2 or port >= 65535:
                rtp.close()
                continue
            rtcp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                rtcp.bind((local, port + 1))
            except OSError:
                rtp.close()
                rtcp.close()
                continue
            for s in (rtp, rtcp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
                s.setblocking(False)
            return rtp, rtcp
        raise ClientError("no free UDP port pair for RTP")

    def _take_session(self, resp: Response) -> None:
        raw = resp.header("session")
        if not raw:
            raise ClientError("SETUP answer has no Session header")
        sid, *params = [p.strip() for p in raw.split(";")]
        self._session = sid
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "timeout":
                try:
                    self._session_timeout_s = max(5.0, float(v))
                except ValueError:
                    pass

    def _take_transport(self, header: str) -> None:
        for p in header.split(";"):
            k, _, v = p.strip().partition("=")
            if k.lower() == "source" and v:
                self._sources.add(v.strip())
            if k.lower() == "server_port" and self.transport == "udp":
                a, _, b = v.partition("-")
                try:
                    self._server_rtcp_port = int(b) if b else int(a) + 1
                except ValueError:
                    pass
            if k.lower() == "interleaved" and self.transport == "tcp":
                # Channels are one byte on the wire: a camera's out-of-range answer keeps ours (0-1).
                a, _, b = v.partition("-")
                rtp = _number(a, 0, 254)
                rtcp = _number(b, 0, 255) if b else (rtp + 1 if rtp is not None else None)
                if rtp is not None and rtcp is not None:
                    self._interleaved = (rtp, rtcp)

    def _send_keepalive(self) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(self._format(self._keepalive_method, self.url, []))
        except OSError as err:
            raise ClientError(f"connection lost ({err.strerror or err})") from None

    # --- the playing session's transport: what AccessUnitIterator reads through ----------------------
    @property
    def keepalive_interval_s(self) -> float:
        return self._session_timeout_s / 2

    @property
    def over_udp(self) -> bool:
        return self._udp is not None

    def check_stop(self) -> None:
        """Raise ClientStopped once `stop` is set."""
        self._check_stop()

    def send_keepalive(self) -> None:
        self._send_keepalive()

    def next_rtp_over_tcp(self, deadline: float) -> bytes | None:
        """The next RTP packet of the video channel on the RTSP connection (interleaved), or None when
        `deadline` passed first or something else arrived (a keepalive answer, RTCP)."""
        if self._early:
            channel, data = self._early.pop(0)
        else:
            try:
                msg = self._read_message(deadline, "PLAY")
            except ClientStalled:
                return None
            if isinstance(msg, Response):
                return None
            channel, data = msg
        return data if channel == self._interleaved[0] else None

    def poll_rtp_over_udp(self, timeout: float) -> list[bytes]:
        """RTP packets from the camera's address that arrived within `timeout` (bounded); keepalive
        answers on the RTSP connection and the camera's RTCP are read and put aside."""
        assert self._udp is not None and self._sock is not None
        rtp, rtcp = self._udp
        out: list[bytes] = []
        readable, _, _ = select.select([rtp, rtcp, self._sock], [], [], timeout)
        if rtp in readable:
            for _ in range(256):  # drain what has arrived, bounded
                try:
                    data, addr = rtp.recvfrom(65536)
                except OSError:  # BlockingIOError, InterruptedError included: nothing more now
                    break
                if addr[0] in self._sources:  # only the camera's own packets
                    out.append(data)
        if rtcp in readable:
            try:
                rtcp.recvfrom(65536)  # sender reports: not needed (timestamps come from RTP)
            except OSError:
                pass
        if self._sock in readable:
            self._fill(time.monotonic() + TICK_S, "keepalive")
            while self._take_message() is not None:
                pass  # keepalive answers: nothing to do with them
        return out

    def send_rtcp(self, packet: bytes) -> None:
        """To the camera: over the interleaved RTCP channel (TCP) or to its RTCP port (UDP)."""
        if self._sock is None:
            return
        try:
            if self._udp is None:
                self._sock.sendall(
                    b"$" + bytes([self._interleaved[1]]) + struct.pack("!H", len(packet)) + packet
                )
            elif self._server_rtcp_port is not None:
                self._udp[1].sendto(packet, (self._sock.getpeername()[0], self._server_rtcp_port))
        except OSError as err:
            if self._udp is None:
                raise ClientError(f"connection lost ({err.strerror or err})") from None
            log.debug("RTCP receiver report not sent: %s", err)  # UDP: the next one may pass


def _tls_context() -> ssl.SSLContext:
    """rtsps://: encryption without checking the server's certificate, as FFmpeg's rtsps (the
    publisher's transport before this client) does by default: media servers mostly run with
    self-signed certificates. The credentials still go as Digest when the server offers it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


MAX_REQUEST_LINE = 256  # a request from the camera (ANNOUNCE, ...) whose first line is longer is junk
_REQUEST_LINE = re.compile(rb"[A-Z][A-Z_]{0,19} [\x21-\x7e]+ RTSP/1\.\d")
_REQUEST_PREFIX = re.compile(rb"[A-Z][A-Z_]{0,19}( [\x21-\x7e]*( R(T(S(P(/(1(\.\d?)?)?)?)?)?)?)?)?")


def _could_be_request(buf: bytearray) -> bool:
    """Whether the buffer starts with (the beginning of) an RTSP request line: "METHOD uri RTSP/1.x"."""
    eol = buf.find(b"\r\n", 0, MAX_REQUEST_LINE + 2)
    if eol >= 0:
        return _REQUEST_LINE.fullmatch(buf, 0, eol) is not None
    return len(buf) <= MAX_REQUEST_LINE and _REQUEST_PREFIX.fullmatch(buf) is not None


def _parse_head(head: str) -> Response:
    lines = head.split("\r\n")
    first = lines[0].split(" ", 2)
    if first[0].startswith("RTSP/") and len(first) >= 2 and first[1].isdigit():
        resp = Response(status=int(first[1]), reason=first[2] if len(first) > 2 else "")
    else:
        resp = Response(status=-1, reason="request")  # a request from the server
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            resp.headers.append((k.strip().lower(), v.strip()))
    return resp


class AccessUnitIterator:
    """Yields the camera's access units as they complete; keepalives are sent along the way.

    Raises ClientStalled when no video packet came for `read_timeout_s`, ClientStopped on stop,
    ClientError when the camera ends the session; whatever `on_tick` raises. Packets that arrive but
    never make a whole access unit (every one damaged by loss) are no stall here: the depacketizer
    counts them (`lost_packets`, `dropped_units`) and the caller's `on_tick` decides (live/source.py:
    no picture for the stall timeout is a stall; over UDP, loss is a reason to read over TCP).
    """

    def __init__(
        self, client: RtspClient, read_timeout_s: float, on_tick: Callable[[], None] | None = None
    ) -> None:
        assert client.track is not None and client.depay is not None
        self.c = client
        self.track = client.track
        self.depay = client.depay
        self.read_timeout_s = read_timeout_s
        self.on_tick = on_tick
        self._ready: list[AccessUnit] = []
        self._last_video = time.monotonic()
        self._next_keepalive = time.monotonic() + client.keepalive_interval_s
        self._next_report = time.monotonic() + 1.0
        self._report_ssrc = random.getrandbits(32)
        self._reported = (0, 0)  # (highest_seq, received) at the last report: for "fraction lost"

    def __iter__(self) -> AccessUnitIterator:
        return self

    @property
    def last_packet_at(self) -> float:
        """time.monotonic() of the last video packet (or of the iterator's start)."""
        return self._last_video

    def __next__(self) -> AccessUnit:
        c = self.c
        while not self._ready:
            c.check_stop()
            if self.on_tick is not None:
                self.on_tick()
            now = time.monotonic()
            if now - self._last_video > self.read_timeout_s:
                raise ClientStalled(f"no video for {self.read_timeout_s:g} s")
            if now >= self._next_keepalive:
                c.send_keepalive()
                self._next_keepalive = now + c.keepalive_interval_s
            if now >= self._next_report:
                packet = self.receiver_report()
                if packet is not None:
                    c.send_rtcp(packet)
                self._next_report = now + RR_INTERVAL_S
            if c.over_udp:
                for data in c.poll_rtp_over_udp(TICK_S):
                    self._on_rtp(data)
            else:
                # The loop above decides between stall and keepalive when nothing came in time.
                deadline = (
                    min(self._last_video + self.read_timeout_s, self._next_keepalive, self._next_report)
                    + 0.01
                )
                packet_in = c.next_rtp_over_tcp(deadline)
                if packet_in is not None:
                    self._on_rtp(packet_in)
        return self._ready.pop(0)

    def receiver_report(self) -> bytes | None:
        """RTCP RR + SDES CNAME (a compound packet, RFC 3550 §6.1) about the camera's video stream."""
        d = self.depay
        if d.ssrc is None:
            return None
        highest, received = d.highest_seq, d.received
        expected = highest - self._reported[0]
        lost = expected - (received - self._reported[1])
        fraction = min(255, (lost << 8) // expected) if expected > 0 and lost > 0 else 0
        self._reported = (highest, received)
        report = struct.pack(
            "!BBHIIIIIII",
            0x81,  # V=2, one report block
            201,  # RR
            7,  # length in 32-bit words minus one
            self._report_ssrc,
            d.ssrc,
            (fraction << 24) | min(d.lost_packets, 0x7FFFFF),
            highest & 0xFFFFFFFF,
            0,  # interarrival jitter: not estimated
            0,  # LSR / DLSR: sender reports are not tracked
            0,
        )
        return report + sdes_cname(self._report_ssrc, USER_AGENT)

    def _on_rtp(self, data: bytes) -> None:
        pkt = parse_rtp(data)
        if pkt is None or pkt.payload_type != self.track.payload_type:
            return
        self._last_video = time.monotonic()
        self._ready += self.depay.push(pkt)


class RecordClient(RtspClient):
    """The other direction: push one H.264 stream to a server that records (MediaMTX, gst-rtsp-server).

    RFC 2326 §10.11 ANNOUNCE (our SDP), §10.4 SETUP with `mode=record` over TCP interleaved (the one
    transport that crosses NAT and firewalls, and loses nothing), RECORD; then RTP `$`-framed on
    channel 0 and RTCP sender reports on channel 1 (MediaMTX takes the stream's wall-clock timing
    from them), keepalives within the session timeout, TEARDOWN at `close`. The packetizer and the
    RTP/RTCP state are those of our RTSP server's sessions (rtp.py): one way to cut H.264 into RTP.

    Blocking, for one thread (the publisher's). Writes have their own timeout (`write_timeout_s`,
    nothing written for that long: the server stopped reading), and `abort` may be called from any
    other thread: it shuts the socket down, which ends a blocked write or read at once. What the
    server sends while we record (its RTCP receiver reports, keepalive answers) is read without
    waiting, between writes; its end of the connection ends the session there.
    """

    peer = "server"
    schemes = ("rtsp", "rtsps")

    def __init__(self, url: str, timeout_s: float, cname: str = USER_AGENT) -> None:
        super().__init__(url, "tcp", timeout_s, threading.Event())
        self.write_timeout_s = timeout_s
        self.rtp = RtpStream(secrets.randbits(32), secrets.randbits(16), secrets.randbits(32), cname=cname)
        self._recording = False
        self._next_report = 0.0
        self._next_keepalive = math.inf
        self._next_read = 0.0

    def record(self, describe: Callable[[str], bytes], control: str) -> None:
        """Connect, ANNOUNCE the SDP that `describe(local address)` builds, SETUP its track `control`
        for recording, RECORD. Raises ClientError (ClientUnauthorized on a 401) / ClientStopped."""
        deadline = time.monotonic() + self.open_timeout_s
        self._connect(deadline)
        assert self._sock is not None
        options = self._request("OPTIONS", self.url, [], deadline, allow_fail=True)
        if "GET_PARAMETER" in ((options.header("public") or "").upper() if options is not None else ""):
            self._keepalive_method = "GET_PARAMETER"
        body = describe(str(self._sock.getsockname()[0]))
        self._request("ANNOUNCE", self.url, [("Content-Type", "application/sdp")], deadline, body=body)
        transport = (
            f"RTP/AVP/TCP;unicast;interleaved={self._interleaved[0]}-{self._interleaved[1]};mode=record"
        )
        resp = self._request("SETUP", _join(self.url, control), [("Transport", transport)], deadline)
        assert resp is not None
        self._take_session(resp)
        self._take_transport(resp.header("transport") or "")
        self._request("RECORD", self.url, [("Range", "npt=0.000-")], deadline)
        self._recording = True
        self._next_keepalive = time.monotonic() + self.keepalive_interval_s
        self._sock.settimeout(self.write_timeout_s)  # from here on, the socket's timeout is the write's

    def send(self, pkt: EncodedPacket) -> int:
        """Write one access unit as RTP (with an RTCP SR and a keepalive when due); bytes written."""
        self._check_stop()
        if not self._recording or self._sock is None:
            raise ClientError("not recording")
        now = time.monotonic()
        if now >= self._next_read:
            self._read_pending()
            self._next_read = now + TICK_S
        parts = [self.rtp.frame_tcp(pkt, access_unit_payloads(pkt.data), self._interleaved[0])]
        if now >= self._next_report:
            report = self.rtp.sender_report()  # after frame_tcp: it maps the time of what was sent
            if report is not None:
                parts.append(b"$" + bytes([self._interleaved[1]]) + struct.pack("!H", len(report)) + report)
            self._next_report = now + SR_INTERVAL_S
        if now >= self._next_keepalive:
            parts.append(self._format(self._keepalive_method, self.url, []))
            self._next_keepalive = now + self.keepalive_interval_s
        data = b"".join(parts)
        try:
            self._sock.sendall(data)
        except TimeoutError:
            raise ClientError(
                f"the server stopped reading (nothing written for {self.write_timeout_s:g} s)"
            ) from None
        except OSError as err:
            self._check_stop()  # our own abort: say so rather than "connection lost"
            raise ClientError(f"connection lost ({err.strerror or err})") from None
        return len(data)

    def abort(self) -> None:
        """End the session now, from any thread: a blocked write or read fails at once.

        shutdown(), not close(): the connection ends for the thread that is using the socket, and
        the descriptor stays ours until that thread closes it (a closed number could be reused)."""
        self.stop.set()
        sock = self._sock
        if sock is not None:
            try:
                # The plain socket's shutdown also for TLS: SSLSocket.shutdown would drop its TLS
                # state under the thread that is writing through it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # not connected (any more)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise ClientStopped("publish session aborted")

    def _read_pending(self) -> None:
        """Take in what the server sent meanwhile, without waiting: RTCP receiver reports and
        keepalive answers are dropped; the server's end of the connection or of the session raises."""
        sock = self._sock
        assert sock is not None
        sock.setblocking(False)
        try:
            while len(self._buf) < MAX_MESSAGE_BYTES:
                try:
                    data = sock.recv(RECV_BYTES)
                except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                    break
                except OSError as err:
                    self._check_stop()
                    raise ClientError(f"connection lost ({err.strerror or err})") from None
                if not data:
                    self._check_stop()
                    raise ClientError("the server closed the connection")
                self._buf += data
        finally:
            sock.settimeout(self.write_timeout_s)
        while (msg := self._take_message()) is not None:
            if isinstance(msg, Response) and msg.status == 454:  # Session Not Found: it timed us out
                raise ClientError(f"the server ended the session ({msg.status} {msg.reason})")
