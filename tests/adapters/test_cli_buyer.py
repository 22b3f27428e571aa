"""`fourmica-x402 pay` and `key address` with every way to give the key (docs/buyer.md, "Keys")
and against a seller that sends numbers as strings (docs/buyer.md, "Challenges"); `offers` and
``discover`` listing a seller's prices before paying (docs/buyer.md, "Listing offers"). A real
WSGI seller on loopback, a real Core on a SQLite file; the key never shows in output or logs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fourmica_x402.cli import main
from fourmica_x402.client import adiscover, discover
from fourmica_x402.core import Core
from fourmica_x402.errors import DiscoveryFailed
from fourmica_x402.networks import default_asset
from fourmica_x402.testing import NETWORK, TEST_KEYS, TestBuyer

KEY = TEST_KEYS[1]  # a throwaway test key
ADDRESS = TestBuyer.from_key(KEY).address
PASSWORD = "tr0ub4dor&3"
PAY_TO = "0x" + "22" * 20
CLEAN = {"FOURMICA_X402_KEY": None, "BUYER_KEY": None, "BUYER_PASSWORD": None}


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner(env={**CLEAN, **(env or {})}).invoke(main, list(args), input=stdin)


def clean(result: Result) -> str:
    """Everything the command wrote; asserts it holds no traceback, key or password."""
    everything = result.stdout + result.stderr
    assert "Traceback" not in everything, everything
    assert result.exception is None or isinstance(result.exception, SystemExit), everything
    for secret in (KEY, KEY[2:], KEY[2:].upper(), PASSWORD):
        assert secret not in everything
    return everything


def error_line(result: Result, code: int) -> str:
    clean(result)
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


def official_extra(app: Any, values: dict[str, Any]) -> Any:
    """The seller as one on the official stack shows itself: its configured ``extra`` passed
    through, numbers as strings, in every challenge; its tab endpoint takes them as they are."""

    def rewrite(header: str) -> str:
        required = json.loads(base64.b64decode(header))
        for offer in required["accepts"]:
            offer["extra"].update(values)
        return base64.b64encode(json.dumps(required).encode()).decode()

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"].endswith("/tab"):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            data = json.loads(body)
            extra = data["paymentRequirements"]["extra"]
            for name in values:
                extra[name] = int(str(extra[name]), 0)
            body = json.dumps(data).encode()
            environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status.startswith("402"):
                headers = [
                    (k, rewrite(v) if k.lower() == "payment-required" else v) for k, v in headers
                ]
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return wrapped


@contextlib.contextmanager
def loopback(app: Any) -> Iterator[str]:
    """``app`` (WSGI) served on 127.0.0.1; yields its origin."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def seller(
    tmp_path: Path, extra: dict[str, Any] | None = None, **options: Any
) -> Iterator[tuple[str, Core]]:
    """Our WSGI seller ($0.01 at /premium) on loopback; ``extra`` rewrites its challenges,
    ``options`` are PaymentConfig's."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    from fourmica_x402 import PaymentConfig

    db = f"sqlite:///{tmp_path / 'core.db'}"
    core = Core(db)
    core.deposit(ADDRESS, 1_000_000, network=NETWORK)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"premium": true}']

    options = {"routes": {"GET /premium": "$0.01"}, **options}
    served: Any = PaymentMiddleware(app, config=PaymentConfig(pay_to=PAY_TO, core=db, **options))
    if extra:
        served = official_extra(served, extra)
    try:
        with loopback(served) as origin:
            yield f"{origin}/premium", core
    finally:
        core.close()


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    from eth_account import Account

    path = tmp_path / "buyer.json"
    path.write_text(json.dumps(Account.encrypt(KEY, PASSWORD, kdf="pbkdf2", iterations=1024)))
    return path


def paid(result: Result) -> dict[str, Any]:
    clean(result)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["status"] == 200 and out["receipt"]["outcome"] == "paid", out
    assert out["receipt"]["payer"] == ADDRESS
    return out


def test_pay_with_a_keystore_file_an_env_key_or_a_prompt(
    tmp_path: Path, keystore: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), seller(tmp_path) as (url, core):
        env = {"BUYER_PASSWORD": PASSWORD}
        paid(
            cli(
                "pay", url, "--key-file", str(keystore), "--password-env", "BUYER_PASSWORD", env=env
            )
        )
        paid(cli("pay", url, "--key-env", "BUYER_KEY", env={"BUYER_KEY": KEY}))
        prompted = cli("pay", url, "--key-file", str(keystore), stdin=PASSWORD + "\n")
        paid(prompted)
        assert f"Password for {keystore}" in prompted.stderr
        # FOURMICA_X402_KEY is set to another key: the explicit --key-env wins
        other = {"FOURMICA_X402_KEY": TEST_KEYS[2], "BUYER_KEY": KEY}
        paid(cli("pay", url, "--key-env", "BUYER_KEY", env=other))
        assert len(core.guarantees()) == 4
    for secret in (KEY, KEY[2:], PASSWORD):
        assert secret not in caplog.text


def test_key_address_takes_the_same_options(keystore: Path) -> None:
    env = {"BUYER_PASSWORD": PASSWORD, "BUYER_KEY": KEY}
    for args in (
        ["--key-file", str(keystore), "--password-env", "BUYER_PASSWORD"],
        ["--key-env", "BUYER_KEY"],
        ["--key", KEY],
    ):
        result = cli("key", "address", *args, env=env)
        assert clean(result) and result.exit_code == 0 and result.stdout.strip() == ADDRESS
    result = cli("key", "address", env={"FOURMICA_X402_KEY": KEY})
    assert result.stdout.strip() == ADDRESS


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (
            ["--key-file", "KEYSTORE", "--password-env", "P"],
            {"P": PASSWORD + "x"},
            "wrong password",
        ),
        (["--key-file", "KEYSTORE", "--password-env", "NOPE"], {}, "NOPE is not set"),
        (["--key-file", "KEYSTORE"], {}, "no password given"),
        (["--key-file", "MISSING", "--password-env", "P"], {"P": PASSWORD}, "cannot read"),
        (["--key-file", "MISSING"], {}, "no keystore file at"),  # not asked for a password
        (["--key-file", "NOT_JSON", "--password-env", "P"], {"P": PASSWORD}, "not a keystore"),
        # pbkdf2 with 2**31 rounds: many minutes of deriving, nothing printed
        (["--key-file", "COSTLY", "--password-env", "P"], {"P": PASSWORD}, "unsupported file"),
        (["--key-env", "BUYER_KEY"], {}, "BUYER_KEY holds no key"),
        (["--key-env", "BUYER_KEY"], {"BUYER_KEY": KEY[:-2]}, "BUYER_KEY: a private key is 32"),
        (["--key-env", "BUYER_KEY"], {"BUYER_KEY": "0x" + "00" * 32}, "BUYER_KEY: not a valid"),
        (["--key", KEY, "--key-file", "KEYSTORE"], {}, "give one key, not --key and --key-file"),
        (["--key-env", "A", "--key-file", "KEYSTORE"], {}, "give one key"),
        (["--key", KEY, "--password-env", "P"], {}, "'--password-env': goes with --key-file"),
        ([], {}, "give the buyer's key"),
        # a bad key in the environment names the variable (there was no --key)
        (
            [],
            {"FOURMICA_X402_KEY": KEY[:-2]},
            "Invalid value for environment variable FOURMICA_X402_KEY: a private key is 32",
        ),
        (
            [],
            {"FOURMICA_X402_KEY": "0x" + "00" * 32},
            "Invalid value for environment variable FOURMICA_X402_KEY: not a valid",
        ),
        ([], {"FOURMICA_X402_KEY": "nope"}, "FOURMICA_X402_KEY: not a hex private key"),
        (["--key", "nope"], {}, "Invalid value for '--key': not a hex private key"),
    ],
)
def test_key_problems_are_one_clean_error_line(
    tmp_path: Path, keystore: Path, args: list[str], env: dict[str, str], says: str
) -> None:
    (tmp_path / "not.json").write_text("{nope")
    costly = json.loads(keystore.read_text())
    costly["crypto"]["kdfparams"]["c"] = 2**31 - 1
    (tmp_path / "costly.json").write_text(json.dumps(costly))
    paths = {
        "KEYSTORE": keystore,
        "MISSING": tmp_path / "none.json",
        "NOT_JSON": tmp_path / "not.json",
        "COSTLY": tmp_path / "costly.json",
    }
    args = [str(paths.get(a, a)) for a in args]
    line = error_line(cli("pay", "http://127.0.0.1:9/premium", *args, env=env), 2)
    assert says in line, line


def test_a_seller_sending_numbers_as_strings_is_paid(tmp_path: Path) -> None:
    strings = {"validationChainId": "84532", "minValidationScore": "100"}
    with seller(tmp_path, strings) as (url, core):
        out = paid(cli("pay", url, "--key", KEY))
        claims = json.loads(out["receipt"]["claims"])
        assert claims["validation_chain_id"] == 84532 and claims["min_validation_score"] == 100
        assert core.guarantee(out["receipt"]["guarantee_id"]).version == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("validationChainId", "84532 "),
        ("validationChainId", "-84532"),
        ("validationChainId", "eighty"),
        ("minValidationScore", "1e2"),
        ("minValidationScore", "0100"),
    ],
)
def test_a_bad_number_in_a_challenge_is_a_clean_refusal(
    tmp_path: Path, field: str, value: str
) -> None:
    with seller(tmp_path, {field: value}) as (url, core):
        result = cli("pay", url, "--key", KEY)
        clean(result)
        assert result.exit_code == 1, result.output
        out = json.loads(result.stdout)
        assert out["paid"] is False and out["error"] == "payment_failed"
        assert field in out["message"], out["message"]
        assert core.guarantees() == []  # nothing signed, nothing settled


@pytest.mark.parametrize("bad", ["http://a..b/tab", "http://xn--a.com/tab", "http://h:99999/tab"])
def test_a_tab_endpoint_no_request_can_go_to_is_a_clean_refusal(tmp_path: Path, bad: str) -> None:
    """A seller's tabEndpoint is checked as a URL given to ``pay`` is: refused, not sent to
    (an encoding error, or a port wrapped onto another)."""
    with seller(tmp_path, {"tabEndpoint": bad}) as (url, core):
        result = cli("pay", url, "--key", KEY)
        clean(result)
        assert result.exit_code == 1, result.output
        out = json.loads(result.stdout)
        assert out["paid"] is False and "tabEndpoint" in out["message"], out
        assert core.guarantees() == []


# -- listing offers before paying -----------------------------------------------------------------


def test_offers_lists_the_prices_and_the_listed_offer_is_paid(tmp_path: Path) -> None:
    # a seller's escape sequence (here: clear the screen) never reaches the buyer's terminal
    quoted = {"price": lambda request: "$0.05", "description": "a quote\x1b[2J"}
    routes = {"GET /premium": "$0.01", "POST /quote/:id": quoted}
    with seller(tmp_path, routes=routes) as (url, core):
        shown = cli("offers", url, env={"COLUMNS": "200"})
        assert clean(shown) and shown.exit_code == 0, shown.output
        assert "\x1b" not in shown.stdout and "a quote\ufffd[2J" in shown.stdout
        for text in ("/premium", "$0.01", "/quote/{id}", "set per request", "a quote", PAY_TO):
            assert text in shown.stdout, (text, shown.stdout)
        narrow = cli("offers", url, env={"COLUMNS": "60"}).stdout  # folded, never cut
        assert "…" not in narrow and PAY_TO[-8:] in narrow.replace("│", "").replace(" ", "")
        as_json = cli("offers", url, "--json")
        assert clean(as_json) and as_json.exit_code == 0, as_json.output
        premium, quote = json.loads(as_json.stdout)
        assert premium["method"] == "GET" and premium["url"].endswith("/premium")
        (offer,) = premium["accepts"]
        assert offer["amount"] == 10_000 and offer["price"] == "$0.01"
        assert offer["pay_to"] == PAY_TO and offer["per_request"] == []
        assert quote["method"] == "POST" and quote["url"].endswith("/quote/{id}")
        assert quote["description"] == "a quote\x1b[2J"  # JSON escapes it
        assert quote["accepts"][0]["amount"] is None
        assert quote["accepts"][0]["per_request"] == ["amount", "asset"]
        # the library reads the same listing, sync and async, from any URL of the seller
        origin = url.removesuffix("/premium")
        found = discover(origin)
        assert found == asyncio.run(adiscover(url)) == discover(origin + "/.well-known/x402")
        assert [(r.method, r.accepts[0].amount) for r in found] == [("GET", 10_000), ("POST", None)]
        # pay no more than the listing said (its price, docs/buyer.md "Listing offers"): the
        # receipt charges exactly that
        out = paid(cli("pay", url, "--key", KEY, "--max-price", offer["price"]))
        assert out["receipt"]["amount"] == offer["amount"] == 10_000
        assert len(core.guarantees()) == 1


def test_pay_follows_a_redirect_to_the_priced_route_and_pays_once(tmp_path: Path) -> None:
    """``pay`` on a URL the seller redirects (``/premium/`` to ``/premium``, say) printed the
    307 and paid nothing; the official buyer follows it and pays once."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    from fourmica_x402 import PaymentConfig

    db = f"sqlite:///{tmp_path / 'core.db'}"
    core = Core(db)
    core.deposit(ADDRESS, 1_000_000, network=NETWORK)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/old":
            start_response("307 Temporary Redirect", [("location", "/premium")])
            return [b""]
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"premium": true}']

    config = PaymentConfig(pay_to=PAY_TO, core=db, routes={"GET /premium": "$0.01"})
    try:
        with loopback(PaymentMiddleware(app, config=config)) as origin:
            out = paid(cli("pay", f"{origin}/old", "--key", KEY))
        assert out["body"] == {"premium": True} and out["receipt"]["amount"] == 10_000
        assert [g.amount for g in core.guarantees()] == [10_000]
    finally:
        core.close()


