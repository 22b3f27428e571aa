"""What a priced route asks for, and the 402 that says so.

The payment requirements of a route for one request (price, ``payTo``, the tab endpoint, the
Core API URL), the validation policy they carry (the seller's, or the default delivery policy:
docs/protocol.md, "Delivery"), their v1 and v2 views, and the 402 challenge — JSON, or an HTML
paywall for a browser (docs/protocol.md, "Envelope" and "Reason codes"). The discovery listing
(:mod:`.discovery`) advertises the same requirements.
"""

from __future__ import annotations

import html
import inspect
import logging
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..errors import FourmicaError, Reason
from ..facilitator import SettleResult
from ..guarantee import ValidationPolicy
from ..networks import find_asset, get_network
from ..routes import Offer, Route, RouteConfig
from ..wire import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
    PaymentRequired,
    PaymentRequiredV1,
    PaymentRequirements,
    ResourceInfo,
    SettleResponse,
    encode_header,
)
from . import bundles, stages
from .types import (
    EXPOSE_HEADERS,
    Call,
    Flow,
    RequestFault,
    RequestView,
    Response,
    body_refused,
)

if TYPE_CHECKING:
    from .flow import Gate

log = logging.getLogger("fourmica_x402.gate")
#: Remote facilitators already warned about (once each).
_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()

#: The validation tag of the default delivery policy: the seller scores its own delivery.
DELIVERY_TAG = "delivery"


def origin(gate: Gate, request: RequestView) -> str:
    """The app's URL as buyers reach it: its origin, then where it is mounted."""
    return (gate.config.public_url or f"{request.scheme}://{request.host}") + request.root


def requirements(gate: Gate, route: Route, request: RequestView) -> Flow:
    """The route's payment requirements for this request (never mutated by callers).

    Static offers (a fixed price and payTo) give the same requirements for every
    request from the same origin: they are built once and reused; a bundle's, once per
    origin and number of units (:mod:`.bundles`: a bad count raises ``InvalidUnits``). A
    callable that asked for a body longer than the gate reads: ``BodyTooLarge``.
    """
    base = origin(gate, request)
    cached = route.cache.get(base)
    if cached is not None:
        return cached
    key: Any = base
    n = None
    if route.config.units is not None:
        n = yield from bundles.count(route, request)
        key = (base, n)
        cached = route.cache.get(key)
        if cached is not None:
            return cached
    built = []
    for i, offer in enumerate(route.offers):
        amount, asset = (offer.amount.amount, offer.amount.asset) if offer.amount else (None, None)
        if amount is None:
            from ..networks import resolve_price

            price = yield from _read(offer.price, request)
            token = resolve_price(price, offer.network, offer.asset)
            amount, asset = token.amount, token.asset
        pay_to = offer.pay_to
        if callable(pay_to):
            from .._eth import parse_payee

            pay_to = parse_payee((yield from _read(pay_to, request)))
            gate._tabs.advertised(pay_to)  # the tab endpoint opens tabs for it
        more = None
        if route.terms is not None:
            terms = route.terms[i]
            amount = bundles.charged(terms, amount, str(asset), n)
            more = bundles.extra(route.config, terms, n)
        if route.config.stage is not None:  # staged work: which stage, what comes after
            more = {**(more or {}), "stage": stages.extra(gate, route, offer.network, str(asset))}
        if (sliced := route.config.slices) is not None:  # a metered stream: the price per slice
            more = {**(more or {}), "slices": sliced.extra()}
        built.append(offer_requirements(gate, route, offer, base, amount, str(asset), pay_to, more))
    if refused := body_refused(request.read_body):  # a callable that caught BodyTooLarge
        raise refused  # priced from an empty or cut body: never (docs/protocol.md)
    if _fixed(route):
        if len(route.cache) >= 64:  # the origin comes from the Host header: bounded
            route.cache.clear()
        route.cache[key] = built
    return built


class UnpriceableRequest(RequestFault):
    """A price or payTo callable could not read the request: answered 400, nothing charged."""

    reason: str = Reason.UNPRICEABLE_REQUEST


def _read(fn: Any, request: RequestView) -> Flow:
    """What a price or payTo callable says of ``request``. ``ValueError``, ``TypeError`` or
    ``KeyError`` (a field the request lacks or spells wrongly, a body that is not JSON) are
    the request's fault, as a ``units`` callable's are (docs/protocol.md); anything else it
    raises is the seller's (500 ``pricing_failed``). What it answers is checked by the caller:
    a value no price or address can be made of is the seller's too."""
    try:
        return (yield Call(fn, (request,), blocking=False))
    except Exception as exc:
        if refused := body_refused(request.read_body):  # it caught BodyTooLarge, then failed:
            raise refused from None  # whatever it raised, the body's refusal (4xx) wins
        if not isinstance(exc, (ValueError, TypeError, KeyError)):
            raise
        if isinstance(exc, FourmicaError) or not _takes_request(fn):  # ours; or the seller's
            raise  # bug, a signature that takes no request: 500, logged as an error
        log.info("a price or payTo callable could not read the request: %.200r", exc)
        raise UnpriceableRequest("this request could not be priced: check its fields") from None


