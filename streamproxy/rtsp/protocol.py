"""RTSP 1.0 message parsing and formatting (RFC 2326): requests in, responses out.

Pure functions and small values, no I/O: the server feeds bytes it has framed, and tests can
exercise every corner without a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

# Defaults of the size limits; the server passes server.limits' max_request_bytes / max_body_bytes.
MAX_HEAD_BYTES = 16 * 1024  # a request head larger than this is not a real client
MAX_LINE_BYTES = 8 * 1024  # the request line or one header line (a URI with a long token still fits)
MAX_HEADERS = 64  # header lines of one request (real clients send fewer than 15)
MAX_BODY_BYTES = 64 * 1024

# Methods this server implements, in the order OPTIONS lists them.
SUPPORTED_METHODS = (
    "OPTIONS",
    "DESCRIBE",
    "SETUP",
    "PLAY",
    "PAUSE",
    "TEARDOWN",
    "GET_PARAMETER",
    "SET_PARAMETER",
)
# Methods RTSP defines that a read-only server refuses with 405 (anything else is 501).
KNOWN_METHODS = (*SUPPORTED_METHODS, "ANNOUNCE", "RECORD", "REDIRECT")

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    453: "Not Enough Bandwidth",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "RTSP Version Not Supported",
}


class RtspError(Exception):
    """A request that ends in an error response; `headers` are added to that response.

    `close`: the connection cannot go on after it (the request's end, or its body's, is unknown).
    """

    def __init__(
        self,
        status: int,
        detail: str = "",
        headers: list[tuple[str, str]] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(f"{status} {REASONS.get(status, '')}: {detail}".rstrip(": "))
        self.status = status
        self.detail = detail
        self.headers = headers or []
        self.close = close


@dataclass(slots=True)
class RtspRequest:
    method: str
    uri: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; repeats joined with ", "
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def cseq(self) -> str | None:
        """The CSeq, validated by `parse_request_head` (digits only): safe to echo."""
        return self.headers.get("cseq")

    @property
    def content_length(self) -> int:
        return self.body_length()

    def body_length(self, max_body_bytes: int = MAX_BODY_BYTES) -> int:
        """Content-Length, checked: 400 when malformed, 413 over `max_body_bytes` (both close)."""
        raw = self.headers.get("content-length", "0").strip() or "0"
        try:
            n = int(raw)
        except ValueError:
            raise RtspError(400, "bad Content-Length", close=True) from None
        if n < 0:
            raise RtspError(400, "Content-Length out of range", close=True)
        if n > max_body_bytes:
            raise RtspError(413, "body too large", close=True)
        return n

    @property
    def session_id(self) -> str | None:
        raw = self.headers.get("session")
        if raw is None:
            return None
        return raw.split(";", 1)[0].strip() or None


def parse_request_head(head: bytes, max_head_bytes: int = MAX_HEAD_BYTES) -> RtspRequest:
    """Parse the request line and headers (everything up to and including the blank line).

    Lines may end in CRLF or a bare LF (tolerated as HTTP does, RFC 7230 §3.5; clients send both). Raises
    RtspError only: 400 for anything malformed (including a URI that does not parse and a CSeq that
    is not a number), 414/400 over the size limits, 505 for another RTSP version.
    """
    if len(head) > max_head_bytes:
        raise RtspError(400, "request head too large", close=True)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head.decode("latin-1")
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)  # tolerate stray CRLFs between requests
    if not lines:
        raise RtspError(400, "empty request")
    if len(lines[0]) > MAX_LINE_BYTES:
        raise RtspError(414, "request line too long", close=True)
    parts = lines[0].split()
    if len(parts) != 3:
        raise RtspError(400, "malformed request line")
    method, uri, version = parts
    if not method.isascii() or not method.replace("_", "").isalpha() or not method.isupper():
        raise RtspError(400, "malformed method")
    if not version.startswith("RTSP/"):
        raise RtspError(400, "not an RTSP request")
    _check_uri(uri)
    headers: dict[str, str] = {}
    last: str | None = None
    count = 0
    for line in lines[1:]:
        if not line:
            continue
        count += 1
        if count > MAX_HEADERS or len(line) > MAX_LINE_BYTES:
            raise RtspError(400, "request header too large", close=True)
        if line[0] in " \t" and last is not None:  # obsolete line folding
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise RtspError(400, "malformed header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
        last = key
    if "cseq" in headers and not valid_cseq(headers["cseq"]):
        # Echoed in the answer: anything but a number could smuggle header lines into it.
        del headers["cseq"]
        raise RtspError(400, "malformed CSeq")
    req = RtspRequest(method, uri, version, headers)
    if version != "RTSP/1.0":
        raise RtspError(505, version)
    return req


def valid_cseq(value: str) -> bool:
    """RFC 7826: cseq-nr = 1*9DIGIT (ASCII digits only; no sign, no spaces inside)."""
    return 0 < len(value) <= 9 and value.isascii() and value.isdigit()


def find_cseq(head: bytes) -> str | None:
    """The CSeq of a request head that did not parse, when it is a valid one (so it can be echoed)."""
    for line in head.split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"cseq":
            text = value.strip().decode("latin-1")
            return text if valid_cseq(text) else None
    return None


def _check_uri(uri: str) -> None:
    """400 for a request URI that urllib cannot take apart (bad IPv6 literal, port out of range, ...)."""
    if uri == "*":
        return
    if not uri.isprintable():
        raise RtspError(400, "malformed URI")
    try:
        parts = urlsplit(uri)
        _ = parts.port  # parses the port: ValueError when not a number or out of range
    except ValueError:
        raise RtspError(400, "malformed URI") from None


def format_response(
    status: int,
    cseq: str | None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    reason: str | None = None,
) -> bytes:
    lines = [f"RTSP/1.0 {status} {_one_line(reason or REASONS.get(status, 'Unknown'))}"]
    if cseq is not None:
        lines.append(f"CSeq: {_one_line(cseq)}")
    for name, value in headers or []:
        lines.append(f"{_one_line(name)}: {_one_line(value)}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def _one_line(text: str) -> str:
    """No CR, LF or NUL from anywhere reaches a response line: no header injection, whatever the caller passed."""
    if "\r" in text or "\n" in text or "\0" in text:
        return text.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    return text


# Streams below a camera's path: `rtsp://host/<camera>/sub` is the camera's sub stream, a stream of
# its own (named "<camera>/sub"), not a track of the main one.
STREAM_VARIANTS = frozenset({"sub"})


@dataclass(frozen=True, slots=True)
class StreamPath:
    """What a request URI names: a stream (a camera, or `<camera>/sub`), and maybe a track below it."""

    name: str
    track: str  # "" for the aggregate (the camera), "trackID=0" etc. for the track


def parse_path(uri: str) -> StreamPath | None:
    """The stream of `rtsp://host:port/<name>[/sub][/][trackID=0][?query]`; None for `*` or no name.

    Raises RtspError(400) for a URI that does not parse (`parse_request_head` has already refused those
    in a request line; a Digest `uri=` parameter comes here unchecked).
    """
    if uri == "*":
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise RtspError(400, "malformed URI") from None
    path = parts.path if parts.scheme else uri.split("?", 1)[0]
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments:
        return None
    if len(segments) > 1 and segments[1] in STREAM_VARIANTS:
        return StreamPath(f"{segments[0]}/{segments[1]}", "/".join(segments[2:]))
    return StreamPath(segments[0], "/".join(segments[1:]))


def base_url(uri: str, name: str) -> str:
    """The Content-Base for a camera: scheme and host as the client wrote them, no credentials."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise RtspError(400, "malformed URI") from None
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return f"{parts.scheme or 'rtsp'}://{netloc}/{name}/"