def _challenge(origin: str, path: str) -> str:
    """A hand-made seller's PAYMENT-REQUIRED for ``origin + path``: $0.01 on NETWORK, its tab
    endpoint at ``origin/tab``."""
    offer = {
        "scheme": "4mica-credit",
        "network": NETWORK,
        "asset": default_asset(NETWORK).address,
        "amount": "10000",
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {"tabEndpoint": f"{origin}/tab"},
    }
    required = {"x402Version": 2, "accepts": [offer], "resource": {"url": origin + path}}
    return base64.b64encode(json.dumps(required).encode()).decode()


def test_pay_says_a_call_that_paid_before_a_refused_hop_paid() -> None:
    """A seller (hostile, keeping the payment) answering the paid request with a redirect to
    another priced URL: the hop asking again is refused (one call pays once), and ``pay``
    printed ``"paid": false`` though the call's payment was taken: a script retrying it paid
    again. It says ``"paid": true`` now."""
    kept = base64.b64encode(json.dumps({"success": True, "network": NETWORK}).encode())

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        origin, path = f"http://{environ['HTTP_HOST']}", environ["PATH_INFO"]
        if path == "/tab":
            user = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            tab = {"tabId": "0x1", "nextReqId": "0x1", "userAddress": user["userAddress"]}
            start_response("200 OK", [("content-type", "application/json")])
            return [json.dumps(tab).encode()]
        if path == "/premium" and "HTTP_PAYMENT_SIGNATURE" in environ:
            start_response(
                "302 Found", [("location", "/again"), ("payment-response", kept.decode())]
            )
            return [b""]
        start_response("402 Payment Required", [("payment-required", _challenge(origin, path))])
        return [b"{}"]

    with loopback(app) as origin:
        result = cli("pay", f"{origin}/premium", "--key", KEY)
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["error"] == "payment_failed" and "one call pays once" in out["message"], out
    assert out["paid"] is True, out