def _takes_request(fn: Any) -> bool:
    """Whether ``fn`` can be called with the request alone (a TypeError it raised is then its
    reading of the request, not its signature)."""
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): its TypeError is taken as said
        pass
    return True


def is_static(route: Route) -> bool:
    """Every offer of the route has a fixed price and payTo: no request is needed to price it."""
    return route.config.units is None and _fixed(route)


def _fixed(route: Route) -> bool:
    """Every offer's price (a bundle's: one unit's) and payTo are fixed."""
    return all(offer.amount is not None and not callable(offer.pay_to) for offer in route.offers)


def rpc_url(gate: Gate, network: str, base: str) -> str | None:
    """The Core API an offer on ``network`` names (``rpcUrl``; docs/protocol.md, "Endpoints"):
    the embedded Core's under the gate's prefix, ``/chains/<chain id>`` under it for another
    network than the gate's; a remote facilitator's ``rpc_url`` as given, or the service's API
    for that chain (``rpc_chains``), whatever the service's own network."""
    chains = f"/chains/{get_network(network).chain_id}"
    if gate.core:
        return f"{base}{gate._prefix}{'' if network == gate.config.network else chains}"
    root = getattr(gate.facilitator, "rpc_url", None)
    return f"{root}{chains}" if root and getattr(gate.facilitator, "rpc_chains", False) else root


def offer_requirements(
    gate: Gate,
    route: Route,
    offer: Offer,
    base: str,
    amount: int,
    asset: str,
    pay_to: str | None,
    terms: dict[str, Any] | None = None,
) -> PaymentRequirements:
    """One offer's requirements, served from ``base``, once its price and payTo are known.

    ``pay_to`` None: not known without a request (a payTo callable; discovery lists such an
    offer): ``payTo`` is left empty and the delivery policy, which names it, is left out.
    ``terms``: what ``extra`` says of a minimum, a bundle or a cap (:func:`.bundles.extra`).
    """
    extra: dict[str, Any] = {"tabEndpoint": gate.config.tab_endpoint or f"{base}{gate._tab_path}"}
    rpc = rpc_url(gate, offer.network, base)
    if rpc:
        extra["rpcUrl"] = rpc
    token = find_asset(offer.network, asset)
    if token is not None and token.eip712 is not None:  # the token's, as the official seller
        extra["name"], extra["version"] = token.eip712
    extra.update(offer.extra)
    if terms:
        extra.update(terms)
    req = PaymentRequirements(
        scheme=offer.scheme,
        network=offer.network,
        asset=asset,
        amount=str(amount),
        pay_to=pay_to or "",
        max_timeout_seconds=offer.max_timeout_seconds or gate.config.max_timeout_seconds,
        extra=extra,
    )
    chain_id = get_network(offer.network).chain_id
    return _with_policy(req, _policy_for(gate, route, offer, pay_to, chain_id))


def _policy_for(
    gate: Gate, route: Route, offer: Offer, pay_to: str | None, chain_id: int
) -> tuple[ValidationPolicy | None, bool]:
    """(policy, seller_chosen): the route's or config's policy, else the delivery policy
    (whose validator is ``pay_to``: none while it is unknown)."""
    chosen = route.config.validation_policy or gate.config.validation_policy
    if chosen is None and offer.extra:  # e.g. an official route dict carrying its own policy
        chosen = ValidationPolicy.from_extra(offer.extra, chain_id)
    if chosen is not None:
        return chosen, True
    core = gate.core
    if pay_to is None or not gate.config.delivery_policy:
        return None, False
    from .._eth import keccak
    from ..core.ledger import SANDBOX_REGISTRY

    if core is None:  # a remote facilitator: the registry it trusts, when it was given one
        registry = getattr(gate.facilitator, "validation_registry", None)
        if registry is None and gate.facilitator not in _WARNED:
            _WARNED.add(gate.facilitator)
            log.warning(
                "%r has no validation_registry: x402 v2 challenges carry no validation policy "
                "and the official 4Mica buyer refuses them; pass the registry the facilitator "
                "trusts (docs/operations.md)",
                gate.facilitator,
            )
    elif 2 in core.config.accepted_versions:
        registry = (core.config.trusted_registries or (SANDBOX_REGISTRY,))[0]
    else:
        registry = None
    if registry is None:
        return None, False
    return ValidationPolicy(
        registry=registry,
        validator=pay_to,
        validator_agent_id=0,
        min_score=100,
        job_hash=keccak(f"fourmica-x402 delivery {route.key}".encode()),
        chain_id=chain_id,
        tag=DELIVERY_TAG,
    ), False


def _with_policy(
    req: PaymentRequirements, policy: tuple[ValidationPolicy | None, bool]
) -> PaymentRequirements:
    chosen, seller_chosen = policy
    if chosen is None:
        return req
    extra = {**req.extra, **chosen.to_extra(), "_v1Policy": seller_chosen}
    return req.model_copy(update={"extra": extra})


