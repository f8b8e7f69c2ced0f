"""ONVIF Media2 (ver20, serve/onvif/media2.py) on loopback: GetServices lists it, a real client
(onvif-zeep-async's service class with ONVIF's Media2 WSDL, tests/onvif_ver20_wsdl/) adds every camera
over it, every answer validates against the ver20 media schema (lxml), auth and faults as in ver10."""

from __future__ import annotations

import logging
import os
from typing import Any

import aiohttp
import onvifkit
import pytest
from onvifkit import TDS, TR2, TT, fault_codes, soap, token_header, wsdl_schema
from webkit import make_cfg, serving, wait_for

from streamproxy.config import AppConfig, OnvifConfig

onvif = pytest.importorskip("onvif")
etree = pytest.importorskip("lxml.etree")
from onvif.client import ONVIFService  # noqa: E402  (onvif-zeep-async, skipped above when absent)
from zeep.exceptions import Fault  # noqa: E402  (zeep comes with onvif-zeep-async)

WSDL_DIR = os.path.join(os.path.dirname(onvif.__file__), "wsdl")  # ver10 (device service)
MEDIA2_WSDL = os.path.join(
    os.path.dirname(__file__), "onvif_ver20_wsdl", "ver20", "media", "wsdl", "media.wsdl"
)
USERS = [{"username": "vms", "password": "s3cret-pass"}]
CAMERAS = ("cam1", "cam2")
TOKENS = ["cam1_main", "cam1_sub", "cam2_main", "cam2_sub"]


def onvif_cfg(users: list[dict[str, str]] | None = None) -> AppConfig:
    cfg = make_cfg(users=users, cameras=CAMERAS)
    return cfg.model_copy(update={"onvif": OnvifConfig.model_validate({"enabled": True})})


SCHEMAS: dict[str, Any] = {}


def validate(el: Any) -> None:
    """Fails unless the element is valid by the ONVIF schema of its namespace (tr2: ver20 media)."""
    if not SCHEMAS:
        SCHEMAS[TR2] = wsdl_schema(MEDIA2_WSDL, patch=True)
        SCHEMAS[TDS] = wsdl_schema(os.path.join(WSDL_DIR, "devicemgmt.wsdl"))
    schema = SCHEMAS[etree.QName(el).namespace]
    if not schema.validate(el):
        raise AssertionError(f"{etree.QName(el).localname} invalid: {schema.error_log}")


