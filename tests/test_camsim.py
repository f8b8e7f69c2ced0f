"""The simulated camera: clip, ground truth, wall-clock barcode, and the real RTSP server serving it."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from streamproxy_sim import camsim
from streamproxy_sim.camsim import SimCamera

LOW_DELAY = {"probesize": "32", "analyzeduration": "0", "flags": "low_delay"}


def _i420_y(clip: Path, index: int, width: int, height: int) -> np.ndarray:
    size = camsim.frame_bytes(width, height)
    data = np.fromfile(clip, np.uint8, count=size, offset=index * size)
    return data[: width * height].reshape(height, width)


# --- barcode --------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1920, 1280, 640, 320, 112])
def test_stamp_round_trip(width: int) -> None:
    y = np.full((max(64, width // 2), width), 100, np.uint8)
    ms = int(time.time() * 1000)
    camsim.write_stamp(y, ms)
    assert camsim.read_stamp(y) == ms
    bw, bh = camsim.stamp_area(width)
    assert bw <= width and np.all(y[bh:] == 100) and np.all(y[:, bw:] == 100)


def test_stamp_survives_noise_and_rejects_garbage() -> None:
    rng = np.random.default_rng(1)
    y = np.full((360, 640), 128, np.uint8)
    ms = 1_795_000_000_123
    camsim.write_stamp(y, ms)
    noisy = np.clip(y.astype(np.int16) + rng.normal(0, 25, y.shape), 0, 255).astype(np.uint8)
    assert camsim.read_stamp(noisy) == ms
    assert camsim.read_stamp(np.full((360, 640), 128, np.uint8)) is None  # unstamped (grey)
    # Random black/white blocks: the contrast test passes, the CRC must reject (almost) all of them.
    false = 0
    b = camsim.stamp_block(640)
    for _ in range(300):
        bits = rng.integers(0, 2, (camsim.STAMP_ROWS, camsim.STAMP_COLS))
        blocks = np.where(bits == 1, camsim.STAMP_WHITE, camsim.STAMP_BLACK).astype(np.uint8)
        y2 = np.full((360, 640), 128, np.uint8)
        y2[: camsim.STAMP_ROWS * b, : camsim.STAMP_COLS * b] = np.kron(blocks, np.ones((b, b), np.uint8))
        false += camsim.read_stamp(y2) is not None
    assert false <= 5
    # Blurred (as an obfuscated corner would be): no stamp rather than a wrong one.
    import cv2

    blurred = cv2.GaussianBlur(y, (0, 0), 12)
    assert camsim.read_stamp(blurred) in (None, ms)


def test_sim_writer_matches_reader(_sim_gst_available: None, tmp_path: Path) -> None:
    """The server's pure-Python stamp writer and camsim's numpy one draw the same bytes."""
    width, height, ms = 640, 360, 1_795_676_224_833
    out = tmp_path / "frame.i420"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import gst_camera as g;"
        "f = bytearray([77]) * (640 * 360 * 3 // 2); g.write_stamp(f, 640, 360, int(sys.argv[3]));"
        "open(sys.argv[2], 'wb').write(f)"
    )
    subprocess.run(
        [camsim.SYSTEM_PYTHON, "-c", code, str(camsim.SIM_SCRIPT.parent), str(out), str(ms)],
        check=True,
        timeout=30,
    )
    theirs = np.fromfile(out, np.uint8)
    mine = np.full(width * height * 3 // 2, 77, np.uint8)
    y = mine[: width * height].reshape(height, width)
    u = mine[width * height : width * height * 5 // 4].reshape(height // 2, width // 2)
    v = mine[width * height * 5 // 4 :].reshape(height // 2, width // 2)
    camsim.write_stamp(y, ms, (u, v))
    assert np.array_equal(theirs, mine)
    assert camsim.read_stamp(y) == ms


# --- clip and ground truth ----------------------------------------------------------------------


@pytest.mark.parametrize("faces", [1, 2, 3])
@pytest.mark.parametrize(("width", "height"), [(1280, 720), (640, 360), (640, 480)])
def test_face_boxes_stay_visible_apart_and_loop(faces: int, width: int, height: int) -> None:
    fps, seconds = 25, 4
    n = fps * seconds
    _, stamp_h = camsim.stamp_area(width)
    prev = None
    for i in range(n + 1):
        boxes = camsim.face_boxes(i, width, height, fps, seconds, faces)
        assert len(boxes) == faces
        for b in boxes:
            assert 0 <= b.x1 < b.x2 <= width and stamp_h < b.y1 < b.y2 <= height
            assert b.height >= 0.05 * height
        for a_i, a in enumerate(boxes):
            for b in boxes[a_i + 1 :]:
                assert a.intersection(b) == 0
        if prev is not None:  # smooth: a face moves a few percent of the frame per frame at most
            for a, b in zip(prev, boxes, strict=True):
                assert abs(a.cx - b.cx) < 0.03 * width and abs(a.cy - b.cy) < 0.03 * height
        prev = boxes
    assert camsim.face_boxes(n, width, height, fps, seconds, faces) == camsim.face_boxes(
        0, width, height, fps, seconds, faces
    )
    with pytest.raises(ValueError):
        camsim.face_boxes(0, width, height, fps, seconds, 4)


def test_build_clip_pastes_faces_where_ground_truth_says(tmp_path: Path) -> None:
    width, height, fps, seconds = 640, 360, 10, 1
    clip = camsim.build_clip(tmp_path / "c.i420", width, height, fps, seconds, faces=2)
    assert clip.stat().st_size == camsim.frame_bytes(width, height) * fps * seconds
    for i in (0, 5):
        y = _i420_y(clip, i, width, height)
        for box in camsim.face_boxes(i, width, height, fps, seconds, 2):
            x1, y1, x2, y2 = box.int_bounds()
            face = y[y1:y2, x1:x2].astype(np.float32)
            # A face has structure (eyes, mouth): far more luma variance than the smooth background.
            assert face.std() > 25
        bw, bh = camsim.stamp_area(width)
        assert np.all(np.abs(y[:bh, :bw].astype(int) - 128) < 8)  # left blank for the server's stamp
    assert not any(tmp_path.glob(".*tmp"))


def test_build_clip_from_a_users_video(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(8):
            img = np.full((240, 320, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    clip = camsim.build_clip(tmp_path / "u.i420", 160, 120, fps=10, seconds=0.5, source=src)
    assert clip.stat().st_size == camsim.frame_bytes(160, 120) * 5


# --- the server ---------------------------------------------------------------------------------


class ProbeTimeout(AssertionError):
    """ffprobe got nothing in its time (the message says what ffprobe, the camera and the machine did)."""


def _ffprobe(url: str, transport: str, cam: SimCamera | None = None) -> dict[str, Any]:
    try:
        # -v verbose: on a failure the message shows how far the RTSP exchange got.
        r = subprocess.run(
            ["ffprobe", "-v", "verbose", "-rtsp_transport", transport, "-print_format", "json",
             "-show_entries", "stream=codec_name,width,height,codec_type", url],
            capture_output=True, text=True, timeout=25, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        said = err.stderr.decode(errors="replace")[-1500:] if isinstance(err.stderr, bytes) else err.stderr
        busiest = subprocess.run(
            ["ps", "-eo", "pcpu,etimes,args", "--sort=-pcpu"], capture_output=True, text=True
        )
        raise ProbeTimeout(
            f"ffprobe got nothing from {url} in 25 s; it said:\n{said}\n"
            f"the camera said:\n{cam.log_tail() if cam else '?'}\n"
            f"busiest processes:\n{chr(10).join(busiest.stdout.splitlines()[:8])}"
        ) from None
    assert r.returncode == 0, f"{r.stderr}\ncamera: {cam.log_tail() if cam else '?'}"
    streams: list[dict[str, Any]] = json.loads(r.stdout)["streams"]
    assert len(streams) == 1
    return streams[0]


def _read_frames(url: str, transport: str, n: int, timeout: float = 20.0) -> list[av.VideoFrame]:
    frames: list[av.VideoFrame] = []
    deadline = time.monotonic() + timeout
    with av.open(url, options={"rtsp_transport": transport, **LOW_DELAY}, timeout=(5, 5)) as c:
        for frame in c.decode(video=0):
            frames.append(frame)
            if len(frames) >= n or time.monotonic() > deadline:
                break
    return frames


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_ffprobe_and_pyav_read_the_camera(sim_camera: SimCamera, transport: str) -> None:
    info = _ffprobe(sim_camera.url, transport, sim_camera)
    assert (info["codec_name"], info["width"], info["height"]) == ("h264", 640, 360)
    frames = _read_frames(sim_camera.url, transport, 10)
    assert len(frames) == 10 and frames[0].width == 640


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stamp_survives_h264_and_measures_latency(sim_camera_factory: Callable[..., SimCamera]) -> None:
    cam = sim_camera_factory(width=1280, height=720)
    frames = _read_frames(cam.url, "tcp", 50)
    now_ms = time.time() * 1000
    stamps = [camsim.read_stamp(f.to_ndarray(format="yuv420p", threads=1)[: f.height]) for f in frames]
    assert all(s is not None for s in stamps), stamps
    valid = [s for s in stamps if s is not None]
    assert all(abs(now_ms - s) < 5000 for s in valid)
    # The clock moves forward at the frame rate (ignore the backlog decoded at the start).
    assert valid == sorted(valid)
    steps = np.diff(valid[-20:])
    assert 20 <= float(np.median(steps)) <= 60


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_shared_media_serves_two_clients_at_once(sim_camera: SimCamera) -> None:
    with (
        av.open(sim_camera.url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(5, 5)) as a,
        av.open(sim_camera.url, options={"rtsp_transport": "udp", **LOW_DELAY}, timeout=(5, 5)) as b,
    ):
        # Both sessions stay open while the other one reads: one media, two clients.
        got = []
        for c in (a, b, a, b):
            n = 0
            for _ in c.decode(video=0):
                n += 1
                if n >= 5:
                    break
            got.append(n)
        assert got == [5, 5, 5, 5]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_basic_auth(sim_camera_factory: Callable[..., SimCamera]) -> None:
    cam = sim_camera_factory(user="admin", password="s3cret!")
    assert _ffprobe(cam.url, "tcp", cam)["codec_name"] == "h264"
    r = subprocess.run(
        ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", cam.url_without_auth],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode != 0 and "401" in r.stderr


def _describe_challenge(port: int, path: str) -> str:
    """The WWW-Authenticate header the server answers an unauthenticated DESCRIBE with."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"DESCRIBE rtsp://127.0.0.1:{port}/{path} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.decode(errors="replace")
    assert head.startswith("RTSP/1.0 401"), head
    return "\n".join(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("www-authenticate:")
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_digest_auth(sim_camera_factory: Callable[..., SimCamera]) -> None:
    cam = sim_camera_factory(user="admin", password="s3cret!", auth="digest")
    challenge = _describe_challenge(cam.port, cam.path)
    assert challenge.startswith("Digest ") and "nonce=" in challenge and "Basic" not in challenge
    assert _ffprobe(cam.url, "tcp", cam)["codec_name"] == "h264"
    frames = _read_frames(cam.url, "tcp", 5)
    assert len(frames) == 5 and frames[0].width == 640
    wrong = cam.url.replace("s3cret%21", "wrong")
    assert wrong != cam.url
    for url in (wrong, cam.url_without_auth):
        r = subprocess.run(
            ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", url],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert r.returncode != 0 and "401" in r.stderr, r.stderr
    with pytest.raises(av.error.HTTPUnauthorizedError):
        _read_frames(wrong, "tcp", 1)


def test_basic_is_the_default_and_auth_is_checked() -> None:
    cmd = SimCamera(user="u", password="p", clip="/nonexistent.i420").command()
    assert cmd[cmd.index("--auth") + 1] == "basic"
    cmd = SimCamera(user="u", password="p", clip="/nonexistent.i420", auth="digest").command()
    assert cmd[cmd.index("--auth") + 1] == "digest"
    with pytest.raises(ValueError, match="auth"):
        SimCamera(auth="ntlm")  # type: ignore[arg-type]


# --- replay mode ----------------------------------------------------------------------------------


def test_encode_clip_gives_one_access_unit_per_frame_and_loops_from_a_keyframe(tmp_path: Path) -> None:
    width, height, fps, seconds = 640, 360, 5, 4  # GOP 2 s = 10 frames; 20 frames
    raw = camsim.build_clip(tmp_path / "c.i420", width, height, fps, seconds)
    path = camsim.encode_clip(raw, camsim.replay_cache_path(raw, fps, 800), width, height, fps, 800)
    assert path.parent == raw.parent and path.name.startswith(raw.name)
    aus = camsim.read_access_units(path)
    assert len(aus) == fps * seconds
    assert [i for i, (_, key) in enumerate(aus) if key] == [0, 10]
    assert all(data.startswith(b"\0\0\0\1") or data.startswith(b"\0\0\1") for data, _ in aus)
    # Played twice in a row (the server's loop), every access unit decodes to a picture.
    ctx = av.CodecContext.create("h264", "r")
    frames = []
    for data, _ in aus * 2:
        frames += ctx.decode(av.Packet(data))
    frames += ctx.decode(None)
    assert len(frames) == 2 * fps * seconds
    # Same picture both times round, and close to the raw clip (faces are there, not mush).
    y0 = frames[3].to_ndarray(format="gray", threads=1).astype(np.float32)
    y1 = frames[23].to_ndarray(format="gray", threads=1).astype(np.float32)
    raw3 = _i420_y(raw, 3, width, height).astype(np.float32)
    assert np.array_equal(y0, y1)
    assert 10 * np.log10(255**2 / float(np.mean((y0 - raw3) ** 2))) > 28
    # Cached: a second SimCamera reuses the file (no re-encode) while the clip is unchanged.
    mtime = path.stat().st_mtime_ns
    assert camsim.cached_replay(raw, width, height, fps, 800) == path and path.stat().st_mtime_ns == mtime


def test_replay_mode_rejects_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match=r"H\.264 only"):
        SimCamera(codec="h265", mode="replay")
    with pytest.raises(ValueError, match="switch"):
        SimCamera(mode="replay", switch_to=(320, 240, 1.0))
    with pytest.raises(ValueError, match="mode"):
        SimCamera(mode="vod")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_replay_camera_serves_the_clip_at_the_frame_rate(
    sim_camera_factory: Callable[..., SimCamera],
) -> None:
    cam = sim_camera_factory(mode="replay")
    assert cam.mode == "replay" and "--replay" in cam.command()
    clip = cam._clip_path()
    raw = [_i420_y(clip, i, 640, 360).astype(np.float32) for i in range(25 * 4)]
    frames: list[av.VideoFrame] = []
    t_first = t_last = 0.0
    deadline = time.monotonic() + 20
    with av.open(cam.url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(5, 5)) as c:
        for frame in c.decode(video=0):
            if not frames:
                t_first = time.monotonic()
            frames.append(frame)
            t_last = time.monotonic()
            if len(frames) > 3 * 25 or t_last > deadline:
                break
    assert len(frames) > 3 * 25 and frames[0].key_frame  # a new client starts at a keyframe
    # The stream's own clock (RTP timestamps) says 25 fps: one frame every 40 ms.
    media = [float(f.time) for f in frames if f.time is not None]  # the first may come without one
    assert len(media) >= 3 * 25, len(media)
    assert float(np.median(np.diff(media))) == pytest.approx(1 / 25, rel=0.1), media
    # ...and the camera keeps to it instead of pushing the clip as fast as it is read: the frames come
    # no faster than their clock (a loaded machine only makes them later, never earlier). Slack: the
    # first frames may come as a backlog.
    media_s, wall_s = media[-1] - media[0], t_last - t_first
    assert wall_s >= 0.8 * media_s - 0.2, f"3 s of clip came in {wall_s:.2f} s: not paced"
    for f in frames[::15]:
        y = f.to_ndarray(format="gray", threads=1).astype(np.float32)
        assert camsim.read_stamp(y.astype(np.uint8)) is None  # replay frames carry no barcode
        # Which clip frame is this? The closest raw one; it must be close, and show its faces.
        errs = [float(np.mean((y - r) ** 2)) for r in raw]
        index = int(np.argmin(errs))
        assert 10 * np.log10(255**2 / errs[index]) > 28
        for box in cam.face_boxes(index):
            x1, y1, x2, y2 = box.int_bounds()
            assert y[y1:y2, x1:x2].std() > 25


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_h265(sim_camera_factory: Callable[..., SimCamera]) -> None:
    cam = sim_camera_factory(codec="h265")
    assert _ffprobe(cam.url, "tcp", cam)["codec_name"] == "hevc"
    frames = _read_frames(cam.url, "tcp", 5)
    assert (
        len(frames) == 5
        and camsim.read_stamp(frames[-1].to_ndarray(format="yuv420p", threads=1)[:360]) is not None
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_and_restart_on_the_same_port(sim_camera: SimCamera) -> None:
    port = sim_camera.port
    assert len(_read_frames(sim_camera.url, "tcp", 3)) == 3
    sim_camera.kill()
    assert not sim_camera.running
    with pytest.raises(av.error.ConnectionRefusedError):
        _read_frames(sim_camera.url, "tcp", 1)
    sim_camera.start()
    assert sim_camera.port == port
    assert len(_read_frames(sim_camera.url, "tcp", 3)) == 3
    sim_camera.stop()
    assert not sim_camera.running
    sim_camera.stop()  # idempotent


def test_start_fails_with_a_clear_error_for_a_bad_clip(_sim_gst_available: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.i420"
    bad.write_bytes(b"\0" * 1000)
    cam = SimCamera(width=640, height=360, clip=bad, start_timeout_s=15)
    with pytest.raises(camsim.SimCameraError, match="whole number"):
        cam.start()
    assert not cam.running


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_detector_finds_the_clip_faces_and_not_the_barcode(model_dir: Path) -> None:
    detect = pytest.importorskip("streamproxy.engine.detect")
    from streamproxy.config import DetectorConfig

    det = detect.create_detector(DetectorConfig(model="yunet", model_dir=model_dir, threads=1))
    width, height = 1280, 720
    bw, bh = camsim.stamp_area(width)
    for i in (0, 33, 66):
        bgr = camsim.render_frame(i, width, height, 25, 4, 3)
        i420 = camsim.bgr_to_i420(bgr)
        camsim.write_stamp(i420[:height], int(time.time() * 1000))
        import cv2

        found = det.detect_bgr(cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420))
        truth = camsim.face_boxes(i, width, height, 25, 4, 3)
        for t in truth:
            assert max((d.box.iou(t) for d in found), default=0) > 0.5, (i, t, found)
        assert len(found) == len(truth)
        assert all(d.box.y1 > bh or d.box.x1 > bw for d in found)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigterm_exits_cleanly_while_a_client_watches(sim_camera: SimCamera) -> None:
    with av.open(sim_camera.url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(5, 5)) as c:
        for n, _ in enumerate(c.decode(video=0)):
            if n >= 3:
                break
        t0 = time.monotonic()
        sim_camera.stop()
        assert time.monotonic() - t0 < 3.0
    assert sim_camera.returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_server_exits_when_its_parent_goes_away(sim_camera: SimCamera) -> None:
    """stdin EOF (the parent died) ends the server: no orphaned cameras after a crashed test run."""
    proc = sim_camera._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(10) == 0


def test_a_flushing_appsrc_does_not_end_the_feed(_sim_gst_available: None) -> None:
    """A camera that stopped feeding on one FLUSHING answer accepted sessions and never sent a packet;
    the feeder drops that frame and feeds on, and only EOS ends its stream."""
    probe = f"""
import sys
sys.path.insert(0, {str(camsim.SIM_SCRIPT.parent)!r})
from gst_camera import Gst, Pusher
Gst.init(None)
# live, as the camera's; a sink that does not sync: nothing in this probe waits on the clock
p = Gst.parse_launch('appsrc name=src is-live=true format=time caps="video/x-raw,format=I420,width=16,height=16" '
                     '! fakesink sync=false')
src = p.get_by_name("src")
p.set_state(Gst.State.PLAYING)
p.get_state(5 * Gst.SECOND)
push = Pusher(src, "test")
frame = lambda: Gst.Buffer.new_wrapped(bytes(16 * 16 * 3 // 2))
print("ok", push(frame()))
src.send_event(Gst.Event.new_flush_start())
print("flushing", push(frame()))
# A restart ends the flush (a flush-stop sent to a live appsrc hung this probe about 1 run in 8).
src.set_state(Gst.State.READY)
src.set_state(Gst.State.PLAYING)
print("after", push(frame()))
src.emit("end-of-stream")
print("eos", push(frame()))
print("counts", push.pushed, push.flushing)
p.set_state(Gst.State.NULL)
"""
    r = subprocess.run(
        [camsim.SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == [
        "ok taken",
        "flushing dropped",
        "after taken",
        "eos over",
        "counts 2 1",
    ], r.stdout
    assert "appsrc flushing after 1 frames" in r.stderr and "push-buffer eos after 2 frames" in r.stderr, (
        r.stderr
    )


@pytest.mark.timeout(60)
def test_frames_are_stamped_with_the_running_time_never_before_the_base_time(
    _sim_gst_available: None,
) -> None:
    """Why the feeder stamps frames itself: appsrc's do-timestamp, given a frame after the pipeline's
    clock came but before the base time did (the window of a pipeline's first PLAYING), stamps it with
    the clock's absolute time, and the syncing RTP sink then waits hours for it (a camera whose first
    session got no packet). The Pusher drops such a frame, and stamps the next with the running time."""
    probe = f"""
import sys
sys.path.insert(0, {str(camsim.SIM_SCRIPT.parent)!r})
from gst_camera import Gst, Pusher
Gst.init(None)
frame = lambda: Gst.Buffer.new_wrapped(bytes(16 * 16 * 3 // 2))
clock = Gst.SystemClock.obtain()

def pipeline(extra):
    p = Gst.parse_launch('appsrc name=src is-live=true format=time ' + extra +
                         ' caps="video/x-raw,format=I420,width=16,height=16,framerate=25/1" ! appsink name=sink sync=false')
    p.set_state(Gst.State.PAUSED)
    src = p.get_by_name("src")
    src.set_clock(clock)  # the window: the clock has come, the base time (still 0) not yet
    return p, src, p.get_by_name("sink")

def first_pts(p, sink):
    p.set_state(Gst.State.PLAYING)
    s = sink.emit("try-pull-sample", 10 * Gst.SECOND)
    return s.get_buffer().pts

p, src, sink = pipeline("do-timestamp=true")
pushed_at = clock.get_time()
src.emit("push-buffer", frame())
print("do-timestamp", abs(first_pts(p, sink) - pushed_at) < Gst.SECOND)
p.set_state(Gst.State.NULL)

p, src, sink = pipeline("")
push = Pusher(src, "test")
print("window", push(frame()))
p.set_state(Gst.State.PLAYING)
p.get_state(5 * Gst.SECOND)
print("running", push(frame()))
pts = sink.emit("try-pull-sample", 10 * Gst.SECOND).get_buffer().pts
print("pts", 0 <= pts < 10 * Gst.SECOND)
p.set_state(Gst.State.NULL)
"""
    r = subprocess.run(
        [camsim.SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    # do-timestamp: the frame's time is the clock's absolute time at the push (the running time there
    # was 0), as far ahead of the running time as the machine has been up.
    assert r.stdout.split("\n")[:4] == ["do-timestamp True", "window dropped", "running taken", "pts True"], (
        r.stdout
    )
    assert "the clock came before the base time; frame dropped" in r.stderr, r.stderr


# --- the demo's plaza (streamproxy_sim/plaza.py) -------------------------------------------------


@pytest.fixture(scope="module")
def plaza_video() -> Path:
    from streamproxy_sim import plaza

    video = plaza.find_video()
    if video is None:
        pytest.skip(f"the plaza video (opencv-doc's vtest.avi) is not here: {plaza.FETCH_COMMAND} fetches it")
    return video


def test_plaza_faces_stay_in_the_picture_move_and_loop() -> None:
    from streamproxy_sim import plaza

    n = plaza.N_FRAMES
    truth = [plaza.face_boxes(i) for i in range(n)]
    # Two or three faces; one in the second half of the dissolve at the loop point, which shows the
    # second before the couple walks into the picture.
    assert all(len(faces) >= 2 for faces in truth[: n - 13]) and all(truth)
    for faces in truth:
        for f in faces:
            b = f.box
            assert 0 <= b.x1 < b.x2 <= plaza.WIDTH and 0 <= b.y1 < b.y2 <= plaza.HEIGHT, f
            assert b.width >= 26  # above the privacy floor (18 px at 1280 wide), with a margin
    # The faces walk: the woman crosses the lawn (hundreds of pixels), at walking pace (no jumps).
    woman = [next((f.box for f in faces if f.walker.startswith("woman")), None) for faces in truth]
    path = [b for b in woman if b is not None]
    assert max(b.cx for b in path) - min(b.cx for b in path) > 500
    steps = [abs(a.cx - b.cx) + abs(a.cy - b.cy) for a, b in itertools.pairwise(path)]
    assert max(steps) < 40
    # The loop: a face on both sides of the wrap moves no more than a step.
    last = {f.walker: f.box for f in truth[-1]}
    for f in truth[0]:
        if f.walker in last:
            assert abs(f.box.cx - last[f.walker].cx) + abs(f.box.cy - last[f.walker].cy) < 40
    assert plaza.face_boxes(n + 7) == truth[7]


def _replay_frames(path: Path, indices: set[int]) -> dict[int, np.ndarray]:
    """BGR frames at these indices of a replay file (its access units decoded in order)."""
    out: dict[int, np.ndarray] = {}
    codec = av.CodecContext.create("h264", "r")
    n = 0
    for data, _ in camsim.read_access_units(path):
        for frame in codec.decode(av.Packet(data)):
            if n in indices:
                out[n] = frame.to_ndarray(format="bgr24", threads=1)
            n += 1
        if len(out) == len(indices):
            break
    return out


@pytest.mark.timeout(120)
def test_plaza_clip_shows_its_faces_to_the_detector(plaza_video: Path, model_dir: Path) -> None:
    """The demo camera's clip as the camera serves it (encoded): the real detector finds every whole
    pasted face where the ground truth says, at the live detector's resolution and a stricter score."""
    from streamproxy.config import DetectorConfig
    from streamproxy.engine.detect import create_detector
    from streamproxy_sim import plaza

    clip = plaza.cached_replay(plaza_video)
    units = camsim.read_access_units(clip)
    assert len(units) == plaza.N_FRAMES and units[0][1]  # one access unit a frame, from a keyframe
    indices = {0, 60, 120, 180, 240}  # 240: inside the dissolve at the loop point
    frames = _replay_frames(clip, indices)
    det = create_detector(DetectorConfig(model="yunet", model_dir=model_dir, threads=1, input_width=1280))
    judged = 0
    for i in sorted(indices):
        assert frames[i].shape == (plaza.HEIGHT, plaza.WIDTH, 3)
        found = det.detect_bgr(frames[i])
        for face in plaza.face_boxes(i):
            if face.occluded:
                continue
            best = max((d.box.iou(face.box) for d in found), default=0.0)
            assert best > 0.5, (i, face, found)
            judged += 1
    assert judged >= 2 * len(indices)
