"""``PaymentConfig``: the one configuration object every adapter maps onto.

Keyword-only, with documented defaults, validated when built: a bad price,
address or network fails at start-up with a message saying what to fix.

    payments = PaymentConfig(
        pay_to="0xYourSellerAddress",
        network="eip155:84532",
        routes={"GET /premium": "$0.01"},
    )
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from ._eth import parse_payee
from ._urls import check_http_url, check_public_url, safe_url
from .errors import ConfigurationError
from .guarantee import ValidationPolicy
from .networks import get_network

if TYPE_CHECKING:
    from .core import AlertRules, Core
    from .facilitator import Facilitator
    from .records import Records

__all__ = ["DEFAULT_DB", "PaymentConfig", "config_options"]

#: Where the embedded Core keeps its data when nothing else is configured.
DEFAULT_DB = "sqlite:///fourmica_x402.db"


def _default_db() -> str:
    """``FOURMICA_X402_DB`` when set (as the CLI and the examples read it), else DEFAULT_DB."""
    return os.environ.get("FOURMICA_X402_DB", "").strip() or DEFAULT_DB


Hook = Callable[..., Any]


#: The fields that may hold a URL, and with it a password (a database URL's ``user:secret@``).
_URL_FIELDS = ("core", "records", "tab_endpoint", "public_url")


#: Options of a plain kind: a wrong one is named when the config is built (not a TypeError
#: on the first request). ``(name, may be None)``.
_SECONDS = ("throttle_window", "tab_rate_window")
_SECONDS_OR_NONE = ("completion_window", "price_poll")
_WHOLE = (("throttle_failures", False), ("replay_body_limit", False), ("tab_ttl_seconds", True))
_FLAGS = ("refund_on_error", "idempotent_replay", "delivery_policy", "paywall", "discovery")


def _check_kinds(config: PaymentConfig) -> None:
    def number(value: Any) -> bool:  # a real, finite, non-negative number (not a bool)
        return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value < 1e12

    for name in _SECONDS:
        if not number(getattr(config, name)):
            raise ConfigurationError(f"{name} must be a number of seconds")
    for name in _SECONDS_OR_NONE:
        if getattr(config, name) is not None and not number(getattr(config, name)):
            raise ConfigurationError(f"{name} must be a number of seconds, or None")
    for name, optional in _WHOLE:  # 3600.0 is 3600
        value = getattr(config, name)
        if optional and value is None:
            continue
        if not number(value) or value != int(value):
            raise ConfigurationError(f"{name} must be a whole number" + (", or None" * optional))
        setattr(config, name, int(value))
    for name in _FLAGS:  # 0 and 1 read as False and True
        if not isinstance(getattr(config, name), int):
            raise ConfigurationError(f"{name} must be True or False")
    config.routes = {} if config.routes is None else config.routes
    if not isinstance(config.routes, Mapping):
        raise ConfigurationError("routes must be a mapping: {'GET /premium': '$0.01', ...}")
    for name in ("core", "records"):  # None: the default (or, for core, a facilitator's)
        value = getattr(config, name)
        if isinstance(value, os.PathLike):
            setattr(config, name, value := os.fspath(value))
        if value is not None and not (isinstance(value, str) or hasattr(value, "store")):
            raise ConfigurationError(f"{name} must be a database URL or a {name.title()} object")


@dataclass(kw_only=True, repr=False)
class PaymentConfig:
    """Everything the payment gate needs. Only ``routes`` (and a ``pay_to``) are required."""

    #: Priced routes: ``{"GET /premium": "$0.01", …}`` or the official 4Mica route dict.
    routes: Mapping[str, Any] = field(default_factory=dict)
    #: Default seller address (``payTo``); an address or a callable of the request.
    pay_to: str | Callable[..., Any] | None = None
    #: Default network (CAIP-2).
    network: str = "eip155:84532"
    #: Default asset (token address); None = the network's USDC.
    asset: str | None = None
    #: The embedded Core: a database URL or a ``Core``. Ignored when ``facilitator`` is set.
    #: By default ``FOURMICA_X402_DB`` when set (the CLI's ``--db`` reads it too), else DEFAULT_DB.
    core: str | Core = field(default_factory=_default_db)
    #: A remote facilitator (``HttpFacilitator``) or any ``Facilitator``; None = the embedded Core.
    facilitator: Facilitator | None = None
    #: Payment records: a database URL or ``Records``; None = the embedded Core's database.
    records: str | Records | None = None
    #: Where the tab endpoint and the Core API subset are mounted (embedded mode).
    prefix: str = "/x402"
    #: An absolute tab endpoint URL to advertise verbatim (served at its path); None =
    #: ``<origin><prefix>/tab``. The official package's ``tab_endpoint`` maps here.
    tab_endpoint: str | None = None
    #: The public origin buyers reach this app at (``https://api.example.com``), when it is
    #: behind a proxy; None = taken from each request's scheme and Host header.
    public_url: str | None = None
    #: ``"before"``: the Core locks the payment before the handler runs (default).
    #: ``"after"``: verify first, settle only after a successful handler (cheap deterministic work).
    settle: Literal["before", "after"] = "before"
    #: Void the guarantee (the buyer pays nothing) when the response is not delivered: the
    #: handler raises or answers other than 2xx (docs/protocol.md, "Delivery").
    refund_on_error: bool = True
    #: Answer a replayed payment header from its record (no second lock, no second handler run).
    idempotent_replay: bool = False
    #: Largest response body kept for idempotent replay (bytes); bigger ones are not replayable.
    replay_body_limit: int = 256 * 1024
    #: Advertise the default G-v2 delivery policy in v2 challenges (docs/protocol.md, "Delivery").
    delivery_policy: bool = True
    #: A seller-chosen G-v2 validation policy for every route (overrides the delivery policy).
    validation_policy: ValidationPolicy | None = None
    #: Invalid payments allowed per client address (and per payer) per window before 429.
    throttle_failures: int = 20
    throttle_window: float = 60.0
    #: Serve a small HTML paywall page to browsers (Accept: text/html).
    paywall: bool = True
    #: Answer ``GET /.well-known/x402`` with the priced routes and their payment requirements
    #: (docs/protocol.md, "Discovery"); False: that path goes to the app like any other.
    discovery: bool = True
    #: Bearer token for ``<prefix>/metrics`` (the monitoring signals, docs/operations.md);
    #: None = ``FOURMICA_X402_METRICS_TOKEN``, and without either the path answers 404.
    metrics_token: str | None = field(default=None, repr=False)
    #: Bearer token for ``<prefix>/admin/prices`` (run-time repricing, docs/operations.md,
    #: "Repricing"); None = ``FOURMICA_X402_ADMIN_TOKEN``, and without either it answers 404.
    admin_token: str | None = field(default=None, repr=False)
    #: How often (seconds) a gate reads the shared price book for prices set by another
    #: process or ``fourmica-x402 reprice``; None = never (prices set here still apply here).
    price_poll: float | None = 1.0
    #: maxTimeoutSeconds advertised in requirements, for a route or offer that names none.
    max_timeout_seconds: int = 300
    #: TTL of tabs opened through the tab endpoint (None = the Core's default, one day).
    tab_ttl_seconds: int | None = None
    #: New tabs the tab endpoint opens per ``tab_rate_window`` for one client address, and
    #: for one buyer (``userAddress``); beyond them it answers 429 ``tab_rate_limited`` with
    #: Retry-After. Reusing the buyer's open tab never counts. None = no limit. See
    #: docs/operations.md, "The tab endpoint".
    tab_rate_per_client: int | None = 60
    tab_rate_per_user: int | None = 10
    tab_rate_window: float = 60.0
    #: Open (unexpired) tabs allowed per seller address (payTo); beyond it a *new* tab answers
    #: 429 ``open_tab_limit`` (an open tab is still reused). None = no cap.
    max_open_tabs: int | None = 100_000
    #: Seconds a paid request's completion (delivery marker, response hash, delivery score or
    #: refund) may wait after the response to be committed with a later write of this process,
    #: in one batch (docs/architecture.md, "Completion off the request path"). None: commit it
    #: as the response ends, on the request's own time.
    completion_window: float | None = 0.005
    #: Alert rules (docs/operations.md, "Alerts"): invalid-payment spikes counted by this gate,
    #: and the database rules checked every ``interval`` seconds on the embedded Core; each
    #: firing is an ``alert.fired`` event (webhooks) and a log line. None: no alerts.
    alerts: AlertRules | None = None
    #: Hooks (sync or async): docs/operations.md, "Seller options and hooks".
    on_protected_request: Hook | None = None
    before_settle: Hook | None = None
    after_settle: Hook | None = None
    on_failure: Hook | None = None
    after_delivery: Hook | None = None

    def __post_init__(self) -> None:
        _check_kinds(self)
        get_network(self.network)
        if isinstance(self.pay_to, str):
            try:
                self.pay_to = parse_payee(self.pay_to)
            except ValueError as exc:
                raise ConfigurationError(f"pay_to: {exc}") from None
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigurationError(
                "prefix must start with '/' and not end with one, e.g. '/x402'"
            )
        if self.settle not in ("before", "after"):
            raise ConfigurationError("settle must be 'before' or 'after'")
        if self.public_url is not None:
            self.public_url = self.public_url.rstrip("/")
            if not self.public_url.startswith(("http://", "https://")):
                raise ConfigurationError("public_url must be an absolute http(s) URL")
            try:  # every challenge hands it out, paths appended (docs/operations.md, "Keys")
                check_public_url(self.public_url)
                check_http_url(self.public_url)
            except ValueError as exc:
                raise ConfigurationError(f"public_url {exc}") from None
        if self.tab_endpoint is not None:  # advertised verbatim: a buyer must reach it
            try:
                parts = check_http_url(self.tab_endpoint)
            except ValueError as exc:
                message = f"tab_endpoint must be an absolute http(s) URL: {exc}"
                raise ConfigurationError(message) from None
            if "@" in parts.netloc:  # every challenge hands it out (docs/operations.md)
                shown = f"{safe_url(self.tab_endpoint)!r:.80}"
                raise ConfigurationError(f"tab_endpoint {shown} carries credentials")
        seconds = self.max_timeout_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 < seconds <= 86_400:
            raise ConfigurationError("max_timeout_seconds must be a whole number 1..86400")
        if self.completion_window is not None and not 0 <= self.completion_window <= 60:
            raise ConfigurationError("completion_window must be None or 0..60 seconds")
        if self.throttle_failures < 1 or self.throttle_window <= 0:
            raise ConfigurationError("throttle_failures must be ≥ 1 and throttle_window > 0")
        for name in ("tab_rate_per_client", "tab_rate_per_user", "max_open_tabs"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{name} must be a whole number ≥ 1, or None (no limit)")
        if (
            isinstance(self.tab_rate_window, bool)
            or not isinstance(self.tab_rate_window, int | float)
            or not 0 < self.tab_rate_window <= 86_400
        ):
            raise ConfigurationError("tab_rate_window must be seconds in (0, 86400]")
        if self.alerts is not None:
            from .core.alerts import AlertRules

            if not isinstance(self.alerts, AlertRules):
                raise ConfigurationError("alerts must be an AlertRules (fourmica_x402.alerts)")
        for name in (
            "on_protected_request",
            "before_settle",
            "after_settle",
            "on_failure",
            "after_delivery",
        ):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{name} must be callable")

    def __repr__(self) -> str:
        """The dataclass repr, with no secret: the tokens left out, the password of a URL
        masked (a repr reaches debuggers and error reports; docs/operations.md, "Keys")."""
        shown = []
        for each in fields(self):
            if each.repr:
                value = getattr(self, each.name)
                if each.name in _URL_FIELDS and isinstance(value, str):
                    value = safe_url(value)
                shown.append(f"{each.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def config_options(
    settings: Mapping[str, Any], name: Callable[[str], str]
) -> tuple[dict[str, Any], list[str]]:
    """PaymentConfig options from a framework's settings, each named ``name(field)``, and the
    settings that name no field, sorted: the adapter refuses them, since a typo would otherwise
    silently leave a default (a route unpriced, say)."""
    named = {name(each.name): each.name for each in fields(PaymentConfig)}
    unknown = sorted(str(key) for key in settings if key not in named)
    return {named[key]: value for key, value in settings.items() if key in named}, unknown
