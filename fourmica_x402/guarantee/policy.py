"""The G-v2 validation policy and the two hashes that bind it to one payment.

A seller advertises a :class:`ValidationPolicy` in ``PaymentRequirements.extra``; a G-v2
guarantee carries it in its claims together with two binding hashes — the *subject* (this
exact payment) and the *request* (what the named validator is asked to score) — so a score
posted for one payment can never make another one payable (docs/protocol.md, "Guarantees";
the Core recomputes both hashes before anything else, docs/protocol.md, "Acceptance").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._eth import address_word, keccak, parse_address, uint_word
from ..networks import parse_amount

__all__ = ["ValidationPolicy", "bytes32", "validation_request_hash", "validation_subject_hash"]

_HEX32 = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_SUBJECT_TAG = keccak(b"4MICA_VALIDATION_SUBJECT_V1")
_REQUEST_TAG = keccak(b"4MICA_VALIDATION_REQUEST_V2")


def bytes32(value: object, name: str) -> bytes:
    """``0x`` + 64 hex digits as 32 bytes; anything else raises ``ValueError`` naming ``name``
    (``bytes.fromhex`` alone would skip spaces: ``0x`` + 4 spaces + 60 digits is 30 bytes)."""
    if not isinstance(value, str) or not _HEX32.match(value):
        raise ValueError(f"{name} must be 0x followed by 64 hex digits")
    return bytes.fromhex(value[2:])


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
    def from_extra(
        cls, extra: Mapping[str, Any] | None, chain_id: int, *, lenient: bool = False
    ) -> ValidationPolicy | None:
        """The policy carried by requirements ``extra``; None when there is none.

        Raises ``ValueError`` when only part of a policy is present or a value is invalid.
        ``lenient`` is how a buyer reads a challenge: sellers on the official stack pass their
        configured ``extra`` through, so ``minValidationScore`` may arrive as a decimal string
        and ``validationChainId`` as a decimal or ``0x`` string (docs/buyer.md, "Challenges").
        A seller checking what it receives keeps the strict default.
        """
        if not extra:
            return None
        present = [key for key in cls._EXTRA_KEYS if extra.get(key) is not None]
        if not present:
            return None
        if len(present) != len(cls._EXTRA_KEYS):
            missing = sorted(set(cls._EXTRA_KEYS) - set(present))
            raise ValueError(f"incomplete validation policy, missing {', '.join(missing)}")
        score, agent = extra["minValidationScore"], extra["validatorAgentId"]
        declared_chain = extra.get("validationChainId", chain_id)
        if lenient:
            score = _number(score, "minValidationScore", hex_ok=False)
            declared_chain = _number(declared_chain, "validationChainId", hex_ok=True)
            agent = _number(agent, "validatorAgentId", hex_ok=True)
        try:
            agent = parse_amount(agent)  # a uint256
        except ValueError as exc:
            raise ValueError(f"validatorAgentId: {exc}") from None
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 100:
            raise ValueError("minValidationScore must be an integer 1..100")
        if isinstance(declared_chain, bool) or not isinstance(declared_chain, int):
            raise ValueError("validationChainId must be an integer")
        if declared_chain != chain_id:
            raise ValueError("validationChainId must equal the chain of the network")
        tag = extra.get("requiredValidationTag") or ""
        if not isinstance(tag, str):
            raise ValueError("requiredValidationTag must be a string")
        job_hash = bytes32(extra["jobHash"], "jobHash")
        if job_hash == bytes(32):
            raise ValueError("jobHash must be non-zero")
        return cls(
            registry=parse_address(extra["validationRegistryAddress"]),
            validator=parse_address(extra["validatorAddress"]),
            validator_agent_id=agent,
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


_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_HEX = re.compile(r"0x(?:0|[1-9a-fA-F][0-9a-fA-F]{0,63})\Z")


def _number(value: object, name: str, *, hex_ok: bool) -> int:
    """A JSON integer, or the same integer as a canonical string: decimal digits with no sign,
    space or leading zero (and, where ``hex_ok``, ``0x`` + minimal hex digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii():
        if _DECIMAL.match(value) and len(value) <= 78:
            return int(value)
        if hex_ok and _HEX.match(value):
            return int(value[2:], 16)
    shape = "a decimal or 0x-hex string" if hex_ok else "a decimal string"
    raise ValueError(f"{name} must be an integer (a JSON number or {shape}), got {value!r:.40}")
