"""The built-in camera client (streamproxy/rtsp/client.py) through CameraSource.

A scripted camera on loopback sends exactly one frame and then nothing: the client must decode that
frame at once, from its marker bit, without waiting for a next frame (the reason the client exists).
The same camera checks Digest with qop, keepalives and the stall timeout. Real cameras (GStreamer's
RTSP server: H.264 and H.265, TCP and UDP, Basic and Digest) are in test_source.py.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
import time
from fractions import Fraction

import av
import numpy as np

from streamproxy.config import IngestConfig
from streamproxy.h264 import split_annexb
from streamproxy.live.source import CameraSource
from streamproxy.rtsp.auth import parse_auth_params
from streamproxy.rtsp.protocol import parse_request_head
from streamproxy.rtsp.rtp import packetize_h264
from streamproxy.types import DecodedFrame


def one_keyframe(width: int = 320, height: int = 240) -> bytes:
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"  # type: ignore[attr-defined]
    enc.time_base = Fraction(1, 25)
    enc.options = {"tune": "zerolatency", "preset": "ultrafast"}
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 128, np.uint8), format="bgr24")
    frame.pts = 0
    data = b"".join(bytes(p) for p in enc.encode(frame))  # type: ignore[attr-defined]
    return data + b"".join(bytes(p) for p in enc.encode(None))  # type: ignore[attr-defined]


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


class ScriptedCamera:
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
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/cam"

    def __enter__(self) -> ScriptedCamera:
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
            with conn:
                conn.settimeout(0.2)
                try:
                    self._session(conn)
                except OSError:
                    pass

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
                if req.method != "OPTIONS" and not self._authorized(req.method, req.uri, req.header("authorization")):
                    status = "401 Unauthorized"
                    extra.append('WWW-Authenticate: Digest realm="cam", nonce="n0nce", qop="auth"')
                elif req.method == "OPTIONS":
                    extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
                elif req.method == "DESCRIBE":
                    sprop = ",".join(base64.b64encode(n).decode() for n in (self.sps, self.pps))
                    body = (
                        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
                        "a=rtpmap:96 H264/90000\r\n"
                        f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={sprop}\r\na=control:track1\r\n"
                    ).encode()
                    extra += [f"Content-Base: rtsp://127.0.0.1:{self.port}/cam/", "Content-Type: application/sdp"]
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
