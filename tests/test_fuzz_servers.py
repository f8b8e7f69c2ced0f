"""The servers under malformed, oversized and byte-by-byte input, on loopback.

- Regression tests of the RTSP request path (issue 12, "RTSP parser gaps"): bad URIs get 400, CSeq
  cannot inject a header, LF-only requests are answered, size limits answer and close.
- A property-based fuzzer (hypothesis, deterministic) of the RTSP server's whole read path: request
  heads, bodies and `$`-interleaved frames in any mix and any chunking.
- `test_socket_fuzzer_with_live_viewer` (slow): the whole service with a real camera and a real
  viewer decoding, thousands of seeded malformed RTSP and HTTP requests; the viewer must not notice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamproxy.config import ServerConfig
from streamproxy.hub import CodecInfo, StreamHub
from streamproxy.rtsp.protocol import MAX_HEAD_BYTES, MAX_LINE_BYTES
from streamproxy.serve.rtsp.server import RtspServer

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
CODEC = CodecInfo(320, 240, 25.0, b"\x67\x42\xc0\x1e\xda\x05\x07\xe8", b"\x68\xce\x3c\x80")
# Every header our RTSP server may send: a name outside this set in an answer was injected.
RESPONSE_HEADERS = {
    "cseq",
    "server",
    "public",
    "session",
    "transport",
    "content-base",
    "content-type",
    "content-length",
    "range",
    "rtp-info",
    "allow",
    "www-authenticate",
    "retry-after",
    "connection",
}


class Recorder(logging.Handler):
    """ERROR records of any logger, and the loop's unhandled-exception reports: both mean a bug."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.loop_errors: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(context)

    def problems(self) -> list[str]:
        out = [
            f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else f"{r.name}: {r.getMessage()}"
            for r in self.records
        ]
        return out + [str(c.get("message")) + " " + repr(c.get("exception")) for c in self.loop_errors]

    def clear(self) -> None:
        self.records.clear()
        self.loop_errors.clear()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    root = logging.getLogger()
    root.addHandler(rec)
    try:
        yield rec
    finally:
        root.removeHandler(rec)


class LoopThread:
    """An event loop in a thread, so that blocking sockets (and hypothesis) can drive a server on it."""

    def __init__(self, recorder: Recorder) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(recorder.on_loop_error)
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def rtsp(recorder: Recorder) -> Iterator[tuple[LoopThread, RtspServer]]:
    """An RTSP server on 127.0.0.1 whose camera has a codec (DESCRIBE answers at once) but sends nothing."""
    lt = LoopThread(recorder)
    port_min = random.Random(7).randrange(20000, 60000, 2)
    cfg = ServerConfig(host="127.0.0.1", rtsp_port=1024, rtp_port_min=port_min, rtp_port_max=port_min + 400)
    cfg = cfg.model_copy(update={"rtsp_port": 0})

    async def start() -> RtspServer:
        hub = StreamHub("cam1")
        hub.set_codec(CODEC)
        server = RtspServer({"cam1": hub}, cfg)
        await server.start()
        return server

    server = lt.run(start())
    try:
        yield lt, server
    finally:
        lt.run(server.stop())
        lt.close()


def exchange(port: int, chunks: list[bytes], timeout: float = 5.0, pause_s: float = 0.0) -> bytes:
    """Send `chunks`, then EOF; everything the server wrote until it closed. Bounded by `timeout`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for c in chunks:
                s.sendall(c)
                if pause_s:
                    time.sleep(pause_s)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first (an answer and close over a limit): read what it said
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(
                    f"server neither answered nor closed within {timeout} s: {out[:200]!r}"
                ) from None
            if not data:
                break
            out += data
            assert len(out) < 1 << 22
        return out


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str]]]:
    """Split the server's byte stream into answers (and `$` frames, skipped); fail on anything else."""
    out: list[tuple[int, dict[str, str]]] = []
    while data:
        if data[:1] == b"$":
            size = int.from_bytes(data[2:4], "big")
            data = data[4 + size :]
            continue
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"RTSP/1.0 "), f"not an RTSP answer: {data[:200]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        assert 200 <= status < 600, lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            assert b"\r" not in line and b"\n" not in line, head
            name, colon, value = line.decode("utf-8").partition(":")
            assert colon, head
            assert name.lower() in RESPONSE_HEADERS, f"unexpected header {name!r} (injected?) in {head!r}"
            headers[name.lower()] = value.strip()
        n = int(headers.get("content-length", "0"))
        data = rest[n:]
        out.append((status, headers))
    return out


