"""HTTP: the Files page and its API (anonymize photos and videos from the browser; files/manager.py runs them).

Routes (all behind `server.users`, like the camera page)
  GET  /files                                  the page (web/files.html + files.js)
  GET  /api/files/roots                        [{name}]: the configured folders, by name (never their path)
  GET  /api/files/list?root=R&path=P           a folder's entries under a root
  POST /api/files/uploads                      multipart/form-data, one part per file (its filename: the path
                                               the browser gives, folders kept); streamed to disk -> {upload}
  POST /api/files/jobs                         {inputs, output, quality, style, shape, objects, keep_audio}
                                               -> 201 {id}
  GET  /api/files/jobs                         the jobs, newest first
  GET  /api/files/jobs/{id}                    a job and its files with progress (done, total, fps, eta_s), and
                                               `seq`; `?since=<seq>`: only the files changed after that answer
                                               and the running ones (what the page polls)
  POST /api/files/jobs/{id}/cancel             cancel a job (its running file and the queued ones)
  POST /api/files/jobs/{id}/files/{n}/cancel   cancel one file
  GET  /api/files/jobs/{id}/files/{n}/thumb.jpg  the newest ANONYMIZED frame of a running file (404: none)
  GET  /api/files/jobs/{id}/files/{n}/output   the anonymized file (attachment; `?inline=1`: to open)
  GET  /api/files/jobs/{id}/files/{n}/input    the ORIGINAL: only with `?confirm=1`, and logged with the user
  GET  /api/files/jobs/{id}/audit.json         the job's audit record
  GET  /files/jobs/{id}/report                 the same as a printable HTML page

Refusals: 400 (bad request: the key is named), 403 (a path outside the roots, a cross-site request, an
original asked for without confirming: logged by the server's refusal log), 404 (no such job, file,
folder or output yet), 413 (an upload over `files.max_upload_*`: the limit is named).

Uploads are the one body the HTTP guard does not read (serve/http/limits.py `streamed_body`): they are
gigabytes, so the handler reads the multipart stream chunk by chunk straight to disk (Upload.add), each
chunk within `server.limits.request_timeout_s` of the last (a stalled upload is dropped, 408).

Cross-site requests: the browser keeps Basic credentials and would send them with a form another site
posts here; every POST carrying an `Origin` that is not this server's is refused (403), and a job's
body must be JSON (which a plain form cannot send).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import BodyPartReader, MultipartReader, web

from streamproxy.files.manager import FileJobs, JobRequest, TooLarge, Upload
from streamproxy.files.roots import PathRefused
from streamproxy.rtsp.protocol import log_text

log = logging.getLogger(__name__)

UPLOAD_PATH = "/api/files/uploads"
CHUNK = 1024 * 1024  # bytes read from an upload's stream at a time (never a whole file in memory)
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# The report is our own HTML of escaped values; still, nothing in it may load or run anything.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

Asset = Callable[[str], web.StreamResponse]
USER = web.RequestKey("user", str)  # who asked (set by the server's auth middleware where it has users)


def is_upload(request: web.Request) -> bool:
    """The request whose body the guard leaves to the handler (`HttpGuard.streamed_body`)."""
    return request.method == "POST" and request.path == UPLOAD_PATH


def part_name(filename: str) -> str:
    """A part's filename as the browser meant it. Browsers send a folder upload's path as it is
    ("trip/a.jpg", only `"` and line breaks escaped as %22 %0D %0A); some clients (aiohttp)
    percent-encode it all ("trip%2Fa.jpg"): decoded here. What it decodes to is checked after (no
    `..`, no absolute path, no NUL: Upload.open)."""
    return unquote(filename) if "%" in filename else filename


def _bad(text: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=text.rstrip("\n") + "\n")


def _int(request: web.Request, key: str) -> int:
    value = request.match_info[key]
    if not value.isdecimal() or len(value) > 12:
        raise web.HTTPNotFound(text=f"no such {'job' if key == 'id' else 'file'}\n")
    return int(value)


def _attachment(path: Path, inline: bool) -> dict[str, str]:
    """Content-Disposition for a file's name (RFC 6266: an ASCII fallback and the UTF-8 name)."""
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in path.name)
    kind = "inline" if inline else "attachment"
    return {"Content-Disposition": f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(path.name)}"}


