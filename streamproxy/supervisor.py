"""The one supervisor of everything that keeps a connection up on its own: the camera ingest
(live/source.py, a thread) and the push to an external server (serve/publish.py, an asyncio task).

A connection is kept up by attempts: run one; when it fails, ends, or stalls, wait, then the next.
* The wait (`Backoff`): capped exponential with jitter. It starts at `initial_s`, doubles up to
  `max_s`, and starts over once a session has stayed up for `stable_s`. The jitter (±10 %) keeps
  cameras behind one NVR that failed together, or publishers of one server that went away, from
  retrying in lockstep.
* A stall: an attempt that makes no progress (no packet) for `stall_timeout_s` is ended and
  counted as a failure (`Stalled`). Waiting for something that is not the peer's job (an open with
  its own timeout, a hub with nothing to send) is done inside `attempt.paused()`.
* The loop: `run_sync` for a thread, `run_async` for a task. Both drive the same `Supervisor`
  (policy and counting) and `Attempt` (one try's clock). A thread cannot be interrupted from
  outside, so under `run_sync` the attempt's blocking reads end at `attempt.deadline` themselves
  (ingest: FFmpeg's interrupt callback, our RTSP client's read deadline); under `run_async` a
  watchdog ends the attempt: it calls `on_stall` (to unblock what the attempt waits on), then
  cancels the attempt if it has not ended within another `stall_timeout_s`.

Ground floor: imports nothing of the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal

STABLE_S = 5.0  # a session that stayed up this long resets the backoff
JITTER = 0.1
WATCH_TICK_S = 0.25  # how often run_async's watchdog looks at an attempt whose stall clock is paused

# How an attempt that did not raise ended: None, the session ended (wait as after a failure);
# "restart", for a reason that is no failure (start over at once, the backoff starts over too);
# "stop", nothing more to do (the runner returns).
Outcome = Literal["restart", "stop"] | None


class Backoff:
    """How long to wait before the next attempt. Not thread-safe: one per connection."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        stable_s: float = STABLE_S,
        jitter: float = JITTER,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)
        self.stable_s = stable_s
        self.jitter = jitter
        self._uniform = uniform
        self._delay = initial_s

    def reset(self) -> None:
        """Start over at `initial_s` (a new session began for a reason that is not a failure)."""
        self._delay = self.initial_s

    def next_wait(self, up_s: float = 0.0, max_s: float | None = None) -> float:
        """The wait after a session that stayed up `up_s` seconds ended; the next one doubles.

        `max_s`: another cap for this failure (a camera that rejects our credentials is retried
        more slowly than one that is down); the wait never exceeds the cap of the failure at hand.
        """
        cap = self.max_s if max_s is None else max(max_s, self.initial_s)
        if up_s >= self.stable_s:
            self._delay = self.initial_s
        self._delay = min(self._delay, cap)
        wait = self._delay * self._uniform(1.0 - self.jitter, 1.0 + self.jitter)
        self._delay = min(self._delay * 2, cap)
        return wait


class Stalled(TimeoutError):
    """An attempt made no progress for the stall timeout."""