async def post(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, Body's first child): onvifkit's post without the response."""
    status, el, _resp = await onvifkit.post(session, url, data, headers)
    return status, el


async def media2_service(cam: Any, user: str, password: str) -> Any:
    """onvif-zeep-async's ONVIFService on the Media2 XAddr GetServices gave (what a create_media2_service
    would build: WS-Security PasswordDigest with the device's clock offset, the ver20 WSDL)."""
    service = ONVIFService(
        cam.xaddrs[TR2],
        user,
        password,
        MEDIA2_WSDL,
        no_cache=True,
        dt_diff=cam.dt_diff,
        binding_name=f"{{{TR2}}}Media2Binding",
    )
    await service.setup()
    return service


async def test_real_client_adds_every_camera_over_media2() -> None:
    async with serving(onvif_cfg(USERS)) as (app, server, _base):
        assert await wait_for(lambda: all(h.codec is not None for h in app.hubs.values()), 20)
        assert await wait_for(lambda: all(h.codec is not None for h in app.sub_hubs.values()), 20)
        cam = onvif.ONVIFCamera(
            "127.0.0.1", server.port, "vms", "s3cret-pass", WSDL_DIR, no_cache=True, adjust_time=True
        )
        media2 = None
        try:
            await cam.update_xaddrs()  # authless GetSystemDateAndTime, then GetServices
            assert cam.xaddrs[TR2] == f"http://127.0.0.1:{server.port}/onvif/media2_service"
            media2 = await media2_service(cam, "vms", "s3cret-pass")
            caps = await media2.GetServiceCapabilities()
            assert caps.SnapshotUri is True and caps.StreamingCapabilities.RTP_RTSP_TCP is True
            profiles = await media2.GetProfiles({"Type": ["All"]})
            assert [p.token for p in profiles] == TOKENS
            rtsp = app.cfg.server.rtsp_port
            for p in profiles:
                camera, sub = p.Configurations.VideoSource.SourceToken, p.token.endswith("_sub")
                enc = p.Configurations.VideoEncoder
                size = (160, 120) if sub else (320, 240)  # webkit feeds the sub stream at half the size
                # The stream's own profile (webkit's libx264 ultrafast: Constrained Baseline, ONVIF's Baseline)
                # and the configured bitrate (encoder / sub_stream.bitrate_kbps).
                assert (enc.Encoding, enc.Resolution.Width, enc.Resolution.Height, enc.Profile) == (
                    "H264",
                    *size,
                    "Baseline",
                )
                kbps = app.cfg.sub_stream.bitrate_kbps if sub else app.cfg.encoder.bitrate_kbps
                assert enc.RateControl.BitrateLimit == kbps
                path = f"{camera}/sub" if sub else camera
                for protocol in ("RtspUnicast", "RTSP"):
                    uri = await media2.GetStreamUri({"Protocol": protocol, "ProfileToken": p.token})
                    assert uri == f"rtsp://127.0.0.1:{rtsp}/{path}", (protocol, uri)
                snap = await media2.GetSnapshotUri({"ProfileToken": p.token})
                assert snap == f"http://127.0.0.1:{server.port}/api/cameras/{camera}/snapshot.jpg"
            with pytest.raises(Fault) as err:
                await media2.GetStreamUri({"Protocol": "RtspOverHttp", "ProfileToken": "cam1_main"})
            assert any("InvalidArgVal" in str(c) for c in err.value.subcodes or []), err.value
            encoders = await media2.GetVideoEncoderConfigurations()
            assert [e.token for e in encoders] == TOKENS
            assert {(e.Encoding, e.Profile) for e in encoders} == {("H264", "Baseline")}
            assert all(e.GovLength >= 1 and e.RateControl.FrameRateLimit > 0 for e in encoders)
            one = await media2.GetVideoEncoderConfigurations({"ProfileToken": "cam2_sub"})
            assert [(e.token, e.Resolution.Width) for e in one] == [("cam2_sub", 160)]
            sources = await media2.GetVideoSourceConfigurations()
            assert [s.SourceToken for s in sources] == list(CAMERAS)
        finally:
            if media2 is not None:
                await media2.close()
            await cam.close()


async def test_real_client_wrong_password_is_not_authorized() -> None:
    async with serving(onvif_cfg(USERS), feed=False) as (_app, server, _base):
        cam = onvif.ONVIFCamera("127.0.0.1", server.port, "vms", "s3cret-pass", WSDL_DIR, no_cache=True)
        media2 = None
        try:
            await cam.update_xaddrs()
            media2 = await media2_service(cam, "vms", "wrong")
            with pytest.raises(Fault) as err:
                await media2.GetProfiles({"Type": ["All"]})
            assert any("NotAuthorized" in str(c) for c in err.value.subcodes or []), err.value
        finally:
            if media2 is not None:
                await media2.close()
            await cam.close()


def read_ops() -> list[str]:
    """Every Media2 read a VMS sends while adding a camera (cam2's profiles), each must validate."""

    def get(op: str, inner: str = "") -> str:
        return f"<tr2:{op}>{inner}</tr2:{op}>"

    return [
        get("GetServiceCapabilities"),
        get("GetProfiles"),
        get("GetProfiles", "<tr2:Type>All</tr2:Type>"),
        get("GetProfiles", "<tr2:Token>cam2_sub</tr2:Token><tr2:Type>VideoEncoder</tr2:Type>"),
        get("GetProfiles", "<tr2:Type>VideoSource</tr2:Type><tr2:Type>AudioSource</tr2:Type>"),
        get("GetVideoSourceConfigurations"),
        get("GetVideoSourceConfigurations", "<tr2:ConfigurationToken>cam2</tr2:ConfigurationToken>"),
        get("GetVideoSourceConfigurations", "<tr2:ProfileToken>cam2_sub</tr2:ProfileToken>"),
        get("GetVideoEncoderConfigurations"),
        get("GetVideoEncoderConfigurations", "<tr2:ConfigurationToken>cam2_main</tr2:ConfigurationToken>"),
        get("GetVideoSourceConfigurationOptions", "<tr2:ProfileToken>cam2_main</tr2:ProfileToken>"),
        get("GetVideoSourceConfigurationOptions"),
        get("GetVideoEncoderConfigurationOptions", "<tr2:ProfileToken>cam2_sub</tr2:ProfileToken>"),
        get("GetVideoEncoderConfigurationOptions"),
        get("GetVideoEncoderInstances", "<tr2:ConfigurationToken>cam2_main</tr2:ConfigurationToken>"),
        get(
            "GetStreamUri",
            "<tr2:Protocol>RtspUnicast</tr2:Protocol><tr2:ProfileToken>cam2_sub</tr2:ProfileToken>",
        ),
        get(
            "GetStreamUri", "<tr2:Protocol>RTSP</tr2:Protocol><tr2:ProfileToken>cam2_main</tr2:ProfileToken>"
        ),
        get("GetSnapshotUri", "<tr2:ProfileToken>cam2_main</tr2:ProfileToken>"),
        get("GetAudioSourceConfigurations"),
        get("GetAudioEncoderConfigurations"),
        get("GetAudioOutputConfigurations"),
        get("GetAudioDecoderConfigurations"),
        get("GetMetadataConfigurations"),
        get("GetAnalyticsConfigurations"),
    ]


async def test_every_media2_answer_validates_against_the_ver20_schema() -> None:
    async with serving(onvif_cfg(USERS)) as (app, _server, base):
        assert await wait_for(lambda: all(h.codec is not None for h in app.hubs.values()), 20)
        url = base + "/onvif/media2_service"
        answers: dict[str, Any] = {}
        async with aiohttp.ClientSession() as s:
            for op in read_ops():
                status, el = await post(s, url, soap(op, token_header("vms", "s3cret-pass")))
                assert status == 200, (op, etree.tostring(el)[:400])
                assert el.tag == f"{{{TR2}}}{etree.QName(etree.fromstring(soap(op))[0][0]).localname}Response"
                validate(el)
                answers[op] = el
            # GetServices lists Media2 with its capabilities, valid by both schemas.
            services = (
                "<tds:GetServices><tds:IncludeCapability>true</tds:IncludeCapability></tds:GetServices>"
            )
            status, el = await post(
                s, base + "/onvif/device_service", soap(services, token_header("vms", "s3cret-pass"))
            )
            assert status == 200
            validate(el)
            media2 = [sv for sv in el if sv.findtext(f"{{{TDS}}}Namespace") == TR2]
            assert len(media2) == 1 and media2[0].findtext(f"{{{TDS}}}XAddr") == url
            caps = media2[0].find(f"{{{TDS}}}Capabilities/{{{TR2}}}Capabilities")
            assert caps is not None and caps.get("SnapshotUri") == "true"
            validate(caps)
        # Content (the schema says the shape, not the values).
        ops = read_ops()

        def profiles(op: str) -> list[tuple[str | None, list[str]]]:
            return [
                (p.get("token"), [etree.QName(c).localname for c in p.iterfind(f"{{{TR2}}}Configurations/*")])
                for p in answers[op]
            ]

        assert profiles(ops[1]) == [(t, []) for t in TOKENS]  # no Type: no configurations
        assert profiles(ops[2]) == [(t, ["VideoSource", "VideoEncoder"]) for t in TOKENS]
        assert profiles(ops[3]) == [("cam2_sub", ["VideoEncoder"])]
        assert profiles(ops[4]) == [(t, ["VideoSource"]) for t in TOKENS]
        assert [c.get("token") for c in answers[ops[6]]] == ["cam2"]
        assert [c.get("token") for c in answers[ops[7]]] == ["cam2"]
        assert [c.get("token") for c in answers[ops[9]]] == ["cam2_main"]
        assert answers[ops[12]].findtext(f".//{{{TT}}}Width") == "160"
        assert len(answers[ops[13]]) == len(TOKENS)  # no token: each encoder's options
        assert answers[ops[15]].findtext(f"{{{TR2}}}Uri") == "rtsp://127.0.0.1:8554/cam2/sub"
        assert answers[ops[16]].findtext(f"{{{TR2}}}Uri") == "rtsp://127.0.0.1:8554/cam2"
        assert all(len(answers[op]) == 0 for op in ops[18:])  # no audio, metadata or analytics


async def test_faults_auth_and_host_header() -> None:
    async with serving(onvif_cfg(USERS), feed=False) as (_app, _server, base):
        url = base + "/onvif/media2_service"
        cases = [
            (
                "<tr2:GetStreamUri><tr2:Protocol>RtspOverHttp</tr2:Protocol><tr2:ProfileToken>cam1_main"
                "</tr2:ProfileToken></tr2:GetStreamUri>",
                400,
                ["Sender", "InvalidArgVal", "InvalidStreamSetup"],
            ),
            (
                "<tr2:GetStreamUri><tr2:Protocol>RtspMulticast</tr2:Protocol><tr2:ProfileToken>cam1_main"
                "</tr2:ProfileToken></tr2:GetStreamUri>",
                400,
                ["Sender", "InvalidArgVal", "InvalidStreamSetup"],
            ),
            (
                "<tr2:GetStreamUri><tr2:Protocol>RTSP</tr2:Protocol><tr2:ProfileToken>nope</tr2:ProfileToken>"
                "</tr2:GetStreamUri>",
                400,
                ["Sender", "InvalidArgVal", "NoProfile"],
            ),
            (
                "<tr2:GetProfiles><tr2:Token>nope</tr2:Token></tr2:GetProfiles>",
                400,
                ["Sender", "InvalidArgVal", "NoProfile"],
            ),
            (
                "<tr2:GetVideoEncoderConfigurations><tr2:ConfigurationToken>nope</tr2:ConfigurationToken>"
                "</tr2:GetVideoEncoderConfigurations>",
                400,
                ["Sender", "InvalidArgVal", "NoConfig"],
            ),
            (
                "<tr2:GetVideoSourceConfigurations><tr2:ConfigurationToken>cam1_main</tr2:ConfigurationToken>"
                "</tr2:GetVideoSourceConfigurations>",
                400,
                ["Sender", "InvalidArgVal", "NoConfig"],
            ),
            ("<tr2:GetOSDs/>", 500, ["Receiver", "ActionNotSupported"]),
            (
                "<tr2:StartMulticastStreaming><tr2:ProfileToken>cam1_main</tr2:ProfileToken>"
                "</tr2:StartMulticastStreaming>",
                500,
                ["Receiver", "ActionNotSupported"],
            ),
        ]
        async with aiohttp.ClientSession() as s:
            for op, want_status, want_codes in cases:
                status, el = await post(s, url, soap(op, token_header("vms", "s3cret-pass")))
                assert (status, fault_codes(el)) == (want_status, want_codes), op
            # Without credentials: 401 NotAuthorized with a challenge; a wrong token: 400 NotAuthorized.
            status, el = await post(s, url, soap("<tr2:GetProfiles/>"))
            assert (status, fault_codes(el)) == (401, ["Sender", "NotAuthorized"])
            status, el = await post(s, url, soap("<tr2:GetProfiles/>", token_header("vms", "nope")))
            assert (status, fault_codes(el)) == (400, ["Sender", "NotAuthorized"])
            # The URIs carry the host the client reached us by.
            op = "<tr2:GetSnapshotUri><tr2:ProfileToken>cam1_sub</tr2:ProfileToken></tr2:GetSnapshotUri>"
            hdrs = {"Content-Type": "application/soap+xml", "Host": "proxy.example:8080"}
            status, el = await post(s, url, soap(op, token_header("vms", "s3cret-pass")), hdrs)
            assert status == 200
            assert el.findtext(f"{{{TR2}}}Uri") == "http://proxy.example:8080/api/cameras/cam1/snapshot.jpg"
            op = (
                "<tr2:GetStreamUri><tr2:Protocol>RTSP</tr2:Protocol><tr2:ProfileToken>cam1_sub</tr2:ProfileToken>"
                "</tr2:GetStreamUri>"
            )
            status, el = await post(s, url, soap(op, token_header("vms", "s3cret-pass")), hdrs)
            assert el.findtext(f"{{{TR2}}}Uri") == "rtsp://proxy.example:8554/cam1/sub"


async def test_set_calls_are_accepted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    set_vec = (
        "<tr2:SetVideoEncoderConfiguration><tr2:Configuration token='cam1_main' GovLength='10'>"
        "<tt:Name>x</tt:Name><tt:UseCount>1</tt:UseCount><tt:Encoding>H264</tt:Encoding><tt:Resolution>"
        "<tt:Width>1920</tt:Width><tt:Height>1080</tt:Height></tt:Resolution><tt:Quality>5</tt:Quality>"
        "</tr2:Configuration></tr2:SetVideoEncoderConfiguration>"
    )
    others = [
        "<tr2:CreateProfile><tr2:Name>cam2</tr2:Name></tr2:CreateProfile>",
        "<tr2:AddConfiguration><tr2:ProfileToken>cam2_main</tr2:ProfileToken><tr2:Configuration>"
        "<tr2:Type>VideoEncoder</tr2:Type><tr2:Token>cam2_main</tr2:Token></tr2:Configuration></tr2:AddConfiguration>",
        "<tr2:RemoveConfiguration><tr2:ProfileToken>cam2_main</tr2:ProfileToken><tr2:Configuration>"
        "<tr2:Type>VideoEncoder</tr2:Type></tr2:Configuration></tr2:RemoveConfiguration>",
        "<tr2:DeleteProfile><tr2:Token>cam2_sub</tr2:Token></tr2:DeleteProfile>",
        "<tr2:SetSynchronizationPoint><tr2:ProfileToken>cam2_main</tr2:ProfileToken></tr2:SetSynchronizationPoint>",
    ]
    async with serving(onvif_cfg(), feed=False) as (_app, _server, base):
        url = base + "/onvif/media2_service"
        caplog.set_level(logging.INFO, "streamproxy.serve.onvif.service")
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                status, el = await post(s, url, soap(set_vec))
                assert status == 200 and el.tag == f"{{{TR2}}}SetVideoEncoderConfigurationResponse"
                validate(el)
            for op in others:
                status, el = await post(s, url, soap(op))
                assert status == 200, (op, etree.tostring(el)[:300])
                validate(el)
                if "CreateProfile" in op:
                    assert el.findtext(f"{{{TR2}}}Token") == "cam2_main"
            # Nothing changed: the profiles are what they were.
            status, el = await post(
                s, url, soap("<tr2:GetProfiles><tr2:Type>All</tr2:Type></tr2:GetProfiles>")
            )
            assert [p.get("token") for p in el] == TOKENS
            assert (
                el.findtext(f".//{{{TR2}}}VideoEncoder/{{{TT}}}Resolution/{{{TT}}}Width") == "1280"
            )  # the slate
        lines = [r.getMessage() for r in caplog.records if "stream unchanged" in r.getMessage()]
        assert lines.count("cam1: ONVIF SetVideoEncoderConfiguration accepted, stream unchanged") == 1
        for op in ("CreateProfile", "AddConfiguration", "RemoveConfiguration", "DeleteProfile"):
            assert f"cam2: ONVIF {op} accepted, stream unchanged" in lines, (op, lines)


def test_the_schema_check_fails_a_malformed_answer() -> None:
    """The ver20 validator is not a rubber stamp: an encoder configuration without its required
    Encoding, or a stream URI answer without its Uri, fails it."""

    def vec(inner: str) -> Any:
        return etree.fromstring(
            f'<tr2:GetVideoEncoderConfigurationsResponse xmlns:tr2="{TR2}" xmlns:tt="{TT}">'
            f'<tr2:Configurations token="a"><tt:Name>a</tt:Name><tt:UseCount>1</tt:UseCount>{inner}'
            "</tr2:Configurations></tr2:GetVideoEncoderConfigurationsResponse>"
        )

    size = "<tt:Resolution><tt:Width>1</tt:Width><tt:Height>1</tt:Height></tt:Resolution><tt:Quality>0</tt:Quality>"
    validate(vec(f"<tt:Encoding>H264</tt:Encoding>{size}"))
    with pytest.raises(AssertionError, match="invalid"):
        validate(vec(size))
    with pytest.raises(AssertionError, match="invalid"):
        validate(etree.fromstring(f'<tr2:GetStreamUriResponse xmlns:tr2="{TR2}"/>'))
    with pytest.raises(AssertionError, match="invalid"):  # a ver10 element where ver20 wants its own
        validate(
            etree.fromstring(
                f'<tr2:GetSnapshotUriResponse xmlns:tr2="{TR2}" xmlns:tt="{TT}">'
                "<tt:Uri>http://x/</tt:Uri></tr2:GetSnapshotUriResponse>"
            )
        )
