"""The Files page as a tab of the live service (`streamproxy run`):

* with a usable data directory the page and its API answer beside the cameras, behind the same users;
* with a data directory that cannot be used (a file where the folder should be) the cameras still
  run, the Files page is off (404) and the log says which folder and what to set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streamproxy.app import App
from streamproxy.config import AppConfig, parse_config


def _config(model_dir: Path, data_dir: Path, roots: dict[str, str]) -> AppConfig:
    return parse_config(
        {
            "cameras": [{"name": "lobby", "url": "rtsp://127.0.0.1:9/lobby"}],  # nothing listens: offline
            "server": {"host": "127.0.0.1", "rtsp_port": 0, "http_port": 0},
            "engine": {"detector": {"input_width": 640, "model_dir": str(model_dir)}},
            "files": {"roots": roots},
            "data_dir": str(data_dir),
        }
    )


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as err:
        return err.code, err.read()


async def _serving(app: App) -> tuple[str, asyncio.Task[None]]:
    task = asyncio.create_task(app.serve())
    await asyncio.wait_for(app.ready_event.wait(), 60)
    assert app.web is not None
    return f"http://127.0.0.1:{app.web.port}", task


async def test_the_files_tab_of_a_live_service(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "exports").mkdir()
    app = App(_config(model_dir, tmp_path / "state", {"exports": str(tmp_path / "exports")}))
    base, task = await _serving(app)
    try:
        status, roots = await asyncio.to_thread(_get, base + "/api/files/roots")
        assert status == 200 and "exports" in json.dumps(roots) and str(tmp_path) not in json.dumps(roots)
        status, page = await asyncio.to_thread(_get, base + "/files")
        assert status == 200 and b"Files" in page
        assert (tmp_path / "state" / "files" / "jobs.sqlite3").exists()
        status, cameras = await asyncio.to_thread(_get, base + "/api/cameras")
        assert status == 200 and [c["name"] for c in cameras] == ["lobby"]
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 60)


async def test_an_unusable_data_dir_turns_the_files_page_off_not_the_cameras(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the data folder should be")
    app = App(_config(model_dir, blocker, {}))
    with caplog.at_level(logging.ERROR, logger="streamproxy.app"):
        base, task = await _serving(app)
    try:
        assert app.files is None and len(app.cameras) == 1
        status, _ = await asyncio.to_thread(_get, base + "/api/files/roots")
        assert status == 404
        status, cameras = await asyncio.to_thread(_get, base + "/api/cameras")
        assert status == 200 and [c["name"] for c in cameras] == ["lobby"]
        assert any(
            "Files page is off" in r.getMessage() and str(blocker) in r.getMessage() for r in caplog.records
        )
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 60)
