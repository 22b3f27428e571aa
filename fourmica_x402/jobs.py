"""Staged work: one task sold as paid stages of a job (docs/protocol.md, "Staged work").

A seller splits a long task into stages, each a priced route marked with a :class:`Stage`::

    routes = {
        "POST /report":         {"price": "$0.01", "stage": Stage("report", 1, of=3)},
        "POST /report/analyse": {"price": "$0.02", "stage": Stage("report", 2, of=3)},
        "POST /report/write":   {"price": "$0.03", "stage": Stage("report", 3, of=3)},
    }

Stage 1's paid request opens a job: its id goes back in the ``Job-Id`` response header (and
``payment.job``). Each later stage is a paid request of its own that carries ``Job-Id``; it
is admitted only for the job's payer, in order, one at a time — before any payment is asked
for. A stage whose response is not a 2xx is refunded (its guarantee voided) and fails the
job, so every later stage is refused before it is charged (409 ``job_failed``).

Jobs are rows of ``fx_jobs`` (one per job) and ``fx_job_stages`` (one per stage served) in the
seller's records database, with a migration list of their own; every change is one
transaction.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .core.schema import migrate
from .core.store import Store, open_store
from .errors import ConfigurationError

__all__ = ["JOB_HEADER", "STAGE_HEADER", "Job", "JobStage", "Jobs", "Stage"]

#: The request header that ties a later stage to its job, and the response headers that say
#: which job and stage a paid response served.
JOB_HEADER = "job-id"
STAGE_HEADER = "job-stage"
#: The key of the jobs' schema version in ``fx_meta``.
SCHEMA_KEY = "jobs_schema_version"
#: The most stages one job may have.
MAX_STAGES = 64

MIGRATIONS: list[list[str]] = [
    [
        # done: the stages delivered (in order); running: the stage being served, if any
        """CREATE TABLE fx_jobs (
            job_id TEXT PRIMARY KEY, name TEXT NOT NULL, payer TEXT NOT NULL,
            stages INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0, running INTEGER,
            running_since {real}, state TEXT NOT NULL, created_at {real} NOT NULL,
            updated_at {real} NOT NULL)""",
        """CREATE TABLE fx_job_stages (
            job_id TEXT NOT NULL, stage INTEGER NOT NULL, guarantee_id TEXT,
            amount {int} NOT NULL, outcome TEXT NOT NULL, at {real} NOT NULL,
            PRIMARY KEY (job_id, stage))""",
    ],
    # the payTo its stage 1 was paid to: another seller on this database sells no stage of it
    ["ALTER TABLE fx_jobs ADD COLUMN pay_to TEXT"],
    # the open jobs whose seller is not named yet, looked for at every start: found without
    # reading every job ever opened (docs/operations.md, "The embedded Core")
    ["CREATE INDEX fx_jobs_unnamed ON fx_jobs (state) WHERE pay_to IS NULL"],
]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_ID = re.compile(r"job_[0-9a-f]{32}\Z")


@dataclass(frozen=True, slots=True)
class Stage:
    """Marks a priced route as stage ``number`` of ``of`` of the job ``job`` (a name)."""

    job: str
    number: int
    of: int

    def __post_init__(self) -> None:
        if not isinstance(self.job, str) or not _NAME.match(self.job):
            raise ConfigurationError(f"a job name is 1-64 of A-Z a-z 0-9 _ . -, not {self.job!r}")
        if type(self.of) is not int or not 1 <= self.of <= MAX_STAGES:
            raise ConfigurationError(f"a job has 1 to {MAX_STAGES} stages, not {self.of!r}")
        if type(self.number) is not int or not 1 <= self.number <= self.of:
            raise ConfigurationError(f"stage {self.number!r} is not one of 1..{self.of}")


def check_stage(key: str, config: Any, routes: Mapping[str, Any]) -> None:
    """ConfigurationError when ``config`` (a ``RouteConfig``) is a stage and another of
    ``routes`` (route key → ``RouteConfig``: table entries and per-handler markers alike)
    counts the stages of its job otherwise: its later stages would be refused
    ``unknown_job`` after a buyer paid for the first ones."""
    stage: Stage | None = config.stage
    if stage is None:
        return
    for other, their in routes.items():
        theirs = their.stage
        if theirs is None or other == key or theirs.job != stage.job:
            continue
        if theirs.of != stage.of:
            raise ConfigurationError(
                f"route {key!r}: job {stage.job!r} has {stage.of} stages here and "
                f"{theirs.of} at {other!r}"
            )


@dataclass(frozen=True, slots=True)
class JobStage:
    """What a paid handler learns of its stage (``payment.job``)."""

    id: str
    name: str
    stage: int
    of: int


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored: ``state`` is ``open``, ``done`` or ``failed``."""

    id: str
    name: str
    payer: str
    stages: int
    done: int
    running: int | None
    running_since: float | None
    state: str
    created_at: float
    updated_at: float
    #: ``(stage, guarantee id, amount, outcome)`` per stage served: ``running``,
    #: ``delivered`` or ``failed``.
    history: tuple[tuple[int, str | None, int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "payer": self.payer,
            "stages": self.stages,
            "done": self.done,
            "running": self.running,
            "state": self.state,
            "history": [
                {"stage": s, "guaranteeId": g, "amount": str(a), "outcome": o}
                for s, g, a, o in self.history
            ],
        }


_COLUMNS = (
    "job_id, name, payer, stages, done, running, running_since, state, created_at, updated_at"
)


def _job(row: Sequence[Any], history: Sequence[Sequence[Any]] = ()) -> Job:
    return Job(
        row[0],
        row[1],
        row[2],
        int(row[3]),
        int(row[4]),
        None if row[5] is None else int(row[5]),
        None if row[6] is None else float(row[6]),
        row[7],
        float(row[8]),
        float(row[9]),
        tuple((int(h[0]), h[1], int(h[2]), h[3]) for h in history),
    )


class Jobs:
    """The jobs of one records database (any number of processes share it).

    ``stale_after``: seconds after which a stage still marked running (its process died
    before the response started) fails its job at the next admission.
    """

    def __init__(self, store: Store | str | Any, *, stale_after: float = 600.0) -> None:
        if isinstance(store, str):
            store = open_store(store)
        self.store: Store = getattr(store, "store", store)
        self.stale_after = stale_after
        migrate(self.store, migrations=MIGRATIONS, key=SCHEMA_KEY)
        _name_sellers(self.store)

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        """A job and its stages, or None."""
        if not isinstance(job_id, str) or not _ID.match(job_id):
            return None
        with self.store.transaction(write=False) as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM fx_jobs WHERE job_id = ?", (job_id,))
            history = tx.all(
                "SELECT stage, guarantee_id, amount, outcome FROM fx_job_stages "
                "WHERE job_id = ? ORDER BY stage",
                (job_id,),
            )
        return None if row is None else _job(row, history)

    def refusal(
        self,
        job_id: str,
        stage: Stage,
        payer: str | None = None,
        sellers: frozenset[str] | None = None,
    ) -> str | None:
        """Why stage ``stage`` of job ``job_id`` may not be paid for now (a reason code), or
        None. ``payer`` None: not known yet (no payment); else it must be the job's.
        ``sellers``: the payTo addresses (lower case) this seller's stage 1 of the job is paid
        to (None: not known); a job whose stage 1 was paid to none of them is not its job."""
        with self.store.transaction(write=False) as tx:
            row = self._read(tx, job_id, lock=False)
        return _why(row, stage, payer, time.time(), self.stale_after, sellers)

    # -- writing -------------------------------------------------------------------------------

    def open(
        self,
        stage: Stage,
        payer: str,
        guarantee_id: str | None,
        amount: int,
        pay_to: str | None = None,
    ) -> JobStage:
        """A new job, its first stage running (the caller was paid for it, to ``pay_to``)."""
        job_id, now = "job_" + secrets.token_hex(16), time.time()
        seller = None if pay_to is None else pay_to.lower()
        with self.store.transaction() as tx:
            tx.execute(
                f"INSERT INTO fx_jobs ({_COLUMNS}, pay_to) "
                "VALUES (?, ?, ?, ?, 0, 1, ?, 'open', ?, ?, ?)",
                (job_id, stage.job, payer.lower(), stage.of, now, now, now, seller),
            )
            _stage_row(tx, job_id, 1, guarantee_id, amount, now)
        return JobStage(job_id, stage.job, 1, stage.of)

    def claim(
        self,
        job_id: str,
        stage: Stage,
        payer: str,
        guarantee_id: str | None,
        amount: int,
        sellers: frozenset[str] | None = None,
    ) -> JobStage | str:
        """Mark stage ``stage`` running (the caller was paid for it): its :class:`JobStage`, or
        the reason it may not run (another request took it meanwhile, say); ``sellers`` as in
        :meth:`refusal`."""
        now = time.time()
        with self.store.transaction() as tx:
            row = self._read(tx, job_id, lock=True)
            why = _why(row, stage, payer, now, self.stale_after, sellers)
            if why is not None:
                if why == "job_failed" and row is not None and row[7] == "open":  # stale
                    _fail(tx, job_id, int(row[5]), now)
                return why
            tx.execute(
                "UPDATE fx_jobs SET running = ?, running_since = ?, updated_at = ? "
                "WHERE job_id = ?",
                (stage.number, now, now, job_id),
            )
            _stage_row(tx, job_id, stage.number, guarantee_id, amount, now)
        return JobStage(job_id, stage.job, stage.number, stage.of)

    def delivered(self, job: JobStage, guarantee_id: str | None = None) -> None:
        """The stage's 2xx response was delivered whole: the job moves on (or is done).
        ``guarantee_id``: one the stage's row does not name yet (settle-after: the row is
        written when the stage starts, before its settle)."""
        now = time.time()
        with self.store.transaction() as tx:
            done = tx.execute(
                "UPDATE fx_jobs SET done = ?, running = NULL, running_since = NULL, "
                "state = CASE WHEN stages = ? THEN 'done' ELSE 'open' END, updated_at = ? "
                "WHERE job_id = ? AND running = ? AND state = 'open'",
                (job.stage, job.stage, now, job.id, job.stage),
            )
            if done:
                tx.execute(
                    "UPDATE fx_job_stages SET outcome = 'delivered', at = ?, "
                    "guarantee_id = COALESCE(guarantee_id, ?) WHERE job_id = ? AND stage = ?",
                    (now, guarantee_id, job.id, job.stage),
                )

    def failed(self, job: JobStage, guarantee_id: str | None = None) -> None:
        """The stage was not delivered (refunded): the job fails, no later stage is sold."""
        with self.store.transaction() as tx:
            _fail(tx, job.id, job.stage, time.time(), guarantee_id)

    # -- helpers -------------------------------------------------------------------------------

    def _read(self, tx: Any, job_id: str, *, lock: bool) -> Sequence[Any] | None:
        if not _ID.match(job_id):
            return None
        sql = f"SELECT {_COLUMNS}, pay_to FROM fx_jobs WHERE job_id = ?"
        if lock and self.store.dialect == "postgres":
            sql += " FOR UPDATE"
        return tx.one(sql, (job_id,))


def _name_sellers(store: Store) -> None:
    """Open jobs opened before the payTo of their stage 1 was kept take it from the record of
    their stage 1 payment (a job opened by another seller on this database is not this one's,
    docs/protocol.md, "Staged work"); one whose stage 1 names no guarantee stays unchecked."""
    with store.transaction(write=False) as tx:
        records = tx.one("SELECT value FROM fx_meta WHERE key = 'records_schema_version'")
        if records is None or int(records[0]) < 1:
            return
        if tx.one("SELECT 1 FROM fx_jobs WHERE pay_to IS NULL AND state = 'open' LIMIT 1") is None:
            return
    with store.transaction() as tx:
        tx.execute(
            "UPDATE fx_jobs SET pay_to = (SELECT LOWER(MIN(r.pay_to)) FROM fx_job_stages s "
            "JOIN fx_records r ON r.guarantee_id = s.guarantee_id "
            "WHERE s.job_id = fx_jobs.job_id AND s.stage = 1) "
            "WHERE pay_to IS NULL AND state = 'open'"
        )


def _why(
    row: Sequence[Any] | None,
    stage: Stage,
    payer: str | None,
    now: float,
    stale_after: float,
    sellers: frozenset[str] | None = None,
) -> str | None:
    """The admission rules, in the order a buyer can act on them."""
    if row is None or row[1] != stage.job or int(row[3]) != stage.of:
        return "unknown_job"
    if sellers is not None and row[10] is not None and row[10] not in sellers:
        return "unknown_job"  # a job another seller on this database opened
    if payer is not None and row[2] != payer.lower():
        return "job_not_yours"
    state, done, running = row[7], int(row[4]), row[5]
    stale = running is not None and now - float(row[6] or 0.0) > stale_after
    if state == "failed" or (state == "open" and stale):  # stale: its process died
        return "job_failed"
    if state == "done" or stage.number <= done:
        return "stage_done"
    if stage.number > done + 1:
        return "stage_out_of_order"
    return None if running is None else "stage_in_progress"


def _stage_row(
    tx: Any, job_id: str, stage: int, guarantee_id: str | None, amount: int, now: float
) -> None:
    tx.execute(
        "INSERT INTO fx_job_stages (job_id, stage, guarantee_id, amount, outcome, at) "
        "VALUES (?, ?, ?, ?, 'running', ?)",
        (job_id, stage, guarantee_id, amount, now),
    )


def _fail(tx: Any, job_id: str, stage: int, now: float, guarantee_id: str | None = None) -> None:
    failed = tx.execute(
        "UPDATE fx_jobs SET state = 'failed', running = NULL, running_since = NULL, "
        "updated_at = ? WHERE job_id = ? AND state <> 'failed' AND (running = ? OR done = ?)",
        (now, job_id, stage, stage),
    )
    if failed:
        tx.execute(
            "UPDATE fx_job_stages SET outcome = 'failed', at = ?, "
            "guarantee_id = COALESCE(guarantee_id, ?) WHERE job_id = ? AND stage = ?",
            (now, guarantee_id, job_id, stage),
        )
