"""Viewer auth (rtsp/auth.py): nonces that expire and stay with their client, answers that do not tell
user names apart, the failure counter with back-off, bounded tables; and on loopback: a real client
with Digest, a brute force that gets slowed, /metrics behind auth when asked."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable

import aiohttp
import pytest
from rtspkit import RawRtsp, need_ffmpeg, run, serve, with_creds
from webkit import make_cfg, serving

from streamproxy import metrics
from streamproxy.config import User
from streamproxy.rtsp import auth as auth_mod
from streamproxy.rtsp.auth import Authenticator, client_key, parse_basic

pytestmark = pytest.mark.timeout(60)

URI = "rtsp://h/cam"
USERS = [User(username="alice", password="s3cret")]
A, B = "10.0.0.1", "10.0.0.2"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Sleeps:
    """Records the back-off delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def digest(
    nonce: str, user: str = "alice", pw: str = "s3cret", method: str = "DESCRIBE", uri: str = URI
) -> str:
    resp = _md5(f"{_md5(f'{user}:streamproxy:{pw}')}:{nonce}:{_md5(f'{method}:{uri}')}")
    return f'Digest username="{user}", realm="streamproxy", nonce="{nonce}", uri="{uri}", response="{resp}"'


def basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def make(**kw: object) -> tuple[Authenticator, Clock, Sleeps]:
    clock, sleeps = Clock(), Sleeps()
    return Authenticator(USERS, "streamproxy", clock=clock, sleep=sleeps, **kw), clock, sleeps  # type: ignore[arg-type]


def _nonce_of(challenge: list[tuple[str, str]]) -> str:
    m = re.search(r'nonce="([^"]+)"', challenge[0][1])
    assert m
    return m.group(1)


# --- nonces ---


def test_fresh_nonce_expires_and_is_answered_stale() -> None:
    auth, clock, _ = make(nonce_ttl_s=60.0)
    nonce = auth.new_nonce(A)
    clock.t += 59
    assert auth.check("DESCRIBE", URI, digest(nonce), A) == ("alice", False)  # no conn: not bound
    clock.t += 2
    # Right password, expired nonce: stale (the client retries with a fresh one, no prompt)...
    assert auth.check("DESCRIBE", URI, digest(nonce), A) == (None, True)
    # ...a wrong password with the same nonce is a plain failure.
    assert auth.check("DESCRIBE", URI, digest(nonce, pw="nope"), A) == (None, False)


async def test_stale_answer_has_a_fresh_nonce_and_is_no_failure() -> None:
    auth, clock, _ = make(nonce_ttl_s=60.0)
    nonce = auth.new_nonce(A)
    clock.t += 61
    res = await auth.verify("DESCRIBE", URI, digest(nonce), A, "10.0.0.1:5000")
    assert res.user is None and not res.failed and auth.failures == 0
    assert "stale=TRUE" in res.challenge[0][1]
    fresh = _nonce_of(res.challenge)
    assert fresh != nonce
    assert (await auth.verify("DESCRIBE", URI, digest(fresh), A, "10.0.0.1:5000")).user == "alice"


def test_bound_nonce_lives_with_its_connection_only() -> None:
    """ffmpeg/VLC/GStreamer reuse one nonce for a whole session: it stays valid on its connection while used."""
    auth, clock, _ = make(nonce_ttl_s=60.0)
    nonce = auth.new_nonce(A)
    assert auth.check("DESCRIBE", URI, digest(nonce), A, "A:1") == ("alice", False)
    for _ in range(10):  # a keepalive every 50 s for 500 s: longer than the TTL, fine on its connection
        clock.t += 50
        keepalive = digest(nonce, method="GET_PARAMETER")
        assert auth.check("GET_PARAMETER", URI, keepalive, A, "A:1") == ("alice", False)
    # The same header on another connection from the same address: a replay (or a client that
    # reconnected): stale, so only someone who knows the password can go on, with a fresh nonce.
    assert auth.check("GET_PARAMETER", URI, digest(nonce, method="GET_PARAMETER"), A, "A:2") == (None, True)
    # Unused for longer than the TTL: stale on its own connection too.
    clock.t += 61
    assert auth.check("GET_PARAMETER", URI, digest(nonce, method="GET_PARAMETER"), A, "A:1") == (None, True)


