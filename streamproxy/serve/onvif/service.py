"""ONVIF Profile S device and media services (ver10), served under the HTTP server.

Routes (when `onvif.enabled`): POST /onvif/device_service, /onvif/media_service and /onvif/media2_service
(ver20: serve/onvif/media2.py registers its operations here). An operation
is dispatched by the namespace of its Body element, not by the path: a VMS that sends a media call to
the device XAddr (several do) gets the same answer.

The proxy is one multi-channel device (an encoder): one VideoSource per camera, and per camera the
Profile `<camera>_main` (stream URI `rtsp://HOST:PORT/<camera>`) and, when the camera has a sub stream,
`<camera>_sub` (`rtsp://HOST:PORT/<camera>/sub`), HOST as the client reached us (its Host header).
`profiles()` is the one place that lists a camera's profiles.

Nothing a client sends changes a stream: Set/Add/Create calls a VMS sends while adding a camera are
answered as accepted and logged once per camera and operation ("accepted, stream unchanged").
GetSnapshotUri points at the HTTP server's `/api/cameras/<camera>/snapshot.jpg`: a JPEG of the newest
anonymized frame (never a raw one), behind the same users (HTTP Digest or Basic).

Auth: with `server.users` set, every operation but those of ONVIF Core's PRE_AUTH access class
(`PRE_AUTH_OPERATIONS`: the clock, the service list and capabilities, the host name, answered to
anyone, as clients ask for them before they log in) needs a WS-Security UsernameToken with a
PasswordDigest (Created within ±5 min of our clock, each token accepted once: `UsedTokens`, one
record for every device of the process) or HTTP Digest/Basic (rtsp/auth.py's checks, failure counter
and back-off, shared by both). Wrong credentials: the ter:NotAuthorized fault (HTTP 400 for a bad
token, 401 with a challenge when no credentials came).

Service and snapshot addresses carry the host the client asked for (its Host header) and the port the
request really came in on when that header has none (libonvif sends `Host: 127.0.0.1` to port 8080).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from streamproxy import metrics
from streamproxy.config import AppConfig, OnvifConfig, User, sub_stream_size
from streamproxy.rtsp.auth import Authenticator, AuthResult
from streamproxy.rtsp.protocol import log_text
from streamproxy.serve.onvif import media2 as onvif_media2
from streamproxy.serve.onvif.soap import (
    CONTENT_TYPE,
    TDS,
    TRT,
    Request,
    SoapFault,
    UsernameToken,
    action_not_supported,
    check_digest,
    envelope,
    h264_profile,
    not_authorized,
    parse_envelope,
    range_xml,
    receiver,
    sender,
    username_token,
    video_source_configuration_xml,
)
from streamproxy.view import CameraView

log = logging.getLogger(__name__)

DEVICE_PATH = "/onvif/device_service"
MEDIA_PATH = "/onvif/media_service"
PATHS = (DEVICE_PATH, MEDIA_PATH, onvif_media2.MEDIA2_PATH)
# ONVIF requests are a few KiB (the largest a VMS sends is a SetVideoEncoderConfiguration); larger is
# not an ONVIF client. Below server.limits.max_body_bytes, so the answer is a SOAP fault, not a 413.
MAX_BODY_BYTES = 32 * 1024
TOKEN_WINDOW_S = 300.0  # |Created - now| accepted (ONVIF clients sync to GetSystemDateAndTime)
MAX_NONCES = 10_000  # remembered UsernameTokens (only authenticated ones are stored)
# An exact repeat of an accepted token is accepted again only from the same address, on the same
# device, this soon after its first use and this many times (see UsedTokens: clients whose clock or
# nonce is coarse send one token twice within the same Created; a replay from elsewhere is refused).
REPEAT_GRACE_S = 2.0
MAX_REPEATS = 32
REPLAY_LOG_EVERY_S = 60.0  # one summary line of refused replays a minute at most, per device
MAX_LOGGED_UNSUPPORTED = 256  # distinct unsupported operation names logged once each, then no more
# ONVIF Core's PRE_AUTH access class ("the service shall not require user authentication", Core
# Specification 25.12, 5.9.4.3 "Access classes for service requests"; each operation's class is in its
# "access class" entry): Device GetWsdlUrl (8.1.1), GetServices, GetServiceCapabilities, GetCapabilities
# (8.1.2.2-4), GetHostname (8.2.1), GetSystemDateAndTime (8.3.6), GetEndpointReference (8.4.9); and
# GetServiceCapabilities of Media (Media Service Spec. 24.12, 5.21) and Media2 (Media2 Service Spec.
# 26.06, 5.15). Source: github.com/onvif/specs doc/*.xml. A client reads them before it logs in: with a
# wrong password ZoneMinder got no media XAddr at all and said "No media endpoint" instead of
# "not authorized". Every other operation needs credentials.
PRE_AUTH_OPERATIONS = frozenset({
    (TDS, "GetSystemDateAndTime"), (TDS, "GetWsdlUrl"), (TDS, "GetServices"), (TDS, "GetServiceCapabilities"),
    (TDS, "GetCapabilities"), (TDS, "GetHostname"), (TDS, "GetEndpointReference"),
    (TRT, "GetServiceCapabilities"), (onvif_media2.TR2, "GetServiceCapabilities"),
})  # fmt: skip
WSDL_URL = "https://www.onvif.org/profiles/specifications/"  # GetWsdlUrl: where ONVIF publishes them
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.%a-zA-Z]+\]|[A-Za-z0-9.\-_]+)(:\d{1,5})?$")
# EndpointReference: the same uuid for the same serial, across restarts and hosts (a VMS keys on it).
_EPR_NAMESPACE = uuid.UUID("6b1e8c2e-1f52-5d0a-9d7e-0a5c1c0d15c0")


class OnvifHost(Protocol):
    """What the ONVIF service reads of the running service (`app.App` is one; serve/http/server.py's
    `Service` extends it). Read-only: plain attributes satisfy it as well as properties."""

    @property
    def cfg(self) -> AppConfig: ...

    @property
    def cameras(self) -> Mapping[str, CameraView]:
        """The running cameras, in config order (the video sources)."""

    @property
    def rtsp_port(self) -> int | None:
        """The RTSP server's bound port; None until it listens."""


def endpoint_reference(serial: str) -> str:
    """`urn:uuid:<uuid5 of the serial>`: stable, so a VMS recognises the device after a restart
    (WS-Discovery's EndpointReference and GetEndpointReference's GUID)."""
    return uuid.uuid5(_EPR_NAMESPACE, f"onvif-device:{serial}").urn


