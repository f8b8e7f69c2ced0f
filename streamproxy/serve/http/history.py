"""Each camera's last ten minutes of health, kept in the service, and its privacy state in words.

The page's plots read this (`GET /api/history`): no database is needed to see how a camera has been
doing lately; Prometheus (`/metrics`) stays the place for anything longer. The HTTP server samples
every camera's status (`status.PipelineStatus`, itself read from the single counters) every
`SAMPLE_S` seconds into a ring of `SAMPLES` ticks, shared by all cameras, so one request brings the
whole grid's plots and a later one only the ticks after the `seq` it already has. Memory is bounded:
ticks x cameras samples of a few numbers (300 x 64 cameras: about 3 MB).

What a sample holds: the measured rates (fps in and out), the added latency p50/p99 and the faces
masked while live (None while down: a gap in the plot, never the last session's value), and as
rates over the tick the frames dropped for time (shed for overload, late for the budget, mailbox
full), the frames that failed closed (detection failed or late: obfuscated whole or dropped) and the
frames whose masks were widened for safety. Over-masking against the true faces is not measured
live (there is no ground truth on a live camera; `bench/live_leak.py` measures it offline); widened
frames are the over-masking the engine chose and counts.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from streamproxy.status import PipelineStatus

SAMPLE_S: Final = 2.0
WINDOW_S: Final = 600.0
SAMPLES: Final = int(WINDOW_S / SAMPLE_S)  # 300
# The plots' series, in the order /api/history lists them.
FIELDS: Final = ("live", "fps_in", "fps_out", "p50", "p99", "faces", "dropped", "failed_closed", "widened")
# How far back "recent" failures reach in the privacy words.
RECENT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One camera at one tick. Rates are per second over the tick; None where there is no reading."""

    live: int  # 1 while live
    fps_in: float
    fps_out: float
    p50: float | None
    p99: float | None
    faces: int | None
    dropped: float | None  # frames/s dropped for time: shed (overload), late (budget), mailbox full
    failed_closed: float | None  # frames/s failed closed (obfuscated whole, or dropped)
    widened: float | None  # frames/s whose masks were widened for safety (the over-masking counted)
    failed_closed_frames: int  # in this tick (for the privacy words' "in the last minute")


@dataclass(frozen=True, slots=True)
class _Counts:
    at: float
    dropped: int
    failed_closed: int
    widened: int


def _counts(p: PipelineStatus, now: float) -> _Counts:
    d = p.dropped
    return _Counts(now, d.overload + d.latency_budget + d.queue_full, p.fail_closed_frames, p.widened_frames)


def _delta(now: int, before: int) -> int:
    # The engine's counters start again when it is rebuilt (a new frame size): count from zero then.
    return now - before if now >= before else now


class History:
    """The ring of ticks (`record` one per SAMPLE_S), read back by `since` and `recent_failed_closed`."""

    def __init__(self, samples: int = SAMPLES) -> None:
        self._ticks: deque[tuple[int, float, dict[str, Sample]]] = deque(maxlen=samples)
        self._last: dict[str, _Counts] = {}
        self.seq = 0  # the newest tick's number (0: none yet)

    def record(self, statuses: Mapping[str, PipelineStatus | None], wall: float, now: float) -> None:
        """One tick: each camera's status (None where its snapshot failed: no sample), at wall-clock
        `wall` (what the page plots against) and monotonic `now` (what the rates divide by)."""
        tick: dict[str, Sample] = {}
        for name, p in statuses.items():
            if p is None:
                self._last.pop(name, None)
                continue
            counts, last = _counts(p, now), self._last.get(name)
            self._last[name] = counts
            rates: list[float | None] = [None, None, None]
            failed = 0
            if last is not None and now > last.at:
                dt = now - last.at
                failed = _delta(counts.failed_closed, last.failed_closed)
                rates = [
                    round(_delta(counts.dropped, last.dropped) / dt, 2),
                    round(failed / dt, 2),
                    round(_delta(counts.widened, last.widened) / dt, 2),
                ]
            live = p.state == "live"
            tick[name] = Sample(
                live=int(live),
                fps_in=p.fps_in,
                fps_out=p.fps_out,
                p50=p.latency_ms.p50 if live else None,
                p99=p.latency_ms.p99 if live else None,
                faces=(p.tracks if p.tracks is not None else p.faces) if live else None,
                dropped=rates[0],
                failed_closed=rates[1],
                widened=rates[2],
                failed_closed_frames=failed,
            )
        self.seq += 1
        self._ticks.append((self.seq, round(wall, 1), tick))

    def since(self, seq: int, cameras: Iterable[str]) -> dict[str, Any]:
        """The ticks after `seq` (all of them when `seq` is not one this ring handed out: a page that
        outlived a restart), by camera, one list per field (columns: compact JSON)."""
        if seq > self.seq or seq < 0:
            seq = 0
        ticks = [t for t in self._ticks if t[0] > seq]
        out: dict[str, dict[str, list[Any]]] = {}
        for name in cameras:
            cols: dict[str, list[Any]] = {f: [] for f in FIELDS}
            for _seq, _wall, tick in ticks:
                s = tick.get(name)
                for f in FIELDS:
                    cols[f].append(getattr(s, f) if s is not None else None)
            out[name] = cols
        return {
            "seq": self.seq,
            "interval_s": SAMPLE_S,
            "window_s": WINDOW_S,
            "t": [t[1] for t in ticks],
            "cameras": out,
        }

    def recent_failed_closed(self, camera: str, ticks: int = math.ceil(RECENT_S / SAMPLE_S)) -> int:
        """Frames of `camera` that failed closed in the last `ticks` ticks (a minute)."""
        n = 0
        for _seq, _wall, tick in list(self._ticks)[-ticks:]:
            s = tick.get(camera)
            n += s.failed_closed_frames if s is not None else 0
        return n


Level = Literal["protected", "floor", "shedding", "failed", "down", "unknown"]


def privacy_state(
    p: PipelineStatus | None, fail_closed_action: str, failed_closed_recent: int = 0
) -> tuple[Level, str]:
    """The camera's privacy state: a level the page colours and the words it shows, from what the
    status reports (the detector's error, the controller's setting against the floor, shedding) and
    the frames that failed closed in the last minute."""
    if p is None:
        return "unknown", "status unavailable (see the log)"
    what = "blurred whole" if fail_closed_action == "obfuscate" else "dropped"
    if p.detector.error:
        return "failed", f"detector failed: every frame {what}"
    if p.state != "live":
        return "down", "camera down: nothing of it is sent"
    d = p.detector
    every = "every frame" if d.detect_every == 1 else f"every {d.detect_every} frames"
    at_floor = d.detect_every >= d.max_detect_every and d.input_width <= d.min_input_width
    level: Level
    if p.keep_ratio < 1.0:
        # Frames are shed, never the protection (live/controller.py): the output frame rate falls.
        shed = f"shedding {round(100 * (1 - p.keep_ratio))} %"
        level = "shedding"
        text = f"at the floor, {shed}" if at_floor else f"{shed}: detector {every} at {d.input_width} px"
    elif at_floor:
        level, text = "floor", f"at the floor: detector {every} at {d.input_width} px"
    else:
        level, text = "protected", f"above the floor: detector {every} at {d.input_width} px"
    if failed_closed_recent > 0:
        text += f"; {failed_closed_recent} frames failed closed ({what}) in the last minute"
    return level, text
