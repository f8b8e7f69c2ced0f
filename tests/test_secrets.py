"""Camera credentials never appear in output (issue 12, Deliver 3).

A camera whose URL carries a password in the userinfo, a `password=` path part and a `?token=`,
and a publish URL with its own, are run against a loopback camera that answers every request
with 401 (and a publish port where nothing listens). After a few reconnects every output a user
or an attacker can read is grepped: the logs at every level, stderr and stdout (FFmpeg writes
there), /metrics, /api/cameras, `check-config` and `run` on good and bad configs, and tracebacks.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproxy.config import AppConfig, ConfigError, parse_config
from streamproxy.redact import SecretFilter, redact_text, redact_url, rtsp_url_problem, url_secrets
from streamproxy_sim.fakecam import FakeCamera

USER_PW = "Userpw!-5ecret"  # percent-encoded in the URL as Userpw%21-5ecret
PATH_PW = "Pathpw-5ecret"
TOKEN = "Tok-5ecret"
PUB_PW = "Pubpw-5ecret"
PUB_TOKEN = "Pubtok-5ecret"
VIEWER_PW = "Viewerpw-5ecret"
# Every spelling that must not appear: the raw values and the percent-encoded one.
SECRETS = (USER_PW, "Userpw%21-5ecret", PATH_PW, TOKEN, PUB_PW, PUB_TOKEN, VIEWER_PW)


def camera_url(port: int) -> str:
    return f"rtsp://admin:Userpw%21-5ecret@127.0.0.1:{port}/user=admin&password={PATH_PW}&channel=1?token={TOKEN}"


def publish_url(port: int) -> str:
    return f"rtsp://pub:{PUB_PW}@127.0.0.1:{port}/lobby?token={PUB_TOKEN}"


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def _config(cam_port: int, pub_port: int, model_dir: Path, demuxer: str) -> AppConfig:
    cfg = parse_config(
        {
            "cameras": [{"name": "lobby", "url": camera_url(cam_port), "publish_url": publish_url(pub_port)}],
            "server": {
                "host": "127.0.0.1",
                "rtsp_port": 0,
                "http_port": 0,
                "users": [{"username": "viewer", "password": VIEWER_PW}],
            },
            "ingest": {
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.2,
                "open_timeout_s": 2,
                "demuxer": demuxer,
            },
            "engine": {"detector": {"input_width": 320, "model_dir": str(model_dir)}},
        }
    )
    return cfg


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port where nothing listens (bound, never listening: nobody else gets it meanwhile)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.parametrize("demuxer", ["builtin", "pyav"])
async def test_service_output_carries_no_secret(
    model_dir: Path,
    dead_port: int,
    demuxer: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from streamproxy_sim.harness import running_app

    caplog.set_level(logging.DEBUG)
    with FakeCamera("unauthorized") as cam:
        cfg = _config(cam.port, dead_port, model_dir, demuxer)
        async with running_app(cfg) as app:
            deadline = time.monotonic() + 60
            # A few connects and reconnects (each logs "connecting to ..." and its failure).
            while len(cam.connections) < 3 or app.pipelines["lobby"].source.reconnects < 2:
                assert time.monotonic() < deadline, f"camera saw {len(cam.connections)} connection(s) in 60 s"
                await asyncio.sleep(0.1)
            assert app.web is not None
            base = f"http://127.0.0.1:{app.web.port}"
            auth = {"Authorization": "Basic " + base64.b64encode(f"viewer:{VIEWER_PW}".encode()).decode()}
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/metrics") as r:
                    assert r.status == 200
                    metrics_text = await r.text()
                async with http.get(f"{base}/api/cameras", headers=auth) as r:
                    assert r.status == 200
                    api_text = await r.text()
                async with http.get(f"{base}/api/cameras") as r:
                    denied_text = await r.text()
            snapshot = repr(app.pipelines["lobby"].snapshot())
            publisher = repr(app.publishers["lobby"].snapshot())
    assert len(cam.requests) >= 3, "the camera was never asked (the test proves nothing)"
    # The checks can fail: the outputs are there, and name the camera.
    assert 'camera="lobby"' in metrics_text and '"lobby"' in api_text
    logs = "\n".join(
        logging.Formatter("%(levelname)s %(name)s %(message)s").format(rec) for rec in caplog.records
    )
    assert "connecting to rtsp://***@127.0.0.1" in logs, logs[-2000:]
    out, err = capfd.readouterr()
    for what, text in [
        ("logs", logs),
        ("stdout", out),
        ("stderr", err),
        ("/metrics", metrics_text),
        ("/api/cameras", api_text),
        ("/api/cameras without auth", denied_text),
        ("snapshot", snapshot),
        ("publisher snapshot", publisher),
    ]:
        assert not leaks(text), f"{what} leaks {leaks(text)}"


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamproxy.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


BAD_CONFIGS = {
    # A YAML syntax error on the line of the password: PyYAML's snippet would print that line.
    "yaml_on_password_line": f"""
        cameras:
          - name: lobby
            url: rtsp://admin:{USER_PW}@cam/user=admin&password={PATH_PW}?token={TOKEN}: oops
    """,
    "yaml_after_password": f"""
        cameras:
          - name: lobby
            url: "rtsp://admin:{USER_PW}@cam/s?token={TOKEN}"
            transport: [tcp
    """,
    # An unquoted password that YAML reads as an alias.
    "yaml_alias_password": f"""
        cameras:
          - name: lobby
            url: rtsp://cam/s
        server:
          users:
            - username: viewer
              password: *{VIEWER_PW}
    """,
    "bad_port": f"""
        cameras:
          - name: lobby
            url: rtsp://admin:{USER_PW}@cam:99999/user=admin&password={PATH_PW}?token={TOKEN}
    """,
    "password_as_port": f"""
        cameras:
          - name: lobby
            url: rtsp://admin:{PATH_PW}/x@cam/s?token={TOKEN}
    """,
    "bad_scheme_and_key": f"""
        cameras:
          - name: lobby
            url: http://admin:{USER_PW}@cam/s?token={TOKEN}
            rtsp://admin:{PATH_PW}@cam/s: 1
            publish_url: rtsp://pub:{PUB_PW}@[::1/x
    """,
    "port_clash": f"""
        cameras:
          - name: lobby
            url: rtsp://admin:{USER_PW}@cam/s?token={TOKEN}
        server:
          rtsp_port: 8554
          http_port: 8554
          users:
            - username: viewer
              password: {VIEWER_PW}
    """,
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_errors_carry_no_secret(
    tmp_path: Path, case: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (fast); `test_bad_config_exits_non_zero` runs the real process once."""
    from streamproxy.cli import main

    cfg = _write(tmp_path / "bad.yaml", BAD_CONFIGS[case])
    assert (
        main(["check-config", str(cfg)] if command == "check-config" else ["run", "--config", str(cfg)]) == 1
    )
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines and all(line.startswith(f"invalid config: {cfg}: ") for line in lines), err
    assert not leaks(out + err), f"{case} {command} leaks {leaks(out + err)}: {err}"


def test_bad_config_exits_non_zero(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "bad.yaml", BAD_CONFIGS["bad_scheme_and_key"])
    for args in (["check-config", str(cfg)], ["run", "--config", str(cfg)]):
        r = _cli(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert sorted(r.stderr.splitlines()) == [
            f"invalid config: {cfg}: cameras[0].publish_url: unbalanced [ ] around an IPv6 address "
            "(write rtsp://[2001:db8::1]:554/path)",
            f"invalid config: {cfg}: cameras[0].rtsp://***@cam/s: unknown key (check the spelling; "
            "see config/streamproxy.example.yaml)",
            f"invalid config: {cfg}: cameras[0].url: must be an rtsp:// or rtsps:// URL with a host",
        ], r.stderr
        assert not leaks(r.stdout + r.stderr)


def test_check_config_ok_carries_no_secret(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "ok.yaml",
        f"""
        cameras:
          - name: lobby
            url: rtsp://admin:{USER_PW}@cam/user=admin&password={PATH_PW}?token={TOKEN}
            publish_url: rtsp://pub:{PUB_PW}@mediamtx:8554/lobby?token={PUB_TOKEN}
        """,
    )
    r = _cli("check-config", str(cfg))
    assert r.returncode == 0 and "ok, 1 camera(s): lobby" in r.stdout, r.stderr
    assert not leaks(r.stdout + r.stderr)


def test_validation_error_traceback_carries_no_secret() -> None:
    """A ValidationError that escapes (a caller skipping parse_config) does not echo the URL."""
    data: dict[str, Any] = {"cameras": [{"name": "a b", "url": camera_url(99999)}]}
    try:
        AppConfig.model_validate(data)
    except Exception:
        text = traceback.format_exc()
    else:
        raise AssertionError("an invalid config validated")
    assert "cameras.0.url" in text and "port out of range" in text
    assert not leaks(text), text
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).splitlines() == [
        "cameras[0].name: String should match pattern '^[A-Za-z0-9_.-]{1,64}$'",
        "cameras[0].url: port out of range (1-65535)",
    ]


CRASH = """
import sys
import streamproxy.app as app
url = sys.argv[2]

def crash(*args, **kwargs):
    raise RuntimeError(f"could not open {url} (token {url.rsplit('=', 1)[1]})")

app.run_app = crash
from streamproxy.cli import main
main(["run", "--config", sys.argv[1]])
"""


def test_crash_traceback_carries_no_secret(tmp_path: Path) -> None:
    """An exception nobody catches in `run` (forced: its message quotes the URL) is printed scrubbed."""
    url = camera_url(554)
    cfg = _write(tmp_path / "ok.yaml", f"cameras:\n  - name: lobby\n    url: {url}\n")
    r = subprocess.run(
        [sys.executable, "-c", CRASH, str(cfg), url], capture_output=True, text=True, timeout=60
    )  # fmt: skip
    assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: could not open" in r.stderr, (
        r.stderr
    )
    assert "rtsp://***@127.0.0.1:554/user=***&password=***&channel=1?token=***" in r.stderr, r.stderr
    assert not leaks(r.stderr), r.stderr


