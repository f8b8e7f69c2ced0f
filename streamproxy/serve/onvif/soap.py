"""SOAP 1.2 for the ONVIF device: a parser that refuses DTDs, envelopes and faults, WS-Security tokens.

Everything here reads bytes from the network, so it is strict and small:
* `parse_envelope` builds an ElementTree from expat directly and refuses any DOCTYPE or entity
  declaration (no entity expansion at all: no billion laughs, no external entities), so stdlib
  parsing is safe without defusedxml; the body size is bounded by the caller.
* `SoapFault` carries the SOAP 1.2 code, the ONVIF subcodes (`ter:...`) and the HTTP status the SOAP
  1.2 HTTP binding gives it (Sender: 400, Receiver and VersionMismatch: 500).
* `UsernameToken` and `check_digest`: WS-Security UsernameToken with PasswordDigest,
  Base64(SHA1(nonce + created + password)).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
TDS = "http://www.onvif.org/ver10/device/wsdl"
TRT = "http://www.onvif.org/ver10/media/wsdl"
TT = "http://www.onvif.org/ver10/schema"
TER = "http://www.onvif.org/ver10/error"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PASSWORD_DIGEST = "#PasswordDigest"

CONTENT_TYPE = "application/soap+xml; charset=utf-8"
_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<env:Envelope xmlns:env="{SOAP12}" xmlns:tt="{TT}" xmlns:tds="{TDS}" xmlns:trt="{TRT}" xmlns:ter="{TER}">'
)


class SoapFault(Exception):
    """A SOAP 1.2 fault: `code` is Sender/Receiver/VersionMismatch, `subcodes` the ONVIF ones (ter:...)."""

    def __init__(self, code: str, subcodes: tuple[str, ...], reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.subcodes = subcodes
        self.reason = reason
        self.status = status if status is not None else (400 if code == "Sender" else 500)

    def xml(self) -> str:
        sub = ""
        for value in reversed(self.subcodes):  # innermost last: build it from the inside out
            sub = f"<env:Subcode><env:Value>ter:{value}</env:Value>{sub}</env:Subcode>"
        return envelope(
            f"<env:Fault><env:Code><env:Value>env:{self.code}</env:Value>{sub}</env:Code>"
            f'<env:Reason><env:Text xml:lang="en">{escape(self.reason)}</env:Text></env:Reason></env:Fault>'
        )


def sender(reason: str, *subcodes: str) -> SoapFault:
    return SoapFault("Sender", subcodes, reason)


def receiver(reason: str, *subcodes: str) -> SoapFault:
    return SoapFault("Receiver", subcodes, reason)


def not_authorized(status: int = 400) -> SoapFault:
    return SoapFault("Sender", ("NotAuthorized",), "Sender not Authorized", status)


def action_not_supported(operation: str) -> SoapFault:
    return receiver(f"{operation} is not supported", "ActionNotSupported")


def envelope(body: str) -> str:
    return f"{_HEAD}<env:Body>{body}</env:Body></env:Envelope>"


def _forbidden(*_args: object) -> None:
    raise sender("DTDs and entity declarations are not allowed", "WellFormed")


def safe_parse(data: bytes) -> ET.Element:
    """An ElementTree of `data` ({ns}tag names, like ET), refusing DTDs and entities."""
    builder = ET.TreeBuilder()
    p = expat.ParserCreate(namespace_separator="}")
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def qname(name: str) -> str:
        return "{" + name if "}" in name else name

    def start(name: str, attrs: dict[str, str]) -> None:
        builder.start(qname(name), {qname(k): v for k, v in attrs.items()})

    p.StartDoctypeDeclHandler = _forbidden
    p.EntityDeclHandler = _forbidden
    p.UnparsedEntityDeclHandler = _forbidden
    p.ExternalEntityRefHandler = _forbidden  # type: ignore[assignment]
    p.StartElementHandler = start
    p.EndElementHandler = lambda name: builder.end(qname(name))
    p.CharacterDataHandler = builder.data
    try:
        p.Parse(data, True)
        root = builder.close()
    except expat.ExpatError as err:
        raise sender(f"malformed XML: {expat.ErrorString(err.code)}", "WellFormed") from None
    except (ValueError, IndexError, AssertionError):  # builder.close() of an empty or broken document
        raise sender("malformed XML", "WellFormed") from None
    return root


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed SOAP request: the operation element in the Body and the optional Header."""

    namespace: str
    operation: str
    element: ET.Element
    header: ET.Element | None

    def text(self, local: str) -> str | None:
        """The text of the first descendant of the operation called `local` (any namespace)."""
        for el in self.element.iter():
            if el.tag.rpartition("}")[2] == local:
                return (el.text or "").strip()
        return None