def test_pay_interrupted_after_its_payment_left_says_it_paid(tmp_path: Path) -> None:
    """Ctrl-C while the seller works on the paid request: ``pay`` printed only "Aborted!", so
    the user ran it again and paid twice. It prints ``"paid": true`` with the receipt (outcome
    ``unanswered``, its ids), as for a call that got no answer within ``--timeout``."""
    import signal

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        origin, path = f"http://{environ['HTTP_HOST']}", environ["PATH_INFO"]
        if path == "/tab":
            user = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            tab = {"tabId": "0x1", "nextReqId": "0x7", "userAddress": user["userAddress"]}
            start_response("200 OK", [("content-type", "application/json")])
            return [json.dumps(tab).encode()]
        if "HTTP_PAYMENT_SIGNATURE" in environ:  # the user presses Ctrl-C while this works
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            time.sleep(3)
        start_response("402 Payment Required", [("payment-required", _challenge(origin, path))])
        return [b"{}"]

    receipts = tmp_path / "receipts.db"
    with loopback(app) as origin:
        result = cli("pay", f"{origin}/premium", "--key", KEY, "--receipts", str(receipts))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and KEY[2:] not in result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["paid"] is True and "a retry pays again" in out["message"], out
    assert out["receipt"]["outcome"] == "unanswered" and out["receipt"]["request_id"] == "0x7"


