"""The sub stream (`rtsp://HOST:PORT/<camera>/sub`) and snapshots (`/api/cameras/<camera>/snapshot.jpg`).

Both are made from the frames the main stream encodes (rendered: copied and obfuscated), never from
the raw decode. Unit tests pin the sub stream's frame grid and size, the RTSP path, and the snapshot
endpoint's auth and fail-closed answers; the end-to-end tests play a real camera's sub stream with
PyAV and judge it (and the snapshot) with the real face detector while the camera shows faces.
"""

from __future__ import annotations

import base64
import itertools
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
import pytest
from livekit import VISIBLE, H, W, camera_and_host, make_config
from webkit import make_cfg, serving

from streamproxy.config import EncoderConfig, SubStreamConfig, parse_config
from streamproxy.engine.detect import OnnxFaceDetector
from streamproxy.live.encode import SubStreamEncoder
from streamproxy.rtsp.protocol import StreamPath, parse_path

# --- the frame grid and the size -------------------------------------------------------------------


def test_sub_stream_keeps_an_even_share_of_the_main_frames() -> None:
    sub = SubStreamEncoder(SubStreamConfig(fps=10), EncoderConfig())
    kept = [i for i in range(250) if sub.due(25.0)]  # 10 s of a 25-fps camera
    assert 100 <= len(kept) <= 101, len(kept)  # the first frame, then 2 of every 5
    gaps = {b - a for a, b in itertools.pairwise(kept)}
    assert gaps <= {2, 3}, gaps  # 80 or 120 ms apart: 10 fps on average, never a burst
    # A camera slower than the sub stream's ceiling: every frame is kept.
    slow = SubStreamEncoder(SubStreamConfig(fps=10), EncoderConfig())
    assert all(slow.due(5.0) for i in range(20))
    # The main stream shedding half its frames (overload): the sub stream keeps the same share of
    # what is left, 2 of 5, so it thins out with the main stream instead of taking its CPU.
    shed = SubStreamEncoder(SubStreamConfig(fps=10), EncoderConfig())
    assert 50 <= sum(shed.due(25.0) for i in range(0, 250, 2)) <= 51
    # Slate frames always go (a viewer joining during an outage sees one at once).
    assert all(sub.due(25.0, always=True) for _ in range(5))


def test_sub_stream_size_follows_the_camera_and_never_upscales() -> None:
    sub = SubStreamEncoder(SubStreamConfig(width=640), EncoderConfig())
    assert sub.target_size(1920, 1080) == (640, 360)
    assert sub.target_size(1280, 720) == (640, 360)
    assert sub.target_size(640, 480) == (640, 480)  # 4:3 stays 4:3
    assert sub.target_size(320, 240) == (320, 240)  # never larger than the camera
    assert sub.target_size(1000, 563) == (640, 360)  # even sides
    fixed = SubStreamEncoder(SubStreamConfig(width=640, height=480), EncoderConfig())
    assert fixed.target_size(1920, 1080) == (640, 480)


def test_sub_stream_encodes_the_frame_it_is_given_scaled() -> None:
    sub = SubStreamEncoder(SubStreamConfig(width=320, fps=5), EncoderConfig(bitrate_kbps=300), "cam")
    img = np.zeros((360, 640, 3), np.uint8)
    img[:, 320:] = 255  # right half white: the scaled picture must keep it
    frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)
    packets = [p for i in range(5) for p in sub.encode(frame, 10.0 + i / 5, force_keyframe=i == 0)]
    assert packets and packets[0].keyframe
    assert sub.size == (320, 180) and sub.frames_out == 5 and sub.cpu_s > 0
    codec = av.CodecContext.create("h264", "r")
    decoded = [f for p in packets for f in codec.decode(av.Packet(p.data))]
    assert decoded and (decoded[0].width, decoded[0].height) == (320, 180)
    out = decoded[-1].to_ndarray(format="gray", threads=1)
    assert out[:, :150].mean() < 30 and out[:, 170:].mean() > 220
    sub.close()


