"""EIP-712 (and, for G-v1, EIP-191) hashing of guarantee claims: types, domain, digest.

The buyer signs ``keccak(0x1901 ‖ domainSeparator ‖ hashStruct(claims))`` with the domain
``EIP712Domain(string name,string version,uint256 chainId)`` and the primary type
``SolGuaranteeRequestClaimsV1`` or ``…V2`` (docs/protocol.md, "Guarantees"); G-v1 may instead
be a personal-sign of its ABI-encoded fields.

This is the hot path of every paid request, so type hashes are computed once at import and
struct hashes are built from pre-encoded 32-byte words, never through a typed-data document;
:func:`typed_data` builds that document only for wallets and external signers.
"""

from __future__ import annotations

from typing import Any, Literal

from .._eth import ZERO_ADDRESS, address_word, keccak, uint_word
from ..errors import MalformedPayment
from .claims import GuaranteeClaims, hex32

__all__ = [
    "EIP712_DOMAIN_TYPE",
    "V1_TYPE",
    "V2_TYPE",
    "Eip712Domain",
    "Scheme",
    "claims_digest",
    "struct_hash",
    "typed_data",
]

EIP712_DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId)"
V1_TYPE = (
    "SolGuaranteeRequestClaimsV1(address user,address recipient,uint256 tabId,uint256 reqId,"
    "uint256 amount,address asset,uint64 timestamp)"
)
V2_TYPE = (
    "SolGuaranteeRequestClaimsV2(address user,address recipient,uint256 tabId,uint256 reqId,"
    "uint256 amount,address asset,uint64 timestamp,address validationRegistryAddress,"
    "bytes32 validationRequestHash,uint256 validationChainId,address validatorAddress,"
    "uint256 validatorAgentId,uint8 minValidationScore,bytes32 validationSubjectHash,"
    "bytes32 jobHash,string requiredValidationTag)"
)

_DOMAIN_TYPEHASH = keccak(EIP712_DOMAIN_TYPE.encode())
_V1_TYPEHASH = keccak(V1_TYPE.encode())
_V2_TYPEHASH = keccak(V2_TYPE.encode())
_PERSONAL_PREFIX = b"\x19Ethereum Signed Message:\n"

Scheme = Literal["eip712", "eip191"]


class Eip712Domain:
    """The signing domain; its separator is computed once per instance."""

    __slots__ = ("chain_id", "name", "separator", "version")

    def __init__(self, chain_id: int, name: str = "4mica", version: str = "1") -> None:
        self.chain_id = chain_id
        self.name = name
        self.version = version
        self.separator = keccak(
            _DOMAIN_TYPEHASH
            + keccak(name.encode())
            + keccak(version.encode())
            + uint_word(chain_id)
        )

    def __repr__(self) -> str:
        return (
            f"Eip712Domain(chain_id={self.chain_id}, name={self.name!r}, version={self.version!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Eip712Domain) and self.separator == other.separator

    def __hash__(self) -> int:
        return hash(self.separator)


def struct_hash(claims: GuaranteeClaims) -> bytes:
    """EIP-712 ``hashStruct`` of the claims (V1 or V2 primary type)."""
    head = (
        address_word(claims.user_address)
        + address_word(claims.recipient_address)
        + uint_word(claims.tab_id)
        + uint_word(claims.req_id)
        + uint_word(claims.amount)
        + address_word(claims.asset_address)
        + uint_word(claims.timestamp)
    )
    if claims.version == 1:
        return keccak(_V1_TYPEHASH + head)
    return keccak(
        _V2_TYPEHASH
        + head
        + address_word(claims.validation_registry_address or ZERO_ADDRESS)
        + (claims.validation_request_hash or bytes(32))
        + uint_word(claims.validation_chain_id or 0)
        + address_word(claims.validator_address or ZERO_ADDRESS)
        + uint_word(claims.validator_agent_id or 0)
        + uint_word(claims.min_validation_score or 0)
        + (claims.validation_subject_hash or bytes(32))
        + (claims.job_hash or bytes(32))
        + keccak((claims.required_validation_tag or "").encode("utf-8"))
    )


def claims_digest(
    claims: GuaranteeClaims, domain: Eip712Domain, scheme: Scheme = "eip712"
) -> bytes:
    """The 32-byte digest a buyer signs.

    ``eip712``: ``keccak(0x1901 ‖ domainSeparator ‖ hashStruct)``.
    ``eip191`` (G-v1 only): personal-sign of the ABI-encoded G-v1 fields.
    """
    if scheme == "eip712":
        return keccak(b"\x19\x01" + domain.separator + struct_hash(claims))
    if scheme == "eip191" and claims.version == 1:
        message = (
            address_word(claims.user_address)
            + address_word(claims.recipient_address)
            + uint_word(claims.tab_id)
            + uint_word(claims.req_id)
            + uint_word(claims.amount)
            + address_word(claims.asset_address)
            + uint_word(claims.timestamp)
        )
        return keccak(_PERSONAL_PREFIX + str(len(message)).encode() + message)
    raise MalformedPayment(f"signing scheme {scheme!r} is not supported for G-v{claims.version}")


_V1_FIELDS = [
    {"name": "user", "type": "address"},
    {"name": "recipient", "type": "address"},
    {"name": "tabId", "type": "uint256"},
    {"name": "reqId", "type": "uint256"},
    {"name": "amount", "type": "uint256"},
    {"name": "asset", "type": "address"},
    {"name": "timestamp", "type": "uint64"},
]
_V2_FIELDS = [
    *_V1_FIELDS,
    {"name": "validationRegistryAddress", "type": "address"},
    {"name": "validationRequestHash", "type": "bytes32"},
    {"name": "validationChainId", "type": "uint256"},
    {"name": "validatorAddress", "type": "address"},
    {"name": "validatorAgentId", "type": "uint256"},
    {"name": "minValidationScore", "type": "uint8"},
    {"name": "validationSubjectHash", "type": "bytes32"},
    {"name": "jobHash", "type": "bytes32"},
    {"name": "requiredValidationTag", "type": "string"},
]


def typed_data(claims: GuaranteeClaims, domain: Eip712Domain) -> dict[str, Any]:
    """The EIP-712 typed-data document for the claims (``eth_signTypedData_v4`` input).

    For wallets and external signers; the hot path hashes without building it.
    """
    message: dict[str, Any] = {
        "user": claims.user_address,
        "recipient": claims.recipient_address,
        "tabId": claims.tab_id,
        "reqId": claims.req_id,
        "amount": claims.amount,
        "asset": claims.asset_address,
        "timestamp": claims.timestamp,
    }
    if claims.version == 2:
        message.update(
            validationRegistryAddress=claims.validation_registry_address,
            validationRequestHash=hex32(claims.validation_request_hash),
            validationChainId=claims.validation_chain_id,
            validatorAddress=claims.validator_address,
            validatorAgentId=claims.validator_agent_id,
            minValidationScore=claims.min_validation_score,
            validationSubjectHash=hex32(claims.validation_subject_hash),
            jobHash=hex32(claims.job_hash),
            requiredValidationTag=claims.required_validation_tag or "",
        )
    primary = f"SolGuaranteeRequestClaimsV{claims.version}"
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            primary: _V1_FIELDS if claims.version == 1 else _V2_FIELDS,
        },
        "primaryType": primary,
        "domain": {"name": domain.name, "version": domain.version, "chainId": domain.chain_id},
        "message": message,
    }
