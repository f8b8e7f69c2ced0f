"""The privacy floor's arithmetic and the latency controller's decisions (pure logic, simulated clock)."""

from __future__ import annotations

import pytest

from streamproxy.config import PrivacyConfig
from streamproxy.live.controller import (
    BAD_SETTING_S,
    MAX_DETECT_EVERY,
    MIN_KEEP,
    FrameShedder,
    LatencyController,
    hold_frames_allowed,
    privacy_floor,
)

FLOOR = 1280


def controller(
    detect_every: int = 1, width: int = 1280, floor: int = 640, max_every: int = 3
) -> LatencyController:
    return LatencyController(
        budget_ms=150,
        detect_every=detect_every,
        input_width=width,
        max_input_width=width,
        base_detect_every=1,
        min_input_width=floor,
        max_detect_every=max_every,
    )


def run(c: LatencyController, t0: float, seconds: float, latency_ms: float, work_ms: float) -> float:
    """Feed 25 fps of observations; returns the time reached. Checks the floor on every frame."""
    t = t0
    for _ in range(int(seconds * 25)):
        t += 0.04
        c.observe(latency_ms, t, work_ms, 40.0)
        assert c.input_width >= c.min_input_width and c.detect_every <= c.max_detect_every
    return t


# --- the floor ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_face", "model", "side", "width"),
    [
        (18, "yunet", 1280, 1280),  # the default: a 720p camera's detector at native width
        (18, "yunet", 1920, 1920),  # 1080p needs the full 1920
        (36, "yunet", 1280, 640),  # faces twice as large: half the picture
        (24, "yunet", 1280, 960),  # 1280 * 18 / 24 = 960
        (25, "yunet", 1280, 928),  # 921.6, rounded up to 32
        (18, "centerface", 1280, 1280),
        (9, "yunet", 1280, 2560),  # smaller than YuNet sees at native: the picture is magnified
        (4, "yunet", 3840, 3840),  # capped at the detector's largest side
    ],
)
def test_floor_width_follows_from_the_smallest_face(
    min_face: float, model: str, side: int, width: int
) -> None:
    floor = privacy_floor(PrivacyConfig(min_face_px=min_face), model, side)
    assert floor.min_input_width == width
    assert floor.min_input_width % 32 == 0


def test_detector_gap_is_the_frames_that_can_wait_plus_the_allowed_unmasked_ones() -> None:
    # 150 ms budget at 25 fps, a 25 ms detector run, 5 ms encodes: planned 85 % of 150 = 127.5 ms;
    # the first frame of a group waits, then the run, then it is encoded first: two frames waiting:
    # 80 + 25 + 5 = 110; three: 120 + 25 + 5 = 150 > 127.5.
    assert hold_frames_allowed(150, 40, 25, 5) == 2
    assert hold_frames_allowed(150, 40, 40, 9) == 1  # 80 + 40 + 9 = 129 > 127.5
    assert hold_frames_allowed(150, 40, 30, 60) == 0  # a slow encoder: the group's last frame is late
    assert hold_frames_allowed(60, 40, 25, 5) == 0  # a tight budget: no waiting, the detector on every frame
    assert hold_frames_allowed(1000, 40, 25, 5) == MAX_DETECT_EVERY - 1
    strict = privacy_floor(PrivacyConfig(), "yunet", 1280)
    assert strict.max_detect_every(2) == 3
    assert strict.max_detect_every(0) == 1
    lax = privacy_floor(PrivacyConfig(max_unmasked_frames=2), "yunet", 1280)
    assert lax.max_detect_every(2) == 5
    assert lax.max_detect_every(5) == MAX_DETECT_EVERY


def test_a_configured_width_below_the_floor_is_raised() -> None:
    c = controller(width=640, floor=FLOOR)
    assert c.input_width == FLOOR and c.max_input_width == FLOOR


# --- the controller --------------------------------------------------------------------------


def test_overload_steps_cadence_then_resolution_to_the_floor_then_sheds_frames() -> None:
    c = controller(width=1280, floor=960, max_every=3)
    seen = []
    t = 0.0
    for _ in range(60 * 25):
        t += 0.04
        if c.observe(60, t, 45, 40.0):  # busy on every frame, whatever the setting
            seen.append(c.setting)
    assert seen[0] == (2, 1280, 1.0) and seen[1] == (3, 1280, 1.0), "cadence first"
    assert (3, 960, 1.0) in seen, "then the picture, down to the floor"
    assert all(w >= 960 and every <= 3 for every, w, _ in seen), "never below the floor"
    assert c.keep_ratio == MIN_KEEP and c.overloaded, "then frames are shed"
    first_shed = next(i for i, s in enumerate(seen) if s[2] < 1.0)
    assert seen[first_shed - 1][:2] == (3, 960), "shedding starts only at the floor"