def test_pay_refused_says_unpaid_though_another_process_paid_into_the_same_ledger(
    tmp_path: Path,
) -> None:
    """Two ``pay`` runs sharing ``--receipts`` (as processes sharing budgets do): one refused
    before paying (over ``--max-price``) said ``"paid": true`` because the other run's paid
    receipt landed in the file meanwhile; a script then took a refused call for a paid one."""
    from fourmica_x402.client import Receipt, ReceiptLedger

    shared = tmp_path / "receipts.db"
    ReceiptLedger(shared).close()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        other = ReceiptLedger(shared)  # the other run, paying as this one asks
        other.append(Receipt(outcome="paid", url="http://elsewhere/x", amount=5, status=200))
        other.close()
        origin, path = f"http://{environ['HTTP_HOST']}", environ["PATH_INFO"]
        start_response("402 Payment Required", [("payment-required", _challenge(origin, path))])
        return [b"{}"]

    with loopback(app) as origin:
        result = cli(
            "pay", f"{origin}/premium", "--key", KEY, "--max-price", "1u",
            "--receipts", str(shared),
        )  # fmt: skip
    clean(result)
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert "error" in out, out
    assert out["paid"] is False, out


def test_pay_with_data_posts_it_as_curl_does(tmp_path: Path) -> None:
    """``pay URL --data '{…}'`` sent its body with a GET: a seller pricing ``POST /jobs`` saw
    an unpriced GET (no payment, no job), and one pricing GET too was paid for the wrong
    call. A body goes with POST, as curl's ``-d``, unless ``--method`` names another."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    from fourmica_x402 import PaymentConfig

    db = f"sqlite:///{tmp_path / 'core.db'}"
    core = Core(db)
    core.deposit(ADDRESS, 1_000_000, network=NETWORK)
    seen: list[tuple[str, bytes]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        seen.append((environ["REQUEST_METHOD"], body))
        start_response("200 OK", [("content-type", "application/json")])
        return [b'{"job": "queued"}']

    routes = {"POST /jobs": "$0.05", "GET /jobs": "$0.01"}
    config = PaymentConfig(pay_to=PAY_TO, core=db, routes=routes)
    try:
        with loopback(PaymentMiddleware(app, config=config)) as origin:
            out = paid(cli("pay", f"{origin}/jobs", "--key", KEY, "--data", '{"task": "x"}'))
            assert out["receipt"]["amount"] == 50_000 and seen[-1][0] == "POST"
            assert json.loads(seen[-1][1]) == {"task": "x"}
            named = cli("pay", f"{origin}/jobs", "--key", KEY, "--data", "{}", "--method", "PUT")
            assert json.loads(named.stdout)["status"] == 200 and seen[-1][0] == "PUT"  # unpriced
            assert paid(cli("pay", f"{origin}/jobs", "--key", KEY))["receipt"]["amount"] == 10_000
            assert seen[-1] == ("GET", b"")
        assert sorted(g.amount for g in core.guarantees()) == [10_000, 50_000]
    finally:
        core.close()


#: URLs no request can go to, and what the refusal says: httpx refuses the address, the socket
#: cannot encode the name, and httpx would wrap the port onto another (99999 - 65536: 34463).
UNREACHABLE = {
    "http://256.1.1.1/": "not a valid host (Invalid IPv4 address",
    "http://a..b/": "not a valid host (encoding with 'idna' codec failed",
    "http://127.0.0.1:99999/": "the port is not a number 0..65535",
}


def test_pay_refuses_a_url_no_request_can_go_to() -> None:
    for bad, says in UNREACHABLE.items():
        assert says in error_line(cli("pay", bad, "--key", KEY), 2)


def test_a_redirect_to_a_host_no_request_can_go_to_is_one_clean_error() -> None:
    """Checked up front, such a URL can still come as a redirect: ``pay`` and ``discover``
    (with a client that follows redirects) say the request failed, nothing paid."""
    import httpx

    def away(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("307 Temporary Redirect", [("location", "http://a..b/")])
        return [b""]

    with loopback(away) as origin:
        assert "request failed" in error_line(cli("pay", origin + "/premium", "--key", KEY), 1)
        with (
            httpx.Client(follow_redirects=True) as client,
            pytest.raises(DiscoveryFailed, match="request failed"),
        ):
            discover(origin, client=client)

        async def listed() -> Any:
            async with httpx.AsyncClient(follow_redirects=True) as client:
                return await adiscover(origin, client=client)

        with pytest.raises(DiscoveryFailed, match="request failed"):
            asyncio.run(listed())


def _answering(status: str, body: bytes, kind: str = "application/json") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("content-type", kind)])
        return [body]

    return app


@pytest.mark.parametrize(
    ("app", "says"),
    [
        (_answering("200 OK", b"<html>hi</html>", "text/html"), "the answer is not JSON"),
        (_answering("200 OK", b"[1, 2]"), "the listing: expected a JSON object"),
        (_answering("200 OK", b'{"resources": {}}'), "resources: expected a list"),
        (
            _answering("200 OK", b'{"resources": [{"resource": "http://x/a", "method": "GET"}]}'),
            "resources[0].accepts: expected a list",
        ),
        (
            _answering(
                "200 OK",
                b'{"resources": [{"resource": "http://x/a", "accepts": [{"scheme": "s", '
                b'"network": "n", "amount": "-1"}]}]}',
            ),
            "resources[0].accepts[0].amount",
        ),
        (_answering("500 Internal Server Error", b"{}"), "answered HTTP 500"),
        (_answering("404 Not Found", b"{}"), "publishes no listing"),
    ],
)
def test_a_bad_listing_is_one_clean_error_line(app: Any, says: str) -> None:
    with loopback(app) as origin:
        line = error_line(cli("offers", origin + "/premium"), 1)
        assert says in line and "/.well-known/x402" in line, line
        with pytest.raises(DiscoveryFailed, match=re.escape(says)):
            discover(origin)


def test_a_listing_past_its_limit_is_read_no_further() -> None:
    """The 4 MiB limit stops the read itself: a seller streaming a listing without end does
    not fill the buyer's memory (docs/buyer.md, "Listing offers")."""
    sent = [0]

    def endless(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("content-type", "application/json")])
        for _ in range(1024):  # 64 MiB at most
            sent[0] += 1
            yield b" " * 65_536

    with loopback(endless) as origin:
        with pytest.raises(DiscoveryFailed, match="larger than 4194304 bytes"):
            discover(origin)
        with pytest.raises(DiscoveryFailed, match="larger than 4194304 bytes"):
            asyncio.run(adiscover(origin))
    assert sent[0] < 512  # the server stopped once the client hung up, far short of 64 MiB


