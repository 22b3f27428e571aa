"""Load and fault tests: bounded, loopback only, kept short.

A seller under ``uvicorn --workers 2`` takes 200 concurrent paying requests from 20 buyers
(10 each); half the buyers hold collateral for only 5 payments, so demand is twice their
capacity. Whatever the interleaving: no 500, zero over-lock (locked == price × paid ≤
collateral), zero lost records (paid == delivered records == accepted guarantees ==
handler runs), and ``Core.audit() == []``. Variants: embedded SQLite Core, the Core as a
separate ``fourmica-x402 serve`` process (seller uses ``HttpFacilitator``), embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fourmica_x402.client import AsyncPaymentTransport, SpendingPolicy
from fourmica_x402.core import Core
from fourmica_x402.errors import InsufficientCollateral, PaymentFailed
from fourmica_x402.records import Records
from fourmica_x402.testing import NETWORK, TestBuyer

APPS = Path(__file__).parent / "apps"
PAY_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # Hardhat account #1 (public test key)
PRICE = 10_000  # $0.01 in USDC atomic units
BUYERS, PER_BUYER = 20, 10
FULL, SHORT = PER_BUYER, PER_BUYER // 2  # payments each buyer's collateral covers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process(
    args: list[str], env: dict[str, str], log: Path, probe: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in its own process group until ``probe`` answers 200 (bounded); kill it."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{args} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield proc
    except BaseException:  # the server's side of a failure, in the test's output
        print(f"--- {log.name} (last 4000 bytes) ---\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def _seller(
    tmp_path: Path, env: dict[str, str], workers: int = 2, pids: list[int] | None = None
) -> Iterator[str]:
    """The load seller under uvicorn; ``pids`` gets its process (group) id, to kill it."""
    port = int(env.get("LOAD_PORT") or _free_port())
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "uvicorn", "load_seller:app", "--app-dir", str(APPS)]
    args += ["--workers", str(workers), "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "warning", "--no-access-log"]
    # A kept-alive connection the seller closes as a request leaves on it is a race of
    # the client's (the buyer flow sends its own calls again: tests/conformance); it is
    # not what these tests measure, so idle connections outlive the run.
    args += ["--timeout-keep-alive", "60"]
    env = {**env, "LOAD_PORT": str(port), "PAY_TO": PAY_TO}
    with _process(args, env, tmp_path / "seller.log", f"{url}/free") as proc:
        if pids is not None:
            pids.append(proc.pid)
        yield url


def _buyers() -> list[tuple[TestBuyer, int]]:
    """(buyer, payments its collateral covers): every other buyer is short by half."""
    return [(TestBuyer.new(), FULL if i % 2 == 0 else SHORT) for i in range(BUYERS)]


async def _pay(url: str, buyer: TestBuyer) -> list[int | str]:
    """One buyer's 10 concurrent requests: a status, or the refusal's class name."""
    transport = AsyncPaymentTransport(buyer.key, policy=SpendingPolicy(max_per_request="$0.01"))
    timeout = httpx.Timeout(30.0, pool=30.0)
    limits = httpx.Limits(max_connections=PER_BUYER)
    async with httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits) as client:

        async def one() -> int | str:
            try:
                response = await client.get(f"{url}/premium")
            except (InsufficientCollateral, PaymentFailed) as exc:
                return type(exc).__name__
            if response.status_code == 200:
                receipt = response.extensions["fourmica_receipt"]
                assert receipt.outcome == "paid", receipt
                assert response.json()["payer"] == buyer.address
            return response.status_code

        return list(await asyncio.gather(*(one() for _ in range(PER_BUYER))))


def _fire(url: str, buyers: list[tuple[TestBuyer, int]]) -> tuple[list[list[int | str]], float]:
    async def run() -> list[list[int | str]]:
        jobs = (_pay(url, buyer) for buyer, _ in buyers)
        return list(await asyncio.wait_for(asyncio.gather(*jobs), timeout=45))

    started = time.monotonic()
    results = asyncio.run(run())
    return results, time.monotonic() - started


def _check(
    core: Core,
    records: Records,
    counter: Path,
    buyers: list[tuple[TestBuyer, int]],
    results: list[list[int | str]],
    elapsed: float,
    label: str,
) -> None:
    outcomes = Counter(o for per in results for o in per)
    paid = outcomes[200]
    runs = counter.read_text().splitlines() if counter.exists() else []
    pids = len({line.split()[0] for line in runs})
    print(
        f"\n[{label}] {BUYERS * PER_BUYER} requests in {elapsed:.1f}s: {dict(outcomes)}, "
        f"handler ran in {pids} worker(s)"
    )
    allowed = {200, 402, "InsufficientCollateral", "PaymentFailed"}
    assert set(outcomes) <= allowed, outcomes  # no 500, 503, 429 …
    delivered = records.query(status="delivered", limit=10_000)
    all_records = records.query(limit=10_000)
    guarantees = core.guarantees(limit=10_000)
    for (buyer, covers), per in zip(buyers, results, strict=True):
        n = per.count(200)
        position = core.position(buyer.address, network=NETWORK)
        assert position.locked == PRICE * n, (label, buyer.address, position, per)
        assert position.locked <= position.collateral == PRICE * covers  # zero over-lock
        assert n == covers, (label, buyer.address, per)  # every covered payment went through
        assert sum(1 for r in delivered if r.payer == buyer.address) == n
        assert sum(1 for g in guarantees if g.user_address == buyer.address) == n
        assert sum(1 for line in runs if line.split()[1] == buyer.address) == n
    assert paid == sum(covers for _, covers in buyers)
    assert len(delivered) == len(all_records) == paid  # zero lost (or stray) records
    assert len(guarantees) == paid
    assert len(runs) == paid  # the handler ran exactly once per paid request
    assert len({line.split()[2] for line in runs}) == paid  # one guarantee per run
    assert {g.guarantee_id for g in guarantees} == {r.guarantee_id for r in delivered}
    assert core.audit() == []


def _embedded(db: str, tmp_path: Path, label: str) -> None:
    counter = tmp_path / "runs.txt"
    core = Core(db)
    try:
        buyers = _buyers()
        with _seller(tmp_path, {"LOAD_CORE": db, "LOAD_COUNTER": str(counter)}) as url:
            for buyer, covers in buyers:
                core.deposit(buyer.address, PRICE * covers, network=NETWORK)
            results, elapsed = _fire(url, buyers)
        _check(core, Records(core.store), counter, buyers, results, elapsed, label)
    finally:
        core.close()


@pytest.mark.slow
def test_two_workers_share_one_sqlite_core(tmp_path: Path) -> None:
    _embedded(f"sqlite:///{tmp_path / 'core.db'}", tmp_path, "embedded sqlite")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_postgres_core(postgres_url: str, tmp_path: Path) -> None:
    _embedded(postgres_url, tmp_path, "embedded postgres")


@pytest.mark.slow
def test_two_workers_pay_through_a_separate_serve_process(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'core.db'}"
    records_db = f"sqlite:///{tmp_path / 'records.db'}"
    counter = tmp_path / "runs.txt"
    port = _free_port()
    core_url = f"http://127.0.0.1:{port}"
    serve = [sys.executable, "-m", "fourmica_x402", "serve", "--db", db, "--sandbox"]
    serve += ["--host", "127.0.0.1", "--port", str(port)]
    buyers = _buyers()
    with _process(serve, {}, tmp_path / "core.log", f"{core_url}/health"):
        env = {"LOAD_FACILITATOR": core_url, "LOAD_RECORDS": records_db}
        with _seller(tmp_path, {**env, "LOAD_COUNTER": str(counter)}) as url:
            for buyer, covers in buyers:
                deposit = {"address": buyer.address, "amount": PRICE * covers, "network": NETWORK}
                answer = httpx.post(f"{core_url}/sandbox/deposit", json=deposit, timeout=10)
                assert answer.status_code == 200, answer.text
            results, elapsed = _fire(url, buyers)
        core = Core(db)
        records = Records(records_db)
        try:
            _check(core, records, counter, buyers, results, elapsed, "serve process")
        finally:
            core.close()
            records.store.close()


def test_a_seller_killed_while_its_remote_settle_is_answered_refunds_at_restart(
    tmp_path: Path,
) -> None:
    """A remote settle leaves a mark before it is sent, removed with the payment's record: a
    seller SIGKILLed after the facilitator accepted, before the answer was recorded, left the
    buyer charged for a handler that never ran, with nothing on record. The next seller on
    its records database voids it once the mark is due."""
    import threading

    from fourmica_x402.client import PaymentTransport

    db = f"sqlite:///{tmp_path / 'core.db'}"
    records_db = f"sqlite:///{tmp_path / 'records.db'}"
    counter = tmp_path / "runs.txt"
    core_port, seller_port = _free_port(), _free_port()
    core_url = f"http://127.0.0.1:{core_port}"
    serve = [sys.executable, "-m", "fourmica_x402", "serve", "--db", db, "--sandbox"]
    serve += ["--host", "127.0.0.1", "--port", str(core_port)]
    buyer = TestBuyer.new()
    env = {
        "LOAD_FACILITATOR": core_url,
        "LOAD_RECORDS": records_db,
        "LOAD_COUNTER": str(counter),
        "LOAD_PORT": str(seller_port),
        "LOAD_MARK_WAIT": "1",
        "LOAD_FACILITATOR_TIMEOUT": "1",  # the mark is due 3 s after the settle began
    }
    with _process(serve, {}, tmp_path / "core.log", f"{core_url}/health"):
        deposit = {"address": buyer.address, "amount": PRICE, "network": NETWORK}
        assert httpx.post(f"{core_url}/sandbox/deposit", json=deposit, timeout=10).is_success
        core = Core(db)
        try:
            late, pids = {**env, "LOAD_SETTLE_LATE": "60"}, []
            with _seller(tmp_path, late, workers=1, pids=pids) as url:

                def pay() -> None:
                    client = httpx.Client(transport=PaymentTransport(buyer.key))
                    with client, contextlib.suppress(httpx.HTTPError):  # its seller dies
                        client.get(f"{url}/premium", timeout=30)

                threading.Thread(target=pay, daemon=True).start()
                deadline = time.monotonic() + 20
                while not core.guarantees(address=buyer.address):  # accepted, answer delayed
                    assert time.monotonic() < deadline, "the settle never reached the Core"
                    time.sleep(0.05)
                os.killpg(pids[0], signal.SIGKILL)
            [accepted] = core.guarantees(address=buyer.address)
            assert accepted.state == "payable"
            assert core.position(buyer.address, network=NETWORK).locked == PRICE
            with _seller(tmp_path, env, workers=1):  # the next seller on these records
                deadline = time.monotonic() + 30
                while core.guarantee(accepted.guarantee_id).state != "voided":
                    assert time.monotonic() < deadline, "the lost settle was never voided"
                    time.sleep(0.1)
            assert core.position(buyer.address, network=NETWORK).locked == 0
            assert not counter.exists()  # the handler never ran
            records = Records(records_db)
            assert records.followup(accepted.guarantee_id)[:1] == ("voided",)  # type: ignore[index]
            assert records.query() == []
            records.store.close()
        finally:
            core.close()
