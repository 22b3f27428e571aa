"""Collateral: positions, their credit limit, locks, the external money flows, suspension.

A position's capacity is ``credit_limit − locked − pending_withdrawal`` with
``credit_limit = floor(collateral × factor)``; accepting a guarantee locks ``amount`` of it
(docs/protocol.md, "Acceptance", step 8). Every function runs inside the caller's
transaction; none opens one.
"""

from __future__ import annotations

from fractions import Fraction

from .._eth import parse_address
from ..errors import CoreError
from ..networks import default_asset, find_asset, get_network
from .common import INT64_MAX
from .feed import Events, emit
from .store import Tx

__all__ = [
    "asset_address",
    "deposit",
    "factor",
    "lock_position",
    "read_factor",
    "record_flow",
    "release",
    "set_collateral",
    "set_factor",
    "suspend",
]


def asset_address(network: str, asset: str | None) -> str:
    """The token address ``asset`` names on ``network`` (its default asset when None)."""
    get_network(network)
    if asset is None:
        return default_asset(network).address
    known = find_asset(network, asset)
    return known.address if known else parse_address(asset)


def read_factor(tx: Tx, network: str, asset: str) -> Fraction:
    """An asset's factor, read only (1 unless set)."""
    row = tx.one(
        "SELECT factor FROM fx_asset_params WHERE network = ? AND asset = ?", (network, asset)
    )
    return Fraction(row[0]) if row else Fraction(1)


def factor(tx: Tx, network: str, asset: str) -> Fraction:
    """An asset's factor, its row locked until the transaction ends: a change of factor
    waits for it, then recomputes the positions it wrote (PostgreSQL; none is missed). Take
    it before any position of the asset, as :func:`set_factor` does, so neither waits on
    the other's rows."""
    tx.execute(
        "INSERT INTO fx_asset_params (network, asset, factor) VALUES (?, ?, '1') "
        "ON CONFLICT (network, asset) DO NOTHING",
        (network, asset),
    )
    row = tx.one(
        "UPDATE fx_asset_params SET factor = factor WHERE network = ? AND asset = ? "
        "RETURNING factor",
        (network, asset),
    )
    assert row is not None
    return Fraction(row[0])


def lock_position(tx: Tx, network: str, asset: str, address: str) -> tuple[int, ...]:
    """Create-if-missing and row-lock a position; returns (collateral, credit_limit, locked, pending)."""
    tx.execute(
        "INSERT INTO fx_positions (network, asset, address) VALUES (?, ?, ?) "
        "ON CONFLICT (network, asset, address) DO NOTHING",
        (network, asset, address),
    )
    row = tx.one(
        "UPDATE fx_positions SET collateral = collateral "
        "WHERE network = ? AND asset = ? AND address = ? "
        "RETURNING collateral, credit_limit, locked, pending_withdrawal",
        (network, asset, address),
    )
    assert row is not None
    return tuple(int(v) for v in row)


def set_collateral(
    tx: Tx, network: str, asset: str, address: str, collateral: int, factor: Fraction
) -> None:
    """A position's collateral and its credit limit under ``factor`` (read by :func:`factor`)."""
    limit = int(collateral * factor)
    tx.execute(
        "UPDATE fx_positions SET collateral = ?, credit_limit = ? "
        "WHERE network = ? AND asset = ? AND address = ?",
        (collateral, min(limit, INT64_MAX), network, asset, address),
    )


def release(tx: Tx, network: str, asset: str, address: str, amount: int) -> None:
    """Unlock ``amount`` of a position's capacity."""
    if amount:
        tx.execute(
            "UPDATE fx_positions SET locked = locked - ? WHERE network = ? AND asset = ? AND address = ?",
            (amount, network, asset, address),
        )


def record_flow(
    tx: Tx,
    kind: str,
    network: str,
    asset: str,
    address: str,
    amount: int,
    at: float,
    ref: str | None = None,
) -> None:
    """Record money entering or leaving the Core (the conservation audit sums these)."""
    tx.execute(
        "INSERT INTO fx_flows (kind, network, asset, address, amount, at, ref) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (kind, network, asset, address, amount, at, ref),
    )


def deposit(
    tx: Tx, events: Events, network: str, asset: str, address: str, amount: int, now: float
) -> None:
    value = factor(tx, network, asset)
    collateral, *_ = lock_position(tx, network, asset, address)
    if collateral + amount > INT64_MAX:
        raise CoreError("collateral would overflow", reason="invalid_amount", status=400)
    set_collateral(tx, network, asset, address, collateral + amount, value)
    record_flow(tx, "deposit", network, asset, address, amount, now)
    emit(events, "collateral.deposited", now, network, asset, address, amount=amount)


def set_factor(tx: Tx, network: str, asset: str, value: Fraction) -> None:
    """Store an asset's factor and recompute the credit limit of every position in it."""
    tx.execute(
        "INSERT INTO fx_asset_params (network, asset, factor) VALUES (?, ?, ?) "
        "ON CONFLICT (network, asset) DO UPDATE SET factor = excluded.factor",
        (network, asset, str(value)),
    )
    # A no-op update row-locks every position first and returns its collateral as committed
    # (PostgreSQL): a deposit, payout or coverage committed meanwhile is read, never written
    # over. Only the credit limit is written.
    rows = tx.all(
        "UPDATE fx_positions SET collateral = collateral WHERE network = ? AND asset = ? "
        "RETURNING address, collateral",
        (network, asset),
    )
    tx.many(
        "UPDATE fx_positions SET credit_limit = ? WHERE network = ? AND asset = ? AND address = ?",
        [
            (min(int(int(collateral) * value), INT64_MAX), network, asset, address)
            for address, collateral in rows
        ],
    )


def suspend(tx: Tx, address: str, suspended: bool) -> None:
    tx.execute(
        "INSERT INTO fx_participants (address, suspended) VALUES (?, ?) "
        "ON CONFLICT (address) DO UPDATE SET suspended = excluded.suspended",
        (address, int(suspended)),
    )
