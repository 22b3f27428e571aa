"""Each example seller runs as a user runs it (a real server on loopback) and gets paid."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fourmica_x402.core import Core
from fourmica_x402.records import Records
from fourmica_x402.testing import NETWORK, TEST_KEYS, TestBuyer, paid_headers, payment_header
from fourmica_x402.wire import decode_payment_required

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHOP = EXAMPLES / "django_seller"
SELLERS = {
    "starlette": [str(EXAMPLES / "starlette_seller.py")],
    "fastapi": [str(EXAMPLES / "fastapi_seller.py")],
    "flask": [str(EXAMPLES / "flask_seller.py")],
    "django": [str(EXAMPLES / "django_seller" / "manage.py"), "runserver", "--noreload"],
    # the shop's ASGI and WSGI modules, under the servers their docstrings name
    "django-uvicorn": ["-m", "uvicorn", "--app-dir", str(SHOP), "shop.asgi:application"],
    "django-gunicorn": ["-m", "gunicorn", "--chdir", str(SHOP), "-w", "2", "shop.wsgi"],
}
#: Every runnable seller: those above (GET /premium at $0.01) and the bundles seller.
SERVERS = {**SELLERS, "bundles": [str(EXAMPLES / "bundles_seller.py")]}


def _command(name: str, port: int) -> list[str]:
    """The command that runs example ``name`` on ``port``, as its docstring says."""
    args = [sys.executable, *SERVERS[name]]
    if name == "django":
        args.append(f"127.0.0.1:{port}")
    elif name == "django-uvicorn":
        args += ["--host", "127.0.0.1", "--port", str(port)]
    elif name == "django-gunicorn":
        args += ["-b", f"127.0.0.1:{port}"]
    return args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(name: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    """Start an example seller as a user would; yield a client on it and its database file."""
    if not Path(SERVERS[name][3 if SERVERS[name][0] == "-m" else 0]).exists():
        pytest.fail(f"example for {name} is missing")
    port = _free_port()
    db = tmp_path / "seller.db"
    env = {**os.environ, "PORT": str(port), "FOURMICA_X402_DB": f"sqlite:///{db}"}
    args = _command(name, port)
    proc = subprocess.Popen(
        args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/free").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"{name} example did not start: {out[-2000:]}")
                time.sleep(0.1)
            yield client, db
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SELLERS))
def test_example_seller_serves_and_gets_paid(name: str, tmp_path: Path) -> None:
    with running(name, tmp_path) as (client, db):
        challenge = client.get("/premium")
        assert challenge.status_code == 402
        # Only GET /premium is sold: other methods are the framework's 405 (the Django
        # example priced every method, and listed them all in its discovery document).
        assert client.post("/premium").status_code == 405
        req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
        assert req.amount == "10000" and req.network == NETWORK
        buyer = TestBuyer.new()
        core = Core(f"sqlite:///{db}")
        core.deposit(buyer.address, 1_000_000, network=NETWORK)
        tab = client.post(
            req.extra["tabEndpoint"],
            json={
                "x402Version": 2,
                "userAddress": buyer.address,
                "paymentRequirements": req.to_dict(),
            },
        ).json()
        name_, value = payment_header(buyer, req, tab)
        paid = client.get("/premium", headers={name_: value})
        assert paid.status_code == 200, paid.text
        assert paid.json()["payer"] == buyer.address
        assert "payment-response" in paid.headers
        assert core.position(buyer.address, network=NETWORK).locked == 10_000
        core.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flask", "django", "starlette"])
def test_a_seller_stopped_right_after_a_paid_answer_still_gets_paid(
    name: str, tmp_path: Path
) -> None:
    """A SIGTERM right after a paid 200 (a development server's stop: ``running`` ends with
    one) still commits the queued completion: the seller is paid for what it delivered, not
    cancelled at the validation deadline."""
    buyer = TestBuyer.new()
    with running(name, tmp_path) as (client, db):
        req = decode_payment_required(client.get("/premium").headers["payment-required"])
        offer = req.accepts[0]
        core = Core(f"sqlite:///{db}")
        core.deposit(buyer.address, 1_000_000, network=NETWORK)
        body = {
            "x402Version": 2,
            "userAddress": buyer.address,
            "paymentRequirements": offer.to_dict(),
        }
        tab = client.post(offer.extra["tabEndpoint"], json=body).json()
        name_, value = payment_header(buyer, offer, tab)
        assert client.get("/premium", headers={name_: value}).status_code == 200
        core.close()
    after = Core(f"sqlite:///{db}")
    (guarantee,) = after.guarantees()
    assert guarantee.state == "payable"  # scored 100: the delivery was committed
    assert [r.outcome for r in Records(after.store).query()] == ["delivered"]
    after.close()


@pytest.mark.slow
def test_a_sigterm_as_the_answer_arrives_waits_for_its_completion(tmp_path: Path) -> None:
    """The development server's request thread is still closing the paid body when the
    SIGTERM ends the main thread: the exit waits for that response to end (bounded), so its
    completion is committed and the seller paid."""
    port, db = _free_port(), tmp_path / "seller.db"
    env = {**os.environ, "PORT": str(port), "FOURMICA_X402_DB": f"sqlite:///{db}"}
    env["PAY_TO"] = TestBuyer.new().address
    app = Path(__file__).parent / "apps" / "slow_close_seller.py"
    proc = subprocess.Popen([sys.executable, str(app)], env=env, cwd=tmp_path)
    buyer = TestBuyer.new()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _wait_until_up(client, proc)
            offer = decode_payment_required(client.get("/premium").headers["payment-required"])
            req = offer.accepts[0]
            core = Core(f"sqlite:///{db}")
            core.deposit(buyer.address, 1_000_000, network=NETWORK)
            body = {"x402Version": 2, "userAddress": buyer.address, "paymentRequirements": {}}
            body["paymentRequirements"] = req.to_dict()
            name_, value = payment_header(buyer, req, client.post("/x402/tab", json=body).json())
            with client.stream("GET", "/premium", headers={name_: value}) as answer:
                assert answer.read() == b"the premium answer"
                proc.terminate()  # while the server thread still closes the body
            core.close()
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    after = Core(f"sqlite:///{db}")
    assert [g.state for g in after.guarantees()] == ["payable"]
    assert [r.outcome for r in Records(after.store).query()] == ["delivered"]
    after.close()


def _wait_until_up(client: httpx.Client, proc: subprocess.Popen[Any]) -> None:
    """Until the server ``proc`` started answers its free route (30 s at most)."""
    deadline = time.monotonic() + 30
    while not _answers(client):
        assert time.monotonic() < deadline and proc.poll() is None, "did not start"
        time.sleep(0.1)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/free").status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_bundles_example_charges_per_bundle_and_prepays_jobs(tmp_path: Path) -> None:
    with running("bundles", tmp_path) as (client, db):
        buyer = TestBuyer.new()
        core = Core(f"sqlite:///{db}")
        core.deposit(buyer.address, 5_000_000, network=NETWORK)

        def pay(
            method: str, path: str, expect: int = 200, **kwargs: Any
        ) -> tuple[Any, Any, httpx.Response]:
            challenge = client.request(method, path, **kwargs)
            assert challenge.status_code == 402, challenge.text
            required = decode_payment_required(challenge.headers["payment-required"])
            req = required.accepts[0]
            body = {"x402Version": 2, "userAddress": buyer.address}
            tab = client.post(
                req.extra["tabEndpoint"], json={**body, "paymentRequirements": req.to_dict()}
            ).json()
            name_, value = payment_header(buyer, req, tab)
            paid = client.request(method, path, headers={name_: value}, **kwargs)
            assert paid.status_code == expect, paid.text
            return required, req, paid

        required, req, paid = pay("GET", "/records?count=250")
        assert (
            req.amount == "30000" and req.extra["units"] == 3 and req.extra["unitPrice"] == "10000"
        )
        assert required.resource is not None
        assert required.resource.description == "Records — 3 × 100 records at $0.01"
        assert len(paid.json()["records"]) == 250 and paid.json()["bundles"] == 3
        _, small, paid = pay("GET", "/records?count=40")  # one bundle, raised to the minimum
        assert small.amount == "30000" and paid.json()["paid"] == 30_000
        # a repeated count is refused: the handler reads the last one, not the first
        for query in (
            "count=lots",
            "count=100&count=10000",
            "count=10000&count=100",
            "count=-5",
            "count=100&count=",  # a blank second count is still a second one (the handler's)
            "count=100&count",
        ):
            refused = client.get(f"/records?{query}")
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_units"
        required, req, paid = pay("POST", "/jobs", json={"task": "render"})
        assert req.amount == "2000000" and req.extra["cap"] == "2000000"
        assert required.resource is not None
        assert required.resource.description == "A long job — prepaid up to $2.00"
        assert paid.json()["prepaid"] == 2_000_000 and paid.json()["job"] == "done: render"
        assert core.position(buyer.address, network=NETWORK).locked == 30_000 * 2 + 2_000_000
        pay("POST", "/jobs", expect=400, json=[1])  # not a job: answered 400, refunded
        pay("POST", "/jobs", expect=400, content="[" * 5000)  # too deep to parse: 400, not 500
        deadline = time.monotonic() + 10
        while core.position(buyer.address, network=NETWORK).locked != 30_000 * 2 + 2_000_000:
            assert time.monotonic() < deadline, "the 400 was not refunded"
            time.sleep(0.05)
        core.close()


@pytest.mark.slow
def test_pay_command_pays_a_running_seller(tmp_path: Path) -> None:
    key = TEST_KEYS[4]  # throwaway test key
    with running("starlette", tmp_path) as (client, db):
        core = Core(f"sqlite:///{db}")
        core.deposit(TestBuyer.from_key(key).address, 50_000, network=NETWORK)
        url = str(client.base_url.join("/premium"))
        ok = subprocess.run(
            [sys.executable, "-m", "fourmica_x402", "pay", url, "--key", key],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        out = json.loads(ok.stdout)
        assert out["status"] == 200 and out["receipt"]["outcome"] == "paid"
        assert out["body"]["payer"] == TestBuyer.from_key(key).address
        assert key[2:] not in ok.stdout + ok.stderr  # the key is never printed
        capped = subprocess.run(
            [sys.executable, "-m", "fourmica_x402", "pay", url, "--max-price", "$0.001"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "FOURMICA_X402_KEY": key},
        )
        assert capped.returncode == 1
        assert json.loads(capped.stdout)["receipt"]["outcome"] == "budget_exhausted"
        assert core.position(TestBuyer.from_key(key).address, network=NETWORK).locked == 10_000
        core.close()


@pytest.mark.slow
def test_buyer_agent_example_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "buyer_agent.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "SELLER_URL"},
    )
    assert out.returncode == 0, out.stderr
    receipts = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["outcome"] for r in receipts] == ["paid", "paid", "paid", "budget_exhausted"]
    assert "refused: budget_exhausted" in out.stdout


@pytest.mark.slow
def test_buyer_agent_pays_an_example_seller(tmp_path: Path) -> None:
    """Pointed at an example seller (SELLER_URL), the agent died with KeyError 'fourmica_receipt'."""
    key = TEST_KEYS[3]  # throwaway test key
    with running("starlette", tmp_path) as (client, db):
        core = Core(f"sqlite:///{db}")
        core.deposit(TestBuyer.from_key(key).address, 1_000_000, network=NETWORK)
        env = {**os.environ, "SELLER_URL": str(client.base_url).rstrip("/"), "BUYER_KEY": key}
        out = subprocess.run(
            [sys.executable, str(EXAMPLES / "buyer_agent.py")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("/premium   200 paid 10000") == 2, out.stdout
        assert "/free      200 not paid" in out.stdout
        assert core.position(TestBuyer.from_key(key).address, network=NETWORK).locked == 20_000
        core.close()


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_an_example_with_a_bad_database_refuses_to_start(name: str, tmp_path: Path) -> None:
    """A bad FOURMICA_X402_DB stops the server at start-up with the reason; it never starts
    and then fails every request (the Starlette example used to)."""
    env = {**os.environ, "PORT": str(_free_port())}
    env["FOURMICA_X402_DB"] = f"sqlite:///{tmp_path}/no/such/dir/seller.db"
    args = _command(name, int(env["PORT"]))
    done = subprocess.run(
        args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "does not exist" in done.stdout + done.stderr


def test_travel_agent_example_links_and_nets_its_fee_splits(tmp_path: Path) -> None:
    """examples/travel_agent.py: four paid requests to an agent that pays five upstream
    sellers each; the suite runs its task budget out (the user is refunded); a cycle nets it."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "travel_agent.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "TRAVEL_AGENT_DB"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    lines = out.stdout.splitlines()
    requests = [line for line in lines if line.startswith("request ")]
    assert [("-> 200" in r, "-> 503, user refunded" in r) for r in requests] == [
        (True, False),
        (True, False),
        (False, True),
        (True, False),
    ]
    linked = [line.strip() for line in lines if "linked obligations:" in line]
    assert linked == [f"linked obligations: {n}" for n in (5, 5, 4, 5)]
    # The refunded request's four upstream payments stay linked to it; the referrer was not paid.
    third = lines.index(requests[2])
    assert [line.split()[0] for line in lines[third + 2 : third + 6]] == [
        "availability",
        "pricing",
        "booking",
        "validator",
    ]
    assert sum(line.strip().startswith("referrer") and "guarantee" in line for line in lines) == 3
    assert "  fourmica_downstream_paid_spend_atomic = 142000 ($0.142)" in lines
    assert "  fourmica_cost_per_fulfilled_request_atomic = 47333 ($0.047333)" in lines
    netting = lines.index(
        "netting: cycle #1 closed: 22 obligations, gross $0.292 -> 7 net transfers moving $0.15"
    )
    rows = {line.split()[0]: line.split()[1:] for line in lines[netting + 2 : netting + 9]}
    assert rows["user"] == ["$0.15", "$0.00", "-$0.15", "debtor"]
    assert rows["agent"] == ["$0.142", "$0.15", "$0.008", "creditor"]
    assert rows["booking"] == ["$0.00", "$0.055", "$0.055", "creditor"]
    assert set(rows) == {
        "user",
        "agent",
        "availability",
        "pricing",
        "booking",
        "validator",
        "referrer",
    }
    assert lines[-1] == "all checks passed"
    assert TEST_KEYS[1][2:] not in out.stdout + out.stderr  # no key is ever printed
    assert TEST_KEYS[4][2:] not in out.stdout + out.stderr


