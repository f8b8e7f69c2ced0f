"""rtsp/sdp.py: the one SDP parser (camera DESCRIBE answers, WHEP offers) and builder (our DESCRIBE)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.rtsp import sdp
from streamproxy.rtsp.client import parse_sdp
from streamproxy.serve.webrtc import offered_h264

SPS, PPS = bytes.fromhex("6742c01e8c8d40a0fd00f08846a0"), bytes.fromhex("68ce3c80")


def built() -> str:
    return sdp.build_video(
        session_name="cam1", tool="streamproxy", origin_ip="127.0.0.1", control="trackID=0", sps=SPS, pps=PPS,
        profile_level_id="42c01e", fps=15, width=640, height=360,
    ).decode()  # fmt: skip


def test_what_our_server_writes_our_client_reads_back() -> None:
    text = built()
    assert text.endswith("\r\n") and "a=framerate:15" in text and "a=x-dimensions:640,360" in text
    desc = sdp.parse(text)
    assert desc.control == "*" and [m.kind for m in desc.media] == ["video"]
    assert desc.media[0].encoding("96") == ("H264", "90000")
    assert desc.media[0].params("96")["packetization-mode"] == "1"
    track = parse_sdp(text, "rtsp://127.0.0.1:8554/cam1")
    assert track.codec == "h264" and track.payload_type == 96 and track.clock_rate == 90000
    assert track.parameter_sets == (SPS, PPS)
    assert track.control_url == "rtsp://127.0.0.1:8554/cam1/trackID=0"


def test_an_ipv6_origin_is_not_written_into_an_ip4_line() -> None:
    text = sdp.build_video(
        session_name="c", tool="t", origin_ip="::1", control="x", sps=SPS, pps=PPS, profile_level_id="42c01e",
        fps=0, width=1, height=1,
    ).decode()  # fmt: skip
    assert "IN IP4 0.0.0.0" in text and "::1" not in text and "framerate" not in text


def test_the_whep_check_reads_the_same_parser() -> None:
    assert offered_h264(built()) is None
    vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    assert offered_h264(vp8) == "no H.264 offered (this server sends H.264 only)"
    mode0 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97\r\na=rtpmap:97 H264/90000\r\na=fmtp:97 profile-level-id=42e01f\r\n"
    assert offered_h264(mode0) == "no H.264 with packetization-mode=1 offered"
    audio_only = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
    assert offered_h264(audio_only) is not None


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.text(max_size=400))
def test_parse_never_raises(text: str) -> None:
    desc = sdp.parse(text)
    for m in desc.media:
        for pt in m.payload_types:
            m.encoding(pt)
            m.params(pt)
