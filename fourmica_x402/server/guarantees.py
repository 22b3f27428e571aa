"""What a seller's gate asks of a remote Core after a paid request (docs/architecture.md,
"The Core's transactions"): ``POST /guarantees/{gid}/void`` (a refund) and
``POST /guarantees/{gid}/validation`` (the delivery policy's score).

Both move money, so both need a key (:meth:`Keys.seller_call`), and a seller key may only
act as its own address (:meth:`Keys.not_yours`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fourmica_x402._eth import parse_address

from .base import Call, Reply, bad_request

if TYPE_CHECKING:
    from .context import Service

__all__ = ["validation", "void"]


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
    return 200, service.core.void(call.path["gid"], by=by).to_dict()


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
        call.path["gid"],
        validator=validator,
        score=score if isinstance(score, int) else -1,
        tag=tag or "",
    )
    return 200, record.to_dict()
