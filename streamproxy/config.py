"""Configuration: strict pydantic models; every error names the YAML key that is wrong.

Every field has a default, a description and bounds, so that `config/streamproxy.example.yaml`
(fully commented, loaded by a test) is the documentation of every key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamproxy.redact import is_ip_address, redact_text, rtsp_url_problem, url_secrets


class ConfigError(ValueError):
    """A configuration problem, with the key path in the message (e.g. `cameras[0].url`)."""


class _Strict(BaseModel):
    # hide_input_in_errors: a ValidationError that escapes (a traceback, a caller's `str(err)`) must not
    # echo `input_value='rtsp://user:password@...'`; our own messages never carry the input either.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


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
    tile_overlap: float = Field(
        0.15, ge=0.0, le=0.5, description="Overlap between tiles, fraction of a tile."
    )
    nms_iou: float = Field(0.4, ge=0.05, le=0.95, description="IoU above which overlapping boxes merge.")
    upscales: list[float] = Field(
        default_factory=list,
        max_length=4,
        description="More whole-frame passes at these magnifications of input_width, beside `upscale` "
        "(e.g. [1.5] with upscale 2: faces between the two scales). Each costs about its square.",
    )
    flip: bool = Field(
        False, description="Also run every whole-frame pass on the mirrored picture (one more pass each)."
    )
    confirm_below: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="A box scoring under this counts only when at least `confirm_passes` passes "
        "(scales, flips, tiles) found it. 0 = off; only meaningful with more than one pass.",
    )
    confirm_passes: int = Field(
        2, ge=2, le=16, description="Passes that must agree on a box under confirm_below."
    )
    verify_min_px: float = Field(
        0.0,
        ge=0.0,
        le=4096.0,
        description="Second look: each box at least this wide (frame pixels) and scoring under "
        "`verify_skip` is checked by the other model (YuNet boxes by CenterFace and vice versa) on a "
        "magnified crop around it, and dropped when that model scores it under `verify_score`. 0 = off.",
    )
    verify_score: float = Field(
        0.12, ge=0.01, le=0.99, description="Score the second look's model must give a box for it to count."
    )
    verify_skip: float = Field(
        0.9,
        ge=0.01,
        le=1.0,
        description="Boxes scoring at least this skip the second look (kept as they are).",
    )
    threads: int = Field(
        0,
        ge=0,
        le=64,
        description="onnxruntime intra-op threads per detector; 0 = auto (live: one detector shared by "
        "the cameras, a single-threaded session per core once there are as many cameras, earliest "
        "deadline first; fewer cameras get up to 2 threads; bulk stills: 2; bulk video: one single-threaded "
        "session per core, at most 4, each detecting a frame of its own ahead of the engine). A set value "
        "gives a live camera a session of its own, and bulk video one session, with that many threads.",
    )
    spinning: bool = Field(
        False,
        description="onnxruntime thread spinning. Off by default: with several sessions on a small "
        "machine spinning threads starve each other.",
    )
    model_dir: Path = Field(
        default_factory=default_model_dir, description="Where `models fetch` stores models."
    )

    @field_validator("model_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("upscales")
    @classmethod
    def _upscales(cls, v: list[float]) -> list[float]:
        for x in v:
            if not 1.0 < x <= 4.0:
                raise ValueError(f"each magnification must be > 1 and <= 4, got {x}")
        return v


Quality = Literal["fast", "balanced", "best"]
FileKind = Literal["video", "image"]

# The quality presets: detector settings per preset, for videos (and live cameras) and for stills.
# A key written in the config (or given on the command line) wins over its preset. Measured on the
# shared WIDER sample, dlib's photos and 720p video: see the README's bulk mode section and
# bench/README.md ("Quality presets"), which also lists what was tried and not kept.
QUALITY_PRESETS: dict[Quality, dict[FileKind, dict[str, Any]]] = {
    "fast": {
        # One pass, smaller picture for video; stills at their own size only.
        "video": {"input_width": 960, "upscale": 0.0},
        "image": {"upscale": 0.0, "verify_min_px": 20.0, "verify_score": 0.12},
    },
    "balanced": {
        # Video: one 1280-px pass (the privacy floor's width for 720p); bulk video adds the second
        # look (BULK_VIDEO_SECOND_LOOK). Stills: native, 1.5x and 2x, each also mirrored; boxes
        # under 0.4 count when two passes agree; boxes >= 20 px get a second look by CenterFace
        # (removes dog faces and patterns).
        "video": {"input_width": 1280, "upscale": 0.0},
        "image": {
            "threshold": 0.3, "upscale": 2.0, "upscales": [1.5], "flip": True, "confirm_below": 0.4,
            "confirm_passes": 2, "verify_min_px": 20.0, "verify_score": 0.12,
        },
    },
    "best": {
        # Video: an extra 1.5x pass (a 1920-px look for far faces), mirrored too. Stills: balanced's
        # passes plus 2x2 tiles, down to score 0.25 when two passes agree.
        "video": {"input_width": 1280, "upscale": 1.5, "flip": True, "threshold": 0.35},
        "image": {
            "threshold": 0.25, "upscale": 2.0, "upscales": [1.5], "flip": True, "tiles": 2,
            "confirm_below": 0.4, "confirm_passes": 2, "verify_min_px": 20.0, "verify_score": 0.12,
        },
    },
}  # fmt: skip


# Bulk video (files, every preset): boxes >= 20 px scoring under 0.9 get the second look too (a window
# or a coat YuNet scores 0.4-0.6 for a second was masked as a 170-px face: dev_street's over-masking p90
# 4.9 -> 4.1 %, its worst frame 15 -> 9.6 %, leak unchanged on the three dev clips; bench/README.md
# "Over-masking"). Not on live cameras: there it was not measured at the floor, and a scripted live
# camera's face (tests/test_camera_faults.py) reached a viewer with it on.
BULK_VIDEO_SECOND_LOOK: dict[str, Any] = {"verify_min_px": 20.0, "verify_score": 0.12}


def quality_detector(det: DetectorConfig, quality: Quality, kind: FileKind) -> DetectorConfig:
    """The detector settings of a preset for videos or stills; the keys set in `det` win."""
    preset = QUALITY_PRESETS[quality][kind]
    update = {k: v for k, v in preset.items() if k not in det.model_fields_set}
    return det.model_copy(update=update) if update else det


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
        description="Mask growth, in total, per (face width per second) of speed: half of it on each side, "
        "on top of the margin for the time a face is not seen; capped with it (engine/track.py "
        "MAX_MARGIN_FACES). Live on every frame; bulk video only on frames where the face is not seen.",
    )
    min_hits: int = Field(
        1, ge=1, le=10, description="Detections needed before a track is masked (1 = mask on first sight)."
    )


# The most independent samples any style may keep across a face (pixelate: blocks; blur: 1/blur_strength),
# measured with a face matcher (bench/reid.py: dlib's ResNet descriptor aligned on the original face, the
# dev clips, faces >= 40 px; bench/README.md "Re-identification"): at 4 and fewer no face that the matcher
# tells apart from a blank mask was verified and rank-1 identification stayed at its no-information value;
# 5 blocks verified one (dev_street, 2 of its 20 frames), 8 (the old default) more, 12 identified faces,
# and a blur down to 5 samples verified a face in 24 of 25 frames that a blank mask matches in 11.
MAX_SAMPLES_ACROSS_FACE = 4
MIN_BLUR_STRENGTH = 1.0 / MAX_SAMPLES_ACROSS_FACE
_SAMPLES_REASON = (
    "a face matcher re-identifies finer pixelation and blur (measured: 5 samples across a face verified "
    "faces that a blank mask does not, 8 and 12 more; bench/reid.py, bench/README.md 'Re-identification')"
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
        le=2.0,
        description="Blur radius as a fraction of the face size: the face is averaged down to "
        f"1/blur_strength samples across (0.5 -> 2; at least {MIN_BLUR_STRENGTH:g}, i.e. at most "
        f"{MAX_SAMPLES_ACROSS_FACE} samples: see MAX_SAMPLES_ACROSS_FACE) and smoothly scaled back up, so no "
        "detail survives to be sharpened back.",
    )
    pixel_blocks: int = Field(
        4,
        ge=3,
        description=f"Pixelate: blocks across a face (fewer = coarser; 3..{MAX_SAMPLES_ACROSS_FACE}: finer "
        "pixelation is re-identified by a face matcher, see MAX_SAMPLES_ACROSS_FACE).",
    )

    @field_validator("pixel_blocks")
    @classmethod
    def _pixel_blocks(cls, v: int) -> int:
        if v > MAX_SAMPLES_ACROSS_FACE:
            raise ValueError(
                f"at most {MAX_SAMPLES_ACROSS_FACE} blocks across a face, got {v}: {_SAMPLES_REASON}"
            )
        return v

    @field_validator("blur_strength")
    @classmethod
    def _blur_strength(cls, v: float) -> float:
        if v < MIN_BLUR_STRENGTH:
            raise ValueError(
                f"at least {MIN_BLUR_STRENGTH:g} (1/{v:g} = {1 / v:.1f} > {MAX_SAMPLES_ACROSS_FACE} samples "
                f"across a face), got {v:g}: {_SAMPLES_REASON}"
            )
        return v

    @property
    def box_factor(self) -> float:
        """Mask box size / face box size (deface's convention: 1.3 -> 1.6)."""
        return 1.0 + 2.0 * (self.mask_scale - 1.0)


Point = tuple[float, float]


class PrivacyZone(_Strict):
    name: str = Field("zone", description="Label for logs.")
    points: list[Point] = Field(
        ...,
        min_length=3,
        description="Polygon vertices in pixels of the camera's frame, or 0..1 if `relative`.",
    )
    relative: bool = Field(False, description="Points are fractions of width/height instead of pixels.")


class FailClosedConfig(_Strict):
    action: Literal["obfuscate", "drop"] = Field(
        "obfuscate",
        description="When detection fails or is late: obfuscate the whole frame, or drop it. Both are counted.",
    )


class TextConfig(_Strict):
    """The text-region detector of `objects: [faces, plates]` (PP-OCRv4's DB detector).

    It finds text of any kind, not only licence plates: street signs, shop names, house numbers,
    writing on clothes and screens are masked too.
    """

    input_width: int = Field(
        0,
        ge=0,
        le=3840,
        description="Longer side the picture is resized to for the text detector (rounded to 32). 0 = the "
        "picture's own size (at least 960, at most 1920): plates are small, and the cost grows with the area "
        "(~0.4 s at 960x544, ~0.7 s at 1280x736 on 2 cores).",
    )
    threshold: float = Field(
        0.3, ge=0.05, le=0.95, description="Text probability above which a pixel is text (DB binarization)."
    )
    box_threshold: float = Field(
        0.4,
        ge=0.05,
        le=0.95,
        description="Mean text probability a region needs to be masked (lower: more regions masked; "
        "RapidOCR's OCR uses 0.5).",
    )
    unclip: float = Field(
        1.6,
        ge=1.0,
        le=4.0,
        description="Region growth as DB's unclip ratio: each side pushed out by area x (unclip) / perimeter.",
    )
    margin: float = Field(
        0.25,
        ge=0.0,
        le=3.0,
        description="Each text mask grows by this many region heights per side (DB's boxes hug the ink); in "
        "videos twice that for a region seen at one run only (motion between runs).",
    )
    detect_every: int = Field(
        5,
        ge=1,
        le=30,
        description="Videos: run the text detector on every k-th frame. The frames between two runs wait "
        "for the second and are masked with both runs' regions (interpolated where they match), so text "
        "is masked in every frame; larger k is faster and masks text that moves fast less tightly.",
    )
    coast_runs: int = Field(
        1,
        ge=0,
        le=10,
        description="Videos: keep masking a region for this many runs after the detector last saw it.",
    )


ObjectKind = Literal["faces", "plates"]


def _faces_only() -> list[ObjectKind]:
    return ["faces"]


class EngineConfig(_Strict):
    """Everything the anonymization engine needs, for one stream or one file."""

    quality: Quality = Field(
        "balanced",
        description="Detector preset: fast | balanced | best (see QUALITY_PRESETS; README, bulk mode). Keys "
        "written under `detector` win over it. Live cameras keep the privacy floor whatever the preset.",
    )
    objects: list[ObjectKind] = Field(
        default_factory=_faces_only,
        description='What is masked: faces always; "plates" adds the text detector, which masks licence '
        "plates and every other text region it finds (street signs, shop names, house numbers). Bulk mode "
        "(`streamproxy anonymize --objects faces,plates`); live cameras refuse it when its cost does not "
        "fit the latency budget.",
    )
    text: TextConfig = Field(
        default_factory=lambda: TextConfig(), description='The text detector of "plates".'
    )

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

    @field_validator("objects")
    @classmethod
    def _faces_always(cls, v: list[str]) -> list[str]:
        if "faces" not in v:
            raise ValueError('must include "faces" (faces are always masked); e.g. [faces, plates]')
        if len(set(v)) != len(v):
            raise ValueError("each object may be listed once")
        return v


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
    change_gating: bool = Field(
        True,
        description="Between whole looks, run the detector only where the picture changed since it was last "
        "looked at, and around the faces being followed (engine/change.py). A fixed camera then costs a "
        "fraction of the detector; a moving camera, a lighting change or a PTZ turn gets whole looks as "
        "without it. false: every detector run looks at the whole picture.",
    )
    change_threshold: float = Field(
        12.0,
        ge=2.0,
        le=64.0,
        description="Change gating: a part of the picture changed when its luma (on a copy where the smallest "
        "face is 4 px wide) differs by more than this many levels from how it looked at its last look. "
        "Compared with that look, not with the previous frame, so slow changes add up.",
    )
    full_scan_s: float = Field(
        1.0,
        ge=0.1,
        le=10.0,
        description="Change gating: every part of the picture is looked at, changed or not, at least this often "
        "(seconds; a rolling scan of 4 overlapping tiles, one per detector run), so a face the detector missed "
        "once is looked for again even where nothing changes.",
    )


Transport = Literal["tcp", "udp", "auto"]


class CameraConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = Field(
        ..., description="Path of the camera on the proxy: rtsp://HOST:PORT/<name>."
    )
    url: str = Field(..., description="Camera RTSP URL (credentials allowed; never logged).")
    transport: Transport | None = Field(None, description="RTSP transport to the camera; default: server's.")
    enabled: bool = Field(True, description="Set false to keep a camera in the file but not run it.")
    latency_budget_ms: float | None = Field(
        None, ge=20, le=5000, description="Override of the global budget."
    )
    # Section overrides merge key by key into the global section (see `merge_override`).
    detector: DetectorConfig | None = Field(
        None, description="Per-camera engine.detector keys (the others keep the global values)."
    )
    obfuscation: ObfuscationConfig | None = Field(None, description="Per-camera engine.obfuscation keys.")
    tracker: TrackerConfig | None = Field(None, description="Per-camera engine.tracker keys.")
    detect_every: int | None = Field(None, ge=1, le=30, description="Per-camera detector cadence override.")
    quality: Quality | None = Field(None, description="Per-camera engine.quality (the floor still holds).")
    privacy: PrivacyConfig | None = Field(None, description="Per-camera privacy floor keys.")
    privacy_zones: list[PrivacyZone] = Field(default_factory=list, description="Areas always filled.")
    sub_stream: SubStreamConfig | None = Field(
        None, description="Per-camera sub_stream keys (enabled: false: none)."
    )
    onvif_port: int | None = Field(
        None, ge=0, le=65535,
        description="With onvif.enabled: this camera is also an ONVIF device of its own on this HTTP port "
        "(one video source, its main and sub profiles), for a VMS that adds single-channel devices only.",
    )  # fmt: skip
    publish_url: str | None = Field(
        None,
        description="Also push this camera's anonymized stream to an external RTSP server "
        "(ANNOUNCE/RECORD, e.g. MediaMTX) for fan-out at scale; credentials allowed, never logged.",
    )

    @field_validator("url")
    @classmethod
    def _url_is_rtsp(cls, v: str) -> str:
        problem = rtsp_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("publish_url")
    @classmethod
    def _publish_url_is_rtsp(cls, v: str | None) -> str | None:
        problem = None if v is None else rtsp_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class User(_Strict):
    username: str = Field(..., min_length=1)
    password: str = Field(..., min_length=1)
    originals: bool = Field(
        False,
        description="May open the ORIGINAL (not anonymized) files and frames on the Files page and its review; "
        "each access is on the job's audit record. Without server.users the local user may.",
    )


class LimitsConfig(_Strict):
    """What one client, or all of them, may hold of the servers (`server.limits`).

    A proxy's ports face whatever can reach them. At a limit the servers first close an *idle*
    connection (no session, no request in progress; the oldest first) or reclaim a session that
    never started (no PLAY, no ICE/DTLS), so a flood of idle or half-open ones cannot lock a real
    viewer out; only when nothing can be reclaimed is the newcomer refused (RTSP 453/503, HTTP 503,
    with the reason), counted in `streamproxy_limit_rejections_total` and logged at most once a
    second. The defaults hold a few hundred viewers on a 1024-descriptor process.
    """

    max_connections: int = Field(
        512, ge=1, le=100_000, description="TCP connections per listener (RTSP, HTTP), all clients together."
    )
    max_connections_per_client: int = Field(
        128,
        ge=1,
        le=100_000,
        description="TCP connections per listener from one client address (an NVR may hold one per camera).",
    )
    request_timeout_s: float = Field(
        10.0, ge=0.5, le=300, description="A request's head (and body) must arrive within this (slowloris)."
    )
    idle_timeout_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="A connection with no session and no request in progress is closed after this.",
    )
    max_request_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024, description="Request line + headers of one RTSP or HTTP request."
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, le=16 * 1024 * 1024, description="Body of one request (WHEP offer, RTSP body)."
    )
    max_rtsp_sessions: int = Field(256, ge=1, le=100_000, description="RTSP sessions, all cameras together.")
    max_webrtc_sessions: int = Field(
        64, ge=1, le=10_000, description="WebRTC (WHEP) sessions, all cameras together."
    )
    setup_timeout_s: float = Field(
        10.0,
        ge=1,
        le=300,
        description="A session that is not playing within this (RTSP SETUP without PLAY, "
        "WHEP without ICE/DTLS) is reclaimed.",
    )
    keyframe_min_interval_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="Forced keyframes per camera at most one per this (joins, PLIs and slow "
        "viewers coalesced; 0: no limit).",
    )


