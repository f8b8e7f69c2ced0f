"""ONVIF as common clients drive it (issue 20, item 2), on loopback with users set:

* libonvif 1.4.4 (Debian's onvif-tools): its bytes on a raw socket, as its sendCommandToCamera sends
  them (`Host: 127.0.0.1` with no port, `Connection: Close`, the answer read by its Content-Length),
  and its tokens as addUsernameDigestHeader makes them (srand(time(NULL)) on every call: one nonce for
  every request within a second, Created with milliseconds); and the harder case of one identical token
  (same nonce and Created) for a whole sequence. 20 of 20 add-device sequences succeed.
* ZoneMinder's ONVIF probe (onvif/modules/lib/WSSecurity/SecuritySerializer.pm): nonces "a value of N",
  N counting up from one of 1000 random starts, Created in whole seconds; every probe from one start
  (the worst case). 30 of 30 succeed.
* onvif-zeep-async (the Python client the suite uses): 20 of 20 add-device sequences.
* A token is used up for every device of the process: replayed on a camera's own device, or from
  another address, it is refused; a token sent with a PRE_AUTH operation is used up too.
* ONVIF Core's PRE_AUTH operations answer without credentials (and with wrong ones); nothing else does.
* The encoder configuration (Media and Media2) reports the stream's H.264 profile, read from its SPS,
  and the configured bitrate; the read-only Device calls a VMS asks answer valid, truthful XML.

The emulation follows the 1.4.4 source line by line where it matters (see above); it can also make
the harder cases libonvif makes only by chance (one token for a whole sequence). The real library runs
in tests/test_onvif_libonvif.py (a C client built against Debian's libonvif-dev).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from onvifkit import SOAP12, TDS, TR2, TRT, TT, fault_codes, post, soap, token_header, wsdl_schema
from webkit import make_cfg, serving, wait_for

from streamproxy.config import AppConfig, EncoderConfig, OnvifConfig
from streamproxy.live.encode import H264Encoder
from streamproxy.serve.onvif import service as onvif_mod
from streamproxy.serve.onvif.service import (
    MAX_REPEATS,
    PRE_AUTH_OPERATIONS,
    REPEAT_GRACE_S,
    UsedTokens,
    _default_gateways,
    _prefix_length,
    _resolv_conf,
    endpoint_reference,
)
from streamproxy.serve.onvif.soap import UsernameToken, h264_profile

onvif = pytest.importorskip("onvif")
etree = pytest.importorskip("lxml.etree")
from zeep.exceptions import Fault  # noqa: E402  (zeep comes with onvif-zeep-async)

WSDL_DIR = os.path.join(os.path.dirname(onvif.__file__), "wsdl")
MEDIA2_WSDL = os.path.join(
    os.path.dirname(__file__), "onvif_ver20_wsdl", "ver20", "media", "wsdl", "media.wsdl"
)
USER, PASSWORD = "vms", "s3cret-pass"
USERS = [{"username": USER, "password": PASSWORD}]
CAMERAS = ("cam1", "cam2")


def onvif_cfg(
    users: list[dict[str, str]] | None = USERS, own_port: str | None = None, **update: Any
) -> AppConfig:
    """Two cameras, ONVIF on; `own_port`: that camera is also a device of its own (any free port)."""
    cfg = make_cfg(users=users, cameras=CAMERAS)
    cams = [c.model_copy(update={"onvif_port": 0}) if c.name == own_port else c for c in cfg.cameras]
    return cfg.model_copy(
        update={"onvif": OnvifConfig.model_validate({"enabled": True}), "cameras": cams, **update}
    )


SCHEMAS: dict[str, Any] = {}


def validate(el: Any) -> None:
    """Fails unless the answer element is valid by the ONVIF schema of its service."""
    if not SCHEMAS:
        SCHEMAS[TDS] = wsdl_schema(os.path.join(WSDL_DIR, "devicemgmt.wsdl"))
        SCHEMAS[TRT] = wsdl_schema(os.path.join(WSDL_DIR, "media.wsdl"))
        SCHEMAS[TR2] = wsdl_schema(MEDIA2_WSDL, patch=True)
    schema = SCHEMAS[etree.QName(el).namespace]
    if not schema.validate(el):
        raise AssertionError(f"{etree.QName(el).localname} invalid: {schema.error_log}")


# --- libonvif 1.4.4 ---
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"


def libonvif_token(user: str, password: str, t: float, same_created: bool = False) -> str:
    """addUsernameDigestHeader (libonvif 1.4.4): srand(time(NULL)) then 20 x rand(): the same nonce for
    every call within a second; Created "%Y-%m-%dT%H:%M:%S." + milliseconds + "Z" (`same_created`: the
    millisecond frozen, so that the whole token repeats, as it does for calls within one millisecond).
    libb64 ends the Base64 with a newline."""
    sec = int(t)
    nonce = random.Random(sec).randbytes(20)  # stands for rand() after srand(sec)
    ms = 0 if same_created else int((t - sec) * 1000)
    created = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)) + f"{ms:03d}Z"
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
    return (
        f'<SOAP-ENV:Header><wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}" SOAP-ENV:mustUnderstand="1">'
        f'<wsse:UsernameToken><wsse:Username>{user}</wsse:Username><wsse:Password Type="http://docs.oasis-open'
        f'.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{digest}\n</wsse:Password>'
        '<wsse:Nonce EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security'
        f'-1.0#Base64Binary">{base64.b64encode(nonce).decode()}\n</wsse:Nonce><wsu:Created>{created}</wsu:Created>'
        "</wsse:UsernameToken></wsse:Security></SOAP-ENV:Header>"
    )


def libonvif_envelope(op_xml: str, header: str = "") -> bytes:
    return (
        f'<?xml version="1.0"?>\n<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP12}" xmlns:tds="{TDS}" xmlns:trt="{TRT}" '
        f'xmlns:tt="{TT}">{header}<SOAP-ENV:Body>{op_xml}</SOAP-ENV:Body></SOAP-ENV:Envelope>'
    ).encode()


async def libonvif_send(port: int, path: str, body: bytes, local: str = "127.0.0.1") -> tuple[int, Any]:
    """sendCommandToCamera + addHttpHeader: one request per connection, Host without the port, the
    reply's XML taken by its Content-Length (libonvif gives up without one). (status, Body's child)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    head = (
        f"POST {path} HTTP/1.1\r\nUser-Agent: Generic\r\nConnection: Close\r\nAccept-Encoding: gzip, deflate\r\n"
        f"Content-Type: application/soap+xml; charset=utf-8;\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    length = next(int(line[16:]) for line in header.split(b"\r\n") if line.startswith(b"Content-Length: "))
    root = etree.fromstring(payload[:length])
    return status, root.find(f"{{{SOAP12}}}Body")[0]


def libonvif_ops(profile: str) -> list[tuple[str, str, bool]]:
    """(path, operation, signed) in the order onvif-util adds a device and reads it: the clock first
    (unsigned: getTimeOffset), then capabilities, device information, profiles, stream URI, encoder
    configuration and options, and `get network` (interfaces, default gateway, DNS)."""
    dev, media = "/onvif/device_service", "/onvif/media_service"
    return [
        (dev, "<tds:GetSystemDateAndTime/>", False),
        (dev, "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>", True),
        (dev, "<tds:GetDeviceInformation/>", True),
        (dev, "<tds:GetHostname/>", True),
        (media, "<trt:GetProfiles/>", True),
        (media, f"<trt:GetProfile><trt:ProfileToken>{profile}</trt:ProfileToken></trt:GetProfile>", True),
        (
            media,
            "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport><tt:Protocol>"
            f"RTSP</tt:Protocol></tt:Transport></trt:StreamSetup><trt:ProfileToken>{profile}</trt:ProfileToken>"
            "</trt:GetStreamUri>",
            True,
        ),
        (
            media,
            f"<trt:GetVideoEncoderConfiguration><trt:ConfigurationToken>{profile}</trt:ConfigurationToken>"
            "</trt:GetVideoEncoderConfiguration>",
            True,
        ),
        (
            media,
            f"<trt:GetVideoEncoderConfigurationOptions><trt:ConfigurationToken>{profile}"
            "</trt:ConfigurationToken></trt:GetVideoEncoderConfigurationOptions>",
            True,
        ),
        (
            media,
            f"<trt:GetSnapshotUri><trt:ProfileToken>{profile}</trt:ProfileToken></trt:GetSnapshotUri>",
            True,
        ),
        (dev, "<tds:GetNetworkInterfaces/>", True),
        (dev, "<tds:GetNetworkDefaultGateway/>", True),
        (dev, "<tds:GetDNS/>", True),
        (dev, "<tds:GetNTP/>", True),
        (dev, "<tds:GetScopes/>", True),
    ]


async def libonvif_add(port: int, profile: str, second: int | None = None) -> list[Any]:
    """One onvif-util run against the device on `port`: every answer (all must be 200). `second`: every
    signed request carries the one token libonvif makes in that second and millisecond 000 (the whole
    token repeats), else each its own as libonvif makes them now."""
    answers = []
    for path, op, signed in libonvif_ops(profile):
        t = time.time() if second is None else second
        header = libonvif_token(USER, PASSWORD, t, same_created=second is not None) if signed else ""
        status, el = await libonvif_send(port, path, libonvif_envelope(op, header))
        assert status == 200, (op, etree.tostring(el)[:300])
        answers.append(el)
    return answers


# --- ZoneMinder ---
def zoneminder_token(user: str, password: str, n: int) -> str:
    """WSSecurity::SecuritySerializer::ws_authen: nonce "a value of N" (the generator counts up from
    int(1000*rand())), Created %Y-%m-%dT%H:%M:%SZ (whole seconds)."""
    nonce = f"a value of {n}".encode()
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
    return (
        f'<s:Header><wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}"><wsse:UsernameToken>'
        f'<wsse:Username>{user}</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/'
        f'oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{digest}</wsse:Password>'
        f"<wsse:Nonce>{base64.b64encode(nonce).decode()}</wsse:Nonce><wsu:Created>{created}</wsu:Created>"
        "</wsse:UsernameToken></wsse:Security></s:Header>"
    )


# --- the used-token record, alone ---
def _token(nonce: bytes, created: str, user: str = USER) -> UsernameToken:
    when = dt.datetime.fromisoformat(created)
    return UsernameToken(user, b"\0" * 20, nonce, created, when)


def test_used_tokens_nonce_and_created_make_a_token_and_a_repeat_is_bounded() -> None:
    used = UsedTokens()
    now = time.time()
    c1 = dt.datetime.fromtimestamp(now, dt.UTC).isoformat()
    c2 = dt.datetime.fromtimestamp(now + 0.001, dt.UTC).isoformat()
    nonce = secrets.token_bytes(20)
    assert used.admit(_token(nonce, c1), "127.0.0.1", "*", now)
    # The same nonce with another Created is another token (libonvif within a second, ZoneMinder's 1000).
    assert used.admit(_token(nonce, c2), "127.0.0.1", "*", now)
    # An exact repeat: from the same address, on the same device, soon after: accepted...
    assert used.admit(_token(nonce, c1), "127.0.0.1", "*", now + 0.5)
    # ...from another address, on another device, or later: refused.
    assert not used.admit(_token(nonce, c1), "127.0.0.2", "*", now + 0.5)
    assert not used.admit(_token(nonce, c1), "127.0.0.1", "cam2", now + 0.5)
    assert not used.admit(_token(nonce, c1), "127.0.0.1", "*", now + REPEAT_GRACE_S + 0.01)
    # At most MAX_REPEATS repeats in all.
    assert all(used.admit(_token(nonce, c2), "127.0.0.1", "*", now + 1) for _ in range(MAX_REPEATS))
    assert not used.admit(_token(nonce, c2), "127.0.0.1", "*", now + 1)
    assert used.repeats == 1 + MAX_REPEATS and used.refused == 4
    # Another user's token with the same nonce and Created is not this one (its digest differs).
    assert used.admit(_token(nonce, c1, "other"), "127.0.0.2", "cam2", now + 5)


def test_used_tokens_are_bounded_and_a_forgotten_fresh_token_stays_refused() -> None:
    used = UsedTokens(max_entries=3, window_s=300)
    now = time.time()
    tokens = [_token(secrets.token_bytes(16), dt.datetime.fromtimestamp(now - 10 + i, dt.UTC).isoformat())
              for i in range(5)]  # fmt: skip
    for t in tokens:
        assert used.admit(t, "127.0.0.1", "*", now)
    assert len(used) == 3
    # The two forgotten ones are still fresh: refused (and so is anything created before them), from anywhere.
    assert not used.admit(tokens[0], "127.0.0.9", "*", now + 10)
    assert not used.admit(tokens[1], "127.0.0.9", "*", now + 10)
    # Out of the window, a token is forgotten without a trace.
    used2 = UsedTokens(max_entries=100, window_s=300)
    old = _token(b"n", dt.datetime.fromtimestamp(now - 299, dt.UTC).isoformat())
    assert used2.admit(old, "127.0.0.1", "*", now)
    used2.admit(_token(b"m", dt.datetime.fromtimestamp(now, dt.UTC).isoformat()), "127.0.0.1", "*", now + 2)
    assert len(used2) == 1


def test_one_record_for_every_device_of_the_process() -> None:
    """Each OnvifService's authenticator holds the process's one record (serve/http/server.py makes one
    service for the multi-channel device, serve/onvif/device.py one per camera with an onvif_port)."""
    from streamproxy.serve.onvif.service import OnvifService, camera_device

    class App:  # an OnvifHost with no camera running
        def __init__(self) -> None:
            self.cfg = onvif_cfg()
            self.cameras: dict[str, Any] = {}
            self.rtsp_port: int | None = None

    main, own = OnvifService(App()), OnvifService(App(), camera_device("cam2"))
    assert main.auth.used is own.auth.used is onvif_mod.USED_TOKENS
    assert (main.auth.device, own.auth.device) == ("*", "cam2")


# --- the H.264 profile and the host's network, alone ---
def test_the_h264_profile_is_the_streams() -> None:
    assert h264_profile(bytes([0x67, 66, 0xC0, 31]), "veryfast") == "Baseline"  # Constrained Baseline
    assert h264_profile(bytes([0x67, 77, 0x40, 31]), "ultrafast") == "Main"
    assert h264_profile(bytes([0x67, 100, 0x00, 40]), "ultrafast") == "High"
    assert h264_profile(bytes([0x67, 110, 0x00, 40]), "ultrafast") == "High"
    # Before the first keyframe: what libx264 makes with the preset, checked against the real encoder.
    for preset, want_idc in (("ultrafast", 66), ("veryfast", 100)):
        enc = H264Encoder(EncoderConfig(preset=preset, bitrate_kbps=300), 160, 120, 10.0)
        try:
            for i in range(5):
                if enc.codec_info is not None:
                    break
                frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 40, np.uint8), format="rgb24")
                enc.encode(frame.reformat(format="yuv420p", threads=1), time.monotonic())
            info = enc.codec_info
            assert info is not None, preset
            assert info.sps[1] == want_idc, (preset, info.sps[:4].hex())
            assert h264_profile(info.sps, preset) == h264_profile(None, preset), preset
        finally:
            enc.close()


