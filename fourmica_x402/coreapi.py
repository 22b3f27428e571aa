"""The Core's HTTP API subset (docs/protocol.md, "Endpoints") as framework-neutral handlers.

Each handler takes parsed JSON (or nothing) and returns ``(status, json)``.
The seller gate mounts them under its prefix in embedded mode, and the
``fourmica-x402 serve`` service mounts them on its own app, so buyers built
on the official SDK can read signing parameters and open tabs from our Core.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

from ._eth import ZERO_ADDRESS, parse_address
from .core import Core
from .errors import FourmicaError, GuaranteeRejected, MalformedPayment, TabLimited, Unavailable
from .guarantee import (
    GUARANTEE_DOMAIN_SELECTOR,
    GuaranteeClaims,
    SignedGuarantee,
    ValidationPolicy,
    guarantee_id,
)
from .networks import find_asset, get_network, networks, parse_amount

__all__ = [
    "JsonResult",
    "MAX_TAB_TTL",
    "core_guarantee",
    "core_guarantees",
    "core_payment_tabs",
    "json_rpc",
    "public_params",
    "requested_ttl",
    "requested_version",
    "tab_endpoint",
]

JsonResult = tuple[int, Any]
_GET_VERSION_CONFIG = "0x563550ae"

#: Longest tab a caller may ask for (30 days): a tab window bounds how long its claims stay valid.
MAX_TAB_TTL = 30 * 86_400


def requested_ttl(value: Any, name: str, *, lenient: bool = False) -> int | None:
    """A tab lifetime a caller asks for: None (the Core's default) or whole seconds
    1..:data:`MAX_TAB_TTL`; ``lenient`` (the Core API, as it always read it): also 0 for the
    default, and decimal strings. Anything else (1.5, -1, 10**9) raises ValueError."""
    if lenient and isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value[:20])
    if value is None or (lenient and value == 0 and type(value) is int):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_TAB_TTL:
        raise ValueError(f"{name} must be 1..{MAX_TAB_TTL}")
    return value


def requested_version(value: Any, name: str) -> int:
    """A guarantee version a caller asks for: an integer or a decimal string (None: 1); the
    Core refuses the ones it does not accept. Anything else (1.5, Infinity) raises ValueError."""
    if value is None:
        return 1
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def _error(status: int, message: str, reason: str | None = None) -> JsonResult:
    body: dict[str, Any] = {"error": message}
    if reason:
        body["reason"] = reason
    return status, body


def public_params(core: Core, chain_id: int, rpc_url: str) -> dict[str, Any]:
    """``GET /core/public-params`` (snake_case, as the official SDK parses it)."""
    domain = core.domain(chain_id)
    return {
        "public_key": list(core.operator.public_key),
        "contract_address": core.config.contract_address,
        "ethereum_http_rpc_url": rpc_url,
        "eip712_name": domain.name,
        "eip712_version": domain.version,
        "chain_id": chain_id,
        "max_accepted_guarantee_version": max(core.config.accepted_versions),
        "accepted_guarantee_versions": list(core.config.accepted_versions),
        "active_guarantee_domain_separator": "0x" + core.guarantee_domain(chain_id).hex(),
        "trusted_validation_registries": list(core.config.trusted_registries),
        "validation_hash_canonicalization_version": "4MICA_VALIDATION_REQUEST_V2",
    }


def _network_of(chain_id: int) -> str:
    for network in networks():
        if network.chain_id == chain_id:
            return network.caip2
    raise ValueError(f"chain {chain_id} is not a registered network")


def json_rpc(core: Core, chain_id: int, request: Any) -> JsonResult:
    """The sandbox Ethereum JSON-RPC: ``eth_chainId`` and the Core contract's view calls."""
    if isinstance(request, list) and request:  # a batch: of requests, never of batches
        return 200, [_rpc_call(core, chain_id, item) for item in request[:50]]
    return 200, _rpc_call(core, chain_id, request)


def _rpc_call(core: Core, chain_id: int, request: Any) -> dict[str, Any]:
    """One JSON-RPC call's answer; whatever the input, a JSON-RPC error rather than a 500."""
    if not isinstance(request, dict):
        return {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": "invalid request"},
        }
    rid, method, params = request.get("id"), request.get("method"), request.get("params") or []

    def ok(result: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    def fail(code: int, message: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}

    if not isinstance(params, list):
        return fail(-32602, "invalid params: an array is expected")

    if method == "eth_chainId":
        return ok(hex(chain_id))
    if method == "net_version":
        return ok(str(chain_id))
    if method == "eth_blockNumber":
        return ok("0x1")
    if method == "eth_call":
        call = params[0] if params and isinstance(params[0], dict) else {}
        data = str(call.get("data") or call.get("input") or "").lower()
        to = str(call.get("to") or "").lower()
        if to != core.config.contract_address.lower():
            return ok("0x")
        if data == GUARANTEE_DOMAIN_SELECTOR:
            return ok("0x" + core.guarantee_domain(chain_id).hex())
        if data.startswith(_GET_VERSION_CONFIG) and len(data) == 10 + 64:
            try:
                version = int(data[10:], 16)
            except ValueError:
                return fail(-32602, "invalid params: data is not hex")
            enabled = version in core.config.accepted_versions
            # (G1Point{x_a,x_b,y_a,y_b}, bytes32 domain, address decoder, bool enabled)
            words = [bytes(32)] * 4 + [
                core.guarantee_domain(chain_id) if enabled else bytes(32),
                bytes(32),
                (1 if enabled else 0).to_bytes(32, "big"),
            ]
            return ok("0x" + b"".join(words).hex())
        return fail(-32000, "execution reverted: unknown selector")
    return fail(-32601, f"method {method!r} is not available on the sandbox node")


def tab_endpoint(
    core_open_tab: Any,
    body: Any,
    *,
    allowed_pay_to: Container[str] | None,
    tab_ttl: int | None = None,
) -> JsonResult:
    """``POST <tabEndpoint>``: open (or reuse) the buyer's tab for these requirements.

    ``core_open_tab`` is a facilitator's ``open_tab`` (or a guard around it). The tab's
    guarantee version is 2 when the requirements carry a validation policy, else 1.
    A :class:`TabLimited` it raises (a new tab refused by the seller's limits) is not
    answered here: it propagates, for the caller to answer 429 with its Retry-After.
    """
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object", "invalid_request")
    raw_user = body.get("userAddress")
    try:
        user = parse_address(raw_user)
    except ValueError as exc:
        return _error(
            400,
            f"userAddress must be a 0x-prefixed 20-byte hex address ({exc})",
            "invalid_user_address",
        )
    if int(user, 16) == 0:
        return _error(400, "userAddress must not be the zero address", "invalid_user_address")
    requirements = body.get("paymentRequirements")
    if not isinstance(requirements, dict):
        return _error(400, "paymentRequirements is required", "invalid_request")
    try:
        pay_to = parse_address(requirements.get("payTo", requirements.get("pay_to")))
        network = str(requirements.get("network"))
        chain_id = get_network(network).chain_id
        asset = parse_address(requirements.get("asset"))
        extra = requirements.get("extra") or {}
        if not isinstance(extra, dict):
            raise ValueError("extra must be an object")
        # Only picks the tab's guarantee version; the buyer echoes the seller's requirements,
        # whose numbers may be canonical strings when the seller is on the official stack.
        policy = ValidationPolicy.from_extra(extra, chain_id, lenient=True)
    except (ValueError, FourmicaError) as exc:
        message = f"invalid tab request: {getattr(exc, 'message', exc)}"
        return _error(400, message, "invalid_request")
    if allowed_pay_to is not None and pay_to not in allowed_pay_to:
        return _error(404, "this seller does not receive payments at that payTo", "unknown_pay_to")
    if find_asset(network, asset) is None:
        return _error(400, f"asset {asset} is not supported on {network}", "unsupported_asset")
    try:
        tab = core_open_tab(
            user=user,
            recipient=pay_to,
            network=network,
            asset=asset,
            guarantee_version=2 if policy else 1,
            ttl_seconds=tab_ttl,
        )
    except TabLimited:
        raise
    except GuaranteeRejected as exc:
        return _error(400, exc.message, exc.reason)
    except FourmicaError as exc:
        return _error(503, f"could not open a tab: {exc.public()}", exc.reason)
    return 200, tab.to_json()


def core_payment_tabs(
    core: Core,
    chain_id: int,
    body: Any,
    admit: Callable[[str], Callable[[], None]] | None = None,
) -> JsonResult:
    """``POST /core/payment-tabs`` (the Core's own tab call, snake_case). ``admit(user)``:
    the limits on new tabs for that buyer; the :class:`TabLimited` they raise is the
    caller's to answer (429, with its ``Retry-After``)."""
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object", "invalid_request")
    try:
        network = _network_of(chain_id)
        user = parse_address(body.get("user_address"))
        tab = core.open_tab(
            user,
            parse_address(body.get("recipient_address")),
            network=network,
            # null is the native asset to the official SDK (which no network here carries);
            # absent, the network's default asset
            asset=ZERO_ADDRESS
            if body.get("erc20_token", "") is None
            else body.get("erc20_token") or None,
            guarantee_version=requested_version(
                body.get("guarantee_version") or None, "guarantee_version"
            ),
            ttl_seconds=requested_ttl(body.get("ttl"), "ttl", lenient=True),
            admit_new=None if admit is None else admit(user),
        )
    except TabLimited:
        raise
    except (ValueError, TypeError) as exc:
        return _error(400, str(exc), "invalid_request")
    except FourmicaError as exc:
        status = 400 if isinstance(exc, GuaranteeRejected) else exc.status  # as /tabs: no 402
        return _error(status if status < 500 else 503, exc.public(), exc.reason)
    return 200, {
        "id": hex(tab.tab_id),
        "tab_id": hex(tab.tab_id),
        "user_address": tab.user_address,
        "recipient_address": tab.recipient_address,
        "erc20_token": tab.asset_address,
        "start_timestamp": tab.start_timestamp,
        "ttl_seconds": tab.ttl_seconds,
        "next_req_id": hex(tab.next_req_id),
    }


def core_guarantees(
    core: Core, chain_id: int, body: Any, *, recipient: str | None = None
) -> JsonResult:
    """``POST /core/guarantees``: accept a buyer-signed guarantee, answer with the certificate.

    ``recipient``: the caller acts for this seller only (a seller key): a guarantee to
    anyone else is refused (settling it first would make its seller refuse the buyer).
    """
    from .core.models import Expected

    try:
        signed = SignedGuarantee.from_json(body)
        claims: GuaranteeClaims = signed.claims
        if recipient is not None and claims.recipient_address != recipient:
            return _error(403, f"this key acts for {recipient} only", "key_not_for_address")
        expected = Expected(
            network=_network_of(chain_id),
            pay_to=claims.recipient_address,
            asset=claims.asset_address,
            amount=parse_amount(claims.amount),
            policy=claims.policy,
        )
        accepted = core.accept(signed, expected)
    except MalformedPayment as exc:
        return _error(400, exc.message, exc.reason)
    except GuaranteeRejected as exc:
        return _error(400, exc.message, exc.reason)
    except ValueError as exc:
        return _error(400, str(exc), "invalid_request")
    try:
        return 200, core.certify(accepted.guarantee_id).to_json()
    except Unavailable:
        # The acceptance is committed: the answer must say so, or the seller would not deliver
        # and the buyer would pay for nothing (docs/protocol.md, "Endpoints"). Its certificate
        # is the same one, filed on demand later.
        network = accepted.network
        return 200, core.certify_accepted(signed, network, accepted.total_amount).to_json()


def core_guarantee(core: Core, chain_id: int, tab_id: str, req_id: str) -> JsonResult:
    """``GET /core/tabs/{tab_id}/guarantees/{req_id}``: one accepted guarantee with the Core's
    certificate (made now if it was not yet: once, then stored), in the Core API's snake_case
    shape; ids and amounts ``0x`` hex, ``certificate`` ``{"claims", "signature"}``. Lets a
    buyer whose seller did not pass the certificate on fetch it (docs/buyer.md)."""
    if req_id == "latest":  # the official API's "a tab's latest guarantee": not served here
        return _error(404, "ask for a guarantee by its request id", "not_found")
    try:
        tab, req = parse_amount(tab_id), parse_amount(req_id)
    except ValueError:
        return _error(400, "tab_id and req_id are 0x-hex or decimal integers", "invalid_request")
    gid = "0x" + guarantee_id(chain_id, tab, req).hex()
    try:
        record = core.guarantee(gid)
        certificate = core.certify(gid).to_json()
    except FourmicaError as exc:
        return _error(404 if exc.reason == "unknown_guarantee" else 409, exc.message, exc.reason)
    return 200, {
        "tab_id": hex(record.tab_id),
        "req_id": hex(record.req_id),
        "from_address": record.user_address,
        "to_address": record.recipient_address,
        "asset_address": record.asset,
        "amount": hex(record.amount),
        "start_timestamp": record.timestamp,
        "guarantee_id": gid,
        "certificate": certificate,
    }
