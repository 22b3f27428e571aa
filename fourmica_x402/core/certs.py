"""The Core operator's BLS12-381 key (min-pk, basic scheme) and certificates.

Public key in G1 (48 bytes), signatures in G2 (96 bytes), DST
``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_`` — the scheme 4Mica's own
Core and SDK use, so certificates from our Core verify with theirs.
Signing costs about half a millisecond, so it never runs on the request
path: the capacity lock is the acceptance, the certificate follows.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from blspy import BasicSchemeMPL, G1Element, G2Element

__all__ = ["Certificate", "Operator"]


@dataclass(frozen=True, slots=True)
class Certificate:
    """A guarantee certificate: the encoded claims and the operator's BLS signature."""

    claims: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"claims": "0x" + self.claims.hex(), "signature": "0x" + self.signature.hex()}


class Operator:
    """The Core's signing key. Never logged; ``repr`` shows the public key only."""

    __slots__ = ("_secret", "public_key")

    def __init__(self, seed: bytes) -> None:
        """``seed``: 32 secret bytes; the key is derived with EIP-2333 KeyGen."""
        if len(seed) != 32:
            raise ValueError("BLS operator seed must be 32 bytes")
        self._secret = BasicSchemeMPL.key_gen(seed)
        self.public_key: bytes = bytes(self._secret.get_g1())

    @classmethod
    def generate(cls) -> tuple[Operator, bytes]:
        """A fresh key and the 32 secret bytes to persist it."""
        seed = secrets.token_bytes(32)
        return cls(seed), seed

    def sign(self, message: bytes) -> bytes:
        return bytes(BasicSchemeMPL.sign(self._secret, message))

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            return bool(
                BasicSchemeMPL.verify(
                    G1Element.from_bytes(self.public_key), message, G2Element.from_bytes(signature)
                )
            )
        except (ValueError, RuntimeError):
            return False

    def certify(self, message: bytes) -> Certificate:
        return Certificate(message, self.sign(message))

    def __repr__(self) -> str:
        return f"Operator(public_key=0x{self.public_key.hex()[:16]}…)"