def test_nonce_from_another_address_is_not_ours() -> None:
    auth, _, _ = make()
    nonce = auth.new_nonce(A)
    assert auth.check("DESCRIBE", URI, digest(nonce), B, "B:1") == (None, False)  # bad, not even stale
    assert auth.nonce_state(nonce, B) == "bad"
    assert auth.nonce_state(nonce, A) == "ok"
    # Forged: our format, not our signature; garbage of any kind.
    assert auth.nonce_state("abc" + "0" * 24, A) == "bad"
    for junk in ("", "x", "é" * 30, "zz" + nonce[2:]):
        assert auth.nonce_state(junk, A) == "bad"


def test_non_ascii_headers_are_refused_not_raised() -> None:
    auth, _, _ = make()
    nonce = auth.new_nonce(A)
    bad = (
        f'Digest username="alice", realm="streamproxy", nonce="{nonce}", uri="{URI}", response="é{"0" * 31}"'
    )
    assert auth.check("DESCRIBE", URI, bad, A) == (None, False)
    assert auth.check("DESCRIBE", URI, "Basic é", A) == (None, False)
    assert (
        parse_basic("Basic é") is None
        and parse_basic("Basic !!!") is None
        and parse_basic("Bearer x") is None
    )
    assert parse_basic(basic("a", "b:c")) == ("a", "b:c")
    assert (
        parse_basic(basic("", "x")) is None
        and parse_basic("Basic " + base64.b64encode(b"nocolon").decode()) is None
    )


# --- no difference between an unknown user and a wrong password ---


