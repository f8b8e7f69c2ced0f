"""RTP depacketization (RFC 6184 / 7798), RTP header parsing, SDP parsing and Digest answers: pure logic."""

from __future__ import annotations

import hashlib
import struct

import pytest

from streamproxy.h264 import START_CODE
from streamproxy.rtsp.client import ClientError, _Auth, parse_sdp
from streamproxy.rtsp.depay import AccessUnit, Depacketizer, RtpPacket, parse_rtp
from streamproxy.rtsp.rtp import packetize_h264

SPS = b"\x67\x42\xc0\x1f\xaa"
PPS = b"\x68\xce\x3c\x80"
IDR = b"\x65" + bytes(range(256)) * 20  # 5 kB: fragmented
P_SLICE = b"\x41\x9a\x02\x03"


def rtp(payload: bytes, seq: int, ts: int, marker: bool = False, ssrc: int = 1, pt: int = 96) -> RtpPacket:
    return RtpPacket(
        payload_type=pt,
        marker=marker,
        seq=seq & 0xFFFF,
        timestamp=ts & 0xFFFFFFFF,
        ssrc=ssrc,
        payload=payload,
    )


def feed(d: Depacketizer, payloads: list[tuple[bytes, bool]], seq: int, ts: int) -> list[AccessUnit]:
    out: list[AccessUnit] = []
    for i, (p, marker) in enumerate(payloads):
        out += d.push(rtp(p, seq + i, ts, marker))
    return out


def annexb(*nals: bytes) -> bytes:
    return b"".join(START_CODE + n for n in nals)


def test_access_unit_completes_on_the_marker_bit_not_on_the_next_frame() -> None:
    d = Depacketizer("h264")
    payloads = list(packetize_h264(annexb(SPS, PPS, IDR), max_payload=1000))
    assert len(payloads) > 3 and payloads[-1][1] and not any(m for _, m in payloads[:-1])
    out = feed(d, payloads[:-1], seq=10, ts=9000)
    assert out == []  # nothing before the last packet
    out = d.push(rtp(payloads[-1][0], 10 + len(payloads) - 1, 9000, marker=True))
    assert len(out) == 1
    assert out[0].data == annexb(SPS, PPS, IDR)  # FU-A reassembled byte for byte
    assert out[0].keyframe and out[0].timestamp == 9000


def test_stap_a_and_single_nal_units() -> None:
    d = Depacketizer("h264")
    stap = bytes([24]) + struct.pack("!H", len(SPS)) + SPS + struct.pack("!H", len(PPS)) + PPS
    out = feed(d, [(stap, False), (b"\x65\x88\x84", True)], seq=0, ts=0)
    assert [au.data for au in out] == [annexb(SPS, PPS, b"\x65\x88\x84")]
    out = feed(d, [(P_SLICE, True)], seq=2, ts=3600)
    assert out[0].data == annexb(P_SLICE) and not out[0].keyframe and out[0].timestamp == 3600


def test_new_timestamp_closes_a_unit_whose_marker_never_came() -> None:
    d = Depacketizer("h264")
    assert d.push(rtp(P_SLICE, 0, 0)) == []
    out = d.push(rtp(P_SLICE, 1, 3600))
    assert len(out) == 1 and out[0].timestamp == 0


def test_parameter_sets_from_the_sdp_go_in_front_of_a_bare_keyframe() -> None:
    d = Depacketizer("h264", [SPS, PPS])
    out = feed(d, [(b"\x65\x01", True)], seq=0, ts=0)
    assert out[0].data == annexb(SPS, PPS, b"\x65\x01")
    out = feed(d, [(P_SLICE, True)], seq=1, ts=3600)
    assert out[0].data == annexb(P_SLICE)  # only keyframes need them


def test_a_lost_packet_drops_its_access_unit_only() -> None:
    d = Depacketizer("h264")
    payloads = list(packetize_h264(annexb(IDR), max_payload=1000))
    out = feed(d, payloads[:2], seq=0, ts=0)
    out += feed(d, payloads[3:], seq=3, ts=0)  # packet 2 lost
    assert out == [] and d.lost_packets == 1 and d.dropped_units == 1
    out = feed(d, [(P_SLICE, True)], seq=len(payloads), ts=3600)
    assert [au.data for au in out] == [annexb(P_SLICE)]


def test_duplicates_and_late_packets_are_ignored() -> None:
    d = Depacketizer("h264")
    assert len(d.push(rtp(P_SLICE, 5, 0, marker=True))) == 1
    assert d.push(rtp(P_SLICE, 5, 0, marker=True)) == []  # duplicate
    assert d.push(rtp(P_SLICE, 3, 0, marker=True)) == []  # late
    assert len(d.push(rtp(P_SLICE, 6, 3600, marker=True))) == 1
    assert d.dropped_units == 0


def test_sequence_and_timestamp_wrap_around() -> None:
    d = Depacketizer("h264")
    out = d.push(rtp(P_SLICE, 0xFFFF, 0xFFFFFFFF - 1799, marker=True))
    out += d.push(rtp(P_SLICE, 0, 1800, marker=True))  # both counters wrapped
    assert [au.timestamp for au in out] == [0xFFFFFFFF - 1799, 0xFFFFFFFF - 1799 + 3600]
    assert d.lost_packets == 0
    assert d.highest_seq == 0x10000 and d.received == 2  # extended, for RTCP receiver reports


def test_a_restarted_sender_new_ssrc_is_followed() -> None:
    d = Depacketizer("h264")
    assert len(d.push(rtp(P_SLICE, 100, 0, marker=True, ssrc=1))) == 1
    assert len(d.push(rtp(P_SLICE, 7, 50, marker=True, ssrc=2))) == 1  # far "behind", but a new stream


