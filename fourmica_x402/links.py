"""Fee splits and agent collaboration: upstream payments linked to the request that funded them
(docs/buyer.md, "Fee splits and agent collaboration").

A paid handler that pays its own upstream sellers (a data source, a tool, a validator, a
referrer's fee) with the buyer client links each of those payments to the guarantee that
funded the work — the one its own buyer signed — so an operator sees one user-facing action
become N obligations, and what serving a request costs::

    links = Links(core.store)                       # the seller's records database

    async def recommend(request):
        payment = request.state.payment
        with links.funded_by(payment):              # every payment the buyer client makes here
            await upstream.get("https://data.example/availability")   # … is linked to it
        return JSONResponse(...)

    links.upstream(payment.guarantee_id)            # its upstream obligations
    links.totals(seller=AGENT)                      # per seller and asset

Links are rows of ``fx_links`` in the seller's records database (the Core's database for an
embedded seller), with a migration list of their own. Each is written in one transaction, at
most once per upstream guarantee. The monitoring signals read them where they live beside the
Core's guarantees (docs/operations.md, "Monitoring signals").
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ._eth import parse_address
from .client.receipts import Receipt, on_paid
from .core.collateral import asset_address
from .core.common import INT64_MAX
from .core.schema import migrate
from .core.store import Store, open_store
from .errors import CoreError
from .guarantee import guarantee_id
from .networks import get_network

__all__ = ["Funding", "Link", "LinkConflict", "LinkTotals", "Links", "MIGRATIONS", "SCHEMA_KEY"]

log = logging.getLogger("fourmica_x402.links")

#: The key of the links' schema version in ``fx_meta`` (the signals check it before reading).
SCHEMA_KEY = "links_schema_version"

MIGRATIONS: list[list[str]] = [
    [  # seller: the funding payment's payTo; payer: the address that signed upstream
        """CREATE TABLE fx_links (
            link_id {autoid}, created_at {real} NOT NULL,
            funding_guarantee_id TEXT NOT NULL, seller TEXT NOT NULL, user_address TEXT,
            route TEXT, guarantee_id TEXT NOT NULL UNIQUE, upstream TEXT NOT NULL,
            payer TEXT, amount {int} NOT NULL CHECK (amount >= 0), asset TEXT NOT NULL,
            network TEXT NOT NULL, url TEXT, task TEXT,
            CHECK (guarantee_id <> funding_guarantee_id))""",
        "CREATE INDEX fx_links_funding ON fx_links (funding_guarantee_id)",
        "CREATE INDEX fx_links_seller ON fx_links (seller, network, asset)",
    ],
]

_COLUMNS = (
    "link_id, created_at, funding_guarantee_id, seller, user_address, route, guarantee_id, "
    "upstream, payer, amount, asset, network, url, task"
)


class FundingPayment(Protocol):
    """What a funding payment needs to offer (a paid handler's ``Payment`` has it all)."""

    @property
    def guarantee_id(self) -> str | None: ...

    @property
    def pay_to(self) -> str: ...

    @property
    def payer(self) -> str: ...


@dataclass(frozen=True)
class Funding:
    """The downstream payment that funds upstream ones: its guarantee, the selling agent (its
    ``payTo``), the user who paid it and the route it paid for."""

    guarantee_id: str
    seller: str
    user: str | None = None
    route: str | None = None

    @classmethod
    def of(cls, payment: FundingPayment | Funding) -> Funding:
        if isinstance(payment, Funding):
            return payment
        gid = payment.guarantee_id or _unsettled_id(payment)
        if not gid:
            raise CoreError(
                "the funding payment has no guarantee id: nothing to link to", reason="not_linkable"
            )
        payer = getattr(payment, "payer", None)
        return cls(
            gid.lower(),
            parse_address(payment.pay_to),
            parse_address(payer) if payer else None,
            getattr(payment, "route", None),
        )


@dataclass(frozen=True)
class Link:
    """One upstream guarantee and the downstream guarantee that funded it."""

    link_id: int
    created_at: float
    funding_guarantee_id: str
    #: The selling agent: the funding payment's payTo.
    seller: str
    #: Who paid the funding payment (the user), and for which route.
    user: str | None
    route: str | None
    #: The upstream guarantee, the upstream seller (its payTo) and who signed it.
    guarantee_id: str
    upstream: str
    payer: str | None
    amount: int
    asset: str
    network: str
    url: str | None
    task: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LinkTotals:
    """A seller's upstream spending in one (network, asset): how many of its requests funded
    upstream payments, how many upstream guarantees, and their amount."""

    seller: str
    network: str
    asset: str
    funding: int
    links: int
    amount: int


class LinkConflict(CoreError):
    """The upstream guarantee is already linked to another funding guarantee
    (``reason`` ``link_conflict``; every other refusal here is a ``CoreError`` with reason
    ``not_linkable``)."""


def _link(r: Sequence[Any]) -> Link:
    return Link(
        int(r[0]),
        float(r[1]),
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        int(r[9]),
        r[10],
        r[11],
        r[12],
        r[13],
    )


class Links:
    """The links of one records database (any number of processes). ``store``: a
    :class:`~fourmica_x402.core.store.Store`, a database URL, or anything with a ``store``
    (a :class:`~fourmica_x402.core.Core`, the gate's ``Records``)."""

    def __init__(self, store: Store | str | Any) -> None:
        if isinstance(store, str):
            store = open_store(store)
        self.store: Store = getattr(store, "store", store)
        migrate(self.store, migrations=MIGRATIONS, key=SCHEMA_KEY)

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def funded_by(self, payment: FundingPayment | Funding) -> Iterator[Funding]:
        """Link every payment the buyer client makes in this block (this thread or task, and
        what it starts) to ``payment``'s guarantee. A link that cannot be written is logged;
        the upstream response is returned all the same (its receipt is in the buyer's ledger:
        :meth:`record` links it later)."""
        funding = Funding.of(payment)

        def link(receipt: Receipt) -> None:
            try:
                self.record(funding, receipt)
            except Exception as exc:
                log.error(
                    "could not link %s to %s: %s",
                    receipt.guarantee_id,
                    funding.guarantee_id,
                    getattr(exc, "message", None) or type(exc).__name__,
                )

        with on_paid(link):
            yield funding

    def record(self, payment: FundingPayment | Funding, receipt: Receipt) -> Link:
        """Link the upstream payment of ``receipt`` (a paid receipt of the buyer client) to
        ``payment``; one transaction. Linking it again to the same payment returns the link
        written first; to another payment raises :class:`LinkConflict`."""
        funding = Funding.of(payment)
        if receipt.outcome != "paid" or not receipt.seller or receipt.amount is None:
            raise CoreError(
                f"only a paid receipt can be linked (this one: {receipt.outcome})",
                reason="not_linkable",
            )
        if not receipt.network or not receipt.asset:
            raise CoreError("the receipt names no network or asset", reason="not_linkable")
        try:
            gid = _upstream_id(receipt)
            upstream = parse_address(receipt.seller)
            asset = asset_address(receipt.network, receipt.asset)
        except (ValueError, TypeError, OverflowError) as exc:  # ConfigurationError too
            raise CoreError(f"the receipt cannot be linked: {exc}", reason="not_linkable") from None
        amount = receipt.amount
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= INT64_MAX:
            raise CoreError(
                f"the receipt's amount {amount!r:.40} is not 1..{INT64_MAX} atomic units",
                reason="not_linkable",
            )
        if gid == funding.guarantee_id:
            raise CoreError("a payment cannot fund itself", reason="not_linkable")
        values = (
            time.time(),
            funding.guarantee_id,
            funding.seller,
            funding.user,
            funding.route,
            gid,
            upstream,
            _signer(receipt),
            amount,
            asset,
            receipt.network,
            receipt.url,
            receipt.task,
        )
        with self.store.transaction() as tx:
            tx.execute(
                f"INSERT INTO fx_links ({_COLUMNS.partition(', ')[2]}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (guarantee_id) DO NOTHING",
                values,
            )
            row = tx.one(f"SELECT {_COLUMNS} FROM fx_links WHERE guarantee_id = ?", (gid,))
        assert row is not None
        link = _link(row)
        if link.funding_guarantee_id != funding.guarantee_id:
            raise LinkConflict(
                f"upstream guarantee {gid} is already linked to {link.funding_guarantee_id}",
                reason="link_conflict",
            )
        return link

    # -- reading -------------------------------------------------------------------------------

    def upstream(self, funding_guarantee_id: str) -> list[Link]:
        """The upstream obligations one downstream guarantee funded, oldest first."""
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                f"SELECT {_COLUMNS} FROM fx_links WHERE funding_guarantee_id = ? ORDER BY link_id",
                (funding_guarantee_id.lower(),),
            )
        return [_link(r) for r in rows]

    def funding_of(self, guarantee_id: str) -> Link | None:
        """The link of one upstream guarantee (which downstream guarantee funded it)."""
        with self.store.transaction(write=False) as tx:
            row = tx.one(
                f"SELECT {_COLUMNS} FROM fx_links WHERE guarantee_id = ?", (guarantee_id.lower(),)
            )
        return _link(row) if row is not None else None

    def query(self, *, seller: str | None = None, limit: int = 1000) -> list[Link]:
        """Links, newest first (of one selling agent when given)."""
        sql = f"SELECT {_COLUMNS} FROM fx_links"
        params: tuple[Any, ...] = ()
        if seller is not None:
            sql, params = sql + " WHERE seller = ?", (parse_address(seller),)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(sql + " ORDER BY link_id DESC LIMIT ?", (*params, int(limit)))
        return [_link(r) for r in rows]

    def totals(self, *, seller: str | None = None) -> list[LinkTotals]:
        """Per (seller, network, asset): the requests that funded upstream payments, the
        upstream guarantees and their amount (one aggregate query)."""
        sql = (
            "SELECT seller, network, asset, COUNT(DISTINCT funding_guarantee_id), COUNT(*), "
            "SUM(amount) FROM fx_links"
        )
        params: tuple[Any, ...] = ()
        if seller is not None:
            sql, params = sql + " WHERE seller = ?", (parse_address(seller),)
        with self.store.transaction(write=False) as tx:
            rows = tx.all(
                sql + " GROUP BY seller, network, asset ORDER BY seller COLLATE BINARY, "
                "network COLLATE BINARY, asset COLLATE BINARY",
                params,
            )
        return [LinkTotals(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5] or 0)) for r in rows]


