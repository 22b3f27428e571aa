"""Core-side encodings: the guarantee domain, the guarantee id and the certificate message.

These are what the Core (and the contract behind it) compute from accepted claims, not what a
buyer signs: the G-v1 guarantee domain official buyers read with ``guaranteeDomainSeparator()``,
the stable id of a guarantee (docs/protocol.md, "Guarantees") and the bytes the Core's BLS key
signs for its certificate (docs/protocol.md, "Certificates"; docs/architecture.md,
"Certificates", for when it is made).
"""

from __future__ import annotations

from .._eth import ZERO_ADDRESS, Dyn, abi_encode_dynamic, address_word, keccak, uint_word
from .claims import GuaranteeClaims

__all__ = [
    "GUARANTEE_DOMAIN_SELECTOR",
    "certificate_message",
    "guarantee_domain",
    "guarantee_id",
]

#: ``guaranteeDomainSeparator()`` on the Core contract, as read by official buyers.
GUARANTEE_DOMAIN_SELECTOR = "0x991ce4cd"
_GUARANTEE_DOMAIN_TAG = "4MICA_CORE_GUARANTEE_V1"


def guarantee_domain(chain_id: int, core_contract: str) -> bytes:
    """The G-v1 guarantee domain.

    ``keccak(abi.encode(string "4MICA_CORE_GUARANTEE_V1", uint256 chainId, address contract))``
    """
    return keccak(
        abi_encode_dynamic(
            Dyn(_GUARANTEE_DOMAIN_TAG), uint_word(chain_id), address_word(core_contract)
        )
    )


def guarantee_id(chain_id: int, tab_id: int, req_id: int) -> bytes:
    """Stable id of a guarantee: ``keccak(abi.encode(chainId, tabId, reqId))``."""
    return keccak(uint_word(chain_id) + uint_word(tab_id) + uint_word(req_id))


def certificate_message(claims: GuaranteeClaims, domain: bytes, total_amount: int) -> bytes:
    """The bytes the Core's BLS key signs, in 4Mica's certificate format (docs/protocol.md, "Certificates")."""
    words = (
        domain
        + uint_word(claims.tab_id)
        + uint_word(claims.req_id)
        + address_word(claims.user_address)
        + address_word(claims.recipient_address)
        + uint_word(claims.amount)
        + uint_word(total_amount)
        + address_word(claims.asset_address)
        + uint_word(claims.timestamp)
        + uint_word(claims.version)
    )
    if claims.version == 1:
        inner = words
    else:
        tuple_words = [words[i : i + 32] for i in range(0, len(words), 32)]
        inner = uint_word(32) + abi_encode_dynamic(
            *tuple_words,
            address_word(claims.validation_registry_address or ZERO_ADDRESS),
            claims.validation_request_hash or bytes(32),
            uint_word(claims.validation_chain_id or 0),
            address_word(claims.validator_address or ZERO_ADDRESS),
            uint_word(claims.validator_agent_id or 0),
            uint_word(claims.min_validation_score or 0),
            claims.validation_subject_hash or bytes(32),
            claims.job_hash or bytes(32),
            Dyn(claims.required_validation_tag or ""),
        )
    return abi_encode_dynamic(uint_word(claims.version), Dyn(inner))
