"""Our RTSP server under test without a camera: a synthetic camera (moving gradient -> H264Encoder ->
StreamHub at ~25 fps) on port 0, raw RTSP over a socket, and real clients (ffprobe/ffmpeg, PyAV).

* `serve(users=..., limits=...)`: async context manager -> (RtspServer, Camera, URL).
* `RawRtsp`: requests and interleaved frames by hand; `pyav_read(url, frames)`: a PyAV viewer.
* `run(*cmd)`: a client subprocess; `with_creds(url, user, password)`; `need_ffmpeg` / `need_gst` marks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import re
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Self

import av
import numpy as np
import pytest

from streamproxy.config import EncoderConfig, LimitsConfig, ServerConfig, User
from streamproxy.hub import StreamHub
from streamproxy.live.encode import H264Encoder
from streamproxy.rtsp.protocol import parse_request_head
from streamproxy.serve.rtsp.server import RtspServer

W, H, FPS = 320, 240, 25.0
USER, PASSWORD = "viewer", "pa:ss w0rd"


def gradient_frame(i: int, w: int, h: int, noise: bool) -> av.VideoFrame:
    y = (np.add.outer(np.arange(h), np.arange(w)) + i * 4).astype(np.uint8)
    if noise:  # incompressible: a high bitrate that fills socket buffers quickly
        y = np.random.default_rng(i).integers(0, 255, (h, w), dtype=np.uint8)
    uv = np.full((h // 2, w), 128, np.uint8)
    return av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")


class Camera:
    """Publishes a synthetic stream into a hub, honouring keyframe requests."""

    def __init__(self, hub: StreamHub, w: int = W, h: int = H, kbps: int = 800, noise: bool = False) -> None:
        self.hub, self.w, self.h, self.noise = hub, w, h, noise
        self.enc = H264Encoder(EncoderConfig(bitrate_kbps=kbps, gop_seconds=4.0), w, h, FPS, name=hub.name)
        self.frames = 0
        self.task: asyncio.Task[None] | None = None
        # Cancelling the task does not stop an encode already running in its thread: close() must
        # wait for it (libx264 aborts the process when it is flushed while it encodes).
        self._enc_lock = threading.Lock()

    def encode(self, frame: av.VideoFrame, t: float, force: bool) -> list[Any]:
        """The encoder's encode, never at the same time as close() (for asyncio.to_thread)."""
        with self._enc_lock:
            return self.enc.encode(frame, t, force)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            frame = gradient_frame(self.frames, self.w, self.h, self.noise)
            force = self.hub.take_keyframe_request()
            pkts = await asyncio.to_thread(self.encode, frame, time.monotonic(), force)
            if self.hub.codec is None and self.enc.codec_info is not None:
                self.hub.set_codec(self.enc.codec_info)
            for p in pkts:
                self.hub.publish(p)
            self.frames += 1
            await asyncio.sleep(max(0.0, t0 + self.frames / FPS - loop.time()))

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with self._enc_lock:
            self.enc.close()


@contextlib.asynccontextmanager
async def serve(
    users: list[User] | None = None,
    publish: bool = True,
    buffer_packets: int = 50,
    kbps: int = 800,
    noise: bool = False,
    limits: dict[str, Any] | None = None,
    **server_kw: Any,
) -> AsyncIterator[tuple[RtspServer, StreamHub, str]]:
    hub = StreamHub("cam1", buffer_packets=buffer_packets)
    port_min = random.randrange(20000, 60000, 2)
    cfg = ServerConfig(
        host="127.0.0.1", rtsp_port=1024, users=users or [], rtp_port_min=port_min, rtp_port_max=port_min + 400,
        limits=LimitsConfig(**(limits or {})),
    )  # fmt: skip
    cfg = cfg.model_copy(update={"rtsp_port": 0})  # port 0: the OS picks; the model's bound is for users
    server = RtspServer({"cam1": hub}, cfg, **server_kw)
    cam = Camera(hub, kbps=kbps, noise=noise)
    await server.start()
    if publish:
        cam.start()
    try:
        yield server, hub, f"rtsp://127.0.0.1:{server.port}/cam1"
    finally:
        await server.stop()
        await cam.stop()


