"""The Files page's HTTP API (serve/http/files.py) on a real server on 127.0.0.1, around a real FileJobs.

The jobs run a scripted batch here (what the HTTP side does with them: states, downloads, cancel,
thumbnails); the real engine through the page is tests/test_files_browser.py's.

* refusals: no credentials -> 401 and nothing listed; `..`, an absolute path, a link leading out of a
  root -> 403 and a log line; a cross-site POST -> 403; bad JSON or a bad key -> 400 naming it; an
  unknown job or file -> 404; the original without `confirm=1` -> 403.
* uploads: streamed past the 64 KiB body limit of every other route (which stays), a folder's paths
  kept; over files.max_upload_bytes or max_upload_files -> 413 naming the limit, a name with `..` ->
  403, a stalled upload -> 408, and nothing of a refused upload left on disk.
* a job: upload, START, progress to done, download (attachment / inline), the original only when
  confirmed (and logged with the user), the audit record and report, a thumbnail; cancel per file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from webkit import FakeApp

from streamproxy.anonymize import FileResult, Job
from streamproxy.config import AppConfig, parse_config
from streamproxy.files.manager import FileJobs
from streamproxy.serve.http.server import WebServer

USER, PASSWORD = "dpo", "s3cret-pass"
CREDS = {"Authorization": aiohttp.encode_basic_auth(USER, PASSWORD)}


class ScriptedBatch:
    """Stands in for anonymize.Batch: writes "anonymized:" + the input; a file named 'slow*' runs
    until cancelled or `gate` opens (bounded), showing a picture each step."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.running = threading.Event()

    def rerender(self, job: Job, review_dir: Path, edits: Any, **kw: Any) -> FileResult:
        raise AssertionError("not re-rendered in this test")

    def settings(self) -> dict[str, Any]:
        return {"quality": "balanced", "style": "blur", "shape": "ellipse"}

    def run(
        self,
        job: Job,
        *,
        cancel: threading.Event | None = None,
        on_frame: Callable[[int], None] | None = None,
        on_picture: Callable[[np.ndarray], None] | None = None,
        review_dir: Path | None = None,
    ) -> FileResult:
        if job.src.name.startswith("slow"):
            self.running.set()
            for i in range(300):  # bounded: 30 s
                if on_frame:
                    on_frame(i)
                if on_picture:
                    on_picture(np.full((36, 64, 3), 90, np.uint8))
                if (cancel is not None and cancel.is_set()) or self.gate.wait(0.1):
                    break
            if cancel is not None and cancel.is_set():
                return FileResult(job.src, None, False, error="cancelled", cancelled=True)
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        job.dst.write_bytes(b"anonymized:" + job.src.read_bytes())
        if on_picture:
            on_picture(np.full((36, 64, 3), 128, np.uint8))
        return FileResult(job.src, job.dst, True, faces=1, frames=1)


def _cfg(roots: dict[str, str], files: dict[str, Any], limits: dict[str, Any]) -> AppConfig:
    cfg = parse_config(
        {
            "cameras": [{"name": "cam1", "url": "rtsp://127.0.0.1:1/cam1"}],
            "server": {
                "host": "127.0.0.1",
                "ice_hosts": ["127.0.0.1"],
                "users": [{"username": USER, "password": PASSWORD}],
                "limits": limits,
            },
            "files": {"roots": roots, **files},
        }
    )
    return cfg.model_copy(update={"server": cfg.server.model_copy(update={"http_port": 0})})


