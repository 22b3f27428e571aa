"""The route table: which ``(method, path)`` costs what.

Keys are ``"VERB /path"`` patterns (no verb = any method): ``*`` matches
anything, ``:name`` and ``[name]`` one path segment, a trailing ``/*`` the
bare prefix too. Matching ignores case (a case-insensitive miss would let a
request through unpaid; a case-insensitive hit only ever charges). ``GET``
also covers ``HEAD``. Values take three forms::

    {"GET /premium": "$0.01"}                                    # a price
    {"GET /premium": RouteConfig(price="$0.01", description=…)}  # a RouteConfig
    {"GET /premium": {"accepts": {"scheme": "4mica-credit", "price": "$0.01",
                                  "network": "eip155:84532", "payTo": "0x…"},
                      "description": "…"}}                       # the official 4Mica dict

Static prices and addresses are checked when the table is built, so a bad
price fails at start-up, not on the first request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._eth import parse_address
from .errors import ConfigurationError
from .guarantee import ValidationPolicy
from .networks import Price, TokenAmount, get_network, resolve_price
from .wire import SCHEME

__all__ = ["Offer", "Route", "RouteConfig", "RouteTable"]

PriceLike = Price | Callable[..., Any]
AddressLike = str | Callable[..., Any]


@dataclass(frozen=True)
class Offer:
    """One way to pay for a route (one entry of ``accepts``).

    ``price`` and ``pay_to`` may be callables of the request (sync or async)
    for quoted or tiered work; they are resolved per request.
    """

    price: PriceLike
    network: str
    pay_to: AddressLike
    asset: str | None = None
    max_timeout_seconds: int = 300
    extra: Mapping[str, Any] = field(default_factory=dict)
    scheme: str = SCHEME
    #: Filled at build time when ``price`` is static.
    amount: TokenAmount | None = None

    def checked(self) -> Offer:
        """Validate what can be validated now; raises ConfigurationError."""
        if self.scheme != SCHEME:
            raise ConfigurationError(f"scheme {self.scheme!r} is not supported (use {SCHEME!r})")
        get_network(self.network)
        pay_to = self.pay_to
        if isinstance(pay_to, str):
            try:
                pay_to = parse_address(pay_to)
            except ValueError as exc:
                raise ConfigurationError(f"payTo: {exc}") from None
        elif not callable(pay_to):
            raise ConfigurationError("payTo must be an address or a callable of the request")
        amount = None
        if not callable(self.price):
            amount = resolve_price(self.price, self.network, self.asset)
        if not 0 < self.max_timeout_seconds <= 86_400:
            raise ConfigurationError("maxTimeoutSeconds must be 1..86400")
        return Offer(
            self.price,
            self.network,
            pay_to,
            self.asset,
            self.max_timeout_seconds,
            dict(self.extra),
            self.scheme,
            amount,
        )


@dataclass(frozen=True)
class RouteConfig:
    """What a route costs and how it is described in the challenge."""

    price: PriceLike | None = None
    network: str | None = None
    pay_to: AddressLike | None = None
    asset: str | None = None
    description: str = ""
    mime_type: str = ""
    resource: str | None = None
    max_timeout_seconds: int = 300
    #: A seller-chosen G-v2 validation policy (else the default delivery policy applies).
    validation_policy: ValidationPolicy | None = None
    #: Several ways to pay; when set, ``price``/``network``/``pay_to`` above are ignored.
    accepts: tuple[Offer, ...] = ()


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    offers: tuple[Offer, ...]
    config: RouteConfig

    @property
    def key(self) -> str:
        return f"{self.method} {self.pattern}"


_SEGMENT = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)|\[([A-Za-z_][A-Za-z0-9_]*)\]|\*")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ConfigurationError(f"route path must start with '/': {pattern!r}")
    body, prefix_too = pattern, False
    if body.endswith("/*"):
        body, prefix_too = body[:-2], True
    out, pos = [], 0
    for m in _SEGMENT.finditer(body):
        out.append(re.escape(body[pos : m.start()]))
        out.append(".*" if m.group(0) == "*" else "[^/]+")
        pos = m.end()
    out.append(re.escape(body[pos:]))
    regex = "".join(out)
    if prefix_too:
        regex += "(?:/.*)?"
    return re.compile(regex + r"/?\Z", re.IGNORECASE | re.DOTALL)


class RouteTable:
    """An ordered table of priced routes; the first match wins."""

    def __init__(
        self,
        routes: Mapping[str, Any] | None = None,
        *,
        network: str,
        pay_to: AddressLike | None,
        asset: str | None = None,
    ) -> None:
        self._defaults = (network, pay_to, asset)
        self.routes: list[Route] = []
        for key, value in (routes or {}).items():
            self.add(key, value)

    def add(self, key: str, value: Any) -> Route:
        """Add a route (``value`` as in the module docstring)."""
        method, _, path = key.strip().partition(" ")
        if not path:
            method, path = "*", method
        method = method.upper()
        config = self._config(key, value)
        offers = self._offers(key, config)
        route = Route(method, path.strip(), compile_pattern(path.strip()), offers, config)
        self.routes.append(route)
        return route

    def _config(self, key: str, value: Any) -> RouteConfig:
        if isinstance(value, RouteConfig):
            return value
        if isinstance(value, Mapping) and "accepts" in value:
            accepts = value["accepts"]
            items = [accepts] if isinstance(accepts, Mapping) else list(accepts)
            offers = []
            for item in items:
                if not isinstance(item, Mapping) or "price" not in item:
                    raise ConfigurationError(f"route {key!r}: each accepts entry needs a price")
                offers.append(
                    Offer(
                        price=item["price"],
                        network=item.get("network", self._defaults[0]),
                        pay_to=item.get("payTo", item.get("pay_to", self._defaults[1])),
                        asset=item.get("asset", self._defaults[2]),
                        max_timeout_seconds=int(
                            item.get("maxTimeoutSeconds", item.get("max_timeout_seconds", 300))
                        ),
                        extra=item.get("extra") or {},
                        scheme=item.get("scheme", SCHEME),
                    )
                )
            return RouteConfig(
                description=value.get("description", ""),
                mime_type=value.get("mimeType", value.get("mime_type", "")),
                resource=value.get("resource"),
                accepts=tuple(offers),
            )
        if isinstance(value, Mapping) and "price" in value:
            known = {f for f in RouteConfig.__dataclass_fields__}
            unknown = set(value) - known
            if unknown:
                raise ConfigurationError(f"route {key!r}: unknown keys {sorted(unknown)}")
            return RouteConfig(**value)
        return RouteConfig(price=value)

    def _offers(self, key: str, config: RouteConfig) -> tuple[Offer, ...]:
        network, pay_to, asset = self._defaults
        offers = config.accepts or (
            Offer(
                price=config.price,  # type: ignore[arg-type]  # None is refused just below
                network=config.network or network,
                pay_to=config.pay_to or pay_to,  # type: ignore[arg-type]
                asset=config.asset or asset,
                max_timeout_seconds=config.max_timeout_seconds,
            ),
        )
        checked = []
        for offer in offers:
            if offer.price is None:
                raise ConfigurationError(f"route {key!r} has no price")
            if offer.pay_to is None:
                raise ConfigurationError(f"route {key!r} has no payTo (set pay_to)")
            try:
                checked.append(offer.checked())
            except ConfigurationError as exc:
                raise ConfigurationError(f"route {key!r}: {exc.message}") from None
        return tuple(checked)

    def match(self, method: str, path: str) -> Route | None:
        """The first route for ``method`` (HEAD counts as GET) and ``path``."""
        method = method.upper()
        alias = "GET" if method == "HEAD" else method
        for route in self.routes:
            if route.method in ("*", method, alias) and route.regex.match(path):
                return route
        return None

    def static_pay_to(self) -> set[str] | None:
        """Every payTo when all are static addresses; None when a callable may pick others."""
        found: set[str] = set()
        for route in self.routes:
            for offer in route.offers:
                if not isinstance(offer.pay_to, str):
                    return None
                found.add(offer.pay_to)
        return found
