"""One RTSP viewer session: its transport (TCP interleaved or UDP), RTP state and sender task.

The sender task is the only place a viewer's packets are written. It awaits the viewer's
Subscription, so a viewer that cannot keep up only fills its own bounded buffer (which drops to
the next keyframe and counts); it never slows the camera or the other viewers. The Subscription's
packets are on the viewer's own forward-only clock: RTP time is that clock plus a random base.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
import time

from streamproxy.hub import StreamHub, Subscription
from streamproxy.rtsp.rtp import PayloadCache, RtpStream, sdes_cname

log = logging.getLogger(__name__)

SR_INTERVAL_S = 2.0  # RTCP sender reports: often enough for lip-sync/latency tools, negligible cost


class TcpOutput:
    """RTP and RTCP `$`-interleaved on the RTSP connection."""

    # Above this much unsent data the sender waits for the socket (bounded by write_timeout_s).
    HIGH_WATER = 512 * 1024

    def __init__(
        self, writer: asyncio.StreamWriter, channels: tuple[int, int], write_timeout_s: float
    ) -> None:
        self.writer = writer
        self.rtp_channel, self.rtcp_channel = channels
        self.write_timeout_s = write_timeout_s

    def transport_header(self, ssrc: int) -> str:
        return f"RTP/AVP/TCP;unicast;interleaved={self.rtp_channel}-{self.rtcp_channel};ssrc={ssrc:08X};mode=play"

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("connection closed")
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > self.HIGH_WATER:
            # A stalled reader blocks only this sender; past the timeout the viewer is gone.
            try:
                await asyncio.wait_for(self.writer.drain(), self.write_timeout_s)
            except TimeoutError:
                raise ConnectionResetError("viewer stopped reading (write timeout)") from None

    def rtcp(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"$" + bytes([self.rtcp_channel]) + len(data).to_bytes(2, "big") + data)

    def close(self) -> None:
        pass  # the connection belongs to the RTSP connection handler


class UdpOutput:
    """RTP and RTCP as datagrams from the server's shared RTP/RTCP socket pair."""

    # asyncio buffers datagrams the kernel refused; past this the viewer's packets are dropped.
    MAX_BUFFERED = 1024 * 1024

    def __init__(
        self,
        rtp_transport: asyncio.DatagramTransport,
        rtcp_transport: asyncio.DatagramTransport,
        client_ip: str,
        client_ports: tuple[int, int],
        server_ports: tuple[int, int],
    ) -> None:
        self.rtp_transport = rtp_transport
        self.rtcp_transport = rtcp_transport
        self.rtp_addr = (client_ip, client_ports[0])
        self.rtcp_addr = (client_ip, client_ports[1])
        self.client_ports = client_ports
        self.server_ports = server_ports

    def transport_header(self, ssrc: int) -> str:
        c, s = self.client_ports, self.server_ports
        return (
            f"RTP/AVP;unicast;client_port={c[0]}-{c[1]};server_port={s[0]}-{s[1]};ssrc={ssrc:08X};mode=play"
        )

    def send(self, packets: list[bytes]) -> None:
        t = self.rtp_transport
        if t.is_closing():
            raise ConnectionResetError("UDP socket closed")
        # Not in the DatagramTransport stub, but every asyncio datagram transport has it.
        if t.get_write_buffer_size() > self.MAX_BUFFERED:  # type: ignore[attr-defined]
            return
        for p in packets:
            t.sendto(p, self.rtp_addr)

    def rtcp(self, data: bytes) -> None:
        if not self.rtcp_transport.is_closing():
            self.rtcp_transport.sendto(data, self.rtcp_addr)

    def close(self) -> None:
        pass  # the sockets are shared by all UDP sessions


