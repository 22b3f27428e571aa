"""The evidence bundle of one paid request (docs/operations.md, "Evidence and disputes").

One canonical JSON document (:mod:`.canonical`) with, under ``content``:

- ``guarantee``: the claims and the buyer's signature exactly as the Core accepted them, its
  version (``G-v1``/``G-v2``), the tab's running total the certificate carries;
- ``eip712_domain`` and ``core`` (the BLS public key, the guarantee domain and the Core
  contract it is made of with the chain id): what an offline verifier needs;
- ``certificate``: the Core's BLS certificate, made on demand when the Core has none yet;
- ``record``: the seller's payment record (route, method, path, status, amounts, ids, the
  request and response hashes, times); ``request_hash`` is null on older records;
- ``history``: settled, delivered or refunded, the pending follow-up, the G-v2 score, the
  clearing cycle the guarantee was netted in and the payer's position there;
- ``disputes``: the dispute history (:mod:`.disputes`).

Money is integers of atomic units; times are Unix seconds.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..core import Core
from ..errors import CoreError, FourmicaError
from ..networks import get_network
from ..records import PaymentRecord, Records
from .canonical import seal
from .disputes import Disputes

__all__ = ["EvidenceError", "build_bundle", "build_content"]

_RECORD_FIELDS = (
    "record_id",
    "route",
    "method",
    "path",
    "status",
    "http_status",
    "amount",
    "asset",
    "network",
    "pay_to",
    "payer",
    "guarantee_id",
    "tab_id",
    "request_id",
    "header_version",
    "settle_mode",
    "outcome",
    "request_hash",
    "response_hash",
    "created_at",
    "delivered_at",
)


class EvidenceError(FourmicaError):
    """No evidence can be made: an unknown guarantee, or no record of it."""

    status = 404
    reason = "unknown_guarantee"


def build_bundle(core: Core, records: Records, guarantee_id: str) -> bytes:
    """The bundle file (its exact bytes) of the paid request of ``guarantee_id``."""
    return seal(build_content(core, records, guarantee_id))


def build_content(core: Core, records: Records, guarantee_id: str) -> dict[str, Any]:
    """The bundle's content (see the module's docstring); raises :class:`EvidenceError`."""
    try:
        g = core.guarantee(guarantee_id)
    except CoreError as exc:
        if exc.reason != "unknown_guarantee":
            raise
        raise EvidenceError(f"no guarantee {guarantee_id} in this Core") from None
    record = records.for_guarantee(g.guarantee_id, hex(g.tab_id), hex(g.req_id))
    if record is None:
        raise EvidenceError(
            f"no payment record of {guarantee_id} in the records database",
            reason="unknown_record",
        )
    with core.store.transaction(write=False) as tx:
        row = tx.one(
            "SELECT claims, signature, scheme FROM fx_guarantees WHERE guarantee_id = ?",
            (g.guarantee_id,),
        )
    assert row is not None
    chain_id = get_network(g.network).chain_id
    domain = core.domain(chain_id)
    certificate = core.certify(g.guarantee_id).to_json()  # made now when the Core has none
    return {
        "guarantee_id": g.guarantee_id,
        "network": g.network,
        "guarantee": {
            "version": f"G-v{g.version}",
            "claims": json.loads(row[0]),
            "signature": row[1],
            "scheme": row[2],
            "total_amount": g.total_amount,
            "accepted_at": g.accepted_at,
        },
        "eip712_domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
        },
        "core": {
            "public_key": "0x" + core.operator.public_key.hex(),
            "guarantee_domain": "0x" + core.guarantee_domain(chain_id).hex(),
            # what ties the domain to the network's chain: an EIP-191 signature names none
            "contract_address": core.config.contract_address,
        },
        "certificate": certificate,
        "record": {name: getattr(record, name) for name in _RECORD_FIELDS},
        "history": _history(core, records, record, g),
        "disputes": [e.to_dict() for e in Disputes(records).history(g.guarantee_id)],
        "made_at": time.time(),
    }


def _history(core: Core, records: Records, record: PaymentRecord, g: Any) -> dict[str, Any]:
    followup = records.followup(g.guarantee_id)
    history: dict[str, Any] = {
        "settled": bool(record.settle_result.get("success")),
        "delivered": record.status == "delivered",
        "refunded": record.outcome == "refunded" or g.state == "voided",
        "record_status": record.status,
        "outcome": record.outcome,
        "followup": None
        if followup is None
        else {"status": followup[0], "attempts": followup[1], "detail": followup[2]},
        "guarantee_state": g.state,
        "scored": None,
        "cycle": None,
    }
    if g.version == 2:
        history["scored"] = {
            "validator": g.validator,
            "min_score": g.min_score,
            "score": g.score,
        }
    if g.cycle_id is not None:
        history["cycle"] = _cycle(core, g)
    return history


def _cycle(core: Core, g: Any) -> dict[str, Any]:
    """The clearing cycle the guarantee is in, and how it was netted: the payer's position
    and the payer → payee obligation it is part of."""
    cycle = core.cycle(g.cycle_id)
    position = next(
        (p for p in core.cycle_positions(cycle.cycle_id) if p.address == g.user_address), None
    )
    pair = next(
        (
            p
            for p in core.cycle_pairs(cycle.cycle_id)
            if (p.payer, p.payee) == (g.user_address, g.recipient_address)
        ),
        None,
    )
    return {
        "cycle_id": cycle.cycle_id,
        "status": cycle.status,
        "opened_at": cycle.opened_at,
        "closed_at": cycle.closed_at,
        "final_at": cycle.final_at,
        "merkle_root": cycle.merkle_root,
        "payer_position": None
        if position is None
        else {k: v for k, v in position.to_dict().items() if k not in ("cycle_id", "address")},
        "obligation": None
        if pair is None
        else {
            "payer": pair.payer,
            "payee": pair.payee,
            "amount": pair.amount,
            "guarantee_count": pair.guarantee_count,
        },
    }