class Attempt:
    """One try: when it started, when it was last heard from, and when it came up.

    `progress()` on every packet restarts the stall clock; `up()` once the session does what it is
    for (ingest: a decoded frame; publish: a packet the server took): the backoff's "stayed up"
    counts from there. Written by the attempt, read by the watchdog: plain floats, no lock needed.
    """

    def __init__(self, number: int, stall_timeout_s: float | None, clock: Callable[[], float]) -> None:
        self.number = number  # 1 for the first attempt of the loop
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self.started = clock()
        self.last_progress = self.started
        self.up_since: float | None = None
        self.stalled = False  # set when the stall ended it
        self._paused = 0

    def progress(self) -> None:
        self.last_progress = self._clock()

    def up(self) -> None:
        """The session delivers: progress, and the start of its uptime (first call only)."""
        self.progress()
        if self.up_since is None:
            self.up_since = self.last_progress

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No stall while inside (the wait is someone else's, or bounded otherwise); leaving it
        counts as progress, so the peer gets a whole stall timeout from there."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.progress()

    @property
    def deadline(self) -> float:
        """When the attempt counts as stalled (on the clock it was given); inf while paused."""
        if self.stall_timeout_s is None or self._paused:
            return math.inf
        return self.last_progress + self.stall_timeout_s

    def remaining(self) -> float:
        return self.deadline - self._clock()

    def check(self) -> None:
        """Raise Stalled once the deadline has passed (for an attempt that polls)."""
        if self._clock() > self.deadline:
            self.stalled = True
            raise Stalled(f"no progress for {self.stall_timeout_s:g} s")

    def up_s(self) -> float:
        return self._clock() - self.up_since if self.up_since is not None else 0.0


class Supervisor:
    """The policy both runners share: attempts, the wait after each, the stall timeout."""

    def __init__(
        self,
        backoff: Backoff,
        stall_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        cap_for: Callable[[BaseException | None], float | None] | None = None,
    ) -> None:
        self.backoff = backoff
        self.cap_for = cap_for  # a failure's own backoff cap (None: the backoff's)
        self.stall_timeout_s = stall_timeout_s
        self.clock = clock
        self.attempts = 0
        self.stalls = 0

    def begin(self) -> Attempt:
        self.attempts += 1
        return Attempt(self.attempts, self.stall_timeout_s, self.clock)

    def end(self, attempt: Attempt, outcome: Outcome, err: BaseException | None = None) -> float:
        """The wait before the next attempt (0 after a restart)."""
        if attempt.stalled:
            self.stalls += 1
        if outcome == "restart":
            self.backoff.reset()
            return 0.0
        cap = self.cap_for(err) if self.cap_for is not None else None
        return self.backoff.next_wait(attempt.up_s(), cap)


# on_end(attempt, error or None, wait): log, count, change state. Not called after "stop", or when
# the loop was told to stop during the attempt.
OnEnd = Callable[[Attempt, BaseException | None, float], None]


def run_sync(
    sup: Supervisor,
    attempt: Callable[[Attempt], Outcome],
    stop: threading.Event,
    on_end: OnEnd,
) -> None:
    """Run attempts in this thread until `stop` is set or an attempt returns "stop"."""
    while not stop.is_set():
        a = sup.begin()
        err: Exception | None = None
        outcome: Outcome = None
        try:
            outcome = attempt(a)
        except Stalled as stalled:
            a.stalled, err = True, stalled
        except Exception as failure:  # every failure of an attempt leads to a retry
            err = failure
        if stop.is_set() or outcome == "stop":
            return
        wait = sup.end(a, outcome, err)
        on_end(a, err, wait)
        if wait > 0 and stop.wait(wait):
            return


async def run_async(
    sup: Supervisor,
    attempt: Callable[[Attempt], Awaitable[Outcome]],
    stop: asyncio.Event,
    on_end: OnEnd,
    on_stall: Callable[[Attempt], None] | None = None,
) -> None:
    """Run attempts as tasks until `stop` is set or an attempt returns "stop"; a stalled attempt is
    ended by the watchdog. Cancelling this cancels the attempt and waits for its cleanup (which
    the watchdog still bounds)."""
    while not stop.is_set():
        a = sup.begin()
        task = asyncio.ensure_future(attempt(a))
        try:
            await _watch(task, a, on_stall)
        except asyncio.CancelledError:
            task.cancel()
            await _watch(task, a, on_stall)
            raise
        err: BaseException | None = None
        outcome: Outcome = None
        if task.cancelled():
            err = Stalled(f"no progress for {a.stall_timeout_s:g} s")
        elif (exc := task.exception()) is not None:
            if not isinstance(exc, Exception):
                raise exc  # KeyboardInterrupt and the like are not a connection's failure
            err = Stalled(f"no progress for {a.stall_timeout_s:g} s") if a.stalled else exc
        else:
            outcome = task.result()
            if a.stalled:  # it came back on its own after the stall was called
                err, outcome = Stalled(f"no progress for {a.stall_timeout_s:g} s"), None
        if stop.is_set() or outcome == "stop":
            return
        wait = sup.end(a, outcome, err)
        on_end(a, err, wait)
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)


async def _watch(
    task: asyncio.Future[Outcome], a: Attempt, on_stall: Callable[[Attempt], None] | None
) -> None:
    """Wait for the attempt; past its deadline, stall it: on_stall, then cancel after a grace."""
    while not task.done():
        if a.stall_timeout_s is None:
            await asyncio.wait({task})
            return
        left = a.remaining()
        if left > 0:
            # Paused: look again in a while (the pause may end any time); else at the deadline.
            await asyncio.wait({task}, timeout=WATCH_TICK_S if math.isinf(left) else left)
            continue
        a.stalled = True
        if on_stall is not None:
            on_stall(a)
        # Give the attempt the chance to end on its own once unblocked (its cleanup, e.g. a
        # TEARDOWN, is worth having), then cancel it.
        await asyncio.wait({task}, timeout=a.stall_timeout_s)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        return
