"""Guarantee acceptance, in the order of docs/protocol.md, "Acceptance".

Steps 1–2 need no database (:func:`precheck`: claims shape, binding hashes, the
signature) and run before the transaction, so a write lock is never held across a
signature recovery; steps 3–7 (:func:`check`) and the capacity lock (step 8) and the
stored guarantee (step 9, :func:`accept`) run inside the caller's one transaction.
"""

from __future__ import annotations

from .._eth import parse_address
from .._json import dumps
from ..errors import Reason
from ..guarantee import GuaranteeClaims, SignedGuarantee, guarantee_id, recover_signer
from ..networks import get_network
from . import cycles
from .common import INT64_MAX, LockClauses, hex_id, rejected
from .config import CoreConfig, Domains
from .feed import Events, emit
from .models import Acceptance, Expected
from .store import Tx

__all__ = ["accept", "check", "id_of", "precheck", "verify"]


def precheck(
    signed: SignedGuarantee, expected: Expected, config: CoreConfig, domains: Domains
) -> GuaranteeClaims:
    """Acceptance steps 1–2 (docs/protocol.md): everything that needs no database."""
    claims = signed.claims
    if claims.version not in config.accepted_versions:
        raise rejected(
            Reason.UNSUPPORTED_VERSION, f"guarantee version {claims.version} is not accepted"
        )
    try:
        chain_id = get_network(expected.network).chain_id
    except Exception:
        raise rejected(Reason.NETWORK_MISMATCH, f"unknown network {expected.network}") from None
    if claims.version == 2:
        score = claims.min_validation_score or 0
        if not 1 <= score <= 100:
            raise rejected(Reason.INVALID_VALIDATION_POLICY, "min_validation_score must be 1..100")
        if claims.validation_chain_id != chain_id:
            raise rejected(
                Reason.INVALID_VALIDATION_POLICY,
                "validation_chain_id is not the network's chain",
            )
        if not claims.bindings_are_canonical():
            raise rejected(
                Reason.INVALID_VALIDATION_POLICY, "validation binding hashes are not canonical"
            )
        if claims.validation_registry_address not in config.trusted_registries:
            raise rejected(Reason.UNTRUSTED_VALIDATION_REGISTRY)
    if recover_signer(signed, domains.eip712(chain_id)) != claims.user_address:
        raise rejected(Reason.INVALID_SIGNATURE, "signature does not recover user_address")
    return claims


def id_of(claims: GuaranteeClaims, network: str) -> str:
    """The guarantee id (``0x``-hex) of ``claims`` on ``network``."""
    chain_id = get_network(network).chain_id
    return "0x" + guarantee_id(chain_id, claims.tab_id, claims.req_id).hex()


def check(
    tx: Tx, claims: GuaranteeClaims, expected: Expected, now: float, max_clock_skew: int
) -> int | None:
    """Acceptance steps 3–7 (docs/protocol.md), inside the transaction.

    Returns the timestamp the tab starts at from now on when this is its first guarantee,
    signed by a clock up to ``max_clock_skew`` behind the Core's (None otherwise).
    """
    tab_key = hex_id(claims.tab_id)
    # One statement reads what steps 3–5 need: the payer's suspension, a replay, the tab.
    row = tx.one(
        "SELECT (SELECT suspended FROM fx_participants WHERE address = ?), "
        "EXISTS (SELECT 1 FROM fx_guarantees WHERE tab_id = ? AND req_id = ?), "
        "t.user_address, t.recipient_address, t.network, t.asset, t.guarantee_version, "
        "t.start_ts, t.ttl, t.total_amount "
        "FROM (SELECT 1 AS one) AS one LEFT JOIN fx_tabs t ON t.tab_id = ?",
        (claims.user_address, tab_key, hex_id(claims.req_id), tab_key),
    )
    assert row is not None
    if row[0]:
        raise rejected(Reason.PAYER_SUSPENDED)
    if row[1]:
        raise rejected(Reason.REPLAYED_REQUEST_ID)
    if claims.timestamp > now + max_clock_skew:
        raise rejected(Reason.TIMESTAMP_IN_FUTURE)
    tab = None if row[2] is None else row[2:]
    if tab is None:
        raise rejected(Reason.UNKNOWN_TAB)
    start, end = int(tab[5]), int(tab[5]) + int(tab[6])
    if now > end:
        raise rejected(Reason.TAB_EXPIRED)
    ts, opens = claims.timestamp, None
    if start - max_clock_skew <= ts < start and ts + int(tab[6]) >= now:
        # A tab opens at its first guarantee (as 4Mica's Core does), so a buyer whose clock is
        # a little behind ours can pay on the tab we just opened: docs/protocol.md, "Paying".
        opens = None if _used(tx, claims.tab_id) else ts
    if opens is None and not start <= ts <= end:
        raise rejected(Reason.TIMESTAMP_OUTSIDE_TAB, "timestamp is outside the tab's window")
    if (tab[0], tab[1], tab[3], int(tab[4])) != (
        claims.user_address,
        claims.recipient_address,
        claims.asset_address,
        claims.version,
    ):
        raise rejected(Reason.TAB_MISMATCH, "claims do not match the tab")
    if claims.recipient_address != parse_address(expected.pay_to):
        raise rejected(Reason.RECIPIENT_MISMATCH)
    if claims.asset_address != parse_address(expected.asset):
        raise rejected(Reason.ASSET_MISMATCH)
    if claims.amount != expected.amount:
        raise rejected(Reason.AMOUNT_MISMATCH)
    if claims.amount <= 0:  # terms that ask for nothing: a free pass, never a payment
        raise rejected(Reason.INVALID_AMOUNT, "a guarantee is for at least one atomic unit")
    if tab[2] != expected.network:
        raise rejected(Reason.NETWORK_MISMATCH)
    if claims.amount <= INT64_MAX < int(tab[7]) + claims.amount:  # a 64-bit running total
        raise rejected(Reason.TAB_TOTAL_EXCEEDED, "the tab's running total is full: open a new tab")
    if expected.policy is not None and claims.policy != expected.policy:
        raise rejected(Reason.VALIDATION_POLICY_MISMATCH)
    if expected.policy is None and claims.version == 2:
        raise rejected(
            Reason.VALIDATION_POLICY_MISMATCH,
            "a G-v2 guarantee for requirements without a validation policy",
        )
    return opens


