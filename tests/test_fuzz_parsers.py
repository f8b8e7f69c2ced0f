"""Property-based fuzzing (hypothesis) of every parser that reads bytes from the network.

The property is the same everywhere: a parser returns a valid result or raises its documented error
type (RtspError, ClientError, WhepError, None for "malformed"), never another exception; where the
result is echoed back to the network (CSeq, headers), it cannot carry a line break.

Deterministic: `derandomize=True` (the examples follow from the test's code), no example database,
bounded `max_examples`, no deadline (a busy 2-core machine). The inputs that once found a bug (all
fixed since) are explicit `@example`s of their tests, so each stays a regression test.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamproxy.config import User
from streamproxy.h264 import START_CODE
from streamproxy.rtsp.auth import Authenticator, parse_auth_params, parse_basic
from streamproxy.rtsp.client import ClientError, Response, RtspClient, _Auth, _parse_head, parse_sdp
from streamproxy.rtsp.depay import AccessUnit, Depacketizer, RtpPacket, parse_rtp
from streamproxy.rtsp.protocol import (
    KNOWN_METHODS,
    MAX_BODY_BYTES,
    REASONS,
    RtspError,
    RtspRequest,
    base_url,
    find_cseq,
    format_response,
    parse_path,
    parse_request_head,
    parse_transport,
    safe_uri,
    valid_cseq,
)

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FUZZ, max_examples=60)
# The tests whose @examples are bugs this suite found (fixed): fewer random examples beside them.
FOUND_BUGS = settings(FUZZ, max_examples=100)

# --- building blocks: what attackers and broken peers send -------------------------------------------

NASTY_CHARS = [
    "\r",
    "\n",
    "\r\n",
    "\0",
    " ",
    "\t",
    ":",
    ";",
    ",",
    "=",
    '"',
    "\\",
    "[",
    "]",
    "@",
    "%",
    "é",
    "\x85",
    "\u2028",
]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY_CHARS), st.text(max_size=8)), max_size=12).map("".join)

URIS = [
    "*",
    "rtsp://127.0.0.1:8554/cam1",
    "rtsp://127.0.0.1:8554/cam1/trackID=0",
    "rtsp://[::1]:8554/cam1",
    "rtsp://[::1",
    "rtsp://[::1]:99999/cam1",
    "rtsp://h:99999/cam1",
    "rtsp://h:abc/cam1",
    "rtsp://h:-1/cam1",
    "rtsp://u:p@h/cam1?x=1",
    "rtsp://u:p@[::1/cam1",
    "rtsp://h/%ff%00%0d%0a",
    "/cam1/trackID=0?foo",
    "rtsp://\uff03h/cam1",  # NFKC-normalizes to a URL delimiter: urllib refuses it
    "rtsp://h/" + "a" * 9000,
]
uris = st.one_of(
    st.sampled_from(URIS), st.text(min_size=1, max_size=40).filter(lambda s: not any(c.isspace() for c in s))
)
HEADER_NAMES = [
    "CSeq",
    "Session",
    "Transport",
    "Content-Length",
    "Authorization",
    "Accept",
    "Range",
    "X-Foo",
    "",
]
header_values = st.one_of(
    st.sampled_from(
        [
            "1",
            "1\nX-Injected: yes",
            "1\rX-Injected: yes",
            "0000000001",
            "-1",
            "+1",
            "99999999999999999999",
            "RTP/AVP/TCP;unicast;interleaved=0-1",
            "RTP/AVP;unicast;client_port=5000-5001",
            "RTP/AVP;unicast;client_port=99999",
            "RTP/AVP/TCP;interleaved=300-301",
            "RTP/AVP;unicast;client_port=-5",
            'Digest username="a", nonce="x", uri="rtsp://[::1", response="y"',
            "Basic !!!",
            str(MAX_BODY_BYTES + 1),
            "abc;timeout=60",
        ]
    ),
    nasty_text,
)
line_ends = st.sampled_from(["\r\n", "\n", "\r"])


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    """Mostly well-formed RTSP request heads with one or more bad parts."""
    method = draw(
        st.one_of(st.sampled_from([*KNOWN_METHODS, "GET", "describe", "X_Y", "SETUP2"]), nasty_text)
    )
    version = draw(st.sampled_from(["RTSP/1.0", "RTSP/2.0", "HTTP/1.1", "RTSP/1.0\0", "rtsp/1.0"]))
    lines = [f"{method} {draw(uris)} {version}"]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.one_of(st.sampled_from(HEADER_NAMES), nasty_text))
        lines.append(f"{name}: {draw(header_values)}")
    if draw(st.booleans()):
        lines.append(" folded continuation")
    eol = draw(line_ends)
    text = eol.join(lines) + eol + eol
    return text.encode("utf-8", "surrogatepass")


def _no_line_breaks(response: bytes) -> None:
    """A formatted response is header lines separated by CRLF, then a blank line, then the body."""
    head, sep, _ = response.partition(b"\r\n\r\n")
    assert sep, response
    for line in head.split(b"\r\n"):
        assert b"\r" not in line and b"\n" not in line and b"\0" not in line, response


# --- RTSP requests (protocol.py) -----------------------------------------------------------------------


def _check_request(req: RtspRequest) -> None:
    assert req.cseq is None or valid_cseq(req.cseq)
    # A parsed request's URI has been checked: the helpers that take it apart must not raise.
    parse_path(req.uri)
    safe_uri(req.uri)
    base_url(req.uri, "cam1")
    for prop in ("content_length", "session_id"):
        try:
            getattr(req, prop)
        except RtspError:
            pass
    transport = req.header("transport")
    if transport is not None:
        try:
            spec = parse_transport(transport)
        except RtspError as err:
            assert err.status in (400, 461)
        else:
            for pair in (spec.interleaved, spec.client_port):
                assert pair is None or all(0 <= p <= 65535 for p in pair)
            assert spec.interleaved is None or all(p < 256 for p in spec.interleaved)
    _no_line_breaks(
        format_response(200, req.cseq, [("Session", req.session_id or ""), ("Content-Base", req.uri)])
    )


@FUZZ
@given(st.one_of(request_heads(), st.binary(max_size=300)))
@example(b"DESCRIBE rtsp://[::1 RTSP/1.0\r\nCSeq: 1\r\n\r\n")
@example(b"DESCRIBE rtsp://h:99999/cam1 RTSP/1.0\r\nCSeq: 1\r\n\r\n")
@example(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\nX-Injected: yes\r\n\r\n")
@example(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\rX-Injected: yes\r\n\r\n")
def test_parse_request_head_raises_only_rtsp_error(head: bytes) -> None:
    try:
        req = parse_request_head(head)
    except RtspError as err:
        assert err.status in REASONS and err.status >= 400
        cseq = find_cseq(head)
        assert cseq is None or valid_cseq(cseq)
        _no_line_breaks(format_response(err.status, cseq, err.headers))
        return
    _check_request(req)


@FUZZ
@given(
    method=st.sampled_from(KNOWN_METHODS),
    path=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12),
    cseq=st.integers(0, 999_999_999),
    headers=st.dictionaries(
        st.text(st.characters(codec="ascii", categories=["L"]), min_size=1, max_size=10).map(
            lambda s: "X-" + s
        ),
        st.text(
            st.characters(codec="ascii", categories=["L", "N", "P"], exclude_characters=":"), max_size=20
        ),
        max_size=5,
    ),
    eol=st.sampled_from(["\r\n", "\n"]),
)
def test_parse_request_head_round_trip(
    method: str, path: str, cseq: int, headers: dict[str, str], eol: str
) -> None:
    """Well-formed requests, CRLF or LF-only, parse to exactly what was sent."""
    lines = [f"{method} rtsp://127.0.0.1:8554/{path} RTSP/1.0", f"CSeq: {cseq}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    req = parse_request_head((eol.join(lines) + eol + eol).encode())
    assert (req.method, req.uri, req.cseq) == (method, f"rtsp://127.0.0.1:8554/{path}", str(cseq))
    expected: dict[str, str] = {}
    for k, v in headers.items():
        key = k.lower()
        expected[key] = f"{expected[key]}, {v.strip()}" if key in expected else v.strip()
    assert {k: v for k, v in req.headers.items() if k != "cseq"} == expected
    p = parse_path(req.uri)
    assert p is not None and p.name == path


@FUZZ
@given(
    st.integers(100, 599),
    st.one_of(st.none(), nasty_text),
    st.lists(st.tuples(nasty_text, nasty_text), max_size=4),
)
def test_format_response_never_breaks_a_line(
    status: int, cseq: str | None, headers: list[tuple[str, str]]
) -> None:
    out = format_response(status, cseq, headers, reason=None)
    _no_line_breaks(out)
    head = out.split(b"\r\n\r\n", 1)[0]
    assert len(head.split(b"\r\n")) == 1 + (cseq is not None) + len(headers)


@FUZZ
@given(st.one_of(uris, nasty_text))
def test_uri_helpers(uri: str) -> None:
    safe_uri(uri)  # for logs: never raises
    for fn in (lambda: parse_path(uri), lambda: base_url(uri, "cam1")):
        try:
            fn()
        except RtspError as err:
            assert err.status == 400


@FUZZ
@given(st.one_of(header_values, st.lists(header_values, max_size=4).map(",".join)))
def test_parse_transport_raises_only_rtsp_error(header: str) -> None:
    try:
        parse_transport(header)
    except RtspError as err:
        assert err.status in (400, 461)


# --- RTP (depay.py) -------------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=80))
def test_parse_rtp_random_bytes(data: bytes) -> None:
    pkt = parse_rtp(data)
    if pkt is not None:
        assert 0 <= pkt.payload_type < 128 and 0 <= pkt.seq < 65536 and 0 <= pkt.timestamp < 2**32
        assert len(pkt.payload) <= len(data) - 12


@FUZZ
@given(
    csrc=st.integers(0, 15),
    ext_words=st.one_of(st.none(), st.integers(0, 4)),
    padding=st.integers(0, 8),
    marker=st.booleans(),
    pt=st.integers(0, 127),
    seq=st.integers(0, 65535),
    ts=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=40),
)
def test_parse_rtp_round_trip(
    csrc: int, ext_words: int | None, padding: int, marker: bool, pt: int, seq: int, ts: int, payload: bytes
) -> None:
    b0 = 0x80 | csrc | (0x10 if ext_words is not None else 0) | (0x20 if padding else 0)
    data = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, 0x1234) + b"\xaa" * 4 * csrc
    if ext_words is not None:
        data += struct.pack("!HH", 0xBEDE, ext_words) + b"\xbb" * 4 * ext_words
    data += payload + (bytes(padding - 1) + bytes([padding]) if padding else b"")
    assert parse_rtp(data) == RtpPacket(pt, marker, seq, ts, 0x1234, payload)


H264_NALS = st.one_of(
    st.binary(min_size=1, max_size=30),
    st.builds(
        lambda t, b: bytes([t]) + b,
        st.sampled_from([0x65, 0x41, 0x67, 0x68, 0x78, 0x79, 0x7C, 0x7D, 0x1A]),
        st.binary(max_size=30),
    ),
)
H265_NALS = st.one_of(
    st.binary(min_size=1, max_size=30),
    st.builds(
        lambda t, b: bytes([t << 1, 1]) + b,
        st.sampled_from([1, 19, 32, 33, 34, 48, 49, 50]),
        st.binary(max_size=30),
    ),
)


@settings(FUZZ, max_examples=100)
@given(
    codec=st.sampled_from(["h264", "h265"]),
    data=st.data(),
)
def test_depacketizer_survives_any_packet_sequence(codec: str, data: st.DataObject) -> None:
    """Random payloads (STAP/FU/AP fragments of any shape), seq jumps, ssrc changes, timestamp wraps."""
    depay = Depacketizer(codec, [b"\x67\x42", b"\x68\xce"])  # type: ignore[arg-type]
    seq, ts, ssrc = data.draw(st.integers(0, 65535)), data.draw(st.integers(0, 2**32 - 1)), 1
    nals = H264_NALS if codec == "h264" else H265_NALS
    out: list[AccessUnit] = []
    pushed = most_lost = 0
    for _ in range(data.draw(st.integers(1, 25))):
        step = data.draw(st.sampled_from([1, 1, 1, 0, 2, 100, 65535, 40000]))
        # 0 is a duplicate, 65535 one behind (late): neither counts; 40000 is a restart of the
        # numbering, counted as one loss. Skipped packets only make later gaps smaller.
        most_lost += {2: 1, 100: 99, 40000: 1}.get(step, 0)
        seq = (seq + step) & 0xFFFF
        ts = (ts + data.draw(st.sampled_from([0, 0, 3600, 2**31, 2**32 - 3600]))) & 0xFFFFFFFF
        if data.draw(st.integers(0, 20)) == 0:
            ssrc += 1
        pkt = RtpPacket(96, data.draw(st.booleans()), seq, ts, ssrc, data.draw(st.one_of(st.just(b""), nals)))
        out += depay.push(pkt)
        pushed += 1
    for au in out:
        assert au.data.startswith(START_CODE)
    # Every access unit let out or dropped took at least one packet of its own: a unit counted twice
    # (dropped and let out, or dropped at an SSRC change and again at its end) breaks this.
    assert len(out) + depay.dropped_units <= depay.received <= pushed, (len(out), depay.dropped_units)
    # A jump back or a wrap counted as ~65,000 losses breaks this.
    assert depay.lost_packets <= most_lost, (depay.lost_packets, most_lost)


# --- RTCP ----------------------------------------------------------------------------------------------
# Nothing here parses RTCP: the server's UDP receiver only uses a datagram from a known viewer
# address as proof of life, and our client ignores the camera's sender reports. The receiver is fuzzed
# in test_fuzz_servers.py (it takes any datagram); the `$`-interleaved frames the server reads too.


# --- SDP: the camera's DESCRIBE answer (client.py) -----------------------------------------------------

SDP_LINES = [
    "v=0",
    "m=video 0 RTP/AVP 96",
    "m=video 0 RTP/AVP 96 97",
    "m=audio 0 RTP/AVP 0",
    "m=video",
    "m=",
    "a=rtpmap:96 H264/90000",
    "a=rtpmap:96 H265/90000",
    "a=rtpmap:97 VP8/90000",
    "a=rtpmap:96",
    "a=rtpmap:96 H264",
    "a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0IAHpWoKA9puAgICBA=,aM48gA==",
    "a=fmtp:96 sprop-vps=!!;sprop-sps=;sprop-pps=AAAA",
    "a=fmtp:96 ;;==;",
    "a=control:*",
    "a=control:trackID=1",
    "a=control:rtsp://cam/other/track",
    "a=control:",
]
# Inputs that crashed parse_sdp with ValueError instead of ClientError (found by the test below, fixed):
SDP_BAD_PT = "m=video 0 RTP/AVP x\r\na=rtpmap:x H264/90000\r\n"
SDP_BAD_RATE = "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/abc\r\n"
sdp_texts = st.lists(st.one_of(st.sampled_from(SDP_LINES), nasty_text), max_size=12).map("\r\n".join)
sdp_texts_known_good = st.lists(st.sampled_from(SDP_LINES), max_size=12).map("\r\n".join)


def _check_sdp(sdp: str, base: str) -> None:
    try:
        track = parse_sdp(sdp, base)
    except ClientError:
        return
    assert track.codec in ("h264", "h265") and 0 <= track.payload_type < 128 and track.clock_rate > 0
    assert all(isinstance(p, bytes) and p for p in track.parameter_sets)


@FUZZ
@given(sdp_texts_known_good, st.sampled_from(["rtsp://cam/x", "rtsp://cam/x/", "rtsp://[::1]:554/x"]))
def test_parse_sdp_well_formed_lines(sdp: str, base: str) -> None:
    _check_sdp(sdp, base)


@FOUND_BUGS
@given(sdp_texts, st.sampled_from(["rtsp://cam/x", "rtsp://[::1]:554/x"]))
@example(SDP_BAD_PT, "rtsp://cam/x")
@example(SDP_BAD_RATE, "rtsp://cam/x")
def test_parse_sdp_raises_only_client_error(sdp: str, base: str) -> None:
    _check_sdp(sdp, base)


# --- the RTSP client's response parser (client.py) --------------------------------------------------------


def _client() -> RtspClient:
    return RtspClient("rtsp://127.0.0.1:1/cam", "tcp", 1.0, threading.Event())


@FUZZ
@given(st.text(max_size=200))
def test_parse_head_never_raises(head: str) -> None:
    resp = _parse_head(head)
    assert isinstance(resp, Response) and all(k == k.lower() for k, _ in resp.headers)


@st.composite
def camera_streams(draw: st.DrawFn, lengths: st.SearchStrategy[str]) -> bytes:
    """What a camera (or a man in the middle) writes on the RTSP connection: answers, `$` frames, junk."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["response", "frame", "junk", "request"]))
        if kind == "response":
            body = draw(st.binary(max_size=20))
            status = draw(
                st.sampled_from(["200 OK", "401 Unauthorized", "x", "", "99999999999999999999 Big"])
            )
            head = f"RTSP/1.0 {status}\r\nCSeq: {draw(st.integers(0, 9))}\r\n"
            if draw(st.booleans()):
                head += f"Content-Length: {draw(lengths) if draw(st.booleans()) else len(body)}\r\n"
            parts.append(head.encode() + b"\r\n" + body)
        elif kind == "frame":
            payload = draw(st.binary(max_size=30))
            size = draw(st.sampled_from([len(payload), len(payload), 0, 65535]))
            parts.append(b"$" + bytes([draw(st.integers(0, 255))]) + size.to_bytes(2, "big") + payload)
        elif kind == "request":
            parts.append(b"ANNOUNCE rtsp://x RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        else:
            parts.append(draw(st.binary(max_size=30)))
    return b"".join(parts)


def _drain_client_buffer(data: bytes) -> None:
    """Take messages as the client does; each one taken must consume bytes (else the client spins)."""
    c = _client()
    c._buf = bytearray(data)
    for _ in range(len(data) + 2):
        before = len(c._buf)
        try:
            msg = c._take_message()
        except ClientError:
            return
        if msg is None:
            return
        assert len(c._buf) < before, (
            f"message taken without consuming a byte: the client would spin on {msg!r}"
        )
        if isinstance(msg, Response):
            # An answer, never a request from the camera (those are skipped, status -1), with the
            # status line's digits as they came.
            assert msg.status >= 0 and f"RTSP/1.0 {msg.status} ".encode() in data, msg.status
        else:
            channel, payload = msg
            assert 0 <= channel < 256 and len(payload) < 65536
    raise AssertionError("more messages than bytes")


@FUZZ
@given(camera_streams(st.integers(0, 70_000).map(str)))
def test_client_take_message_with_numeric_lengths(data: bytes) -> None:
    _drain_client_buffer(data)


# Content-Length equal to minus the head's size: `del buf[:0]` consumed nothing and the same answer
# was returned forever (the ingest thread spun at 100 % CPU, never looking at `stop` again); a
# negative length is a ClientError now.
SPIN = b"RTSP/1.0 200 OK\r\nCSeq: 9\r\nContent-Length: -49\r\n\r\n"


@FOUND_BUGS
@given(camera_streams(st.one_of(st.integers(-100, 70_000).map(str), nasty_text)))
@example(SPIN)
@example(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nContent-Length: x\r\n\r\n")
def test_client_take_message_raises_only_client_error(data: bytes) -> None:
    _drain_client_buffer(data)


@FOUND_BUGS
@given(st.lists(header_values, max_size=3).map(";".join))
@example("RTP/AVP/TCP;unicast;interleaved=300-301")
def test_client_take_transport_keeps_valid_channels(header: str) -> None:
    c = _client()
    c._take_transport(header)
    assert all(0 <= ch < 256 for ch in c._interleaved), c._interleaved


@FUZZ
@given(st.one_of(header_values, st.lists(header_values, max_size=3).map(";".join)))
def test_client_take_session(header: str) -> None:
    c = _client()
    try:
        c._take_session(Response(200, "OK", [("session", header)]))
    except ClientError:
        return
    assert c._session is not None and c._session_timeout_s >= 5.0


# --- Digest / Basic (auth.py, and the client's answer to WWW-Authenticate) --------------------------------

AUTH_HEADERS = [
    "Basic " + base64.b64encode(b"alice:s3cret").decode(),
    "Basic " + base64.b64encode(b"alice").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    "Basic !!!",
    "Basic",
    "Digest",
    'Digest username="alice", realm="streamproxy", nonce="abc", uri="rtsp://h/cam1", response="00"',
    'Digest username="alice", realm="streamproxy", nonce="'
    + "f" * 40
    + '", uri="rtsp://h/cam1", response="00"',
    'Digest username="alice", realm="streamproxy", nonce="n", uri="rtsp://[::1/cam1", response="00"',
    'Digest username="alice", realm="streamproxy", nonce="n", uri="rtsp://h/cam1", response="00", qop=auth-int',
    'Digest username="a\\"b", realm="streamproxy", nonce="n", uri="x", response="00", algorithm=SHA-256',
    "Bearer x",
]
auth_headers = st.one_of(
    st.sampled_from(AUTH_HEADERS),
    st.builds(lambda s, t: s + " " + t, st.sampled_from(["Basic", "Digest", "digest", "BASIC"]), nasty_text),
)
ascii_auth_headers = st.one_of(
    st.sampled_from(AUTH_HEADERS),
    st.builds(
        lambda s, t: s + " " + t,
        st.sampled_from(["Basic", "Digest"]),
        st.lists(
            st.one_of(
                st.sampled_from(
                    ['"', ",", "=", "\\", " ", "username=alice", 'nonce="', 'uri="rtsp://h/cam1"']
                ),
                st.text(st.characters(codec="ascii"), max_size=8),
            ),
            max_size=10,
        ).map("".join),
    ),
)


@FUZZ
@given(st.one_of(nasty_text, st.sampled_from([a.partition(" ")[2] for a in AUTH_HEADERS])))
def test_parse_auth_params_never_raises(text: str) -> None:
    params = parse_auth_params(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


@FUZZ
@given(
    st.dictionaries(
        st.text(st.characters(codec="ascii", categories=["L"]), min_size=1, max_size=8).map(str.lower),
        st.text(
            st.characters(codec="ascii", categories=["L", "N", "Zs"]).filter(lambda c: c not in '"\\'),
            max_size=12,
        ),
        max_size=6,
    )
)
def test_parse_auth_params_round_trip(params: dict[str, str]) -> None:
    assert parse_auth_params(", ".join(f'{k}="{v}"' for k, v in params.items())) == params


_AUTH = Authenticator([User(username="alice", password="s3cret")], "streamproxy")


def _check_auth(header: str, uri: str) -> None:
    try:
        user, stale = _AUTH.check("DESCRIBE", uri, header)
    except RtspError as err:  # a Digest uri= that does not parse (protocol.parse_path): a 400
        assert err.status == 400
        return
    assert user in (None, "alice") and isinstance(stale, bool)


@FUZZ
@given(ascii_auth_headers, st.sampled_from(["rtsp://h/cam1", "rtsp://h/cam2", "*"]))
def test_authenticator_ascii_headers(header: str, uri: str) -> None:
    _check_auth(header, uri)


@FUZZ
@given(auth_headers, st.sampled_from(["rtsp://h/cam1", "*"]))
@example("Basic é", "rtsp://h/cam1")  # once ValueError from b64decode (only binascii.Error was caught)
@example(
    'Digest username="alice", realm="streamproxy", nonce="'
    + "é" * 30
    + '", uri="rtsp://h/cam1", response="0"',
    "rtsp://h/cam1",
)
@example(
    'Digest username="alice", realm="streamproxy", nonce="n", uri="rtsp://h/cam1", response="é"',
    "rtsp://h/cam1",
)
def test_authenticator_any_header(header: str, uri: str) -> None:
    """Non-ASCII too: the examples once raised ValueError / TypeError (hmac.compare_digest on str)."""
    _check_auth(header, uri)


@FUZZ
@given(st.one_of(auth_headers, st.just(""), st.none()))
@example("Basic é")
def test_basic_header_parser(header: str | None) -> None:
    """The Basic parser the HTTP server shares with RTSP: (user, password) or None."""
    creds = parse_basic(header)
    assert creds is None or (isinstance(creds[0], str) and creds[0] and isinstance(creds[1], str))


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [*AUTH_HEADERS, 'Digest realm="r", nonce="n", qop="auth,auth-int"', 'Digest realm="r"']
            ),
            auth_headers,
        ),
        max_size=3,
    ),
    st.sampled_from(["DESCRIBE", "SETUP"]),
)
def test_client_answers_any_challenge(values: list[str], method: str) -> None:
    auth = _Auth("user", "pa:ss")
    if auth.challenge(values):
        header = auth.header(method, "rtsp://cam/x")
        assert header is None or header.startswith(("Basic ", "Digest "))