@contextlib.asynccontextmanager
async def files_server(
    tmp_path: Path, files: dict[str, Any] | None = None, limits: dict[str, Any] | None = None
) -> AsyncIterator[tuple[WebServer, FileJobs, str, threading.Event]]:
    """The HTTP server with the Files page on a FileJobs (scripted batch); root "cctv" = tmp/in."""
    gate = threading.Event()
    cfg = _cfg({"cctv": str(tmp_path / "in")}, files or {}, limits or {})
    jobs = FileJobs(cfg.files, tmp_path / "data", batch_factory=lambda _e, _a, _u: ScriptedBatch(gate))
    await jobs.start()
    server = WebServer(FakeApp(cfg), files=jobs)
    await server.start()
    try:
        yield server, jobs, f"http://127.0.0.1:{server.port}", gate
    finally:
        gate.set()
        await server.stop()
        await jobs.stop()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.jpg").write_bytes(b"photo-a")
    (tmp_path / "in" / "sub" / "b.png").write_bytes(b"photo-b")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwd.jpg").write_bytes(b"secret")
    (tmp_path / "in" / "escape").symlink_to(tmp_path / "secret")
    return tmp_path


def _uploaded(jobs: FileJobs) -> list[Path]:
    """Every file under the uploads folder (temporary ones included)."""
    return sorted(p for p in jobs.uploads_dir.rglob("*") if p.is_file())


