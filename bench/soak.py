"""Soak: the whole service for `--minutes` under viewers, camera restarts and a fuzzer; does it stay flat?

A script, not a test (issue 12, deliver 5). Everything is on 127.0.0.1 and bounded in time:

* cameras: `--cameras` N simulated cameras (`camsim.SimCamera`, live mode: every frame carries the
  wall-clock barcode and the clip shows 2 real faces), `--width`x`--height` (default 640x360: the
  machine this was written on has 2 shared cores).
* the service: `python -m streamproxy.cli run --config <tmp>/config.yaml` as its own process, so that
  the RSS, descriptors and threads sampled from /proc/PID are the service's alone. Loopback hosts,
  `ice_hosts: [127.0.0.1]`, the detector at the camera's width, and the reconnect settings of the other
  benchmarks (read timeout 2 s, backoff 0.2 s doubling to a 1 s cap; `--backoff-max-s`): with the product
  default cap of 10 s the time to recover from a restart depends mostly on how long the camera was down.
* RTSP viewers: per camera `--rtsp-tcp` over TCP and `--rtsp-udp` over UDP (PyAV threads in this process,
  each decoding every frame and reconnecting after an error, which is counted).
* WebRTC viewers: `--webrtc` slots; each joins a random camera by WHEP (aiortc, non-trickle, host
  candidates 127.0.0.1), stays `--stay-min-s`..`--stay-max-s`, leaves (DELETE + close) and comes back after
  `--off-min-s`..`--off-max-s`. A refused join is counted with its status.
* restarts: every `--restart-min-s`..`--restart-max-s` a random camera is killed (SIGKILL) or stopped
  (SIGTERM), stays down `--down-min-s`..`--down-max-s` and is started again on the same port. For each
  restart and each viewer of that camera connected when it went down: time from the camera listening
  again to the viewer decoding a frame stamped after the camera went down (a live frame of the new
  camera; the slate carries no stamp). The restart's recovery time is the slowest of its viewers.
* fuzzer: about `--fuzz-rate` requests a second, each on its own connection: garbage lines, oversized
  headers, byte-by-byte requests, LF-only lines, bad URIs and ports, a CSeq with a header injection,
  interleaved-frame garbage (RTSP port) and garbage, oversized and byte-by-byte HTTP requests and bad WHEP
  bodies (HTTP port). Answers are counted per kind by class: the status code, `closed` (EOF without an
  answer), `reset`, `timeout` (no answer within 3 s, 6 s for byte-by-byte), `injected` (the injected
  header came back).
* no raw face: one live frame per viewer every `--judge-every-s` (10 s) goes to the judge, YuNet at 640
  with the bar of tests/test_live_e2e.py (a face scoring >= 0.7 is visible; the camera's own faces score
  0.9+). The judge is calibrated first on frames straight from camera 0: if it does not see the camera's
  faces, the "no face" count means nothing and the run fails.

Every `--sample-s` (30 s) one line: service RSS, open descriptors, threads, CPU, per camera the output
fps and drops, per viewer the frames since the last line, age of its last frame and glass-to-glass lag of
its last live frame, and the service loop's asyncio tasks (the `streamproxy_asyncio_tasks` gauge of
/metrics, sampled at scrape).

At the end: growth after the warm-up (`--warmup-s`, default 120 s; the first sample at or after it is the
baseline): RSS growth % (last vs baseline) and max, descriptors, threads and asyncio tasks min/max and the growth of their
floor (min over the last third of the samples minus min over the first third: sessions coming and going
move the count, a leak raises the floor), restart recovery max/p50, viewer gaps > 1 s (all, and those
outside a camera outage: the slate starts 1 s after the last live frame, so an outage itself may show one),
viewer reconnects, WebRTC joins, fuzz answers, frames judged and faces seen, the service log's tracebacks,
and how long SIGTERM took. `--json FILE` writes all of it.

Exit status: 0 when every target holds, 1 when one fails, 2 when the run could not be set up. Targets
(issue 12): the service stays up; RSS growth <= 10 %; descriptor floor growth <= `--fd-slack` (default 10);
every restart recovered within `--recover-s` (3 s) at every viewer; no visible face in a judged frame.

    .venv/bin/python bench/soak.py --minutes 3 --json /tmp/soak.json
    .venv/bin/python bench/soak.py --minutes 60 --cameras 2 --webrtc 2 --json bench/out/soak-1h.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamproxy_sim.camsim import SimCamera, free_port, read_stamp, system_gst_available

log = logging.getLogger("bench.soak")

REPO = Path(__file__).resolve().parent.parent
LOW_DELAY = {"probesize": "32", "analyzeduration": "0", "flags": "low_delay"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
VISIBLE = 0.7  # tests/test_live_e2e.py's bar: blurred heads score up to ~0.6, the camera's faces 0.9+
GAP_S = 1.0  # a pause between two decoded frames longer than this is a gap
RECOVERY_WAIT_S = 15.0  # how long a restart waits for its viewers before it counts as not recovered
STAMP_MAX_AGE_MS = 60_000  # a stamp further from now is not a capture time


# --- the service's own numbers ------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB), Threads, open descriptors and CPU ticks of a process; {} when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "Threads"):
                    out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        out["tasks_os"] = len(os.listdir(f"/proc/{pid}/task"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_ticks"] = int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return {}
    return out


def asyncio_tasks(port: int) -> int | None:
    """The service loop's asyncio task count (streamproxy_asyncio_tasks, sampled at scrape)."""
    status, body = http_get(port, "/metrics")
    if status != 200:
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("streamproxy_asyncio_tasks "):
            return int(float(line.split()[1]))
    return None


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as err:
        return int(err.code), b""
    except (OSError, ValueError):
        return 0, b""


