"""Minimums, bundles and prepaid caps (docs/protocol.md, "Minimums, bundles and prepaid caps").

A route may set a minimum (``min_amount``), sell a bundle of units per request (``units``, a
callable of the request; the static price is then one unit's) or ask for a prepaid cap
(``cap``, the amount guaranteed before a long job starts). :func:`terms` resolves them per offer
into atomic units of the offer's asset when the route table is built, refusing at start-up
what could never be charged right. Per request, :func:`count` reads the units (a bad count is
the request's fault: 400 ``invalid_units``, never a charge), :func:`charged` says the amount,
and :func:`extra` and :func:`describe` tell the buyer what it buys before it signs.

A route without any of these has no terms (``Route.terms`` None), and nothing here runs for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, Reason
from ..networks import (
    MAX_AMOUNT,
    Price,
    default_asset,
    find_asset,
    format_amount,
    resolve_price,
)
from .types import Call, Flow, Payment, RequestFault, RequestView, body_refused

if TYPE_CHECKING:
    from ..routes import Offer, Route, RouteConfig
    from ..wire import PaymentRequirements


@dataclass(frozen=True, slots=True)
class Terms:
    """One offer's terms, in atomic units of ``asset`` (the asset the offer charges in)."""

    asset: str
    minimum: int | None = None
    #: Bundles: the offer's static price, the price of one unit.
    unit_price: int | None = None
    cap: int | None = None


class InvalidUnits(RequestFault):
    """A bundled route could not count what the request buys: answered 400, nothing charged."""

    reason: str = Reason.INVALID_UNITS


def terms(where: str, config: RouteConfig, offers: tuple[Offer, ...]) -> tuple[Terms, ...]:
    """Each offer's :class:`Terms`; ConfigurationError (naming ``where``) for what cannot work:
    a static price below the minimum, a cap below the price or the minimum, a minimum or cap in
    another asset than the offer's, a price callable with units or a cap, units with a cap."""

    def refuse(why: str) -> ConfigurationError:
        return ConfigurationError(f"{where}: {why}")

    if config.units is not None:
        if not callable(config.units):
            raise refuse("units must be a callable of the request returning a whole number")
        if config.cap is not None:
            raise refuse("units and cap cannot be combined: a bundle's amount is its units'")
        top = config.max_units
        if top is not None and (type(top) is not int or top < 1):
            raise refuse(f"max_units must be a whole number ≥ 1, not {top!r:.40}")
        if not isinstance(config.unit, str):
            raise refuse("unit must be a label such as '100 records'")
    elif config.unit or config.max_units is not None:
        raise refuse("unit and max_units describe units (set units)")
    out = []
    for offer in offers:
        price = offer.amount  # None: a price callable, known per request
        if price is None and (config.units is not None or config.cap is not None):
            what = "units" if config.units is not None else "a cap"
            raise refuse(f"a price set per request cannot be combined with {what}")
        asset = price.asset if price is not None else _asset_of(offer)
        minimum = _atomic(refuse, "min_amount", config.min_amount, offer, asset)
        cap = _atomic(refuse, "cap", config.cap, offer, asset)
        if price is not None and config.units is None:  # the amount is known: check it now
            token = find_asset(offer.network, asset)
            charged, what = (price.amount, "price") if cap is None else (cap, "cap")
            if minimum is not None and charged < minimum:
                raise refuse(
                    f"{what} {format_amount(charged, token, units=True)} is below min_amount "
                    f"{format_amount(minimum, token, units=True)}"
                )
            if cap is not None and cap < price.amount:
                raise refuse(
                    f"cap {format_amount(cap, token, units=True)} is below the price "
                    f"{format_amount(price.amount, token, units=True)}"
                )
        unit_price = price.amount if price is not None and config.units is not None else None
        out.append(Terms(asset, minimum, unit_price, cap))
    return tuple(out)


def _asset_of(offer: Offer) -> str:
    """The asset an offer priced per request names (its price may still answer in another)."""
    if offer.asset is None:
        return default_asset(offer.network).address
    found = find_asset(offer.network, offer.asset)
    return offer.asset if found is None else found.address


