"""WebRTC live view (WHEP): one aiortc peer connection per viewer, no per-viewer encoding.

Each viewer's video track hands aiortc the camera's shared, already-anonymized H.264 access units
as `av.Packet`s; aiortc only packetizes them into RTP (RFC 6184) and encrypts (SRTP). So a viewer
costs packetization, never an encode, and can never see anything the RTSP viewers do not.

Things that are easy to get wrong here, and why the code looks the way it does:

* aiortc's default codec order puts VP8 first. The answerer must create its sendonly transceiver
  and set H.264 codec preferences BEFORE `setRemoteDescription`: the offer's video m-line then binds
  to that transceiver and only H.264 is negotiated. (Done later, a browser negotiates VP8 and aiortc
  silently drops the H.264 packets.)
* aiortc contacts Google's STUN server unless told otherwise: the ICE servers always come from the
  config (none by default).
* aioice never offers 127.0.0.1 and offers every interface otherwise: `ice_hosts` replaces the
  gathered host addresses, per peer connection (a context variable read by a wrapper around
  `aioice.ice.get_host_addresses`), so that other aioice users in the process are unaffected.
* A viewer's PLI/FIR reaches aiortc's sender, which would only flag its (unused) encoder: the hook
  forwards it to the hub (one a second per session; the hub coalesces all of a camera's joins and
  PLIs), so that a viewer that lost packets gets a keyframe.

Sessions are a limited resource (`server.limits`): each holds UDP ports, an ICE agent and DTLS
state. A POST of an offer whose answer is never used costs as much as a viewer until it is reclaimed:
* `max_webrtc_sessions` in all; at the limit the oldest session that has not reached ICE/DTLS
  "connected" is closed for the newcomer; only when every session is connected is it refused (503);
* per client address at most `max(1, min(max_connections_per_client, max_webrtc_sessions // 4))`
  sessions (16 by default), with the same reclaim among that address's own sessions: one address
  cannot hold more than a quarter of the slots, and a page that reloads replaces its stale session.
  (Viewers behind one NAT share it: raise max_webrtc_sessions where many watch from one address.)
* a session not connected within `setup_timeout_s` is closed and its slot freed.
Each is counted in streamproxy_limit_rejections_total{listener="webrtc"} (sessions, setup_timeout)
and logged at most once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from urllib.parse import unquote

import aioice.ice
import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from streamproxy.config import ServerConfig
from streamproxy.hub import StreamHub, Subscription
from streamproxy.rtsp import sdp
from streamproxy.serve.limits import LimitEvents

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90_000)
# One session's PLI/FIR storm (a lossy link) is cut here already; the hub coalesces the camera's.
KEYFRAME_REQUEST_INTERVAL_S = 1.0


def offered_h264(offer_sdp: str) -> str | None:
    """None when a video m-line of the offer has H.264 with packetization-mode=1 (what we send);
    otherwise why not, for the 400. Checked before aiortc sees the offer: aiortc's own errors for
    an offer without a common codec are internal texts."""
    codecs: dict[str, str] = {}
    modes: dict[str, str] = {}
    for m in sdp.parse(offer_sdp).media:
        if m.kind != "video":
            continue
        for pt in m.rtpmap:
            codecs[pt] = m.encoding(pt)[0]
            modes[pt] = m.params(pt).get("packetization-mode", "0")
    h264 = [pt for pt, name in codecs.items() if name == "H264"]
    if not h264:
        return "no H.264 offered (this server sends H.264 only)"
    if not any(modes.get(pt, "0") == "1" for pt in h264):
        return "no H.264 with packetization-mode=1 offered"
    return None


class WhepError(Exception):
    """A WHEP request that cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- ICE host addresses --------------------------------------------------------------------------
_ice_hosts: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "streamproxy_ice_hosts", default=None
)
_original_get_host_addresses: Callable[[bool, bool], list[str]] | None = None


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    hosts = _ice_hosts.get()
    if hosts is None:
        assert _original_get_host_addresses is not None
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return [h for h in hosts if (":" in h and use_ipv6) or (":" not in h and use_ipv4)]


