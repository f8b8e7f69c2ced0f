"""The latency controller's decisions (pure logic, simulated clock)."""

from __future__ import annotations

from streamproxy.pipeline import BAD_SETTING_S, MAX_DETECT_EVERY, MIN_INPUT_WIDTH, LatencyController


def controller(detect_every: int = 1, width: int = 1280) -> LatencyController:
    return LatencyController(
        budget_ms=150, detect_every=detect_every, input_width=width, max_input_width=width, base_detect_every=1
    )


def run(c: LatencyController, t0: float, seconds: float, latency_ms: float, work_ms: float) -> float:
    """Feed 25 fps of observations; returns the time reached."""
    t = t0
    for _ in range(int(seconds * 25)):
        t += 0.04
        c.observe(latency_ms, t, work_ms, 40.0)
    return t


def test_latency_over_budget_steps_cadence_then_resolution_down_to_the_floor() -> None:
    c = controller()
    run(c, 0.0, 30, latency_ms=140, work_ms=10)
    assert c.detect_every == MAX_DETECT_EVERY
    assert c.input_width == MIN_INPUT_WIDTH


def test_a_busy_worker_backs_off_before_any_frame_is_late() -> None:
    c = controller()
    run(c, 0.0, 2, latency_ms=40, work_ms=36)  # latency fine, but 36 of every 40 ms busy
    assert c.detect_every >= 2


def test_a_lost_frame_backs_off() -> None:
    c = controller()
    t = run(c, 0.0, 1.5, latency_ms=30, work_ms=20)
    assert c.detect_every == 1
    c.dropped(t)
    run(c, t, 1.1, latency_ms=30, work_ms=20)
    assert c.detect_every == 2


def test_steps_back_up_when_there_is_room_but_not_into_a_setting_that_overloaded() -> None:
    c = controller()
    t = run(c, 0.0, 1.5, latency_ms=30, work_ms=36)  # overloaded at every frame
    assert c.detect_every == 2
    # Plenty of room now (less work at the lower cadence): it must not go back to 1 for BAD_SETTING_S.
    t = run(c, t, BAD_SETTING_S - 5, latency_ms=20, work_ms=12)
    assert c.detect_every == 2
    run(c, t, 10, latency_ms=20, work_ms=12)
    assert c.detect_every == 1


def test_a_comfortable_camera_is_left_alone() -> None:
    c = controller()
    run(c, 0.0, 20, latency_ms=30, work_ms=25)  # between the thresholds
    assert (c.detect_every, c.input_width) == (1, 1280)


def test_resolution_recovers_before_cadence() -> None:
    c = controller()
    c.detect_every, c.input_width = 3, 704
    seen = []
    t = 0.0
    for _ in range(20 * 25):
        t += 0.04
        if c.observe(10, t, 5, 40.0):
            seen.append(c.setting)
    assert seen[-1] == (1, 1280)
    first_full = seen.index((3, 1280))  # width all the way back first ...
    assert all(every == 3 for every, _ in seen[: first_full + 1])  # ... before any cadence step


def test_long_frames_shrink_the_picture_first() -> None:
    """Detector runs that take over 1.75 frame intervals would overflow the 2-frame mailbox: running
    the detector less often does not shorten one run, a smaller picture does."""
    c = controller(detect_every=3)
    t = 0.0
    for i in range(40):
        t += 0.04
        c.observe(40, t, work_ms=20, interval_ms=40.0, frame_work_ms=90 if i % 3 == 0 else 8)
    assert c.input_width < 1280 and c.detect_every == 3
