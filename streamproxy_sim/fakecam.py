"""Scripted fake cameras that misbehave: small TCP servers on loopback that speak just enough RTSP.

Where `camsim.SimCamera` is a well-behaved camera (gst-rtsp-server), a `FakeCamera` is the broken one
that a proxy meets in the field, one fault each (`behaviour`):

* "garbage": the port answers random bytes (a service that is not RTSP, or line noise);
* "http": the port answers an HTTP page (a camera's web server on the RTSP port);
* "unauthorized": every request is answered 401 with a Basic challenge (a changed password);
* "close_after_describe": OPTIONS and DESCRIBE are answered (a valid H.264 SDP), then the
  connection is closed (a camera that crashes or runs out of sessions when asked to SETUP);
* "junk_rtp": the handshake succeeds (H.264 SDP, SETUP over TCP interleaved, PLAY), then the
  camera sends junk as interleaved RTP: `$` frames whose length is wrong, random NAL unit types,
  FU-A fragments cut short, random bytes in valid-looking packets, at ~200 packets/s.

Each connection is served on its own thread; `stop()` closes the listener and every connection and
joins the threads (bounded). Binding uses SO_REUSEADDR, so a fake can take over the port of a
`SimCamera` that was just killed (and give it back). What happened is recorded for tests:
`connections` (time.monotonic() of each accepted connection) and `requests` (method names).
Deterministic: the junk comes from a seeded generator.

`uneven_schedule` is the same kind of camera for the RTP clock: capture times that come early, late,
in bursts and with gaps.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from typing import Literal

log = logging.getLogger(__name__)

Behaviour = Literal["garbage", "http", "unauthorized", "close_after_describe", "junk_rtp"]
BEHAVIOURS: tuple[Behaviour, ...] = ("garbage", "http", "unauthorized", "close_after_describe", "junk_rtp")

TICK_S = 0.1  # how often a blocked accept/recv looks at the stop flag
MAX_CONNECTION_S = 60.0  # no connection is served longer than this, whatever the client does
JUNK_PACKETS_PER_S = 200


def uneven_schedule(n: int, seed: int = 20) -> list[float]:
    """Capture times (seconds from 0) of a camera whose clock misbehaves, around 25 fps: on time,
    early, late, bursts, and a 0.6 s gap every 50 frames. Deterministic for a seed; used where RTP
    timestamps must follow capture times (tests/test_rtp_timestamps.py, bench/zoneminder_record.py)."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        out.append(t)
        r = rng.random()
        if i % 50 == 49:
            t += 0.6  # a short outage
        elif r < 0.2:
            t += rng.uniform(0.002, 0.015)  # a burst: much earlier than predicted
        elif r < 0.4:
            t += rng.uniform(0.065, 0.12)  # late: a busy host, a shed frame upstream
        else:
            t += rng.uniform(0.035, 0.045)
    return out


SDP = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 127.0.0.1\r\n"
    "s=fake camera\r\n"
    "t=0 0\r\n"
    "m=video 0 RTP/AVP 96\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 packetization-mode=1;profile-level-id=42e01e\r\n"
    "a=control:track1\r\n"
)
HTTP_PAGE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 46\r\nConnection: close\r\n\r\n"
    b"<html><body>Camera web interface</body></html>"
)


