"""The seller's monitoring signals as Prometheus metrics (docs/operations.md, "Monitoring
signals"). Needs prometheus_client (the ``server`` extra).

:class:`SignalsCollector` computes the metrics from the database at scrape time
(:meth:`Core.signals <fourmica_x402.core.Core.signals>`), so every process on one Core — the
service's ``/metrics``, each seller gate's ``<prefix>/metrics`` — exposes the same values.
:class:`RefusalCounter` is the one per-process signal: the database never stores a refused
payment, so a gate counts its own when the seller sets it as the ``on_failure`` hook::

    PaymentConfig(..., on_failure=RefusalCounter(then=my_hook))
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from .core import Core
from .core.signals import AssetSignals, SellerSignals, Signals

__all__ = ["MEDIA_TYPE", "RefusalCounter", "SignalsCollector", "exposition", "families"]

#: The text exposition format's media type.
MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SELLER_LABELS = ["network", "asset", "seller"]
ASSET_LABELS = ["network", "asset"]

Family = type[CounterMetricFamily] | type[GaugeMetricFamily]
Value = float | None  # None: no sample (a ratio without a denominator)

_SELLER: list[tuple[Family, str, str, Callable[[SellerSignals], Value]]] = [
    (
        CounterMetricFamily,
        "fourmica_seller_guarantees_accepted",
        "Guarantees the Core accepted for the seller, whatever became of them (database)",
        lambda s: s.guarantees,
    ),
    (
        GaugeMetricFamily,
        "fourmica_payment_amount_average_atomic",
        "floor(Σ amount / guarantees) of the seller's accepted guarantees, atomic units",
        lambda s: s.average_payment if s.guarantees else None,
    ),
    (
        GaugeMetricFamily,
        "fourmica_payers",
        "Distinct payers among the seller's accepted guarantees",
        lambda s: s.payers,
    ),
    (
        GaugeMetricFamily,
        "fourmica_guarantees_per_payer",
        "The seller's accepted guarantees / its distinct payers",
        lambda s: s.guarantees_per_payer,
    ),
    (
        GaugeMetricFamily,
        "fourmica_guarantees_per_cycle",
        "The seller's guarantees netted in closed cycles / the closed cycles it was paid in",
        lambda s: s.guarantees_per_cycle,
    ),
    (
        GaugeMetricFamily,
        "fourmica_claimable_atomic",
        "What claiming its net credits would pay the seller now (resolved and final cycles)",
        lambda s: s.claimable,
    ),
    (
        GaugeMetricFamily,
        "fourmica_downstream_paid_spend_atomic",
        "What the seller paid upstream for requests it sold: its linked upstream guarantees "
        "not voided or cancelled, atomic units (sellers with links)",
        lambda s: s.downstream_spend if s.upstream else None,
    ),
    (
        GaugeMetricFamily,
        "fourmica_cost_per_fulfilled_request_atomic",
        "floor(downstream paid spend / the seller's fulfilled paid requests), atomic units",
        lambda s: s.cost_per_fulfilled if s.upstream else None,
    ),
]

_ASSET: list[tuple[Family, str, str, Callable[[AssetSignals], Value]]] = [
    (
        CounterMetricFamily,
        "fourmica_cycles_closed",
        "Clearing cycles closed (closed, resolved or final)",
        lambda a: a.cycles,
    ),
    (
        CounterMetricFamily,
        "fourmica_cycle_guarantees",
        "Guarantees netted in closed cycles",
        lambda a: a.guarantees,
    ),
    (
        CounterMetricFamily,
        "fourmica_cycle_gross_atomic",
        "Gross amount netted in closed cycles, atomic units",
        lambda a: a.gross,
    ),
    (
        GaugeMetricFamily,
        "fourmica_net_debit_paid_ratio",
        "Settlement success rate: net debits of final cycles paid by their debtors in time / "
        "all net debits of final cycles",
        lambda a: a.paid_ratio,
    ),
    (
        CounterMetricFamily,
        "fourmica_defaulted_positions",
        "Net debits of final cycles not paid in full in time",
        lambda a: a.defaulted,
    ),
    (
        CounterMetricFamily,
        "fourmica_defaulted_atomic",
        "What those positions left unpaid at the deadline (covered + shortfall), atomic units",
        lambda a: a.defaulted_amount,
    ),
    (
        GaugeMetricFamily,
        "fourmica_cycle_unclaimed_atomic",
        "Σ (collected − claimed) of closed cycles, rounding dust included, atomic units",
        lambda a: a.unclaimed,
    ),
]


def _family(
    kind: Family, name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], Value]]
) -> Metric:
    family = kind(name, doc, labels=labels)
    for values, value in rows:
        if value is not None:
            family.add_metric(values, value)
    return family


def families(signals: Signals) -> Iterator[Metric]:
    """The metric families of ``signals`` (docs/operations.md, "Monitoring signals")."""
    sellers = [([s.network, s.asset, s.seller], s) for s in signals.sellers]
    assets = [([a.network, a.asset], a) for a in signals.assets]
    per_network: dict[str, int] = {}
    for s in signals.sellers:
        per_network[s.network] = per_network.get(s.network, 0) + s.guarantees
    yield _family(  # every seller's, per network: the name and labels of earlier releases
        CounterMetricFamily,
        "fourmica_guarantees_accepted",
        "Guarantees the Core accepted, whatever became of them (database)",
        ["network"],
        (([network], count) for network, count in sorted(per_network.items())),
    )
    for kind, name, doc, get in _SELLER:
        yield _family(kind, name, doc, SELLER_LABELS, ((k, get(s)) for k, s in sellers))
    amounts = SummaryMetricFamily(
        "fourmica_payment_amount_atomic",
        "The seller's accepted guarantees: _count of them, _sum of their amounts (atomic units)",
        labels=SELLER_LABELS,
    )
    per_payer = SummaryMetricFamily(
        "fourmica_cycle_guarantees_per_payer",
        "Closed cycles: _count of (cycle, payer) pairs paying the seller, _sum of their guarantees",
        labels=SELLER_LABELS,
    )
    for labels, s in sellers:
        amounts.add_metric(labels, s.guarantees, s.amount)
        per_payer.add_metric(labels, s.cycle_payers, s.cycle_guarantees)
    yield amounts
    yield per_payer
    for kind, name, doc, of in _ASSET:
        yield _family(kind, name, doc, ASSET_LABELS, ((k, of(a)) for k, a in assets))
    debits = CounterMetricFamily(
        "fourmica_net_debit_atomic",
        "Net debits of final cycles by outcome: paid in time, covered from collateral, "
        "shortfall (atomic units)",
        labels=[*ASSET_LABELS, "outcome"],
    )
    for labels, a in assets:
        for outcome, value in (
            ("paid", a.paid),
            ("covered", a.covered),
            ("shortfall", a.shortfall),
        ):
            debits.add_metric([*labels, outcome], value)
    yield debits


class SignalsCollector(Collector):
    """A Prometheus collector reading :meth:`Core.signals` at each scrape (no state of its own)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        yield from families(self.core.signals())