class ServerConfig(_Strict):
    host: str = Field("0.0.0.0", description="Address the RTSP and HTTP servers listen on.")
    rtsp_port: int = Field(8554, ge=0, le=65535, description="RTSP port (0: any free port, for tests).")
    http_port: int = Field(
        8080, ge=0, le=65535, description="HTTP port (web page, API, WHEP, metrics; 0: any free port)."
    )
    users: list[User] = Field(
        default_factory=list,
        description="If set, RTSP and WebRTC viewers must authenticate (Digest or Basic).",
    )
    realm: str = Field("streamproxy", description="Auth realm.")
    metrics_auth: bool = Field(
        False,
        description="/metrics requires the users' HTTP Basic auth too (off: Prometheus scrapes it without "
        "credentials; it holds counters and camera names, never a URL or a picture).",
    )
    rtp_port_min: int = Field(30000, ge=1024, le=65535, description="UDP ports for RTP/RTCP to viewers.")
    rtp_port_max: int = Field(30999, ge=1024, le=65535)
    session_timeout_s: float = Field(
        60.0, ge=5, le=3600, description="RTSP session timeout without keepalive."
    )
    viewer_buffer_packets: int = Field(
        50, ge=4, le=1000, description="Per-viewer buffer; a slower viewer drops until the next keyframe."
    )
    ice_hosts: list[str] = Field(
        default_factory=list,
        description="Host addresses offered as WebRTC ICE candidates (empty = all of this host's addresses).",
    )
    limits: LimitsConfig = Field(
        default_factory=lambda: LimitsConfig(),
        description="Connection, request and session limits of the RTSP and HTTP servers.",
    )
    stun_servers: list[str] = Field(
        default_factory=list, description="STUN URLs (none contacted by default)."
    )
    turn_servers: list[str] = Field(default_factory=list, description="TURN URLs (turn:user:pass@host:port).")

    @model_validator(mode="after")
    def _ports_apart(self) -> ServerConfig:
        # Here rather than in AppConfig: it then reports together with camera errors, not after them.
        if self.rtp_port_min >= self.rtp_port_max:
            raise ValueError("rtp_port_min: must be below server.rtp_port_max")
        clash = listener_port_clash(self)
        if clash:
            raise ValueError(clash)
        return self


