"""Guarantee claims — what a buyer signs — and their JSON (G-v1, G-v2).

:class:`GuaranteeClaims` is the one model of both versions: G-v1 fields only, or G-v1 fields
plus a validation policy and its binding hashes (:mod:`.policy`). Its JSON is the claims object
of the inner payload, keys in the canonical order of docs/protocol.md, "Guarantees"; parsing
refuses anything off that shape with :class:`~fourmica_x402.errors.MalformedPayment`, because
the claims arrive from the buyer and reach the Core before any signature is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .._eth import parse_address
from .._text import has_control
from ..errors import MalformedPayment
from ..networks import parse_amount
from .policy import ValidationPolicy, bytes32, validation_request_hash, validation_subject_hash

__all__ = ["GuaranteeClaims", "hex32"]

_UINT64_MAX = (1 << 64) - 1


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
        registry, validator, job = (
            self.validation_registry_address,
            self.validator_address,
            self.job_hash,
        )
        if not (registry and validator and job):
            return False
        # The recomputation of :meth:`v2`, straight from the fields (on the hot path).
        subject = validation_subject_hash(
            self.tab_id,
            self.req_id,
            self.user_address,
            self.recipient_address,
            self.amount,
            self.asset_address,
            self.timestamp,
        )
        if subject != self.validation_subject_hash:
            return False
        return self.validation_request_hash == validation_request_hash(
            self.validation_chain_id or 0,
            registry,
            validator,
            self.validator_agent_id or 0,
            subject,
            self.min_validation_score or 0,
            self.required_validation_tag or "",
            job,
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
                validation_request_hash=hex32(self.validation_request_hash),
                validation_chain_id=self.validation_chain_id,
                validator_address=self.validator_address,
                validator_agent_id=hex(self.validator_agent_id or 0),
                min_validation_score=self.min_validation_score,
                validation_subject_hash=hex32(self.validation_subject_hash),
                required_validation_tag=self.required_validation_tag or "",
                job_hash=hex32(self.job_hash),
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
                    validation_request_hash=bytes32(
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
                    validation_subject_hash=bytes32(
                        data["validation_subject_hash"], "validation_subject_hash"
                    ),
                    required_validation_tag=_string(data.get("required_validation_tag", "")),
                    job_hash=bytes32(data["job_hash"], "job_hash"),
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


def hex32(value: bytes | None) -> str:
    """A 32-byte hash as ``0x`` + 64 hex digits (zero when absent)."""
    return "0x" + (value or bytes(32)).hex()


def _uint(value: object, maximum: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in 0..{maximum}")
    return value


def _string(value: object) -> str:
    if not isinstance(value, str) or len(value) > 256 or has_control(value):
        raise ValueError(
            "required_validation_tag must be a string of at most 256 characters, "
            "none of them a control character"
        )
    return value