def _form(files: dict[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, data in files.items():
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    return form


async def _wait_job(http: aiohttp.ClientSession, base: str, job_id: int, cond: Callable[[dict[str, Any]], bool],
                    timeout: float = 20) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with http.get(f"{base}/api/files/jobs/{job_id}") as r:
            assert r.status == 200
            job = await r.json()
        if cond(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id}: condition not met in {timeout} s: {job}")


@pytest.mark.timeout(60)
async def test_refusals(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamproxy.serve.http.server")
    async with files_server(tree) as (server, jobs, base, _gate):
        async with aiohttp.ClientSession() as anon:
            # No credentials: 401 everywhere, and nothing of the folders in the answer.
            for method, path in [
                ("GET", "/files"),
                ("GET", "/api/files/roots"),
                ("GET", "/api/files/list?root=cctv&path="),
                ("GET", "/api/files/jobs"),
                ("POST", "/api/files/jobs"),
                ("POST", "/api/files/uploads"),
                ("GET", "/files/jobs/1/report"),
            ]:
                async with anon.request(method, base + path) as r:
                    text = await r.text()
                    assert r.status == 401, (path, r.status)
                    assert "cctv" not in text and "a.jpg" not in text and str(tree) not in text
            async with anon.post(f"{base}/api/files/uploads", data=_form({"x.jpg": b"x"})) as r:
                assert r.status == 401
            assert _uploaded(jobs) == []

        async with aiohttp.ClientSession(headers=CREDS) as http:
            async with http.get(f"{base}/api/files/roots") as r:
                assert r.status == 200 and await r.json() == [{"name": "cctv"}]
                assert str(tree) not in await r.text()  # a root by its name, never its path
            async with http.get(f"{base}/api/files/list", params={"root": "cctv", "path": ""}) as r:
                listing = await r.json()
            assert [(e["name"], e["kind"]) for e in listing["entries"]] == [
                ("sub", "dir"),
                ("a.jpg", "image"),
            ]

            # Paths leading out of the root: 403, each logged by the server's refusal log.
            before = server.refused.count
            for path in ("../secret", "sub/../../secret", "/etc", "escape", "escape/passwd.jpg"):
                async with http.get(f"{base}/api/files/list", params={"root": "cctv", "path": path}) as r:
                    assert r.status == 403, (path, r.status, await r.text())
                    assert str(tree / "secret") not in await r.text()  # where a link leads is not told
            for inputs, output in [
                ([{"root": "cctv", "path": "../secret/passwd.jpg"}], None),
                ([{"root": "cctv", "path": "/etc/passwd"}], None),
                ([{"root": "cctv", "path": "escape/passwd.jpg"}], None),
                ([{"root": "cctv", "path": "a.jpg"}], {"root": "cctv", "path": "../out"}),
                ([{"root": "cctv", "path": "a.jpg"}], {"root": "cctv", "path": "escape"}),
                ([{"root": "elsewhere", "path": "a.jpg"}], None),
            ]:
                async with http.post(
                    f"{base}/api/files/jobs", json={"inputs": inputs, "output": output}
                ) as r:
                    assert r.status == 403, (inputs, output, r.status, await r.text())
            assert server.refused.count - before == 11
            assert any("403 for GET /api/files/list" in m for m in caplog.messages), caplog.messages
            assert await http.get(f"{base}/api/files/jobs") is not None
            async with http.get(f"{base}/api/files/jobs") as r:
                assert await r.json() == []  # nothing was queued by any of them
            assert not (tree / "out").exists() and sorted(p.name for p in (tree / "secret").iterdir()) == [
                "passwd.jpg"
            ]

            # Bad requests: 400, naming what is wrong.
            bad: list[tuple[Any, str]] = [
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "colour": "red"}, "colour"),
                ({"inputs": []}, "inputs"),
                ({"inputs": [{"root": "cctv", "path": 3}]}, "inputs[0]"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "quality": "ultra"}, "quality"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "style": "paint"}, "style"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "keep_audio": "yes"}, "keep_audio"),
                ({"inputs": [{"root": "cctv", "path": "a.jpg"}], "objects": ["cats"]}, "objects"),
                ({"inputs": [{"root": "cctv", "path": "nope.jpg"}]}, "inputs[0]"),
                ([1, 2], "JSON object"),
            ]
            for body, word in bad:
                async with http.post(f"{base}/api/files/jobs", json=body) as r:
                    text = await r.text()
                    assert r.status == 400 and word in text, (body, r.status, text)
            async with http.post(
                f"{base}/api/files/jobs", data=b"{not json", headers={"Content-Type": "application/json"}
            ) as r:
                assert r.status == 400 and "JSON" in await r.text()
            async with http.post(f"{base}/api/files/jobs", data={"inputs": "x"}) as r:
                assert r.status == 400 and "JSON" in await r.text()  # a plain form is not a job
            async with http.get(f"{base}/api/files/list", params={"path": ""}) as r:
                assert r.status == 400 and "root" in await r.text()
            for since in ("abc", "-1", "1.5", ""):
                async with http.get(f"{base}/api/files/jobs/1", params={"since": since}) as r:
                    assert r.status == 400 and "since" in await r.text(), (since, r.status)

            # Another site's page posting with the browser's credentials: refused.
            async with http.post(
                f"{base}/api/files/jobs",
                json={"inputs": [{"root": "cctv", "path": "a.jpg"}]},
                headers={"Origin": "http://evil.example"},
            ) as r:
                assert r.status == 403 and "cross-site" in await r.text()

            # Unknown jobs and files: 404.
            for method, path in [
                ("GET", "/api/files/jobs/999"),
                ("GET", "/api/files/jobs/abc"),
                ("POST", "/api/files/jobs/999/cancel"),
                ("POST", "/api/files/jobs/999/files/0/cancel"),
                ("GET", "/api/files/jobs/999/files/0/output"),
                ("GET", "/api/files/jobs/999/files/0/input?confirm=1"),
                ("GET", "/api/files/jobs/999/files/0/thumb.jpg"),
                ("GET", "/api/files/jobs/999/audit.json"),
                ("GET", "/files/jobs/999/report"),
            ]:
                async with http.request(method, base + path) as r:
                    assert r.status == 404, (path, r.status)

            # A job: its original only when asked with confirm=1; a file it does not have: 404.
            async with http.post(
                f"{base}/api/files/jobs", json={"inputs": [{"root": "cctv", "path": "a.jpg"}]}
            ) as r:
                assert r.status == 201, await r.text()
                job_id = (await r.json())["id"]
            job = await _wait_job(http, base, job_id, lambda j: j["state"] == "done")
            async with http.get(f"{base}/api/files/jobs/{job_id}/files/0/input") as r:
                assert r.status == 403 and "ORIGINAL" in await r.text()
            async with http.get(f"{base}/api/files/jobs/{job_id}/files/7/output") as r:
                assert r.status == 404
            assert [f["state"] for f in job["files"]] == ["done"]