def listener_port_clash(server: ServerConfig) -> str | None:
    """Two TCP listeners on one port (`run` would fail to bind the second): the message names both keys.

    Every `*_port` key of the server section is a TCP listener (RTSP, HTTP with WHEP and /metrics;
    a later metrics or WebRTC port key is checked without change here). 0 means "any free port" and
    never clashes. The RTP range is UDP, so it cannot collide with them.
    """
    seen: dict[int, str] = {}
    for key in ServerConfig.model_fields:
        if not key.endswith("_port"):
            continue
        port = getattr(server, key)
        if not port:
            continue
        if port in seen:
            return f"{key}: port {port} is also server.{seen[port]}; every listener needs its own port"
        seen[port] = key
    return None


class IngestConfig(_Strict):
    transport: Transport = Field("tcp", description="Default RTSP transport to cameras.")
    open_timeout_s: float = Field(5.0, ge=0.5, le=60, description="Connect/DESCRIBE timeout.")
    read_timeout_s: float = Field(3.0, ge=0.5, le=60, description="No data this long = camera stalled.")
    backoff_initial_s: float = Field(0.5, ge=0.05, le=60, description="First reconnect delay.")
    backoff_max_s: float = Field(
        2.0,
        ge=0.1,
        le=600,
        description="Reconnect delay cap (doubles up to it). 2 s: a camera that comes back is live again within "
        "~3 s, for the price of one connection attempt every 2 s while it is down.",
    )
    unauthorized_backoff_max_s: float = Field(
        60.0,
        ge=0.1,
        le=3600,
        description="Reconnect delay cap while the camera rejects our credentials (401): many cameras lock an "
        "account after a few wrong passwords.",
    )
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


