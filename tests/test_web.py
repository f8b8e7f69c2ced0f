"""HTTP API, health, readiness, metrics, the page and its auth, on a real server on 127.0.0.1:0."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from test_webrtc import make_cfg, serving


@pytest.mark.timeout(30)
async def test_page_api_health_metrics() -> None:
    async with serving(make_cfg(cameras=("cam1", "cam2")), feed=False) as (app, server, base):
        assert server.port > 0
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"{base}/")
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            # Everything the page needs is served locally (closed networks: no CDN).
            assert "/static/app.js" in page and "/static/style.css" in page
            assert "http://" not in page and "https://" not in page
            for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
                r = await http.get(f"{base}/static/{name}")
                assert r.status == 200 and r.content_type == ctype
                body = await r.text()
                assert "https://" not in body and "http://" not in body
            assert (await http.get(f"{base}/static/nope.js")).status == 404
            assert (await http.get(f"{base}/static/..%2fweb.py")).status == 404

            r = await http.get(f"{base}/api/cameras")
            assert r.status == 200
            cams = await r.json()
            assert [c["name"] for c in cams] == ["cam1", "cam2"]
            assert cams[0]["state"] == "live" and cams[0]["whep"] == "/cam1/whep"
            assert "rtsp://" not in await r.text()  # camera URLs (maybe with credentials) never leave

            r = await http.get(f"{base}/healthz")
            assert r.status == 200 and (await r.text()).strip() == "ok"
            r = await http.get(f"{base}/readyz")
            assert r.status == 200
            app.ready = False
            r = await http.get(f"{base}/readyz")
            assert r.status == 503 and "not ready" in await r.text()

            r = await http.get(f"{base}/metrics")
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            assert "# TYPE" in await r.text()


@pytest.mark.timeout(30)
async def test_auth_guards_page_api_and_whep_but_not_probes() -> None:
    cfg = make_cfg(users=[{"username": "alice", "password": "s3cret"}])
    async with serving(cfg, feed=False) as (_app, _server, base):
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/static/app.js", "/api/cameras"):
                r = await http.get(f"{base}{path}")
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"] == 'Basic realm="streamproxy", charset="UTF-8"'
                r = await http.get(f"{base}{path}", auth=aiohttp.BasicAuth("bob", "s3cret"))
                assert r.status == 401, path
                r = await http.get(f"{base}{path}", headers={"Authorization": "Basic !!notbase64"})
                assert r.status == 401, path
                r = await http.get(f"{base}{path}", auth=aiohttp.BasicAuth("alice", "s3cret"))
                assert r.status == 200, path
            for path in ("/healthz", "/readyz", "/metrics"):
                assert (await http.get(f"{base}{path}")).status == 200, path
            # CORS preflight carries no credentials by design.
            assert (await http.options(f"{base}/cam1/whep")).status == 204


@pytest.mark.timeout(30)
async def test_stop_is_idempotent_and_frees_the_port() -> None:
    async with serving(make_cfg(), feed=False) as (_app, server, base):
        port = server.port
        assert port > 0 and base.endswith(f":{port}")
    await server.stop()  # a second stop: no error
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{base}/healthz", timeout=aiohttp.ClientTimeout(total=2))
    # Freed: another server can listen on the port now (the bind fails while anything still listens there).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's own listener does
        s.bind(("127.0.0.1", port))
        s.listen()
