"""The Core's HTTP face as framework-neutral handlers (docs/protocol.md, "Endpoints").

Each handler is ``handler(service, call) -> (status, json)`` (a :class:`Page` for HTML and
text); :mod:`fourmica_x402.adapters.service` mounts them on a Starlette app. Nothing here
imports a web framework, in step with the gate (docs/architecture.md), so another adapter can
mount the same handlers. One module per area:

- :mod:`.facilitator` — ``/supported``, ``/health``, ``/tabs``, ``/verify``, ``/settle``;
- :mod:`.guarantees` — ``/guarantees/{gid}/void`` and ``/validation`` (a seller's refunds, scores);
- :mod:`.core_api` — ``/core/public-params``, ``/core/payment-tabs``, ``/core/guarantees``, ``/rpc``;
- :mod:`.sandbox` — ``/sandbox/*``; :mod:`.reads` — ``/api/*``; :mod:`.admin` — ``/admin/webhooks``;
- :mod:`.metrics` — ``/metrics``; :mod:`.dashboard` — ``/`` and ``/dashboard`` (its signal
  charts in :mod:`.charts`, the cells and tables of both in :mod:`.cells`);
- :mod:`.auth` — the operator's and the sellers' keys; :mod:`.base` — :class:`Call`, answers, errors;
- :mod:`.context` — :class:`Service`, the state the handlers share.
"""

from __future__ import annotations

from .auth import Keys
from .base import Call, Headed, Page, Reply, Result, parse_body
from .context import Service
from .dashboard import render_dashboard
from .facilitator import MAX_TAB_TTL, payment_args
from .metrics import Metrics

__all__ = [
    "MAX_TAB_TTL",
    "Call",
    "Headed",
    "Keys",
    "Metrics",
    "Page",
    "Reply",
    "Result",
    "Service",
    "parse_body",
    "payment_args",
    "render_dashboard",
]
