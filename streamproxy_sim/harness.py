"""The whole service on a private event loop in a thread, for callers that block: tests and benchmarks.

Not part of the product (ARCHITECTURE.md): the product runs `app.run_app` under its own loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from streamproxy.app import App
from streamproxy.config import AppConfig


@asynccontextmanager
async def running_app(cfg: AppConfig) -> AsyncIterator[App]:
    """Start the whole service inside a test or benchmark; always stops it."""
    app = App(cfg)
    try:
        await app.start()
        yield app
    finally:
        await app.stop()


class AppThread:
    """The whole service on a private event loop in a thread, for callers that block (tests, benchmarks)."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.app: App | None = None
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="app-thread", daemon=True
        )

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with running_app(self.cfg) as app:
                self.app = app
                self._ready.set()
                await self._stop.wait()
        except BaseException as err:  # handed to the caller's thread by start()
            self.error = err
        finally:
            self._ready.set()

    def start(self, timeout: float = 60) -> App:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("app did not start")
        if self.error is not None:
            raise self.error
        assert self.app is not None
        return self.app

    def stop(self, timeout: float = 30) -> float:
        """Stop the service (a graceful App.stop()); returns how long it took."""
        t0 = time.monotonic()
        if self._thread.ident is None:
            return 0.0  # never started (a fixture failed before start()): nothing to stop
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("app did not stop")
        return time.monotonic() - t0

    def rtsp_url(self, path: str, user: str | None = None, password: str | None = None) -> str:
        assert self.app is not None and self.app.rtsp_port is not None
        auth = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.app.rtsp_port}/{path}"
