"""Writes deploy/grafana/dashboards/streamproxy.json. Edit the panels here, then run:

    .venv/bin/python deploy/grafana/make_dashboard.py

tests/test_deploy.py checks that the committed JSON is what this script writes, and that every
metric a panel queries is one streamproxy exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "streamproxy.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
CAM = 'camera=~"$camera"'
RI = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def _panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    grid: tuple[int, int, int, int],
    description: str,
    kind: str = "timeseries",
    min_zero: bool = True,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"unit": unit}
    if min_zero:
        defaults["min"] = 0
    if kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "targets": [_target(e, leg, chr(ord("A") + i)) for i, (e, leg) in enumerate(targets)],
        "options": {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"}},
    }
    return panel


def _quantiles(metric: str, qs: tuple[float, ...] = (0.5, 0.99)) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by (camera, le) (rate({metric}_bucket{{{CAM}}}[{RI}])))",
            f"{{{{camera}}}} p{round(q * 100)}",
        )
        for q in qs
    ]


def build() -> dict[str, Any]:
    panels = [
        _panel(
            "Camera up",
            [(f"streamproxy_camera_up{{{CAM}}}", "{{camera}}")],
            "none",
            (0, 0, 6, 8),
            "1 while frames arrive from the camera; 0 while connecting or offline (viewers see the slate).",
            kind="stat",
            overrides=[],
        ),
        _panel(
            "Added latency p50 / p99",
            _quantiles("streamproxy_added_latency_seconds"),
            "s",
            (6, 0, 9, 8),
            "Latency the proxy adds: decoder out to packet out. Compare with latency_budget_ms.",
        ),
        _panel(
            "Frames per second in / out",
            [
                (f"streamproxy_input_fps{{{CAM}}}", "{{camera}} in"),
                (f"streamproxy_output_fps{{{CAM}}}", "{{camera}} out"),
            ],
            "fps",
            (15, 0, 9, 8),
            "Decoded from the camera vs anonymized frames leaving. A gap = drops (see the next row).",
        ),
        _panel(
            "Dropped frames by reason",
            [
                (
                    f"sum by (camera, reason) (rate(streamproxy_frames_dropped_total{{{CAM}}}[{RI}]))",
                    "{{camera}} {{reason}}",
                )
            ],
            "fps",
            (0, 8, 8, 8),
            "Frames that never left: latency_budget, fail_closed, slow_viewer (per viewer), encoder, worker, queue_full, "
            "overload.",
        ),
        _panel(
            "Fail-closed frames",
            [
                (
                    f"sum by (camera, reason) (rate(streamproxy_fail_closed_frames_total{{{CAM}}}[{RI}]))",
                    "{{camera}} {{reason}}",
                ),
                (
                    f"sum by (camera) (rate(streamproxy_widened_frames_total{{{CAM}}}[{RI}]))",
                    "{{camera}} widened masks",
                ),
            ],
            "fps",
            (8, 8, 8, 8),
            "Frames fully obfuscated or dropped because detection failed (error, timeout, model missing). Should be 0. "
            "And frames whose face masks were grown past the face for safety (a gap, fast motion): over-masking.",
        ),
        _panel(
            "Viewers by protocol",
            [(f"sum by (protocol) (streamproxy_viewers{{{CAM}}})", "{{protocol}}")],
            "none",
            (16, 8, 8, 8),
            "RTSP and WebRTC viewers attached to the selected cameras.",
        ),
        _panel(
            "Detector time p50 / p99",
            _quantiles("streamproxy_detector_seconds"),
            "s",
            (0, 16, 8, 8),
            "One detector run (all tiles). Must stay well under the frame interval times the cadence.",
        ),
        _panel(
            "Detector cadence and input width",
            [
                (f"streamproxy_detector_cadence{{{CAM}}}", "{{camera}} every N frames"),
                (f"streamproxy_detector_input_width{{{CAM}}}", "{{camera}} input width"),
                (f"streamproxy_detector_min_input_width{{{CAM}}}", "{{camera}} privacy floor width"),
                (f"streamproxy_overloaded{{{CAM}}}", "{{camera}} overloaded (shedding frames)"),
                (f"streamproxy_detector_looked_share{{{CAM}}}", "{{camera}} share of the picture looked at"),
                (
                    f"sum by (camera, kind) (rate(streamproxy_detector_looks_total{{{CAM}}}[{RI}]))",
                    "{{camera}} {{kind}} looks/s",
                ),
            ],
            "none",
            (8, 16, 8, 8),
            "What the latency controller chose: run the detector every N frames (frames wait for the "
            "next run, so no face goes unmasked), at this width, never below the privacy floor's "
            "width. Overloaded = 1: the camera cannot be carried at its floor and whole frames are shed. "
            "Change gating: the share of the picture the last run looked at, and runs per second by kind "
            "(whole, regions: where the picture changed, around the faces and one scan tile; quiet).",
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": ref},
                    "properties": [
                        {"id": "custom.axisPlacement", "value": "right"},
                        {"id": "unit", "value": "px"},
                    ],
                }
                for ref in ("B", "C")
            ],
        ),
        _panel(
            "Faces and tracks",
            [
                (f"sum by (camera) (rate(streamproxy_faces_detected_total{{{CAM}}}[{RI}]))", "{{camera}} detections/s"),
                (f"streamproxy_faces_masked{{{CAM}}}", "{{camera}} masked"),
                (f"streamproxy_tracks_active{{{CAM}}}", "{{camera}} tracks"),
            ],
            "none",
            (16, 16, 8, 8),
            "Detections per second, masks on the last frame, and tracks alive.",
        ),
        _panel(
            "Reconnects",
            [
                (f"sum by (camera) (increase(streamproxy_reconnects_total{{{CAM}}}[{RI}]))", "{{camera}}"),
                (f"sum by (protocol) (increase(streamproxy_auth_failures_total[{RI}]))", "auth failures {{protocol}}"),
                (
                    f"sum by (listener, limit) (increase(streamproxy_limit_rejections_total[{RI}]))",
                    "refused {{listener}} {{limit}}",
                ),
            ],
            "none",
            (0, 24, 8, 8),
            "Reconnects to the camera after a failure or stall; viewer requests with wrong credentials; connections, "
            "requests and sessions refused or reclaimed at a server limit (server.limits).",
        ),
        _panel(
            "Bandwidth to viewers",
            [
                (
                    f"sum by (camera, protocol) (rate(streamproxy_bytes_out_total{{{CAM}}}[{RI}])) * 8",
                    "{{camera}} {{protocol}}",
                )
            ],
            "bps",
            (8, 24, 8, 8),
            "Media payload sent to viewers.",
        ),
        _panel(
            "Process CPU and memory",
            [
                ('sum by (instance) (rate(process_cpu_seconds_total{job="streamproxy"}[$__rate_interval]))', "{{instance}} CPU cores"),
                ('process_resident_memory_bytes{job="streamproxy"}', "{{instance}} RSS"),
                ("streamproxy_asyncio_tasks", "{{instance}} asyncio tasks"),
            ],
            "none",
            (16, 24, 8, 8),
            "CPU cores used by each streamproxy process (all its cameras), its resident memory, and the asyncio "
            "tasks on its event loop (sampled at scrape time; steady growth is a leak).",
            overrides=[
                {
                    "matcher": {"id": "byFrameRefID", "options": "B"},
                    "properties": [
                        {"id": "custom.axisPlacement", "value": "right"},
                        {"id": "unit", "value": "bytes"},
                    ],
                },
                {
                    "matcher": {"id": "byFrameRefID", "options": "C"},
                    "properties": [
                        {"id": "custom.axisPlacement", "value": "right"},
                        {"id": "unit", "value": "short"},
                    ],
                },
            ],
        ),
        _panel(
            "Frames delivered / dropped",
            [
                (
                    f"sum by (camera) (rate(streamproxy_frames_out_total{{{CAM}}}[{RI}]))"
                    f" / sum by (camera) (rate(streamproxy_frames_in_total{{{CAM}}}[{RI}]))",
                    "{{camera}} delivered",
                ),
                (
                    f'sum by (camera) (rate(streamproxy_frames_dropped_total{{{CAM}, reason!="slow_viewer"}}[{RI}]))'
                    f" / sum by (camera) (rate(streamproxy_frames_in_total{{{CAM}}}[{RI}]))",
                    "{{camera}} dropped",
                ),
            ],
            "percentunit",
            (0, 32, 12, 8),
            "Share of decoded frames that left the proxy, and share dropped before any viewer "
            "(slow viewers' own drops excluded). Fail-closed frames that were obfuscated count as delivered.",
        ),
        _panel(
            "Camera state",
            [(f"streamproxy_camera_state{{{CAM}}} == 1", "{{camera}} {{state}}")],
            "none",
            (12, 32, 12, 8),
            "Ingest state per camera: connecting, live, offline (backing off, slate shown), stopped.",
            kind="state-timeline",
            min_zero=False,
        ),
        _panel(
            "Publishing to an external RTSP server",
            [
                (f"streamproxy_publish_up{{{CAM}}}", "{{camera}} up"),
                (f"rate(streamproxy_publish_packets_total{{{CAM}}}[{RI}])", "{{camera}} frames/s"),
            ],
            "none",
            (0, 40, 24, 6),
            "Cameras with publish_url: 1 while a RECORD session to the external server is up, and the "
            "frames pushed per second (0 for cameras that do not publish).",
        ),
        _panel(
            "Packet loss from the camera",
            [
                (f"sum by (camera) (increase(streamproxy_rtp_packets_lost_total{{{CAM}}}[{RI}]))", "{{camera}} RTP packets lost"),
                (f"sum by (camera) (increase(streamproxy_damaged_frames_total{{{CAM}}}[{RI}]))", "{{camera}} frames damaged"),
            ],
            "none",
            (0, 46, 24, 6),
            "RTP packets from the camera that never arrived (sequence gaps) and the camera frames dropped before "
            "the decoder for a lost packet (built-in client). A UDP camera whose loss lets no picture through is "
            "switched to TCP (the log says so, the API's loss.tcp_fallback).",
        ),
    ]
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    stat = panels[0]
    stat["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background",
        "graphMode": "none",
        "textMode": "value_and_name",
    }
    stat["fieldConfig"]["defaults"]["mappings"] = [
        {"type": "value", "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}}}
    ]
    stat["fieldConfig"]["defaults"]["thresholds"] = {
        "mode": "absolute",
        "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
    }
    return {
        "uid": "streamproxy",
        "title": "streamproxy",
        "description": "Anonymizing CCTV proxy: latency, frames, fail-closed, viewers, detector (metrics: streamproxy/metrics.py)",
        "tags": ["streamproxy", "cctv"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                },
                {
                    "name": "camera",
                    "label": "Camera",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": "label_values(streamproxy_camera_up, camera)", "refId": "cameras"},
                    "definition": "label_values(streamproxy_camera_up, camera)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": ["All"], "value": ["$__all"]},
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(OUT, file=sys.stderr)
