"""Writes taken off the request path: queued in memory, committed in batches.

What happens after a paid response — its record's delivery marker and response hash, the
delivery score or the refund — need not hold the request up. It is queued here and committed
with this process's next write transaction (SQLite: inside it, so a paid request costs one
commit), or by a flusher thread once ``window`` seconds pass without one: one transaction for
everything queued (a group commit). A read transaction of this process first waits for the
queue, so a process always reads its own writes. A crash loses what was queued; start-up
recovery resolves those payments (docs/architecture.md, "Completion off the request path").
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from . import Contention, Tx, retried

__all__ = ["DEFAULT_WINDOW", "Deferred", "Job", "Task", "commit_queued", "drain_all", "stopping"]

log = logging.getLogger("fourmica_x402.core")

#: Seconds the flusher waits, once a job is queued, for a write of this process to take it.
DEFAULT_WINDOW = 0.005

_ALL: weakref.WeakSet[Deferred] = weakref.WeakSet()
_BY_KEY: dict[str, weakref.WeakSet[Deferred]] = {}


def drain_all(key: str) -> None:
    """Before a read of database ``key``: commit what any store of this process queued on it,
    so a process reads its own writes whichever store object wrote them."""
    for deferred in list(_BY_KEY.get(key, ())):
        if deferred and not deferred.closed:
            deferred.drain()


class Job(Protocol):
    """One queued write."""

    def apply(self, tx: Tx) -> None:
        """Write it, inside the batch's transaction (a savepoint: a failure undoes only it)."""
        ...

    def committed(self) -> None:
        """Called once its transaction committed (outside any transaction)."""
        ...

    def failed(self, error: Exception) -> None:
        """Called once the batch committed without it: ``apply`` raised ``error``."""
        ...


class Task:
    """A :class:`Job` made of functions: ``apply(tx)``, and optional callbacks. ``order``: a
    key that sorts the jobs of a batch (the payer whose position the job locks), so that
    batches of different processes take their row locks in one order (PostgreSQL)."""

    __slots__ = ("_committed", "_failed", "apply", "order")

    def __init__(
        self,
        apply: Callable[[Tx], None],
        *,
        committed: Callable[[], None] | None = None,
        failed: Callable[[Exception], None] | None = None,
        order: str = "",
    ) -> None:
        self.apply = apply
        self._committed, self._failed = committed, failed
        self.order = order

    def committed(self) -> None:
        if self._committed is not None:
            self._committed()

    def failed(self, error: Exception) -> None:
        if self._failed is not None:
            self._failed(error)
        else:
            log.error("a queued write was refused: %s", error)


