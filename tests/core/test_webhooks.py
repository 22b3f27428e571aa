"""Webhooks on a real Core (SQLite file; PostgreSQL where available) and a real HTTP receiver.

The receiver is a ``ThreadingHTTPServer`` on 127.0.0.1; its answers are scripted per test.
Retry timing runs on a FakeClock, so no test sleeps through a backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fourmica_x402.core import Core
from fourmica_x402.errors import ConfigurationError
from fourmica_x402.testing import NETWORK, FakeClock, TestBuyer
from fourmica_x402.webhooks import EVENT_TYPES, Webhooks, sign, verify_signature

T0 = 1_800_000_000.0
ADDRESS = TestBuyer.new().address


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """A webhook endpoint: records every request, answers ``statuses`` in turn, then 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.statuses: deque[int] = deque()
        self.delay = 0.0
        self.retry_after: str | None = None  # sent with each 429
        self.gate: threading.Event | None = None  # when set up, requests wait for it
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.arrived:
                    receiver.requests.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                    receiver.arrived.notify_all()
                if receiver.gate is not None:
                    receiver.gate.wait(30)
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                if status == 429 and receiver.retry_after is not None:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)
            return list(self.requests)

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def dead_url() -> str:
    """A URL on a port nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def core(store_url: str, clock: FakeClock) -> Iterator[Core]:
    c = Core(store_url, clock=clock)
    yield c
    c.close()


@pytest.fixture
def make_hooks(core: Core, clock: FakeClock) -> Iterator[Callable[..., Webhooks]]:
    made: list[Webhooks] = []

    def make(on: Core | None = None, **options: object) -> Webhooks:
        options.setdefault("clock", clock)
        hooks = Webhooks(on or core, **options)  # type: ignore[arg-type]
        made.append(hooks)
        return hooks

    yield make
    for hooks in made:
        hooks.close()


def deposit(core: Core, amount: int = 100) -> None:
    core.deposit(ADDRESS, amount, network=NETWORK)


def drain(hooks: Webhooks, clock: FakeClock, rounds: int = 30) -> None:
    """Run rounds, moving the clock past any backoff, until nothing is pending."""
    for _ in range(rounds):
        hooks.run_once()
        if not hooks.deliveries(status="pending"):
            return
        clock.advance(hooks.max_delay)
    raise AssertionError("deliveries still pending")


# -- subscriptions, signatures ------------------------------------------------------------------


def test_subscriber_gets_exactly_its_event_types_signed(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    hooks = make_hooks()
    deposit(core)  # before any subscription: concerns nobody
    only = hooks.subscribe(receiver.url("/withdrawals"), events=["withdrawal.requested"])
    every = hooks.subscribe(receiver.url("/all"), events="*", secret="s3cret-of-the-receiver")
    deposit(core, 1_000)
    core.request_withdrawal(ADDRESS, 300, network=NETWORK)
    deposit(core, 7)

    assert hooks.enqueue() == 1 + 3
    assert hooks.deliver_due() == 4
    got = receiver.wait_for(4)
    by_path: dict[str, list[Received]] = {}
    for r in got:
        by_path.setdefault(r.path, []).append(r)
    assert [r.headers["x-fourmica-event"] for r in by_path["/withdrawals"]] == [
        "withdrawal.requested"
    ]
    assert sorted(r.headers["x-fourmica-event"] for r in by_path["/all"]) == [
        "collateral.deposited",
        "collateral.deposited",
        "withdrawal.requested",
    ]

    request = by_path["/withdrawals"][0]
    event = core.events(type="withdrawal.requested")[0]
    assert request.json == {
        "id": event.event_id,
        "type": "withdrawal.requested",
        "at": event.at,
        "network": NETWORK,
        "asset": event.asset,
        "address": ADDRESS,
        "data": event.data,
    }
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-fourmica-timestamp"] == str(int(clock()))
    delivery = hooks.deliveries(subscription_id=only.subscription_id)[0]
    assert headers["x-fourmica-delivery"] == str(delivery.delivery_id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    # The signature, by the helper and by hand.
    timestamp, signature = headers["x-fourmica-timestamp"], headers["x-fourmica-signature"]
    assert verify_signature(only.secret, timestamp, request.body, signature, now=clock())
    manual = hmac.new(
        only.secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert signature == f"v1={manual}"
    assert not verify_signature(every.secret, timestamp, request.body, signature, now=clock())
    for r in by_path["/all"]:
        assert verify_signature(
            "s3cret-of-the-receiver",
            r.headers["x-fourmica-timestamp"],
            r.body,
            r.headers["x-fourmica-signature"],
            now=clock(),
        )
    # Nothing new: nothing more.
    assert hooks.run_once() == 0


def test_verify_signature_rejects_tampering_and_stale_timestamps() -> None:
    body = b'{"id":1}'
    header = sign("k", 1000, body)
    assert verify_signature("k", "1000", body, header, now=1000)
    assert verify_signature("k", 1000, body.decode(), header, now=1299)
    assert verify_signature("k", 1000, body, f"v1=00, {header}", now=1000)  # rotation
    assert not verify_signature("k", 1000, body, header, now=1301)  # stale
    assert not verify_signature("k", 1000, body, header, now=699)  # from the future
    assert not verify_signature("k", 1001, body, header, now=1000)  # timestamp changed
    assert not verify_signature("k", 1000, b'{"id":2}', header, now=1000)  # body changed
    assert not verify_signature("other", 1000, body, header, now=1000)
    for bad_header in (None, "", "v1=", header[3:], "v0=" + header[3:]):
        assert not verify_signature("k", 1000, body, bad_header, now=1000)
    assert not verify_signature("k", "soon", body, header, now=1000)
    assert not verify_signature("k", None, body, header, now=1000)
    # A NaN clock or tolerance took a signature of any age; a timestamp is digits only.
    assert not verify_signature("k", 1000, body, header, now=float("nan"))
    assert not verify_signature("k", 1000, body, header, now=10**9, tolerance=float("nan"))
    assert not verify_signature("k", 1000, body, header, now=10**9, tolerance=float("inf"))
    for spelled in ("+1000", "1_000", "01000x", "\u0661000"):
        assert not verify_signature("k", spelled, body, header, now=1000)


@pytest.mark.parametrize(
    ("url", "events", "secret", "message"),
    [
        ("ftp://example.com/hook", ["*"], None, "http:// or https://"),
        ("example.com/hook", ["*"], None, "http:// or https://"),
        ("https:///no-host", ["*"], None, "no host"),
        ("https://example.com/a b", ["*"], None, "whitespace"),
        # httpx wraps a port past 65535: the signed events went to port 34463, another service
        ("http://127.0.0.1:99999/hook", ["*"], None, "port"),
        ("https://hooks..example/hook", ["*"], None, "not a valid host"),
        ("https://example.com/hook", ["debit.payed"], None, "'debit.payed'"),
        ("https://example.com/hook", [], None, "at least one"),
        ("https://example.com/hook", ["*"], "", "secret"),
    ],
)
def test_bad_subscriptions_are_refused_clearly(
    make_hooks: Callable[..., Webhooks],
    url: str,
    events: list[str],
    secret: str | None,
    message: str,
) -> None:
    hooks = make_hooks()
    with pytest.raises(ConfigurationError, match=message) as exc:
        hooks.subscribe(url, events=events, secret=secret)
    assert isinstance(exc.value, ValueError)
    assert hooks.subscriptions(include_inactive=True) == []


def test_bad_settings_are_refused(core: Core) -> None:
    for options in ({"max_attempts": 0}, {"base_delay": 0}, {"base_delay": 10, "max_delay": 1}):
        with pytest.raises(ConfigurationError):
            Webhooks(core, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": float("inf")},
        {"base_delay": float("inf"), "max_delay": float("inf")},
        {"max_attempts": 2**63},
        {"max_attempts": 10**30},
    ],
)
def test_settings_no_delivery_could_run_with_are_refused(
    core: Core, options: dict[str, float]
) -> None:
    """``timeout=inf`` (meant as "no timeout") failed every attempt with the cutoff timer's
    OverflowError, so no event was ever delivered; infinite delays parked a failed delivery
    for good; a ``max_attempts`` past 2**63 - 1 failed every round of the worker (SQLite
    takes no larger integer). Each is a configuration error when the worker is built."""
    with pytest.raises(ConfigurationError):
        Webhooks(core, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", [float("inf"), 1e12, float("nan"), 0, -1])
def test_a_worker_interval_it_cannot_wait_is_refused_at_start(
    make_hooks: Callable[..., Webhooks], interval: float
) -> None:
    """``start(interval=inf)`` (wake on the Core's events only) started a thread that died of
    an OverflowError after its first round: no event was delivered again, and nothing said
    so but a thread traceback. It is a configuration error at ``start``, no thread made."""
    hooks = make_hooks()
    with pytest.raises(ConfigurationError, match="interval"):
        hooks.start(interval=interval)
    assert hooks._thread is None


def test_subscriptions_list_unsubscribe_and_secrets_stay_hidden(
    core: Core, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    hooks = make_hooks()
    sub = hooks.subscribe(receiver.url(), events=["debit.paid", "collateral.deposited"])
    assert sub.events == ("collateral.deposited", "debit.paid")
    assert sub.secret.startswith("whsec_") and len(sub.secret) > 40
    assert sub.secret not in repr(sub) and "secret" not in sub.to_dict()
    assert hooks.subscriptions() == [sub]
    assert hooks.subscription(sub.subscription_id) == sub
    assert set(EVENT_TYPES) >= {"guarantee.validated", "guarantee.cancelled", "debit.paid"}

    deposit(core)
    assert hooks.enqueue() == 1
    assert hooks.unsubscribe(sub.subscription_id) is True
    assert hooks.unsubscribe(sub.subscription_id) is False
    assert hooks.subscriptions() == []
    assert [s.active for s in hooks.subscriptions(include_inactive=True)] == [False]
    [delivery] = hooks.deliveries()
    assert (delivery.status, delivery.last_error) == ("failed", "unsubscribed")
    assert hooks.redeliver(delivery.delivery_id) is False  # not for a gone subscription
    deposit(core)
    assert hooks.run_once() == 0 and receiver.requests == []


def test_a_receivers_password_is_sent_as_basic_auth_never_logged_nor_listed(
    core: Core,
    make_hooks: Callable[..., Webhooks],
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """httpx logs each request's URL at INFO: a password in the URL went to the log on every
    delivery, and GET /admin/webhooks listed it."""
    hooks = make_hooks()
    url = receiver.url().replace("http://", "http://hook:p%40ss-S3CRET@")
    sub = hooks.subscribe(url, ["*"])
    assert sub.to_dict(include_secret=True)["url"] == url  # the answer to the subscription itself
    assert "S3CRET" not in json.dumps([s.to_dict() for s in hooks.subscriptions()])
    assert hooks.subscriptions()[0].to_dict()["url"].startswith("http://hook:***@127.0.0.1:")
    deposit(core)
    with caplog.at_level(logging.DEBUG):
        assert hooks.run_once() == 1
    [got] = receiver.wait_for(1)
    assert got.headers["authorization"] == "Basic aG9vazpwQHNzLVMzQ1JFVA=="  # hook:p@ss-S3CRET
    assert hooks.deliveries()[0].status == "delivered"
    assert "S3CRET" not in caplog.text and "127.0.0.1" in caplog.text


def test_a_receiver_answering_a_byte_at_a_time_is_cut_off_at_the_timeout(
    core: Core, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    """The timeout bounded each read: a receiver sending a byte every 0.2 s held the only
    delivery worker for as long as it liked, and every other subscription waited."""
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)

    def trickle() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    while not stop.wait(0.2):
                        conn.sendall(b"X")
                except OSError:  # cut off
                    pass

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    try:
        hooks = make_hooks(timeout=1.0)
        slow = hooks.subscribe(f"http://127.0.0.1:{listener.getsockname()[1]}/slow", ["*"])
        hooks.subscribe(receiver.url(), ["*"])
        deposit(core)
        started = time.monotonic()
        assert hooks.run_once() == 2
        assert time.monotonic() - started < 10  # before the fix: never
        assert len(receiver.requests) == 1
        by_sub = {d.subscription_id: d for d in hooks.deliveries()}
        assert by_sub[slow.subscription_id].status == "pending"  # retried later
        assert by_sub[slow.subscription_id].last_error == "no answer within 1 s"
    finally:
        stop.set()
        server.join(5)
        listener.close()


# -- retries ------------------------------------------------------------------------------------


def test_fails_twice_then_delivered_on_the_third_attempt_with_backoff(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    hooks = make_hooks(base_delay=10, max_delay=1_000, max_attempts=5)
    sub = hooks.subscribe(receiver.url())
    receiver.statuses.extend([500, 503])
    deposit(core)

    assert hooks.run_once() == 1
    [first] = hooks.deliveries()
    assert (first.status, first.attempts, first.last_status_code) == ("pending", 1, 500)
    assert first.last_error == "HTTP 500"
    assert clock() + 5 <= first.next_attempt_at <= clock() + 10  # 10 s, less jitter
    clock.now = first.next_attempt_at - 0.01
    assert hooks.run_once() == 0  # backoff respected

    clock.now = first.next_attempt_at
    assert hooks.run_once() == 1
    [second] = hooks.deliveries()
    assert (second.status, second.attempts, second.last_status_code) == ("pending", 2, 503)
    assert clock() + 10 <= second.next_attempt_at <= clock() + 20  # doubled
    assert hooks.run_once() == 0

    clock.now = second.next_attempt_at
    assert hooks.run_once() == 1
    [third] = hooks.deliveries(subscription_id=sub.subscription_id)
    assert (third.status, third.attempts, third.last_status_code) == ("delivered", 3, 200)
    assert third.last_error is None and third.delivered_at == clock()
    got = receiver.wait_for(3)
    assert len(got) == 3
    assert len({r.headers["x-fourmica-delivery"] for r in got}) == 1  # stable across retries
    assert len({r.body for r in got}) == 1
    clock.advance(10_000)
    assert hooks.run_once() == 0


def test_receiver_down_is_retried_up_to_max_attempts_then_failed(
    core: Core,
    clock: FakeClock,
    make_hooks: Callable[..., Webhooks],
    dead_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hooks = make_hooks(base_delay=100, max_delay=150, max_attempts=4)
    sub = hooks.subscribe(dead_url, secret="never-to-be-logged-secret")
    deposit(core)
    deposit(core)

    assert hooks.run_once() == 1  # a dead receiver costs one attempt per round, not one per event
    attempts_before = clock()
    drain(hooks, clock)
    log = hooks.deliveries(subscription_id=sub.subscription_id)
    assert [d.status for d in log] == ["failed", "failed"]
    for d in log:
        assert d.attempts == 4
        assert d.last_status_code is None and d.delivered_at is None
        assert d.last_error is not None and "ConnectError" in d.last_error
        assert d.last_attempt_at is not None and d.last_attempt_at > attempts_before
    clock.advance(10_000)
    assert hooks.run_once() == 0  # failed for good
    assert "never-to-be-logged-secret" not in caplog.text
    assert "never-to-be-logged-secret" not in repr(log) + repr(hooks)
    assert "will be retried" in caplog.text and "failed for good" in caplog.text


def test_backoff_is_capped_at_max_delay(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], dead_url: str
) -> None:
    hooks = make_hooks(base_delay=100, max_delay=150, max_attempts=10)
    hooks.subscribe(dead_url)
    deposit(core)
    for attempt in range(1, 6):
        clock.now = max(clock(), hooks.deliveries()[0].next_attempt_at if attempt > 1 else 0)
        assert hooks.run_once() == 1
        d = hooks.deliveries()[0]
        expected = min(150, 100 * 2 ** (attempt - 1))
        assert d.attempts == attempt
        assert clock() + expected / 2 <= d.next_attempt_at <= clock() + expected


def test_a_failed_delivery_can_be_redelivered(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    hooks = make_hooks(max_attempts=1)
    hooks.subscribe(receiver.url())
    receiver.statuses.append(410)
    deposit(core)
    assert hooks.run_once() == 1
    [failed] = hooks.deliveries(status="failed")
    assert (failed.attempts, failed.last_status_code) == (1, 410)
    assert hooks.redeliver(failed.delivery_id) is True
    assert hooks.run_once() == 1
    [done] = hooks.deliveries()
    assert (done.status, done.attempts, done.last_status_code) == ("delivered", 1, 200)
    assert len(receiver.wait_for(2)) == 2


# -- durability ---------------------------------------------------------------------------------


def test_outbox_and_cursor_survive_a_restart(
    store_url: str, clock: FakeClock, receiver: Receiver
) -> None:
    core = Core(store_url, clock=clock)
    hooks = Webhooks(core, clock=clock)
    sub = hooks.subscribe(receiver.url(), events=["collateral.deposited"])
    for amount in (1, 2, 3):
        deposit(core, amount)
    assert hooks.enqueue() == 3
    hooks.close()
    core.close()  # "restart" before anything was delivered

    core = Core(store_url, clock=clock)
    for amount in (4, 5):  # while no Webhooks object exists
        deposit(core, amount)
    core.request_withdrawal(ADDRESS, 1, network=NETWORK)  # not subscribed
    hooks = Webhooks(core, clock=clock)
    try:
        assert hooks.deliver_due() == 3  # the outbox survived
        assert hooks.run_once() == 2  # the cursor remembered where it was
        assert hooks.run_once() == 0 and hooks.enqueue() == 0
        got = receiver.wait_for(5)
        assert [r.json["data"] for r in got] == [{"amount": n} for n in (1, 2, 3, 4, 5)]
        deposits = [e.event_id for e in core.events(type="collateral.deposited")]
        assert sorted(r.json["id"] for r in got) == deposits  # each exactly once
        log = hooks.deliveries(subscription_id=sub.subscription_id)
        assert [d.status for d in log] == ["delivered"] * 5
    finally:
        hooks.close()
        core.close()


_WORKER = """
import sys
from fourmica_x402.core import Core
from fourmica_x402.webhooks import Webhooks
Webhooks(Core(sys.argv[1])).run_once()
"""


def test_a_worker_killed_mid_delivery_loses_nothing(sqlite_url: str, receiver: Receiver) -> None:
    core = Core(sqlite_url)
    with Webhooks(core) as hooks:
        sub = hooks.subscribe(receiver.url())
    deposit(core)
    receiver.gate = threading.Event()  # the request arrives, the answer never leaves
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, sqlite_url])
    try:
        assert len(receiver.wait_for(1, timeout=60)) == 1
    finally:
        worker.kill()
        worker.wait(30)
    receiver.gate.set()
    later = FakeClock(time.time())
    with Webhooks(core, clock=later) as again:
        [claimed] = again.deliveries()
        assert (claimed.status, claimed.attempts) == ("pending", 1)
        assert again.run_once() == 0  # the dead worker's lease still holds
        later.now = claimed.next_attempt_at
        assert again.run_once() == 1
        [done] = again.deliveries(subscription_id=sub.subscription_id)
        assert (done.status, done.attempts) == ("delivered", 2)
    got = receiver.wait_for(2)
    assert got[0].body == got[1].body  # the same event, at least once
    core.close()


def test_two_workers_deliver_each_event_once(store_url: str, receiver: Receiver) -> None:
    cores = [Core(store_url), Core(store_url)]  # as two processes would
    workers = [Webhooks(c) for c in cores]
    workers[0].subscribe(receiver.url())
    receiver.delay = 0.002
    for amount in range(1, 41):
        deposit(cores[amount % 2], amount)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(hooks: Webhooks) -> None:
        try:
            start.wait(10)
            for _ in range(200):
                hooks.run_once(limit=5)
                if not hooks.deliveries(status="pending") and len(receiver.requests) >= 40:
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        counts = Counter(r.json["id"] for r in receiver.requests)
        assert len(counts) == 40 and set(counts.values()) == {1}
        assert [d.status for d in workers[0].deliveries(limit=1000)] == ["delivered"] * 40
        assert all(d.attempts == 1 for d in workers[1].deliveries(limit=1000))
    finally:
        for w, c in zip(workers, cores, strict=True):
            w.close()
            c.close()


def test_background_thread_delivers_as_events_commit(
    core: Core, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    hooks = make_hooks(clock=time.time)
    hooks.subscribe(receiver.url())
    thread = hooks.start(interval=60)  # woken by the Core's commits, not by the interval
    assert hooks.start() is thread
    deposit(core)
    deposit(core)
    assert len(receiver.wait_for(2, timeout=20)) == 2
    hooks.stop()
    assert not thread.is_alive()
    assert [d.status for d in hooks.deliveries()] == ["delivered", "delivered"]


def test_a_subscriptions_repr_hides_the_receivers_password() -> None:
    """``to_dict`` masked a password in the receiver's URL; ``repr`` (what a log line of the
    object shows) printed it."""
    from fourmica_x402.webhooks.models import Subscription

    made = Subscription(
        "wh_1", "https://bob:PASSW0RD@hooks.example/in", ("*",), "s3cret", True, 0.0
    )
    shown = repr(made)
    assert "PASSW0RD" not in shown and "s3cret" not in shown
    assert "bob:***@hooks.example" in shown
    # a token alone in the userinfo is a secret too (the listing and the repr showed it)
    token = Subscription("wh_2", "https://T0KEN@hooks.example/in", ("*",), "s3cret", True, 0.0)
    for shown in (repr(token), str(token.to_dict())):
        assert "T0KEN" not in shown and "https://***@hooks.example/in" in shown


# -- a flaky receiver, a dead one, one that asks to slow down (docs/operations.md, "Webhooks") --


def test_a_failed_answer_does_not_hold_the_subscriptions_other_deliveries(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    """A round stopped a subscription's deliveries at its first 5xx: behind a receiver failing
    30 % of its answers, about two deliveries a second went out, less than a busy seller makes."""
    hooks = make_hooks()
    hooks.subscribe(receiver.url())
    receiver.statuses.extend([503, 200, 503, 200, 200])
    for _ in range(5):
        deposit(core)
    assert hooks.run_once() == 5
    assert sorted(d.status for d in hooks.deliveries()) == ["delivered"] * 3 + ["pending"] * 2
    assert hooks.run_once() == 0  # the two failed ones wait their own backoff
    clock.advance(1)
    assert hooks.run_once() == 2
    assert [d.status for d in hooks.deliveries()] == ["delivered"] * 5


def test_a_string_of_failures_pauses_the_subscription_and_a_2xx_resumes_it(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    hooks = make_hooks(base_delay=10, max_delay=100)
    hooks.subscribe(receiver.url())
    receiver.statuses.extend([500] * 6)
    for _ in range(8):
        deposit(core)
    assert hooks.run_once() == 5  # five failed answers in a row: paused, not hammered
    assert hooks.run_once() == 0
    clock.advance(10)  # the pause (5 to 10 s) is over: one attempt, failed, pauses longer
    assert hooks.run_once() == 1
    clock.advance(5)
    assert hooks.run_once() == 0  # 10 to 20 s now
    clock.advance(hooks.max_delay)
    assert hooks.run_once() == 8  # answered: the rest at once
    assert [d.status for d in hooks.deliveries()] == ["delivered"] * 8


def test_a_paused_subscription_says_so(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    """A failing receiver is paused for every worker, but nothing an operator reads said so:
    deliveries just waited. The subscription carries its failures in a row and its pause."""
    hooks = make_hooks(base_delay=10, max_delay=100)
    sub = hooks.subscribe(receiver.url())
    assert (sub.failures, sub.paused_until) == (0, 0.0)
    receiver.statuses.extend([500] * 5)
    for _ in range(6):
        deposit(core)
    assert hooks.run_once() == 5
    paused = hooks.subscription(sub.subscription_id)
    assert paused is not None and paused.failures == 5 and paused.paused_until > clock()
    listed = [s.to_dict() for s in hooks.subscriptions()]
    assert [(s["failures"], s["paused_until"]) for s in listed] == [(5, paused.paused_until)]
    clock.advance(hooks.max_delay)
    assert hooks.run_once() == 6  # answered: the streak is over
    again = hooks.subscription(sub.subscription_id)
    assert again is not None and again.failures == 0


def test_a_429_pauses_the_subscription_for_its_retry_after(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    """A receiver's ``Retry-After`` was ignored: its deliveries came back after 1, 2, 4 s."""
    hooks = make_hooks()
    sub = hooks.subscribe(receiver.url())
    receiver.statuses.append(429)
    receiver.retry_after = "120"
    deposit(core)
    deposit(core)
    assert hooks.run_once() == 1
    clock.advance(60)
    assert hooks.run_once() == 0  # neither the failed one nor the other: the receiver said 120 s
    assert min(d.next_attempt_at for d in hooks.deliveries()) == T0
    assert max(d.next_attempt_at for d in hooks.deliveries()) >= T0 + 120
    assert hooks.next_due() == T0 + 120
    clock.advance(61)
    assert hooks.run_once() == 2
    assert [d.status for d in hooks.deliveries(subscription_id=sub.subscription_id)] == [
        "delivered",
        "delivered",
    ]