def _install_host_address_hook() -> None:
    """Wrap aioice's host address discovery once; without a context value it behaves as before."""
    global _original_get_host_addresses
    if _original_get_host_addresses is None:
        _original_get_host_addresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _get_host_addresses


# --- ICE servers from the config ----------------------------------------------------------------
def ice_servers(cfg: ServerConfig) -> list[RTCIceServer]:
    """RTCIceServer list from `stun_servers` and `turn_servers` (turn:user:pass@host:port)."""
    servers = [RTCIceServer(urls=url) for url in cfg.stun_servers]
    for url in cfg.turn_servers:
        scheme, _, rest = url.partition(":")
        rest = rest.lstrip("/")
        username: str | None = None
        credential: str | None = None
        if "@" in rest:
            userinfo, _, hostpart = rest.rpartition("@")
            user, _, password = userinfo.partition(":")
            username, credential = unquote(user), unquote(password)
            rest = hostpart
        servers.append(RTCIceServer(urls=f"{scheme}:{rest}", username=username, credential=credential))
    return servers


def h264_preferences() -> list[Any]:
    """H.264 (packetization-mode 1) capabilities, constrained baseline first, plus RTX.

    libx264 ultrafast/zerolatency output is constrained baseline; a browser decoder accepts the
    stream's actual level/profile within the negotiated H.264 session in practice.
    """
    caps = RTCRtpSender.getCapabilities("video").codecs
    h264 = [
        c
        for c in caps
        if c.mimeType.lower() == "video/h264" and c.parameters.get("packetization-mode") == "1"
    ]
    h264.sort(key=lambda c: 0 if str(c.parameters.get("profile-level-id", "")).startswith("42e0") else 1)
    rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return h264 + rtx


# --- the track -----------------------------------------------------------------------------------
class EncodedVideoTrack(MediaStreamTrack):
    """A video track whose `recv()` returns the camera's encoded access units as `av.Packet`s.

    It subscribes to the hub on the first `recv()`, i.e. once ICE and DTLS are up: the hub then
    requests a keyframe for exactly the moment the viewer can receive it, and nothing stale
    queues up while the connection is being set up.
    """

    kind = "video"

    def __init__(self, hub: StreamHub, session_id: str = "") -> None:
        super().__init__()
        self.hub = hub
        self.session_id = session_id
        self.sub: Subscription | None = None
        self.packets = 0
        self.first_packet_at: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.sub is None:
            self.sub = self.hub.subscribe("webrtc")
        try:
            pkt = await self.sub.get()
        except EOFError:
            self.stop()
            raise MediaStreamError from None
        pts = pkt.pts90k  # the subscription's clock: from 0, forward-only across encoder restarts
        out = av.Packet(pkt.data)
        out.pts = pts
        out.dts = pts
        out.time_base = VIDEO_TIME_BASE
        if self.first_packet_at is None:
            self.first_packet_at = time.monotonic()
        self.packets += 1
        return out

    def stop(self) -> None:
        if self.sub is not None:
            self.sub.close()
        super().stop()


@dataclass
class WhepSession:
    id: str
    camera: str
    pc: RTCPeerConnection
    track: EncodedVideoTrack
    client: str = "?"  # the HTTP client's address that posted the offer
    created: float = field(default_factory=time.monotonic)
    connected: bool = False  # ICE and DTLS up once: never reclaimed for a newcomer
    closed: bool = False
    _timeout: asyncio.TimerHandle | None = None


def _hook_keyframe_requests(sender: RTCRtpSender, hub: StreamHub, camera: str, sid: str) -> None:
    """Forward the viewer's PLI/FIR (which aiortc hands to `_send_keyframe`) to the hub."""
    original = getattr(sender, "_send_keyframe", None)
    if original is None:  # aiortc changed: keyframes then come from the GOP only
        log.debug("%s: aiortc sender has no _send_keyframe; PLI not forwarded", camera)
        return
    last = 0.0

    def send_keyframe() -> None:
        nonlocal last
        original()
        now = time.monotonic()
        if now - last >= KEYFRAME_REQUEST_INTERVAL_S:
            last = now
            log.debug("%s: WebRTC viewer %s asked for a keyframe", camera, sid)
            hub.request_keyframe()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