async def run(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run a client without blocking the event loop that serves it."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def camera_sdp(sps: bytes, pps: bytes) -> bytes:
    """A scripted camera's DESCRIBE answer: one H.264 track (payload type 96, control track1) with
    its parameter sets."""
    sprop = ",".join(base64.b64encode(n).decode() for n in (sps, pps))
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
        "a=rtpmap:96 H264/90000\r\n"
        f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={sprop}\r\na=control:track1\r\n"
    ).encode()


class ScriptedServer:
    """A loopback TCP listener that serves one connection at a time on its own thread: the shape of the
    tests' scripted RTSP peers (a camera, a recording server). A subclass writes `_connection`;
    `with server:` starts it and stops it (a bounded join). `rcvbuf`: the listener's receive buffer,
    which its connections inherit (a small one makes a peer's writes block soon)."""

    def __init__(self, conn_timeout_s: float = 0.2, rcvbuf: int | None = None) -> None:
        self.conn_timeout_s = conn_timeout_s
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(self.conn_timeout_s)
            try:
                self._connection(conn)
            except OSError:
                pass  # the client went away: the next one is served
            finally:
                conn.close()

    def _connection(self, conn: socket.socket) -> None:
        raise NotImplementedError


class RtpCamera(ScriptedServer):
    """A scripted H.264 RTSP camera over UDP or interleaved TCP, 25 fps, one session per connection
    (bounded to 60 s): the RTSP side of the lossy cameras' tests. A subclass sets `sps`, `pps` and
    writes `_send_frame` (which packets of a frame go out, with `_rtp`); `transports` records each
    SETUP's transport ("udp" / "tcp") in order."""

    sps: bytes
    pps: bytes

    def __init__(self) -> None:
        self.transports: list[str] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        super().__init__(conn_timeout_s=0.02)

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.udp.close()

    def _send_frame(self, conn: socket.socket, udp_to: tuple[str, int] | None, seq: int, ts: int) -> int:
        """Send one frame's packets from sequence number `seq`; the next sequence number."""
        raise NotImplementedError

    def _rtp(self, conn: socket.socket, udp_to: tuple[str, int] | None, seq: int, ts: int, marker: bool,
             payload: bytes) -> None:  # fmt: skip
        rtp = bytes([0x80, (0x80 if marker else 0) | 96]) + (seq & 0xFFFF).to_bytes(2, "big")
        rtp += (ts & 0xFFFFFFFF).to_bytes(4, "big") + (0xCAFE).to_bytes(4, "big") + payload
        if udp_to is not None:
            self.udp.sendto(rtp, udp_to)
        else:
            conn.sendall(b"$\x00" + len(rtp).to_bytes(2, "big") + rtp)

    def _connection(self, conn: socket.socket) -> None:
        buf = b""
        udp_to: tuple[str, int] | None = None
        playing = False
        seq, ts, next_frame = 0, 0, 0.0
        deadline = time.monotonic() + 60  # bounded: no test needs a longer session
        while not self._stop.is_set() and time.monotonic() < deadline:
            if playing and time.monotonic() >= next_frame:
                seq = self._send_frame(conn, udp_to, seq, ts)
                ts += 3600
                next_frame = time.monotonic() + 0.04
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buf += data
            while True:
                if buf[:1] == b"$":
                    if len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[2:4], "big"):
                        break
                    buf = buf[4 + int.from_bytes(buf[2:4], "big") :]  # RTCP from the client
                    continue
                if b"\r\n\r\n" not in buf:
                    break
                head, buf = buf.split(b"\r\n\r\n", 1)
                req = parse_request_head(head + b"\r\n\r\n")
                extra: list[str] = []
                body = b""
                if req.method == "OPTIONS":
                    extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
                elif req.method == "DESCRIBE":
                    body = camera_sdp(self.sps, self.pps)
                    extra += [f"Content-Base: {self.url}/", "Content-Type: application/sdp"]
                elif req.method == "SETUP":
                    m = re.search(r"client_port=(\d+)-(\d+)", req.header("transport") or "")
                    if m:
                        udp_to = ("127.0.0.1", int(m.group(1)))
                        port = self.udp.getsockname()[1]
                        self.transports.append("udp")
                        extra.append(f"Transport: RTP/AVP;unicast;client_port={m.group(1)}-{m.group(2)};"
                                     f"server_port={port}-{port + 1}")  # fmt: skip
                    else:
                        self.transports.append("tcp")
                        extra.append("Transport: RTP/AVP/TCP;unicast;interleaved=0-1")
                    extra.append("Session: 1234;timeout=60")
                elif req.method == "PLAY":
                    extra.append("Session: 1234")
                    playing = True
                lines = ["RTSP/1.0 200 OK", f"CSeq: {req.header('cseq')}", *extra]
                if body:
                    lines.append(f"Content-Length: {len(body)}")
                conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def with_creds(url: str, user: str, password: str) -> str:
    from urllib.parse import quote

    return url.replace("rtsp://", f"rtsp://{quote(user, safe='')}:{quote(password, safe='')}@")


