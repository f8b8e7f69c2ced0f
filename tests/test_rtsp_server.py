"""The RTSP server against real clients on loopback: ffprobe, ffmpeg, GStreamer, PyAV and raw sockets.

A synthetic camera (moving gradient -> H264Encoder -> StreamHub at ~25 fps) feeds the server on port 0.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
import time
from typing import cast

import pytest
from rtspkit import (
    FPS,
    PASSWORD,
    USER,
    H,
    RawRtsp,
    W,
    need_ffmpeg,
    need_gst,
    pyav_read,
    run,
    serve,
    with_creds,
)

from streamproxy import metrics
from streamproxy.config import ServerConfig, User
from streamproxy.hub import CodecInfo, StreamHub
from streamproxy.metrics import OutProtocol
from streamproxy.rtsp.rtp import PayloadCache, sdes_cname
from streamproxy.serve.rtsp import server as server_mod
from streamproxy.serve.rtsp.server import RtspServer
from streamproxy.serve.rtsp.session import RtspSession, TcpOutput, UdpOutput
from streamproxy.types import EncodedPacket

pytestmark = pytest.mark.timeout(90)


# --- third-party clients ---


@pytest.mark.slow
@need_ffmpeg
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_ffprobe_reports_h264_size(transport: str) -> None:
    async with serve() as (_, _, url):
        rc, out, err = await run(
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
            url,
            timeout=20,
        )
    assert rc == 0, err
    assert out.strip() == f"h264,{W},{H}"


@pytest.mark.slow
@need_ffmpeg
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_ffmpeg_decodes_frames(transport: str) -> None:
    async with serve() as (_, hub, url):
        counts: list[int] = []  # the hub's RTSP viewer count at every join and leave
        hub.on_viewers_changed = lambda h: counts.append(h.viewers("rtsp"))
        rc, out, err = await run(
            "ffmpeg",
            "-v",
            "error",
            "-rtsp_transport",
            transport,
            "-i",
            url,
            "-frames:v",
            "25",
            "-f",
            "framecrc",
            "-",
            timeout=30,
        )
        # ffmpeg was one viewer while it read; once it quit (TEARDOWN, or its connection closed) it is none.
        for _ in range(50):
            if hub.viewers() == 0:
                break
            await asyncio.sleep(0.1)
        assert counts == [1, 0] and hub.viewers() == 0, counts
    assert rc == 0, err
    assert len([ln for ln in out.splitlines() if ln and not ln.startswith("#")]) == 25


@pytest.mark.slow
@need_gst
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_gstreamer_decodes_frames(transport: str) -> None:
    async with serve() as (_, _, url):
        _rc, out, err = await run(
            "gst-launch-1.0",
            "rtspsrc",
            f"location={url}",
            f"protocols={transport}",
            "latency=0",
            "!",
            "rtph264depay",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "fakesink",
            "num-buffers=25",
            timeout=30,
        )
    # EOS after 25 decoded buffers is the proof; gst-launch may still report a race of its own
    # PAUSE vs TEARDOWN at shutdown, so the exit code alone is not used.
    assert 'Got EOS from element "pipeline0"' in out, out + err


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_pyav_decodes_at_full_rate_and_first_frame_is_fast(transport: str) -> None:
    async with serve() as (_, _, url):
        res = await asyncio.to_thread(pyav_read, url, 50, transport)
    assert res["frames"] == 50 and (res["width"], res["height"]) == (W, H)
    print(
        f"\nPyAV over {transport}: first frame {res['first_frame_s'] * 1000:.0f} ms after open, "
        f"50 frames in {res['total_s']:.2f} s"
    )
    assert res["first_frame_s"] < 1.5  # a keyframe is forced when a viewer joins: no GOP wait (GOP is 4 s)
    assert res["total_s"] < 50 / FPS + 2.5


@pytest.mark.slow
@need_ffmpeg
async def test_unknown_path_is_404() -> None:
    async with serve() as (server, _, url):
        rc, _, err = await run("ffprobe", "-v", "error", url.replace("cam1", "nope"), timeout=15)
        assert rc != 0 and "404" in err
        raw = await RawRtsp.connect(server.port)
        status, _, _ = await raw.request("DESCRIBE", url.replace("cam1", "nope"))
        assert status == 404
        status, _, _ = await raw.request(
            "SETUP",
            url.replace("cam1", "nope") + "/trackID=0",
            {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"},
        )
        assert status == 404
        raw.close()


# --- authentication ---


def _auth_failures() -> float:
    return metrics.REGISTRY.get_sample_value("streamproxy_auth_failures_total", {"protocol": "rtsp"}) or 0.0


def _digest_header(uri: str, method: str, challenge: str, user: str, password: str) -> str:
    params = dict(p.strip().split("=", 1) for p in challenge[len("Digest ") :].split(","))
    realm, nonce = params["realm"].strip('"'), params["nonce"].strip('"')

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    resp = md5(f"{md5(f'{user}:{realm}:{password}')}:{nonce}:{md5(f'{method}:{uri}')}")
    return f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}"'


@pytest.mark.slow
@need_ffmpeg
async def test_auth_required_and_checked() -> None:
    users = [User(username=USER, password=PASSWORD)]
    async with serve(users=users) as (server, hub, url):
        failures0 = _auth_failures()
        raw = await RawRtsp.connect(server.port)
        status, hdrs, _ = await raw.request("OPTIONS", url)
        assert status == 200  # reveals nothing, clients probe with it
        status, hdrs, _ = await raw.request("DESCRIBE", url)
        assert status == 401
        schemes = sorted(v.split()[0] for v in hdrs["www-authenticate"])
        assert schemes == ["Basic", "Digest"]
        digest_challenge = next(v for v in hdrs["www-authenticate"] if v.startswith("Digest"))
        bad_basic = "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode()
        assert (await raw.request("DESCRIBE", url, {"Authorization": bad_basic}))[0] == 401
        bad_digest = _digest_header(url, "DESCRIBE", digest_challenge, USER, "wrong")
        assert (await raw.request("DESCRIBE", url, {"Authorization": bad_digest}))[0] == 401
        # Not a frame without credentials: SETUP and PLAY are refused too.
        status, _, _ = await raw.request(
            "SETUP", url + "/trackID=0", {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
        )
        assert status == 401
        assert (await raw.request("PLAY", url, {"Session": "whatever"}))[0] == 401
        await asyncio.sleep(0.5)
        assert (await raw.request("OPTIONS", url))[0] == 200
        assert raw.binary == [] and hub.viewers() == 0
        # Right credentials, Basic and Digest.
        good_basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        assert (await raw.request("DESCRIBE", url, {"Authorization": good_basic}))[0] == 200
        good_digest = _digest_header(url, "DESCRIBE", digest_challenge, USER, PASSWORD)
        assert (await raw.request("DESCRIBE", url, {"Authorization": good_digest}))[0] == 200
        raw.close()
        assert (
            _auth_failures() - failures0 == 2
        )  # the wrong Basic and the wrong Digest; no credentials is no failure

        # Real clients: wrong credentials fail, right ones decode (ffmpeg answers the Digest challenge).
        rc, _, err = await run(
            "ffprobe", "-v", "error", "-rtsp_transport", "tcp", with_creds(url, USER, "nope"), timeout=15
        )
        assert rc != 0 and "401" in err
        rc, _, err = await run("ffprobe", "-v", "error", "-rtsp_transport", "tcp", url, timeout=15)
        assert rc != 0 and "401" in err
        rc, out, err = await run(
            "ffmpeg",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-i",
            with_creds(url, USER, PASSWORD),
            "-frames:v",
            "25",
            "-f",
            "framecrc",
            "-",
            timeout=30,
        )
        assert rc == 0, err
        assert len([ln for ln in out.splitlines() if ln and not ln.startswith("#")]) == 25


@pytest.mark.slow
@need_gst
async def test_gstreamer_with_credentials() -> None:
    async with serve(users=[User(username=USER, password="secret")]) as (_, _, url):
        _rc, out, err = await run(
            "gst-launch-1.0",
            "rtspsrc",
            f"location={url}",
            f"user-id={USER}",
            "user-pw=secret",
            "protocols=tcp",
            "latency=0",
            "!",
            "rtph264depay",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "fakesink",
            "num-buffers=10",
            timeout=30,
        )
    assert 'Got EOS from element "pipeline0"' in out, out + err


# --- protocol details on a raw socket ---


async def test_raw_protocol_errors_and_keepalive() -> None:
    async with serve() as (server, _, url):
        raw = await RawRtsp.connect(server.port)
        status, hdrs, _ = await raw.request("OPTIONS", "*", {"CSeq": "77"}, cseq=False)
        assert status == 200 and hdrs["cseq"] == ["77"]
        assert "DESCRIBE" in hdrs["public"][0] and "GET_PARAMETER" in hdrs["public"][0]
        status, hdrs, body = await raw.request("DESCRIBE", url + "/?foo=bar", {"Accept": "application/sdp"})
        assert status == 200 and hdrs["content-base"] == [url + "/"] and b"sprop-parameter-sets=" in body
        assert hdrs["cseq"] == [str(raw.cseq)]
        assert (await raw.request("GET_PARAMETER", url))[0] == 200
        assert (await raw.request("GET_PARAMETER", url, {"Session": "deadbeef"}))[0] == 454
        assert (await raw.request("PLAY", url))[0] == 454
        assert (await raw.request("PLAY", url, {"Session": "deadbeef"}))[0] == 454
        assert (await raw.request("TEARDOWN", url, {"Session": "deadbeef"}))[0] == 454
        assert (await raw.request("ANNOUNCE", url))[0] == 405
        assert (await raw.request("RECORD", url))[0] == 405
        assert (await raw.request("BREW", url))[0] == 501
        status, _, _ = await raw.request("SETUP", url + "/trackID=0", {"Transport": "RTP/SAVP;multicast"})
        assert status == 461
        assert (await raw.request("SETUP", url + "/trackID=0"))[0] == 400
        assert (await raw.request("SETUP", url + "/trackID=9", {"Transport": "RTP/AVP/TCP;unicast"}))[
            0
        ] == 404
        await raw.send_raw(b"NONSENSE\r\nCSeq: 5\r\n\r\n")
        status, hdrs, _ = await raw.response()
        assert status == 400 and hdrs["cseq"] == ["5"]

        # A session over TCP: RTP arrives interleaved; client RTCP mixed with requests is skipped.
        session = await raw.play_tcp(url)
        frames = await raw.read_interleaved(30)
        rtp = [p for ch, p in frames if ch == 0]
        assert rtp and all(p[0] == 0x80 and (p[1] & 0x7F) == 96 for p in rtp)
        assert any(p[1] & 0x80 for p in rtp)  # marker bit ends an access unit
        ssrcs = {struct.unpack("!I", p[8:12])[0] for p in rtp}
        assert len(ssrcs) == 1
        rr = struct.pack("!BBHI", 0x80, 201, 1, 1234)  # an empty receiver report
        await raw.send_raw(b"$\x01" + len(rr).to_bytes(2, "big") + rr)
        status, hdrs, _ = await raw.request("GET_PARAMETER", url, {"Session": session})
        assert status == 200 and hdrs["session"][0].startswith(session + ";timeout=")
        assert (await raw.request("SET_PARAMETER", url, {"Session": session}))[0] == 200
        assert (await raw.request("PAUSE", url, {"Session": session}))[0] == 200
        status, hdrs, _ = await raw.request("PLAY", url, {"Session": session})
        assert status == 200 and "rtptime=" in hdrs["rtp-info"][0]
        assert (await raw.request("TEARDOWN", url, {"Session": session}))[0] == 200
        assert (await raw.request("GET_PARAMETER", url, {"Session": session}))[0] == 454
        assert server.sessions == {}
        raw.close()


async def test_rtcp_sender_reports_over_tcp() -> None:
    async with serve() as (server, _, url):
        raw = await RawRtsp.connect(server.port)
        await raw.play_tcp(url)
        frames = await raw.read_interleaved(40)
        srs = [p for ch, p in frames if ch == 1]
        assert srs and srs[0][1] == 200  # SR first in the compound packet
        rtp_ssrc = next(struct.unpack("!I", p[8:12])[0] for ch, p in frames if ch == 0)
        assert struct.unpack("!I", srs[0][4:8])[0] == rtp_ssrc
        ntp_sec = struct.unpack("!I", srs[0][8:12])[0]
        assert abs(ntp_sec - 2_208_988_800 - time.time()) < 5
        raw.close()


async def test_describe_503_when_camera_never_seen() -> None:
    async with serve(publish=False, describe_wait_s=0.2) as (server, _, url):
        raw = await RawRtsp.connect(server.port)
        assert (await raw.request("DESCRIBE", url))[0] == 503
        raw.close()


# --- robustness ---


@pytest.mark.slow
async def test_stalled_viewer_does_not_stall_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TcpOutput, "HIGH_WATER", 16 * 1024)
    async with serve(buffer_packets=8, kbps=3000, noise=True, write_timeout_s=4.0, tcp_sndbuf=16384) as (
        server,
        hub,
        url,
    ):
        lost: dict[OutProtocol, int] = {}
        hub.on_slow_viewer_drop = lambda protocol, n: lost.__setitem__(protocol, lost.get(protocol, 0) + n)
        stalled = await RawRtsp.connect(server.port, rcvbuf=4096, limit=4096)
        await stalled.play_tcp(url)  # ...and never reads again
        await asyncio.sleep(1.0)
        res = await asyncio.to_thread(pyav_read, url, 75, "tcp")
        assert res["frames"] == 75
        # The healthy viewer keeps the camera's rate (3 s of video) although the other one is stuck.
        assert res["total_s"] - res["first_frame_s"] < 74 / FPS + 1.5, res
        assert lost.get("rtsp", 0) > 0, lost
        # The stuck one is cut off after the write timeout; its session is gone.
        for _ in range(100):
            if not server.sessions:
                break
            await asyncio.sleep(0.1)
        assert not server.sessions
        stalled.close()


@pytest.mark.slow
async def test_stop_with_viewers_is_clean_and_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # A flush deadline far above any stop's own work: a stop that reaches it cut a viewer that was
    # reading (no clean close), which is what `took` below catches, whatever the machine's load.
    monkeypatch.setattr(server_mod, "STOP_FLUSH_S", 30.0)
    async with serve() as (server, hub, url):
        before = {t for t in asyncio.all_tasks() if not t.done()}
        viewers = [await RawRtsp.connect(server.port) for _ in range(3)]
        for v in viewers:
            await v.play_tcp(url)
        udp = await RawRtsp.connect(server.port)
        await udp.request("DESCRIBE", url)
        port = random.randrange(40000, 60000, 2)
        status, _, _ = await udp.request(
            "SETUP", url + "/trackID=0", {"Transport": f"RTP/AVP;unicast;client_port={port}-{port + 1}"}
        )
        assert status == 200
        await viewers[0].read_interleaved(5)
        assert hub.viewers() == 3
        playing = [s for s in server.sessions.values() if s.state == "playing"]
        assert sum(1 for s in playing if s.tcp) == 3 and len(server.sessions) == 4
        t0 = time.monotonic()
        await server.stop()
        took = time.monotonic() - t0
        await server.stop()  # idempotent
        assert took < server_mod.STOP_FLUSH_S, (
            f"stop waited {took:.1f} s: it cut a reading viewer at the deadline"
        )
        assert hub.viewers() == 0 and server.sessions == {}
        await asyncio.sleep(0.05)
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - before
        assert not leftover, leftover
        for v in (*viewers, udp):
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError, TimeoutError)):
                await v.read_interleaved(10_000, timeout=3)
            v.close()


@pytest.mark.slow
async def test_udp_session_times_out_without_keepalive() -> None:
    async with serve() as (server, hub, url):
        server.cfg = server.cfg.model_copy(update={"session_timeout_s": 5.0})
        raw = await RawRtsp.connect(server.port)
        await raw.request("DESCRIBE", url)
        port = random.randrange(40000, 60000, 2)
        status, hdrs, _ = await raw.request(
            "SETUP", url + "/trackID=0", {"Transport": f"RTP/AVP;unicast;client_port={port}-{port + 1}"}
        )
        assert status == 200 and "server_port=" in hdrs["transport"][0]
        session = hdrs["session"][0].split(";")[0]
        assert (await raw.request("PLAY", url, {"Session": session}))[0] == 200
        assert hub.viewers() == 1
        for _ in range(100):
            if not server.sessions:
                break
            await asyncio.sleep(0.1)
        assert not server.sessions and hub.viewers() == 0
        raw.close()


async def test_server_start_stop_idempotent() -> None:
    hub = StreamHub("cam1")
    cfg = ServerConfig(host="127.0.0.1", rtp_port_min=40000 + os.getpid() % 1000 * 2, rtp_port_max=49000)
    server = RtspServer(lambda name: hub if name == "cam1" else None, cfg.model_copy(update={"rtsp_port": 0}))
    await server.start()
    port = server.port
    await server.start()
    assert server.port == port != 0
    await server.stop()
    await server.stop()
    await server.start()  # restartable
    await server.stop()


class _Datagrams:
    """Stands in for a UDP output: keeps what the session sends."""

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp_packets: list[bytes] = []

    def send(self, packets: list[bytes]) -> None:
        self.rtp += packets

    def rtcp(self, data: bytes) -> None:
        self.rtcp_packets.append(data)

    def close(self) -> None:
        pass


async def test_resumed_session_continues_rtp_time_from_rtp_info_even_when_the_encoder_restarted() -> None:
    """PAUSE, wait, PLAY: the first packet carries RTP-Info's rtptime (the pause's time included),
    although the encoder's clock went back meanwhile; RTP time never goes back."""
    hub = StreamHub("cam", 50)
    hub.set_codec(CodecInfo(W, H, FPS, b"\x67\x42\xc0\x1e", b"\x68\xce"))
    out = _Datagrams()
    sess = RtspSession(hub, cast(UdpOutput, out), PayloadCache(), 60.0, owner=None)

    def ts(p: bytes) -> int:
        return int(struct.unpack("!I", p[4:8])[0])

    def frame_ts(packets: list[bytes]) -> list[int]:  # one per access unit: its last packet has the marker
        return [ts(p) for p in packets if p[1] & 0x80]

    async def send(pts: int, key: bool) -> None:
        now = time.monotonic()
        n = len(out.rtp)
        hub.publish(EncodedPacket(b"\x00\x00\x01\x65" + bytes(8), pts, key, now, now))
        for _ in range(200):  # the sender task runs on this loop: a few turns at most
            if len(out.rtp) > n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the session sent nothing")

    first_rtptime = int(sess.rtp_info("rtsp://x/cam/trackID=0").split("rtptime=")[1])
    sess.play()
    await send(900_000, True)
    await send(903_600, False)
    before = frame_ts(out.rtp)
    assert before == [first_rtptime, (first_rtptime + 3600) & 0xFFFFFFFF]
    await sess.pause()
    await asyncio.sleep(0.3)
    resumed_rtptime = int(sess.rtp_info("rtsp://x/cam/trackID=0").split("rtptime=")[1])
    sess.play()
    n = len(out.rtp)
    await send(0, True)  # the encoder restarted: its clock began again at 0
    await send(3600, False)
    after = frame_ts(out.rtp[n:])
    gap = (after[0] - before[-1]) & 0xFFFFFFFF
    assert abs(after[0] - resumed_rtptime) < 900, "the first packet after PLAY carries RTP-Info's rtptime"
    assert 0.25 * 90_000 < gap < 60 * 90_000, f"the pause's time is in RTP time and it moved forward: {gap}"
    assert (after[1] - after[0]) & 0xFFFFFFFF == 3600
    await sess.close()


def test_sdes_cname_is_one_padded_chunk_for_every_name_length() -> None:
    """The SDES packed once for our server's SR and our client's RR (rtp.sdes_cname)."""
    for n in range(10):
        name = "c" * n
        p = sdes_cname(0x1_2345_6789, name)  # an SSRC wider than 32 bits is masked
        assert len(p) % 4 == 0 and p[0] == 0x81 and p[1] == 202
        assert struct.unpack("!H", p[2:4])[0] == len(p) // 4 - 1
        ssrc, item, length = struct.unpack("!IBB", p[4:10])
        assert (ssrc, item, length) == (0x2345_6789, 1, n) and p[10 : 10 + n] == name.encode()
        assert p[10 + n] == 0, "the item list ends with a zero octet"
