"""One camera's live pipeline: source → engine (detect, track, obfuscate) → encoder → stream hub.

    ingest thread (source.py)      decodes the camera, hands each DecodedFrame to `_on_frame`
      └─ a small mailbox           full: the oldest frame goes (an old frame is worth nothing live)
    worker thread (this file)      latency check → Anonymizer.push (detect, track, obfuscate)
      └─ the encode queue          anonymized frames only, in order
    encoder thread (this file)     latency check → render → StreamOutput.send (encode.py): encode
      └─ loop.call_soon_threadsafe hub.publish(packet) on the event loop → RTSP / WebRTC viewers

The encoder has its own thread so that encoding one group of frames overlaps the next detector run
(on 2 cores a 720p frame costs ~9 ms to encode and a 1280-px YuNet run ~35 ms: in one thread they
add up to more than a frame interval every time the detector runs).

The latency budget bounds proxy-added latency: from a frame leaving the decoder to its packets
being handed to viewers. Frames the detector does not run on wait in the engine (look-ahead) for the
next run, which comes by the cadence or, at the latest, when the oldest waiting frame would
otherwise leave late. The controller (controller.py) stays inside the budget by running the
detector less often, then at lower resolution, down to the privacy floor and never below it, and
finally by shedding whole frames — never by letting a frame skip the engine. Whether a frame would
leave late is decided in one place, `_late` (with `_last_start`, the hold deadline's base).
While the camera is down the worker publishes a slate ("camera offline", slate.py) through the same
encoder and hub so viewers stay connected. The engine, and with it the detector, is made on the
camera's first frame: a camera that never sends one costs its reconnect attempts and nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import av

from streamproxy.config import AppConfig, CameraConfig, EngineConfig
from streamproxy.engine.anonymizer import Anonymizer, PendingFrame
from streamproxy.engine.change import gate_settings
from streamproxy.engine.detect import FaceDetector
from streamproxy.engine.pool import PooledDetector
from streamproxy.host import usable_cores
from streamproxy.hub import StreamHub
from streamproxy.live.controller import (
    FrameShedder,
    LatencyController,
    PrivacyFloor,
    hold_frames_allowed,
    privacy_floor,
)
from streamproxy.live.encode import EncoderFactory, H264Encoder, StreamOutput, SubStreamEncoder, VideoEncoder
from streamproxy.live.slate import make_slate
from streamproxy.live.source import CameraSource, OnFrame, OnState
from streamproxy.metrics import CameraMetrics, CameraState, DropReason
from streamproxy.status import (
    DetectorStatus,
    FloorStatus,
    LatencyStatus,
    PipelineStatus,
    SubStreamStatus,
    ViewerCounts,
    loss_status,
    not_live_reason,
)
from streamproxy.types import DecodedFrame, EncodedPacket

log = logging.getLogger(__name__)

# Ingest states -> the camera_state metric's states.
_METRIC_STATE: dict[str, CameraState] = {
    "connecting": "connecting", "live": "live", "reconnecting": "offline", "unauthorized": "offline", "stopped": "stopped"
}  # fmt: skip

# Frames that may wait for the worker while it runs the detector and releases a look-ahead group
# (a run push takes the run plus a few obfuscations: 45-90 ms for a 1280-px YuNet on 2 busy cores,
# more when the shared detector serves other cameras first). Overload is handled by shedding, before
# the mailbox, so depth here only absorbs long pushes; a frame that waited too long is dropped as late
# (`_late`), never sent late. 5, not 3: with 4 cameras on 2 cores one whole look landing on a
# neighbour's run overflowed 3 and shed a fifth of that camera's frames (dev_plaza N=4: 0 of 3 runs
# with every camera >= 24 fps at 3, the second run at 5: 24.1-24.5 on all four).
MAILBOX_FRAMES = 5
# Anonymized frames waiting for the encoder: a whole look-ahead group and then some. Full means the
# encoder is slower than the camera; the newest frame is dropped (counted) rather than queued.
ENCODE_QUEUE_FRAMES = 12
# The encoder runs at the camera's frame rate: one more than this far off is replaced (see
# _ensure_encoder), at most once per RATE_RECHECK_S.
RATE_TOLERANCE = 0.15
RATE_RECHECK_S = 10.0
# Frames waiting for the next detector run go to it this share of the budget before the last moment
# they still could (`_hold_deadline`): the worker wakes late on a busy CPU, and a run may take longer
# than the recent ones it is estimated by.
HOLD_SLACK_SHARE = 0.1
# While the camera is down, a viewer's arrival brings the slate at this rate for this long: FFmpeg
# with default settings reads ~30 frames before it plays (measured: 14.5 s to the first frame at the
# slate's 2 fps, 1.2 s at 25), and a steady 25 fps slate would cost every down camera ~5 % of a core.
SLATE_BURST_FPS = 25.0
SLATE_BURST_S = 2.0


@dataclass(frozen=True, slots=True)
class _ToEncode:
    """A frame on its way to the encoder thread: one the engine decided the masks of (rendered,
    i.e. copied and obfuscated, there), or our own slate."""

    pending: PendingFrame | None
    decoded_at: float
    slate_frame: av.VideoFrame | None = None


class FrameSource(Protocol):
    """What the pipeline needs of its camera (CameraSource; a test's stand-in calls `on_frame` itself)."""

    frame_rate: float | None  # the rate the camera's stream declares, if it does
    reconnects: int

    def start(self) -> None: ...

    def stop(self) -> None: ...


# How the pipeline makes its source, given the callbacks the source must call (from its own thread).
SourceFactory = Callable[[OnFrame, OnState], FrameSource]


def live_engine_config(cam: CameraConfig, cfg: AppConfig, cameras: int = 1) -> EngineConfig:
    """The engine settings a live camera runs with: its own, held to the privacy floor's threshold,
    with the detector's threads shared between the cameras when set to auto (0)."""
    engine_cfg = cfg.engine_for(cam)
    if "plates" in engine_cfg.objects:
        # Not masking text that the config asks for would be a silent leak: refuse, with the cost.
        from streamproxy.engine.text import live_refusal

        raise ValueError(live_refusal(cam.name, engine_cfg, cfg.budget_for(cam)))
    privacy = cfg.privacy_for(cam)
    if engine_cfg.detector.threshold > privacy.max_threshold:
        # The floor's threshold: a detector that looks every k-th frame must find more per look.
        engine_cfg = engine_cfg.model_copy(
            update={"detector": engine_cfg.detector.model_copy(update={"threshold": privacy.max_threshold})}
        )
    if engine_cfg.detector.threads == 0:
        # Auto: share the cores between the cameras; oversubscribed onnxruntime pools are slower.
        # One camera on 2 cores gets both: its worker thread, not the CPU, is what limits it
        # (measured, 720p25 at the 1280-px floor: 20.5 fps on two threads, 14 on one, the
        # process using ~1 core either way).
        share = max(1, min(2, usable_cores() // max(1, cameras)))
        engine_cfg = engine_cfg.model_copy(
            update={"detector": engine_cfg.detector.model_copy(update={"threads": share})}
        )
    return engine_cfg


class LatencyStats:
    """Proxy-added latency of the last frames, for the API and logs (metrics get every sample)."""

    def __init__(self, size: int = 500) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._samples.append(ms)

    def percentile(self, q: float) -> float | None:
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CameraPipeline:
    """Runs one camera: ingest, anonymize, encode, publish. `start`/`stop` are idempotent.

    What it runs on can be handed in (tests drive it without a camera, libx264 or a model file):
    `source_factory` makes the source from the pipeline's two callbacks (default: CameraSource on
    the camera's URL), `encoder_factory` makes each encoder (default: H264Encoder), `detector` is the
    engine's detector (default: the configured model, loaded with the engine on the first frame).
    """

    def __init__(
        self,
        cam: CameraConfig,
        cfg: AppConfig,
        hub: StreamHub,
        loop: asyncio.AbstractEventLoop,
        metrics: CameraMetrics | None = None,
        cameras: int = 1,
        position: int = 0,
        sub_hub: StreamHub | None = None,
        *,
        source_factory: SourceFactory | None = None,
        encoder_factory: EncoderFactory | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        self.cam = cam
        self.name = cam.name
        self.cfg = cfg
        self.hub = hub
        self.loop = loop
        self._make_encoder: EncoderFactory = encoder_factory if encoder_factory is not None else H264Encoder
        # The camera's one tally of frames in, out and dropped: the status below reads it back.
        self.metrics = metrics if metrics is not None else CameraMetrics(cam.name)
        # The main stream: camera frames measured where their packets reach the hub, slates not.
        self._out = StreamOutput(hub, loop, on_published=self._published)
        # The sub stream (`<camera>/sub`): the same rendered frames, scaled and thinned out, on their
        # own encoder and hub (its own keyframe-on-join and viewer buffers).
        self.sub_hub = sub_hub
        sub_cfg = cfg.sub_stream_for(cam)
        self.sub: SubStreamEncoder | None = None
        self._sub_out: StreamOutput | None = None
        if sub_hub is not None and sub_cfg is not None:
            self.sub = SubStreamEncoder(sub_cfg, cfg.encoder, cam.name, encoder_factory=encoder_factory)
            self._sub_out = StreamOutput(sub_hub, loop)
        self._encode_cpu_s = 0.0  # the main encoder's CPU time (the sub stream's cost is measured against it)
        # The newest frame that left for the encoder (anonymized, or the slate) and when: snapshots.
        self._latest: tuple[av.VideoFrame, float] | None = None
        self.engine_cfg = live_engine_config(cam, cfg, cameras)
        self.privacy = cfg.privacy_for(cam)
        # The engine is made on first use (see `engine`): a camera that is down costs its reconnect
        # attempts and nothing else, not a detector session per camera that never sends a frame.
        self._engine: Anonymizer | None = None
        self._engine_lock = threading.Lock()
        self._detector = detector
        self._detect_phase = (position % max(1, cameras)) / max(1, cameras)
        self.budget_ms = cfg.budget_for(cam)
        self.controller = LatencyController(
            budget_ms=self.budget_ms,
            detect_every=self.engine_cfg.detect_every,
            input_width=self.engine_cfg.detector.input_width,
            max_input_width=self.engine_cfg.detector.input_width,
            base_detect_every=self.engine_cfg.detect_every,
        )
        self.floor: PrivacyFloor | None = None  # known once the camera's frame size is
        self._floor_side = 0
        self._shedder = FrameShedder()
        self._run_ms = 25.0  # recent detector run time (EMA), reserved when frames wait for the next run
        # The last runs, for the cadence plan: a median, so that one run stretched by a busy CPU does
        # not cut the frames that may wait (a lower cadence costs CPU the camera then lacks even more).
        self._runs: deque[float] = deque(maxlen=25)
        self._hold_checked = 0.0
        self.latency = LatencyStats()
        make_source = source_factory if source_factory is not None else self._camera_source
        self.source = make_source(self._on_frame, self._on_state)
        self.metrics.count_reconnects_of(lambda: self.source.reconnects)  # one count: API and Prometheus
        self._mailbox: queue.Queue[DecodedFrame] = queue.Queue(maxsize=MAILBOX_FRAMES)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._encoder: VideoEncoder | None = None
        self._encoder_size: tuple[int, int] | None = None
        self._encoder_since = -math.inf  # when the encoder was made for a camera frame
        self._encode_ms = 5.0  # recent encode time per frame, reserved when deciding whether a frame is late
        self._encode_queue: queue.Queue[_ToEncode | None] = queue.Queue(maxsize=ENCODE_QUEUE_FRAMES)
        # How busy each thread is: its busy spells over the last BUSY_WINDOW_S (end time, seconds).
        self._busy_worker = _BusyMeter()
        self._busy_encoder = _BusyMeter()
        self._encode_thread: threading.Thread | None = None
        self._fps = 25.0  # until the camera's timestamps tell (encoder GOP, slate timing)
        self._last_pts_s: float | None = None
        self._pts_gaps: deque[float] = deque(maxlen=25)
        self._last_live = 0.0
        self._slate_burst_until = 0.0  # viewer_joined: the slate at SLATE_BURST_FPS until then
        self.state = "connecting"
        self.faces_now = 0
        self.tracks_now = 0
        self._started = False

    def _camera_source(self, on_frame: OnFrame, on_state: OnState) -> FrameSource:
        """The default source: the camera itself (RTSP, reconnecting and decoding on its own thread)."""
        cam, cfg = self.cam, self.cfg
        return CameraSource(
            cam.name, cam.url, cfg.transport_for(cam), cfg.ingest, on_frame=on_frame, on_state=on_state
        )

    @property
    def engine(self) -> Anonymizer:
        """The camera's engine, made on first use: by the worker for the camera's first frame, so a
        camera that never delivers never loads its detector (an onnxruntime session, ~50 MB).
        Status reads look at `_engine` and never make it."""
        eng = self._engine
        if eng is None:
            with self._engine_lock:  # the worker, or a caller on another thread (tests), not both
                eng = self._engine
                if eng is None:
                    eng = self._engine = self._new_engine()
        return eng

    def _new_engine(self) -> Anonymizer:
        """The one place the camera's Anonymizer is made."""
        detector = self._detector
        if isinstance(detector, PooledDetector):
            try:
                detector.pool.check()
            except Exception:
                # The engine tries to load the model itself and reports it missing (fail closed, named).
                detector = None
        return Anonymizer(
            self.engine_cfg,
            name=self.name,
            detector=detector,
            detect_phase=self._detect_phase,
            max_unmasked_frames=self.privacy.max_unmasked_frames,
            events=self.metrics,  # detector runs and fail-closed frames: counted by the engine
            change_gate=gate_settings(self.privacy),
        )

    # --- lifecycle ---
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._worker = threading.Thread(target=self._work, name=f"pipeline-{self.name}", daemon=True)
        self._encode_thread = threading.Thread(
            target=self._encode_loop, name=f"encode-{self.name}", daemon=True
        )
        self._encode_thread.start()
        self._worker.start()
        self.source.start()

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.source.stop()
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        if self._encode_thread is not None:
            self._put_encode(None, block=True)
            self._encode_thread.join(timeout=5)
        if self._encoder is not None:
            self._encoder.close()
        if self.sub is not None:
            self.sub.close()
        self.state = "stopped"

    # --- ingest thread ---
    def _on_frame(self, df: DecodedFrame) -> None:
        self.metrics.frame_in(df.decoded_at)
        # The camera's rate from every frame it sent, before any is shed (shedding must not make
        # the camera look slower, or the controller would plan with a longer frame interval).
        self._track_fps(df)
        if not self._shedder.keep(self.controller.keep_ratio):
            # Overload at the privacy floor: whole frames are shed, evenly, before any work.
            self._count_drop("overload")
            return
        try:
            self._mailbox.put_nowait(df)
        except queue.Full:
            # The worker is behind by a whole mailbox: the oldest frame goes, the newest stays.
            try:
                self._mailbox.get_nowait()
                self._count_drop("queue_full")
                self.controller.dropped(time.monotonic())
            except queue.Empty:
                pass
            try:
                self._mailbox.put_nowait(df)
            except queue.Full:
                self._count_drop("queue_full")

    def _on_state(self, name: str, state: str) -> None:
        prev, self.state = self.state, state
        if prev != state:
            log.info("%s: camera %s -> %s", self.name, prev, state)
        self.metrics.set_state(_METRIC_STATE.get(state, "offline"))
        if state == "live" and prev != "live":
            # A new session: the camera may have come back at another frame rate (other settings),
            # so its rate is measured afresh and the encoder may follow it at once.
            self._pts_gaps.clear()
            self._last_pts_s = None
            self._encoder_since = -math.inf

    # --- worker thread ---
    def _count_drop(self, reason: DropReason) -> None:
        self.metrics.drop(reason)

    def viewer_joined(self) -> None:
        """A viewer (RTSP, WebRTC, a publisher) subscribed to one of the camera's streams: while the
        camera is down, the slate comes at SLATE_BURST_FPS for SLATE_BURST_S. A client that probes the
        stream before it plays (FFmpeg's defaults read ~30 frames first) then starts in about a second
        instead of ~15 at the slate's own 2 fps. Any thread: one float written."""
        self._slate_burst_until = time.monotonic() + SLATE_BURST_S

    def _work(self) -> None:
        slate_period = 1.0 / self.cfg.slate.fps
        burst_period = min(slate_period, 1.0 / SLATE_BURST_FPS)
        last_slate = -math.inf
        # The slate starts one second after start-up if the camera has not delivered by then, not
        # at once: an encoder for a slate size that the camera's first frame would replace is waste.
        self._last_live = time.monotonic()
        while not self._stop.is_set():
            bursting = time.monotonic() < self._slate_burst_until
            period = burst_period if bursting else slate_period
            timeout = min(0.1, period)
            deadline = self._hold_deadline()
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            try:
                df = self._mailbox.get(timeout=timeout)
            except queue.Empty:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    # The next frame is late (or the camera stopped): the detector runs now, on the
                    # newest waiting frame, so that the oldest still leaves inside the budget.
                    self._guarded(self._flush_held, now)
                    continue
                # No frames for a while (camera down, stalled, or never seen): keep viewers attached.
                if now - self._last_live > max(1.0, 3 / self._fps) and now - last_slate >= period:
                    last_slate = now
                    self._publish_slate(now)
                continue
            self._guarded(self._process, df)
        # Shutdown: frames still waiting are not sent (viewers are leaving); nothing leaves raw.

    def _guarded(self, step: Callable[[Any], None], arg: Any) -> None:
        try:
            step(arg)
        except Exception:
            # Nothing may crash the camera's worker; the frame is lost (never sent raw).
            log.exception("%s: frame processing failed; frame dropped", self.name)
            self._count_drop("worker")  # its own reason: not the encoder, so the failure is looked for here

    def _flush_held(self, now: float) -> None:
        oldest = self.engine.oldest_held_at
        if oldest is not None:
            self._set_deadline(oldest)
        self._release(self.engine.flush_pending(), now)

    def _set_deadline(self, newest: float) -> None:
        """Tell a shared detector (engine/pool.py) when this camera's next run must be done: when the
        oldest frame that waits for it must go to the encoder."""
        det = self._detector
        if isinstance(det, PooledDetector):
            eng = self._engine
            held = eng.oldest_held_at if eng is not None else None
            oldest = newest if held is None else min(held, newest)
            det.deadline = self._last_start(oldest, detector_ahead=False)

    # --- the latency budget: decided here, and only here ---
    def _last_start(self, decoded_at: float, *, detector_ahead: bool) -> float:
        """The last moment (time.monotonic()) at which the work still ahead of a frame may start for
        the frame to leave inside the budget. Reserved for that work: its encode (`_encode_ms`, the
        recent mean; the encoder has its own thread, so only the frame's own encode) and, while the
        frame's detector run is still to come, one run (`_run_ms`, the recent mean)."""
        ahead_ms = self._encode_ms + (self._run_ms if detector_ahead else 0.0)
        return decoded_at + (self.budget_ms - ahead_ms) / 1000

    def _late(self, decoded_at: float, now: float, *, detector_ahead: bool = False) -> bool:
        """Whether a frame would leave after the budget if its remaining work started `now`: the one
        test behind every `latency_budget` drop (before the worker's work, after it, before the encode)."""
        return now > self._last_start(decoded_at, detector_ahead=detector_ahead)

    def _hold_deadline(self) -> float | None:
        """When the oldest waiting frame must go to the detector to leave inside the budget."""
        eng = self._engine  # none yet: nothing waits (and the idle worker does not make one)
        oldest = eng.oldest_held_at if eng is not None else None
        if oldest is None:
            return None
        # The oldest frame is encoded first, as soon as the run is done (the encoder has its own thread).
        return self._last_start(oldest, detector_ahead=True) - HOLD_SLACK_SHARE * self.budget_ms / 1000

    def _process(self, df: DecodedFrame) -> None:
        self._last_live = time.monotonic()
        frame = df.frame
        self._check_floor(frame.width, frame.height)
        # A frame that is already too old to make the budget is dropped, not rushed out unmasked;
        # and dropped before any work is spent on it when a detector run and an encode would make it
        # late: under overload, work on frames that end up dropped anyway is what starves the others.
        started = time.monotonic()
        if self._late(df.decoded_at, started, detector_ahead=True):
            self._count_drop("latency_budget")
            self.controller.dropped(started)
            # The estimate is only refreshed by runs: let it decay, so that one slow run (or a
            # detector slower than the budget) cannot make every later frame look hopeless forever.
            self._run_ms *= 0.9
            return
        # The camera's first frame makes the engine (`engine`): its detector loads now, not at start.
        self.engine.configure(self.controller.detect_every, self.controller.input_width)
        self._set_deadline(df.decoded_at)
        t = df.pts_seconds if df.pts_seconds is not None else df.decoded_at
        self._release(self.engine.push_pending(frame, t, decoded_at=df.decoded_at), started)

    def _release(self, results: list[PendingFrame], started: float) -> None:
        """Count the frames the engine let out and queue them (in order) for the encoder; adapt."""
        oldest_ms = 0.0
        for res in results:
            self._account(res)
            now = time.monotonic()
            # What the controller watches: the latency this frame will have once encoded.
            oldest_ms = max(oldest_ms, (now - res.decoded_at) * 1000 + self._encode_ms)
            if self._late(res.decoded_at, now):
                # Detection was too slow for this frame: it is anonymized but would leave late
                # (encoding still to come); late frames are dropped.
                self._count_drop("latency_budget")
                continue
            if not self._put_encode(_ToEncode(res, res.decoded_at)):
                self._count_drop("queue_full")
                self.controller.dropped(time.monotonic())
        done = time.monotonic()
        work_ms = (done - started) * 1000
        self._busy_worker.add(done, done - started)
        if results:
            # The busier of the two threads sets the pace (its share of the wall clock).
            self._adapt(
                oldest_ms, work_ms, max(self._busy_worker.share(done), self._busy_encoder.share(done))
            )

    def _account(self, res: PendingFrame) -> None:
        if res.detector_ran and not res.fail_closed:
            self._run_ms = 0.8 * self._run_ms + 0.2 * res.detector_ms
            self._runs.append(res.detector_ms)
            self.faces_now = res.faces
        self.tracks_now = len(res.masks)
        # Detector runs and fail-closed frames are not counted here: the engine counted them as
        # they happened (EngineStats, which tells the metrics).
        m = self.metrics
        if res.detector_ran:
            m.faces_masked.set(len(res.masks))
        m.tracks_active.set(len(res.masks))
        m.detector_cadence.set(self.controller.detect_every)
        m.detector_input_width.set(self.controller.input_width)

    def _check_floor(self, width: int, height: int) -> None:
        """The privacy floor for this frame size; the frames waiting for a run within the budget."""
        side = max(width, height)
        now = time.monotonic()
        if side == self._floor_side and now - self._hold_checked < 1.0:
            return
        self._hold_checked = now
        floor = privacy_floor(self.privacy, self.engine_cfg.detector.model, side)
        runs = sorted(self._runs)
        typical_run = runs[len(runs) // 2] if runs else self._run_ms
        hold = hold_frames_allowed(self.budget_ms, 1000.0 / self._fps, typical_run, self._encode_ms)
        max_every = floor.max_detect_every(hold)
        if side != self._floor_side:
            self._floor_side = side
            self.floor = floor
            configured = self.engine_cfg.detector.input_width
            if configured < floor.min_input_width:
                log.warning(
                    "%s: detector.input_width %d is below the privacy floor for %dx%d frames "
                    "(faces >= %g px need >= %d); using %d",
                    self.name, configured, width, height, floor.min_face_px, floor.min_input_width,
                    floor.min_input_width,
                )  # fmt: skip
            log.info(
                "%s: privacy floor: detector input >= %d px (faces >= %g px), detector gap <= %d frame(s)",
                self.name, floor.min_input_width, floor.min_face_px, max_every,
            )  # fmt: skip
        self.controller.set_floor(floor.min_input_width, max_every)
        self.metrics.floor_width.set(floor.min_input_width)

    def _track_fps(self, df: DecodedFrame) -> None:
        """The camera's frame rate from its own timestamps (arrival times burst after a connect);
        until five intervals are in, the rate its stream declares (SPS timing), when it does."""
        if len(self._pts_gaps) < 5 and self.source.frame_rate is not None:
            self._fps = self.source.frame_rate
        if df.pts_seconds is None:
            return
        if self._last_pts_s is not None:
            gap = df.pts_seconds - self._last_pts_s
            if 1 / 120 < gap < 2.0:
                self._pts_gaps.append(gap)
                if len(self._pts_gaps) >= 5:
                    self._fps = 1.0 / sorted(self._pts_gaps)[len(self._pts_gaps) // 2]
        self._last_pts_s = df.pts_seconds

    def _adapt(self, ms: float, frame_work_ms: float, busy_share: float) -> None:
        c = self.controller
        was_overloaded = c.overloaded
        # While frames are shed, frames come 1/keep_ratio camera intervals apart: that is the time
        # one push may take before the next one waits (busy_share is already of the wall clock).
        interval_ms = 1000.0 / self._fps / max(c.keep_ratio, 0.05)
        if not c.observe(ms, time.monotonic(), busy_share * interval_ms, interval_ms, frame_work_ms):
            return
        if c.overloaded:
            log.warning(
                "%s: overloaded at the privacy floor: shedding frames, keeping %.0f%% (about %.1f of %.1f fps); "
                "detect every %d frame(s) at width %d (%s)",
                self.name, c.keep_ratio * 100, c.keep_ratio * self._fps, self._fps, c.detect_every, c.input_width,
                c.last_reason,
            )  # fmt: skip
        else:
            if was_overloaded:
                log.warning("%s: no longer overloaded: every frame kept", self.name)
            log.info(
                "%s: latency controller: detect every %d frame(s) at width %d (%s)",
                self.name, c.detect_every, c.input_width, c.last_reason,
            )  # fmt: skip
        self.metrics.overloaded.set(1 if c.overloaded else 0)

    # --- encoder thread ---
    def _put_encode(self, item: _ToEncode | None, block: bool = False) -> bool:
        try:
            self._encode_queue.put(item, block=block, timeout=2 if block else None)
        except queue.Full:
            return False
        return True

    def _encode_loop(self) -> None:
        while True:
            item = self._encode_queue.get()
            if item is None:
                return
            try:
                if item.slate_frame is not None:
                    self._encode_slate(item.slate_frame, item.decoded_at)
                    continue
                assert item.pending is not None
                if self._late(item.decoded_at, time.monotonic()):
                    self._count_drop("latency_budget")  # waited too long for the encoder
                    continue
                t0 = time.monotonic()
                res = item.pending.render()  # copy + obfuscate: the only way to the pixels
                if res.frame is None:
                    self._count_drop("fail_closed")  # fail_closed.action: drop
                    continue
                self._latest = (res.frame, item.decoded_at)
                self._encode_main(res.frame, item.decoded_at)
                # After the main stream's packets are on their way: the sub stream never delays them.
                self._encode_sub(res.frame, item.decoded_at)
                done = time.monotonic()
                self._busy_encoder.add(done, done - t0)
            except Exception:
                # Nothing may crash the camera's encoder; the frame is lost (never sent raw).
                log.exception("%s: encoding failed; frame dropped", self.name)
                if item.slate_frame is None:  # a slate is not a camera frame: frames in = out + dropped
                    self._count_drop("encoder")

    def _ensure_encoder(self, width: int, height: int, camera: bool = True) -> VideoEncoder:
        """The encoder for this frame size at the camera's frame rate (its GOP is gop_seconds x fps).

        The first encoder is made before the camera's rate is measured (for the slate, or for the
        first frames, out before five frame intervals are in): a camera frame finds it at the wrong
        rate (more than RATE_TOLERANCE off) and gets a new one at once; after that at most once per
        RATE_RECHECK_S, so a camera with a jittery rate does not keep restarting the stream (each
        new encoder starts with a keyframe).
        """
        fps, enc, now = self._fps, self._encoder, time.monotonic()
        measured = len(self._pts_gaps) >= 5
        wrong_rate = (
            camera
            and measured
            and enc is not None
            and abs(enc.fps - fps) > RATE_TOLERANCE * fps
            and now - self._encoder_since >= RATE_RECHECK_S
        )
        if enc is None or self._encoder_size != (width, height) or wrong_rate:
            if enc is not None:
                if wrong_rate:
                    log.info("%s: camera runs at %.2f fps, not %.2f: new encoder", self.name, fps, enc.fps)
                else:
                    log.info(
                        "%s: resolution %s -> %s, new encoder", self.name, self._encoder_size, (width, height)
                    )
                enc.close()
            enc = self._encoder = self._make_encoder(self.cfg.encoder, width, height, fps, self.name)
            self._encoder_size = (width, height)
            # An encoder made before the camera's rate was measured (or for the slate) may be fixed
            # at once; one made at the measured rate only after RATE_RECHECK_S.
            self._encoder_since = now if camera and measured else -math.inf
        return enc

    def _encode_main(self, frame: av.VideoFrame, decoded_at: float) -> None:
        enc = self._ensure_encoder(frame.width, frame.height)
        t0, c0 = time.monotonic(), time.thread_time()
        self._out.send(enc, frame, decoded_at)
        self._encode_cpu_s += time.thread_time() - c0
        self._encode_ms = 0.9 * self._encode_ms + 0.1 * (time.monotonic() - t0) * 1000

    def _encode_sub(self, frame: av.VideoFrame, decoded_at: float, slate: bool = False) -> None:
        """The sub stream's share of this frame (every slate frame: a joining viewer sees it at once)."""
        sub, out = self.sub, self._sub_out
        if sub is None or out is None or not sub.due(self._fps, always=slate):
            return
        try:
            out.send(sub, frame, decoded_at, force_keyframe=slate)
        except Exception:
            # The main stream goes on; the sub stream's viewers miss this frame (never a raw one).
            log.exception("%s: sub stream encoding failed; frame skipped there", self.name)

    def latest_frame(self, max_age_s: float) -> av.VideoFrame | None:
        """The newest frame sent (anonymized, or the slate) if it is at most max_age_s old, else None.

        Only frames that were rendered (obfuscated) or the slate are ever held here: a snapshot can
        show nothing the stream did not."""
        latest = self._latest
        if latest is None or time.monotonic() - latest[1] > max_age_s:
            return None
        return latest[0]

    def _published(self, pkt: EncodedPacket, now: float) -> None:
        """On the event loop, a camera frame's packet just handed to viewers: where proxy-added
        latency ends (the slate, our own picture, is not measured)."""
        ms = (now - pkt.decoded_at) * 1000
        self.latency.add(ms)
        self.metrics.frame_out(ms / 1000, now)

    def _publish_slate(self, now: float) -> None:
        """From the worker: our own picture, no anonymization needed, through the encoder thread."""
        w, h = self._encoder_size or (self.cfg.slate.width, self.cfg.slate.height)
        self._put_encode(_ToEncode(None, now, slate_frame=make_slate(w, h, self.name)))

    def _encode_slate(self, slate: av.VideoFrame, now: float) -> None:
        enc = self._ensure_encoder(slate.width, slate.height, camera=False)
        # Every slate frame is a keyframe: a viewer joining during an outage sees it at once.
        self._out.send(enc, slate, now, force_keyframe=True, measured=False)
        self._latest = (slate, now)
        self._encode_sub(slate, now, slate=True)

    # --- state for the API ---
    def snapshot(self) -> PipelineStatus:
        """The pipeline now, read from the single counters (the camera's metrics, the engine's stats).
        While the camera is not live, the last session's picture (its rate, faces, latency, overload)
        is not reported as if current: those are None, and `reason` says why it is down."""
        c = self.controller
        floor = self.floor
        m = self.metrics
        eng = self._engine  # None until the camera's first frame: nothing counted yet
        now = time.monotonic()
        live = self.state == "live"
        # The source's last failure (CameraSource.last_error; a test's stand-in may have none).
        reason = None if live else not_live_reason(self.state, getattr(self.source, "last_error", None))
        return PipelineStatus(
            name=self.name,
            state=self.state,
            reason=reason,
            fps_in=round(m.in_rate.rate(now), 2),
            fps_out=round(m.out_rate.rate(now), 2),
            fps_camera=round(self._fps, 2) if live else None,
            frames_in=m.frames_in_total,
            frames_out=m.frames_out_total,
            dropped=m.drops(),
            fail_closed_frames=eng.stats.fail_closed_frames if eng is not None else 0,
            widened_frames=eng.stats.widened_frames if eng is not None else 0,
            faces=self.faces_now if live else None,
            tracks=self.tracks_now if live else None,
            latency_ms=LatencyStatus(
                _r(self.latency.percentile(0.5)) if live else None,
                _r(self.latency.percentile(0.99)) if live else None,
                self.budget_ms,
            ),
            overloaded=c.overloaded if live else None,
            keep_ratio=c.keep_ratio,
            detector=DetectorStatus(
                model=self.engine_cfg.detector.model,
                detect_every=c.detect_every,
                input_width=c.input_width,
                max_detect_every=c.max_detect_every,
                min_input_width=c.min_input_width,
                keep_ratio=c.keep_ratio,
                error=(eng.detector_error or None) if eng is not None else None,
            ),
            privacy_floor=None
            if floor is None
            else FloorStatus(
                min_face_px=floor.min_face_px,
                min_input_width=floor.min_input_width,
                max_unmasked_frames=floor.max_unmasked_frames,
                max_detect_every=c.max_detect_every,
            ),
            resolution=self._encoder_size,
            viewers=ViewerCounts(rtsp=self.hub.viewers("rtsp"), webrtc=self.hub.viewers("webrtc")),
            reconnects=m.reconnects_total,  # the source's count, as Prometheus reads it
            encode_cpu_s=round(self._encode_cpu_s, 3),
            sub_stream=self._sub_status(),
            loss=loss_status(self.source),
        )

    def _sub_status(self) -> SubStreamStatus | None:
        sub, hub = self.sub, self.sub_hub
        if sub is None or hub is None:
            return None
        return SubStreamStatus(
            path=hub.name,
            resolution=sub.size,
            fps=sub.cfg.fps,
            frames_out=sub.frames_out,
            viewers=hub.viewers(),
            encode_cpu_s=round(sub.cpu_s, 3),
        )


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


BUSY_WINDOW_S = 2.0


class _BusyMeter:
    """The share of the last BUSY_WINDOW_S one thread spent working (0..1)."""

    def __init__(self) -> None:
        self._spells: deque[tuple[float, float]] = deque(maxlen=1000)

    def add(self, end: float, seconds: float) -> None:
        """From the thread that did the work; spells older than the window go here, once."""
        self._spells.append((end, seconds))
        while self._spells and self._spells[0][0] < end - BUSY_WINDOW_S:
            self._spells.popleft()

    def share(self, now: float) -> float:
        since = now - BUSY_WINDOW_S
        spells = tuple(self._spells)  # the other thread appends
        return min(1.0, sum(d for end, d in spells if end > since) / BUSY_WINDOW_S)
