"""The HTTP and WebRTC listeners' limits (server.limits), on loopback against the real server:
connection floods, slowloris, oversized heads and bodies, idle keep-alive connections, malformed
requests' log, and half-open WHEP sessions, while a legitimate client still gets through.

The flooding clients come from 127.0.0.1 and the legitimate one from 127.0.0.2 where the per-address
limit is what is tested (all of 127.0.0.0/8 is loopback on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY
from test_webrtc import WhepClient, make_cfg, serving, wait_for

from streamproxy.config import AppConfig
from streamproxy.hub import StreamHub
from streamproxy.serve.webrtc import WebRtcGateway, WhepError

LEGIT = "127.0.0.2"


def limits_cfg(**limits: Any) -> AppConfig:
    cfg = make_cfg()
    lim = cfg.server.limits.model_copy(update=limits)
    return cfg.model_copy(update={"server": cfg.server.model_copy(update={"limits": lim})})


def rejections(listener: str, limit: str) -> float:
    v = REGISTRY.get_sample_value("streamproxy_limit_rejections_total", {"listener": listener, "limit": limit})
    return v or 0.0


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def raw(port: int, data: bytes, local: str | None = None, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it (or `timeout`)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(local, 0) if local else None
    )
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    out += chunk
        return out
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") else 0


async def get(base: str, path: str, local: str | None = None, timeout: float = 10.0) -> tuple[int, float]:
    """A legitimate client's GET on a fresh connection: (status, seconds)."""
    t0 = time.monotonic()
    conn = aiohttp.TCPConnector(local_addr=(local, 0) if local else None, force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(f"{base}{path}") as r:
            await r.read()
            return r.status, time.monotonic() - t0


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_idle(port: int, n: int, local: str | None = None) -> list[Conn]:
    """n connections that never send a byte; closed by the caller."""
    out = []
    for _ in range(n):
        out.append(await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0) if local else None))
    return out


def close_all(conns: list[Conn]) -> None:
    for _, w in conns:
        w.close()


async def closed_by_server(conns: list[Conn], timeout: float) -> int:
    """How many of these connections the server closed within `timeout` (EOF or reset)."""

    async def one(reader: asyncio.StreamReader) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while await reader.read(65536):
                    pass
            return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    return sum(await asyncio.gather(*(one(r) for r, _ in conns)))


# --- connections -----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
async def test_idle_flood_over_the_limit_still_serves_healthz_and_a_whep_viewer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = limits_cfg(max_connections=512, max_connections_per_client=10_000)
    async with serving(cfg) as (_app, server, base):
        port = port_of(base)
        before = rejections("http", "connections")
        t0 = time.monotonic()
        with caplog.at_level(logging.INFO, logger="streamproxy.serve.http_limits"):
            flood = await open_idle(port, 600)
        lines = [r for r in caplog.records if "limit connections" in r.getMessage()]
        assert 1 <= len(lines) <= time.monotonic() - t0 + 2, len(lines)  # one a second, with a count
        try:
            await asyncio.sleep(0.2)
            assert server.guard.connections() <= 512
            # The oldest idle ones were closed for the newer ones: the flood itself is reclaimed.
            assert rejections("http", "connections") - before >= 600 - 512
            status, took = await get(base, "/healthz")
            assert status == 200 and took < 5, (status, took)
            # A WebRTC viewer: its POST reclaims an idle connection too, then media flows over UDP.
            client = WhepClient()
            try:
                async with aiohttp.ClientSession() as http:
                    t0 = time.monotonic()
                    r = await client.connect(http, f"{base}/cam1/whep")
                    assert r.status == 201, await r.text()
                    frames = await client.receive(3, timeout=20)
                    assert len(frames) >= 3
                    assert time.monotonic() - t0 < 15
            finally:
                await client.close()
            assert server.guard.connections() <= 512
        finally:
            close_all(flood)


