"""Plain records the Core returns. Amounts are ints of atomic units."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..guarantee import ValidationPolicy

__all__ = [
    "Acceptance",
    "Alert",
    "Cycle",
    "CyclePair",
    "CyclePosition",
    "Event",
    "Expected",
    "GuaranteeRecord",
    "Position",
    "Tab",
    "Withdrawal",
]


@dataclass(frozen=True, slots=True)
class Position:
    """Collateral of one address in one asset on one network."""

    network: str
    asset: str
    address: str
    collateral: int = 0
    credit_limit: int = 0  # floor(collateral × factor)
    locked: int = 0
    pending_withdrawal: int = 0

    @property
    def capacity(self) -> int:
        """What the address can still promise: ``credit_limit − locked − pending_withdrawal``,
        never below 0 (under a factor below 1 a withdrawal may reserve more than the credit;
        docs/operations.md, "Operator settings")."""
        return max(self.credit_limit - self.locked - self.pending_withdrawal, 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "capacity": self.capacity}


@dataclass(frozen=True, slots=True)
class Tab:
    """A buyer↔seller relationship that hands out request ids."""

    tab_id: int
    user_address: str
    recipient_address: str
    network: str
    asset_address: str
    guarantee_version: int
    start_timestamp: int
    ttl_seconds: int
    next_req_id: int

    def to_json(self) -> dict[str, Any]:
        """The tab response (docs/protocol.md, "Endpoints") (camelCase, ids as 0x hex)."""
        return {
            "tabId": hex(self.tab_id),
            "userAddress": self.user_address,
            "recipientAddress": self.recipient_address,
            "assetAddress": self.asset_address,
            "startTimestamp": self.start_timestamp,
            "ttlSeconds": self.ttl_seconds,
            "nextReqId": hex(self.next_req_id),
        }


@dataclass(frozen=True, slots=True)
class Expected:
    """What the seller asked for: the claims must match it exactly (docs/protocol.md, "Acceptance", step 7)."""

    network: str
    pay_to: str
    asset: str
    amount: int
    policy: ValidationPolicy | None = None


@dataclass(frozen=True, slots=True)
class Acceptance:
    """A guarantee the Core accepted: capacity is locked."""

    guarantee_id: str
    tab_id: int
    req_id: int
    payer: str
    recipient: str
    amount: int
    total_amount: int
    network: str
    asset: str
    state: str
    version: int


@dataclass(frozen=True, slots=True)
class GuaranteeRecord:
    guarantee_id: str
    tab_id: int
    req_id: int
    network: str
    asset: str
    user_address: str
    recipient_address: str
    amount: int
    total_amount: int
    timestamp: int
    version: int
    state: str
    accepted_at: float
    cycle_id: int | None
    validator: str | None
    min_score: int | None
    score: int | None
    certificate: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tab_id"] = hex(self.tab_id)
        data["req_id"] = hex(self.req_id)
        return data


@dataclass(frozen=True, slots=True)
class Cycle:
    cycle_id: int
    network: str
    asset: str
    status: str  # open | closed | resolved | final
    opened_at: float
    closes_at: float
    closed_at: float | None
    resolve_at: float | None
    pay_by: float | None
    final_at: float | None
    guarantee_count: int
    gross: int
    net_transfers: int
    total_debit: int
    collected: int
    claimed: int
    merkle_root: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CyclePosition:
    cycle_id: int
    address: str
    gross_in: int
    gross_out: int
    net: int
    role: str  # debtor | creditor | balanced
    debit: int
    credit: int
    paid: int
    covered: int
    claimed: int
    shortfall: int
    status: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CyclePair:
    cycle_id: int
    payer: str
    payee: str
    amount: int
    guarantee_count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    withdrawal_id: int
    network: str
    asset: str
    address: str
    amount: int
    requested_at: float
    available_at: float
    status: str  # pending | finalized | cancelled
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened in the Core (docs/protocol.md, "Events")."""

    event_id: int
    type: str
    at: float
    network: str | None
    asset: str | None
    address: str | None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Alert:
    """One firing: which rule, about what (``subject``), the value that crossed the threshold."""

    rule: str
    #: What the rule watches: a payer, a client address, a route, ``network/asset/address`` of
    #: a position, ``cycle_id/address`` of a default, a withdrawal id, the follow-ups.
    subject: str
    value: int | float
    threshold: int | float
    at: float
    network: str | None = None
    asset: str | None = None
    address: str | None = None
    #: More of the rule's reading (amounts, cycle ids, …), carried in the event's data.
    detail: Mapping[str, Any] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        """The ``alert.fired`` event's data."""
        return {
            **self.detail,
            "rule": self.rule,
            "subject": self.subject,
            "value": self.value,
            "threshold": self.threshold,
        }
