#!/usr/bin/env python3
"""A real ZoneMinder 1.36 records the proxy under uneven pacing for 40 s (issue 20, item 1's target:
0 backward dts in the recording, 0 "non increasing dts" / "Error writing packet" lines from ZM).

    bench/setup_zoneminder.sh                                  # once, as root: packages + the zm database
    .venv/bin/python bench/zoneminder_record.py [--seconds 40] [--transport tcp|udp] [--keep]
    .venv/bin/python bench/zoneminder_record.py --pacing steady      # the proxy at a steady 25 fps
    .venv/bin/python bench/zoneminder_record.py --source gst         # control: gst-rtsp-server, not our code

Run as root (zmc writes under /var/cache/zoneminder and /var/log/zm, MariaDB is started by hand when
it is not running). What runs, all on 127.0.0.1:

* the source: the proxy's own RTSP server (streamproxy.serve.rtsp.server.RtspServer) serving a
  StreamHub fed by libx264 (streamproxy.live.encode.H264Encoder) whose capture times follow a seeded
  uneven schedule around 25 fps (early frames, late frames, bursts, a 0.6 s outage every 50 frames):
  the pacing that once sent RTP timestamps backwards;
* ZoneMinder: one Ffmpeg monitor on the proxy's URL (Method rtpRtsp = RTSP over TCP, or rtpUni for
  UDP), Function Record, SaveJPEGs off, VideoWriter 2 ("Camera Passthrough": the camera's H.264
  packets muxed into mp4 as they came), recorded by its capture daemon `zmc -m <id>` run directly
  for --seconds, then stopped with SIGTERM (which closes the event and its mp4).

Then it reads what ZM wrote: its events (Events table: frames, length), each event's mp4 with
`ffprobe -show_packets` (packets, dts steps that do not increase), and zmc's log lines since the
start (/var/log/zm/zmc_m<id>.log and the Logs table; log levels raised so that ZM's debug level 1 and
FFmpeg's messages are in it). Exit 1 on any "non increasing dts", "Error writing packet", other ERROR
line, backward or repeated dts (but for the first two packets at 0, see FIRST_AT_ZERO: any RTSP
source), or no recording at all; warnings are printed and counted but do not fail the run.
Everything stops within about 2 minutes; zmc and MariaDB are stopped if this script started them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from streamproxy.config import EncoderConfig, ServerConfig
from streamproxy.hub import StreamHub
from streamproxy.live.encode import H264Encoder
from streamproxy.serve.rtsp.server import RtspServer
from streamproxy_sim.camsim import SimCamera, system_gst_available
from streamproxy_sim.fakecam import uneven_schedule

log = logging.getLogger("bench.zoneminder_record")

MONITOR_ID = 1
MONITOR_NAME = "streamproxy-bench"
ZM_CONF = Path("/etc/zm/zm.conf")
ZM_EVENTS = Path("/var/cache/zoneminder/events")
ZM_LOGS = Path("/var/log/zm")
ZM_RUN = Path("/run/zm")
MYSQL_SOCK = Path("/run/mysqld/mysqld.sock")
SETUP_HINT = "run bench/setup_zoneminder.sh as root (apt-get install zoneminder mariadb-server; creates the zm database)"
# zmc's log line: "12/07/26 18:30:01.123456 zmc_m1[1234].WAR-zm_videostore.cpp/1234 [message]"
LOG_LINE = re.compile(
    r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d\.\d+ (?P<who>\S+)\[\d+\]\.(?P<lvl>[A-Z]{2,3}\d?)-(?P<src>\S+) \["
)
FIRST_AT_ZERO = (
    "note: the first two packets both at dts 0 are not counted: FFmpeg's RTSP demuxer hands ZM the first\n"
    "  frame without a timestamp (its H.264 parser cannot match RTP packets to it by byte position), ZM writes\n"
    "  it at 0 and rebases the first timestamped packet to 0 as well; libavformat accepts it (its dts check\n"
    "  starts after a non-zero dts). The same happens with gst-rtsp-server as the source (--source gst)."
)
DTS_LINES = ("non increasing dts", "Error writing packet", "non monotonically increasing dts")


def gradient_frame(i: int, w: int, h: int) -> av.VideoFrame:
    y = (np.add.outer(np.arange(h), np.arange(w)) + i * 4).astype(np.uint8)
    uv = np.full((h // 2, w), 128, np.uint8)
    return av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")


class UnevenCamera:
    """Publishes H.264 into a hub with capture times from `uneven_schedule`, sleeping to match."""

    def __init__(self, hub: StreamHub, w: int, h: int, kbps: int, steady: bool = False) -> None:
        self.hub, self.w, self.h, self.steady = hub, w, h, steady
        self.enc = H264Encoder(EncoderConfig(bitrate_kbps=kbps, gop_seconds=2.0), w, h, 25.0, name=hub.name)
        self.frames = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        sched = [i / 25.0 for i in range(100_000)] if self.steady else uneven_schedule(100_000)
        t0 = time.monotonic()
        for i, t in enumerate(sched):
            frame = gradient_frame(i, self.w, self.h)
            force = self.hub.take_keyframe_request()
            pkts = await asyncio.to_thread(self.enc.encode, frame, t0 + t, force)
            if self.hub.codec is None and self.enc.codec_info is not None:
                self.hub.set_codec(self.enc.codec_info)
            for p in pkts:
                self.hub.publish(p)
            self.frames += 1
            await asyncio.sleep(max(0.0, t0 + sched[i + 1] - time.monotonic()))

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task  # waits for an encode in its thread before the encoder is closed
        self.enc.close()


# --- MariaDB and the zm database ---


def zm_conf() -> dict[str, str]:
    conf: dict[str, str] = {}
    for path in [ZM_CONF, *sorted(Path("/etc/zm/conf.d").glob("*.conf"))]:
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                conf[k.strip()] = v.strip().strip('"')
    return conf


def sql(query: str, user: str = "zmuser", password: str = "zmpass", db: str | None = "zm") -> list[list[str]]:
    """Rows of a query through the mariadb client (tab-separated, no header)."""
    cmd = ["mariadb", "--batch", "--skip-column-names", f"--user={user}", f"--password={password}"]
    cmd += [*([db] if db else []), "-e", query]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"mariadb: {out.stderr.strip()} (query: {query[:200]})")
    return [line.split("\t") for line in out.stdout.splitlines()]


def db_alive(user: str, password: str, db: str | None = "zm") -> bool:
    try:
        sql("SELECT 1", user, password, db)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def start_mariadb() -> subprocess.Popen[bytes]:
    """MariaDB by hand (no systemd here), unix socket only; the caller stops it."""
    server = shutil.which("mariadbd") or shutil.which("mysqld") or "/usr/sbin/mariadbd"
    Path("/run/mysqld").mkdir(exist_ok=True)
    shutil.chown("/run/mysqld", "mysql")
    proc = subprocess.Popen(
        [server, "--user=mysql", "--skip-networking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server} exited with {proc.returncode} at start")
        if MYSQL_SOCK.exists() and db_alive("root", "", None):
            return proc
        time.sleep(0.5)
    stop_process(proc, "mariadb", 30.0)
    raise RuntimeError(f"{server} not answering after 30 s")


def stop_process(proc: subprocess.Popen[bytes], name: str, grace_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("%s: no exit %.0f s after SIGTERM, killing", name, grace_s)
            proc.kill()
            proc.wait(10)


def prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("run as root (zmc writes /var/cache/zoneminder, /var/log/zm, /dev/shm)")
    for tool in ("zmc", "mariadb", "ffprobe"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} not found: {SETUP_HINT}")
    if not ZM_CONF.exists():
        missing.append(f"{ZM_CONF} not found: {SETUP_HINT}")
    return missing


def configure_zm(url: str, w: int, h: int, transport: str) -> None:
    """One monitor on the proxy; log levels so that dts complaints reach the log file and table."""
    sql(f"DELETE FROM Monitors WHERE Id={MONITOR_ID} OR Name='{MONITOR_NAME}'")
    for (eid,) in sql(f"SELECT Id FROM Events WHERE MonitorId={MONITOR_ID}"):
        sql(f"DELETE FROM Frames WHERE EventId={int(eid)}")
    sql(f"DELETE FROM Events WHERE MonitorId={MONITOR_ID}")
    shutil.rmtree(ZM_EVENTS / str(MONITOR_ID), ignore_errors=True)
    method = "rtpRtsp" if transport == "tcp" else "rtpUni"
    sql(
        "INSERT INTO Monitors (Id, Name, Type, `Function`, Enabled, DecodingEnabled, Protocol, Method, Path, "
        "Options, Width, Height, Colours, Palette, SaveJPEGs, VideoWriter, OutputContainer, RecordAudio, "
        "StorageId, ImageBufferCount, MaxImageBufferCount, WarmupCount, PreEventCount, PostEventCount, "
        "SectionLength, MinSectionLength, EventPrefix, LabelFormat, AnalysisFPSLimit, MaxFPS, AlarmMaxFPS) VALUES "
        f"({MONITOR_ID}, '{MONITOR_NAME}', 'Ffmpeg', 'Record', 1, 1, 'rtsp', '{method}', '{url}', "
        f"'', {w}, {h}, 4, 0, 0, 2, 'mp4', 0, 1, 3, 0, 0, 0, 0, 600, 10, 'Event-', '', NULL, NULL, NULL)"
    )
    settings = {
        "ZM_LOG_LEVEL_FILE": "1",  # up to debug level 1 (ZM's own "non increasing dts" is Debug(1) in some 1.36s)
        "ZM_LOG_LEVEL_DATABASE": "0",  # info and worse in the Logs table
        "ZM_LOG_LEVEL_SYSLOG": "-5",  # off: the file and the table are read
        "ZM_LOG_DEBUG": "1",
        "ZM_LOG_DEBUG_LEVEL": "1",
        "ZM_LOG_DEBUG_TARGET": "",
        "ZM_LOG_DEBUG_FILE": "",  # debug lines go to the same file as the rest
        "ZM_LOG_FFMPEG": "1",  # libavformat's own messages ("non monotonically increasing dts") into ZM's log
        "ZM_OPT_USE_AUTH": "0",
    }
    for name, value in settings.items():
        sql(f"UPDATE Config SET Value='{value}' WHERE Name='{name}'")


# --- what ZM wrote ---


@dataclass
class Recording:
    path: Path
    packets: int = 0
    keyframes: int = 0
    backward: list[tuple[int, int, int]] = field(default_factory=list)  # (index, previous dts, dts)
    repeated: list[tuple[int, int, int]] = field(default_factory=list)
    first_at_zero: bool = False  # the first two packets both at dts 0 (see FIRST_AT_ZERO)
    duration_s: float = 0.0


def probe(path: Path) -> Recording:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_packets", "-show_entries",
         "packet=dts,flags", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    rec = Recording(path)
    dts: list[int] = []
    for line in out.stdout.splitlines():
        parts = line.strip().split(",")
        if not parts or not parts[0].lstrip("-").isdigit():
            continue
        dts.append(int(parts[0]))
        rec.keyframes += len(parts) > 1 and "K" in parts[1]
    rec.packets = len(dts)
    steps = [(i + 1, a, b) for i, (a, b) in enumerate(itertools.pairwise(dts))]
    rec.backward = [st for st in steps if st[2] < st[1]]
    rec.repeated = [st for st in steps if st[2] == st[1]]
    rec.first_at_zero = (1, 0, 0) in rec.repeated
    dur = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    with contextlib.suppress(ValueError):
        rec.duration_s = float(dur.stdout.strip())
    return rec


def zm_log_lines(path: Path, offset: int) -> list[tuple[str, str]]:
    """(level, whole line) of what zmc wrote to its log file after `offset`."""
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            out.append((m.group("lvl"), line))
        elif out:  # a message with a newline in it (an SQL statement): part of the line before
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
    return out


@contextlib.asynccontextmanager
async def proxy_source(args: argparse.Namespace) -> AsyncIterator[tuple[str, Callable[[], int]]]:
    """Our RTSP server and an uneven (or steady) camera: (URL, frames published so far)."""
    hub = StreamHub("cam1", buffer_packets=50)
    cfg = ServerConfig(
        host="127.0.0.1", rtsp_port=0, rtp_port_min=args.rtp_port, rtp_port_max=args.rtp_port + 400
    )
    server = RtspServer({"cam1": hub}, cfg)
    cam = UnevenCamera(hub, args.width, args.height, args.kbps, steady=args.pacing == "steady")
    await server.start()
    cam.start()
    url = f"rtsp://127.0.0.1:{server.port}/cam1"
    log.info("cam1: proxy serving %s (%s pacing, %dx%d)", url, args.pacing, args.width, args.height)
    try:
        yield url, lambda: cam.frames
    finally:
        await cam.stop()
        await server.stop()


@contextlib.asynccontextmanager
async def gst_source(args: argparse.Namespace) -> AsyncIterator[tuple[str, Callable[[], int]]]:
    """The control: not our code but gst-rtsp-server (the project's simulated camera), steady 25 fps."""
    why = system_gst_available()
    if why is not None:
        raise RuntimeError(f"--source gst: {why}")
    cam = SimCamera(width=args.width, height=args.height, fps=25, mode="replay", bitrate_kbps=args.kbps)
    await asyncio.to_thread(cam.start)
    log.info("cam: gst-rtsp-server serving %s", cam.url)
    try:
        yield cam.url, lambda: -1  # frames unknown
    finally:
        await asyncio.to_thread(cam.stop)


@dataclass
class ZmcRun:
    url: str
    log_offset: int  # zmc's log file size before the run: what follows is this run's
    db_start: float  # the Logs table's TimeKey at the start
    frames_sent: int  # by the source during the run; -1: unknown (the control)
    ran_s: float
    early_exit: int | None  # zmc's exit status when it stopped before it was told to
    console: str


def run_zmc(args: argparse.Namespace, url: str, published: Callable[[], int]) -> ZmcRun:
    """zmc records `url` for --seconds (in a thread: the proxy's event loop serves meanwhile)."""
    configure_zm(url, args.width, args.height, args.transport)
    ZM_RUN.mkdir(parents=True, exist_ok=True)  # zmc's sockets
    ZM_LOGS.mkdir(parents=True, exist_ok=True)
    log_file = ZM_LOGS / f"zmc_m{MONITOR_ID}.log"
    offset = log_file.stat().st_size if log_file.exists() else 0
    db_start = float(sql("SELECT UNIX_TIMESTAMP(NOW(6))")[0][0])
    frames0 = published()
    t0 = time.monotonic()
    zmc = subprocess.Popen(
        ["zmc", "-m", str(MONITOR_ID)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        log.info("zmc_m%d: started (pid %d), recording %.0f s", MONITOR_ID, zmc.pid, args.seconds)
        try:
            early_exit: int | None = zmc.wait(args.seconds)
        except subprocess.TimeoutExpired:
            early_exit = None
        frames_sent = published() - frames0 if frames0 >= 0 else -1
        stop_process(zmc, f"zmc_m{MONITOR_ID}", 20.0)  # SIGTERM: zmc closes the event and its mp4
        ran_s = time.monotonic() - t0
    finally:
        if zmc.poll() is None:
            zmc.kill()
            zmc.wait(10)
    console = zmc.stdout.read().decode(errors="replace") if zmc.stdout else ""
    return ZmcRun(url, offset, db_start, frames_sent, ran_s, early_exit, console)


async def with_source(args: argparse.Namespace) -> ZmcRun:
    source = proxy_source(args) if args.source == "proxy" else gst_source(args)
    async with source as (url, published):
        return await asyncio.to_thread(run_zmc, args, url, published)


def report(args: argparse.Namespace, run: ZmcRun) -> int:
    """Print what ZM wrote; 1 when it is not a clean recording."""
    url, ran_s, early_exit, frames_sent, console = (
        run.url,
        run.ran_s,
        run.early_exit,
        run.frames_sent,
        run.console,
    )
    log_file = ZM_LOGS / f"zmc_m{MONITOR_ID}.log"
    offset, db_start = run.log_offset, run.db_start
    # What ZM wrote.
    events = sql(
        "SELECT Id, Frames, Length, DefaultVideo, StartDateTime, EndDateTime FROM Events "
        f"WHERE MonitorId={MONITOR_ID} ORDER BY Id"
    )
    lines = zm_log_lines(log_file, offset)
    db_logs = sql(
        "SELECT Code, Message FROM Logs WHERE Component LIKE 'zmc%' "
        f"AND TimeKey >= {float(db_start):.6f} ORDER BY TimeKey"
    )
    recordings = [probe(p) for p in sorted((ZM_EVENTS / str(MONITOR_ID)).rglob("*.mp4"))]
    version = subprocess.run(["zmc", "-v"], capture_output=True, text=True).stdout.strip()
    how = f"exited by itself with {early_exit}" if early_exit is not None else "stopped by SIGTERM"
    what = "the proxy" if args.source == "proxy" else "gst-rtsp-server (control)"
    print(
        f"\nZoneMinder {version} recorded {what} at {url} over {args.transport.upper()} for {ran_s:.1f} s (zmc {how})"
    )
    if frames_sent >= 0:
        print(
            f"source: {frames_sent} frames published during the run ({frames_sent / ran_s:.1f} fps, {args.pacing})"
        )
    for eid, frames, length, video, start, end in events:
        print(f"event {eid}: {frames} frames, {length} s, video {video or '-'}, {start} .. {end}")
    for rec in recordings:
        print(
            f"mp4 {rec.path}: {rec.packets} packets ({rec.keyframes} keyframes), {rec.duration_s:.1f} s; "
            f"dts: {len(rec.backward)} backward, {len(rec.repeated)} repeated"
            + (" (the first two packets both at 0, see below)" if rec.first_at_zero else "")
        )
        for i, x, y in (rec.backward + rec.repeated)[:10]:
            print(f"   packet {i}: dts {x} -> {y}")
    dts_file = [ln for _, ln in lines if any(s in ln for s in DTS_LINES)]
    dts_db = [m for _, m in db_logs if any(s in m for s in DTS_LINES)]
    errors = [ln for lvl, ln in lines if lvl in ("ERR", "FAT", "PNC")]
    warnings = [ln for lvl, ln in lines if lvl == "WAR"]
    debug = sum(lvl.startswith("DB") for lvl, _ in lines)
    print(
        f"zmc log {log_file}: {len(lines)} lines of this run ({debug} debug level 1); Logs table: {len(db_logs)} rows"
    )
    for s in DTS_LINES:
        print(
            f'  "{s}": {sum(s in ln for ln in dts_file)} in the file, {sum(s in m for m in dts_db)} in the Logs table'
        )
    print(f"  ERROR/FATAL lines: {len(errors)}; WARNING lines: {len(warnings)}")
    for ln in (errors + warnings)[:30]:
        print(f"    {ln}")
    if console.strip():
        print("zmc console (last lines):\n    " + "\n    ".join(console.strip().splitlines()[-10:]))

    failures = []
    if not recordings or not any(r.packets for r in recordings):
        failures.append("ZoneMinder wrote no video")
    if early_exit is not None:
        failures.append(f"zmc exited by itself ({early_exit})")
    backward = sum(len(r.backward) for r in recordings)
    repeated = sum(len(r.repeated) - r.first_at_zero for r in recordings)
    if backward or repeated:
        failures.append(f"{backward} backward and {repeated} repeated dts in the recording")
    if dts_file or dts_db:
        failures.append(f"{max(len(dts_file), len(dts_db))} dts complaints in zmc's log")
    if errors:
        failures.append(f"{len(errors)} ERROR lines from zmc")
    if any(r.first_at_zero for r in recordings):
        print(FIRST_AT_ZERO)
    if not args.keep:
        shutil.rmtree(ZM_EVENTS / str(MONITOR_ID), ignore_errors=True)
    print("FAIL: " + "; ".join(failures) if failures else "OK: 0 backward dts, 0 dts complaints, 0 errors")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0, help="how long zmc records (default 40)")
    ap.add_argument(
        "--source",
        choices=["proxy", "gst"],
        default="proxy",
        help="what ZM records: the proxy (default) or, as a control, gst-rtsp-server",
    )
    ap.add_argument("--pacing", choices=["uneven", "steady"], default="uneven", help="the proxy's camera")
    ap.add_argument("--transport", choices=["tcp", "udp"], default="tcp", help="RTSP transport ZM asks for")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--kbps", type=int, default=800)
    ap.add_argument("--rtp-port", type=int, default=random.randrange(20000, 60000, 2), help="first UDP port")
    ap.add_argument("--keep", action="store_true", help="keep the recorded event under /var/cache/zoneminder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    missing = prerequisites()
    if missing:
        for m in missing:
            print(f"missing: {m}", file=sys.stderr)
        return 2
    mariadb: subprocess.Popen[bytes] | None = None
    try:
        if not db_alive("zmuser", "zmpass"):
            if MYSQL_SOCK.exists() and db_alive("root", "", None):
                print(f"MariaDB runs but the zm database or its user does not: {SETUP_HINT}", file=sys.stderr)
                return 2
            log.info("mariadb: not running, starting it for this run")
            mariadb = start_mariadb()
            if not db_alive("zmuser", "zmpass"):
                print(f"no zm database: {SETUP_HINT}", file=sys.stderr)
                return 2
        return report(args, asyncio.run(with_source(args)))
    finally:
        if mariadb is not None:
            log.info("mariadb: stopping the server this run started")
            stop_process(mariadb, "mariadb", 30.0)


if __name__ == "__main__":
    sys.exit(main())