def snapshot_path(camera: str) -> str:
    """The HTTP path of a camera's snapshot (served by serve/http/server.py, and by a device port: device.py)."""
    return f"/api/cameras/{quote(camera, safe='')}/snapshot.jpg"


@dataclass(frozen=True, slots=True)
class StreamProfile:
    """One ONVIF media profile of a camera: its stream is rtsp://HOST:PORT/<camera><path>."""

    camera: str
    token: str
    path: str  # appended to /<camera>: "" for main, "/sub" for the sub stream
    width: int
    height: int
    fps: float
    gov_length: int  # frames between keyframes (encoder.gop_seconds at this rate)
    session_timeout_s: int
    bitrate_kbps: int  # the encoder's target (encoder.bitrate_kbps, sub_stream.bitrate_kbps)
    h264_profile: str  # ONVIF's name of the stream's H.264 profile (soap.h264_profile)


@dataclass(slots=True)
class _TokenUse:
    created: float  # the token's Created (epoch s): once outside the window it can be forgotten
    first_seen: float  # our clock when it was first accepted
    client: str  # the address that used it first
    device: str  # the device that accepted it (OnvifDevice.key)
    repeats: int = 0


class UsedTokens:
    """The WS-Security UsernameTokens this process has accepted, for all of its ONVIF devices.

    One record per process (`USED_TOKENS`), not one per device: the multi-channel device and each
    camera's own device (cameras[].onvif_port) are reached with the same users, so a token captured on
    one must not open another.

    What counts as the same token: (user, nonce, Created), not the nonce alone. The digest covers the
    nonce and Created, so an attacker who replays a captured token cannot change either: keyed this
    way, a replay is refused just as well, while a client whose nonces repeat over time is not:
    ZoneMinder's nonces are "a value of N" with N counting up from one of 1000 random starts (a new
    one per probe), each with its own Created; libonvif 1.4.4 re-seeds rand() with the second on every
    request, so all its tokens within a second share a nonce, each with its own millisecond Created.

    The one concession: an exact repeat of an accepted token (same user, nonce and Created: libonvif
    when two requests fall in one millisecond, or any client whose Created has whole seconds and whose
    nonce repeats within one) is accepted again, but only from the address that first used it, on the
    same device, within REPEAT_GRACE_S of its first use and at most MAX_REPEATS times. A captured
    token is refused from any other address, on any other device, or later. What such a repeat can do
    is bounded too: every ONVIF operation the proxy answers reads (Set/Create calls change nothing),
    so at worst it reads again, from the very address, what the first request read.

    Bounded: at most `max_entries`; a token leaves once its Created is out of the window (it would be
    refused anyway). When a still-fresh token has to go (the table full of fresh ones), tokens created
    at or before it are refused from then on (`_floor`): a forgotten token can never be replayed.
    """

    def __init__(self, max_entries: int = MAX_NONCES, window_s: float = TOKEN_WINDOW_S) -> None:
        self.max_entries = max_entries
        self.window_s = window_s
        self._uses: OrderedDict[tuple[str, bytes, str], _TokenUse] = OrderedDict()  # oldest first
        self._floor = float("-inf")
        self.repeats = 0  # exact repeats accepted (tests and benchmarks read them)
        self.refused = 0  # replays refused

    def __len__(self) -> int:
        return len(self._uses)

    def admit(self, token: UsernameToken, client: str, device: str, now: float) -> bool:
        """True when `token` (already checked: right digest, fresh Created) may be used now."""
        created = token.created_at.timestamp()
        if created <= self._floor:
            self.refused += 1
            return False
        key = (token.username, token.nonce, token.created)
        use = self._uses.get(key)
        if use is None:
            self._uses[key] = _TokenUse(created, now, client, device)
            self._prune(now)
            return True
        if (
            use.client == client
            and use.device == device
            and 0 <= now - use.first_seen <= REPEAT_GRACE_S
            and use.repeats < MAX_REPEATS
        ):
            use.repeats += 1
            self.repeats += 1
            return True
        self.refused += 1
        return False

    def _prune(self, now: float) -> None:
        # Oldest-inserted first; a token outside the window is refused anyway, so it can go.
        while self._uses:
            oldest_key, oldest = next(iter(self._uses.items()))
            if len(self._uses) <= self.max_entries and oldest.created >= now - self.window_s:
                break
            del self._uses[oldest_key]
            if oldest.created >= now - self.window_s:
                self._floor = max(self._floor, oldest.created)  # forgotten while still fresh: refuse its era


USED_TOKENS = UsedTokens()  # the process's one record (see UsedTokens)


