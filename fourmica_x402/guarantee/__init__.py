"""4mica-credit guarantees: claims (G-v1, G-v2), EIP-712 hashing, signing, recovery.

A buyer promises to pay ``amount`` of ``asset`` to ``recipient`` by signing
the claims with EIP-712 (domain ``EIP712Domain(string name,string version,
uint256 chainId)``). G-v2 claims also bind a validation policy: the guarantee
is payable only once the named validator posts a high enough score
(docs/protocol.md, "Guarantees").

This package is the one place these encodings live; every name is importable from here:

- :mod:`.policy` — the G-v2 :class:`ValidationPolicy` and its two binding hashes;
- :mod:`.claims` — :class:`GuaranteeClaims` and the claims JSON;
- :mod:`.eip712` — the type strings, :class:`Eip712Domain`, the struct hash and the digest
  (EIP-712, or EIP-191 for G-v1), the typed-data document;
- :mod:`.signing` — :class:`SignedGuarantee` (the inner payload), signing and recovery;
- :mod:`.certificate` — the Core side: guarantee domain, guarantee id, certificate message.

Hot-path notes: type hashes are computed once at import; struct hashes are
built from pre-encoded 32-byte words; recovery goes straight to
libsecp256k1 through coincurve.

    >>> domain = Eip712Domain(chain_id=84532)
    >>> signed = sign_claims(claims, private_key, domain)        # doctest: +SKIP
    >>> recover_signer(signed, domain) == claims.user_address   # doctest: +SKIP
    True
"""

from __future__ import annotations

from .certificate import (
    GUARANTEE_DOMAIN_SELECTOR,
    certificate_message,
    guarantee_domain,
    guarantee_id,
)
from .claims import GuaranteeClaims
from .eip712 import (
    EIP712_DOMAIN_TYPE,
    V1_TYPE,
    V2_TYPE,
    Eip712Domain,
    claims_digest,
    struct_hash,
    typed_data,
)
from .eip712 import Scheme as Scheme  # a type alias, importable but not in __all__
from .policy import ValidationPolicy, validation_request_hash, validation_subject_hash
from .signing import SignedGuarantee, address_of, recover_signer, sign_claims

__all__ = [
    "EIP712_DOMAIN_TYPE",
    "GUARANTEE_DOMAIN_SELECTOR",
    "V1_TYPE",
    "V2_TYPE",
    "Eip712Domain",
    "GuaranteeClaims",
    "SignedGuarantee",
    "ValidationPolicy",
    "address_of",
    "certificate_message",
    "claims_digest",
    "guarantee_domain",
    "guarantee_id",
    "recover_signer",
    "sign_claims",
    "struct_hash",
    "typed_data",
    "validation_request_hash",
    "validation_subject_hash",
]
