"""``GET /metrics``: the service's Prometheus metrics (prometheus_client is imported on first use,
so the package stays importable without the ``server`` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fourmica_x402.core import Core

from .base import Call, Page

if TYPE_CHECKING:
    from .context import Service

__all__ = ["Metrics", "metrics"]


class Metrics:
    """Prometheus metrics of one service (own registry, so several apps can coexist)."""

    def __init__(self, core: Core) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

        self.core = core
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "fourmica_guarantees_accepted_total",
            "Guarantees accepted",
            ["network"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "fourmica_guarantees_rejected_total",
            "Guarantees rejected",
            ["reason"],
            registry=self.registry,
        )
        self.payment = Summary(
            "fourmica_payment_amount_atomic",
            "Accepted payment amounts (atomic units)",
            registry=self.registry,
        )
        self.per_payer = Summary(
            "fourmica_cycle_guarantees_per_payer",
            "Guarantees per payer in each closed cycle",
            registry=self.registry,
        )
        self.settles = Counter(
            "fourmica_settle_total", "Settle calls", ["outcome"], registry=self.registry
        )
        self.success_rate = Gauge(
            "fourmica_settle_success_ratio",
            "Share of settle calls that succeeded",
            registry=self.registry,
        )
        self.claimable = Gauge(
            "fourmica_claimable_atomic",
            "Collected but not yet claimed (atomic units)",
            registry=self.registry,
        )
        self.defaults = Counter(
            "fourmica_defaulted_positions_total", "Net debits defaulted", registry=self.registry
        )
        self.latency = Histogram(
            "fourmica_request_seconds", "Request latency", ["path"], registry=self.registry
        )
        core.subscribe(self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.type == "guarantee.accepted":
            self.accepted.labels(event.network or "").inc()
            self.payment.observe(int(event.data.get("amount", 0)))
        elif event.type == "position.defaulted":
            self.defaults.inc()
        elif event.type == "cycle.closed":
            for count in self.core.payer_counts(int(event.data["cycle_id"])):
                self.per_payer.observe(count)

    def settled(self, success: bool, reason: str | None) -> None:
        self.settles.labels("success" if success else "failure").inc()
        if not success:
            self.rejected.labels(reason or "unknown").inc()
        ok = self.settles.labels("success")._value.get()
        total = ok + self.settles.labels("failure")._value.get()
        self.success_rate.set(ok / total if total else 0.0)

    def observe(self, path: str, seconds: float) -> None:
        """One request's latency, labelled by the first segment of its path ("root" for ``/``)."""
        self.latency.labels(path.split("/")[1] or "root").observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        self.claimable.set(sum(c.collected - c.claimed for c in self.core.cycles(limit=10_000)))
        return bytes(generate_latest(self.registry))


def metrics(service: Service, call: Call) -> Page:
    """``GET /metrics`` in Prometheus' text exposition format."""
    return Page(service.metrics.render(), "text/plain; version=0.0.4")
