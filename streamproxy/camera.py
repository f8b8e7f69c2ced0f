"""One camera (MediaMTX's "path"): its hub, its sub stream's hub, its metrics, its pipeline and, with
a `publish_url`, its publisher, wired together here and nowhere else.

`App` makes one per camera it serves and reaches a camera's parts only through it. The serving side
(HTTP, WebRTC, ONVIF) reads it as a `view.CameraView`: it may not import this room, which composes
the live path and the publisher (ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import functools

import av

from streamproxy.config import AppConfig, CameraConfig
from streamproxy.engine.detect import FaceDetector
from streamproxy.hub import StreamHub
from streamproxy.live.pipeline import CameraPipeline
from streamproxy.metrics import CameraMetrics, OutProtocol
from streamproxy.serve.publish import Publisher
from streamproxy.status import PipelineStatus, PublisherStatus


class Camera:
    """One camera's parts, built by `create`; `start`, then `stop_publishing`, `stop_pipeline`, `close`."""

    def __init__(self, cam: CameraConfig, cfg: AppConfig) -> None:
        self.cfg = cam
        self.name = cam.name
        server = cfg.server
        self.hub = StreamHub(cam.name, server.viewer_buffer_packets, server.limits.keyframe_min_interval_s)
        self.sub_hub = (
            StreamHub(f"{cam.name}/sub", server.viewer_buffer_packets, server.limits.keyframe_min_interval_s)
            if cfg.sub_stream_for(cam) is not None
            else None
        )
        self.metrics = CameraMetrics(cam.name)
        # The camera's viewers are those of both its streams; bytes and slow-viewer drops likewise.
        for h in self.hubs():
            h.on_viewers_changed = self._viewers_changed
            h.on_sent = self.metrics.sent
            h.on_slow_viewer_drop = self._slow_viewer_drop
        self.publisher = (
            Publisher(
                self.hub,
                cam.publish_url,
                backoff_initial_s=cfg.ingest.backoff_initial_s,
                backoff_max_s=cfg.ingest.backoff_max_s,
                metrics=self.metrics,
            )
            if cam.publish_url is not None
            else None
        )
        self._pipeline: CameraPipeline | None = None
        self._viewers_seen: dict[str, int] = {}  # per hub, at its last change

    @classmethod
    async def create(
        cls, cam: CameraConfig, cfg: AppConfig, *, cameras: int, position: int, detector: FaceDetector | None
    ) -> Camera:
        """The camera with its pipeline, built off the loop (the pipeline checks the config there; the
        detector session loads on the camera's first frame). `cameras`/`position`: how many the
        process serves and this one's place among them (the pipeline spreads its work by them)."""
        camera = cls(cam, cfg)
        try:
            camera._pipeline = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(
                    CameraPipeline, cam, cfg, camera.hub, asyncio.get_running_loop(), camera.metrics, cameras,
                    position, sub_hub=camera.sub_hub, detector=detector,
                ),
            )  # fmt: skip
        except BaseException:
            camera.close()
            raise
        return camera

    @property
    def pipeline(self) -> CameraPipeline:
        assert self._pipeline is not None, "Camera.create builds the pipeline"
        return self._pipeline

    def hubs(self) -> tuple[StreamHub, ...]:
        """Its hubs: the main stream's, then the sub stream's if it has one."""
        return (self.hub,) if self.sub_hub is None else (self.hub, self.sub_hub)

    def _viewers_changed(self, hub: StreamHub) -> None:
        sub_rtsp = self.sub_hub.viewers("rtsp") if self.sub_hub is not None else 0
        self.metrics.set_viewers(self.hub.viewers("rtsp") + sub_rtsp, self.hub.viewers("webrtc"))
        # A viewer came (not left): while the camera is down, the slate comes fast for a moment so
        # that a probing client starts at once (CameraPipeline.viewer_joined).
        now = hub.viewers()
        if now > self._viewers_seen.get(hub.name, 0) and self._pipeline is not None:
            self._pipeline.viewer_joined()
        self._viewers_seen[hub.name] = now

    def _slow_viewer_drop(self, _protocol: OutProtocol, n: int) -> None:
        self.metrics.drop("slow_viewer", n)

    # --- what the serving side reads (status.CameraView) ---
    def snapshot(self) -> PipelineStatus:
        return self.pipeline.snapshot()

    def publisher_status(self) -> PublisherStatus | None:
        return self.publisher.snapshot() if self.publisher is not None else None

    def latest_frame(self, max_age_s: float) -> av.VideoFrame | None:
        return self.pipeline.latest_frame(max_age_s)

    # --- lifecycle ---
    def start(self) -> None:
        """Ingest, anonymize, encode; and the push to the publish_url server, if any."""
        self.pipeline.start()
        if self.publisher is not None:
            self.publisher.start()

    async def stop_publishing(self, timeout: float = 5.0) -> None:
        """The push ends first, while the stream still flows: its server gets a TEARDOWN (bounded)."""
        if self.publisher is not None:
            await self.publisher.stop(timeout=timeout)

    def stop_pipeline(self) -> None:
        """Blocking (joins the camera's threads): run it off the loop."""
        if self._pipeline is not None:
            self._pipeline.stop()

    def close(self) -> None:
        """Its hubs end their viewers' subscriptions; last, once nothing feeds them."""
        for h in self.hubs():
            h.close()
