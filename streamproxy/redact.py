"""URL and secret hygiene: what of a camera or publish URL may be shown, and how credentials are
kept out of logs, errors and tracebacks.

Camera URLs carry credentials in the userinfo (rtsp://user:pw@host) and, for some cameras, in
key=value parts of the path or query (/user=admin&password=x&channel=1, ?token=..., ;password=...).
`rtsp_url_problem` decides what `run` can use; `redact_url` is the only form of a URL that may be
shown; `url_secrets` lists the strings to scrub from text that might quote a URL in another shape
(`scrub`, and `SecretFilter` on every log handler). Not named secrets.py: that would shadow the
standard library's module.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "***"
_SECRET_WORDS = ("pass", "pwd", "token", "secret", "auth", "cred", "session")
_USER_KEYS = frozenset({"user", "username", "usr", "login", "u"})  # masked too, but not secret alone
_SECRET_EXACT = frozenset({"p", "pw", "psw", "sig", "code"}) | _USER_KEYS
_SECRET_SUFFIXES = ("key", "signature", "sig")
# key=value inside a path, query or fragment; the value ends at the next separator.
_PAIR = re.compile(r"(?P<key>[^=&;/?#\s]+)=(?P<value>[^&;/?#\s]*)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _is_secret_key(key: str) -> bool:
    k = unquote(key).lower().replace("-", "").replace("_", "")
    return k in _SECRET_EXACT or any(w in k for w in _SECRET_WORDS) or k.endswith(_SECRET_SUFFIXES)


def _mask_pairs(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group("value") and _is_secret_key(m.group("key")):
            return f"{m.group('key')}={MASK}"
        return m.group(0)

    return _PAIR.sub(sub, text)


def _split_userinfo(url: str) -> tuple[str, str | None, str, str]:
    """(scheme and '://', userinfo or None, host[:port], path?query#fragment), without validating.

    The userinfo ends at the last '@' of the authority; when an '@' also comes later (a '/', '?'
    or '#' in the password that was not percent-encoded), at the last '@' of all, so such a
    password is still taken for userinfo: masking a little more is the safe mistake.
    """
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    else:
        head += sep
    end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0] or [len(rest)])
    at = rest.rfind("@") if "@" in rest[end:] else rest.rfind("@", 0, end)
    if at < 0:
        return head, None, rest[:end], rest[end:]
    after = rest[at + 1 :]
    end = min([i for i in (after.find(c) for c in "/?#") if i >= 0] or [len(after)])
    return head, rest[:at], after[:end], after[end:]


def redact_url(url: str) -> str:
    """The URL without credentials, the only form that may reach logs, labels, the API and errors.

    Userinfo becomes `***@`; the values of password-like key=value parts of the path, query and
    fragment become `***` (`?token=***`, `/user=***&password=***&channel=1`). Host, port and the
    rest of the path stay readable. Never raises: a URL too malformed to take apart is not shown.
    """
    try:
        # Control characters are escaped: a URL must not start a new log line or response header.
        text = "".join(c if c.isprintable() else f"%{ord(c):02X}" for c in str(url))
        head, userinfo, hostport, tail = _split_userinfo(text)
        return f"{head}{MASK + '@' if userinfo is not None else ''}{hostport}{_mask_pairs(tail)}"
    except Exception:  # a redactor must not be what crashes the service
        return "<URL not shown>"


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted (`redact_url`) and password-like key=value parts masked."""
    return _mask_pairs(_URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text))


def url_secrets(url: str) -> list[str]:
    """Spellings of the URL's credentials that text from elsewhere (FFmpeg, a library) might quote.

    The URL itself, its userinfo and every password-like key=value part whole; the password and
    the bare values alone when at least 4 characters long, so that scrubbing them cannot garble
    ordinary words. Longest first: replace in that order.
    """
    out: set[str] = {url}
    try:
        _, userinfo, _, tail = _split_userinfo(url)
    except Exception:
        return [url]
    values: list[str] = []
    if userinfo:
        out |= {userinfo, unquote(userinfo)}
        values.append(userinfo.partition(":")[2])
    for m in _PAIR.finditer(tail):
        if m.group("value") and _is_secret_key(m.group("key")):
            out |= {m.group(0), unquote(m.group(0))}
            if unquote(m.group("key")).lower() not in _USER_KEYS:
                values.append(m.group("value"))
    for v in values:
        out |= {s for s in (v, unquote(v)) if len(s) >= 4}
    return sorted((s for s in out if s), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with any URL's credentials and each of `secrets` (longest first) masked.

    URLs first, so that a whole URL in the text keeps its readable `redact_url` form.
    """
    text = redact_text(text)
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text


class SecretFilter(logging.Filter):
    """A handler filter: known secrets never reach the log, whatever module or library wrote it.

    A second line of defence (each module already logs `redact_url` forms only): messages,
    tracebacks and stack traces are scrubbed of `secrets` (`config_secrets`) and URL credentials.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def redact(self, text: str) -> str:
        return scrub(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: let the handler report it
            return True
        clean = self.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def rtsp_url_problem(url: str) -> str | None:
    """Why `run` could not use this camera or publish URL; None when it can.

    The message never quotes the URL or a piece of it: a mistyped URL can put the password where
    the port belongs (`rtsp://admin:123456/x@cam` has "port" 123456).
    """
    if any(c.isspace() or not c.isprintable() for c in url):
        return "contains a space or control character (percent-encode it: a space is %20)"
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("rtsp", "rtsps"):
        return "must be an rtsp:// or rtsps:// URL with a host"
    rest = url.partition("://")[2]
    authority_end = min([i for i in (rest.find(c) for c in "/?#") if i >= 0] or [len(rest)])
    if "@" in rest[authority_end:]:
        return (
            "an '@' after the host: percent-encode '/', '?', '#' and '@' in the user name and password "
            "(%2F, %3F, %23, %40)"
        )
    _, _, hostport, _ = _split_userinfo(url)
    if hostport.count("[") != hostport.count("]") or (hostport.startswith("[") and "]" not in hostport):
        return "unbalanced [ ] around an IPv6 address (write rtsp://[2001:db8::1]:554/path)"
    if hostport.startswith("["):
        inner, _, after = hostport[1:].partition("]")
        try:
            ipaddress.IPv6Address(inner.split("%", 1)[0])
        except ValueError:
            return "the address in [ ] is not an IPv6 address"
        if after and not after.startswith(":"):
            return "text after the ] of the IPv6 address (only :port may follow)"
        host, port = inner, after[1:] if after else ""
    else:
        if "[" in hostport or "]" in hostport:
            return "unbalanced [ ] around an IPv6 address (write rtsp://[2001:db8::1]:554/path)"
        host, _, port = hostport.partition(":")
        if ":" in port:
            return "more than one ':' after the host (an IPv6 address needs [ ]: rtsp://[2001:db8::1]/path)"
    if not host:
        return "missing host (write rtsp://host[:port]/path)"
    if not is_ip_address(host) and not all(c.isalnum() or c in "-._~%" for c in host):
        return "the host name has characters a host name cannot have"
    if port:
        if not port.isascii() or not port.isdigit():
            return "port is not a number"
        if not 1 <= int(port) <= 65535:
            return "port out of range (1-65535)"
    try:  # what every user of the URL (our client, FFmpeg's, the publisher) parses it with
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "not a URL that can be parsed"
    if not parts.hostname:
        return "missing host (write rtsp://host[:port]/path)"
    return None


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
