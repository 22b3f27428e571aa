"""The buyer's spending policy: what an agent may pay, to whom, and how much in all.

Checked **before** anything is signed. Caps are human prices (``"$0.05"``) or
integers of atomic units; they are converted with the asset's decimals when a
payment is considered. Budgets are *reserved* under a lock when a payment is
approved and released if it fails, so many concurrent requests can never spend
the same budget twice.

    policy = SpendingPolicy(max_per_request="$0.05", per_hour="$2", blocked_sellers={"0xBad…"})
    with policy.task("research", budget="$1"):
        client.get("https://api.example.com/premium")

Given a :class:`~.receipts.ReceiptLedger` file (``ledger=``), the spending is kept there:
a restarted agent finds what it spent, and processes sharing the file reserve in one SQLite
write transaction each, so together they never pass a cap (docs/buyer.md, "Budgets").
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypeVar

from .._eth import ZERO_ADDRESS, parse_address
from ..errors import ConfigurationError
from ..networks import Asset, dollar_assets, find_asset, format_amount, to_atomic
from .budgets import Book, LedgerBook, MemoryBook

if TYPE_CHECKING:
    from .receipts import ReceiptLedger

__all__ = ["ApprovalRequest", "Decision", "SpendingPolicy", "Task"]

Money = str | int
_T = TypeVar("_T")
log = logging.getLogger("fourmica_x402.client")


@dataclass(frozen=True)
class ApprovalRequest:
    """What the approval callback is asked about."""

    seller: str
    url: str
    amount: int
    asset: str
    network: str
    reason: str  # "new_seller" | "over_threshold" | "new_seller_over_threshold"


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one payment. ``outcome`` is ``paid`` when it may go ahead."""

    outcome: str  # paid | needs_approval | blocked_seller | budget_exhausted
    detail: str = ""
    approval: ApprovalRequest | None = None
    reservation: int | None = None