class SubStreamConfig(_Strict):
    """A second, smaller stream per camera (`rtsp://HOST:PORT/<camera>/sub`) for a VMS's grid view.

    Scaled from the same anonymized frames the main stream encodes (the raw decode never reaches
    it), with its own encoder, keyframe-on-join and viewer buffers. ONVIF offers it as the second
    profile. A camera's `sub_stream:` keys override these, key by key (`enabled: false` turns it off).
    """

    enabled: bool = Field(
        True, description="Encode a sub stream for every camera (a camera may turn it off)."
    )
    width: int = Field(640, ge=64, le=1920, description="Width; the height follows the camera's aspect.")
    height: int | None = Field(
        None, ge=64, le=1080, description="Height (unset: from the width and the camera's aspect ratio)."
    )
    fps: float = Field(10.0, ge=1, le=30, description="Frame rate at most (never above the camera's).")
    bitrate_kbps: int = Field(600, ge=50, le=20000, description="Target bitrate.")


class SlateConfig(_Strict):
    fps: float = Field(2.0, ge=0.5, le=30, description="Frame rate of the 'camera offline' picture.")
    width: int = Field(1280, ge=64, le=3840, description="Slate size before the camera was ever seen.")
    height: int = Field(720, ge=64, le=2160)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class OnvifDeviceInfo(_Strict):
    """What GetDeviceInformation answers (a VMS shows it and keys the device by the serial)."""

    manufacturer: str = Field("streamproxy", min_length=1, max_length=64, description="Manufacturer shown.")
    model: str = Field("anonymizing-proxy", min_length=1, max_length=64, description="Model shown.")
    firmware: str = Field("1.0", min_length=1, max_length=64, description="Firmware version shown.")
    serial: str = Field(
        "streamproxy-0001",
        min_length=1,
        max_length=64,
        description="Serial number: a VMS keys the device by it; give every proxy its own.",
    )
    hardware: str = Field("streamproxy", min_length=1, max_length=64, description="Hardware id (and scope).")


