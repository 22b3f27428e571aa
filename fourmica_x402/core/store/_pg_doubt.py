"""A PostgreSQL COMMIT whose answer was lost with its connection: did it commit?

The server may commit a transaction and lose the connection before its answer goes out (the
backend terminated during the commit, the network dropped): reported as a failure, the caller
would tell its client that nothing changed, a buyer answered 503 for a payment the Core
accepted. A write transaction learns its id with its BEGIN; after a lost COMMIT, a fresh
connection asks the server what became of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["XID_QUERY", "commit_outcome"]

#: Appended to a write transaction's BEGIN: its id, assigned at once (one round trip for both).
XID_QUERY = "; SELECT txid_current()"
#: How long a lost COMMIT is asked about: the server down, or still showing it in progress.
RESOLVE_WAIT = 5.0


def commit_outcome(connect: Callable[[], Any], xid: int) -> bool:
    """Whether transaction ``xid`` committed, asked on a new connection (``connect()``, the
    store's: it becomes the thread's). False when it aborted, or when the server cannot tell
    in time: the caller then reports the failure it had."""
    ends = time.monotonic() + RESOLVE_WAIT
    slot = None
    while time.monotonic() < ends:
        try:
            slot = slot if slot is not None and not slot.conn.broken else connect()
            row = slot.conn.execute("SELECT txid_status(%s)", (xid,)).fetchone()
        except Exception:  # the server is away: ask again until the wait is over
            row = None
        status = row[0] if row else None
        if status in ("committed", "aborted"):
            return status == "committed"
        time.sleep(0.05)  # a terminated backend ends its commit, or its abort, in a moment
    return False