class RefusalCounter(Collector):
    """An ``on_failure`` hook counting the payments this process refused, by reason.

    Per process: each gate counts its own, so sum the series of every process. ``then`` is
    the seller's own hook, called after counting (its result is returned, awaitable or not).
    At most ``max_reasons`` distinct reasons are kept; more are counted as ``other``.
    """

    def __init__(self, then: Callable[..., Any] | None = None, *, max_reasons: int = 64) -> None:
        self.then = then
        self.max_reasons = max_reasons
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, request: Any, error: Any) -> Any:
        reason = str(getattr(error, "reason", None) or "unknown")
        with self._lock:
            if reason not in self._counts and len(self._counts) >= self.max_reasons:
                reason = "other"
            self._counts[reason] = self._counts.get(reason, 0) + 1
        return None if self.then is None else self.then(request, error)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "fourmica_invalid_payments",
            "Payments this process refused, by reason (per process)",
            labels=["reason"],
        )
        for reason, count in sorted(self.counts().items()):
            family.add_metric([reason], count)
        yield family


def exposition(core: Core, extra: Sequence[Collector] = ()) -> bytes:
    """The signals of ``core`` (and of the ``extra`` collectors) in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in (SignalsCollector(core), *extra):
        registry.register(collector)
    return bytes(generate_latest(registry))
