"""What a seller's gate asks of a remote Core after a paid request (docs/architecture.md,
"The Core's transactions"): ``POST /guarantees/{gid}/void`` (a refund) and
``POST /guarantees/{gid}/validation`` (the delivery policy's score).

Both move money, so both need a key (:meth:`Keys.seller_call`), and a seller key may only
act as its own address (:meth:`Keys.not_yours`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fourmica_x402._eth import parse_address

from .base import Call, Reply, bad_request

if TYPE_CHECKING:
    from .context import Service

__all__ = ["validation", "void"]

_GUARANTEE_ID = re.compile(r"0[xX][0-9a-fA-F]{64}\Z")


def _guarantee_id(call: Call) -> str:
    """The path's guarantee id as the Core stores it (lowercase hex): a seller that spells it
    in capitals still refunds and scores its own payment. Anything else names no guarantee: the
    Core answers ``unknown_guarantee`` without looking it up."""
    gid = str(call.path["gid"])
    return "0x" + gid[2:].lower() if _GUARANTEE_ID.match(gid) else gid


def _fields(call: Call) -> dict[str, Any]:
    """The body's fields ({} without a body); a body that is not a JSON object is refused."""
    if call.body is None:
        return {}
    if not isinstance(call.body, dict):
        raise bad_request("body must be a JSON object")
    return call.body


def void(service: Service, call: Call) -> Reply:
    if (refused := service.keys.seller_call(call)) is not None:
        return refused
    body = _fields(call)
    try:
        by = parse_address(body.get("by"))
    except ValueError as exc:
        raise bad_request(f"by: {exc}") from None
    if (refused := service.keys.not_yours(call, by)) is not None:
        return refused
    return 200, service.core.void(_guarantee_id(call), by=by).to_dict()


def validation(service: Service, call: Call) -> Reply:
    if (refused := service.keys.seller_call(call)) is not None:
        return refused
    body = _fields(call)
    score = body.get("score")
    try:
        validator = parse_address(body.get("validator"))
    except ValueError as exc:
        raise bad_request(f"validator: {exc}") from None
    if (refused := service.keys.not_yours(call, validator)) is not None:
        return refused
    tag = body.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise bad_request("tag must be a string")
    record = service.core.post_validation(
        _guarantee_id(call),
        validator=validator,
        score=score if isinstance(score, int) else -1,
        tag=tag or "",
    )
    return 200, record.to_dict()