@pytest.mark.timeout(60)
async def test_uploads_streamed_within_the_files_limits(tree: Path) -> None:
    limits = {"request_timeout_s": 1.0}
    files = {"max_upload_bytes": 256 * 1024, "max_upload_files": 3}
    async with (
        files_server(tree, files, limits) as (server, jobs, base, _gate),
        aiohttp.ClientSession(headers=CREDS) as http,
    ):
        # 200 KB: past the 64 KiB every other body is held to, within files.max_upload_bytes.
        big = bytes(range(256)) * 800
        assert len(big) > server.cfg.limits.max_body_bytes
        async with http.post(
            f"{base}/api/files/uploads", data=_form({"trip/a.jpg": big, "trip/day 2/b.mp4": b"v"})
        ) as r:
            assert r.status == 201, await r.text()
            up = await r.json()
        folder = jobs.uploads_dir / up["upload"]
        assert up["files"] == 2
        assert (folder / "trip" / "a.jpg").read_bytes() == big  # the folder's paths kept
        assert (folder / "trip" / "day 2" / "b.mp4").read_bytes() == b"v"
        kept = _uploaded(jobs)
        # Every other route keeps the guard's body limit.
        async with http.post(
            f"{base}/api/files/jobs", data=b"x" * (100 * 1024), headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 413

        # Refused uploads leave nothing on disk: over one file's limit, too many files, a '..' name.
        refusals = [
            ({"ok.jpg": b"1", "huge.jpg": b"h" * (300 * 1024)}, 413, "files.max_upload_bytes"),
            ({f"{i}.jpg": b"1" for i in range(4)}, 413, "files.max_upload_files"),
            ({"../../escape.jpg": b"1"}, 403, ".."),
            ({"/etc/cron.d/x": b"1"}, 403, "absolute"),
        ]
        for parts, status, word in refusals:
            async with aiohttp.ClientSession(headers=CREDS) as one:  # the refusal closes the connection
                async with one.post(f"{base}/api/files/uploads", data=_form(parts)) as r:
                    text = await r.text()
                    assert (r.status, word in text) == (status, True), (list(parts), r.status, text)
            assert _uploaded(jobs) == kept, list(parts)
        assert not (tree / "escape.jpg").exists()
        # A body announced past the total limit is refused before a byte of it is read.
        async with aiohttp.ClientSession(headers=CREDS) as one:
            async with one.post(f"{base}/api/files/uploads", data=b"x" * 2048, headers={
                "Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(jobs.cfg.max_upload_total_bytes + 2 * 1024 * 1024),
            }) as r:  # fmt: skip
                assert r.status == 413 and "files.max_upload_total_bytes" in await r.text()
        async with http.post(
            f"{base}/api/files/uploads", data=b"plain", headers={"Content-Type": "text/plain"}
        ) as r:
            assert r.status == 400 and "multipart" in await r.text()

        # A stalled upload (half a file, then silence) is dropped after request_timeout_s: 408, nothing kept.
        boundary = "zzbound"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="stall.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode() + b"j" * 5000
        creds = CREDS["Authorization"]
        request = (
            f"POST /api/files/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {creds}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
        ).encode() + head
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"stalled" in answer
        assert _uploaded(jobs) == kept


@pytest.mark.timeout(60)
async def test_a_job_from_upload_to_download(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamproxy.serve.http.files")
    async with (
        files_server(tree) as (_server, _jobs, base, gate),
        aiohttp.ClientSession(headers=CREDS) as http,
    ):
        async with http.post(
            f"{base}/api/files/uploads", data=_form({"one.jpg": b"111", "slow.mp4": b"222"})
        ) as r:
            up = (await r.json())["upload"]
        async with http.post(
            f"{base}/api/files/jobs",
            json={"inputs": [{"upload": up}], "output": None, "quality": "fast", "style": "pixelate",
                  "shape": "box", "objects": ["faces"], "keep_audio": False},
        ) as r:  # fmt: skip
            assert r.status == 201, await r.text()
            job_id = (await r.json())["id"]
        # The slow video runs: progress and a thumbnail while it does.
        job = await _wait_job(
            http, base, job_id, lambda j: any(f["state"] == "running" and f["done"] > 2 for f in j["files"])
        )
        slow = next(f for f in job["files"] if f["name"].endswith("slow.mp4"))
        assert slow["total"] >= 1 and slow["fps"] is not None
        # What the page polls: the files changed since its last answer, and the running one.
        async with http.get(f"{base}/api/files/jobs/{job_id}", params={"since": str(job["seq"])}) as r:
            changed = await r.json()
        assert changed["since"] == job["seq"] and changed["files_total"] == 2
        assert [f["name"] for f in changed["files"]] == [slow["name"]], changed
        async with http.get(f"{base}/api/files/jobs/{job_id}/files/{slow['n']}/thumb.jpg") as r:
            assert r.status == 200 and r.content_type == "image/jpeg"
            assert (await r.read())[:2] == b"\xff\xd8"
        listed = await (await http.get(f"{base}/api/files/jobs")).json()
        assert [j["id"] for j in listed] == [job_id] and listed[0]["state"] == "running"
        # Cancel the running file: it ends cancelled, without output; the job finishes.
        async with http.post(f"{base}/api/files/jobs/{job_id}/files/{slow['n']}/cancel") as r:
            assert r.status == 200 and (await r.json())["cancelled"] is True
        job = await _wait_job(http, base, job_id, lambda j: j["state"] in ("done", "cancelled"))
        states = {f["name"].rsplit("/", 1)[-1]: f["state"] for f in job["files"]}
        assert states == {"one.jpg": "done", "slow.mp4": "cancelled"}, job
        async with http.get(f"{base}/api/files/jobs/{job_id}/files/{slow['n']}/output") as r:
            assert r.status == 404
        one = next(f for f in job["files"] if f["name"].endswith("one.jpg"))
        out = f"{base}/api/files/jobs/{job_id}/files/{one['n']}/output"
        async with http.get(out) as r:
            assert r.status == 200 and await r.read() == b"anonymized:111"
            assert (
                r.headers["Content-Disposition"].startswith("attachment;")
                and "one.jpg" in r.headers["Content-Disposition"]
            )
            assert r.content_type == "image/jpeg" and r.headers["Cache-Control"] == "no-store"
        async with http.get(out, params={"inline": "1"}) as r:
            assert r.status == 200 and r.headers["Content-Disposition"].startswith("inline;")
        # The original, confirmed: served, and the log says who saw it.
        async with http.get(
            f"{base}/api/files/jobs/{job_id}/files/{one['n']}/input", params={"confirm": "1"}
        ) as r:
            assert r.status == 200 and await r.read() == b"111"
        assert any("opened the ORIGINAL" in m and USER in m for m in caplog.messages), caplog.messages
        # The record: JSON, and the printable report that loads nothing from anywhere.
        async with http.get(f"{base}/api/files/jobs/{job_id}/audit.json") as r:
            assert r.status == 200
            record = await r.json()
        assert isinstance(record, dict) and record
        async with http.get(f"{base}/files/jobs/{job_id}/report") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert "<html" in (await r.text()).lower()
        # The page itself and its assets.
        async with http.get(f"{base}/files") as r:
            page = await r.text()
            assert (
                r.status == 200
                and "/static/files.js" in page
                and "http://" not in page
                and "https://" not in page
            )
        async with http.get(f"{base}/static/files.js") as r:
            js = await r.text()
            assert r.status == 200 and "https://" not in js and "http://" not in js
        gate.set()


def test_no_files_page_without_a_file_jobs() -> None:
    """The live proxy without files.enabled: no Files route, and the upload body stays guarded."""
    from webkit import make_cfg

    server = WebServer(FakeApp(make_cfg()))
    paths = {r.resource.canonical for r in server.web_app.router.routes() if r.resource is not None}
    assert not any("files" in p for p in paths)