def _travel_agent(tmp_path: Path) -> tuple[Any, Core, Any, Any]:
    """examples/travel_agent.py loaded as a module, its user and agent funded on a Core of
    their own: (the module, the Core, its in-process hosts, the agent's app)."""
    import importlib.util

    from fourmica_x402.links import Links

    spec = importlib.util.spec_from_file_location("travel_agent", EXAMPLES / "travel_agent.py")
    assert spec and spec.loader
    travel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(travel)
    core = Core(str(tmp_path / "travel.db"))
    for name in ("user", "agent"):
        core.deposit(travel.ADDRESSES[name], 1_000_000, network=NETWORK)
    hosts = travel.Hosts({})
    return travel, core, hosts, travel.agent_app(core, Links(core), hosts)


@pytest.mark.parametrize(
    ("query", "price", "suite"),
    [("&bedroom=2", 50_000, False), ("&room", 70_000, True)],
    ids=["another-key-ending-in-room", "a-bare-room-key"],
)
def test_travel_agent_charges_the_suite_price_exactly_when_it_books_a_suite(
    tmp_path: Path, query: str, price: int, suite: bool
) -> None:
    """examples/travel_agent.py priced a suite when the raw query held ``room=`` and booked one
    when Starlette's parsed query held the key ``room``: ``&bedroom=2`` was charged the suite's
    $0.07 for a plain room, and a bare ``&room`` booked the suite at the room's $0.05."""
    import asyncio

    from fourmica_x402.client import RECEIPT_KEY, AsyncPaymentTransport
    from fourmica_x402.links import Links

    travel, core, hosts, agent = _travel_agent(tmp_path)
    hosts.apps["agent"] = httpx.ASGITransport(app=agent)

    async def ask() -> tuple[int, list[str]]:
        user = AsyncPaymentTransport(travel.USER_KEY, transport=hosts)
        async with httpx.AsyncClient(transport=user, base_url="http://agent") as client:
            response = await client.get(f"/recommend?city=Porto{query}")
        await agent.state.upstream.aclose()
        sold = [link.url or "" for link in Links(core).query()]
        return response.extensions[RECEIPT_KEY].amount, sold

    try:
        paid, sold = asyncio.run(ask())
        assert paid == price
        assert any(url.endswith("/hold-suite") for url in sold) is suite
    finally:
        core.close()


