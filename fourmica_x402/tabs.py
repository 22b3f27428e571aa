"""The seller's tab endpoint guard: for which payTo it opens tabs, and how many new ones.

Anyone may call ``POST <prefix>/tab``, and each new ``(userAddress, payTo, network, asset,
version)`` writes a tab row, so the endpoint limits *new* tabs (docs/operations.md, "The
tab endpoint"); reusing the buyer's open tab is never counted nor refused:

- per client address (an IPv6 one by its /64) and per ``userAddress``:
  ``tab_rate_per_client`` / ``tab_rate_per_user`` new tabs per ``tab_rate_window``
  (in-process, sliding window), then 429 ``tab_rate_limited`` with Retry-After;
- per seller address: ``max_open_tabs`` unexpired tabs, then 429 ``open_tab_limit``.

With the embedded Core the checks run inside the Core's tab transaction, only when a new
tab is about to be written (:meth:`Core.open_tab`'s ``admit_new`` and ``max_open_tabs``),
so they are exact. With a remote facilitator they run here, before calling it: a tab this
process opened (and that has not expired) is known to be a reuse; any other is treated as
new (a tab opened by another process or before a restart counts once more), and the cap
counts the tabs this process opened.

Recipients: a static payTo of the route table (or the configured ``pay_to``), or an
address a payTo callable chose for a challenge this gate served (remembered, bounded).
A recipient the buyer names is never trusted by itself.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from functools import partial
from typing import TYPE_CHECKING, Any

from . import coreapi
from .errors import Reason, TabLimited

if TYPE_CHECKING:
    from .config import PaymentConfig
    from .core.models import Tab
    from .facilitator import Facilitator
    from .routes import RouteTable

__all__ = ["Admission", "NewTabLimits", "TabGuard"]

#: payTo addresses remembered from challenges (a payTo callable's choices).
ADVERTISED_LIMIT = 10_000
#: Rate-limit keys (client addresses, buyers) tracked at most; idle ones go first.
_KEYS_LIMIT = 100_000
#: Tabs remembered (remote facilitator) to tell a reuse from a new tab.
_KNOWN_LIMIT = 200_000
#: A tab this close to its expiry may be replaced by a new one: counted as new.
_EXPIRY_MARGIN = 5.0

TabKey = tuple[str, str, str, str, int]  # user, recipient, network, asset, version


class RecentAddresses:
    """A bounded set of addresses; the least recently added are forgotten first."""

    def __init__(self, limit: int = ADVERTISED_LIMIT) -> None:
        self._limit = limit
        self._items: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, address: str) -> None:
        with self._lock:
            if address in self._items:
                self._items.move_to_end(address)
                return
            self._items[address] = None
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def __contains__(self, address: object) -> bool:
        return address in self._items

    def __len__(self) -> int:
        return len(self._items)


class _Recipients:
    """The payTo addresses the tab endpoint opens tabs for (a container)."""

    __slots__ = ("_advertised", "_static")

    def __init__(self, static: frozenset[str], advertised: RecentAddresses) -> None:
        self._static, self._advertised = static, advertised

    def __contains__(self, address: object) -> bool:
        return address in self._static or address in self._advertised


class _Window:
    """New tabs per key in a sliding window (in-process, bounded memory)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._hits: dict[Hashable, list[float]] = {}
        self._lock = threading.Lock()

    def take(self, limits: list[tuple[Hashable, int, str]]) -> float:
        """Count one new tab against every ``(key, limit, what)``; returns the stamp to give
        back. Raises :class:`TabLimited` (counting nothing) when a key is at its limit."""
        now = time.monotonic()
        cutoff = now - self.window
        with self._lock:
            refused: tuple[float, int, str] | None = None
            for key, limit, what in limits:
                hits = self._hits.get(key)
                if hits:
                    while hits and hits[0] <= cutoff:
                        hits.pop(0)
                    if len(hits) >= limit:
                        wait = hits[0] + self.window - now
                        if refused is None or wait > refused[0]:
                            refused = (wait, limit, what)
            if refused is not None:
                wait, limit, what = refused
                raise TabLimited(
                    f"too many new tabs {what} (at most {limit} per {self.window:g} s); slow down",
                    reason=Reason.TAB_RATE_LIMITED,
                    retry_after=wait,
                )
            if len(self._hits) >= _KEYS_LIMIT:
                self._prune(cutoff)
            for key, _, _ in limits:
                self._hits.setdefault(key, []).append(now)
        return now

    def give_back(self, keys: list[Hashable], stamp: float) -> None:
        """Uncount a new tab that was not made after all (a reuse, or a failure)."""
        with self._lock:
            for key in keys:
                hits = self._hits.get(key)
                if hits and stamp in hits:
                    hits.remove(stamp)

    def _prune(self, cutoff: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= cutoff]:
            del self._hits[key]
        excess = len(self._hits) - _KEYS_LIMIT * 9 // 10
        for key in list(self._hits)[: max(excess, 0)]:  # still full: the oldest keys go
            del self._hits[key]


