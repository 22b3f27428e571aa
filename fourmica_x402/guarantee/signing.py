"""Signing guarantees and recovering their signer: the inner payload, secp256k1 via coincurve.

A signed guarantee is the inner payload ``{"claims", "signature", "scheme"}`` with a 65-byte
``r ‖ s ‖ v`` signature (docs/protocol.md, "Guarantees"). Recovery goes straight to
libsecp256k1 through coincurve (no typed-data document, no eth-account) because the Core
recovers the signer of every guarantee it accepts (docs/protocol.md, "Acceptance", step 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import coincurve

from .._eth import keccak, parse_address
from ..errors import MalformedPayment
from .claims import GuaranteeClaims
from .eip712 import Eip712Domain, Scheme, claims_digest

__all__ = ["SignedGuarantee", "address_of", "recover_signer", "sign_claims"]


@dataclass(frozen=True, slots=True)
class SignedGuarantee:
    """The 4mica inner payload: ``{"claims", "signature", "scheme"}``."""

    claims: GuaranteeClaims
    signature: bytes
    scheme: Scheme = "eip712"

    def to_json(self) -> dict[str, Any]:
        return {
            "claims": self.claims.to_json(),
            "signature": "0x" + self.signature.hex(),
            "scheme": self.scheme,
        }

    @classmethod
    def from_json(cls, data: object) -> SignedGuarantee:
        """Parse the inner payload; anything malformed raises :class:`MalformedPayment`."""
        if not isinstance(data, Mapping):
            raise MalformedPayment("payload must be a JSON object")
        scheme = data.get("scheme", "eip712")
        if scheme not in ("eip712", "eip191"):
            raise MalformedPayment(f"unknown signing scheme {scheme!r:.40}")
        signature = data.get("signature")
        if not isinstance(signature, str) or len(signature) != 132 or signature[:2] != "0x":
            raise MalformedPayment("signature must be 0x followed by 65 bytes of hex")
        try:
            raw = bytes.fromhex(signature[2:])
        except ValueError:
            raise MalformedPayment("signature must be 0x followed by 65 bytes of hex") from None
        return cls(GuaranteeClaims.from_json(data.get("claims")), raw, scheme)


def _private_key(key: bytes | str | coincurve.PrivateKey) -> coincurve.PrivateKey:
    if isinstance(key, coincurve.PrivateKey):
        return key
    if isinstance(key, str):
        key = bytes.fromhex(key[2:] if key[:2] in ("0x", "0X") else key)
    return coincurve.PrivateKey(key)


def sign_claims(
    claims: GuaranteeClaims,
    private_key: bytes | str | coincurve.PrivateKey,
    domain: Eip712Domain,
    scheme: Scheme = "eip712",
) -> SignedGuarantee:
    """Sign claims; the signature is ``r ‖ s ‖ v`` with ``v`` 27 or 28."""
    raw = _private_key(private_key).sign_recoverable(
        claims_digest(claims, domain, scheme), hasher=None
    )
    return SignedGuarantee(claims, raw[:64] + bytes((raw[64] + 27,)), scheme)


def address_of(private_key: bytes | str | coincurve.PrivateKey) -> str:
    """The EIP-55 address of a private key."""
    public = _private_key(private_key).public_key.format(compressed=False)
    return parse_address("0x" + keccak(public[1:])[-20:].hex())


def recover_signer(signed: SignedGuarantee, domain: Eip712Domain) -> str | None:
    """The EIP-55 address that signed, or None when the signature is not valid at all."""
    signature = signed.signature
    v = signature[64]
    if v >= 27:
        v -= 27
    if v > 1:
        return None
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes((v,)),
            claims_digest(signed.claims, domain, signed.scheme),
            hasher=None,
        )
    except ValueError:
        return None
    return parse_address("0x" + keccak(public.format(compressed=False)[1:])[-20:].hex())
