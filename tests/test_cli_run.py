"""`streamproxy run` as a user runs it: a process, a config file, signals."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from clikit import http_status, probe, start_cli, wait_ready, write_config

from streamproxy_sim import plaza
from streamproxy_sim.camsim import free_port, read_access_units


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_and_shuts_down_gracefully_on_signal(
    sim_camera: Any, model_dir: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    rtsp, http = free_port(), free_port()
    proc = start_cli(write_config(tmp_path, sim_camera.url, rtsp, http, model_dir))
    try:
        wait_ready(proc, http)
        assert probe(f"rtsp://127.0.0.1:{rtsp}/lobby", "codec_name") == "h264"
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out
    assert took < 10, f"shutdown took {took:.1f} s"
    assert "Traceback" not in out and " ERROR " not in out, out
    assert "shutting down" in out
    # Credentials never reach the logs (the sim's URL has none; the redaction itself is unit-tested).
    assert http_status(f"http://127.0.0.1:{http}/healthz") == 0  # listeners are closed


@pytest.mark.slow
@pytest.mark.parametrize("own_video", [False, True])
def test_demo_serves_anonymized_video(
    tmp_path: Path, model_dir: Path, _sim_gst_available: None, own_video: bool
) -> None:
    """The README's main command: a simulated camera + the proxy; also with the user's own video."""
    args = ["--seconds", "25"]
    if own_video:
        from facekit import make_video

        src = tmp_path / "mine.mp4"
        make_video(src, frames=25, audio=False)
        args += ["--source", str(src)]
    rtsp, http = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamproxy.cli",
            "demo",
            "--rtsp-port",
            str(rtsp),
            "--http-port",
            str(http),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    plaza_video = None if own_video else plaza.find_video()
    try:
        wait_ready(proc, http)
        assert probe(f"rtsp://127.0.0.1:{rtsp}/demo", "codec_name,width") == "h264,1280"
        if plaza_video is not None:
            shown = _read_bgr(f"rtsp://127.0.0.1:{rtsp}/demo", 40)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out
    assert f"rtsp://127.0.0.1:{rtsp}/demo" in out and f"http://127.0.0.1:{http}/" in out
    if plaza_video is None:
        return
    assert "a plaza seen from a wall camera" in out, out
    # Every pasted face of the plaza is masked in what the proxy serves. Each output frame is matched
    # to the clip frame it came from (the nearest thumbnail: the masks change a few percent of the
    # picture, the people move between frames), whose ground truth says where the faces are; there the
    # output differs from the clip (masked), and the detector that finds the face in the clip does not
    # find it in the output (the masks' blobs may score up to ~0.5: not a face).
    from streamproxy.config import DetectorConfig
    from streamproxy.engine.detect import create_detector

    det = create_detector(DetectorConfig(model="yunet", model_dir=model_dir, threads=1, input_width=1280))
    clip = _replay_bgr(plaza.cached_replay(plaza_video), plaza.N_FRAMES)
    thumbs = np.stack([_thumb(f) for f in clip])
    judged = matched = 0
    for frame in shown:
        diffs = np.abs(thumbs - _thumb(frame)).mean(axis=(1, 2))
        k = int(diffs.argmin())
        if diffs[k] > 4:  # not a clip frame (the slate before the first anonymized frame)
            continue
        matched += 1
        seen, raw_seen = det.detect_bgr(frame), det.detect_bgr(clip[k])
        for face in plaza.face_boxes(k):
            if face.occluded:
                continue
            b = face.box
            x1, y1, x2, y2 = int(b.x1), int(b.y1), int(b.x2), int(b.y2)
            assert any(d.box.iou(b) > 0.5 and d.score >= 0.7 for d in raw_seen), (k, face, raw_seen)
            change = np.abs(frame[y1:y2, x1:x2].astype(np.float32) - clip[k][y1:y2, x1:x2]).mean()
            assert change > 15, (k, face, change)
            assert not any(d.box.iou(b) > 0.3 and d.score >= 0.7 for d in seen), (k, face, seen)
            judged += 1
    assert matched >= 25 and judged >= 2 * matched, (matched, judged)


def _thumb(bgr: np.ndarray) -> np.ndarray:
    small = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (160, 90), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32)


def _read_bgr(url: str, n: int, timeout: float = 20.0) -> list[np.ndarray]:
    """Up to n decoded frames of an RTSP stream (over TCP), as BGR."""
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=(5, 5)) as c:
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="bgr24", threads=1))
            if len(frames) >= n or time.monotonic() > deadline:
                break
    return frames


def _replay_bgr(path: Path, n: int) -> list[np.ndarray]:
    """The first n frames of a simulated camera's replay file, as BGR."""
    codec = av.CodecContext.create("h264", "r")
    frames: list[np.ndarray] = []
    for data, _ in read_access_units(path):
        frames += [f.to_ndarray(format="bgr24", threads=1) for f in codec.decode(av.Packet(data))]
        if len(frames) >= n:
            break
    return frames[:n]


def test_demo_falls_back_to_the_synthetic_scene_without_the_plaza_video(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without opencv-doc's video the demo still runs, on the synthetic clip, and says why."""
    from streamproxy_sim import demo

    monkeypatch.setattr(plaza, "find_video", lambda: None)
    camera, scene = demo._camera(argparse.Namespace(source=None), tmp_path)
    assert not camera.running and camera.mode == "live" and camera.replay_file is None
    assert "synthetic" in scene
    err = capsys.readouterr().err
    assert "vtest.avi" in err and plaza.FETCH_COMMAND in err and "synthetic" in err