def test_a_busy_worker_backs_off_before_any_frame_is_late() -> None:
    c = controller()
    run(c, 0.0, 2, latency_ms=40, work_ms=39)  # latency fine, but 39 of every 40 ms busy
    assert c.detect_every >= 2


def test_a_lost_frame_backs_off() -> None:
    c = controller()
    t = run(c, 0.0, 1.5, latency_ms=30, work_ms=20)
    assert c.detect_every == 1
    c.dropped(t)
    run(c, t, 1.1, latency_ms=30, work_ms=20)
    assert c.detect_every == 2


def test_late_frames_on_an_idle_worker_run_the_detector_more_often() -> None:
    """Frames waited too long for the next run (look-ahead): waiting less, not shedding, helps."""
    c = controller(detect_every=3)
    run(c, 0.0, 1.5, latency_ms=130, work_ms=15)
    assert c.detect_every == 2 and not c.overloaded


def test_steps_back_up_when_there_is_room_but_not_into_a_setting_that_overloaded() -> None:
    c = controller()
    t = run(c, 0.0, 1.5, latency_ms=30, work_ms=39)  # overloaded at every frame
    assert c.detect_every == 2
    # Plenty of room now (less work at the lower cadence): it must not go back to 1 for BAD_SETTING_S.
    t = run(c, t, BAD_SETTING_S - 5, latency_ms=20, work_ms=12)
    assert c.detect_every == 2
    run(c, t, 10, latency_ms=20, work_ms=12)
    assert c.detect_every == 1


def test_a_comfortable_camera_is_left_alone() -> None:
    c = controller()
    run(c, 0.0, 20, latency_ms=30, work_ms=25)  # between the thresholds
    assert c.setting == (1, 1280, 1.0)


def test_recovery_restores_the_frame_rate_first_then_the_picture_then_the_cadence() -> None:
    c = controller(floor=704)
    c.detect_every, c.input_width, c.keep_ratio = 3, 704, 0.4
    seen = []
    t = 0.0
    for _ in range(40 * 25):
        t += 0.04
        if c.observe(10, t, 5, 40.0):
            seen.append(c.setting)
    assert seen[-1] == (1, 1280, 1.0)
    full_rate = seen.index((3, 704, 1.0))
    assert all(s[:2] == (3, 704) for s in seen[:full_rate]), "frame rate back before anything else"
    full_width = seen.index((3, 1280, 1.0))
    assert all(s[0] == 3 for s in seen[: full_width + 1]), "then the picture, before any cadence step"


def test_long_frames_shrink_the_picture_first() -> None:
    """Detector runs that take over 4.5 frame intervals would overflow the 5-frame mailbox: running
    the detector less often does not shorten one run, a smaller picture does."""
    c = controller(detect_every=3)
    t = 0.0
    for i in range(40):
        t += 0.04
        c.observe(40, t, work_ms=20, interval_ms=40.0, frame_work_ms=200 if i % 3 == 0 else 8)
    assert c.input_width < 1280 and c.detect_every == 3


def test_long_frames_at_the_floor_do_not_shrink_below_it() -> None:
    c = controller(detect_every=3, floor=FLOOR)
    t = 0.0
    for i in range(400):
        t += 0.04
        c.observe(40, t, work_ms=20, interval_ms=40.0, frame_work_ms=200 if i % 3 == 0 else 8)
        assert c.input_width == FLOOR
    assert c.overloaded, "the CPU it needs is not there: frames are shed instead"


@pytest.mark.parametrize("ratio", [1.0, 0.8, 0.5, 0.2])
def test_shedding_keeps_the_ratio_evenly(ratio: float) -> None:
    s = FrameShedder()
    kept = [s.keep(ratio) for _ in range(100)]
    assert abs(sum(kept) - 100 * ratio) <= 1
    # Evenly spread: never more than ceil(1/ratio) frames in a row shed.
    gap, worst = 0, 0
    for k in kept:
        gap = 0 if k else gap + 1
        worst = max(worst, gap)
    assert worst <= round(1 / ratio)