class OnvifScopes(_Strict):
    """The device's scopes (GetScopes and WS-Discovery): a VMS lists the device by them."""

    name: str = Field(
        "streamproxy", min_length=1, max_length=64, description="onvif://www.onvif.org/name/<name>."
    )
    location: str = Field(
        "unknown", min_length=1, max_length=64, description="onvif://www.onvif.org/location/<location>."
    )


class OnvifDiscoveryConfig(_Strict):
    """WS-Discovery (serve/onvif/discovery.py): a VMS finds the device by a multicast Probe (IPv4)."""

    enabled: bool = Field(True, description="Answer WS-Discovery probes while onvif.enabled (false: never).")
    port: int = Field(
        3702,
        ge=0,
        le=65535,
        description="UDP port of the probes (3702, the WS-Discovery port; 0: any, for tests).",
    )
    interface: str = Field(
        "0.0.0.0",
        description="IPv4 address of the interface that joins 239.255.255.250 and sends Hello/Bye "
        "(0.0.0.0: the kernel's default multicast interface).",
    )
    multicast_ttl: int = Field(
        1, ge=0, le=255, description="TTL of Hello/Bye (1: this link only, 0: this host)."
    )
    bind: str = Field(
        "0.0.0.0",
        description="Address the UDP socket binds: 0.0.0.0 receives multicast probes; a unicast address "
        "(e.g. 127.0.0.1) only directed probes sent to it.",
    )
    hello: bool = Field(True, description="Multicast a Hello on start and a Bye on stop.")
    xaddrs_hosts: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Hosts put in the XAddrs (http://HOST:http_port/onvif/device_service), e.g. behind NAT "
        "(empty: the address this host answers the prober from).",
    )

    @field_validator("interface", "bind")
    @classmethod
    def _ipv4(cls, v: str) -> str:
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError("must be an IPv4 address (0.0.0.0: the default interface)") from None
        return v

    @field_validator("xaddrs_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if (
                not host
                or len(host) > 253
                or not (is_ip_address(host) or all(c.isascii() and (c.isalnum() or c in "-.") for c in host))
            ):
                raise ValueError(f"{host!r} is not a host name or an IP address (no scheme, no port)")
        return v


