"""``GET /api/*``: read-only JSON of the Core for the CLI and scripts (positions, cycles,
guarantees, events). Open like the dashboard, which shows the same data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fourmica_x402._eth import parse_address

from .base import Call, Reply, bad_request, error, integer

if TYPE_CHECKING:
    from .context import Service

__all__ = ["cycle", "cycles", "events", "guarantees", "positions"]


def positions(service: Service, call: Call) -> Reply:
    return 200, [p.to_dict() for p in service.core.positions()]


def cycles(service: Service, call: Call) -> Reply:
    return 200, [c.to_dict() for c in service.core.cycles(limit=200)]


def cycle(service: Service, call: Call) -> Reply:
    """One cycle with its net positions and pairwise obligations. The path's id is read here,
    not by the router: a number too long for ``int()`` (4 300 digits) is a 404, not a 500."""
    text = str(call.path["cycle_id"])
    if not (text.isascii() and text.isdigit()):
        return error(404, "not_found", f"GET /api/cycles/{text[:20]}: not found")
    if len(text) > 19:  # past any cycle id (64-bit)
        return error(404, "unknown_cycle", f"no cycle {text[:20]}…")
    core, cycle_id = service.core, int(text)
    return 200, {
        "cycle": core.cycle(cycle_id).to_dict(),
        "positions": [p.to_dict() for p in core.cycle_positions(cycle_id)],
        "pairs": [p.to_dict() for p in core.cycle_pairs(cycle_id)],
    }


def guarantees(service: Service, call: Call) -> Reply:
    raw = call.query.get("address")
    try:
        address = parse_address(raw) if raw else None
    except ValueError as exc:
        raise bad_request(f"address: {exc}") from None
    before = call.query.get("before") or None
    limit = integer(call.query.get("limit") or 200, "limit")
    if not 1 <= limit <= 200:
        raise bad_request("limit: from 1 to 200")
    rows = service.core.guarantees(address=address, limit=limit, before=before)
    return 200, [g.to_dict() for g in rows]


def events(service: Service, call: Call) -> Reply:
    after = integer(call.query.get("after") or 0, "after")
    return 200, [e.to_dict() for e in service.core.events(after=after, limit=500)]