class Deferred:
    """The queue of one store in this process, and its flusher thread."""

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[Tx]],
        key: str,
        window: float = DEFAULT_WINDOW,
        retryable: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._transaction = transaction
        #: Driver errors that abort a whole batch, to be run again (a lost lock race): a
        #: job that raises one is not failed on its own.
        self.retryable = retryable
        #: The database (its path or URL): every store of this process on it drains this queue
        #: before it reads (:func:`drain_all`).
        self.key = key
        self.window = window
        self._jobs: list[Job] = []
        self._inflight = 0
        self._lock = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        #: Set by a close or an exit (:meth:`settle`): the writer thread writes at once.
        self._hurried = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._taken_at = 0.0
        self.closed = False
        _ALL.add(self)
        _BY_KEY.setdefault(key, weakref.WeakSet()).add(self)

    def __bool__(self) -> bool:  # anything queued or being written
        return bool(self._jobs) or self._inflight > 0

    def submit(self, job: Job) -> None:
        """Queue ``job``; it is committed within ``window`` seconds (or with the next write)."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the store is closed")
            self._jobs.append(job)
            first = len(self._jobs) == 1
            self._start_writer()
        if first:
            self._wake.set()

    def _start_writer(self) -> None:
        """The writer thread of this process, started if there is none (under ``_lock``)."""
        if self._thread is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="fourmica-completions", daemon=True
            )
            self._thread.start()

    def take(self) -> list[Job]:
        """The queued jobs, for the transaction the caller is in (then :meth:`done`)."""
        if not self._jobs:
            return []
        with self._lock:
            jobs, self._jobs = self._jobs, []
            self._inflight += len(jobs)
            self._taken_at = time.monotonic()
        return jobs

    @staticmethod
    def run(
        tx: Tx, jobs: list[Job], retryable: tuple[type[BaseException], ...] = ()
    ) -> list[tuple[Job, Exception]]:
        """Apply ``jobs`` in ``tx``, by their ``order``: all in one savepoint; when one fails,
        each in its own. A ``retryable`` error aborts the whole transaction instead."""
        jobs = sorted(jobs, key=lambda job: getattr(job, "order", ""))
        tx.execute("SAVEPOINT fx_batch")
        try:
            for job in jobs:
                job.apply(tx)
        except retryable:
            raise
        except Exception:
            tx.execute("ROLLBACK TO SAVEPOINT fx_batch")
        else:
            tx.execute("RELEASE SAVEPOINT fx_batch")
            return []
        tx.execute("RELEASE SAVEPOINT fx_batch")
        failures: list[tuple[Job, Exception]] = []
        for job in jobs:
            tx.execute("SAVEPOINT fx_job")
            try:
                job.apply(tx)
            except retryable:
                raise
            except Exception as exc:
                tx.execute("ROLLBACK TO SAVEPOINT fx_job")
                failures.append((job, exc))
            tx.execute("RELEASE SAVEPOINT fx_job")
        return failures

    def done(self, jobs: list[Job], failures: list[tuple[Job, Exception]], committed: bool) -> None:
        """After the transaction that ran ``jobs``: their callbacks, or back in the queue."""
        with self._lock:
            self._inflight -= len(jobs)
            if not committed:
                self._jobs[:0] = jobs
            self._lock.notify_all()
        if not committed:
            self._wake.set()
            return
        failed = {id(job): error for job, error in failures}
        for job in jobs:
            try:
                error = failed.get(id(job))
                if error is None:
                    job.committed()
                else:
                    job.failed(error)
            except Exception:
                log.exception("a completion callback failed")

    def flush(self) -> None:
        """Commit everything queued now, in the caller's thread (one transaction)."""
        jobs = self.take()
        if not jobs:
            return
        failures: list[tuple[Job, Exception]] = []
        committed = False
        try:
            with self._transaction() as tx:
                failures = self.run(tx, jobs, self.retryable)
            committed = True
        finally:
            self.done(jobs, failures, committed)

    def drain(self, timeout: float = 30.0) -> None:
        """Before a read: commit what is queued and wait for batches other threads write."""
        if not self._jobs and not self._inflight:
            return
        retried(self.flush)  # a batch that lost a lock race went back in the queue: again
        with self._lock:
            self._lock.wait_for(lambda: self._inflight == 0, timeout=timeout)

    def settle(self, timeout: float) -> bool:
        """A close or an exit: until nothing is queued or being written, the writer thread
        writing everything without its window (a batch another thread is writing, or gave
        back after losing a lock race, included); False if ``timeout`` passed first. The
        wait ends on time whatever the database does: the writer thread waits for the locks.
        """
        with self._lock:
            if not self._jobs and not self._inflight:
                return True
            try:
                self._start_writer()
            except RuntimeError:  # no new thread at interpreter shutdown: write it here
                writer = False
            else:
                writer = True
            self._hurried.set()
        if not writer:
            self.drain(timeout)
            return not self
        self._wake.set()
        with self._lock:
            return self._lock.wait_for(lambda: not self._jobs and not self._inflight, timeout)

    def hurry(self) -> None:
        """The process is stopping: from now on, write what is queued without the window."""
        with self._lock:
            if self._jobs or self._inflight:
                self._start_writer()
            self._hurried.set()
        self._wake.set()

    def close(self) -> None:
        """Commit what is queued (best effort, up to 10 s) and stop taking jobs."""
        try:
            if not self.settle(10.0):
                log.error("closing with %d completion(s) not committed", self._left())
        except Exception:
            log.exception("could not commit %d queued completion(s) at close", self._left())
        with self._lock:
            self.closed = True
        self._wake.set()
        self._hurried.set()

    def _left(self) -> int:
        return len(self._jobs) + self._inflight

    def forget(self) -> None:
        """In a forked child: the parent's queue is the parent's to write."""
        self._jobs, self._inflight, self._thread = [], 0, None
        self._lock = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._hurried = threading.Event()

    def _run(self) -> None:
        pause = 0.0
        while not self.closed:
            self._wake.wait()
            self._wake.clear()
            # While this process writes, its writes take the queue along; the flusher steps in
            # only once the queue waited a whole window without one.
            while True:
                if self._hurried.is_set():  # a close or an exit waits: no window, paced retries
                    time.sleep(pause)
                else:
                    self._hurried.wait(self.window + pause)
                if self.closed or not self._jobs:
                    break
                if not self._hurried.is_set() and time.monotonic() - self._taken_at < self.window:
                    continue
                try:
                    self.flush()
                    pause = 0.0
                except Exception as exc:  # the database is down: retry, slower each time
                    if self.closed:
                        return
                    lost_race = isinstance(exc, Contention)  # another process's batch won
                    (log.info if lost_race else log.error)(
                        "writing queued completions failed, will retry: %s", exc
                    )
                    pause = min(max(pause * 2, 0.05), 5.0)
                    continue
                break