# --- WHEP offers (serve/webrtc.py: aiortc parses them) -----------------------------------------------------

OFFER_LINES = [
    "v=0",
    "o=- 1 1 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=video 9 UDP/TLS/RTP/SAVPF 97",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "c=IN IP4 0.0.0.0",
    "a=mid:0",
    "a=recvonly",
    "a=rtcp-mux",
    "a=rtpmap:96 H264/90000",
    "a=rtpmap:97 VP8/90000",
    "a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=ice-ufrag:abcd",
    "a=ice-pwd:0123456789abcdef01234567",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
    "a=fingerprint:sha-256 zz",
    "a=setup:actpass",
    "a=candidate:1 1 udp 1 127.0.0.1 9 typ host",
    "a=candidate:garbage",
    "a=ssrc:x",
]


@FEW
@given(
    st.lists(st.one_of(st.sampled_from(OFFER_LINES), nasty_text), max_size=20).map(
        lambda ls: "\r\n".join(["v=0", *ls, "m=video"]) + "\r\n"
    )
)
def test_whep_offer_raises_only_whep_error(offer: str) -> None:
    from webkit import make_cfg

    from streamproxy.hub import StreamHub
    from streamproxy.serve.webrtc import WebRtcGateway, WhepError

    async def attempt() -> None:
        gw = WebRtcGateway(make_cfg().server)
        try:
            await gw.create_session(StreamHub("cam1"), offer)
        except WhepError as err:
            assert 400 <= err.status < 600
        finally:
            await gw.close_all()

    asyncio.run(asyncio.wait_for(attempt(), 30))
