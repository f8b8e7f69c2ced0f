"""The supervisor shared by ingest and publish: the backoff (capped, doubling, jittered, reset when
stable), stall detection, and the two loops (a thread's, a task's) that drive them."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest

from streamproxy.supervisor import Attempt, Backoff, Outcome, Stalled, Supervisor, run_async, run_sync


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


def test_a_failure_with_its_own_cap_doubles_up_to_it_and_the_next_other_failure_is_back_under_the_cap() -> (
    None
):
    b = Backoff(0.5, 2.0, stable_s=5.0, uniform=lambda lo, hi: 1.0)
    assert [round(b.next_wait(0, 60.0), 3) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert waits(b, [0, 0]) == [2.0, 2.0], "a camera down (not 401) again: the normal cap at once"


def test_the_supervisor_asks_the_failure_for_its_cap() -> None:
    class Rejected(Exception):
        pass

    clock = FakeClock()
    sup = Supervisor(
        Backoff(1.0, 2.0, uniform=lambda lo, hi: 1.0),
        clock=clock,
        cap_for=lambda err: 30.0 if isinstance(err, Rejected) else None,
    )
    got = [sup.end(sup.begin(), None, Rejected()) for _ in range(6)]
    assert got == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert sup.end(sup.begin(), None, OSError()) == 2.0


# --- the loop: run_sync (ingest's thread) and run_async (publish's task) --------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fixed(initial: float = 0.01, cap: float = 0.08) -> Backoff:
    return Backoff(initial, cap, stable_s=5.0, uniform=lambda lo, hi: 1.0)


def test_a_stable_session_resets_the_backoff_an_unstable_one_does_not() -> None:
    clock = FakeClock()
    sup = Supervisor(fixed(), clock=clock)
    ups: list[float | None] = [None, None, 5.0, 1.0, None]  # how long each attempt stays up, then fails
    ends: list[tuple[int, float]] = []
    stop = threading.Event()

    def attempt(a: Attempt) -> Outcome:
        if a.number > len(ups):
            return "stop"
        up = ups[a.number - 1]
        if up is not None:
            a.up()
            clock.now += up
        raise ConnectionError("gone")

    run_sync(sup, attempt, stop, lambda a, err, wait: ends.append((a.number, round(wait, 3))))
    assert ends == [(1, 0.01), (2, 0.02), (3, 0.01), (4, 0.02), (5, 0.04)]


def test_restart_starts_over_at_once_and_resets_the_backoff() -> None:
    sup = Supervisor(fixed())
    script: list[Outcome | Exception] = [OSError("a"), OSError("b"), "restart", OSError("c"), "stop"]
    ends: list[tuple[str, float]] = []

    def attempt(a: Attempt) -> Outcome:
        step = script[a.number - 1]
        if isinstance(step, Exception):
            raise step
        return step

    run_sync(sup, attempt, threading.Event(), lambda a, err, wait: ends.append((str(err), round(wait, 3))))
    assert ends == [("a", 0.01), ("b", 0.02), ("None", 0.0), ("c", 0.01)]
    assert sup.attempts == 5


def test_sync_stall_an_attempt_that_reads_until_its_deadline_is_a_counted_failure() -> None:
    """A thread cannot be cancelled: its read waits until attempt.deadline, then check() raises."""
    sup = Supervisor(fixed(), stall_timeout_s=0.2)
    packets: queue.Queue[int] = queue.Queue()
    for i in range(5):
        packets.put(i)
    got: list[int] = []
    ends: list[tuple[int, BaseException | None]] = []

    def attempt(a: Attempt) -> Outcome:
        if a.number > 1:
            return "stop"
        while True:
            try:
                got.append(packets.get(timeout=max(0.0, a.remaining())))
                a.progress()
            except queue.Empty:
                a.check()

    run_sync(sup, attempt, threading.Event(), lambda a, err, wait: ends.append((a.number, err)))
    assert got == [0, 1, 2, 3, 4], "packets were progress"
    assert len(ends) == 1 and isinstance(ends[0][1], Stalled) and sup.stalls == 1


def test_sync_a_paused_wait_is_no_stall() -> None:
    sup = Supervisor(fixed(), stall_timeout_s=0.05)
    ends: list[object] = []

    def attempt(a: Attempt) -> Outcome:
        with a.paused():
            assert a.deadline == float("inf")
            threading.Event().wait(0.2)  # four stall timeouts, paused
        a.check()  # leaving the pause was progress: a whole stall timeout from here
        return "stop"

    run_sync(sup, attempt, threading.Event(), lambda a, err, wait: ends.append(err))
    assert ends == [] and sup.stalls == 0


def test_sync_stop_ends_the_loop_without_counting_the_interrupted_attempt() -> None:
    sup = Supervisor(fixed(initial=30.0, cap=30.0))
    stop = threading.Event()
    ends: list[object] = []

    def attempt(a: Attempt) -> Outcome:
        if a.number == 2:
            stop.set()
            raise OSError("interrupted by stop")
        raise OSError("first")

    t = threading.Thread(target=run_sync, args=(sup, attempt, stop, lambda a, e, w: ends.append(str(e))))
    t.start()
    deadline = time.monotonic() + 5
    while not ends and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert ends == ["first"]
    stop.set()  # during the 30 s backoff
    t.join(5)
    assert not t.is_alive() and ends == ["first"]


@pytest.mark.timeout(20)
async def test_async_stall_calls_on_stall_which_unblocks_the_attempt() -> None:
    """No packet for stall_timeout_s: on_stall runs (publish shuts the socket), the blocked call
    fails, the attempt's cleanup runs, and the failure is reported as a stall."""
    sup = Supervisor(fixed(), stall_timeout_s=0.2)
    unblock = asyncio.Event()
    events: list[str] = []
    ends: list[tuple[int, BaseException | None]] = []

    async def attempt(a: Attempt) -> Outcome:
        if a.number > 1:
            return "stop"
        try:
            for _ in range(5):
                await asyncio.sleep(0.02)
                a.up()
            events.append("blocked")
            await unblock.wait()  # a write to a server that stopped reading
            raise OSError("broken pipe")
        finally:
            events.append("cleanup")

    def on_stall(a: Attempt) -> None:
        events.append("on_stall")
        unblock.set()

    await run_async(
        sup, attempt, asyncio.Event(), lambda a, err, wait: ends.append((a.number, err)), on_stall
    )
    assert events == ["blocked", "on_stall", "cleanup"]
    assert len(ends) == 1 and isinstance(ends[0][1], Stalled) and sup.stalls == 1