def _atomic(refuse: Any, name: str, value: Price | None, offer: Offer, asset: str) -> int | None:
    """``value`` in atomic units of ``asset`` (a ``$`` amount is read in that asset)."""
    if value is None:
        return None
    if callable(value):
        raise refuse(f"{name} must be an amount, not a callable")
    try:
        token = resolve_price(value, offer.network, asset)
    except ConfigurationError as exc:
        raise refuse(f"{name}: {exc.message}") from None
    if token.asset.lower() != asset.lower():
        raise refuse(f"{name} is in asset {token.asset}, the offer charges in {asset}")
    return token.amount


def count(route: Route, request: RequestView) -> Flow:
    """The units this request buys (the route's ``units`` callable, called once): 1 to
    ``max_units``, else :class:`InvalidUnits`."""
    config = route.config
    assert config.units is not None
    try:
        n = yield Call(config.units, (request,), blocking=False)
    except Exception as exc:  # the body's refusal (below) wins over whatever it raised
        if not body_refused(request.read_body) and not isinstance(
            exc, (ValueError, TypeError, KeyError)
        ):
            raise
        n = InvalidUnits("could not read how many units this request buys")
    if refused := body_refused(request.read_body):  # it caught BodyTooLarge: not counted
        raise refused
    if isinstance(n, InvalidUnits):
        raise n
    if type(n) is not int:  # a bool, a float, a string: not a count
        raise InvalidUnits(f"units must be a whole number, not {type(n).__name__}")
    if n < 1:
        raise InvalidUnits(f"units must be at least 1, got {n}")
    if config.max_units is not None and n > config.max_units:
        raise InvalidUnits(f"at most {config.max_units} units per request, got {n}")
    return n


def charged(terms: Terms, amount: int, asset: str, n: int | None) -> int:
    """The amount a request is charged: the cap, else ``n`` units, else the price (``amount``
    in ``asset``), raised to the minimum."""
    if terms.cap is not None:
        return terms.cap
    if n is not None and terms.unit_price is not None:
        amount = terms.unit_price * n
        if amount > MAX_AMOUNT:  # no Core keeps it: no buyer could pay it
            raise InvalidUnits(f"{n} units cost more than any payment can carry")
    if terms.minimum is not None:
        if asset.lower() != terms.asset.lower():  # a price callable answered in another asset
            raise ConfigurationError(f"a price in {asset} cannot meet a minimum in {terms.asset}")
        amount = max(amount, terms.minimum)
    return amount


def extra(config: RouteConfig, terms: Terms, n: int | None) -> dict[str, Any]:
    """What the requirements' ``extra`` says of the terms (``n`` None: no request yet)."""
    out: dict[str, Any] = {}
    if n is not None:
        out["units"] = n
    if terms.unit_price is not None:
        out["unitPrice"] = str(terms.unit_price)
        if config.unit:
            out["unit"] = config.unit
    if terms.minimum is not None:
        out["minAmount"] = str(terms.minimum)
    if terms.cap is not None:
        out["cap"] = str(terms.cap)
    return out


def describe(route: Route, requirement: PaymentRequirements | None = None) -> str:
    """The route's description and what a request buys, from its first offer: "Records — 3 ×
    100 records at $0.01", "Jobs — prepaid up to $1.00" (``requirement`` None: no request yet,
    "Records — $0.01 per 100 records")."""
    config, terms, offer = route.config, route.terms, route.offers[0]
    if not terms or (terms[0].cap is None and terms[0].unit_price is None):
        return config.description
    first = terms[0]
    token = find_asset(offer.network, first.asset)

    def show(amount: int) -> str:
        return format_amount(amount, token)

    if first.cap is not None:
        detail = f"prepaid up to {show(first.cap)}"
    else:
        assert first.unit_price is not None
        price, label = show(first.unit_price), config.unit
        n = requirement.extra.get("units") if requirement is not None else None
        if requirement is None or n is None:  # the listing: no request yet
            detail, raised = f"{price} per {label or 'unit'}", True
        else:
            detail = f"{n} × {label} at {price}" if label else f"{n} × {price}"
            raised = int(requirement.amount) > first.unit_price * n
        if first.minimum is not None and raised:
            detail += f", minimum {show(first.minimum)}"
    return f"{config.description} — {detail}" if config.description else detail


def annotate(payment: Payment, extra: Mapping[str, Any]) -> None:
    """Tell the handler what the payment bought (from the requirements it was made for)."""
    for name, key in (("units", "units"), ("unit_price", "unitPrice"), ("cap", "cap")):
        if key in extra:
            setattr(payment, name, int(extra[key]))
