"""WS-Discovery (April 2005, as ONVIF uses it): a VMS's "search for devices" finds the proxy.

The proxy is one multi-channel ONVIF NetworkVideoTransmitter on the HTTP port (serve/onvif/service.py), and
each camera with `cameras[].onvif_port` is one more, single-channel, on its own port. Each is a
WS-Discovery target service of its own: its own EndpointReference (from its serial), scopes (a
camera's name scope is the camera) and XAddr. `DiscoveryResponder` is an asyncio datagram protocol
on UDP `onvif.discovery.port` (3702) that joins 239.255.255.250 on `onvif.discovery.interface` and:
* answers a Probe whose Types are empty or only `dn:NetworkVideoTransmitter` / `tds:Device` (any
  prefix: QNames are resolved by the namespaces declared in the probe, so DPWS's `wsdp:Device` of a
  Windows host does not match) and whose Scopes all match a device's, with one ProbeMatches sent
  unicast to the sender's address and port, RelatesTo the probe's MessageID, holding one ProbeMatch
  per matching device (WS-Discovery allows several; devices with several endpoints do so). With
  many cameras the matches are split over several ProbeMatches of at most MAX_REPLY_BYTES each (a
  UDP datagram has a size limit, and the more IP fragments the likelier one is lost). Scopes match
  by the RFC 2396/3986 prefix rule of WS-Discovery (scheme and authority case-insensitive, the
  probe's path a segment-wise prefix of the device's, percent-escapes decoded, a trailing "/"
  ignored) or `strcmp0` (exact); another MatchBy matches nothing;
* multicasts a Hello on start and a Bye on stop for each device (`onvif.discovery.hello`), with
  `onvif.discovery.multicast_ttl` on that interface.

A device's XAddr is `http://HOST:<its port>/onvif/device_service`. HOST: every entry of
`onvif.discovery.xaddrs_hosts`; when empty, the address this host would send to the prober from
(the source address the kernel picks for a route to it: a throwaway UDP socket connected to the
prober, whose connect sends nothing), which is the prober's side of this host. asyncio's datagram
transport hands no ancillary data, so IP_PKTINFO (the address the probe arrived on) is not read.

Hostile input: a datagram over MAX_DATAGRAM_BYTES or that does not parse is dropped unparsed or by
onvif_soap's parser (no DTD, no entities); other WS-Discovery traffic (Hello, ProbeMatches of other
devices) is ignored silently. Answers are rate-limited per source address and in total, so the
responder amplifies no flood of spoofed probes (one probe is one answer, however many devices
match); a probe repeated with the same MessageID (SOAP over UDP retransmits) is answered once.
Every refusal is counted and logged at most once a second (serve/limits.py, listener "wsd").
Only IPv4 (the 239.255.255.250 group), as ONVIF devices do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit
from xml.parsers import expat
from xml.sax.saxutils import escape

from streamproxy.config import AppConfig
from streamproxy.serve.limits import LimitEvents
from streamproxy.serve.onvif.service import DEVICE_PATH, camera_device, endpoint_reference, scopes
from streamproxy.serve.onvif.soap import SOAP12, TDS, SoapFault, safe_parse

log = logging.getLogger(__name__)

WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
DN = "http://www.onvif.org/ver10/network/wsdl"
MULTICAST_GROUP = "239.255.255.250"
ACTION_PROBE = f"{WSD}/Probe"
ACTION_PROBE_MATCHES = f"{WSD}/ProbeMatches"
ACTION_HELLO = f"{WSD}/Hello"
ACTION_BYE = f"{WSD}/Bye"
TO_DISCOVERY = "urn:schemas-xmlsoap-org:ws:2005:04:discovery"  # To of multicast messages
TO_ANONYMOUS = f"{WSA}/role/anonymous"  # To of a reply to the sender
# Scope matching rules: the prefix rule (2005/04 names it after RFC 2396, WS-Discovery 1.1 after 3986).
PREFIX_RULES = frozenset(
    {
        f"{WSD}/rfc2396",
        f"{WSD}/rfc3986",
        "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01/rfc3986",
    }
)
EXACT_RULES = frozenset({f"{WSD}/strcmp0", "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01/strcmp0"})
# The types we are: ONVIF's NetworkVideoTransmitter (some clients write it in the device namespace) and Device.
OUR_TYPES = frozenset({(DN, "NetworkVideoTransmitter"), (TDS, "NetworkVideoTransmitter"), (TDS, "Device")})
OUR_LOCAL_TYPES = frozenset({local for _, local in OUR_TYPES})

MAX_DATAGRAM_BYTES = 8 * 1024  # a Probe is under 1 KiB; ONVIF clients' largest with scopes well under this
MAX_REPLY_BYTES = 8 * 1024  # one ProbeMatches; a ProbeMatch is about 1 KiB
APP_MAX_DELAY_S = 0.5  # WS-Discovery: a reply waits a random 0..500 ms so that devices do not answer at once
RATE_PER_SOURCE = 2.0  # answers per second to one address (a VMS probes a few times per search)
BURST_PER_SOURCE = 5
RATE_TOTAL = 20.0  # answers per second to everyone: a spoofed flood from many sources is bounded too
BURST_TOTAL = 40
MAX_SOURCES = 1024  # per-source buckets remembered (the oldest go first)
MAX_MESSAGE_IDS = 512  # recent probe MessageIDs (retransmissions are answered once)
METADATA_VERSION = 1  # the device's metadata never changes while it runs


@dataclass(frozen=True, slots=True)
class Target:
    """One device as a WS-Discovery target service."""

    camera: str | None  # None: the multi-channel device on the HTTP port
    epr: str
    scopes: tuple[str, ...]
    port: int  # of its device service


class _Bucket:
    """A token bucket: `rate` tokens a second up to `burst`."""

    __slots__ = ("at", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = float(burst)
        self.at = now

    def take(self, rate: float, burst: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class DiscoveryResponder(asyncio.DatagramProtocol):
    """The WS-Discovery target services of the ONVIF devices: `await start()`, `await stop()`.

    `camera_ports`: camera -> bound port of the cameras that are devices of their own
    (serve/onvif/device.py's `CameraDevices.ports`, read once here: that dict empties when the devices
    stop, and the Bye still names every device). `bind_host` and `announce_to` exist for tests
    (loopback only): production binds the wildcard address (multicast probes arrive addressed to
    the group, directed ones to this host) and announces to the group on the configured port.
    """

    def __init__(
        self,
        cfg: AppConfig,
        http_port: int,
        *,
        camera_ports: Mapping[str, int] | None = None,
        bind_host: str = "0.0.0.0",
        announce_to: tuple[str, int] | None = None,
        reply_delay_s: float = APP_MAX_DELAY_S,
        rate_per_source: float = RATE_PER_SOURCE,
        burst_per_source: int = BURST_PER_SOURCE,
        rate_total: float = RATE_TOTAL,
        burst_total: int = BURST_TOTAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.dcfg = cfg.onvif.discovery
        self.http_port = http_port
        self.bind_host = bind_host
        self.announce_to = announce_to or (MULTICAST_GROUP, self.dcfg.port)
        self.reply_delay_s = reply_delay_s
        self.rate_per_source, self.burst_per_source = rate_per_source, burst_per_source
        self.rate_total, self.burst_total = rate_total, burst_total
        self._clock = clock
        self.epr = endpoint_reference(cfg.onvif.device.serial)  # the multi-channel device's
        self.scopes = scopes(cfg.onvif)
        self.targets: list[Target] = [Target(None, self.epr, tuple(self.scopes), http_port)]
        for camera, port in (camera_ports or {}).items():
            device = camera_device(camera)  # the serial and name scope its device service answers
            epr = endpoint_reference(cfg.onvif.device.serial + device.serial_suffix)
            self.targets.append(Target(camera, epr, tuple(scopes(cfg.onvif, device.name)), port))
        self.events = LimitEvents("wsd", log)
        self.port = 0  # the bound UDP port
        self._transport: asyncio.DatagramTransport | None = None
        self._closed: asyncio.Future[None] | None = None
        self._instance_id = int(time.time())  # AppSequence: grows with every start of the process
        self._message_number = 0
        self._total = _Bucket(burst_total, clock())
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._seen_ids: OrderedDict[str, None] = OrderedDict()
        self._pending: set[asyncio.TimerHandle] = set()

    # --- lifecycle ---
    async def start(self) -> None:
        """Bind, join the group, Hello. A port that cannot be bound turns discovery off with an error
        line, not the service: a VMS can still add the device by its address."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            # Shared with other WS-Discovery listeners of this host (wsdd of Samba binds 3702 too):
            # each gets every multicast probe.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.bind_host, self.dcfg.port))
            except OSError as err:
                log.error(
                    "onvif: WS-Discovery off: cannot bind udp %s:%d: %s",
                    self.bind_host,
                    self.dcfg.port,
                    err.strerror or err,
                )
                sock.close()
                return
            iface = socket.inet_aton(self.dcfg.interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.dcfg.multicast_ttl)
            if self.dcfg.interface != "0.0.0.0":
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
            try:
                mreq = struct.pack("4s4s", socket.inet_aton(MULTICAST_GROUP), iface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            except OSError as err:
                # Directed (unicast) probes are still answered; a VMS can also add the device by address.
                log.warning(
                    "onvif: WS-Discovery cannot join %s on %s (%s): only directed probes are answered",
                    MULTICAST_GROUP,
                    self.dcfg.interface,
                    err,
                )
            sock.setblocking(False)
            self._closed = loop.create_future()
            await loop.create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        log.info(
            "onvif: WS-Discovery on udp/%d (group %s on %s), device %s",
            self.port,
            MULTICAST_GROUP,
            self.dcfg.interface,
            self.epr,
        )
        for t in self.targets[1:]:
            log.info("%s: WS-Discovery device %s (port %d)", t.camera, t.epr, t.port)
        if self.dcfg.hello:
            hosts = self._announce_hosts()
            for t in self.targets:
                self._send(self._hello(t, hosts), self.announce_to)

    async def stop(self) -> None:
        """Bye (when hello is on), then close; replies not yet sent are dropped."""
        transport = self._transport
        if transport is None:
            return
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self.dcfg.hello:
            for t in self.targets:
                self._send(self._bye(t), self.announce_to)
        transport.close()
        if self._closed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), 2.0)
            except TimeoutError:
                pass
        self._transport = None
        self.events.flush()

    # --- asyncio.DatagramProtocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # asyncio's is not a subclass of it
        self.port = int(transport.get_extra_info("sockname")[1])

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def error_received(self, exc: Exception) -> None:
        # An ICMP unreachable of an earlier reply (the prober left): nothing to do.
        log.debug("onvif: WS-Discovery socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._datagram(data, (str(addr[0]), int(addr[1])))
        except Exception as err:  # a bug must not stop the responder: count it, keep answering
            log.debug("onvif: WS-Discovery datagram from %s failed", addr[0], exc_info=True)
            self.events.hit("error", f"{type(err).__name__} handling a datagram from {addr[0]}")

    # --- probes ---
    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > MAX_DATAGRAM_BYTES:
            self.events.hit("datagram_size", f"{len(data)} bytes from {addr[0]} dropped unparsed")
            return
        if addr[1] == 0:
            return  # no port to answer to
        try:
            root = safe_parse(data)
        except SoapFault as fault:
            self.events.hit("malformed", f"{fault.reason} from {addr[0]}")
            return
        if root.tag != f"{{{SOAP12}}}Envelope":
            self.events.hit("malformed", f"not a SOAP 1.2 envelope from {addr[0]}")
            return
        header = root.find(f"{{{SOAP12}}}Header")
        body = root.find(f"{{{SOAP12}}}Body")
        probe = body.find(f"{{{WSD}}}Probe") if body is not None else None
        action = (header.findtext(f"{{{WSA}}}Action") or "").strip() if header is not None else ""
        if probe is None or action != ACTION_PROBE:
            return  # Hello, Bye, ProbeMatches of other devices share the group: not ours to answer
        message_id = (header.findtext(f"{{{WSA}}}MessageID") or "").strip() if header is not None else ""
        if not message_id or len(message_id) > 256:
            self.events.hit("malformed", f"Probe without a usable MessageID from {addr[0]}")
            return
        if message_id in self._seen_ids:
            return  # a retransmission (SOAP over UDP repeats each message): answered already
        self._seen_ids[message_id] = None
        while len(self._seen_ids) > MAX_MESSAGE_IDS:
            self._seen_ids.popitem(last=False)
        types_el = probe.find(f"{{{WSD}}}Types")
        scopes_el = probe.find(f"{{{WSD}}}Scopes")
        if types_el is not None and (types_el.text or "").strip():
            if not types_match((types_el.text or "").split(), types_namespaces(data)):
                log.debug("onvif: WS-Discovery probe for %r from %s: not our type", types_el.text, addr[0])
                return
        matches = self.targets
        if scopes_el is not None and (scopes_el.text or "").strip():
            rule = (scopes_el.get("MatchBy") or f"{WSD}/rfc2396").strip()
            wanted = (scopes_el.text or "").split()
            matches = [t for t in self.targets if scopes_match(wanted, list(t.scopes), rule)]
            if not matches:
                log.debug(
                    "onvif: WS-Discovery probe for scopes %r from %s: no match", scopes_el.text, addr[0]
                )
                return
        if not self._allowed(addr[0]):  # one probe is one unit of the budget, however many devices match
            return
        hosts = list(self.dcfg.xaddrs_hosts) or self._local_hosts_for(addr[0])
        if not hosts:
            self.events.hit("no_route", f"no local address towards {addr[0]}: probe not answered")
            return
        self._reply(self._probe_matches(message_id, matches, hosts), addr)

    def _allowed(self, source: str) -> bool:
        now = self._clock()
        bucket = self._sources.get(source)
        if bucket is None:
            bucket = self._sources[source] = _Bucket(self.burst_per_source, now)
            while len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        if not bucket.take(self.rate_per_source, self.burst_per_source, now):
            self.events.hit(
                "rate_per_source", f"probes from {source} over {self.rate_per_source:g}/s not answered"
            )
            return False
        if not self._total.take(self.rate_total, self.burst_total, now):
            self.events.hit("rate", f"probes over {self.rate_total:g}/s in total not answered ({source})")
            return False
        return True

    def _local_hosts_for(self, peer: str) -> list[str]:
        if self.bind_host not in ("", "0.0.0.0"):
            return [self.bind_host]
        local = route_source(peer)
        return [local] if local else []

    def _reply(self, payloads: list[bytes], addr: tuple[str, int]) -> None:
        delay = random.uniform(0.0, self.reply_delay_s) if self.reply_delay_s > 0 else 0.0
        if delay <= 0:
            for payload in payloads:
                self._send(payload, addr)
            return
        loop = asyncio.get_running_loop()

        def send() -> None:
            self._pending.discard(handle)
            for payload in payloads:
                self._send(payload, addr)

        handle = loop.call_later(delay, send)
        self._pending.add(handle)

    def _send(self, payload: bytes, addr: tuple[str, int]) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.sendto(payload, addr)
        except OSError as err:
            self.events.hit("send", f"to {addr[0]}:{addr[1]}: {err}")

    # --- messages ---
    @staticmethod
    def _xaddrs(port: int, hosts: list[str]) -> str:
        return " ".join(f"http://{_bracket(h)}:{port}{DEVICE_PATH}" for h in hosts)

    def _announce_hosts(self) -> list[str]:
        if self.dcfg.xaddrs_hosts:
            return list(self.dcfg.xaddrs_hosts)
        for host in (self.bind_host, self.dcfg.interface):
            if host not in ("", "0.0.0.0"):
                return [host]
        local = route_source(MULTICAST_GROUP)
        return [local] if local else []

    def _header(self, action: str, to: str, relates_to: str | None = None, number: int | None = None) -> str:
        """`number`: the MessageNumber to write without counting a message (for measuring one)."""
        if number is None:
            self._message_number += 1
            number = self._message_number
        relates = f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>" if relates_to is not None else ""
        return (
            f"<s:Header><a:MessageID>{uuid.uuid4().urn}</a:MessageID>{relates}<a:To>{to}</a:To>"
            f"<a:Action>{action}</a:Action>"
            f'<d:AppSequence InstanceId="{self._instance_id}" MessageNumber="{number}"/></s:Header>'
        )

    def _device(self, t: Target, hosts: list[str]) -> str:
        xaddrs = f"<d:XAddrs>{escape(self._xaddrs(t.port, hosts))}</d:XAddrs>" if hosts else ""
        return (
            f"<a:EndpointReference><a:Address>{t.epr}</a:Address></a:EndpointReference>"
            "<d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types>"
            f"<d:Scopes>{escape(' '.join(t.scopes))}</d:Scopes>{xaddrs}"
            f"<d:MetadataVersion>{METADATA_VERSION}</d:MetadataVersion>"
        )

    def _probe_matches(self, relates_to: str, targets: list[Target], hosts: list[str]) -> list[bytes]:
        """ProbeMatches messages of at most MAX_REPLY_BYTES (one match each at least), each
        RelatesTo the probe, together one ProbeMatch per target."""
        # The envelope without matches (a MessageNumber of 20 digits: no uint64 is longer), then the matches.
        overhead = len(self._probe_matches_message(relates_to, [], number=10**19))
        chunks: list[list[str]] = [[]]
        size = overhead
        for t in targets:
            match = f"<d:ProbeMatch>{self._device(t, hosts)}</d:ProbeMatch>"
            n = len(match.encode())
            if chunks[-1] and size + n > MAX_REPLY_BYTES:
                chunks.append([])
                size = overhead
            chunks[-1].append(match)
            size += n
        return [self._probe_matches_message(relates_to, c) for c in chunks]

    def _probe_matches_message(self, relates_to: str, matches: list[str], number: int | None = None) -> bytes:
        return _envelope(
            self._header(ACTION_PROBE_MATCHES, TO_ANONYMOUS, relates_to, number),
            f"<d:ProbeMatches>{''.join(matches)}</d:ProbeMatches>",
        )

    def _hello(self, t: Target, hosts: list[str]) -> bytes:
        return _envelope(
            self._header(ACTION_HELLO, TO_DISCOVERY), f"<d:Hello>{self._device(t, hosts)}</d:Hello>"
        )

    def _bye(self, t: Target) -> bytes:
        return _envelope(
            self._header(ACTION_BYE, TO_DISCOVERY),
            f"<d:Bye><a:EndpointReference><a:Address>{t.epr}</a:Address></a:EndpointReference></d:Bye>",
        )


def _envelope(header: str, body: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{SOAP12}" xmlns:a="{WSA}" xmlns:d="{WSD}" xmlns:dn="{DN}" xmlns:tds="{TDS}">'
        f"{header}<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def route_source(peer: str) -> str | None:
    """The local IPv4 address the kernel would send to `peer` from (connecting a UDP socket sends nothing)."""
    try:
        if ipaddress.ip_address(peer).version != 4:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer, 9))
            local = str(s.getsockname()[0])
    except (OSError, ValueError):
        return None
    return None if local == "0.0.0.0" else local


