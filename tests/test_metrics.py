"""streamproxy.metrics: names, labels, the per-camera helper and the /metrics body."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from streamproxy import metrics
from streamproxy.metrics import (
    METRIC_NAMES,
    NOT_PER_CAMERA,
    CameraMetrics,
    RateMeter,
    render_latest,
)


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _families(body: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        out[fam.name] = [(s.name, dict(s.labels), s.value) for s in fam.samples]
    return out


def _exposed_names(body: bytes) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) \S+$", body.decode(), flags=re.MULTILINE))


def test_every_family_is_exported_with_samples_for_a_camera() -> None:
    m = CameraMetrics("names-cam")
    m.frame_in()
    m.frame_out(0.05)
    m.detection(0.01, 2)
    body, content_type = render_latest()
    assert content_type.startswith("text/plain")
    exposed = _exposed_names(body)
    missing = [n for n in METRIC_NAMES if n not in exposed]
    assert not missing, f"METRIC_NAMES not exported: {missing}"
    # ...and every streamproxy family is listed (METRIC_NAMES documents all of them).
    undocumented = {n for n in exposed if n.startswith("streamproxy_")} - set(METRIC_NAMES)
    assert not undocumented
    # Every per-camera family has series for this camera right away (rate() works from 0).
    text = body.decode()
    for name in METRIC_NAMES:
        if name in NOT_PER_CAMERA:
            continue
        assert re.search(rf'^{name}(_bucket|_sum|_count)?{{[^}}]*camera="names-cam"', text, re.MULTILINE), (
            name
        )
    assert re.search(r'^streamproxy_build_info\{version="[^"]+"\} 1\.0$', text, re.MULTILINE)
    # The default process collector comes along (Linux).
    assert "process_cpu_seconds_total" in exposed
    assert all(n.startswith("streamproxy_") for n in METRIC_NAMES)
    assert len(METRIC_NAMES) == len(set(METRIC_NAMES))


def test_no_label_value_looks_like_a_url_or_credential() -> None:
    CameraMetrics("label-cam").set_state("live")
    for fam in text_string_to_metric_families(render_latest()[0].decode()):
        if not fam.name.startswith("streamproxy_"):
            continue
        for s in fam.samples:
            for key, value in s.labels.items():
                assert "://" not in value and "@" not in value, (s.name, key)
                if key == "camera":
                    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value)


@pytest.mark.parametrize(
    "bad",
    ["rtsp://admin:s3cret@10.0.0.5/stream1", "cam:s3cret", "", "a" * 65, "cam 1", "cam/1"],
)
def test_camera_label_refuses_urls_and_never_echoes_them(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        CameraMetrics(bad)
    if bad:
        assert bad not in str(err.value)
    assert "s3cret" not in str(err.value)


def test_frame_counters_latency_and_drops() -> None:
    m = CameraMetrics("count-cam")
    for _ in range(5):
        m.frame_in()
    for lat in (0.012, 0.045, 0.180):
        m.frame_out(lat)
    m.drop("latency_budget")
    m.drop("slow_viewer", 3)
    m.fail_closed_frame("detector_timeout")
    m.detection(0.004, 0)
    m.detection(0.020, 3)
    assert _value("streamproxy_frames_in_total", camera="count-cam") == 5
    assert _value("streamproxy_frames_out_total", camera="count-cam") == 3
    assert _value("streamproxy_added_latency_seconds_count", camera="count-cam") == 3
    assert _value("streamproxy_added_latency_seconds_sum", camera="count-cam") == pytest.approx(0.237)
    assert _value("streamproxy_added_latency_seconds_bucket", camera="count-cam", le="0.05") == 2
    drops = {
        r: _value("streamproxy_frames_dropped_total", camera="count-cam", reason=r)
        for r in metrics.DROP_REASONS
    }
    assert drops == {
        "latency_budget": 1,
        "fail_closed": 0,
        "slow_viewer": 3,
        "encoder": 0,
        "worker": 0,
        "queue_full": 0,
        "overload": 0,
    }
    assert _value("streamproxy_fail_closed_frames_total", camera="count-cam", reason="detector_timeout") == 1
    assert _value("streamproxy_fail_closed_frames_total", camera="count-cam", reason="model_missing") == 0
    assert _value("streamproxy_detector_seconds_count", camera="count-cam") == 2
    assert _value("streamproxy_faces_detected_total", camera="count-cam") == 3
    m.detector_cadence.set(2)
    m.detector_input_width.set(960)
    m.faces_masked.set(4)
    m.tracks_active.set(5)
    assert _value("streamproxy_detector_cadence", camera="count-cam") == 2
    assert _value("streamproxy_detector_input_width", camera="count-cam") == 960


def test_state_up_viewers_bytes_and_reconnects() -> None:
    m = CameraMetrics("state-cam")
    assert m.state == "connecting"
    assert _value("streamproxy_camera_up", camera="state-cam") == 0
    m.set_state("live")
    states = {
        s: _value("streamproxy_camera_state", camera="state-cam", state=s) for s in metrics.CAMERA_STATES
    }
    assert states == {"connecting": 0, "live": 1, "offline": 0, "stopped": 0}
    assert _value("streamproxy_camera_up", camera="state-cam") == 1
    m.set_state("offline")
    attempts = [0]
    m.count_reconnects_of(lambda: attempts[0])  # the source's counter: read, not copied
    attempts[0] = 1
    assert _value("streamproxy_camera_up", camera="state-cam") == 0
    assert _value("streamproxy_camera_state", camera="state-cam", state="offline") == 1
    assert _value("streamproxy_reconnects_total", camera="state-cam") == 1 == m.reconnects_total
    with pytest.raises(ValueError):
        m.set_state("exploded")  # type: ignore[arg-type]
    m.sent("webrtc", 1500)
    m.set_viewers(rtsp=3, webrtc=1)
    assert _value("streamproxy_viewers", camera="state-cam", protocol="rtsp") == 3
    m.set_viewers(rtsp=1, webrtc=1)
    assert _value("streamproxy_viewers", camera="state-cam", protocol="rtsp") == 1
    assert _value("streamproxy_viewers", camera="state-cam", protocol="webrtc") == 1
    assert _value("streamproxy_bytes_out_total", camera="state-cam", protocol="webrtc") == 1500


def test_fps_gauges_follow_frames_and_reset_when_not_live() -> None:
    m = CameraMetrics("fps-cam")
    m.set_state("live")
    t0 = 1000.0
    for i in range(51):  # 25 fps for 2 s: 50 intervals
        m.frame_in(now=t0 + i * 0.04)
        if i % 2 == 0:
            m.frame_out(0.02, now=t0 + i * 0.04)
    assert _value("streamproxy_input_fps", camera="fps-cam") == pytest.approx(25.0, rel=0.01)
    assert _value("streamproxy_output_fps", camera="fps-cam") == pytest.approx(12.5, rel=0.01)
    m.set_state("offline")
    assert _value("streamproxy_input_fps", camera="fps-cam") == 0
    assert _value("streamproxy_output_fps", camera="fps-cam") == 0


def test_counts_read_back_are_the_exported_ones() -> None:
    """The API reads the camera's counts from the same calls that feed Prometheus: one tally."""
    m = CameraMetrics("readback-cam")
    m.set_state("live")
    for i in range(26):
        m.frame_in(now=2000.0 + i * 0.04)
    m.frame_out(0.02, now=2000.0)
    m.frame_out(0.02, now=2001.0)
    m.drop("overload", 2)
    m.drop("slow_viewer", 5)  # the hub's, per viewer: exported, not a pipeline drop
    assert m.frames_in_total == 26 == _value("streamproxy_frames_in_total", camera="readback-cam")
    assert m.frames_out_total == 2 == _value("streamproxy_frames_out_total", camera="readback-cam")
    drops = m.drops()
    assert (
        drops.overload
        == 2
        == _value("streamproxy_frames_dropped_total", camera="readback-cam", reason="overload")
    )
    assert (drops.latency_budget, drops.fail_closed, drops.queue_full, drops.encoder, drops.worker) == (
        0,
    ) * 5
    assert not hasattr(drops, "slow_viewer")
    # One fps meter: the API's number is the gauge's, and reads 0 once events stop for two windows.
    assert m.in_rate.rate(now=2001.0) == pytest.approx(25.0, rel=0.01)
    assert m.in_rate.rate(now=2001.0) == _value("streamproxy_input_fps", camera="readback-cam")
    assert m.in_rate.rate(now=2003.5) == 0.0
    m.set_state("offline")
    assert m.in_rate.rate(now=2001.0) == 0.0 == _value("streamproxy_input_fps", camera="readback-cam")


def test_rate_meter_windows() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    g = Gauge("t_rate", "t", registry=CollectorRegistry())
    r = RateMeter(g, window_s=1.0)
    r.tick(now=0.0)
    r.tick(now=0.5)
    assert g._value.get() == 0  # window not over yet
    r.tick(now=1.0)
    assert g._value.get() == pytest.approx(2.0)
    r.tick(now=5.0)  # a stall reads as the average over the gap
    assert g._value.get() == pytest.approx(0.25)


def test_buckets_are_dense_where_budgets_are() -> None:
    lat = metrics.LATENCY_BUCKETS
    assert lat[0] == 0.005 and lat[-1] == 1.0 and list(lat) == sorted(lat)
    assert sum(1 for b in lat if 0.02 <= b <= 0.2) >= 12
    det = metrics.DETECTOR_BUCKETS
    assert det[0] == 0.001 and det[-1] == 0.5 and list(det) == sorted(det)


def test_openmetrics_negotiation() -> None:
    CameraMetrics("om-cam")
    body, ctype = render_latest("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    body, ctype = render_latest()
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# EOF" not in body
