"""Tracker: association, prediction, coasting, smoothing and mask geometry on scripted boxes."""

from __future__ import annotations

import random
import statistics

from streamproxy.config import TrackerConfig
from streamproxy.engine import track
from streamproxy.engine.track import Tracker
from streamproxy.types import Box, Detection, Track

FPS = 25.0
W, H = 1280, 720


def contains(outer: Box, inner: Box, eps: float = 1e-6) -> bool:
    return (
        outer.x1 <= inner.x1 + eps
        and outer.y1 <= inner.y1 + eps
        and outer.x2 >= inner.x2 - eps
        and outer.y2 >= inner.y2 - eps
    )


def face_at(i: int, x0: float = 100.0, y0: float = 300.0, vx: float = 200.0, vy: float = 0.0) -> Box:
    """A 80x100 face moving at (vx, vy) px/s, at frame i."""
    t = i / FPS
    return Box.from_center(x0 + vx * t, y0 + vy * t, 80.0, 100.0)


def det(b: Box) -> list[Detection]:
    return [Detection(b, 0.9)]


def test_first_sight_is_masked() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    out = tr.update(det(face_at(0)), 0.0, W, H)
    assert len(out) == 1
    assert out[0].hits == 1 and not out[0].coasting
    assert contains(out[0].mask, face_at(0))


def test_empty_and_none_without_tracks() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    assert tr.update(None, 0.0, W, H) == []
    assert tr.update([], 0.04, W, H) == []


def test_coasting_keeps_mask_on_moving_face_then_expires() -> None:
    cfg = TrackerConfig(coast_seconds=1.0)
    tr = Tracker(cfg, mask_scale=1.3)
    ids = set()
    # Followed for 1.2 s: a lost track is kept as long as it had been followed, up to coast_seconds.
    for i in range(30):
        out = tr.update(det(face_at(i)), i / FPS, W, H)
        assert len(out) == 1
        ids.add(out[0].track_id)
    # The detector misses the face for 0.8 s (< coast_seconds): still masked, mask on the true face.
    last_seen = 29 / FPS
    i = 30
    while (i / FPS) - last_seen < 0.8:
        out = tr.update([], i / FPS, W, H)
        assert len(out) == 1, f"frame {i}: track lost while coasting"
        assert out[0].coasting and out[0].misses == i - 29
        assert contains(out[0].mask, face_at(i)), f"frame {i}: {out[0].mask} does not cover {face_at(i)}"
        ids.add(out[0].track_id)
        i += 1
    assert len(ids) == 1
    # Past coast_seconds: gone.
    out = tr.update([], last_seen + 1.05, W, H)
    assert out == []
    assert tr.track_count == 0


def test_reacquired_after_miss_keeps_id() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    first = tr.update(det(face_at(0)), 0.0, W, H)[0].track_id
    for i in range(1, 8):
        tr.update(det(face_at(i)), i / FPS, W, H)
    for i in range(8, 12):
        tr.update([], i / FPS, W, H)
    out = tr.update(det(face_at(12)), 12 / FPS, W, H)
    assert [t.track_id for t in out] == [first]
    assert not out[0].coasting and out[0].misses == 0


def test_coasting_mask_follows_the_face_within_the_bound() -> None:
    """A fast face (5 face widths a second) lost for most of a second: the mask moves with the
    prediction and stays within the bounded margin, where the old mask (the union of where the face
    was and where it may be now, grown 2 faces per side) spanned 700 px of a 1280-px picture."""
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    for i in range(30):
        tr.update(det(face_at(i, vx=400.0)), i / FPS, W, H)
    widest = (track.COAST_PATH_FACES + 2 * track.MAX_MARGIN_FACES) * 100.0 + 1e-6  # the face is 80 x 100
    for i in range(30, 52):
        out = tr.update([], i / FPS, W, H)
        assert len(out) == 1, f"frame {i}: lost"
        m = out[0].mask
        assert contains(m, face_at(i, vx=400.0)), f"frame {i}: {m} does not cover the face"
        assert m.width <= widest and m.height <= widest, f"frame {i}: {m} is wider than the bound"
    assert out[0].margin == track.MAX_MARGIN_FACES  # grown to the cap, not past it


def test_crossing_faces_keep_distinct_ids() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)

    def a(i: int) -> Box:
        return face_at(i, x0=200.0, y0=300.0, vx=300.0)

    def b(i: int) -> Box:
        return face_at(i, x0=1000.0, y0=320.0, vx=-300.0)

    out = tr.update([Detection(a(0), 0.9), Detection(b(0), 0.9)], 0.0, W, H)
    assert len(out) == 2
    id_a = min(out, key=lambda t: t.box.cx).track_id
    id_b = max(out, key=lambda t: t.box.cx).track_id
    assert id_a != id_b
    for i in range(1, 60):  # they cross around frame 33
        dets = [Detection(b(i), 0.9), Detection(a(i), 0.9)]
        out = tr.update(dets, i / FPS, W, H)
        assert len(out) == 2, f"frame {i}: {out}"
        by_id = {t.track_id: t for t in out}
        assert set(by_id) == {id_a, id_b}, f"frame {i}: ids {set(by_id)}"
        assert abs(by_id[id_a].box.cx - a(i).cx) < 10, f"frame {i}: A's track follows {by_id[id_a].box}"
        assert abs(by_id[id_b].box.cx - b(i).cx) < 10, f"frame {i}: B's track follows {by_id[id_b].box}"