def safe_uri(uri: str) -> str:
    """A request URI fit for logs: credentials a client put in the URL are removed, and it is
    `log_text`. Never raises."""
    try:
        parts = urlsplit(uri)
        if parts.username is None and parts.password is None:
            return log_text(uri)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<malformed URI>"
    netloc = "***@" + host + (f":{port}" if port else "")
    return log_text(parts._replace(netloc=netloc).geturl())


LOG_TEXT_MAX = 120  # characters of one client string in a log line


def log_text(text: str, limit: int = LOG_TEXT_MAX) -> str:
    """A client's string (request line, path, header, user name), fit for one log line.

    Every character that is not printable (CR, LF, NUL, other controls, Unicode line separators,
    terminal escapes) is written as its escape (`\\r`, `\\x00`, `\\u2028`) and a backslash as two,
    so a client cannot end our line or start one of its own, nor forge an escape; past `limit`
    characters it is cut ("..." says so). A percent-decoded path needs this: `%0d%0a` is CR LF.
    """
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable() or "\\" in text:
        text = "".join(
            c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in text
        )
    return text + "..." if cut else text


@dataclass(frozen=True, slots=True)
class TransportSpec:
    """One alternative of a Transport header that this server can serve."""

    tcp: bool
    interleaved: tuple[int, int] | None = None  # TCP: RTP and RTCP channel ids
    client_port: tuple[int, int] | None = None  # UDP: where the client receives RTP and RTCP


def _port_pair(value: str) -> tuple[int, int]:
    a, _, b = value.partition("-")
    first = int(a)
    second = int(b) if b else first + 1
    if not (0 <= first <= 65535 and 0 <= second <= 65535):
        raise ValueError(value)
    return first, second


def parse_transport(header: str) -> TransportSpec:
    """The first alternative of a Transport header that is unicast RTP over TCP or UDP.

    Raises RtspError(461) when none is; 400 when the header is malformed.
    """
    for alt in header.split(","):
        params = [p.strip() for p in alt.split(";") if p.strip()]
        if not params:
            continue
        proto = params[0].upper()
        if proto not in ("RTP/AVP", "RTP/AVP/UDP", "RTP/AVP/TCP"):
            continue
        opts: dict[str, str] = {}
        for p in params[1:]:
            k, _, v = p.partition("=")
            opts[k.strip().lower()] = v.strip()
        if "multicast" in opts:
            continue
        mode = opts.get("mode", "play").strip('"').lower()
        if mode != "play":
            continue
        try:
            if proto == "RTP/AVP/TCP":
                ch = _port_pair(opts["interleaved"]) if "interleaved" in opts else None
                if ch is not None and not (ch[0] < 256 and ch[1] < 256):
                    raise ValueError(opts["interleaved"])
                return TransportSpec(tcp=True, interleaved=ch)
            if "client_port" not in opts:
                continue
            ports = _port_pair(opts["client_port"])
            if ports[0] == 0:
                continue
            return TransportSpec(tcp=False, client_port=ports)
        except ValueError:
            raise RtspError(400, "malformed Transport header") from None
    raise RtspError(461, "no supported transport (unicast RTP/AVP over UDP or TCP)")
