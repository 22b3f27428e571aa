"""The Core API subset and its sandbox JSON-RPC (docs/protocol.md, "Endpoints"):
``GET /core/public-params``, ``POST /core/payment-tabs``, ``POST /core/guarantees``,
``GET /core/tabs/{tab_id}/guarantees/{req_id}``, ``POST /rpc`` — so buyers built on the
official SDK can read signing parameters, open tabs and settle from this Core, and any buyer can
fetch the certificate of what it paid. The bodies are :mod:`fourmica_x402.coreapi`'s, shared
with the seller gate's embedded mode.

They answer for the service's network; the same API for another network is under
``/chains/{chain_id}/`` (as a seller gate serves it), which a seller on a remote facilitator
names as the ``rpcUrl`` of an offer on that network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fourmica_x402 import coreapi
from fourmica_x402.errors import CoreError, TabLimited
from fourmica_x402.networks import chain_named

from .base import Call, Reply, Result, tab_limited

if TYPE_CHECKING:
    from fourmica_x402.tabs import Admission

    from .context import Service

__all__ = ["chain_of", "guarantee", "guarantees", "payment_tabs", "public_params", "rpc"]


def chain_of(service: Service, call: Call) -> tuple[int, str]:
    """The chain id the call's path names (the service's own without ``/chains/{chain_id}``)
    and the root of that chain's API; a chain no registered network has is 404
    ``unknown_network``."""
    text = call.path.get("chain_id")
    if text is None:
        return service.chain_id, ""
    chain_id = chain_named(str(text))
    if chain_id is None:
        raise CoreError(
            f"no network with chain id {text!s:.30}", reason="unknown_network", status=404
        )
    return chain_id, f"/chains/{chain_id}"


def public_params(service: Service, call: Call) -> Reply:
    chain_id, root = chain_of(service, call)
    return 200, coreapi.public_params(service.core, chain_id, f"{service.origin(call)}{root}/rpc")


def rpc(service: Service, call: Call) -> Reply:
    return coreapi.json_rpc(service.core, chain_of(service, call)[0], call.body)


def payment_tabs(service: Service, call: Call) -> Result:
    keyed = service.keys.acts_for(call)
    claims: list[Admission] = []  # the call's claim on the budgets of new tabs

    def admit(user: str) -> Admission:
        claims.append(service.new_tabs.admit(user, call.client, keyed))
        return claims[-1]

    opened = False
    try:
        status, body = coreapi.core_payment_tabs(
            service.core, chain_of(service, call)[0], call.body, admit
        )
        opened = status == 200 and body["next_req_id"] == "0x0"  # a new tab, not a reuse
        return status, body
    except TabLimited as exc:
        return tab_limited(exc)
    finally:
        for claim in claims:
            claim.end(opened)


def guarantees(service: Service, call: Call) -> Reply:
    # Settling a buyer's signed guarantee outside a seller's gate must be the seller's act.
    if (refused := service.keys.seller_call(call, "guarantees at /core/guarantees")) is not None:
        return refused
    only = service.keys.acts_for(call) or None  # a seller key settles its own guarantees only
    chain_id = chain_of(service, call)[0]
    return coreapi.core_guarantees(service.core, chain_id, call.body, recipient=only)


def guarantee(service: Service, call: Call) -> Reply:
    """One guarantee with its certificate (read-only; see :func:`coreapi.core_guarantee`)."""
    tab_id, req_id = str(call.path["tab_id"]), str(call.path["req_id"])
    return coreapi.core_guarantee(service.core, chain_of(service, call)[0], tab_id, req_id)
