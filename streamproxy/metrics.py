"""Prometheus metrics, updated where the event happens.

Every family is named `streamproxy_*` and labelled by `camera` = the camera's *name* from the
config (the path on the proxy). Never a URL: camera URLs carry credentials, and labels end up in
Prometheus, Grafana and screenshots. `CameraMetrics` refuses anything that does not look like a
config camera name, so a URL cannot slip into a label by mistake.

The app makes one `CameraMetrics` per camera; its attributes are the label-bound children
(`.labels(camera=...)` looked up once), so the per-frame cost is one lock + one add. It is also the
camera's one tally of its frames: `frame_in`, `frame_out` and `drop` keep the counts that the API
reads (`frames_in_total`, `drops()`, the fps meters' `rate`), so that the page, the tests and
Prometheus see the same numbers, counted once where the event happens (detector runs and
fail-closed frames are the engine's: its `EngineStats` feeds `detection` / `fail_closed_frame`):

    m = CameraMetrics("lobby")
    m.frame_in()                      # decoder produced a frame
    m.detector_seconds.observe(dt)    # one detector run
    m.drop("latency_budget")          # a frame that will never leave
    m.frame_out(added_latency_s)      # a frame handed to the encoder/viewers

The HTTP layer serves `render_latest()` on /metrics. The default registry is used, so the
process_* / python_* collectors of prometheus_client come along.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Final, Literal, get_args

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from streamproxy import __version__
from streamproxy.status import DropCounts

log = logging.getLogger(__name__)

# `*_created` series double the number of series and no dashboard uses them.
disable_created_metrics()

DropReason = Literal[
    "latency_budget", "fail_closed", "slow_viewer", "encoder", "worker", "queue_full", "overload"
]
FailClosedReason = Literal["detector_error", "detector_timeout", "model_missing"]
ViewerProtocol = Literal["rtsp", "webrtc"]  # viewers
OutProtocol = Literal["rtsp", "webrtc", "publish"]  # where bytes go: viewers, or the publish_url server
CameraState = Literal["connecting", "live", "offline", "stopped"]

DROP_REASONS: Final[tuple[DropReason, ...]] = get_args(DropReason)
FAIL_CLOSED_REASONS: Final[tuple[FailClosedReason, ...]] = get_args(FailClosedReason)
VIEWER_PROTOCOLS: Final[tuple[ViewerProtocol, ...]] = get_args(ViewerProtocol)
OUT_PROTOCOLS: Final[tuple[OutProtocol, ...]] = get_args(OutProtocol)
CAMERA_STATES: Final[tuple[CameraState, ...]] = get_args(CameraState)

# Same rule as CameraConfig.name: a label value can then never be a URL or carry a password.
_CAMERA_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# Proxy-added latency (decoder out -> packet out). The budget is typically 50-200 ms, so the
# buckets are dense there and coarse at both ends; histogram_quantile interpolates linearly
# inside a bucket, so a p99 near the budget stays within ~10 ms of the truth.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.010, 0.015, 0.020, 0.030, 0.040, 0.050, 0.060, 0.070, 0.080, 0.090, 0.100,
    0.120, 0.150, 0.175, 0.200, 0.250, 0.300, 0.400, 0.500, 0.750, 1.0,
)  # fmt: skip
# One detector run: ~4 ms (YuNet 640x360) to ~200 ms (CenterFace 1280x720) on CPU.
DETECTOR_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.010, 0.015, 0.020, 0.030, 0.040, 0.050,
    0.075, 0.100, 0.150, 0.200, 0.300, 0.500,
)  # fmt: skip

FRAMES_IN = Counter(
    "streamproxy_frames_in",
    "Frames decoded from the camera (before anonymization).",
    ["camera"],
)
FRAMES_OUT = Counter(
    "streamproxy_frames_out",
    "Anonymized frames handed to the encoder and viewers. frames_in - frames_out - drops = in flight.",
    ["camera"],
)
FRAMES_DROPPED = Counter(
    "streamproxy_frames_dropped",
    "Frames that never left, by reason: latency_budget (too late to be useful), fail_closed "
    "(detection failed and fail_closed.action=drop), slow_viewer (a viewer's buffer overflowed; "
    "counted per viewer), encoder (encode error), worker (the anonymizing worker failed on the frame), "
    "queue_full (a stage queue was full), overload (shed on purpose: the camera cannot be carried at its "
    "privacy floor).",
    ["camera", "reason"],
)
ADDED_LATENCY = Histogram(
    "streamproxy_added_latency_seconds",
    "Latency the proxy adds to a frame: from leaving the decoder to its packet leaving the encoder.",
    ["camera"],
    buckets=LATENCY_BUCKETS,
)
DETECTOR_SECONDS = Histogram(
    "streamproxy_detector_seconds",
    "Wall time of one face detector run (all tiles of one frame).",
    ["camera"],
    buckets=DETECTOR_BUCKETS,
)
DETECTOR_CADENCE = Gauge(
    "streamproxy_detector_cadence",
    "The detector runs on every N-th frame (the tracker predicts in between); raised by the "
    "latency controller when detection cannot keep up. 1 = every frame.",
    ["camera"],
)
DETECTOR_INPUT_WIDTH = Gauge(
    "streamproxy_detector_input_width",
    "Width in pixels the frame is resized to for detection; lower = faster, fewer small faces found.",
    ["camera"],
)
DETECTOR_MIN_INPUT_WIDTH = Gauge(
    "streamproxy_detector_min_input_width",
    "The privacy floor: the detector's input width never goes below this (from privacy.min_face_px).",
    ["camera"],
)
OVERLOADED = Gauge(
    "streamproxy_overloaded",
    "1 while the camera cannot be carried at its privacy floor and frames are shed "
    '(frames_dropped_total{reason="overload"}); the output frame rate is then below the camera\'s.',
    ["camera"],
)
FACES_DETECTED = Counter(
    "streamproxy_faces_detected",
    "Face detections (summed over detector runs, before tracking).",
    ["camera"],
)
FACES_MASKED = Gauge(
    "streamproxy_faces_masked",
    "Masks drawn on the last output frame (tracked faces incl. coasting ones; privacy zones excluded).",
    ["camera"],
)
TRACKS_ACTIVE = Gauge(
    "streamproxy_tracks_active",
    "Face tracks alive in the tracker (seen recently, incl. coasting ones).",
    ["camera"],
)
FAIL_CLOSED_FRAMES = Counter(
    "streamproxy_fail_closed_frames",
    "Frames that were fully obfuscated or dropped because detection could not vouch for them, "
    "by cause: detector_error, detector_timeout, model_missing. Should be 0; alert on any.",
    ["camera", "reason"],
)
WIDENED_FRAMES = Counter(
    "streamproxy_widened_frames",
    "Frames whose face masks the engine grew past the face for safety (a face seen once, a gap between "
    "detections, fast motion: more than 0.4 face widths per side): over-masking chosen to avoid a leak.",
    ["camera"],
)
LOOK_KINDS: Final[tuple[str, ...]] = ("whole", "regions", "quiet")
DETECTOR_LOOKS = Counter(
    "streamproxy_detector_looks",
    "Live detector runs by what they looked at (change gating, privacy.change_gating): whole (the whole "
    "picture: the first run, the periodic full scan, a change over most of the picture, or gating off), "
    "regions (only where the picture changed and around the faces followed), quiet (nothing to look at).",
    ["camera", "kind"],
)
DETECTOR_LOOKED_SHARE = Gauge(
    "streamproxy_detector_looked_share",
    "Share of the picture the last live detector run looked at (1 on a whole look).",
    ["camera"],
)
RTP_PACKETS_LOST = Counter(
    "streamproxy_rtp_packets_lost",
    "RTP packets from the camera that never arrived (gaps in sequence numbers), as the built-in client "
    "counts them; over UDP the camera is switched to TCP when loss lets no whole picture through.",
    ["camera"],
)
DAMAGED_FRAMES = Counter(
    "streamproxy_damaged_frames",
    "Camera frames (access units) dropped before the decoder because a packet of theirs was lost.",
    ["camera"],
)
RECONNECTS_HELP = (
    "Connection attempts to the camera after the first one (each after a failure, a stall or the "
    "stream's end), as the camera's ingest counts them; the API's `reconnects` is the same number."
)
CAMERA_UP = Gauge(
    "streamproxy_camera_up",
    "1 while frames are arriving from the camera (state=live), else 0 (viewers see the offline slate).",
    ["camera"],
)
CAMERA_STATE = Gauge(
    "streamproxy_camera_state",
    "Camera ingest state; the series of the current state is 1, the others 0. States: connecting "
    "(opening or reconnecting), live (frames flowing), offline (unreachable, backing off), stopped.",
    ["camera", "state"],
)
VIEWERS = Gauge(
    "streamproxy_viewers",
    "Viewers currently attached, by protocol (rtsp, webrtc).",
    ["camera", "protocol"],
)
BYTES_OUT = Counter(
    "streamproxy_bytes_out",
    "Media payload bytes sent to viewers, by protocol (rtsp, webrtc; publish: to the camera's publish_url "
    "server). Multiply the rate by 8 for bit/s.",
    ["camera", "protocol"],
)
INPUT_FPS = Gauge(
    "streamproxy_input_fps",
    "Frames per second arriving from the camera (measured over ~1 s windows).",
    ["camera"],
)
OUTPUT_FPS = Gauge(
    "streamproxy_output_fps",
    "Anonymized frames per second leaving the proxy (measured over ~1 s windows).",
    ["camera"],
)
PUBLISH_UP = Gauge(
    "streamproxy_publish_up",
    "1 while the anonymized stream is being pushed to the camera's publish_url server, else 0 "
    "(also 0 when the camera has no publish_url).",
    ["camera"],
)
PUBLISH_PACKETS = Counter(
    "streamproxy_publish_packets",
    "H.264 access units pushed to the camera's publish_url server.",
    ["camera"],
)
# Not per camera: a request that failed to authenticate names no camera we could trust as a label.
AUTH_FAILURES = Counter(
    "streamproxy_auth_failures",
    "Requests with wrong credentials (RTSP Digest/Basic, HTTP Basic), by protocol (rtsp, http). "
    "A steady rate is someone guessing passwords: see the log for the address.",
    ["protocol"],
)
for _protocol in ("rtsp", "http"):
    AUTH_FAILURES.labels(protocol=_protocol)  # exported from 0, so that rate() sees the first failure
# Not per camera: a refused connection or request is refused before (or without) naming a camera.
LIMIT_REJECTIONS = Counter(
    "streamproxy_limit_rejections",
    "Connections, requests or sessions refused or reclaimed at a server limit (server.limits), by listener "
    "(rtsp, http, webrtc, wsd) and limit (connections, connections_per_client, request_size, body_size, "
    "request_timeout, idle_timeout, sessions, setup_timeout, descriptors; wsd, the WS-Discovery responder: "
    "datagram_size, malformed, rate_per_source, rate, no_route, send, error).",
    ["listener", "limit"],
)
LIMIT_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "rtsp": ("connections", "connections_per_client", "request_size", "body_size", "request_timeout",
             "idle_timeout", "sessions", "setup_timeout", "descriptors"),
    "http": ("connections", "connections_per_client", "request_size", "body_size", "request_timeout",
             "idle_timeout", "descriptors"),
    "webrtc": ("sessions", "setup_timeout", "body_size"),
}  # fmt: skip
for _listener, _kinds in LIMIT_KINDS.items():
    for _kind in _kinds:
        LIMIT_REJECTIONS.labels(listener=_listener, limit=_kind)  # exported from 0, like AUTH_FAILURES
# Not per camera: the service's event loop. Sampled when /metrics is scraped (serve/http/server.py); steady
# growth is a leak (a handler, session or reader task that never ends).
ASYNCIO_TASKS = Gauge(
    "streamproxy_asyncio_tasks", "asyncio tasks alive on the service's event loop (sampled at scrape time)."
)
BUILD_INFO = Info("streamproxy_build", "streamproxy build information.")
BUILD_INFO.info({"version": __version__})

# Every family as it appears in the exposition (`# TYPE` lines) and in PromQL. Histograms appear
# here by their base name; their series are <name>_bucket, <name>_sum and <name>_count.
METRIC_NAMES: Final[list[str]] = [
    "streamproxy_frames_in_total",
    "streamproxy_frames_out_total",
    "streamproxy_frames_dropped_total",
    "streamproxy_added_latency_seconds",
    "streamproxy_detector_seconds",
    "streamproxy_detector_cadence",
    "streamproxy_detector_input_width",
    "streamproxy_detector_min_input_width",
    "streamproxy_overloaded",
    "streamproxy_faces_detected_total",
    "streamproxy_faces_masked",
    "streamproxy_tracks_active",
    "streamproxy_fail_closed_frames_total",
    "streamproxy_widened_frames_total",
    "streamproxy_detector_looks_total",
    "streamproxy_detector_looked_share",
    "streamproxy_reconnects_total",
    "streamproxy_rtp_packets_lost_total",
    "streamproxy_damaged_frames_total",
    "streamproxy_camera_up",
    "streamproxy_camera_state",
    "streamproxy_viewers",
    "streamproxy_bytes_out_total",
    "streamproxy_input_fps",
    "streamproxy_output_fps",
    "streamproxy_publish_up",
    "streamproxy_publish_packets_total",
    "streamproxy_auth_failures_total",
    "streamproxy_limit_rejections_total",
    "streamproxy_asyncio_tasks",
    "streamproxy_build_info",
]
# The families without a camera label (a dashboard cannot filter them by camera).
NOT_PER_CAMERA: Final[frozenset[str]] = frozenset(
    {
        "streamproxy_auth_failures_total",
        "streamproxy_limit_rejections_total",
        "streamproxy_asyncio_tasks",
        "streamproxy_build_info",
    }
)


def check_camera_label(name: str) -> str:
    """Return `name` if it may be a label value; raise ValueError (without echoing it) otherwise."""
    if not _CAMERA_NAME.match(name):
        # Do not put the value in the message: it may be a URL with a password in it.
        raise ValueError("camera label must be the camera name ([A-Za-z0-9_.-]{1,64}), never a URL")
    return name


class RateMeter:
    """Events per second over windows of at least `window_s`, published to a gauge.

    Cheap enough to call per frame: one lock, one add, and a gauge write once per window.
    A gap longer than a window (camera stalled) reads as the average over the gap, and the
    gauge is set to 0 by `reset()` when the camera goes away. The API reads the same number from
    `rate()`, which also says 0 once no event came for two windows (the gauge can only move on
    an event, the API is asked at any time).
    """

    def __init__(self, gauge: Gauge, window_s: float = 1.0) -> None:
        self._gauge = gauge
        self._window = window_s
        self._lock = threading.Lock()
        self._count = 0
        self._start: float | None = None
        self._rate = 0.0
        self._last: float | None = None

    def tick(self, now: float | None = None, n: int = 1) -> None:
        t = time.monotonic() if now is None else now
        with self._lock:
            self._last = t
            if self._start is None:
                self._start = t
                self._count = n
                return
            self._count += n
            elapsed = t - self._start
            if elapsed >= self._window:
                # The first event of a window opened it, so count-1 intervals span `elapsed`.
                self._rate = (self._count - 1) / elapsed
                self._gauge.set(self._rate)
                self._start = t
                self._count = 1

    def rate(self, now: float | None = None) -> float:
        """Events per second of the last window, as the gauge says; 0 after two windows without one."""
        t = time.monotonic() if now is None else now
        with self._lock:
            if self._last is None or t - self._last > 2 * self._window:
                return 0.0
            return self._rate

    def reset(self) -> None:
        with self._lock:
            self._start = None
            self._count = 0
            self._rate = 0.0
            self._last = None
            self._gauge.set(0)


class CameraMetrics:
    """All metrics of one camera, bound to its label once (no label lookups per frame).

    Creating it makes every series of the camera exist (counters at 0), so that rate() and
    dashboards work from the first scrape. Safe to use from any thread.
    """

    def __init__(self, camera: str) -> None:
        self.camera = check_camera_label(camera)
        self.frames_in = FRAMES_IN.labels(camera=camera)
        self.frames_out = FRAMES_OUT.labels(camera=camera)
        self.added_latency = ADDED_LATENCY.labels(camera=camera)
        self.detector_seconds = DETECTOR_SECONDS.labels(camera=camera)
        self.detector_cadence = DETECTOR_CADENCE.labels(camera=camera)
        self.detector_input_width = DETECTOR_INPUT_WIDTH.labels(camera=camera)
        self.floor_width = DETECTOR_MIN_INPUT_WIDTH.labels(camera=camera)
        self.overloaded = OVERLOADED.labels(camera=camera)
        self.faces_detected = FACES_DETECTED.labels(camera=camera)
        self.faces_masked = FACES_MASKED.labels(camera=camera)
        self.tracks_active = TRACKS_ACTIVE.labels(camera=camera)
        self.widened = WIDENED_FRAMES.labels(camera=camera)
        self.looks = {kind: DETECTOR_LOOKS.labels(camera=camera, kind=kind) for kind in LOOK_KINDS}
        self.looked_share = DETECTOR_LOOKED_SHARE.labels(camera=camera)
        # Counted by the camera's source (live/source.py) on these same series, created here at 0.
        self.rtp_packets_lost = RTP_PACKETS_LOST.labels(camera=camera)
        self.damaged_frames = DAMAGED_FRAMES.labels(camera=camera)
        # Reconnects are counted where the attempt is made (the camera's source); this reads them.
        self._reconnects_of: Callable[[], int] | None = None
        self.camera_up = CAMERA_UP.labels(camera=camera)
        self.input_fps = INPUT_FPS.labels(camera=camera)
        self.output_fps = OUTPUT_FPS.labels(camera=camera)
        self.dropped: dict[DropReason, Counter] = {
            r: FRAMES_DROPPED.labels(camera=camera, reason=r) for r in DROP_REASONS
        }
        self.fail_closed: dict[FailClosedReason, Counter] = {
            r: FAIL_CLOSED_FRAMES.labels(camera=camera, reason=r) for r in FAIL_CLOSED_REASONS
        }
        self.viewers: dict[ViewerProtocol, Gauge] = {
            p: VIEWERS.labels(camera=camera, protocol=p) for p in VIEWER_PROTOCOLS
        }
        self.bytes_out: dict[OutProtocol, Counter] = {
            p: BYTES_OUT.labels(camera=camera, protocol=p) for p in OUT_PROTOCOLS
        }
        self.publish_up = PUBLISH_UP.labels(camera=camera)
        self.publish_packets = PUBLISH_PACKETS.labels(camera=camera)
        self._state: dict[CameraState, Gauge] = {
            s: CAMERA_STATE.labels(camera=camera, state=s) for s in CAMERA_STATES
        }
        self.in_rate = RateMeter(self.input_fps)
        self.out_rate = RateMeter(self.output_fps)
        # The counts the API reads: Prometheus children cannot be read back through a public API,
        # so the same call that increments them keeps these (under one lock: several threads drop).
        self._lock = threading.Lock()
        self._frames_in = 0
        self._frames_out = 0
        self._drops: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
        self._bytes_out: dict[str, int] = {}
        self._published = 0
        self.state: CameraState = "connecting"
        self.set_state("connecting")
        RECONNECTS.track(self)

    # -- per frame -----------------------------------------------------------------------------
    def frame_in(self, now: float | None = None) -> None:
        """A frame left the decoder. `now`: time.monotonic(), if the caller has it already."""
        with self._lock:
            self._frames_in += 1
        self.frames_in.inc()
        self.in_rate.tick(now)

    def frame_out(self, added_latency_s: float, now: float | None = None) -> None:
        """An anonymized frame left the proxy, `added_latency_s` after leaving the decoder."""
        with self._lock:
            self._frames_out += 1
        self.frames_out.inc()
        self.added_latency.observe(added_latency_s)
        self.out_rate.tick(now)

    def drop(self, reason: DropReason, n: int = 1) -> None:
        """`n` frames will never leave, for `reason`."""
        with self._lock:
            self._drops[reason] += n
        self.dropped[reason].inc(n)

    # -- read back (the API) ---------------------------------------------------------------------
    @property
    def frames_in_total(self) -> int:
        return self._frames_in

    @property
    def frames_out_total(self) -> int:
        return self._frames_out

    def drops(self) -> DropCounts:
        """The pipeline's drops by reason (slow_viewer is the hub's, per viewer: not among them)."""
        with self._lock:
            d = dict(self._drops)
        return DropCounts(
            d["latency_budget"], d["fail_closed"], d["queue_full"], d["encoder"], d["worker"], d["overload"]
        )

    def fail_closed_frame(self, reason: FailClosedReason) -> None:
        """A frame was fully obfuscated or dropped because detection failed for `reason`.

        If fail_closed.action is "drop", also call `drop("fail_closed")`: the two counters
        answer different questions (why detection failed / why frames went missing).
        """
        self.fail_closed[reason].inc()

    def widened_frame(self) -> None:
        """A frame's masks were grown past the face for safety (engine/anonymizer.py WIDE_MARGIN_FACES)."""
        self.widened.inc()

    def look(self, kind: str, share: float) -> None:
        """One live detector run looked at `share` of the picture ("whole", "regions" or "quiet")."""
        counter = self.looks.get(kind)
        if counter is not None:
            counter.inc()
        self.looked_share.set(share)

    def detection(self, seconds: float, faces: int) -> None:
        """One detector run took `seconds` and found `faces` faces."""
        self.detector_seconds.observe(seconds)
        if faces:
            self.faces_detected.inc(faces)

    # -- per state change --------------------------------------------------------------------
    def set_state(self, state: CameraState) -> None:
        """Ingest state changed; camera_up follows (1 only when live)."""
        if state not in self._state:
            raise ValueError(f"{self.camera}: unknown camera state {state!r}")
        self.state = state
        for s, g in self._state.items():
            g.set(1 if s == state else 0)
        self.camera_up.set(1 if state == "live" else 0)
        if state != "live":
            self.in_rate.reset()
            self.out_rate.reset()

    def count_reconnects_of(self, read: Callable[[], int]) -> None:
        """Take the camera's reconnects from `read` (its source's counter): the API's `reconnects` and
        `streamproxy_reconnects_total` both read it, so the two can never disagree (they once did:
        the source counted attempts, this class only the losses of a live session)."""
        self._reconnects_of = read
        RECONNECTS.track(self)

    @property
    def reconnects_total(self) -> int:
        """Connection attempts after the first (0 until a source is attached)."""
        read = self._reconnects_of
        return read() if read is not None else 0

    def set_viewers(self, rtsp: int, webrtc: int) -> None:
        """Absolute viewer counts, from the fan-out hub when its viewer set changes."""
        self.viewers["rtsp"].set(rtsp)
        self.viewers["webrtc"].set(webrtc)

    def sent(self, protocol: OutProtocol, nbytes: int) -> None:
        """`nbytes` of stream handed to one viewer (or the publisher) of `protocol`."""
        with self._lock:
            self._bytes_out[protocol] = self._bytes_out.get(protocol, 0) + nbytes
        self.bytes_out[protocol].inc(nbytes)

    def bytes_out_total(self, protocol: OutProtocol) -> int:
        return self._bytes_out.get(protocol, 0)

    # -- publish_url (publish.py) --------------------------------------------------------------
    def set_publish_up(self, up: bool) -> None:
        self.publish_up.set(1 if up else 0)

    def published(self) -> None:
        """One access unit reached the publish_url server (its bytes: bytes_out{protocol="publish"})."""
        with self._lock:
            self._published += 1
        self.publish_packets.inc()

    @property
    def published_total(self) -> int:
        return self._published


