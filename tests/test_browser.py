"""A real browser (Debian's headless Chromium) plays a camera from the web page over WHEP.

Chromium is driven over the Chrome DevTools Protocol on a loopback websocket (no browser download,
no Playwright): `--remote-debugging-port=0` and the port it writes to `DevToolsActivePort`.

* test_page_plays_synthetic_stream: the page against a hub fed by the project's encoder.
* test_browser_sees_no_face_end_to_end: the whole service (SimCamera with real faces -> App ->
  WebRTC -> Chromium); the frame the browser shows must have no detectable face while the camera's
  own frame has one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browserkit import Chromium, check_no_face_end_to_end, needs_chromium, play


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_page_plays_synthetic_stream() -> None:
    from webkit import HEIGHT, WIDTH, make_cfg, serving, wait_for

    async with serving(make_cfg()) as (app, server, base), Chromium() as browser:
        stats = await play(browser, base, "cam1", frames=30, timeout=30)
        assert stats["framesDecoded"] >= 30, stats
        assert (stats["width"], stats["height"]) == (WIDTH, HEIGHT)
        assert "H264" in (stats["codec"] or ""), stats
        assert app.hubs["cam1"].viewers("webrtc") == 1
        img = await browser.grab_frame_bgr()
        assert img is not None and img.shape[:2] == (HEIGHT, WIDTH)
        # The page's grid shows the viewer; the stop button ends the session on the server (DELETE).
        await browser.evaluate("document.getElementById('stop').click(), true")
        assert await wait_for(lambda: server.webrtc.count() == 0, 10)
        assert app.hubs["cam1"].viewers("webrtc") == 0


@needs_chromium
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_browser_sees_no_face_end_to_end(model_dir: Path) -> None:
    await check_no_face_end_to_end(model_dir, Chromium, play, "the browser")