@pytest.mark.parametrize("city", ["%00", "a%0d%0ab", "%7f"], ids=["nul", "crlf", "del"])
def test_travel_agent_answers_a_city_it_cannot_ask_for_400_before_buying_upstream(
    tmp_path: Path, city: str
) -> None:
    """examples/travel_agent.py put the user's city into its upstream URLs as text: a city
    with a control character made httpx raise in the paid handler, a 500 after the user paid.
    It is the user's 400 (refunded) now, and the agent buys nothing upstream for it."""
    import asyncio

    from fourmica_x402.client import RECEIPT_KEY, AsyncPaymentTransport
    from fourmica_x402.links import Links

    travel, core, hosts, agent = _travel_agent(tmp_path)
    hosts.apps["agent"] = httpx.ASGITransport(app=agent, raise_app_exceptions=False)

    async def ask() -> httpx.Response:
        user = AsyncPaymentTransport(travel.USER_KEY, transport=hosts)
        async with httpx.AsyncClient(transport=user, base_url="http://agent") as client:
            response = await client.get(f"/recommend?city={city}")
        await agent.state.upstream.aclose()
        return response

    try:
        response = asyncio.run(ask())
        assert response.status_code == 400, response.text
        assert response.extensions[RECEIPT_KEY].outcome != "paid"
        for name in ("user", "agent"):  # nothing kept from the user, nothing bought upstream
            assert core.position(travel.ADDRESSES[name], network=NETWORK).locked == 0
        assert Links(core).query() == []
        assert core.audit() == []
    finally:
        core.close()


