"""ONVIF Media2 (ver20, tr2) for clients that prefer it, answered from the ver10 service's profiles.

Recent NVRs and VMS (Milestone, Nx, Hikvision) switch to Media2 when GetServices lists it. This module
adds the Media2 operations a VMS uses while adding a camera to serve/onvif/service.py's OnvifService (its op
table, auth, faults and profiles): `register(service, snapshot_path)` is called once at the end of
OnvifService.__init__, and GetServices lists `MEDIA2_PATH` with `capabilities(service)`. Dispatch is by
the body's namespace, so the path only tells a client where to send.

The same profiles as ver10: per camera `<camera>_main` and `<camera>_sub`, the video source
configuration token is the camera, the video encoder configuration token is the profile's. GetStreamUri
answers RtspUnicast (RTP over UDP) and RTSP (RTP interleaved over TCP), both our RTSP server's URL; no
multicast, RTSPS or RTSP over HTTP. Set/Create/Add/Remove/Delete calls change nothing and are logged
once per camera and operation by the ver10 service's `_accepted` (one log for both versions). Audio and
metadata lists are empty: no audio leaves the proxy. Anything else is ter:ActionNotSupported.

It imports nothing of onvif.py (which imports it): what it reads of the service is `Media2Host`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

from streamproxy.serve.onvif.soap import Request, range_xml, receiver, sender, video_source_configuration_xml

TR2 = "http://www.onvif.org/ver20/media/wsdl"
MEDIA2_PATH = "/onvif/media2_service"
# The envelope (onvif_soap._HEAD) declares tt/tds/trt/ter only: every tr2 element we answer declares
# its own prefix, so that the ver10 envelope needs no change.
_XMLNS = f'xmlns:tr2="{TR2}"'
PROTOCOLS = ("RtspUnicast", "RTSP")  # RTP over UDP / over the RTSP TCP connection: both our server's URL

Handler = Callable[[Request, web.Request], str]


class Profile(Protocol):
    """What Media2 reads of one profile (onvif.StreamProfile)."""

    @property
    def camera(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def fps(self) -> float: ...
    @property
    def gov_length(self) -> int: ...
    @property
    def bitrate_kbps(self) -> int: ...
    @property
    def h264_profile(self) -> str: ...


class Media2Host(Protocol):
    """What Media2 reads of the ver10 service (onvif.OnvifService)."""

    _ops: dict[tuple[str, str], Handler]

    def cameras(self) -> list[str]: ...
    def profiles(self, camera: str) -> Sequence[Profile]: ...
    def _find_profile(self, token: str | None) -> Profile: ...
    def _host(self, request: web.Request) -> str: ...
    def _rtsp_port(self) -> int: ...
    def _accepted(self, op: str, prefix: str = "trt") -> Handler: ...


def capabilities(host: Media2Host) -> str:
    """The tr2:Capabilities element (GetServiceCapabilities and GetServices with IncludeCapability)."""
    n = sum(len(host.profiles(c)) for c in host.cameras())
    return (
        f'<tr2:Capabilities {_XMLNS} SnapshotUri="true" Rotation="false" VideoSourceMode="false" OSD="false" '
        'TemporaryOSDText="false" Mask="false" SourceMask="false">'
        f'<tr2:ProfileCapabilities MaximumNumberOfProfiles="{n}" ConfigurationsSupported="VideoSource VideoEncoder"/>'
        '<tr2:StreamingCapabilities RTSPStreaming="true" RTPMulticast="false" RTP_RTSP_TCP="true" '
        'NonAggregateControl="false" AutoStartMulticast="false"/></tr2:Capabilities>'
    )


def register(host: Media2Host, snapshot_path: Callable[[str], str]) -> None:
    """Adds the Media2 operations to the service's op table (once, from its __init__)."""
    m = _Media2(host, snapshot_path)
    ops: dict[str, Handler] = {
        "GetServiceCapabilities": lambda r, h: _resp("GetServiceCapabilities", capabilities(host)),
        "GetProfiles": m.profiles,
        "GetVideoSourceConfigurations": m.vsc_list,
        "GetVideoEncoderConfigurations": m.vec_list,
        "GetVideoSourceConfigurationOptions": m.vsc_options,
        "GetVideoEncoderConfigurationOptions": m.vec_options,
        "GetVideoEncoderInstances": m.encoder_instances,
        "GetStreamUri": m.stream_uri,
        "GetSnapshotUri": m.snapshot_uri,
        "CreateProfile": m.create_profile,
    }
    # No audio ever leaves the proxy (speech is personal data), no metadata or analytics stream.
    for op in (
        "GetAudioSourceConfigurations",
        "GetAudioEncoderConfigurations",
        "GetAudioOutputConfigurations",
        "GetAudioDecoderConfigurations",
        "GetMetadataConfigurations",
        "GetAnalyticsConfigurations",
    ):
        ops[op] = _empty(op)
    for op in (
        "SetVideoEncoderConfiguration",
        "SetVideoSourceConfiguration",
        "AddConfiguration",
        "RemoveConfiguration",
        "DeleteProfile",
        "SetSynchronizationPoint",
    ):
        ops[op] = m.accepted(op)
    for op, handler in ops.items():
        host._ops[(TR2, op)] = handler


