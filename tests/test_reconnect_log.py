"""A camera that stays down is summarised in the log, not a line per attempt (issue 20, item 4).

Nobody listens on the camera's loopback port, so every attempt is refused at once and the back-off
is at its shortest. Lines are counted, never timed: the summary's interval is made an hour (one line
at stop stands for every repeat) or zero (a line per repeat), and the counts add up either way.
"""

from __future__ import annotations

import logging
import re
import time

import pytest

from streamproxy.config import IngestConfig
from streamproxy.live import source
from streamproxy.live.source import CameraSource
from streamproxy_sim import camsim

LOGGER = "streamproxy.live.source"
SUMMARY = re.compile(r": (\d+) more failed attempt\(s\) in the last \d+ s, last: ")


def _run_down_camera(caplog: pytest.LogCaptureFixture, attempts: int) -> CameraSource:
    caplog.set_level(logging.DEBUG, LOGGER)
    ingest = IngestConfig(open_timeout_s=2, read_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.1)
    src = CameraSource("cam", f"rtsp://127.0.0.1:{camsim.free_port()}/cam", "tcp", ingest, lambda f: None)
    src.start()
    try:
        for _ in range(600):  # bounded: 60 s at most on a very busy host
            if src.reconnects >= attempts:
                break
            time.sleep(0.1)
        assert src.reconnects >= attempts, src.reconnects
    finally:
        src.stop()
    return src


def _messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.mark.timeout(90)
def test_a_camera_down_is_summarised_not_logged_per_attempt(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source, "RECONNECT_SUMMARY_S", 3600.0)
    _run_down_camera(caplog, attempts=25)
    info = _messages(caplog, logging.INFO)
    warnings = _messages(caplog, logging.WARNING)
    repeats = [m for m in _messages(caplog, logging.DEBUG) if "retrying in" in m]
    assert len([m for m in info if "connecting to" in m]) == 1, info  # the first attempt only
    assert len(warnings) == 1 and "refused" in warnings[0].lower(), warnings
    assert len(repeats) >= 20
    summaries = [found for m in info if (found := SUMMARY.search(m))]
    assert len(summaries) == 1, info  # at stop: it stands for every repeat
    assert sum(int(found.group(1)) for found in summaries) == len(repeats)
    # Everything said at INFO or above: the states (connecting, reconnecting, stopped), the first
    # attempt, the first failure and the summary, whatever the number of attempts.
    assert len(info) + len(warnings) <= 6, info + warnings


@pytest.mark.timeout(90)
def test_each_summary_counts_the_repeats_since_the_last_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source, "RECONNECT_SUMMARY_S", 0.0)
    _run_down_camera(caplog, attempts=10)
    info = _messages(caplog, logging.INFO)
    repeats = [m for m in _messages(caplog, logging.DEBUG) if "retrying in" in m]
    counts = [int(m.group(1)) for m in map(SUMMARY.search, info) if m]
    assert counts and sum(counts) == len(repeats) >= 8, (counts, len(repeats))
    assert len([m for m in info if "connecting to" in m]) == 1, info
