"""The Core API subset and its sandbox JSON-RPC (docs/protocol.md, "Endpoints"):
``GET /core/public-params``, ``POST /core/payment-tabs``, ``POST /core/guarantees``,
``GET /core/tabs/{tab_id}/guarantees/{req_id}``, ``POST /rpc`` — so buyers built on the
official SDK can read signing parameters, open tabs and settle from this Core, and any buyer can
fetch the certificate of what it paid. The bodies are :mod:`fourmica_x402.coreapi`'s, shared
with the seller gate's embedded mode.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from fourmica_x402 import coreapi
from fourmica_x402.errors import TabLimited

from .base import Call, Reply, Result, tab_limited

if TYPE_CHECKING:
    from .context import Service

__all__ = ["guarantee", "guarantees", "payment_tabs", "public_params", "rpc"]


def public_params(service: Service, call: Call) -> Reply:
    return 200, coreapi.public_params(service.core, service.chain_id, service.origin(call) + "/rpc")


def rpc(service: Service, call: Call) -> Reply:
    return coreapi.json_rpc(service.core, service.chain_id, call.body)


def payment_tabs(service: Service, call: Call) -> Result:
    keyed = service.keys.acts_for(call)
    admit = partial(service.new_tabs.admit, client=call.client, keyed=keyed)
    try:
        return coreapi.core_payment_tabs(service.core, service.chain_id, call.body, admit)
    except TabLimited as exc:
        return tab_limited(exc)


def guarantees(service: Service, call: Call) -> Reply:
    # Settling a buyer's signed guarantee outside a seller's gate must be the seller's act.
    if (refused := service.keys.seller_call(call)) is not None:
        return refused
    only = service.keys.acts_for(call) or None  # a seller key settles its own guarantees only
    return coreapi.core_guarantees(service.core, service.chain_id, call.body, recipient=only)


def guarantee(service: Service, call: Call) -> Reply:
    """One guarantee with its certificate (read-only; see :func:`coreapi.core_guarantee`)."""
    return coreapi.core_guarantee(
        service.core, service.chain_id, str(call.path["tab_id"]), str(call.path["req_id"])
    )
