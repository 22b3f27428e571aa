"""Tabs: the active tab of (user, recipient, network, asset, version) and its request ids.

A tab is reused until it is within :func:`reuse_margin` of its end (by the clock acceptance
reads, to the fraction of a second) or its running total passes :data:`REUSE_TOTAL`, and
while it started no later than now (a clock stepped back hands out a tab of its own time);
then a new one replaces it as the active tab. Only a *new* tab is subject to the seller's open-tab
cap (docs/operations.md, "The tab endpoint").
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

from .._eth import ZERO_ADDRESS
from ..errors import CoreError, Reason, TabLimited
from .common import INT64_MAX, hex_id
from .models import Tab
from .store import Tx

__all__ = ["OpenTabCounts", "Retry", "open_once", "open_tab_count"]

#: (user, recipient, network, asset, guarantee version): the key of an active tab.
TabKey = tuple[str, str, str, str, int]

#: Seconds a count of a seller's open tabs is trusted while well below the cap.
_OPEN_COUNT_FRESH = 5.0
#: A count of a seller's open tabs lets this process open 1/_SHARE of the room it left
#: before it counts again (other processes on the database open theirs meanwhile).
_SHARE = 8
#: A recipient's unexpired tabs: a range of the fx_tabs_recipient_expiry index.
_OPEN_TABS_SQL = "FROM fx_tabs WHERE recipient_address = ? AND start_ts + ttl >= ?"
#: A tab whose running total (a 64-bit column) passed this is not handed out again: a payment
#: it could not take any more (``tab_total_exceeded``) gets a new tab.
REUSE_TOTAL = INT64_MAX // 2
#: Seconds before its end a tab is no longer handed out (the default ``maxTimeoutSeconds``): a
#: guarantee signed on it must still reach acceptance, after a settle-after seller's handler
#: ran, before the tab ends (docs/protocol.md, "Paying").
REUSE_MARGIN = 300


def reuse_margin(ttl: int) -> float:
    """Seconds before its end a tab of ``ttl`` seconds is replaced: :data:`REUSE_MARGIN`, at
    most a quarter of its life (a short tab is still reused, not opened anew on every call)."""
    return min(REUSE_MARGIN, ttl / 4)


class Retry(Exception):
    """Another process replaced the active tab first (PostgreSQL): try a new transaction."""


def check_parties(user: str, recipient: str) -> None:
    """Nobody signs for the zero address: no tab is opened for it, on either side."""
    for address, name in ((user, "user"), (recipient, "recipient")):
        if address == ZERO_ADDRESS:
            raise CoreError(
                f"{name} address must not be the zero address",
                reason=f"invalid_{name}_address",
                status=400,
            )


def checked_ttl(ttl: int) -> int:
    if not 0 < ttl <= INT64_MAX // 2:  # start + ttl stays a 64-bit integer
        raise CoreError(f"ttlSeconds must be 1..{INT64_MAX // 2}", reason="invalid_ttl", status=400)
    return ttl


def retire(tx: Tx, tab_id: int) -> None:
    """A tab refused a payment as full (``tab_total_exceeded``): the next tab call opens anew."""
    tx.execute("DELETE FROM fx_active_tabs WHERE tab_id = ?", (hex_id(tab_id),))


def open_tab_count(tx: Tx, recipient: str, now: int) -> int:
    row = tx.one(f"SELECT COUNT(*) {_OPEN_TABS_SQL}", (recipient, now))
    return int(row[0]) if row else 0


class OpenTabCounts:
    """This process's recent counts of each seller's open tabs (recipient → (monotonic time
    counted, open tabs then, opened here since)), so that a seller far below its cap is not
    counted on every new tab."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int, int]] = {}
        self._lock = threading.Lock()

    def check_cap(self, tx: Tx, recipient: str, now: int, max_open: int) -> None:
        """Refuse a new tab for ``recipient`` at ``max_open`` unexpired tabs.

        Counting is a range scan of the recipient's unexpired tabs, so a count less than
        ``_OPEN_COUNT_FRESH`` seconds old stands for the next few new tabs: this process opens
        at most ``1/_SHARE`` of the room that count left before it counts again. One process
        alone never passes the cap (near it every new tab is counted: exact on SQLite, whose
        writers are serialised; on PostgreSQL concurrent openers may pass it by the tabs being
        opened at that moment). Several processes on one database may pass it by what the
        others opened on counts of their own not yet spent: at most ``1/_SHARE`` of the room
        per other process (it was a whole cap per process).
        """
        mono = time.monotonic()
        with self._lock:
            known = self._counts.get(recipient)
        if (
            known is not None
            and mono - known[0] < _OPEN_COUNT_FRESH
            and known[2] < (max_open - known[1]) // _SHARE
        ):
            return
        count = open_tab_count(tx, recipient, now)
        with self._lock:
            if len(self._counts) >= 10_000:  # bounded: one entry per seller address
                self._counts.clear()
            self._counts[recipient] = (mono, count, 0)
        if count >= max_open:
            first = tx.one(f"SELECT MIN(start_ts + ttl) {_OPEN_TABS_SQL}", (recipient, now))
            frees_at = int(first[0]) if first and first[0] is not None else now
            raise TabLimited(
                f"this seller has {count} open tabs (the cap is {max_open}); "
                "no new tab until one expires",
                reason=Reason.OPEN_TAB_LIMIT,
                retry_after=frees_at - now + 1,
            )

    def opened(self, recipient: str) -> None:
        """Count a tab this process opened for ``recipient`` since its last count."""
        with self._lock:
            known = self._counts.get(recipient)
            if known is not None:
                self._counts[recipient] = (known[0], known[1], known[2] + 1)


