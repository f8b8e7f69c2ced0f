"""RTP depacketization of H.264 (RFC 6184) and H.265 (RFC 7798) into whole access units.

An access unit is complete when the packet carrying the RTP marker bit arrives (RFC 6184 §5.1,
RFC 7798 §4.1: the marker is set on the last packet of an access unit). That is the whole point of
this module: FFmpeg's RTSP demuxer instead runs its H.264 parser, which only knows a frame has ended
when the next one begins — one frame interval (40 ms at 25 fps) of latency on every frame.
A camera that never sets the marker still works: a new RTP timestamp also closes the previous unit.

Packet loss (a gap in sequence numbers) damages the access unit being assembled: it is dropped whole
and counted, and the decoder conceals from its references until the next keyframe, as it would with
FFmpeg's demuxer. Pure logic, no I/O: tests feed it packets directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streamproxy.h264 import START_CODE, Codec, is_keyframe_nal, is_parameter_set, nal_type

log = logging.getLogger(__name__)


MAX_REORDER = 64  # a packet at most this far behind the newest is late (dropped); further is a restart


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """The RTP header fields and payload (CSRCs, header extension and padding removed); None if malformed."""
    n = len(data)
    if n < 12 or data[0] >> 6 != 2:
        return None
    b0, b1 = data[0], data[1]
    off = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:  # header extension: 4-byte header, then length x 32-bit words
        if n < off + 4:
            return None
        off += 4 + 4 * int.from_bytes(data[off + 2 : off + 4], "big")
    end = n
    if b0 & 0x20:  # padding: the last byte says how many bytes to drop
        end -= data[-1]
    if end < off:
        return None
    return RtpPacket(
        payload_type=b1 & 0x7F,
        marker=bool(b1 & 0x80),
        seq=int.from_bytes(data[2:4], "big"),
        timestamp=int.from_bytes(data[4:8], "big"),
        ssrc=int.from_bytes(data[8:12], "big"),
        payload=data[off:end],
    )


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One coded picture in Annex B form (start codes), ready for the decoder."""

    data: bytes
    timestamp: int  # RTP timestamp, unwrapped (keeps growing past 2^32)
    keyframe: bool  # holds an IDR (H.264) / IRAP (H.265) picture: the decoder can start here