def test_host_network_reads(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
        "eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n"
    )
    route6 = tmp_path / "ipv6_route"
    route6.write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 "
        "00000400 00000001 00000000 00000003 eth0\n"
        "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 "
        "00000100 00000001 00000000 00000001 eth0\n"
    )
    assert _default_gateways(route, route6) == (["192.168.0.1"], ["fe80::1"])
    assert _default_gateways(tmp_path / "none", tmp_path / "none") == ([], [])
    assert _prefix_length("192.168.0.17", route) == 24
    assert _prefix_length("10.1.2.3", route) == 8
    assert _prefix_length("172.16.0.1", route) == 32  # on no connected route: the address alone
    assert _prefix_length("127.0.0.1", route) == 8
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# x\nnameserver 192.0.2.53\nnameserver fe80::53%eth0\nnameserver bogus\nsearch lan example.org\n"
    )
    servers, domains = _resolv_conf(conf)
    assert [str(s) for s in servers] == ["192.0.2.53", "fe80::53"] and domains == ["lan", "example.org"]


# --- over the wire ---
async def test_libonvif_adds_the_device_20_of_20_with_host_without_port() -> None:
    """onvif-util's sequence, 20 runs back to back (its nonce repeats within each second), then 20 runs
    that each repeat one identical token (each run's from a second of its own, before the first runs);
    every answer 200; the addresses carry the port the requests came in on, not 80."""
    async with serving(onvif_cfg(own_port="cam2")) as (app, server, _base):
        assert await wait_for(lambda: all(h.codec is not None for h in app.hubs.values()), 20)
        used = server.onvif.auth.used if server.onvif else None
        assert used is not None
        repeats0 = used.repeats
        t_begin = time.time()
        ok = 0
        for run in range(20):
            answers = await libonvif_add(server.port, "cam1_main")
            ok += 1
            if run == 0:
                caps = answers[1]
                assert caps.findtext(f".//{{{TT}}}Media/{{{TT}}}XAddr") == (
                    f"http://127.0.0.1:{server.port}/onvif/media_service"
                )
                snap = answers[9].findtext(f".//{{{TT}}}Uri")
                assert snap == f"http://127.0.0.1:{server.port}/api/cameras/cam1/snapshot.jpg"
                assert (
                    answers[6].findtext(f".//{{{TT}}}Uri")
                    == f"rtsp://127.0.0.1:{app.cfg.server.rtsp_port}/cam1"
                )
                gateway = answers[11]
                assert gateway.tag == f"{{{TDS}}}GetNetworkDefaultGatewayResponse"
                for el in answers[1:]:
                    validate(el)
        assert ok == 20
        refused0 = used.refused
        start = int(t_begin) - 1  # seconds before the runs above: none of their tokens can be these
        for run in range(20):
            await libonvif_add(server.port, "cam1_main", second=start - run)
        # Each identical-token run repeated its token (13 signed requests, the first one uses it): all
        # accepted as repeats, none refused.
        assert used.repeats - repeats0 >= 20 * 12 and used.refused == refused0
        # The camera's own device: its port in its addresses.
        own = app.devices.ports["cam2"]
        answers = await libonvif_add(own, "cam2_main")
        assert (
            answers[1].findtext(f".//{{{TT}}}Media/{{{TT}}}XAddr")
            == f"http://127.0.0.1:{own}/onvif/media_service"
        )
        assert (
            answers[9].findtext(f".//{{{TT}}}Uri") == f"http://127.0.0.1:{own}/api/cameras/cam2/snapshot.jpg"
        )