def test_h265_aggregation_and_fragmentation() -> None:
    vps, sps, pps = b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc1"
    idr = b"\x26\x01" + bytes(range(200)) * 10  # IDR_W_RADL (type 19)
    ap = b"\x60\x01" + b"".join(struct.pack("!H", len(n)) + n for n in (vps, sps, pps))  # type 48
    fu_header = bytes([0x62, 0x01])  # type 49, layer 0, tid 1
    body = idr[2:]
    frags = [body[i : i + 700] for i in range(0, len(body), 700)]
    packets = [(ap, False)]
    for i, f in enumerate(frags):
        s_e = (0x80 if i == 0 else 0) | (0x40 if i == len(frags) - 1 else 0)
        packets.append((fu_header + bytes([s_e | 19]) + f, i == len(frags) - 1))
    d = Depacketizer("h265")
    out = feed(d, packets, seq=0, ts=0)
    assert len(out) == 1 and out[0].keyframe
    assert out[0].data == annexb(vps, sps, pps, idr)


def test_parse_rtp_header_fields_extension_csrc_and_padding() -> None:
    payload = b"\x41\x01\x02"
    ext = struct.pack("!HH", 0xBEDE, 1) + b"\x00\x00\x00\x00"
    csrc = struct.pack("!I", 7)
    head = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 1, 0x80 | 96, 513, 90000, 42)
    pkt = parse_rtp(head + csrc + ext + payload + b"\x00\x00\x03")
    assert pkt is not None
    assert (pkt.payload_type, pkt.marker, pkt.seq, pkt.timestamp, pkt.ssrc) == (96, True, 513, 90000, 42)
    assert pkt.payload == payload
    assert parse_rtp(b"\x80\x60") is None  # too short
    assert parse_rtp(b"\x40" + bytes(11)) is None  # RTP version 1


GST_SDP = """v=0
o=- 1188340656180883 1 IN IP4 127.0.0.1
s=Session streamed with GStreamer
t=0 0
a=tool:GStreamer
a=type:broadcast
a=control:*
a=range:npt=now-
m=audio 0 RTP/AVP 0
a=control:stream=1
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
a=rtpmap:96 H264/90000
a=fmtp:96 packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=Z0LAH6o=,aM48gA==
a=control:stream=0
"""


def test_sdp_first_video_track_with_relative_control_and_parameter_sets() -> None:
    track = parse_sdp(GST_SDP, "rtsp://127.0.0.1:8554/cam/")
    assert track.codec == "h264" and track.payload_type == 96 and track.clock_rate == 90000
    assert track.control_url == "rtsp://127.0.0.1:8554/cam/stream=0"
    assert track.parameter_sets == (SPS, PPS)
    absolute = GST_SDP.replace("a=control:stream=0", "a=control:rtsp://10.0.0.1/x/trackID=1")
    assert parse_sdp(absolute, "rtsp://h/cam").control_url == "rtsp://10.0.0.1/x/trackID=1"
    no_slash = parse_sdp(GST_SDP, "rtsp://h/cam")
    assert no_slash.control_url == "rtsp://h/cam/stream=0"


def test_sdp_h265_parameter_sets() -> None:
    sdp = (
        "v=0\r\nm=video 0 RTP/AVP 97\r\na=rtpmap:97 H265/90000\r\n"
        "a=fmtp:97 sprop-vps=QAEM;sprop-sps=QgEB;sprop-pps=RAHB\r\na=control:trackID=0\r\n"
    )
    track = parse_sdp(sdp, "rtsp://h/cam/")
    assert track.codec == "h265" and track.payload_type == 97
    assert track.parameter_sets == (b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc1")


def test_sdp_without_h26x_video_names_what_the_camera_offers() -> None:
    sdp = "v=0\r\nm=video 0 RTP/AVP 26\r\na=rtpmap:26 JPEG/90000\r\nm=audio 0 RTP/AVP 0\r\n"
    with pytest.raises(ClientError, match="JPEG"):
        parse_sdp(sdp, "rtsp://h/cam/")


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def test_digest_answer_without_and_with_qop() -> None:
    a = _Auth("admin", "secret")
    assert a.challenge(['Basic realm="x"', 'Digest realm="cam", nonce="abc"'])  # Digest preferred
    header = a.header("DESCRIBE", "rtsp://h/cam")
    assert header is not None and header.startswith("Digest ")
    ha1, ha2 = _md5("admin:cam:secret"), _md5("DESCRIBE:rtsp://h/cam")
    assert f'response="{_md5(f"{ha1}:abc:{ha2}")}"' in header
    assert "secret" not in header

    a.challenge(['Digest realm="cam", nonce="n2", qop="auth,auth-int", opaque="op"'])
    header = a.header("PLAY", "rtsp://h/cam")
    assert header is not None
    fields = dict(kv.strip().split("=", 1) for kv in header[len("Digest ") :].split(","))
    cnonce = fields["cnonce"].strip('"')
    expect = _md5(f"{ha1}:n2:00000001:{cnonce}:auth:{_md5('PLAY:rtsp://h/cam')}")
    assert fields["response"] == f'"{expect}"' and fields["qop"] == "auth" and fields["opaque"] == '"op"'


def test_basic_answer_only_when_the_camera_asks_for_basic() -> None:
    a = _Auth("u", "p")
    assert a.header("OPTIONS", "rtsp://h/") is None  # never volunteered before a challenge
    assert a.challenge(['Basic realm="cam"'])
    assert a.header("OPTIONS", "rtsp://h/") == "Basic dTpw"