@pytest.mark.timeout(60)
async def test_per_client_limit_reclaims_idle_and_refuses_busy_with_503() -> None:
    cfg = limits_cfg(max_connections_per_client=20, request_timeout_s=30)
    async with serving(cfg, feed=False) as (_app, server, base):
        port = port_of(base)
        idle = await open_idle(port, 30)
        busy: list[Conn] = []
        try:
            await asyncio.sleep(0.2)
            assert server.guard.connections("127.0.0.1") == 20
            # Another address is not affected, and the flooding address itself gets in (an idle one goes).
            assert (await get(base, "/healthz", local=LEGIT))[0] == 200
            assert (await get(base, "/healthz"))[0] == 200
            # Twenty connections with a request in progress (a head begun): nothing to reclaim.
            close_all(idle)
            await asyncio.sleep(0.3)
            for _ in range(20):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET /healthz HTTP/1.1\r\n")
                busy.append((r, w))
            await asyncio.sleep(0.3)
            before = rejections("http", "connections_per_client")
            resp = await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(resp) == 503 and b"too many connections from this address" in resp, resp
            assert rejections("http", "connections_per_client") == before + 1
            assert (await get(base, "/healthz", local=LEGIT))[0] == 200
        finally:
            close_all(idle + busy)


@pytest.mark.timeout(60)
async def test_idle_keepalive_connection_is_closed_after_idle_timeout() -> None:
    cfg = limits_cfg(idle_timeout_s=1.0)
    async with serving(cfg, feed=False) as (_app, server, base):
        port = port_of(base)
        before = rejections("http", "idle_timeout")
        silent = await open_idle(port, 3)
        reader, used = conn = await asyncio.open_connection("127.0.0.1", port)
        used.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open after it
        head = await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        assert status_of(head) == 200
        t0 = time.monotonic()
        try:
            assert await closed_by_server(silent, 6) == 3
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 6) == b""
            took = time.monotonic() - t0
            assert took < 5, took
            assert rejections("http", "idle_timeout") >= before + 4
            assert server.guard.connections() == 0
        finally:
            close_all([*silent, conn])


@pytest.mark.timeout(90)
async def test_slowloris_connections_are_closed_by_the_request_timeout() -> None:
    timeout_s = 1.0
    cfg = limits_cfg(request_timeout_s=timeout_s, max_connections_per_client=10_000)
    async with serving(cfg, feed=False) as (_app, server, base):
        port = port_of(base)
        before = rejections("http", "request_timeout")
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        closed_at: list[float] = []
        t0 = time.monotonic()

        async def slow() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for i in range(60):  # one byte every 0.2 s: 12 s unless closed
                    if reader.at_eof():
                        break
                    writer.write(head[i : i + 1])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader.read(65536), 0.2)
                closed_at.append(time.monotonic() - t0)
            except ConnectionError:
                closed_at.append(time.monotonic() - t0)
            finally:
                writer.close()

        tasks = [asyncio.create_task(slow()) for _ in range(300)]
        try:
            await asyncio.sleep(0.5)
            status, took = await get(base, "/healthz", local=LEGIT)
            assert status == 200 and took < 5
            await asyncio.wait_for(asyncio.gather(*tasks), 40)
        finally:
            for t in tasks:
                t.cancel()
        assert len(closed_at) == 300
        # Closed by the server at ~request_timeout (their own loop would have run 12 s).
        assert max(closed_at) < 3 * timeout_s + 3, max(closed_at)
        assert rejections("http", "request_timeout") >= before + 300
        assert server.guard.connections() == 0


@pytest.mark.timeout(60)
async def test_slow_body_gets_408() -> None:
    cfg = limits_cfg(request_timeout_s=1.0)
    async with serving(cfg, feed=False) as (_app, _server, base):
        port = port_of(base)
        before = rejections("http", "request_timeout")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /cam1/whep HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\n"
                         b"Content-Length: 5000\r\n\r\nv=0\r\n")  # fmt: skip
            resp = await asyncio.wait_for(reader.read(65536), 10)
            assert status_of(resp) == 408, resp
            assert rejections("http", "request_timeout") == before + 1
        finally:
            writer.close()