def test_detect_every_3_keeps_mask_on_moving_face() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    ids = set()
    for i in range(75):
        face = face_at(i, vx=300.0, vy=60.0)
        dets = det(face) if i % 3 == 0 else None
        out = tr.update(dets, i / FPS, W, H)
        assert len(out) == 1, f"frame {i}"
        assert contains(out[0].mask, face), f"frame {i}: {out[0].mask} does not cover {face}"
        assert not out[0].coasting
        ids.add(out[0].track_id)
    assert len(ids) == 1
    # Prediction, not just coverage: between detector runs the box follows the face.
    assert abs(out[0].box.cx - face_at(74, vx=300.0, vy=60.0).cx) < 5


def test_predict_only_frames_do_not_expire_tracks() -> None:
    """With detections=None the detector has not looked: a track it has not missed stays."""
    tr = Tracker(TrackerConfig(coast_seconds=0.0), mask_scale=1.3)
    tr.update(det(face_at(0, vx=0.0)), 0.0, W, H)
    assert len(tr.update(None, 0.04, W, H)) == 1
    assert len(tr.update(None, 0.08, W, H)) == 1
    assert tr.update([], 0.12, W, H) == []


def test_smoothing_reduces_jitter() -> None:
    rng = random.Random(7)
    tr = Tracker(TrackerConfig(smoothing=0.6), mask_scale=1.3)
    raw_err, smooth_err = [], []
    for i in range(100):
        true = face_at(i, vx=120.0)
        jx, jy, jw = rng.gauss(0, 4), rng.gauss(0, 4), rng.gauss(0, 3)
        noisy = Box.from_center(true.cx + jx, true.cy + jy, true.width + jw, true.height + jw)
        out = tr.update(det(noisy), i / FPS, W, H)
        assert len(out) == 1
        assert contains(out[0].mask, noisy), "the mask must always contain the raw detection"
        if i >= 10:
            raw_err.append(noisy.cx - true.cx)
            smooth_err.append(out[0].box.cx - true.cx)
    assert statistics.pstdev(smooth_err) < 0.8 * statistics.pstdev(raw_err)
    # No systematic lag behind a steadily moving face.
    assert abs(statistics.fmean(smooth_err)) < 2.0


def test_smoothing_zero_follows_detections() -> None:
    tr = Tracker(TrackerConfig(smoothing=0.0, speed_grow=0.0), mask_scale=1.0)
    for i in range(5):
        b = face_at(i)
        out = tr.update(det(b), i / FPS, W, H)
        assert abs(out[0].box.cx - b.cx) < 1e-6 and abs(out[0].box.width - b.width) < 1e-6


def test_lagging_smoothing_never_leaves_face_outside_mask() -> None:
    """A face that jumps (a turn, a fast step): mask still contains the detection on that frame."""
    tr = Tracker(TrackerConfig(smoothing=0.95), mask_scale=1.0)
    for i in range(10):
        tr.update(det(face_at(i, vx=0.0)), i / FPS, W, H)
    jumped = Box.from_center(face_at(0).cx + 60, face_at(0).cy + 20, 80, 100)
    out = tr.update(det(jumped), 10 / FPS, W, H)
    assert len(out) == 1
    assert contains(out[0].mask, jumped)


def test_fast_face_matched_by_centre_distance() -> None:
    # Boxes that barely overlap (IoU below iou_match) are still the same face when the centres are close.
    tr = Tracker(TrackerConfig(iou_match=0.3, center_match=1.0), mask_scale=1.3)
    a = Box.from_center(300, 300, 80, 100)
    b = Box.from_center(360, 300, 80, 100)  # 0.75 face widths further, IoU 0.14
    assert a.iou(b) < 0.3
    id0 = tr.update(det(a), 0.0, W, H)[0].track_id
    out = tr.update(det(b), 0.04, W, H)
    assert [t.track_id for t in out] == [id0]


def test_far_detection_starts_new_track() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    tr.update(det(Box.from_center(300, 300, 80, 100)), 0.0, W, H)
    out = tr.update(det(Box.from_center(900, 300, 80, 100)), 0.04, W, H)
    assert len(out) == 2
    assert sum(t.coasting for t in out) == 1


def _masks_at_speed(vx: float) -> tuple[Track, Track]:
    """The mask on the last frame the face was seen, and two frames later, the detector not run."""
    tr = Tracker(TrackerConfig(speed_grow=0.25), mask_scale=1.3)
    out: list[Track] = []
    for i in range(10):
        out = tr.update(det(face_at(i, x0=400.0, vx=vx)), i / FPS, W, H)
    seen = out[0]
    tr.update(None, 10 / FPS, W, H)
    return seen, tr.update(None, 11 / FPS, W, H)[0]