async def test_zoneminder_probes_30_of_30() -> None:
    """30 probes, every one counting its nonces up from the same start (ZoneMinder draws one of 1000
    per probe): nonces repeat across probes, each with its own Created (or, within one second, the
    whole token from the same address: a repeat)."""
    async with serving(onvif_cfg(), feed=False) as (_app, _server, base):
        async with aiohttp.ClientSession() as s:
            ops = [
                ("/onvif/device_service", "<tds:GetSystemDateAndTime/>"),
                (
                    "/onvif/device_service",
                    "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>",
                ),
                ("/onvif/device_service", "<tds:GetDeviceInformation/>"),
                ("/onvif/media_service", "<trt:GetProfiles/>"),
                (
                    "/onvif/media_service",
                    "<trt:GetStreamUri><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream>"
                    "<tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup>"
                    "<trt:ProfileToken>cam1_main</trt:ProfileToken></trt:GetStreamUri>",
                ),
            ]
            ok = 0
            for probe in range(30):
                n = 500  # the generator's start: the same for every probe here
                for path, op in ops:
                    n += 1
                    status, el, _ = await post(s, base + path, soap(op, zoneminder_token(USER, PASSWORD, n)))
                    assert status == 200, (probe, op, etree.tostring(el)[:300])
                ok += 1
                await asyncio.sleep(random.uniform(0, 0.15))  # probes land in various seconds
            assert ok == 30


