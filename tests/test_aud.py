"""The encoder announces each next frame's timestamp (even spacing under jitter); the RTP server opens
every access unit with an access unit delimiter that carries that access unit's own timestamp, never
a predicted one (tests/test_rtp_timestamps.py: under uneven pacing too)."""

from __future__ import annotations

import itertools
import struct

import av
import numpy as np

from streamproxy.config import EncoderConfig
from streamproxy.live.encode import H264Encoder
from streamproxy.rtsp.rtp import AUD_PAYLOAD, PayloadCache, RtpStream


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


def test_rtp_opens_each_access_unit_with_an_aud_of_its_own_timestamp() -> None:
    enc = H264Encoder(EncoderConfig(), 160, 120, 25)
    # The second frame comes 25 ms early, too far off to take the announced timestamp: an AUD sent
    # ahead with the announcement would have been later than this frame's own timestamp.
    pkts = [p for i, f in enumerate(_frames(2)) for p in enc.encode(f, 5.0 + 0.015 * i)]
    enc.close()
    assert pkts[0].next_pts90k is not None and pkts[1].pts90k < pkts[0].next_pts90k
    rtp = RtpStream(ssrc=1, seq=0, ts_base=1000)
    cache = PayloadCache()
    first = rtp.packets_udp(pkts[0], cache.get(pkts[0]))
    second = rtp.packets_udp(pkts[1], cache.get(pkts[1]))
    hdr = struct.Struct("!BBHII")

    def ts_marker(p: bytes) -> tuple[int, bool]:
        _, mpt, _, ts, _ = hdr.unpack(p[:12])
        return ts, bool(mpt & 0x80)

    for au in (first, second):
        aud, *media = au
        assert aud[12:] == AUD_PAYLOAD and AUD_PAYLOAD not in [p[12:] for p in media]
        assert len({ts_marker(p)[0] for p in au}) == 1, "one timestamp for every NAL unit of an access unit"
        assert ts_marker(au[-1])[1] and not any(ts_marker(p)[1] for p in au[:-1]), "the marker ends it"
    assert ts_marker(second[0])[0] - ts_marker(first[0])[0] == pkts[1].pts90k - pkts[0].pts90k
