"""SDP (RFC 8866) as this proxy reads and writes it: one parser and one builder.

Read: a camera's DESCRIBE answer (rtsp/client.py picks its video track) and a browser's WHEP offer
(serve/webrtc.py checks that it offers H.264 before aiortc sees it). Both come from the network, so
`parse` never raises: lines it does not understand are skipped, and what a caller needs but does
not find is the caller's error to name. Written: the DESCRIBE answer of our RTSP server (`build_video`).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field


@dataclass(slots=True)
class Media:
    """One m= section: its kind ("video", "audio", ...), payload types and their attributes."""

    kind: str
    payload_types: list[str]
    rtpmap: dict[str, str] = field(default_factory=dict)  # payload type -> "H264/90000"
    fmtp: dict[str, str] = field(default_factory=dict)  # payload type -> "packetization-mode=1;..."
    control: str | None = None

    def encoding(self, pt: str) -> tuple[str, str]:
        """(upper-case encoding name, clock rate text) of a payload type; ("", "") when not mapped."""
        name, _, rate = self.rtpmap.get(pt, "").partition("/")
        return name.strip().upper(), rate.split("/")[0].strip()

    def params(self, pt: str) -> dict[str, str]:
        """The fmtp parameters of a payload type, keys lower-case."""
        return fmtp_params(self.fmtp.get(pt, ""))


@dataclass(slots=True)
class Description:
    control: str | None = None  # the session-level a=control
    media: list[Media] = field(default_factory=list)


def parse(text: str) -> Description:
    """The session control and every m= section with its rtpmap, fmtp and control attributes."""
    out = Description()
    current: Media | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            parts = line[2:].split()
            current = Media(kind=parts[0].lower() if parts else "", payload_types=parts[3:])
            out.media.append(current)
        elif line.startswith("a=control:"):
            value = line[len("a=control:") :].strip()
            if current is None:
                out.control = value
            else:
                current.control = value
        elif current is not None and line.startswith("a=rtpmap:"):
            pt, _, enc = line[len("a=rtpmap:") :].partition(" ")
            current.rtpmap[pt.strip()] = enc.strip()
        elif current is not None and line.startswith("a=fmtp:"):
            pt, _, params = line[len("a=fmtp:") :].partition(" ")
            current.fmtp[pt.strip()] = params.strip()
    return out


def fmtp_params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(";"):
        k, sep, v = item.strip().partition("=")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


def build_video(
    *,
    session_name: str,
    tool: str,
    origin_ip: str,
    control: str,
    sps: bytes,
    pps: bytes,
    profile_level_id: str,
    fps: float,
    width: int,
    height: int,
) -> bytes:
    """The DESCRIBE answer for one H.264 track (payload type 96, packetization-mode 1, RFC 6184)."""
    sprop = ",".join(base64.b64encode(x).decode() for x in (sps, pps))
    ip = origin_ip if origin_ip and ":" not in origin_ip else "0.0.0.0"
    lines = [
        "v=0",
        f"o=- {secrets.randbits(48)} 1 IN IP4 {ip}",
        f"s={session_name}",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        f"a=tool:{tool}",
        "a=range:npt=now-",
        "a=control:*",
        "m=video 0 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        f"a=fmtp:96 packetization-mode=1;profile-level-id={profile_level_id};sprop-parameter-sets={sprop}",
        f"a=control:{control}",
    ]
    if fps > 0:
        lines.append(f"a=framerate:{fps:g}")
    lines.append(f"a=x-dimensions:{width},{height}")
    return ("\r\n".join(lines) + "\r\n").encode()