def test_the_worker_wakes_for_another_processes_events(store_url: str, receiver: Receiver) -> None:
    """The worker woke early for its own process's events only: a gate's event (another
    process) waited for the interval."""
    service, gate = Core(store_url), Core(store_url)  # as two processes would
    hooks = Webhooks(service)
    try:
        hooks.subscribe(receiver.url())
        hooks.start(interval=60)
        time.sleep(0.3)  # its first round is over: waiting
        deposit(gate)
        assert len(receiver.wait_for(1, timeout=5)) == 1
    finally:
        hooks.close()
        service.close()
        gate.close()


def test_two_workers_behind_a_flaky_receiver_deliver_each_event_once(
    store_url: str, receiver: Receiver
) -> None:
    """Two worker threads on two Cores (as two processes), a receiver failing about a third of
    its answers: every event is answered 2xx once, and every delivery row is delivered."""
    cores = [Core(store_url), Core(store_url)]
    workers = [Webhooks(c, base_delay=0.01, max_delay=0.05, max_attempts=30) for c in cores]
    workers[0].subscribe(receiver.url())
    receiver.statuses.extend([503 if i % 3 == 0 else 200 for i in range(150)])
    for amount in range(1, 61):
        deposit(cores[amount % 2], amount)
    try:
        for w in workers:
            w.start(interval=0.2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(workers[0].deliveries(status="delivered")) < 60:
            time.sleep(0.05)
        for w in workers:
            w.stop()
        ok = Counter(
            r.json["id"] for i, r in enumerate(receiver.requests) if i >= 150 or i % 3 != 0
        )
        assert len(ok) == 60 and set(ok.values()) == {1}
        assert [d.status for d in workers[1].deliveries(limit=100)] == ["delivered"] * 60
    finally:
        for w, c in zip(workers, cores, strict=True):
            w.close()
            c.close()


@pytest.mark.parametrize(
    "retry_after", ["0", "Thu, 01 Jan 1970 00:00:00 GMT", "\u00b2", "-5", "soon", ""]
)
def test_a_429_pauses_the_subscription_whatever_its_retry_after_says(
    core: Core,
    make_hooks: Callable[..., Webhooks],
    receiver: Receiver,
    retry_after: str,
) -> None:
    """A 429 whose ``Retry-After`` asked for no wait (0, a date past) did not pause the
    subscription, nor did the streak of them: every queued event was tried in the same round.
    One with a digit Python cannot read as a number ("²") was recorded as no answer at all."""
    hooks = make_hooks()
    hooks.subscribe(receiver.url())
    receiver.statuses.extend([429] * 3)
    receiver.retry_after = retry_after
    for _ in range(3):
        deposit(core)
    assert hooks.run_once() == 1  # asked to slow down: the others wait for the pause
    [tried] = [d for d in hooks.deliveries() if d.attempts]
    assert (tried.last_status_code, tried.last_error) == (429, "HTTP 429")
    assert hooks.next_due() > T0


def test_a_dead_receivers_backlog_fails_after_max_age_and_is_redelivered_when_back(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], dead_url: str
) -> None:
    """A paused subscription spends no attempts, so a receiver dead for good kept every event
    pending for ever: a backlog growing with every event. After ``max_age`` it is failed, and
    the operator queues it again once the receiver is back."""
    hooks = make_hooks(max_age=3600, base_delay=10, max_delay=100)
    sub = hooks.subscribe(dead_url)
    for _ in range(3):
        deposit(core)
    hooks.run_once()  # refused: paused at once
    clock.advance(1800)
    deposit(core)  # queued half an hour later
    for _ in range(20):  # an attempt per pause, never eight on one delivery
        hooks.run_once()
        clock.advance(100)
    clock.now = T0 + 3600 + 1
    hooks.run_once()
    states = {d.event_id: d.status for d in hooks.deliveries()}
    assert sorted(states.values()) == ["failed", "failed", "failed", "pending"]
    failed = hooks.deliveries(status="failed")
    assert all(d.last_error and "max_age" in d.last_error for d in failed)
    clock.advance(1800)
    hooks.run_once()
    assert [d.status for d in hooks.deliveries()] == ["failed"] * 4
    # a redelivered one is queued anew: max_age counts from then, not from its event
    assert hooks.redeliver(failed[0].delivery_id)
    hooks.run_once()
    assert hooks.deliveries(status="pending")[0].delivery_id == failed[0].delivery_id
    assert hooks.redeliver_failed(sub.subscription_id) == 3
    assert hooks.redeliver_failed(sub.subscription_id) == 0
    assert hooks.redeliver_failed("wh_\x00") == 0  # names none (PostgreSQL refused the NUL)
    assert len(hooks.deliveries(status="pending")) == 4


