"""Config: the example loads and documents every key; errors name the key; credentials never leak."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from streamproxy.app import cameras_for_shard, shard_of
from streamproxy.config import AppConfig, ConfigError, load_config, parse_config, redact_url

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "streamproxy.example.yaml"
MINIMAL = {
    "cameras": [{"name": "lobby", "url": "rtsp://user:pass@192.0.2.10:554/stream1"}],
    "server": {"rtsp_port": 8554, "http_port": 8080},
}


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert [c.name for c in cfg.cameras] == ["lobby", "parking"]
    assert cfg.engine_for(cfg.cameras[0]).privacy_zones[0].name == "reception-desk"


def _keys(model: type[BaseModel]) -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        out.add(name)
        for t in getattr(field.annotation, "__args__", ()) or (field.annotation,):
            if isinstance(t, type) and issubclass(t, BaseModel):
                out |= _keys(t)
            for inner in getattr(t, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out |= _keys(inner)
    return out


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = sorted(k for k in _keys(AppConfig) if f"{k}:" not in text)
    assert not missing, f"keys missing from {EXAMPLE.name}: {missing}"


def test_minimal_config_from_the_issue() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.server.rtsp_port == 8554 and cfg.latency_budget_ms == 200


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"cameras": [{"name": "a", "url": "http://x/y"}]}, "cameras[0].url"),
        ({"cameras": [{"name": "a b", "url": "rtsp://x/y"}]}, "cameras[0].name"),
        ({"cameras": [{"name": "a", "url": "rtsp://x/y", "colour": 1}]}, "cameras[0].colour"),
        ({"cameras": [{"url": "rtsp://x/y"}]}, "cameras[0].name"),
        ({"server": {"rtsp_port": 70000}}, "server.rtsp_port"),
        ({"engine": {"detector": {"model": "yolo"}}}, "engine.detector.model"),
        ({"engine": {"obfuscation": {"style": "swirl"}}}, "engine.obfuscation.style"),
        ({"latency_budget_ms": 1}, "latency_budget_ms"),
        ({"cameras": [{"name": "a", "url": "rtsp://x/1"}, {"name": "a", "url": "rtsp://x/2"}]}, "cameras[1].name"),
        ({"cameras": []}, "cameras"),
    ],
)
def test_errors_name_the_key(patch: dict, key: str) -> None:
    data = {**MINIMAL, **patch}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert key in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_per_camera_overrides() -> None:
    cfg = parse_config(
        {
            "cameras": [
                {"name": "a", "url": "rtsp://x/1", "detect_every": 3, "transport": "udp", "latency_budget_ms": 80,
                 "obfuscation": {"style": "solid"}},
                {"name": "b", "url": "rtsp://x/2"},
            ],
            "engine": {"detect_every": 2},
        }
    )  # fmt: skip
    a, b = cfg.cameras
    assert cfg.engine_for(a).detect_every == 3 and cfg.engine_for(b).detect_every == 2
    assert cfg.engine_for(a).obfuscation.style == "solid" and cfg.engine_for(b).obfuscation.style == "blur"
    assert cfg.transport_for(a) == "udp" and cfg.transport_for(b) == "tcp"
    assert cfg.budget_for(a) == 80 and cfg.budget_for(b) == 200


def test_camera_sections_override_key_by_key() -> None:
    """A camera that sets one key of a section keeps every other key of the global section."""
    cfg = parse_config(
        {
            "cameras": [
                {"name": "a", "url": "rtsp://x/1", "detector": {"threshold": 0.5}, "obfuscation": {"style": "solid"},
                 "tracker": {"coast_seconds": 2.5}, "privacy": {"max_unmasked_frames": 2}},
                {"name": "b", "url": "rtsp://x/2"},
            ],
            "engine": {
                "detector": {"model": "centerface", "input_width": 960, "tiles": 2, "model_dir": "/models"},
                "obfuscation": {"shape": "box", "pixel_blocks": 12},
                "tracker": {"smoothing": 0.2, "min_hits": 2},
            },
            "privacy": {"min_face_px": 26},
        }
    )  # fmt: skip
    a, b = cfg.cameras
    ea, eb = cfg.engine_for(a), cfg.engine_for(b)
    assert (ea.detector.threshold, eb.detector.threshold) == (0.5, 0.4)
    assert ea.detector.model_dump(exclude={"threshold"}) == eb.detector.model_dump(exclude={"threshold"})
    assert (ea.detector.model, ea.detector.input_width, ea.detector.tiles) == ("centerface", 960, 2)
    assert ea.detector.model_dir == Path("/models")
    assert (ea.obfuscation.style, ea.obfuscation.shape, ea.obfuscation.pixel_blocks) == ("solid", "box", 12)
    assert eb.obfuscation.style == "blur"
    assert (ea.tracker.coast_seconds, ea.tracker.smoothing, ea.tracker.min_hits) == (2.5, 0.2, 2)
    assert eb.tracker.coast_seconds == 1.0
    pa, pb = cfg.privacy_for(a), cfg.privacy_for(b)
    assert (pa.min_face_px, pa.max_unmasked_frames) == (26, 2)
    assert (pb.min_face_px, pb.max_unmasked_frames) == (26, 0)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"detector": {"treshold": 0.5}}, "cameras[0].detector.treshold: unknown key"),
        ({"obfuscation": {"colour": "red"}}, "cameras[0].obfuscation.colour: unknown key"),
        ({"tracker": {"coast": 1}}, "cameras[0].tracker.coast: unknown key"),
        ({"privacy": {"min_face": 20}}, "cameras[0].privacy.min_face: unknown key"),
        ({"detector": {"threshold": 2.0}}, "cameras[0].detector.threshold: Input should be less than"),
        ({"privacy": {"min_face_px": None}}, "cameras[0].privacy.min_face_px:"),
    ],
)
def test_camera_override_errors_name_the_key(override: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [{"name": "a", "url": "rtsp://x/1", **override}]})
    assert str(err.value).startswith(key), str(err.value)


def test_keep_audio_is_gone() -> None:
    """Audio is never forwarded: asking for it is an error naming the key; the old `false` still loads."""
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "ingest": {"keep_audio": True}})
    assert str(err.value) == "ingest.keep_audio: audio is never forwarded (speech is personal data); remove this key"
    cfg = parse_config({**MINIMAL, "ingest": {"keep_audio": False, "read_timeout_s": 2}})
    assert cfg.ingest.read_timeout_s == 2 and not hasattr(cfg.ingest, "keep_audio")


def test_redact_url() -> None:
    assert redact_url("rtsp://user:secret@10.0.0.1:554/s") == "rtsp://***@10.0.0.1:554/s"
    assert redact_url("rtsp://cam/s") == "rtsp://cam/s"
    assert "secret" not in redact_url("rtsp://u:secret@[::1]/s")


def test_check_config_cli(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "streamproxy.cli", "check-config", str(EXAMPLE)],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "c.yaml"
    bad.write_text("cameras:\n  - name: lobby\n    url: rtsp://h/s\n    trasnport: tcp\n")
    r = subprocess.run([sys.executable, "-m", "streamproxy.cli", "check-config", str(bad)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and "cameras[0].trasnport" in r.stderr


def test_sharding_is_stable_and_complete() -> None:
    cfg = parse_config({"cameras": [{"name": f"cam{i}", "url": f"rtsp://x/{i}"} for i in range(20)]})
    shards = [cameras_for_shard(cfg, i, 3) for i in range(3)]
    names = sorted(c.name for s in shards for c in s)
    assert names == sorted(c.name for c in cfg.cameras)
    assert shard_of("cam7", 3) == shard_of("cam7", 3)
    with pytest.raises(ValueError):
        cameras_for_shard(cfg, 3, 3)
