"""Bulk video's detection ahead of the engine (engine/ahead.py): several single-threaded sessions
on several frames at once, the results in frame order, a worker's error failing its frame closed."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from facekit import background, make_video, paste_face

from streamproxy.anonymize import collect_jobs, iter_results
from streamproxy.config import DetectorConfig, EngineConfig
from streamproxy.engine import ahead as ahead_mod
from streamproxy.engine.ahead import MAX_SESSIONS, DetectAhead, ahead_sessions
from streamproxy.engine.detect import OnnxFaceDetector, create_detector


def _frames(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def _ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("detect-ahead")]


def test_sessions_only_with_automatic_threads_and_every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ahead_mod, "usable_cores", lambda: 2)
    assert ahead_sessions(DetectorConfig(), 1) == 2
    assert ahead_sessions(DetectorConfig(threads=2), 1) == 1  # the user's threads: one session, as asked
    assert ahead_sessions(DetectorConfig(), 2) == 1  # a cadence: results could not be matched in order
    monkeypatch.setattr(ahead_mod, "usable_cores", lambda: 64)
    assert ahead_sessions(DetectorConfig(), 1) == MAX_SESSIONS
    monkeypatch.setattr(ahead_mod, "usable_cores", lambda: 1)
    assert ahead_sessions(DetectorConfig(), 1) == 1


def test_each_frame_gets_its_own_detections_while_two_frames_are_detected_at_once(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "moving.mp4"
    make_video(src, frames=12, audio=False)  # the face moves 6 px a frame: every frame's box differs
    frames = _frames(src)
    cfg = DetectorConfig(model_dir=model_dir, input_width=640)
    plain = create_detector(cfg.model_copy(update={"threads": 1}))
    expected = [plain.detect_frame(f) for f in frames]
    assert all(len(d) == 1 for d in expected)
    assert len({round(d[0].box.x1) for d in expected}) == len(frames)

    # The first two detections wait for each other: they pass only if two workers run at once.
    both = threading.Barrier(2, timeout=60)
    calls = {"n": 0}
    lock = threading.Lock()
    real = OnnxFaceDetector.detect_frame

    def gated(self: OnnxFaceDetector, frame: av.VideoFrame) -> Any:
        with lock:
            calls["n"] += 1
            first_two = calls["n"] <= 2
        if first_two:
            both.wait()
        return real(self, frame)

    monkeypatch.setattr(OnnxFaceDetector, "detect_frame", gated)
    pool = DetectAhead(cfg, 2)
    with pool.running():
        for f in frames:
            pool.submit(f)
        got = [pool.detect_frame(f) for f in frames]
    assert got == expected
    assert not both.broken
    assert _ahead_threads() == []


def test_outside_a_video_it_runs_on_the_callers_thread(model_dir: Path) -> None:
    img = background(640, 360)
    paste_face(img, 200, 60, 130)
    cfg = DetectorConfig(model_dir=model_dir, input_width=640)
    pool = DetectAhead(cfg, 2)
    assert pool.detect_bgr(img) == create_detector(cfg.model_copy(update={"threads": 1})).detect_bgr(img)
    assert len(pool._members) == 1  # the second session is loaded for the first video only
    assert _ahead_threads() == []


def test_a_worker_error_fails_that_frame_closed_and_the_video_goes_on(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "v.mp4"
    make_video(src, frames=12, audio=False)
    broken_pts = _frames(src)[5].pts
    real = OnnxFaceDetector.detect_frame

    def breaks_on_one(self: OnnxFaceDetector, frame: av.VideoFrame) -> Any:
        if frame.pts == broken_pts:
            raise RuntimeError("broken on purpose")
        return real(self, frame)

    monkeypatch.setattr(OnnxFaceDetector, "detect_frame", breaks_on_one)
    cfg = EngineConfig.model_validate(
        {
            "detector": {"model_dir": str(model_dir)},
            "obfuscation": {"style": "solid"},
            "fail_closed": {"action": "obfuscate"},
        }
    )
    pool = DetectAhead(cfg.detector, 2)
    jobs, errors = collect_jobs([src], tmp_path / "out")
    assert not errors
    [res] = list(iter_results(jobs, cfg, keep_audio=False, detector=pool))
    assert res.ok, res.error
    assert (res.frames, res.fail_closed_frames) == (12, 1)
    out = [f.to_ndarray(format="bgr24", threads=1) for f in _frames(tmp_path / "out" / "v.mp4")]
    assert len(out) == 12
    # The broken frame is one solid colour (the whole frame filled); the others keep the background.
    spread = [float(np.std(f.astype(np.float32))) for f in out]
    assert spread[5] < 3.0, spread
    assert min(s for i, s in enumerate(spread) if i != 5) > 20.0, spread
    plain = create_detector(cfg.detector.model_copy(update={"input_width": 640}))
    assert all(plain.detect_bgr(f) == [] for f in out)
    assert _ahead_threads() == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priority is Linux's")
def test_a_batch_detects_ahead_on_workers_at_the_engines_priority(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default batch (automatic threads) uses the workers, and they do not inherit the decode
    thread's lower priority: detection is what every frame waits for."""
    monkeypatch.setattr(ahead_mod, "usable_cores", lambda: 2)
    src = tmp_path / "v.mp4"
    make_video(src, frames=10, audio=False)
    seen: list[tuple[str, int]] = []
    real = OnnxFaceDetector.detect_frame

    def record(self: OnnxFaceDetector, frame: av.VideoFrame) -> Any:
        seen.append(
            (threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        )
        return real(self, frame)

    monkeypatch.setattr(OnnxFaceDetector, "detect_frame", record)
    engine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    cfg = EngineConfig.model_validate({"detector": {"model_dir": str(model_dir)}})
    jobs, _ = collect_jobs([src], tmp_path / "out")
    [res] = list(iter_results(jobs, cfg, keep_audio=False))
    assert res.ok and res.frames == 10 and res.fail_closed_frames == 0
    assert len(seen) == 10
    assert {name for name, _ in seen} <= {"detect-ahead-0", "detect-ahead-1"}
    assert {prio for _, prio in seen} == {engine}
    assert _ahead_threads() == []
