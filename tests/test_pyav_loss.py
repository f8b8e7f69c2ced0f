"""A lossy camera read through FFmpeg says how lossy it is too (issue 20, item 3, ingest "pyav").

FFmpeg's RTSP demuxer has no loss counters and flags no packet corrupt; it writes one log line per
RTP sequence gap ("RTP: missed N packets") from the thread that reads. The source captures its own
thread's lines while a pyav session runs and adds them to the same counters as the built-in client
(`rtp_packets_lost`, `damaged_frames`, `loss_percent`: /metrics, the API's `loss`, the page).
MPEG-TS over UDP (also read through FFmpeg) flags the packets of a frame that lost data corrupt.

Scripted cameras on loopback: RTSP over TCP, RTP over UDP with a seeded share of packets never sent;
MPEG-TS datagrams with a seeded share never sent. Assertions are on counts, never on wall-clock.
"""

from __future__ import annotations

import io
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import av
import av.logging
import numpy as np
import pytest
from prometheus_client import REGISTRY
from rtspkit import RtpCamera

from streamproxy.config import IngestConfig
from streamproxy.h264 import split_annexb
from streamproxy.live.source import _FFMPEG_LOG, CameraSource, _ffmpeg_message, _missed_packets
from streamproxy.metrics import CameraMetrics
from streamproxy.rtsp.rtp import packetize_h264
from streamproxy.status import loss_status
from streamproxy.types import DecodedFrame

FRAMES = 60  # frames each camera delivers before the counts are read (2.4 s at 25 fps)


def _keyframe(width: int = 320, height: int = 240) -> bytes:
    """One H.264 IDR access unit with its SPS and PPS (Annex B)."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"tune": "zerolatency", "preset": "ultrafast"}
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 128, np.uint8), format="bgr24")
    frame.pts = 0
    return b"".join(bytes(p) for p in [*enc.encode(frame), *enc.encode(None)])


class RandomLossCamera(RtpCamera):
    """RTSP camera sending the same keyframe 25 times a second (~7 RTP packets each); over UDP each
    packet is left unsent with probability `loss` (seeded), and `dropped` counts them."""

    def __init__(self, loss: float, seed: int = 20) -> None:
        frame = _keyframe()
        nals = split_annexb(frame)
        self.sps = next(n for n in nals if n[0] & 0x1F == 7)
        self.pps = next(n for n in nals if n[0] & 0x1F == 8)
        self.payloads = packetize_h264(frame, max_payload=200)
        self.loss = loss
        self.rng = random.Random(seed)
        self.dropped = 0
        super().__init__()

    def _send_frame(self, conn: socket.socket, udp_to: tuple[str, int] | None, seq: int, ts: int) -> int:
        for payload, marker in self.payloads:
            if udp_to is not None and self.rng.random() < self.loss:
                self.dropped += 1
            else:
                self._rtp(conn, udp_to, seq, ts, marker, payload)
            seq += 1
        return seq


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def _pyav_source(name: str, url: str, got: list[DecodedFrame]) -> CameraSource:
    CameraMetrics(name)  # its series exist at 0, as the pipeline makes them
    ingest = IngestConfig(demuxer="pyav", read_timeout_s=3.0, open_timeout_s=5, backoff_initial_s=0.1)
    return CameraSource(name, url, "udp", ingest, on_frame=got.append)


def _counter(family: str, camera: str) -> float:
    return REGISTRY.get_sample_value(f"{family}_total", {"camera": camera}) or 0.0


def _measured(src: CameraSource, got: list[DecodedFrame]) -> Callable[[], bool]:
    return lambda: len(got) >= FRAMES and src.loss_percent is not None


def test_an_rtsp_camera_losing_5_percent_over_udp_counts_its_loss_and_a_clean_one_reads_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both cameras at once, each on its own ingest thread: a loss is counted for the camera whose
    demuxer saw it, never for the other."""
    assert av.logging.get_level() is None  # PyAV's default: FFmpeg's log dropped
    caplog.set_level(logging.DEBUG, logger="libav")
    got_lossy: list[DecodedFrame] = []
    got_clean: list[DecodedFrame] = []
    with RandomLossCamera(0.05) as lossy_cam, RandomLossCamera(0.0) as clean_cam:
        lossy = _pyav_source("pyav-lossy", lossy_cam.url, got_lossy)
        clean = _pyav_source("pyav-clean", clean_cam.url, got_clean)
        lossy.start()
        clean.start()
        try:
            assert _wait(_measured(lossy, got_lossy), 30.0), (lossy.state, lossy.last_error)
            assert _wait(_measured(clean, got_clean), 30.0), (clean.state, clean.last_error)
            assert lossy.state == "live" and lossy.connected_transport == "udp"
            assert lossy.loss_percent is not None and lossy.loss_percent > 0  # share of frames damaged
            assert clean.loss_percent == 0.0
        finally:
            lossy.stop()
            clean.stop()
    assert lossy_cam.transports == ["udp"] and clean_cam.transports == ["udp"]
    assert lossy_cam.dropped > 0 and clean_cam.dropped == 0
    # Each gap once, and only what the camera left unsent (no other loss on loopback at this rate).
    assert 0 < lossy.rtp_packets_lost <= lossy_cam.dropped
    assert 0 < lossy.damaged_frames < lossy.frames_in  # ~30 % of 7-packet frames lose one
    assert clean.rtp_packets_lost == 0 and clean.damaged_frames == 0
    assert _counter("streamproxy_rtp_packets_lost", "pyav-lossy") == lossy.rtp_packets_lost
    assert _counter("streamproxy_damaged_frames", "pyav-lossy") == lossy.damaged_frames
    assert _counter("streamproxy_rtp_packets_lost", "pyav-clean") == 0
    status = loss_status(lossy)
    assert status is not None and status.rtp_packets_lost == lossy.rtp_packets_lost
    assert status.damaged_frames == lossy.damaged_frames and not status.tcp_fallback
    # FFmpeg's log is back to PyAV's default once no pyav session runs, and none of its lines (a
    # damaged frame's decoder errors) reached the service log meanwhile.
    assert av.logging.get_level() is None
    assert not [r for r in caplog.records if r.name.startswith("libav")]


