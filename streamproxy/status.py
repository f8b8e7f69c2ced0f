"""The status read-model: what the API, the page, tests and benchmarks read of the running service.

Frozen dataclasses, built on request from the single counters (the camera's `CameraMetrics`, the
engine's `EngineStats`, the publisher's own) and never written to: a snapshot is a picture of one
moment, not a second tally. `serve/http/server.py` serialises them with `dataclasses.asdict`, so the
field names and their order here *are* the /api/cameras JSON the page (serve/http/web/app.js) reads:
rename or reorder a field and the API changes.

No URL ever appears here: camera and publish URLs may carry credentials. `PublisherStatus.url` is
the redacted form, and the API leaves even that out. For the same reason a camera that is not live
says why as one word of `REASONS` (`not_live_reason`), not the source's error text, which names the
camera's address; the text is in the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

# Why a camera is not live (`PipelineStatus.reason`; the page shows it in words).
Reason = Literal[
    "connecting",  # the first attempt, nothing has failed yet
    "unauthorized",  # the camera rejects our user/password, or wants one the URL lacks (401)
    "forbidden",  # the camera answers 403
    "not_found",  # no stream at the URL's path (404)
    "refused",  # nothing listens at the camera's address and port
    "unreachable",  # no answer: no route, name not resolved, timed out
    "lossy",  # packets lost: no whole picture comes through
    "stalled",  # connected, then no video for the read timeout
    "disconnected",  # the camera closed or lost the connection, or ended the stream
    "undecodable",  # video arrives but does not decode
    "unsupported",  # not RTSP, no H.264/H.265 video, answers the client cannot follow
    "error",  # anything else (the log has the text)
    "stopped",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)

# The source's error texts (live/source.py `_describe`, the RTSP client's ClientError messages,
# FFmpeg's for the pyav demuxer) -> the reason; the first that matches wins.
_REASON_PATTERNS: Final[tuple[tuple[Reason, str], ...]] = (
    ("refused", r"refused"),  # first: "cannot connect to host:401: Connection refused"
    ("unauthorized", r"\b401\b|unauthori[sz]ed|credentials"),
    ("forbidden", r"\b403\b|forbidden"),
    ("not_found", r"\b404\b|not found"),
    ("lossy", r"lossy|packet loss|packets? (were )?lost|% lost"),
    ("undecodable", r"does not decode|undecodable"),
    ("stalled", r"^stalled|no video for|no data for|no packet for"),
    ("unreachable", r"no answer|timed out|no route|unreachable|name or service|name resolution|nodename"),
    (
        "unsupported",
        r"offers no|no video stream|not rtsp|answers http|malformed|oversized|invalid data|session header",
    ),
    (
        "disconnected",
        r"connection lost|closed the connection|reset by peer|broken pipe|stream ended|end of file",
    ),
)
_REASON_TEXTS: Final = tuple(
    (reason, re.compile(pattern, re.IGNORECASE)) for reason, pattern in _REASON_PATTERNS
)


def not_live_reason(state: str, last_error: str | None) -> Reason | None:
    """Why a camera in ingest `state` is not live, from its last failure's text; None while live."""
    if state == "live":
        return None
    if state == "stopped":
        return "stopped"
    if state == "unauthorized":
        return "unauthorized"
    if not last_error:
        return "connecting"
    for reason, pattern in _REASON_TEXTS:
        if pattern.search(last_error):
            return reason
    return "error"


@dataclass(frozen=True, slots=True)
class DropCounts:
    """Frames of one camera's pipeline that never left, by reason (`streamproxy_frames_dropped_total`;
    `slow_viewer` is per viewer, counted by the hub, and not a pipeline drop)."""

    latency_budget: int = 0
    fail_closed: int = 0
    queue_full: int = 0
    encoder: int = 0
    worker: int = 0  # the worker thread failed on the frame (an error outside the encoder; never sent raw)
    overload: int = 0


@dataclass(frozen=True, slots=True)
class LatencyStatus:
    """Proxy-added latency of the last frames (ms), and the budget it must stay in; p50/p99 are None
    before the first frame and while the camera is not live."""

    p50: float | None
    p99: float | None
    budget: float


@dataclass(frozen=True, slots=True)
class DetectorStatus:
    """What the latency controller runs the detector at now, and the floor it may not pass."""

    model: str
    detect_every: int
    input_width: int
    max_detect_every: int
    min_input_width: int
    keep_ratio: float
    error: str | None  # the detector could not be built: every frame fails closed


