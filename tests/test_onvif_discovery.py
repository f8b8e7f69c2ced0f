"""WS-Discovery of the ONVIF device (serve/onvif/discovery.py), on loopback only.

No datagram leaves the machine: the responder binds 127.0.0.1 on a free port, joins the group on the
loopback interface with multicast TTL 0, and its Hello/Bye go to a 127.0.0.1 test socket (the
responder's `announce_to`); probes are unicast to 127.0.0.1. Probes are built and answers parsed by
a real WS-Discovery client's message layer (the `wsdiscovery` package, LGPL, a test dependency
only), whose own networking is not started: it would bind 0.0.0.0:3702 and join the group on every
interface. Every answer validates against the WS-Discovery schema bundled with onvif-zeep-async, and
the XAddr it carries answers a real ONVIF client (GetDeviceInformation, GetScopes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from metrickit import limit_counts, limit_hits
from webkit import make_cfg, serving

from streamproxy.config import AppConfig, ConfigError, OnvifConfig, parse_config
from streamproxy.serve.onvif.discovery import (
    DN,
    MAX_DATAGRAM_BYTES,
    MAX_REPLY_BYTES,
    WSA,
    WSD,
    DiscoveryResponder,
    endpoint_reference,
    route_source,
)
from streamproxy.serve.onvif.service import scopes

onvif = pytest.importorskip("onvif")
etree = pytest.importorskip("lxml.etree")
pytest.importorskip("wsdiscovery")
from wsdiscovery import QName, Scope  # noqa: E402
from wsdiscovery.actions import constructProbe  # noqa: E402
from wsdiscovery.message import createSOAPMessage, parseSOAPMessage  # noqa: E402
from wsdiscovery.service import Service  # noqa: E402
from wsdiscovery.util import matchesFilter  # noqa: E402

WSDL_DIR = os.path.join(os.path.dirname(onvif.__file__), "wsdl")
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
TDS = "http://www.onvif.org/ver10/device/wsdl"
DPWS = "http://schemas.xmlsoap.org/ws/2006/02/devprof"
USERS = [{"username": "vms", "password": "s3cret-pass"}]
WAIT_S = 10.0  # for an answer on loopback: generous for a busy 2-core machine


def discovery_cfg(users: list[dict[str, str]] | None = None, **keys: Any) -> AppConfig:
    cfg = make_cfg(users=users)
    discovery = {"port": 0, "interface": "127.0.0.1", "multicast_ttl": 0, "hello": False, **keys}
    onvif_cfg = OnvifConfig.model_validate({"enabled": True, "discovery": discovery})
    return cfg.model_copy(update={"onvif": onvif_cfg})


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queue.put_nowait(data)


class Prober:
    """A loopback UDP socket that sends probes and reads what comes back."""

    def __init__(self, transport: asyncio.DatagramTransport, inbox: Inbox) -> None:
        self.transport = transport
        self.inbox = inbox
        self.addr: tuple[str, int] = transport.get_extra_info("sockname")[:2]

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        if not data:  # asyncio's sendto drops an empty datagram: send it from a plain socket
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(data, to)
            return
        self.transport.sendto(data, to)

    def probe(
        self, to: tuple[str, int], types: list[Any] | None = None, scopes: list[Any] | None = None
    ) -> str:
        env = constructProbe(types or [], scopes or [])
        self.send(createSOAPMessage(env).encode(), to)
        return str(env.getMessageId())

    async def next(self) -> bytes:
        return await asyncio.wait_for(self.inbox.queue.get(), WAIT_S)


@asynccontextmanager
async def prober(host: str = "127.0.0.1") -> AsyncIterator[Prober]:
    loop = asyncio.get_running_loop()
    transport, inbox = await loop.create_datagram_endpoint(Inbox, local_addr=(host, 0))
    try:
        yield Prober(transport, inbox)
    finally:
        transport.close()


@asynccontextmanager
async def responder(
    cfg: AppConfig, http_port: int, **kw: Any
) -> AsyncIterator[tuple[DiscoveryResponder, Prober]]:
    """The responder on 127.0.0.1 and a sink for its Hello/Bye (also on loopback); rate limits out of
    the way unless a test sets them."""
    unlimited = {"rate_per_source": 1e6, "burst_per_source": 1000, "rate_total": 1e6, "burst_total": 1000}
    async with prober() as sink:
        r = DiscoveryResponder(
            cfg,
            http_port,
            bind_host="127.0.0.1",
            announce_to=sink.addr,
            **{"reply_delay_s": 0.0, **unlimited, **kw},
        )
        await r.start()
        try:
            yield r, sink
        finally:
            await r.stop()


_SCHEMA: list[Any] = []


def validate(data: bytes, action: str) -> Any:
    """The message's root, after checking the Body's message and every header against the
    WS-Discovery schema (its WS-Addressing import pointed at the bundled copy: no network)."""
    if not _SCHEMA:
        doc = etree.parse(os.path.join(WSDL_DIR, "ws-discovery.xsd"))
        for imp in doc.getroot().iter("{http://www.w3.org/2001/XMLSchema}import"):
            if imp.get("namespace") == WSA:
                imp.set("schemaLocation", os.path.join(WSDL_DIR, "addressing"))
        _SCHEMA.append(etree.XMLSchema(doc))
    schema = _SCHEMA[0]
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    assert root.tag == f"{{{SOAP12}}}Envelope"
    header, body = root.find(f"{{{SOAP12}}}Header"), root.find(f"{{{SOAP12}}}Body")
    assert header is not None and body is not None
    assert header.findtext(f"{{{WSA}}}Action") == action
    for el in [*header, body[0]]:
        if not schema.validate(el):
            raise AssertionError(f"{etree.QName(el).localname} invalid: {schema.error_log}")
    return root


async def test_probe_finds_the_device_and_its_xaddr_answers_onvif() -> None:
    async with serving(discovery_cfg(USERS), feed=False) as (app, server, _base):
        async with responder(app.cfg, server.port) as (r, _sink), prober() as p:
            message_id = p.probe(("127.0.0.1", r.port))  # no Types, no Scopes: every device answers
            data = await p.next()
            root = validate(data, f"{WSD}/ProbeMatches")
            assert root.findtext(f".//{{{WSD}}}Types") == "dn:NetworkVideoTransmitter tds:Device"
            assert root.find(f".//{{{WSD}}}AppSequence").get("MessageNumber") == "1"
            env = parseSOAPMessage(data.decode(), "127.0.0.1")
            assert env.getRelatesTo() == message_id
            (match,) = env.getProbeResolveMatches()
            xaddr = f"http://127.0.0.1:{server.port}/onvif/device_service"
            assert match.getXAddrs() == [xaddr]
            assert match.getEPR() == endpoint_reference("streamproxy-0001")
            assert [(t.getNamespace(), t.getLocalname()) for t in match.getTypes()] == [
                (DN, "NetworkVideoTransmitter"),
                (TDS, "Device"),
            ]
            assert [s.getValue() for s in match.getScopes()] == scopes(app.cfg.onvif)
            # The client's own filter accepts the answer for what an ONVIF VMS asks.
            service = Service(match.getTypes(), match.getScopes(), match.getXAddrs(), match.getEPR(), 0)
            assert matchesFilter(
                service,
                [QName(DN, "NetworkVideoTransmitter")],
                [Scope("onvif://www.onvif.org/name/streamproxy")],
            )
            # Answered once: the next answer is the next probe's (a second one to the first would come first).
            good = p.probe(("127.0.0.1", r.port))
            assert parseSOAPMessage((await p.next()).decode(), "127.0.0.1").getRelatesTo() == good

        # The XAddr is the device service: a real ONVIF client reads the device through it.
        url = urlsplit(match.getXAddrs()[0])
        cam = onvif.ONVIFCamera(url.hostname, url.port, "vms", "s3cret-pass", WSDL_DIR, no_cache=True)
        try:
            devicemgmt = await cam.create_devicemgmt_service()
            info = await devicemgmt.GetDeviceInformation()
            assert (info.Manufacturer, info.SerialNumber) == ("streamproxy", "streamproxy-0001")
            got = [s.ScopeItem for s in await devicemgmt.GetScopes()]
            assert got == [s.getValue() for s in match.getScopes()]  # one list for GetScopes and discovery
            assert (await devicemgmt.GetDiscoveryMode()) == "Discoverable"
        finally:
            await cam.close()


MATCHING: list[tuple[list[Any], list[Any]]] = [
    ([QName(DN, "NetworkVideoTransmitter")], []),  # the client declares a random prefix for it
    ([QName(TDS, "Device"), QName(DN, "NetworkVideoTransmitter", "dn")], []),
    ([QName(TDS, "NetworkVideoTransmitter")], []),  # in the device namespace, as some clients write it
    ([], [Scope("onvif://www.onvif.org/name/streamproxy")]),
    ([], [Scope("onvif://www.onvif.org/Profile/Streaming"), Scope("ONVIF://WWW.ONVIF.ORG/type/")]),
    ([], [Scope("onvif://www.onvif.org/location")]),  # a segment-wise prefix
    ([], [Scope("onvif://www.onvif.org/name/stream%70roxy")]),  # escapes decoded before comparing
    ([], [Scope("onvif://www.onvif.org/hardware/streamproxy", f"{WSD}/strcmp0")]),
    (
        [QName(DN, "NetworkVideoTransmitter")],
        [Scope("onvif://www.onvif.org/type/video_encoder", f"{WSD}/rfc2396")],
    ),
]
NOT_MATCHING: list[tuple[list[Any], list[Any]]] = [
    ([QName(DPWS, "Device")], []),  # what a Windows host probes for: same local name, other namespace
    ([QName(DN, "NetworkVideoTransmitter"), QName(DN, "NetworkVideoDisplay")], []),
    ([QName("http://www.onvif.org/ver10/device/wsdl", "Printer")], []),
    ([], [Scope("onvif://www.onvif.org/name/other")]),
    ([], [Scope("onvif://www.onvif.org/name/stream")]),  # a string prefix is not a segment prefix
    ([], [Scope("onvif://www.onvif.org/Name/streamproxy")]),  # path segments are case-sensitive
    ([], [Scope("onvif://other.example/name/streamproxy")]),
    ([], [Scope("onvif://www.onvif.org/name/streamproxy"), Scope("onvif://www.onvif.org/location/mars")]),
    ([], [Scope("onvif://www.onvif.org/name/../name/streamproxy")]),
    ([], [Scope("onvif://www.onvif.org/hardware", f"{WSD}/strcmp0")]),  # exact rule: no prefix
    ([], [Scope("onvif://www.onvif.org/name", f"{WSD}/ldap")]),  # a rule we do not implement
]


async def test_probes_match_by_types_and_scopes_and_others_get_no_answer() -> None:
    before = limit_counts("wsd")
    async with responder(discovery_cfg(), 8080) as (r, _sink), prober() as p:
        to = ("127.0.0.1", r.port)
        for types, scps in MATCHING:
            mid = p.probe(to, types, scps)
            env = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
            assert env.getRelatesTo() == mid, (types, scps)
        for types, scps in NOT_MATCHING:
            p.probe(to, types, scps)
            # Datagrams on loopback are handled in order: an answer to the probe above would come first.
            good = p.probe(to)
            env = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
            assert env.getRelatesTo() == good, (types, scps)
        assert not limit_hits("wsd", before)  # a non-matching probe is no error


def _probe_xml(header: str, body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{SOAP12}" xmlns:a="{WSA}" xmlns:d="{WSD}"><s:Header>{header}</s:Header>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


PROBE_HEADER = f"<a:Action>{WSD}/Probe</a:Action><a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>"
BAD_DATAGRAMS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("garbage", b"\x00\xff garbage \xfe"),
    ("truncated", _probe_xml(PROBE_HEADER, "<d:Probe/>")[:60]),
    ("huge", b"<a>" + b"x" * (MAX_DATAGRAM_BYTES * 4) + b"</a>"),
    (
        "billion laughs",
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
        b"<l>&b;&b;&b;</l>",
    ),
    (
        "external entity",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    ),
    ("deep", b"<a>" * 1000 + b"</a>" * 1000),
    ("soap 1.1", b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>'),
    ("no MessageID", _probe_xml(PROBE_HEADER, "<d:Probe/>")),
    (
        "huge MessageID",
        _probe_xml(PROBE_HEADER + f"<a:MessageID>urn:{'x' * 1000}</a:MessageID>", "<d:Probe/>"),
    ),
    (
        "bad scope URI",
        _probe_xml(
            PROBE_HEADER + "<a:MessageID>urn:uuid:1</a:MessageID>",
            "<d:Probe><d:Scopes>http://[::1 onvif://\x7f</d:Scopes></d:Probe>",
        ),
    ),
    (
        "undeclared type prefix",
        _probe_xml(
            PROBE_HEADER + "<a:MessageID>urn:uuid:2</a:MessageID>",
            "<d:Probe><d:Types>zz:Printer</d:Types></d:Probe>",
        ),
    ),
]
# Other WS-Discovery traffic on the group: ignored without a count.
OTHERS: list[bytes] = [
    _probe_xml(
        f"<a:Action>{WSD}/Hello</a:Action><a:MessageID>urn:uuid:3</a:MessageID>",
        "<d:Hello><a:EndpointReference><a:Address>urn:uuid:4</a:Address></a:EndpointReference>"
        "<d:MetadataVersion>1</d:MetadataVersion></d:Hello>",
    ),
    _probe_xml(f"<a:Action>{WSD}/Resolve</a:Action><a:MessageID>urn:uuid:5</a:MessageID>", "<d:Resolve/>"),
    _probe_xml(f"<a:Action>{WSD}/Hello</a:Action><a:MessageID>urn:uuid:6</a:MessageID>", "<d:Probe/>"),
]


async def test_malformed_and_huge_datagrams_are_dropped_and_counted() -> None:
    before = limit_counts("wsd")
    async with responder(discovery_cfg(), 8080) as (r, _sink), prober() as p:
        to = ("127.0.0.1", r.port)
        for _name, data in BAD_DATAGRAMS:
            p.send(data, to)
        for data in OTHERS:
            p.send(data, to)
        good = p.probe(to)
        env = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
        assert env.getRelatesTo() == good  # nothing answered before it, and the responder still answers
        hits = limit_hits("wsd", before)
        assert hits.get("datagram_size") == 1
        # Every bad one but the huge one (dropped unparsed), the bad scope and the undeclared prefix
        # (well-formed probes that match nothing) counts as malformed.
        assert hits.get("malformed") == len(BAD_DATAGRAMS) - 3
        assert "error" not in hits  # no datagram reached an unexpected exception


async def test_a_retransmitted_probe_is_answered_once() -> None:
    async with responder(discovery_cfg(), 8080) as (r, _sink), prober() as p:
        to = ("127.0.0.1", r.port)
        env = constructProbe([], [])
        data = createSOAPMessage(env).encode()
        for _ in range(3):  # SOAP over UDP repeats a message with the same MessageID
            p.send(data, to)
        good = p.probe(to)
        first = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
        second = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
        assert (first.getRelatesTo(), second.getRelatesTo()) == (env.getMessageId(), good)


async def test_answers_are_rate_limited_per_source_and_in_total() -> None:
    now = [1000.0]
    cfg = discovery_cfg()
    before = limit_counts("wsd")
    async with (
        responder(
            cfg,
            8080,
            rate_per_source=1.0,
            burst_per_source=3,
            rate_total=1.0,
            burst_total=5,
            clock=lambda: now[0],
        ) as (r, _sink),
        prober() as a,
        prober("127.0.0.2") as b,
    ):
        to = ("127.0.0.1", r.port)
        sent_a = [a.probe(to) for _ in range(6)]
        answers_a = [parseSOAPMessage((await a.next()).decode(), "").getRelatesTo() for _ in range(3)]
        assert answers_a == sent_a[:3]  # the burst, then nothing while the clock stands still
        assert await _quiet(before, {"rate_per_source": 3})
        # Another source has its own bucket, but the total allows only 2 more.
        sent_b = [b.probe(to) for _ in range(3)]
        answers_b = [parseSOAPMessage((await b.next()).decode(), "").getRelatesTo() for _ in range(2)]
        assert answers_b == sent_b[:2]
        assert await _quiet(before, {"rate_per_source": 3, "rate": 1})
        now[0] += 10.0  # the buckets refill
        good = a.probe(to)
        assert parseSOAPMessage((await a.next()).decode(), "").getRelatesTo() == good
        assert a.inbox.queue.empty() and b.inbox.queue.empty()


async def _quiet(before: dict[str, float], counts: dict[str, int]) -> bool:
    """Wait (bounded) until the responder has refused exactly these since `before` (limit_counts)."""
    for _ in range(200):
        if limit_hits("wsd", before) == counts:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_hello_on_start_and_bye_on_stop() -> None:
    cfg = discovery_cfg(hello=True)
    async with prober() as sink:
        r = DiscoveryResponder(cfg, 8080, bind_host="127.0.0.1", announce_to=sink.addr)
        await r.start()
        try:
            hello = await sink.next()
            root = validate(hello, f"{WSD}/Hello")
            assert root.findtext(f".//{{{WSA}}}To") == "urn:schemas-xmlsoap-org:ws:2005:04:discovery"
            env = parseSOAPMessage(hello.decode(), "127.0.0.1")
            assert env.getEPR() == r.epr == endpoint_reference("streamproxy-0001")
            assert env.getXAddrs() == ["http://127.0.0.1:8080/onvif/device_service"]
            assert [s.getValue() for s in env.getScopes()] == scopes(cfg.onvif)
        finally:
            await r.stop()
        bye = await sink.next()
        validate(bye, f"{WSD}/Bye")
        env_bye = parseSOAPMessage(bye.decode(), "127.0.0.1")
        assert env_bye.getEPR() == r.epr
        assert env_bye.getInstanceId() == env.getInstanceId()
        assert int(env_bye.getMessageNumber()) > int(env.getMessageNumber())
        await r.stop()  # a second stop sends nothing more
        sink.send(b"sentinel", sink.addr)
        assert await sink.next() == b"sentinel"


async def test_hello_off_sends_no_hello_or_bye() -> None:
    async with prober() as sink:
        r = DiscoveryResponder(discovery_cfg(hello=False), 8080, bind_host="127.0.0.1", announce_to=sink.addr)
        await r.start()
        await r.stop()
        sink.send(b"sentinel", sink.addr)
        assert await sink.next() == b"sentinel"  # the first datagram the sink got


async def test_configured_xaddrs_hosts_and_a_stable_endpoint_reference() -> None:
    cfg = discovery_cfg(xaddrs_hosts=["proxy.example", "fd00::2"])
    async with responder(cfg, 8081) as (r, _sink), prober() as p:
        p.probe(("127.0.0.1", r.port))
        env = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
        (match,) = env.getProbeResolveMatches()
        assert match.getXAddrs() == [
            "http://proxy.example:8081/onvif/device_service",
            "http://[fd00::2]:8081/onvif/device_service",
        ]
    other = cfg.model_copy(
        update={
            "onvif": cfg.onvif.model_copy(
                update={"device": cfg.onvif.device.model_copy(update={"serial": "other-0002"})}
            )
        }
    )
    assert endpoint_reference("streamproxy-0001") == DiscoveryResponder(cfg, 1).epr  # same serial, same uuid
    assert DiscoveryResponder(other, 1).epr != DiscoveryResponder(cfg, 1).epr
    assert endpoint_reference("x").startswith("urn:uuid:")


async def test_a_port_that_cannot_be_bound_turns_discovery_off(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:  # no SO_REUSEADDR: the port is taken
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        r = DiscoveryResponder(
            discovery_cfg(port=port, hello=True),
            8080,
            bind_host="127.0.0.1",
            announce_to=holder.getsockname(),
        )
        with caplog.at_level(logging.ERROR, "streamproxy.serve.onvif.discovery"):
            await r.start()
        assert r.port == 0
        assert "WS-Discovery off: cannot bind" in caplog.text
        await r.stop()


def test_route_source_sends_nothing_and_names_the_local_side() -> None:
    assert route_source("127.0.0.1") == "127.0.0.1"
    assert route_source("::1") is None  # IPv4 only, like the group
    assert route_source("not an address") is None


def test_discovery_config_defaults_and_errors() -> None:
    d = OnvifConfig().discovery
    assert (d.enabled, d.port, d.interface, d.multicast_ttl, d.hello, d.xaddrs_hosts) == (
        True,
        3702,
        "0.0.0.0",
        1,
        True,
        [],
    )
    base = {"cameras": [{"name": "cam1", "url": "rtsp://127.0.0.1:1/cam1"}]}
    for bad, key in (
        ({"interface": "eth0"}, "interface"),
        ({"xaddrs_hosts": ["http://proxy"]}, "xaddrs_hosts"),
        ({"multicast_ttl": 256}, "multicast_ttl"),
        ({"bogus": 1}, "bogus"),
    ):
        with pytest.raises(ConfigError, match=key):
            parse_config({**base, "onvif": {"enabled": True, "discovery": bad}})


def own_device_cfg(**keys: Any) -> AppConfig:
    """cam1 on the multi-channel device only, cam2 also a device of its own (onvif_port 0: a free port)."""
    cfg = discovery_cfg(USERS, **keys)
    cfg = cfg.model_copy(
        update={
            "cameras": [
                *cfg.cameras,
                cfg.cameras[0].model_copy(
                    update={"name": "cam2", "url": "rtsp://127.0.0.1:1/cam2", "onvif_port": 0}
                ),
            ]
        }
    )
    return cfg


def _by_epr(matches: list[Any]) -> dict[str, Any]:
    return {m.getEPR(): m for m in matches}


async def test_a_camera_of_its_own_is_a_second_target_service() -> None:
    async with serving(own_device_cfg(), feed=False) as (app, server, _base):
        own_port = app.devices.ports["cam2"]
        assert own_port not in (0, server.port)
        main_epr, cam2_epr = (
            endpoint_reference("streamproxy-0001"),
            endpoint_reference("streamproxy-0001-cam2"),
        )
        before = limit_counts("wsd")
        async with (
            responder(app.cfg, server.port, camera_ports=app.devices.ports) as (r, _sink),
            prober() as p,
        ):
            to = ("127.0.0.1", r.port)
            message_id = p.probe(to, [QName(DN, "NetworkVideoTransmitter")])
            data = await p.next()
            root = validate(data, f"{WSD}/ProbeMatches")
            assert len(root.findall(f".//{{{WSD}}}ProbeMatch")) == 2  # both in one ProbeMatches
            env = parseSOAPMessage(data.decode(), "127.0.0.1")
            assert env.getRelatesTo() == message_id
            matches = _by_epr(env.getProbeResolveMatches())
            assert list(matches) == [main_epr, cam2_epr]
            assert matches[main_epr].getXAddrs() == [f"http://127.0.0.1:{server.port}/onvif/device_service"]
            assert matches[cam2_epr].getXAddrs() == [f"http://127.0.0.1:{own_port}/onvif/device_service"]
            assert [s.getValue() for s in matches[main_epr].getScopes()] == scopes(app.cfg.onvif)
            cam2_scopes = [s.getValue() for s in matches[cam2_epr].getScopes()]
            assert cam2_scopes == scopes(app.cfg.onvif, "cam2")
            assert "onvif://www.onvif.org/name/cam2" in cam2_scopes
            assert "onvif://www.onvif.org/name/streamproxy" not in cam2_scopes

            # A probe for one name scope finds that device only.
            for name, epr in (("cam2", cam2_epr), ("streamproxy", main_epr)):
                mid = p.probe(to, [], [Scope(f"onvif://www.onvif.org/name/{name}")])
                data = await p.next()
                validate(data, f"{WSD}/ProbeMatches")
                env = parseSOAPMessage(data.decode(), "127.0.0.1")
                assert env.getRelatesTo() == mid
                assert [m.getEPR() for m in env.getProbeResolveMatches()] == [epr], name
            # Scopes both devices share (a prefix of each name scope): both answer.
            p.probe(to, [], [Scope("onvif://www.onvif.org/name")])
            env = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
            assert list(_by_epr(env.getProbeResolveMatches())) == [main_epr, cam2_epr]
            # A name neither device has: no answer (the next probe's answer comes first).
            p.probe(to, [], [Scope("onvif://www.onvif.org/name/cam1")])
            good = p.probe(to)
            env = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
            assert env.getRelatesTo() == good
            assert not limit_hits("wsd", before)

        # The camera's XAddr is its own device: the serial its EPR comes from, the scopes it was found by.
        cam = onvif.ONVIFCamera("127.0.0.1", own_port, "vms", "s3cret-pass", WSDL_DIR, no_cache=True)
        try:
            devicemgmt = await cam.create_devicemgmt_service()
            info = await devicemgmt.GetDeviceInformation()
            assert endpoint_reference(info.SerialNumber) == cam2_epr
            assert [s.ScopeItem for s in await devicemgmt.GetScopes()] == cam2_scopes
        finally:
            await cam.close()


async def test_one_probe_is_one_unit_of_the_rate_limit_however_many_devices_match() -> None:
    now = [1000.0]
    ports = {"cam2": 9002, "cam3": 9003}
    before = limit_counts("wsd")
    async with (
        responder(
            discovery_cfg(),
            8080,
            camera_ports=ports,
            rate_per_source=1.0,
            burst_per_source=2,
            clock=lambda: now[0],
        ) as (r, _sink),
        prober() as p,
    ):
        to = ("127.0.0.1", r.port)
        sent = [p.probe(to) for _ in range(3)]
        for mid in sent[:2]:
            env = parseSOAPMessage((await p.next()).decode(), "127.0.0.1")
            assert env.getRelatesTo() == mid
            assert len(env.getProbeResolveMatches()) == 3
        assert await _quiet(before, {"rate_per_source": 1})  # the third probe: over the burst of 2 probes
        assert p.inbox.queue.empty()  # ...and not answered


async def test_many_devices_are_split_over_several_probe_matches() -> None:
    ports = {f"cam{i}": 9000 + i for i in range(2, 40)}
    async with responder(discovery_cfg(), 8080, camera_ports=ports) as (r, _sink), prober() as p:
        mid = p.probe(("127.0.0.1", r.port))
        eprs: list[str] = []
        numbers: list[int] = []
        while len(eprs) < 1 + len(ports):
            data = await p.next()
            assert len(data) <= MAX_REPLY_BYTES
            validate(data, f"{WSD}/ProbeMatches")
            env = parseSOAPMessage(data.decode(), "127.0.0.1")
            assert env.getRelatesTo() == mid
            eprs += [m.getEPR() for m in env.getProbeResolveMatches()]
            numbers.append(int(env.getMessageNumber()))
        assert len(numbers) > 1  # really split
        assert numbers == list(range(1, len(numbers) + 1))  # no MessageNumber skipped
        assert eprs == [endpoint_reference("streamproxy-0001")] + [
            endpoint_reference(f"streamproxy-0001-{c}") for c in ports
        ]


async def test_hello_and_bye_for_every_device() -> None:
    cfg = discovery_cfg(hello=True)
    main_epr, cam2_epr = endpoint_reference("streamproxy-0001"), endpoint_reference("streamproxy-0001-cam2")
    async with prober() as sink:
        ports = {"cam2": 9002}
        r = DiscoveryResponder(cfg, 8080, camera_ports=ports, bind_host="127.0.0.1", announce_to=sink.addr)
        ports.clear()  # as WebServer.stop empties its dict before the responder's Bye: read at construction
        await r.start()
        try:
            hellos = []
            for _ in range(2):
                data = await sink.next()
                validate(data, f"{WSD}/Hello")
                hellos.append(parseSOAPMessage(data.decode(), "127.0.0.1"))
            assert [h.getEPR() for h in hellos] == [main_epr, cam2_epr]
            assert [h.getXAddrs() for h in hellos] == [
                ["http://127.0.0.1:8080/onvif/device_service"],
                ["http://127.0.0.1:9002/onvif/device_service"],
            ]
            assert [s.getValue() for s in hellos[1].getScopes()] == scopes(cfg.onvif, "cam2")
        finally:
            await r.stop()
        byes = []
        for _ in range(2):
            data = await sink.next()
            validate(data, f"{WSD}/Bye")
            byes.append(parseSOAPMessage(data.decode(), "127.0.0.1"))
        assert [b.getEPR() for b in byes] == [main_epr, cam2_epr]
        numbers = [int(m.getMessageNumber()) for m in hellos + byes]
        assert numbers == sorted(numbers) and len(set(numbers)) == 4
        sink.send(b"sentinel", sink.addr)
        assert await sink.next() == b"sentinel"  # nothing more