def _mpegts(frames: int = 125) -> bytes:
    """An H.264 MPEG-TS stream (a keyframe every 25 frames) with detail enough for ~5 datagrams a frame."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"tune": "zerolatency", "preset": "ultrafast", "g": "25"}
        for i in range(frames):
            img = np.full((240, 320, 3), (i * 3) % 255, np.uint8)
            img[::7, ::5] = 255
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _send_ts(ts: bytes, port: int, loss: float, seconds: float, stop: threading.Event) -> int:
    """Send `ts` to 127.0.0.1:`port` as 7-packet datagrams spread over `seconds`; returns those left unsent."""
    rng = random.Random(3)
    chunks = [ts[i : i + 1316] for i in range(0, len(ts), 1316)]
    dropped = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for k, chunk in enumerate(chunks):
            if stop.is_set():
                break
            if rng.random() < loss:
                dropped += 1
            else:
                udp.sendto(chunk, ("127.0.0.1", port))
            delay = started + (k + 1) * seconds / len(chunks) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return dropped


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bound(port: int) -> bool:
    """Someone (FFmpeg) has bound this loopback UDP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_an_mpegts_camera_over_udp_counts_frames_that_lost_data_as_damaged() -> None:
    """udp:// MPEG-TS (read through FFmpeg too): no RTP, so no packet count, but FFmpeg flags the
    packets of a frame that lost data corrupt; a clean stream read at the same time counts none."""
    ts = _mpegts()
    results: dict[str, int] = {}
    stop = threading.Event()
    sources: dict[str, CameraSource] = {}
    got: dict[str, list[DecodedFrame]] = {}
    senders = []
    ports = []
    for name, loss in (("ts-lossy", 0.05), ("ts-clean", 0.0)):
        port = _free_udp_port()
        ports.append(port)
        got[name] = []
        sources[name] = _pyav_source(name, f"udp://127.0.0.1:{port}", got[name])
        sources[name].start()

        def send(name: str = name, port: int = port, loss: float = loss) -> None:
            results[name] = _send_ts(ts, port, loss, 5.0, stop)

        senders.append(threading.Thread(target=send, daemon=True))
    try:
        # Sent once FFmpeg listens: a clean stream must start at its beginning to read clean.
        assert _wait(lambda: all(_bound(p) for p in ports), 20.0)
        for t in senders:
            t.start()
        for t in senders:
            t.join(30)
        assert _wait(lambda: all(s.frames_in >= FRAMES for s in sources.values()), 10.0)
    finally:
        stop.set()
        for s in sources.values():
            s.stop()
    lossy, clean = sources["ts-lossy"], sources["ts-clean"]
    assert results["ts-lossy"] > 0 and results["ts-clean"] == 0
    assert lossy.damaged_frames > 0 and lossy.rtp_packets_lost == 0
    assert lossy.loss_percent is None or lossy.loss_percent > 0  # None once the session ended
    assert _counter("streamproxy_damaged_frames", "ts-lossy") == lossy.damaged_frames
    assert clean.damaged_frames == 0 and clean.rtp_packets_lost == 0