def cameras_api(port: int) -> list[dict[str, Any]]:
    status, body = http_get(port, "/api/cameras")
    if status != 200:
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def write_config(tmp: Path, sims: list[SimCamera], args: argparse.Namespace) -> tuple[Path, int, int]:
    rtsp_port, http_port = free_port(), free_port()
    while http_port == rtsp_port:
        http_port = free_port()
    base = random.Random(args.seed).randrange(20000, 60000, 2)  # the server scans it for a free UDP pair
    cfg = {
        "cameras": [{"name": f"cam{i}", "url": s.url} for i, s in enumerate(sims)],
        "server": {
            "host": "127.0.0.1",
            "rtsp_port": rtsp_port,
            "http_port": http_port,
            "rtp_port_min": base,
            "rtp_port_max": base + 200,
            "ice_hosts": ["127.0.0.1"],
        },
        "ingest": {"read_timeout_s": 2, "backoff_initial_s": 0.2, "backoff_max_s": args.backoff_max_s},
        "engine": {"detector": {"input_width": max(160, args.width)}},
        "slate": {"width": args.width, "height": args.height},
        "logging": {"level": "INFO"},
    }
    path = tmp / "config.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path, rtsp_port, http_port


# --- viewers --------------------------------------------------------------------------------------------


@dataclass
class ViewerStats:
    name: str
    camera: str
    kind: str  # tcp, udp, webrtc
    frames: int = 0
    live_frames: int = 0
    connects: int = 0
    errors: int = 0
    last_errors: list[str] = field(default_factory=list)
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (run time at the gap's end, seconds)
    joined_s: float | None = None
    left_s: float | None = None
    # not in the summary
    connected: bool = False
    last_arrival: float | None = None
    last_g2g_ms: float | None = None
    frames_at_sample: int = 0
    next_judge: float = 0.0

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("connected", "last_arrival", "last_g2g_ms", "frames_at_sample", "next_judge"):
            d.pop(k)
        return d


@dataclass
class Restart:
    camera: str
    how: str  # kill (SIGKILL) or stop (SIGTERM)
    at_s: float  # run time when it went down
    down_s: float
    kill_wall_ms: float
    start_s: float | None = None  # how long SimCamera.start() took (launch until listening)
    back_mono: float | None = None
    arrivals: dict[str, float | None] = field(default_factory=dict)  # viewer -> first live frame (mono)
    recovery_s: dict[str, float | None] = field(default_factory=dict)
    worst_s: float | None = None
    error: str | None = None


class Tracker:
    """Everything the viewers see, under one lock (viewer threads and the WebRTC loop write to it)."""

    def __init__(self, t0: float, judge_every_s: float, judge_q: queue.Queue[Any]) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.viewers: list[ViewerStats] = []
        self.restarts: list[Restart] = []
        self.active: list[Restart] = []
        self.judge_every_s = judge_every_s
        self.judge_q = judge_q
        self.judge_dropped = 0

    def run_s(self, mono: float | None = None) -> float:
        return (time.monotonic() if mono is None else mono) - self.t0

    def add(self, name: str, camera: str, kind: str) -> ViewerStats:
        v = ViewerStats(name, camera, kind, joined_s=round(self.run_s(), 2))
        v.next_judge = time.monotonic() + random.uniform(0, self.judge_every_s)
        with self.lock:
            self.viewers.append(v)
        return v

    def connected(self, v: ViewerStats, up: bool) -> None:
        with self.lock:
            v.connected = up
            if up:
                v.connects += 1
            v.last_arrival = None  # a new connection: no gap across the reconnect

    def error(self, v: ViewerStats, what: str) -> None:
        with self.lock:
            v.errors += 1
            v.last_errors = [*v.last_errors[-4:], f"{self.run_s():.0f}s {what}"]

    def leave(self, v: ViewerStats) -> None:
        with self.lock:
            v.connected = False
            v.left_s = round(self.run_s(), 2)
            for r in self.active:
                # A viewer that left on purpose during an outage says nothing about the recovery.
                if v.name in r.arrivals and r.arrivals[v.name] is None:
                    del r.arrivals[v.name]

    def frame(self, v: ViewerStats, f: av.VideoFrame) -> None:
        now = time.monotonic()
        now_ms = time.time() * 1000
        stamp = frame_stamp(f)
        live = stamp is not None and abs(now_ms - stamp) < STAMP_MAX_AGE_MS
        judge = live and now >= v.next_judge
        with self.lock:
            v.frames += 1
            if v.last_arrival is not None and now - v.last_arrival > GAP_S:
                v.gaps.append((round(self.run_s(now), 2), round(now - v.last_arrival, 2)))
            v.last_arrival = now
            if live:
                assert stamp is not None
                v.live_frames += 1
                v.last_g2g_ms = now_ms - stamp
                for r in self.active:
                    if r.camera == v.camera and v.name in r.arrivals and r.arrivals[v.name] is None:
                        if stamp > r.kill_wall_ms:  # captured by the camera after it went down: the new one
                            r.arrivals[v.name] = now
            if judge:
                v.next_judge = now + self.judge_every_s
        if judge:
            try:
                self.judge_q.put_nowait(
                    (v.name, round(self.run_s(now), 1), f.to_ndarray(format="bgr24", threads=1))
                )
            except queue.Full:
                self.judge_dropped += 1

    def begin_restart(self, r: Restart) -> None:
        with self.lock:
            r.arrivals = {v.name: None for v in self.viewers if v.connected and v.camera == r.camera}
            self.restarts.append(r)
            self.active.append(r)

    def restart_done(self, r: Restart) -> bool:
        with self.lock:
            return all(a is not None for a in r.arrivals.values())

    def end_restart(self, r: Restart) -> None:
        with self.lock:
            self.active.remove(r)
            back = r.back_mono
            for name, at in r.arrivals.items():
                r.recovery_s[name] = None if at is None or back is None else round(max(0.0, at - back), 3)
            vals = list(r.recovery_s.values())
            r.worst_s = (
                None if (not vals or any(x is None for x in vals)) else max(x for x in vals if x is not None)
            )

    def outage_windows(self) -> list[tuple[float, float]]:
        """(start, end) run times of each outage: from the camera going down to its recovery + 1 s."""
        out = []
        for r in self.restarts:
            end = (
                r.at_s
                + r.down_s
                + (r.start_s or 0)
                + (r.worst_s if r.worst_s is not None else RECOVERY_WAIT_S)
            )
            out.append((r.at_s, end + 1.0))
        return out


def frame_stamp(f: av.VideoFrame) -> int | None:
    """The camera's capture time (ms) from the barcode in the top-left corner, or None."""
    try:
        if f.format.name in ("yuv420p", "yuvj420p", "nv12", "gray"):
            plane = f.planes[0]
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
            return read_stamp(np.ascontiguousarray(rows[:64, : f.width]))
        return read_stamp(f.to_ndarray(format="gray", threads=1)[:64])
    except (ValueError, TypeError):
        return None


def rtsp_viewer(url: str, transport: str, v: ViewerStats, tr: Tracker, stop: threading.Event) -> None:
    """Decode `url` until `stop`; after an error, count it and connect again (1 s later)."""
    while not stop.is_set():
        try:
            with av.open(url, options={"rtsp_transport": transport, **LOW_DELAY}, timeout=(10, 5)) as c:
                tr.connected(v, True)
                for f in c.decode(video=0):
                    tr.frame(v, f)
                    if stop.is_set():
                        break
                else:
                    tr.error(v, "stream ended")
        except Exception as err:  # a viewer on another machine would see the same and reconnect
            if not stop.is_set():
                tr.error(v, f"{type(err).__name__}: {err}"[:160])
        finally:
            tr.connected(v, False)
        stop.wait(1.0)


@dataclass
class WebrtcTotals:
    joins: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    leave_status: Counter[str] = field(default_factory=Counter)


async def webrtc_slot(
    slot: int, http_port: int, cams: list[str], args: argparse.Namespace, tr: Tracker, totals: WebrtcTotals,
    stop: threading.Event,
) -> None:  # fmt: skip
    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from streamproxy.serve.webrtc import gather_hosts

    rng = random.Random(args.seed * 1000 + slot)
    base = f"http://127.0.0.1:{http_port}"
    n = 0

    async def pause(seconds: float) -> None:
        for _ in range(max(1, round(seconds / 0.2))):  # bounded, and quick to notice `stop`
            if stop.is_set():
                return
            await asyncio.sleep(0.2)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        await pause(rng.uniform(0, args.off_max_s))
        while not stop.is_set():
            n += 1
            cam = rng.choice(cams)
            stay = rng.uniform(args.stay_min_s, args.stay_max_s)
            v = tr.add(f"{cam}/webrtc{slot}.{n}", cam, "webrtc")
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("video", direction="recvonly")
            got_track: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            @pc.on("track")
            def on_track(track: Any, fut: asyncio.Future[Any] = got_track) -> None:
                if not fut.done():
                    fut.set_result(track)

            location: str | None = None
            try:
                with gather_hosts(["127.0.0.1"]):
                    await pc.setLocalDescription(await pc.createOffer())
                async with http.post(
                    f"{base}/{cam}/whep",
                    data=pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp"},
                ) as resp:
                    answer = await resp.text()
                    status = resp.status
                    location = resp.headers.get("Location") if status == 201 else None
                if status != 201:
                    totals.refused[str(status)] += 1
                    tr.error(v, f"WHEP {status}: {answer.strip()[:80]}")
                    end = 0.0  # no stay: the pause below, then another try
                else:
                    totals.joins += 1
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                    track = await asyncio.wait_for(got_track, 15)
                    tr.connected(v, True)
                    end = time.monotonic() + stay
                while not stop.is_set() and time.monotonic() < end:
                    try:
                        f = await asyncio.wait_for(track.recv(), min(5.0, max(0.1, end - time.monotonic())))
                    except TimeoutError:
                        if time.monotonic() < end - 0.05:
                            tr.error(v, "no frame for 5 s")
                        continue
                    except MediaStreamError:
                        tr.error(v, "track ended")
                        break
                    tr.frame(v, f)
            except Exception as err:
                tr.error(v, f"{type(err).__name__}: {err}"[:160])
            finally:
                tr.leave(v)
                if location is not None:
                    try:
                        async with http.delete(f"{base}{location}") as r:
                            totals.leave_status[str(r.status)] += 1
                    except Exception as err:
                        totals.leave_status[type(err).__name__] += 1
                with contextlib.suppress(Exception):
                    await pc.close()
            await pause(rng.uniform(args.off_min_s, args.off_max_s))


def webrtc_thread(http_port: int, cams: list[str], args: argparse.Namespace, tr: Tracker,
                  totals: WebrtcTotals, stop: threading.Event) -> None:  # fmt: skip
    async def main() -> None:
        await asyncio.gather(
            *(webrtc_slot(i, http_port, cams, args, tr, totals, stop) for i in range(args.webrtc))
        )

    try:
        asyncio.run(main())
    except Exception:
        log.exception("WebRTC viewers")


# --- camera restarts ------------------------------------------------------------------------------------


def restarter(sims: list[SimCamera], args: argparse.Namespace, tr: Tracker, stop: threading.Event,
              end_mono: float) -> None:  # fmt: skip
    rng = random.Random(args.seed + 1)
    while True:
        wait = rng.uniform(args.restart_min_s, args.restart_max_s)
        down = rng.uniform(args.down_min_s, args.down_max_s)
        i = rng.randrange(len(sims))
        how = rng.choice(("kill", "stop"))
        # No restart that could not be measured before the end of the run.
        if time.monotonic() + wait + down + RECOVERY_WAIT_S > end_mono or stop.wait(wait):
            return
        sim = sims[i]
        # kill_wall_ms is set once the camera is dead: until then no frame counts as "back".
        r = Restart(f"cam{i}", how, round(tr.run_s(), 2), round(down, 2), float("inf"))
        tr.begin_restart(r)
        (sim.kill if how == "kill" else sim.stop)()
        r.kill_wall_ms = time.time() * 1000  # frames stamped after this come from the new camera
        log.info("cam%d: %s, down %.1f s (viewers %s)", i, how, down, sorted(r.arrivals))
        time.sleep(down)  # not cut short by stop: the camera must come back
        t = time.monotonic()
        for attempt in range(3):
            try:
                sim.start()
                break
            except Exception as err:  # the port may linger a moment after a kill
                r.error = f"start attempt {attempt + 1}: {err}"[:200]
                time.sleep(1.0)
        r.back_mono = time.monotonic()
        r.start_s = round(r.back_mono - t, 2)
        deadline = r.back_mono + RECOVERY_WAIT_S
        while time.monotonic() < deadline and not tr.restart_done(r):
            time.sleep(0.02)
        tr.end_restart(r)
        log.info("cam%d: back after %.2f s at the slowest viewer (%s)", i, r.worst_s or -1, r.recovery_s)


# --- the fuzzer -----------------------------------------------------------------------------------------


def _answer_class(buf: bytes, inject_check: bool = False) -> str:
    if not buf:
        return "closed"
    head = buf.split(b"\r\n\r\n", 1)[0]
    line = head.split(b"\n", 1)[0].split()
    if len(line) >= 2 and line[0].startswith((b"RTSP/", b"HTTP/")) and line[1].isdigit():
        if inject_check and b"\nx-injected:" in head.lower():
            return "injected"
        return line[1].decode()
    return "garbage-answer"


def exchange(port: int, payload: bytes | list[bytes], delay_s: float = 0.0, timeout: float = 3.0,
             inject_check: bool = False) -> str:  # fmt: skip
    """Send one request on a fresh connection (chunks with `delay_s` between them); the answer's class."""
    buf = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            deadline = (
                time.monotonic() + timeout + (len(payload) * delay_s if isinstance(payload, list) else 0)
            )
            for chunk in payload if isinstance(payload, list) else [payload]:
                s.sendall(chunk)
                if delay_s:
                    time.sleep(delay_s)
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                s.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
    except TimeoutError:
        return _answer_class(buf, inject_check) if buf else "timeout"
    except (ConnectionResetError, BrokenPipeError):
        return _answer_class(buf, inject_check) if buf else "reset"
    except OSError as err:
        return f"oserror:{err.errno}"
    return _answer_class(buf, inject_check)


# Fuzz kinds to which no answer is due (the server waits for the rest of a frame): a timeout is fine.
SILENT_OK = frozenset({"rtsp_interleaved_truncated"})

VP8_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n"
    "a=rtpmap:96 VP8/90000\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
)