class _KnownTabs:
    """Tabs opened through a remote facilitator, per recipient: key → expiry (unix time)."""

    def __init__(self, limit: int = _KNOWN_LIMIT) -> None:
        self._limit = limit
        self._by_recipient: dict[str, dict[TabKey, float]] = {}
        self._size = 0
        self._lock = threading.Lock()

    def fresh(self, key: TabKey, now: float) -> bool:
        expires = self._by_recipient.get(key[1], {}).get(key)
        return expires is not None and now + _EXPIRY_MARGIN < expires

    def reserve(self, key: TabKey, now: float, expires: float, cap: int | None) -> None:
        """Count a new tab for ``key``'s recipient; TabLimited when its cap is reached."""
        with self._lock:
            tabs = self._by_recipient.setdefault(key[1], {})
            if cap is not None and len(tabs) >= cap:
                self._drop(tabs, [k for k, e in tabs.items() if e < now])
                if len(tabs) >= cap and key not in tabs:
                    frees_at = min(tabs.values())
                    raise TabLimited(
                        f"this seller has {len(tabs)} open tabs (the cap is {cap}); "
                        "no new tab until one expires",
                        reason=Reason.OPEN_TAB_LIMIT,
                        retry_after=frees_at - now + 1,
                    )
            if key not in tabs:
                self._size += 1
            tabs[key] = expires
            if self._size > self._limit:
                self._evict(now)

    def settle(self, key: TabKey, expires: float) -> None:
        with self._lock:
            tabs = self._by_recipient.setdefault(key[1], {})
            if key not in tabs:
                self._size += 1
            tabs[key] = expires

    def forget(self, key: TabKey) -> None:
        with self._lock:
            tabs = self._by_recipient.get(key[1])
            if tabs is not None and key in tabs:
                self._drop(tabs, [key])

    def _drop(self, tabs: dict[TabKey, float], keys: list[TabKey]) -> None:
        for k in keys:
            del tabs[k]
        self._size -= len(keys)

    def _evict(self, now: float) -> None:
        for tabs in self._by_recipient.values():
            self._drop(tabs, [k for k, e in tabs.items() if e < now])
        for recipient in [r for r, tabs in self._by_recipient.items() if not tabs]:
            del self._by_recipient[recipient]
        for tabs in list(self._by_recipient.values()):  # still full: the oldest go
            while tabs and self._size > self._limit * 9 // 10:
                self._drop(tabs, [next(iter(tabs))])


def _sender(client: str) -> str | None:
    """The client a new tab counts against: an IPv6 address by its /64, which one host or
    site holds whole (fresh addresses in it are no new clients), as the throttle counts it
    (docs/operations.md, "The tab endpoint")."""
    from .gate.throttle import Throttle

    return Throttle.sender(client)


class NewTabLimits:
    """The service's limits on *new* tabs (docs/operations.md, "The service's tab calls"):
    ``per_user`` per ``userAddress``, and ``per_client`` per client address for callers
    without a key (a seller with a key opens tabs for all its buyers). Each key has per-buyer
    budgets of its own, so keyless callers cannot spend a keyed seller's."""

    def __init__(self, per_user: int = 10, per_client: int = 600, window: float = 60.0) -> None:
        self.per_user, self.per_client = per_user, per_client
        self._window = _Window(window)

    def admit(self, user: str, client: str | None, keyed: str | None) -> Admission:
        """The ``admit_new`` of one :meth:`Core.open_tab` call: raises :class:`TabLimited`
        (429). ``keyed``: the address the caller's key acts for ("" the operator's), None
        without. The caller ends it (:meth:`Admission.end`) once the call is over."""
        limits: list[tuple[Hashable, int, str]] = [
            (("user", user.lower(), keyed), self.per_user, "for this userAddress")
        ]
        if client and keyed is None:
            limits.append((("client", _sender(client)), self.per_client, "from this client"))
        return Admission(self._window, limits)


class Admission:
    """One tab call's claim on the service's budgets of new tabs: counted once, however often
    the Core tries, and given back unless the call opened the tab. On PostgreSQL another
    process may open the same tab first: the Core then reuses it, and a reused tab is never
    counted (docs/operations.md, "The service's tab calls")."""

    def __init__(self, window: _Window, limits: list[tuple[Hashable, int, str]]) -> None:
        self._window, self._limits = window, limits
        self._stamp: float | None = None

    def __call__(self) -> None:
        if self._stamp is None:
            self._stamp = self._window.take(self._limits)

    def end(self, opened: bool) -> None:
        """The call is over; ``opened``: it made a new tab (request id 0), which stays counted."""
        stamp, self._stamp = self._stamp, None
        if stamp is not None and not opened:
            self._window.give_back([key for key, _, _ in self._limits], stamp)


