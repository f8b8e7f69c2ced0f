"""One H.264 encoder per camera: anonymized frames in, Annex B access units out.

The output is shared by every viewer (RTSP and WebRTC), so it is made for joining at any time:
parameter sets repeat before every keyframe (`repeat-headers=1`), there are no B-frames (so
decode order is presentation order and nothing waits for a future frame), and a keyframe can be
forced when a viewer joins instead of making it wait up to a GOP.

`encode()` is meant to be called from a worker thread: PyAV releases the GIL while libx264 works.
One encoder is used by one thread at a time. `StreamOutput` is the one way from an encoder to a
stream hub: every stream of a camera (its frames, its slate, its sub stream) goes through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

import av
import av.video.frame
import numpy as np

from streamproxy.config import EncoderConfig, SubStreamConfig, sub_stream_size
from streamproxy.engine.obfuscate import shrink_yuv420
from streamproxy.h264 import CLOCK_RATE, parameter_sets
from streamproxy.hub import CodecInfo, StreamHub
from streamproxy.types import EncodedPacket

log = logging.getLogger(__name__)


class FrameEncoder(Protocol):
    """What `StreamOutput` needs of an encoder: frames in, access units out, and the parameter sets
    once known (H264Encoder, SubStreamEncoder, or a test's stand-in)."""

    @property
    def codec_info(self) -> CodecInfo | None: ...

    def encode(
        self, frame: av.VideoFrame, decoded_at: float, force_keyframe: bool = False
    ) -> list[EncodedPacket]: ...


class VideoEncoder(FrameEncoder, Protocol):
    """An encoder made for one frame size and rate, as the pipeline makes and replaces them."""

    width: int  # the encoded size
    height: int
    fps: float

    def close(self) -> None: ...


# How the pipeline makes an encoder: (settings, width, height, fps, name for the log). H264Encoder
# itself by default; tests pass their own to drive the pipeline without libx264's costs.
EncoderFactory = Callable[[EncoderConfig, int, int, float, str], VideoEncoder]


class StreamOutput:
    """One stream's way from its encoder (a thread of its own) to its hub (on the event loop).

    `send` encodes on the calling thread and hops to the loop with `call_soon_threadsafe`: the hub
    learns the codec when it is first known or changes (a new encoder: new size, rate or parameter
    sets), before the packets that need it, and then gets the packets in order. `on_published`, when
    given, hears of each packet of a `measured` frame on the loop, right after the hub took it (where
    proxy-added latency ends); a slate is not measured, it is our own picture and not a camera frame.
    """

    def __init__(
        self,
        hub: StreamHub,
        loop: asyncio.AbstractEventLoop,
        on_published: Callable[[EncodedPacket, float], None] | None = None,
    ) -> None:
        self.hub = hub
        self._loop = loop
        self._on_published = on_published
        # What this output last told the hub, from the encoder thread: the hub's own `codec` is set
        # on the loop and may lag behind it.
        self._announced: CodecInfo | None = None

    def send(
        self,
        enc: FrameEncoder,
        frame: av.VideoFrame,
        decoded_at: float,
        *,
        force_keyframe: bool = False,
        measured: bool = True,
    ) -> None:
        """Encode `frame` with `enc` (a keyframe when forced or when a viewer asked the hub for one)
        and hand what comes out to the hub. Call from one thread at a time."""
        # A forced keyframe leaves a viewer's request standing for the next frame, as it always did.
        packets = enc.encode(
            frame, decoded_at, force_keyframe=force_keyframe or self.hub.take_keyframe_request()
        )
        info = enc.codec_info
        if info is not None and info != self._announced:
            self._announced = info
            self._loop.call_soon_threadsafe(self.hub.set_codec, info)
        for pkt in packets:
            self._loop.call_soon_threadsafe(self._publish, pkt, measured)

    def _publish(self, pkt: EncodedPacket, measured: bool) -> None:
        """On the event loop: hand the packet to the hub's viewers."""
        self.hub.publish(pkt)
        if measured and self._on_published is not None:
            self._on_published(pkt, time.monotonic())


def _even_crop(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """Copy the top-left width x height of a yuv420p frame (drops the odd last row/column).

    Cropping one line is invisible; scaling by one pixel would resample the whole picture.
    """
    out = av.VideoFrame(width, height, "yuv420p")
    for i, (src_plane, dst_plane) in enumerate(zip(frame.planes, out.planes, strict=True)):
        pw, ph = (width, height) if i == 0 else (width // 2, height // 2)
        src = np.frombuffer(memoryview(src_plane), np.uint8).reshape(src_plane.height, src_plane.line_size)
        dst = np.frombuffer(memoryview(dst_plane), np.uint8).reshape(dst_plane.height, dst_plane.line_size)
        dst[:ph, :pw] = src[:ph, :pw]
    return out


class H264Encoder:
    """libx264, low latency, Annex B with in-band parameter sets; see the module docstring."""

    def __init__(self, cfg: EncoderConfig, width: int, height: int, fps: float, name: str = "") -> None:
        if width < 2 or height < 2:
            raise ValueError(f"frame size {width}x{height} too small to encode")
        self.name = name
        self.cfg = cfg
        self.src_width = width
        self.src_height = height
        # H.264 4:2:0 needs even sides: odd frames are cropped by one row/column.
        self.width = width - (width % 2)
        self.height = height - (height % 2)
        self.fps = fps if fps and fps > 0 else 25.0
        self.gop = max(1, round(cfg.gop_seconds * self.fps))
        self._last_pts = -1
        self._last_actual = -1
        self._interval = CLOCK_RATE / self.fps  # recent frame interval, 90 kHz ticks
        self._announced: int | None = None
        self._next_of: dict[int, int] = {}  # pts -> the next frame's announced pts
        self._t0: float | None = None
        self._pending: dict[int, float] = {}  # pts -> decoded_at, for frames still inside the encoder
        self._codec_info: CodecInfo | None = None
        self._closed = False

        ctx = av.CodecContext.create(cfg.codec, "w")
        assert isinstance(ctx, av.VideoCodecContext)
        ctx.width = self.width
        ctx.height = self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, CLOCK_RATE)
        ctx.framerate = Fraction(self.fps).limit_denominator(1001)
        ctx.bit_rate = cfg.bitrate_kbps * 1000
        ctx.gop_size = self.gop
        ctx.max_b_frames = 0
        ctx.thread_count = cfg.threads
        kbps = cfg.bitrate_kbps
        ctx.options = {
            "preset": cfg.preset,
            "tune": "zerolatency",
            # forced-idr: a forced keyframe must be an IDR so that a joining decoder can start there.
            "forced-idr": "1",
            "x264-params": ":".join(
                [
                    "repeat-headers=1",  # SPS/PPS before every keyframe: viewers join mid-stream
                    "annexb=1",
                    "bframes=0",
                    f"keyint={self.gop}",
                    # A one-second VBV keeps keyframe bursts within what a viewer buffer absorbs.
                    f"vbv-maxrate={kbps}",
                    f"vbv-bufsize={kbps}",
                ]
            ),
        }
        ctx.open()
        self._ctx: av.VideoCodecContext | None = ctx
        self._try_extradata()
        log.info(
            "%s: H.264 encoder %dx%d @ %.2f fps, %d kbit/s, GOP %d, preset %s, threads %d",
            name or "-",
            self.width,
            self.height,
            self.fps,
            kbps,
            self.gop,
            cfg.preset,
            cfg.threads,
        )

    @property
    def codec_info(self) -> CodecInfo | None:
        """Parameter sets for the SDP; None until the first keyframe has been encoded."""
        return self._codec_info

    def _try_extradata(self) -> None:
        extradata = self._ctx.extradata if self._ctx is not None else None
        if extradata:
            self._set_codec_info(bytes(extradata))

    def _set_codec_info(self, data: bytes) -> None:
        ps = parameter_sets(data)
        if ps is None:
            return
        sps, pps = ps
        self._codec_info = CodecInfo(self.width, self.height, self.fps, sps, pps)

    def _next_pts(self, decoded_at: float) -> int:
        # Wall-clock (decoder-out) time on a 90 kHz clock: camera timestamps jump on reconnect and
        # a slate has none, while viewers need a clock that only moves forward.
        #
        # Each frame also announces the next frame's timestamp (its own time + the recent frame
        # interval), and the next frame takes the announced value unless it is far off: evenly
        # spaced timestamps under capture jitter. The announcement is a prediction, never sent as a
        # timestamp: a frame far off takes its own time (rtsp/rtp.py stamps each access unit, its
        # delimiter included, with the access unit's own timestamp).
        if self._t0 is None:
            self._t0 = decoded_at
        actual = round((decoded_at - self._t0) * CLOCK_RATE)
        if self._last_actual >= 0:
            gap = actual - self._last_actual
            if 0 < gap < 2 * CLOCK_RATE:
                self._interval = 0.8 * self._interval + 0.2 * gap
        pts = actual
        if self._announced is not None and abs(actual - self._announced) < 0.5 * self._interval:
            pts = self._announced
        if pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        self._last_actual = actual
        self._announced = max(pts + 1, actual + round(self._interval))
        self._next_of[pts] = self._announced
        return pts

    def _prepare(self, frame: av.VideoFrame) -> av.VideoFrame:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p", threads=1)
        if frame.width == self.width and frame.height == self.height:
            return frame
        if frame.width == self.width + (self.src_width % 2) and frame.height == self.height + (
            self.src_height % 2
        ):
            return _even_crop(frame, self.width, self.height)
        # The camera changed resolution without the pipeline making a new encoder: scale, never fail.
        return frame.reformat(width=self.width, height=self.height, format="yuv420p", threads=1)

    def encode(
        self, frame: av.VideoFrame, decoded_at: float, force_keyframe: bool = False
    ) -> list[EncodedPacket]:
        """Encode one frame; returns the access units that came out (normally exactly one)."""
        if self._ctx is None:
            raise RuntimeError("encoder is closed")
        src = frame
        frame = self._prepare(frame)
        pts = self._next_pts(decoded_at)
        saved = (src.pts, src.pict_type, src.time_base)
        frame.pts = pts
        frame.time_base = self._ctx.time_base
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        else:
            frame.pict_type = av.video.frame.PictureType.NONE
        self._pending[pts] = decoded_at
        try:
            packets = self._ctx.encode(frame)
        finally:
            if frame is src:
                # The caller's frame may be shown elsewhere (e.g. a preview): leave it as it came.
                src.pts, src.pict_type = saved[0], saved[1]
                if saved[2] is not None:
                    src.time_base = saved[2]
        return self._wrap(packets)

    def _wrap(self, packets: list[av.Packet]) -> list[EncodedPacket]:
        out: list[EncodedPacket] = []
        now = time.monotonic()
        for p in packets:
            data = bytes(p)
            if not data:
                continue
            pts = p.pts if p.pts is not None else self._last_pts
            decoded_at = self._pending.pop(pts, now)
            key = bool(p.is_keyframe)
            if key and self._codec_info is None:
                self._set_codec_info(data)
            out.append(
                EncodedPacket(
                    data=data,
                    pts90k=pts,
                    next_pts90k=self._next_of.pop(pts, None),
                    keyframe=key,
                    decoded_at=decoded_at,
                    encoded_at=now,
                )
            )
        if len(self._pending) > 64:  # frames the encoder swallowed (should not happen without lookahead)
            for k in sorted(self._pending)[:-64]:
                del self._pending[k]
        if len(self._next_of) > 64:
            for k in sorted(self._next_of)[:-64]:
                del self._next_of[k]
        return out

    def flush(self) -> list[EncodedPacket]:
        """Drain frames still inside the encoder (there are none with zerolatency, normally)."""
        if self._ctx is None:
            return []
        try:
            return self._wrap(self._ctx.encode(None))
        except av.error.EOFError:
            return []

    def close(self) -> None:
        """Release the encoder. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        except av.error.FFmpegError as err:
            log.debug("%s: encoder flush at close failed: %s", self.name or "-", err)
        self._ctx = None

    def __enter__(self) -> H264Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SubStreamEncoder:
    """The camera's sub stream: its anonymized frames scaled down and thinned out, on its own encoder.

    Fed by the pipeline's encoder thread with the very frames the main stream encodes (rendered:
    copied and obfuscated), so it cannot carry anything the main stream does not. It keeps an even
    share of them (`due`), and the picture keeps the camera's aspect ratio unless a height is
    configured. A new encoder (starting
    with a keyframe) is made when the camera's size changes.
    """

    def __init__(
        self,
        cfg: SubStreamConfig,
        encoder: EncoderConfig,
        name: str = "",
        encoder_factory: EncoderFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = name
        # The main stream's encoder settings with the sub stream's bitrate.
        self._enc_cfg = encoder.model_copy(update={"bitrate_kbps": cfg.bitrate_kbps})
        self._make: EncoderFactory = encoder_factory if encoder_factory is not None else H264Encoder
        self._encoder: VideoEncoder | None = None
        self._src_size: tuple[int, int] | None = None
        self._credit = 1.0  # the first frame is kept
        self.frames_out = 0
        self.cpu_s = 0.0  # this thread's CPU time spent scaling and encoding (the benchmark's cost)

    @property
    def encoder(self) -> VideoEncoder | None:
        return self._encoder

    @property
    def codec_info(self) -> CodecInfo | None:
        """The current encoder's parameter sets (a new camera size makes a new encoder, and new ones)."""
        return self._encoder.codec_info if self._encoder is not None else None

    @property
    def size(self) -> tuple[int, int] | None:
        enc = self._encoder
        return (enc.width, enc.height) if enc is not None else None

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        return sub_stream_size(self.cfg, width, height)

    def due(self, camera_fps: float, always: bool = False) -> bool:
        """Whether the main stream's next frame belongs to the sub stream (asked for every one).

        It keeps fps/camera_fps of the main stream's frames, evenly (a 25-fps camera at 10 fps: 2 of
        every 5). Counted in the main stream's frames, not in time: when the main stream sheds frames
        under overload, the sub stream thins out with it, so its cost stays a fixed share of the main
        encode's instead of taking the CPU the camera lacks.
        """
        share = min(1.0, self.cfg.fps / camera_fps) if camera_fps > 0 else 1.0
        self._credit += share
        if always or self._credit >= 1.0 - 1e-9:
            self._credit = max(0.0, self._credit - 1.0)
            return True
        return False

    def encode(
        self, frame: av.VideoFrame, decoded_at: float, force_keyframe: bool = False
    ) -> list[EncodedPacket]:
        """Scale and encode one frame that was `due`. Returns the access units (normally one)."""
        t0 = time.thread_time()
        try:
            w, h = self.target_size(frame.width, frame.height)
            enc = self._encoder
            if enc is None or self._src_size != (frame.width, frame.height):
                if enc is not None:
                    log.info("%s: sub stream: camera size %s -> %s, new encoder", self.name or "-",
                             self._src_size, (frame.width, frame.height))  # fmt: skip
                    enc.close()
                enc = self._encoder = self._make(self._enc_cfg, w, h, self.cfg.fps, f"{self.name}/sub")
                self._src_size = (frame.width, frame.height)
            # A downscale that averages (no aliasing shimmer in a grid view).
            small = shrink_yuv420(frame, w, h)
            packets = enc.encode(small, decoded_at, force_keyframe=force_keyframe)
            self.frames_out += 1
            return packets
        finally:
            self.cpu_s += time.thread_time() - t0

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
