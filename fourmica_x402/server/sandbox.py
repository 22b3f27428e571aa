"""``/sandbox/*``: move collateral and cycles by hand on a development service
(``fourmica-x402 serve --sandbox``): deposits, withdrawals, cycle closing, debit payments,
credit claims, ticks and suspensions. On a service started without ``--sandbox`` every one
answers 403, so none can credit collateral on a real deployment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fourmica_x402.networks import default_asset, find_asset, parse_amount, to_atomic

from .base import Call, Reply, bad_request, error, integer, refusal, required

if TYPE_CHECKING:
    from .context import Service

__all__ = ["claim", "close_cycle", "deposit", "pay_debit", "suspend", "tick", "withdraw"]

Action = Callable[["Service", dict[str, Any]], Any]
Handler = Callable[["Service", Call], Reply]


def _amount(value: Any, network: str, asset: str | None) -> int:
    """Atomic units, or ``"$1.50"`` in the asset's (or the network's default asset's) token."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().startswith("$"):
        token = find_asset(network, asset) if asset else default_asset(network)
        if token is None:
            raise ValueError("unknown asset: give the amount in atomic units")
        return to_atomic(value, token)
    return parse_amount(value)


def _sandboxed(action: Action) -> Handler:
    """The handler of a sandbox action: sandbox on, operator key, a JSON object body; a value
    the action cannot use answers 400 ``invalid_request`` (docs/protocol.md, "Reason codes")."""

    def handler(service: Service, call: Call) -> Reply:
        if not service.sandbox:
            return refusal(
                403, "sandbox API is disabled (start with --sandbox)", "sandbox_disabled"
            )
        if not service.keys.authorized(call):
            return refusal(401, "unauthorized", "unauthorized")
        if not isinstance(call.body, dict):
            return refusal(400, "body must be a JSON object", "invalid_request")
        try:
            return 200, action(service, call.body)
        except (ValueError, TypeError) as exc:
            return error(400, "invalid_request", str(exc))

    handler.__name__ = handler.__qualname__ = action.__name__
    handler.__doc__ = action.__doc__
    return handler


@_sandboxed
def deposit(service: Service, body: dict[str, Any]) -> Any:
    net = str(body.get("network") or service.network)
    return service.core.deposit(
        str(required(body, "address")),
        _amount(required(body, "amount"), net, body.get("asset")),
        network=net,
        asset=body.get("asset"),
    ).to_dict()


@_sandboxed
def withdraw(service: Service, body: dict[str, Any]) -> Any:
    """Request a withdrawal, or ``{"finalize": id}`` / ``{"cancel": id}`` one."""
    core = service.core
    net = str(body.get("network") or service.network)
    if "finalize" in body and "cancel" in body:
        raise bad_request("finalize or cancel, not both")
    if "finalize" in body:  # present: that action or a 400, never a new withdrawal
        return core.finalize_withdrawal(integer(body["finalize"], "finalize")).to_dict()
    if "cancel" in body:
        return core.cancel_withdrawal(integer(body["cancel"], "cancel")).to_dict()
    return core.request_withdrawal(
        str(required(body, "address")),
        _amount(required(body, "amount"), net, body.get("asset")),
        network=net,
        asset=body.get("asset"),
    ).to_dict()


@_sandboxed
def close_cycle(service: Service, body: dict[str, Any]) -> Any:
    network = str(body.get("network") or service.network)
    return service.core.close_cycle(network=network, asset=body.get("asset")).to_dict()


@_sandboxed
def pay_debit(service: Service, body: dict[str, Any]) -> Any:
    cycle_id = integer(required(body, "cycle_id"), "cycle_id")
    amount = body.get("amount")
    if amount is not None:  # as the other calls take it: atomic units or "$1.50" in its token
        cycle = service.core.cycle(cycle_id)
        amount = _amount(amount, cycle.network, cycle.asset)
    return service.core.pay_net_debit(cycle_id, str(required(body, "address")), amount).to_dict()


@_sandboxed
def claim(service: Service, body: dict[str, Any]) -> Any:
    cycle_id = integer(required(body, "cycle_id"), "cycle_id")
    return {"claimed": service.core.claim_net_credit(cycle_id, str(required(body, "address")))}


@_sandboxed
def tick(service: Service, body: dict[str, Any]) -> Any:
    return service.core.tick()


@_sandboxed
def suspend(service: Service, body: dict[str, Any]) -> Any:
    address, suspended = str(required(body, "address")), body.get("suspended", True)
    if not isinstance(suspended, bool):  # "false" is truthy: never guess what was meant
        raise bad_request("suspended must be true or false")
    service.core.suspend(address, suspended)
    return {"address": address, "suspended": suspended}
