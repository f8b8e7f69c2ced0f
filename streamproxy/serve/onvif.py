"""ONVIF Profile S device and media services (ver10), served under the HTTP server.

Routes (when `onvif.enabled`): POST /onvif/device_service, /onvif/media_service and /onvif/media2_service
(ver20: serve/onvif_media2.py registers its operations here). An operation
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

Auth: with `server.users` set, every operation but GetSystemDateAndTime (open, as the ONVIF core spec
requires, so that clients can correct their clock) needs a WS-Security UsernameToken with a
PasswordDigest (Created within ±5 min of our clock, each nonce accepted once) or HTTP Digest/Basic
(rtsp/auth.py's checks, failure counter and back-off, shared by both). Wrong credentials: the
ter:NotAuthorized fault (HTTP 400 for a bad token, 401 with a challenge when no credentials came).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from streamproxy.config import AppConfig, OnvifConfig, User
from streamproxy.hub import StreamHub
from streamproxy.live.encode import sub_stream_size
from streamproxy.rtsp.auth import Authenticator, AuthResult
from streamproxy.serve import onvif_media2
from streamproxy.serve.onvif_soap import (
    CONTENT_TYPE,
    TDS,
    TRT,
    Request,
    SoapFault,
    UsernameToken,
    action_not_supported,
    check_digest,
    envelope,
    not_authorized,
    parse_envelope,
    range_xml,
    receiver,
    sender,
    username_token,
    video_source_configuration_xml,
)

log = logging.getLogger(__name__)

DEVICE_PATH = "/onvif/device_service"
MEDIA_PATH = "/onvif/media_service"
PATHS = (DEVICE_PATH, MEDIA_PATH, onvif_media2.MEDIA2_PATH)
# ONVIF requests are a few KiB (the largest a VMS sends is a SetVideoEncoderConfiguration); larger is
# not an ONVIF client. Below server.limits.max_body_bytes, so the answer is a SOAP fault, not a 413.
MAX_BODY_BYTES = 32 * 1024
TOKEN_WINDOW_S = 300.0  # |Created - now| accepted (ONVIF clients sync to GetSystemDateAndTime)
MAX_NONCES = 10_000  # remembered UsernameToken nonces (only authenticated ones are stored)
OPEN_OPERATIONS = frozenset({(TDS, "GetSystemDateAndTime")})
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.%a-zA-Z]+\]|[A-Za-z0-9.\-_]+)(:\d{1,5})?$")


class OnvifHost(Protocol):
    """What the ONVIF service reads of the running service (http.py's Service is one)."""

    cfg: AppConfig
    hubs: dict[str, StreamHub]
    sub_hubs: dict[str, StreamHub]  # cameras with a sub stream


def snapshot_path(camera: str) -> str:
    """The HTTP path of a camera's snapshot (served by http.py)."""
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


class OnvifAuthenticator(Authenticator):
    """rtsp/auth.py's Authenticator (HTTP Digest/Basic, failure counter, back-off) plus WS-Security
    UsernameTokens: each failure counts in the same per-address tally as a wrong HTTP password."""

    def __init__(self, users: list[User], realm: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(users, realm, protocol="http")
        self._wall = clock
        self._nonces: OrderedDict[tuple[str, bytes], float] = OrderedDict()  # -> Created (epoch s)
        # Created times at or before this are refused: their nonces may have been forgotten (table full).
        self._floor = float("-inf")

    def _check_token(self, token: UsernameToken) -> str | None:
        # An unknown user is checked against a dummy: same cost and answer as a wrong password.
        password, known = self.password_for(token.username)
        ok = check_digest(token, password) and known
        created = token.created_at.timestamp()
        now = self._wall()
        if not ok or abs(created - now) > TOKEN_WINDOW_S or created <= self._floor:
            return None
        key = (token.username, token.nonce)
        if key in self._nonces:
            log.warning("onvif: replayed UsernameToken nonce for user %r refused", token.username)
            return None
        self._remember(key, created, now)
        return token.username

    def _remember(self, key: tuple[str, bytes], created: float, now: float) -> None:
        self._nonces[key] = created
        # Oldest-inserted first; a token outside the window is refused anyway, so its nonce can go.
        while self._nonces:
            oldest_key, oldest = next(iter(self._nonces.items()))
            if len(self._nonces) <= MAX_NONCES and oldest >= now - TOKEN_WINDOW_S:
                break
            del self._nonces[oldest_key]
            if oldest >= now - TOKEN_WINDOW_S:
                self._floor = max(self._floor, oldest)  # forgotten while still fresh: refuse its era

    async def verify_token(self, token: UsernameToken, client: str) -> AuthResult:
        return await self.verify_with(lambda: self._check_token(token), "wsse", client, "onvif")

    def remembered_nonces(self) -> int:
        return len(self._nonces)


@dataclass(frozen=True, slots=True)
class OnvifDevice:
    """Who answers: the whole proxy as one multi-channel device (cameras None: every camera, on the
    HTTP port), or one camera as a device of its own (`cameras[].onvif_port`), for a VMS that takes
    single-channel devices only. A per-camera device has its own serial and name scope."""

    cameras: tuple[str, ...] | None = None
    serial_suffix: str = ""  # appended to onvif.device.serial: "-<camera>"
    name: str | None = None  # the name scope (None: onvif.scopes.name)


def camera_device(camera: str) -> OnvifDevice:
    return OnvifDevice((camera,), f"-{camera}", camera)


class OnvifService:
    """The SOAP endpoint: `handle` is the aiohttp handler of both paths."""

    def __init__(self, app: OnvifHost, device: OnvifDevice | None = None) -> None:
        self.app = app
        self.cfg = app.cfg
        self.device = device or OnvifDevice()
        self.auth = OnvifAuthenticator(app.cfg.server.users, app.cfg.server.realm)
        self._logged_sets: set[tuple[str, str]] = set()
        self.last_ms = 0.0  # the last answer's handling time (tests and benchmarks print it)
        self._ops: dict[tuple[str, str], Callable[[Request, web.Request], str]] = {
            (TDS, "GetSystemDateAndTime"): self._system_date_and_time,
            (TDS, "GetCapabilities"): self._capabilities,
            (TDS, "GetServices"): self._services,
            (TDS, "GetServiceCapabilities"): lambda r, h: _resp("tds", "GetServiceCapabilities", _DEVICE_CAPS),
            (TDS, "GetDeviceInformation"): self._device_information,
            (TDS, "GetScopes"): self._scopes,
            (TDS, "GetHostname"): self._hostname,
            (TDS, "GetNetworkInterfaces"): self._network_interfaces,
            (TDS, "GetDNS"): lambda r, h: _resp("tds", "GetDNS", "<tds:DNSInformation><tt:FromDHCP>false"
                                                "</tt:FromDHCP></tds:DNSInformation>"),
            (TDS, "GetNTP"): lambda r, h: _resp("tds", "GetNTP", "<tds:NTPInformation><tt:FromDHCP>false"
                                                "</tt:FromDHCP></tds:NTPInformation>"),
            (TDS, "GetDiscoveryMode"): lambda r, h: _resp("tds", "GetDiscoveryMode", "<tds:DiscoveryMode>"
                                                          f"{_discovery_mode(self.cfg)}</tds:DiscoveryMode>"),
            (TRT, "GetServiceCapabilities"): self._media_capabilities,
            (TRT, "GetProfiles"): self._profiles,
            (TRT, "GetProfile"): self._profile,
            (TRT, "GetVideoSources"): self._video_sources,
            (TRT, "GetVideoSourceConfigurations"): self._vsc_list("GetVideoSourceConfigurations"),
            (TRT, "GetCompatibleVideoSourceConfigurations"): self._vsc_list("GetCompatibleVideoSourceConfigurations"),
            (TRT, "GetVideoSourceConfiguration"): self._vsc_one,
            (TRT, "GetVideoSourceConfigurationOptions"): self._vsc_options,
            (TRT, "GetVideoEncoderConfigurations"): self._vec_list("GetVideoEncoderConfigurations"),
            (TRT, "GetCompatibleVideoEncoderConfigurations"): self._vec_list("GetCompatibleVideoEncoderConfigurations"),
            (TRT, "GetVideoEncoderConfiguration"): self._vec_one,
            (TRT, "GetVideoEncoderConfigurationOptions"): self._vec_options,
            (TRT, "GetGuaranteedNumberOfVideoEncoderInstances"): self._guaranteed,
            (TRT, "GetStreamUri"): self._stream_uri,
            (TRT, "GetSnapshotUri"): self._snapshot_uri,
        }
        # No audio ever leaves the proxy (speech is personal data), no metadata or analytics stream.
        for op in (
            "GetAudioSources", "GetAudioSourceConfigurations", "GetAudioEncoderConfigurations",
            "GetAudioOutputs", "GetAudioOutputConfigurations", "GetAudioDecoderConfigurations",
            "GetCompatibleAudioSourceConfigurations", "GetCompatibleAudioEncoderConfigurations",
            "GetCompatibleAudioOutputConfigurations", "GetCompatibleAudioDecoderConfigurations",
            "GetMetadataConfigurations", "GetCompatibleMetadataConfigurations",
            "GetVideoAnalyticsConfigurations", "GetCompatibleVideoAnalyticsConfigurations",
        ):
            self._ops[(TRT, op)] = _empty(op)
        for op in (
            "SetVideoEncoderConfiguration", "SetVideoSourceConfiguration", "AddVideoEncoderConfiguration",
            "AddVideoSourceConfiguration", "RemoveVideoEncoderConfiguration", "RemoveVideoSourceConfiguration",
            "RemoveAudioEncoderConfiguration", "RemoveAudioSourceConfiguration", "RemoveMetadataConfiguration",
            "RemovePTZConfiguration", "RemoveVideoAnalyticsConfiguration", "DeleteProfile",
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
        if self.auth.enabled and key not in OPEN_OPERATIONS:
            await self._authenticate(req, request)
        op = self._ops.get(key)
        if op is None:
            log.info("onvif: unsupported operation %s {%s}", req.operation, req.namespace)
            raise action_not_supported(req.operation)
        return op(req, request)

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
        """host[:port] as the client reached us (Host header), else our socket's address."""
        host = request.headers.get("Host", "")
        if host and _HOST_RE.match(host):
            return host
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        if not sock:
            return self.cfg.server.host
        addr, port = sock[0], sock[1]
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    def _rtsp_port(self) -> int:
        rtsp = getattr(self.app, "rtsp", None)
        port = getattr(rtsp, "port", 0) if rtsp is not None else 0
        return int(port) if port else self.cfg.server.rtsp_port

    def cameras(self) -> list[str]:
        """The cameras this device serves (the video sources), in config order."""
        only = self.device.cameras
        return [c for c in self.app.hubs if only is None or c in only]

    def profiles(self, camera: str) -> list[StreamProfile]:
        """The camera's media profiles: the main stream, then the sub stream if it has one."""
        hub = self.app.hubs.get(camera)
        codec = hub.codec if hub is not None else None
        if codec is not None:
            w, h, fps = codec.width, codec.height, codec.fps
        else:  # not seen yet: what a viewer gets now is the slate
            w, h, fps = self.cfg.slate.width, self.cfg.slate.height, self.cfg.slate.fps
        gop_s = self.cfg.encoder.gop_seconds
        timeout = int(self.cfg.server.session_timeout_s)
        out = [StreamProfile(camera, f"{camera}_main", "", w, h, fps, max(1, round(gop_s * fps)), timeout)]
        sub_hub = self.app.sub_hubs.get(camera)
        if sub_hub is not None:
            sub_codec = sub_hub.codec
            cam_cfg = next((c for c in self.cfg.cameras if c.name == camera), None)
            sub_cfg = self.cfg.sub_stream_for(cam_cfg) if cam_cfg is not None else None
            ceiling = sub_cfg.fps if sub_cfg is not None else self.cfg.sub_stream.fps
            if sub_codec is not None:
                sw, sh = sub_codec.width, sub_codec.height
            else:  # before its first frame: the size the sub stream will have for the main one
                sw, sh = sub_stream_size(sub_cfg or self.cfg.sub_stream, w, h)
            sfps = min(ceiling, fps)
            out.append(StreamProfile(camera, f"{camera}_sub", "/sub", sw, sh, sfps, max(1, round(gop_s * sfps)), timeout))
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
        categories = {el.text.strip() for el in req.element if el.text and el.tag.endswith("}Category")} or {"All"}
        parts = []
        if categories & {"All", "Device"}:
            parts.append(self._device_caps_xml(host))
        if categories & {"All", "Media"}:
            parts.append(self._media_caps_xml(host))
        if not parts:
            raise receiver(f"no {', '.join(sorted(categories))} service", "ActionNotSupported", "NoSuchService")
        return _resp("tds", "GetCapabilities", f"<tds:Capabilities>{''.join(parts)}</tds:Capabilities>")

    def _services(self, req: Request, request: web.Request) -> str:
        host = self._host(request)
        include = (req.text("IncludeCapability") or "false").lower() in ("true", "1")
        out = []
        for ns, path, caps in (
            (TDS, DEVICE_PATH, _DEVICE_CAPS), (TRT, MEDIA_PATH, self._media_caps_inner()),
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
            "tds", "GetHostname",
            f"<tds:HostnameInformation><tt:FromDHCP>false</tt:FromDHCP><tt:Name>{name}</tt:Name>"
            "</tds:HostnameInformation>",
        )

    def _network_interfaces(self, req: Request, request: web.Request) -> str:
        # The address the client reached us on (read-only); no MAC address of the host is disclosed.
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        addr = sock[0] if sock else self.cfg.server.host
        ipv4 = ""
        if addr and ":" not in addr:
            ipv4 = (
                "<tt:IPv4><tt:Enabled>true</tt:Enabled><tt:Config><tt:Manual>"
                f"<tt:Address>{escape(addr)}</tt:Address><tt:PrefixLength>32</tt:PrefixLength></tt:Manual>"
                "<tt:DHCP>false</tt:DHCP></tt:Config></tt:IPv4>"
            )
        return _resp(
            "tds", "GetNetworkInterfaces",
            '<tds:NetworkInterfaces token="eth0"><tt:Enabled>true</tt:Enabled><tt:Info><tt:Name>eth0</tt:Name>'
            f"<tt:HwAddress>00:00:00:00:00:00</tt:HwAddress></tt:Info>{ipv4}</tds:NetworkInterfaces>",
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
        return _resp("trt", "GetProfiles", "".join(self._profile_xml("Profiles", p) for p in self._all_profiles()))

    def _profile(self, req: Request, request: web.Request) -> str:
        return _resp("trt", "GetProfile", self._profile_xml("Profile", self._find_profile(req.text("ProfileToken"))))

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
            [self._camera_of_source(token)] if token else
            [self._find_profile(profile).camera] if profile else self.cameras()
        )
        p = self.profiles(cams[0])[0]
        sources = "".join(f"<tt:VideoSourceTokensAvailable>{escape(c)}</tt:VideoSourceTokensAvailable>" for c in cams)
        return _resp(
            "trt", "GetVideoSourceConfigurationOptions",
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
        # The one resolution and rate the proxy encodes: a VMS cannot choose another (Set is a no-op).
        return _resp(
            "trt", "GetVideoEncoderConfigurationOptions",
            f"<trt:Options>{range_xml('QualityRange', 0, 0)}<tt:H264><tt:ResolutionsAvailable><tt:Width>{p.width}"
            f"</tt:Width><tt:Height>{p.height}</tt:Height></tt:ResolutionsAvailable>"
            f"{range_xml('GovLengthRange', 1, 300)}{range_xml('FrameRateRange', fps, fps)}"
            f"{range_xml('EncodingIntervalRange', 1, 1)}<tt:H264ProfilesSupported>Baseline</tt:H264ProfilesSupported>"
            "<tt:H264ProfilesSupported>Main</tt:H264ProfilesSupported><tt:H264ProfilesSupported>High"
            "</tt:H264ProfilesSupported></tt:H264></trt:Options>",
        )

    def _guaranteed(self, req: Request, request: web.Request) -> str:
        self._find_profile(req.text("ConfigurationToken"))  # the token is a profile's VEC token
        return _resp(
            "trt", "GetGuaranteedNumberOfVideoEncoderInstances",
            "<trt:TotalNumber>1</trt:TotalNumber><trt:H264>1</trt:H264>",
        )

    def _stream_uri(self, req: Request, request: web.Request) -> str:
        p = self._find_profile(req.text("ProfileToken"))
        stream = req.text("Stream") or "RTP-Unicast"
        protocol = req.text("Protocol") or "RTSP"
        if stream != "RTP-Unicast" or protocol not in ("UDP", "TCP", "RTSP"):
            raise sender(f"{stream} over {protocol} is not offered: RTP-Unicast over RTSP (UDP or TCP)",
                         "InvalidArgVal", "InvalidStreamSetup")
        host = self._host(request)
        hostname = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
        uri = f"rtsp://{hostname}:{self._rtsp_port()}/{quote(p.camera)}{p.path}"
        return _resp(
            "trt", "GetStreamUri",
            f"<trt:MediaUri><tt:Uri>{escape(uri)}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>",
        )


    def _snapshot_uri(self, req: Request, request: web.Request) -> str:
        p = self._find_profile(req.text("ProfileToken"))
        uri = _url(self._host(request), snapshot_path(p.camera))
        return _resp(
            "trt", "GetSnapshotUri",
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
    """The device's scopes: GetScopes and WS-Discovery (serve/onvif_discovery.py) answer the same list.
    `name`: a per-camera device's name scope (default onvif.scopes.name)."""
    return [
        "onvif://www.onvif.org/Profile/Streaming",
        "onvif://www.onvif.org/type/video_encoder",
        "onvif://www.onvif.org/type/Network_Video_Transmitter",
        f"onvif://www.onvif.org/hardware/{quote(o.device.hardware, safe='')}",
        f"onvif://www.onvif.org/name/{quote(name if name is not None else o.scopes.name, safe='')}",
        f"onvif://www.onvif.org/location/{quote(o.scopes.location, safe='')}",
    ]


def _empty(op: str) -> Callable[[Request, web.Request], str]:
    return lambda req, request: f"<trt:{op}Response/>"


def _resp(prefix: str, op: str, inner: str) -> str:
    return f"<{prefix}:{op}Response>{inner}</{prefix}:{op}Response>"


def _url(host: str, path: str) -> str:
    return f"http://{host}{path}"




def _vec_xml(tag: str, p: StreamProfile) -> str:
    fps = max(1, round(p.fps))
    # An empty-looking but present RateControl and H264 element: UniFi Protect needs both (go2rtc's notes).
    return (
        f"<{tag} token={quoteattr(p.token)}><tt:Name>{escape(p.token)}</tt:Name><tt:UseCount>1</tt:UseCount>"
        f"<tt:Encoding>H264</tt:Encoding><tt:Resolution><tt:Width>{p.width}</tt:Width>"
        f"<tt:Height>{p.height}</tt:Height></tt:Resolution><tt:Quality>0</tt:Quality>"
        f"<tt:RateControl><tt:FrameRateLimit>{fps}</tt:FrameRateLimit><tt:EncodingInterval>1</tt:EncodingInterval>"
        "<tt:BitrateLimit>0</tt:BitrateLimit></tt:RateControl>"
        f"<tt:H264><tt:GovLength>{p.gov_length}</tt:GovLength><tt:H264Profile>Main</tt:H264Profile></tt:H264>"
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