def types_namespaces(data: bytes) -> dict[str, str]:
    """Prefix -> namespace in scope at the Probe's Types element ("" the default namespace).

    Called only on data `safe_parse` accepted (no DTD, well formed): expat without namespace
    processing, so the xmlns attributes that QName values like `dn:NetworkVideoTransmitter` refer to
    are seen.
    """
    stack: list[dict[str, str]] = [{"xml": "http://www.w3.org/XML/1998/namespace"}]
    found: dict[str, str] = {}
    p = expat.ParserCreate()

    def start(name: str, attrs: dict[str, str]) -> None:
        scope = stack[-1]
        decls = {
            k[6:] if k.startswith("xmlns:") else "": v
            for k, v in attrs.items()
            if k.partition(":")[0] == "xmlns"
        }
        if decls:
            scope = {**scope, **decls}
        stack.append(scope)
        prefix, _, local = name.rpartition(":")
        if not found and local == "Types" and scope.get(prefix) == WSD:
            found.update(scope)

    p.StartElementHandler = start
    p.EndElementHandler = lambda name: stack.pop()
    try:
        p.Parse(data, True)
    except expat.ExpatError:
        return {}
    return found


def types_match(qnames: list[str], namespaces: dict[str, str]) -> bool:
    """Every type the probe asks for is one of ours. A prefix the probe did not declare (seen in the
    wild) is matched by the local name alone."""
    for qname in qnames:
        prefix, _, local = qname.rpartition(":")
        ns = namespaces.get(prefix)
        if ns is None:
            if local not in OUR_LOCAL_TYPES:
                return False
        elif (ns, local) not in OUR_TYPES:
            return False
    return True


