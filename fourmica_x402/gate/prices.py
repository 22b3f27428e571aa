"""Run-time repricing (docs/operations.md, "Repricing").

A price set at run time replaces a route's configured price until it is reset. The changes
are rows of ``fx_prices`` in the records' database (one per change, never updated), so every
process serving the app picks a change up within ``price_poll`` seconds, and a process that
starts later starts at the current prices. They are set with ``POST <prefix>/admin/prices``
(bearer ``admin_token``) or ``fourmica-x402 reprice``. A payment signed at the old price
matches nothing and is answered with a challenge at the new one; nothing is locked. Each
payment record keeps the amount its payment was taken at.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..core.schema import migrate
from ..core.store import Store, StoreUnavailable
from ..errors import ConfigurationError
from ..networks import Price, TokenAmount, find_asset, resolve_price
from ..routes import RouteConfig, RouteTable
from .types import Flow, RequestView, Response, error_response

if TYPE_CHECKING:
    from .flow import Gate

__all__ = ["PriceBook", "PriceChange", "Repricer", "UnknownRoute", "reprice", "route_key"]

log = logging.getLogger("fourmica_x402.gate")

#: Where the admin token comes from when ``PaymentConfig`` names none.
ADMIN_TOKEN_ENV = "FOURMICA_X402_ADMIN_TOKEN"

_MIGRATIONS: list[list[str]] = [
    [  # price NULL: back to the configured price
        """CREATE TABLE fx_prices (
            change_id {autoid}, changed_at {real} NOT NULL, route TEXT NOT NULL,
            price TEXT, source TEXT NOT NULL)""",
        "CREATE INDEX fx_prices_route ON fx_prices (route, change_id)",
    ],
]


#: Each route's last price (None: reset) among the changes up to an id: the routes walked one
#: index step at a time, then each one's newest change (no read of the whole history).
_LAST_PER_ROUTE = (
    "WITH RECURSIVE r (route) AS (SELECT MIN(route) FROM fx_prices UNION ALL "
    "SELECT (SELECT MIN(p.route) FROM fx_prices p WHERE p.route > r.route) FROM r "
    "WHERE r.route IS NOT NULL) "
    "SELECT r.route, (SELECT p.price FROM fx_prices p WHERE p.route = r.route "
    "AND p.change_id <= ? ORDER BY p.change_id DESC LIMIT 1) FROM r WHERE r.route IS NOT NULL"
)


def route_key(key: str) -> str:
    """A route key as the table writes it: ``"get /items/:id"`` → ``"GET /items/:id"``, a
    bare path → ``"* /path"``."""
    method, _, path = key.strip().partition(" ")
    if not path:
        method, path = "*", method
    return f"{method.upper()} {path.strip()}"


def encode(price: Price) -> str:
    """A price as JSON text: a string, an integer or ``{"amount", "asset"}``."""
    if isinstance(price, TokenAmount):
        return json.dumps({"amount": str(price.amount), "asset": price.asset})
    if isinstance(price, Decimal):
        return json.dumps(str(price))
    if isinstance(price, bool) or not isinstance(price, str | int | Mapping):
        raise ConfigurationError(
            f"a price is a string, an integer or an explicit amount: {price!r}"
        )
    return json.dumps(price if not isinstance(price, Mapping) else dict(price))


@dataclass(frozen=True)
class PriceChange:
    """One row of the price book: ``price`` None means back to the configured price."""

    change_id: int
    changed_at: float
    route: str
    price: Any
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "changeId": self.change_id,
            "changedAt": self.changed_at,
            "route": self.route,
            "price": self.price,
            "source": self.source,
        }


class UnknownRoute(ConfigurationError):
    """A run-time price for a route key the app does not price."""

    reason = "unknown_route"


class PriceBook:
    """The run-time prices of the routes served from one database (any number of processes)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        migrate(store, migrations=_MIGRATIONS, key="prices_schema_version")

    def set(self, prices: Mapping[str, Price | None], source: str) -> int:
        """Record the changes in one transaction; the id of the last one.

        One writer at a time (PostgreSQL: a lock on the table, readers go on), so the changes
        commit in the order of their ids: a process that read up to an id has every change
        below it, and polling that id alone misses none."""
        now, last = time.time(), 0
        with self.store.transaction() as tx:
            if self.store.dialect == "postgres":  # SQLite: a writer holds the database's lock
                tx.execute("LOCK TABLE fx_prices IN EXCLUSIVE MODE")
            for key, price in prices.items():
                text = None if price is None else encode(price)
                row = tx.one(
                    "INSERT INTO fx_prices (changed_at, route, price, source) "
                    "VALUES (?, ?, ?, ?) RETURNING change_id",
                    (now, route_key(key), text, source),
                )
                assert row is not None
                last = int(row[0])
        return last

    def latest(self) -> int:
        """The id of the last change (0: none yet); one indexed read."""
        with self.store.transaction(write=False) as tx:
            row = tx.one("SELECT MAX(change_id) FROM fx_prices")
        return int(row[0] or 0) if row else 0

    def current(self) -> tuple[int, dict[str, Any]]:
        """``(last change id, {route key: price})``: the routes priced at run time now.

        Each route's last change up to the last id, read through ``(route, change_id)``: a
        few rows per route, however many changes were ever made."""
        with self.store.transaction(write=False) as tx:
            row = tx.one("SELECT MAX(change_id) FROM fx_prices")
            last = int(row[0] or 0) if row else 0
            rows = tx.all(_LAST_PER_ROUTE, (last,))
        return last, {route: json.loads(text) for route, text in rows if text is not None}

    def history(self, route: str | None = None, limit: int = 50) -> list[PriceChange]:
        """The changes, newest first (of one route when given)."""
        sql = "SELECT change_id, changed_at, route, price, source FROM fx_prices"
        params: tuple[Any, ...] = ()
        if route is not None:
            sql, params = sql + " WHERE route = ?", (route_key(route),)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY change_id DESC LIMIT ?", (*params, int(limit)))
        return [
            PriceChange(int(c), float(t), r, None if p is None else json.loads(p), s)
            for c, t, r, p, s in rows
        ]