def fuzz_cases(rtsp_port: int, http_port: int, cam: str, rng: random.Random) -> dict[str, Any]:
    """kind -> () -> answer class. Each case builds a fresh request (random parts from `rng`)."""
    rurl = f"rtsp://127.0.0.1:{rtsp_port}/{cam}"
    host = f"Host: 127.0.0.1:{http_port}\r\n"

    def rnd(n: int) -> bytes:
        return bytes(rng.randrange(256) for _ in range(n))

    def rtsp(data: bytes | list[bytes], **kw: Any) -> str:
        return exchange(rtsp_port, data, **kw)

    def http(data: bytes | list[bytes], **kw: Any) -> str:
        return exchange(http_port, data, **kw)

    def whep(body: bytes, ctype: str = "application/sdp", path: str = f"/{cam}/whep") -> str:
        head = f"POST {path} HTTP/1.1\r\n{host}Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return http(head.encode() + body)

    options = f"OPTIONS {rurl} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode()
    get = f"GET /healthz HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode()
    return {
        "rtsp_garbage": lambda: rtsp(rnd(rng.randrange(1, 300)) + b"\r\n\r\n"),
        "rtsp_garbage_line": lambda: rtsp(
            b"HELLO " + rnd(20).hex().encode() + b" RTSP/9.9\r\nCSeq: x\r\n\r\n"
        ),
        "rtsp_oversized_header": lambda: rtsp(
            f"OPTIONS {rurl} RTSP/1.0\r\nCSeq: 1\r\nX-Pad: ".encode() + b"A" * 70_000 + b"\r\n\r\n"
        ),
        "rtsp_many_headers": lambda: rtsp(
            f"OPTIONS {rurl} RTSP/1.0\r\nCSeq: 1\r\n".encode() + b"X-H: 1\r\n" * 2000 + b"\r\n"
        ),
        "rtsp_byte_by_byte": lambda: rtsp(
            [options[i : i + 1] for i in range(len(options))], delay_s=0.02, timeout=6.0
        ),
        "rtsp_lf_only": lambda: rtsp(f"OPTIONS {rurl} RTSP/1.0\nCSeq: 1\n\n".encode()),
        "rtsp_bad_uri": lambda: rtsp(b"DESCRIBE rtsp://[::1 RTSP/1.0\r\nCSeq: 2\r\n\r\n"),
        "rtsp_bad_port": lambda: rtsp(
            f"DESCRIBE rtsp://127.0.0.1:99999/{cam} RTSP/1.0\r\nCSeq: 3\r\n\r\n".encode()
        ),
        "rtsp_cseq_inject": lambda: rtsp(
            f"OPTIONS {rurl} RTSP/1.0\r\nCSeq: 1\nX-Injected: yes\r\n\r\n".encode(), inject_check=True
        ),
        "rtsp_unknown_path": lambda: rtsp(
            f"DESCRIBE rtsp://127.0.0.1:{rtsp_port}/nope RTSP/1.0\r\nCSeq: 4\r\n\r\n".encode()
        ),
        "rtsp_play_no_session": lambda: rtsp(
            f"PLAY {rurl} RTSP/1.0\r\nCSeq: 5\r\nSession: 1234\r\n\r\n".encode()
        ),
        # An interleaved frame (to the server: an RTCP report) of garbage, then a request: answered.
        "rtsp_interleaved_then_options": lambda: rtsp(b"$\x00\x00\xc8" + rnd(200) + options),
        # One that announces 65535 bytes and sends 200: no answer is due, the idle timeout reclaims it.
        "rtsp_interleaved_truncated": lambda: rtsp(b"$\x00\xff\xff" + rnd(200)),
        "http_garbage": lambda: http(rnd(rng.randrange(1, 300)) + b"\r\n\r\n"),
        "http_oversized_header": lambda: http(
            f"GET /healthz HTTP/1.1\r\n{host}X-Pad: ".encode() + b"A" * 70_000 + b"\r\n\r\n"
        ),
        "http_byte_by_byte": lambda: http(
            [get[i : i + 1] for i in range(len(get))], delay_s=0.02, timeout=6.0
        ),
        "http_bad_path": lambda: http(
            f"GET /../../etc/passwd HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode()
        ),
        "whep_garbage_body": lambda: whep(rnd(rng.randrange(1, 2000))),
        "whep_empty_body": lambda: whep(b""),
        "whep_huge_body": lambda: whep(b"v=0\r\n" + b"a=x\r\n" * 400_000),
        "whep_wrong_type": lambda: whep(b"v=0\r\n", ctype="text/plain"),
        "whep_unknown_camera": lambda: whep(VP8_OFFER.encode(), path="/nope/whep"),
        "whep_vp8_only": lambda: whep(VP8_OFFER.encode()),
        "whep_bad_delete": lambda: http(
            f"DELETE /{cam}/whep/{rnd(8).hex()} HTTP/1.1\r\n{host}Connection: close\r\n\r\n".encode()
        ),
    }


