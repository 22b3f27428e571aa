"""A SQLite store's locks and threads across ``os.fork`` (a preloading server's workers,
``multiprocessing``): the child has none of the parent's threads, so nothing it inherited
held would ever be released there."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref


class ForkSafe:
    """The locks of :class:`~.sqlite.SQLiteStore`, made anew in a forked child. A fork waits
    for the other threads' transactions (and checkpoint) to end, up to the busy timeout, and
    lets none start: the SQLite locks their connections held, as kept in memory, would stay
    taken in the child (a writer's: every write there busy; a reader's: no checkpoint there
    ever done, the write-ahead log growing without bound)."""

    _busy_timeout_ms: int

    def _start_afresh(self) -> None:
        self._lock, self._write_lock = threading.Lock(), threading.Lock()
        self._loop_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_due = threading.Event()
        # Open transactions, so close() never pulls a connection from under a running query.
        self._idle, self._active = threading.Condition(), 0
        _STORES.add(self)

    def writing_here(self) -> bool:
        raise NotImplementedError

    def _fork(self, stage: str) -> None:
        if stage == "before":
            self._idle.acquire()  # held across the fork: no transaction starts meanwhile
            if not self.writing_here():  # a fork inside this thread's own write: no wait
                self._idle.wait_for(lambda: self._active == 0, self._busy_timeout_ms / 1000)
        elif stage == "child":
            self._start_afresh()
        else:
            self._idle.release()


_STORES: weakref.WeakSet[ForkSafe] = weakref.WeakSet()


def _at_fork(stage: str) -> None:
    for store in list(_STORES):
        store._fork(stage)


os.register_at_fork(
    before=lambda: _at_fork("before"),
    after_in_parent=lambda: _at_fork("parent"),
    after_in_child=lambda: _at_fork("child"),
)
