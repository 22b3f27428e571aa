"""4mica-credit guarantees: claims (G-v1, G-v2), EIP-712 hashing, signing, recovery.

A buyer promises to pay ``amount`` of ``asset`` to ``recipient`` by signing
the claims with EIP-712 (domain ``EIP712Domain(string name,string version,
uint256 chainId)``). G-v2 claims also bind a validation policy: the guarantee
is payable only once the named validator posts a high enough score.

Hot-path notes: type hashes are computed once at import; struct hashes are
built from pre-encoded 32-byte words; recovery goes straight to
libsecp256k1 through coincurve.

    >>> domain = Eip712Domain(chain_id=84532)
    >>> signed = sign_claims(claims, private_key, domain)        # doctest: +SKIP
    >>> recover_signer(signed, domain) == claims.user_address   # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import coincurve

from ._eth import (
    ZERO_ADDRESS,
    Dyn,
    abi_encode_dynamic,
    address_word,
    keccak,
    parse_address,
    uint_word,
)
from .errors import MalformedPayment
from .networks import parse_amount

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
#: ``guaranteeDomainSeparator()`` on the Core contract, as read by official buyers.
GUARANTEE_DOMAIN_SELECTOR = "0x991ce4cd"

_DOMAIN_TYPEHASH = keccak(EIP712_DOMAIN_TYPE.encode())
_V1_TYPEHASH = keccak(V1_TYPE.encode())
_V2_TYPEHASH = keccak(V2_TYPE.encode())
_SUBJECT_TAG = keccak(b"4MICA_VALIDATION_SUBJECT_V1")
_REQUEST_TAG = keccak(b"4MICA_VALIDATION_REQUEST_V2")
_GUARANTEE_DOMAIN_TAG = "4MICA_CORE_GUARANTEE_V1"
_UINT64_MAX = (1 << 64) - 1
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


# -- validation policy (G-v2) ----------------------------------------------------------------


def validation_subject_hash(
    tab_id: int, req_id: int, user: str, recipient: str, amount: int, asset: str, timestamp: int
) -> bytes:
    """What the validator scores: binds the policy to this exact payment."""
    return keccak(
        _SUBJECT_TAG
        + uint_word(tab_id)
        + uint_word(req_id)
        + address_word(user)
        + address_word(recipient)
        + uint_word(amount)
        + address_word(asset)
        + uint_word(timestamp)
    )


def validation_request_hash(
    chain_id: int,
    registry: str,
    validator: str,
    validator_agent_id: int,
    subject_hash: bytes,
    min_score: int,
    tag: str,
    job_hash: bytes,
) -> bytes:
    """The request a validator answers; canonicalization ``4MICA_VALIDATION_REQUEST_V2``."""
    return keccak(
        _REQUEST_TAG
        + uint_word(chain_id)
        + address_word(registry)
        + address_word(validator)
        + uint_word(validator_agent_id)
        + subject_hash
        + uint_word(min_score)
        + keccak(tag.encode("utf-8"))
        + job_hash
    )


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """A G-v2 validation policy as advertised in ``PaymentRequirements.extra``."""

    registry: str
    validator: str
    validator_agent_id: int
    min_score: int
    job_hash: bytes
    chain_id: int
    tag: str = ""

    _EXTRA_KEYS = (
        "validationRegistryAddress",
        "validatorAddress",
        "validatorAgentId",
        "minValidationScore",
        "jobHash",
    )

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None, chain_id: int) -> ValidationPolicy | None:
        """The policy carried by requirements ``extra``; None when there is none.

        Raises ``ValueError`` when only part of a policy is present or a value is invalid.
        """
        if not extra:
            return None
        present = [key for key in cls._EXTRA_KEYS if extra.get(key) is not None]
        if not present:
            return None
        if len(present) != len(cls._EXTRA_KEYS):
            missing = sorted(set(cls._EXTRA_KEYS) - set(present))
            raise ValueError(f"incomplete validation policy, missing {', '.join(missing)}")
        score = extra["minValidationScore"]
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 100:
            raise ValueError("minValidationScore must be an integer 1..100")
        declared_chain = extra.get("validationChainId", chain_id)
        if isinstance(declared_chain, bool) or not isinstance(declared_chain, int):
            raise ValueError("validationChainId must be an integer")
        if declared_chain != chain_id:
            raise ValueError("validationChainId must equal the chain of the network")
        tag = extra.get("requiredValidationTag") or ""
        if not isinstance(tag, str):
            raise ValueError("requiredValidationTag must be a string")
        job_hash = _bytes32(extra["jobHash"], "jobHash")
        if job_hash == bytes(32):
            raise ValueError("jobHash must be non-zero")
        return cls(
            registry=parse_address(extra["validationRegistryAddress"]),
            validator=parse_address(extra["validatorAddress"]),
            validator_agent_id=parse_amount(extra["validatorAgentId"]),
            min_score=score,
            job_hash=job_hash,
            chain_id=chain_id,
            tag=tag,
        )

    def to_extra(self) -> dict[str, Any]:
        """The ``extra`` keys that advertise this policy (merge into requirements)."""
        extra: dict[str, Any] = {
            "validationRegistryAddress": self.registry,
            "validatorAddress": self.validator,
            "validatorAgentId": str(self.validator_agent_id),
            "minValidationScore": self.min_score,
        }
        if self.tag:
            extra["requiredValidationTag"] = self.tag
        extra["jobHash"] = "0x" + self.job_hash.hex()
        extra["validationChainId"] = self.chain_id
        return extra


# -- claims -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuaranteeClaims:
    """What a buyer signs. Attribute names are the JSON keys of the claims (docs/protocol.md, "Guarantees").

    Addresses are EIP-55; ids, amounts and scores are ints; hashes 32 bytes.
    The G-v2 fields are None on a G-v1 guarantee.
    """

    version: int
    user_address: str
    recipient_address: str
    tab_id: int
    req_id: int
    amount: int
    asset_address: str
    timestamp: int
    validation_registry_address: str | None = None
    validation_request_hash: bytes | None = None
    validation_chain_id: int | None = None
    validator_address: str | None = None
    validator_agent_id: int | None = None
    min_validation_score: int | None = None
    validation_subject_hash: bytes | None = None
    required_validation_tag: str | None = None
    job_hash: bytes | None = None

    @classmethod
    def v1(
        cls,
        *,
        user: str,
        recipient: str,
        tab_id: int,
        req_id: int,
        amount: int,
        asset: str,
        timestamp: int,
    ) -> GuaranteeClaims:
        """G-v1 claims; addresses are normalised to EIP-55."""
        return cls(
            1,
            parse_address(user),
            parse_address(recipient),
            tab_id,
            req_id,
            amount,
            parse_address(asset),
            timestamp,
        )

    @classmethod
    def v2(
        cls,
        *,
        user: str,
        recipient: str,
        tab_id: int,
        req_id: int,
        amount: int,
        asset: str,
        timestamp: int,
        policy: ValidationPolicy,
    ) -> GuaranteeClaims:
        """G-v2 claims for ``policy``, with both binding hashes computed canonically."""
        base = cls.v1(
            user=user,
            recipient=recipient,
            tab_id=tab_id,
            req_id=req_id,
            amount=amount,
            asset=asset,
            timestamp=timestamp,
        )
        subject = validation_subject_hash(
            tab_id,
            req_id,
            base.user_address,
            base.recipient_address,
            amount,
            base.asset_address,
            timestamp,
        )
        request = validation_request_hash(
            policy.chain_id,
            policy.registry,
            policy.validator,
            policy.validator_agent_id,
            subject,
            policy.min_score,
            policy.tag,
            policy.job_hash,
        )
        return replace(
            base,
            version=2,
            validation_registry_address=policy.registry,
            validation_request_hash=request,
            validation_chain_id=policy.chain_id,
            validator_address=policy.validator,
            validator_agent_id=policy.validator_agent_id,
            min_validation_score=policy.min_score,
            validation_subject_hash=subject,
            required_validation_tag=policy.tag,
            job_hash=policy.job_hash,
        )

    @property
    def policy(self) -> ValidationPolicy | None:
        """The validation policy these G-v2 claims bind (None for G-v1)."""
        if self.version != 2:
            return None
        assert self.validation_registry_address and self.validator_address and self.job_hash
        return ValidationPolicy(
            registry=self.validation_registry_address,
            validator=self.validator_address,
            validator_agent_id=self.validator_agent_id or 0,
            min_score=self.min_validation_score or 0,
            job_hash=self.job_hash,
            chain_id=self.validation_chain_id or 0,
            tag=self.required_validation_tag or "",
        )

    def bindings_are_canonical(self) -> bool:
        """True when both G-v2 binding hashes equal their recomputation (always for G-v1)."""
        if self.version != 2:
            return True
        expected = GuaranteeClaims.v2(
            user=self.user_address,
            recipient=self.recipient_address,
            tab_id=self.tab_id,
            req_id=self.req_id,
            amount=self.amount,
            asset=self.asset_address,
            timestamp=self.timestamp,
            policy=self.policy,  # type: ignore[arg-type]
        )
        return (
            expected.validation_subject_hash == self.validation_subject_hash
            and expected.validation_request_hash == self.validation_request_hash
        )

    def to_json(self) -> dict[str, Any]:
        """The claims JSON (docs/protocol.md, "Guarantees"), keys in the canonical order."""
        data: dict[str, Any] = {
            "version": f"v{self.version}",
            "user_address": self.user_address,
            "recipient_address": self.recipient_address,
            "tab_id": hex(self.tab_id),
            "req_id": hex(self.req_id),
            "amount": hex(self.amount),
            "asset_address": self.asset_address,
            "timestamp": self.timestamp,
        }
        if self.version == 2:
            data.update(
                validation_registry_address=self.validation_registry_address,
                validation_request_hash=_hex32(self.validation_request_hash),
                validation_chain_id=self.validation_chain_id,
                validator_address=self.validator_address,
                validator_agent_id=hex(self.validator_agent_id or 0),
                min_validation_score=self.min_validation_score,
                validation_subject_hash=_hex32(self.validation_subject_hash),
                required_validation_tag=self.required_validation_tag or "",
                job_hash=_hex32(self.job_hash),
            )
        return data

    @classmethod
    def from_json(cls, data: object) -> GuaranteeClaims:
        """Parse claims JSON; anything malformed raises :class:`MalformedPayment`."""
        if not isinstance(data, Mapping):
            raise MalformedPayment("claims must be a JSON object")
        try:
            version = _VERSIONS[data["version"]]
            values: dict[str, Any] = {
                "version": version,
                "user_address": parse_address(data["user_address"]),
                "recipient_address": parse_address(data["recipient_address"]),
                "tab_id": parse_amount(data["tab_id"]),
                "req_id": parse_amount(data["req_id"]),
                "amount": parse_amount(data["amount"]),
                "asset_address": parse_address(data["asset_address"]),
                "timestamp": _uint(data["timestamp"], _UINT64_MAX, "timestamp"),
            }
            if version == 2:
                values.update(
                    validation_registry_address=parse_address(data["validation_registry_address"]),
                    validation_request_hash=_bytes32(
                        data["validation_request_hash"], "validation_request_hash"
                    ),
                    validation_chain_id=_uint(
                        data["validation_chain_id"], (1 << 256) - 1, "validation_chain_id"
                    ),
                    validator_address=parse_address(data["validator_address"]),
                    validator_agent_id=parse_amount(data["validator_agent_id"]),
                    min_validation_score=_uint(
                        data["min_validation_score"], 255, "min_validation_score"
                    ),
                    validation_subject_hash=_bytes32(
                        data["validation_subject_hash"], "validation_subject_hash"
                    ),
                    required_validation_tag=_string(data.get("required_validation_tag", "")),
                    job_hash=_bytes32(data["job_hash"], "job_hash"),
                )
            elif any(name in data for name in _V2_ONLY):
                raise ValueError("G-v1 claims carry G-v2 fields")
        except KeyError as exc:
            raise MalformedPayment(f"claims: missing field {exc.args[0]!r:.60}") from None
        except (ValueError, TypeError) as exc:
            raise MalformedPayment(f"claims: {exc}") from None
        return cls(**values)


_VERSIONS: dict[object, int] = {"v1": 1, "v2": 2}
_V2_ONLY = tuple(f.name for f in fields(GuaranteeClaims))[8:]


def _hex32(value: bytes | None) -> str:
    return "0x" + (value or bytes(32)).hex()


def _bytes32(value: object, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 66 or value[:2] != "0x":
        raise ValueError(f"{name} must be 0x followed by 64 hex digits")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise ValueError(f"{name} must be 0x followed by 64 hex digits") from None


def _uint(value: object, maximum: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in 0..{maximum}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise ValueError("required_validation_tag must be a string of at most 256 characters")
    return value


# -- hashing, signing, recovery ---------------------------------------------------------------


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
            validationRequestHash=_hex32(claims.validation_request_hash),
            validationChainId=claims.validation_chain_id,
            validatorAddress=claims.validator_address,
            validatorAgentId=claims.validator_agent_id,
            minValidationScore=claims.min_validation_score,
            validationSubjectHash=_hex32(claims.validation_subject_hash),
            jobHash=_hex32(claims.job_hash),
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


# -- Core-side encodings ----------------------------------------------------------------------


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
