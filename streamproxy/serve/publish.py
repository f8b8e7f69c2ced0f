"""Push one camera's anonymized stream to an external RTSP server (ANNOUNCE/RECORD), e.g. MediaMTX.

For fan-out at scale: the proxy anonymizes and encodes once, a media server built for thousands of
readers serves them. `cameras[].publish_url` turns it on per camera.

The publisher is one more reader of the camera's StreamHub, with the same bounded buffer as a
viewer: an external server that is slow, stalled or gone costs the publisher frames (it drops to
the next keyframe), never the camera or the other viewers. Only what the hub carries is pushed,
and the hub carries only encoder output, i.e. anonymized frames: fail closed holds by construction.

    hub ─ Subscription("publish") ─(event loop)─> worker thread: PyAV rtsp muxer ─TCP─> server

PyAV blocks (connect, ANNOUNCE/SETUP/RECORD, socket writes), so every PyAV call runs in the
publisher's own daemon thread; the event loop only awaits it. Socket I/O has a timeout, so a
stalled server turns into an error, then a reconnect with capped exponential backoff (the
ingest.backoff_* settings): supervisor.run_async, whose watchdog ends a session that makes no
progress for io_timeout_s (shutting its socket first, so that the worker thread comes back). A
change of the codec parameters (the camera changed resolution) restarts the RTSP session, since the
SDP announced them. The URL may carry credentials: only
`redact_url` forms of it reach logs, errors and snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any, TypeVar
from urllib.parse import urlsplit

import av

from streamproxy.h264 import CLOCK_RATE, START_CODE, has_sps
from streamproxy.hub import CodecInfo, StreamHub, Subscription
from streamproxy.metrics import CameraMetrics
from streamproxy.redact import redact_url, url_secrets
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


def _socket_fds() -> dict[int, str]:
    """This process's socket descriptors: fd -> 'socket:[inode]' (Linux /proc; empty elsewhere)."""
    out: dict[int, str] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:"):
            out[int(name)] = link
    return out


# Sessions connect one at a time (process-wide): the sockets that appear while a session connects
# are then that session's alone, even when several cameras publish to the same server.
_CONNECT_LOCK = threading.Lock()
CONNECT_LOCK_WAIT_S = 10.0  # past this, connect anyway (abort() then falls back to "new sockets")