@dataclass
class Task:
    """A named budget for one piece of work (``with policy.task(...)``)."""

    name: str
    budget: Money | None
    spent: dict[str, int] = field(default_factory=dict)  # asset -> atomic
    reserved: dict[str, int] = field(default_factory=dict)
    #: The task this one runs inside: its budget binds too (docs/buyer.md, "Budgets").
    parent: Task | None = field(default=None, repr=False)

    def chain(self) -> Iterator[Task]:
        """This task and the tasks it runs inside, innermost first."""
        task: Task | None = self
        while task is not None:
            yield task
            task = task.parent

    def run(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` inside this task, in the calling thread. A thread does not
        inherit the task it was started in (asyncio tasks do): give a worker its work as
        ``pool.submit(task.run, fetch, url)`` (docs/buyer.md, "Budgets")."""
        token = _current_task.set(self)
        try:
            return fn(*args, **kwargs)
        finally:
            _current_task.reset(token)


_current_task: contextvars.ContextVar[Task | None] = contextvars.ContextVar(
    "fourmica_task", default=None
)
_WINDOWS = {"per_minute": 60.0, "per_hour": 3_600.0, "per_day": 86_400.0}


class SpendingPolicy:
    """Rules an agent's payments must pass. Every cap is optional."""

    def __init__(
        self,
        *,
        max_per_request: Money | None = None,
        max_per_seller: Money | None = None,
        per_minute: Money | None = None,
        per_hour: Money | None = None,
        per_day: Money | None = None,
        allowed_sellers: set[str] | None = None,
        blocked_sellers: set[str] | None = None,
        allowed_networks: set[str] | None = None,
        allowed_assets: set[str] | None = None,
        approve: Callable[[ApprovalRequest], Any] | None = None,
        approve_new_sellers: bool = False,
        approval_threshold: Money | None = None,
        ledger: ReceiptLedger | None = None,
    ) -> None:
        """``ledger``: keep the spending in this receipts ledger (durable, shared by the
        processes that open the same file); by default it lives in this object."""
        self.max_per_request = _cap(max_per_request, "max_per_request")
        self.max_per_seller = _cap(max_per_seller, "max_per_seller")
        self.windows = {
            "per_minute": _cap(per_minute, "per_minute"),
            "per_hour": _cap(per_hour, "per_hour"),
            "per_day": _cap(per_day, "per_day"),
        }
        self.allowed_sellers = _addresses(allowed_sellers, "allowed_sellers")
        self.blocked_sellers = _addresses(blocked_sellers, "blocked_sellers") or set()
        self.allowed_networks = _names(allowed_networks, "allowed_networks")
        self.allowed_assets = _addresses(allowed_assets, "allowed_assets")
        self.approve = approve
        self.approve_new_sellers = approve_new_sellers
        self.approval_threshold = _cap(approval_threshold, "approval_threshold")
        self.ledger = ledger
        self._lock = threading.Lock()
        # Spending so far (unsettled guarantees count too): here, or in the ledger's file.
        self._book: Book = MemoryBook() if ledger is None else LedgerBook(ledger)
        # This process's reservations, for the task objects' own tallies.
        self._pending: dict[int, tuple[str, int, Task | None]] = {}
        self._approved_sellers: set[str] = set()
        self._open_tasks = 0  # tasks entered and not left: a payment outside them is told
        self._told = False

    # -- tasks -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def task(self, name: str, budget: Money | None = None) -> Iterator[Task]:
        """Spend under a named budget for the duration of the block (async-safe).

        With a ledger the budget is kept by ``name``: entering the same task again, in this
        process or after a restart, goes on spending the same budget. A task inside another
        spends from both: every budget up the chain must cover a payment."""
        task = Task(name, _cap(budget, "budget"), parent=_current_task.get())
        token = _current_task.set(task)
        with self._lock:
            self._open_tasks += 1
        try:
            yield task
        finally:
            with self._lock:
                self._open_tasks -= 1
            _current_task.reset(token)

    @staticmethod
    def current_task() -> Task | None:
        return _current_task.get()

    # -- decisions ---------------------------------------------------------------------------

    def allows(self, network: str, asset: str) -> bool:
        """Whether an offer on this network and asset may be considered at all."""
        if self.allowed_networks is not None and network not in self.allowed_networks:
            return False
        return self.allowed_assets is None or asset.lower() in self.allowed_assets

    def check(
        self,
        *,
        seller: str,
        url: str,
        amount: int,
        asset: str,
        network: str,
        approved: bool = False,
        ahead: int = 0,
    ) -> Decision:
        """Decide, and reserve the amount when the answer is ``paid``. ``ahead``: what the
        work this payment starts will still cost after it (a staged job's later stages): a
        task budget must cover it too, or nothing is paid (docs/buyer.md, "Staged work")."""
        key = seller.lower()
        token = find_asset(network, asset)
        asset = asset.lower()  # one token, whatever case a seller spells its address in
        if key in self.blocked_sellers or (
            self.allowed_sellers is not None and key not in self.allowed_sellers
        ):
            return Decision("blocked_seller", f"seller {seller} is not allowed")
        with self._lock, self._book.hold() as book:
            cap = self._atomic(self.max_per_request, token)
            if cap is not None and (amount > cap or not cap):  # 0 lets nothing through
                return Decision(
                    "budget_exhausted",
                    _uncovered(self.max_per_request, "the per-request cap", token, asset, network)
                    or f"price {_money(amount, token)} is over the per-request cap "
                    f"{_money(cap, token)}",
                )
            now = time.time()
            cap = self._atomic(self.max_per_seller, token)
            if cap is not None:
                covered = _covered(self.max_per_seller, token, asset)
                spent = _total(book.spent(0.0, covered, seller=key), covered, token)
                if spent + amount > cap or not cap:
                    what = f"the per-seller cap {_money(cap, token)}"
                    return Decision(
                        "budget_exhausted",
                        _uncovered(self.max_per_seller, "the per-seller cap", token, asset, network)
                        or _exceeded(what, spent, amount, token),
                    )
            for name, seconds in _WINDOWS.items():
                cap = self._atomic(self.windows[name], token)
                if cap is None:
                    continue
                covered = _covered(self.windows[name], token, asset)
                spent = _total(book.spent(now - seconds, covered), covered, token)
                if spent + amount > cap or not cap:
                    what = f"the {name.replace('_', ' ')} budget"
                    return Decision(
                        "budget_exhausted",
                        _uncovered(self.windows[name], what, token, asset, network)
                        or _exceeded(f"{what} {_money(cap, token)}", spent, amount, token),
                    )
            task = _current_task.get()
            if task is None and self._open_tasks and not self._told:
                self._told = True  # once: payments outside every task are allowed
                log.warning(
                    "a payment outside any task while a task of this policy is open: its "
                    "budget does not apply here (a thread does not inherit the task it was "
                    "started in; give it its work with task.run(fn, ...))"
                )
            for each in task.chain() if task is not None else ():
                refused = self._task_refuses(book, each, token, asset, amount, ahead)
                if refused is not None:
                    why = _uncovered(
                        each.budget, f"task {each.name!r} budget", token, asset, network
                    )
                    return replace(refused, detail=why) if why else refused
            if not approved:
                threshold = self._atomic(self.approval_threshold, token)
                reasons = []
                if (
                    self.approve_new_sellers
                    and key not in self._approved_sellers
                    and not book.paid_before(key)
                ):
                    reasons.append("new_seller")
                if threshold is not None and amount > threshold:
                    reasons.append("over_threshold")
                if reasons:  # both at once: one question naming both, one answer for both
                    reason = "_".join(reasons)
                    request = ApprovalRequest(seller, url, amount, asset, network, reason)
                    return Decision(
                        "needs_approval", f"approval needed: {reason}", approval=request
                    )
            if approved:
                self._approved_sellers.add(key)
            names = [each.name for each in task.chain()] if task is not None else []
            rid = book.reserve(now, key, asset, amount, names)
            self._pending[rid] = (asset, amount, task)
            for each in task.chain() if task is not None else ():
                each.reserved[asset] = each.reserved.get(asset, 0) + amount
            return Decision("paid", reservation=rid)

    def _task_refuses(
        self, book: Book, task: Task, token: Asset | None, asset: str, amount: int, ahead: int
    ) -> Decision | None:
        """Whether ``task``'s budget refuses ``amount`` (and the ``ahead`` that follows it)."""
        cap = self._atomic(task.budget, token)
        if cap is None:
            return None
        covered = _covered(task.budget, token, asset)
        by_asset = book.task_used(task.name, covered)
        if by_asset is None:  # kept in this object: the task's own tallies
            by_asset = {a: task.spent.get(a, 0) + task.reserved.get(a, 0) for a in covered}
        used = _total(by_asset, covered, token)
        if used + amount > cap or not cap:
            what = f"task {task.name!r} budget {_money(cap, token)}"
            return Decision("budget_exhausted", _exceeded(what, used, amount, token))
        if used + amount + ahead > cap:
            return Decision(
                "budget_exhausted",
                f"task {task.name!r} budget {_money(cap, token)} cannot finish "
                f"this job: {_money(ahead, token, units=False)} more comes after "
                f"this {_money(amount, token, units=False)}",
            )
        return None

    def commit(self, reservation: int) -> None:
        """The payment went through: the reservation becomes spending."""
        with self._lock:
            self._book.commit(reservation)
            entry = self._pending.pop(reservation, None)
            if entry is not None and (task := entry[2]) is not None:
                asset, amount = entry[0], entry[1]
                for each in task.chain():
                    each.reserved[asset] -= amount
                    each.spent[asset] = each.spent.get(asset, 0) + amount

    def release(self, reservation: int) -> None:
        """The payment did not happen: give the reservation back."""
        with self._lock:
            self._book.release(reservation)
            entry = self._pending.pop(reservation, None)
            if entry is not None and entry[2] is not None:
                for each in entry[2].chain():
                    each.reserved[entry[0]] -= entry[1]

    def spent(self, asset: str, *, since: float = 0.0, seller: str | None = None) -> int:
        """Atomic units of ``asset`` spent or reserved since ``since`` (unix seconds), in all
        or to one seller; with a ledger, by every process that shares it."""
        with self._lock, self._book.hold() as book:
            asset = asset.lower()
            found = book.spent(since, (asset,), seller=seller.lower() if seller else None)
            return found[asset]

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _atomic(value: Money | None, asset: Asset | None) -> int | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if asset is None:  # an unknown token: only atomic caps can apply, so refuse to guess
            return 0
        if asset not in dollar_assets() or _zero(value):  # "$0.05" is no number of WETH
            return 0
        # Rounded down to the token's units, against the buyer: a cap finer than the token
        # ("$0.0000001" of USDC) lets nothing through rather than failing the payment.
        shift = _ANY_TOKEN.decimals - asset.decimals
        return to_atomic(value, asset if shift <= 0 else _ANY_TOKEN) // 10 ** max(shift, 0)


def _uncovered(
    cap: Money | None, what: str, token: Asset | None, asset: str, network: str
) -> str | None:
    """Why a price cap refuses a token that is no dollar token ("$0.05" is no number of WETH,
    nor of an unknown token: ``_atomic`` made it 0), or None (docs/buyer.md, "Budgets")."""
    if cap is None or isinstance(cap, int) or _zero(cap) or token in dollar_assets():
        return None
    name = token.symbol if token is not None else f"the unknown token {asset}"
    price = "$" + str(cap).strip().lstrip("$")  # "0.01" and Decimal("0.01") are dollars too
    covers = f"which covers dollar tokens only: not {name} on {network}"
    return f"{what} {price} is a dollar price, {covers}"


def _exceeded(what: str, spent: int, amount: int, token: Asset | None) -> str:
    """Why a budget refuses: what is spent of it and what more was asked, not "used up"."""
    return (
        f"{what} would be exceeded ({_money(spent, token, units=False)} spent, "
        f"{_money(amount, token, units=False)} more asked)"
    )


def _covered(cap: Money | None, token: Asset | None, asset: str) -> dict[str, int | None]:
    """The assets whose spending ``cap`` counts for a payment in ``asset``, with their
    decimals. An atomic cap counts ``asset`` alone. A price cap on a dollar token counts
    every registered dollar token, on every network: a seller switching tokens or networks
    gets one budget, not one per token (docs/buyer.md, "Budgets")."""
    covered: dict[str, int | None] = {asset: None if token is None else token.decimals}
    if isinstance(cap, int) or token is None or token not in dollar_assets():
        return covered
    for peer in dollar_assets():
        covered.setdefault(peer.address.lower(), peer.decimals)
    return covered


def _total(by_asset: dict[str, int], covered: dict[str, int | None], token: Asset | None) -> int:
    """The spending of ``covered`` in atomic units of ``token``: other tokens scaled by their
    decimals, rounded up (a budget errs on the safe side)."""
    total = 0
    for asset, amount in by_asset.items():
        decimals = covered.get(asset)
        if token is None or decimals is None or decimals == token.decimals:
            total += amount
        elif decimals < token.decimals:
            total += amount * 10 ** (token.decimals - decimals)
        else:
            total += -(-amount // 10 ** (decimals - token.decimals))
    return total


def _money(amount: int, asset: Asset | None, *, units: bool = True) -> str:
    """Amounts in refusals, as people read them: ``$0.01 (10000 units)``."""
    return format_amount(amount, asset, units=units and asset is not None)


#: What a price cap is checked against when the policy is made: any number of decimals a
#: uint256 can hold (the paid token's own are checked when a payment is made).
_ANY_TOKEN = Asset("", ZERO_ADDRESS, "any token", 77)


def _cap(value: Money | None, name: str) -> Money | None:
    """A cap as given, once it is one: a price such as ``"$0.05"`` or atomic units (an int
    of at least 0). A float, a bool or other text fails here, not at the first payment."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ConfigurationError(f"{name}: {value} is below 0")
    if _zero(value):
        return value  # "$0": nothing may be spent
    try:
        to_atomic(value, _ANY_TOKEN)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc.message}") from None
    return value


def _zero(value: object) -> bool:
    """Whether a price cap is zero (``"$0"``, ``Decimal(0)``): nothing may be spent."""
    try:
        return isinstance(value, str | Decimal) and Decimal(str(value).strip().lstrip("$")) == 0
    except InvalidOperation:
        return False


def _names(values: set[str] | None, name: str) -> set[str] | None:
    """A set of names (network ids); one string would be tested as a substring."""
    if values is None:
        return None
    if isinstance(values, str):
        raise ValueError(f"{name} takes a set of network ids, not one string")
    return {str(value) for value in values}


def _addresses(values: set[str] | None, name: str) -> set[str] | None:
    """Lower-cased addresses; a value that is no address raises (a typo in a block list
    would block nothing)."""
    if values is None:
        return None
    if isinstance(values, str):
        raise ValueError(f"{name} takes a set of addresses, not one string")
    try:
        return {parse_address(v).lower() for v in values}
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
