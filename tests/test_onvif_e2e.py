"""ONVIF end to end, as a VMS adds the proxy: a real camera (gst-rtsp-server showing faces) → the whole
service with ONVIF and WS-Discovery on → a real ONVIF client (onvif-zeep-async) that finds the device by
a unicast WS-Discovery probe, reads capabilities, profiles, stream and snapshot URIs, and then plays
every URI it was given with PyAV and ffprobe. The face judge (YuNet) finds the camera's faces in the
camera's own stream and none in anything the proxy hands out.

Loopback only: the discovery socket binds 127.0.0.1 (`onvif.discovery.bind`), Hello/Bye are off, the
probe is sent to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import av
import cv2
import numpy as np
import pytest
from livekit import VISIBLE, H, LiveHost, W, camera_and_host, make_config

from streamproxy.config import AppConfig, OnvifConfig
from streamproxy.engine.detect import OnnxFaceDetector
from streamproxy_sim.camsim import SimCamera

onvif = pytest.importorskip("onvif")
pytest.importorskip("wsdiscovery")
from wsdiscovery.actions import constructProbe  # noqa: E402
from wsdiscovery.message import createSOAPMessage, parseSOAPMessage  # noqa: E402
from zeep.exceptions import Fault  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

WSDL_DIR = os.path.join(os.path.dirname(onvif.__file__), "wsdl")
USER, PASSWORD = "vms", "0nvif-pass"
SUB_W, SUB_FPS = 320, 5


def onvif_config(url: str, model_dir: Path) -> AppConfig:
    # The camera is also a device of its own (onvif_port 0: any free port), as for a single-channel VMS.
    cfg = make_config(url, model_dir, [{"username": USER, "password": PASSWORD}],
                      sub_stream={"width": SUB_W, "fps": SUB_FPS}, onvif_port=0)  # fmt: skip
    discovery = {"port": 0, "bind": "127.0.0.1", "interface": "127.0.0.1", "multicast_ttl": 0, "hello": False}
    return cfg.model_copy(
        update={"onvif": OnvifConfig.model_validate({"enabled": True, "discovery": discovery})}
    )


@pytest.fixture(scope="module")
def onvif_host(model_dir: Path) -> Iterator[tuple[SimCamera, LiveHost]]:
    with camera_and_host(lambda url: onvif_config(url, model_dir)) as pair:
        yield pair


def _probe(port: int, timeout_s: float = 10.0) -> list[str]:
    """A unicast WS-Discovery Probe (any type, any scope) to 127.0.0.1: the XAddrs of the answer."""
    env = constructProbe([], [])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout_s)  # the answer waits a random 0-500 ms (WS-Discovery's APP_MAX_DELAY)
        s.sendto(createSOAPMessage(env).encode(), ("127.0.0.1", port))
        data, _ = s.recvfrom(65536)
    answer = parseSOAPMessage(data.decode(), "127.0.0.1")
    assert answer.getRelatesTo() == env.getMessageId()
    return [x for m in answer.getProbeResolveMatches() for x in m.getXAddrs()]


def _with_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    netloc = f"{quote(USER)}:{quote(PASSWORD)}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _play(url: str, frames: int, max_s: float = 40) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    t0 = time.monotonic()
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(5, 5)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="bgr24", threads=1))
            if len(out) >= frames or time.monotonic() - t0 > max_s:
                break
    return out


def _faces(judge: OnnxFaceDetector, img: np.ndarray) -> int:
    return sum(1 for d in judge.detect_bgr(img) if d.score >= VISIBLE)


async def test_a_vms_discovers_adds_and_plays_every_profile(
    onvif_host: tuple[SimCamera, LiveHost], judge: OnnxFaceDetector
) -> None:
    sim, host = onvif_host
    app = host.app
    assert app is not None and app.discovery is not None and app.discovery.port > 0
    xaddrs = await asyncio.to_thread(_probe, app.discovery.port)
    assert app.web is not None and app.devices is not None
    own_port = app.devices.ports["cam"]
    assert xaddrs == [f"http://127.0.0.1:{port}/onvif/device_service" for port in (app.web.port, own_port)]

    device = urlsplit(xaddrs[0])
    cam = onvif.ONVIFCamera(
        device.hostname, device.port, USER, PASSWORD, WSDL_DIR, no_cache=True, adjust_time=True
    )
    try:
        await cam.update_xaddrs()
        devicemgmt = await cam.create_devicemgmt_service()
        caps = await devicemgmt.GetCapabilities({"Category": "All"})
        assert caps.Media.StreamingCapabilities.RTP_RTSP_TCP is True
        media = await cam.create_media_service()
        profiles = await media.GetProfiles()
        assert [p.token for p in profiles] == ["cam_main", "cam_sub"]
        uris: dict[str, str] = {}
        for p in profiles:
            got = await media.GetStreamUri(
                {
                    "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                    "ProfileToken": p.token,
                }
            )
            uris[p.token] = got.Uri
            size = (
                p.VideoEncoderConfiguration.Resolution.Width,
                p.VideoEncoderConfiguration.Resolution.Height,
            )
            assert size == ((W, H) if p.token == "cam_main" else (SUB_W, SUB_W * H // W)), (p.token, size)
        rtsp = app.rtsp_port
        assert uris == {
            "cam_main": f"rtsp://127.0.0.1:{rtsp}/cam",
            "cam_sub": f"rtsp://127.0.0.1:{rtsp}/cam/sub",
        }
        snap_uri = (await media.GetSnapshotUri({"ProfileToken": "cam_main"})).Uri
        assert snap_uri == f"http://127.0.0.1:{app.web.port}/api/cameras/cam/snapshot.jpg"
        jpeg = await cam.get_snapshot("cam_main")  # HTTP Digest, as the client fetches it from a camera
    finally:
        await cam.close()
    # The camera's own device (the second XAddr) offers the same two profiles and stream URIs.
    own = urlsplit(xaddrs[1])
    single = onvif.ONVIFCamera(
        own.hostname, own.port, USER, PASSWORD, WSDL_DIR, no_cache=True, adjust_time=True
    )
    try:
        await single.update_xaddrs()
        media = await single.create_media_service()
        assert [p.token for p in await media.GetProfiles()] == ["cam_main", "cam_sub"]
        got = await media.GetStreamUri(
            {
                "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                "ProfileToken": "cam_sub",
            }
        )
        assert got.Uri == uris["cam_sub"]
    finally:
        await single.close()

    # The camera itself shows its two faces, at both sizes.
    raw = await asyncio.to_thread(_play, sim.url, 6)
    # Most frames, not all: the simulated faces move, and a frame may catch one at the edge.
    assert sum(1 for img in raw if _faces(judge, img) >= 2) >= 5, "the camera shows its faces"
    small = [cv2.resize(img, (SUB_W, SUB_W * H // W), interpolation=cv2.INTER_AREA) for img in raw]
    assert sum(1 for img in small if _faces(judge, img) >= 2) >= 5, "the faces at the sub stream's size"

    # What the VMS was given: frames flow on both, and no face is visible in them or in the snapshot.
    for token, uri in uris.items():
        frames = await asyncio.to_thread(_play, _with_credentials(uri), 15)
        assert len(frames) == 15, token
        found = [_faces(judge, img) for img in frames]
        print(f"\n{token}: {frames[0].shape[1]}x{frames[0].shape[0]}, faces per frame {found}")
        assert sum(found) == 0, f"faces visible in {token}: {found}"
    assert jpeg is not None
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (H, W, 3)
    assert _faces(judge, img) == 0, "a face in the snapshot"


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed")
def test_ffprobe_reads_both_onvif_uris(onvif_host: tuple[SimCamera, LiveHost]) -> None:
    _sim, host = onvif_host
    assert host.app is not None
    for path, size in (("cam", f"{W}x{H}"), ("cam/sub", f"{SUB_W}x{SUB_W * H // W}")):
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-select_streams", "v:0", "-show_entries",
             "stream=codec_name,width,height", "-of", "csv=p=0:s=x", host.url(path, USER, PASSWORD)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"h264x{size}", out.stdout


async def test_wrong_password_is_not_authorized(onvif_host: tuple[SimCamera, LiveHost]) -> None:
    _sim, host = onvif_host
    assert host.app is not None and host.app.web is not None
    cam = onvif.ONVIFCamera("127.0.0.1", host.app.web.port, USER, "wrong", WSDL_DIR, no_cache=True)
    try:
        devicemgmt = await cam.create_devicemgmt_service()
        # ONVIF Core's PRE_AUTH operations answer anyone: the client finds the media service...
        await cam.update_xaddrs()  # GetSystemDateAndTime, GetServices
        caps = await devicemgmt.GetCapabilities({"Category": "All"})
        assert caps.Media.XAddr.endswith("/onvif/media_service")
        # ...and is told NotAuthorized where it matters (not "no media endpoint").
        with pytest.raises(Fault) as err:
            await devicemgmt.GetDeviceInformation()
        assert any("NotAuthorized" in str(c) for c in err.value.subcodes or []), err.value
        media = await cam.create_media_service()
        with pytest.raises(Fault) as err:
            await media.GetProfiles()
        assert any("NotAuthorized" in str(c) for c in err.value.subcodes or []), err.value
    finally:
        await cam.close()
    # The snapshot is behind the same users.
    url = f"http://127.0.0.1:{host.app.web.port}/api/cameras/cam/snapshot.jpg"
    with pytest.raises(urllib.error.HTTPError) as http_err:
        await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
    http_err.value.close()  # the error holds the response's socket: closed now, not by a later test's GC
    assert http_err.value.code == 401
