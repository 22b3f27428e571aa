"""The state every handler shares: the Core, its facilitator, webhooks, metrics and keys."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from fourmica_x402._urls import check_public_url
from fourmica_x402.alerts import AlertChecker
from fourmica_x402.core import AlertRules, Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.facilitator import LocalFacilitator
from fourmica_x402.networks import get_network
from fourmica_x402.tabs import NewTabLimits
from fourmica_x402.webhooks import Webhooks

from .auth import Keys
from .base import Call, check_host_name, host_name
from .metrics import Metrics
from .signin import SignIn

_log = logging.getLogger("fourmica_x402.service")

__all__ = ["Service"]


class Service:
    """One service over ``core`` (see ``fourmica_x402.adapters.service.create_app``).

    ``network`` is the default for calls that name none; ``public_url`` the origin handed out
    in URLs (``/core/public-params``) instead of the one a request reached. ``alerts``: the
    database alert rules this service checks every ``alerts.interval`` seconds
    (docs/operations.md, "Alerts"); the invalid-payment rules are the seller gates'.
    """

    def __init__(
        self,
        core: Core,
        *,
        sandbox: bool = False,
        api_key: str | None = None,
        seller_keys: Mapping[str, str] | None = None,
        network: str = "eip155:84532",
        public_url: str | None = None,
        webhooks: bool = True,
        alerts: AlertRules | None = None,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.core = core
        self.sandbox = sandbox
        self.network = network
        if public_url is not None:
            try:
                check_public_url(public_url)
            except ValueError as exc:
                raise ConfigurationError(f"public_url {exc}") from None
        self.public_url = public_url
        self.facilitator = LocalFacilitator(core)
        self.hooks = Webhooks(core) if webhooks else None
        self.metrics = Metrics(core)
        self.chain_id = get_network(network).chain_id
        self.keys = Keys(api_key, seller_keys, sandbox=sandbox)
        self.sign_in = SignIn()
        #: Without the operator's key nothing but the network guards the sandbox, the webhook
        #: admin and the reads (seller keys guard only refunds, scores and settles): a browser's
        #: request is taken only when addressed to one of these names (``allowed_hosts``, the
        #: ``public_url``'s), a loopback name or an IP address (a DNS name rebound to the
        #: service is none of them).
        try:
            allowed = [check_host_name(name) for name in allowed_hosts]
        except ValueError as exc:
            raise ConfigurationError(f"allowed host {exc}") from None
        self.browser_hosts: frozenset[str] | None = None
        if not api_key:
            named = urlsplit(public_url).hostname if public_url else None
            self.browser_hosts = frozenset(allowed + [host_name(n) for n in filter(None, [named])])
        self.new_tabs = NewTabLimits()
        self.alert_checker = None
        if alerts is not None and alerts.database_rules:
            self.alert_checker = AlertChecker(core, alerts)
        if alerts is not None and alerts.payment_rules:
            logging.getLogger("fourmica_x402.alerts").warning(
                "alerts: %s are counted by each seller gate, not by the service",
                ", ".join(alerts.payment_rules),
            )

    def origin(self, call: Call) -> str:
        return self.public_url or call.origin

    async def tick_forever(self, interval: float) -> None:
        """Drive cycles and timeouts every ``interval`` seconds until cancelled. A failing
        tick is logged (the first, then once a minute while it keeps failing) and retried."""
        failing, logged = 0, -math.inf
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.core.tick)
            except Exception:
                failing += 1
                if time.monotonic() - logged >= 60:
                    logged = time.monotonic()
                    _log.exception("cycle tick failed (%d in a row); retrying", failing)
            else:
                if failing:
                    _log.warning("cycle tick works again after %d failures", failing)
                failing = 0

    async def check_alerts_forever(self) -> None:
        """Check the database alert rules every ``interval`` seconds until cancelled."""
        checker = self.alert_checker
        if checker is None:
            return
        while True:
            await asyncio.sleep(checker.rules.interval)
            await asyncio.to_thread(checker.check)  # logs a failure; the next round retries