def test_missed_packets_are_read_from_ffmpegs_lines() -> None:
    lines = [
        (24, "rtsp", "RTP: missed 3 packets\n"),
        (24, "rtsp", "max delay reached. need to consume packet\n"),
        (24, "rtsp", "RTP: missed -65534 packets\n"),  # a gap across the 16-bit wrap: 2
        (16, "h264", "error while decoding MB 3 4\n"),
    ]
    assert _missed_packets(lines) == 5 and lines == []  # emptied: each line counted once
    # While FFmpeg's log is routed, PyAV appends the last error line from any thread to an error's text;
    # the source's messages leave it out (it may be another camera's).
    with _FFMPEG_LOG.session(), pytest.raises(av.error.InvalidDataError) as raised:
        av.logging.log(av.logging.ERROR, "h264", "error while decoding MB 3 4\n")
        av.error.err_check(-1094995529, "x")  # AVERROR_INVALIDDATA
    assert "last error log" in str(raised.value)
    assert _ffmpeg_message(raised.value) == "[Errno 1094995529] Invalid data found when processing input: 'x'"


def test_ffmpegs_log_is_routed_only_while_a_session_runs_and_kept_apart_per_thread() -> None:
    assert av.logging.get_level() is None
    from_thread: list[tuple[int, str, str]] = []
    with _FFMPEG_LOG.session() as mine, _FFMPEG_LOG.session() as inner:
        assert av.logging.get_level() == av.logging.WARNING
        av.logging.log(av.logging.WARNING, "rtsp", "RTP: missed 2 packets\n")
        other = threading.Thread(
            target=av.logging.log, args=(av.logging.WARNING, "rtsp", "RTP: missed 9 packets\n")
        )
        other.start()
        other.join(5)
        assert _missed_packets(inner) == 2 and mine == []  # the innermost capture of this thread
        others = _FFMPEG_LOG.other_lines
        assert others is not None and [m for _, _, m in others] == ["RTP: missed 9 packets\n"]
        from_thread = list(others)
        _FFMPEG_LOG.drain_others()
        assert others == []
    assert from_thread and av.logging.get_level() is None and _FFMPEG_LOG.other_lines is None
    # A level set by someone else is theirs: kept, not turned off at the end.
    av.logging.set_level(av.logging.VERBOSE)
    try:
        with _FFMPEG_LOG.session() as lines:
            av.logging.log(av.logging.WARNING, "rtsp", "RTP: missed 1 packets\n")
            assert _missed_packets(lines) == 1
        assert av.logging.get_level() == av.logging.VERBOSE
    finally:
        av.logging.set_level(None)