class RtspSession:
    """State of one SETUP: transport, RTP stream, and (while playing) a subscription and sender task."""

    def __init__(
        self,
        hub: StreamHub,
        output: TcpOutput | UdpOutput,
        payloads: PayloadCache,
        timeout_s: float,
        owner: object,
    ) -> None:
        self.id = secrets.token_hex(8)
        self.hub = hub
        self.name = hub.name
        self.output = output
        self.payloads = payloads
        self.timeout_s = timeout_s
        self.owner = owner  # the connection that created it; its loss ends the session
        self.rtp = RtpStream(
            secrets.randbits(32), secrets.randbits(16), secrets.randbits(32), cname=f"streamproxy-{self.name}"
        )
        self.state = "ready"
        self.sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None
        self.last_activity = time.monotonic()
        self.created = time.monotonic()
        self.first_packet_at: float | None = None
        self.started = False  # PLAYed at least once: a SETUP never followed by PLAY can be reclaimed
        self.closed = False

    @property
    def tcp(self) -> bool:
        return isinstance(self.output, TcpOutput)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def expired(self, now: float) -> bool:
        # A TCP session lives as long as its connection; a UDP one needs keepalives.
        return not self.tcp and now - self.last_activity > self.timeout_s

    @property
    def client_ip(self) -> str:
        """The address this session's RTP goes to (UDP) or came from (TCP: its connection's peer)."""
        if isinstance(self.output, UdpOutput):
            return self.output.rtp_addr[0]
        peer = self.output.writer.get_extra_info("peername")
        return str(peer[0]) if peer else ""

    def bye(self) -> bytes:
        """RTCP BYE for this stream, in a compound packet (RFC 3550 §6.1: SR or an empty RR first, SDES)."""
        ssrc = self.rtp.ssrc
        head = self.rtp.sender_report()
        if head is None:  # nothing sent yet: an RR without report blocks carries the SDES
            head = struct.pack("!BBHI", 0x80, 201, 1, ssrc) + sdes_cname(ssrc, self.rtp.cname)
        return head + struct.pack("!BBHI", 0x81, 203, 1, ssrc)

    def rtp_info(self, url: str) -> str:
        return f"url={url};seq={self.rtp.seq};rtptime={self.rtp.next_rtptime()}"

    def play(self) -> None:
        if self.state == "playing":
            return
        self.state = "playing"
        self.started = True
        # A resumed session continues its timeline where RTP-Info's rtptime said (the time since
        # its last packet included); the first PLAY starts at 0 (RTP time: ts_base).
        resume_at = self.rtp.now_pts90k()
        # The subscription asks the encoder for a keyframe through hub.request_keyframe (which
        # coalesces joins): a fast first picture, and the only way a PLAY forces one.
        self.sub = self.hub.subscribe("rtsp", clock_base=0 if resume_at is None else resume_at)
        self.task = asyncio.create_task(self._send_loop(self.sub), name=f"rtsp-send-{self.name}-{self.id}")

    async def pause(self) -> None:
        self.state = "ready"
        await self._stop_sending()

    async def _stop_sending(self) -> None:
        sub, task = self.sub, self.task
        self.sub, self.task = None, None
        if sub is not None:
            sub.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def close(self, reason: str = "", bye: bool = False) -> None:
        """End the session; `bye`: tell the viewer with an RTCP BYE, after its last RTP packet."""
        if self.closed:
            return
        self.closed = True
        self.state = "closed"
        await self._stop_sending()
        if bye:
            with contextlib.suppress(OSError, RuntimeError):  # a connection already gone has no one to tell
                self.output.rtcp(self.bye())
        self.output.close()
        log.info(
            "%s: RTSP session %s closed (%s): %d RTP packets",
            self.name,
            self.id,
            reason or "teardown",
            self.rtp.packets,
        )

    async def _send_loop(self, sub: Subscription) -> None:
        out = self.output
        next_sr = 0.0
        try:
            while True:
                pkt = await sub.get()
                payloads = self.payloads.get(pkt)
                if isinstance(out, TcpOutput):
                    await out.write(self.rtp.frame_tcp(pkt, payloads, out.rtp_channel))
                else:
                    out.send(self.rtp.packets_udp(pkt, payloads))
                now = time.monotonic()
                if self.first_packet_at is None:
                    self.first_packet_at = now
                    log.debug(
                        "%s: session %s first frame after %.0f ms",
                        self.name,
                        self.id,
                        (now - self.created) * 1000,
                    )
                if now >= next_sr:
                    report = self.rtp.sender_report()
                    if report is not None:
                        out.rtcp(report)
                    next_sr = now + SR_INTERVAL_S
        except EOFError:
            log.debug("%s: session %s: stream closed", self.name, self.id)
        except (ConnectionError, OSError) as err:
            log.info("%s: session %s: viewer gone: %s", self.name, self.id, err)
            if isinstance(out, TcpOutput):
                # Nothing more can be sent on this connection; its handler notices and ends the sessions.
                out.writer.transport.abort()