def ask(port: int, request: bytes, **kw: Any) -> tuple[list[tuple[int, dict[str, str]]], bytes]:
    raw = exchange(port, [request], **kw)
    return parse_responses(raw), raw


# --- regressions: issue 12, "RTSP parser gaps" ---------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    ["rtsp://[::1", "rtsp://127.0.0.1:99999/cam1", "rtsp://127.0.0.1:abc/cam1", "rtsp://[::1]:70000/cam1"],
)
def test_bad_uri_is_400_and_the_connection_goes_on(
    rtsp: tuple[LoopThread, RtspServer], recorder: Recorder, uri: str
) -> None:
    _, server = rtsp
    answers, _ = ask(
        server.port,
        f"DESCRIBE {uri} RTSP/1.0\r\nCSeq: 1\r\n\r\nOPTIONS * RTSP/1.0\r\nCSeq: 2\r\n\r\n".encode(),
    )
    assert [(s, h.get("cseq")) for s, h in answers] == [(400, "1"), (200, "2")]
    assert recorder.problems() == []


def test_cseq_cannot_inject_a_header(rtsp: tuple[LoopThread, RtspServer], recorder: Recorder) -> None:
    _, server = rtsp
    # A bare LF ends a line (as in an LF-only request): X-Injected is a request header, never echoed.
    answers, raw = ask(server.port, b"OPTIONS * RTSP/1.0\r\nCSeq: 1\nX-Injected: yes\r\n\r\n")
    assert [(s, h.get("cseq")) for s, h in answers] == [(200, "1")] and b"Injected" not in raw
    # A bare CR inside the value: not a number, 400 without a CSeq, nothing echoed.
    answers, raw = ask(server.port, b"OPTIONS * RTSP/1.0\r\nCSeq: 1\rX-Injected: yes\r\n\r\n")
    assert [(s, h.get("cseq")) for s, h in answers] == [(400, None)] and b"Injected" not in raw
    answers, _ = ask(server.port, b"OPTIONS * RTSP/1.0\r\nCSeq: 12 ; x\r\n\r\n")
    assert [(s, h.get("cseq")) for s, h in answers] == [(400, None)]
    assert recorder.problems() == []


