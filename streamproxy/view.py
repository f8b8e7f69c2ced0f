"""How the serving side (HTTP, WebRTC, ONVIF) reads one running camera: the `CameraView` protocol.

`camera.Camera` satisfies it; it lives at the ground floor so that serve/ need not climb to the room
that composes the pipeline and the publisher (ARCHITECTURE.md), and so that test doubles satisfy it
without either. What it hands out is the status read-model (status.py) and the camera's hubs.
"""

from __future__ import annotations

from typing import Protocol

import av

from streamproxy.hub import StreamHub
from streamproxy.status import PipelineStatus, PublisherStatus


class CameraView(Protocol):
    """One running camera as the serving side reads it (`camera.Camera` is one; tests pass doubles).
    Read-only members, so that a plain attribute satisfies them as well as a property."""

    @property
    def name(self) -> str: ...

    @property
    def hub(self) -> StreamHub:
        """The main stream's hub (RTSP `<camera>`, WHEP)."""

    @property
    def sub_hub(self) -> StreamHub | None:
        """The sub stream's hub (RTSP `<camera>/sub`), None when the camera has none."""

    def snapshot(self) -> PipelineStatus:
        """The pipeline's status now (may raise: the API then reports the camera as unknown)."""

    def publisher_status(self) -> PublisherStatus | None:
        """The push to its publish_url server, None when it has none."""

    def latest_frame(self, max_age_s: float) -> av.VideoFrame | None:
        """The newest frame that left for the encoder (anonymized, or the slate), if not older than
        `max_age_s`; never a raw one."""
