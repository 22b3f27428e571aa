"""Webhook request signatures: HMAC-SHA256 over ``"<timestamp>.<body>"``, checked by receivers.

Each request carries ``X-Fourmica-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
with ``X-Fourmica-Timestamp: <unix seconds>``. The timestamp is inside the signed bytes so a
receiver can refuse a captured request replayed later (:func:`verify_signature`'s
``tolerance``). The service sends one ``v1=`` value; receivers accept any of several
comma-separated ones, which leaves room for a new scheme or an overlap while a secret changes.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time

__all__ = ["sign", "verify_signature"]


def _signed_payload(timestamp: int | str, body: bytes | str) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    return f"{timestamp}.".encode() + raw


def sign(secret: str, timestamp: int | str, body: bytes | str) -> str:
    """The ``X-Fourmica-Signature`` value: ``v1=`` + hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    digest = hmac.new(secret.encode(), _signed_payload(timestamp, body), hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify_signature(
    secret: str,
    timestamp: int | str | None,
    body: bytes | str,
    header: str | None,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """For receivers: is ``header`` (``X-Fourmica-Signature``) a valid signature of ``body``?

    ``timestamp`` is the ``X-Fourmica-Timestamp`` header; one more than ``tolerance`` seconds
    away from ``now`` (default: the current time) is refused, so a captured request cannot be
    replayed later. ``header`` may hold several comma-separated ``v1=`` values; one match
    is enough. The comparison is constant-time.
    """
    if not header or timestamp is None:
        return False
    text = str(timestamp).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return False
    ts = int(text)
    age = abs((time.time() if now is None else now) - ts)
    if not (math.isfinite(age) and math.isfinite(tolerance)) or age > tolerance:
        return False  # a NaN tolerance or clock would take any age
    expected = sign(secret, ts, body)
    ok = False
    for candidate in header.split(","):
        ok |= hmac.compare_digest(candidate.strip().encode(), expected.encode())
    return ok