def test_lf_only_and_byte_by_byte_requests_are_answered(rtsp: tuple[LoopThread, RtspServer]) -> None:
    _, server = rtsp
    answers, _ = ask(
        server.port, b"OPTIONS * RTSP/1.0\nCSeq: 5\n\nDESCRIBE rtsp://127.0.0.1/cam1 RTSP/1.0\nCSeq: 6\n\n"
    )
    assert [(s, h.get("cseq")) for s, h in answers] == [(200, "5"), (200, "6")]
    req = b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n"
    answers = parse_responses(exchange(server.port, [bytes([b]) for b in req], pause_s=0.002))
    assert [(s, h.get("cseq")) for s, h in answers] == [(200, "7")]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"DESCRIBE rtsp://h/" + b"a" * (MAX_LINE_BYTES + 10) + b" RTSP/1.0\r\nCSeq: 1\r\n\r\n", 414),
        (b"DESCRIBE rtsp://h/" + b"a" * (MAX_HEAD_BYTES + 10), 414),  # no line end at all
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX-Big: " + b"b" * (MAX_LINE_BYTES + 10) + b"\r\n\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n", 400),
        (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n" + (b"X-A: " + b"c" * 1000 + b"\r\n") * 17 + b"\r\n", 400),
        (b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 1000000\r\n\r\n", 413),
        (b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: lots\r\n\r\n", 400),
        (b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: -4\r\n\r\n", 400),
    ],
    ids=[
        "long-request-line",
        "no-line-end",
        "long-header",
        "many-headers",
        "big-head",
        "big-body",
        "bad-length",
        "negative-length",
    ],
)
def test_limits_answer_and_close(
    rtsp: tuple[LoopThread, RtspServer], recorder: Recorder, request_bytes: bytes, status: int
) -> None:
    _, server = rtsp
    # The OPTIONS after it is never answered: the server closed after its error.
    answers, _ = ask(server.port, request_bytes + b"OPTIONS * RTSP/1.0\r\nCSeq: 9\r\n\r\n")
    assert [s for s, _ in answers] == [status], answers
    assert answers[0][1].get("connection") == "close"
    assert recorder.problems() == []


def test_interleaved_frames_between_requests(rtsp: tuple[LoopThread, RtspServer]) -> None:
    _, server = rtsp
    data = b"$\x01\x00\x04abcd\r\n$\x00\x00\x00OPTIONS * RTSP/1.0\r\nCSeq: 3\r\n\r\n$\x01\x00\x10short"
    answers, _ = ask(server.port, data)
    assert [(s, h.get("cseq")) for s, h in answers] == [(200, "3")]


def test_handler_bug_is_a_500_not_a_dropped_connection(
    rtsp: tuple[LoopThread, RtspServer], recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, server = rtsp

    async def broken(*_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(server, "_describe", broken)
    answers, _ = ask(
        server.port,
        b"DESCRIBE rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 4\r\n\r\nOPTIONS * RTSP/1.0\r\nCSeq: 5\r\n\r\n",
    )
    assert [(s, h.get("cseq"), h.get("connection")) for s, h in answers] == [(500, "4", "close")]
    assert [r.exc_info[0] for r in recorder.records if r.exc_info] == [
        RuntimeError
    ]  # logged once, with its traceback


# --- property: the RTSP server's read path ---------------------------------------------------------------

REQUEST_TEMPLATES = [
    b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n",
    b"DESCRIBE rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n",
    b"DESCRIBE rtsp://127.0.0.1/nope RTSP/1.0\r\nCSeq: 2\r\n\r\n",
    b"SETUP rtsp://127.0.0.1/cam1/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n",
    b"SETUP rtsp://127.0.0.1/cam1/trackID=0 RTSP/1.0\r\nCSeq: 3\r\nTransport: RTP/AVP;unicast;client_port=40000-40001\r\n\r\n",
    b"PLAY rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 4\r\nSession: 0123456789abcdef\r\n\r\n",
    b"TEARDOWN rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 5\r\nSession: x\r\n\r\n",
    b"GET_PARAMETER rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 6\r\nContent-Length: 4\r\n\r\nabcd",
    b"ANNOUNCE rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 7\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"$\x01\x00\x08rtcp....",
]
MUTATIONS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b":",
    b"$",
    b"\xff",
    b"[",
    b"%",
    b"CSeq: 1\nX-Injected: yes\r\n",
    b"99999",
]


@st.composite
def rtsp_streams(draw: st.DrawFn) -> list[bytes]:
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 5))):
        base = bytearray(draw(st.sampled_from(REQUEST_TEMPLATES)))
        for _ in range(draw(st.integers(0, 3))):  # insert, overwrite or cut at random places
            pos = draw(st.integers(0, len(base)))
            op = draw(st.sampled_from(["insert", "cut", "flip"]))
            if op == "insert":
                base[pos:pos] = draw(st.one_of(st.sampled_from(MUTATIONS), st.binary(min_size=1, max_size=8)))
            elif op == "cut":
                del base[pos : pos + draw(st.integers(1, 10))]
            elif pos < len(base):
                base[pos] ^= 1 << draw(st.integers(0, 7))
        parts.append(bytes(base))
    data = b"".join(parts) if draw(st.booleans()) else b"".join(parts) + draw(st.binary(max_size=40))
    split = draw(st.sampled_from(["whole", "random", "bytes"]))
    if split == "whole" or not data:
        return [data]
    if split == "bytes" and len(data) <= 200:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(rtsp_streams())
@example([b"DESCRIBE rtsp://[::1 RTSP/1.0\r\nCSeq: 1\r\n\r\n"])
@example([b"OPTIONS * RTSP/1.0\r\nCSeq: 1\nX-Injected: yes\r\n\r\n"])
@example([b"SETUP rtsp://127.0.0.1:99999/cam1 RTSP/1.0\r\nCSeq: 1\r\nTransport: RTP/AVP/TCP\r\n\r\n"])
def test_rtsp_server_survives_any_byte_stream(
    rtsp: tuple[LoopThread, RtspServer], recorder: Recorder, chunks: list[bytes]
) -> None:
    """Answers are well-formed RTSP with only our headers; the server closes after our EOF; no error logged."""
    _, server = rtsp
    parse_responses(exchange(server.port, chunks))
    assert recorder.problems() == []


