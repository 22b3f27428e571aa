"""The start-up checks of an adapter: a bad configuration fails every request closed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.store import StoreMissing, StoreUnavailable
from .types import Response, error_response

__all__ = ["Startup"]

log = logging.getLogger("fourmica_x402.gate")

T = TypeVar("T")


class Startup:
    """Start-up checks, run once; a failure fails every request closed.

    A bad configuration found when the app starts (or, at the latest, when it first serves)
    is logged and kept: every request is then answered :attr:`refusal`, never served unpriced.
    A gate that could not be built because its database could not be used then (a write lock
    held past the busy timeout) is not a bad configuration: it is built again, and requests
    are answered 503 ``core_unavailable`` until it could (docs/operations.md, "The embedded Core").
    """

    #: Seconds between two builds in the background while the database stays unusable.
    RETRY = 1.0

    def __init__(self, build: Callable[[], Any] | None = None) -> None:
        self.error: str | None = None
        self.unavailable = False  # the last failure was the database's, not the configuration's
        #: The gate :meth:`build` made (None until it could).
        self.built: Any = None
        self._build: Callable[[], Any] | None = None
        self._done, self._lock = False, threading.Lock()
        self._retrying, self._next_try = False, 0.0
        if build is not None:
            self.build(build)

    def attempt(self, fn: Callable[[], T]) -> T | None:
        """``fn()``; None when it failed (the error is logged and kept)."""
        try:
            return fn()
        except Exception as exc:
            self.error = f"fourmica_x402: {exc}"
            self.unavailable = isinstance(exc, StoreUnavailable) and not isinstance(
                exc, StoreMissing
            )
            log.error("%s", self.error)
            return None

    def build(self, fn: Callable[[], T]) -> T | None:
        """``fn()``, kept as :attr:`built`; one that met an unusable database runs again at
        the next :meth:`run`."""
        self.unavailable = False
        self.built = self.attempt(fn)
        self._build = fn if self.unavailable else None
        return self.built

    def run(self, check: Callable[[], object], wait: bool = True) -> str | None:
        """``check()`` the first time (concurrent callers wait for it); the error, if any.

        A gate to be built again (its database was down) is built again here when ``wait``
        (a server's start); else in a thread of its own, at most every :attr:`RETRY` seconds,
        so that an event loop never waits out the database's busy timeout: each request
        meanwhile is answered :attr:`refusal` at once."""
        if not self._done:
            if self._build is not None and not wait:
                self._again(check)
                return self.error
            with self._lock:
                if not self._done and self._build is not None:  # the database was down: again
                    self.error = None
                    self.build(self._build)
                if not self._done and self.error is None:
                    self.attempt(check)
                self._done = self._build is None
        return self.error

    def _again(self, check: Callable[[], object]) -> None:
        with self._lock:
            if self._retrying or self._build is None or time.monotonic() < self._next_try:
                return
            self._retrying = True
        threading.Thread(
            target=self._rebuild, args=(self._build, check), name="fourmica-x402-start", daemon=True
        ).start()

    def _rebuild(self, build: Callable[[], Any], check: Callable[[], object]) -> None:
        """Build the gate again; publish it, checked, only when both succeeded (requests read
        :attr:`error` meanwhile, which stays set until then)."""
        self.unavailable = False
        built = self.attempt(build)
        with self._lock:
            if built is None:  # still down, or now a bad configuration: kept (500)
                self._retrying, self._next_try = False, time.monotonic() + self.RETRY
                if not self.unavailable:
                    self._build, self._done = None, True
                return
            self.built = built  # still retrying: a request meanwhile starts no other build
        try:
            check()
            error = None
        except Exception as exc:
            error = f"fourmica_x402: {exc}"
            log.error("%s", error)
        with self._lock:
            self.error, self._build, self._done, self._retrying = error, None, True, False

    @property
    def refusal(self) -> Response:
        """The answer to every request while the configuration is bad (or the database down)."""
        # In this order: a gate published meanwhile clears both (error None: built since the
        # request read it; it may retry).
        building, error = self._build is not None, self.error
        if building or error is None:  # to be built again: the database was down
            return error_response(503, "core_unavailable", error or "the gate is now ready")
        return error_response(500, "configuration_error", error)
