"""Camera ingest: pull one RTSP camera, decode it with PyAV, hand each frame on; reconnect forever.

Two ways to receive (`ingest.demuxer`), one decoder (PyAV's, slice-threaded, low-delay):
* "builtin" (default for rtsp://): our RTSP client (rtsp/client.py) hands PyAV's decoder each access
  unit as soon as its last RTP packet (marker bit) is in: one frame interval (40 ms at 25 fps)
  sooner than
* "pyav": FFmpeg's RTSP demuxer, whose H.264/H.265 parser completes a frame only when the next one
  begins. Kept for rtsps:// (TLS) cameras and as a fallback for a camera our client cannot follow.

One thread per camera does demux and decode (PyAV releases the GIL while FFmpeg works), so the
event loop never waits on a camera. `on_frame` and `on_state` are called **from that thread**: the
pipeline hops onto its loop itself (`loop.call_soon_threadsafe`) and must return quickly, because
the camera's next packet is not read until it returns.

Supervision (like MediaMTX's static sources and go2rtc's producers): a session is open → decode →
error or stall → wait → open again. The wait starts at `ingest.backoff_initial_s` and doubles up to
`ingest.backoff_max_s` (`ingest.unauthorized_backoff_max_s` while the camera rejects our
credentials); it is reset once a session has delivered frames for supervisor.STABLE_S
(5 s), with ±10 % jitter. The loop is supervisor.run_sync, the one publish uses too (as a task). A
camera that is down at start is retried the same way. A stall (no packet for
`ingest.read_timeout_s`, the supervisor's stall timeout) ends the session where it blocks: our
client's read deadline, or (pyav) FFmpeg's interrupt callback at the attempt's deadline.

A camera that stays down is not a log line per attempt (10 cameras would write ~300 a minute): the
first attempt and the first failure are said (INFO, WARNING), as is each new reason; the repeats
are DEBUG, summarised at INFO once every RECONNECT_SUMMARY_S with their count, and at stop or
when the camera is live again.

Stopping must not wait out a blocking read: PyAV offers no way to interrupt one from another thread,
so this module gives each ingest thread an "abort" flag that PyAV's own interrupt callback sees
(see `_AbortableClock`); `stop()` returns within a fraction of a second even when the camera is
frozen mid-stream.

Low-delay open for the pyav demuxer: probesize=32, analyzeduration=0, flags=low_delay, and NOT
fflags=nobuffer (it discards the keyframe read while probing and the first picture stalls ~1 s).
Decoding uses slice threading only: frame threading adds a frame of delay per thread.

Audio is never set up (our client SETUPs the video track only; pyav: `allowed_media_types=video`):
the camera does not even send it, let alone is it decoded. Speech is personal data too.

Transport "auto": TCP first (no loss, passes NAT and firewalls, and it is what FFmpeg falls back to
anyway); when an attempt fails, the next one tries the other transport, and whichever transport
last delivered frames is kept. FFmpeg's own default (UDP first, TCP after a 10 s UDP timeout) is
too slow to be useful as a fallback.

A lossy UDP camera (issue 20): the built-in client drops an access unit with a lost packet whole, so
at 5 % loss an IDR of ~90 packets arrives whole 1 % of the time and the camera never showed a
picture. Over UDP, packets that keep coming with loss but make no picture for UDP_FALLBACK_S (or the
stall timeout, if shorter) end the session with a WARNING naming the loss, and the camera is read
over TCP from then on, until restart (`tcp_forced`), whatever its configured transport. Damaged
access units are not handed to the decoder. Packets that make no picture for the stall timeout
(FIRST_PICTURE_S at least before a session's first picture: a long GOP) are a stall. The loss is
counted (`rtp_packets_lost`, `damaged_frames`, `loss_percent`; /metrics and the API's `loss`).

Loss through FFmpeg's demuxer (pyav) lands in the same counters. FFmpeg exposes no loss counters and
marks no packet corrupt (measured: FFmpeg 8.1, PyAV 18); its decoder conceals a damaged frame rather
than fail, flagging few of them corrupt. What it does say is a log line per sequence gap,
"RTP: missed N packets" (WARNING, from the thread that reads, exact: it matched every packet a test
camera dropped). So FFmpeg's log is routed while a pyav session runs (`_FfmpegLog`): each ingest
thread captures its own lines (per-thread capture: cameras are kept apart) and adds up N; a frame
is damaged when packets went missing since the frame before it, or its packet is flagged corrupt
(MPEG-TS over UDP), or its decoding failed or gave a picture flagged corrupt. FFmpeg does not count
the RTP packets that arrived, so `loss_percent` is then the share of frames damaged over the window.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import av
import av.container.core as _av_core
import av.logging
from prometheus_client import Counter

from streamproxy.config import IngestConfig, Transport
from streamproxy.metrics import DAMAGED_FRAMES, RTP_PACKETS_LOST, check_camera_label
from streamproxy.redact import redact_url, scrub, url_secrets
from streamproxy.rtsp.client import (
    ClientError,
    ClientLossy,
    ClientStalled,
    ClientStopped,
    ClientUnauthorized,
    RtspClient,
)
from streamproxy.rtsp.depay import Depacketizer
from streamproxy.supervisor import Attempt, Backoff, Outcome, Stalled, Supervisor, run_sync
from streamproxy.types import DecodedFrame

RECONNECT_SUMMARY_S = 60.0  # a camera failing the same way: one INFO line this often, with the count

log = logging.getLogger(__name__)

# "unauthorized": reconnecting, but the camera rejected our credentials (the API shows it as the
# camera's state; only a changed password on either side helps, so the retries back off to the cap).
State = Literal["connecting", "live", "reconnecting", "unauthorized", "stopped"]
OnFrame = Callable[[DecodedFrame], None]
OnState = Callable[[str, str], None]  # (camera name, new state)

DECODE_THREADS = 2  # slice threads: no added delay, and cameras encode several slices per frame
# A session whose access units keep failing to decode (a camera sending junk RTP) is ended after this
# many errors in a row with no picture for the read timeout: a new session brings fresh parameter sets.
UNDECODABLE_AFTER = 50
# Over UDP, a session that loses packets and has had no picture this long (or the stall timeout, if
# shorter) is ended and the camera is read over TCP from then on, until restart (as FFmpeg and most
# NVRs do): an access unit with a lost packet is dropped whole, and at 5 % loss an IDR of ~90 packets
# arrives whole 1 % of the time, so such a camera would never show a picture over UDP.
UDP_FALLBACK_S = 5.0
# Packets that make no picture for the stall timeout are a stall; before a session's first picture the
# bound is at least this, since the session may have joined mid-GOP and cameras' keyframe intervals
# reach several seconds (a long-GOP camera that never got to its keyframe would otherwise never come up).
FIRST_PICTURE_S = 12.0
LOSS_WINDOW_S = 2.0  # `loss_percent` is measured over windows this long
FLOWING_S = 1.0  # packets came this recently: the session makes progress (no picture is then a loss/stall)


# --- interrupting a blocking PyAV read from another thread --------------------------------------
_tls = threading.local()


class _Watch:
    """Per ingest thread: when FFmpeg must give up (stop requested, or the attempt's deadline)."""

    __slots__ = ("abort", "attempt", "offset", "tripped")

    def __init__(self, abort: threading.Event) -> None:
        self.abort = abort
        self.attempt: Attempt | None = None  # the running attempt: its stall deadline
        self.offset = 0.0  # how far this thread's clock has been pushed ahead (only ever grows)
        self.tripped = False  # the deadline passed: the session is stalled

    @property
    def deadline(self) -> float:
        return self.attempt.deadline if self.attempt is not None else math.inf


class _AbortableClock:
    """Stands in for the `time` module inside `av.container.core`, whose interrupt callback calls
    `time.monotonic()` while FFmpeg blocks (every ~100 ms) and gives up once `start + timeout` has
    passed. On an ingest thread that must give up, this clock jumps ahead by a large step, so the
    very next check interrupts the read. Every other thread sees the real clock, unchanged; an
    ingest thread's clock only ever moves forwards (PyAV checks that).

    The stall deadline is ours, not PyAV's read timeout, because FFmpeg's RTSP demuxer answers the
    first interrupt with the packet it was still assembling: PyAV's timeout alone detects a stall
    only after two read timeouts.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def monotonic() -> float:
        now = time.monotonic()
        watch: _Watch | None = getattr(_tls, "watch", None)
        if watch is None:
            return now
        if now > watch.deadline:
            watch.tripped = True
            watch.offset += 1e6
        elif watch.abort.is_set():
            watch.offset += 1e6
        return now + watch.offset


def _install_abort_hook() -> bool:
    if isinstance(getattr(_av_core, "time", None), _AbortableClock):
        return True
    if getattr(_av_core, "time", None) is not time:
        # A PyAV whose internals differ: stop() then waits for the read timeout instead.
        log.warning("PyAV internals changed: stop() waits up to read_timeout_s for a blocked read")
        return False
    _av_core.time = _AbortableClock()  # type: ignore[attr-defined]
    return True


_ABORT_HOOK = _install_abort_hook()


# --- FFmpeg's log, where a pyav session learns of lost RTP packets ----------------------------------
LogLines = list[tuple[int, str, str]]  # (FFmpeg level, context name, message), as av.logging captures them
_MISSED = re.compile(r"RTP: missed (-?\d+) packets")  # rtpdec.c, one line per sequence gap


class _FfmpegLog:
    """Routes FFmpeg's log while at least one pyav session runs, and back when the last one ends.

    PyAV drops FFmpeg's log by default. While routed (level WARNING): each pyav ingest thread
    captures the lines FFmpeg writes from that thread (its demuxer's); lines from any other thread
    (slice-decoding workers, the file anonymizer) go to one shared capture that the ingest threads
    empty, so they stay out of the service log as before (a lossy camera's decoder writes several
    lines per damaged frame). Identical lines in a row are all kept (PyAV would fold them, across
    threads, and a gap's count would be lost). Someone who set av.logging's level themselves keeps
    their routing: the per-thread capture still works at WARNING or more verbose.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._routed = False  # we turned FFmpeg's log on (and turn it off again)
        self._others: av.logging.Capture | None = None
        self.other_lines: LogLines | None = None  # the shared capture, while routed
        self._skip_repeated = True

    @contextmanager
    def session(self) -> Iterator[LogLines]:
        """FFmpeg's lines written from this thread while the block runs (the caller empties it)."""
        self._acquire()
        try:
            with av.logging.Capture(local=True) as lines:
                yield lines
        finally:
            self._release()

    def drain_others(self) -> None:
        lines = self.other_lines
        if lines:
            lines.clear()

    def _acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            level = av.logging.get_level()
            if level is not None:
                if level < av.logging.WARNING:
                    log.info("FFmpeg's log level is below WARNING: loss through FFmpeg is not counted")
                return
            self._others = av.logging.Capture(local=False)
            self.other_lines = self._others.__enter__()
            self._skip_repeated = av.logging.get_skip_repeated()
            av.logging.set_skip_repeated(False)
            av.logging.set_level(av.logging.WARNING)
            self._routed = True

    def _release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or not self._routed:
                return
            if av.logging.get_level() == av.logging.WARNING:  # not changed by anyone since
                av.logging.set_level(None)
            av.logging.set_skip_repeated(self._skip_repeated)
            if self._others is not None:
                self._others.__exit__(None, None, None)
            self._others = self.other_lines = None
            self._routed = False


_FFMPEG_LOG = _FfmpegLog()


def _missed_packets(lines: LogLines) -> int:
    """RTP packets FFmpeg's demuxer said it missed in these lines (and empties them)."""
    missed = 0
    for _level, _name, message in lines:
        m = _MISSED.match(message)
        if m:
            missed += int(m.group(1)) % 65536  # FFmpeg prints a gap across the 16-bit wrap negative
    lines.clear()
    return missed


def _ffmpeg_message(err: BaseException) -> str:
    """The error's text without the "last error log" PyAV appends while FFmpeg's log is routed: that
    is the last error line from any thread (another camera's, a file's), not necessarily this one's."""
    return str(err).split("; last error log:", 1)[0]


class _Stopped(Exception):
    pass


class _NoPicture(Stalled):
    """Packets arrive but no picture came for the stall timeout: a stall, with its own message."""


class CameraSource:
    """One camera's ingest thread. `start()`/`stop()` are idempotent; counters are read any time.

    State: "connecting" (first attempt) → "live" (frames flowing) → "reconnecting" (lost, waiting
    or retrying; "unauthorized" when the camera rejects our credentials) → "live" ...; "stopped"
    after `stop()`.
    """

    def __init__(
        self,
        name: str,
        url: str,
        transport: Transport,
        ingest: IngestConfig,
        on_frame: OnFrame,
        on_state: OnState | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.safe_url = redact_url(url)
        self.transport: Transport = transport
        self.ingest = ingest
        self.on_frame = on_frame
        self.on_state = on_state
        self._state: State = "stopped"
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._secrets = url_secrets(url)  # what an FFmpeg or client error might quote of it
        self._auto_next: Literal["tcp", "udp"] = "tcp"
        # Counters (written by the ingest thread only).
        self.frames_in = 0
        self.reconnects = 0  # connection attempts after the first one
        self.decode_errors = 0
        # Loss: RTP packets lost (sequence gaps; pyav: as FFmpeg's log says), frames damaged (built-in:
        # access units dropped before the decoder because a packet of theirs was lost; pyav: see the module
        # docstring), and the share of packets (pyav: of frames) lost over the session's last LOSS_WINDOW_S
        # (None before the first window).
        self.rtp_packets_lost = 0
        self.rtp_packets_received = 0
        self.damaged_frames = 0
        self.loss_percent: float | None = None
        self.tcp_forced = False  # UDP lost too much: TCP from now on, whatever the configured transport
        self.udp_fallback_s = UDP_FALLBACK_S
        self.first_picture_s = FIRST_PICTURE_S
        self._counted = (0, 0, 0)  # the session depacketizer's (lost, received, dropped) already added up
        self._loss_window = (0.0, 0, 0)  # (start, lost, received) of the current loss window
        self.last_error: str | None = None
        self.unauthorized = False  # the camera rejected our credentials on the last attempt
        self._logged_reason: str | None = None  # the failure last logged at WARNING (said once)
        self._unreported = 0  # failed attempts since the last line that counted them
        self._reported_at = 0.0  # time.monotonic() of that line
        # The camera's frame rate as its stream declares it (SPS timing / container average rate),
        # known from the first decoded frame of a session; None when it does not say.
        self.frame_rate: float | None = None
        self.resolution: tuple[int, int] | None = None
        self.connected_transport: str | None = None
        self.live_since: float | None = None  # time.monotonic() of the current session's first frame
        self.frames_in_session = 0
        self.opened = False
        self._errors_in_row = 0  # decode errors since the last decoded picture
        self._picture_at = 0.0  # time.monotonic() of the session's last decoded picture (or its open)
        self._rate_of: Callable[[], Fraction | None] | None = None  # this session's declared frame rate
        self._attempt: Attempt | None = None  # the running attempt (ingest thread only)
        self._attempt_transport: Literal["tcp", "udp"] = "tcp"

    # --- public ---------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self._set_state("connecting")
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name=f"ingest-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the ingest thread (interrupting a blocked open or read)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: ingest thread did not stop within %.1f s", self.name, timeout)
        self._thread = None
        self._set_state("stopped")

    # --- internals --------------------------------------------------------------------------------
    def _set_state(self, state: State) -> None:
        with self._state_lock:
            if state == self._state:
                return
            if state != "stopped" and self._stop.is_set():
                return  # a late transition from a thread being stopped must not undo "stopped"
            if state in ("live", "stopped"):
                self._report_failures(time.monotonic())
            self._state = state
        log.info("%s: %s", self.name, state)
        if self.on_state is not None:
            try:
                self.on_state(self.name, state)
            except Exception:
                log.exception("%s: on_state callback failed", self.name)

    def _pick_transport(self) -> Literal["tcp", "udp"]:
        if self.tcp_forced:
            return "tcp"
        if self.transport == "auto":
            return self._auto_next
        return self.transport

    def _run(self, stop: threading.Event) -> None:
        watch = _tls.watch = _Watch(stop)  # lets stop() and the stall deadline interrupt FFmpeg
        sup = Supervisor(
            Backoff(self.ingest.backoff_initial_s, self.ingest.backoff_max_s),
            stall_timeout_s=self.ingest.read_timeout_s,
            # Many cameras lock an account after a few wrong passwords: a 401 is retried slowly.
            cap_for=lambda err: (
                self.ingest.unauthorized_backoff_max_s if isinstance(err, ClientUnauthorized) else None
            ),
        )
        try:
            run_sync(
                sup,
                lambda attempt: self._attempt_once(attempt, watch),
                stop,
                lambda attempt, err, wait: self._ended(attempt, err, wait, watch),
            )
        except Exception:
            log.exception("%s: ingest thread crashed", self.name)
        finally:
            _tls.watch = None
            log.debug("%s: ingest thread exits", self.name)

    def _attempt_once(self, attempt: Attempt, watch: _Watch) -> Outcome:
        """One connection; None when the stream ended, "stop" when stopped; raises on failure."""
        if attempt.number > 1:
            self.reconnects += 1
        transport = self._attempt_transport = self._pick_transport()
        self._attempt = watch.attempt = attempt
        try:
            self._session(transport, watch, attempt)
        except _Stopped:
            return "stop"
        finally:
            self._attempt = watch.attempt = None
        return None

    def _ended(self, attempt: Attempt, err: BaseException | None, wait: float, watch: _Watch) -> None:
        """After a failed, stalled or ended session, before the wait (supervisor.run_sync)."""
        if err is None:
            reason = "stream ended"
        else:
            reason = self._describe(err, watch, time.monotonic() - attempt.started)
        previous, self.last_error = self.last_error, reason
        self.unauthorized = isinstance(err, ClientUnauthorized)
        if self.transport == "auto" and self.live_since is None:
            self._auto_next = "udp" if self._attempt_transport == "tcp" else "tcp"
        self.live_since = None
        self.loss_percent = None  # measured while a session runs: no stale value while down
        self._set_state("unauthorized" if self.unauthorized else "reconnecting")
        # Said once: a camera that keeps failing the same way (wrong password, down for hours) gets
        # one WARNING, then DEBUG until the reason changes or it was live again in between, and a
        # summary with the count every RECONNECT_SUMMARY_S.
        key = re.sub(r"\d+(\.\d+)?", "#", reason)
        now = time.monotonic()
        if key != self._logged_reason:
            self._report_failures(now, previous)  # the repeats of the reason that was
            self._logged_reason = key
            self._reported_at = now
            log.warning(
                "%s: %s; retrying in %.1f s (with back-off; summarised every %.0f s until it changes)",
                self.name, reason, wait, RECONNECT_SUMMARY_S,
            )  # fmt: skip
        else:
            self._unreported += 1
            log.debug("%s: %s; retrying in %.1f s", self.name, reason, wait)
            if now - self._reported_at >= RECONNECT_SUMMARY_S:
                self._report_failures(now)

    def _report_failures(self, now: float, last: str | None = None) -> None:
        """The INFO line that stands for the repeated failures not logged since the last one."""
        if self._unreported:
            log.info(
                "%s: %d more failed attempt(s) in the last %.0f s, last: %s",
                self.name, self._unreported, now - self._reported_at, last or self.last_error,
            )  # fmt: skip
        self._unreported = 0
        self._reported_at = now

    def _describe(self, err: BaseException, watch: _Watch, elapsed: float) -> str:
        if isinstance(err, _NoPicture):
            msg = str(err)
        elif isinstance(err, Stalled) or (
            isinstance(err, av.error.ExitError) and (watch.tripped or self.opened)
        ):
            # Our stall deadline, or FFmpeg's interrupted read once the stream was open.
            msg = f"stalled: no data for {self.ingest.read_timeout_s:g} s"
        elif not self.opened and (
            isinstance(err, av.error.ExitError) or elapsed >= 0.9 * self.ingest.open_timeout_s
        ):
            # FFmpeg's RTSP handshake reports its interrupted read as "invalid data": say what it was.
            msg = f"no answer within {elapsed:.1f} s (open timeout {self.ingest.open_timeout_s:g} s)"
        elif isinstance(err, ClientError):
            msg = str(err)
        else:
            msg = f"{type(err).__name__}: {_ffmpeg_message(err)}"
        return scrub(msg, self._secrets)

    def _session(self, transport: Literal["tcp", "udp"], watch: _Watch, attempt: Attempt) -> None:
        """One connection: open, decode until the stream ends or fails. Raises on failure."""
        if self.ingest.demuxer == "builtin" and urlsplit(self.url).scheme == "rtsp":
            self._session_builtin(transport, watch.abort, attempt)
        else:
            self._session_pyav(transport, watch, attempt)

    def _log_connecting(self, transport: str) -> None:
        # INFO when it is news (the first attempt, the first after a live session); a retry of a
        # camera that keeps failing is DEBUG (its failures are summarised, see _ended).
        level = logging.INFO if self._logged_reason is None else logging.DEBUG
        log.log(level, "%s: connecting to %s over %s", self.name, self.safe_url, transport)

    def _session_builtin(
        self, transport: Literal["tcp", "udp"], stop: threading.Event, attempt: Attempt
    ) -> None:
        """Our RTSP client receives, PyAV decodes: each frame is decoded on its last RTP packet."""
        self.frames_in_session = 0
        self.opened = False
        self._log_connecting(transport)
        try:
            with RtspClient(self.url, transport, self.ingest.open_timeout_s, stop) as client:
                with attempt.paused():  # bounded by the open timeout, not the stall timeout
                    track = client.open()
                decoder = "hevc" if track.codec == "h265" else "h264"  # FFmpeg's decoder names
                ctx = cast(av.VideoCodecContext, av.CodecContext.create(decoder, "r"))
                ctx.thread_type = "SLICE"
                ctx.thread_count = DECODE_THREADS
                ctx.flags |= av.codec.context.Flags.low_delay
                self.connected_transport = transport
                self.opened = True
                self._session_started(lambda: ctx.framerate)
                time_base = Fraction(1, track.clock_rate)
                started = False
                depay = client.depay
                assert depay is not None
                self._counted = (0, 0, 0)
                self._loss_window = (time.monotonic(), 0, 0)
                self.loss_percent = None

                def watch() -> None:
                    self._watch_picture(depay, transport, units.last_packet_at)

                # The client's read deadline is the stall timeout (it raises ClientStalled) for a
                # camera that goes silent; `watch` for one whose packets never make a picture.
                units = client.access_units(self.ingest.read_timeout_s, watch)
                for au in units:
                    attempt.progress()
                    if not started:
                        if not au.keyframe:
                            continue  # joined mid-GOP: the decoder can only start at a keyframe
                        started = True
                    packet = av.Packet(au.data)
                    packet.pts = packet.dts = au.timestamp
                    packet.time_base = time_base
                    self._decode(ctx.decode, packet, transport)
        except ClientStopped:
            raise _Stopped from None
        except ClientStalled as err:
            attempt.stalled = True
            raise Stalled(str(err)) from None

    def _take_loss(self, depay: Depacketizer, now: float) -> None:
        """Add the session depacketizer's new losses to the camera's counters (and /metrics)."""
        lost, received, dropped = depay.lost_packets, depay.received, depay.dropped_units
        new_lost, new_received, new_dropped = (
            lost - self._counted[0], received - self._counted[1], dropped - self._counted[2]
        )  # fmt: skip
        self._counted = (lost, received, dropped)
        self.rtp_packets_received += new_received
        if new_lost > 0:
            self.rtp_packets_lost += new_lost
            _inc(RTP_PACKETS_LOST, self.name, new_lost)
        if new_dropped > 0:
            self.damaged_frames += new_dropped
            _inc(DAMAGED_FRAMES, self.name, new_dropped)
        start, lost0, received0 = self._loss_window
        if now - start >= LOSS_WINDOW_S:
            self.loss_percent = round(_percent(lost - lost0, received - received0), 2)
            self._loss_window = (now, lost, received)

    def _watch_picture(self, depay: Depacketizer, transport: str, last_packet_at: float) -> None:
        """Called by the client's read loop (every packet, at least every TICK_S): counts the loss, and
        ends a session whose packets keep coming but make no picture: over UDP with loss, after
        UDP_FALLBACK_S (or the stall timeout if shorter), to read the camera over TCP from then on;
        otherwise after the stall timeout (FIRST_PICTURE_S at least before the first picture), as a stall."""
        now = time.monotonic()
        self._take_loss(depay, now)
        stall_s = self.ingest.read_timeout_s
        if self.frames_in_session == 0:
            stall_s = max(stall_s, self.first_picture_s)
        silent = now - self._picture_at
        bound = min(self.udp_fallback_s, stall_s) if transport == "udp" else stall_s
        if silent <= bound or now - last_packet_at > FLOWING_S:
            return  # pictures come; or no packets either, which the client's own stall deadline ends
        lost, damaged = depay.lost_packets, depay.dropped_units
        loss = f"{_percent(lost, depay.received):.1f} % of RTP packets lost, {damaged} frames damaged"
        if transport == "udp" and (lost or damaged):
            self.tcp_forced = True
            raise ClientLossy(
                f"lossy over UDP: no picture for {silent:.1f} s ({loss}); reading the camera over TCP from now on"
            )
        if silent > stall_s:
            if self._errors_in_row >= UNDECODABLE_AFTER:
                raise self._undecodable()
            detail = f" ({loss})" if lost or damaged else ""
            raise _NoPicture(f"stalled: packets arrive but no picture for {stall_s:g} s{detail}")

    def _undecodable(self) -> ClientError:
        return ClientError(
            f"camera's video does not decode ({self._errors_in_row} errors in a row, "
            f"no picture for {self.ingest.read_timeout_s:g} s)"
        )

    def _session_pyav(self, transport: Literal["tcp", "udp"], watch: _Watch, attempt: Attempt) -> None:
        with _FFMPEG_LOG.session() as lines:  # this thread's FFmpeg log: the demuxer's lost packets
            self._session_pyav_logged(transport, watch, attempt, lines)

    def _session_pyav_logged(
        self, transport: Literal["tcp", "udp"], watch: _Watch, attempt: Attempt, lines: LogLines
    ) -> None:
        stop = watch.abort
        self.frames_in_session = 0
        self.opened = False
        watch.tripped = False
        options = {
            "rtsp_transport": transport,
            "allowed_media_types": "video",
            "probesize": "32",
            "analyzeduration": "0",
            "flags": "low_delay",
        }
        self._log_connecting(transport)
        timeout = (self.ingest.open_timeout_s, self.ingest.read_timeout_s)
        # Opening is bounded by PyAV's open timeout; the stall clock starts once it is open.
        with attempt.paused():
            opened = av.open(self.url, options=options, timeout=timeout)
        with opened as container:
            if stop.is_set():
                raise _Stopped
            if not container.streams.video:
                raise RuntimeError("camera offers no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            ctx.thread_type = "SLICE"
            ctx.thread_count = DECODE_THREADS
            ctx.flags |= av.codec.context.Flags.low_delay
            self.connected_transport = transport
            self.opened = True
            self._session_started(lambda: stream.average_rate or stream.guessed_rate)
            self.loss_percent = None
            lines.clear()  # what the open said: not a frame's loss
            window = [time.monotonic(), 0, 0]  # loss_percent's window: start, frames, damaged frames
            attempt.progress()  # FFmpeg's interrupt callback gives up at attempt.deadline
            for packet in container.demux(stream):
                if stop.is_set():
                    raise _Stopped
                stalled = watch.tripped  # this packet is what FFmpeg had left when interrupted
                attempt.progress()
                # Flag checks only, per packet: the log is parsed when FFmpeg wrote something.
                damaged = packet.is_corrupt
                if lines:
                    damaged = self._take_missed(lines) or damaged
                _FFMPEG_LOG.drain_others()
                damaged = self._decode(stream.codec_context.decode, packet, transport) or damaged
                if packet.size:
                    self._count_frame(damaged, window)
                if stalled:
                    attempt.stalled = True
                    raise Stalled(f"no packet for {self.ingest.read_timeout_s:g} s")
                if packet.size == 0:
                    break  # the flush packet: the stream ended

    def _take_missed(self, lines: LogLines) -> bool:
        """Add the RTP packets FFmpeg's log says were missed; True when there were any."""
        missed = _missed_packets(lines)
        if missed:
            self.rtp_packets_lost += missed
            _inc(RTP_PACKETS_LOST, self.name, missed)
        return missed > 0

    def _count_frame(self, damaged: bool, window: list[float]) -> None:
        """One frame through FFmpeg's demuxer: count it if damaged, and the share damaged per window."""
        window[1] += 1
        if damaged:
            window[2] += 1
            self.damaged_frames += 1
            _inc(DAMAGED_FRAMES, self.name, 1)
        now = time.monotonic()
        if now - window[0] >= LOSS_WINDOW_S:
            self.loss_percent = round(100.0 * window[2] / window[1], 2)
            window[:] = [now, 0, 0]

    def _session_started(self, rate: Callable[[], Fraction | None]) -> None:
        self._errors_in_row = 0
        self._picture_at = time.monotonic()
        self._rate_of = rate

    def _declared_rate(self) -> float | None:
        """The frame rate the stream declares, when plausible (a field rate or a 90 kHz tick is not)."""
        try:
            rate = self._rate_of() if self._rate_of is not None else None
        except (AttributeError, ValueError, ZeroDivisionError):
            return None
        fps = float(rate) if rate else 0.0
        return fps if 1.0 <= fps <= 120.0 else None

    def _decode(
        self, decode: Callable[[av.Packet], list[av.VideoFrame]], packet: av.Packet, transport: str
    ) -> bool:
        """Decode and deliver; True when the packet was damaged (did not decode, or a picture from it
        is flagged corrupt)."""
        try:
            frames = decode(packet)
        except (av.error.FFmpegError, ValueError) as err:
            # A damaged frame (lost packets, or a camera sending junk); the decoder recovers by the
            # next keyframe. Any decoder error is the camera's data, never a reason to end the thread.
            self.decode_errors += 1
            self._errors_in_row += 1
            log.debug("%s: decode error: %s", self.name, err)
            if (
                self._errors_in_row >= UNDECODABLE_AFTER
                and time.monotonic() - self._picture_at > self.ingest.read_timeout_s
            ):
                raise self._undecodable() from None
            return True
        damaged = False
        if frames:
            self._errors_in_row = 0
            self._picture_at = time.monotonic()
        for frame in frames:
            damaged = damaged or frame.is_corrupt
            self._deliver(frame, transport)
        return damaged

    def _deliver(self, frame: av.VideoFrame, transport: str) -> None:
        now = time.monotonic()
        size = (frame.width, frame.height)
        if size != self.resolution:
            if self.resolution is not None:
                log.warning("%s: resolution changed %dx%d -> %dx%d", self.name, *self.resolution, *size)
            else:
                log.info("%s: %dx%d over %s", self.name, *size, transport)
            self.resolution = size
        pts = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
        decoded = DecodedFrame(frame=frame, decoded_at=now, pts_seconds=pts)
        self.frames_in += 1
        self.frames_in_session += 1
        if self.live_since is None:
            self.live_since = now
            self._logged_reason = None  # live again: the next failure is news
            self.frame_rate = self._declared_rate()
            if self._attempt is not None:
                self._attempt.up()  # the session's uptime (for the backoff reset) starts here
            if self.transport == "auto":
                self._auto_next = "tcp" if transport == "tcp" else "udp"
            self._set_state("live")
        try:
            self.on_frame(decoded)
        except Exception:
            log.exception("%s: on_frame callback failed", self.name)


def _percent(lost: int, received: int) -> float:
    """Lost packets as a share of the packets sent (lost + received), in per cent."""
    sent = lost + received
    return 100.0 * lost / sent if sent > 0 and lost > 0 else 0.0


def _inc(counter: Counter, camera: str, n: int) -> None:
    """Add `n` to the camera's series of a per-camera counter (a name that is no label: not exported)."""
    try:
        counter.labels(camera=check_camera_label(camera)).inc(n)
    except ValueError:
        pass