class OnvifConfig(_Strict):
    """The proxy as an ONVIF Profile S device under the HTTP server (/onvif/device_service)."""

    enabled: bool = Field(
        False, description="Answer ONVIF device and media requests on the HTTP port (explicit opt-in)."
    )
    device: OnvifDeviceInfo = Field(default_factory=lambda: OnvifDeviceInfo())
    scopes: OnvifScopes = Field(default_factory=lambda: OnvifScopes())
    discovery: OnvifDiscoveryConfig = Field(
        default_factory=lambda: OnvifDiscoveryConfig(),
        description="WS-Discovery: how a VMS finds the device.",
    )


def default_data_dir() -> Path:
    """Where the service keeps its state (the Files page's jobs database, uploads, the live audit log):
    systemd's StateDirectory when it sets one, else the XDG state folder."""
    env = os.environ.get("STATE_DIRECTORY") or os.environ.get("STREAMPROXY_DATA_DIR")
    if env:
        return Path(env.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "streamproxy"


class FilesConfig(_Strict):
    """The Files page: anonymize photos and videos from the browser (`streamproxy files`, or a tab of
    `streamproxy run`). Folders on this machine are offered only under `roots`; uploads go to the data
    directory and leave with their job."""

    enabled: bool = Field(True, description="Serve the Files page and its API (behind server.users).")
    roots: dict[str, str] = Field(
        default_factory=dict,
        description="Folders the page may list, read and write, by the name the page shows "
        "(e.g. {exports: /srv/cctv-exports, anonymized: /srv/anonymized}). Nothing outside them is listed, "
        "read or written; without roots the page takes uploads only and keeps the results in the job.",
    )
    concurrent_jobs: int = Field(1, ge=1, le=8, description="Jobs run at the same time (others wait).")
    max_upload_bytes: int = Field(
        4 * 1024**3, ge=1024, le=1024**4, description="Largest uploaded file (413 beyond it)."
    )
    max_upload_files: int = Field(1000, ge=1, le=100_000, description="Files in one upload.")
    max_upload_total_bytes: int = Field(
        20 * 1024**3,
        ge=1024,
        le=16 * 1024**4,
        description="All files of one upload together (413 beyond it).",
    )
    retention_days: float = Field(
        30,
        ge=0,
        le=3650,
        description="A finished job's uploads and its own results folder are removed this long after it "
        "ended (0: kept until the job is deleted). Outputs written under a root are never removed.",
    )

    @field_validator("roots")
    @classmethod
    def _roots(cls, v: dict[str, str]) -> dict[str, str]:
        for name, path in v.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}", name):
                raise ValueError(f"{name!r}: a root's name is letters, digits, space, '.', '_' or '-'")
            if not Path(path).is_absolute():
                raise ValueError(f"{name}: {path!r} is not an absolute path")
        return v


