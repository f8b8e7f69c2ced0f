"""Viewer authentication: Digest (MD5, RFC 2617) and Basic, for the RTSP server and the HTTP server
(Basic for the page and the API; Digest as well for snapshots and ONVIF): one parser and one checker.

What it guards against, and how:

- **Nonce replay.** A nonce is issued by us: a timestamp and the client's address, signed with a
  per-process secret (HMAC-SHA256), so an unauthenticated flood of 401s stores nothing. A nonce
  from another address is not ours for this client ("bad"). A fresh nonce may be used for
  `nonce_ttl_s` after it was issued; its first successful use binds it to that connection, where
  it stays valid as long as it is used at least every `nonce_ttl_s` (RTSP clients without qop,
  ffmpeg, GStreamer and VLC among them, reuse one nonce for a whole session and send a
  keepalive every ~30 s). Anywhere else, or once expired, it is *stale*: a client that got the
  password right is answered 401 with `stale=TRUE` and a fresh nonce, and retries without
  asking its user (RFC 2617 3.2.1); a captured header replayed on another connection gets nothing.
  Only successful uses are stored, in a table capped at `MAX_BOUND_NONCES`.
- **HTTP Digest** (`protocol="http"`: snapshots, ONVIF) cannot bind a nonce to a connection: HTTP
  clients open new ones at will. Instead the challenge offers `qop="auth"` (RFC 7616; curl, browsers,
  httpx, requests, gSOAP all answer it) and each use of a nonce carries a request counter `nc`
  that the server accepts once: a captured header replayed, on any connection, is answered stale.
  Counters may arrive a little out of order (parallel requests on several connections), so each
  nonce keeps the highest `nc` seen and which of the `NC_WINDOW` below it were used (as IPsec's
  anti-replay window does); older ones are stale. A client without qop (RFC 2069) can use a nonce
  once, then gets `stale=TRUE` and a fresh one. A nonce stays usable while used at least every
  `nonce_ttl_s`. The digest's `uri` must be the request's own target (the path and query it was
  sent to), so a digest for one camera's snapshot or one ONVIF service opens no other. Only
  successes are stored (capped at `MAX_BOUND_NONCES`); a nonce pushed out of a full table while
  still fresh raises a floor: nonces issued up to then are stale, not usable again from zero.
- **Telling users apart.** An unknown user name is checked against a random dummy password, through
  the same code, so the status, the headers and the work are those of a wrong password. Passwords
  and digests are compared in constant time (`hmac.compare_digest`, on SHA-256 of the passwords so
  their lengths do not show either).
- **Brute force.** Failures are counted per client address (an IPv6 /64 counts as one address:
  one host may own all of it) over a sliding window. From the `max_failures`-th failure on, that
  address is checked one attempt at a time, and each further failure holds its turn for a growing
  delay (`backoff_base_s` doubling up to `backoff_max_s`) before its 401: closing the connection
  early does not free the turn, so the rate from one address is at most one guess per delay,
  whatever the number of connections. Correct credentials are never refused (a NAT-shared
  address must not lock its other users out); a success resets the address. The table of
  addresses is capped at `MAX_CLIENTS` and forgets an address after `failure_window_s` without
  failures. Each failure is reported to `on_failure` (the servers pass the Prometheus counter
  `streamproxy_auth_failures_total{protocol}`: this library knows no metrics); the log gets one
  summary line per address per minute at most, never one per attempt.

Credentials never reach a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

from streamproxy.rtsp.protocol import log_text, parse_path

log = logging.getLogger(__name__)

NonceState = Literal["ok", "stale", "bad"]

NONCE_TTL_S = 120.0  # a fresh nonce's life, and how long a bound one may go unused
MAX_BOUND_NONCES = 4096  # nonces that authenticated a connection (only successes are stored)
NC_WINDOW = 64  # HTTP Digest: how far below the highest request counter an unused one is still taken
_NC_SPENT = 1 << 40  # the "highest nc" of a nonce used without qop: every counter is then too old
MAX_FAILURES = 5  # failures within the window before an address is slowed down
FAILURE_WINDOW_S = 60.0  # an address is forgotten after this long without a failure
BACKOFF_BASE_S = 0.25  # the first delayed answer; each further failure doubles it...
BACKOFF_MAX_S = 4.0  # ...up to this
MAX_CLIENTS = 4096  # addresses with recent failures that are remembered
LOG_EVERY_S = 60.0  # at most one failure summary per address this often
_SIG_CHARS = 24
_NC = re.compile(r"[0-9a-fA-F]{1,8}")  # a Digest request counter (RFC 7616: 8 hex digits; some send fewer)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two strings from the network (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def client_key(address: str) -> str:
    """The unit the failure counter counts: the IPv4 address, or the IPv6 /64 (one host's share)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def parse_auth_params(text: str) -> dict[str, str]:
    """`k1="v1", k2=v2` -> dict, honouring quoted strings that contain commas."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " ,\t":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip().lower()
        i = eq + 1
        if i < n and text[i] == '"':
            i += 1
            val = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                val.append(text[i])
                i += 1
            i += 1
            out[key] = "".join(val)
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            out[key] = text[i:end].strip()
            i = end
    return out


def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """`Basic base64(user:password)` -> (user, password); None when absent, not Basic or malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


@dataclass(frozen=True, slots=True)
class AuthResult:
    """`user`: who, or None (answer 401 with `challenge`). `failed`: wrong credentials were sent
    (not merely none, nor right ones with a stale nonce)."""

    user: str | None
    failed: bool = False
    challenge: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Bound:
    conn: str
    last_used: float


@dataclass(slots=True)
class _NonceUse:
    """An HTTP Digest nonce that authenticated: its request counters seen (see the module doc)."""

    issued_ms: int
    last_used: float
    high: int = 0  # the highest nc accepted (0: none yet)
    seen: int = 0  # bit i: nc == high - 1 - i was accepted

    def take(self, nc: int | None) -> bool:
        """Accept the request counter `nc` (None: a use without qop) once; False for a replay."""
        if nc is None:
            if self.high or self.seen:
                return False
            self.high = _NC_SPENT  # used once without a counter: nothing more is accepted
            return True
        if nc > self.high:
            shift = nc - self.high
            self.seen = ((self.seen << shift) | (1 << (shift - 1))) & ((1 << NC_WINDOW) - 1)
            self.high = nc
            return True
        back = self.high - nc
        if back == 0 or back > NC_WINDOW or self.seen & (1 << (back - 1)):
            return False
        self.seen |= 1 << (back - 1)
        return True


def _origin_form(uri: str) -> str | None:
    """`/path?query` of a request target in absolute form (`http://host/path?query`), else None."""
    if "://" not in uri:
        return None
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def same_target(digest_uri: str, target: str) -> bool:
    """Whether a Digest `uri=` names the request's target (RFC 7616 3.4.6): the same string, or the
    same path and query where one side is in absolute form (a client that went through a proxy)."""
    if digest_uri == target:
        return True
    a, b = _origin_form(digest_uri) or digest_uri, _origin_form(target) or target
    return a == b


@dataclass(slots=True)
class _Client:
    failures: int = 0
    last_failure: float = 0.0
    unlogged: int = 0
    last_log: float = float("-inf")
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)