class FakeCamera:
    """One misbehaving camera on 127.0.0.1:`port` (a free one when None). A context manager."""

    def __init__(
        self, behaviour: Behaviour, port: int | None = None, path: str = "cam", seed: int = 12
    ) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}")
        self.behaviour: Behaviour = behaviour
        self.path = path
        self.seed = seed
        self.connections: list[float] = []
        self.requests: list[str] = []
        self.packets_sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port or 0))
        self.port: int = self._listener.getsockname()[1]
        self._accepter: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{self.path}"

    def start(self) -> FakeCamera:
        self._listener.listen(16)
        self._listener.settimeout(TICK_S)
        self._accepter = threading.Thread(target=self._accept, name=f"fakecam-{self.behaviour}", daemon=True)
        self._accepter.start()
        log.info("fake camera (%s) on %s", self.behaviour, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection; join the threads (each bounded by `timeout`)."""
        self._stop.set()
        if self._accepter is not None:
            self._accepter.join(timeout)
        self._listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        for t in threads:
            t.join(timeout)

    def __enter__(self) -> FakeCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving ------------------------------------------------------------------------------------
    def _accept(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            n += 1
            conn.settimeout(TICK_S)
            t = threading.Thread(target=self._serve, args=(conn, n), name=f"fakecam-conn-{n}", daemon=True)
            with self._lock:
                self.connections.append(time.monotonic())
                self._conns.append(conn)
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        try:
            if self.behaviour == "garbage":
                self._garbage(conn, rng)
            elif self.behaviour == "http":
                self._read_request(conn)
                conn.sendall(HTTP_PAGE)
            else:
                self._rtsp(conn, rng)
        except OSError:
            pass  # the client went away (or stop() closed the socket): nothing to clean up
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _garbage(self, conn: socket.socket, rng: random.Random) -> None:
        """Random bytes, 1 KiB at a time, until the client gives up (or the time limit)."""
        deadline = time.monotonic() + MAX_CONNECTION_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            conn.sendall(rng.randbytes(1024))
            time.sleep(0.01)

    def _read_request(self, conn: socket.socket) -> tuple[str, str] | None:
        """(method, CSeq) of the next request, None when the client closed or we stop."""
        buf = b""
        deadline = time.monotonic() + MAX_CONNECTION_S
        while b"\r\n\r\n" not in buf:
            if self._stop.is_set() or time.monotonic() > deadline or len(buf) > 65536:
                return None
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return None
            buf += chunk
            # Interleaved RTCP from the client (receiver reports) may come between requests.
            while buf.startswith(b"$") and len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[2:4], "big"):
                buf = buf[4 + int.from_bytes(buf[2:4], "big") :]
        head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        method = lines[0].split(" ", 1)[0]
        cseq = next((ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("cseq:")), "0")
        with self._lock:
            self.requests.append(method)
        return method, cseq

    def _answer(
        self, conn: socket.socket, cseq: str, status: str, headers: list[str], body: bytes = b""
    ) -> None:
        lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", *headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _rtsp(self, conn: socket.socket, rng: random.Random) -> None:
        while True:
            req = self._read_request(conn)
            if req is None:
                return
            method, cseq = req
            if self.behaviour == "unauthorized":
                self._answer(conn, cseq, "401 Unauthorized", ['WWW-Authenticate: Basic realm="fake"'])
                continue
            if method == "OPTIONS":
                self._answer(conn, cseq, "200 OK", ["Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN"])
            elif method == "DESCRIBE":
                base = f"rtsp://127.0.0.1:{self.port}/{self.path}/"
                self._answer(
                    conn,
                    cseq,
                    "200 OK",
                    ["Content-Type: application/sdp", f"Content-Base: {base}"],
                    SDP.encode(),
                )
                if self.behaviour == "close_after_describe":
                    return
            elif method == "SETUP":
                self._answer(
                    conn,
                    cseq,
                    "200 OK",
                    ["Transport: RTP/AVP/TCP;unicast;interleaved=0-1", "Session: 4711;timeout=60"],
                )
            elif method == "PLAY":
                self._answer(conn, cseq, "200 OK", ["Session: 4711", "Range: npt=0.000-"])
                self._junk_rtp(conn, rng)
                return
            else:
                self._answer(conn, cseq, "200 OK", ["Session: 4711"])

    def _junk_rtp(self, conn: socket.socket, rng: random.Random) -> None:
        """Interleaved RTP on channel 0 that no decoder can make a picture of, until stop or the limit."""
        seq, ts = rng.getrandbits(16), rng.getrandbits(32)
        deadline = time.monotonic() + MAX_CONNECTION_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            kind = rng.randrange(5)
            if kind == 0:  # a random NAL unit type, random body
                payload = bytes([rng.getrandbits(8)]) + rng.randbytes(rng.randrange(0, 1400))
            elif kind == 1:  # an FU-A start that is cut short (and never ended)
                payload = bytes([0x7C, 0x80 | rng.choice((1, 5))]) + rng.randbytes(rng.randrange(0, 40))
            elif kind == 2:  # an FU-A fragment without its start, or a 1-byte FU-A
                payload = bytes([0x7C, rng.choice((0x00, 0x40))])[: rng.randrange(1, 3)] + rng.randbytes(
                    rng.randrange(0, 200)
                )
            elif kind == 3:  # a STAP-A whose sizes lie
                payload = (
                    b"\x18"
                    + struct.pack("!H", rng.randrange(0, 65536))
                    + rng.randbytes(rng.randrange(0, 300))
                )
            else:  # an IDR slice of random bytes (no SPS/PPS ever came)
                payload = b"\x65" + rng.randbytes(rng.randrange(1, 1400))
            # Whole "pictures" (marker set) reach the decoder; fragments mostly end damaged units.
            marker = kind in (0, 4) or rng.random() < 0.3
            rtp = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq, ts, 0x1234) + payload
            seq = (seq + 1) & 0xFFFF
            if marker:
                ts = (ts + 3600) & 0xFFFFFFFF
            size = len(rtp)
            if rng.random() < 0.05:  # the frame header's length lies: the stream loses its framing
                size = max(0, min(65535, size + rng.randrange(-50, 50)))
            conn.sendall(b"$\x00" + struct.pack("!H", size) + rtp)
            self.packets_sent += 1
            time.sleep(1 / JUNK_PACKETS_PER_S)
            if self.packets_sent % 50 == 0:
                self._drain(conn)

    def _drain(self, conn: socket.socket) -> None:
        """Read (and drop) what the client sent (keepalives, receiver reports), without blocking long."""
        conn.settimeout(0.001)
        try:
            while conn.recv(65536):
                pass
        except (TimeoutError, BlockingIOError):
            pass
        finally:
            conn.settimeout(TICK_S)