def test_staged_report_example_charges_only_the_stages_served(tmp_path: Path) -> None:
    """examples/staged_report.py: a job served in full, one that fails at stage 2 (refunded,
    stage 3 never sold) and one its budget cannot finish (refused before paying)."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "staged_report.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "STAGED_REPORT_DB"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.strip() for line in out.stdout.splitlines()]
    stages = [line.split()[:3] for line in lines if line.startswith("/report")]
    assert stages == [
        ["/report", "->", "200"],
        ["/report/analyse", "->", "200"],
        ["/report/write", "->", "200"],
        ["/report", "->", "200"],
        ["/report/analyse", "->", "422:"],
    ]
    assert any(line.startswith("refused before paying:") for line in lines)
    jobs = [line.split()[1:3] for line in lines if line.startswith("job_")]
    assert jobs == [["done", "3/3"], ["failed", "1/3"]]
    assert "buyer's collateral locked: $0.07 (served: 3 + 1 stages)" in lines
    assert "audit: ok" in lines


def test_staged_report_example_answers_a_bad_body_400_and_refunds_it(tmp_path: Path) -> None:
    """Its stages read {"topic": …} from the body: a body without one (or not JSON) was a
    KeyError, a 500 after the buyer paid. It is the buyer's 400, refunded."""
    from starlette.testclient import TestClient

    sys.path.insert(0, str(EXAMPLES))
    try:
        import staged_report
    finally:
        sys.path.remove(str(EXAMPLES))
    core = Core(str(tmp_path / "core.db"))
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 1_000_000, network=NETWORK)
    with TestClient(staged_report.seller_app(core), base_url=staged_report.BASE) as client:
        for body in (b"{}", b"not json", b'{"topic": 5}', b"[" * 5000):
            headers = {"content-type": "application/json"}
            challenge = client.post("/report", content=body, headers=headers)
            headers.update(paid_headers(client, buyer, challenge))
            paid = client.post("/report", content=body, headers=headers)
            assert paid.status_code == 400, (body[:20], paid.status_code)
    core.store.deferred.drain()
    assert core.position(buyer.address, network=NETWORK).locked == 0
    assert core.audit() == []
    core.close()