def test_sub_stream_config_per_camera() -> None:
    cfg = parse_config({
        "cameras": [
            {"name": "a", "url": "rtsp://127.0.0.1:1/a"},
            {"name": "b", "url": "rtsp://127.0.0.1:1/b", "sub_stream": {"enabled": False}},
            {"name": "c", "url": "rtsp://127.0.0.1:1/c", "sub_stream": {"fps": 5}},
        ],
        "sub_stream": {"width": 480},
    })  # fmt: skip
    a, b, c = (cfg.sub_stream_for(cam) for cam in cfg.cameras)
    assert a is not None and (a.width, a.fps) == (480, 10.0)
    assert b is None
    assert c is not None and (c.width, c.fps) == (480, 5.0)  # the other keys stay global


def test_rtsp_path_of_the_sub_stream() -> None:
    assert parse_path("rtsp://h:8554/cam/sub") == StreamPath("cam/sub", "")
    assert parse_path("rtsp://h:8554/cam/sub/trackID=0") == StreamPath("cam/sub", "trackID=0")
    assert parse_path("rtsp://h:8554/cam/trackID=0") == StreamPath("cam", "trackID=0")
    assert parse_path("rtsp://h:8554/sub") == StreamPath("sub", "")  # a camera may be called "sub"


# --- the snapshot endpoint ---------------------------------------------------------------------------


async def test_snapshot_endpoint_auth_and_fail_closed() -> None:
    users = [{"username": "vms", "password": "pw-1"}]
    async with serving(make_cfg(users=users, cameras=("cam1",)), feed=False) as (app, _server, base):
        url = base + "/api/cameras/cam1/snapshot.jpg"
        basic = {"Authorization": "Basic " + base64.b64encode(b"vms:pw-1").decode()}
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as resp:
                assert resp.status == 401
                schemes = [h.split()[0] for h in resp.headers.getall("WWW-Authenticate")]
                assert "Digest" in schemes and "Basic" in schemes  # ONVIF clients use Digest
            async with s.get(url, headers=basic) as resp:
                assert resp.status == 200 and resp.content_type == "image/jpeg"
                img = cv2.imdecode(np.frombuffer(await resp.read(), np.uint8), cv2.IMREAD_COLOR)
                assert img is not None and img.shape[:2] == (240, 320)
            async with s.get(
                url, headers={"Authorization": "Basic " + base64.b64encode(b"vms:no").decode()}
            ) as resp:
                assert resp.status == 401
            # No anonymized frame recent enough: 503, never anything else.
            app.pipelines["cam1"].latest = None
            async with s.get(url, headers=basic) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            async with s.get(base + "/api/cameras/nope/snapshot.jpg", headers=basic) as resp:
                assert resp.status == 404


# --- end to end: a real camera, the whole service, PyAV and the face judge ------------------------------

SUB_W, SUB_FPS = 320, 5


def _play(url: str, frames: int, max_s: float = 30) -> list[av.VideoFrame]:
    out: list[av.VideoFrame] = []
    t0 = time.monotonic()
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(5, 5)) as c:
        for f in c.decode(video=0):
            out.append(f)
            if len(out) >= frames or time.monotonic() - t0 > max_s:
                break
    return out


def _faces(judge: OnnxFaceDetector, img: np.ndarray) -> int:
    return sum(1 for d in judge.detect_bgr(img) if d.score >= VISIBLE)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, b""