def scopes_match(wanted: list[str], ours: list[str], rule: str) -> bool:
    """Every scope of the probe matches one of ours by the MatchBy rule (unknown rule: no match)."""
    if rule in EXACT_RULES:
        return all(w in ours for w in wanted)
    if rule not in PREFIX_RULES:
        return False
    return all(any(_prefix_match(w, o) for o in ours) for w in wanted)


def _prefix_match(probe: str, ours: str) -> bool:
    """WS-Discovery's RFC 2396 rule: same scheme and authority (case-insensitive), the probe's path
    segments (unescaped, case-sensitive) a prefix of ours; no "." or ".." segments; query and
    fragment ignored. A trailing "/" adds no segment."""
    try:
        a, b = urlsplit(probe), urlsplit(ours)
    except ValueError:
        return False
    if a.scheme.lower() != b.scheme.lower() or a.netloc.lower() != b.netloc.lower():
        return False
    sa, sb = _segments(a.path), _segments(b.path)
    if sa is None or sb is None:
        return False
    return sb[: len(sa)] == sa


def _segments(path: str) -> list[str] | None:
    segs = [unquote(s) for s in path.split("/")]
    if segs and segs[0] == "":
        segs = segs[1:]
    if segs and segs[-1] == "":
        segs = segs[:-1]
    if "." in segs or ".." in segs:
        return None
    return segs