def test_max_age_spares_a_delivery_in_flight(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    """A delivery claimed by a worker is not failed under it: the receiver's answer decides."""
    hooks = make_hooks(max_age=20)
    hooks.subscribe(receiver.url())
    deposit(core)
    hooks.enqueue()
    ((delivery_id, _),) = hooks._due(10)
    assert hooks._claim(delivery_id, "lease-1") is not None
    clock.advance(30)  # past max_age; the claim's lease (60 s at least) still runs
    assert hooks._due(10) == []
    assert [d.status for d in hooks.deliveries()] == ["pending"]


def test_max_age_must_be_a_finite_positive_time(core: Core) -> None:
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ConfigurationError, match="max_age"):
            Webhooks(core, max_age=bad)


def test_an_operator_resumes_a_paused_subscription(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    """A receiver back up: nothing ended its pause before it ran out (up to 300 s), nor did a
    2xx another worker got meanwhile. ``resume`` makes its waiting deliveries due now."""
    hooks = make_hooks(base_delay=10, max_delay=300)
    sub = hooks.subscribe(receiver.url())
    receiver.statuses.extend([500] * 5)
    for _ in range(6):
        deposit(core)
    assert hooks.run_once() == 5
    assert hooks.run_once() == 0  # paused
    assert hooks.resume(sub.subscription_id)
    resumed = hooks.subscription(sub.subscription_id)
    assert resumed is not None and (resumed.failures, resumed.paused_until) == (0, 0.0)
    assert hooks.next_due() == clock()
    assert hooks.run_once() == 6
    assert [d.status for d in hooks.deliveries()] == ["delivered"] * 6
    assert not hooks.resume("wh_nobody") and not hooks.resume("wh_\x00")
    hooks.unsubscribe(sub.subscription_id)
    assert not hooks.resume(sub.subscription_id)


def test_a_2xx_after_max_age_failed_the_delivery_under_its_attempt_is_recorded_delivered(
    core: Core, clock: FakeClock, make_hooks: Callable[..., Webhooks], receiver: Receiver
) -> None:
    """An attempt outliving its lease (a worker stalled, or another process's clock ahead) has
    its delivery failed for age by another worker; the receiver then answers 2xx. The answer
    was dropped (only a pending delivery could be marked delivered): the log said "not
    delivered within max_age", and redeliver_failed sent the receiver the event again."""
    hooks = make_hooks(max_age=20)
    sub = hooks.subscribe(receiver.url())
    deposit(core)
    hooks.enqueue()
    ((delivery_id, _),) = hooks._due(10)
    claimed = hooks._claim(delivery_id, "lease-1")
    assert claimed is not None
    clock.advance(hooks.lease + 1)  # the lease is over: another worker's round ages it out
    assert hooks._due(10) == []
    assert [d.status for d in hooks.deliveries()] == ["failed"]
    hooks._record(delivery_id, sub.subscription_id, "lease-1", int(claimed[0]), (200, None, None))
    (delivered,) = hooks.deliveries()
    assert (delivered.status, delivered.last_error) == ("delivered", None)
    assert hooks.redeliver_failed(sub.subscription_id) == 0
    assert hooks.redeliver_failed("wh_\x00") == 0  # names none (PostgreSQL refused the NUL)