def test_mcp_tool_server_example_sells_tool_calls(tmp_path: Path) -> None:
    """examples/mcp_tool_server.py --demo: an MCP session buys a search and a summary, a free
    ping, and a second search its task budget refuses; locked collateral = what was served."""
    pytest.importorskip("mcp")
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "mcp_tool_server.py"), "--demo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("FOURMICA_X402_DB", "PAY_TO")},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    calls = [line.split()[:2] for line in lines if "  -> " in line]
    assert calls == [
        ["ping", "$0.00"],
        ["search", "$0.01"],
        ["summarize", "$0.05"],
        ["search", "refused"],
    ]
    assert "refused (budget_exhausted)" in lines[-2]
    assert lines[-1] == "paid in all: $0.06; the buyer's collateral locked: $0.06"


def test_metered_stream_example_charges_only_the_slices_sent(tmp_path: Path) -> None:
    """examples/metered_stream.py: one transcript paid slice by slice to its end, one stopped
    when the buyer's budget refused its third slice (no line of it sent)."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "metered_stream.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "METERED_STREAM_DB"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.strip() for line in out.stdout.splitlines()]
    heard = [line for line in lines if line.endswith("of the keynote")]
    assert heard == [f"line {n} of the keynote" for n in (*range(1, 11), *range(1, 7))]
    assert [line for line in lines if line.startswith("ended:")] == [
        "ended: complete, slices paid: 4",
        "ended: buyer_stopped, slices paid: 2",
    ]
    assert any(line.startswith("the policy refused slice 3:") for line in lines)
    assert "buyer's collateral locked: $0.012 (slices sent: 4 + 2)" in lines
    assert "audit: ok" in lines


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("staged_report.py", "STAGED_REPORT_DB"),
        ("metered_stream.py", "METERED_STREAM_DB"),
        # the walkthrough exports FOURMICA_X402_DB: the MCP demo's second run in that shell
        # said "locked: $0.12" for $0.06 paid and exited 1
        ("mcp_tool_server.py --demo", "FOURMICA_X402_DB"),
        # its second run said "the user has 300000 locked but was served 150000" and exited 1
        ("travel_agent.py", "TRAVEL_AGENT_DB"),
    ],
)
def test_an_example_runs_again_on_its_database_given_as_a_url_or_a_path(
    name: str, variable: str, tmp_path: Path
) -> None:
    """``STAGED_REPORT_DB=sqlite:///…`` (a URL, as ``FOURMICA_X402_DB`` takes) was read as a
    directory and failed with a traceback; a second run on the same file exited 1 without a
    word (it compared the buyer's whole lock with this run's)."""
    if name.startswith("mcp_"):
        pytest.importorskip("mcp")
    script, *args = name.split()
    for value in (f"sqlite:///{tmp_path / 'url.db'}", str(tmp_path / "path.db")):
        for _ in range(2):  # the second run on a database the first one used
            out = subprocess.run(
                [sys.executable, str(EXAMPLES / script), *args],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
                env={**os.environ, variable: value},
            )
            assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_the_wsgi_shops_documented_command_keeps_the_core_a_root_deposit_funds(
    tmp_path: Path,
) -> None:
    """shop/wsgi.py's docstring ran gunicorn with ``--chdir examples/django_seller`` and the
    default relative database URL: the seller kept a new, empty Core in examples/django_seller,
    so a buyer funded with ``deposit --db sqlite:///fourmica_x402.db`` from the root (as the
    README does) was refused for want of collateral. Its command, run as written from a copy
    of the repository's root, keeps the Core where that deposit goes."""
    import shutil

    doc = (SHOP / "shop" / "wsgi.py").read_text().split('"""')[1]
    (line,) = [line for line in doc.splitlines() if "gunicorn" in line and "shop.wsgi" in line]
    port = _free_port()
    command = line.replace("gunicorn", f"{sys.executable} -m gunicorn", 1)
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    shutil.copytree(SHOP, tmp_path / "examples" / "django_seller")
    env = {k: v for k, v in os.environ.items() if k != "FOURMICA_X402_DB"}
    proc = subprocess.Popen(["bash", "-c", command], cwd=tmp_path, env=env)
    buyer = TestBuyer.new()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _wait_until_up(client, proc)
            root = Core(
                f"sqlite:///{tmp_path / 'fourmica_x402.db'}"
            )  # what the root's deposit funds
            root.deposit(buyer.address, 1_000_000, network=NETWORK)
            paid = client.get(
                "/premium", headers=paid_headers(client, buyer, client.get("/premium"))
            )
            assert paid.status_code == 200, paid.text
            assert root.position(buyer.address, network=NETWORK).locked == 10_000
            root.close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert not (tmp_path / "examples" / "django_seller" / "fourmica_x402.db").exists()
