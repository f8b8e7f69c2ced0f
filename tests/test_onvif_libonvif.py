"""ONVIF with a real C client (issue 20, item 2): tests/onvif_c/addcam.c, built here against Debian's
libonvif 1.4.4 (libonvif-dev), adds the device by its address on loopback with users set.

test_onvif_clients.py emulates libonvif's bytes in Python; this runs libonvif's own code: its
WS-Security tokens (rand() re-seeded with the second on every call, Created with milliseconds), its
HTTP (`Host` without the port, `Connection: Close`, the reply read by its Content-Length) and its
XPath reading of the answers.

* 20 of 20 add-device sequences succeed (GetSystemDateAndTime, GetCapabilities, GetDeviceInformation,
  GetProfiles, GetProfile, GetStreamUri, GetSnapshotUri), with the stream and snapshot URIs of the
  camera at the address and port the client reached; also on a camera's own device.
* A wrong password: libonvif reports the fault's subcode, NotAuthorized, at the first protected call.
* libonvif's own token (its GetSnapshotUri request, byte for byte) replayed from another address is
  refused. test_onvif_clients.py's test_a_token_is_used_up_on_every_device_and_from_every_address
  covers the other cases (another device, a PRE_AUTH operation, later than the grace).

No multicast: onvif-util (libonvif's tool) discovers devices only by WS-Discovery, so addcam fills
libonvif's OnvifData from the address instead. Skipped, with the reason, where gcc, libonvif-dev or
libxml2's headers are missing (scripts/install-system-deps.sh --test installs them).
"""

from __future__ import annotations

import asyncio
import glob
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from onvifkit import SOAP12, fault_codes
from webkit import make_cfg, serving, wait_for

from streamproxy.config import AppConfig, OnvifConfig

etree = pytest.importorskip("lxml.etree")

pytestmark = pytest.mark.timeout(180)

SOURCE = Path(__file__).parent / "onvif_c" / "addcam.c"
USER, PASSWORD = "vms", "s3cret-pass"
RUNS = 20
RUN_TIMEOUT_S = 20.0  # one add-device sequence; libonvif's recv loop could spin on a short reply


def onvif_cfg(own_port: str | None = None) -> AppConfig:
    """Two cameras, ONVIF on, one user; `own_port`: that camera is also a device of its own."""
    cfg = make_cfg(users=[{"username": USER, "password": PASSWORD}], cameras=("cam1", "cam2"))
    cams = [c.model_copy(update={"onvif_port": 0}) if c.name == own_port else c for c in cfg.cameras]
    return cfg.model_copy(update={"onvif": OnvifConfig.model_validate({"enabled": True}), "cameras": cams})