#: Paid responses of this process on their way out (:func:`serving`): their completions are
#: still to be queued. At exit, up to :data:`EXIT_WAIT` seconds are given to them.
_SERVING = [0]
_SERVING_DONE = threading.Condition()
EXIT_WAIT = 2.0
#: How long an exit waits for the queued completions to be committed (a server's graceful
#: stop gives its workers 30 s by default).
EXIT_DRAIN = 25.0
#: Set by a SIGTERM a server handles (:func:`exit_gracefully_on_sigterm`): the process may end
#: without an exit, so each paid response that ends commits the queue before it returns.
_STOPPING = [False]
#: A gate asked for the SIGTERM step (:func:`exit_gracefully_on_sigterm`), and the process
#: whose main thread put it in place (a server's handler is set before it serves).
_SIGTERM_WANTED = [False]
_SIGTERM_PID = [0]


def serving(delta: int) -> None:
    """A paid response of this process starts (+1) or ended (-1): an exit waits for it."""
    if delta > 0 and _SIGTERM_WANTED[0] and _SIGTERM_PID[0] != os.getpid():
        exit_gracefully_on_sigterm()  # a server set its handler after the gate was made
        # (gunicorn --preload loads it in the master): the step goes before it now
    with _SERVING_DONE:
        _SERVING[0] += delta
        _SERVING_DONE.notify_all()


def stopping() -> bool:
    """A server's SIGTERM came: each paid response that ends commits the queue
    (:func:`commit_queued`, a blocking call: off the event loop) before it returns."""
    return _STOPPING[0]


def commit_queued() -> None:
    """Commit what this process queued (a paid response ended in a stopping process)."""
    _commit_all(EXIT_DRAIN)


def _flush_all() -> None:
    # A development server's request threads go on while atexit runs (a SIGTERM right after
    # a response): let a response that just went out queue its completion first.
    with _SERVING_DONE:
        _SERVING_DONE.wait_for(lambda: _SERVING[0] <= 0, timeout=EXIT_WAIT)
    # The flusher thread may hold a batch it is writing (waiting for another process's lock):
    # the exit waits for it too, or the interpreter would end that transaction unfinished and
    # a delivered response would never be charged.
    _commit_all(EXIT_DRAIN)


def _commit_all(timeout: float) -> None:
    """Commit what this process queued, waiting up to ``timeout`` seconds."""
    ends = time.monotonic() + timeout
    for deferred in list(_ALL):
        if deferred and not deferred.closed and deferred._pid == os.getpid():
            try:
                if not deferred.settle(max(ends - time.monotonic(), 0.1)):
                    log.error(  # recovered as a crash's are (docs/operations.md)
                        "exiting with %d completion(s) not committed", deferred._left()
                    )
            except Exception:
                log.exception("could not commit queued completions at exit")


def _hurry_all() -> None:
    for deferred in list(_ALL):
        if deferred and not deferred.closed and deferred._pid == os.getpid():
            deferred.hurry()


def _forget_all() -> None:
    _SERVING[0] = 0  # the parent's responses are the parent's
    _STOPPING[0] = False
    for deferred in list(_ALL):
        deferred.forget()


def exit_gracefully_on_sigterm() -> None:
    """Make SIGTERM an exit that runs ``atexit`` (so queued completions are committed) in a
    process that leaves it to the default action, which ends the process on the spot: Flask's
    and Django's development servers. A server with a handler of its own (uvicorn, gunicorn)
    keeps it, run after ours: a uvicorn worker ends with the signal's default action once its
    server stopped, without an exit, and an app without a lifespan (async Django) is told of
    no stop; so from the signal on the queue is written at once, and each paid response that
    ends commits it (docs/operations.md, "Stopping and crashes"). Only the main thread may set
    a handler; elsewhere this does nothing, until a paid response starts in the main thread."""
    _SIGTERM_WANTED[0] = True
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError, AttributeError):
        current = signal.getsignal(signal.SIGTERM)
        if current is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_signal)
        elif callable(current) and not getattr(current, "_fx_own", False):
            signal.signal(signal.SIGTERM, _stopping_then(current))
        _SIGTERM_PID[0] = os.getpid()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


_exit_on_signal._fx_own = True  # type: ignore[attr-defined]  # ours: not wrapped


def _stopping_then(server: Callable[[int, Any], Any]) -> Callable[[int, Any], Any]:
    """A SIGTERM handler marking the process as stopping, then running the server's."""

    def on_sigterm(signum: int, frame: Any) -> Any:
        _STOPPING[0] = True
        # No lock may be taken in a signal handler: the event loop hurries the queues (none
        # here, a WSGI server: its exit commits them).
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_soon_threadsafe(_hurry_all)
        return server(signum, frame)

    on_sigterm._fx_own = True  # type: ignore[attr-defined]
    return on_sigterm


atexit.register(_flush_all)
os.register_at_fork(after_in_child=_forget_all)
