"""The web side under test without a camera: a hub fed by the project's H.264 encoder with synthetic
frames, the real HTTP server around stand-ins for the app and its cameras, and an aiortc WHEP client.

* `make_cfg(users=None, cameras=("cam1",), files=None)`: a loopback config (ICE on 127.0.0.1 only).
* `serving(cfg)`: async context manager -> (FakeApp, WebServer, base URL), hubs fed at FPS; the
  cameras that are ONVIF devices of their own listen too (`app.devices.ports`), as App starts them.
* `files_serving(tmp_path, model_dir, users)`: async context manager -> (WebServer, FileJobs, base URL):
  the real HTTP server with the real Files jobs (root "cctv" = tmp_path/in, data in tmp_path/data).
* `WhepClient`: a real aiortc viewer; `wait_for(cond, timeout)`: poll a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from streamproxy.config import AppConfig, EncoderConfig, parse_config
from streamproxy.files.manager import FileJobs
from streamproxy.hub import StreamHub
from streamproxy.live.encode import H264Encoder
from streamproxy.serve.http.server import WebServer
from streamproxy.serve.onvif.device import CameraDevices
from streamproxy.serve.webrtc import gather_hosts
from streamproxy.status import (
    DetectorStatus,
    DropCounts,
    LatencyStatus,
    LossStatus,
    PipelineStatus,
    PublisherStatus,
    Reason,
    ViewerCounts,
)

WIDTH, HEIGHT, FPS = 320, 240, 25


def make_cfg(
    users: list[dict[str, Any]] | None = None,
    cameras: tuple[str, ...] = ("cam1",),
    files: dict[str, Any] | None = None,
) -> AppConfig:
    raw: dict[str, Any] = {
        "cameras": [{"name": n, "url": f"rtsp://127.0.0.1:1/{n}"} for n in cameras],
        "server": {
            "host": "127.0.0.1",
            "ice_hosts": ["127.0.0.1"],
            "users": users or [],
        },
    }
    if files is not None:
        raw["files"] = files
    return parse_config(raw)


class FakeCamera:
    """Stands in for camera.Camera (a status.CameraView) and its pipeline: what the serving side reads,
    and what a test sets to change it (`state`, `reason`, `faces`, `latency`, `loss`, `latest`)."""

    def __init__(self, hub: StreamHub, sub_hub: StreamHub | None = None) -> None:
        self.hub = hub
        self.sub_hub = sub_hub
        self.name = hub.name
        self.state = "live"
        self.reason: Reason | None = None  # why it is not live, when a test takes it down
        # What the live picture shows (None while down, as CameraPipeline.snapshot reports it).
        self.faces, self.latency, self.overloaded = 0, (10.0, 20.0), False
        self.loss: LossStatus | None = None  # what the camera's RTP lost (None: a source that does not count)
        self.latest: av.VideoFrame | None = synthetic_frame(0)  # what a snapshot shows (None: nothing yet)

    def latest_frame(self, max_age_s: float) -> av.VideoFrame | None:
        return self.latest

    def publisher_status(self) -> PublisherStatus | None:
        return None  # no publish_url

    def snapshot(self) -> PipelineStatus:
        live = self.state == "live"
        return PipelineStatus(
            name=self.name,
            state=self.state,
            reason=None if live else self.reason,
            fps_in=25.0 if live else 0.0,
            fps_out=25.0 if live else 0.0,
            fps_camera=25.0 if live else None,
            frames_in=0,
            frames_out=0,
            dropped=DropCounts(),
            fail_closed_frames=0,
            widened_frames=0,
            faces=self.faces if live else None,
            tracks=self.faces if live else None,
            latency_ms=LatencyStatus(*self.latency, 150.0) if live else LatencyStatus(None, None, 150.0),
            overloaded=self.overloaded if live else None,
            keep_ratio=1.0,
            detector=DetectorStatus("yunet", 1, 1280, 3, 1280, 1.0, None),
            privacy_floor=None,
            resolution=(WIDTH, HEIGHT),
            viewers=ViewerCounts(rtsp=self.hub.viewers("rtsp"), webrtc=self.hub.viewers("webrtc")),
            reconnects=0,
            loss=self.loss,
        )


class FakeApp:
    """The service as serve/ reads it (serve/http/server.py's `Service`, so ONVIF's `OnvifHost` too),
    over fake cameras; `hubs`, `sub_hubs` and `pipelines` are the tests' handles, named as App's."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        # Sub streams as the App makes them: a hub "<camera>/sub" for each camera that has one.
        self.cameras: dict[str, FakeCamera] = {
            c.name: FakeCamera(
                StreamHub(c.name, cfg.server.viewer_buffer_packets),
                StreamHub(f"{c.name}/sub", cfg.server.viewer_buffer_packets)
                if cfg.sub_stream_for(c) is not None
                else None,
            )
            for c in cfg.cameras
        }
        self.ready = True
        self.rtsp_port: int | None = None  # no RTSP server: ONVIF answers the configured port
        self.devices = CameraDevices(self)

    @property
    def hubs(self) -> dict[str, StreamHub]:
        return {n: c.hub for n, c in self.cameras.items()}

    @property
    def sub_hubs(self) -> dict[str, StreamHub]:
        return {n: c.sub_hub for n, c in self.cameras.items() if c.sub_hub is not None}

    @property
    def pipelines(self) -> Mapping[str, FakeCamera]:
        return self.cameras  # the fake camera is its pipeline too


