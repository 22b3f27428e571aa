"""P8: does the Core scale out on PostgreSQL? Acceptances per second from 1, 2 and 4 processes
sharing one PostgreSQL server (docs/operations.md, "The embedded Core": several hosts share
one Core through PostgreSQL).

What runs: plain worker processes, each holding its own ``Core(postgresql://…)`` and calling
``Core.accept`` (signature recovery, every check, the capacity lock, the stored guarantee: one
transaction each). No HTTP server and no load generator share the CPU with them, so the curve
is the Core's and the database's, not a web server's.

The load is the same at every size: ``count`` guarantees from :data:`BUYERS` buyers to
:data:`SELLERS` sellers, signed before the clock starts; the buyers are dealt out among the
processes (a buyer's guarantees all go to one process, so two processes never wait on one
buyer's capacity lock, which serialises that buyer by design). Each size runs on a scratch
database of its own, created from the admin URL in ``FOURMICA_BENCH_POSTGRES_URL`` and dropped
afterwards. The clock runs from the moment every worker is connected, migrated and warmed up
(two acceptances per buyer) and is told to go, to the moment the last one is done.

One worker and its database backend keep about one core busy between them, so 2 processes
can approach 2× only on a machine with cores to spare for both pairs (and the server's own
work); the notes give the core count and the workers' CPU per acceptance to read the curve by.

Workers connect to the database only; each is bounded by its list of guarantees, and every
one is stopped when its measurement ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from .common import Result, Skipped

__all__ = ["POSTGRES_ENV", "bench_scale_out", "worker"]

#: The admin URL (a role that may create databases) P8 makes its scratch databases with.
POSTGRES_ENV = "FOURMICA_BENCH_POSTGRES_URL"
#: How a worker learns its scratch database's URL (not on the command line: it may hold a
#: password).
_DB_ENV = "FOURMICA_BENCH_WORKER_DB"
PROCESSES = (1, 2, 4)
BUYERS = 16  # divisible by every size in PROCESSES: each process gets as many buyers
SELLERS = 4
#: Acceptances per buyer made before the clock starts (connections and statements warm).
WARMUP = 2
MODE = "worker processes, each an embedded Core(postgresql://…) calling Core.accept; no HTTP"
_READY_TIMEOUT = 120.0
_RUN_TIMEOUT = 900.0
_WORKER = "from fourmica_x402.bench.scale import worker; worker()"


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def bench_scale_out(quick: bool) -> Result:
    """P8: Core acceptances/s on one PostgreSQL server from 1, 2 and 4 processes."""
    admin = _admin_url()
    count = 1_200 if quick else 12_000
    rates: dict[int, float] = {}
    cpu: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="fourmica-bench-p8-") as tmp:
        for processes in PROCESSES:
            _say(f"P8: {processes} worker process(es), {count} acceptances, a scratch database")
            elapsed, cpu_seconds = _measure(admin, processes, count, Path(tmp))
            rates[processes] = count / elapsed
            cpu[processes] = cpu_seconds / count * 1e6
    one, two, four = (rates[n] for n in PROCESSES)
    curve = " / ".join(f"{rates[n]:,.0f}" for n in PROCESSES)
    durability = _durability(admin)
    # Without fsync a commit waits for no disk: the curve then shows CPU and locks only.
    unsafe = " (the server runs with fsync off)" if durability.get("fsync") == "off" else ""
    return Result(
        id="P8",
        title=(
            "Core acceptances/s, one PostgreSQL server, 2 processes vs 1 (worker processes, "
            f"each an embedded Core; no HTTP); 1 / 2 / 4 processes: {curve} /s{unsafe}"
        ),
        unit="/s",
        ours=two,
        baseline=one,
        baseline_name="the same load from 1 process",
        target="≥ 1.7",
        met=two >= 1.7 * one,
        notes={
            "mode": MODE,
            "acceptances": count,
            "buyers": BUYERS,
            "sellers": SELLERS,
            "cpus": os.cpu_count(),
            "per_second": {str(n): rate for n, rate in rates.items()},
            "ratio_4_to_1": four / one,
            # The workers' own CPU per acceptance: near 1e6 / per_second × processes when they
            # were CPU-bound, well below it when they waited (on the database, on a core).
            "worker_cpu_us": {str(n): us for n, us in cpu.items()},
            # The server's durability settings: the curve depends on them more than on us.
            "server": durability,
        },
    )


# -- the scratch databases ----------------------------------------------------------------------


def _admin_url() -> str:
    """The admin URL, checked: set, a URL, psycopg installed, the server answers."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        raise Skipped(
            f"needs a PostgreSQL server: set {POSTGRES_ENV} to an admin URL (a role that may "
            "create databases; the bench creates and drops a scratch database)"
        )
    if urlsplit(url).scheme not in ("postgres", "postgresql"):
        raise Skipped(f"{POSTGRES_ENV} must be a postgresql:// URL")
    try:
        import psycopg
    except ImportError:
        raise Skipped('needs psycopg: pip install "fourmica-x402[postgres]"') from None
    try:
        psycopg.connect(url, connect_timeout=10, autocommit=True).close()
    except psycopg.Error as exc:
        raise Skipped(f"cannot connect to {POSTGRES_ENV}: {_first_line(exc)}") from None
    return url