def v1_requirements(requirements: list[PaymentRequirements]) -> list[PaymentRequirements]:
    """The v1 view: a validation policy only when the seller chose one (v1 buyers sign G-v1)."""
    out = []
    for req in requirements:
        extra = dict(req.extra)
        seller_chosen = extra.pop("_v1Policy", False)
        if not seller_chosen:
            for key in (
                *ValidationPolicy._EXTRA_KEYS,
                "requiredValidationTag",
                "validationChainId",
            ):
                extra.pop(key, None)
        out.append(req.model_copy(update={"extra": extra}))
    return out


def v2_requirements(requirements: list[PaymentRequirements]) -> list[PaymentRequirements]:
    """The v2 view, the wire form: without the gate's internal marks."""
    out = []
    for req in requirements:
        extra = dict(req.extra)
        extra.pop("_v1Policy", None)
        out.append(req.model_copy(update={"extra": extra}))
    return out


def challenge(
    gate: Gate,
    request: RequestView,
    route: Route | None,
    requirements: list[PaymentRequirements],
    reason: str,
    *,
    version: int | None = None,
    settle: SettleResult | None = None,
) -> Response:
    """The 402: both envelopes (v2 header, v1 body), and the failed result header when a
    payment was refused (``reason`` other than ``payment_required``, or a failed ``settle``)."""
    description, mime = described(route.config if route else None)
    if route is not None and route.terms is not None and requirements:
        description = bundles.describe(route, requirements[0])  # what the buyer buys
    url = (route.config.resource if route and route.config.resource else None) or (
        f"{origin(gate, request)}{request.path}" + (f"?{request.query}" if request.query else "")
    )
    error = "Payment required" if reason == Reason.PAYMENT_REQUIRED else str(reason)
    if reason == Reason.NO_MATCHING_REQUIREMENTS:
        error = "No matching payment requirements"
    resource = ResourceInfo(url=url, description=description, mime_type=mime)
    extensions = dict(route.config.extensions) if route and route.config.extensions else None
    v2 = PaymentRequired(
        error=error,
        resource=resource,
        accepts=v2_requirements(requirements),
        extensions=extensions,
    )
    v1 = PaymentRequiredV1(
        error=error, accepts=[r.to_v1(resource) for r in v1_requirements(requirements)]
    )
    headers = [
        (PAYMENT_REQUIRED_HEADER.lower(), encode_header(v2)),
        ("cache-control", "no-store"),
        ("access-control-expose-headers", EXPOSE_HEADERS),
    ]
    if settle is not None or (version is not None and reason != Reason.PAYMENT_REQUIRED):
        failed = SettleResponse(
            success=False,
            error_reason=str(reason),
            transaction="",
            network=requirements[0].network if requirements else "",
        )
        name = PAYMENT_RESPONSE_HEADER if version != 1 else X_PAYMENT_RESPONSE_HEADER
        headers.append((name.lower(), encode_header(failed)))
    accept = request.header("accept") or ""
    if gate.config.paywall and "text/html" in accept and reason == Reason.PAYMENT_REQUIRED:
        body = _paywall(url, description, requirements).encode()
        return Response(402, [("content-type", "text/html; charset=utf-8"), *headers], body)
    return Response(402, [("content-type", "application/json"), *headers], v1.to_json_bytes())


#: Said of a route that describes itself no further. Empty, they are refused by the official
#: SDK's documented v2 reader (sdk-4mica's X402PaymentRequired.from_raw): docs/protocol.md.
DEFAULT_DESCRIPTION = "Paid per request (x402, 4mica credit)"
DEFAULT_MIME_TYPE = "application/json"


def described(config: RouteConfig | None) -> tuple[str, str]:
    """The description and MIME type a route advertises (the defaults where it sets none)."""
    if config is None:
        return DEFAULT_DESCRIPTION, DEFAULT_MIME_TYPE
    return config.description or DEFAULT_DESCRIPTION, config.mime_type or DEFAULT_MIME_TYPE


def _paywall(url: str, description: str, requirements: list[PaymentRequirements]) -> str:
    rows = []
    for req in requirements:
        asset = find_asset(req.network, req.asset)
        if asset is not None:
            human = Decimal(int(req.amount)).scaleb(-asset.decimals).normalize()
            price = f"{human:f} {asset.symbol}"
        else:
            price = f"{req.amount} (atomic units of {req.asset})"
        rows.append(
            f"<tr><td>{html.escape(price)}</td><td>{html.escape(get_network(req.network).name)}</td><td><code>{html.escape(req.pay_to)}</code></td></tr>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Payment required</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.4rem;text-align:left}}
code{{font-size:.85em;word-break:break-all}}</style></head>
<body><h1>Payment required</h1>
<p>{html.escape(description) or "This resource is paid per request."}</p>
<p><code>{html.escape(url)}</code></p>
<table><tr><th>Price</th><th>Network</th><th>Pay to</th></tr>{"".join(rows)}</table>
<p>Pay with an x402 client that supports the <code>4mica-credit</code> scheme: it reads the
<code>PAYMENT-REQUIRED</code> header, opens a tab, signs a guarantee and retries.</p>
</body></html>"""