@pytest.mark.timeout(20)
async def test_async_stall_cancels_an_attempt_that_on_stall_cannot_unblock() -> None:
    sup = Supervisor(fixed(), stall_timeout_s=0.1)
    events: list[str] = []
    ends: list[BaseException | None] = []

    async def attempt(a: Attempt) -> Outcome:
        if a.number > 1:
            return "stop"
        try:
            await asyncio.Event().wait()  # no progress, ever
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        return None

    await run_async(sup, attempt, asyncio.Event(), lambda a, err, wait: ends.append(err))
    assert events == ["cancelled"] and len(ends) == 1 and isinstance(ends[0], Stalled)


@pytest.mark.timeout(20)
async def test_async_a_paused_wait_is_no_stall_and_the_pause_may_end_any_time() -> None:
    sup = Supervisor(fixed(), stall_timeout_s=0.1)
    ends: list[BaseException | None] = []

    async def attempt(a: Attempt) -> Outcome:
        if a.number > 1:
            return "stop"
        with a.paused():  # the hub has nothing to send: the camera is down, not the server
            await asyncio.sleep(0.5)
        for _ in range(5):
            await asyncio.sleep(0.03)
            a.progress()
        await asyncio.Event().wait()  # now it stalls: detected after the pause ended
        return None

    await run_async(sup, attempt, asyncio.Event(), lambda a, err, wait: ends.append(err))
    assert len(ends) == 1 and isinstance(ends[0], Stalled) and sup.stalls == 1


@pytest.mark.timeout(20)
async def test_async_cancelling_the_loop_cancels_the_attempt_and_waits_for_its_cleanup() -> None:
    sup = Supervisor(fixed(), stall_timeout_s=5.0)
    started = asyncio.Event()
    events: list[str] = []

    async def attempt(a: Attempt) -> Outcome:
        started.set()
        try:
            with a.paused():
                await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # a TEARDOWN
            events.append("cleanup done")
        return None

    task = asyncio.get_running_loop().create_task(
        run_async(sup, attempt, asyncio.Event(), lambda a, e, w: events.append("on_end"))
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == ["cleanup done"]
