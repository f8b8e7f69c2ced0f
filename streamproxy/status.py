"""The status read-model: what the API, the page, tests and benchmarks read of the running service.

Frozen dataclasses, built on request from the single counters (the camera's `CameraMetrics`, the
engine's `EngineStats`, the publisher's own) and never written to: a snapshot is a picture of one
moment, not a second tally. `serve/http.py` serialises them with `dataclasses.asdict`, so the
field names and their order here *are* the /api/cameras JSON the page (serve/web/app.js) reads:
rename or reorder a field and the API changes.

No URL ever appears here: camera and publish URLs may carry credentials. `PublisherStatus.url` is
the redacted form, and the API leaves even that out.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """Proxy-added latency of the last frames (ms), and the budget it must stay in."""

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
class PipelineStatus:
    """One camera's live pipeline (`CameraPipeline.snapshot()`)."""

    name: str
    state: str
    fps_in: float
    fps_out: float
    fps_camera: float
    frames_in: int
    frames_out: int
    dropped: DropCounts
    fail_closed_frames: int
    widened_frames: int  # masks grown past the face for safety (over-masking chosen to avoid a leak)
    faces: int
    tracks: int
    latency_ms: LatencyStatus
    # Overloaded: the camera cannot be carried at the privacy floor, so frames are shed.
    overloaded: bool
    keep_ratio: float
    detector: DetectorStatus
    privacy_floor: FloorStatus | None
    resolution: tuple[int, int] | None
    viewers: ViewerCounts
    reconnects: int
    encode_cpu_s: float = 0.0  # the main stream encoder's CPU time
    sub_stream: SubStreamStatus | None = None


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