def test_log_records_from_any_module_are_scrubbed(tmp_path: Path) -> None:
    """`run`'s log filter: a library message or logged traceback quoting a secret is scrubbed."""
    code = textwrap.dedent(
        f"""
        import logging, sys
        from streamproxy import cli
        from streamproxy.config import load_config
        cfg = load_config(sys.argv[1])
        cli._setup_logging("DEBUG")
        cli._guard_secrets(cfg)
        log = logging.getLogger("libav.rtsp")
        log.debug("Server returned 401: %s", {camera_url(554)!r}.replace("Userpw%21-5ecret@", ""))
        try:
            raise ValueError("token {TOKEN}")
        except ValueError:
            log.exception("lobby: failed with %s", "{PATH_PW}")
        """
    )
    cfg = _write(tmp_path / "ok.yaml", f"cameras:\n  - name: lobby\n    url: {camera_url(554)}\n")
    r = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Server returned 401" in r.stderr and "ValueError: token ***" in r.stderr, r.stderr
    assert not leaks(r.stderr), r.stderr


# --- redact.py on its own: how a URL is shown, what is scrubbed ------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://user:secret@10.0.0.1:554/s", "rtsp://***@10.0.0.1:554/s"),
        ("rtsp://cam/s", "rtsp://cam/s"),
        ("rtsp://cam:8554/Streaming/Channels/101?transportmode=unicast", "rtsp://cam:8554/Streaming/Channels/101?transportmode=unicast"),
        ("rtsp://u:secret@[::1]/s", "rtsp://***@[::1]/s"),
        ("rtsp://u:secret@[fe80::1%25eth0]:554/s", "rtsp://***@[fe80::1%25eth0]:554/s"),
        # Cameras that take credentials in the path or the query.
        ("rtsp://10.0.0.2:554/user=admin&password=secret&channel=1&stream=0.sdp?",
         "rtsp://10.0.0.2:554/user=***&password=***&channel=1&stream=0.sdp?"),
        ("rtsp://cam/live;user=admin;password=secret;profile=1", "rtsp://cam/live;user=***;password=***;profile=1"),
        ("rtsps://cam/s?token=secret&fps=25", "rtsps://cam/s?token=***&fps=25"),
        ("rtsp://cam/s?pwd=secret&passwd=secret&key=secret&auth=secret&sig=secret",
         "rtsp://cam/s?pwd=***&passwd=***&key=***&auth=***&sig=***"),
        ("rtsp://cam/s?access_token=secret&X-Amz-Signature=secret&api-key=secret&PASSWORD=secret",
         "rtsp://cam/s?access_token=***&X-Amz-Signature=***&api-key=***&PASSWORD=***"),
        ("rtsp://cam/s?pass%77ord=secret", "rtsp://cam/s?pass%77ord=***"),  # a percent-encoded key
        ("rtsp://cam/s#token=secret", "rtsp://cam/s#token=***"),
        ("rtsp://a:b@cam:554/user=admin&password=secret?token=secret", "rtsp://***@cam:554/user=***&password=***?token=***"),
        # Malformed: still never the secret, never an exception.
        ("rtsp://admin:p@ss@cam/s", "rtsp://***@cam/s"),  # an unencoded '@' in the password
        ("rtsp://admin:se/cret@cam/s", "rtsp://***@cam/s"),  # an unencoded '/' in the password
        ("rtsp://admin:secret@cam:99999/s", "rtsp://***@cam:99999/s"),
        ("rtsp://admin:secret@cam:abc/s", "rtsp://***@cam:abc/s"),
        ("rtsp://admin:secret@[::1/s", "rtsp://***@[::1/s"),
        ("rtsp://admin:secret@]::1]/s", "rtsp://***@]::1]/s"),
        ("admin:secret@cam/s", "***@cam/s"),
        ("rtsp://cam/s\r\nX-Injected: yes", "rtsp://cam/s%0D%0AX-Injected: yes"),  # no new log line
        ("", ""),
    ],
)  # fmt: skip
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "secret" not in redact_url(url)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    st.sampled_from(["", "rtsp://", "rtsp://u:pw@", "rtsps://h"]),
    st.text(alphabet=st.sampled_from(list("rtsp:/@[]?#&;=%:.aZ09 \r\n\x00é")), max_size=30),
)
def test_url_checks_never_raise_and_pass_only_usable_urls(prefix: str, rest: str) -> None:
    """redact_url and the validator take any string; what the validator passes, urlsplit can use."""
    url = prefix + rest
    shown = redact_url(url)
    assert "\n" not in shown and "\r" not in shown and "pw@" not in shown
    if rtsp_url_problem(url) is None:
        parts = urlsplit(url)
        assert parts.scheme in ("rtsp", "rtsps") and parts.hostname
        assert parts.port is None or 1 <= parts.port <= 65535