class TabGuard:
    """What the gate's tab endpoint checks before a tab is opened (see the module doc)."""

    def __init__(self, config: PaymentConfig, routes: RouteTable) -> None:
        self._config, self._routes = config, routes
        self._window = _Window(config.tab_rate_window)
        self._advertised = RecentAddresses()
        self._known = _KnownTabs()
        self._static: tuple[tuple[int, int], frozenset[str]] | None = None

    def advertised(self, pay_to: str) -> None:
        """Remember a payTo a callable chose for a challenge: buyers may open tabs for it."""
        self._advertised.add(pay_to)

    def recipients(self) -> _Recipients:
        """The payTo addresses a tab may be opened for, right now."""
        routes = self._routes.routes  # new terms bump the table's version (``add_route``)
        markers = self._routes.marker_pay_to  # only ever added to
        size = (self._routes.version, len(markers))
        static = self._static
        if static is None or static[0] != size:
            found = {
                offer.pay_to
                for route in routes
                for offer in route.offers
                if isinstance(offer.pay_to, str)
            }
            found |= markers
            if isinstance(self._config.pay_to, str):
                found.add(self._config.pay_to)
            static = self._static = (size, frozenset(found))
        return _Recipients(static[1], self._advertised)

    def handle(
        self, facilitator: Facilitator, client: str | None, body: Any
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        """``POST <tabEndpoint>``: ``(status, json, extra headers)``."""
        try:
            status, data = coreapi.tab_endpoint(
                partial(self.open_tab, facilitator, client=client),
                body,
                allowed_pay_to=self.recipients(),
                tab_ttl=self._config.tab_ttl_seconds,
            )
        except TabLimited as exc:
            return exc.status, {"error": exc.message, "reason": exc.reason}, exc.headers()
        return status, data, []

    def _limits(self, client: str | None, user: str) -> list[tuple[Hashable, int, str]]:
        config = self._config
        limits: list[tuple[Hashable, int, str]] = []
        if client and config.tab_rate_per_client is not None:
            per_client = config.tab_rate_per_client
            limits.append((("client", _sender(client)), per_client, "from this client"))
        if config.tab_rate_per_user is not None:
            limits.append((("user", user), config.tab_rate_per_user, "for this userAddress"))
        return limits

    def open_tab(
        self,
        facilitator: Facilitator,
        *,
        client: str | None,
        user: str,
        recipient: str,
        network: str,
        asset: str,
        guarantee_version: int,
        ttl_seconds: int | None = None,
    ) -> Tab:
        """The buyer's tab: the open one reused, else a new one if the limits allow."""
        from .facilitator import LocalFacilitator

        limits = self._limits(client, user)
        keys = [key for key, _, _ in limits]
        if isinstance(facilitator, LocalFacilitator):
            taken: list[float] = []

            def admit() -> None:  # inside the Core's transaction, for a new tab only
                if not taken and limits:
                    taken.append(self._window.take(limits))

            try:
                tab = facilitator.core.open_tab(
                    user,
                    recipient,
                    network=network,
                    asset=asset,
                    guarantee_version=guarantee_version,
                    ttl_seconds=ttl_seconds,
                    max_open_tabs=self._config.max_open_tabs,
                    admit_new=admit,
                )
            except BaseException:
                for stamp in taken:
                    self._window.give_back(keys, stamp)
                raise
            if tab.next_req_id != 0:  # another process opened it first: a reuse after all
                for stamp in taken:
                    self._window.give_back(keys, stamp)
            return tab
        return self._open_remote(
            facilitator, limits, (user, recipient, network, asset, guarantee_version), ttl_seconds
        )

    def _open_remote(
        self,
        facilitator: Facilitator,
        limits: list[tuple[Hashable, int, str]],
        key: TabKey,
        ttl_seconds: int | None,
    ) -> Tab:
        user, recipient, network, asset, version = key

        def call() -> Tab:
            return facilitator.open_tab(
                user=user,
                recipient=recipient,
                network=network,
                asset=asset,
                guarantee_version=version,
                ttl_seconds=ttl_seconds,
            )

        now = time.time()
        if self._known.fresh(key, now):  # a reuse of a tab this process opened
            tab = call()
            self._known.settle(key, tab.start_timestamp + tab.ttl_seconds)
            return tab
        self._known.reserve(key, now, now + (ttl_seconds or 86_400), self._config.max_open_tabs)
        keys = [k for k, _, _ in limits]
        try:
            stamp = self._window.take(limits) if limits else None
        except TabLimited:
            self._known.forget(key)
            raise
        try:
            tab = call()
        except BaseException:
            self._known.forget(key)
            if stamp is not None:
                self._window.give_back(keys, stamp)
            raise
        if tab.next_req_id != 0 and stamp is not None:  # a reuse this process did not know of
            self._window.give_back(keys, stamp)
        self._known.settle(key, tab.start_timestamp + tab.ttl_seconds)
        return tab
