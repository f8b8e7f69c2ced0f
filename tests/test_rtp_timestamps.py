"""RTP timestamps never go backwards, and every NAL unit of an access unit carries its timestamp
(RFC 6184 §5.1), whatever the frame pacing: frames that come earlier or later than the encoder
predicted, bursts, gaps, frames shed for a slow viewer.

The capture times are a fixed, seeded schedule passed to the encoder as `decoded_at`, so the
timestamps are the same on an idle and on a busy host; only the order and equality of timestamps
is asserted, never how long anything took. The end-to-end test records the real server with
`ffmpeg -c copy` to mp4 (what an FFmpeg-based recorder such as ZoneMinder does) and reads the
recording back with `ffprobe -show_packets`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
from pathlib import Path

import pytest
from rtspkit import Camera, gradient_frame, need_ffmpeg, run, serve

from streamproxy.config import EncoderConfig
from streamproxy.hub import StreamHub
from streamproxy.live.encode import H264Encoder
from streamproxy.rtsp.rtp import PayloadCache, RtpStream
from streamproxy.types import EncodedPacket
from streamproxy_sim.fakecam import uneven_schedule

pytestmark = pytest.mark.timeout(120)

_HDR = struct.Struct("!BBHII")


def _signed(d: int) -> int:
    d &= 0xFFFFFFFF
    return d - (1 << 32) if d >= 1 << 31 else d


def _nal_type(payload: bytes) -> int:
    t = payload[0] & 0x1F
    return payload[1] & 0x1F if t == 28 else t  # FU-A: the fragmented NAL unit's type


def _access_units(datagrams: list[bytes]) -> list[list[tuple[int, int]]]:
    """(RTP timestamp, NAL type) per packet, grouped into access units by the marker bit."""
    aus: list[list[tuple[int, int]]] = [[]]
    for d in datagrams:
        _, mpt, _, ts, _ = _HDR.unpack(d[:12])
        aus[-1].append((ts, _nal_type(d[12:])))
        if mpt & 0x80:
            aus.append([])
    return [au for au in aus if au]


def assert_forward_and_one_timestamp_per_au(datagrams: list[bytes]) -> int:
    aus = _access_units(datagrams)
    stamps = [ts for au in aus for ts, _ in au]
    back = sum(1 for a, b in itertools.pairwise(stamps) if _signed(b - a) < 0)
    assert back == 0, f"{back} backward RTP timestamp steps in {len(aus)} access units"
    for au in aus:
        assert len({ts for ts, _ in au}) == 1, f"an access unit with several timestamps: {au}"
        assert any(t in (1, 5) for _, t in au), f"an access unit without a picture: {au}"
    firsts = [au[0][0] for au in aus]
    assert all(_signed(b - a) > 0 for a, b in itertools.pairwise(firsts))
    return len(aus)


def _encode(enc: H264Encoder, hub: StreamHub, i: int, t: float) -> None:
    frame = gradient_frame(i, 160, 120, noise=False)
    for p in enc.encode(frame, 1000.0 + t, hub.take_keyframe_request()):
        if hub.codec is None and enc.codec_info is not None:
            hub.set_codec(enc.codec_info)
        hub.publish(p)


def _take_all(sub: object) -> list[EncodedPacket]:
    out = []
    while (p := sub.get_nowait()) is not None:  # type: ignore[attr-defined]
        out.append(p)
    return out


async def test_uneven_pacing_never_sends_a_timestamp_backwards() -> None:
    hub = StreamHub("cam1", buffer_packets=50)
    enc = H264Encoder(EncoderConfig(gop_seconds=1.0), 160, 120, 25, name="cam1")
    sub = hub.subscribe("rtsp", clock_base=0)
    rtp = RtpStream(ssrc=7, seq=0, ts_base=0xFFFFF000)  # wraps early: the check is modulo 2^32
    cache = PayloadCache()
    datagrams: list[bytes] = []
    for i, t in enumerate(uneven_schedule(200)):
        _encode(enc, hub, i, t)
        for p in _take_all(sub):
            datagrams += rtp.packets_udp(p, cache.get(p))
    enc.close()
    assert assert_forward_and_one_timestamp_per_au(datagrams) == 200


async def test_frames_shed_for_a_slow_viewer_leave_no_timestamp_behind() -> None:
    hub = StreamHub("cam1", buffer_packets=4)
    lost: list[int] = []
    hub.on_slow_viewer_drop = lambda _protocol, n: lost.append(n)
    enc = H264Encoder(EncoderConfig(gop_seconds=1.0), 160, 120, 25, name="cam1")
    sub = hub.subscribe("rtsp", clock_base=0)
    rtp = RtpStream(ssrc=7, seq=0, ts_base=1234)
    cache = PayloadCache()
    datagrams: list[bytes] = []
    for i, t in enumerate(uneven_schedule(200, seed=4)):
        _encode(enc, hub, i, t)
        if i % 9 < 3:  # the viewer reads in fits and starts: its buffer overflows and is shed
            for p in _take_all(sub):
                datagrams += rtp.packets_udp(p, cache.get(p))
    enc.close()
    assert sum(lost) > 0
    assert assert_forward_and_one_timestamp_per_au(datagrams) > 10


class UnevenCamera(Camera):
    """The rtspkit camera, but capture times follow `uneven_schedule` (and it sleeps to match)."""

    async def _run(self) -> None:
        sched = uneven_schedule(100_000)
        t0 = time.monotonic()
        for i, t in enumerate(sched):
            frame = gradient_frame(i, self.w, self.h, self.noise)
            force = self.hub.take_keyframe_request()
            pkts = await asyncio.to_thread(self.encode, frame, t0 + t, force)
            if self.hub.codec is None and self.enc.codec_info is not None:
                self.hub.set_codec(self.enc.codec_info)
            for p in pkts:
                self.hub.publish(p)
            self.frames += 1
            await asyncio.sleep(max(0.0, t0 + sched[i + 1] - time.monotonic()))


@pytest.mark.slow
@need_ffmpeg
async def test_ffmpeg_recording_under_uneven_pacing_has_increasing_dts(tmp_path: Path) -> None:
    out = tmp_path / "rec.mp4"
    async with serve(publish=False) as (_, hub, url):
        cam = UnevenCamera(hub)
        cam.start()
        try:
            rc, _, err = await run(
                "ffmpeg", "-v", "warning", "-rtsp_transport", "tcp", "-i", url, "-c", "copy",
                "-frames:v", "150", "-y", str(out), timeout=90,
            )  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                await cam.stop()
    assert rc == 0, err
    # ffmpeg repairs a DTS that goes back before muxing, and says so; a recorder that writes with
    # libavformat directly (ZoneMinder) drops the packet instead ("non increasing dts"). One line is
    # FFmpeg's own, with any RTSP source: its parser leaves the first frame without a timestamp (RTP
    # packets have no byte position to match it by), so the first two dts are both taken as 0.
    bad = [ln for ln in err.splitlines() if "monoton" in ln.lower() or "non increasing" in ln.lower()]
    bad = [ln for ln in bad if "previous: 0, current: 0;" not in ln]
    assert not bad, "\n".join(bad)
    rc, probe, err = await run(
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-show_packets", "-show_entries", "packet=dts",
        "-of", "csv=p=0", str(out), timeout=30,
    )  # fmt: skip
    assert rc == 0, err
    dts = [int(x) for x in probe.split() if x.strip().lstrip("-").isdigit()]
    assert len(dts) == 150
    back = sum(1 for a, b in itertools.pairwise(dts) if b <= a)
    assert back == 0, f"{back} non-increasing dts in {len(dts)} packets: {dts}"
