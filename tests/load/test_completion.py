"""The completion queue: a paid request's completion (delivery marker, response hash, delivery
score or refund) is committed after the response, in batches. A seller SIGKILLed with
completions still queued leaves "settled, delivery unknown"; the next process on the database
recovers them: G-v1 payments are kept, G-v2 ones cancelled at their validation deadline (the
buyer pays nothing). A seller stopped gracefully commits its queue first.

Real uvicorn processes on loopback, a real SQLite file; every loop is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from fourmica_x402.bench.in_process import payment_headers
from fourmica_x402.client import PaymentTransport
from fourmica_x402.core import Core
from fourmica_x402.records import Records
from fourmica_x402.testing import NETWORK, TestBuyer
from fourmica_x402.wire import decode_header_json

pytestmark = pytest.mark.slow

APPS = Path(__file__).resolve().parent / "apps"
PRICE = 10_000  # "$0.01"
PAID = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def seller(
    db: Path,
    pay_to: str,
    *,
    v2: bool,
    window: float,
    timeout: float,
    settle: str = "before",
    replay: bool = False,
    app: str = "completion_seller:app",
    workers: int = 1,
    preload: bool = False,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A uvicorn seller process (``app``, in ``workers`` processes; ``preload``: uvicorn
    workers of gunicorn, the app loaded before they fork): yields its URL and process;
    killed if the test left it running."""
    port = _free_port()
    env = dict(
        os.environ,
        SELLER_CORE=str(db),
        PAY_TO=pay_to,
        SELLER_V2="1" if v2 else "0",
        SELLER_WINDOW=str(window),
        SELLER_VALIDATION_TIMEOUT=str(timeout),
        SELLER_SETTLE=settle,
        SELLER_REPLAY="1" if replay else "0",
    )
    args = [sys.executable, "-m", "uvicorn", app, "--app-dir", str(APPS)]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    args += ["--workers", str(workers)]
    if preload:
        args = [sys.executable, "-m", "gunicorn", app, "--chdir", str(APPS), "--preload"]
        args += ["-k", "uvicorn.workers.UvicornWorker", "-b", f"127.0.0.1:{port}"]
        args += ["-w", str(workers), "--log-level", "warning"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/free", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"seller did not start: {out[-2000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _pay(url: str, buyer: TestBuyer, count: int) -> list[str]:
    with httpx.Client(transport=PaymentTransport(buyer.key), timeout=10) as client:
        out = []
        for _ in range(count):
            answer = client.get(url + "/premium")
            assert answer.status_code == 200, answer.text
            out.append(decode_header_json(answer.headers["payment-response"])["transaction"])
        return out


def _state(db: Path, gids: list[str]) -> tuple[list[str], list[tuple[str, str | None]], int]:
    """(guarantee states, (record status, outcome) per guarantee, buyer's locked amount)."""
    core = Core(str(db))
    try:
        states = [core.guarantee(g).state for g in gids]
        records = Records(core.store)
        rows = [records.query(guarantee_id=g, limit=1)[0] for g in gids]
        return states, [(r.status, r.outcome) for r in rows], _locked(core)
    finally:
        core.close()


BUYER = TestBuyer.from_key(
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
)  # test key
SELLER = TestBuyer.from_key(
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
)  # test key


def _locked(core: Core) -> int:
    return core.position(BUYER.address, network=NETWORK).locked


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "core.db"
    core = Core(str(path))
    core.deposit(BUYER.address, 100 * PRICE, network=NETWORK)
    core.close()
    return path


@pytest.mark.parametrize("v2", [False, True], ids=["G-v1", "G-v2"])
def test_sigkill_with_completions_queued_is_recovered_conservatively(db: Path, v2: bool) -> None:
    timeout = 4.0
    done = ("delivered", "delivered")
    with seller(db, SELLER.address, v2=v2, window=30.0, timeout=timeout) as (url, proc):
        gids = _pay(url, BUYER, PAID)
        # Each completion rode along with the next payment's acceptance (one commit); the
        # last one is still queued in the seller (a 30 s window).
        states, records, locked = _state(db, gids)
        assert records == [done] * (PAID - 1) + [("settled", None)]
        assert states == ["payable"] * (PAID - 1) + ["pending_validation" if v2 else "payable"]
        assert locked == PAID * PRICE
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    states, records, locked = _state(db, gids)
    assert records[-1] == ("settled", None)  # lost with the process: delivery unknown

    # The next process on the database recovers it.
    with seller(db, SELLER.address, v2=v2, window=0.005, timeout=timeout) as (url, _):
        if not v2:
            states, records, locked = _state(db, gids)
            assert records == [done] * (PAID - 1) + [("settled", "kept")]  # it may have run
            assert states == ["payable"] * PAID and locked == PAID * PRICE
        else:
            deadline = time.monotonic() + timeout + 30
            while time.monotonic() < deadline:
                states, records, locked = _state(db, gids)
                if records[-1] == ("settled", "cancelled"):
                    break
                time.sleep(0.25)
            assert records == [done] * (PAID - 1) + [("settled", "cancelled")]
            assert states == ["payable"] * (PAID - 1) + ["cancelled"]  # never scored: not paid
            assert locked == (PAID - 1) * PRICE
        # and it serves as before, completing what it serves within its window
        more = _pay(url, BUYER, 2)
        _until_delivered(db, more)


def test_a_replay_of_a_payment_its_process_lost_is_not_in_progress_forever(db: Path) -> None:
    """With ``idempotent_replay``, the header of a payment whose process died before its
    completion was answered 409 ``payment_in_progress`` for ever, after start-up recovery had
    labelled it too: a buyer told to retry later retried in vain. Once labelled it is
    ``replay_unavailable`` (its response was never kept)."""
    with seller(db, SELLER.address, v2=False, window=30.0, timeout=4.0, replay=True) as (
        url,
        proc,
    ):
        challenge = httpx.get(url + "/premium", timeout=10).headers["payment-required"]
        core = Core(str(db))
        try:
            header = dict(payment_headers(core, BUYER, challenge, 1))
        finally:
            core.close()
        answer = httpx.get(url + "/premium", headers=header, timeout=10)
        assert answer.status_code == 200, answer.text
        proc.send_signal(signal.SIGKILL)  # its completion still queued (a 30 s window)
        proc.wait(timeout=10)
    with seller(db, SELLER.address, v2=False, window=0.005, timeout=4.0, replay=True) as (url, _):
        gid = decode_header_json(answer.headers["payment-response"])["transaction"]
        assert _state(db, [gid])[1] == [("settled", "kept")]  # recovered: it may have run
        again = httpx.get(url + "/premium", headers=header, timeout=10)
        assert (again.status_code, again.json()["error"]) == (409, "replay_unavailable")


def test_a_settle_after_payment_never_settled_before_its_process_died_is_not_in_progress(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``settle="after"``, a worker SIGKILLed inside the handler leaves a record written
    before the settle, with no guarantee: start-up recovery found nothing to label (it joins
    on the guarantee) and the buyer's retry of the header was answered 409
    ``payment_in_progress`` for ever. It is labelled ``not_charged``: the retry is told the
    payment cannot be replayed, and nothing was locked."""
    monkeypatch.setenv("SELLER_SLEEP", "60")
    options = dict(v2=False, timeout=4.0, settle="after", replay=True)
    with seller(db, SELLER.address, window=0.005, **options) as (url, proc):  # type: ignore[arg-type]
        challenge = httpx.get(url + "/premium", timeout=10).headers["payment-required"]
        core = Core(str(db))
        try:
            header = dict(payment_headers(core, BUYER, challenge, 1))
        finally:
            core.close()
        with pytest.raises(httpx.ReadTimeout):  # the handler still runs
            httpx.get(url + "/premium", headers=header, timeout=2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    monkeypatch.delenv("SELLER_SLEEP")
    with seller(db, SELLER.address, window=0.005, **options) as (url, _):  # type: ignore[arg-type]
        again = httpx.get(url + "/premium", headers=header, timeout=10)
        assert (again.status_code, again.json()["error"]) == (409, "replay_unavailable")
    core = Core(str(db))
    try:
        (record,) = Records(core.store).query(payer=BUYER.address)
        assert (record.status, record.outcome, record.guarantee_id) == (
            "verified",
            "not_charged",
            None,
        )
        assert _locked(core) == 0  # never settled: nothing charged
    finally:
        core.close()


@pytest.mark.parametrize("v2", [False, True], ids=["G-v1", "G-v2"])
def test_a_settle_after_payment_lost_with_its_process_is_recovered_too(db: Path, v2: bool) -> None:
    """A settle-after record is written before its settle, without the guarantee's id: the
    completion names it. One lost with its process is found by its tab and request ids."""
    timeout = 4.0
    options = dict(v2=v2, timeout=timeout, settle="after")
    with seller(db, SELLER.address, window=30.0, **options) as (url, proc):  # type: ignore[arg-type]
        gids = _pay(url, BUYER, PAID)
        states, records, _ = _state(db, gids[:-1])
        assert records == [("delivered", "delivered")] * (PAID - 1)  # the record names it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    expected = ("settled", "cancelled" if v2 else "kept")
    with seller(db, SELLER.address, window=0.005, **options) as (url, _):  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout + 30
        while time.monotonic() < deadline:
            states, records, locked = _state(db, gids)
            if records[-1] == expected:
                break
            time.sleep(0.25)
    assert records == [("delivered", "delivered")] * (PAID - 1) + [expected]
    assert states[-1] == ("cancelled" if v2 else "payable")
    assert locked == (PAID - (1 if v2 else 0)) * PRICE


def _until_delivered(db: Path, gids: list[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # Two reads, not one snapshot: a completion committed between them shows a delivered
        # record beside a state read a moment earlier, so wait for both.
        states, records, _ = _state(db, gids)
        if records == [("delivered", "delivered")] * len(gids) and states == ["payable"] * len(
            gids
        ):
            break
        time.sleep(0.02)
    assert records == [("delivered", "delivered")] * len(gids)
    assert states == ["payable"] * len(gids)


def test_a_graceful_stop_commits_the_queued_completions(db: Path) -> None:
    with seller(db, SELLER.address, v2=True, window=30.0, timeout=3600) as (url, proc):
        gids = _pay(url, BUYER, PAID)
        assert _state(db, gids)[1][-1] == ("settled", None)  # queued
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    states, records, locked = _state(db, gids)
    assert records == [("delivered", "delivered")] * PAID
    assert states == ["payable"] * PAID and locked == PAID * PRICE


@pytest.mark.parametrize("preload", [False, True], ids=["workers", "preloaded"])
def test_workers_of_an_app_without_a_lifespan_commit_their_queue_when_stopped(
    db: Path, preload: bool
) -> None:
    """Async Django has no ASGI lifespan, and a uvicorn worker stopped by SIGTERM ends with
    the signal's default action (no interpreter exit): the delivered payments still queued in
    the workers were left "settled, delivery unknown", and a G-v2 one was cancelled. With
    gunicorn --preload the app (its gate) is loaded in the master, before the workers fork and
    uvicorn installs its handler: the gate's step was not put before it there either."""
    with seller(
        db,
        SELLER.address,
        v2=True,
        window=30.0,
        timeout=3600,
        app="completion_django_seller:application",
        workers=2,
        preload=preload,
    ) as (url, proc):
        gids = _pay(url, BUYER, PAID)
        assert _state(db, gids)[1][-1] == ("settled", None)  # queued
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    states, records, locked = _state(db, gids)
    assert records == [("delivered", "delivered")] * PAID
    assert states == ["payable"] * PAID and locked == PAID * PRICE


def test_completions_land_within_the_window_while_the_seller_runs(db: Path) -> None:
    with seller(db, SELLER.address, v2=True, window=0.005, timeout=3600) as (url, _):
        _until_delivered(db, _pay(url, BUYER, PAID))
