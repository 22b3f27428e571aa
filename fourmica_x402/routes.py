"""The route table: which route costs what (docs/architecture.md, "Which route is priced").

Keys are ``"VERB /template"`` (no verb = any method; ``GET`` covers ``HEAD``). A template
names a route as the framework writes it or in the official form: ``:name``, ``[name]``,
``{name}``, ``{name:int}``, ``<name>``, ``<int:name>`` are one parameter; ``*`` matches
anything, a trailing ``/*`` the bare prefix too. Apps with a router are priced on the endpoint
the framework resolved, by its template (:meth:`RouteTable.for_endpoint`), and each entry must
name a route (:meth:`RouteTable.unmatched`); router-less apps on the path itself, ignoring case
(:meth:`RouteTable.match`). Of the entries that fit, the most specific prices it. Values:
a price (``"$0.01"``), a :class:`RouteConfig`, or the official 4Mica dict (``{"accepts":
{"scheme": "4mica-credit", "price": "$0.01", "network": …, "payTo": "0x…"}, "description": …}``).
Static prices and addresses are checked when the table is built: a bad price fails at start-up."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ._eth import parse_address, parse_payee
from .errors import ConfigurationError
from .guarantee import ValidationPolicy
from .jobs import Stage, check_stage
from .networks import Price, TokenAmount, get_network, resolve_price
from .streams import Slices
from .templates import (
    Endpoint,
    MarkerKeys,
    check_path,
    compile_pattern,
    compile_template,
    look_alikes,
    specificity,
    typed_template,
    written_as,
)
from .wire import SCHEME

_WHOLE = re.compile(r"\s*\d+(\.0*)?\s*")  # seconds as the official route dict may write them
_OFFER_KEYS = {"scheme", "price", "network", "payTo", "asset", "extra", "maxTimeoutSeconds"}
#: Methods whose pricing an endpoint keeps (any other is priced afresh on each request).
_CACHED = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "QUERY"})

if TYPE_CHECKING:
    from .gate.bundles import Terms
    from .gate.types import RequestView

__all__ = ["Endpoint", "Offer", "Route", "RouteConfig", "RouteTable", "validate_marker"]

PriceLike = Price | Callable[..., Any]
AddressLike = str | Callable[..., Any]


@dataclass(frozen=True)
class Offer:
    """One way to pay for a route (one entry of ``accepts``). ``price`` and ``pay_to`` may be
    callables of the request (sync or async), resolved per request: quoted or tiered work."""

    price: PriceLike
    network: str
    pay_to: AddressLike
    asset: str | None = None
    max_timeout_seconds: int | None = None  # None: the app's (``PaymentConfig``)
    extra: Mapping[str, Any] = field(default_factory=dict)
    scheme: str = SCHEME
    #: Filled at build time when ``price`` is static.
    amount: TokenAmount | None = None

    def checked(self, timeout: int = 300) -> Offer:
        """Validate what can be validated now (``timeout``: the app's maxTimeoutSeconds)."""
        if self.scheme != SCHEME:
            raise ConfigurationError(f"scheme {self.scheme!r} is not supported (use {SCHEME!r})")
        get_network(self.network)
        pay_to, what = self.pay_to, "asset"
        try:  # a token's address, whatever the price ("USDC", its symbol, is none); then payTo
            what = "payTo" if self.asset is None or parse_address(self.asset) else what
            pay_to = parse_payee(pay_to) if isinstance(pay_to, str) else pay_to
        except ValueError as exc:
            raise ConfigurationError(f"{what}: {exc}") from None
        if not isinstance(pay_to, str) and not callable(pay_to):
            raise ConfigurationError("payTo must be an address or a callable of the request")
        amount = None
        if not callable(self.price):
            amount = resolve_price(self.price, self.network, self.asset)
        seconds = timeout if self.max_timeout_seconds is None else self.max_timeout_seconds
        if type(seconds) is not int or not 0 < seconds <= 86_400:
            raise ConfigurationError(f"maxTimeoutSeconds must be 1..86400, not {seconds!r:.20}")
        checked = replace(self, pay_to=pay_to, extra=dict(self.extra), amount=amount)
        return replace(checked, max_timeout_seconds=seconds)


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
    max_timeout_seconds: int | None = None  # None: the app's (``PaymentConfig``)
    #: A seller-chosen G-v2 validation policy (else the default delivery policy applies).
    validation_policy: ValidationPolicy | None = None
    #: Several ways to pay; when set, ``price``/``network``/``pay_to`` above are ignored.
    accepts: tuple[Offer, ...] = ()
    #: x402 v2 ``extensions`` (e.g. ``{"bazaar": {"info": …, "schema": …}}``): JSON, sent as
    #: written in the route's challenge and discovery listing (docs/protocol.md, "Discovery").
    extensions: Mapping[str, Any] | None = None
    #: The least a request is charged: a static price below it fails at start-up, a price set
    #: per request is raised to it (docs/protocol.md, "Minimums, bundles and prepaid caps").
    min_amount: Price | None = None
    #: Bundles: ``units(request)`` (sync or async) counts what a request buys, at most
    #: ``max_units``; the static price is then one unit's, ``unit`` its label ("100 records").
    units: Callable[[RequestView], int | Awaitable[int]] | None = None
    unit: str = ""
    max_units: int | None = None
    #: A prepaid cap: the amount guaranteed (and charged) before a long job or a stream starts.
    cap: Price | None = None
    #: Staged work: this route is one stage of a job (docs/protocol.md, "Staged work").
    stage: Stage | None = None
    #: A metered stream sold per slice (docs/protocol.md, "Metered streams").
    slices: Slices | None = None

    def __post_init__(self) -> None:  # they travel in every challenge: fail at start-up
        if self.stage is not None and not isinstance(self.stage, Stage):
            raise ConfigurationError(f"stage must be a fourmica_x402.Stage, not {self.stage!r:.60}")
        if not isinstance(self.accepts, tuple | list) or not all(
            isinstance(offer, Offer) for offer in self.accepts
        ):  # the official dict's entries are a route table's form: {"accepts": [...]}
            raise ConfigurationError(f"accepts holds Offer(...) entries, not {self.accepts!r:.60}")
        ext = self.extensions
        try:  # TypeError: not a mapping, or a value JSON cannot hold
            json.dumps(None if ext is None else {**ext}, allow_nan=False)
            ok = ext is None or all(isinstance(k, str) for k in ext)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigurationError(f"a route's extensions must be a JSON object, not {ext!r:.60}")


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    offers: tuple[Offer, ...]
    config: RouteConfig
    #: Matches the canonical template of a framework's route (see :func:`canonical_template`).
    template_regex: re.Pattern[str] | None = None
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # per origin
    #: Per offer: its minimum, unit price and cap (None: the route sets none of them).
    terms: tuple[Terms, ...] | None = None
    #: A per-handler marker's price (``@paid``, ``Paid``), not a table entry.
    marker: bool = False

    @property
    def key(self) -> str:
        return f"{self.method} {self.pattern}"

    def fits(self, shape: str) -> bool:
        """Whether this entry names a framework route of canonical template ``shape``."""
        return self.template_regex is not None and bool(self.template_regex.match(shape))

    def names(self, endpoint: Endpoint) -> bool:
        """Whether this entry names ``endpoint``: it fits its shape, or is written with the
        route's own converters (``/files/<anypath:rest>`` for that very route)."""
        typed = self.template_regex is not None and typed_template(self.pattern) == endpoint.typed
        return self.fits(endpoint.shape) or typed


def validate_marker(config: RouteConfig, where: str = "a paid handler") -> RouteConfig:
    """Check a per-handler price where it is declared (``@paid``/``Paid``): a bad static price,
    payTo or network fails at import, not per request. What the app supplies later (its
    network when only an asset is given, its payTo) is checked when the gate prices it."""
    offers = config.accepts or (
        Offer(
            config.price,  # type: ignore[arg-type]  # None is refused just below
            config.network or "eip155:84532",  # PaymentConfig's default network
            config.pay_to,  # type: ignore[arg-type]
            config.asset,
            config.max_timeout_seconds,
        ),
    )
    checked = []
    for offer in offers:
        if offer.price is None:
            raise ConfigurationError(f"{where}: no price")
        if config.asset and not config.network:  # priced on the app's network: later
            offer = replace(offer, price=_LATER)
        try:
            checked.append(replace(offer, pay_to=offer.pay_to or _LATER).checked())
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc.message}") from None
    if not any(offer.price is _LATER for offer in checked):
        _terms(where, config, tuple(checked))
    return config