class WebRtcGateway:
    """All WHEP sessions of the process."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        lim = cfg.limits
        self.max_sessions = lim.max_webrtc_sessions
        self.max_per_client = max(1, min(lim.max_connections_per_client, lim.max_webrtc_sessions // 4))
        self.setup_timeout_s = lim.setup_timeout_s
        self.events = LimitEvents("webrtc", log)
        self.sessions: dict[str, WhepSession] = {}  # insertion order: oldest first
        self._tasks: set[asyncio.Future[bool]] = set()
        self._rtc_config = RTCConfiguration(iceServers=ice_servers(cfg))
        self._ice_hosts = tuple(cfg.ice_hosts) if cfg.ice_hosts else None
        if self._ice_hosts is not None:
            _install_host_address_hook()

    def count(self, camera: str | None = None) -> int:
        return sum(1 for s in self.sessions.values() if camera is None or s.camera == camera)

    async def create_session(self, hub: StreamHub, offer_sdp: str, client: str = "?") -> tuple[str, str]:
        """Answer a WHEP offer from `client` (an address). Returns (session id, SDP answer); raises
        WhepError."""
        if "m=video" not in offer_sdp or not offer_sdp.lstrip().startswith("v="):
            raise WhepError(400, "the offer must be an SDP with a video m-line")
        why = offered_h264(offer_sdp)
        if why is not None:
            raise WhepError(400, why)
        victim = self._make_room(client)  # no await from here to the insert: the count holds
        sid = secrets.token_urlsafe(16)
        camera = hub.name
        pc = RTCPeerConnection(configuration=self._rtc_config)
        track = EncodedVideoTrack(hub, sid)
        session = WhepSession(sid, camera, pc, track, client)
        self.sessions[sid] = session
        loop = asyncio.get_running_loop()
        # From the POST on: the offer's own setup counts against the timeout too.
        session._timeout = loop.call_later(self.setup_timeout_s, self._setup_timeout, sid)
        if victim is not None:
            await self._release(victim)
        try:
            # Order matters (see module docstring): transceiver + H.264 preferences, then the offer.
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(h264_preferences())
            _hook_keyframe_requests(transceiver.sender, hub, camera, sid)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception as err:  # aiortc raises ValueError/OperationError/... on bad SDP
                raise _offer_error(session, "cannot use the offer", err) from err
            if not any(c.mimeType.lower() == "video/h264" for c in getattr(transceiver, "_codecs", [])):
                raise WhepError(400, "the offer has no H.264 (packetization-mode=1) for video")
            try:
                answer = await pc.createAnswer()
                with gather_hosts(self._ice_hosts):
                    await pc.setLocalDescription(answer)  # gathers candidates: the answer is complete
            except Exception as err:  # an offer aiortc took but cannot answer
                raise _offer_error(session, "cannot answer the offer", err) from err
        except BaseException:
            await self.close_session(sid)
            raise

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            log.info("%s: WebRTC viewer %s %s", camera, sid, state)
            if state == "connected":
                session.connected = True
                if session._timeout is not None:
                    session._timeout.cancel()
                    session._timeout = None
            if state in ("failed", "closed"):
                await self.close_session(sid)

        if session.closed:  # reclaimed for a newer offer while this one was being answered
            raise WhepError(503, RECLAIMED)
        log.info("%s: WebRTC viewer %s: answered offer (%d session(s))", camera, sid, len(self.sessions))
        assert pc.localDescription is not None
        return sid, pc.localDescription.sdp

    def _make_room(self, client: str) -> WhepSession | None:
        """Room for one more session of `client`: the session to reclaim for it (already out of
        `sessions`), or None; raises WhepError(503) when no session can be reclaimed."""
        mine = [s for s in self.sessions.values() if s.client == client]
        if len(mine) >= self.max_per_client:
            victim = next((s for s in mine if not s.connected), None)  # the oldest first
            if victim is None:
                self.events.hit(
                    "sessions", f"refused {client}: {len(mine)} WebRTC sessions from this address"
                )
                raise WhepError(503, "too many WebRTC viewers from this address")
            self.events.hit(
                "sessions", f"reclaimed a WebRTC session of {client} that never connected, for a new one"
            )
        elif len(self.sessions) >= self.max_sessions:
            victim = next((s for s in self.sessions.values() if not s.connected), None)
            if victim is None:
                self.events.hit(
                    "sessions", f"refused {client}: {len(self.sessions)} WebRTC sessions, all playing"
                )
                raise WhepError(503, "too many WebRTC viewers")
            self.events.hit("sessions", f"reclaimed a WebRTC session of {victim.client} that never connected, "
                            f"for {client}")  # fmt: skip
        else:
            return None
        self._detach(victim.id)
        return victim

    def _setup_timeout(self, sid: str) -> None:
        s = self.sessions.get(sid)
        if s is not None and not s.connected:
            self.events.hit("setup_timeout", f"{s.camera}: WebRTC viewer {s.client} did not connect within "
                            f"{self.setup_timeout_s:g} s", logging.INFO)  # fmt: skip
            task = asyncio.ensure_future(self.close_session(sid))
            self._tasks.add(task)  # keep a reference until it is done (asyncio holds weak ones)
            task.add_done_callback(self._tasks.discard)

    def get(self, camera: str, sid: str) -> WhepSession | None:
        s = self.sessions.get(sid)
        return s if s is not None and s.camera == camera else None

    async def close_session(self, sid: str) -> bool:
        """Close one session (idempotent); returns False when it did not exist."""
        s = self._detach(sid)
        if s is None:
            return False
        await self._release(s)
        return True

    def _detach(self, sid: str) -> WhepSession | None:
        """Out of the table at once (its slot is free), the viewer count down; its peer connection is
        closed by `_release`."""
        s = self.sessions.pop(sid, None)
        if s is None or s.closed:
            return None
        s.closed = True
        if s._timeout is not None:
            s._timeout.cancel()
            s._timeout = None
        s.track.stop()  # closes the hub subscription: the viewer count drops now
        return s

    async def _release(self, s: WhepSession) -> None:
        # Closing the peer connection frees its UDP ports, ICE agent and DTLS state (memory).
        try:
            await asyncio.wait_for(s.pc.close(), 5.0)
        except (TimeoutError, Exception) as err:
            log.warning("%s: WebRTC viewer %s: close failed: %s", s.camera, s.id, err)
        log.info("%s: WebRTC viewer %s closed (%d session(s))", s.camera, s.id, len(self.sessions))

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close_session(sid) for sid in list(self.sessions)))


RECLAIMED = "session reclaimed for a newer offer before it was answered"


def _offer_error(session: WhepSession, what: str, err: BaseException) -> WhepError:
    # A session reclaimed while aiortc worked on it fails there too (its peer connection closed).
    if session.closed:
        return WhepError(503, RECLAIMED)
    return WhepError(400, f"{what}: {_short(err)}")


def _short(err: BaseException) -> str:
    """An aiortc error for the client: its text, or its type where the text is empty."""
    text = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return text or type(err).__name__


@contextlib.contextmanager
def gather_hosts(hosts: list[str] | tuple[str, ...] | None) -> Iterator[None]:
    """Make aioice gather exactly `hosts` (None: its own choice) for peer connections set up inside
    this block: how `server.ice_hosts` works, and how a loopback client offers 127.0.0.1 (aioice
    skips it on its own)."""
    if hosts is not None:
        _install_host_address_hook()
    token = _ice_hosts.set(tuple(hosts) if hosts is not None else None)
    try:
        yield
    finally:
        _ice_hosts.reset(token)