class _Media2:
    def __init__(self, host: Media2Host, snapshot_path: Callable[[str], str]) -> None:
        self.host = host
        self.snapshot_path = snapshot_path

    def _all(self) -> list[Profile]:
        return [p for c in self.host.cameras() for p in self.host.profiles(c)]

    def _by_config(self, token: str) -> Profile:
        """The profile whose video encoder configuration `token` is (the profile's own token)."""
        p = next((q for q in self._all() if q.token == token), None)
        if p is None:
            raise sender(f"no configuration {token!r}", "InvalidArgVal", "NoConfig")
        return p

    def _selected(self, req: Request) -> list[Profile]:
        """tr2:GetConfiguration's filter for the encoder: ConfigurationToken, else ProfileToken, else all."""
        config, profile = req.text("ConfigurationToken"), req.text("ProfileToken")
        if config:
            return [self._by_config(config)]
        if profile:
            return [self.host._find_profile(profile)]
        return self._all()

    def _selected_cameras(self, req: Request) -> list[str]:
        """The same for the video source: its configuration token is the camera."""
        config, profile = req.text("ConfigurationToken"), req.text("ProfileToken")
        if config:
            if config not in self.host.cameras():
                raise sender(f"no configuration {config!r}", "InvalidArgVal", "NoConfig")
            return [config]
        if profile:
            return [self.host._find_profile(profile).camera]
        return self.host.cameras()

    def _main(self, camera: str) -> Profile:
        return self.host.profiles(camera)[0]

    def profiles(self, req: Request, request: web.Request) -> str:
        token = req.text("Token")
        chosen = [self.host._find_profile(token)] if token else self._all()
        types = {(el.text or "").strip() for el in req.element if el.tag.rpartition("}")[2] == "Type"}
        # Media2: only the configuration types asked for are included ("All": every one we have).
        with_vsc = bool(types & {"All", "VideoSource"})
        with_vec = bool(types & {"All", "VideoEncoder"})
        out = []
        for p in chosen:
            configs = ""
            if with_vsc or with_vec:
                vsc = _vsc("tr2:VideoSource", self._main(p.camera)) if with_vsc else ""
                vec = _vec_xml("tr2:VideoEncoder", p) if with_vec else ""
                configs = f"<tr2:Configurations>{vsc}{vec}</tr2:Configurations>"
            out.append(
                f'<tr2:Profiles token={quoteattr(p.token)} fixed="true"><tr2:Name>{escape(p.token)}</tr2:Name>'
                f"{configs}</tr2:Profiles>"
            )
        return _resp("GetProfiles", "".join(out))

    def vsc_list(self, req: Request, request: web.Request) -> str:
        body = "".join(_vsc("tr2:Configurations", self._main(c)) for c in self._selected_cameras(req))
        return _resp("GetVideoSourceConfigurations", body)

    def vec_list(self, req: Request, request: web.Request) -> str:
        body = "".join(_vec_xml("tr2:Configurations", p) for p in self._selected(req))
        return _resp("GetVideoEncoderConfigurations", body)

    def vsc_options(self, req: Request, request: web.Request) -> str:
        cams = self._selected_cameras(req)
        p = self._main(cams[0])
        n = sum(len(self.host.profiles(c)) for c in cams)
        sources = "".join(
            f"<tt:VideoSourceTokensAvailable>{escape(c)}</tt:VideoSourceTokensAvailable>" for c in cams
        )
        return _resp(
            "GetVideoSourceConfigurationOptions",
            f'<tr2:Options MaximumNumberOfProfiles="{n}"><tt:BoundsRange>{range_xml("XRange", 0, 0)}'
            f"{range_xml('YRange', 0, 0)}{range_xml('WidthRange', p.width, p.width)}"
            f"{range_xml('HeightRange', p.height, p.height)}</tt:BoundsRange>{sources}</tr2:Options>",
        )

    def vec_options(self, req: Request, request: web.Request) -> str:
        # The one size, rate, GOP, profile and bitrate each profile's encoder makes: a VMS cannot choose
        # another (Set is a no-op).
        out = []
        for p in self._selected(req):
            out.append(
                f'<tr2:Options GovLengthRange="{p.gov_length} {p.gov_length}" FrameRatesSupported="{p.fps:g}" '
                f'ProfilesSupported="{p.h264_profile}" ConstantBitRateSupported="false" '
                'GuaranteedFrameRateSupported="false">'
                f"<tt:Encoding>H264</tt:Encoding>{range_xml('QualityRange', 0, 0)}<tt:ResolutionsAvailable>"
                f"<tt:Width>{p.width}</tt:Width><tt:Height>{p.height}</tt:Height></tt:ResolutionsAvailable>"
                f"{range_xml('BitrateRange', p.bitrate_kbps, p.bitrate_kbps)}</tr2:Options>"
            )
        return _resp("GetVideoEncoderConfigurationOptions", "".join(out))

    def encoder_instances(self, req: Request, request: web.Request) -> str:
        self._by_config(req.text("ConfigurationToken") or "")
        return _resp(
            "GetVideoEncoderInstances",
            "<tr2:Info><tr2:Codec><tr2:Encoding>H264</tr2:Encoding><tr2:Number>1</tr2:Number></tr2:Codec>"
            "<tr2:Total>1</tr2:Total></tr2:Info>",
        )

    def stream_uri(self, req: Request, request: web.Request) -> str:
        p = self.host._find_profile(req.text("ProfileToken"))
        protocol = req.text("Protocol") or ""
        if protocol not in PROTOCOLS:
            raise sender(
                f"{protocol or 'no protocol'} is not offered: {' or '.join(PROTOCOLS)}",
                "InvalidArgVal",
                "InvalidStreamSetup",
            )
        host = self.host._host(request)
        hostname = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
        uri = f"rtsp://{hostname}:{self.host._rtsp_port()}/{quote(p.camera)}{p.path}"
        return _resp("GetStreamUri", f"<tr2:Uri>{escape(uri)}</tr2:Uri>")

    def snapshot_uri(self, req: Request, request: web.Request) -> str:
        p = self.host._find_profile(req.text("ProfileToken"))
        uri = f"http://{self.host._host(request)}{self.snapshot_path(p.camera)}"
        return _resp("GetSnapshotUri", f"<tr2:Uri>{escape(uri)}</tr2:Uri>")

    def create_profile(self, req: Request, request: web.Request) -> str:
        # No new encoder exists: answer the token of the profile the name points at (else the first
        # camera's main profile); the VMS then reads it with GetProfiles.
        wanted = req.text("Name") or ""
        profiles = self._all()
        if not profiles:
            raise receiver("no camera to make a profile of", "Action", "MaxNVTProfiles")
        p = next((q for q in profiles if wanted in (q.token, q.camera)), profiles[0])
        self.host._accepted("CreateProfile", prefix="tr2")(_naming(req, p.token), request)  # logged once
        return _resp("CreateProfile", f"<tr2:Token>{escape(p.token)}</tr2:Token>")

    def accepted(self, op: str) -> Handler:
        log_once = self.host._accepted(op, prefix="tr2")

        def answer(req: Request, request: web.Request) -> str:
            # DeleteProfile names its profile by Token, which the ver10 log does not read.
            token = req.text("Token")
            unnamed = req.text("ProfileToken") is None and req.text("ConfigurationToken") is None
            log_once(_naming(req, token) if token and unnamed else req, request)
            return f"<tr2:{op}Response {_XMLNS}/>"  # log_once's answer lacks the tr2 declaration

        return answer


