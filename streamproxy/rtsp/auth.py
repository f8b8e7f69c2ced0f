"""Viewer authentication for RTSP: Digest (MD5, RFC 2617 without qop, as RTSP clients expect) and Basic.

Nonces are stateless: a timestamp signed with a per-process secret, so they expire without a
table to clean. Credentials never reach a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence

from streamproxy.config import User
from streamproxy.rtsp.protocol import parse_path

log = logging.getLogger(__name__)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


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


class Authenticator:
    """Checks an Authorization header against the configured users."""

    def __init__(self, users: Sequence[User], realm: str, nonce_ttl_s: float = 300.0) -> None:
        self._passwords = {u.username: u.password for u in users}
        self.realm = realm
        self.nonce_ttl_s = nonce_ttl_s
        self._secret = secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return bool(self._passwords)

    def _sign(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]

    def new_nonce(self) -> str:
        stamp = f"{time.monotonic_ns() // 1_000_000:x}"
        return stamp + self._sign(stamp)

    def nonce_state(self, nonce: str) -> str:
        """'ok', 'stale' (ours, but expired) or 'bad'."""
        stamp, sig = nonce[:-24], nonce[-24:]
        if not stamp or not hmac.compare_digest(sig, self._sign(stamp)):
            return "bad"
        try:
            issued_ms = int(stamp, 16)
        except ValueError:
            return "bad"
        age = time.monotonic_ns() // 1_000_000 - issued_ms
        return "ok" if 0 <= age <= self.nonce_ttl_s * 1000 else "stale"

    def challenge(self, stale: bool = False) -> list[tuple[str, str]]:
        """WWW-Authenticate headers offering Digest first (clients pick the first they support) and Basic."""
        digest = f'Digest realm="{self.realm}", nonce="{self.new_nonce()}", algorithm=MD5'
        if stale:
            digest += ", stale=TRUE"
        return [("WWW-Authenticate", digest), ("WWW-Authenticate", f'Basic realm="{self.realm}"')]

    def check(self, method: str, uri: str, authorization: str | None) -> tuple[str | None, bool]:
        """(username, stale): username is None when the request is not authenticated."""
        if not authorization:
            return None, False
        scheme, _, rest = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return self._check_basic(rest.strip()), False
        if scheme == "digest":
            return self._check_digest(method, uri, rest)
        return None, False

    def _check_basic(self, token: str) -> str | None:
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        expected = self._passwords.get(user)
        if not sep or expected is None:
            return None
        if hmac.compare_digest(password.encode(), expected.encode()):
            return user
        return None

    def _check_digest(self, method: str, uri: str, params_text: str) -> tuple[str | None, bool]:
        p = parse_auth_params(params_text)
        user, nonce, response, d_uri = p.get("username"), p.get("nonce"), p.get("response"), p.get("uri")
        if not user or not nonce or not response or d_uri is None:
            return None, False
        if p.get("realm") != self.realm or p.get("algorithm", "MD5").upper() != "MD5":
            return None, False
        password = self._passwords.get(user)
        if password is None:
            return None, False
        # The digest must be for the camera this request is for: no replay onto another path.
        req_path, dig_path = parse_path(uri), parse_path(d_uri)
        if (req_path.name if req_path else "") != (dig_path.name if dig_path else ""):
            return None, False
        state = self.nonce_state(nonce)
        if state == "bad":
            return None, False
        ha1 = _md5(f"{user}:{self.realm}:{password}")
        ha2 = _md5(f"{method}:{d_uri}")
        qop = p.get("qop")
        if qop:
            if qop.lower() != "auth":
                return None, False
            expected = _md5(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:{qop}:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        if not hmac.compare_digest(expected, response.lower()):
            return None, False
        if state == "stale":
            return None, True  # right password, old nonce: the client retries with a fresh one
        return user, False