class AppConfig(_Strict):
    cameras: list[CameraConfig] = Field(..., min_length=1, description="Cameras to proxy.")
    server: ServerConfig = Field(default_factory=lambda: ServerConfig())
    ingest: IngestConfig = Field(default_factory=lambda: IngestConfig())
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig())
    privacy: PrivacyConfig = Field(default_factory=lambda: PrivacyConfig())
    encoder: EncoderConfig = Field(default_factory=lambda: EncoderConfig())
    slate: SlateConfig = Field(default_factory=lambda: SlateConfig())
    sub_stream: SubStreamConfig = Field(
        default_factory=lambda: SubStreamConfig(),
        description="The low-resolution second stream of each camera.",
    )
    latency_budget_ms: float = Field(
        200.0,
        ge=20,
        le=5000,
        description="Max proxy-added latency (decoder out -> packets out). Frames wait inside it for the "
        "next detector run (look-ahead): 200 ms lets the detector skip two of every three 25-fps frames "
        "with a ~40 ms run on 2 cores; at 150 ms only every other frame.",
    )
    logging: LoggingConfig = Field(default_factory=lambda: LoggingConfig())
    onvif: OnvifConfig = Field(
        default_factory=lambda: OnvifConfig(), description="ONVIF device (off by default)."
    )
    files: FilesConfig = Field(
        default_factory=lambda: FilesConfig(),
        description="The Files page (anonymize files from the browser).",
    )
    data_dir: str = Field(
        "",
        description="The service's state: the Files page's jobs and uploads, the live audit log "
        "(empty: $STATE_DIRECTORY under systemd, else ~/.local/state/streamproxy).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> AppConfig:
        seen: set[str] = set()
        for i, cam in enumerate(self.cameras):
            if cam.name in seen:
                raise ValueError(f"cameras[{i}].name: duplicate camera name {cam.name!r}")
            seen.add(cam.name)
        # A camera's own ONVIF port is one more TCP listener: it may not share a port with another.
        ports = {p: f"server.{k}" for k in ServerConfig.model_fields if k.endswith("_port")
                 if (p := getattr(self.server, k))}  # fmt: skip
        for i, cam in enumerate(self.cameras):
            if not cam.onvif_port:
                continue
            if cam.onvif_port in ports:
                raise ValueError(
                    f"cameras[{i}].onvif_port: port {cam.onvif_port} is also {ports[cam.onvif_port]}; "
                    "every listener needs its own port"
                )
            ports[cam.onvif_port] = f"cameras[{i}].onvif_port"
        return self

    def data_path(self) -> Path:
        """The data directory in force (`data_dir`, else default_data_dir())."""
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()

    def engine_for(self, cam: CameraConfig) -> EngineConfig:
        """The engine settings of one camera: the global ones with the keys the camera overrides."""
        eng = self.engine
        quality = cam.quality or eng.quality
        upd: dict[str, Any] = {
            # The preset fills only the keys neither section wrote; the pipeline then holds the floor.
            "quality": quality,
            "detector": quality_detector(merge_override(eng.detector, cam.detector), quality, "video"),
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

    def sub_stream_for(self, cam: CameraConfig) -> SubStreamConfig | None:
        """The camera's sub stream settings, or None when it has none."""
        sub = merge_override(self.sub_stream, cam.sub_stream)
        return sub if sub.enabled else None

    def transport_for(self, cam: CameraConfig) -> Transport:
        return cam.transport if cam.transport is not None else self.ingest.transport


def sub_stream_size(cfg: SubStreamConfig, width: int, height: int) -> tuple[int, int]:
    """The sub stream's size for a camera frame of width x height: the configured width (and height,
    or the camera's aspect ratio), never larger than the camera, even sides. Here beside
    `AppConfig.sub_stream_for`: the encoder (live/encode.py) makes it, ONVIF announces it before then."""
    w = min(cfg.width, width)
    h = cfg.height if cfg.height is not None else round(w * height / max(1, width))
    h = min(h, height)
    return max(2, w - w % 2), max(2, h - h % 2)


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
    # A mistyped key is echoed, and a key can be anything the YAML had (a URL pasted one line up).
    return redact_text("\n".join(lines))


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
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {describe_yaml_error(err)}") from None
    try:
        return parse_config(data)
    except ConfigError as err:
        # One line per error, each naming the file: greppable, and clear when several are wrong.
        raise ConfigError("\n".join(f"{p}: {line}" for line in str(err).splitlines())) from None


# PyYAML quotes what it found: a one-character token ('\t'), a token kind ('<scalar>'), or text of
# the file (an alias, anchor or tag name: `password: *x9!` is read as an alias). Only the first two
# are shown.
_YAML_QUOTED = re.compile(r"'([^'\n]*)'")


def _yaml_quoted(m: re.Match[str]) -> str:
    inner = m.group(1)
    token_kind = inner.startswith("<") and inner.endswith(">")
    if len(inner) <= 1 or token_kind or re.fullmatch(r"\\\S{1,8}|#x[0-9a-fA-F]+", inner):
        return m.group(0)
    return "'***'"


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """Where and what, never the line itself: PyYAML's snippet of the line can hold a password."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = ": ".join(s for s in (err.context, err.problem) if s) or type(err).__name__
        what = _YAML_QUOTED.sub(_yaml_quoted, what)
        if isinstance(err, (yaml.composer.ComposerError, yaml.constructor.ConstructorError)):
            what += " (a value that starts with * & ! or contains ': ' needs quotes)"
        return redact_text(where + what)
    # ReaderError (a control character or a bad byte) names the character and its position only.
    return redact_text(_YAML_QUOTED.sub(_yaml_quoted, str(err)).replace("\n", " "))


# --- secrets -------------------------------------------------------------------------------------
# How a URL is shown and scrubbed is redact.py's; where the config keeps its credentials is known here.


def config_secrets(cfg: AppConfig) -> list[str]:
    """Every credential in the config: camera and publish URLs, viewer passwords, TURN URLs."""
    out: set[str] = set()
    for cam in cfg.cameras:
        for url in (cam.url, cam.publish_url):
            if url:
                out.update(url_secrets(url))
    for turn in cfg.server.turn_servers:
        out.update(url_secrets(turn.replace("turn:", "turn://", 1).replace("turns:", "turns://", 1)))
        out.add(turn)
    out.update(u.password for u in cfg.server.users if len(u.password) >= 4)
    return sorted(out, key=len, reverse=True)
