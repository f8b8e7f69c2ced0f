"""H264Encoder: Annex B out, parameter sets in-band, forced keyframes, monotonic 90 kHz pts."""

from __future__ import annotations

import itertools

import av
import numpy as np
import pytest

from streamproxy.config import EncoderConfig
from streamproxy.h264 import parameter_sets, split_annexb
from streamproxy.live.encode import H264Encoder


def _frame(i: int, w: int, h: int) -> av.VideoFrame:
    y = (np.add.outer(np.arange(h), np.arange(w)) + i * 4).astype(np.uint8)
    if w % 2 == 0 and h % 2 == 0:
        uv = np.full((h // 2, w), 128, np.uint8)
        return av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
    rgb = np.dstack([y, y, y])
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def _nal_types(data: bytes) -> list[int]:
    return [n[0] & 0x1F for n in split_annexb(data)]


def test_split_annexb_3_and_4_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x01\x65\xcc\xdd"
    assert split_annexb(data) == [b"\x67\xaa", b"\x68\xbb", b"\x65\xcc\xdd"]
    assert parameter_sets(data) == (b"\x67\xaa", b"\x68\xbb")
    assert parameter_sets(b"\x00\x00\x01\x65\x00") is None


def test_keyframes_gop_and_in_band_parameter_sets() -> None:
    enc = H264Encoder(EncoderConfig(gop_seconds=1.0, bitrate_kbps=500), 160, 120, 10.0)
    pkts = []
    for i in range(25):
        pkts += enc.encode(_frame(i, 160, 120), decoded_at=100.0 + i * 0.1)
    pkts += enc.flush()
    assert len(pkts) == 25  # zerolatency + no B-frames: one packet per frame, no delay
    keys = [i for i, p in enumerate(pkts) if p.keyframe]
    assert keys == [0, 10, 20]  # GOP = gop_seconds * fps
    for i in keys:
        types = _nal_types(pkts[i].data)
        assert 7 in types and 8 in types and 5 in types  # SPS, PPS, IDR: viewers can join here
    assert all(pkts[i].data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01")) for i in range(25))
    info = enc.codec_info
    assert info is not None and info.width == 160 and info.height == 120
    assert info.sps[0] & 0x1F == 7 and info.pps[0] & 0x1F == 8
    pts = [p.pts90k for p in pkts]
    assert pts[0] == 0 and pts[1] == 9000 and all(b > a for a, b in itertools.pairwise(pts))
    enc.close()
    enc.close()  # idempotent


def test_forced_keyframe_is_idr_with_headers() -> None:
    enc = H264Encoder(EncoderConfig(gop_seconds=10.0), 160, 120, 25.0)
    out = [enc.encode(_frame(i, 160, 120), i * 0.04, force_keyframe=(i == 7)) for i in range(10)]
    assert [bool(o and o[0].keyframe) for o in out] == [True] + [False] * 6 + [True] + [False] * 2
    types = _nal_types(out[7][0].data)
    assert 5 in types and 7 in types and 8 in types
    assert out[7][0].encoded_at >= out[7][0].decoded_at


def test_pts_monotonic_even_when_clock_repeats() -> None:
    enc = H264Encoder(EncoderConfig(), 64, 64, 25.0)
    stamps = [5.0, 5.0, 4.9, 5.04, 5.04]
    pts = [enc.encode(_frame(i, 64, 64), t)[0].pts90k for i, t in enumerate(stamps)]
    assert all(b > a for a, b in itertools.pairwise(pts))


@pytest.mark.parametrize(("w", "h"), [(161, 121), (160, 121), (161, 120)])
def test_odd_sizes_are_cropped_to_even(w: int, h: int) -> None:
    enc = H264Encoder(EncoderConfig(), w, h, 25.0)
    pkts = enc.encode(_frame(0, w, h), 0.0)
    info = enc.codec_info
    assert info is not None and (info.width, info.height) == (w - w % 2, h - h % 2)
    dec = av.CodecContext.create("h264", "r")
    frames = []
    for p in pkts:
        frames += dec.decode(av.Packet(p.data))
    assert frames and (frames[0].width, frames[0].height) == (w - w % 2, h - h % 2)


def test_callers_frame_is_left_unchanged() -> None:
    enc = H264Encoder(EncoderConfig(), 64, 64, 25.0)
    f = _frame(0, 64, 64)
    f.pts = 1234
    enc.encode(f, 0.0, force_keyframe=True)
    assert f.pts == 1234