def _durability(admin: str) -> dict[str, str]:
    """The server's settings that decide what a commit waits for (empty if unreadable)."""
    import psycopg

    found: dict[str, str] = {}
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            for name in ("fsync", "synchronous_commit", "wal_sync_method", "commit_delay"):
                row = conn.execute(f"SHOW {name}").fetchone()
                if row is not None:
                    found[name] = str(row[0])
    except psycopg.Error:
        pass
    return found


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def _scratch_database(admin: str) -> Iterator[str]:
    """The URL of a fresh database on the admin URL's server, dropped afterwards."""
    import psycopg

    name = f"fx_bench_{uuid.uuid4().hex[:16]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise Skipped(
            f"cannot create a scratch database through {POSTGRES_ENV}: {_first_line(exc)}"
        ) from None
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            for attempt in range(20):  # bounded
                try:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except psycopg.errors.InsufficientPrivilege:
                    # FORCE may not end another role's backend (an autovacuum worker that just
                    # started on the scratch database); it finishes in a moment.
                    if attempt == 19:
                        raise
                    time.sleep(0.25)


# -- one size ------------------------------------------------------------------------------------


def _measure(admin: str, processes: int, count: int, tmp: Path) -> tuple[float, float]:
    """``count`` guarantees accepted by ``processes`` workers on a scratch database: the
    seconds it took, and the CPU seconds the workers spent on it."""
    from ..core import Core

    with _scratch_database(admin) as url:
        core = Core(url)
        try:
            works = _sign(core, processes, count)
            elapsed, cpu_seconds = _run_workers(url, works, tmp / f"p{processes}")
            with core.store.transaction(write=False) as tx:
                row = tx.one("SELECT COUNT(*) FROM fx_guarantees")
            stored = int(row[0]) if row else 0
            if stored != count + WARMUP * BUYERS:
                raise RuntimeError(
                    f"P8: {count + WARMUP * BUYERS} guarantees accepted, {stored} stored"
                )
            problems = core.audit()
            if problems:
                raise RuntimeError(f"P8: the Core's audit failed: {problems[:3]}")
        finally:
            core.close()
    return elapsed, cpu_seconds


