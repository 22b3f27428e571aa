"""``GET /metrics``: the service's Prometheus metrics (prometheus_client is imported on first use,
so the package stays importable without the ``server`` extra).

The money and volume signals are computed from the database at scrape time
(:class:`fourmica_x402.signals.SignalsCollector`), so this service and every seller gate on its
database report the same values; the settle calls, refusals and latencies are this process's
own (docs/operations.md, "Monitoring signals").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fourmica_x402.core import Core

from .base import Call, Page

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import Counter

    from .context import Service

__all__ = ["Metrics", "metrics"]


class Metrics:
    """Prometheus metrics of one service (own registry, so several apps can coexist)."""

    def __init__(self, core: Core) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        from fourmica_x402.signals import SignalsCollector

        self.core = core
        self.registry = CollectorRegistry()
        self.registry.register(SignalsCollector(core))
        # What this process saw: the database keeps no refused payment.
        self.rejected = Counter(
            "fourmica_guarantees_rejected_total",
            "Guarantees this process refused at /settle, by reason (per process)",
            ["reason"],
            registry=self.registry,
        )
        self.settles = Counter(
            "fourmica_settle_total",
            "Settle calls this process answered (per process)",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(_SuccessRatio(self.settles))
        self.latency = Histogram(
            "fourmica_request_seconds", "Request latency", ["path"], registry=self.registry
        )

    def settled(self, success: bool, reason: str | None) -> None:
        self.settles.labels("success" if success else "failure").inc()
        if not success:
            self.rejected.labels(reason or "unknown").inc()

    def observe(self, path: str, seconds: float) -> None:
        """One request's latency, labelled by the first segment of its path ("root" for ``/``)."""
        self.latency.labels(path.split("/")[1] or "root").observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class _SuccessRatio:
    """``fourmica_settle_success_ratio``, computed at each scrape from the settle counter, and
    absent until the first settle (before any, 0.0 would read as every settle failing)."""

    def __init__(self, settles: Counter) -> None:
        self.settles = settles

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        ok = self.settles.labels("success")._value.get()
        total = ok + self.settles.labels("failure")._value.get()
        if total:
            yield GaugeMetricFamily(
                "fourmica_settle_success_ratio",
                "Share of this process's settle calls that succeeded (per process)",
                value=ok / total,
            )


def metrics(service: Service, call: Call) -> Page:
    """``GET /metrics`` in Prometheus' text exposition format."""
    from fourmica_x402.signals import MEDIA_TYPE

    return Page(service.metrics.render(), MEDIA_TYPE)
