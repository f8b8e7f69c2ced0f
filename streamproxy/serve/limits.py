"""Over-limit events of a listener (server.limits): counted in the metric, logged at most once a second.

A flood hits a limit thousands of times a second; one log line each would be a second flood (the
disk's). Each kind gets at most one line a second, which says how many events it stands for.
"""

from __future__ import annotations

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
        self.counts: dict[str, int] = {}  # every event by kind, for tests and stats
        self._pending: dict[str, tuple[int, str]] = {}  # kind -> (events not yet logged, last detail)
        self._last_line: dict[str, float] = {}

    def hit(self, kind: str, detail: str, level: int = logging.WARNING) -> None:
        metrics.LIMIT_REJECTIONS.labels(listener=self.listener, limit=kind).inc()
        self.counts[kind] = self.counts.get(kind, 0) + 1
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
