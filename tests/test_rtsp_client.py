"""The built-in RTSP client (streamproxy/rtsp/client.py): reading a camera, and pushing to a server.

A scripted camera on loopback sends exactly one frame and then nothing: the client must decode that
frame at once, from its marker bit, without waiting for a next frame (the reason the client exists).
The same camera checks Digest with qop, keepalives and the stall timeout. Real cameras (GStreamer's
RTSP server: H.264 and H.265, TCP and UDP, Basic and Digest) are in test_source.py.

A scripted recording server checks `RecordClient` (the publisher's transport): ANNOUNCE of our SDP
answered with a Digest challenge, SETUP mode=record, RECORD, RTP that depacketizes back to what was
sent, RTCP sender reports, keepalives, TEARDOWN; a server that stops reading; rtsps. A real server
(gst-rtsp-server in RECORD mode, decoding what it gets) is in test_publish.py.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from rtspkit import ScriptedServer, camera_sdp

from streamproxy.config import IngestConfig
from streamproxy.h264 import split_annexb
from streamproxy.live.source import CameraSource
from streamproxy.rtsp import sdp
from streamproxy.rtsp.auth import parse_auth_params
from streamproxy.rtsp.client import ClientError, ClientStopped, ClientUnauthorized, RecordClient
from streamproxy.rtsp.depay import Depacketizer, parse_rtp
from streamproxy.rtsp.protocol import parse_request_head
from streamproxy.rtsp.rtp import packetize_h264
from streamproxy.types import DecodedFrame, EncodedPacket


def one_keyframe(width: int = 320, height: int = 240) -> bytes:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.options = {"tune": "zerolatency", "preset": "ultrafast"}
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 128, np.uint8), format="bgr24")
    frame.pts = 0
    data = b"".join(bytes(p) for p in enc.encode(frame))
    return data + b"".join(bytes(p) for p in enc.encode(None))


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


class ScriptedCamera(ScriptedServer):
    """RTSP over TCP interleaved; PLAY sends one H.264 keyframe (FU-A, marker on its last packet)."""

    def __init__(self, user: str | None = None, password: str = "", session_timeout: int = 60) -> None:
        self.user, self.password, self.session_timeout = user, password, session_timeout
        self.frame = one_keyframe()
        nals = split_annexb(self.frame)
        self.sps = next(n for n in nals if n[0] & 0x1F == 7)
        self.pps = next(n for n in nals if n[0] & 0x1F == 8)
        self.methods: list[tuple[float, str]] = []
        self.interleaved: list[tuple[int, bytes]] = []  # (channel, data) the client sent
        self.auth_failures = 0
        super().__init__()

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/cam"

    def _connection(self, conn: socket.socket) -> None:
        self._session(conn)

    def _authorized(self, req_method: str, uri: str, header: str | None) -> bool:
        if self.user is None:
            return True
        if not header or not header.startswith("Digest "):
            return False
        p = parse_auth_params(header[7:])
        ha1 = _md5(f"{self.user}:cam:{self.password}")
        ha2 = _md5(f"{req_method}:{p.get('uri', '')}")
        want = _md5(f"{ha1}:{p.get('nonce')}:{p.get('nc')}:{p.get('cnonce')}:auth:{ha2}")
        ok = p.get("qop") == "auth" and p.get("response") == want and p.get("nonce") == "n0nce"
        self.auth_failures += not ok
        return ok

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        deadline = time.monotonic() + 30  # bounded: no test needs a longer session
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buf += data
            while buf[:1] == b"$" and len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[2:4], "big"):
                size = int.from_bytes(buf[2:4], "big")
                self.interleaved.append((buf[1], buf[4 : 4 + size]))  # RTCP from the client
                buf = buf[4 + size :]
            while buf[:1] != b"$" and b"\r\n\r\n" in buf:
                head, buf = buf.split(b"\r\n\r\n", 1)
                req = parse_request_head(head + b"\r\n\r\n")
                self.methods.append((time.monotonic(), req.method))
                cseq = req.header("cseq")
                extra: list[str] = []
                body = b""
                status = "200 OK"
                if req.method != "OPTIONS" and not self._authorized(
                    req.method, req.uri, req.header("authorization")
                ):
                    status = "401 Unauthorized"
                    extra.append('WWW-Authenticate: Digest realm="cam", nonce="n0nce", qop="auth"')
                elif req.method == "OPTIONS":
                    extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
                elif req.method == "DESCRIBE":
                    body = camera_sdp(self.sps, self.pps)
                    extra += [
                        f"Content-Base: rtsp://127.0.0.1:{self.port}/cam/",
                        "Content-Type: application/sdp",
                    ]
                elif req.method == "SETUP":
                    extra += [
                        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1",
                        f"Session: 1234;timeout={self.session_timeout}",
                    ]
                elif req.method == "PLAY":
                    extra.append("Session: 1234")
                lines = [f"RTSP/1.0 {status}", f"CSeq: {cseq}", *extra]
                if body:
                    lines.append(f"Content-Length: {len(body)}")
                conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                if req.method == "PLAY" and status.startswith("200"):
                    self._send_frame(conn)

    def _send_frame(self, conn: socket.socket) -> None:
        payloads = packetize_h264(self.frame, max_payload=500)
        assert len(payloads) > 2  # fragmented: the frame is only whole at its marker packet
        for seq, (payload, marker) in enumerate(payloads):
            rtp = bytes([0x80, (0x80 if marker else 0) | 96]) + seq.to_bytes(2, "big")
            rtp += (1000).to_bytes(4, "big") + (0xCAFE).to_bytes(4, "big") + payload
            conn.sendall(b"$\x00" + len(rtp).to_bytes(2, "big") + rtp)


def _source(url: str, got: list[DecodedFrame], read_timeout_s: float = 3.0) -> CameraSource:
    ingest = IngestConfig(read_timeout_s=read_timeout_s, backoff_initial_s=5, open_timeout_s=3)
    return CameraSource("scripted", url, "tcp", ingest, on_frame=got.append)


def _wait(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_a_frame_is_decoded_on_its_marker_packet_without_waiting_for_the_next() -> None:
    got: list[DecodedFrame] = []
    with ScriptedCamera() as cam:
        src = _source(cam.url, got)
        src.start()
        try:
            assert _wait(lambda: got, 3.0), f"no frame (camera saw {[m for _, m in cam.methods]})"
        finally:
            src.stop()
    assert len(got) == 1  # the camera sent one frame and nothing after it
    assert (got[0].frame.width, got[0].frame.height) == (320, 240)
    assert [m for _, m in cam.methods][:4] == ["OPTIONS", "DESCRIBE", "SETUP", "PLAY"]


def test_stopping_the_service_tears_the_camera_session_down() -> None:
    """A camera allows few sessions: ours ends with a TEARDOWN when the service stops, not at its timeout."""
    got: list[DecodedFrame] = []
    with ScriptedCamera() as cam:
        src = _source(cam.url, got)
        src.start()
        try:
            assert _wait(lambda: got, 3.0), src.last_error
        finally:
            src.stop()
        assert _wait(lambda: cam.methods and cam.methods[-1][1] == "TEARDOWN", 3.0), cam.methods


def test_digest_with_qop_and_keepalive_within_the_session_timeout() -> None:
    got: list[DecodedFrame] = []
    with ScriptedCamera(user="admin", password="s3cret!", session_timeout=5) as cam:
        src = _source(cam.url, got, read_timeout_s=8)
        src.start()
        try:
            assert _wait(lambda: got, 3.0), src.last_error
            # timeout=5 -> a keepalive every 2.5 s; the camera lists GET_PARAMETER, so that is used.
            assert _wait(lambda: any(m == "GET_PARAMETER" for _, m in cam.methods), 4.0)
        finally:
            src.stop()
    assert cam.auth_failures == 0
    assert src.state == "stopped"


def test_wrong_password_names_the_fix_and_never_the_secret() -> None:
    got: list[DecodedFrame] = []
    with ScriptedCamera(user="admin", password="right") as cam:
        url = cam.url.replace(":right@", ":wrongpass@")
        src = _source(url, got)
        src.start()
        try:
            assert _wait(lambda: src.last_error is not None, 4.0)
        finally:
            src.stop()
    assert not got
    err = src.last_error or ""
    assert "401" in err and "user and password" in err and "wrongpass" not in err


def test_silence_after_the_frame_is_a_stall_and_the_session_is_reopened() -> None:
    got: list[DecodedFrame] = []
    with ScriptedCamera() as cam:
        src = _source(cam.url, got, read_timeout_s=1.0)
        src.ingest = src.ingest.model_copy(update={"backoff_initial_s": 0.1})
        src.start()
        try:
            assert _wait(lambda: src.last_error is not None, 4.0)
            assert "stalled" in (src.last_error or "")
            assert _wait(lambda: len(got) >= 2, 4.0)  # reconnected and got the frame again
        finally:
            src.stop()


def test_receiver_reports_over_the_rtcp_channel() -> None:
    """RTCP RR + SDES every few seconds (first after ~1 s), as FFmpeg and GStreamer clients send them:
    some cameras end a session whose receiver stays silent."""
    got: list[DecodedFrame] = []
    with ScriptedCamera() as cam:
        src = _source(cam.url, got, read_timeout_s=8)
        src.start()
        try:
            assert _wait(lambda: cam.interleaved, 4.0)
        finally:
            src.stop()
    channel, data = cam.interleaved[0]
    assert channel == 1  # the RTCP channel of interleaved=0-1
    assert data[0] == 0x81 and data[1] == 201  # RR with one report block
    source_ssrc, lost_word, highest = struct.unpack("!III", data[8:20])
    sent = len(packetize_h264(cam.frame, max_payload=500))
    assert source_ssrc == 0xCAFE and lost_word == 0 and highest == sent - 1
    sdes = data[32:]
    assert sdes[1] == 202 and b"streamproxy" in sdes and len(data) % 4 == 0


# --- the other way: RecordClient, the publisher's transport --------------------------------------------


class ScriptedRecorder(ScriptedServer):
    """A server that takes ANNOUNCE/SETUP/RECORD (TCP interleaved) and keeps what it got: the
    requests, the announced SDP, RTP (channel 0) and RTCP (channel 1). Digest with qop when `user`;
    `stop_reading`: after RECORD it reads nothing more (a small receive buffer: writes soon block)."""

    def __init__(self, user: str | None = None, password: str = "", session_timeout: int = 60,
                 stop_reading: bool = False, tls: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.user, self.password, self.session_timeout = user, password, session_timeout
        self.stop_reading, self.tls = stop_reading, tls
        self.requests: list[tuple[str, str]] = []  # (method, uri)
        self.challenged = 0  # requests answered 401 for want of credentials
        self.auth_failures = 0  # credentials sent, but wrong
        self.announced = b""
        self.transport = ""
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.reading_stopped = threading.Event()
        super().__init__(rcvbuf=4096 if stop_reading else None)

    def url(self, user: str | None = None, password: str = "", scheme: str = "rtsp") -> str:
        auth = f"{user}:{password}@" if user else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/pub"

    def methods(self) -> list[str]:
        return [m for m, _ in self.requests]

    def _connection(self, conn: socket.socket) -> None:
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        with conn:
            self._session(conn)

    def _authorized(self, method: str, header: str | None) -> bool:
        if self.user is None:
            return True
        if not header or not header.startswith("Digest "):
            self.challenged += 1
            return False
        p = parse_auth_params(header[7:])
        ha1 = _md5(f"{self.user}:rec:{self.password}")
        ha2 = _md5(f"{method}:{p.get('uri', '')}")
        want = _md5(f"{ha1}:{p.get('nonce')}:{p.get('nc')}:{p.get('cnonce')}:auth:{ha2}")
        ok = p.get("qop") == "auth" and p.get("response") == want and p.get("nonce") == "rec0nce"
        self.auth_failures += not ok
        return ok

    def _session(self, conn: socket.socket) -> None:
        buf = b""
        recording = False
        deadline = time.monotonic() + 30  # bounded: no test needs a longer session
        while not self._stop.is_set() and time.monotonic() < deadline:
            if recording and self.stop_reading:
                self.reading_stopped.set()
                self._stop.wait(deadline - time.monotonic())
                return
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
                    size = int.from_bytes(buf[2:4], "big")
                    (self.rtp if buf[1] == 0 else self.rtcp).append(buf[4 : 4 + size])
                    buf = buf[4 + size :]
                    continue
                if b"\r\n\r\n" not in buf:
                    break
                head, rest = buf.split(b"\r\n\r\n", 1)
                req = parse_request_head(head + b"\r\n\r\n")
                length = int(req.header("content-length") or "0")
                if len(rest) < length:
                    break
                body, buf = rest[:length], rest[length:]
                self.requests.append((req.method, req.uri))
                status, extra = "200 OK", []
                if req.method != "OPTIONS" and not self._authorized(req.method, req.header("authorization")):
                    status = "401 Unauthorized"
                    extra.append('WWW-Authenticate: Digest realm="rec", nonce="rec0nce", qop="auth"')
                elif req.method == "OPTIONS":
                    extra.append("Public: OPTIONS, ANNOUNCE, SETUP, RECORD, TEARDOWN")
                elif req.method == "ANNOUNCE":
                    self.announced = body
                elif req.method == "SETUP":
                    self.transport = req.header("transport") or ""
                    extra += [
                        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
                        f"Session: 5678;timeout={self.session_timeout}",
                    ]
                elif req.method == "RECORD":
                    recording = True
                lines = [f"RTSP/1.0 {status}", f"CSeq: {req.header('cseq')}", *extra]
                conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())


def _packet(data: bytes, n: int) -> EncodedPacket:
    now = time.monotonic()
    return EncodedPacket(data=data, pts90k=n * 3600, keyframe=True, decoded_at=now, encoded_at=now)


def _describe(sps: bytes, pps: bytes) -> Callable[[str], bytes]:
    def build(local_ip: str) -> bytes:
        return sdp.build_video(session_name="cam", tool="streamproxy", origin_ip=local_ip, control="trackID=0",
                               sps=sps, pps=pps, profile_level_id=sps[1:4].hex(), fps=25, width=320,
                               height=240)  # fmt: skip

    return build


def test_record_announces_our_sdp_with_digest_and_sends_rtp_sender_reports_keepalives_teardown() -> None:
    frame = one_keyframe()
    nals = split_annexb(frame)
    sps = next(n for n in nals if n[0] & 0x1F == 7)
    pps = next(n for n in nals if n[0] & 0x1F == 8)
    with ScriptedRecorder(user="pub", password="pa55", session_timeout=5) as srv:
        client = RecordClient(srv.url("pub", "pa55"), 3.0, cname="streamproxy-cam")
        try:
            client.record(_describe(sps, pps), "trackID=0")
            # 2.6 s of frames: an SR with the first, a keepalive once half the 5 s timeout passed.
            for n in range(27):
                client.send(_packet(frame, n))
                time.sleep(0.1)
        finally:
            client.close()
        assert _wait(lambda: srv.methods()[-1:] == ["TEARDOWN"], 3.0), srv.requests
    # ANNOUNCE is challenged once and then signed (every request after it too); no wrong response.
    assert srv.methods()[:5] == ["OPTIONS", "ANNOUNCE", "ANNOUNCE", "SETUP", "RECORD"]
    assert srv.challenged == 1 and srv.auth_failures == 0
    assert "pa55" not in str(srv.requests)  # the URL's credentials go in Authorization only
    assert srv.requests[3][1] == f"rtsp://127.0.0.1:{srv.port}/pub/trackID=0"
    assert (
        "mode=record" in srv.transport
        and "RTP/AVP/TCP" in srv.transport
        and "interleaved=0-1" in srv.transport
    )
    desc = sdp.parse(srv.announced.decode())
    (media,) = desc.media
    assert media.encoding("96") == ("H264", "90000") and media.control == "trackID=0"
    assert media.params("96")["sprop-parameter-sets"] == ",".join(
        base64.b64encode(x).decode() for x in (sps, pps)
    )
    assert "OPTIONS" in srv.methods()[5:-1]  # the keepalive (the server does not list GET_PARAMETER)
    # The RTP depacketizes back into the access units that were sent, stamped 3600 ticks apart.
    depay = Depacketizer("h264", [sps, pps])
    units = [u for data in srv.rtp if (p := parse_rtp(data)) is not None for u in depay.push(p)]
    assert len(units) == 27 and all(u.keyframe for u in units)
    assert {u.timestamp - units[0].timestamp for u in units} == {n * 3600 for n in range(27)}
    assert b"".join(split_annexb(units[0].data)[-1:]) == nals[-1]  # the picture itself, whole
    # Sender reports (MediaMTX takes the timing from them): SR + SDES CNAME, the RTP's SSRC.
    sr = srv.rtcp[0]
    assert sr[1] == 200 and sr[4:8] == srv.rtp[0][8:12] and b"streamproxy-cam" in sr


def test_record_with_a_wrong_password_names_the_server_and_never_the_secret() -> None:
    with ScriptedRecorder(user="pub", password="right") as srv:
        client = RecordClient(srv.url("pub", "wrongpass"), 3.0)
        with pytest.raises(ClientUnauthorized) as err:
            client.record(_describe(b"\x67\x42\x00\x1e", b"\x68\xce"), "trackID=0")
        client.close()
    msg = str(err.value)
    assert msg.startswith("server rejects our credentials: ANNOUNCE answered 401") and "wrongpass" not in msg


def _big_frame(n: int) -> bytes:
    """An IDR slice NAL unit of noise: 200 kB, so that socket buffers fill in a few frames."""
    return b"\x00\x00\x00\x01\x65" + np.random.default_rng(n).integers(1, 255, 200_000, np.uint8).tobytes()


def test_a_server_that_stops_reading_times_the_write_out_and_abort_ends_a_blocked_write_at_once() -> None:
    with ScriptedRecorder(stop_reading=True) as srv:
        # 1. Nothing written for the write timeout: an error that says so (not a hang).
        client = RecordClient(srv.url(), 1.0)
        client.record(_describe(b"\x67\x42\x00\x1e", b"\x68\xce"), "trackID=0")
        assert srv.reading_stopped.wait(3)
        with pytest.raises(ClientError, match="stopped reading") as err:
            for n in range(500):  # 100 MB at most: far more than any socket buffer
                t0 = time.monotonic()
                client.send(_packet(_big_frame(n), n))
        assert 0.9 < time.monotonic() - t0 < 5, err.value
        client.close()
    with ScriptedRecorder(stop_reading=True) as srv:
        # 2. abort() from another thread (the publisher's watchdog) ends a write that would wait 30 s.
        client = RecordClient(srv.url(), 30.0)
        client.record(_describe(b"\x67\x42\x00\x1e", b"\x68\xce"), "trackID=0")
        began = [0.0]
        ended: list[BaseException] = []

        def push() -> None:
            try:
                for n in range(500):
                    began[0] = time.monotonic()
                    client.send(_packet(_big_frame(n), n))
            except BaseException as e:  # handed to the test
                ended.append(e)

        t = threading.Thread(target=push, daemon=True)
        t.start()
        assert _wait(lambda: began[0] and time.monotonic() - began[0] > 0.5, 10.0), "the write never blocked"
        t_abort = time.monotonic()
        client.abort()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t_abort < 1.0
        assert isinstance(ended[0], ClientStopped), ended
        client.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed for a test certificate")
def test_record_over_rtsps(tmp_path: Path) -> None:
    """rtsps://: TLS to the server (a self-signed certificate, as media servers mostly have)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    frame = one_keyframe()
    with ScriptedRecorder(tls=ctx) as srv:
        client = RecordClient(srv.url(scheme="rtsps"), 3.0)
        try:
            client.record(_describe(b"\x67\x42\x00\x1e", b"\x68\xce"), "trackID=0")
            client.send(_packet(frame, 0))
            assert _wait(lambda: len(srv.rtp) >= len(packetize_h264(frame)), 3.0)
        finally:
            client.close()
        assert _wait(lambda: srv.methods()[-1:] == ["TEARDOWN"], 3.0), srv.requests
    assert srv.requests[1] == ("ANNOUNCE", f"rtsps://127.0.0.1:{srv.port}/pub")