@dataclass(frozen=True, slots=True)
class FloorStatus:
    """The privacy floor for the camera's frame size (known once the first frame came)."""

    min_face_px: float
    min_input_width: int
    max_unmasked_frames: int
    max_detect_every: int


@dataclass(frozen=True, slots=True)
class ViewerCounts:
    rtsp: int
    webrtc: int


@dataclass(frozen=True, slots=True)
class SubStreamStatus:
    """The camera's sub stream (`rtsp://HOST:PORT/<path>`), encoded from the main stream's frames."""

    path: str  # "<camera>/sub"
    resolution: tuple[int, int] | None  # None until its first frame
    fps: float  # the configured ceiling (never above the camera's rate)
    frames_out: int
    viewers: int
    encode_cpu_s: float  # CPU time spent scaling and encoding it (compare PipelineStatus.encode_cpu_s)


@dataclass(frozen=True, slots=True)
class LossStatus:
    """Loss between the camera and the proxy (since start): counted by the built-in RTSP client, or for a
    camera read through FFmpeg (ingest pyav) from FFmpeg's "missed N packets" lines and damaged frames."""

    rtp_packets_lost: int  # gaps in RTP sequence numbers: streamproxy_rtp_packets_lost_total
    # built-in: access units dropped before the decoder for a lost packet; pyav: frames FFmpeg decoded
    # with packets missing (concealed): streamproxy_damaged_frames_total
    damaged_frames: int
    # Over the last seconds of the session; None while not measured. built-in: RTP packets lost;
    # pyav: frames damaged (FFmpeg does not count the packets that arrive)
    percent: float | None
    tcp_fallback: bool  # UDP lost too much: the camera is read over TCP until restart


def loss_status(source: object) -> LossStatus | None:
    """The camera source's loss counters (live/source.py CameraSource); None for a source without them."""
    lost = getattr(source, "rtp_packets_lost", None)
    damaged = getattr(source, "damaged_frames", None)
    if not isinstance(lost, int) or not isinstance(damaged, int):
        return None
    percent = getattr(source, "loss_percent", None)
    return LossStatus(
        rtp_packets_lost=lost,
        damaged_frames=damaged,
        percent=float(percent) if isinstance(percent, (int, float)) else None,
        tcp_fallback=getattr(source, "tcp_forced", False) is True,
    )


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """One camera's live pipeline (`CameraPipeline.snapshot()`).

    While the camera is not live, what describes its live picture is None (`fps_camera`, `faces`,
    `tracks`, latency p50/p99, `overloaded`) rather than the last session's values, and `reason`
    says why; the rates `fps_in`/`fps_out` are measured, so they read 0 then; counters keep counting."""

    name: str
    state: str
    reason: Reason | None  # why the camera is not live (None while it is)
    fps_in: float
    fps_out: float
    fps_camera: float | None
    frames_in: int
    frames_out: int
    dropped: DropCounts
    fail_closed_frames: int
    widened_frames: int  # masks grown past the face for safety (over-masking chosen to avoid a leak)
    faces: int | None
    tracks: int | None
    latency_ms: LatencyStatus
    # Overloaded: the camera cannot be carried at the privacy floor, so frames are shed.
    overloaded: bool | None
    keep_ratio: float
    detector: DetectorStatus
    privacy_floor: FloorStatus | None
    resolution: tuple[int, int] | None
    viewers: ViewerCounts
    reconnects: int  # connection attempts after the first: streamproxy_reconnects_total, one count
    encode_cpu_s: float = 0.0  # the main stream encoder's CPU time
    sub_stream: SubStreamStatus | None = None
    loss: LossStatus | None = (
        None  # what the camera's RTP loses (built-in client: the pyav demuxer counts none)
    )


@dataclass(frozen=True, slots=True)
class PublisherStatus:
    """The push of one camera's stream to its publish_url server (`Publisher.snapshot()`)."""

    url: str  # redacted; the API leaves it out all the same
    up: bool
    sessions: int
    attempts: int
    packets_sent: int
    bytes_sent: int
    last_error: str


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """One entry of /api/cameras: the pipeline (None if its snapshot failed), WHEP, the publisher."""

    name: str
    whep: str
    pipeline: PipelineStatus | None
    publish: PublisherStatus | None = None