def test_offers_refuses_a_bad_url_or_a_seller_without_a_listing(tmp_path: Path) -> None:
    assert "is not an http(s):// URL" in error_line(cli("offers", "ftp://example.com"), 2)
    for bad, says in UNREACHABLE.items():
        assert says in error_line(cli("offers", bad), 2)
        with pytest.raises(DiscoveryFailed, match=re.escape(says)):
            discover(bad)
        with pytest.raises(DiscoveryFailed, match=re.escape(says)):
            asyncio.run(adiscover(bad))
    assert "request failed" in error_line(cli("offers", "http://127.0.0.1:9/"), 1)
    with seller(tmp_path, discovery=False) as (url, _):  # the app answers it: not a listing
        assert "resources: expected a list" in error_line(cli("offers", url), 1)


def test_a_url_s_password_or_token_is_never_printed(tmp_path: Path) -> None:
    """``offers`` and ``pay`` printed a URL's ``user:password@`` (or a bare token) as typed:
    in the refusal of a bad URL, the failed listing's line, the table's title."""
    for secret, userinfo in (("s3cret", "u:s3cret"), ("T0KEN", "T0KEN")):
        lines = [
            error_line(cli("offers", f"http://{userinfo}@[::1/"), 2),
            error_line(cli("offers", f"http://{userinfo}@127.0.0.1:99999/"), 2),
            error_line(cli("offers", f"http://{userinfo}@127.0.0.1:9/"), 1),
            error_line(cli("pay", f"http://{userinfo}@127.0.0.1:99999/x", "--key", KEY), 2),
        ]
        for line in lines:
            assert secret not in line and "***@" in line, line
    with seller(tmp_path) as (url, _):
        shown = cli("offers", url.replace("http://", "http://u:s3cret@", 1))
        assert shown.exit_code == 0, shown.output
        assert "s3cret" not in shown.output and "u:***@" in shown.output
        # pay's receipt named the URL paid as typed, on every paid call
        for secret, userinfo in (("s3cret", "u:s3cret"), ("T0KEN", "T0KEN")):
            out = paid(cli("pay", url.replace("http://", f"http://{userinfo}@", 1), "--key", KEY))
            assert secret not in json.dumps(out) and "***@127.0.0.1" in out["receipt"]["url"]


