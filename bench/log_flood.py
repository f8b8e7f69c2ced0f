#!/usr/bin/env python3
"""10,000 crafted RTSP paths against `streamproxy run`: does any line reach its log that the server
did not write, and how fast does the log grow? (issue 20's target: no forged line; at most a summary
line a second.)

    .venv/bin/python bench/log_flood.py [--requests 10000] [--connections 4]

The service runs as a process, as deployed (`streamproxy run --config`, its log on stderr, INFO),
with one camera whose address refuses connections (a port nothing listens on: its reconnect lines
are part of what the log writes in the same time, and are counted). The requests are the test's
crafted paths (tests/test_rtsp_log.py): percent-encoded CR/LF, NUL, U+2028, U+0085, a terminal
escape, a backslash-n, a 2000-character path, each carrying a line that imitates an ERROR entry,
cycled, DESCRIBE and SETUP, pipelined on a few connections, plus malformed request lines (400).
Every line of the log is then checked: it starts with the service's own timestamp, level and logger
name, is printable, and no line starts with the forged text's timestamp. Loopback only; bounded by
the request count and a 300 s deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORGED_STAMP = "2026-12-07 06:00:00"
FORGED = "%0d%0a2026-12-07%2006:00:00%20ERROR%20streamproxy.app:%20forged"
CRAFTED_PATHS = [
    f"zz{FORGED}",
    f"zz%0a{FORGED}",
    f"zz%0d{FORGED}",
    f"zz%00{FORGED}",
    f"zz%e2%80%a8{FORGED}",
    f"zz%c2%85{FORGED}",
    f"zz%1b[2K{FORGED}",
    f"zz%5cn{FORGED}",
    "x" * 2000 + FORGED,
]
# The service's own line: "2026-12-07 18:40:01,123 INFO    streamproxy.rtsp.server: ..."
OWN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: ")
BATCH = 50
DEADLINE_S = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def request(i: int, base: str) -> bytes:
    if i % 10 == 9:  # a request line of two parts: 400, the connection goes on
        return f"DESCRIBE {base}/x{i}%0d%0aforged\r\nCSeq: {i + 1}\r\n\r\n".encode()
    path = CRAFTED_PATHS[i % len(CRAFTED_PATHS)]
    if i % 2:
        return (
            f"SETUP {base}/{path}/trackID=0 RTSP/1.0\r\nCSeq: {i + 1}\r\n"
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n"
        ).encode()
    return f"DESCRIBE {base}/{path} RTSP/1.0\r\nCSeq: {i + 1}\r\n\r\n".encode()


async def flood(port: int, first: int, count: int, statuses: dict[int, int]) -> None:
    """`count` requests on one connection, pipelined BATCH at a time, every answer read."""
    base = f"rtsp://127.0.0.1:{port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    try:
        done = 0
        while done < count:
            n = min(BATCH, count - done)
            writer.write(b"".join(request(first + done + k, base) for k in range(n)))
            await writer.drain()
            for _ in range(n):
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                statuses[status] = statuses.get(status, 0) + 1
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
            done += n
    finally:
        writer.close()


async def run_flood(port: int, total: int, connections: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    share = -(-total // connections)
    jobs = [flood(port, k * share, min(share, total - k * share), statuses) for k in range(connections)]
    await asyncio.wait_for(asyncio.gather(*jobs), DEADLINE_S)
    return statuses


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited ({proc.returncode}) before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the service did not listen on {port} in {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    rtsp, http, dead = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="log-flood-") as tmp:
        cfg = Path(tmp) / "streamproxy.yaml"
        cfg.write_text(
            f"cameras:\n  - name: gone\n    url: rtsp://127.0.0.1:{dead}/x\n"
            f"server:\n  host: 127.0.0.1\n  rtsp_port: {rtsp}\n  http_port: {http}\n"
            f"onvif:\n  enabled: false\ndata_dir: {tmp}/data\n"
        )
        log_path = Path(tmp) / "service.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamproxy", "run", "--config", str(cfg)], stderr=log, stdout=log
            )
            try:
                wait_listening(rtsp, proc, 60)
                time.sleep(2.0)  # the camera's first reconnect lines
                before = len(log_path.read_bytes().splitlines())
                t0 = time.monotonic()
                statuses = asyncio.run(run_flood(rtsp, args.requests, args.connections))
                flood_s = time.monotonic() - t0
                time.sleep(1.5)  # the throttle's last summary line, if one is due
                during = len(log_path.read_bytes().splitlines()) - before
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        data = log_path.read_bytes()
    lines = data.decode("utf-8", "replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    foreign = [ln for ln in lines if not OWN_LINE.match(ln)]
    forged = [ln for ln in lines if ln.startswith(FORGED_STAMP)]
    unprintable = [ln for ln in lines if not ln.isprintable()]
    flood_lines = [ln for ln in lines if "for unknown path" in ln or "RTSP 400 from" in ln]
    window_s = flood_s + 1.5
    print(
        f"requests: {args.requests} on {args.connections} connections in {flood_s:.2f} s "
        f"({args.requests / flood_s:.0f}/s); answers: {dict(sorted(statuses.items()))}"
    )
    print(
        f"log: {len(lines)} lines, {len(data)} bytes in all; {during} lines in the {window_s:.1f} s of the "
        f"flood ({during / window_s:.2f} a second), {len(flood_lines)} of them about the requests"
    )
    print(
        f"lines the service did not write: {len(foreign)}; starting with the forged stamp: {len(forged)}; "
        f"not printable: {len(unprintable)}"
    )
    for ln in (foreign + forged + unprintable)[:5]:
        print("  ", repr(ln[:200]))
    for ln in flood_lines[:6]:
        print("  ", ln[:200])
    ok = (
        not foreign
        and not forged
        and not unprintable
        and sum(statuses.values()) == args.requests
        and len(flood_lines) <= 2 * (window_s + 1)
    )
    # Two kinds of line (unknown path, malformed request): each at once the first time, then at most
    # one summary a second.
    print("target (no forged line; at most a summary line a second per kind):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