def _used(tx: Tx, tab_id: int) -> bool:
    """Whether the tab has a guarantee (in any state): its start no longer moves."""
    row = tx.one("SELECT EXISTS (SELECT 1 FROM fx_guarantees WHERE tab_id = ?)", (hex_id(tab_id),))
    return row is None or bool(row[0])


def verify(
    tx: Tx, claims: GuaranteeClaims, expected: Expected, now: float, max_clock_skew: int
) -> str:
    """Steps 3–8 without changing anything (step 8 reads the capacity). Returns the payer."""
    check(tx, claims, expected, now, max_clock_skew)
    row = tx.one(
        "SELECT credit_limit - locked - pending_withdrawal FROM fx_positions "
        "WHERE network = ? AND asset = ? AND address = ?",
        (expected.network, claims.asset_address, claims.user_address),
    )
    if row is None or int(row[0]) < claims.amount:
        raise rejected(Reason.INSUFFICIENT_COLLATERAL)
    return claims.user_address


def accept(
    tx: Tx,
    events: Events,
    signed: SignedGuarantee,
    expected: Expected,
    gid: str,
    now: float,
    config: CoreConfig,
    locks: LockClauses,
) -> Acceptance:
    """Steps 3–9: check, lock capacity, store the guarantee (``signed`` passed :func:`precheck`).

    A replay that slips past step 4 concurrently fails the insert with
    :class:`~fourmica_x402.core.store.Conflict`; the caller maps it to a replay.
    """
    claims = signed.claims
    network, asset, user = expected.network, claims.asset_address, claims.user_address
    state = "payable" if claims.version == 1 else "pending_validation"
    opens = check(tx, claims, expected, now, config.max_clock_skew)
    if claims.amount > INT64_MAX or not tx.execute(
        "UPDATE fx_positions SET locked = locked + ? WHERE network = ? AND asset = ? "
        "AND address = ? AND credit_limit - locked - pending_withdrawal >= ?",
        (claims.amount, network, asset, user, claims.amount),
    ):
        raise rejected(Reason.INSUFFICIENT_COLLATERAL)
    # The bound again, on the row as locked: another acceptance on this tab may have
    # committed since check() read it (PostgreSQL), and the sum must not overflow.
    total_row = tx.one(
        "UPDATE fx_tabs SET total_amount = total_amount + ?, guarantee_count = guarantee_count + 1 "
        "WHERE tab_id = ? "
        "AND total_amount <= ? RETURNING total_amount, start_ts, ttl",
        (claims.amount, hex_id(claims.tab_id), INT64_MAX - claims.amount),
    )
    if total_row is None:
        raise rejected(Reason.TAB_TOTAL_EXCEEDED, "the tab's running total is full: open a new tab")
    total, start, ttl = (int(value) for value in total_row)
    # The window again, on the row as locked: a first guarantee signed early that committed
    # since check() read the tab moved its start and end (docs/protocol.md, "Paying").
    if opens is not None and _used(tx, claims.tab_id):
        opens = None
    if now > start + ttl:
        raise rejected(Reason.TAB_EXPIRED)
    if opens is None and not start <= claims.timestamp <= start + ttl:
        raise rejected(Reason.TIMESTAMP_OUTSIDE_TAB, "timestamp is outside the tab's window")
    if opens is not None:  # only ever earlier: two first guarantees racing keep the earliest
        tx.execute(
            "UPDATE fx_tabs SET start_ts = ? WHERE tab_id = ? AND start_ts > ?",
            (opens, hex_id(claims.tab_id), opens),
        )
    cycle_id = None
    if state == "payable":
        cycle_id = cycles.join(
            tx,
            network,
            asset,
            user,
            claims.recipient_address,
            claims.amount,
            now,
            config,
            locks,
        )
    tx.execute(
        "INSERT INTO fx_guarantees (tab_id, req_id, guarantee_id, network, asset, "
        "user_address, recipient_address, amount, total_amount, ts, version, state, "
        "accepted_at, resolved_at, cycle_id, validator, min_score, required_tag, "
        "validation_deadline, claims, signature, scheme) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            hex_id(claims.tab_id),
            hex_id(claims.req_id),
            gid,
            network,
            asset,
            user,
            claims.recipient_address,
            claims.amount,
            total,
            claims.timestamp,
            claims.version,
            state,
            now,
            now if state == "payable" else None,
            cycle_id,
            claims.validator_address,
            claims.min_validation_score,
            claims.required_validation_tag,
            now + config.validation_timeout if claims.version == 2 else None,
            dumps(claims.to_json()),
            "0x" + signed.signature.hex(),
            signed.scheme,
        ),
    )
    emit(
        events,
        "guarantee.accepted",
        now,
        network,
        asset,
        user,
        guarantee_id=gid,
        recipient=claims.recipient_address,
        amount=claims.amount,
        state=state,
    )
    return Acceptance(
        gid,
        claims.tab_id,
        claims.req_id,
        user,
        claims.recipient_address,
        claims.amount,
        total,
        network,
        asset,
        state,
        claims.version,
    )