def fuzzer(rtsp_port: int, http_port: int, cams: list[str], args: argparse.Namespace,
           counts: dict[str, Counter[str]], stop: threading.Event) -> None:  # fmt: skip
    rng = random.Random(args.seed + 2)
    while not stop.wait(rng.expovariate(args.fuzz_rate)):
        cases = fuzz_cases(rtsp_port, http_port, rng.choice(cams), rng)
        kind = rng.choice(sorted(cases))
        try:
            cls = cases[kind]()
        except Exception as err:  # a bug here, not in the service: count it apart
            cls = f"client-error:{type(err).__name__}"
        counts.setdefault(kind, Counter())[cls] += 1


# --- the face judge -------------------------------------------------------------------------------------


@dataclass
class JudgeResult:
    calibration_frames: int = 0
    calibration_with_face: int = 0
    calibration_best: float = 0.0
    judged: int = 0
    by_viewer_kind: dict[str, int] = field(default_factory=dict)  # not a Counter: asdict() mangles those
    faces: list[dict[str, Any]] = field(default_factory=list)  # every judged frame with a visible face
    best_score: float = 0.0


def make_judge() -> Any:
    from streamproxy.config import DetectorConfig
    from streamproxy.engine.detect import create_detector

    return create_detector(DetectorConfig(input_width=640, threshold=0.3, threads=1))


