"""H.264 / H.265 bitstream helpers shared by the encoder, the RTP packetizer, the depacketizer and the
publisher: Annex B start codes, NAL unit types, the 90 kHz video clock.

Ground floor: imports nothing of the package.
"""

from __future__ import annotations

from typing import Literal

Codec = Literal["h264", "h265"]

CLOCK_RATE = 90_000  # RTP's clock for video; EncodedPacket.pts90k is on it
START_CODE = b"\x00\x00\x00\x01"
NAL_SPS = 7  # H.264 sequence parameter set
NAL_PPS = 8  # H.264 picture parameter set


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream, without their start codes."""
    nals: list[bytes] = []
    n = len(data)
    i = data.find(b"\x00\x00\x01")
    while 0 <= i < n:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        if j < 0:
            end = n
        else:
            # A 4-byte start code's leading zero belongs to the start code, not to this NAL.
            end = j - 1 if j > start and data[j - 1] == 0 else j
        if end > start:
            nals.append(data[start:end])
        i = j
    return nals


def parameter_sets(data: bytes) -> tuple[bytes, bytes] | None:
    """(sps, pps) found in an H.264 Annex B buffer, or None when either is missing."""
    sps = pps = None
    for nal in split_annexb(data):
        kind = nal[0] & 0x1F
        if kind == NAL_SPS and sps is None:
            sps = nal
        elif kind == NAL_PPS and pps is None:
            pps = nal
    if sps is None or pps is None:
        return None
    return sps, pps


def has_sps(data: bytes) -> bool:
    """Whether an H.264 Annex B access unit carries a sequence parameter set."""
    return any(nal[0] & 0x1F == NAL_SPS for nal in split_annexb(data) if nal)


def nal_type(codec: Codec, nal: bytes) -> int:
    return (nal[0] >> 1) & 0x3F if codec == "h265" else nal[0] & 0x1F


def is_keyframe_nal(codec: Codec, t: int) -> bool:
    return 16 <= t <= 21 if codec == "h265" else t == 5


def is_parameter_set(codec: Codec, t: int) -> bool:
    return t in (32, 33, 34) if codec == "h265" else t in (7, 8)
