"""What this process may use of the machine it runs on."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: a container's CPU set (sched_getaffinity), not the host's
    count (os.cpu_count), so that threads are sized to what the scheduler will actually give."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