async def test_unknown_user_answers_and_works_like_a_wrong_password(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_md5, real_sha = auth_mod._md5, hashlib.sha256

    def counting_md5(text: str) -> str:
        calls.append("md5")
        return real_md5(text)

    def counting_sha(data: bytes = b"") -> hashlib._Hash:
        calls.append("sha")
        return real_sha(data)

    monkeypatch.setattr(auth_mod, "_md5", counting_md5)
    monkeypatch.setattr(auth_mod.hashlib, "sha256", counting_sha)

    def shape(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(k, re.sub(r'nonce="[^"]+"', 'nonce="N"', v)) for k, v in headers]

    answers = []
    for header_of in (
        lambda n: digest(n, user="alice", pw="wrong"),
        lambda n: digest(n, user="mallory", pw="wrong"),
        lambda n: basic("alice", "wrong"),
        lambda n: basic("mallory", "wrong"),
    ):
        auth, _, _ = make()
        nonce = auth.new_nonce(A)
        calls.clear()
        res = await auth.verify("DESCRIBE", URI, header_of(nonce), A, "A:1")
        answers.append((res.user, res.failed, shape(res.challenge), sorted(calls)))
    wrong_pw_digest, unknown_digest, wrong_pw_basic, unknown_basic = answers
    assert wrong_pw_digest == unknown_digest
    assert wrong_pw_basic == unknown_basic
    assert wrong_pw_digest[0] is None and wrong_pw_digest[1] is True
    assert wrong_pw_digest[3].count("md5") >= 3  # the digest was computed for the unknown user too


# --- the failure counter ---


async def test_backoff_after_n_failures_grows_capped_and_success_resets() -> None:
    auth, clock, sleeps = make(max_failures=5, backoff_base_s=0.25, backoff_max_s=2.0)
    wrong, right = basic("alice", "nope"), basic("alice", "s3cret")
    for _ in range(5):
        assert (await auth.verify("DESCRIBE", URI, wrong, A)).failed
    assert sleeps.delays == []  # a few typos cost nothing
    for _ in range(6):
        assert (await auth.verify("DESCRIBE", URI, wrong, A)).failed
    assert sleeps.delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    # Another address is not slowed by this one's failures.
    await auth.verify("DESCRIBE", URI, wrong, B)
    assert len(sleeps.delays) == 6
    # Right credentials are never refused, even while backing off, and reset the address.
    assert (await auth.verify("DESCRIBE", URI, right, A)).user == "alice"
    for _ in range(5):
        await auth.verify("DESCRIBE", URI, wrong, A)
    assert len(sleeps.delays) == 6
    # No request header at all is no failure (clients probe without credentials first).
    res = await auth.verify("DESCRIBE", URI, None, A)
    assert res.user is None and not res.failed and len(res.challenge) == 2
    # The window: an address that stops failing is forgotten.
    clock.t += auth.failure_window_s + 1
    await auth.verify("DESCRIBE", URI, wrong, A)
    assert len(sleeps.delays) == 6


async def test_backoff_serializes_parallel_attempts_from_one_address() -> None:
    """Many connections from one address do not multiply its guesses: one attempt at a time, each
    failure holding the turn for its delay (closing early does not free it either)."""
    waiting = most = served = 0

    async def sleep(delay: float) -> None:
        # How many failures wait out their delay at once: serialized, never more than one.
        nonlocal waiting, most, served
        waiting += 1
        most = max(most, waiting)
        try:
            await asyncio.sleep(delay)
        finally:
            waiting -= 1
            served += 1

    auth = Authenticator(
        USERS, "streamproxy", max_failures=2, backoff_base_s=0.05, backoff_max_s=0.05, sleep=sleep
    )
    wrong = basic("alice", "nope")
    for _ in range(2):
        await auth.verify("DESCRIBE", URI, wrong, A)
    results = await asyncio.gather(*(auth.verify("DESCRIBE", URI, wrong, A) for _ in range(12)))
    assert all(r.failed for r in results)
    assert served == 12 and most == 1, (served, most)  # in parallel, all 12 would wait at once


def test_tables_are_bounded() -> None:
    auth, clock, _ = make(max_clients=8, max_bound_nonces=4)

    async def fail_from(addr: str) -> None:
        await auth.verify("DESCRIBE", URI, basic("alice", "nope"), addr)

    async def main() -> None:
        for i in range(100):
            await fail_from(f"10.1.{i // 250}.{i % 250}")
        assert auth.tracked_clients() == 8
        # An IPv6 host owns its /64: its addresses count as one client.
        for i in range(50):
            await fail_from(f"2001:db8:1:2::{i:x}")
        assert client_key("2001:db8:1:2::7") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
        assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
        assert auth.tracked_clients() == 8
        clock.t += auth.failure_window_s + 1
        await fail_from("10.9.9.9")
        assert auth.tracked_clients() == 1  # the rest expired

    asyncio.run(main())
    for i in range(20):  # nonces: only successes are stored, and only so many
        nonce = auth.new_nonce(A)
        assert auth.check("DESCRIBE", URI, digest(nonce), A, f"A:{i}")[0] == "alice"
    assert auth.bound_nonces() == 4
    clock.t += auth.nonce_ttl_s + 1
    nonce = auth.new_nonce(A)
    auth.check("DESCRIBE", URI, digest(nonce), A, "A:x")
    assert auth.bound_nonces() == 1


async def test_failures_logged_as_a_summary_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    told: list[None] = []
    auth, clock, _ = make(on_failure=lambda: told.append(None))
    with caplog.at_level(logging.WARNING, logger="streamproxy.rtsp.auth"):
        for _ in range(30):
            await auth.verify("DESCRIBE", URI, basic("alice", "nope"), A, name="cam")
        assert len(caplog.records) == 1
        clock.t += auth_mod.LOG_EVERY_S
        await auth.verify("DESCRIBE", URI, basic("alice", "nope"), A, name="cam")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("cam: RTSP authentication failed from 10.0.0.1")
    assert "30 in a row" not in lines[0] and "30 time(s)" in lines[1] and "nope" not in "".join(lines)
    assert auth.failures == len(told) == 31  # each failure told once (the servers: the metric)


def _metric(protocol: str) -> float:
    value = metrics.REGISTRY.get_sample_value("streamproxy_auth_failures_total", {"protocol": protocol})
    return value or 0.0


# --- on loopback ---


@need_ffmpeg
@pytest.mark.timeout(90)
async def test_real_client_with_digest_and_a_brute_force_slowed() -> None:
    users = [User(username="viewer", password="pa:ss w0rd")]
    async with serve(users=users) as (server, _hub, url):
        failures0 = _metric("rtsp")
        # ffprobe answers our Digest challenge (it prefers Digest to Basic); a bound nonce proves it.
        rc, out, err = await run(
            "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries", "stream=codec_name",
            "-of", "csv=p=0", with_creds(url, "viewer", "pa:ss w0rd"), timeout=30,
        )  # fmt: skip
        assert rc == 0 and "h264" in out, err
        assert server.auth.bound_nonces() >= 1 and _metric("rtsp") == failures0

        # A bounded brute force on one connection: the first few are answered at once, then each
        # guess waits its turn (small delays here to keep the test short).
        server.auth.backoff_base_s = server.auth.backoff_max_s = 0.05
        raw = await RawRtsp.connect(server.port)
        took: list[float] = []
        for i in range(30):
            t0 = time.monotonic()
            status, hdrs, _ = await raw.request(
                "DESCRIBE", url, {"Authorization": basic("viewer", f"guess{i}")}
            )
            took.append(time.monotonic() - t0)
            assert status == 401 and len(hdrs["www-authenticate"]) == 2
        slowed = took[server.auth.max_failures :]
        assert len(slowed) == 25 and min(slowed) >= 0.05 * 0.95
        # More connections from the same address do not help it: still one guess per delay.
        conns = [await RawRtsp.connect(server.port) for _ in range(5)]
        t0 = time.monotonic()

        async def guesses(c: RawRtsp) -> None:
            for i in range(4):
                status, _, _ = await c.request("DESCRIBE", url, {"Authorization": basic("viewer", f"x{i}")})
                assert status == 401

        await asyncio.gather(*(guesses(c) for c in conns))
        assert time.monotonic() - t0 >= 20 * 0.05 * 0.95
        assert _metric("rtsp") - failures0 == 50
        # The right password still gets in (it waits its turn) and resets the address.
        status, _, _ = await raw.request("DESCRIBE", url, {"Authorization": basic("viewer", "pa:ss w0rd")})
        assert status == 200 and server.auth.tracked_clients() == 0
        for c in (raw, *conns):
            c.writer.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("metrics_auth", [False, True])
async def test_metrics_open_by_default_behind_auth_when_asked(metrics_auth: bool) -> None:
    cfg = make_cfg(users=[{"username": "alice", "password": "s3cret"}])
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"metrics_auth": metrics_auth})})
    async with serving(cfg, feed=False) as (_app, _server, base):
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"{base}/metrics")
            assert r.status == (401 if metrics_auth else 200)
            r = await http.get(f"{base}/metrics", headers={"Authorization": basic("alice", "s3cret")})
            assert r.status == 200 and "streamproxy_auth_failures_total" in await r.text()
            for path in ("/healthz", "/readyz"):
                assert (await http.get(f"{base}{path}")).status == 200, path


@pytest.mark.timeout(30)
async def test_http_answers_alike_for_unknown_user_and_wrong_password() -> None:
    cfg = make_cfg(users=[{"username": "alice", "password": "s3cret"}])
    async with serving(cfg, feed=False) as (_app, server, base):
        before = _metric("http")
        async with aiohttp.ClientSession() as http:
            answers = []
            for user in ("alice", "mallory"):
                r = await http.get(f"{base}/api/cameras", headers={"Authorization": basic(user, "wrong")})
                answers.append((r.status, r.headers.get("WWW-Authenticate"), await r.text()))
            assert answers[0] == answers[1] and answers[0][0] == 401
        assert server.auth.failures == 2 and _metric("http") - before == 2


def test_helpers_for_callers() -> None:
    """What the servers rely on: the back-off schedule and a disabled authenticator."""
    auth = Authenticator([], "r")
    assert not auth.enabled
    a2 = Authenticator(USERS, "r", max_failures=3, backoff_base_s=1.0, backoff_max_s=3.0)
    schedule: list[float] = [a2.backoff_s(n) for n in range(1, 8)]
    assert schedule == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0]
    f: Callable[[int], float] = a2.backoff_s
    assert f(10**6) == 3.0  # no overflow however long it goes on