# --- check-config's capacity estimate -----------------------------------------------------------


def test_check_config_warns_when_the_cameras_cannot_fit_at_their_floor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamproxy import cli
    from streamproxy.cli import _warn_capacity
    from streamproxy.config import parse_config

    monkeypatch.setattr(cli, "usable_cores", lambda: 2)

    def cfg(n: int, **privacy: float | bool) -> object:
        cams = [{"name": f"c{i}", "url": f"rtsp://127.0.0.1/{i}"} for i in range(n)]
        return parse_config({"cameras": cams, "privacy": privacy})

    _warn_capacity(cfg(1))  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert "detector >= 1280 px" in out.out and "warning" not in out.err and "note" not in out.err
    # Four fixed cameras fit with change gating (measured: 1.6 of 2 cores); a moving one would not.
    _warn_capacity(cfg(4))  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert "warning" not in out.err and "note: where the whole picture changes" in out.err
    _warn_capacity(cfg(4, change_gating=False))  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert "cannot all run at full frame rate" in out.err and "overload" in out.err
    _warn_capacity(cfg(6))  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert "cannot all run at full frame rate" in out.err
    # Larger smallest faces make a cheaper floor: the same six cameras fit.
    _warn_capacity(cfg(6, min_face_px=72))  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert "detector >= 320 px" in out.out and "warning" not in out.err


def test_while_shedding_a_larger_allowed_gap_is_taken_before_more_frames() -> None:
    c = controller(floor=FLOOR, max_every=1)
    c.keep_ratio = 0.4  # shed while the budget allowed no gap between runs
    c.set_floor(FLOOR, 3)  # the runs got faster: frames may now wait for the next one
    run(c, 0.0, 3, latency_ms=60, work_ms=10)
    assert c.detect_every == 3 and c.keep_ratio == 0.4, c.setting


def test_shedding_on_an_idle_worker_takes_frames_back_though_late_frames_are_lost() -> None:
    """Shed to 40 % while the worker is busy 5 ms of its 100: the frames lost as late are late because
    they wait longer between runs at the shed rate. Frames come back (every 5 s at most) instead of
    shedding more; a busy worker with the same losses keeps shedding."""
    c = controller(floor=FLOOR, max_every=2)
    c.detect_every, c.input_width, c.keep_ratio = 2, FLOOR, 0.4
    t = 0.0
    kept = [c.keep_ratio]
    for _ in range(35 * 25):
        t += 0.04
        shed = c.keep_ratio < 1.0
        if shed:
            c.dropped(t - 0.01)  # a late frame lost on every frame, while frames wait long at the shed rate
        c.observe(190 if shed else 80, t, 5 if shed else 12, 100.0 if shed else 40.0, 30)
        if c.keep_ratio != kept[-1]:
            kept.append(c.keep_ratio)
    assert kept[0] == 0.4 and kept[-1] == 1.0 and kept == sorted(kept), kept
    assert len(kept) <= 1 + 35 // 5, "at most one step every 5 s"

    busy = controller(floor=FLOOR, max_every=2)
    busy.detect_every, busy.input_width, busy.keep_ratio = 2, FLOOR, 0.4
    t = 0.0
    for _ in range(10 * 25):
        t += 0.04
        busy.dropped(t)
        busy.observe(190, t, 60, 100.0, 70)
    assert busy.keep_ratio <= 0.4


def test_one_lost_frame_at_the_floor_is_jitter_two_are_overload() -> None:
    """At the floor's cadence and width, one lost frame on a worker busy 60 % of the time does not shed
    a fifth of the frames; two within 2 s do."""
    c = controller(floor=FLOOR, max_every=2)
    c.detect_every, c.input_width = 2, FLOOR
    t = run(c, 0.0, 1.5, latency_ms=60, work_ms=24)
    c.dropped(t)
    t = run(c, t, 1.5, latency_ms=60, work_ms=24)
    assert c.keep_ratio == 1.0, c.setting
    t = run(c, t, 10.5, latency_ms=60, work_ms=24)  # quiet again
    c.dropped(t)
    c.dropped(t + 0.02)
    run(c, t, 1.5, latency_ms=60, work_ms=24)
    assert c.keep_ratio < 1.0, c.setting