@pytest.fixture(scope="module")
def sub_host(model_dir: Path) -> Any:
    with camera_and_host(
        lambda url: make_config(url, model_dir, sub_stream={"width": SUB_W, "fps": SUB_FPS})
    ) as pair:
        yield pair


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sub_stream_plays_scaled_thinned_and_masked(sub_host: Any, judge: OnnxFaceDetector) -> None:
    sim, host = sub_host
    raw = _play(sim.url, 10)
    small_raw = [cv2.resize(f.to_ndarray(format="bgr24", threads=1), (SUB_W, SUB_W * H // W), interpolation=cv2.INTER_AREA)
                 for f in raw]  # fmt: skip
    assert sum(1 for img in small_raw if _faces(judge, img) >= 2) >= 8, "the camera's faces at the sub size"

    frames = _play(host.url("cam/sub"), 3 * SUB_FPS + 1)
    assert len(frames) == 3 * SUB_FPS + 1
    assert {(f.width, f.height) for f in frames} == {(SUB_W, SUB_W * H // W)}
    times = [float(f.pts * f.time_base) for f in frames if f.pts is not None and f.time_base is not None]
    rate = (len(times) - 1) / (times[-1] - times[0])
    print(
        f"\nsub stream: {frames[0].width}x{frames[0].height}, {rate:.2f} fps by its timestamps (ceiling {SUB_FPS})"
    )
    # By the stream's own timestamps (not the wall clock): never above the ceiling (20 % for jitter).
    # Overload shedding thins the sub stream with the main one (a busy 2-core box may shed half or
    # more), so the lower bound only says frames flow.
    assert SUB_FPS * 0.2 <= rate <= SUB_FPS * 1.2, times
    found = [_faces(judge, f.to_ndarray(format="bgr24", threads=1)) for f in frames]
    assert sum(found) == 0, f"faces visible in the sub stream: {found}"
    status = host.snapshot()
    assert status.sub_stream is not None
    assert status.sub_stream.path == "cam/sub" and status.sub_stream.resolution == (SUB_W, SUB_W * H // W)
    assert 0 < status.sub_stream.encode_cpu_s and 0 < status.encode_cpu_s


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sub_stream_has_its_own_keyframe_on_join(sub_host: Any) -> None:
    _sim, host = sub_host
    assert host.app is not None
    main, sub = host.app.hubs["cam"], host.app.sub_hubs["cam"]
    main_before, sub_before = main.keyframes_forced, sub.keyframes_forced
    frames = _play(host.url("cam/sub"), 1)
    assert len(frames) == 1 and frames[0].key_frame  # a decoder starts at a keyframe
    assert sub.keyframes_forced > sub_before
    assert main.keyframes_forced == main_before  # a sub viewer costs the main stream nothing


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_snapshot_is_the_anonymized_frame(sub_host: Any, judge: OnnxFaceDetector) -> None:
    sim, host = sub_host
    assert sum(_faces(judge, f.to_ndarray(format="bgr24", threads=1)) for f in _play(sim.url, 3)) >= 4
    status, body = _get(f"http://127.0.0.1:{host.app.web.port}/api/cameras/cam/snapshot.jpg")
    assert status == 200
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (H, W, 3)
    assert _faces(judge, img) == 0


class _BrokenDetector:
    input_width = 640

    def detect_bgr(self, img: Any) -> list[Any]:
        raise RuntimeError("detector exploded")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_broken_detector_sub_stream_and_snapshot_fail_closed(
    sim_camera_factory: Any, host_factory: Any, judge: OnnxFaceDetector
) -> None:
    sim = sim_camera_factory(width=W, height=H)
    host = host_factory(sim.url)
    host.wait_live()
    assert host.app is not None and "cam" in host.app.sub_hubs  # the sub stream is on by default
    host.app.pipelines["cam"].engine.detector = _BrokenDetector()
    time.sleep(1.0)  # frames anonymized before the swap have left by now (budget 200 ms)
    frames = _play(host.url("cam/sub"), 8)
    assert len(frames) == 8
    found = [_faces(judge, f.to_ndarray(format="bgr24", threads=1)) for f in frames]
    assert sum(found) == 0, f"faces in the sub stream with a broken detector: {found}"
    status, body = _get(f"http://127.0.0.1:{host.app.web.port}/api/cameras/cam/snapshot.jpg")
    if status == 200:  # the whole frame obfuscated (fail_closed.action obfuscate) ...
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None, "the snapshot is a JPEG"
        assert _faces(judge, img) == 0
    else:  # ... or nothing recent enough to show
        assert status == 503
    assert host.snapshot().fail_closed_frames > 0
