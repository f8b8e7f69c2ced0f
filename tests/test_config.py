"""Config: the example loads and documents every key; errors name the key; credentials never leak."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from streamproxy.app import cameras_for_shard, shard_of
from streamproxy.config import (
    AppConfig,
    ConfigError,
    load_config,
    parse_config,
)
from streamproxy.redact import rtsp_url_problem

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "streamproxy.example.yaml"
MINIMAL: dict[str, Any] = {
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
        (
            {"cameras": [{"name": "a", "url": "rtsp://x/1"}, {"name": "a", "url": "rtsp://x/2"}]},
            "cameras[1].name",
        ),
        ({"cameras": []}, "cameras"),
        ({"cameras": [{"name": "a", "url": "rtsp://x/1", "onvif_port": 8080}]}, "cameras[0].onvif_port"),
        (
            {
                "cameras": [
                    {"name": "a", "url": "rtsp://x/1", "onvif_port": 9001},
                    {"name": "b", "url": "rtsp://x/2", "onvif_port": 9001},
                ]
            },
            "cameras[1].onvif_port",
        ),
        (
            {"cameras": [{"name": "a", "url": "rtsp://x/1", "sub_stream": {"fps": 0}}]},
            "cameras[0].sub_stream.fps",
        ),
        ({"sub_stream": {"width": 10}}, "sub_stream.width"),
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
                "obfuscation": {"shape": "box", "pixel_blocks": 3},
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
    assert (ea.obfuscation.style, ea.obfuscation.shape, ea.obfuscation.pixel_blocks) == ("solid", "box", 3)
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
    assert (
        str(err.value)
        == "ingest.keep_audio: audio is never forwarded (speech is personal data); remove this key"
    )
    cfg = parse_config({**MINIMAL, "ingest": {"keep_audio": False, "read_timeout_s": 2}})
    assert cfg.ingest.read_timeout_s == 2 and not hasattr(cfg.ingest, "keep_audio")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("rtsp://cam:99999/s", "port out of range (1-65535)"),
        ("rtsp://cam:0/s", "port out of range (1-65535)"),
        ("rtsp://cam:abc/s", "port is not a number"),
        ("rtsp://u:p@cam:-1/s", "port is not a number"),
        ("rtsp://cam:８５５４/s", "port is not a number"),  # fullwidth digits: int() would take them
        ("rtsp:///s", "missing host"),
        ("rtsp://u:p@/s", "missing host"),
        ("rtsp://:554/s", "missing host"),
        ("rtsp:cam/s", "must be an rtsp:// or rtsps:// URL"),
        ("http://cam/s", "must be an rtsp:// or rtsps:// URL"),
        ("cam/s", "must be an rtsp:// or rtsps:// URL"),
        ("rtsp://[::1/s", "unbalanced [ ]"),
        ("rtsp://::1]/s", "unbalanced [ ]"),
        ("rtsp://[::1]]/s", "unbalanced [ ]"),
        ("rtsp://[cam]/s", "not an IPv6 address"),
        ("rtsp://[::1]554/s", "only :port may follow"),
        ("rtsp://::1/s", "an IPv6 address needs [ ]"),
        ("rtsp://admin:12345678/x@cam/s", "an '@' after the host"),  # the password would be the "port"
        ("rtsp://cam/s t", "space or control character"),
        ("rtsp://cam/s\r\nX: y", "space or control character"),
        ("rtsp://ca$m/s", "characters a host name cannot have"),
    ],
)  # fmt: skip
def test_url_problems(url: str, problem: str) -> None:
    """Every URL `run` would choke on is an error naming the key, without quoting the URL."""
    assert problem in (rtsp_url_problem(url) or ""), rtsp_url_problem(url)
    for key in ("url", "publish_url"):
        cam = {"name": "a", "url": "rtsp://cam/s", key: url}
        with pytest.raises(ConfigError) as err:
            parse_config({"cameras": [{"name": "b", "url": "rtsp://cam/s"}, cam]})
        msg = str(err.value)
        assert msg.startswith(f"cameras[1].{key}: ") and problem in msg and len(msg.splitlines()) == 1, msg
        assert "12345678" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://cam/s",
        "rtsps://user:p%40ss%2Fw@cam.example:322/live?channel=1",
        "rtsp://admin:p@ss@10.0.0.2/s",  # urlsplit takes the last '@': our client and FFmpeg agree
        "rtsp://[2001:db8::1]:554/s",
        "rtsp://[fe80::1%25eth0]/s",
        "rtsp://10.0.0.2:554/user=admin&password=x&channel=1&stream=0.sdp?",
        "RTSP://Cam-1.local/s",
        "rtsp://kamera.bücher.example/s",
        "rtsp://cam:/s",  # empty port: the default one
    ],
)
def test_good_urls_pass(url: str) -> None:
    assert rtsp_url_problem(url) is None
    assert parse_config({"cameras": [{"name": "a", "url": url, "publish_url": url}]}).cameras[0].url == url


def test_listener_ports_must_differ() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "server": {"rtsp_port": 8554, "http_port": 8554}})
    assert (
        str(err.value)
        == "server.http_port: port 8554 is also server.rtsp_port; every listener needs its own port"
    )
    parse_config({**MINIMAL, "server": {"rtsp_port": 0, "http_port": 0}})  # 0: any free port, twice is fine
    # The RTP range is UDP: a TCP listener inside it does not collide.
    parse_config({**MINIMAL, "server": {"rtsp_port": 30000, "http_port": 8080}})
    with pytest.raises(ConfigError, match=r"^server\.rtp_port_min: must be below server\.rtp_port_max$"):
        parse_config({**MINIMAL, "server": {"rtp_port_min": 31000, "rtp_port_max": 30000}})


def test_all_errors_at_once_one_line_each(tmp_path: Path) -> None:
    """A bad camera URL and a port clash are both reported, each on its own line naming the file."""
    p = tmp_path / "c.yaml"
    p.write_text(
        "cameras:\n  - name: a\n    url: rtsp://u:pw@cam:99999/s\nserver:\n  rtsp_port: 80\n  http_port: 80\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert sorted(str(err.value).splitlines()) == [
        f"{p}: cameras[0].url: port out of range (1-65535)",
        f"{p}: server.http_port: port 80 is also server.rtsp_port; every listener needs its own port",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cameras:\n  - name: a\n    url: rtsp://admin:Sup3rsecret@cam/s: x\n",
         "line 3, column 40: mapping values are not allowed here"),
        ("cameras:\n  - name: a\n    url: rtsp://cam/s\nserver:\n  users:\n    - {username: a, password: *Sup3rsecret}\n",
         "line 6, column 31: found undefined alias '***' (a value that starts with * & ! or contains ': ' needs quotes)"),
        ("a: !Sup3rsecret x\n", "could not determine a constructor for the tag '***'"),
        ("a:\tb\n", "found character '\\t' that cannot start any token"),
        ("cameras: [\n", "expected the node content, but found '<stream end>'"),
    ],
)  # fmt: skip
def test_yaml_errors_never_quote_the_line(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}: not valid YAML: line ") and expected in msg, msg
    assert "Sup3rsecret" not in msg and "\n" not in msg


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


# --- obfuscation bounds from the face matcher (bench/reid.py) ------------------------------------


@pytest.mark.parametrize(
    ("obf", "key", "words"),
    [
        ({"pixel_blocks": 5}, "engine.obfuscation.pixel_blocks", "at most 4 blocks across a face, got 5"),
        ({"pixel_blocks": 32}, "engine.obfuscation.pixel_blocks", "face matcher re-identifies"),
        ({"blur_strength": 0.2}, "engine.obfuscation.blur_strength", "at least 0.25"),
        ({"blur_strength": 0.2}, "engine.obfuscation.blur_strength", "face matcher re-identifies"),
        ({"pixel_blocks": 2}, "engine.obfuscation.pixel_blocks", "greater than or equal to 3"),
    ],
)
def test_obfuscation_settings_a_face_matcher_defeats_are_refused_with_the_reason(
    obf: dict[str, object], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**MINIMAL, "engine": {"obfuscation": obf}})
    assert key in str(err.value) and words in str(err.value), str(err.value)
    # A camera's own section is held to the same bounds.
    cam = {**MINIMAL["cameras"][0], "obfuscation": obf}
    with pytest.raises(ConfigError, match=words.split(",")[0]):
        parse_config({"cameras": [cam]})


def test_obfuscation_bounds_accept_every_allowed_extreme() -> None:
    from streamproxy.config import MAX_SAMPLES_ACROSS_FACE, MIN_BLUR_STRENGTH

    for obf in (
        {"style": "pixelate", "pixel_blocks": 3},
        {"style": "pixelate", "pixel_blocks": MAX_SAMPLES_ACROSS_FACE},
        {"blur_strength": MIN_BLUR_STRENGTH},
        {"blur_strength": 2.0},
        {"mask_scale": 1.0},
        {"mask_scale": 3.0},
    ):
        cfg = parse_config({**MINIMAL, "engine": {"obfuscation": obf}})
        assert cfg.engine.obfuscation.model_dump(include=set(obf)) == obf
    d = parse_config(MINIMAL).engine.obfuscation
    assert (d.blur_strength, d.pixel_blocks) == (0.5, 4)  # defaults inside the bounds, with room


def test_check_config_and_anonymize_refuse_fine_pixelation(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "cameras:\n  - name: lobby\n    url: rtsp://192.0.2.10/s\nengine:\n  obfuscation:\n    pixel_blocks: 8\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "streamproxy", "check-config", str(cfg)], capture_output=True, text=True
    )
    assert (
        r.returncode == 1 and "engine.obfuscation.pixel_blocks" in r.stderr and "face matcher" in r.stderr
    ), r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "streamproxy", "anonymize", str(tmp_path / "none.jpg"), "-o", str(tmp_path / "o"),
         "--pixel-blocks", "8", "--blur-strength", "0.1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--pixel-blocks: at most 4 blocks" in r.stderr and "--blur-strength: at least 0.25" in r.stderr, (
        r.stderr
    )