def _sign(core: Any, processes: int, count: int) -> list[dict[str, Any]]:
    """Fund the buyers, open their tabs and sign every guarantee: one work list per process.

    Guarantee ``i`` is buyer ``i % BUYERS``'s to seller ``(i // BUYERS) % SELLERS``; buyer ``b``
    belongs to process ``b % processes``, whose list takes its buyers in turn.
    """
    from ..networks import default_asset
    from ..testing import NETWORK, TestBuyer

    asset = default_asset(NETWORK).address
    buyers = [TestBuyer.new() for _ in range(BUYERS)]
    sellers = [TestBuyer.new().address for _ in range(SELLERS)]
    tabs: dict[tuple[int, int], Any] = {}
    next_req: dict[tuple[int, int], int] = {}
    for b, buyer in enumerate(buyers):
        core.deposit(buyer.address, 10**15, network=NETWORK)
        for s, seller in enumerate(sellers):
            tab = core.open_tab(buyer.address, seller, network=NETWORK, asset=asset)
            tabs[b, s], next_req[b, s] = tab, tab.next_req_id
    now = int(core.clock())
    per_buyer: list[list[dict[str, Any]]] = [[] for _ in buyers]
    for i in range(count + WARMUP * BUYERS):
        b, s = i % BUYERS, (i // BUYERS) % SELLERS
        amount = 1 + i % 1000
        claims = buyers[b].claims(tabs[b, s], amount, req_id=next_req[b, s], timestamp=now)
        next_req[b, s] += 1
        signed = buyers[b].sign(claims)
        per_buyer[b].append({"g": signed.to_json(), "to": sellers[s], "amount": amount})
    works = []
    for w in range(processes):
        mine = per_buyer[w::processes]
        rounds = [list(turn) for turn in zip(*mine, strict=True)]
        works.append(
            {
                "network": NETWORK,
                "asset": asset,
                "warmup": [item for turn in rounds[:WARMUP] for item in turn],
                "items": [item for turn in rounds[WARMUP:] for item in turn],
            }
        )
    return works


def _run_workers(url: str, works: list[dict[str, Any]], stem: Path) -> tuple[float, float]:
    """Start one worker per work list, wait until all are ready, say go: the seconds until the
    last one is done, and the CPU seconds they spent meanwhile."""
    lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        for w, work in enumerate(works):
            path, log = Path(f"{stem}-{w}.json"), Path(f"{stem}-{w}.log")
            path.write_text(json.dumps(work))
            with open(log, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-c", _WORKER, str(path)],
                    env={**os.environ, _DB_ENV: url},
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            procs.append((proc, log))
            assert proc.stdout is not None
            threading.Thread(target=_pump, args=(w, proc.stdout, lines), daemon=True).start()
        _expect(lines, procs, "ready", _READY_TIMEOUT)
        start = time.perf_counter()
        for proc, _ in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        said = _expect(lines, procs, "done", _RUN_TIMEOUT)
        elapsed = time.perf_counter() - start
        return elapsed, sum(float(rest) for rest in said)
    finally:
        for proc, _ in procs:
            _stop(proc)


def _pump(index: int, stream: IO[str], lines: queue.Queue[tuple[int, str | None]]) -> None:
    """Every line worker ``index`` prints, then ``None`` when its output ends."""
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            lines.put((index, line.strip()))
    lines.put((index, None))


def _expect(
    lines: queue.Queue[tuple[int, str | None]],
    procs: list[tuple[subprocess.Popen[str], Path]],
    word: str,
    timeout: float,
) -> list[str]:
    """Wait until every worker has printed ``word`` (a line ``word`` or ``word rest``); the
    ``rest`` of each. A worker that ends before saying done, or a wait past ``timeout``
    seconds, raises with that worker's last log lines."""
    waiting = set(range(len(procs)))
    said = [""] * len(procs)
    deadline = time.monotonic() + timeout
    while waiting:
        try:
            index, line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            first = min(waiting)
            raise RuntimeError(
                f"P8: worker {first} did not say {word} within {timeout:.0f} s: "
                f"{_tail(procs[first][1])}"
            ) from None
        if line is None:
            if word == "done" and index not in waiting:
                continue  # said done, then exited: as it should
            procs[index][0].wait(timeout=10)
            raise RuntimeError(
                f"P8: worker {index} ended (exit {procs[index][0].returncode}) before saying "
                f"{word}: {_tail(procs[index][1])}"
            )
        head, _, rest = line.partition(" ")
        if head == word:
            said[index] = rest
            waiting.discard(index)
    return said


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines()[-5:]
    return " | ".join(lines) or "no output"


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()


# -- the worker process ----------------------------------------------------------------------


def worker() -> None:
    """A P8 worker: ``python -c "…; worker()" WORK.json``, its database URL in the environment.

    Accepts its warm-up guarantees, prints ``ready``, waits for ``go`` on stdin (or its end:
    the parent is gone), accepts the rest, prints ``done`` and the CPU seconds that took. Any refusal ends it with the
    traceback on stderr.
    """
    from ..core import Core
    from ..core.models import Expected
    from ..guarantee import SignedGuarantee

    work = json.loads(Path(sys.argv[1]).read_text())
    network, asset = work["network"], work["asset"]

    def parse(items: list[dict[str, Any]]) -> list[tuple[SignedGuarantee, Expected]]:
        return [
            (
                SignedGuarantee.from_json(item["g"]),
                Expected(network=network, pay_to=item["to"], asset=asset, amount=item["amount"]),
            )
            for item in items
        ]

    warmup, items = parse(work["warmup"]), parse(work["items"])
    core = Core(os.environ[_DB_ENV])
    try:
        for signed, expected in warmup:
            core.accept(signed, expected)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        cpu = time.process_time()
        for signed, expected in items:
            core.accept(signed, expected)
        print(f"done {time.process_time() - cpu}", flush=True)
    finally:
        core.close()
