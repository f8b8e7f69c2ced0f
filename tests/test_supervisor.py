"""The reconnect policy shared by ingest and publish: capped, doubling, jittered, reset when stable."""

from __future__ import annotations

from streamproxy.supervisor import Backoff


def waits(b: Backoff, ups: list[float]) -> list[float]:
    return [round(b.next_wait(up), 3) for up in ups]


def test_doubles_up_to_the_cap_and_starts_over_after_a_stable_session() -> None:
    b = Backoff(0.5, 4.0, stable_s=5.0, uniform=lambda lo, hi: 1.0)
    assert waits(b, [0, 0, 0, 0, 0]) == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert waits(b, [5.0, 0]) == [0.5, 1.0], "a session up for stable_s resets the wait"
    assert waits(b, [4.9]) == [2.0], "a shorter one does not"
    b.reset()
    assert waits(b, [0]) == [0.5]


def test_jitter_stays_within_ten_percent_and_differs_between_attempts() -> None:
    import random

    rng = random.Random(7)
    b = Backoff(1.0, 1.0, uniform=rng.uniform)
    got = [b.next_wait() for _ in range(200)]
    assert all(0.9 <= w <= 1.1 for w in got)
    assert len({round(w, 4) for w in got}) > 100, "lockstep retries would all wait the same"


def test_a_cap_below_the_first_wait_is_the_first_wait() -> None:
    b = Backoff(2.0, 1.0, uniform=lambda lo, hi: 1.0)
    assert waits(b, [0, 0]) == [2.0, 2.0]
