"""Access unit delimiters announce the next frame, so FFmpeg-based viewers decode a frame at once."""

from __future__ import annotations

import itertools
import struct

import av
import numpy as np

from streamproxy.config import EncoderConfig
from streamproxy.live.encode import H264Encoder
from streamproxy.rtsp.rtp import AUD_PAYLOAD, RtpStream, packetize_h264


def _frames(n: int) -> list[av.VideoFrame]:
    rng = np.random.default_rng(0)
    return [
        av.VideoFrame.from_ndarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), format="bgr24")
        for _ in range(n)
    ]


def test_each_frame_announces_the_next_timestamp() -> None:
    enc = H264Encoder(EncoderConfig(), 160, 120, 25)
    pkts = []
    for i, f in enumerate(_frames(8)):
        # Jittered capture times around 40 ms: the announced timestamp still wins.
        pkts += enc.encode(f, 100.0 + i * 0.04 + (0.003 if i % 2 else -0.002))
    enc.close()
    assert len(pkts) == 8
    for a, b in itertools.pairwise(pkts):
        assert a.next_pts90k == b.pts90k
        assert b.pts90k > a.pts90k


def test_a_gap_takes_the_real_time_not_the_announcement() -> None:
    enc = H264Encoder(EncoderConfig(), 160, 120, 25)
    f = _frames(3)
    p0 = enc.encode(f[0], 10.0)[0]
    p1 = enc.encode(f[1], 10.04)[0]
    p2 = enc.encode(f[2], 12.0)[0]  # camera outage: two seconds later
    enc.close()
    assert p1.pts90k == p0.next_pts90k
    assert abs(p2.pts90k - p0.pts90k - 2 * 90_000) < 500


def test_rtp_sends_the_aud_after_the_marker_with_the_next_timestamp() -> None:
    enc = H264Encoder(EncoderConfig(), 160, 120, 25)
    pkts = [p for i, f in enumerate(_frames(2)) for p in enc.encode(f, 5.0 + i * 0.04)]
    enc.close()
    rtp = RtpStream(ssrc=1, seq=0, ts_base=1000)
    first = rtp.packets_udp(pkts[0], packetize_h264(pkts[0].data))
    second = rtp.packets_udp(pkts[1], packetize_h264(pkts[1].data))
    hdr = struct.Struct("!BBHII")

    def ts_marker(p: bytes) -> tuple[int, bool]:
        _, mpt, _, ts, _ = hdr.unpack(p[:12])
        return ts, bool(mpt & 0x80)

    *media, aud = first
    assert aud[12:] == AUD_PAYLOAD and ts_marker(aud) == (ts_marker(second[0])[0], False)
    assert ts_marker(media[-1])[1] and not any(ts_marker(p)[1] for p in media[:-1])
    assert ts_marker(second[0])[0] - ts_marker(media[0])[0] == pkts[1].pts90k - pkts[0].pts90k