class Depacketizer:
    """Feeds on RTP packets of one stream, returns access units as they complete."""

    def __init__(self, codec: Codec, parameter_sets: list[bytes] | None = None) -> None:
        self.codec: Codec = codec
        # Parameter sets from the SDP (sprop-*): put in front of a keyframe that arrives without them,
        # since many cameras send them only out of band.
        self.parameter_sets = [p for p in parameter_sets or [] if p]
        self._nals: list[bytes] = []
        self._fu: bytearray | None = None  # fragmented NAL unit being reassembled
        self._ts: int | None = None  # RTP timestamp (32-bit) of the unit being assembled
        self._damaged = False
        self._last_seq: int | None = None
        self._ssrc: int | None = None
        self._last_ts32: int | None = None
        self._ts_ext = 0  # unwrapped timestamp of `_last_ts32`
        self.lost_packets = 0
        self.received = 0  # packets accepted (for RTCP receiver reports)
        self._cycles = 0  # sequence number wrap-arounds x 65536
        self.dropped_units = 0  # access units dropped because a packet of theirs was lost
        self.unsupported_packets = 0

    # --- public -----------------------------------------------------------------------------------
    def push(self, pkt: RtpPacket) -> list[AccessUnit]:
        out: list[AccessUnit] = []
        if self._ssrc is not None and pkt.ssrc != self._ssrc:
            # The sender restarted its stream: new numbering; what was being assembled is incomplete.
            if self._nals or self._fu is not None:
                self.dropped_units += 1
            self._nals, self._fu, self._damaged, self._ts = [], None, False, None
            self._last_seq = None
            self._cycles = 0
        self._ssrc = pkt.ssrc
        if self._last_seq is not None:
            gap = (pkt.seq - self._last_seq) & 0xFFFF
            if gap == 0 or 0x10000 - gap <= MAX_REORDER:
                return out  # duplicate or late (reordered) packet: too late for its access unit
            if gap > 1:  # lost packets (or a jump in numbering, counted the same)
                self.lost_packets += gap - 1 if gap < 0x8000 else 1
                self._damaged = True
                self._fu = None
            if pkt.seq < self._last_seq:
                self._cycles += 0x10000
        self._last_seq = pkt.seq
        self.received += 1
        if self._ts is not None and pkt.timestamp != self._ts:
            # A new timestamp: the previous unit ended without a marker (or its marker packet was lost).
            self._finish(out)
        self._ts = pkt.timestamp
        if pkt.payload:
            if self.codec == "h265":
                self._push_h265(pkt.payload)
            else:
                self._push_h264(pkt.payload)
        if pkt.marker:
            self._finish(out)
        return out

    @property
    def ssrc(self) -> int | None:
        """The sender's SSRC, once a packet came."""
        return self._ssrc

    @property
    def highest_seq(self) -> int:
        """Extended highest sequence number received (RFC 3550 §6.4.1: wrap-arounds x 65536 + seq)."""
        return self._cycles + (self._last_seq or 0)

    # --- internals ----------------------------------------------------------------------------------
    def _unwrap(self, ts32: int) -> int:
        if self._last_ts32 is None:
            self._ts_ext = ts32
        else:
            delta = (ts32 - self._last_ts32) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            self._ts_ext += delta
        self._last_ts32 = ts32
        return self._ts_ext

    def _finish(self, out: list[AccessUnit]) -> None:
        nals, damaged, ts = self._nals, self._damaged or self._fu is not None, self._ts
        self._nals, self._fu, self._damaged, self._ts = [], None, False, None
        if ts is None:
            return
        if damaged:
            self.dropped_units += 1
            return
        if not nals:
            return
        types = [nal_type(self.codec, n) for n in nals]
        keyframe = any(is_keyframe_nal(self.codec, t) for t in types)
        if keyframe and not any(is_parameter_set(self.codec, t) for t in types):
            nals = self.parameter_sets + nals
        data = b"".join(START_CODE + n for n in nals)
        out.append(AccessUnit(data=data, timestamp=self._unwrap(ts), keyframe=keyframe))

    def _push_h264(self, p: bytes) -> None:
        t = p[0] & 0x1F
        if 1 <= t <= 23:
            self._nals.append(p)
        elif t == 24:  # STAP-A: 16-bit size + NAL unit, repeated
            self._aggregate(p, 1)
        elif t == 28:  # FU-A: indicator, FU header (S, E, type), fragment
            if len(p) < 2:
                self._damaged = True
                return
            self._fragment(
                start=bool(p[1] & 0x80),
                end=bool(p[1] & 0x40),
                header=bytes([(p[0] & 0xE0) | (p[1] & 0x1F)]),
                body=p[2:],
            )
        else:  # STAP-B, MTAP, FU-B: interleaved mode, which no camera we know of uses
            self.unsupported_packets += 1
            self._damaged = True

    def _push_h265(self, p: bytes) -> None:
        if len(p) < 3:
            self._damaged = True
            return
        t = (p[0] >> 1) & 0x3F
        if t == 48:  # aggregation packet: 2-byte header, then 16-bit size + NAL unit, repeated
            self._aggregate(p, 2)
        elif t == 49:  # fragmentation unit: 2-byte header, FU header (S, E, type), fragment
            fu = p[2]
            header = bytes([(p[0] & 0x81) | ((fu & 0x3F) << 1), p[1]])
            self._fragment(start=bool(fu & 0x80), end=bool(fu & 0x40), header=header, body=p[3:])
        elif t == 50:  # PACI: not used by cameras
            self.unsupported_packets += 1
            self._damaged = True
        else:
            self._nals.append(p)

    def _aggregate(self, p: bytes, header_len: int) -> None:
        pos, n = header_len, len(p)
        while pos + 2 <= n:
            size = int.from_bytes(p[pos : pos + 2], "big")
            pos += 2
            if size == 0 or pos + size > n:
                self._damaged = True
                return
            self._nals.append(p[pos : pos + size])
            pos += size

    def _fragment(self, start: bool, end: bool, header: bytes, body: bytes) -> None:
        if start:
            if self._fu is not None:
                self._damaged = True  # the previous fragmented NAL never ended
            self._fu = bytearray(header)
        elif self._fu is None:
            self._damaged = True  # its start was lost
            return
        self._fu += body
        if end:
            self._nals.append(bytes(self._fu))
            self._fu = None