def calibrate(judge: Any, url: str, res: JudgeResult, frames: int = 10) -> None:
    """Judge frames straight from the camera: it must see the camera's faces, or its verdicts are void."""
    with av.open(url, options={"rtsp_transport": "tcp", **LOW_DELAY}, timeout=(10, 5)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 5 == 0:  # frames spread over ~2 s of the moving clip
                scores = [d.score for d in judge.detect_bgr(f.to_ndarray(format="bgr24", threads=1))]
                res.calibration_frames += 1
                res.calibration_best = max([res.calibration_best, *scores])
                res.calibration_with_face += any(s >= VISIBLE for s in scores)
            if res.calibration_frames >= frames:
                break


def judge_loop(judge: Any, q: queue.Queue[Any], res: JudgeResult) -> None:
    """Judge (viewer, run time, BGR) items until a None."""
    while True:
        item = q.get()
        if item is None:
            return
        name, at, bgr = item
        scores = sorted((d.score for d in judge.detect_bgr(bgr)), reverse=True)
        res.judged += 1
        kind = name.split("/")[1].rstrip("0123456789.")
        res.by_viewer_kind[kind] = res.by_viewer_kind.get(kind, 0) + 1
        if scores:
            res.best_score = max(res.best_score, scores[0])
        if scores and scores[0] >= VISIBLE:
            res.faces.append({"viewer": name, "at_s": at, "scores": [round(s, 3) for s in scores[:3]]})
            log.error("%s: a visible face at %.1f s (scores %s)", name, at, scores[:3])


# --- the run --------------------------------------------------------------------------------------------


def pctl(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def floor_growth(values: list[int]) -> int | None:
    if len(values) < 2:
        return None
    k = max(1, len(values) // 3)
    return min(values[-k:]) - min(values[:k])


def scan_log(path: Path) -> dict[str, Any]:
    text = path.read_text(errors="replace") if path.exists() else ""
    lines = text.splitlines()
    markers = ("Task exception was never retrieved", "Exception in callback", "Unhandled exception")
    return {
        "bytes": len(text),
        "lines": len(lines),
        "tracebacks": sum(1 for ln in lines if ln.startswith("Traceback (most recent call last)")),
        "error_lines": sum(1 for ln in lines if " ERROR " in ln),
        "warning_lines": sum(1 for ln in lines if " WARNING " in ln),
        "escaped_exceptions": sum(1 for ln in lines if any(m in ln for m in markers)),
        "last_errors": [ln[:240] for ln in lines if " ERROR " in ln][-5:],
    }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def sample_line(s: dict[str, Any]) -> str:
    cams = " ".join(f"{c['name']}:{c['state'][:4]} {c['fps_out']:.0f}fps" for c in s["cameras"])
    views = " ".join(
        f"{v['name']}:{v['fps']:.0f}fps/{_num(v['age_s'], '.1f')}s/{_num(v['g2g_ms'], '.0f')}ms"
        for v in s["viewers"]
    )
    return (
        f"[{s['t_s']:6.0f}s] rss {s['rss_mb']:.1f} MB  fds {s['fds']}  threads {s['threads']}  tasks {_num(s['tasks'], 'd')}  "
        f"cpu {s['cpu_pct']:.0f}%  load {s['load1']:.1f}  fuzz {s['fuzz_total']}  | {cams} | {views}"
    )


def run(args: argparse.Namespace) -> int:
    why = system_gst_available()
    if why:
        print(f"soak: cannot run the simulated cameras: {why}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    sims = [SimCamera(width=args.width, height=args.height, fps=args.fps) for _ in range(args.cameras)]
    svc: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    judge_q: queue.Queue[Any] = queue.Queue(maxsize=64)
    judge_res = JudgeResult()
    fuzz_counts: dict[str, Counter[str]] = {}
    wtotals = WebrtcTotals()
    samples: list[dict[str, Any]] = []
    notes: list[str] = []
    summary: dict[str, Any] = {}
    died_at: float | None = None
    shutdown: dict[str, Any] = {}
    log_path = tmp / "service.log"
    tr: Tracker | None = None
    judge_thread: threading.Thread | None = None
    try:
        for sim in sims:
            sim.start()
        cfg_path, rtsp_port, http_port = write_config(tmp, sims, args)
        with open(log_path, "wb") as logf:
            svc = subprocess.Popen(
                [sys.executable, "-m", "streamproxy.cli", "run", "--config", str(cfg_path)],
                stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )  # fmt: skip
        cams = [f"cam{i}" for i in range(args.cameras)]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            api = cameras_api(http_port)
            if len(api) == len(cams) and all(
                c.get("state") == "live" and c.get("frames_out", 0) > 0 for c in api
            ):
                break
            if svc.poll() is not None:
                break
            time.sleep(0.5)
        else:
            print(f"soak: cameras not live within 90 s: {cameras_api(http_port)}", file=sys.stderr)
            return 2
        if svc.poll() is not None:
            print(
                f"soak: the service exited at start ({svc.returncode}):\n{log_path.read_text()[-3000:]}",
                file=sys.stderr,
            )
            return 2
        log.info("service pid %d: RTSP %d, HTTP %d, cameras live", svc.pid, rtsp_port, http_port)

        judge = make_judge()
        calibrate(judge, sims[0].url, judge_res)
        log.info("judge on the camera itself: %d/%d frames with a visible face (best %.2f)",
                 judge_res.calibration_with_face, judge_res.calibration_frames, judge_res.calibration_best)  # fmt: skip
        judge_thread = threading.Thread(
            target=judge_loop, args=(judge, judge_q, judge_res), daemon=True, name="judge"
        )
        judge_thread.start()

        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        tr = Tracker(t0, args.judge_every_s, judge_q)
        for cam in cams:
            for kind, n in (("tcp", args.rtsp_tcp), ("udp", args.rtsp_udp)):
                for k in range(n):
                    v = tr.add(f"{cam}/{kind}{k}", cam, kind)
                    url = f"rtsp://127.0.0.1:{rtsp_port}/{cam}"
                    threads.append(
                        threading.Thread(target=rtsp_viewer, args=(url, kind, v, tr, stop), daemon=True)
                    )
        if args.webrtc:
            threads.append(
                threading.Thread(
                    target=webrtc_thread, args=(http_port, cams, args, tr, wtotals, stop), daemon=True
                )
            )
        if args.restart_max_s > 0:
            threads.append(threading.Thread(target=restarter, args=(sims, args, tr, stop, end), daemon=True))
        if args.fuzz_rate > 0:
            threads.append(
                threading.Thread(
                    target=fuzzer, args=(rtsp_port, http_port, cams, args, fuzz_counts, stop), daemon=True
                )
            )
        for th in threads:
            th.start()

        prev = proc_status(svc.pid)
        prev_t = time.monotonic()
        next_sample = t0 + args.sample_s
        try:
            while time.monotonic() < end:
                time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
                if svc.poll() is not None:
                    died_at = tr.run_s()
                    notes.append(f"the service exited with {svc.returncode} at {died_at:.0f} s")
                    break
                if time.monotonic() < next_sample:
                    continue
                next_sample += args.sample_s
                now = time.monotonic()
                st = proc_status(svc.pid)
                if not st:
                    continue
                api = cameras_api(http_port)
                with tr.lock:
                    views = []
                    for v in tr.viewers:
                        if not v.connected:
                            continue
                        views.append({
                            "name": v.name,
                            "fps": (v.frames - v.frames_at_sample) / (now - prev_t),
                            "frames": v.frames,
                            "age_s": max(0.0, round(now - v.last_arrival, 2)) if v.last_arrival is not None else None,
                            "g2g_ms": round(v.last_g2g_ms) if v.last_g2g_ms is not None else None,
                        })  # fmt: skip
                    for v in tr.viewers:
                        v.frames_at_sample = v.frames
                s = {
                    "t_s": round(now - t0, 1),
                    "rss_mb": st["VmRSS"] / 1024,
                    "fds": st["fds"],
                    "threads": st["Threads"],
                    "tasks": asyncio_tasks(http_port),
                    "cpu_pct": (st["cpu_ticks"] - prev.get("cpu_ticks", 0)) / CLK_TCK / (now - prev_t) * 100,
                    "load1": os.getloadavg()[0],  # the machine's: on a shared one, others' work shows here
                    "healthz": http_get(http_port, "/healthz")[0],
                    "fuzz_total": sum(sum(c.values()) for c in fuzz_counts.values()),
                    "cameras": [
                        {"name": c.get("name"), "state": str(c.get("state")), "fps_out": float(c.get("fps_out") or 0),
                         "dropped": c.get("dropped"), "fail_closed_frames": c.get("fail_closed_frames")}
                        for c in api
                    ],
                    "viewers": views,
                }  # fmt: skip
                samples.append(s)
                prev, prev_t = st, now
                print(sample_line(s), flush=True)
        except KeyboardInterrupt:
            notes.append(f"interrupted at {tr.run_s():.0f} s")
    finally:
        stop.set()
        for th in threads:
            th.join(RECOVERY_WAIT_S + 10)  # a restart in progress finishes its measurement
        if judge_thread is not None:
            judge_q.put(None)
            judge_thread.join(60)
        if svc is not None:
            if svc.poll() is None:
                t = time.monotonic()
                svc.send_signal(signal.SIGTERM)
                try:
                    svc.wait(20)
                    shutdown = {"sigterm_s": round(time.monotonic() - t, 2), "returncode": svc.returncode}
                except subprocess.TimeoutExpired:
                    shutdown = {
                        "sigterm_s": None,
                        "returncode": None,
                        "note": "no exit 20 s after SIGTERM: killed",
                    }
                    os.killpg(svc.pid, signal.SIGKILL)
                    svc.wait(5)
            else:
                shutdown = {"sigterm_s": None, "returncode": svc.returncode, "note": "exited on its own"}
        for sim in sims:
            sim.stop()
        if tr is not None:
            summary = summarize(args, tr, samples, judge_res, fuzz_counts, wtotals, scan_log(log_path), shutdown,
                                died_at, notes)  # fmt: skip
        if args.keep:
            print(f"soak: temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not summary:
        return 2
    print_summary(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0 if all(t["ok"] for t in summary["targets"].values()) else 1


def summarize(
    args: argparse.Namespace, tr: Tracker, samples: list[dict[str, Any]], judge: JudgeResult,
    fuzz: dict[str, Counter[str]], wtotals: WebrtcTotals, service_log: dict[str, Any], shutdown: dict[str, Any],
    died_at: float | None, notes: list[str],
) -> dict[str, Any]:  # fmt: skip
    after = [s for s in samples if s["t_s"] >= args.warmup_s]
    if len(after) < 2 and len(samples) >= 2:
        notes.append(
            f"fewer than 2 samples after the {args.warmup_s:.0f} s warm-up: growth over the last half instead"
        )
        after = samples[len(samples) // 2 :]
    rss = [s["rss_mb"] for s in after]
    fds = [s["fds"] for s in after]
    thr = [s["threads"] for s in after]
    tasks = [s["tasks"] for s in after if s["tasks"] is not None]
    growth: dict[str, Any] = {
        "samples": len(after),
        "from_s": after[0]["t_s"] if after else None,
        "rss_baseline_mb": round(rss[0], 1) if rss else None,
        "rss_final_mb": round(rss[-1], 1) if rss else None,
        "rss_max_mb": round(max(rss), 1) if rss else None,
        "rss_growth_pct": round((rss[-1] - rss[0]) / rss[0] * 100, 2) if len(rss) >= 2 else None,
        "rss_growth_mb_per_min": (
            round((rss[-1] - rss[0]) / max(1e-9, (after[-1]["t_s"] - after[0]["t_s"]) / 60), 3) if len(rss) >= 2 else None
        ),
        "fds_min": min(fds, default=None), "fds_max": max(fds, default=None), "fds_floor_growth": floor_growth(fds),
        "threads_min": min(thr, default=None), "threads_max": max(thr, default=None),
        "threads_floor_growth": floor_growth(thr),
        "tasks_min": min(tasks, default=None), "tasks_max": max(tasks, default=None),
        "tasks_floor_growth": floor_growth(tasks) if tasks else None,
    }  # fmt: skip
    restarts = [asdict(r) for r in tr.restarts]
    for r in restarts:
        r.pop("back_mono")
        r.pop("arrivals")
        r.pop("kill_wall_ms")
    worst = [r.worst_s for r in tr.restarts]
    recovered = [w for w in worst if w is not None]
    outages = tr.outage_windows()
    viewers = [v.public() for v in tr.viewers]
    all_gaps: list[tuple[str, float, float]] = [(v.name, at, d) for v in tr.viewers for at, d in v.gaps]
    outside = [g for g in all_gaps if not any(a <= g[1] <= b for a, b in outages)]
    by_kind: dict[str, dict[str, int]] = {}
    for v in tr.viewers:
        k = by_kind.setdefault(
            v.kind, {"viewers": 0, "frames": 0, "live_frames": 0, "errors": 0, "reconnects": 0}
        )
        k["viewers"] += 1
        k["frames"] += v.frames
        k["live_frames"] += v.live_frames
        k["errors"] += v.errors
        k["reconnects"] += max(0, v.connects - 1)
    fuzz_out = {k: dict(c) for k, c in sorted(fuzz.items())}
    fuzz_classes: Counter[str] = Counter()
    for c in fuzz.values():
        fuzz_classes.update(c)
    bad_classes = {"timeout", "injected", "garbage-answer"}
    fuzz_bad = {
        k: {
            c: n
            for c, n in cs.items()
            if (c in bad_classes and not (k in SILENT_OK and c == "timeout"))
            or c.startswith(("oserror", "client-error", "5"))
        }
        for k, cs in fuzz_out.items()
    }
    calibrated = judge.calibration_frames > 0 and judge.calibration_with_face * 2 >= judge.calibration_frames
    rss_g = growth["rss_growth_pct"]
    fd_g = growth["fds_floor_growth"]
    task_g = growth["tasks_floor_growth"]
    targets = {
        "service_stayed_up": {"ok": died_at is None, "value": died_at},
        "rss_growth_le_10pct": {"ok": rss_g is not None and rss_g <= 10.0, "value": rss_g},
        "fds_flat": {"ok": fd_g is not None and fd_g <= args.fd_slack, "value": fd_g, "slack": args.fd_slack},
        "tasks_flat": {"ok": task_g is not None and task_g <= args.task_slack, "value": task_g,
                       "slack": args.task_slack},
        "restarts_recovered": {
            "ok": all(w is not None and w <= args.recover_s for w in worst),
            "value": max(recovered, default=None), "limit_s": args.recover_s, "restarts": len(worst),
            "not_recovered": sum(1 for w in worst if w is None),
        },
        "no_raw_face": {
            "ok": calibrated and not judge.faces and judge.judged > 0,
            "value": len(judge.faces), "judged": judge.judged, "judge_calibrated": calibrated,
        },
    }  # fmt: skip
    return {
        "args": vars(args),
        "minutes_run": round(tr.run_s() / 60, 2),
        "samples": samples,
        "growth": growth,
        "restarts": restarts,
        "recovery_s": {"max": max(recovered, default=None), "p50": pctl(recovered, 0.5), "n": len(recovered)},
        "viewers": viewers,
        "viewers_by_kind": by_kind,
        "gaps_over_1s": {
            "all": len(all_gaps),
            "outside_outages": len(outside),
            "outside_list": outside[:50],
            "max_s": max((g[2] for g in all_gaps), default=0.0),
        },
        "webrtc": {
            "joins": wtotals.joins,
            "refused": dict(wtotals.refused),
            "leave_status": dict(wtotals.leave_status),
        },
        "fuzz": {
            "total": sum(fuzz_classes.values()),
            "by_class": dict(fuzz_classes),
            "by_kind": fuzz_out,
            "suspicious": {k: v for k, v in fuzz_bad.items() if v},
        },
        "judge": {**asdict(judge), "dropped_samples": tr.judge_dropped},
        "service_log": service_log,
        "shutdown": shutdown,
        "notes": notes,
        "targets": targets,
    }


def print_summary(s: dict[str, Any]) -> None:
    g = s["growth"]
    print(
        f"\n=== soak summary: {s['minutes_run']} min, growth over {g['samples']} samples from {g['from_s']} s ==="
    )
    print(f"RSS: {g['rss_baseline_mb']} -> {g['rss_final_mb']} MB ({g['rss_growth_pct']} %, "
          f"{g['rss_growth_mb_per_min']} MB/min), max {g['rss_max_mb']} MB")  # fmt: skip
    print(f"fds: min {g['fds_min']} max {g['fds_max']} floor growth {g['fds_floor_growth']}; threads: min "
          f"{g['threads_min']} max {g['threads_max']} floor growth {g['threads_floor_growth']}; asyncio tasks: min "
          f"{g['tasks_min']} max {g['tasks_max']} floor growth {g['tasks_floor_growth']}")  # fmt: skip
    rec = s["recovery_s"]
    print(f"restarts: {len(s['restarts'])}, recovery max {rec['max']} s p50 {rec['p50']} s "
          f"({s['targets']['restarts_recovered']['not_recovered']} not recovered)")  # fmt: skip
    for r in s["restarts"]:
        print(f"  {r['at_s']:7.1f}s {r['camera']} {r['how']:4s} down {r['down_s']} s start {r['start_s']} s -> "
              f"{r['recovery_s']}{'  ' + r['error'] if r['error'] else ''}")  # fmt: skip
    gp = s["gaps_over_1s"]
    print(
        f"viewer gaps > 1 s: {gp['all']} ({gp['outside_outages']} outside outages), longest {gp['max_s']} s"
    )
    for name, at, d in gp["outside_list"][:8]:
        print(f"  outside an outage: {name} {d} s ending at {at} s")
    for kind, k in s["viewers_by_kind"].items():
        print(f"  {kind}: {k['viewers']} viewers, {k['frames']} frames ({k['live_frames']} live), "
              f"{k['errors']} errors, {k['reconnects']} reconnects")  # fmt: skip
    w = s["webrtc"]
    print(f"webrtc: {w['joins']} joins, refused {w['refused']}, leave {w['leave_status']}")
    f = s["fuzz"]
    print(f"fuzz: {f['total']} requests, answers {f['by_class']}")
    if f["suspicious"]:
        print(f"  suspicious answers: {f['suspicious']}")
    j = s["judge"]
    print(f"raw faces: {len(j['faces'])} in {j['judged']} judged frames (best score {j['best_score']:.2f}); "
          f"judge on the camera: {j['calibration_with_face']}/{j['calibration_frames']} with a face")  # fmt: skip
    sl = s["service_log"]
    print(f"service log: {sl['lines']} lines, {sl['tracebacks']} tracebacks, {sl['error_lines']} ERROR, "
          f"{sl['escaped_exceptions']} escaped exceptions; shutdown {s['shutdown']}")  # fmt: skip
    for n in s["notes"]:
        print(f"note: {n}")
    for name, t in s["targets"].items():
        print(f"target {name}: {'ok' if t['ok'] else 'FAIL'} ({t['value']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--rtsp-tcp", type=int, default=1, help="RTSP/TCP viewers per camera")
    p.add_argument("--rtsp-udp", type=int, default=1, help="RTSP/UDP viewers per camera")
    p.add_argument("--webrtc", type=int, default=2, help="WebRTC viewer slots (join, stay, leave, again)")
    p.add_argument("--stay-min-s", type=float, default=10.0)
    p.add_argument("--stay-max-s", type=float, default=90.0)
    p.add_argument("--off-min-s", type=float, default=1.0)
    p.add_argument("--off-max-s", type=float, default=10.0)
    p.add_argument("--restart-min-s", type=float, default=30.0, help="time between camera restarts, from")
    p.add_argument("--restart-max-s", type=float, default=90.0, help="... to (0: no restarts)")
    p.add_argument("--down-min-s", type=float, default=1.0)
    p.add_argument("--down-max-s", type=float, default=4.0)
    p.add_argument("--backoff-max-s", type=float, default=1.0, help="ingest.backoff_max_s of the service")
    p.add_argument("--fuzz-rate", type=float, default=1.0, help="malformed requests per second (0: none)")
    p.add_argument(
        "--judge-every-s", type=float, default=10.0, help="one frame per viewer this often is judged"
    )
    p.add_argument("--sample-s", type=float, default=30.0)
    p.add_argument("--warmup-s", type=float, default=120.0)
    p.add_argument("--recover-s", type=float, default=3.0, help="target: a restart recovered within this")
    p.add_argument("--fd-slack", type=int, default=10, help="target: descriptor floor growth at most this")
    p.add_argument(
        "--task-slack", type=int, default=10, help="target: asyncio task floor growth at most this"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (config, service log)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.cameras < 1 or args.minutes <= 0 or args.sample_s <= 0:
        p.error("--cameras >= 1, --minutes > 0 and --sample-s > 0")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aioice", "aiortc", "libav", "streamproxy_sim"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    av.logging.set_level(av.logging.PANIC)  # the UDP viewers' decode warnings after a loss
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