# --- sizes -----------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_oversized_head_and_body_are_refused_and_counted() -> None:
    cfg = limits_cfg(max_request_bytes=4096, max_body_bytes=8192)
    async with serving(cfg, feed=False) as (_app, _server, base):
        port = port_of(base)
        size0 = rejections("http", "request_size")
        # Many short headers, over 4 KiB together: the whole head is the limit.
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(30))
        resp = await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert status_of(resp) == 431, resp[:200]
        # One line over the limit: aiohttp's parser answers 400.
        resp = await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 5000 + b"\r\n\r\n")
        assert status_of(resp) in (400, 431), resp[:200]
        resp = await raw(port, b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(resp) in (400, 414, 431), resp[:200]
        assert rejections("http", "request_size") >= size0 + 3
        # Under the limits all is well.
        assert (await get(base, "/healthz"))[0] == 200

        body0 = rejections("webrtc", "body_size")
        sdp = {"Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"{base}/cam1/whep", data=b"v=0\r\n" + b"a" * 9000, headers=sdp)
            assert r.status == 413
            # Chunked, no Content-Length: refused while it is read.
            async def chunks() -> Any:
                for _ in range(10):
                    yield b"a" * 1000

            r = await http.post(f"{base}/cam1/whep", data=chunks(), headers=sdp)
            assert r.status == 413
        assert rejections("webrtc", "body_size") == body0 + 2
        http0 = rejections("http", "body_size")
        resp = await raw(port, b"POST /api/cameras HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        assert status_of(resp) == 413
        assert rejections("http", "body_size") == http0 + 1


# --- the log ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_malformed_requests_get_400_and_a_bounded_log_without_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    garbage = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS hello
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\n\r\n",
    ]
    async with serving(make_cfg(), feed=False) as (_app, _server, base):
        port = port_of(base)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            t0 = time.monotonic()
            statuses = []
            for i in range(200):
                statuses.append(status_of(await raw(port, garbage[i % len(garbage)], timeout=5)))
            elapsed = time.monotonic() - t0
            await asyncio.sleep(1.2)  # the last burst's count is logged when its second is over
        # Every one answered (aiohttp's 400) or closed, never a 2xx.
        assert all(s in (0, 400) for s in statuses), statuses
        assert statuses.count(400) >= 150
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [r for r in noisy if r.levelno >= logging.ERROR], [r.getMessage() for r in noisy][:3]
        assert not [r for r in noisy if r.exc_info], "a traceback was logged"
        malformed = [r for r in noisy if "malformed request" in r.getMessage()]
        assert 1 <= len(malformed) <= elapsed + 3, len(malformed)
        # The lines say how many requests they stand for: together, every malformed one (TLS hello
        # is BadHttpMethod on a first request: aiohttp logs it at DEBUG, not counted here).
        total = 0
        for r in malformed:
            msg = r.getMessage()
            total += int(msg.rsplit("(x", 1)[1].split(" ", 1)[0]) if "(x" in msg else 1
        assert total >= 100, total


# --- WebRTC sessions -------------------------------------------------------------------------------
@pytest.mark.timeout(120)
async def test_200_half_open_whep_sessions_do_not_lock_a_viewer_out() -> None:
    cfg = limits_cfg(max_webrtc_sessions=64)
    async with serving(cfg) as (app, server, base):
        attacker = WhepClient()
        offer = await attacker.offer()  # one offer, posted 200 times, answers never used
        sdp = {"Content-Type": "application/sdp"}
        before = rejections("webrtc", "sessions")
        statuses: list[int] = []
        async with aiohttp.ClientSession() as http:

            async def post() -> None:
                async with http.post(f"{base}/cam1/whep", data=offer, headers=sdp) as r:
                    statuses.append(r.status)

            for _ in range(20):
                await asyncio.gather(*(post() for _ in range(10)))
        await attacker.close()
        assert len(statuses) == 200 and set(statuses) == {201}, statuses  # each reclaims an older one
        # One address holds at most a quarter of the slots.
        assert server.webrtc.count() <= server.webrtc.max_per_client == 16
        assert rejections("webrtc", "sessions") - before >= 200 - 16
        # A viewer from another address gets its stream.
        viewer = WhepClient()
        try:
            conn = aiohttp.TCPConnector(local_addr=(LEGIT, 0))
            async with aiohttp.ClientSession(connector=conn) as http:
                t0 = time.monotonic()
                r = await viewer.connect(http, f"{base}/cam1/whep")
                assert r.status == 201, await r.text()
                frames = await viewer.receive(1, timeout=20)
                took = time.monotonic() - t0
            assert len(frames) == 1
            # ~0.3-0.5 s on an idle machine; a wide margin for a busy one.
            assert took < 8, took
            assert app.hubs["cam1"].viewers("webrtc") == 1
        finally:
            await viewer.close()


@pytest.mark.timeout(60)
async def test_a_session_that_never_connects_is_reclaimed_after_setup_timeout() -> None:
    cfg = limits_cfg(setup_timeout_s=1.0)
    async with serving(cfg, feed=False) as (_app, server, base):
        attacker = WhepClient()
        try:
            offer = await attacker.offer()
            before = rejections("webrtc", "setup_timeout")
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    r = await http.post(f"{base}/cam1/whep", data=offer, headers={"Content-Type": "application/sdp"})
                    assert r.status == 201
            assert server.webrtc.count() == 3
            assert await wait_for(lambda: server.webrtc.count() == 0, 10)
            assert rejections("webrtc", "setup_timeout") == before + 3
        finally:
            await attacker.close()


@pytest.mark.timeout(60)
async def test_gateway_refuses_only_when_every_session_is_connected() -> None:
    cfg = limits_cfg(max_webrtc_sessions=8).server
    gw = WebRtcGateway(cfg)
    hub = StreamHub("cam1")
    client = WhepClient()
    try:
        offer = await client.offer()
        assert gw.max_per_client == 2
        a1, _ = await gw.create_session(hub, offer, client="10.0.0.1")
        a2, _ = await gw.create_session(hub, offer, client="10.0.0.1")
        old = gw.sessions[a1]
        a3, _ = await gw.create_session(hub, offer, client="10.0.0.1")  # reclaims a1, the oldest
        assert a1 not in gw.sessions and old.closed and old.pc.connectionState == "closed"
        assert set(gw.sessions) == {a2, a3}
        for sid in (a2, a3):
            gw.sessions[sid].connected = True  # as if ICE/DTLS had completed
        with pytest.raises(WhepError) as err:
            await gw.create_session(hub, offer, client="10.0.0.1")
        assert err.value.status == 503 and "address" in err.value.message
        # The total: six more from other addresses fill it; then the oldest unconnected goes.
        others = [(await gw.create_session(hub, offer, client=f"10.0.1.{i}"))[0] for i in range(6)]
        assert gw.count() == 8
        await gw.create_session(hub, offer, client="10.0.2.1")
        assert others[0] not in gw.sessions and gw.count() == 8
        for s in gw.sessions.values():
            s.connected = True
        with pytest.raises(WhepError) as err:
            await gw.create_session(hub, offer, client="10.0.3.1")
        assert err.value.status == 503 and err.value.message == "too many WebRTC viewers"
    finally:
        await gw.close_all()
        await client.close()


async def test_vp8_only_offer_is_told_no_h264() -> None:
    gw = WebRtcGateway(make_cfg().server)
    client = WhepClient()
    try:
        offer = await client.offer()
        lines = []
        for ln in offer.splitlines():
            if ln.startswith("m=video"):
                ln = " ".join([*ln.split()[:3], "97"])
            if ln.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) and not ln.split(":", 1)[1].startswith("97 "):
                continue
            lines.append(ln)
        vp8 = "\r\n".join(lines) + "\r\n"
        assert "VP8/90000" in vp8 and "H264" not in vp8
        with pytest.raises(WhepError) as err:
            await gw.create_session(StreamHub("cam1"), vp8)
        assert err.value.status == 400 and "no H.264 offered" in err.value.message
        assert gw.count() == 0
    finally:
        await gw.close_all()
        await client.close()
