"""HTTP: the review of a finished file (issue #23): its anonymized picture, its tracks, the edits.

Routes (behind `server.users`, like the Files page; the data is the manager's, files/manager.py)
  GET  /files/jobs/{id}/files/{n}/review              the page (web/review.html + review.js)
  GET  /api/files/jobs/{id}/files/{n}/review          size, fps, frames, tracks (boxes per frame), the
                                                      edits, the file's state; "originals": whether this
                                                      user may see the original frames. ?tracks=0: all
                                                      but "tracks" (what the page asks first: a crowd's
                                                      tracks are megabytes; the picture must not wait).
                                                      "proxy_updating": the output is re-rendered (state
                                                      done) and the review video is being made again
                                                      from it: the page waits, then loads the new one
  GET  /api/files/jobs/{id}/files/{n}/review/tracks   {"tracks": [...]} as in the full answer, made once
                                                      per file and kept (gzip when the client takes it)
  GET  /api/files/jobs/{id}/files/{n}/proxy.mp4       the review proxy: ANONYMIZED frames only (a photo:
                                                      its anonymized output); Range requests answered (206)
  PUT  /api/files/jobs/{id}/files/{n}/edits           the whole edits document (docs/edits-format.md),
                                                      saved as made -> the stored document
  POST /api/files/jobs/{id}/files/{n}/follow          {frame, box, start, end, keyframes} -> {boxes}
  POST /api/files/jobs/{id}/files/{n}/rerender        202: the file goes "rendering", then "done" (then
                                                      "proxy_updating" until the review video is new)
  GET  /api/files/jobs/{id}/files/{n}/original/{frame}.jpg
                                                      the ORIGINAL frame: only for a user with the
                                                      `originals` role (else 403, logged); each access is
                                                      recorded by the manager on the job's audit record

Refusals as the Files API's: 400 names the key, 403 (cross-site, no role), 404 (no such job, file, or
nothing to review). A PUT or POST carrying another site's `Origin` is refused (403), and bodies must
be JSON (a plain form cannot send it), as in files.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

from streamproxy.files.manager import FileJobs
from streamproxy.rtsp.protocol import log_text
from streamproxy.serve.http.files import NO_STORE, FilesRoutes, _bad

log = logging.getLogger(__name__)

BASE = "/api/files/jobs/{id}/files/{n}"
MAX_KEYFRAMES = 1000  # user keyframes in one follow (each one drawn by hand: far more than anyone draws)
FOLLOWS_AT_ONCE = 1  # the follower decodes the original: one at a time per server, the rest wait
GZIP_KEPT = 2  # gzipped tracks answers kept (a 10-minute crowd video's: a few MB each)
GZIP_LEVEL = 1  # ~4x faster than zlib's default on the tracks' JSON, ~25 % bigger


def _frame_index(value: Any, key: str, frames: int) -> int:
    """A frame index of this file (0 .. frames-1); 400 naming `key` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key}: a frame number (an integer) is expected")
    if not 0 <= value < max(1, frames):
        raise _bad(f"{key}: frame {value} is outside this file (0 to {max(0, frames - 1)})")
    return value


def _box(value: Any, key: str, width: int, height: int) -> list[float]:
    """[x1, y1, x2, y2] in the file's pixels, with some area inside the picture; 400 naming `key`."""
    if not isinstance(value, list) or len(value) != 4:
        raise _bad(f"{key}: a box [x1, y1, x2, y2] is expected")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise _bad(f"{key}: the box's corners must be numbers")
    x1, y1, x2, y2 = (float(v) for v in value)
    if not (x2 > x1 and y2 > y1):
        raise _bad(f"{key}: the box is empty (x2 must be right of x1, y2 below y1)")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise _bad(f"{key}: the box is outside the picture ({width}x{height})")
    return [x1, y1, x2, y2]


