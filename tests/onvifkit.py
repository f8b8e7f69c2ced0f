"""ONVIF helpers shared by the ONVIF tests: SOAP 1.2 envelopes with a WS-Security UsernameToken, a POST
that insists on a SOAP answer, fault codes, and the ONVIF schemas compiled by lxml (no network).

* `soap(op_xml, header)` / `token_header(user, password, created, nonce)`: a request.
* `post(session, url, data, headers)` -> (status, the Body's first child, response).
* `fault_codes(el)`: ['Sender', 'NotAuthorized', ...].
* `wsdl_schema(path, patch=False)`: a WSDL's inline schema, its imports resolved beside it on disk;
  `patch` rewrites ONVIF 2024+ `##any` wildcards that libxml2's XSD 1.0 compiler cannot take.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import os
import secrets
from typing import Any

import aiohttp
from lxml import etree

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
TDS = "http://www.onvif.org/ver10/device/wsdl"
TRT = "http://www.onvif.org/ver10/media/wsdl"
TR2 = "http://www.onvif.org/ver20/media/wsdl"
TT = "http://www.onvif.org/ver10/schema"
TER = "http://www.onvif.org/ver10/error"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"


def token_header(user: str, password: str, created: str | None = None, nonce: bytes | None = None) -> str:
    nonce = nonce if nonce is not None else secrets.token_bytes(16)
    created = created or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    digest = base64.b64encode(hashlib.sha1(nonce + created.encode() + password.encode()).digest()).decode()
    return (
        f'<s:Header><wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}"><wsse:UsernameToken>'
        f"<wsse:Username>{user}</wsse:Username>"
        '<wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0'
        f'#PasswordDigest">{digest}</wsse:Password>'
        f"<wsse:Nonce>{base64.b64encode(nonce).decode()}</wsse:Nonce><wsu:Created>{created}</wsu:Created>"
        "</wsse:UsernameToken></wsse:Security></s:Header>"
    )


def soap(op_xml: str, header: str = "") -> bytes:
    """A SOAP 1.2 envelope with the tds/trt/tr2/tt prefixes declared."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{SOAP12}" xmlns:tds="{TDS}" '
        f'xmlns:trt="{TRT}" xmlns:tr2="{TR2}" xmlns:tt="{TT}">{header}<s:Body>{op_xml}</s:Body></s:Envelope>'
    ).encode()


async def post(
    session: aiohttp.ClientSession, url: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """(status, Body's first child, response); every answer must be a SOAP 1.2 envelope."""
    hdrs = {"Content-Type": "application/soap+xml; charset=utf-8"} if headers is None else headers
    async with session.post(url, data=data, headers=hdrs) as resp:
        raw = await resp.read()
        assert resp.headers["Content-Type"].startswith("application/soap+xml"), (resp.status, raw[:200])
        root = etree.fromstring(raw)
        assert root.tag == f"{{{SOAP12}}}Envelope"
        return resp.status, root.find(f"{{{SOAP12}}}Body")[0], resp


def fault_codes(el: Any) -> list[str]:
    """['Sender', 'NotAuthorized', ...]: the fault's code and subcodes, local names."""
    assert el.tag == f"{{{SOAP12}}}Fault", etree.tostring(el)[:300]
    return [v.text.split(":")[-1] for v in el.iter(f"{{{SOAP12}}}Value")]


class _Wildcards(etree.Resolver):
    """Serves the schema files with their wildcards as `##other` (see `wsdl_schema`)."""

    def resolve(self, url: str, pubid: str, context: Any) -> Any:
        path = url.removeprefix("file://")
        if not os.path.isfile(path):
            return None  # nothing from the network: an unresolved import fails the compile
        with open(path, "rb") as f:
            return self.resolve_string(_other(f.read()), context, base_url=url)


def _other(xsd: bytes) -> bytes:
    # ONVIF's 2024+ schemas end many sequences with <xs:any namespace="##any"> (or ##targetNamespace)
    # after optional elements: valid XSD 1.1-style "first ONVIF then vendor" extension points, but not
    # deterministic for libxml2's XSD 1.0 compiler. As `##other` (what ONVIF wrote before) they compile;
    # our answers carry no extension elements, so this only makes the check stricter.
    return xsd.replace(b'namespace="##any"', b'namespace="##other"').replace(
        b'namespace="##targetNamespace"', b'namespace="##other"'
    )


def wsdl_schema(path: str, patch: bool = False) -> Any:
    """The WSDL's inline schema (its imports resolved beside it on disk), compiled by lxml."""
    doc = etree.parse(path)
    el = doc.find(".//{http://www.w3.org/2001/XMLSchema}schema")
    # The schema's QName attribute values use prefixes declared on wsdl:definitions: carry them over.
    nsmap = {k: v for k, v in {**doc.getroot().nsmap, **el.nsmap}.items() if k}
    root = etree.Element(el.tag, attrib=dict(el.attrib), nsmap=nsmap)
    for child in el:
        root.append(copy.deepcopy(child))
    if not patch:
        tree = etree.ElementTree(root)
        tree.docinfo.URL = path
        return etree.XMLSchema(tree)
    parser = etree.XMLParser()
    parser.resolvers.add(_Wildcards())
    return etree.XMLSchema(
        etree.ElementTree(etree.fromstring(_other(etree.tostring(root)), parser, base_url=path))
    )
