"""What the tests read back from the Prometheus registry: the one tally of an event is its metric.

* `limit_counts(listener)`: `streamproxy_limit_rejections_total` of one listener, by limit.
* `limit_hits(listener, before)`: what was refused since `before` (a `limit_counts`), zeros left out.
"""

from __future__ import annotations

from streamproxy import metrics


def limit_counts(listener: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.LIMIT_REJECTIONS.collect():
        for s in family.samples:
            if s.name == "streamproxy_limit_rejections_total" and s.labels["listener"] == listener:
                out[s.labels["limit"]] = s.value
    return out


def limit_hits(listener: str, before: dict[str, float]) -> dict[str, int]:
    return {
        k: int(v - before.get(k, 0.0)) for k, v in limit_counts(listener).items() if v != before.get(k, 0.0)
    }
