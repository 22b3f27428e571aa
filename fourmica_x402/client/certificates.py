"""Buyer-side checks of the Core's BLS certificate for a paid request.

A certificate (docs/protocol.md, "Certificates") is the Core's BLS12-381 signature over the
guarantee as it accepted it, ABI-encoded with the guarantee domain and the tab's running total.
The buyer knows the claims it signed; the two numbers it does not know are read from the
certificate itself, the Core's message is rebuilt from the buyer's own claims and compared byte
for byte, and the signature is checked against the Core's public key (``public_key`` of
``GET <rpcUrl>/core/public-params``). A certificate for another payment, another amount or
another key fails (docs/buyer.md, "Certificates").

    ok = receipt.verify_certificate(public_key)
    certificate = fetch_certificate(receipt)   # when the seller did not pass one on
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from blspy import BasicSchemeMPL, G1Element, G2Element

from .._json import loads
from ..guarantee import GuaranteeClaims, certificate_message
from .answers import UNPAID_KEY, AnswerTooLarge, read_answer
from .heads import bound, send_head

__all__ = ["fetch_certificate", "fetch_public_key", "public_key_bytes", "verify_certificate"]

_WORD = 32


def public_key_bytes(value: bytes | Sequence[int] | str) -> bytes:
    """The Core's BLS public key as 48 bytes, from bytes, the public parameters' list of ints,
    or hex. Raises ``ValueError`` for anything else."""
    if isinstance(value, str):
        raw = bytes.fromhex(value[2:] if value[:2] in ("0x", "0X") else value)
    elif isinstance(value, bytes | bytearray):
        raw = bytes(value)
    else:
        items = list(value)
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in items):
            raise ValueError("a BLS public key is 48 bytes, a list of 48 ints or hex")
        raw = bytes(items)  # ValueError for an int outside 0..255
    if len(raw) != 48:
        raise ValueError(f"a BLS public key is 48 bytes, got {len(raw)}")
    return raw


def _hex(value: object) -> bytes:
    if not isinstance(value, str) or value[:2] != "0x":
        raise ValueError("not 0x hex")
    return bytes.fromhex(value[2:])


def _domain_and_total(message: bytes, version: int) -> tuple[bytes, int]:
    """The guarantee domain and total amount a certificate message carries.

    ``abi.encode(uint64 version, bytes inner)``; ``inner`` starts with the ten static words
    (domain, tab, req, user, recipient, amount, total, asset, timestamp, version) — G-v2 puts
    them in a tuple, behind one offset word."""
    if len(message) < 3 * _WORD or int.from_bytes(message[:_WORD], "big") != version:
        raise ValueError("not a certificate for this guarantee version")
    size = int.from_bytes(message[2 * _WORD : 3 * _WORD], "big")
    inner = message[3 * _WORD : 3 * _WORD + size]
    head = inner[_WORD:] if version == 2 else inner
    if len(head) < 10 * _WORD:
        raise ValueError("certificate message too short")
    return head[:_WORD], int.from_bytes(head[6 * _WORD : 7 * _WORD], "big")


def verify_certificate(
    certificate: Mapping[str, Any] | str,
    claims: GuaranteeClaims | Mapping[str, Any] | str,
    public_key: bytes | Sequence[int] | str,
    *,
    guarantee_domain: bytes | None = None,
) -> bool:
    """True when ``certificate`` is the Core's signature under ``public_key`` over exactly
    ``claims`` (a :class:`GuaranteeClaims`, or its JSON as a dict or text). With
    ``guarantee_domain`` (``active_guarantee_domain_separator`` of the public parameters) the
    domain must match too. Malformed input is False, never an exception."""
    try:
        cert: Any = loads(certificate) if isinstance(certificate, str) else certificate
        if not isinstance(claims, GuaranteeClaims):
            claims = GuaranteeClaims.from_json(
                loads(claims) if isinstance(claims, str) else dict(claims)
            )
        message, signature = _hex(cert["claims"]), _hex(cert["signature"])
        domain, total = _domain_and_total(message, claims.version)
        if guarantee_domain is not None and domain != guarantee_domain:
            return False
        if total < claims.amount or certificate_message(claims, domain, total) != message:
            return False
        key = G1Element.from_bytes(public_key_bytes(public_key))
        return bool(BasicSchemeMPL.verify(key, message, G2Element.from_bytes(signature)))
    except Exception:  # any malformed part: not a valid certificate for these claims
        return False


def fetch_public_key(core_url: str, *, client: httpx.Client | None = None) -> bytes:
    """The Core's BLS public key from ``GET <core_url>/core/public-params``."""
    with _client(client) as http:
        data = _answer(http, core_url.rstrip("/") + "/core/public-params")
    if not isinstance(data, dict) or "public_key" not in data:
        raise ValueError("the Core's public parameters carry no public_key")
    return public_key_bytes(data["public_key"])


def fetch_certificate(
    receipt: Any, *, core_url: str | None = None, client: httpx.Client | None = None
) -> dict[str, str] | None:
    """Ask the Core for a paid receipt's certificate: ``GET <core>/core/tabs/<tabId>/
    guarantees/<reqId>`` (the Core API's guarantee read; ``core_url`` defaults to the
    seller's ``rpcUrl`` kept on the receipt). None when the Core has none for it."""
    base = core_url or receipt.core_url
    if not base or receipt.tab_id is None or receipt.request_id is None:
        raise ValueError("the receipt names no Core, tab or request id (was it paid?)")
    url = f"{base.rstrip('/')}/core/tabs/{receipt.tab_id}/guarantees/{receipt.request_id}"
    with _client(client) as http:
        data = _answer(http, url)
    if data is None:
        return None
    found = data.get("certificate") if isinstance(data, dict) else None
    if isinstance(found, str):  # the Core API may carry it as JSON text
        found = loads(found)
    if not isinstance(found, dict) or not {"claims", "signature"} <= found.keys():
        return None
    return {"claims": str(found["claims"]), "signature": str(found["signature"])}


def _answer(http: httpx.Client, url: str) -> Any:
    """The JSON of a GET (None: a 404), read up to the flow's answer limit (a Core the
    seller named may answer anything). Never paid: a 402 through a paying client is an
    error answer like any other (docs/buyer.md, "Certificates")."""
    bound(http)  # its head too within the read timeout (docs/buyer.md, "Challenges")
    request = http.build_request("GET", url, extensions={UNPAID_KEY: True})
    response = send_head(functools.partial(http.send, stream=True), request)
    with contextlib.closing(response):
        if response.status_code == 404:
            return None
        response.raise_for_status()
        try:
            read_answer(response)
        except AnswerTooLarge as exc:
            raise ValueError(f"the Core's answer is too large: {exc}") from None
    try:
        return loads(response.content)
    except ValueError:
        raise ValueError("the Core's answer is not JSON") from None


class _client:
    """The caller's client (left open), or a short-lived one."""

    def __init__(self, client: httpx.Client | None) -> None:
        self._given, self._made = client, None if client is not None else httpx.Client(timeout=30)

    def __enter__(self) -> httpx.Client:
        return self._given or self._made  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        if self._made is not None:
            self._made.close()