class FilesRoutes:
    """The Files page's routes on the live proxy's WebServer (or on the page-only server of
    `streamproxy files`), around one FileJobs."""

    def __init__(self, files: FileJobs, asset: Asset, request_timeout_s: float) -> None:
        self.files = files
        self._asset = asset
        self.request_timeout_s = request_timeout_s

    def add(self, router: web.UrlDispatcher) -> None:
        router.add_get("/files", self._page)
        router.add_get("/api/files/roots", self._roots)
        router.add_get("/api/files/list", self._list)
        router.add_post(UPLOAD_PATH, self._upload)
        router.add_post("/api/files/jobs", self._submit)
        router.add_get("/api/files/jobs", self._jobs)
        router.add_get("/api/files/jobs/{id}", self._job)
        router.add_post("/api/files/jobs/{id}/cancel", self._cancel_job)
        router.add_post("/api/files/jobs/{id}/files/{n}/cancel", self._cancel_file)
        router.add_get("/api/files/jobs/{id}/files/{n}/thumb.jpg", self._thumb)
        router.add_get("/api/files/jobs/{id}/files/{n}/output", self._output)
        router.add_get("/api/files/jobs/{id}/files/{n}/input", self._input)
        router.add_get("/api/files/jobs/{id}/audit.json", self._audit)
        router.add_get("/files/jobs/{id}/report", self._report)

    # --- helpers ---
    @staticmethod
    def user(request: web.Request) -> str:
        """Who asked (the auth middleware's user; "" where the server has no users)."""
        return request.get(USER, "")

    @staticmethod
    def _same_origin(request: web.Request) -> None:
        """A POST sent by a page of another site (the browser adds our Basic credentials): 403."""
        origin = request.headers.get("Origin")
        if origin is None:
            return  # not a browser's cross-site request (curl, scripts, same-origin GETs turned POST)
        if urlsplit(origin).netloc.lower() != request.host.lower():
            raise web.HTTPForbidden(text="cross-site request refused: use the Files page of this server\n")

    def _known_job(self, job_id: int, since: int | None = None) -> dict[str, Any]:
        job = self.files.job(job_id, since=since)
        if job is None:
            raise web.HTTPNotFound(text=f"no job {job_id}\n")
        return job

    def _known_file(self, request: web.Request) -> tuple[int, int]:
        job_id, n = _int(request, "id"), _int(request, "n")
        if not self.files.file_exists(job_id, n):
            if not self.files.job_exists(job_id):
                raise web.HTTPNotFound(text=f"no job {job_id}\n")
            raise web.HTTPNotFound(text=f"job {job_id} has no file {n}\n")
        return job_id, n

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.json_response(
            data, status=status, headers=NO_STORE, dumps=lambda o: json.dumps(o, default=str)
        )

    # --- page, folders ---
    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._asset("files.html")

    async def _roots(self, request: web.Request) -> web.StreamResponse:
        return self._json([{"name": name} for name in self.files.roots.names()])

    async def _list(self, request: web.Request) -> web.StreamResponse:
        root = request.query.get("root")
        if not root:
            raise _bad("root: name a root (GET /api/files/roots)")
        rel = request.query.get("path", "")
        try:
            entries, cut = await asyncio.to_thread(self.files.roots.listing, root, rel)
        except PathRefused as err:
            raise web.HTTPForbidden(text=f"{err}\n") from None
        except FileNotFoundError:
            raise web.HTTPNotFound(text="no such folder\n") from None
        except NotADirectoryError:
            raise _bad("path: not a folder") from None
        except PermissionError:
            raise web.HTTPForbidden(text="the service may not read this folder\n") from None
        return self._json(
            {
                "root": root,
                "path": rel,
                "entries": [
                    {"name": e.name, "kind": e.kind, "size": e.size, "mtime": e.mtime} for e in entries
                ],
                "cut": cut,
            }
        )

    # --- uploads ---
    async def _upload(self, request: web.Request) -> web.StreamResponse:
        self._same_origin(request)
        limit = self.files.cfg.max_upload_total_bytes
        if request.content_length is not None and request.content_length > limit + 1024 * 1024:
            # Known too big before a byte is read (the slack: multipart framing around the files).
            log.info("files: upload from %s refused: %d bytes announced", request.remote or "?",
                     request.content_length)  # fmt: skip
            return _closing(413, f"an upload over {limit} bytes (files.max_upload_total_bytes)")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError, KeyError):
            raise _bad("send the files as multipart/form-data") from None
        upload = await asyncio.to_thread(self.files.new_upload)
        try:
            names = await self._receive(reader, upload)
        except TooLarge as err:
            log.info("files: upload from %s refused: %s", request.remote or "?", err)
            return _closing(413, str(err))
        except PathRefused as err:  # a file name with '..' or an absolute path
            log.info("files: upload from %s refused: %s", request.remote or "?", log_text(str(err)))
            return _closing(403, str(err))
        except TimeoutError:
            log.info("files: upload from %s stalled: dropped", request.remote or "?")
            return _closing(408, f"upload stalled (nothing for {self.request_timeout_s:g} s): dropped")
        except web.HTTPException as err:
            return _closing(err.status, err.text or err.reason)
        if not names:
            await asyncio.to_thread(upload.discard)
            raise _bad("no file in the upload")
        log.info("files: %s uploaded %d file(s) as %s", self.user(request) or "-", len(names), upload.id)
        return self._json({"upload": upload.id, "files": len(names)}, status=201)

    async def _receive(self, reader: MultipartReader, upload: Upload) -> list[str]:
        """Every part of the body to a file of `upload`, CHUNK at a time (disk writes off the loop),
        each read within request_timeout_s of the last. On any failure (a limit, a stall, the client
        gone) nothing of the upload stays on disk."""
        names: list[str] = []
        try:
            while True:
                async with asyncio.timeout(self.request_timeout_s):
                    part = await reader.next()
                if part is None:
                    return names
                if not isinstance(part, BodyPartReader) or not part.filename:
                    raise _bad("every part must be a file (with a filename)")
                name = part_name(part.filename)
                dst = await asyncio.to_thread(upload.open, name)
                try:
                    while True:
                        async with asyncio.timeout(self.request_timeout_s):
                            chunk = await part.read_chunk(CHUNK)
                        if not chunk:
                            break
                        await asyncio.to_thread(dst.write, chunk)
                    await asyncio.to_thread(dst.close)
                except BaseException:
                    await asyncio.to_thread(dst.abort)
                    raise
                names.append(name)
        except BaseException:
            await asyncio.to_thread(upload.discard)
            raise

    # --- jobs ---
    async def _submit(self, request: web.Request) -> web.StreamResponse:
        self._same_origin(request)
        if request.content_type != "application/json":
            raise _bad("send the job as JSON (Content-Type: application/json)")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise _bad("the body is not valid JSON") from None
        try:
            req = JobRequest.from_json(body)
        except ValueError as err:
            raise _bad(str(err)) from None
        user = self.user(request)
        try:
            job_id = await asyncio.to_thread(self.files.submit, user, req)
        except PathRefused as err:
            raise web.HTTPForbidden(text=f"{err}\n") from None
        except (ValueError, FileNotFoundError, NotADirectoryError) as err:
            raise _bad(str(err)) from None
        log.info("files: %s started job %d", user or "-", job_id)
        return self._json({"id": job_id}, status=201)

    async def _jobs(self, request: web.Request) -> web.StreamResponse:
        return self._json(self.files.jobs())

    async def _job(self, request: web.Request) -> web.StreamResponse:
        since = request.query.get("since")
        if since is not None and (not since.isdecimal() or len(since) > 15):
            raise _bad("since: the seq of an earlier answer (a whole number) is expected")
        job = self._known_job(_int(request, "id"), int(since) if since is not None else None)
        if not self.files.can_see_originals(self.user(request)):
            for f in job.get("files", []):
                f["input"] = False  # the page offers no "original…" to this user
        return self._json(job)

    async def _cancel_job(self, request: web.Request) -> web.StreamResponse:
        self._same_origin(request)
        job_id = _int(request, "id")
        self._known_job(job_id)
        cancelled = self.files.cancel_job(job_id)
        log.info("files: %s cancelled job %d (%s)", self.user(request) or "-", job_id,
                 "done" if cancelled else "nothing left to cancel")  # fmt: skip
        return self._json({"cancelled": cancelled})

    async def _cancel_file(self, request: web.Request) -> web.StreamResponse:
        self._same_origin(request)
        job_id, n = self._known_file(request)
        cancelled = self.files.cancel_file(job_id, n)
        log.info("files: %s cancelled job %d file %d (%s)", self.user(request) or "-", job_id, n,
                 "done" if cancelled else "it had ended")  # fmt: skip
        return self._json({"cancelled": cancelled})

    # --- results ---
    async def _thumb(self, request: web.Request) -> web.StreamResponse:
        job_id, n = self._known_file(request)
        jpeg = self.files.thumbnail(job_id, n)
        if jpeg is None:
            raise web.HTTPNotFound(text="no anonymized picture of this file yet\n")
        return web.Response(body=jpeg, content_type="image/jpeg", headers=NO_STORE)

    async def _output(self, request: web.Request) -> web.StreamResponse:
        job_id, n = self._known_file(request)
        path = self.files.output_path(job_id, n)
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text="no anonymized output for this file (not done, failed or removed)\n")
        return self._send(path, inline=request.query.get("inline") == "1")

    async def _input(self, request: web.Request) -> web.StreamResponse:
        """The original, NOT anonymized: only when the person confirmed they want to see it."""
        job_id, n = self._known_file(request)
        user = self.user(request)
        if not self.files.can_see_originals(user):
            raise web.HTTPForbidden(
                text="this user may not open originals (not anonymized): server.users[].originals\n"
            )
        if request.query.get("confirm") != "1":
            raise web.HTTPForbidden(
                text="this is the ORIGINAL file, not anonymized: ask again with confirm=1 to see it\n"
            )
        path = self.files.input_path(job_id, n)
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text="the original of this file is no longer kept\n")
        log.warning("files: %s opened the ORIGINAL (not anonymized) of job %d file %d: %s from %s",
                    self.user(request) or "-", job_id, n, log_text(path.name), request.remote or "?")  # fmt: skip
        self.files.record_original(job_id, n, user, "original file")  # on the job's audit record
        return self._send(path, inline=request.query.get("inline") == "1")

    @staticmethod
    def _send(path: Path, inline: bool) -> web.StreamResponse:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not ctype.startswith(("image/", "video/", "audio/")):
            ctype, inline = "application/octet-stream", False  # nothing a browser would run
        headers = {**NO_STORE, "Content-Type": ctype, **_attachment(path, inline)}
        return web.FileResponse(path, headers=headers)

    async def _audit(self, request: web.Request) -> web.StreamResponse:
        job_id = _int(request, "id")
        self._known_job(job_id)
        record = self.files.audit(job_id)
        if record is None:
            raise web.HTTPNotFound(text=f"job {job_id} has no audit record yet (it has not finished)\n")
        resp = self._json(record)
        resp.headers["Content-Disposition"] = f'inline; filename="job-{job_id}.audit.json"'
        return resp

    async def _report(self, request: web.Request) -> web.StreamResponse:
        job_id = _int(request, "id")
        self._known_job(job_id)
        html = self.files.report_html(job_id)
        if html is None:
            raise web.HTTPNotFound(text=f"job {job_id} has no report yet (it has not finished)\n")
        return web.Response(
            text=html,
            content_type="text/html",
            charset="utf-8",
            headers={**NO_STORE, "Content-Security-Policy": REPORT_CSP},
        )


def _closing(status: int, text: str) -> web.Response:
    """A refusal sent before the rest of the body was read: the connection closes (the body is dropped)."""
    resp = web.Response(status=status, text=text.rstrip("\n") + "\n", headers=NO_STORE)
    resp.force_close()
    return resp
