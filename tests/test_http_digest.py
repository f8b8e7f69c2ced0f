"""HTTP Digest on snapshots and ONVIF (rtsp/auth.py with protocol="http", serve/http/server.py): a digest is
for its own request target only, each request counter of a nonce is taken once (a captured header
replayed, on any connection, gets a stale 401), nonces expire, the table is bounded and a nonce it
forgot is not usable again; on loopback: real clients (aiohttp's DigestAuthMiddleware, curl) get in,
a replayed header and a digest for another URI do not, on snapshots and on ONVIF."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil

import aiohttp
import pytest
from webkit import make_cfg, serving

from streamproxy.config import OnvifConfig, User
from streamproxy.rtsp.auth import NC_WINDOW, Authenticator, parse_auth_params, same_target

pytestmark = pytest.mark.timeout(60)

USERS = [User(username="alice", password="s3cret")]
A = "10.0.0.1"
SNAP1 = "/api/cameras/cam1/snapshot.jpg"
SNAP2 = "/api/cameras/cam2/snapshot.jpg"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def answer(
    nonce: str,
    uri: str = SNAP1,
    nc: int | None = 1,
    *,
    method: str = "GET",
    user: str = "alice",
    pw: str = "s3cret",
    cnonce: str = "0a4f113b",
    realm: str = "streamproxy",
) -> str:
    """An Authorization header as an RFC 7616 client writes it (qop=auth), or RFC 2069 (nc None)."""
    ha1, ha2 = _md5(f"{user}:{realm}:{pw}"), _md5(f"{method}:{uri}")
    head = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5'
    if nc is None:
        return head + f', response="{_md5(f"{ha1}:{nonce}:{ha2}")}"'
    ncs = f"{nc:08x}"
    resp = _md5(f"{ha1}:{nonce}:{ncs}:{cnonce}:auth:{ha2}")
    return head + f', qop=auth, nc={ncs}, cnonce="{cnonce}", response="{resp}"'


def make(**kw: float) -> tuple[Authenticator, Clock]:
    clock = Clock()
    return Authenticator(USERS, "streamproxy", protocol="http", clock=clock, **kw), clock  # type: ignore[arg-type]


def check(auth: Authenticator, header: str, target: str = SNAP1) -> tuple[str | None, bool]:
    return auth.check("GET", target, header, A)


def nonce_of(header: str) -> str:
    return parse_auth_params(header.partition(" ")[2])["nonce"]


# --- the checker ---


def test_http_challenge_offers_qop_and_rtsp_keeps_its_own() -> None:
    auth, _ = make()
    digest = auth.challenge(client=A)[0][1]
    assert digest.startswith("Digest ") and 'qop="auth"' in digest
    # RTSP clients answer without qop and reuse one nonce per session (bound to the connection there).
    assert "qop" not in Authenticator(USERS, "streamproxy").challenge(client=A)[0][1]


def test_a_digest_opens_its_own_target_only() -> None:
    auth, _ = make()
    nonce = auth.new_nonce(A)
    assert check(auth, answer(nonce, SNAP1, 1)) == ("alice", False)
    # The same header sent for another camera's snapshot: its uri is not that request's target.
    assert check(auth, answer(nonce, SNAP1, 2), SNAP2) == (None, False)
    # Nor another path or query of the same camera, nor another ONVIF service.
    assert check(auth, answer(nonce, SNAP1, 3), SNAP1 + "?x=1") == (None, False)
    assert check(auth, answer(nonce, "/onvif/media_service", 4, method="POST"), "/onvif/device_service") == (
        None,
        False,
    )
    # A digest made for the other target opens it (same nonce, the next counter).
    assert check(auth, answer(nonce, SNAP2, 5), SNAP2) == ("alice", False)
    # The absolute form of the same target (a client that went through a proxy) is the same target.
    assert check(auth, answer(nonce, f"http://proxy.example:8080{SNAP1}", 6), SNAP1) == ("alice", False)
    assert same_target(SNAP1, f"http://h{SNAP1}") and not same_target(SNAP1, f"http://h{SNAP2}")
    assert not same_target("http://[::1/x", "/x")  # an unparsable uri= is just another target


def test_each_request_counter_is_taken_once() -> None:
    auth, _ = make()
    nonce = auth.new_nonce(A)
    assert check(auth, answer(nonce, nc=1)) == ("alice", False)
    # The same header again (a replay, on this connection or any other): stale, not a failure.
    assert check(auth, answer(nonce, nc=1)) == (None, True)
    assert check(auth, answer(nonce, nc=2)) == ("alice", False)
    # Parallel requests on several connections may arrive out of order: each counter once.
    assert check(auth, answer(nonce, nc=5)) == ("alice", False)
    assert check(auth, answer(nonce, nc=3)) == ("alice", False)
    assert check(auth, answer(nonce, nc=3)) == (None, True)
    assert check(auth, answer(nonce, nc=4)) == ("alice", False)
    assert check(auth, answer(nonce, nc=5)) == (None, True)
    # Far behind the highest one seen: whether it was used cannot be told any more, so it is stale.
    high = 7 + NC_WINDOW
    assert check(auth, answer(nonce, nc=high)) == ("alice", False)
    assert check(auth, answer(nonce, nc=6)) == (None, True)  # never used, but out of the window
    assert check(auth, answer(nonce, nc=7)) == ("alice", False)  # the window's oldest, unused
    # Another cnonce does not make an old counter new.
    assert check(auth, answer(nonce, nc=high, cnonce="ffff")) == (None, True)


def test_without_qop_a_nonce_serves_one_request() -> None:
    """An RFC 2069 client (no qop, no counter): each nonce once; the next request gets a fresh one."""
    auth, _ = make()
    nonce = auth.new_nonce(A)
    assert check(auth, answer(nonce, nc=None)) == ("alice", False)
    assert check(auth, answer(nonce, nc=None)) == (None, True)
    assert check(auth, answer(nonce, nc=7)) == (None, True)  # nor with a counter afterwards
    # A nonce used with counters cannot be used without one either.
    other = auth.new_nonce(A)
    assert check(auth, answer(other, nc=1)) == ("alice", False)
    assert check(auth, answer(other, nc=None)) == (None, True)


async def test_a_replay_is_answered_stale_and_counts_no_failure() -> None:
    auth, _ = make()
    nonce = auth.new_nonce(A)
    header = answer(nonce)
    assert (await auth.verify("GET", SNAP1, header, A)).user == "alice"
    res = await auth.verify("GET", SNAP1, header, A)
    assert res.user is None and not res.failed and auth.failures == 0
    assert "stale=TRUE" in res.challenge[0][1] and nonce_of(res.challenge[0][1]) != nonce
    # The client that knows the password goes on with the fresh nonce, no prompt.
    fresh = nonce_of(res.challenge[0][1])
    assert (await auth.verify("GET", SNAP1, answer(fresh), A)).user == "alice"
    # A wrong password is a failure whatever the nonce.
    res = await auth.verify("GET", SNAP1, answer(fresh, nc=2, pw="nope"), A)
    assert res.user is None and res.failed and auth.failures == 1


def test_nonces_expire_unless_used() -> None:
    auth, clock = make(nonce_ttl_s=60.0)
    unused = auth.new_nonce(A)
    kept = auth.new_nonce(A)
    assert check(auth, answer(kept, nc=1)) == ("alice", False)
    for i in range(2, 12):  # a snapshot every 50 s for 500 s: longer than the TTL, fine while used
        clock.t += 50
        assert check(auth, answer(kept, nc=i)) == ("alice", False)
    assert check(auth, answer(unused, nc=1)) == (None, True)  # issued 500 s ago, never used: stale
    clock.t += 61
    assert check(auth, answer(kept, nc=12)) == (None, True)  # unused for longer than the TTL


def test_bad_counters_nonces_and_passwords_are_failures() -> None:
    auth, _ = make()
    nonce = auth.new_nonce(A)
    good = answer(nonce, nc=1)
    for bad in (
        good.replace("nc=00000001", "nc=zz"),
        good.replace("nc=00000001", "nc=123456789"),
        answer(nonce, nc=0),
        good.replace(', cnonce="0a4f113b"', ""),
        good.replace("qop=auth", "qop=auth-int"),
        answer(nonce, nc=1, pw="wrong"),
        answer(nonce, nc=1, user="mallory"),
        answer(nonce, nc=1, realm="other"),
        answer("abc" + "0" * 24, nc=1),  # not our nonce
    ):
        assert check(auth, bad) == (None, False), bad
    assert auth.check("GET", SNAP1, good, "10.0.0.2") == (None, False)  # another client's nonce
    assert check(auth, good) == ("alice", False)  # none of the above spent its counter


def test_the_table_is_bounded_and_a_forgotten_nonce_is_not_usable_again() -> None:
    auth, clock = make(max_bound_nonces=4)
    nonces = []
    for _ in range(6):  # a nonce a second, each used at once
        clock.t += 1
        nonces.append(auth.new_nonce(A))
        assert check(auth, answer(nonces[-1], nc=1)) == ("alice", False)
    assert auth.used_http_nonces() == 4
    # The two pushed out are still young: from zero their counters could be replayed, so they are stale.
    for n in nonces[:2]:
        assert check(auth, answer(n, nc=1)) == (None, True)
        assert check(auth, answer(n, nc=2)) == (None, True)
    for n in nonces[2:]:
        assert check(auth, answer(n, nc=2)) == ("alice", False)
    # Nonces issued after the forgotten ones are not affected; unused ones expire and are dropped.
    clock.t += auth.nonce_ttl_s + 1
    assert check(auth, answer(auth.new_nonce(A), nc=1)) == ("alice", False)
    assert auth.used_http_nonces() == 1


# --- on loopback ---


def _users() -> list[dict[str, str]]:
    return [{"username": u.username, "password": u.password} for u in USERS]


async def _challenge(http: aiohttp.ClientSession, url: str, method: str = "GET", data: bytes = b"") -> str:
    async with http.request(method, url, data=data) as r:
        assert r.status == 401
        digest = next(v for v in r.headers.getall("WWW-Authenticate") if v.startswith("Digest "))
        assert 'qop="auth"' in digest
        return nonce_of(digest)


async def test_snapshot_digest_with_real_clients_and_replays_refused() -> None:
    cfg = make_cfg(users=_users(), cameras=("cam1", "cam2"))
    async with serving(cfg, feed=False) as (_app, server, base):
        # A real client (aiohttp's RFC 7616 middleware): several snapshots, one nonce, its counter rising.
        digest_mw = aiohttp.DigestAuthMiddleware("alice", "s3cret")
        async with aiohttp.ClientSession(middlewares=(digest_mw,)) as http:
            for cam in ("cam1", "cam2", "cam1"):
                async with http.get(f"{base}/api/cameras/{cam}/snapshot.jpg") as r:
                    assert r.status == 200 and (await r.read())[:3] == b"\xff\xd8\xff", cam
        assert server.auth.failures == 0

        async with aiohttp.ClientSession() as http:
            nonce = await _challenge(http, base + SNAP1)
            header = answer(nonce, SNAP1)
            async with http.get(base + SNAP1, headers={"Authorization": header}) as r:
                assert r.status == 200
        # The captured header on a new connection: refused, answered stale with a fresh nonce.
        async with aiohttp.ClientSession() as http:
            async with http.get(base + SNAP1, headers={"Authorization": header}) as r:
                assert r.status == 401
                digest = next(v for v in r.headers.getall("WWW-Authenticate") if v.startswith("Digest "))
                assert "stale=TRUE" in digest and nonce_of(digest) != nonce
            # A digest for cam1's snapshot does not open cam2's, even with an unused counter.
            async with http.get(base + SNAP2, headers={"Authorization": answer(nonce, SNAP1, 2)}) as r:
                assert r.status == 401
            # ...and made for cam2, with the next counter, it does.
            async with http.get(base + SNAP2, headers={"Authorization": answer(nonce, SNAP2, 3)}) as r:
                assert r.status == 200
        assert server.auth.failures == 1  # the cam1-for-cam2 digest; the replay was no failure


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_fetches_snapshots_with_digest() -> None:
    """curl --digest: one process, two URLs (the second reuses the nonce with nc=2), then a new one."""
    cfg = make_cfg(users=_users(), cameras=("cam1", "cam2"))
    async with serving(cfg, feed=False) as (_app, server, base):
        for urls in ([base + SNAP1, base + SNAP2], [base + SNAP1]):
            args = ["-sS", "--digest", "-u", "alice:s3cret", "-w", "%{http_code}\\n"]
            for url in urls:
                args += ["-o", "/dev/null", url]
            proc = await asyncio.create_subprocess_exec(
                "curl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            codes = re.findall(r"\d{3}", out.decode())
            assert proc.returncode == 0 and codes == ["200"] * len(urls), (out, err)
        assert server.auth.failures == 0


async def test_onvif_http_digest_is_bound_to_its_service_and_not_replayable() -> None:
    cfg = make_cfg(users=_users(), cameras=("cam1",))
    cfg = cfg.model_copy(update={"onvif": OnvifConfig.model_validate({"enabled": True})})
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        b'xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><s:Body><tds:GetDeviceInformation/></s:Body></s:Envelope>'
    )
    device, media = "/onvif/device_service", "/onvif/media_service"
    ctype = {"Content-Type": "application/soap+xml; charset=utf-8"}
    async with serving(cfg, feed=False) as (_app, _server, base):
        async with aiohttp.ClientSession() as http:
            nonce = await _challenge(http, base + device, "POST", body)
            header = answer(nonce, device, 1, method="POST")
            async with http.post(base + device, data=body, headers={**ctype, "Authorization": header}) as r:
                assert r.status == 200, await r.text()
        async with aiohttp.ClientSession() as http:
            # Replayed on a new connection: refused.
            async with http.post(base + device, data=body, headers={**ctype, "Authorization": header}) as r:
                assert r.status == 401 and "NotAuthorized" in await r.text()
            # A digest for the media service does not open the device service.
            other = answer(nonce, media, 2, method="POST")
            async with http.post(base + device, data=body, headers={**ctype, "Authorization": other}) as r:
                assert r.status == 401
            # The next counter, for this service: in.
            nxt = answer(nonce, device, 3, method="POST")
            async with http.post(base + device, data=body, headers={**ctype, "Authorization": nxt}) as r:
                assert r.status == 200
