"""The engine on real faces: masks them, keeps masking through detector misses, and fails closed.

Video frames go the live way in (`push_pending`, rendered as the encoder thread would); with the
detector on every frame (or failing) each frame leaves at once.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from facekit import background, changed_fraction, paste_face

from streamproxy.config import DetectorConfig, EngineConfig
from streamproxy.engine.anonymizer import Anonymizer
from streamproxy.engine.detect import create_detector
from streamproxy.types import AnonymizedFrame, Detection


class ScriptedDetector:
    """Wraps the real detector; misses (returns []) or raises on chosen calls."""

    def __init__(
        self, real: object | None, miss: frozenset[int] | set[int] = frozenset(), fail: set[int] | None = None
    ) -> None:
        self.real = real
        self.miss = miss
        self.fail = fail
        self.calls = 0
        self.input_width = 640
        self.last_ms = 0.0

    def _run(self, fn: str, arg: object) -> list[Detection]:
        i = self.calls
        self.calls += 1
        if self.fail is None or i in self.fail:
            raise RuntimeError("detector broken on purpose")
        if i in self.miss:
            return []
        return getattr(self.real, fn)(arg)

    def detect_frame(self, frame: av.VideoFrame) -> list[Detection]:
        return self._run("detect_frame", frame)

    def detect_bgr(self, img: np.ndarray) -> list[Detection]:
        return self._run("detect_bgr", img)


@pytest.fixture(scope="module")
def detector(model_dir: Path) -> object:
    return create_detector(DetectorConfig(model_dir=model_dir, input_width=640))


def _frame(img: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p", threads=1)


def _bgr(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="bgr24", threads=1)


def _live(eng: Anonymizer, frame: av.VideoFrame, t: float) -> AnonymizedFrame:
    """One frame the live way, the detector due on it (detect_every 1, or failing): it leaves at once."""
    (pending,) = eng.push_pending(frame, t)
    return pending.render()


def test_masks_a_real_face_in_a_video_frame(detector: object) -> None:
    img = background(640, 360)
    box = paste_face(img, 250, 80, 120)
    frame = _frame(img)
    assert detector.detect_frame(frame), "the test photo must show a detectable face"  # type: ignore[attr-defined]
    eng = Anonymizer(EngineConfig(), detector=detector)  # type: ignore[arg-type]
    res = _live(eng, frame, 0.0)
    assert res.frame is not None and not res.fail_closed and res.faces == 1
    out = _bgr(res.frame)
    assert changed_fraction(_bgr(frame), out, box) > 0.8
    assert detector.detect_bgr(out) == []  # type: ignore[attr-defined]
    # The decoder's frame is never modified in place.
    assert np.array_equal(frame.to_ndarray(), _frame(img).to_ndarray())


def test_moving_face_stays_masked_through_detector_misses(detector: object) -> None:
    """A face crossing the frame, followed for a second; then the detector misses it on 15 frames
    (0.6 s < 1 s coast)."""
    fps = 25
    missed = set(range(25, 40))
    scripted = ScriptedDetector(detector, miss=missed, fail=set())
    eng = Anonymizer(EngineConfig(), detector=scripted)  # type: ignore[arg-type]
    for i in range(50):
        img = background(640, 360)
        box = paste_face(img, 40 + i * 8, 60 + i, 110)
        frame = _frame(img)
        res = _live(eng, frame, i / fps)
        assert res.frame is not None and not res.fail_closed
        out = _bgr(res.frame)
        frac = changed_fraction(_bgr(frame), out, box)
        assert frac > 0.8, f"frame {i} (missed={i in missed}): only {frac:.2f} of the face masked"
        assert detector.detect_bgr(out) == [], f"a face is detectable in output frame {i}"  # type: ignore[attr-defined]


def test_mask_expires_after_coast_time(detector: object) -> None:
    cfg = EngineConfig.model_validate({"tracker": {"coast_seconds": 0.2}})
    scripted = ScriptedDetector(detector, miss=set(range(1, 100)), fail=set())
    eng = Anonymizer(cfg, detector=scripted)  # type: ignore[arg-type]
    img = background(640, 360)
    paste_face(img, 250, 80, 120)
    assert _live(eng, _frame(img), 0.0).tracks == 1
    assert _live(eng, _frame(img), 0.1).tracks == 1  # coasting
    assert _live(eng, _frame(img), 1.0).tracks == 0  # coast time over


@pytest.mark.parametrize("every", [1, 3])
def test_fail_closed_when_the_detector_raises(detector: object, every: int) -> None:
    cfg = EngineConfig(detect_every=every)
    eng = Anonymizer(cfg, detector=ScriptedDetector(detector, fail=None))  # type: ignore[arg-type]
    img = background(640, 360)
    box = paste_face(img, 250, 80, 120)
    for i in range(6):
        frame = _frame(img)
        res = _live(eng, frame, i / 25)  # a failing detector runs on every frame, whatever the cadence
        assert res.fail_closed and res.fail_reason == "detector_error"
        assert res.frame is not None
        out = _bgr(res.frame)
        assert changed_fraction(_bgr(frame), out, box) > 0.9
        assert detector.detect_bgr(out) == []  # type: ignore[attr-defined]
    assert eng.stats.fail_closed_frames == 6


def test_fail_closed_drop_action(detector: object) -> None:
    cfg = EngineConfig.model_validate({"fail_closed": {"action": "drop"}})
    eng = Anonymizer(cfg, detector=ScriptedDetector(detector, fail=None))  # type: ignore[arg-type]
    img = background(320, 240)
    paste_face(img, 100, 50, 80)
    res = _live(eng, _frame(img), 0.0)
    assert res.frame is None and res.fail_closed
    out, _faces, failed = eng.process_image(img)
    assert out is None and failed
    assert eng.stats.dropped_frames == 2


def test_recovers_after_detector_failure(detector: object) -> None:
    scripted = ScriptedDetector(detector, fail={0, 1})
    eng = Anonymizer(EngineConfig(detect_every=5), detector=scripted)  # type: ignore[arg-type]
    img = background(640, 360)
    paste_face(img, 250, 80, 120)
    released = [[p.render() for p in eng.push_pending(_frame(img), i / 25)] for i in range(4)]
    # Failing runs are retried on every frame (not only every 5th), so the first good run ends
    # fail-closed mode; then the cadence holds frame 3 for the next run.
    assert [[r.fail_closed for r in out] for out in released] == [[True], [True], [False], []]
    assert released[2][0].detector_ran and released[2][0].tracks == 1
    (last,) = [p.render() for p in eng.flush_pending()]
    assert not last.fail_closed and last.tracks == 1


def test_missing_model_fails_closed(tmp_path: Path) -> None:
    cfg = EngineConfig(detector=DetectorConfig(model_dir=tmp_path))
    eng = Anonymizer(cfg)
    assert eng.detector is None and "streamproxy models fetch" in eng.detector_error
    img = background(320, 240)
    box = paste_face(img, 100, 50, 80)
    frame = _frame(img)
    res = _live(eng, frame, 0.0)
    assert res.fail_closed and res.fail_reason == "model_missing" and res.frame is not None
    assert changed_fraction(_bgr(frame), _bgr(res.frame), box) > 0.9


def test_still_image_keeps_alpha_and_grey(detector: object) -> None:
    eng = Anonymizer(EngineConfig(), detector=detector)  # type: ignore[arg-type]
    img = background(400, 300)
    box = paste_face(img, 120, 60, 130)
    bgra = np.dstack([img, np.full(img.shape[:2], 200, np.uint8)])
    out, faces, failed = eng.process_image(bgra)
    assert out is not None and faces == 1 and not failed
    assert out.shape == bgra.shape and (out[:, :, 3] == 200).all()
    assert changed_fraction(img, out[:, :, :3], box) > 0.8
    grey = img.mean(axis=2).astype(np.uint8)
    out2, _, _ = eng.process_image(grey)
    assert out2 is not None and out2.shape == grey.shape


def test_detect_phase_spreads_cameras_over_the_cadence_cycle(detector: object) -> None:
    """Cameras in one process run their detector on different frames (pipeline sets the phase)."""
    img = background(320, 240)
    ran: dict[float, list[int]] = {}
    for phase in (0.0, 0.5):
        scripted = ScriptedDetector(detector, fail=set())
        eng = Anonymizer(EngineConfig(detect_every=4), detector=scripted, detect_phase=phase)  # type: ignore[arg-type]
        ran[phase] = []
        for i in range(8):
            before = eng.stats.detector_runs
            eng.push_pending(_frame(img), i / 25)
            if eng.stats.detector_runs > before:
                ran[phase].append(i)
    assert ran[0.0] == [0, 4] and ran[0.5] == [2, 6]


class _Events:
    """Records what the engine tells the camera's metrics (EngineEvents)."""

    def __init__(self) -> None:
        self.detections: list[tuple[float, int]] = []
        self.fail_closed: list[str] = []

    def detection(self, seconds: float, faces: int) -> None:
        self.detections.append((seconds, faces))

    def fail_closed_frame(self, reason: str) -> None:
        self.fail_closed.append(reason)


def test_events_are_counted_once_where_they_happen(detector: object) -> None:
    """Each detector run and each fail-closed frame is counted once, by the engine, and its listener
    (live: the camera's metrics) hears of exactly those, so the status and Prometheus agree."""
    scripted = ScriptedDetector(detector, fail={1})
    events = _Events()
    eng = Anonymizer(EngineConfig(detect_every=1), detector=scripted, events=events)  # type: ignore[arg-type]
    img = background(640, 360)
    paste_face(img, 250, 80, 120)
    # Live path (look-ahead): run 0 ok, run 1 raises (fails closed), run 2 recovers.
    for i in range(3):
        eng.push_pending(_frame(img), i / 25)
    assert eng.stats.detector_runs == len(events.detections) == 2
    assert eng.stats.faces_detected == sum(f for _s, f in events.detections) == 2
    assert eng.stats.fail_closed_frames == len(events.fail_closed) == 1
    assert events.fail_closed == ["detector_error"]
    assert all(s > 0 for s, _f in events.detections)  # seconds, not milliseconds
    assert sum(s for s, _f in events.detections) == pytest.approx(eng.stats.detector_ms_total / 1000)