def test_rtsp_server_is_clean_after_fuzzing(rtsp: tuple[LoopThread, RtspServer], recorder: Recorder) -> None:
    """After many fuzzed connections (sessions set up, played, abandoned): none left, the UDP receiver too."""
    lt, server = rtsp
    rng = random.Random(3)
    for _ in range(60):
        data = b"".join(rng.choice(REQUEST_TEMPLATES) for _ in range(4))
        parse_responses(exchange(server.port, [data]))
    # Datagrams of any shape on the shared RTP/RTCP ports: proof of life at most, never an error.
    assert server.udp_ports is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        for _ in range(50):
            u.sendto(rng.randbytes(rng.randrange(0, 200)), ("127.0.0.1", rng.choice(server.udp_ports)))

    async def settled() -> bool:
        for _ in range(100):
            if not server._conns and not server.sessions:
                return True
            await asyncio.sleep(0.05)
        return False

    assert lt.run(settled()), (len(server._conns), len(server.sessions))
    assert recorder.problems() == []


# --- the socket fuzzer against the whole service -----------------------------------------------------------


def _rtsp_cases(rng: random.Random, url: str) -> Iterator[tuple[bytes, bool, bool]]:
    """(request, malformed, open_ended): `malformed` ones must get 4xx/5xx (or a closed connection);
    `open_ended` ones may be incomplete (the server rightly waits for more), so EOF follows them."""
    methods = [
        "OPTIONS",
        "DESCRIBE",
        "SETUP",
        "PLAY",
        "TEARDOWN",
        "GET_PARAMETER",
        "RECORD",
        "FOO",
        "describe",
        "GET",
    ]
    uris = [
        url,
        url + "/trackID=0",
        "*",
        "rtsp://[::1",
        url.replace("/cam", ":99999/cam"),
        "rtsp://h:abc/x",
        url + "/../../etc/passwd",
        url + "%00",
        "rtsp://" + "a" * 300,
        url + "?" + "q" * 2000,
    ]
    while True:
        kind = rng.randrange(10)
        m, u = rng.choice(methods), rng.choice(uris)
        if kind == 0:
            yield rng.randbytes(rng.randrange(1, 300)), True, True
        elif kind == 1:
            yield f"{m} {u} RTSP/1.0\r\nCSeq: 1\nX-Injected: yes\r\n\r\n".encode(), False, False
        elif kind == 2:
            yield (
                f"{m} {u} RTSP/1.0\r\nCSeq: {rng.choice(['x', '-1', '1 2', '9' * 20])}\r\n\r\n".encode(),
                True,
                False,
            )
        elif kind == 3:
            yield f"{m} {u} RTSP/{rng.choice(['2.0', '0.9', 'x'])}\r\nCSeq: 3\r\n\r\n".encode(), True, False
        elif kind == 4:
            yield (
                f"{m} {u} RTSP/1.0\r\nCSeq: 4\r\n".encode()
                + b"X-Pad: "
                + b"p" * rng.choice([100, 9000, 20000])
                + b"\r\n\r\n",
                False,
                False,
            )
        elif kind == 5:
            yield (
                f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 5\r\nTransport: {rng.choice(['RTP/AVP;unicast;client_port=99999', 'RTP/AVP/TCP;interleaved=300-301', 'RTP/SAVP', ';;;', ''])}\r\n\r\n".encode(),
                True,
                False,
            )
        elif kind == 6:
            yield (
                f"SET_PARAMETER {url} RTSP/1.0\r\nCSeq: 6\r\nContent-Length: {rng.choice(['-1', 'x', '999999', '3'])}\r\n\r\nabc".encode(),
                False,
                False,
            )
        elif kind == 7:
            yield (
                f"PLAY {url} RTSP/1.0\r\nCSeq: 7\r\nSession: {rng.choice(['', 'x' * 200, '0' * 16, ';;'])}\r\n\r\n".encode(),
                True,
                False,
            )
        elif kind == 8:
            yield f"{m} {u} RTSP/1.0\nCSeq: 8\n\n".encode(), False, False  # LF only
        else:
            base = bytearray(f"{m} {u} RTSP/1.0\r\nCSeq: 9\r\nAccept: application/sdp\r\n\r\n".encode())
            for _ in range(rng.randrange(1, 4)):
                base.insert(rng.randrange(len(base) - 4), rng.choice(b"\r\n\0: $\xff"))
            yield bytes(base), False, True