def _LATER(request: Any) -> None:
    """Stands in for what the app's settings supply, while the rest of an offer is checked."""


def _terms(where: str, config: RouteConfig, offers: tuple[Offer, ...]) -> tuple[Terms, ...] | None:
    """Each offer's minimum, unit price and cap, checked (None when the route sets none)."""
    if config.slices is not None:
        config.slices.check(where, config, offers)
    fields = (config.min_amount, config.units, config.cap, config.max_units, config.unit or None)
    if all(value is None for value in fields):
        return None
    from .gate.bundles import terms

    return terms(where, config, offers)


class RouteTable:
    """The priced routes; of the entries that fit a request, the most specific prices it."""

    def __init__(
        self,
        routes: Mapping[str, Any] | None = None,
        *,
        network: str,
        pay_to: AddressLike | None,
        asset: str | None = None,
        timeout: int = 300,
    ) -> None:
        self._defaults = (network, pay_to, asset, timeout)
        self.set_routes([])
        self.version = 0  # bumped when a route is added: endpoints price themselves again
        self.marker_pay_to: set[str] = set()  # per-handler markers' static payTo (not in routes)
        #: Run-time prices by route key, and each entry's configured ``RouteConfig`` (they
        #: replace it until reset: :mod:`.gate.prices`, docs/operations.md, "Repricing").
        self.overrides: dict[str, Price] = {}
        self.configured: dict[str, RouteConfig] = {}
        #: A per-handler marker's route key (:class:`.templates.MarkerKeys`).
        self.marker_key = MarkerKeys()
        for key, value in (routes or {}).items():
            self.add(key, value, replace=False)

    def add(self, key: str, value: Any, *, replace: bool = True) -> Route:
        """Add a route (``value`` as in the module docstring); a key the table prices already
        (``get /x`` is ``GET /x``) takes the new terms in its entry's place, a run-time price
        of it staying until reset (docs/operations.md, "Repricing"). ``replace=False``: such
        a key is refused (a table naming one route twice), and so is always another spelling
        of a priced key (``GET /items/{id}`` of ``GET /items/:id``), which would price nothing."""
        route = self.build(key, self._config(key, value))
        if route.method in ("ANY", "ALL") or not re.fullmatch(r"\*|[A-Z][A-Z0-9_-]*", route.method):
            raise ConfigurationError(f"route {key!r}: one method per entry, or '*' for every one")
        check_path(key, route.pattern)  # "/x?a=b", "/my%20doc"
        shapes = [(entry.method, typed_template(entry.pattern)) for entry in self.routes]
        same = (route.method, typed_template(route.pattern))
        at = shapes.index(same) if same in shapes else None
        if at is not None and (not replace or self.routes[at].key != route.key):
            raise ConfigurationError(f"route {key!r} is priced already: {self.routes[at].key!r}")
        check_stage(route.key, route.config, self.configured)  # one count (docs/protocol.md)
        self.configured[route.key] = route.config
        if at is not None and route.key in self.overrides:
            from .gate.prices import at_price

            route = self.build(route.key, at_price(route.config, self.overrides[route.key]))
        routes = [*self.routes, route] if at is None else [*self.routes]
        routes[-1 if at is None else at] = route  # new lists: readers may hold the old ones
        self.set_routes(routes)
        self.version += 1
        return route

    def set_routes(self, routes: list[Route]) -> None:
        """New entries: ``routes`` as written (listings), a copy most specific first (matching)."""
        self._matching = sorted(routes, key=lambda r: specificity(r.method, r.pattern))
        self._twins = look_alikes(self._matching)  # "GET /report", "GET /REPORT/"
        self.routes = routes

    def build(self, key: str, config: RouteConfig) -> Route:
        """A table entry for ``key`` at ``config``, checked (ConfigurationError)."""
        method, _, path = key.strip().partition(" ")
        if not path:
            method, path = "*", method
        method, path = method.upper(), path.strip()
        offers = self._offers(key, config)
        terms = _terms(f"route {key!r}", config, offers)
        template = compile_template(path)
        return Route(method, path, compile_pattern(path), offers, config, template, terms=terms)

    def marker_route(self, endpoint: Endpoint) -> Route:
        """The route a per-handler marker prices (validated like a table entry)."""
        assert endpoint.marker is not None
        key = self.marker_key(endpoint)
        methods = key.partition(" ")[0]
        check_stage(key, endpoint.marker, self.configured)  # a stage, as a table entry's
        self.configured.setdefault(key, endpoint.marker)
        config = endpoint.marker
        if key in self.overrides:  # a run-time price
            from .gate.prices import marker_config

            config = marker_config(self, key, config)
        offers = self._offers(key, config)
        self.marker_pay_to.update(o.pay_to for o in offers if isinstance(o.pay_to, str))
        regex = re.compile(re.escape(endpoint.template) + r"\Z")
        terms = _terms(f"route {key!r}", config, offers)
        return Route(methods, endpoint.template, regex, offers, config, terms=terms, marker=True)

    def prepare(self, endpoint: Endpoint) -> None:
        """Price an endpoint's marker now (adapters call it at start-up for every route): a
        price these defaults make invalid fails at start-up, and its payTo takes tabs."""
        found, version = endpoint._priced.get("*"), self.version  # before the overrides
        if endpoint.marker is not None and (found is None or found[0] != version):
            endpoint._priced["*"] = (version, self.marker_route(endpoint))

    def for_endpoint(self, method: str, endpoint: Endpoint) -> Route | None:
        """The route pricing ``method`` on the endpoint the framework resolved, or None (free):
        its marker's (every method it serves unless it names some), else the first table entry
        whose method fits and whose template names this endpoint."""
        method = method.upper()
        # The version is read before the routes: a reprice meanwhile leaves this entry stale.
        found, version = endpoint._priced.get(method), self.version
        if found is not None and found[0] == version:
            return found[1]
        alias = "GET" if method == "HEAD" else method
        route: Route | None = None
        if endpoint.methods is not None and not {alias, method} & endpoint.methods:
            route = None  # a 405 (HEAD is priced like the GET it mirrors, or as a HEAD route)
        elif endpoint.marker_decides(alias):  # prices it, or leaves it to its view to refuse (405)
            if endpoint.marker_prices(alias):
                self.prepare(endpoint)
                route = endpoint._priced["*"][1]
        else:  # the entry for this very route (converters too) before a looser one; also a
            # class view's methods its marker leaves out (its own handlers serve them)
            fits = [
                e for e in self._matching if e.method in ("*", method, alias) and e.names(endpoint)
            ]
            exact = (entry for entry in fits if typed_template(entry.pattern) == endpoint.typed)
            route = next(exact, fits[0] if fits else None)
        if method in _CACHED:  # a made-up method is priced afresh: kept, any name a client
            endpoint._priced[method] = (version, route)  # sends would grow the cache for good
        return route

    def other_methods(self, endpoint: Endpoint) -> frozenset[str]:
        """The methods table entries price on ``endpoint`` (``*``: all); see ``Gate.before``."""
        found, version = endpoint._priced.get("?"), self.version
        if found is None or found[0] != version:
            match = [e.method for e in self.routes if e.names(endpoint)]
            endpoint._priced["?"] = found = (version, frozenset(match))
        return found[1]  # type: ignore[no-any-return]

    def unmatched(self, endpoints: Iterable[Endpoint]) -> list[str]:
        """Table entries that name none of ``endpoints`` (for the methods each serves)."""
        known = list(endpoints)
        missing = []
        for entry in self.routes:
            methods = {"GET", "HEAD"} if entry.method == "GET" else {entry.method}
            if not any(
                entry.names(e)
                and (entry.method == "*" or e.methods is None or not methods.isdisjoint(e.methods))
                for e in known
            ):
                missing.append(entry.key)
        return missing

    def shadowed(self, endpoints: Iterable[Endpoint]) -> list[str]:
        """Table entries naming only routes whose handler carries its own price (``@paid``,
        ``Paid``): the marker prices them, so the entry (and a reprice of it) never applies."""
        known = [e for e in endpoints if e.methods is None or "*" not in e.methods]
        return [
            entry.key
            for entry in self.routes
            if (named := [e for e in known if entry.names(e)])
            and all(
                e.marker_decides(entry.method) and self.marker_key(e) != entry.key for e in named
            )
        ]  # an entry spelled as a marker's own key is that key: a reprice of it applies

    def _config(self, key: str, value: Any) -> RouteConfig:
        if isinstance(value, RouteConfig):
            return value
        if isinstance(value, Mapping) and "accepts" in value:
            if dropped := sorted(set(value) & (_OFFER_KEYS | {"pay_to"})):  # else the app's
                raise ConfigurationError(f"route {key!r}: name {dropped} in each accepts entry")
            if camel := sorted(set(value) & {"minAmount", "maxUnits", "validationPolicy"}):
                raise ConfigurationError(f"route {key!r}: {camel}: name them as RouteConfig does")
            items = [a] if isinstance(a := value["accepts"], Mapping) else list(a)
            offers = []
            for item in items:  # a key it does not read (a typo) would leave the app's default
                if not isinstance(item, Mapping) or "price" not in item:
                    raise ConfigurationError(f"route {key!r}: each accepts entry needs a price")
                if stray := sorted(set(item) - _OFFER_KEYS - {"pay_to", "max_timeout_seconds"}):
                    raise ConfigurationError(f"route {key!r}: unknown keys {stray} in accepts")
                timeout = item.get("maxTimeoutSeconds", item.get("max_timeout_seconds"))
                if isinstance(timeout, str | float) and _WHOLE.fullmatch(str(timeout)):
                    timeout = int(float(timeout))  # "60", 60.0: as the official package reads it
                offers.append(
                    Offer(
                        price=item["price"],
                        network=item.get("network", self._defaults[0]),
                        pay_to=item.get("payTo", item.get("pay_to", self._defaults[1])),
                        asset=item.get("asset", self._defaults[2]),
                        max_timeout_seconds=timeout,
                        extra=item.get("extra") or {},
                        scheme=item.get("scheme", SCHEME),
                    )
                )
            rest = {k: v for k, v in value.items() if k in RouteConfig.__dataclass_fields__}
            rest["mime_type"] = value.get("mimeType", value.get("mime_type", ""))  # not tags…
            return RouteConfig(**{**rest, "accepts": tuple(offers)})  # min_amount, stage…
        if isinstance(value, Mapping) and "price" in value:
            if unknown := set(value) - set(RouteConfig.__dataclass_fields__):
                raise ConfigurationError(f"route {key!r}: unknown keys {sorted(unknown)}")
            return RouteConfig(**value)
        return RouteConfig(price=value)

    def _offers(self, key: str, config: RouteConfig) -> tuple[Offer, ...]:
        network, pay_to, asset, timeout = self._defaults
        timeout = timeout if config.max_timeout_seconds is None else config.max_timeout_seconds
        offers = config.accepts or (  # an offer naming no maxTimeoutSeconds: the route's, the app's
            Offer(
                price=config.price,  # type: ignore[arg-type]  # None is refused just below
                network=config.network or network,
                pay_to=config.pay_to or pay_to,  # type: ignore[arg-type]
                asset=config.asset or asset,
            ),
        )
        checked = []
        for offer in offers:
            if offer.price is None:
                raise ConfigurationError(f"route {key!r} has no price")
            if offer.pay_to is None:
                raise ConfigurationError(f"route {key!r} has no payTo (set pay_to)")
            try:
                checked.append(offer.checked(timeout))
            except ConfigurationError as exc:
                raise ConfigurationError(f"route {key!r}: {exc.message}") from None
        return tuple(checked)

    def match(self, method: str, path: str) -> Route | None:
        """The most specific route for ``method`` (HEAD counts as GET) and ``path``."""
        fits = ("*", method.upper(), "GET" if method.upper() == "HEAD" else method.upper())
        for route in self._matching:
            if route.method in fits and route.regex.match(path):
                twins = [t for t in self._twins.get(route.key, ()) if t.method in fits]
                return written_as(twins, path) if len(twins) > 1 else route  # as path is written
        return None

    def static_pay_to(self) -> set[str] | None:
        """Every payTo when all are static addresses; None when a callable may pick others."""
        offers = [offer for route in self.routes for offer in route.offers]
        found = {offer.pay_to for offer in offers if isinstance(offer.pay_to, str)}
        return found if all(isinstance(offer.pay_to, str) for offer in offers) else None
