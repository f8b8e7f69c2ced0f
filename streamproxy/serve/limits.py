"""Over-limit events of a listener (server.limits): counted in the metric, logged at most once a second.

A flood hits a limit thousands of times a second; one log line each would be a second flood (the
disk's). Each kind gets at most one line a second, which says how many events it stands for.
`Throttled` does the same for a stream of like events that are no limit's: malformed requests,
requests for an unknown path.
"""

from __future__ import annotations

import asyncio
import logging
import time

from streamproxy import metrics

LOG_INTERVAL_S = 1.0


class LimitEvents:
    """`hit(kind, detail)` for every refusal or reclaim at a limit of one listener ("rtsp", "http")."""

    def __init__(self, listener: str, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self.listener = listener
        self.log = logger
        self.interval_s = interval_s
        self._pending: dict[str, tuple[int, str]] = {}  # kind -> (events not yet logged, last detail)
        self._last_line: dict[str, float] = {}

    def hit(self, kind: str, detail: str, level: int = logging.WARNING) -> None:
        metrics.LIMIT_REJECTIONS.labels(listener=self.listener, limit=kind).inc()  # the one tally
        n, _ = self._pending.get(kind, (0, ""))
        self._pending[kind] = (n + 1, detail)
        self._maybe_log(kind, time.monotonic(), level)

    def flush(self, level: int = logging.WARNING) -> None:
        """Log what is pending and due (call now and then, so the last burst's count is not lost)."""
        now = time.monotonic()
        for kind in list(self._pending):
            self._maybe_log(kind, now, level)

    def _maybe_log(self, kind: str, now: float, level: int) -> None:
        if now - self._last_line.get(kind, -1e9) < self.interval_s:
            return
        n, detail = self._pending.pop(kind, (0, ""))
        if not n:
            return
        self._last_line[kind] = now
        more = f" (x{n} since the last such line)" if n > 1 else ""
        self.log.log(level, "-: %s limit %s: %s%s", self.listener.upper(), kind, detail, more)


class Throttled:
    """One log line a second at most for a stream of like events, with how many it stands for; the
    last burst's count is logged when its second is over (a timer), not lost. `detail` is logged as
    it is: a client's string in it must have gone through rtsp.protocol.log_text."""

    def __init__(self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self.log = logger
        self.interval_s = interval_s
        self.count = 0  # every event
        self._pending = 0
        self._detail = ""
        self._level = logging.WARNING
        self._last_line = -1e9
        self._timer: asyncio.TimerHandle | None = None

    def hit(self, detail: str, level: int = logging.WARNING) -> None:
        self.count += 1
        self._pending += 1
        self._detail, self._level = detail, level
        now = time.monotonic()
        if now - self._last_line >= self.interval_s:
            self._emit(now)
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(self._last_line + self.interval_s - now, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._pending:
            self._emit(time.monotonic())

    def _emit(self, now: float) -> None:
        # A hit that comes due just before the timer logs itself: the timer goes with it, else it
        # would log the next hit a moment later (two lines in the same second: seen under a flood).
        self.close()
        more = f" (x{self._pending} since the last such line)" if self._pending > 1 else ""
        self.log.log(self._level, "%s%s", self._detail, more)
        self._pending = 0
        self._last_line = now

    def flush(self) -> None:
        """Log what is pending now (at stop: the last burst's count is not lost)."""
        self.close()
        if self._pending:
            self._emit(time.monotonic())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