def test_mask_grows_with_speed_and_time_unseen_within_the_bound() -> None:
    still_seen, still = _masks_at_speed(0.0)
    fast_seen, fast = _masks_at_speed(320.0)  # 4 face widths per second
    assert abs(still_seen.mask.width - 80 * 1.3) < 1.0 and abs(still_seen.mask.height - 100 * 1.3) < 1.0
    assert fast_seen.mask.width > still_seen.mask.width + 40  # speed: the next run may show it further on
    # Two frames without a look: the margin grows with time, more for the fast face, up to the cap.
    assert still.mask.width > still_seen.mask.width
    assert fast.margin > still.margin > 0
    assert fast.mask.width > still.mask.width + 5
    assert fast.margin <= track.MAX_MARGIN_FACES
    assert abs(fast.vx - 320.0) < 5.0


def test_a_one_frame_detection_leaves_no_mask_behind_for_a_second() -> None:
    """A detection seen once (often a false one) is kept MIN_COAST_S, not coast_seconds; a face
    followed for a second is kept up to coast_seconds."""
    tr = Tracker(TrackerConfig(coast_seconds=1.0), mask_scale=1.3)
    tr.update(det(face_at(0, vx=0.0)), 0.0, W, H)
    kept = [i for i in range(1, 25) if tr.update([], i / FPS, W, H)]
    assert kept == [i for i in range(1, 25) if i / FPS <= track.MIN_COAST_S + 1e-9]
    tr = Tracker(TrackerConfig(coast_seconds=1.0), mask_scale=1.3)
    for i in range(30):
        tr.update(det(face_at(i, vx=0.0)), i / FPS, W, H)
    kept = [i for i in range(30, 70) if tr.update([], i / FPS, W, H)]
    assert kept == [i for i in range(30, 70) if i / FPS - 29 / FPS <= 1.0]  # 1 s after the last detection
    assert len(kept) >= 24


def test_min_hits() -> None:
    tr = Tracker(TrackerConfig(min_hits=3), mask_scale=1.3)
    assert tr.update(det(face_at(0)), 0.0, W, H) == []
    assert tr.update(det(face_at(1)), 1 / FPS, W, H) == []
    out = tr.update(det(face_at(2)), 2 / FPS, W, H)
    assert len(out) == 1 and out[0].hits == 3
    # Once confirmed, a track is masked while it coasts too.
    assert len(tr.update([], 3 / FPS, W, H)) == 1


def test_mask_clipped_to_frame() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.5)
    out = tr.update(det(Box(-30, -20, 50, 80)), 0.0, W, H)
    m = out[0].mask
    assert m.x1 == 0 and m.y1 == 0 and m.x2 <= W and m.y2 <= H
    out = tr.update(det(Box(W - 40, H - 50, W + 40, H + 50)), 0.0, W, H)
    for t in out:
        assert 0 <= t.mask.x1 <= t.mask.x2 <= W and 0 <= t.mask.y1 <= t.mask.y2 <= H


def test_track_leaving_frame_is_not_returned_with_empty_mask() -> None:
    tr = Tracker(TrackerConfig(coast_seconds=2.0, speed_grow=0.0), mask_scale=1.0)
    for i in range(5):
        tr.update(det(face_at(i, x0=W - 100, vx=1000.0)), i / FPS, W, H)
    out = tr.update([], 1.5, W, H)
    for t in out:
        assert t.mask.area > 0


def test_resolution_change_resets() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    tr.update(det(face_at(0)), 0.0, W, H)
    assert tr.update(None, 0.04, 640, 360) == []
    assert tr.track_count == 0


def test_reset_and_ids_increase() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    a = tr.update(det(face_at(0)), 0.0, W, H)[0].track_id
    tr.reset()
    assert tr.update(None, 0.04, W, H) == []
    b = tr.update(det(face_at(2)), 0.08, W, H)[0].track_id
    assert b > a


def test_clock_going_backwards_keeps_tracks() -> None:
    tr = Tracker(TrackerConfig(), mask_scale=1.3)
    for i in range(5):
        tr.update(det(face_at(i)), 100 + i / FPS, W, H)
    out = tr.update(None, 0.0, W, H)  # pts restart
    assert len(out) == 1
    out = tr.update(det(face_at(6)), 2 / FPS, W, H)
    assert len(out) == 1 and out[0].hits == 6


def test_bulk_video_does_not_grow_the_mask_of_a_face_seen_on_its_frame() -> None:
    """Bulk video detects every frame (its temporal fill interpolates between real detections), so
    a fast face's mask on a frame it was seen on is the face's own; live grows it with the speed."""
    masks = {}
    for grow in (True, False):
        tr = Tracker(TrackerConfig(speed_grow=0.25), mask_scale=1.3)
        tr.offline = not grow
        for i in range(10):
            out = tr.update(det(face_at(i, x0=400.0, vx=320.0)), i / FPS, W, H)
        masks[grow] = out[0].mask
    assert abs(masks[False].width - 80 * 1.3) < 1.0
    assert masks[True].width > masks[False].width + 40