class ReviewRoutes:
    """The review's routes beside the Files page's (same FileJobs, same refusals)."""

    def __init__(self, files_routes: FilesRoutes) -> None:
        self.routes = files_routes
        self.files: FileJobs = files_routes.files
        self._follows = asyncio.Semaphore(FOLLOWS_AT_ONCE)
        # (job, n) -> (the manager's tracks JSON, its gzip): compressed once per answer the manager made.
        self._gzipped: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def add(self, router: web.UrlDispatcher) -> None:
        router.add_get("/files/jobs/{id}/files/{n}/review", self._page)
        router.add_get(BASE + "/review", self._review)
        router.add_get(BASE + "/review/tracks", self._tracks)
        router.add_get(BASE + "/proxy.mp4", self._proxy)
        router.add_put(BASE + "/edits", self._edits)
        router.add_post(BASE + "/follow", self._follow)
        router.add_post(BASE + "/rerender", self._rerender)
        router.add_get(BASE + r"/original/{frame:\d{1,9}}.jpg", self._original)

    # --- helpers ---
    def _review_of(
        self, job_id: int, n: int, *, reviewable: bool = False, tracks: bool = True
    ) -> dict[str, Any]:
        review = self.files.review(job_id, n, tracks=tracks)
        if review is None:
            raise web.HTTPNotFound(text=f"job {job_id} has no file {n}\n")
        if reviewable and not review.get("reviewable"):
            raise web.HTTPNotFound(
                text="nothing to review for this file (not finished, failed, or made before reviews existed)\n"
            )
        return review

    @staticmethod
    async def _json_body(request: web.Request) -> Any:
        if request.content_type != "application/json":
            raise _bad("send JSON (Content-Type: application/json)")
        try:
            return json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise _bad("the body is not valid JSON") from None

    # --- the page and its data ---
    async def _page(self, request: web.Request) -> web.StreamResponse:
        self.routes._known_file(request)
        return self.routes._asset("review.html")

    async def _review(self, request: web.Request) -> web.StreamResponse:
        job_id, n = self.routes._known_file(request)
        tracks = request.query.get("tracks", "1")
        if tracks not in ("0", "1"):
            raise _bad("tracks: 0 (the review without its tracks) or 1 (with them) is expected")
        review = dict(await asyncio.to_thread(self._review_of, job_id, n, tracks=tracks == "1"))
        row = self.files.file_status(job_id, n) or {}
        review.setdefault("name", row.get("name", ""))
        review.setdefault("output", row.get("output"))
        review["job"], review["n"] = job_id, n
        review["originals"] = self.files.can_see_originals(self.routes.user(request))
        # With its tracks, megabytes of JSON: made in a thread, not in the loop that serves the picture.
        body = await asyncio.to_thread(lambda: json.dumps(review, default=str).encode())
        return web.Response(body=body, content_type="application/json", headers=NO_STORE)

    async def _tracks(self, request: web.Request) -> web.StreamResponse:
        """The tracks alone, asked by the page once the picture is on its way (kept serialized)."""
        job_id, n = self.routes._known_file(request)
        body = await asyncio.to_thread(self.files.review_tracks_json, job_id, n)
        if body is None:
            raise web.HTTPNotFound(
                text="nothing to review for this file (not finished, failed, or made before reviews existed)\n"
            )
        headers = {**NO_STORE, "Vary": "Accept-Encoding"}
        if "gzip" not in request.headers.get("Accept-Encoding", "").lower():
            return web.Response(body=body, content_type="application/json", headers=headers)
        hit = self._gzipped.get((job_id, n))
        if hit is None or hit[0] is not body:
            packed = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL, mtime=0)
            self._gzipped.pop((job_id, n), None)
            self._gzipped[(job_id, n)] = hit = (body, packed)
            while len(self._gzipped) > GZIP_KEPT:
                self._gzipped.pop(next(iter(self._gzipped)))
        return web.Response(
            body=hit[1], content_type="application/json", headers={**headers, "Content-Encoding": "gzip"}
        )

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        """The anonymized frames to review (never the original: checked here too, belt and braces)."""
        job_id, n = self.routes._known_file(request)
        path = await asyncio.to_thread(self.files.proxy_path, job_id, n)
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text="no review picture for this file (not finished, or removed)\n")
        original = await asyncio.to_thread(self.files.input_path, job_id, n)
        if original is not None and await asyncio.to_thread(_same_file, path, original):
            log.error("review: job %d file %d: the review picture is the ORIGINAL: refused", job_id, n)
            raise web.HTTPNotFound(text="no review picture for this file\n")
        ctype = "video/mp4" if path.suffix.lower() == ".mp4" else mimetypes.guess_type(path.name)[0] or ""
        if not ctype.startswith(("image/", "video/")):
            raise web.HTTPNotFound(text="no review picture for this file\n")
        # FileResponse answers Range requests (206) itself: the player seeks without the whole file.
        return web.FileResponse(path, headers={**NO_STORE, "Content-Type": ctype})

    # --- edits ---
    async def _edits(self, request: web.Request) -> web.StreamResponse:
        self.routes._same_origin(request)
        job_id, n = self.routes._known_file(request)
        data = await self._json_body(request)
        if not isinstance(data, dict):
            raise _bad("body: a JSON object (the edits document) is expected")
        user = self.routes.user(request)
        try:
            stored = await asyncio.to_thread(self.files.save_edits, job_id, n, user, data)
        except ValueError as err:
            raise _bad(str(err)) from None
        edits = stored.get("edits") if isinstance(stored, dict) else None
        log.info("review: %s saved %d edit(s) of job %d file %d", user or "-",
                 len(edits) if isinstance(edits, list) else 0, job_id, n)  # fmt: skip
        return self.routes._json(stored)

    async def _follow(self, request: web.Request) -> web.StreamResponse:
        """Follow a drawn box through the ORIGINAL video (the manager's follower); only boxes come back."""
        self.routes._same_origin(request)
        job_id, n = self.routes._known_file(request)
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise _bad("body: a JSON object {frame, box, start, end, keyframes} is expected")
        extra = sorted(set(body) - {"frame", "box", "start", "end", "keyframes"})
        if extra:
            raise _bad(f"{extra[0]}: not a key of a follow (frame, box, start, end, keyframes)")
        review = await asyncio.to_thread(lambda: self._review_of(job_id, n, reviewable=True))
        if review.get("kind") != "video":
            raise _bad("follow: only a video's boxes can be followed (on a photo, draw a zone)")
        frames, fps = int(review.get("frames") or 0), float(review.get("fps") or 25.0)
        width, height = int(review.get("width") or 0), int(review.get("height") or 0)
        frame = _frame_index(body.get("frame"), "frame", frames)
        box = _box(body.get("box"), "box", width, height)
        span = max(1, round(2 * fps))  # the default range: 2 s both ways
        start = _frame_index(body.get("start", max(0, frame - span)), "start", frames)
        end = _frame_index(body.get("end", min(frames - 1, frame + span)), "end", frames)
        if start > end:
            raise _bad("end: the range ends before it starts")
        raw = body.get("keyframes") or {}
        if not isinstance(raw, dict) or len(raw) > MAX_KEYFRAMES:
            raise _bad(f"keyframes: an object {{frame: box}} of at most {MAX_KEYFRAMES} is expected")
        keyframes: dict[int, list[float]] = {}
        for k, v in raw.items():
            if not (isinstance(k, str) and k.isdecimal() and len(k) <= 9):
                raise _bad(f"keyframes: {log_text(str(k))!r} is not a frame number")
            key = _frame_index(int(k), f"keyframes[{k}]", frames)
            keyframes[key] = _box(v, f"keyframes[{k}]", width, height)
        keyframes.setdefault(frame, box)
        if not start <= frame <= end:
            raise _bad("frame: the frame drawn on must lie between start and end")
        if not all(start <= k <= end for k in keyframes):
            raise _bad("keyframes: every keyframe must lie between start and end")
        async with self._follows:
            try:
                boxes = await asyncio.to_thread(
                    self.files.follow, job_id, n, frame, box, start, end, keyframes
                )
            except ValueError as err:
                raise _bad(str(err)) from None
        return self.routes._json(
            {"boxes": {str(k): [round(float(c), 2) for c in b] for k, b in boxes.items()}}
        )

    async def _rerender(self, request: web.Request) -> web.StreamResponse:
        self.routes._same_origin(request)
        job_id, n = self.routes._known_file(request)
        user = self.routes.user(request)
        try:
            await asyncio.to_thread(self.files.rerender, job_id, n, user)
        except ValueError as err:
            raise _bad(str(err)) from None
        log.info("review: %s asked to re-render job %d file %d", user or "-", job_id, n)
        return self.routes._json({"state": "rendering"}, status=202)

    # --- the original: a role, and on the record ---
    async def _original(self, request: web.Request) -> web.StreamResponse:
        job_id, n = self.routes._known_file(request)
        user = self.routes.user(request)
        who = f"{user or '-'} from {request.remote or '?'}"
        if request.headers.get("Sec-Fetch-Site") == "cross-site":
            # Another site's page embedding the picture with the browser's credentials.
            raise web.HTTPForbidden(text="cross-site request refused: use the review page of this server\n")
        if not self.files.can_see_originals(user):
            log.warning("review: %s asked for an ORIGINAL frame of job %d file %d: refused (no originals role)",
                        who, job_id, n)  # fmt: skip
            raise web.HTTPForbidden(
                text="you may not see the original (not anonymized) pictures: ask an administrator for the "
                "originals role\n"
            )
        frame = int(request.match_info["frame"])
        jpeg = await asyncio.to_thread(self.files.original_frame, job_id, n, frame, user)
        if jpeg is None:
            raise web.HTTPNotFound(
                text=f"no original frame {frame} of this file (past its end, or no longer kept)\n"
            )
        log.warning("review: %s saw ORIGINAL frame %d of job %d file %d", who, frame, job_id, n)
        return web.Response(body=jpeg, content_type="image/jpeg", headers=NO_STORE)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