class Credentials(Protocol):
    """A viewer's user name and password (the config's `User`; the library does not import the config)."""

    @property
    def username(self) -> str: ...

    @property
    def password(self) -> str: ...


class Authenticator:
    """Checks Authorization headers against the configured users; counts failures per address.

    `check` is the pure check; `verify` (RTSP) and `verify_basic` (HTTP) add the failure counter
    and the back-off, and are what the servers call. `client` is the peer's address (no port);
    `conn` names the connection ("addr:port" while it is open), the unit a nonce is bound to.
    """

    def __init__(
        self,
        users: Sequence[Credentials],
        realm: str,
        nonce_ttl_s: float = NONCE_TTL_S,
        *,
        protocol: Literal["rtsp", "http"] = "rtsp",
        on_failure: Callable[[], None] | None = None,
        max_failures: int = MAX_FAILURES,
        failure_window_s: float = FAILURE_WINDOW_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        max_clients: int = MAX_CLIENTS,
        max_bound_nonces: int = MAX_BOUND_NONCES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._passwords = {u.username: u.password for u in users}
        self.realm = realm
        self.nonce_ttl_s = nonce_ttl_s
        self.protocol = protocol
        self.max_failures = max_failures
        self.failure_window_s = failure_window_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_clients = max_clients
        self.max_bound_nonces = max_bound_nonces
        self._clock = clock
        self._sleep = sleep
        self._secret = secrets.token_bytes(32)
        # Unknown users are checked against this, so that they cost and answer like a wrong password.
        self._dummy = secrets.token_urlsafe(24)
        self._bound: OrderedDict[str, _Bound] = OrderedDict()  # least recently used first
        # HTTP Digest: nonces that authenticated, and their request counters (least recently used first).
        self._used: OrderedDict[str, _NonceUse] = OrderedDict()
        self._used_floor_ms = -1  # nonces issued at or before this are stale unless in `_used`
        self._clients: OrderedDict[str, _Client] = OrderedDict()  # least recently failed first
        self.failures = 0
        self.on_failure = on_failure  # told of each failure, as it is counted (the servers: the metric)

    @property
    def enabled(self) -> bool:
        return bool(self._passwords)

    # --- nonces ---
    def _sign(self, stamp: str, client: str) -> str:
        return hmac.new(self._secret, f"{stamp}|{client}".encode(), hashlib.sha256).hexdigest()[:_SIG_CHARS]

    def new_nonce(self, client: str = "") -> str:
        # The issue time, and a salt: two clients of one address in one millisecond get their own nonces.
        stamp = f"{int(self._clock() * 1000):x}.{secrets.token_hex(4)}"
        return stamp + self._sign(stamp, client)

    def _issued_ms(self, nonce: str, client: str) -> int | None:
        """When we issued `nonce` to `client` (ms of our clock), or None when it is not ours for it."""
        stamp, sig = nonce[:-_SIG_CHARS], nonce[-_SIG_CHARS:]
        if not stamp or not _same(sig, self._sign(stamp, client)):
            return None
        try:
            return int(stamp.partition(".")[0], 16)
        except ValueError:
            return None

    def nonce_state(self, nonce: str, client: str = "", conn: str | None = None) -> NonceState:
        """'ok', 'stale' (ours for this client, but expired or bound to another connection) or 'bad'.
        RTSP's rule; HTTP Digest nonces follow `_take_http_nonce`."""
        issued_ms = self._issued_ms(nonce, client)
        if issued_ms is None:
            return "bad"
        now = self._clock()
        bound = self._bound.get(nonce)
        if bound is not None:
            fresh = now - bound.last_used <= self.nonce_ttl_s
            return "ok" if conn == bound.conn and fresh else "stale"
        age = now * 1000 - issued_ms
        return "ok" if 0 <= age <= self.nonce_ttl_s * 1000 else "stale"

    def _bind(self, nonce: str, conn: str | None) -> None:
        if conn is None:
            return
        now = self._clock()
        entry = self._bound.pop(nonce, None) or _Bound(conn, now)
        entry.last_used = now
        self._bound[nonce] = entry
        while self._bound:
            oldest = next(iter(self._bound.values()))
            if len(self._bound) <= self.max_bound_nonces and now - oldest.last_used <= self.nonce_ttl_s:
                break
            self._bound.popitem(last=False)

    def _take_http_nonce(self, nonce: str, issued_ms: int, nc: int | None) -> bool:
        """HTTP Digest: True when this use of `nonce` (request counter `nc`, None without qop) is
        fresh and its first; it is then recorded. False: stale (expired, or a replay)."""
        now = self._clock()
        use = self._used.get(nonce)
        if use is None:
            age_ms = now * 1000 - issued_ms
            if not 0 <= age_ms <= self.nonce_ttl_s * 1000 or issued_ms <= self._used_floor_ms:
                return False
            use = _NonceUse(issued_ms, now)
        elif now - use.last_used > self.nonce_ttl_s:
            return False
        if not use.take(nc):
            return False
        use.last_used = now
        self._used.pop(nonce, None)
        self._used[nonce] = use  # most recently used last
        while self._used:
            oldest = next(iter(self._used.values()))
            idle = now - oldest.last_used > self.nonce_ttl_s
            if len(self._used) <= self.max_bound_nonces and not idle:
                break
            self._used.popitem(last=False)
            if not idle:
                # Forgotten while still usable: its counters could be replayed from zero, so every
                # nonce issued up to it is stale from now on (its clients get a fresh one at no prompt).
                self._used_floor_ms = max(self._used_floor_ms, oldest.issued_ms)
        return True

    def challenge(self, stale: bool = False, client: str = "") -> list[tuple[str, str]]:
        """WWW-Authenticate headers offering Digest first (clients pick the first they support) and Basic.
        HTTP's Digest offers qop="auth" (replays are refused by its request counter); RTSP's does
        not (RTSP clients answer without qop, and one nonce serves a whole session there)."""
        digest = f'Digest realm="{self.realm}", nonce="{self.new_nonce(client)}", algorithm=MD5'
        if self.protocol == "http":
            digest += ', qop="auth"'
        if stale:
            digest += ", stale=TRUE"
        return [("WWW-Authenticate", digest), ("WWW-Authenticate", f'Basic realm="{self.realm}"')]

    # --- checks ---
    def check(
        self, method: str, uri: str, authorization: str | None, client: str = "", conn: str | None = None
    ) -> tuple[str | None, bool]:
        """(username, stale): username is None when the request is not authenticated. No counting."""
        if not authorization:
            return None, False
        scheme, _, rest = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return self.check_basic(authorization), False
        if scheme == "digest":
            return self._check_digest(method, uri, rest, client, conn)
        return None, False

    def check_basic(self, authorization: str | None) -> str | None:
        """The user a Basic header proves, or None (no counting)."""
        creds = parse_basic(authorization)
        if creds is None:
            return None
        user, password = creds
        expected = self._passwords.get(user)
        # Hashes, so that neither the user's existence nor the password's length shows in the timing.
        given_h = hashlib.sha256(password.encode()).digest()
        expected_h = hashlib.sha256((self._dummy if expected is None else expected).encode()).digest()
        ok = hmac.compare_digest(given_h, expected_h)
        return user if ok and expected is not None else None

    def _check_digest(
        self, method: str, uri: str, params_text: str, client: str, conn: str | None
    ) -> tuple[str | None, bool]:
        p = parse_auth_params(params_text)
        user, nonce, response, d_uri = p.get("username"), p.get("nonce"), p.get("response"), p.get("uri")
        if not user or not nonce or not response or d_uri is None:
            return None, False
        if p.get("realm") != self.realm or p.get("algorithm", "MD5").upper() != "MD5":
            return None, False
        http = self.protocol == "http"
        if http:
            # The digest must be for this very request target: not another snapshot, not another service.
            if not same_target(d_uri, uri):
                return None, False
        else:
            # The digest must be for the camera this request is for: no replay onto another path
            # (RTSP clients may sign a SETUP with the presentation's URI, so the camera is what counts).
            req_path, dig_path = parse_path(uri), parse_path(d_uri)
            if (req_path.name if req_path else "") != (dig_path.name if dig_path else ""):
                return None, False
        issued_ms = self._issued_ms(nonce, client)
        if issued_ms is None:
            return None, False
        password = self._passwords.get(user)
        # An unknown user takes the same path as a wrong password (the dummy never matches).
        ha1 = _md5(f"{user}:{self.realm}:{self._dummy if password is None else password}")
        ha2 = _md5(f"{method}:{d_uri}")
        qop = p.get("qop")
        nc: int | None = None
        if qop:
            nc_text, cnonce = p.get("nc", ""), p.get("cnonce", "")
            if qop.lower() != "auth" or not cnonce or not _NC.fullmatch(nc_text) or int(nc_text, 16) == 0:
                return None, False
            nc = int(nc_text, 16)
            expected = _md5(f"{ha1}:{nonce}:{nc_text}:{cnonce}:{qop}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        if not _same(expected, response.lower()) or password is None:
            return None, False
        if http:
            # Right password: a replayed counter or an old nonce is stale (the client retries with a
            # fresh nonce, no prompt); someone replaying a captured header gets no further.
            return (user, False) if self._take_http_nonce(nonce, issued_ms, nc) else (None, True)
        state = self.nonce_state(nonce, client, conn)
        if state == "stale":
            return None, True  # right password, old or foreign nonce: the client retries with a fresh one
        self._bind(nonce, conn)
        return user, False

    # --- the failure counter ---
    async def verify(
        self,
        method: str,
        uri: str,
        authorization: str | None,
        client: str,
        conn: str | None = None,
        name: str = "-",
    ) -> AuthResult:
        """`check` with the failure counter and back-off (RTSP: Digest or Basic; 401 headers in the result)."""

        def attempt() -> tuple[str | None, bool]:
            return self.check(method, uri, authorization, client, conn)

        return await self._gated(attempt, authorization, client, name, digest=True)

    async def verify_basic(self, authorization: str | None, client: str, name: str = "-") -> AuthResult:
        """`check_basic` with the failure counter and back-off (HTTP); the caller writes its own challenge."""

        def attempt() -> tuple[str | None, bool]:
            return self.check_basic(authorization), False

        return await self._gated(attempt, authorization, client, name, digest=False)

    def password_for(self, user: str) -> tuple[str, bool]:
        """(the user's password, True), or (a random dummy, False) for an unknown user: another
        credential scheme (ONVIF's WS-Security) checks against it, so that an unknown user costs
        and answers exactly like a wrong password."""
        password = self._passwords.get(user)
        return (self._dummy, False) if password is None else (password, True)

    async def verify_with(
        self, check: Callable[[], str | None], scheme: str, client: str, name: str = "-"
    ) -> AuthResult:
        """Another credential scheme's `check` (the user name, or None) under this authenticator's
        per-address failure counter and back-off; the caller answers the failure its own way."""
        return await self._gated(lambda: (check(), False), scheme, client, name, digest=False)

    async def _gated(
        self,
        attempt: Callable[[], tuple[str | None, bool]],
        authorization: str | None,
        client: str,
        name: str,
        *,
        digest: bool,
    ) -> AuthResult:
        key = client_key(client)
        self._expire_clients()
        rec = self._clients.get(key)
        if rec is None or rec.failures < self.max_failures:
            return await self._attempt(attempt, authorization, client, key, name, digest)
        # Backing off: one attempt at a time from this address; a failure keeps the turn while it waits.
        async with rec.gate:
            return await self._attempt(attempt, authorization, client, key, name, digest)

    async def _attempt(
        self,
        attempt: Callable[[], tuple[str | None, bool]],
        authorization: str | None,
        client: str,
        key: str,
        name: str,
        digest: bool,
    ) -> AuthResult:
        user, stale = attempt()
        if user is not None:
            self._clients.pop(key, None)  # a success resets the address
            return AuthResult(user)
        failed = bool(authorization) and not stale
        if failed:
            delay = self._record_failure(key, client, name)
            if delay > 0:
                await self._sleep(delay)
        return AuthResult(None, failed, self.challenge(stale, client) if digest else [])

    def backoff_s(self, failures: int) -> float:
        """The delay before the 401 of an address's `failures`-th failure in a row."""
        over = failures - self.max_failures
        if over <= 0:
            return 0.0
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** min(over - 1, 30)))

    def _expire_clients(self) -> None:
        now = self._clock()
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if len(self._clients) <= self.max_clients and now - oldest.last_failure <= self.failure_window_s:
                break
            self._clients.popitem(last=False)

    def _record_failure(self, key: str, client: str, name: str) -> float:
        now = self._clock()
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure()
        rec = self._clients.pop(key, None) or _Client()
        self._clients[key] = rec  # most recently failed last
        rec.failures += 1
        rec.last_failure = now
        rec.unlogged += 1
        self._expire_clients()
        delay = self.backoff_s(rec.failures)
        if now - rec.last_log >= LOG_EVERY_S:
            # A summary, not a line per attempt: a brute force must not flood the log.
            log.warning(
                "%s: %s authentication failed from %s: %d time(s) since the last report, %d in a row%s",
                log_text(name),  # the path the client asked for
                self.protocol.upper(),
                client,
                rec.unlogged,
                rec.failures,
                f"; answers delayed {delay:.2f} s" if delay else "",
            )
            rec.unlogged = 0
            rec.last_log = now
        return delay

    def tracked_clients(self) -> int:
        """Addresses with recent failures in the table (bounded by `max_clients`)."""
        return len(self._clients)

    def bound_nonces(self) -> int:
        """Nonces bound to a connection in the table (bounded by `max_bound_nonces`)."""
        return len(self._bound)

    def used_http_nonces(self) -> int:
        """HTTP Digest nonces with their request counters in the table (bounded by `max_bound_nonces`)."""
        return len(self._used)