def _upstream_id(receipt: Receipt) -> str:
    """The upstream guarantee's id, from what the buyer signed (its tab and request ids) when
    the receipt has them, else as the seller named it."""
    if receipt.tab_id and receipt.request_id and receipt.network:
        chain_id = get_network(receipt.network).chain_id
        tab, req = int(receipt.tab_id, 16), int(receipt.request_id, 16)
        return "0x" + guarantee_id(chain_id, tab, req).hex()
    if not receipt.guarantee_id:
        raise CoreError("the receipt names no guarantee", reason="not_linkable")
    return receipt.guarantee_id.lower()


def _unsettled_id(payment: Any) -> str | None:
    """The guarantee id of a payment its handler runs before it settles (``settle="after"``):
    made from its signed tab and request ids, as the Core makes it."""
    tab, req, network = (getattr(payment, n, None) for n in ("tab_id", "request_id", "network"))
    if not (isinstance(tab, str) and isinstance(req, str) and isinstance(network, str)):
        return None
    try:
        chain_id = get_network(network).chain_id
        return "0x" + guarantee_id(chain_id, int(tab, 16), int(req, 16)).hex()
    except (ValueError, OverflowError):  # ConfigurationError is a ValueError
        return None


def _signer(receipt: Receipt) -> str | None:
    """Who signed the upstream guarantee (the claims' user), when the receipt kept them."""
    try:
        user = json.loads(receipt.claims or "{}").get("user_address")
        return parse_address(user) if user else None
    except (ValueError, AttributeError):
        return None