@pytest.fixture(scope="module")
def addcam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client, compiled once per run into a temporary folder."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (scripts/install-system-deps.sh --test installs it)")
    if not glob.glob("/usr/include/**/onvif.h", recursive=True):
        pytest.skip("libonvif-dev is not installed (scripts/install-system-deps.sh --test installs it)")
    pkg_config = shutil.which("pkg-config")
    if pkg_config is None:
        pytest.skip("pkg-config is not installed (scripts/install-system-deps.sh --test installs it)")
    # libonvif's functions that addcam calls beyond onvif.h take libxml2's types.
    xml = subprocess.run([pkg_config, "--cflags", "--libs", "libxml-2.0"], capture_output=True, text=True)
    if xml.returncode != 0:
        pytest.skip("libxml2-dev is not installed (scripts/install-system-deps.sh --test installs it)")
    exe = tmp_path_factory.mktemp("onvif_c") / "addcam"
    build = subprocess.run(
        [
            gcc,
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-o",
            str(exe),
            str(SOURCE),
            *xml.stdout.split(),
            "-lonvif",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr  # libonvif is there: a build failure is ours
    return exe


async def run_addcam(
    exe: Path, url: str, password: str = PASSWORD, request: Path | None = None
) -> dict[str, Any]:
    """One add-device sequence; its JSON line plus the exit status ("rc")."""
    args = [str(exe), url, USER, password, *([str(request)] if request else [])]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"addcam did not finish in {RUN_TIMEOUT_S} s") from None
    lines = out.decode().splitlines()
    assert len(lines) == 1, (out, err)
    result: dict[str, Any] = json.loads(lines[0])
    result["rc"] = proc.returncode
    return result


async def send_raw(port: int, request: bytes, local: str) -> tuple[int, Any]:
    """The request's bytes as they are, from `local`, on a connection of their own; (status, Body's child)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    root = etree.fromstring(payload)
    return status, root.find(f"{{{SOAP12}}}Body")[0]


async def test_libonvif_adds_the_device_20_of_20(addcam: Path) -> None:
    async with serving(onvif_cfg(own_port="cam2")) as (app, server, base):
        assert await wait_for(lambda: all(h.codec is not None for h in app.hubs.values()), 20)
        used = server.onvif.auth.used if server.onvif else None
        assert used is not None
        refused0 = used.refused
        rtsp = f"rtsp://127.0.0.1:{app.cfg.server.rtsp_port}"
        results = [await run_addcam(addcam, f"{base}/onvif/device_service") for _ in range(RUNS)]
        failed = [r for r in results if r["rc"] != 0 or not r["ok"]]
        assert not failed, failed[:3]
        assert len(results) == RUNS
        for r in results:
            # Media's XAddr, as libonvif keeps it: the path it posts to (on the device's host and port).
            assert r["media_service"] == "POST /onvif/media_service HTTP/1.1\r\n"
            assert r["serial_number"] == app.cfg.onvif.device.serial
            assert (r["profile_token"], r["encoder_token"]) == ("cam1_main", "cam1_main")
            assert r["width"] > 0 and r["height"] > 0
            assert r["stream_uri"] == f"{rtsp}/cam1"
            # libonvif sends `Host: 127.0.0.1` without the port: the URI carries the port it came in on.
            assert r["snapshot_uri"] == f"{base}/api/cameras/cam1/snapshot.jpg"
            assert abs(r["time_offset"]) <= 2  # the same clock: at most the seconds' truncation
        assert used.refused == refused0  # none of libonvif's tokens taken for a replay
        # The camera's own device (a VMS that takes single-channel devices only).
        own = f"http://127.0.0.1:{app.devices.ports['cam2']}"
        r = await run_addcam(addcam, f"{own}/onvif/device_service")
        assert r["rc"] == 0 and r["ok"], r
        assert r["serial_number"] == app.cfg.onvif.device.serial + "-cam2"
        assert r["profile_token"] == "cam2_main"
        assert (r["stream_uri"], r["snapshot_uri"]) == (
            f"{rtsp}/cam2",
            f"{own}/api/cameras/cam2/snapshot.jpg",
        )


async def test_libonvif_with_a_wrong_password_is_told_not_authorized(addcam: Path) -> None:
    async with serving(onvif_cfg(), feed=False) as (_app, _server, base):
        r = await run_addcam(addcam, f"{base}/onvif/device_service", password="wrong")
        # The clock and the capabilities answer anyone (PRE_AUTH); the device information does not.
        assert r["rc"] == 1 and not r["ok"]
        assert r["media_service"] == "POST /onvif/media_service HTTP/1.1\r\n"
        assert (r["step"], r["error"].split(":")[-1]) == ("GetDeviceInformation", "NotAuthorized"), r


async def test_libonvifs_token_replayed_from_another_address_is_refused(addcam: Path, tmp_path: Path) -> None:
    async with serving(onvif_cfg(), feed=False) as (_app, server, base):
        request = tmp_path / "snapshot-request"
        r = await run_addcam(addcam, f"{base}/onvif/device_service", request=request)
        assert r["rc"] == 0 and r["ok"], r
        captured = request.read_bytes()
        assert b"<wsse:Nonce" in captured and b"GetSnapshotUri" in captured
        status, el = await send_raw(server.port, captured, local="127.0.0.2")
        assert status == 400 and fault_codes(el) == ["Sender", "NotAuthorized"]
        # The same bytes from the address that first sent them, within the grace: libonvif's repeat
        # (two calls in one millisecond make one token), accepted; the address is what refused it above.
        status, el = await send_raw(server.port, captured, local="127.0.0.1")
        assert status == 200 and etree.QName(el).localname == "GetSnapshotUriResponse", etree.tostring(el)[
            :300
        ]
