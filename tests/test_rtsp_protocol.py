"""RTSP pieces without sockets: request parsing, transports, paths, auth, RTP/RTCP packing."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from streamproxy.config import User
from streamproxy.hub import CodecInfo
from streamproxy.rtsp.auth import Authenticator, parse_auth_params
from streamproxy.rtsp.protocol import (
    MAX_BODY_BYTES,
    MAX_HEADERS,
    MAX_LINE_BYTES,
    RtspError,
    base_url,
    find_cseq,
    format_response,
    parse_path,
    parse_request_head,
    parse_transport,
    safe_uri,
)
from streamproxy.rtsp.rtp import RtpStream, packetize_h264
from streamproxy.serve.rtsp.server import build_sdp
from streamproxy.types import EncodedPacket


def test_parse_request() -> None:
    req = parse_request_head(
        b"DESCRIBE rtsp://h:8554/cam1 RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n"
        b"Session: abc;timeout=60\r\nContent-Length: 0\r\n\r\n"
    )
    assert (req.method, req.uri, req.cseq, req.session_id) == ("DESCRIBE", "rtsp://h:8554/cam1", "2", "abc")
    assert req.header("ACCEPT") == "application/sdp"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"\r\n\r\n", 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", 400),
        (b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505),
        (b"OPTIONS * RTSP/1.0\r\nno colon here\r\n\r\n", 400),
    ],
)
def test_parse_request_errors(head: bytes, status: int) -> None:
    with pytest.raises(RtspError) as err:
        parse_request_head(head)
    assert err.value.status == status


def test_lf_only_and_mixed_line_endings() -> None:
    for eol in ("\n", "\r\n"):
        req = parse_request_head(f"OPTIONS * RTSP/1.0{eol}CSeq: 4{eol}Session: s1{eol}{eol}".encode())
        assert (req.cseq, req.session_id) == ("4", "s1")
    # A bare LF ends a line even among CRLFs: what follows is a header of its own, never part of CSeq.
    req = parse_request_head(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\nX-Injected: yes\r\n\r\n")
    assert req.cseq == "1" and req.header("x-injected") == "yes"


@pytest.mark.parametrize(
    "uri",
    ["rtsp://[::1", "rtsp://h:99999/cam1", "rtsp://h:abc/cam1", "rtsp://u:p@[::1/x", "rtsp://\uff03h/x"],
)
def test_malformed_uri_is_400(uri: str) -> None:
    with pytest.raises(RtspError) as err:
        parse_request_head(f"DESCRIBE {uri} RTSP/1.0\r\nCSeq: 2\r\n\r\n".encode())
    assert err.value.status == 400 and not err.value.close
    with pytest.raises(RtspError):
        base_url(uri, "cam1")
    assert isinstance(safe_uri(uri), str)  # for logs: never raises
    with pytest.raises(RtspError):  # control characters in a request URI
        parse_request_head(b"DESCRIBE rtsp://h/a\x7fb RTSP/1.0\r\n\r\n")


@pytest.mark.parametrize("cseq", ["1\rX-Injected: yes", "abc", "-1", "+1", "1 2", "1234567890", "\u0661"])
def test_cseq_must_be_digits(cseq: str) -> None:
    head = f"OPTIONS * RTSP/1.0\r\nCSeq: {cseq}\r\n\r\n".encode()
    with pytest.raises(RtspError) as err:
        parse_request_head(head)
    assert err.value.status == 400
    assert find_cseq(head) is None  # never echoed
    assert find_cseq(b"OPTIONS * RTSP/2.0\r\ncseq:  17 \r\n\r\n") == "17"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"DESCRIBE rtsp://h/" + b"a" * MAX_LINE_BYTES + b" RTSP/1.0\r\n\r\n", 414),
        (b"OPTIONS * RTSP/1.0\r\nX: " + b"b" * MAX_LINE_BYTES + b"\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\n" + (b"X: " + b"c" * 4000 + b"\r\n") * 5 + b"\r\n", 400),
    ],
    ids=["request-line", "header-line", "header-count", "head-size"],
)
def test_size_limits(head: bytes, status: int) -> None:
    with pytest.raises(RtspError) as err:
        parse_request_head(head)
    assert err.value.status == status and err.value.close  # the connection cannot go on


@pytest.mark.parametrize(("value", "status"), [("x", 400), ("-1", 400), (str(MAX_BODY_BYTES + 1), 413)])
def test_content_length_errors_close(value: str, status: int) -> None:
    req = parse_request_head(f"SET_PARAMETER * RTSP/1.0\r\nContent-Length: {value}\r\n\r\n".encode())
    with pytest.raises(RtspError) as err:
        _ = req.content_length
    assert err.value.status == status and err.value.close  # where the body ends is unknown


def test_format_response_strips_line_breaks() -> None:
    out = format_response(
        400, "1\r\nX-Injected: yes", [("Session", "a\nX-Two: b"), ("X\r", "v\0")], reason="Bad\n"
    )
    head = out[: out.index(b"\r\n\r\n")]
    assert len(head.split(b"\r\n")) == 4 and b"\n" not in head.replace(b"\r\n", b"") and b"\0" not in head


def test_bad_content_length() -> None:
    req = parse_request_head(b"SET_PARAMETER * RTSP/1.0\r\nContent-Length: lots\r\n\r\n")
    with pytest.raises(RtspError):
        _ = req.content_length


def test_format_response_repeats_headers() -> None:
    out = format_response(401, "3", [("WWW-Authenticate", "Digest x"), ("WWW-Authenticate", "Basic y")])
    assert out.startswith(b"RTSP/1.0 401 Unauthorized\r\nCSeq: 3\r\n")
    assert out.count(b"WWW-Authenticate") == 2 and out.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("uri", "name", "track"),
    [
        ("rtsp://127.0.0.1:8554/cam1", "cam1", ""),
        ("rtsp://127.0.0.1:8554/cam1/", "cam1", ""),
        ("rtsp://127.0.0.1:8554/cam1/trackID=0", "cam1", "trackID=0"),
        ("rtsp://u:p@127.0.0.1/cam1?x=1&y=2", "cam1", ""),
        ("/cam1/trackID=0?foo", "cam1", "trackID=0"),
    ],
)
def test_parse_path(uri: str, name: str, track: str) -> None:
    p = parse_path(uri)
    assert p is not None and (p.name, p.track) == (name, track)


def test_parse_path_none_and_urls() -> None:
    assert parse_path("*") is None
    assert parse_path("rtsp://h:1/") is None
    assert base_url("rtsp://user:pw@h:8554/cam1?x", "cam1") == "rtsp://h:8554/cam1/"
    assert "pw" not in safe_uri("rtsp://user:pw@h:8554/cam1")


def test_parse_transport() -> None:
    t = parse_transport("RTP/AVP/TCP;unicast;interleaved=0-1")
    assert t.tcp and t.interleaved == (0, 1)
    u = parse_transport("RTP/AVP;unicast;client_port=5000-5001")
    assert not u.tcp and u.client_port == (5000, 5001)
    # First supported alternative wins; multicast is skipped.
    v = parse_transport("RTP/AVP;multicast,RTP/AVP/UDP;unicast;client_port=6000")
    assert v.client_port == (6000, 6001)
    for bad in (
        "RTP/SAVP;unicast;client_port=1-2",
        "RTP/AVP;multicast",
        "RTP/AVP;unicast;mode=record;client_port=1-2",
    ):
        with pytest.raises(RtspError) as err:
            parse_transport(bad)
        assert err.value.status == 461
    with pytest.raises(RtspError) as err:
        parse_transport("RTP/AVP;unicast;client_port=x-y")
    assert err.value.status == 400


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def _digest(auth: Authenticator, user: str, pw: str, method: str, uri: str, nonce: str | None = None) -> str:
    nonce = nonce or auth.new_nonce()
    resp = _md5(f"{_md5(f'{user}:{auth.realm}:{pw}')}:{nonce}:{_md5(f'{method}:{uri}')}")
    return f'Digest username="{user}", realm="{auth.realm}", nonce="{nonce}", uri="{uri}", response="{resp}"'


def test_auth_digest_and_basic() -> None:
    auth = Authenticator([User(username="alice", password="s3cret")], "streamproxy")
    uri = "rtsp://127.0.0.1:8554/cam1"
    assert auth.check("DESCRIBE", uri, _digest(auth, "alice", "s3cret", "DESCRIBE", uri)) == ("alice", False)
    assert auth.check("DESCRIBE", uri, _digest(auth, "alice", "wrong", "DESCRIBE", uri))[0] is None
    assert auth.check("DESCRIBE", uri, _digest(auth, "bob", "s3cret", "DESCRIBE", uri))[0] is None
    # A digest for another camera must not open this one.
    other = "rtsp://127.0.0.1:8554/cam2"
    assert auth.check("DESCRIBE", uri, _digest(auth, "alice", "s3cret", "DESCRIBE", other))[0] is None
    # Forged nonce.
    assert (
        auth.check("DESCRIBE", uri, _digest(auth, "alice", "s3cret", "DESCRIBE", uri, "abc" + "0" * 24))[0]
        is None
    )
    basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert auth.check("PLAY", uri, basic) == ("alice", False)
    assert auth.check("PLAY", uri, "Basic " + base64.b64encode(b"alice:nope").decode())[0] is None
    assert auth.check("PLAY", uri, "Basic !!!")[0] is None
    assert auth.check("PLAY", uri, "Bearer xyz")[0] is None
    assert auth.check("PLAY", uri, None)[0] is None
    ch = auth.challenge()
    assert [h for h, _ in ch] == ["WWW-Authenticate", "WWW-Authenticate"]
    assert ch[0][1].startswith("Digest ") and ch[1][1].startswith("Basic ")


def test_auth_stale_nonce() -> None:
    auth = Authenticator([User(username="a", password="b")], "r", nonce_ttl_s=0.0)
    uri = "rtsp://h/cam"
    nonce = auth.new_nonce()
    import time

    time.sleep(0.01)
    assert auth.check("DESCRIBE", uri, _digest(auth, "a", "b", "DESCRIBE", uri, nonce)) == (None, True)


def test_parse_auth_params_quoted_commas() -> None:
    p = parse_auth_params('username="a,b", realm="r", nc=00000001, uri="rtsp://h/x?y=1,2"')
    assert p == {"username": "a,b", "realm": "r", "nc": "00000001", "uri": "rtsp://h/x?y=1,2"}


def test_packetize_single_and_fu_a() -> None:
    sps, pps = b"\x67" + b"\x01" * 10, b"\x68" + b"\x02" * 4
    idr = b"\x65" + bytes(range(256)) * 20  # 5121 bytes: needs FU-A
    data = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps + b"\x00\x00\x01" + idr
    pl = packetize_h264(data, max_payload=1400)
    assert pl[0] == (sps, False) and pl[1] == (pps, False)
    fus = pl[2:]
    assert all(len(p) <= 1400 for p, _ in fus)
    assert [m for _, m in fus] == [False] * (len(fus) - 1) + [True]
    assert fus[0][0][0] == (0x65 & 0xE0) | 28 and fus[0][0][1] == 0x80 | 5
    assert fus[-1][0][1] == 0x40 | 5
    assert all(p[1] == 5 for p, _ in fus[1:-1])
    assert b"".join(p[2:] for p, _ in fus) == idr[1:]


def test_rtp_headers_and_sender_report() -> None:
    rtp = RtpStream(ssrc=0x11223344, seq=65535, ts_base=1000)
    pkt = EncodedPacket(
        data=b"\x00\x00\x01\x65abc", pts90k=5000, keyframe=True, decoded_at=1.0, encoded_at=1.0
    )
    payloads = packetize_h264(pkt.data)
    (p,) = rtp.packets_udp(pkt, payloads)
    v, pt, seq, ts, ssrc = struct.unpack("!BBHII", p[:12])
    assert (v, pt, seq, ts, ssrc) == (0x80, 0x80 | 96, 65535, 1000, 0x11223344)
    pkt2 = EncodedPacket(data=pkt.data, pts90k=8600, keyframe=False, decoded_at=1.04, encoded_at=1.04)
    framed = rtp.frame_tcp(pkt2, payloads, channel=2)
    assert framed[:2] == b"$\x02" and int.from_bytes(framed[2:4], "big") == len(framed) - 4
    _, _, seq2, ts2, _ = struct.unpack("!BBHII", framed[4:16])
    assert seq2 == 0 and ts2 == 1000 + 3600
    sr = rtp.sender_report()
    assert sr is not None and sr[1] == 200 and len(sr) % 4 == 0
    assert struct.unpack("!I", sr[4:8])[0] == 0x11223344
    assert struct.unpack("!II", sr[20:28]) == (2, 2 * 4)  # packets, payload octets


def test_sdp() -> None:
    codec = CodecInfo(640, 360, 25.0, b"\x67\x42\xc0\x1e\xaa", b"\x68\xce")
    sdp = build_sdp("cam1", codec, "127.0.0.1").decode()
    assert "m=video 0 RTP/AVP 96" in sdp and "a=rtpmap:96 H264/90000" in sdp
    assert "profile-level-id=42c01e" in sdp and "packetization-mode=1" in sdp
    sprop = base64.b64encode(codec.sps).decode() + "," + base64.b64encode(codec.pps).decode()
    assert f"sprop-parameter-sets={sprop}" in sdp
    assert "a=control:trackID=0" in sdp and "a=range:npt=now-" in sdp
