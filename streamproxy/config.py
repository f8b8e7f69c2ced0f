"""Configuration: strict pydantic models; every error names the YAML key that is wrong.

Every field has a default, a description and bounds, so that `config/streamproxy.example.yaml`
(fully commented, loaded by a test) is the documentation of every key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with the key path in the message (e.g. `cameras[0].url`)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_S = TypeVar("_S", bound=_Strict)


def merge_override(base: _S, override: _S | None) -> _S:
    """`base` with the keys the override set (a camera's section over the global one), key by key.

    An override section is validated as a whole section (same types, bounds and unknown-key errors),
    and pydantic remembers which keys it was given (`model_fields_set`): only those replace the
    global values; every key the camera did not write keeps the global one.
    """
    if override is None:
        return base
    return base.model_copy(update={k: getattr(override, k) for k in override.model_fields_set})


def default_model_dir() -> Path:
    env = os.environ.get("STREAMPROXY_MODEL_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "streamproxy" / "models"


class DetectorConfig(_Strict):
    model: Literal["yunet", "centerface"] = Field("yunet", description="Face detector model.")
    threshold: float = Field(
        0.4, ge=0.01, le=0.99, description="Minimum detection score (lower: more faces, more false masks)."
    )
    input_width: int = Field(
        1280,
        ge=160,
        le=3840,
        description="Width the frame is resized to for detection (aspect kept, sides rounded to 32). "
        "The main recall knob for small/far faces; 0.5-1x the frame width is typical.",
    )
    tiles: int = Field(
        1,
        ge=1,
        le=4,
        description="Split the frame into tiles x tiles overlapping tiles, each run at input_width: "
        "an extra pass for far faces in large frames (cost grows with tiles^2).",
    )
    upscale: float = Field(
        0.0,
        ge=0.0,
        le=4.0,
        description="If > 1: an extra whole-frame pass at upscale x input_width for small faces "
        "(about upscale^2 the cost of the first pass). 0 = off.",
    )
    tile_overlap: float = Field(0.15, ge=0.0, le=0.5, description="Overlap between tiles, fraction of a tile.")
    nms_iou: float = Field(0.4, ge=0.05, le=0.95, description="IoU above which overlapping boxes merge.")
    threads: int = Field(
        0,
        ge=0,
        le=64,
        description="onnxruntime intra-op threads per detector; 0 = auto (live: the cores shared "
        "between the cameras, at most 2; bulk mode: 2).",
    )
    spinning: bool = Field(
        False,
        description="onnxruntime thread spinning. Off by default: with several sessions on a small "
        "machine spinning threads starve each other.",
    )
    model_dir: Path = Field(default_factory=default_model_dir, description="Where `models fetch` stores models.")

    @field_validator("model_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()


class TrackerConfig(_Strict):
    iou_match: float = Field(0.2, ge=0.0, le=1.0, description="Minimum IoU to match a detection to a track.")
    center_match: float = Field(
        1.0,
        ge=0.0,
        le=5.0,
        description="Also match when the centre distance is below this many face widths (fast faces).",
    )
    coast_seconds: float = Field(
        1.0, ge=0.0, le=10.0, description="Keep masking a face this long after the detector last saw it."
    )
    smoothing: float = Field(
        0.5, ge=0.0, le=0.95, description="Box smoothing (0 = raw detections, higher = smoother, more lag)."
    )
    speed_grow: float = Field(
        0.25,
        ge=0.0,
        le=2.0,
        description="Mask growth per (face widths per second) of speed: fast faces get bigger masks.",
    )
    min_hits: int = Field(
        1, ge=1, le=10, description="Detections needed before a track is masked (1 = mask on first sight)."
    )


class ObfuscationConfig(_Strict):
    style: Literal["blur", "pixelate", "solid"] = Field("blur", description="How a face is hidden.")
    shape: Literal["ellipse", "box"] = Field("ellipse", description="Mask shape.")
    mask_scale: float = Field(
        1.3,
        ge=1.0,
        le=3.0,
        description="Mask size, as deface's --mask-scale: each side of the face box is pushed out by "
        "(mask_scale - 1) x its size, so 1.3 gives a mask 1.6x the face box.",
    )
    blur_strength: float = Field(
        0.5,
        ge=0.2,
        le=2.0,
        description="Blur radius as a fraction of the face size: the face is averaged down to "
        "1/blur_strength samples across (0.5 -> 2, at most 6) and smoothly scaled back up, so no "
        "detail survives to be sharpened back.",
    )
    pixel_blocks: int = Field(
        8, ge=3, le=32, description="Pixelate: blocks across a face (fewer = coarser)."
    )

    @property
    def box_factor(self) -> float:
        """Mask box size / face box size (deface's convention: 1.3 -> 1.6)."""
        return 1.0 + 2.0 * (self.mask_scale - 1.0)


Point = tuple[float, float]


class PrivacyZone(_Strict):
    name: str = Field("zone", description="Label for logs.")
    points: list[Point] = Field(
        ..., min_length=3, description="Polygon vertices in pixels of the camera's frame, or 0..1 if `relative`."
    )
    relative: bool = Field(False, description="Points are fractions of width/height instead of pixels.")


class FailClosedConfig(_Strict):
    action: Literal["obfuscate", "drop"] = Field(
        "obfuscate",
        description="When detection fails or is late: obfuscate the whole frame, or drop it. Both are counted.",
    )


class EngineConfig(_Strict):
    """Everything the anonymization engine needs, for one stream or one file."""

    detector: DetectorConfig = Field(default_factory=lambda: DetectorConfig())
    tracker: TrackerConfig = Field(default_factory=lambda: TrackerConfig())
    obfuscation: ObfuscationConfig = Field(default_factory=lambda: ObfuscationConfig())
    fail_closed: FailClosedConfig = Field(default_factory=lambda: FailClosedConfig())
    detect_every: int = Field(
        1,
        ge=1,
        le=30,
        description="Run the detector every k-th frame; the tracker predicts in between. "
        "Live cameras start here and the latency controller may raise it.",
    )
    privacy_zones: list[PrivacyZone] = Field(default_factory=list, description="Areas always filled.")


class PrivacyConfig(_Strict):
    """What a live camera must protect, whatever the load: the floor the latency controller never crosses.

    From it follow the detector's smallest input width and the largest gap between detector runs
    (see `privacy_floor` below and the README's "Privacy floor"). Under overload the proxy sheds
    whole frames (counted as `overload`) instead of going below it.
    """

    min_face_px: float = Field(
        18.0,
        ge=4.0,
        le=400.0,
        description="Smallest face (width in the camera's pixels) that must be masked. Sets the "
        "detector's smallest input width: frame width x 18 / min_face_px (YuNet masks faces reliably "
        "from about 18 px of its input; measured), rounded up to 32.",
    )
    max_threshold: float = Field(
        0.25,
        ge=0.05,
        le=0.99,
        description="Live cameras run the detector at most at this score threshold (lower than bulk "
        "mode's 0.4): with look-ahead it looks at a face only every k-th frame, so each look must find "
        "more. Measured on the shared street clip, detector every 3rd frame: 0.4 leaked 2.4 % of "
        "face-frames, 0.3 1.7 %, 0.25 1.2 %; the night clip 2.5 % at 0.25 (bulk mode at 0.4: 13 %).",
    )
    max_unmasked_frames: int = Field(
        0,
        ge=0,
        le=30,
        description="Frames a newly visible face may stay unmasked before the detector has looked. 0: "
        "every frame waits (inside the latency budget) for a detector run on itself or a later frame, "
        "and a face first found there is masked back along its path in the frames that waited.",
    )


Transport = Literal["tcp", "udp", "auto"]


class CameraConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        ..., description="Path of the camera on the proxy: rtsp://HOST:PORT/<name>."
    )
    url: str = Field(..., description="Camera RTSP URL (credentials allowed; never logged).")
    transport: Transport | None = Field(None, description="RTSP transport to the camera; default: server's.")
    enabled: bool = Field(True, description="Set false to keep a camera in the file but not run it.")
    latency_budget_ms: float | None = Field(None, ge=20, le=5000, description="Override of the global budget.")
    # Section overrides merge key by key into the global section (see `merge_override`).
    detector: DetectorConfig | None = Field(
        None, description="Per-camera engine.detector keys (the others keep the global values)."
    )
    obfuscation: ObfuscationConfig | None = Field(None, description="Per-camera engine.obfuscation keys.")
    tracker: TrackerConfig | None = Field(None, description="Per-camera engine.tracker keys.")
    detect_every: int | None = Field(None, ge=1, le=30, description="Per-camera detector cadence override.")
    privacy: PrivacyConfig | None = Field(None, description="Per-camera privacy floor keys.")
    privacy_zones: list[PrivacyZone] = Field(default_factory=list, description="Areas always filled.")
    publish_url: str | None = Field(
        None,
        description="Also push this camera's anonymized stream to an external RTSP server "
        "(ANNOUNCE/RECORD, e.g. MediaMTX) for fan-out at scale; credentials allowed, never logged.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_rtsp(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
            raise ValueError("must be an rtsp:// or rtsps:// URL with a host")
        return v

    @field_validator("publish_url")
    @classmethod
    def _publish_url_is_rtsp(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
            raise ValueError("must be an rtsp:// or rtsps:// URL with a host")
        return v


class User(_Strict):
    username: str = Field(..., min_length=1)
    password: str = Field(..., min_length=1)


class ServerConfig(_Strict):
    host: str = Field("0.0.0.0", description="Address the RTSP and HTTP servers listen on.")
    rtsp_port: int = Field(8554, ge=0, le=65535, description="RTSP port (0: any free port, for tests).")
    http_port: int = Field(
        8080, ge=0, le=65535, description="HTTP port (web page, API, WHEP, metrics; 0: any free port)."
    )
    users: list[User] = Field(
        default_factory=list, description="If set, RTSP and WebRTC viewers must authenticate (Digest or Basic)."
    )
    realm: str = Field("streamproxy", description="Auth realm.")
    metrics_auth: bool = Field(
        False,
        description="/metrics requires the users' HTTP Basic auth too (off: Prometheus scrapes it without "
        "credentials; it holds counters and camera names, never a URL or a picture).",
    )
    rtp_port_min: int = Field(30000, ge=1024, le=65535, description="UDP ports for RTP/RTCP to viewers.")
    rtp_port_max: int = Field(30999, ge=1024, le=65535)
    session_timeout_s: float = Field(60.0, ge=5, le=3600, description="RTSP session timeout without keepalive.")
    viewer_buffer_packets: int = Field(
        50, ge=4, le=1000, description="Per-viewer buffer; a slower viewer drops until the next keyframe."
    )
    ice_hosts: list[str] = Field(
        default_factory=list,
        description="Host addresses offered as WebRTC ICE candidates (empty = all of this host's addresses).",
    )
    stun_servers: list[str] = Field(default_factory=list, description="STUN URLs (none contacted by default).")
    turn_servers: list[str] = Field(default_factory=list, description="TURN URLs (turn:user:pass@host:port).")


class IngestConfig(_Strict):
    transport: Transport = Field("tcp", description="Default RTSP transport to cameras.")
    open_timeout_s: float = Field(5.0, ge=0.5, le=60, description="Connect/DESCRIBE timeout.")
    read_timeout_s: float = Field(3.0, ge=0.5, le=60, description="No data this long = camera stalled.")
    backoff_initial_s: float = Field(0.5, ge=0.05, le=60, description="First reconnect delay.")
    backoff_max_s: float = Field(10.0, ge=0.1, le=600, description="Reconnect delay cap (doubles up to it).")
    demuxer: Literal["builtin", "pyav"] = Field(
        "builtin",
        description="rtsp:// cameras: our RTSP client hands each frame to PyAV's decoder on its last packet; "
        "pyav: FFmpeg's RTSP demuxer (one frame interval later). rtsps:// always uses pyav.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_audio_key(cls, data: Any) -> Any:
        # `keep_audio` was documented but never read: the live proxy never forwards audio. Configs
        # copied from the old example (`keep_audio: false`) still load; asking for audio is an error.
        if isinstance(data, dict) and "keep_audio" in data:
            if data["keep_audio"] is not False:
                raise ValueError(
                    "keep_audio: audio is never forwarded (speech is personal data); remove this key"
                )
            data = {k: v for k, v in data.items() if k != "keep_audio"}
        return data


class EncoderConfig(_Strict):
    codec: Literal["libx264"] = Field("libx264", description="Output encoder.")
    preset: str = Field("ultrafast", description="x264 preset.")
    bitrate_kbps: int = Field(4000, ge=100, le=50000, description="Target bitrate.")
    gop_seconds: float = Field(2.0, ge=0.2, le=10, description="Keyframe interval.")
    threads: int = Field(1, ge=0, le=16, description="Encoder threads (0 = auto). 1 keeps latency lowest.")


class SlateConfig(_Strict):
    fps: float = Field(2.0, ge=0.5, le=30, description="Frame rate of the 'camera offline' picture.")
    width: int = Field(1280, ge=64, le=3840, description="Slate size before the camera was ever seen.")
    height: int = Field(720, ge=64, le=2160)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AppConfig(_Strict):
    cameras: list[CameraConfig] = Field(..., min_length=1, description="Cameras to proxy.")
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    ingest: IngestConfig = Field(default_factory=lambda: IngestConfig())
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig())
    privacy: PrivacyConfig = Field(default_factory=lambda: PrivacyConfig())
    encoder: EncoderConfig = Field(default_factory=lambda: EncoderConfig())
    slate: SlateConfig = Field(default_factory=lambda: SlateConfig())
    latency_budget_ms: float = Field(
        200.0,
        ge=20,
        le=5000,
        description="Max proxy-added latency (decoder out -> packets out). Frames wait inside it for the "
        "next detector run (look-ahead): 200 ms lets the detector skip two of every three 25-fps frames "
        "with a ~40 ms run on 2 cores; at 150 ms only every other frame.",
    )
    logging: LoggingConfig = Field(default_factory=lambda: LoggingConfig())

    @model_validator(mode="after")
    def _unique_names(self) -> AppConfig:
        seen: set[str] = set()
        for i, cam in enumerate(self.cameras):
            if cam.name in seen:
                raise ValueError(f"cameras[{i}].name: duplicate camera name {cam.name!r}")
            seen.add(cam.name)
        if self.server.rtp_port_min >= self.server.rtp_port_max:
            raise ValueError("server.rtp_port_min: must be below server.rtp_port_max")
        return self

    def engine_for(self, cam: CameraConfig) -> EngineConfig:
        """The engine settings of one camera: the global ones with the keys the camera overrides."""
        eng = self.engine
        upd: dict[str, Any] = {
            "detector": merge_override(eng.detector, cam.detector),
            "obfuscation": merge_override(eng.obfuscation, cam.obfuscation),
            "tracker": merge_override(eng.tracker, cam.tracker),
        }
        if cam.detect_every is not None:
            upd["detect_every"] = cam.detect_every
        upd["privacy_zones"] = [*self.engine.privacy_zones, *cam.privacy_zones]
        return self.engine.model_copy(update=upd)

    def privacy_for(self, cam: CameraConfig) -> PrivacyConfig:
        return merge_override(self.privacy, cam.privacy)

    def budget_for(self, cam: CameraConfig) -> float:
        return cam.latency_budget_ms if cam.latency_budget_ms is not None else self.latency_budget_ms

    def transport_for(self, cam: CameraConfig) -> Transport:
        return cam.transport if cam.transport is not None else self.ingest.transport


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


# A validator that checks a key below its own level names it first: "cameras[1].name: duplicate ...".
_SUBKEY_MSG = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.DOTALL)


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/streamproxy.example.yaml)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            sub = _SUBKEY_MSG.match(msg)
            if sub:
                lines.append(f"{_key_path(loc) + '.' if loc else ''}{sub.group(1)}: {sub.group(2)}")
                continue
        lines.append(f"{_key_path(loc)}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any) -> AppConfig:
    if not isinstance(data, dict):
        raise ConfigError("(top level): the config must be a YAML mapping with a `cameras` list")
    try:
        return AppConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path) -> AppConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config file: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    try:
        return parse_config(data)
    except ConfigError as err:
        raise ConfigError(f"{p}: {err}") from None


def redact_url(url: str) -> str:
    """The camera URL without credentials: the only form that may reach logs, labels and the API."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()
