"""RTP packetization of H.264 (RFC 6184) and RTCP sender reports (RFC 3550).

An access unit is split into payloads once and the payloads are shared by every viewer of the
camera; each viewer only adds its own 12-byte RTP header (own SSRC, sequence numbers, timestamp
offset), so the per-viewer cost is a few struct.pack calls and one write per frame. The packets'
timestamps are taken as they come: the hub's Subscription already made them forward-only.

Every NAL unit of an access unit carries that access unit's timestamp (RFC 6184 §5.1), and an
access unit's packets leave together. The access unit delimiter that opens each one is its first
NAL unit, stamped like the rest, never sent ahead: an AUD sent after a frame with the *predicted*
next timestamp put a second timestamp into the next access unit whenever the next frame came
earlier or later than predicted (uneven pacing, a shed frame, a busy host), and recorders saw
their dts go back (ZoneMinder dropped such frames: "non increasing dts").
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict

from streamproxy.h264 import split_annexb
from streamproxy.types import EncodedPacket

PAYLOAD_TYPE = 96
MAX_PAYLOAD = 1400  # RTP payload bytes: 1412-byte packets fit a 1500-byte Ethernet MTU with UDP/IP
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
SR_INTERVAL_S = 2.0  # RTCP sender reports: often enough for lip-sync/latency tools, negligible cost

_RTP_HEADER = struct.Struct("!BBHII")
_TCP_RTP_HEADER = struct.Struct("!cBHBBHII")  # '$', channel, length, then the RTP header
_SR = struct.Struct("!BBHIIIIII")

Payloads = tuple[tuple[bytes, bool], ...]  # (payload, marker) per RTP packet of one access unit
# The access unit delimiter (NAL type 9, any slice types) that opens every access unit the server
# sends, with that access unit's timestamp (see the module docstring): an explicit boundary for
# recorders that keep the elementary stream (H.264 in MPEG-TS wants one in every access unit).
AUD_PAYLOAD = b"\x09\xf0"


def packetize_h264(data: bytes, max_payload: int = MAX_PAYLOAD) -> Payloads:
    """RTP payloads for one Annex B access unit: single NAL units, FU-A for large ones."""
    nals = [n for n in split_annexb(data) if n and (n[0] & 0x1F) != 9]  # access unit delimiters add nothing
    out: list[tuple[bytes, bool]] = []
    for idx, nal in enumerate(nals):
        last_nal = idx == len(nals) - 1
        if len(nal) <= max_payload:
            out.append((nal, last_nal))
            continue
        header = nal[0]
        fu_indicator = bytes([(header & 0xE0) | 28])
        nal_type = header & 0x1F
        body = memoryview(nal)[1:]
        chunk = max_payload - 2
        pos, n = 0, len(body)
        while pos < n:
            end = min(pos + chunk, n)
            start_bit = 0x80 if pos == 0 else 0
            end_bit = 0x40 if end == n else 0
            out.append(
                (
                    fu_indicator + bytes([start_bit | end_bit | nal_type]) + body[pos:end],
                    last_nal and end == n,
                )
            )
            pos = end
    return tuple(out)


def access_unit_payloads(data: bytes) -> Payloads:
    """What the server sends for one access unit: its delimiter, then its NAL units."""
    return ((AUD_PAYLOAD, False), *packetize_h264(data))


class PayloadCache:
    """Payloads of the last few access units, keyed by the identity of their data, shared by all
    viewers (each viewer's packet is its own copy with its own timestamps, the data is one)."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[int, tuple[bytes, Payloads]] = OrderedDict()

    def get(self, pkt: EncodedPacket) -> Payloads:
        data = pkt.data
        key = id(data)
        hit = self._items.get(key)
        if hit is not None and hit[0] is data:
            return hit[1]
        payloads = access_unit_payloads(data)
        # Holding the data keeps its id from being reused by another object while cached.
        self._items[key] = (data, payloads)
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return payloads


class RtpStream:
    """One viewer's RTP state: SSRC, sequence numbers, timestamp offset and RTCP counters."""

    def __init__(self, ssrc: int, seq: int, ts_base: int, cname: str = "streamproxy") -> None:
        self.ssrc = ssrc & 0xFFFFFFFF
        self.seq = seq & 0xFFFF
        self.ts_base = ts_base & 0xFFFFFFFF  # the RTP timestamp of the first packet sent (RTP-Info rtptime)
        self.cname = cname
        self._offset: int | None = None  # rtp_ts = pts90k + offset, fixed by the first packet
        self.packets = 0
        self.octets = 0
        self.last_pts90k: int | None = None
        self.last_decoded_at = 0.0

    def rtp_ts(self, pts90k: int) -> int:
        if self._offset is None:
            self._offset = self.ts_base - pts90k
        return (pts90k + self._offset) & 0xFFFFFFFF

    def now_pts90k(self) -> int | None:
        """The pts (on the clock of the packets sent) for 'now': the last one sent plus the time
        since its frame was decoded; None before the first packet."""
        if self.last_pts90k is None:
            return None
        elapsed = max(0.0, time.monotonic() - self.last_decoded_at)
        return self.last_pts90k + round(elapsed * 90_000)

    def next_rtptime(self) -> int:
        """RTP timestamp for 'now' (RTP-Info of a PLAY that resumes a paused session)."""
        pts = self.now_pts90k()
        return self.ts_base if pts is None else self.rtp_ts(pts)

    def _account(self, pkt: EncodedPacket, payloads: Payloads) -> int:
        ts = self.rtp_ts(pkt.pts90k)
        self.last_pts90k = pkt.pts90k
        self.last_decoded_at = pkt.decoded_at
        self.packets += len(payloads)
        self.octets += sum(len(p) for p, _ in payloads)
        return ts

    def packets_udp(self, pkt: EncodedPacket, payloads: Payloads) -> list[bytes]:
        ts = self._account(pkt, payloads)
        out = []
        seq = self.seq
        for payload, marker in payloads:
            out.append(
                _RTP_HEADER.pack(0x80, (0x80 if marker else 0) | PAYLOAD_TYPE, seq, ts, self.ssrc) + payload
            )
            seq = (seq + 1) & 0xFFFF
        self.seq = seq
        return out

    def frame_tcp(self, pkt: EncodedPacket, payloads: Payloads, channel: int) -> bytes:
        """All RTP packets of an access unit, `$`-framed for RTSP interleaving, as one buffer."""
        ts = self._account(pkt, payloads)
        parts: list[bytes | memoryview] = []
        seq = self.seq
        for payload, marker in payloads:
            parts.append(
                _TCP_RTP_HEADER.pack(
                    b"$",
                    channel,
                    12 + len(payload),
                    0x80,
                    (0x80 if marker else 0) | PAYLOAD_TYPE,
                    seq,
                    ts,
                    self.ssrc,
                )
            )
            parts.append(payload)
            seq = (seq + 1) & 0xFFFF
        self.seq = seq
        return b"".join(parts)

    def sender_report(self) -> bytes | None:
        """RTCP SR + SDES(CNAME) compound packet mapping wall-clock (NTP) time to RTP time."""
        if self.last_pts90k is None:
            return None
        now_wall = time.time()
        rtp_now = self.next_rtptime()
        ntp = now_wall + NTP_EPOCH_OFFSET
        ntp_sec = int(ntp) & 0xFFFFFFFF
        ntp_frac = int((ntp - int(ntp)) * (1 << 32)) & 0xFFFFFFFF
        sr = _SR.pack(
            0x80,
            200,
            6,
            self.ssrc,
            ntp_sec,
            ntp_frac,
            rtp_now,
            self.packets & 0xFFFFFFFF,
            self.octets & 0xFFFFFFFF,
        )
        return sr + sdes_cname(self.ssrc, self.cname)


def sdes_cname(ssrc: int, cname: str) -> bytes:
    """RTCP SDES packet with one chunk, the CNAME of `ssrc` (RFC 3550 §6.5), for a compound packet
    after an SR (our server) or an RR (our client). The item list ends with a zero octet and the
    chunk is padded to 32 bits."""
    name = cname.encode()[:255]
    chunk = struct.pack("!IBB", ssrc & 0xFFFFFFFF, 1, len(name)) + name + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk  # length: 32-bit words minus one
