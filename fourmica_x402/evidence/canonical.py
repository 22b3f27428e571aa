"""The canonical form of an evidence bundle, and its seal (docs/operations.md, "Evidence and
disputes").

A bundle file is exactly ``canonical({"content": …, "digest": "sha256:<hex>", "format": …})``
where ``digest`` is the SHA-256 of ``canonical(content)``. ``canonical`` is JSON with sorted
keys, no spaces, ASCII only (``\\u`` escapes), no NaN, and one final newline: so a bundle has
exactly one byte form, and any changed byte — whitespace included — is detected.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["FORMAT", "canonical", "digest_of", "seal"]

#: The bundle format this version writes and verifies.
FORMAT = "fourmica-x402-evidence/1"


def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value (see the module's docstring)."""
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii") + b"\n"


def digest_of(content: Any) -> str:
    """``sha256:<hex>`` of the canonical form of ``content``."""
    return "sha256:" + hashlib.sha256(canonical(content)).hexdigest()


def seal(content: dict[str, Any]) -> bytes:
    """The bundle file of ``content``: its canonical form with format and digest."""
    return canonical({"content": content, "digest": digest_of(content), "format": FORMAT})