class _Session:
    """One RTSP RECORD session: PyAV rtsp muxer with one H.264 stream.

    Built and used in the worker thread only, except `abort()`. FFmpeg's rtsp muxer has no socket
    timeout (its `timeout` option is for reading) and PyAV gives output containers no interrupt
    callback, so a server that stops reading would block a write forever: `abort()` shuts down the
    session's TCP socket from outside, which makes the blocked call fail at once. Which socket is
    the session's: the one to the server that appeared while it connected (under _CONNECT_LOCK; the
    rtsp muxer connects on the first packet).
    """

    def __init__(self, url: str, codec: CodecInfo, peer: tuple[set[str], int]) -> None:
        self.codec = codec
        self._peer = peer  # (addresses, port) of the server: which new sockets are this session's
        self._locked = False
        self._ours: dict[int, str] | None = None  # the session's sockets, once connected
        self._before = _socket_fds()
        self.started = False
        self.container: Any = av.open(
            url,
            mode="w",
            format="rtsp",
            options={"rtsp_transport": "tcp"},
        )
        # Dimensions must be given here (the SDP needs them); set later they do not reach codecpar.
        self.stream = self.container.add_mux_stream(
            "h264", rate=Fraction(codec.fps).limit_denominator(1001), width=codec.width, height=codec.height
        )
        self.stream.time_base = Fraction(1, CLOCK_RATE)

    def send(self, pkt: EncodedPacket) -> None:
        data = pkt.data
        if not self.started and not has_sps(data):
            # The SDP's sprop-parameter-sets come from the first packet (PyAV extracts them):
            # make sure they are the hub's, even if the encoder ever stops repeating them in-band.
            data = START_CODE + self.codec.sps + START_CODE + self.codec.pps + data
        out = av.Packet(data)
        out.stream = self.stream
        out.time_base = Fraction(1, CLOCK_RATE)
        # The subscription's clock: 0 at the session's first packet, forward-only (hub.py).
        out.pts = out.dts = pkt.pts90k
        out.is_keyframe = pkt.keyframe
        if self.started:
            self.container.mux(out)
            return
        self._locked = _CONNECT_LOCK.acquire(timeout=CONNECT_LOCK_WAIT_S)
        try:
            self._before = _socket_fds()
            self.container.mux(out)  # the first one writes the header: connect, ANNOUNCE, SETUP, RECORD
            self._ours = self._new_server_sockets()
        finally:
            self._release()
        self.started = True

    def _release(self) -> None:
        if self._locked:
            self._locked = False
            _CONNECT_LOCK.release()

    def _new_server_sockets(self) -> dict[int, str]:
        """Sockets that appeared since the session began and are connected to the server."""
        addrs, port = self._peer
        out: dict[int, str] = {}
        for fd, link in _socket_fds().items():
            if self._before.get(fd) == link:
                continue  # existed before this session: not ours
            try:
                # A dup, so that closing our socket object leaves FFmpeg's descriptor alone.
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                peer = sock.getpeername()
                if sock.type == socket.SOCK_STREAM and peer[1] == port and peer[0] in addrs:
                    out[fd] = link
            except OSError:
                pass
            finally:
                sock.close()
        return out

    def abort(self) -> int:
        """Shut down the session's connection (any thread); returns how many sockets it shut."""
        ours = self._ours if self._ours is not None else self._new_server_sockets()
        current = _socket_fds()
        shut = 0
        for fd, link in ours.items():
            if current.get(fd) != link:
                continue  # closed meanwhile (the descriptor may now be someone else's)
            try:
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                # shutdown() acts on the connection itself, which is what wakes the blocked call.
                sock.shutdown(socket.SHUT_RDWR)
                shut += 1
            except OSError:
                pass
            finally:
                sock.close()
        return shut

    def close(self) -> None:
        self._release()
        try:
            self.container.close()  # TEARDOWN when the session is up
        except Exception as err:  # a dead server cannot be told goodbye
            log.debug("closing publish session: %s", type(err).__name__)


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
        self._host = parts.hostname
        self._port = parts.port or (322 if parts.scheme == "rtsps" else 554)
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
        self._current: _Session | None = None
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
                self._current.abort()  # a stalled server: do not wait for its TEARDOWN reply
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
        sup = Supervisor(Backoff(self.backoff_initial_s, self.backoff_max_s), stall_timeout_s=self.io_timeout_s)
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
        or its socket buffers are full): shut the connection so that the worker thread comes back."""
        session = self._current
        n = session.abort() if session is not None else 0
        log.debug("%s: publish stalled for %.1f s: shut %d socket(s)", self.name, self.io_timeout_s, n)

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
        # Cheap reachability check before subscribing: a subscription forces a keyframe on every
        # viewer, and one that idles through a long connect would overflow; neither while down.
        peer = await worker.call(self._probe)
        attempt.progress()
        session = await worker.call(lambda: _Session(self._url, codec, peer))
        self._current = session
        sub: Subscription | None = None
        try:
            sub = self.hub.subscribe("publish")
            while True:
                with attempt.paused():  # the camera's pace, not the server's
                    pkt = await sub.get()
                current = self.hub.codec
                if current is not None and current != codec:
                    return
                await worker.call(lambda pkt=pkt: session.send(pkt))  # type: ignore[misc]
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
            # Closing sends TEARDOWN and reads the reply: watched like every other call. After a
            # stall it fails fast (the socket is shut), or the watchdog cuts it short.
            try:
                with contextlib.suppress(Exception):
                    await worker.call(session.close)
            finally:
                self._current = None

    def _probe(self) -> tuple[set[str], int]:
        """Reachability check (worker thread); returns the server's addresses and port."""
        with socket.create_connection((self._host, self._port), timeout=self.io_timeout_s) as s:
            addrs = {str(s.getpeername()[0])}
        addrs |= {
            str(info[4][0]) for info in socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        }
        return addrs, self._port

    def _set_up(self, up: bool) -> None:
        self.up = up
        self.metrics.set_publish_up(up)

    def _describe(self, err: BaseException) -> str:
        """An error message that cannot carry the URL's credentials (FFmpeg errors name the URL)."""
        msg = f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
        for secret in self._secrets:
            msg = msg.replace(secret, "***")
        return msg
