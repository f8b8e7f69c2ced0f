"""Fixtures shared by the suite.

* `model_dir`: the pinned face-model files, fetched once per session into the default model dir
  (STREAMPROXY_MODEL_DIR or ~/.cache/streamproxy/models); valid files are not downloaded again.
* `sim_camera_factory(**kw)`: starts a real RTSP camera (gst-rtsp-server under /usr/bin/python3) on a
  free 127.0.0.1 port and stops it after the test; `sim_camera` is one small started camera. Tests
  using them skip cleanly where GStreamer's RTSP server is not installed.
* `fd_headroom(n)`: enough descriptors for a connection flood in this process.
* `host_factory(url)`: the live service on one camera (tests/livekit.py); `judge`: the face detector an
  attacker would run on the output.

Helpers that are not fixtures live in modules beside this one (`facekit.py`, ...), never in a
test module that another test module imports.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The service's state (Files jobs, the live audit log) in a temporary folder, for this process and
    the services tests start as subprocesses: never the user's ~/.local/state/streamproxy."""
    path = tmp_path_factory.mktemp("state")
    saved = {k: os.environ.pop(k, None) for k in ("STATE_DIRECTORY", "STREAMPROXY_DATA_DIR")}
    os.environ["STREAMPROXY_DATA_DIR"] = str(path)
    yield path
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from streamproxy.config import default_model_dir
    from streamproxy.engine.models import fetch_models

    d = default_model_dir()
    fetch_models(d)
    return d


@pytest.fixture(scope="session")
def _sim_gst_available() -> None:
    from streamproxy_sim.camsim import system_gst_available

    why = system_gst_available()
    if why:
        pytest.skip(why)


@pytest.fixture
def sim_camera_factory(_sim_gst_available: None) -> Iterator[Callable[..., Any]]:
    from streamproxy_sim.camsim import SimCamera

    cams: list[SimCamera] = []

    def make(start: bool = True, **kw: Any) -> SimCamera:
        kw.setdefault("width", 640)
        kw.setdefault("height", 360)
        cam = SimCamera(**kw)
        cams.append(cam)
        return cam.start() if start else cam

    yield make
    for cam in cams:
        cam.stop()


@pytest.fixture
def sim_camera(sim_camera_factory: Callable[..., Any]) -> Any:
    return sim_camera_factory()


@pytest.fixture
def host_factory(model_dir: Path) -> Iterator[Callable[..., Any]]:
    """`host_factory(url, users=None)`: the live service (livekit.LiveHost) on one camera, started; stopped after."""
    from livekit import LiveHost, make_config

    hosts: list[LiveHost] = []

    def make(url: str, users: list[dict[str, str]] | None = None) -> LiveHost:
        h = LiveHost(make_config(url, model_dir, users))
        hosts.append(h)
        h.start()
        return h

    yield make
    for h in hosts:
        h.stop()


@pytest.fixture(scope="module")
def judge(model_dir: Path) -> Any:
    """The real detector, as an attacker with the same model would run it on the output."""
    from streamproxy.config import DetectorConfig
    from streamproxy.engine.detect import create_detector

    return create_detector(DetectorConfig(input_width=640, threshold=0.3, model_dir=model_dir))


@pytest.fixture
def fd_headroom() -> Callable[[int], None]:
    """`fd_headroom(n)`: raise this process's soft descriptor limit to the hard one (floods of
    connections need client and server sockets in one process); skip if it cannot hold `n`."""
    import resource

    def ensure(need: int) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(
                f"the hard open-files limit {hard} is below the {need} this flood needs (client + server)"
            )
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else need, hard)
            )

    return ensure