def open_once(
    tx: Tx,
    key: TabKey,
    ttl: int,
    at: float,
    counts: OpenTabCounts,
    max_open: int | None = None,
    admit_new: Callable[[], None] | None = None,
) -> Tab:
    """Reuse the active tab of ``key`` (its next request id) or open a new one.

    Raises :class:`Retry` when another transaction replaced the active tab meanwhile.
    """
    _, recipient, _, asset, guarantee_version = key
    now = int(at)
    row = tx.one(
        "SELECT t.tab_id, t.start_ts, t.ttl, t.total_amount FROM fx_active_tabs a "
        "JOIN fx_tabs t ON t.tab_id = a.tab_id WHERE a.user_address = ? AND "
        "a.recipient_address = ? AND a.network = ? AND a.asset = ? AND "
        "a.guarantee_version = ?",
        key,
    )
    if (
        row is not None
        and int(row[1]) <= at  # not one starting later: the clock stepped back since
        and at + reuse_margin(int(row[2])) <= int(row[1]) + int(row[2])
        and int(row[3]) <= REUSE_TOTAL
    ):
        nxt = tx.one(
            "UPDATE fx_tabs SET next_req_id = next_req_id + 1 WHERE tab_id = ? "
            "RETURNING next_req_id",
            (row[0],),
        )
        assert nxt is not None
        return Tab(
            int(row[0], 16),
            *key[:3],
            asset,
            guarantee_version,
            int(row[1]),
            int(row[2]),
            int(nxt[0]) - 1,
        )
    if max_open is not None:
        counts.check_cap(tx, recipient, now, max_open)
    if admit_new is not None:
        admit_new()
    tab_id = secrets.randbits(256)
    tx.execute(
        "INSERT INTO fx_tabs (tab_id, user_address, recipient_address, network, asset, "
        "guarantee_version, start_ts, ttl, next_req_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
        (hex_id(tab_id), *key, now, ttl),
    )
    if row is None:
        changed = tx.execute(
            "INSERT INTO fx_active_tabs (user_address, recipient_address, network, asset, "
            "guarantee_version, tab_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (*key, hex_id(tab_id)),
        )
    else:
        changed = tx.execute(
            "UPDATE fx_active_tabs SET tab_id = ? WHERE user_address = ? AND "
            "recipient_address = ? AND network = ? AND asset = ? AND "
            "guarantee_version = ? AND tab_id = ?",
            (hex_id(tab_id), *key, row[0]),
        )
    if changed == 1:
        if max_open is not None:
            counts.opened(recipient)
        return Tab(tab_id, *key[:3], asset, guarantee_version, now, ttl, 0)
    raise Retry