def _naming(req: Request, token: str) -> Request:
    """`req` as seen by the ver10 service's once-per-camera log: naming the profile `token`."""
    el = ET.Element("ProfileToken")
    el.text = token
    return Request(req.namespace, req.operation, el, req.header)


def _resp(op: str, inner: str) -> str:
    return f"<tr2:{op}Response {_XMLNS}>{inner}</tr2:{op}Response>"


def _empty(op: str) -> Handler:
    return lambda req, request: f"<tr2:{op}Response {_XMLNS}/>"


def _vec_xml(tag: str, p: Profile) -> str:
    """tt:VideoEncoder2Configuration of a profile (token: the profile's), with the stream's H.264
    profile and the encoder's target bitrate in kbit/s, as ver10 reports them (the proxy's config
    sets them, not a VMS). ConstantBitRate is false: x264 holds the rate with a one-second VBV and
    no filler, so a quiet picture takes less."""
    return (
        f'<{tag} token={quoteattr(p.token)} GovLength="{p.gov_length}" Profile="{p.h264_profile}">'
        f"<tt:Name>{escape(p.token)}</tt:Name><tt:UseCount>1</tt:UseCount><tt:Encoding>H264</tt:Encoding>"
        f"<tt:Resolution><tt:Width>{p.width}</tt:Width><tt:Height>{p.height}</tt:Height></tt:Resolution>"
        f'<tt:RateControl ConstantBitRate="false"><tt:FrameRateLimit>{p.fps:g}</tt:FrameRateLimit>'
        f"<tt:BitrateLimit>{p.bitrate_kbps}</tt:BitrateLimit></tt:RateControl>"
        "<tt:Multicast><tt:Address><tt:Type>IPv4</tt:Type><tt:IPv4Address>0.0.0.0</tt:IPv4Address></tt:Address>"
        "<tt:Port>0</tt:Port><tt:TTL>0</tt:TTL><tt:AutoStart>false</tt:AutoStart></tt:Multicast>"
        f"<tt:Quality>0</tt:Quality></{tag}>"
    )


def _vsc(tag: str, p: Profile) -> str:
    return video_source_configuration_xml(tag, p.camera, p.width, p.height)
