"""Push one camera's anonymized stream to an external RTSP server (ANNOUNCE/RECORD), e.g. MediaMTX.

For fan-out at scale: the proxy anonymizes and encodes once, a media server built for thousands of
readers serves them. `cameras[].publish_url` turns it on per camera.

The publisher is one more reader of the camera's StreamHub, with the same bounded buffer as a
viewer: an external server that is slow, stalled or gone costs the publisher frames (it drops to
the next keyframe), never the camera or the other viewers. Only what the hub carries is pushed,
and the hub carries only encoder output, i.e. anonymized frames: fail closed holds by construction.

    hub ─ Subscription("publish") ─(event loop)─> worker thread: rtsp/client.RecordClient ─TCP─> server

The RTSP client is the project's own (the one that reads cameras, here pushing): ANNOUNCE with the
SDP our RTSP server answers DESCRIBE with (serve/rtsp/server.build_sdp), SETUP mode=record over TCP
interleaved, RECORD, then the RTP packetizer and RTCP sender reports of our server's sessions.

Why a worker thread rather than asyncio: that client is synchronous (blocking sockets with
timeouts; one RTSP parser and one Digest/Basic signer for both directions, fuzzed once), so its
calls run in the publisher's own daemon thread and the event loop only awaits them; a server that
stalls can never stall the loop. Its own thread, not the loop's executor: a call stuck on a stalled
server must not hold a shared pool's thread (nor the interpreter's exit). Every write has a timeout,
and the supervisor's watchdog (supervisor.run_async) ends a session that makes no progress for
io_timeout_s by aborting the client, which shuts down its own socket: the blocked call fails at
once. Failures reconnect with capped exponential backoff (the ingest.backoff_* settings). A change
of the codec parameters (the camera changed resolution) restarts the RTSP session, since the SDP
announced them. The URL may carry credentials: only `redact_url` forms of it reach logs, errors and
snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from streamproxy.h264 import START_CODE, has_sps
from streamproxy.hub import CodecInfo, StreamHub, Subscription
from streamproxy.metrics import CameraMetrics
from streamproxy.redact import redact_url, url_secrets
from streamproxy.rtsp.client import RecordClient
from streamproxy.serve.rtsp.server import TRACK, build_sdp
from streamproxy.status import PublisherStatus
from streamproxy.supervisor import Attempt, Backoff, Outcome, Supervisor, run_async
from streamproxy.types import EncodedPacket

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Worker:
    """One daemon thread that runs blocking calls in order; results come back as awaitables.

    A daemon thread (not an executor) so that a call stuck in a socket write can never hold up
    the interpreter's exit; socket timeouts end such calls anyway.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, fut = job
            loop = fut.get_loop()
            try:
                result = fn()
            except BaseException as err:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, fut, None, err)
            else:
                loop.call_soon_threadsafe(_settle, fut, result, None)

    async def call(self, fn: Callable[[], T]) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, fut))
        # shield: cancelling the caller must not orphan a result the thread will still deliver.
        return await asyncio.shield(fut)

    def close(self, timeout: float) -> bool:
        """Let queued calls finish, then end the thread; False if it is still busy after `timeout`."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


def _settle(fut: asyncio.Future[Any], result: object, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(result)


class Publisher:
    """Pushes one hub's packets to `url` until stopped; reconnects with capped exponential backoff."""

    def __init__(
        self,
        hub: StreamHub,
        url: str,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        io_timeout_s: float = 5.0,
        metrics: CameraMetrics | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("rtsp", "rtsps") or not parts.hostname:
            raise ValueError(f"{hub.name}: publish URL must be rtsp:// or rtsps:// with a host")
        self.hub = hub
        self.name = hub.name
        self._url = url
        self.url = redact_url(url)  # the only form that may be shown
        self._secrets = url_secrets(url)  # userinfo and password-like path/query parts, longest first
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.io_timeout_s = io_timeout_s
        # The one tally of what was published (the API reads it back): the app's camera metrics,
        # or a private set for a publisher on its own (tests).
        self.metrics = metrics if metrics is not None else CameraMetrics(hub.name)
        self.up = False
        self.sessions = 0  # sessions that reached RECORD
        self.attempts = 0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None
        self._current: RecordClient | None = None
        self._worker: _Worker | None = None
        self._stopping = asyncio.Event()

    # --- lifecycle (event loop) ---
    def start(self) -> None:
        if self._task is not None:
            return
        self._worker = _Worker(f"publish-{self.name}")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"publish-{self.name}")
        log.info("%s: publishing to %s", self.name, self.url)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop publishing: TEARDOWN if connected. Bounded by `timeout` even if the server hangs."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done and self._current is not None:
                self._current.abort()  # a stalled server: do not wait for it
                await asyncio.wait({task}, timeout=timeout)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: already logged by _run
        worker, self._worker = self._worker, None
        if worker is not None and not await asyncio.to_thread(worker.close, timeout):
            log.warning("%s: publisher thread still busy after %.0f s; abandoned", self.name, timeout)
        self._set_up(False)

    def snapshot(self) -> PublisherStatus:
        return PublisherStatus(
            url=self.url,
            up=self.up,
            sessions=self.sessions,
            attempts=self.attempts,
            packets_sent=self.metrics.published_total,
            bytes_sent=self.metrics.bytes_out_total("publish"),
            last_error=self.last_error,
        )

    # --- the loop ---
    async def _run(self) -> None:
        sup = Supervisor(
            Backoff(self.backoff_initial_s, self.backoff_max_s), stall_timeout_s=self.io_timeout_s
        )
        await run_async(sup, self._attempt, self._stopping, self._ended, on_stall=self._stalled)

    def _ended(self, attempt: Attempt, err: BaseException | None, wait: float) -> None:
        self._set_up(False)
        if err is None:
            log.info("%s: stream parameters changed: new publish session", self.name)
            return
        self.last_error = self._describe(err)
        log.warning(
            "%s: publishing to %s failed (%s); retrying in %.1f s", self.name, self.url, self.last_error, wait
        )

    def _stalled(self, attempt: Attempt) -> None:
        """The watchdog's hook: a server call made no progress for io_timeout_s (the server stalled,
        or its socket buffers are full): abort the session so that the worker thread comes back."""
        client = self._current
        if client is not None:
            client.abort()
        log.debug("%s: publish stalled for %.1f s: session aborted", self.name, self.io_timeout_s)

    async def _attempt(self, attempt: Attempt) -> Outcome:
        """One session: "restart" when the codec changed, "stop" when the hub closed; raises on failure."""
        codec = self.hub.codec
        with attempt.paused():  # no camera stream yet: nothing to publish, not the server's stall
            while codec is None:
                try:
                    codec = await self.hub.wait_codec(timeout=1.0)
                except TimeoutError:
                    continue
        self.attempts += 1
        try:
            await self._session(codec, attempt)
        except EOFError:
            return "stop"  # the hub closed: the app is stopping
        return "restart"

    async def _session(self, codec: CodecInfo, attempt: Attempt) -> None:
        """Publish until the codec changes (returns) or something fails (raises). Every server call
        is watched by the supervisor: no progress for io_timeout_s ends the session."""
        assert self._worker is not None
        worker = self._worker
        client = RecordClient(self._url, self.io_timeout_s, cname=f"streamproxy-{self.name}")
        self._current = client
        sub: Subscription | None = None
        try:
            # The server takes the session before the hub is subscribed: a subscription forces a
            # keyframe on every viewer, and one that idles through a long connect would overflow.
            await worker.call(
                lambda: client.record(lambda local_ip: build_sdp(self.name, codec, local_ip), TRACK)
            )
            attempt.progress()
            sub = self.hub.subscribe("publish")
            first = True
            while True:
                with attempt.paused():  # the camera's pace, not the server's
                    pkt = await sub.get()
                current = self.hub.codec
                if current is not None and current != codec:
                    return
                if first:
                    pkt = _with_parameter_sets(pkt, codec)
                    first = False
                await worker.call(lambda pkt=pkt: client.send(pkt))  # type: ignore[misc]
                attempt.up()
                if not self.up:
                    self.sessions += 1
                    self.last_error = ""
                    self._set_up(True)
                    log.info("%s: publishing to %s (%dx%d)", self.name, self.url, codec.width, codec.height)
                self.metrics.published()
        finally:
            if sub is not None:
                sub.close()
            # TEARDOWN (not waited for) and close: bounded, also after an abort.
            try:
                with contextlib.suppress(Exception):
                    await worker.call(client.close)
            finally:
                self._current = None

    def _set_up(self, up: bool) -> None:
        self.up = up
        self.metrics.set_publish_up(up)

    def _describe(self, err: BaseException) -> str:
        """An error message that cannot carry the URL's credentials (whatever an error quotes)."""
        msg = f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
        for secret in self._secrets:
            msg = msg.replace(secret, "***")
        return msg


def _with_parameter_sets(pkt: EncodedPacket, codec: CodecInfo) -> EncodedPacket:
    """The session's first access unit with the hub's SPS/PPS in-band (our encoder repeats them
    before every keyframe; this holds even if it ever stops): a server that records the elementary
    stream without reading the SDP's sprop-parameter-sets can still decode from the start."""
    if has_sps(pkt.data):
        return pkt
    return dataclasses.replace(pkt, data=START_CODE + codec.sps + START_CODE + codec.pps + pkt.data)