def test_a_seller_sending_a_byte_at_a_time_is_cut_off_at_the_timeout() -> None:
    """``--timeout`` is seconds per HTTP call, but httpx bounds each read only: a seller
    sending a byte now and then held ``pay`` (its tab endpoint) and ``offers`` (its listing)
    as long as it liked. The answers they read arrive whole within it (docs/buyer.md,
    "Challenges")."""
    from fourmica_x402.networks import default_asset

    def dripping(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == "/premium":
            offer = {
                "scheme": "4mica-credit",
                "network": NETWORK,
                "asset": default_asset(NETWORK).address,
                "amount": "10000",
                "payTo": PAY_TO,
                "extra": {"tabEndpoint": f"http://{environ['HTTP_HOST']}/tab"},
            }
            required = json.dumps({"x402Version": 2, "accepts": [offer]}).encode()
            header = base64.b64encode(required).decode()
            start_response("402 Payment Required", [("payment-required", header)])
            return [b""]
        start_response("200 OK", [("content-type", "application/json")])
        return drip()

    def drip() -> Iterator[bytes]:
        for _ in range(40):  # 8 s at most
            yield b" "
            time.sleep(0.2)

    with loopback(dripping) as origin:
        for args in (["pay", origin + "/premium", "--key", KEY], ["offers", origin]):
            started = time.monotonic()
            # each byte comes well within 1.5 s (httpx's per-read timeout, even on a loaded
            # machine); the whole answer would take 8 s
            line = error_line(cli(*args, "--timeout", "1.5"), 1)
            assert "did not arrive whole within 1.5 s" in line, line
            assert time.monotonic() - started < 6, args


@pytest.mark.parametrize("fails", ["garbled", "late"])
def test_pay_says_a_payment_was_made_when_its_answer_then_fails(tmp_path: Path, fails: str) -> None:
    """The seller takes the payment, then answers with a body labelled gzip that is not, or
    not within ``--timeout``: ``pay`` printed only "request failed", and a script retrying
    it paid again. It says a payment was made now, with the receipt (its tab and request ids,
    its outcome), and exits 1."""
    from fourmica_x402.adapters.wsgi import PaymentMiddleware

    from fourmica_x402 import PaymentConfig

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if fails == "late":
            time.sleep(3)  # past the buyer's 1 s read timeout
        start_response("200 OK", [("content-encoding", "gzip")])
        return [b"definitely not gzip"]

    db = f"sqlite:///{tmp_path / 'core.db'}"
    core = Core(db)
    core.deposit(ADDRESS, 1_000_000, network=NETWORK)
    config = PaymentConfig(pay_to=PAY_TO, core=db, routes={"GET /premium": "$0.01"})
    try:
        with loopback(PaymentMiddleware(app, config=config)) as origin:
            result = cli("pay", f"{origin}/premium", "--key", KEY, "--timeout", "1")
    finally:
        core.close()
    clean(result)
    assert result.exit_code == 1, result.output
    out = json.loads(result.stdout[result.stdout.index("{") :])
    assert out["paid"] is True and "after its payment was made" in out["message"], out
    receipt = out["receipt"]
    assert receipt["outcome"] == ("paid" if fails == "garbled" else "unanswered"), receipt
    assert receipt["tab_id"] and receipt["request_id"] and receipt["payer"] == ADDRESS


def forwarding(seen: list[tuple[str, str]]) -> Any:
    """A forward HTTP proxy (WSGI, for loopback): notes each request's method and path and
    sends it on to the URL it names."""
    import httpx

    dropped = {"host", "connection", "proxy-connection", "content-length"}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        url = environ["PATH_INFO"]  # a proxied request names the absolute URL
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        seen.append((environ["REQUEST_METHOD"], url.split("/", 3)[-1]))
        headers = {
            name[5:].replace("_", "-").lower(): value
            for name, value in environ.items()
            if name.startswith("HTTP_") and name[5:].replace("_", "-").lower() not in dropped
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        with httpx.Client(trust_env=False) as client:
            got = client.request(environ["REQUEST_METHOD"], url, headers=headers, content=body)
        skip = {"content-length", "content-encoding", "transfer-encoding", "connection"}
        kept = [(k, v) for k, v in got.headers.items() if k.lower() not in skip]
        start_response(f"{got.status_code} {got.reason_phrase}", kept)
        return [got.content]

    return app


PROXY_VARIABLES = ["http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]


def test_pay_goes_through_the_proxy_of_the_environment_as_offers_does(tmp_path: Path) -> None:
    """``offers`` honoured ``HTTP_PROXY`` and ``pay`` did not: httpx reads no proxy from the
    environment for a client given a transport, so the 402, the tab endpoint and the paid
    request went straight to the seller, past the egress proxy docs/buyer.md ("Where the
    buyer connects") recommends. In code, the payment transport takes the proxy."""
    import httpx

    from fourmica_x402.client import PaymentTransport

    seen: list[tuple[str, str]] = []
    with seller(tmp_path) as (url, core), loopback(forwarding(seen)) as proxy:
        unset: dict[str, Any] = {name: None for name in [*PROXY_VARIABLES, "NO_PROXY", "no_proxy"]}
        env = {**unset, "HTTP_PROXY": proxy}
        assert cli("offers", url, env=env).exit_code == 0
        assert seen == [("GET", ".well-known/x402")]
        paid(cli("pay", url, "--key", KEY, env=env))
        assert [m for m, p in seen if p == "premium"] == ["GET", "GET"], seen  # 402, then paid
        assert [m for m, p in seen if p.endswith("tab")] == ["POST"], seen
        assert len(core.guarantees()) == 1
        del seen[:]
        paying = PaymentTransport(KEY, transport=httpx.HTTPTransport(proxy=proxy))
        with httpx.Client(transport=paying) as client:
            assert client.get(url).status_code == 200
        assert len(seen) >= 3 and len(core.guarantees()) == 2


@pytest.mark.parametrize("command", ["pay", "offers"])
@pytest.mark.parametrize(
    "proxy", [("HTTPS_PROXY", "socks4://127.0.0.1:1080"), ("HTTP_PROXY", "http://p.example:x")]
)
def test_a_proxy_httpx_cannot_use_is_one_error_line(command: str, proxy: tuple[str, str]) -> None:
    """``pay`` and ``offers`` died with a traceback on a proxy the environment names that
    httpx refuses (a SOCKS4 scheme, a port that is no number), before any request."""
    unset: dict[str, Any] = {name: None for name in [*PROXY_VARIABLES, "NO_PROXY", "no_proxy"]}
    args = ["--key", KEY] if command == "pay" else []
    result = cli(command, "http://127.0.0.1:9/premium", *args, env={**unset, proxy[0]: proxy[1]})
    assert result.exit_code == 1, result.output
    assert "the proxy the environment names cannot be used" in clean(result)
