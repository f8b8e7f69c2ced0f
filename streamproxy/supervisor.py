"""The reconnect policy shared by everything that keeps a connection up on its own: the camera
ingest (live/source.py, a thread) and the push to an external server (serve/publish.py, a task).

Capped exponential backoff with jitter: the wait starts at `initial_s`, doubles up to `max_s`, and
starts over once a session has stayed up for `stable_s`. The jitter (±10 %) keeps cameras behind one
NVR that failed together, or publishers of one server that went away, from retrying in lockstep.
Ground floor: imports nothing of the package.
"""

from __future__ import annotations

import random
from collections.abc import Callable

STABLE_S = 5.0  # a session that stayed up this long resets the backoff
JITTER = 0.1


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

    def next_wait(self, up_s: float = 0.0) -> float:
        """The wait after a session that stayed up `up_s` seconds ended; the next one doubles."""
        if up_s >= self.stable_s:
            self._delay = self.initial_s
        wait = self._delay * self._uniform(1.0 - self.jitter, 1.0 + self.jitter)
        self._delay = min(self._delay * 2, self.max_s)
        return wait