async def test_onvif_zeep_async_adds_the_device_20_of_20() -> None:
    async with serving(onvif_cfg()) as (app, server, _base):
        assert await wait_for(lambda: all(h.codec is not None for h in app.hubs.values()), 20)
        ok = 0
        for _ in range(20):
            cam = onvif.ONVIFCamera("127.0.0.1", server.port, USER, PASSWORD, WSDL_DIR, no_cache=True,
                                    adjust_time=True)  # fmt: skip
            try:
                await cam.update_xaddrs()
                devicemgmt = await cam.create_devicemgmt_service()
                await devicemgmt.GetCapabilities({"Category": "All"})
                await devicemgmt.GetDeviceInformation()
                await devicemgmt.GetNetworkDefaultGateway()
                media = await cam.create_media_service()
                for p in await media.GetProfiles():
                    await media.GetStreamUri({"StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                                              "ProfileToken": p.token})  # fmt: skip
                    await media.GetSnapshotUri({"ProfileToken": p.token})
                ok += 1
            finally:
                await cam.close()
        assert ok == 20


async def test_a_token_is_used_up_on_every_device_and_from_every_address() -> None:
    async with serving(onvif_cfg(own_port="cam2"), feed=False) as (app, _server, base):
        own = f"http://127.0.0.1:{app.devices.ports['cam2']}"
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession() as s, aiohttp.ClientSession(connector=other) as s2:
            for first, then in ((base, own), (own, base)):
                header = token_header(USER, PASSWORD)
                assert (await post(s, first + "/onvif/device_service", soap("<tds:GetScopes/>", header)))[
                    0
                ] == 200
                # The very token on the other device, at once and from the same address: refused.
                status, el, _ = await post(
                    s, then + "/onvif/device_service", soap("<tds:GetScopes/>", header)
                )
                assert status == 400 and fault_codes(el) == ["Sender", "NotAuthorized"], then
            # Replayed from another address, on the same device, at once: refused.
            header = token_header(USER, PASSWORD)
            assert (await post(s, base + "/onvif/media_service", soap("<trt:GetProfiles/>", header)))[
                0
            ] == 200
            status, el, _ = await post(s2, base + "/onvif/media_service", soap("<trt:GetProfiles/>", header))
            assert status == 400 and fault_codes(el) == ["Sender", "NotAuthorized"]
            # A token sent with a PRE_AUTH operation is used up there: it opens nothing afterwards.
            header = token_header(USER, PASSWORD)
            caps = "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>"
            assert (await post(s, base + "/onvif/device_service", soap(caps, header)))[0] == 200
            status, el, _ = await post(s2, base + "/onvif/media_service", soap("<trt:GetProfiles/>", header))
            assert status == 400 and fault_codes(el) == ["Sender", "NotAuthorized"]
            # Later than the grace, even the same address on the same device is refused.
            header = token_header(USER, PASSWORD)
            assert (await post(s, base + "/onvif/device_service", soap("<tds:GetScopes/>", header)))[0] == 200
            await asyncio.sleep(REPEAT_GRACE_S + 0.2)
            status, el, _ = await post(s, base + "/onvif/device_service", soap("<tds:GetScopes/>", header))
            assert status == 400 and fault_codes(el) == ["Sender", "NotAuthorized"]


PRE_AUTH_REQUESTS = {
    (TDS, "GetSystemDateAndTime"): ("/onvif/device_service", "<tds:GetSystemDateAndTime/>"),
    (TDS, "GetWsdlUrl"): ("/onvif/device_service", "<tds:GetWsdlUrl/>"),
    (TDS, "GetServices"): ("/onvif/device_service",
                           "<tds:GetServices><tds:IncludeCapability>true</tds:IncludeCapability></tds:GetServices>"),
    (TDS, "GetServiceCapabilities"): ("/onvif/device_service", "<tds:GetServiceCapabilities/>"),
    (TDS, "GetCapabilities"): ("/onvif/device_service",
                               "<tds:GetCapabilities><tds:Category>All</tds:Category></tds:GetCapabilities>"),
    (TDS, "GetHostname"): ("/onvif/device_service", "<tds:GetHostname/>"),
    (TDS, "GetEndpointReference"): ("/onvif/device_service", "<tds:GetEndpointReference/>"),
    (TRT, "GetServiceCapabilities"): ("/onvif/media_service", "<trt:GetServiceCapabilities/>"),
    (TR2, "GetServiceCapabilities"): ("/onvif/media2_service", "<tr2:GetServiceCapabilities/>"),
}  # fmt: skip


async def test_pre_auth_operations_answer_without_credentials_and_nothing_else_does() -> None:
    assert set(PRE_AUTH_REQUESTS) == PRE_AUTH_OPERATIONS
    async with serving(onvif_cfg(own_port="cam2"), feed=False) as (app, _server, base):
        own = f"http://127.0.0.1:{app.devices.ports['cam2']}"
        async with aiohttp.ClientSession() as s:
            for (ns, op), (path, xml) in PRE_AUTH_REQUESTS.items():
                for header in ("", token_header(USER, "wrong"), token_header("nobody", PASSWORD)):
                    status, el, _ = await post(s, base + path, soap(xml, header))
                    assert status == 200 and el.tag == f"{{{ns}}}{op}Response", (op, etree.tostring(el)[:300])
                    validate(el)
            _, el, _ = await post(s, own + "/onvif/device_service", soap("<tds:GetEndpointReference/>"))
            serial = app.cfg.onvif.device.serial
            assert el.findtext(f"{{{TDS}}}GUID") == endpoint_reference(
                serial + "-cam2"
            )  # what discovery says
            _, el, _ = await post(s, base + "/onvif/device_service", soap("<tds:GetEndpointReference/>"))
            assert el.findtext(f"{{{TDS}}}GUID") == endpoint_reference(serial)
            # Everything else: 401 without credentials, 400 with wrong ones.
            for path, xml in (
                ("/onvif/device_service", "<tds:GetDeviceInformation/>"),
                ("/onvif/device_service", "<tds:GetNetworkDefaultGateway/>"),
                ("/onvif/device_service", "<tds:GetScopes/>"),
                ("/onvif/media_service", "<trt:GetProfiles/>"),
                ("/onvif/media2_service", "<tr2:GetProfiles/>"),
            ):
                status, el, _ = await post(s, base + path, soap(xml))
                assert status == 401 and fault_codes(el) == ["Sender", "NotAuthorized"], xml
                status, el, _ = await post(s, base + path, soap(xml, token_header(USER, "wrong")))
                assert status == 400 and fault_codes(el) == ["Sender", "NotAuthorized"], xml


async def test_a_wrong_password_finds_the_media_service_and_is_told_not_authorized() -> None:
    """What ZoneMinder showed as "No media endpoint": with the wrong password the client still gets the
    capabilities (PRE_AUTH) and then a clear NotAuthorized on the first protected call."""
    async with serving(onvif_cfg(), feed=False) as (_app, server, _base):
        cam = onvif.ONVIFCamera("127.0.0.1", server.port, USER, "wrong", WSDL_DIR, no_cache=True)
        try:
            devicemgmt = await cam.create_devicemgmt_service()
            caps = await devicemgmt.GetCapabilities({"Category": "All"})
            assert caps.Media.XAddr == f"http://127.0.0.1:{server.port}/onvif/media_service"
            assert (await devicemgmt.GetHostname()).Name
            with pytest.raises(Fault) as err:
                await devicemgmt.GetDeviceInformation()
            assert any("NotAuthorized" in str(c) for c in err.value.subcodes or []), err.value
        finally:
            await cam.close()


async def test_the_encoder_configuration_is_the_streams() -> None:
    """Profile from the stream's SPS (libx264 ultrafast: Constrained Baseline, reported Baseline), bitrate
    the configured one (main: encoder.bitrate_kbps, sub: sub_stream.bitrate_kbps), in Media and Media2."""
    base_cfg = onvif_cfg()
    cfg = base_cfg.model_copy(update={
        "encoder": base_cfg.encoder.model_copy(update={"bitrate_kbps": 2500}),
        "sub_stream": base_cfg.sub_stream.model_copy(update={"bitrate_kbps": 450}),
    })  # fmt: skip
    async with serving(cfg) as (app, _server, base):
        assert await wait_for(
            lambda: all(h.codec is not None for h in [*app.hubs.values(), *app.sub_hubs.values()]), 20
        )
        codec = app.hubs["cam1"].codec
        assert codec is not None
        sps = codec.sps
        assert sps[1] == 66 and sps[2] & 0x40, sps[:4].hex()  # what the stream is: Constrained Baseline
        want = {"cam1_main": 2500, "cam1_sub": 450, "cam2_main": 2500, "cam2_sub": 450}
        async with aiohttp.ClientSession() as s:
            _, el, _ = await post(
                s,
                base + "/onvif/media_service",
                soap("<trt:GetVideoEncoderConfigurations/>", token_header(USER, PASSWORD)),
            )
            validate(el)
            got = {
                c.get("token"): (
                    c.findtext(f"{{{TT}}}H264/{{{TT}}}H264Profile"),
                    int(c.findtext(f"{{{TT}}}RateControl/{{{TT}}}BitrateLimit")),
                )
                for c in el
            }
            assert got == {t: ("Baseline", k) for t, k in want.items()}
            _, el, _ = await post(
                s,
                base + "/onvif/media_service",
                soap(
                    "<trt:GetVideoEncoderConfigurationOptions><trt:ConfigurationToken>cam1_sub</trt:ConfigurationToken>"
                    "</trt:GetVideoEncoderConfigurationOptions>",
                    token_header(USER, PASSWORD),
                ),
            )
            validate(el)
            assert [p.text for p in el.iter(f"{{{TT}}}H264ProfilesSupported")] == ["Baseline", "Baseline"]
            rng = el.find(f".//{{{TT}}}Extension/{{{TT}}}H264/{{{TT}}}BitrateRange")
            assert (rng.findtext(f"{{{TT}}}Min"), rng.findtext(f"{{{TT}}}Max")) == ("450", "450")
            _, el, _ = await post(
                s,
                base + "/onvif/media2_service",
                soap("<tr2:GetVideoEncoderConfigurations/>", token_header(USER, PASSWORD)),
            )
            validate(el)
            got = {c.get("token"): (c.get("Profile"), int(c.findtext(f"{{{TT}}}RateControl/{{{TT}}}BitrateLimit")))
                   for c in el}  # fmt: skip
            assert got == {t: ("Baseline", k) for t, k in want.items()}
            _, el, _ = await post(
                s,
                base + "/onvif/media2_service",
                soap(
                    "<tr2:GetVideoEncoderConfigurationOptions><tr2:ConfigurationToken>cam2_main</tr2:ConfigurationToken>"
                    "</tr2:GetVideoEncoderConfigurationOptions>",
                    token_header(USER, PASSWORD),
                ),
            )
            validate(el)
            opt = el[0]
            assert opt.get("ProfilesSupported") == "Baseline"
            assert opt.findtext(f"{{{TT}}}BitrateRange/{{{TT}}}Max") == "2500"


async def test_read_only_device_calls_answer_valid_and_truthful() -> None:
    async with serving(onvif_cfg(), feed=False) as (app, server, base):
        url = base + "/onvif/device_service"
        async with aiohttp.ClientSession() as s:
            answers = {}
            for op in (
                "GetNetworkDefaultGateway",
                "GetNetworkProtocols",
                "GetNetworkInterfaces",
                "GetDNS",
                "GetNTP",
                "GetScopes",
                "GetHostname",
                "GetRelayOutputs",
                "GetWsdlUrl",
                "GetDiscoveryMode",
            ):
                status, el, _ = await post(s, url, soap(f"<tds:{op}/>", token_header(USER, PASSWORD)))
                assert status == 200 and el.tag == f"{{{TDS}}}{op}Response", (op, etree.tostring(el)[:300])
                validate(el)
                answers[op] = el
        v4, v6 = _default_gateways()
        assert [a.text for a in answers["GetNetworkDefaultGateway"].iter(f"{{{TT}}}IPv4Address")] == v4
        assert [a.text for a in answers["GetNetworkDefaultGateway"].iter(f"{{{TT}}}IPv6Address")] == v6
        protocols = {p.findtext(f"{{{TT}}}Name"): int(p.findtext(f"{{{TT}}}Port"))
                     for p in answers["GetNetworkProtocols"]}  # fmt: skip
        assert protocols == {"HTTP": server.port, "RTSP": app.cfg.server.rtsp_port}
        iface = answers["GetNetworkInterfaces"]
        assert iface.findtext(f".//{{{TT}}}Address") == "127.0.0.1"
        assert iface.findtext(f".//{{{TT}}}PrefixLength") == "8"
        servers, _domains = _resolv_conf()
        assert [a.text for a in answers["GetDNS"].iter(f"{{{TT}}}IPv4Address")] == [
            str(a) for a in servers if a.version == 4
        ]