def _http_cases(rng: random.Random) -> Iterator[tuple[bytes, bool]]:
    """(request, open_ended), as for RTSP."""
    paths = [
        "/",
        "/healthz",
        "/api/cameras",
        "/metrics",
        "/static/../../etc/passwd",
        "/static/%2e%2e%2fx",
        "/cam/whep",
        "/nope/whep",
        "/cam/whep/xyz",
        "/" + "a" * 9000,
        "/\x00",
        "/%ff",
    ]
    while True:
        kind = rng.randrange(8)
        p = rng.choice(paths)
        if kind == 0:
            yield rng.randbytes(rng.randrange(1, 300)), True
        elif kind == 1:
            yield (
                f"{rng.choice(['GET', 'POST', 'BREW', 'get', 'G ET'])} {p} HTTP/{rng.choice(['1.1', '1.0', '2.0', 'x'])}\r\nHost: x\r\n\r\n".encode(),
                False,
            )
        elif kind == 2:
            yield (
                f"GET {p} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode()
                + b"b" * rng.choice([100, 9000, 70000])
                + b"\r\n\r\n",
                False,
            )
        elif kind == 3:
            body = rng.choice(
                [b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", b"garbage", b"\xff" * 50, b"v=0\r\n" * 1000]
            )
            yield (
                f"POST /cam/whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body,
                False,
            )
        elif kind == 4:
            yield (
                f"POST /cam/whep HTTP/1.1\r\nHost: x\r\nContent-Length: {rng.choice(['-1', 'x', '99999999', '1, 2'])}\r\n\r\nabc".encode(),
                False,
            )
        elif kind == 5:
            yield (
                b"POST /cam/whep HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/sdp\r\n\r\n"
                + rng.choice([b"zz\r\n", b"5\r\nab\r\n0\r\n\r\n", b"ffffffff\r\n"]),
                True,
            )
        elif kind == 6:
            yield (
                f"GET {p} HTTP/1.1\r\nHost: x\r\nAuthorization: {rng.choice(['Basic é', 'Basic !!', 'Digest x', ''])}\r\n\r\n".encode(),
                False,
            )
        else:
            base = bytearray(f"GET {p} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".encode())
            for _ in range(rng.randrange(1, 4)):
                base.insert(rng.randrange(len(base) - 4), rng.choice(b"\r\n\0: \xff"))
            yield bytes(base), True


class Conn:
    """A blocking loopback connection that reads one answer head at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.closed = False

    def send(self, data: bytes, bytewise: bool) -> None:
        try:
            if bytewise:
                for i in range(len(data)):
                    self.sock.sendall(data[i : i + 1])
                    time.sleep(0.0005)
            else:
                self.sock.sendall(data)
        except OSError:
            self.closed = True  # closed by the server after an answer: read it

    def answer(self, prefix: bytes) -> int | None:
        """The status of the next answer, None if the server closed instead; AssertionError on a hang."""
        while b"\r\n\r\n" not in self.buf:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                raise AssertionError(f"no answer and no close within 5 s ({self.buf[:100]!r})") from None
            if not data:
                self.closed = True
                assert not self.buf, f"partial answer then close: {self.buf[:200]!r}"
                return None
            self.buf += data
            # Interleaved RTP/RTCP on a connection that got to PLAY: skip whole frames.
            while (
                self.buf[:1] == b"$"
                and len(self.buf) >= 4
                and len(self.buf) >= 4 + int.from_bytes(self.buf[2:4], "big")
            ):
                self.buf = self.buf[4 + int.from_bytes(self.buf[2:4], "big") :]
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(prefix), head[:200]
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            assert name.strip().lower() != b"x-injected", head
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            data = self.sock.recv(65536)
            if not data:
                break
            self.buf += data
        self.buf = self.buf[length:]
        return status

    def finish(self, prefix: bytes) -> list[int]:
        """EOF from our side, then every answer until the server closes."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        out: list[int] = []
        while not self.closed:
            status = self.answer(prefix)
            if status is not None:
                out.append(status)
            assert len(out) < 100
        self.close()
        return out

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.mark.slow
@pytest.mark.timeout(180 * max(1, int(float(os.environ.get("STREAMPROXY_FUZZ_SCALE", "1")))))
def test_socket_fuzzer_with_live_viewer(
    sim_camera_factory: Callable[..., Any], model_dir: Path, recorder: Recorder
) -> None:
    from livekit import LiveHost, Viewer, make_config

    cam = sim_camera_factory(width=640, height=360, faces=1)
    host = LiveHost(make_config(cam.url, model_dir))
    host.start()
    try:
        assert host.loop is not None and host.app is not None and host.app.web is not None
        host.loop.call_soon_threadsafe(host.loop.set_exception_handler, recorder.on_loop_error)
        host.wait_live(30)
        rtsp_port, http_port = host.app.rtsp.port, host.app.web.port  # type: ignore[union-attr]
        viewer = Viewer(host.url(), max_s=120)
        viewer.start()
        assert viewer.wait_for(lambda f: len(f) >= 25, 30), viewer.error
        recorder.clear()  # only what the fuzzing causes counts
        t_start = time.monotonic()
        rng = random.Random(12)
        sent = {"rtsp": 0, "http": 0}
        statuses: dict[str, dict[int | None, int]] = {"rtsp": {}, "http": {}}
        rtsp_cases, http_cases = _rtsp_cases(rng, host.url()), _http_cases(rng)
        conn: Conn | None = None
        # STREAMPROXY_FUZZ_SCALE=3: a longer run (the 10,000-request target with the parser
        # fuzz), e.g. `STREAMPROXY_FUZZ_SCALE=3 pytest -s tests/test_fuzz_servers.py -k socket_fuzzer`.
        scale = max(1.0, float(os.environ.get("STREAMPROXY_FUZZ_SCALE", "1")))
        budget_s, rounds, max_rounds = 35.0 * scale, 0, int(400 * scale)
        while time.monotonic() - t_start < budget_s and rounds < max_rounds:
            rounds += 1
            for _ in range(8):  # RTSP: several requests per connection while it stays open
                request, malformed, open_ended = next(rtsp_cases)
                if conn is not None and conn.closed:
                    conn.close()  # the server ended it: our socket too (else it leaks: a ResourceWarning)
                conn = conn if conn is not None and not conn.closed else Conn(rtsp_port)
                conn.send(request, bytewise=rng.random() < 0.03 and len(request) < 400)
                sent["rtsp"] += 1
                answers = conn.finish(b"RTSP/1.0 ") if open_ended else [conn.answer(b"RTSP/1.0 ")]
                for status in answers or [None]:
                    statuses["rtsp"][status] = statuses["rtsp"].get(status, 0) + 1
                if not open_ended:
                    assert answers[0] is None or not malformed or answers[0] >= 400, (request[:200], answers)
                if answers[-1:] == [None]:
                    conn.close()
            for _ in range(3):  # HTTP: one request per connection, then EOF (it may be incomplete)
                c = Conn(http_port)
                request, open_ended = next(http_cases)
                c.send(request, bytewise=rng.random() < 0.03)
                sent["http"] += 1
                # aiohttp drops a request whose client has half-closed: EOF only after open-ended ones.
                answers = c.finish(b"HTTP/") if open_ended else [c.answer(b"HTTP/")]
                c.close()
                for status in answers or [None]:
                    statuses["http"][status] = statuses["http"].get(status, 0) + 1
                if not open_ended:
                    assert answers[0] is None or answers[0] < 500, (request[:200], answers)
            if rounds % 50 == 0:
                c = Conn(http_port)
                c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", bytewise=False)
                assert c.answer(b"HTTP/1.") == 200
                c.close()
            time.sleep(0.002)  # leave the service's threads their share of the GIL
        if conn is not None:
            conn.close()
        t_end = time.monotonic()
        time.sleep(1.0)
        c = Conn(http_port)
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", bytewise=False)
        assert c.answer(b"HTTP/1.") == 200, "service down after fuzzing"
        c.close()
        viewer.finish()
        times = [f.t for f in viewer.frames if t_start - 1 <= f.t <= t_end + 1]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        total = sent["rtsp"] + sent["http"]
        print(
            f"\nsocket fuzzer: {total} requests ({sent}) in {t_end - t_start:.1f} s; statuses {statuses}; "
            f"viewer {len(times)} frames, longest gap {max(gaps, default=0) * 1000:.0f} ms"
        )
        assert total >= 2000, sent
        assert len(times) > 0 and max(gaps, default=0) <= 1.0, (viewer.error, max(gaps, default=0))
        assert viewer.error is None or "EOF" in viewer.error, viewer.error
        # No ERROR at all: aiohttp's tracebacks for malformed requests are one WARNING a second now.
        assert recorder.problems() == []
    finally:
        host.stop()


async def test_http_bad_request_is_not_an_error_log(recorder: Recorder) -> None:
    from webkit import make_cfg, serving

    async with serving(make_cfg(), feed=False) as (_, _, base):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        writer.write(b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert data.split(b" ", 2)[1] == b"400", data[:40]  # aiohttp answers a request it cannot parse as 1.0
    assert recorder.problems() == []