class OnvifAuthenticator(Authenticator):
    """rtsp/auth.py's Authenticator (HTTP Digest/Basic, failure counter, back-off) plus WS-Security
    UsernameTokens: each failure counts in the same per-address tally as a wrong HTTP password.
    `device` names the device in the used-token record and `name` in the log (the camera of a
    per-camera device, "onvif" for the multi-channel one)."""

    def __init__(
        self,
        users: list[User],
        realm: str,
        clock: Callable[[], float] = time.time,
        used: UsedTokens | None = None,
        device: str = "*",
        name: str = "onvif",
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(users, realm, protocol="http", on_failure=on_failure)
        self._wall = clock
        self.used = used if used is not None else USED_TOKENS
        self.device = device
        self.name = name
        self._replays_unlogged = 0
        self._replay_logged = float("-inf")

    def _check_token(self, token: UsernameToken, client: str, *, quiet: bool = False) -> str | None:
        # An unknown user is checked against a dummy: same cost and answer as a wrong password.
        password, known = self.password_for(token.username)
        ok = check_digest(token, password) and known
        now = self._wall()
        if not ok or abs(token.created_at.timestamp() - now) > TOKEN_WINDOW_S:
            return None
        if not self.used.admit(token, client, self.device, now):
            if not quiet:
                self._log_replay(token, client, now)
            return None
        return token.username

    def _log_replay(self, token: UsernameToken, client: str, now: float) -> None:
        # A summary, not a line per replay: replays must not flood the log (the failure itself is
        # counted and backed off like any wrong credential).
        self._replays_unlogged += 1
        if now - self._replay_logged < REPLAY_LOG_EVERY_S:
            return
        log.warning(
            "%s: ONVIF UsernameToken replay refused (user %s, from %s); %d since the last report",
            self.name,
            log_text(token.username),
            client,
            self._replays_unlogged,
        )
        self._replays_unlogged = 0
        self._replay_logged = now

    async def verify_token(self, token: UsernameToken, client: str) -> AuthResult:
        return await self.verify_with(lambda: self._check_token(token, client), "wsse", client, self.name)

    def consume_token(self, token: UsernameToken, client: str) -> None:
        """A token sent with a PRE_AUTH operation (answered to anyone): recorded as used when it is
        valid, so that it cannot be captured there and replayed on another operation; a wrong one is
        neither answered differently (nothing to learn from) nor counted as a failure."""
        self._check_token(token, client, quiet=True)

    def remembered_nonces(self) -> int:
        """Tokens in the used-token record (shared by every device of the process)."""
        return len(self.used)


@dataclass(frozen=True, slots=True)
class OnvifDevice:
    """Who answers: the whole proxy as one multi-channel device (cameras None: every camera, on the
    HTTP port), or one camera as a device of its own (`cameras[].onvif_port`), for a VMS that takes
    single-channel devices only. A per-camera device has its own serial and name scope."""

    cameras: tuple[str, ...] | None = None
    serial_suffix: str = ""  # appended to onvif.device.serial: "-<camera>"
    name: str | None = None  # the name scope (None: onvif.scopes.name)

    @property
    def key(self) -> str:
        """Which device, in the used-token record: "*" for the multi-channel one, else its cameras."""
        return "*" if self.cameras is None else ",".join(self.cameras)

    @property
    def log_name(self) -> str:
        """What its log lines start with: the camera of a per-camera device, else "onvif"."""
        return "onvif" if self.cameras is None else ",".join(self.cameras)


def camera_device(camera: str) -> OnvifDevice:
    return OnvifDevice((camera,), f"-{camera}", camera)


class OnvifService:
    """The SOAP endpoint: `handle` is the aiohttp handler of both paths."""

    def __init__(self, app: OnvifHost, device: OnvifDevice | None = None) -> None:
        self.app = app
        self.cfg = app.cfg
        self.device = device or OnvifDevice()
        self.auth = OnvifAuthenticator(
            app.cfg.server.users,
            app.cfg.server.realm,
            device=self.device.key,
            name=self.device.log_name,
            on_failure=metrics.AUTH_FAILURES.labels(protocol="http").inc,
        )
        self._logged_sets: set[tuple[str, str]] = set()
        self._logged_unsupported: set[str] = set()
        self.last_ms = 0.0  # the last answer's handling time (tests and benchmarks print it)
        self._ops: dict[tuple[str, str], Callable[[Request, web.Request], str]] = {
            (TDS, "GetSystemDateAndTime"): self._system_date_and_time,
            (TDS, "GetCapabilities"): self._capabilities,
            (TDS, "GetServices"): self._services,
            (TDS, "GetServiceCapabilities"): lambda r, h: _resp(
                "tds", "GetServiceCapabilities", _DEVICE_CAPS
            ),
            (TDS, "GetWsdlUrl"): lambda r, h: _resp(
                "tds", "GetWsdlUrl", f"<tds:WsdlUrl>{WSDL_URL}</tds:WsdlUrl>"
            ),
            (TDS, "GetEndpointReference"): self._endpoint_reference,
            (TDS, "GetDeviceInformation"): self._device_information,
            (TDS, "GetScopes"): self._scopes,
            (TDS, "GetHostname"): self._hostname,
            (TDS, "GetNetworkInterfaces"): self._network_interfaces,
            (TDS, "GetNetworkDefaultGateway"): self._default_gateway,
            (TDS, "GetNetworkProtocols"): self._network_protocols,
            (TDS, "GetDNS"): self._dns,
            # The host's clock is the host's business (its own NTP client): nothing configured here.
            (TDS, "GetNTP"): lambda r, h: _resp(
                "tds", "GetNTP", "<tds:NTPInformation><tt:FromDHCP>false</tt:FromDHCP></tds:NTPInformation>"
            ),
            # No relay outputs (an encoder of anonymized streams switches nothing): an empty list.
            (TDS, "GetRelayOutputs"): lambda r, h: "<tds:GetRelayOutputsResponse/>",
            (TDS, "GetDiscoveryMode"): lambda r, h: _resp(
                "tds",
                "GetDiscoveryMode",
                f"<tds:DiscoveryMode>{_discovery_mode(self.cfg)}</tds:DiscoveryMode>",
            ),
            (TRT, "GetServiceCapabilities"): self._media_capabilities,
            (TRT, "GetProfiles"): self._profiles,
            (TRT, "GetProfile"): self._profile,
            (TRT, "GetVideoSources"): self._video_sources,
            (TRT, "GetVideoSourceConfigurations"): self._vsc_list("GetVideoSourceConfigurations"),
            (TRT, "GetCompatibleVideoSourceConfigurations"): self._vsc_list(
                "GetCompatibleVideoSourceConfigurations"
            ),
            (TRT, "GetVideoSourceConfiguration"): self._vsc_one,
            (TRT, "GetVideoSourceConfigurationOptions"): self._vsc_options,
            (TRT, "GetVideoEncoderConfigurations"): self._vec_list("GetVideoEncoderConfigurations"),
            (TRT, "GetCompatibleVideoEncoderConfigurations"): self._vec_list(
                "GetCompatibleVideoEncoderConfigurations"
            ),
            (TRT, "GetVideoEncoderConfiguration"): self._vec_one,
            (TRT, "GetVideoEncoderConfigurationOptions"): self._vec_options,
            (TRT, "GetGuaranteedNumberOfVideoEncoderInstances"): self._guaranteed,
            (TRT, "GetStreamUri"): self._stream_uri,
            (TRT, "GetSnapshotUri"): self._snapshot_uri,
        }
        # No audio ever leaves the proxy (speech is personal data), no metadata or analytics stream.
        for op in (
            "GetAudioSources",
            "GetAudioSourceConfigurations",
            "GetAudioEncoderConfigurations",
            "GetAudioOutputs",
            "GetAudioOutputConfigurations",
            "GetAudioDecoderConfigurations",
            "GetCompatibleAudioSourceConfigurations",
            "GetCompatibleAudioEncoderConfigurations",
            "GetCompatibleAudioOutputConfigurations",
            "GetCompatibleAudioDecoderConfigurations",
            "GetMetadataConfigurations",
            "GetCompatibleMetadataConfigurations",
            "GetVideoAnalyticsConfigurations",
            "GetCompatibleVideoAnalyticsConfigurations",
        ):
            self._ops[(TRT, op)] = _empty(op)
        for op in (
            "SetVideoEncoderConfiguration",
            "SetVideoSourceConfiguration",
            "AddVideoEncoderConfiguration",
            "AddVideoSourceConfiguration",
            "RemoveVideoEncoderConfiguration",
            "RemoveVideoSourceConfiguration",
            "RemoveAudioEncoderConfiguration",
            "RemoveAudioSourceConfiguration",
            "RemoveMetadataConfiguration",
            "RemovePTZConfiguration",
            "RemoveVideoAnalyticsConfiguration",
            "DeleteProfile",
            "SetSynchronizationPoint",
        ):
            self._ops[(TRT, op)] = self._accepted(op)
        self._ops[(TRT, "CreateProfile")] = self._create_profile
        # Clock pushes some VMS send after GetSystemDateAndTime: our clock is the host's.
        for op in ("SetSystemDateAndTime", "SetNTP"):
            self._ops[(TDS, op)] = self._accepted(op, prefix="tds")
        onvif_media2.register(self, snapshot_path)  # Media2 (ver20) from the same profiles

    # --- the endpoint ---
    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            body = await self._answer(request)
            resp = web.Response(body=envelope(body).encode(), headers={"Content-Type": CONTENT_TYPE})
        except SoapFault as fault:
            resp = _fault_response(fault, self.auth if fault.status == 401 else None, request)
        except Exception:
            # Never a traceback page: a bug in one operation answers a Receiver fault and is logged.
            log.exception("onvif: %s failed", request.path)
            resp = _fault_response(receiver("internal error"), None, request)
        self.last_ms = (time.perf_counter() - t0) * 1000
        return resp

    async def _answer(self, request: web.Request) -> str:
        data = await request.read()  # already read by the HTTP guard within server.limits
        if len(data) > MAX_BODY_BYTES:
            raise sender(f"request body over {MAX_BODY_BYTES} bytes", "InvalidArgVal")
        if not data:
            raise sender("empty request body", "WellFormed")
        req = parse_envelope(data)
        key = (req.namespace, req.operation)
        if self.auth.enabled:
            if key in PRE_AUTH_OPERATIONS:
                self._pre_auth(req, request)
            else:
                await self._authenticate(req, request)
        op = self._ops.get(key)
        if op is None:
            self._log_unsupported(req)
            raise action_not_supported(req.operation)
        return op(req, request)

    def _log_unsupported(self, req: Request) -> None:
        # Once per operation name (a VMS probing PTZ or events asks again and again), for a bounded
        # number of names; both are the client's, so escaped (a namespace may hold &#10;).
        name = f"{req.operation} {{{req.namespace}}}"
        if name in self._logged_unsupported or len(self._logged_unsupported) >= MAX_LOGGED_UNSUPPORTED:
            return
        self._logged_unsupported.add(name)
        log.info("%s: ONVIF unsupported operation %s", self.device.log_name, log_text(name))

    def _pre_auth(self, req: Request, request: web.Request) -> None:
        """A PRE_AUTH operation is answered whatever credentials came, and none needed (ONVIF Core
        5.9.4.3); a valid token sent with it is still used up (OnvifAuthenticator.consume_token)."""
        try:
            token = username_token(req.header)
        except SoapFault:  # a malformed token: ignored here, as any credentials are
            return
        if token is not None:
            self.auth.consume_token(token, request.remote or "?")

    async def _authenticate(self, req: Request, request: web.Request) -> None:
        client = request.remote or "?"
        token = username_token(req.header)
        if token is not None:
            if (await self.auth.verify_token(token, client)).user is None:
                raise not_authorized(400)
            return
        authorization = request.headers.get("Authorization")
        if authorization:
            try:
                res = await self.auth.verify("POST", request.path_qs, authorization, client)
            except Exception:  # a Digest uri= that does not parse is a wrong credential, not a crash
                res = AuthResult(None, True)
            if res.user is not None:
                return
        raise not_authorized(401)

    # --- helpers ---
    def _host(self, request: web.Request) -> str:
        """host:port as the client reached us: the Host header's host, and its port, or when it has
        none the port the request came in on (libonvif writes `Host: 127.0.0.1` whatever the port,
        and the default 80 is not where we listen); without a usable Host, our socket's address."""
        host = request.headers.get("Host", "")
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        m = _HOST_RE.match(host) if host else None
        if m is not None:
            if m.group(2) is None and sock:
                return f"{host}:{sock[1]}"
            return host
        if not sock:
            return self.cfg.server.host
        addr, port = sock[0], sock[1]
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    def _rtsp_port(self) -> int:
        return self.app.rtsp_port or self.cfg.server.rtsp_port

    def cameras(self) -> list[str]:
        """The cameras this device serves (the video sources), in config order."""
        only = self.device.cameras
        return [c for c in self.app.cameras if only is None or c in only]

    def profiles(self, camera: str) -> list[StreamProfile]:
        """The camera's media profiles: the main stream, then the sub stream if it has one."""
        view = self.app.cameras.get(camera)
        codec = view.hub.codec if view is not None else None
        if codec is not None:
            w, h, fps = codec.width, codec.height, codec.fps
        else:  # not seen yet: what a viewer gets now is the slate
            w, h, fps = self.cfg.slate.width, self.cfg.slate.height, self.cfg.slate.fps
        enc = self.cfg.encoder
        gop_s = enc.gop_seconds
        timeout = int(self.cfg.server.session_timeout_s)
        # The profile from the stream's own SPS once it has one (the encoder is the one to say).
        profile = h264_profile(codec.sps if codec is not None else None, enc.preset)
        out = [StreamProfile(camera, f"{camera}_main", "", w, h, fps, max(1, round(gop_s * fps)), timeout,
                             enc.bitrate_kbps, profile)]  # fmt: skip
        sub_hub = view.sub_hub if view is not None else None
        if sub_hub is not None:
            sub_codec = sub_hub.codec
            cam_cfg = next((c for c in self.cfg.cameras if c.name == camera), None)
            sub_cfg = (
                self.cfg.sub_stream_for(cam_cfg) if cam_cfg is not None else None
            ) or self.cfg.sub_stream
            if sub_codec is not None:
                sw, sh = sub_codec.width, sub_codec.height
            else:  # before its first frame: the size the sub stream will have for the main one
                sw, sh = sub_stream_size(sub_cfg, w, h)
            sfps = min(sub_cfg.fps, fps)
            # live/encode.py's SubStreamEncoder: the main encoder's settings with the sub stream's bitrate.
            sub_profile = h264_profile(sub_codec.sps if sub_codec is not None else None, enc.preset)
            out.append(StreamProfile(camera, f"{camera}_sub", "/sub", sw, sh, sfps, max(1, round(gop_s * sfps)),
                                     timeout, sub_cfg.bitrate_kbps, sub_profile))  # fmt: skip
        return out

    def _all_profiles(self) -> list[StreamProfile]:
        return [p for cam in self.cameras() for p in self.profiles(cam)]

    def _find_profile(self, token: str | None) -> StreamProfile:
        for p in self._all_profiles():
            if p.token == token:
                return p
        raise sender(f"no profile {token!r}", "InvalidArgVal", "NoProfile")

    def _camera_of_source(self, token: str | None) -> str:
        if token in self.cameras():
            return token
        raise sender(f"no configuration {token!r}", "InvalidArgVal", "NoConfig")

    def _accepted(self, op: str, prefix: str = "trt") -> Callable[[Request, web.Request], str]:
        def answer(req: Request, request: web.Request) -> str:
            attr = next((el.get("token") for el in req.element.iter() if el.get("token")), None)
            token = req.text("ProfileToken") or req.text("ConfigurationToken") or attr or ""
            camera = next((c for c in self.cameras() if token == c or token.startswith(c + "_")), "-")
            if (camera, op) not in self._logged_sets:
                self._logged_sets.add((camera, op))
                log.info("%s: ONVIF %s accepted, stream unchanged", camera, op)
            return f"<{prefix}:{op}Response/>"

        return answer

    # --- device service ---
    def _system_date_and_time(self, req: Request, request: web.Request) -> str:
        now = dt.datetime.now(dt.UTC)
        when = (
            f"<tt:Time><tt:Hour>{now.hour}</tt:Hour><tt:Minute>{now.minute}</tt:Minute>"
            f"<tt:Second>{now.second}</tt:Second></tt:Time><tt:Date><tt:Year>{now.year}</tt:Year>"
            f"<tt:Month>{now.month}</tt:Month><tt:Day>{now.day}</tt:Day></tt:Date>"
        )
        # The host's clock in UTC (its NTP is the host's business): local time is UTC too.
        return _resp(
            "tds",
            "GetSystemDateAndTime",
            "<tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType>"
            "<tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
            f"<tt:UTCDateTime>{when}</tt:UTCDateTime><tt:LocalDateTime>{when}</tt:LocalDateTime>"
            "</tds:SystemDateAndTime>",
        )

    def _device_caps_xml(self, host: str) -> str:
        return f"<tt:Device><tt:XAddr>{escape(_url(host, DEVICE_PATH))}</tt:XAddr></tt:Device>"

    def _media_caps_xml(self, host: str) -> str:
        return (
            f"<tt:Media><tt:XAddr>{escape(_url(host, MEDIA_PATH))}</tt:XAddr><tt:StreamingCapabilities>"
            "<tt:RTPMulticast>false</tt:RTPMulticast><tt:RTP_TCP>false</tt:RTP_TCP>"
            "<tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP></tt:StreamingCapabilities></tt:Media>"
        )

    def _capabilities(self, req: Request, request: web.Request) -> str:
        host = self._host(request)
        categories = {el.text.strip() for el in req.element if el.text and el.tag.endswith("}Category")} or {
            "All"
        }
        parts = []
        if categories & {"All", "Device"}:
            parts.append(self._device_caps_xml(host))
        if categories & {"All", "Media"}:
            parts.append(self._media_caps_xml(host))
        if not parts:
            raise receiver(
                f"no {', '.join(sorted(categories))} service", "ActionNotSupported", "NoSuchService"
            )
        return _resp("tds", "GetCapabilities", f"<tds:Capabilities>{''.join(parts)}</tds:Capabilities>")

    def _services(self, req: Request, request: web.Request) -> str:
        host = self._host(request)
        include = (req.text("IncludeCapability") or "false").lower() in ("true", "1")
        out = []
        for ns, path, caps in (
            (TDS, DEVICE_PATH, _DEVICE_CAPS),
            (TRT, MEDIA_PATH, self._media_caps_inner()),
            (onvif_media2.TR2, onvif_media2.MEDIA2_PATH, onvif_media2.capabilities(self)),
        ):
            cap = f"<tds:Capabilities>{caps}</tds:Capabilities>" if include else ""
            out.append(
                f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{escape(_url(host, path))}</tds:XAddr>"
                f"{cap}<tds:Version><tt:Major>2</tt:Major><tt:Minor>60</tt:Minor></tds:Version></tds:Service>"
            )
        return _resp("tds", "GetServices", "".join(out))

    def _device_information(self, req: Request, request: web.Request) -> str:
        d = self.cfg.onvif.device
        return _resp(
            "tds",
            "GetDeviceInformation",
            f"<tds:Manufacturer>{escape(d.manufacturer)}</tds:Manufacturer><tds:Model>{escape(d.model)}</tds:Model>"
            f"<tds:FirmwareVersion>{escape(d.firmware)}</tds:FirmwareVersion>"
            f"<tds:SerialNumber>{escape(d.serial + self.device.serial_suffix)}</tds:SerialNumber>"
            f"<tds:HardwareId>{escape(d.hardware)}</tds:HardwareId>",
        )

    def _scopes(self, req: Request, request: web.Request) -> str:
        body = "".join(
            f"<tds:Scopes><tt:ScopeDef>Fixed</tt:ScopeDef><tt:ScopeItem>{escape(i)}</tt:ScopeItem></tds:Scopes>"
            for i in scopes(self.cfg.onvif, self.device.name)
        )
        return _resp("tds", "GetScopes", body)

    def _hostname(self, req: Request, request: web.Request) -> str:
        name = escape(socket.gethostname() or "streamproxy")
        return _resp(
            "tds",
            "GetHostname",
            f"<tds:HostnameInformation><tt:FromDHCP>false</tt:FromDHCP><tt:Name>{name}</tt:Name>"
            "</tds:HostnameInformation>",
        )

    def _endpoint_reference(self, req: Request, request: web.Request) -> str:
        # The same uuid WS-Discovery announces for this device (serve/onvif/discovery.py).
        guid = endpoint_reference(self.cfg.onvif.device.serial + self.device.serial_suffix)
        return _resp("tds", "GetEndpointReference", f"<tds:GUID>{escape(guid)}</tds:GUID>")

    def _network_interfaces(self, req: Request, request: web.Request) -> str:
        # The address the client reached us on (read-only), with its subnet's prefix length from the
        # host's routes; no MAC address of the host is disclosed.
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        addr = sock[0] if sock else self.cfg.server.host
        ipv4 = ""
        if addr and ":" not in addr:
            ipv4 = (
                "<tt:IPv4><tt:Enabled>true</tt:Enabled><tt:Config><tt:Manual>"
                f"<tt:Address>{escape(addr)}</tt:Address><tt:PrefixLength>{_prefix_length(addr)}</tt:PrefixLength>"
                "</tt:Manual><tt:DHCP>false</tt:DHCP></tt:Config></tt:IPv4>"
            )
        return _resp(
            "tds",
            "GetNetworkInterfaces",
            '<tds:NetworkInterfaces token="eth0"><tt:Enabled>true</tt:Enabled><tt:Info><tt:Name>eth0</tt:Name>'
            f"<tt:HwAddress>00:00:00:00:00:00</tt:HwAddress></tt:Info>{ipv4}</tds:NetworkInterfaces>",
        )

    def _default_gateway(self, req: Request, request: web.Request) -> str:
        # The host's default routes (read-only): what onvif-util's "get network" shows. None known
        # (not Linux, or no default route): an empty NetworkGateway, which the schema allows.
        v4, v6 = _default_gateways()
        body = "".join(f"<tt:IPv4Address>{a}</tt:IPv4Address>" for a in v4)
        body += "".join(f"<tt:IPv6Address>{a}</tt:IPv6Address>" for a in v6)
        return _resp("tds", "GetNetworkDefaultGateway", f"<tds:NetworkGateway>{body}</tds:NetworkGateway>")

    def _network_protocols(self, req: Request, request: web.Request) -> str:
        # What this device really serves: HTTP on the port the request came in on (the HTTP port, or
        # a camera's own ONVIF port), RTSP on the RTSP server's. No HTTPS.
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        http_port = sock[1] if sock else self.cfg.server.http_port
        return _resp(
            "tds",
            "GetNetworkProtocols",
            f"<tds:NetworkProtocols><tt:Name>HTTP</tt:Name><tt:Enabled>true</tt:Enabled><tt:Port>{http_port}"
            "</tt:Port></tds:NetworkProtocols><tds:NetworkProtocols><tt:Name>RTSP</tt:Name><tt:Enabled>true"
            f"</tt:Enabled><tt:Port>{self._rtsp_port()}</tt:Port></tds:NetworkProtocols>",
        )

    def _dns(self, req: Request, request: web.Request) -> str:
        # The host's resolvers and search domains (/etc/resolv.conf), read-only; the proxy sets none.
        servers, domains = _resolv_conf()
        body = "".join(f"<tt:SearchDomain>{escape(d)}</tt:SearchDomain>" for d in domains)
        for ip in servers:
            kind = "IPv6" if ip.version == 6 else "IPv4"
            body += f"<tt:DNSManual><tt:Type>{kind}</tt:Type><tt:{kind}Address>{ip}</tt:{kind}Address></tt:DNSManual>"
        return _resp(
            "tds",
            "GetDNS",
            f"<tds:DNSInformation><tt:FromDHCP>false</tt:FromDHCP>{body}</tds:DNSInformation>",
        )

    # --- media service ---
    def _media_caps_inner(self) -> str:
        n = len(self._all_profiles())
        return (
            '<trt:Capabilities SnapshotUri="true" Rotation="false" VideoSourceMode="false" OSD="false">'
            f'<trt:ProfileCapabilities MaximumNumberOfProfiles="{n}"/>'
            '<trt:StreamingCapabilities RTPMulticast="false" RTP_TCP="false" RTP_RTSP_TCP="true" '
            'NonAggregateControl="false" NoRTSPStreaming="false"/></trt:Capabilities>'
        )

    def _media_capabilities(self, req: Request, request: web.Request) -> str:
        return _resp("trt", "GetServiceCapabilities", self._media_caps_inner())

    def _profile_xml(self, tag: str, p: StreamProfile) -> str:
        return (
            f'<trt:{tag} token={quoteattr(p.token)} fixed="true"><tt:Name>{escape(p.token)}</tt:Name>'
            f"{_vsc('tt:VideoSourceConfiguration', p)}{_vec_xml('tt:VideoEncoderConfiguration', p)}</trt:{tag}>"
        )

    def _profiles(self, req: Request, request: web.Request) -> str:
        return _resp(
            "trt", "GetProfiles", "".join(self._profile_xml("Profiles", p) for p in self._all_profiles())
        )

    def _profile(self, req: Request, request: web.Request) -> str:
        return _resp(
            "trt", "GetProfile", self._profile_xml("Profile", self._find_profile(req.text("ProfileToken")))
        )

    def _create_profile(self, req: Request, request: web.Request) -> str:
        # No new encoder exists: answer the profile of the camera the name or token points at (else
        # the first camera's main profile), fixed="true": a VMS then uses it as it is.
        wanted = req.text("Token") or req.text("Name") or ""
        profiles = self._all_profiles()
        p = next((q for q in profiles if wanted in (q.token, q.camera)), profiles[0])
        self._accepted("CreateProfile")(req, request)
        return _resp("trt", "CreateProfile", self._profile_xml("Profile", p))

    def _video_sources(self, req: Request, request: web.Request) -> str:
        out = []
        for cam in self.cameras():
            main = self.profiles(cam)[0]
            out.append(
                f"<trt:VideoSources token={quoteattr(cam)}><tt:Framerate>{main.fps:g}</tt:Framerate>"
                f"<tt:Resolution><tt:Width>{main.width}</tt:Width><tt:Height>{main.height}</tt:Height>"
                "</tt:Resolution></trt:VideoSources>"
            )
        return _resp("trt", "GetVideoSources", "".join(out))

    def _vsc_list(self, op: str) -> Callable[[Request, web.Request], str]:
        def answer(req: Request, request: web.Request) -> str:
            token = req.text("ProfileToken")
            cams = [self._find_profile(token).camera] if token is not None else self.cameras()
            return _resp("trt", op, "".join(_vsc("trt:Configurations", self.profiles(c)[0]) for c in cams))

        return answer

    def _vsc_one(self, req: Request, request: web.Request) -> str:
        cam = self._camera_of_source(req.text("ConfigurationToken"))
        return _resp("trt", "GetVideoSourceConfiguration", _vsc("trt:Configuration", self.profiles(cam)[0]))

    def _vsc_options(self, req: Request, request: web.Request) -> str:
        token = req.text("ConfigurationToken")
        profile = req.text("ProfileToken")
        cams = (
            [self._camera_of_source(token)]
            if token
            else [self._find_profile(profile).camera]
            if profile
            else self.cameras()
        )
        p = self.profiles(cams[0])[0]
        sources = "".join(
            f"<tt:VideoSourceTokensAvailable>{escape(c)}</tt:VideoSourceTokensAvailable>" for c in cams
        )
        return _resp(
            "trt",
            "GetVideoSourceConfigurationOptions",
            f"<trt:Options><tt:BoundsRange>{range_xml('XRange', 0, 0)}{range_xml('YRange', 0, 0)}"
            f"{range_xml('WidthRange', p.width, p.width)}{range_xml('HeightRange', p.height, p.height)}"
            f"</tt:BoundsRange>{sources}</trt:Options>",
        )

    def _vec_list(self, op: str) -> Callable[[Request, web.Request], str]:
        def answer(req: Request, request: web.Request) -> str:
            token = req.text("ProfileToken")
            profiles = [self._find_profile(token)] if token is not None else self._all_profiles()
            return _resp("trt", op, "".join(_vec_xml("trt:Configurations", p) for p in profiles))

        return answer

    def _vec_one(self, req: Request, request: web.Request) -> str:
        token = req.text("ConfigurationToken")
        p = next((q for q in self._all_profiles() if q.token == token), None)
        if p is None:
            raise sender(f"no configuration {token!r}", "InvalidArgVal", "NoConfig")
        return _resp("trt", "GetVideoEncoderConfiguration", _vec_xml("trt:Configuration", p))

    def _vec_options(self, req: Request, request: web.Request) -> str:
        token = req.text("ConfigurationToken") or req.text("ProfileToken")
        profiles = self._all_profiles()
        p = next((q for q in profiles if q.token == token), None) if token else profiles[0]
        if p is None:
            raise sender(f"no configuration {token!r}", "InvalidArgVal", "NoConfig")
        fps = max(1, round(p.fps))
        # The one resolution, rate, profile and bitrate the proxy encodes: a VMS cannot choose another
        # (Set is a no-op). The bitrate range is in the Media 2.0 extension (tt:H264Options2), where
        # libonvif and others read it.
        h264 = (
            f"<tt:ResolutionsAvailable><tt:Width>{p.width}</tt:Width><tt:Height>{p.height}</tt:Height>"
            f"</tt:ResolutionsAvailable>{range_xml('GovLengthRange', 1, 300)}{range_xml('FrameRateRange', fps, fps)}"
            f"{range_xml('EncodingIntervalRange', 1, 1)}<tt:H264ProfilesSupported>{p.h264_profile}"
            "</tt:H264ProfilesSupported>"
        )
        return _resp(
            "trt",
            "GetVideoEncoderConfigurationOptions",
            f"<trt:Options>{range_xml('QualityRange', 0, 0)}<tt:H264>{h264}</tt:H264><tt:Extension><tt:H264>{h264}"
            f"{range_xml('BitrateRange', p.bitrate_kbps, p.bitrate_kbps)}</tt:H264></tt:Extension></trt:Options>",
        )

    def _guaranteed(self, req: Request, request: web.Request) -> str:
        self._find_profile(req.text("ConfigurationToken"))  # the token is a profile's VEC token
        return _resp(
            "trt",
            "GetGuaranteedNumberOfVideoEncoderInstances",
            "<trt:TotalNumber>1</trt:TotalNumber><trt:H264>1</trt:H264>",
        )

    def _stream_uri(self, req: Request, request: web.Request) -> str:
        p = self._find_profile(req.text("ProfileToken"))
        stream = req.text("Stream") or "RTP-Unicast"
        protocol = req.text("Protocol") or "RTSP"
        if stream != "RTP-Unicast" or protocol not in ("UDP", "TCP", "RTSP"):
            raise sender(
                f"{stream} over {protocol} is not offered: RTP-Unicast over RTSP (UDP or TCP)",
                "InvalidArgVal",
                "InvalidStreamSetup",
            )
        host = self._host(request)
        hostname = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
        uri = f"rtsp://{hostname}:{self._rtsp_port()}/{quote(p.camera)}{p.path}"
        return _resp(
            "trt",
            "GetStreamUri",
            f"<trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>",
        )

    def _snapshot_uri(self, req: Request, request: web.Request) -> str:
        p = self._find_profile(req.text("ProfileToken"))
        uri = _url(self._host(request), snapshot_path(p.camera))
        return _resp(
            "trt",
            "GetSnapshotUri",
            f"<trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>",
        )


_DEVICE_CAPS = (
    '<tds:Capabilities><tds:Network IPFilter="false" ZeroConfiguration="false" IPVersion6="false" '
    'DynDNS="false" Dot11Configuration="false" HostnameFromDHCP="false" NTP="0"/>'
    '<tds:Security TLS1.0="false" TLS1.1="false" TLS1.2="false" OnboardKeyGeneration="false" '
    'AccessPolicyConfig="false" DefaultAccessPolicy="false" Dot1X="false" RemoteUserHandling="false" '
    'X.509Token="false" SAMLToken="false" KerberosToken="false" UsernameToken="true" HttpDigest="true" '
    'RELToken="false"/>'
    '<tds:System DiscoveryResolve="false" DiscoveryBye="false" RemoteDiscovery="false" SystemBackup="false" '
    'SystemLogging="false" FirmwareUpgrade="false" HttpFirmwareUpgrade="false" HttpSystemBackup="false" '
    'HttpSystemLogging="false" HttpSupportInformation="false"/></tds:Capabilities>'
)


def _discovery_mode(cfg: AppConfig) -> str:
    return "Discoverable" if cfg.onvif.discovery.enabled else "NonDiscoverable"


def scopes(o: OnvifConfig, name: str | None = None) -> list[str]:
    """The device's scopes: GetScopes and WS-Discovery (serve/onvif/discovery.py) answer the same list.
    `name`: a per-camera device's name scope (default onvif.scopes.name)."""
    return [
        "onvif://www.onvif.org/Profile/Streaming",
        "onvif://www.onvif.org/type/video_encoder",
        "onvif://www.onvif.org/type/Network_Video_Transmitter",
        f"onvif://www.onvif.org/hardware/{quote(o.device.hardware, safe='')}",
        f"onvif://www.onvif.org/name/{quote(name if name is not None else o.scopes.name, safe='')}",
        f"onvif://www.onvif.org/location/{quote(o.scopes.location, safe='')}",
    ]


# --- the host's network, read-only (GetNetworkInterfaces, GetNetworkDefaultGateway, GetDNS) ---
# Read on each call (a VMS asks once, while adding the device): what the host has now. Linux's /proc;
# elsewhere nothing is known and the answers say so (no gateway, no servers), never something made up.
PROC_ROUTE = Path("/proc/net/route")
PROC_IPV6_ROUTE = Path("/proc/net/ipv6_route")
RESOLV_CONF = Path("/etc/resolv.conf")
_RTF_GATEWAY = 0x2
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")


def _ipv4_routes(path: Path = PROC_ROUTE) -> list[tuple[int, int, int, int]]:
    """(destination, gateway, flags, mask) of each IPv4 route, as host-order integers."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            # /proc writes each address as the hex of its 32 bits in the kernel's (little-endian) order.
            dest, gw, mask = (int.from_bytes(int(f[i], 16).to_bytes(4, "little"), "big") for i in (1, 2, 7))
            out.append((dest, gw, int(f[3], 16), mask))
        except ValueError:
            continue
    return out


def _default_gateways(
    route: Path = PROC_ROUTE, route6: Path = PROC_IPV6_ROUTE
) -> tuple[list[str], list[str]]:
    """The host's default gateways: (IPv4, IPv6), each in the order the kernel lists them, no repeats."""
    v4 = [str(ipaddress.IPv4Address(gw)) for dest, gw, flags, mask in _ipv4_routes(route)
          if dest == 0 and mask == 0 and flags & _RTF_GATEWAY and gw]  # fmt: skip
    v6: list[str] = []
    try:
        lines = route6.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        f = line.split()
        # dest, dest prefix length, src, src prefix length, next hop, metric, refcnt, use, flags, device
        if len(f) < 10 or f[0] != "0" * 32 or f[1] != "00" or f[4] == "0" * 32 or f[9] == "lo":
            continue
        try:
            v6.append(str(ipaddress.IPv6Address(bytes.fromhex(f[4]))))
        except ValueError:
            continue
    return list(dict.fromkeys(v4)), list(dict.fromkeys(v6))


def _prefix_length(addr: str, route: Path = PROC_ROUTE) -> int:
    """The prefix length of the subnet `addr` (IPv4) is on: the longest directly connected route
    that holds it; a loopback address is on 127.0.0.0/8; unknown: 32 (the address alone)."""
    try:
        ip = ipaddress.IPv4Address(addr)
    except ValueError:
        return 32
    if ip.is_loopback:
        return 8
    best = -1
    for dest, _gw, flags, mask in _ipv4_routes(route):
        if not flags & _RTF_GATEWAY and int(ip) & mask == dest:
            best = max(best, bin(mask).count("1"))
    return best if best > 0 else 32


def _resolv_conf(
    path: Path = RESOLV_CONF,
) -> tuple[list[ipaddress.IPv4Address | ipaddress.IPv6Address], list[str]]:
    """The host's name servers and search domains (resolv.conf's `nameserver`, `search`/`domain`)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return [], []
    servers: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    domains: list[str] = []
    for line in lines:
        f = line.split()
        if len(f) >= 2 and f[0] == "nameserver":
            try:
                servers.append(ipaddress.ip_address(f[1].partition("%")[0]))
            except ValueError:
                continue
        elif f and f[0] in ("search", "domain"):
            domains = [d for d in f[1:] if _DOMAIN_RE.match(d)]  # the last such line counts
    return list(dict.fromkeys(servers))[:8], domains[:6]


def _empty(op: str) -> Callable[[Request, web.Request], str]:
    return lambda req, request: f"<trt:{op}Response/>"


def _resp(prefix: str, op: str, inner: str) -> str:
    return f"<{prefix}:{op}Response>{inner}</{prefix}:{op}Response>"


def _url(host: str, path: str) -> str:
    return f"http://{host}{path}"


def _vec_xml(tag: str, p: StreamProfile) -> str:
    fps = max(1, round(p.fps))
    # RateControl and H264 always present: UniFi Protect needs both (go2rtc's notes). BitrateLimit is
    # the encoder's target in kbit/s (ONVIF's unit), the profile the stream's (StreamProfile).
    return (
        f"<{tag} token={quoteattr(p.token)}><tt:Name>{escape(p.token)}</tt:Name><tt:UseCount>1</tt:UseCount>"
        f"<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>{p.width}</tt:Width>"
        f"<tt:Height>{p.height}</tt:Height></tt:Resolution><tt:Quality>0</tt:Quality>"
        f"<tt:RateControl><tt:FrameRateLimit>{fps}</tt:FrameRateLimit><tt:EncodingInterval>1</tt:EncodingInterval>"
        f"<tt:BitrateLimit>{p.bitrate_kbps}</tt:BitrateLimit></tt:RateControl>"
        f"<tt:H264><tt:GovLength>{p.gov_length}</tt:GovLength><tt:H264Profile>{p.h264_profile}</tt:H264Profile>"
        "</tt:H264>"
        "<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type><tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address>"
        "<tt:Port>0</tt:Port><tt:TTL>0</tt:TTL><tt:AutoStart>false</tt:AutoStart></tt:Multicast>"
        f"<tt:SessionTimeout>PT{p.session_timeout_s}S</tt:SessionTimeout></{tag}>"
    )


def _fault_response(fault: SoapFault, auth: Authenticator | None, request: web.Request) -> web.Response:
    headers = {"Content-Type": CONTENT_TYPE}
    resp = web.Response(status=fault.status, body=fault.xml().encode(), headers=headers)
    if auth is not None:
        # No credentials came: offer HTTP Digest and Basic too, for clients that speak only those.
        for name, value in auth.challenge(client=request.remote or ""):
            resp.headers.add(name, value)
    return resp


def _vsc(tag: str, p: StreamProfile) -> str:
    return video_source_configuration_xml(tag, p.camera, p.width, p.height)
