"""A real Firefox (Debian's firefox-esr, headless) plays a camera from the web page over WHEP.

Firefox is driven over WebDriver BiDi, built into Firefox (`--remote-debugging-port=0`; it prints
the websocket address on stderr), with aiohttp's websocket client: no geckodriver, no Selenium.

H.264 in Firefox's WebRTC: by default Firefox offers H.264 only when the Cisco OpenH264 GMP plugin
is installed, which Firefox downloads at first run (impossible offline, and CI must not reach out).
Its other path is the "hardware" H.264 path (`media.webrtc.hw.h264.enabled`), which decodes through
Firefox's platform decoders (on Linux: the system FFmpeg) and is gated on the graphics feature
status of WEBRTC_HW_ACCELERATION_H264, which a headless machine without a GPU does not grant. The
profile below sets that status to OK (`gfx.blacklist.webrtc.hw.acceleration.h264` = 1, the pref the
graphics blocklist itself writes) so the offer carries H.264 and decoding uses the system FFmpeg.
The page and the proxy are unchanged: this is the browser's own decoder, not a shim.

* test_firefox_plays_synthetic_stream: the page against a hub fed by the project's encoder.
* test_firefox_sees_no_face_end_to_end: the whole service (SimCamera with real faces -> App ->
  WebRTC -> Firefox); the frame Firefox shows must have no detectable face while the camera's own
  frame has one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browserkit import BrowserDriver

FIREFOX = os.environ.get("STREAMPROXY_FIREFOX", shutil.which("firefox-esr") or "/usr/bin/firefox-esr")

needs_firefox = pytest.mark.skipif(
    not (os.path.exists(FIREFOX) and os.access(FIREFOX, os.X_OK)),
    reason=f"{FIREFOX} not installed (apt-get install firefox-esr)",
)

# A closed network: Firefox must contact nothing (no updates, telemetry, safe browsing, captive
# portal probe, remote settings, GMP plugin downloads), and WebRTC must work on loopback.
NOWHERE = "http://127.0.0.1:9/"
PREFS: dict[str, bool | int | str] = {
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.newtabpage.enabled": False,
    "browser.aboutwelcome.enabled": False,
    "browser.region.network.url": "",
    "browser.search.update": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.trr.mode": 5,  # no DNS over HTTPS
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "services.settings.server": NOWHERE,
    "media.gmp-manager.url": NOWHERE,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "media.gmp-gmpopenh264.enabled": False,  # not installed; the platform decoder plays H.264
    # H.264 through the platform decoder (system FFmpeg); see the module docstring.
    "media.webrtc.hw.h264.enabled": True,
    "gfx.blacklist.webrtc.hw.acceleration.h264": 1,  # nsIGfxInfo::FEATURE_STATUS_OK
    "media.navigator.mediadatadecoder_h264_enabled": True,
    # WebRTC on loopback, host candidates with their real address, no permission prompts.
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.no_host": False,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
}


class BidiError(RuntimeError):
    pass


class Firefox(BrowserDriver):
    """Headless Firefox with one tab, controlled over WebDriver BiDi. Use `async with Firefox() as b`."""

    _error = BidiError
    _protocol = "WebDriver BiDi connection"
    _transient = (BidiError,)  # evaluating while the page navigates
    _exit_wait_s = 10.0

    def __init__(self, binary: str = FIREFOX, start_timeout_s: float = 40.0) -> None:
        super().__init__(binary, start_timeout_s)
        self._context = ""
        self.version = ""

    async def __aenter__(self) -> Firefox:
        self._dir = tempfile.mkdtemp(prefix="streamproxy-firefox-")
        self._proc = await asyncio.to_thread(self._spawn)
        try:
            url = await self._bidi_url()
            self._http = aiohttp.ClientSession()
            self._ws = await self._http.ws_connect(f"{url}/session", max_msg_size=0)
            self._reader = asyncio.create_task(self._read())
            caps = await self.send("session.new", {"capabilities": {}})
            self.version = str(caps.get("capabilities", {}).get("browserVersion", ""))
            tree = await self.send("browsingContext.getTree", {})
            self._context = tree["contexts"][0]["context"]
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        profile = Path(self._dir) / "profile"
        profile.mkdir()
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
        )
        env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"}
        env.pop("DISPLAY", None)  # headless, whatever the caller's session has
        with open(Path(self._dir) / "stderr.log", "wb") as err:  # the child keeps its own copy
            return subprocess.Popen(
                [
                    self.binary,
                    "--headless",
                    "--no-remote",
                    "--profile",
                    str(profile),
                    "--remote-debugging-port=0",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    async def _bidi_url(self) -> str:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BidiError(f"Firefox exited ({self._proc.returncode}): {self.stderr_tail()}")
            m = re.search(r"WebDriver BiDi listening on (ws://127\.0\.0\.1:\d+)", self.stderr_tail(100_000))
            if m:
                return m.group(1)
            await asyncio.sleep(0.1)
        raise BidiError(f"Firefox did not open its WebDriver BiDi port: {self.stderr_tail()}")

    async def send(self, method: str, params: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        data = await self._exchange(method, params, timeout)
        if data.get("type") == "error":
            raise BidiError(f"{method}: {data.get('error')}: {data.get('message')}")
        result: dict[str, Any] = data.get("result", {})
        return result

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """Run JS in the page (promises are awaited) and return its value, passed through JSON."""
        res = await self.send(
            "script.evaluate",
            {
                # JSON in a string: BiDi's own serialisation of objects is a tree of typed nodes.
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self._context},
                "awaitPromise": True,
            },
            timeout=timeout,
        )
        if res.get("type") == "exception":
            raise BidiError(f"JS error: {res.get('exceptionDetails', {}).get('text')}")
        value = res.get("result", {}).get("value")
        return None if value is None else json.loads(value)

    async def goto(self, url: str, ready_expression: str = "true", timeout: float = 20.0) -> None:
        await self.send(
            "browsingContext.navigate",
            {"context": self._context, "url": url, "wait": "complete"},
            timeout=timeout,
        )
        if not await self.wait_js(f"!!({ready_expression})", timeout):
            raise BidiError(f"page {url} did not become ready")

    async def _close_browser(self) -> None:
        await self.send("browser.close", {}, timeout=5)


@needs_firefox
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_firefox_plays_synthetic_stream() -> None:
    from browserkit import play
    from webkit import HEIGHT, WIDTH, make_cfg, serving, wait_for

    async with serving(make_cfg()) as (app, server, base), Firefox() as browser:
        stats = await play(browser, base, "cam1", frames=30, timeout=40)
        assert stats["framesDecoded"] >= 30, (browser.version, stats)
        assert (stats["width"], stats["height"]) == (WIDTH, HEIGHT)
        assert "H264" in (stats["codec"] or ""), stats
        assert app.hubs["cam1"].viewers("webrtc") == 1
        img = await browser.grab_frame_bgr()
        assert img is not None and img.shape[:2] == (HEIGHT, WIDTH)
        await browser.evaluate("(document.getElementById('stop').click(), true)")
        assert await wait_for(lambda: server.webrtc.count() == 0, 10)


@needs_firefox
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_firefox_sees_no_face_end_to_end(model_dir: Path) -> None:
    from browserkit import check_no_face_end_to_end, play

    def h264(stats: dict[str, Any]) -> None:
        assert "H264" in (stats["codec"] or ""), stats

    await check_no_face_end_to_end(model_dir, Firefox, play, "Firefox", check_stats=h264)