need_ffmpeg = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffmpeg not installed")
need_gst = pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="GStreamer not installed")


class RawRtsp:
    """A minimal RTSP client on a raw socket: exact control over what is sent and read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.cseq = 0
        self.binary: list[tuple[int, bytes]] = []  # interleaved frames seen while waiting for responses

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None, limit: int = 2**16) -> RawRtsp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5)
        r, w = await asyncio.open_connection(sock=sock, limit=limit)
        return cls(r, w)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(
        self, method: str, uri: str, headers: dict[str, str] | None = None, cseq: bool = True
    ) -> tuple[int, dict[str, list[str]], bytes]:
        self.cseq += 1
        lines = [f"{method} {uri} RTSP/1.0"]
        if cseq:
            lines.append(f"CSeq: {self.cseq}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await self.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode())
        return await self.response()

    async def response(self, timeout: float = 10.0) -> tuple[int, dict[str, list[str]], bytes]:
        async def read() -> tuple[int, dict[str, list[str]], bytes]:
            while True:
                first = await self.reader.readexactly(1)
                if first == b"$":
                    hdr = await self.reader.readexactly(3)
                    self.binary.append(
                        (hdr[0], await self.reader.readexactly(int.from_bytes(hdr[1:], "big")))
                    )
                    continue
                head = (first + await self.reader.readuntil(b"\r\n\r\n")).decode()
                lines = head.split("\r\n")
                status = int(lines[0].split()[1])
                hdrs: dict[str, list[str]] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        hdrs.setdefault(k.strip().lower(), []).append(v.strip())
                n = int(hdrs.get("content-length", ["0"])[0])
                body = await self.reader.readexactly(n) if n else b""
                return status, hdrs, body

        return await asyncio.wait_for(read(), timeout)

    async def read_interleaved(self, count: int, timeout: float = 10.0) -> list[tuple[int, bytes]]:
        async def read() -> None:
            while len(self.binary) < count:
                first = await self.reader.readexactly(1)
                assert first == b"$", first
                hdr = await self.reader.readexactly(3)
                self.binary.append((hdr[0], await self.reader.readexactly(int.from_bytes(hdr[1:], "big"))))

        await asyncio.wait_for(read(), timeout)
        return self.binary

    async def play_tcp(self, url: str, headers: dict[str, str] | None = None) -> str:
        h = headers or {}
        status, _, _ = await self.request("DESCRIBE", url, h)
        assert status == 200
        status, hdrs, _ = await self.request(
            "SETUP", url + "/trackID=0", {**h, "Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
        )
        assert status == 200, status
        session = hdrs["session"][0].split(";")[0]
        status, _, _ = await self.request("PLAY", url, {**h, "Session": session})
        assert status == 200
        return session

    def close(self) -> None:
        self.writer.transport.abort()


def pyav_read(url: str, frames: int, transport: str = "tcp", low_delay: bool = True) -> dict[str, float]:
    """Open with PyAV, decode `frames` frames; times from just before open."""
    opts = {"rtsp_transport": transport}
    if low_delay:
        opts.update({"probesize": "32", "analyzeduration": "0", "flags": "low_delay"})
    t0 = time.monotonic()
    first = 0.0
    n = 0
    with av.open(url, options=opts, timeout=(5.0, 5.0)) as c:
        stream = c.streams.video[0]
        for f in c.decode(stream):
            if n == 0:
                first = time.monotonic() - t0
                w, h = f.width, f.height
            n += 1
            if n >= frames:
                break
    total = time.monotonic() - t0
    return {"first_frame_s": first, "total_s": total, "frames": n, "width": w, "height": h}