class _Reconnects(Collector):
    """`streamproxy_reconnects_total{camera}`, read at scrape time from each camera's `CameraMetrics`
    (and through it from the source that counts the attempts), not a second tally kept beside it.

    Held weakly: a camera's metrics live as long as its pipeline. Where a camera has several
    `CameraMetrics` (a pipeline replaced, a test's spare one), the newest one with a source is read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cameras: dict[str, weakref.ref[CameraMetrics]] = {}

    def track(self, m: CameraMetrics) -> None:
        with self._lock:
            ref = self._cameras.get(m.camera)
            cur = ref() if ref is not None else None
            if cur is None or cur._reconnects_of is None or m._reconnects_of is not None:
                self._cameras[m.camera] = weakref.ref(m)

    def describe(self) -> Iterable[Metric]:
        yield CounterMetricFamily("streamproxy_reconnects", RECONNECTS_HELP, labels=["camera"])

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily("streamproxy_reconnects", RECONNECTS_HELP, labels=["camera"])
        with self._lock:
            cameras = sorted(self._cameras.items())
        for camera, ref in cameras:
            m = ref()
            if m is None:
                continue
            try:
                family.add_metric([camera], m.reconnects_total)
            except Exception:  # a broken reader must not take the whole scrape down
                log.exception("%s: reading the reconnect count failed", camera)
        yield family


RECONNECTS: Final = _Reconnects()
REGISTRY.register(RECONNECTS)


def render_latest(accept: str = "") -> tuple[bytes, str]:
    """The /metrics response: (body, Content-Type).

    Pass the request's Accept header to negotiate like prometheus_client's own handler
    (OpenMetrics for a Prometheus that asks for it); without one: the classic text format 0.0.4,
    which every scraper understands.
    """
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type