def synthetic_frame(i: int) -> av.VideoFrame:
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None] * 200 + 20
    x = np.zeros((1, WIDTH), np.float32)
    img = np.repeat((y + x).astype(np.uint8)[:, :, None], 3, axis=2)
    col = (i * 8) % (WIDTH - 40)
    img[100:140, col : col + 40] = (0, 0, 255)  # a moving red block: every frame differs
    return av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)


async def feed_hub(hub: StreamHub, stop: asyncio.Event, fps: float = FPS, scale: int = 1) -> None:
    """A live camera's encode loop in miniature: honours the hub's keyframe requests (`scale` 2: a
    sub stream at half the size)."""
    w, h = WIDTH // scale, HEIGHT // scale
    enc = H264Encoder(EncoderConfig(bitrate_kbps=500), w, h, fps, name=hub.name)
    frames = [synthetic_frame(i).reformat(width=w, height=h, threads=1) for i in range(50)]
    i = 0
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            packets = await asyncio.to_thread(
                enc.encode, frames[i % len(frames)], now, hub.take_keyframe_request()
            )
            if hub.codec is None and enc.codec_info is not None:
                hub.set_codec(enc.codec_info)
            for p in packets:
                hub.publish(p)
            i += 1
            delay = t0 + i / fps - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))
    finally:
        enc.close()


@contextlib.asynccontextmanager
async def serving(cfg: AppConfig, feed: bool = True) -> AsyncIterator[tuple[FakeApp, WebServer, str]]:
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"http_port": 0})})
    app = FakeApp(cfg)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(feed_hub(h, stop)) for h in app.hubs.values()] if feed else []
    tasks += (
        [asyncio.create_task(feed_hub(h, stop, 10, scale=2)) for h in app.sub_hubs.values()] if feed else []
    )
    server = WebServer(app)
    await server.start()
    for camera in app.devices.services:  # cameras that are ONVIF devices of their own, as App starts them
        await app.devices.start(camera, server)
    try:
        yield app, server, f"http://127.0.0.1:{server.port}"
    finally:
        await app.devices.stop()
        await server.stop()
        stop.set()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def files_serving(
    tmp_path: Path, model_dir: Path, users: list[dict[str, Any]]
) -> AsyncIterator[tuple[WebServer, FileJobs, str]]:
    """The HTTP server with the Files jobs behind it: `users` (the config's entries, e.g. with
    `"originals": True`), the root "cctv" = tmp_path/in, the jobs' data in tmp_path/data."""
    cfg = make_cfg(users, files={"roots": {"cctv": str(tmp_path / "in")}})
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"http_port": 0})})
    jobs = FileJobs(cfg.files, tmp_path / "data", model_dir, users=cfg.server.users)
    await jobs.start()
    server = WebServer(FakeApp(cfg), files=jobs)
    await server.start()
    try:
        yield server, jobs, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()
        await jobs.stop()


class WhepClient:
    """A WHEP viewer built on aiortc (recvonly, non-trickle)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.frames: list[av.VideoFrame] = []
        self.location: str | None = None
        self._track_ready = asyncio.Event()
        self._track: Any = None

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            self._track = track
            self._track_ready.set()

    async def offer(self) -> str:
        with gather_hosts(["127.0.0.1"]):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def connect(self, session: aiohttp.ClientSession, url: str, **kw: Any) -> aiohttp.ClientResponse:
        sdp = await self.offer()
        headers = {"Content-Type": "application/sdp", **kw.pop("headers", {})}
        resp = await session.post(url, data=sdp, headers=headers, **kw)
        if resp.status == 201:
            self.location = resp.headers["Location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=await resp.text(), type="answer"))
        return resp

    async def receive(self, count: int, timeout: float) -> list[av.VideoFrame]:
        deadline = time.monotonic() + timeout
        await asyncio.wait_for(self._track_ready.wait(), timeout)
        while len(self.frames) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                frame = await asyncio.wait_for(self._track.recv(), left)
            except (TimeoutError, MediaStreamError):
                break
            self.frames.append(frame)
        return self.frames

    async def close(self) -> None:
        await self.pc.close()


async def wait_for(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.05)
    return bool(cond())