def test_redact_text_and_url_secrets() -> None:
    url = "rtsp://admin:pw%21x@cam/user=admin&password=Pathsecret?token=Toksecret"
    assert redact_text(f"open {url} (401)") == "open rtsp://***@cam/user=***&password=***?token=*** (401)"
    assert redact_text("ffmpeg: password=Pathsecret failed") == "ffmpeg: password=*** failed"
    secrets = url_secrets(url)
    for s in (
        "admin:pw%21x",
        "admin:pw!x",
        "password=Pathsecret",
        "Pathsecret",
        "token=Toksecret",
        "Toksecret",
    ):
        assert s in secrets
    assert "admin" not in secrets  # a user name alone is no secret: scrubbing it would garble words
    assert "pw!x" in secrets and secrets == sorted(secrets, key=len, reverse=True)


def test_secret_filter_scrubs_messages_and_tracebacks() -> None:
    guard = SecretFilter(["Toksecret", "Viewersecret"])
    try:
        raise ValueError("bad token Toksecret")
    except ValueError:
        rec = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "%s: %s", ("cam", "Viewersecret"), sys.exc_info()
        )
    assert guard.filter(rec)
    assert rec.getMessage() == "cam: ***"
    assert rec.exc_text is not None and "ValueError: bad token ***" in rec.exc_text
    assert "Toksecret" not in logging.Formatter().format(rec)
