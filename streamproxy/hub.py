"""Fan-out of one camera's encoded stream to its viewers (MediaMTX's "path": one publisher, many readers).

One encode per camera is shared by every viewer, RTSP and WebRTC alike. Each viewer has its own
bounded buffer: a viewer that does not keep up drops frames until the next keyframe instead of
slowing the camera or the other viewers; `on_slow_viewer_drop` reports them (the app counts them once,
in the camera's `streamproxy_frames_dropped_total{reason="slow_viewer"}`). Everything here runs on
the event loop.

Each viewer also has its own clock. The encoder's timestamps jump back when it restarts (the camera
changed resolution, or reconnected), and a viewer that joined late should not start at an
arbitrary time: a Subscription hands out packets whose `pts90k` (and `next_pts90k`) start at its
`clock_base` and only ever move forward, with the encoder's spacing kept otherwise. This is the only
place timestamps are repaired; RTSP, WebRTC and publish send what they are given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from streamproxy.h264 import CLOCK_RATE
from streamproxy.metrics import OutProtocol
from streamproxy.types import EncodedPacket

log = logging.getLogger(__name__)

DEFAULT_FRAME_INTERVAL = 3000  # 90 kHz ticks (30 fps): the step after a jump back while the hub has no codec


@dataclass(frozen=True, slots=True)
class CodecInfo:
    """What a viewer needs before the first packet (SDP for RTSP and WebRTC)."""

    width: int
    height: int
    fps: float
    sps: bytes  # H.264 sequence parameter set, without start code
    pps: bytes  # picture parameter set, without start code

    @property
    def profile_level_id(self) -> str:
        return self.sps[1:4].hex() if len(self.sps) >= 4 else "42e01f"


class Subscription:
    """One viewer's view of a stream: a bounded queue that starts and restarts at keyframes, and a
    forward-only clock (see the module docstring) that starts at `clock_base`."""

    def __init__(self, hub: StreamHub, protocol: OutProtocol, maxsize: int, clock_base: int = 0) -> None:
        self.hub = hub
        self.protocol = protocol
        self._maxsize = maxsize
        self._queue: deque[EncodedPacket] = deque()
        self._wakeup = asyncio.Event()
        self._need_keyframe = True  # a decoder can only start at a keyframe
        self.closed = False
        self.clock_base = clock_base
        self._offset: int | None = None  # this viewer's pts = encoder pts + offset
        self._last_pts: int | None = None

    def _offer(self, pkt: EncodedPacket) -> None:
        if self._need_keyframe:
            if not pkt.keyframe:
                return
            self._need_keyframe = False
        if len(self._queue) >= self._maxsize:
            # Too slow: throw away what is queued and wait for the next keyframe, so the viewer
            # resumes with a clean picture instead of a smeared one.
            lost = len(self._queue) + 1
            if self.hub.on_slow_viewer_drop is not None:
                self.hub.on_slow_viewer_drop(self.protocol, lost)
            self._queue.clear()
            self._need_keyframe = True
            self.hub.request_keyframe(slow_viewer=True)
            log.debug("%s: %s viewer too slow, dropped until next keyframe", self.hub.name, self.protocol)
            return
        self._queue.append(pkt)
        self._wakeup.set()

    async def get(self) -> EncodedPacket:
        """The next packet, on this viewer's clock; raises EOFError once the subscription or the
        hub is closed."""
        while not self._queue:
            if self.closed:
                raise EOFError(self.hub.name)
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._take()

    def _take(self) -> EncodedPacket:
        pkt = self._queue.popleft()
        if self.hub.on_sent is not None:
            self.hub.on_sent(self.protocol, len(pkt.data))
        return self._retime(pkt)

    def _retime(self, pkt: EncodedPacket) -> EncodedPacket:
        """The packet on this viewer's clock. Its `data` stays the same object, so the RTP
        payloads cut once per packet still serve every viewer (rtsp/rtp.PayloadCache)."""
        if self._offset is None:
            self._offset = self.clock_base - pkt.pts90k
        pts = pkt.pts90k + self._offset
        last = self._last_pts
        if last is not None and pts <= last:
            # Back in time or a repeat: a new encoder restarted its clock. One frame after the
            # last one, and the new encoder's spacing from there on.
            step = self._frame_interval()
            self._offset += last + step - pts
            log.debug(
                "%s: %s viewer: encoder clock went back %d ticks", self.hub.name, self.protocol, last - pts
            )
            pts = last + step
        self._last_pts = pts
        nxt = pkt.next_pts90k + self._offset if pkt.next_pts90k is not None else None
        if nxt is not None and nxt <= pts:
            nxt = None  # an announcement that is not ahead is no use
        if pts == pkt.pts90k and nxt == pkt.next_pts90k:
            return pkt
        return dataclasses.replace(pkt, pts90k=pts, next_pts90k=nxt)

    def _frame_interval(self) -> int:
        codec = self.hub.codec
        if codec is None or codec.fps <= 0:
            return DEFAULT_FRAME_INTERVAL
        return max(1, round(CLOCK_RATE / codec.fps))

    def get_nowait(self) -> EncodedPacket | None:
        if not self._queue:
            return None
        return self._take()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._wakeup.set()
        self.hub._remove(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class StreamHub:
    """The anonymized, encoded stream of one camera. The pipeline publishes; viewers subscribe."""

    def __init__(
        self,
        name: str,
        buffer_packets: int = 50,
        keyframe_min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.buffer_packets = buffer_packets
        self.keyframe_min_interval_s = keyframe_min_interval_s
        self._clock = clock
        self.codec: CodecInfo | None = None
        self._subs: list[Subscription] = []
        # Forced keyframes (see request_keyframe). The encoder thread takes requests, the loop makes
        # them: one lock for the few fields both touch.
        self._kf_lock = threading.Lock()
        self._keyframe_requested = False  # for the encoder's next frame
        self._keyframe_in_flight = False  # taken by the encoder, not yet published
        self._keyframe_deferred = False  # asked inside the interval: fires at its end
        self._last_forced = -math.inf  # when the last forced keyframe was handed to the encoder
        self.keyframes_forced = 0
        self.keyframe_requests_coalesced = 0
        self._last_slow_request = -math.inf
        self.packets_out = 0  # read by bench/webrtc_latency.py (the hub's packet rate)
        self._codec_waiters: list[asyncio.Future[CodecInfo]] = []
        self.on_viewers_changed: Callable[[StreamHub], None] | None = None
        self.on_sent: Callable[[OutProtocol, int], None] | None = None  # bytes handed to one viewer
        # Frames one slow viewer of `protocol` lost: the only place they are counted.
        self.on_slow_viewer_drop: Callable[[OutProtocol, int], None] | None = None

    # --- publisher side (the pipeline) ---
    def set_codec(self, codec: CodecInfo) -> None:
        self.codec = codec
        for fut in self._codec_waiters:
            if not fut.done():
                fut.set_result(codec)
        self._codec_waiters.clear()

    def publish(self, pkt: EncodedPacket) -> None:
        """Hand a packet to every viewer. Never blocks: slow viewers drop, not the camera."""
        self.packets_out += 1
        if pkt.keyframe:
            with self._kf_lock:
                # Every viewer waiting for a keyframe gets this one: what was asked before it is served.
                self._keyframe_in_flight = False
                self._keyframe_deferred = False
        for sub in list(self._subs):
            sub._offer(pkt)

    def request_keyframe(self, slow_viewer: bool = False) -> None:
        """Ask the encoder for a keyframe (a viewer joined, lost packets or fell behind).

        Forced keyframes are coalesced per camera to one per `keyframe_min_interval_s`, so a storm
        of joins or PLIs cannot turn every viewer's stream into keyframes. A request inside the
        interval is not dropped: it is served by the keyframe already requested (or taken by the
        encoder and not yet published), or else deferred to the interval's end; the first request
        after a quiet interval fires at once. So a viewer waits at most the interval plus a frame.
        A stuck viewer overflows again and again: its own requests are limited to one a second.
        """
        now = self._clock()
        if slow_viewer:
            if now - self._last_slow_request < 1.0:
                return
            self._last_slow_request = now
        with self._kf_lock:
            within = now - self._last_forced < self.keyframe_min_interval_s
            if self._keyframe_requested or (within and (self._keyframe_in_flight or self._keyframe_deferred)):
                self.keyframe_requests_coalesced += 1  # the keyframe on its way serves this one too
            elif within:
                self._keyframe_deferred = True
                self.keyframe_requests_coalesced += 1
            else:
                self._fire(now)

    def _fire(self, now: float) -> None:
        # Under _kf_lock.
        self._keyframe_requested = True
        self._keyframe_deferred = False
        self._last_forced = now
        self.keyframes_forced += 1

    def take_keyframe_request(self) -> bool:
        """The encoder asks once per frame (from its thread); a request is served once. A deferred
        request fires here, at the first frame after the interval."""
        with self._kf_lock:
            if self._keyframe_deferred:
                now = self._clock()
                if now - self._last_forced >= self.keyframe_min_interval_s:
                    self._fire(now)
            req = self._keyframe_requested
            self._keyframe_requested = False
            if req:
                self._keyframe_in_flight = True
            return req

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    # --- viewer side ---
    async def wait_codec(self, timeout: float) -> CodecInfo:
        if self.codec is not None:
            return self.codec
        fut: asyncio.Future[CodecInfo] = asyncio.get_running_loop().create_future()
        self._codec_waiters.append(fut)
        return await asyncio.wait_for(fut, timeout)

    def subscribe(self, protocol: OutProtocol, clock_base: int = 0) -> Subscription:
        """A new viewer; its first packet carries pts90k == clock_base (a resumed RTSP session
        continues its timeline from there)."""
        sub = Subscription(self, protocol, self.buffer_packets, clock_base)
        self._subs.append(sub)
        self.request_keyframe()  # a new viewer should not wait a whole GOP for its first picture
        if self.on_viewers_changed:
            self.on_viewers_changed(self)
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            if self.on_viewers_changed:
                self.on_viewers_changed(self)

    def viewers(self, protocol: OutProtocol | None = None) -> int:
        return sum(1 for s in self._subs if protocol is None or s.protocol == protocol)