def at_price(config: RouteConfig, price: Price) -> RouteConfig:
    """``config`` at a run-time price (which applies to each of its offers alike). An explicit
    amount names one asset address: offers on a network that registers no such asset refuse it
    (each network has its own token addresses; a ``$`` price is read in each offer's asset)."""
    if hasattr(config.price, "judge_response"):  # paid MCP tools: one price per tool
        raise ConfigurationError(
            "this route's prices are its tools' (McpTools): change them there (docs/mcp.md)"
        )
    if isinstance(price, TokenAmount | Mapping) and len({o.network for o in config.accepts}) > 1:
        asset = resolve_price(price, config.accepts[0].network).asset
        if wrong := sorted({o.network for o in config.accepts if not find_asset(o.network, asset)}):
            raise ConfigurationError(
                f"asset {asset} is not registered on {', '.join(wrong)}: a route with offers "
                "on several networks is repriced in '$' (each offer's own asset)"
            )
    accepts = tuple(
        replace(offer, price=price, amount=None, asset=_asset(offer.price, offer.asset))
        for offer in config.accepts
    )
    return replace(config, price=price, accepts=accepts, asset=_asset(config.price, config.asset))


def _asset(configured: Any, asset: str | None) -> str | None:
    """The asset a ``$`` run-time price is read in: the offer's, else the one its configured
    explicit amount names (a route sold in WETH stays in WETH, never the network's USDC)."""
    if asset is None and isinstance(configured, TokenAmount | Mapping):
        return str(configured.asset if isinstance(configured, TokenAmount) else configured["asset"])
    return asset


def priced(table: RouteTable, keys: Iterable[str]) -> None:
    """Raise :class:`UnknownRoute` for the first of ``keys`` (route keys) ``table`` does not
    price: a reset (a price of None) names a priced route too, or a typo would pass for one."""
    for key in keys:
        if key not in table.configured:
            known = ", ".join(sorted(table.configured)) or "none"
            raise UnknownRoute(f"no priced route {key!r} (priced routes: {known})")


def reprice(table: RouteTable, prices: Mapping[str, Price]) -> None:
    """Price ``table``'s routes at ``prices`` (route key → price); every other route goes
    back to its configured price. All at once: a key that names no route, or a price a route
    refuses (its minimum, a bad amount), raises ConfigurationError and changes nothing."""
    prices = {route_key(k): v for k, v in prices.items()}
    priced(table, prices)
    routes = []
    for route in table.routes:
        configured = table.configured[route.key]
        if route.key in prices:
            routes.append(table.build(route.key, at_price(configured, prices[route.key])))
        elif route.config is configured and route.config.stage is None:
            routes.append(route)  # unchanged: keeps its cached requirements
        # (a stage's challenge says what the later stages cost: rebuilt with every change)
        else:
            routes.append(table.build(route.key, configured))
    table_keys = {route.key for route in table.routes}
    for key, price in prices.items():
        if key not in table_keys:  # a per-handler marker: checked now, built when next priced
            table.build(key, at_price(table.configured[key], price))
    table.set_routes(routes)
    table.overrides = prices
    table.version += 1


def marker_config(table: RouteTable, key: str, config: RouteConfig) -> RouteConfig:
    """A per-handler marker's config at its run-time price (checked when it was set)."""
    return at_price(config, table.overrides[key])


