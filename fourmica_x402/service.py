"""``fourmica_x402.service``: the Core as an HTTP service (facilitator API, Core API subset,
sandbox API, metrics, webhooks, dashboard).

It is a Starlette app, so ``create_app`` lives in ``fourmica_x402.adapters.service`` (the core
package never imports a web framework); this module hands it out on first use, with the
framework-neutral names of :mod:`fourmica_x402.server` (``render_dashboard``, ``Metrics``,
``MAX_TAB_TTL``):

    from fourmica_x402.service import create_app
    app = create_app(Core("sqlite:///core.db"), sandbox=True)
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("render_dashboard", "Metrics", "MAX_TAB_TTL"):
        return getattr(importlib.import_module("fourmica_x402.server"), name)
    return getattr(importlib.import_module("fourmica_x402.adapters.service"), name)
