"""The RTSP server's log cannot be forged or flooded from its port (issue 20, item 4).

A percent-decoded path is any string: `%0d%0a` is CR LF, `%00` NUL. Crafted requests go to the real
server on loopback (tests/rtspkit.py), with and without credentials, and every log record of the
package is checked: one printable line each, whatever the client sent. A flood of requests for
unknown paths and of malformed requests is summarised: the lines are counted, and their counts add
up to the requests sent (the throttle's second is made an hour, so nothing depends on timing).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from types import SimpleNamespace

import pytest
from rtspkit import PASSWORD, USER, RawRtsp, serve

from streamproxy.config import User

pytestmark = pytest.mark.timeout(120)

FORGED = "%0d%0a2026-12-07%2006:00:00%20ERROR%20streamproxy.app:%20forged"
# Percent-encoded in the path: decoded by the server before it looks the camera up.
CRAFTED_PATHS = [
    f"zz{FORGED}",
    "zz%0aforged",
    "zz%0dforged",
    "zz%00forged",
    "zz%e2%80%a8forged",  # U+2028 LINE SEPARATOR: a new line to some log viewers
    "zz%c2%85forged",  # U+0085 NEXT LINE
    "zz%1b[2Kforged",  # a terminal escape: erases the line on a console
    "zz%5cnforged",  # a backslash and an n: must not read as our own escape
    "x" * 2000 + "%0aforged",  # long
]
# Raw bytes the request parser lets through to a logged field, or refuses (also logged).
RAW_REQUESTS = [
    b"DESCRIBE rtsp://127.0.0.1/cam1 RTSP/1.0\x00forged\r\nCSeq: 1\r\n\r\n",  # 505: the version is logged
    b"DESCRIBE rtsp://127.0.0.1/zz\rforged RTSP/1.0\r\nCSeq: 2\r\n\r\n",  # raw CR inside the URI: 400
    b"DESCRIBE rtsp://127.0.0.1/cam1 RTSP/2.0\x1b[2K\r\nCSeq: 3\r\n\r\n",
    b"DESCRIBE rtsp://127.0.0.1/zz RTSP/1.0\r\nCSeq: 4\rforged\r\n\r\n",  # raw CR inside a header
    b"DESC\x00RIBE rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 5\r\n\r\n",
    b"DESCRIBE rtsp://127.0.0.1/zz RTSP/1.0\r\nCSeq: 6\r\nSession: ab\x00\rforged\r\n\r\n",
    b"FORGED" * 1000 + b" rtsp://127.0.0.1/cam1 RTSP/1.0\r\nCSeq: 7\r\n\r\n",  # 501, a long method
]


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("streamproxy")]


def assert_one_printable_line_each(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = []
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for r in _records(caplog):
        text = fmt.format(r)
        assert text.isprintable(), f"a client's character reached the log: {text!r}"
        assert len(r.getMessage()) < 1000, f"a line of {len(r.getMessage())} characters"
        lines.append(r.getMessage())
    return lines


def test_log_text_escapes_what_could_end_or_forge_a_line() -> None:
    from streamproxy.rtsp.protocol import log_text, safe_uri

    assert log_text("cam1/sub") == "cam1/sub"
    assert log_text("zz\r\n2026 ERROR x") == "zz\\r\\n2026 ERROR x"
    assert log_text("a\x00b\u2028c\x85d\x1b[2K") == "a\\x00b\\u2028c\\x85d\\x1b[2K"
    assert log_text("a\\nb") == "a\\\\nb", "a backslash from a client is not an escape of ours"
    assert log_text("x" * 500) == "x" * 120 + "..."
    assert log_text("café ✓") == "café ✓", "printable text stays readable"
    assert safe_uri("rtsp://u:p@h/zz\x00x") == "rtsp://***@h/zz\\x00x"


@pytest.mark.parametrize("auth", ["none", "right", "wrong"])
async def test_crafted_paths_write_no_line_the_server_did_not_write(
    caplog: pytest.LogCaptureFixture, auth: str
) -> None:
    caplog.set_level(logging.DEBUG, "streamproxy")
    users = [User(username=USER, password=PASSWORD)] if auth != "none" else None
    headers: dict[str, str] = {}
    if auth != "none":
        password = PASSWORD if auth == "right" else "wrong"
        headers["Authorization"] = "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()
    async with serve(users=users) as (server, _, url):
        server.auth.max_failures = 10**6  # no brute-force back-off: this test is not about it
        base = url.rsplit("/", 1)[0]
        raw = await RawRtsp.connect(server.port)
        for path in CRAFTED_PATHS:
            for method, suffix, extra in [
                ("DESCRIBE", "", {}),
                ("SETUP", "/trackID=0", {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}),
            ]:
                status, _, _ = await raw.request(method, f"{base}/{path}{suffix}", {**headers, **extra})
                assert status == (404 if auth != "wrong" else 401)
        # Credentials in the URL, one with a CR LF in the user name.
        for userinfo in (f"{USER}:x", "u%0d%0aforged:x"):
            status, _, _ = await raw.request(
                "DESCRIBE", f"rtsp://{userinfo}@127.0.0.1:{server.port}/{FORGED}", headers
            )
            assert status in (401, 404)
        raw.close()
        for request in RAW_REQUESTS:
            raw = await RawRtsp.connect(server.port, limit=2**17)
            await raw.send_raw(request)
            status, _, _ = await raw.response()
            assert 400 <= status < 600
            raw.close()
    lines = assert_one_printable_line_each(caplog)
    if auth != "wrong":
        unknown = [ln for ln in lines if "for unknown path" in ln]
        assert unknown, lines
        assert any("zz\\r\\n2026-12-07 06:00:00 ERROR streamproxy.app: forged" in ln for ln in unknown), (
            unknown
        )
    else:
        failed = [ln for ln in lines if "authentication failed" in ln]
        assert failed and all(ln.isprintable() for ln in failed), failed
    assert any("RTSP 505" in ln and "RTSP/1.0\\x00forged" in ln for ln in lines), lines
    assert any("RTSP 501" in ln and "..." in ln for ln in lines), "a long method is cut"


def _count(line: str) -> int:
    m = re.search(r" \(x(\d+) since the last such line\)$", line)
    return int(m.group(1)) if m else 1


async def test_a_flood_of_unknown_and_malformed_requests_is_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "streamproxy")
    n_unknown, n_malformed, batch = 3000, 1000, 100
    async with serve() as (server, _, url):
        # An hour between lines: what is counted is the summary, not how fast the host is.
        server.unknown_paths.interval_s = server.bad_requests.interval_s = 3600
        base = url.rsplit("/", 1)[0]
        raw = await RawRtsp.connect(server.port)
        sent = 0
        while sent < n_unknown + n_malformed:
            chunk = []
            for i in range(sent, sent + batch):
                if i < n_unknown:
                    chunk.append(f"DESCRIBE {base}/zz{i}{FORGED} RTSP/1.0\r\nCSeq: {i + 1}\r\n\r\n".encode())
                else:  # pipelined, answered 400 and the connection goes on (a request line of 2 parts)
                    chunk.append(f"DESCRIBE {base}/x{i}%0d%0aforged\r\nCSeq: {i + 1}\r\n\r\n".encode())
            await raw.send_raw(b"".join(chunk))
            for i in range(sent, sent + batch):
                status, hdrs, _ = await raw.response()
                assert (status, hdrs["cseq"]) == (404 if i < n_unknown else 400, [str(i + 1)])
            sent += batch
        raw.close()
    lines = assert_one_printable_line_each(caplog)
    unknown = [ln for ln in lines if "for unknown path" in ln]
    malformed = [ln for ln in lines if "RTSP 400 from" in ln]
    # The first of each kind at once, the rest in one line at stop: their counts add up.
    assert len(unknown) == 2 and sum(_count(ln) for ln in unknown) == n_unknown, unknown
    assert len(malformed) == 2 and sum(_count(ln) for ln in malformed) == n_malformed, malformed
    assert server.unknown_paths.count == n_unknown and server.bad_requests.count == n_malformed
    assert len(lines) < 20, lines
    assert sum(len(ln) for ln in lines) < 5000


async def test_a_throttled_line_due_as_its_timer_fires_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A hit that comes due just before the summary timer fires logs itself and takes the timer
    with it (under a flood, the timer then logged the next hit a moment later: two lines a second)."""
    from streamproxy.serve import limits

    clock = [0.0]
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=lambda: clock[0]))  # this module's clock
    log = logging.getLogger("streamproxy.test.throttle")
    caplog.set_level(logging.INFO, log.name)
    # Seconds of 5 (not the default 1): the timers' real delays (2.5 s, 4.99 s) lie far either side
    # of the 3 s this test waits, however busy the machine.
    throttle = limits.Throttled(log, interval_s=5.0)
    throttle.hit("first", logging.INFO)  # logged at once
    clock[0] = 2.5
    throttle.hit("second", logging.INFO)  # waits: the timer is set for the interval's end (2.5 s on)
    clock[0] = 5.0
    throttle.hit("third", logging.INFO)  # due: logged, with the count it stands for
    clock[0] = 5.01
    throttle.hit("fourth", logging.INFO)  # waits for the next interval (4.99 s on)
    await asyncio.sleep(3.0)  # past the first timer's moment, before the second's
    messages = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert messages == ["first", "third (x2 since the last such line)"]
    throttle.flush()
    messages = [r.getMessage() for r in caplog.records if r.name == log.name]
    assert messages[2:] == ["fourth"] and throttle.count == 4