class Repricer:
    """A gate's side of the price book: reads it every ``price_poll`` seconds (on a request,
    one indexed read) and applies what changed; :meth:`set` validates and records a change."""

    def __init__(self, gate: Gate) -> None:
        self.table = gate.routes
        self.book = PriceBook(gate.records.store)
        self.every = gate.config.price_poll
        self.due, self.seen = 0.0, -1
        self._lock = threading.Lock()
        self._foreign: set[str] = set()  # changes of routes this app does not price, logged
        #: Table entries naming only handlers priced by their own marker (``check_routes``).
        self.shadowed: frozenset[str] = frozenset()

    def poll(self) -> None:
        """Called as a request is priced. The first one reads the book before it goes on
        (the app's routes, per-handler ones too, are known by then); later ones read it when
        ``price_poll`` seconds have passed, and only one request reads while the others go on
        at the prices in force."""
        if self.every is None or time.monotonic() < self.due:
            return
        if self._lock.acquire(blocking=self.seen < 0):
            try:
                self.due = time.monotonic() + self.every
                self._refresh()
            finally:
                self._lock.release()

    def _refresh(self) -> None:
        try:
            if self.book.latest() == self.seen:
                return
            seen, prices = self.book.current()
        except StoreUnavailable as exc:
            log.warning("could not read the price book: %s", exc)
            return
        mine = {k: v for k, v in prices.items() if k in self.table.configured}
        for key in prices.keys() - mine.keys() - self._foreign:  # once each: say why it is moot
            self._foreign.add(key)
            log.error("run-time price of %s not applied: this app prices no such route", key)
        try:
            reprice(self.table, mine)
        except ConfigurationError:  # one this app refuses (set for another app): skip it
            good: dict[str, Any] = {}
            for key, price in mine.items():
                try:
                    reprice(self.table, {**good, key: price})
                    good[key] = price
                except ConfigurationError as exc:
                    log.error("run-time price of %s not applied: %s", key, exc.message)
            reprice(self.table, good)
        self.seen = seen

    def set(self, prices: Mapping[str, Price | None], source: str) -> None:
        """Check ``prices`` (None resets a route) against this app, record and apply them."""
        with self._lock:
            if self.every is not None:
                self._refresh()
            merged = dict(self.table.overrides)
            priced(self.table, map(route_key, prices))
            for key in set(map(route_key, prices)) & self.shadowed:
                raise UnknownRoute(
                    f"{key!r} names only handlers that carry their own price (@paid / Paid), "
                    "which wins: reprice the handler's own key (see the listing)"
                )
            for key, price in prices.items():
                if price is None:
                    merged.pop(route_key(key), None)
                else:
                    merged[route_key(key)] = price
            reprice(self.table, merged)  # raises before anything is recorded
            self.book.set(prices, source)
            if self.every is not None:
                self.seen = -1  # read back: another process may have set prices meanwhile
                self._refresh()

    def listing(self) -> dict[str, Any]:
        rows = []
        for key, config in sorted(self.table.configured.items()):
            configured: Any = "dynamic" if callable(config.price) else config.price
            if config.accepts:
                configured = [
                    o.price if not callable(o.price) else "dynamic" for o in config.accepts
                ]
            current = self.table.overrides.get(key)
            rows.append(
                {
                    "route": key,
                    "configured": _jsonable(configured),
                    "price": _jsonable(configured if current is None else current),
                    "repriced": current is not None,
                }
            )
        changes = [c.to_dict() for c in self.book.history(limit=20)]
        return {"routes": rows, "changes": changes}


def _jsonable(price: Any) -> Any:
    if isinstance(price, list):
        return [_jsonable(p) for p in price]
    return json.loads(encode(price)) if price is not None and price != "dynamic" else price


def admin(gate: Gate, request: RequestView) -> Flow:
    """``GET|POST <prefix>/admin/prices``: the routes' prices, or a change to them
    (``{"prices": {"GET /premium": "$0.02", "GET /other": null}}``). Only with
    ``Authorization: Bearer <admin token>``; without a token configured the path is 404."""
    from .endpoints import bearer, json_body

    refused = bearer(request, gate.config.admin_token or os.environ.get(ADMIN_TOKEN_ENV), "admin")
    if refused is not None:
        return refused
    method = request.method.upper()
    headers = [("cache-control", "no-store")]
    if method == "POST":
        body = yield from json_body(request)
        prices = body.get("prices") if isinstance(body, dict) else None
        if not isinstance(prices, dict) or not prices:
            message = 'send {"prices": {"<route>": "<price>" or null}}'
            return error_response(400, "invalid_request", message)
        try:
            gate.prices.set(prices, source=f"admin {request.client or ''}".strip())
        except UnknownRoute as exc:
            return error_response(400, exc.reason, exc.message)
        except ConfigurationError as exc:
            return error_response(400, "invalid_price", exc.message)
        except StoreUnavailable as exc:
            return error_response(503, exc.reason, exc.message)
        log.info("repriced %s", ", ".join(f"{k} -> {v}" for k, v in prices.items()))
    elif method not in ("GET", "HEAD"):
        return error_response(
            405, "method_not_allowed", "use GET or POST", [("allow", "GET, POST")]
        )
    return Response.json(200, gate.prices.listing(), headers)
