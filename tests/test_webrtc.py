"""WHEP/WebRTC on loopback: a real aiortc viewer against the real HTTP server and a real H.264 stream.

The stream is the project's H264Encoder fed with synthetic frames (no camera, no faces): these tests
are about transport, negotiation and session lifecycle, not anonymization.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from webkit import (
    HEIGHT,
    WIDTH,
    WhepClient,
    make_cfg,
    serving,
    wait_for,
)

from streamproxy.serve.webrtc import ice_servers


# --- tests ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_whep_plays_h264_and_delete_ends_session() -> None:
    async with serving(make_cfg()) as (app, server, base), aiohttp.ClientSession() as http:
        hub = app.hubs["cam1"]
        client = WhepClient()
        try:
            resp = await client.connect(http, f"{base}/cam1/whep")
            assert resp.status == 201, await resp.text()
            assert resp.headers["Content-Type"].startswith("application/sdp")
            assert client.location is not None and client.location.startswith("/cam1/whep/")
            answer = client.pc.remoteDescription.sdp
            # H.264 only: never VP8 (which the passthrough track cannot produce).
            assert "H264/90000" in answer and "VP8" not in answer
            assert "packetization-mode=1" in answer
            # Only the configured host address is offered, and no server-reflexive (no STUN).
            cands = [ln for ln in answer.splitlines() if ln.startswith("a=candidate")]
            assert cands and all(" 127.0.0.1 " in c and "typ host" in c for c in cands), cands

            frames = await client.receive(20, timeout=20)
            assert len(frames) >= 20, f"decoded {len(frames)} frames"
            assert (frames[-1].width, frames[-1].height) == (WIDTH, HEIGHT)
            assert hub.viewers("webrtc") == 1
            assert server.webrtc.count("cam1") == 1

            r = await http.delete(f"{base}{client.location}")
            assert r.status == 200
            assert hub.viewers("webrtc") == 0
            assert server.webrtc.count() == 0
            r = await http.delete(f"{base}{client.location}")
            assert r.status == 404
        finally:
            await client.close()


@pytest.mark.timeout(60)
async def test_viewer_closing_its_peer_connection_ends_the_session() -> None:
    async with serving(make_cfg()) as (app, server, base), aiohttp.ClientSession() as http:
        client = WhepClient()
        resp = await client.connect(http, f"{base}/cam1/whep")
        assert resp.status == 201
        frames = await client.receive(5, timeout=20)
        assert len(frames) >= 5
        await client.close()  # sends DTLS close_notify: aiortc's server side sees "closed"
        assert await wait_for(lambda: server.webrtc.count() == 0, 10), "session not reaped"
        assert app.hubs["cam1"].viewers("webrtc") == 0


@pytest.mark.timeout(60)
async def test_two_viewers_share_one_encode() -> None:
    async with serving(make_cfg()) as (app, _server, base), aiohttp.ClientSession() as http:
        clients = [WhepClient(), WhepClient()]
        try:
            for c in clients:
                assert (await c.connect(http, f"{base}/cam1/whep")).status == 201
            results = await asyncio.gather(*(c.receive(10, timeout=20) for c in clients))
            assert all(len(r) >= 10 for r in results)
            assert app.hubs["cam1"].viewers("webrtc") == 2
        finally:
            for c in clients:
                await c.close()


@pytest.mark.timeout(30)
async def test_whep_errors() -> None:
    async with serving(make_cfg(), feed=False) as (_app, server, base), aiohttp.ClientSession() as http:
        sdp_headers = {"Content-Type": "application/sdp"}
        client = WhepClient()
        try:
            offer = await client.offer()
            r = await http.post(f"{base}/nope/whep", data=offer, headers=sdp_headers)
            assert r.status == 404
            r = await http.post(f"{base}/cam1/whep", data="hello", headers=sdp_headers)
            assert r.status == 400
            r = await http.post(
                f"{base}/cam1/whep", data="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", headers=sdp_headers
            )
            assert r.status == 400
            r = await http.post(f"{base}/cam1/whep", data=offer, headers={"Content-Type": "text/plain"})
            assert r.status == 415
            r = await http.delete(f"{base}/cam1/whep/unknown")
            assert r.status == 404
            r = await http.options(f"{base}/cam1/whep")
            assert r.status == 204 and "POST" in r.headers["Access-Control-Allow-Methods"]
            assert server.webrtc.count() == 0
        finally:
            await client.close()


@pytest.mark.timeout(30)
async def test_whep_requires_auth_when_users_are_configured() -> None:
    cfg = make_cfg(users=[{"username": "alice", "password": "s3cret"}])
    async with serving(cfg) as (_app, server, base), aiohttp.ClientSession() as http:
        client = WhepClient()
        # aiohttp.BasicAuth is deprecated (aiohttp 4 drops it): the header as a client sends it.
        wrong = {"Authorization": aiohttp.encode_basic_auth("alice", "wrong")}
        right = {"Authorization": aiohttp.encode_basic_auth("alice", "s3cret")}
        try:
            r = await client.connect(http, f"{base}/cam1/whep")
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Basic ")
            r = await client.connect(http, f"{base}/cam1/whep", headers=wrong)
            assert r.status == 401
            assert server.webrtc.count() == 0
            r = await client.connect(http, f"{base}/cam1/whep", headers=right)
            assert r.status == 201
            frames = await client.receive(3, timeout=20)
            assert len(frames) >= 3
            assert client.location is not None
            r = await http.delete(f"{base}{client.location}")
            assert r.status == 401
            r = await http.delete(f"{base}{client.location}", headers=right)
            assert r.status == 200
        finally:
            await client.close()


def test_ice_servers_from_config() -> None:
    cfg = make_cfg().server
    assert ice_servers(cfg) == []  # nothing is contacted by default (no Google STUN)
    cfg = cfg.model_copy(
        update={
            "stun_servers": ["stun:stun.example:3478"],
            "turn_servers": ["turn:bob:p%40ss@turn.example:3478"],
        }
    )
    servers = ice_servers(cfg)
    assert servers[0].urls == "stun:stun.example:3478"
    assert servers[1].urls == "turn:turn.example:3478"
    assert (servers[1].username, servers[1].credential) == ("bob", "p@ss")
