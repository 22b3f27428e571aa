"""The gate's own endpoints: the tab endpoint, and the Core API subset (embedded Core).

The tab endpoint (``tabEndpoint`` in every challenge; docs/protocol.md, "Endpoints";
docs/operations.md, "The tab endpoint") opens a tab for a buyer, only towards a route's
``payTo`` and within the limits on new tabs. Under the prefix, the embedded Core's public
parameters, its JSON-RPC subset (``rpcUrl``) and its guarantee read (with the certificate) are
mounted; nothing that accepts a guarantee. ``<prefix>/metrics`` serves the monitoring signals to
whoever holds the seller's metrics token (docs/operations.md, "Monitoring signals").
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING

from .. import coreapi
from .._json import loads
from ..errors import Unavailable
from ..networks import chain_named, get_network
from .challenge import origin
from .types import BodyTooLarge, Call, Flow, RequestView, Response, error_response

if TYPE_CHECKING:
    from .flow import Gate


def tab(gate: Gate, request: RequestView) -> Flow:
    if request.method.upper() != "POST":
        return error_response(405, "method_not_allowed", "use POST", [("allow", "POST")])
    body = yield from json_body(request)
    # Only a route's payTo (static, or one a payTo callable chose for a challenge we
    # served); new tabs limited per client, buyer and seller, reuses never
    # (docs/operations.md, "The tab endpoint"). Runs off the event loop: it writes the Core.
    status, data, headers = yield Call(gate._tabs.handle, (gate.facilitator, request.client, body))
    return Response.json(status, data, [("cache-control", "no-store"), *headers])


def core_api(gate: Gate, request: RequestView) -> Flow:
    core = gate.core
    assert core is not None
    sub = request.path[len(gate._prefix) :] or "/"
    method = request.method.upper()
    chain_id = get_network(gate.config.network).chain_id
    root = gate._prefix
    # A route priced on another network names its chain's API (its offers' rpcUrl,
    # docs/protocol.md, "Endpoints"): a buyer signs for the chain its rpcUrl's Core names.
    match sub.split("/", 3):
        case ["", "chains", chain, *rest]:
            named = chain_named(chain)
            if named is None:
                return error_response(404, "unknown_network", f"no network with chain id {chain}")
            chain_id, root, sub = named, f"{root}/chains/{named}", "/" + "".join(rest)
    base = origin(gate, request)
    if sub == "/core/public-params" and method in ("GET", "HEAD"):
        params = coreapi.public_params(core, chain_id, f"{base}{root}/rpc")
        return Response.json(200, params)
    if sub == "/rpc" and method == "POST":
        body = yield from json_body(request)
        status, data = coreapi.json_rpc(core, chain_id, body)
        return Response.json(status, data)
    if sub == "/metrics" and method in ("GET", "HEAD"):
        return (yield from metrics(gate, request))
    ids = _guarantee_ids(sub)
    if ids is not None and method in ("GET", "HEAD"):
        # A buyer fetching the certificate of what it paid (docs/buyer.md, "Certificates"):
        # the Core signs it on the first read, so it runs off the event loop.
        status, data = yield Call(coreapi.core_guarantee, (core, chain_id, *ids))
        return Response.json(status, data, [("cache-control", "no-store")])
    # The Core's own tab and issue calls (/core/payment-tabs, /core/guarantees) are not
    # mounted on a seller's public app: unauthenticated, anyone holding a buyer's payment
    # header could settle it there first and the buyer would pay for a request that the
    # gate then refuses as a replay. `fourmica-x402 serve --api-key` serves them.
    return error_response(404, "not_found", f"no such path under {gate._prefix}")


#: Where a seller's metrics token comes from when ``PaymentConfig`` names none.
METRICS_TOKEN_ENV = "FOURMICA_X402_METRICS_TOKEN"


def metrics(gate: Gate, request: RequestView) -> Flow:
    """``GET <prefix>/metrics``: the signals computed from the embedded Core's database (the
    same on every process), and this process's refusals when ``on_failure`` is a
    :class:`~fourmica_x402.signals.RefusalCounter`. They reveal business data: served only with
    ``Authorization: Bearer <token>`` (``metrics_token``, else :data:`METRICS_TOKEN_ENV`);
    without a token configured the path does not exist (404)."""
    refused = bearer(request, gate.config.metrics_token or os.environ.get(METRICS_TOKEN_ENV))
    if refused is not None:
        return refused
    try:
        from .. import signals
    except ImportError:  # prometheus_client: the server extra
        message = 'metrics need prometheus-client: pip install "fourmica-x402[server]"'
        return Response.json(501, {"error": "metrics_unavailable", "message": message})
    hook, extra = gate.config.on_failure, list[signals.RefusalCounter]()
    while hook is not None and not extra:  # the alert hook chains the seller's after it
        extra = [hook] if isinstance(hook, signals.RefusalCounter) else []
        hook = getattr(hook, "then", None)
    try:
        body = yield Call(signals.exposition, (gate.core, extra))  # database reads: off the loop
    except Unavailable as exc:  # the database is down: say so, as every gate answer does
        return error_response(503, exc.reason, exc.message)
    headers = [("content-type", signals.MEDIA_TYPE), ("cache-control", "no-store")]
    return Response(200, headers, body)


def bearer(request: RequestView, token: str | None, realm: str = "metrics") -> Response | None:
    """None when the request holds ``Authorization: Bearer <token>``; else the answer: 404
    without a token configured (the path does not exist), 401 otherwise."""
    if not token:
        return error_response(404, "not_found", "not found")
    header = request.header("authorization") or ""
    given = header[7:] if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        challenge = [("www-authenticate", f'Bearer realm="{realm}"')]
        return error_response(401, "unauthorized", "a valid bearer token is required", challenge)
    return None


def _guarantee_ids(sub: str) -> tuple[str, str] | None:
    """``(tab_id, req_id)`` of ``/core/tabs/{tab_id}/guarantees/{req_id}``, else None."""
    match sub.split("/"):
        case ["", "core", "tabs", tab_id, "guarantees", req_id] if tab_id and req_id:
            return tab_id, req_id
    return None


def json_body(request: RequestView) -> Flow:
    if request.read_body is None:
        return None
    try:
        raw = yield Call(request.read_body, (), blocking=False)
    except BodyTooLarge:
        return None
    if not raw or len(raw) > 64 * 1024:
        return None
    try:
        return loads(raw)
    except ValueError:
        return None