def parse_envelope(data: bytes) -> Request:
    root = safe_parse(data)
    if root.tag == f"{{{SOAP11}}}Envelope":
        raise SoapFault(
            "VersionMismatch", (), "SOAP 1.2 envelopes only (http://www.w3.org/2003/05/soap-envelope)"
        )
    if root.tag != f"{{{SOAP12}}}Envelope":
        raise sender("not a SOAP 1.2 envelope", "InvalidArgVal")
    header = root.find(f"{{{SOAP12}}}Header")
    body = root.find(f"{{{SOAP12}}}Body")
    if body is None:
        raise sender("no SOAP Body", "InvalidArgVal")
    ops = [child for child in body if isinstance(child.tag, str)]
    if not ops:
        raise sender("empty SOAP Body", "InvalidArgVal")
    ns, _, local = ops[0].tag[1:].partition("}") if ops[0].tag.startswith("{") else ("", "", ops[0].tag)
    return Request(ns, local, ops[0], header)


# --- WS-Security ---
@dataclass(frozen=True, slots=True)
class UsernameToken:
    username: str
    digest: bytes  # the decoded PasswordDigest
    nonce: bytes
    created: str  # as sent: the digest is over these exact characters
    created_at: dt.datetime


def username_token(header: ET.Element | None) -> UsernameToken | None:
    """The UsernameToken of a request, or None when there is none. A token that is there but cannot be
    a PasswordDigest (text password, no nonce or Created, bad Base64) is a NotAuthorized fault."""
    if header is None:
        return None
    tok = header.find(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if tok is None:
        return None
    user = tok.findtext(f"{{{WSSE}}}Username")
    pw = tok.find(f"{{{WSSE}}}Password")
    nonce = tok.findtext(f"{{{WSSE}}}Nonce")
    created = tok.findtext(f"{{{WSU}}}Created")
    # No Type is PasswordText by the WS-Security default: refused, a clear-text password over HTTP.
    if not user or pw is None or not pw.get("Type", "").endswith(PASSWORD_DIGEST) or not nonce or not created:
        raise not_authorized()
    try:
        digest = base64.b64decode((pw.text or "").strip(), validate=True)
        nonce_b = base64.b64decode(nonce.strip(), validate=True)
        created = created.strip()
        when = dt.datetime.fromisoformat(created)
    except (binascii.Error, ValueError):
        raise not_authorized() from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # a Created without zone is UTC (WS-Security's xsd:dateTime use)
    if not (1 <= len(nonce_b) <= 128) or len(digest) != 20:
        raise not_authorized()
    return UsernameToken(user.strip(), digest, nonce_b, created, when)


def password_digest(nonce: bytes, created: str, password: str) -> bytes:
    return hashlib.sha1(nonce + created.encode() + password.encode()).digest()


def check_digest(token: UsernameToken, password: str) -> bool:
    return hmac.compare_digest(password_digest(token.nonce, token.created, password), token.digest)


# --- pieces of answers shared by the media services (ver10 onvif.py, ver20 onvif_media2.py) ---

# ONVIF names an H.264 profile by its profile_idc (ITU-T H.264 A.2): tt:H264Profile (ver10) and
# tt:VideoEncodingProfiles (ver20) both have Baseline, Main, Extended and High. Neither has Constrained
# Baseline (Baseline with constraint_set1): it is reported as Baseline, which every client can decode it as.
_H264_PROFILES = {66: "Baseline", 77: "Main", 88: "Extended"}


def h264_profile(sps: bytes | None, preset: str) -> str:
    """The ONVIF name of the profile a stream is encoded in: from its SPS (NAL header byte, then
    profile_idc) once there is one, else what libx264 makes with `preset` (encoder.preset)."""
    if sps is not None and len(sps) >= 2:
        idc = sps[1]
        if idc in _H264_PROFILES:
            return _H264_PROFILES[idc]
        if idc >= 100:  # High and its 10-bit/4:2:2/4:4:4 siblings: High is ONVIF's nearest
            return "High"
    # Before the first keyframe: ultrafast turns CABAC and the 8x8 transform off (Constrained Baseline,
    # with bframes=0 as live/encode.py sets); every other preset keeps the 8x8 transform (High).
    return "Baseline" if preset == "ultrafast" else "High"


def range_xml(tag: str, lo: int, hi: int) -> str:
    """tt:<tag> with Min and Max."""
    return f"<tt:{tag}><tt:Min>{lo}</tt:Min><tt:Max>{hi}</tt:Max></tt:{tag}>"


def video_source_configuration_xml(tag: str, camera: str, width: int, height: int) -> str:
    """A camera's video source configuration (token: the camera), at the size it is encoded."""
    return (
        f"<{tag} token={quoteattr(camera)}><tt:Name>{escape(camera)}</tt:Name><tt:UseCount>1</tt:UseCount>"
        f"<tt:SourceToken>{escape(camera)}</tt:SourceToken>"
        f'<tt:Bounds x="0" y="0" width="{width}" height="{height}"/></{tag}>'
    )
