"""Generative fuzzing of the gate, under every adapter.

Each round starts from a VALID paid request (challenge, tab, signed guarantee) and damages it
with ``tests/fuzzkit.py``: the envelope around a good signature mutated and re-encoded (the
signature's hex among what it reshapes), one claim or G-v2 policy term changed and re-signed,
the header repeated, sent under both names or wrapped in latin-1 and control characters, a
replay (also re-spelled), a paid header sent to another route's spelling, a paid POST with a
damaged or raw body. Beside them: damaged tab-endpoint requests, the gate's own endpoints
(tab, RPC, guarantee read, metrics, admin prices, discovery) with raw bodies and tokens, and
raw ASGI scopes. Sellers run with and without ``idempotent_replay``, on SQLite and PostgreSQL.
The oracle, for every request and adapter:

- never a 5xx (but a handler's own crash, refunded) and never a traceback in the body or in a
  logged exception;
- a 402 carries ``PAYMENT-REQUIRED`` with a stable reason code;
- a paid handler runs only for an accepted guarantee, at most one per request; every accepted
  guarantee is for exactly the price of the handler that ran (else the route asked), to the
  seller, from the buyer; it stays charged exactly when the answer was a 2xx; a 2xx without a
  new guarantee is only an idempotent replay of the same answer;
- the Core's ``audit()`` is clean at the end.

The default budget is small and seeded (CI replays the same requests); ``-m slow`` runs a
larger one. ``FOURMICA_FUZZ_SEED`` picks another seed by hand, ``FOURMICA_FUZZ_ROUNDS`` another
budget for the paid-request rounds, and ``FOURMICA_FUZZ_DUMP=<file>`` writes there the request
that drew a 5xx.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fourmica_x402.errors import Reason
from fourmica_x402.testing import TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required


@dataclasses.dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


SELLER = TestBuyer.from_key(
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # the harness's
).address
Kit = Seller = Any


_spec = importlib.util.spec_from_file_location(
    "fuzzkit", Path(__file__).parent.parent / "fuzzkit.py"
)
assert _spec and _spec.loader
fuzzkit = sys.modules.setdefault("fuzzkit", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fuzzkit)

SEED = int(os.environ.get("FOURMICA_FUZZ_SEED", "402"))
#: (method, path, atomic price) of the priced routes fuzzed
ROUTES = [("GET", "/premium", 10_000), ("POST", "/echo", 10_000), ("GET", "/items/a1", 20_000)]
#: the 402's ``error``: a reason code, or the two texts the official clients match on
REASONS = {r.value for r in Reason} | {"Payment required", "No matching payment requirements"}
CLAIM_INTS = ["tab_id", "req_id", "amount", "timestamp"]
#: claim values a buyer can sign (uint256), at the edges
INTS = [0, 1, 2**63, 2**64, 2**256 - 1]
#: G-v2 policy claims a buyer may sign otherwise than the seller asked
POLICY_CHANGES: list[tuple[str, list[Any]]] = [
    ("min_validation_score", [0, 1, 99, 101, 255, 2**64]),
    ("validation_chain_id", [0, 1, 8453, 2**64]),
    ("validator_agent_id", [1, 2**256 - 1]),
    ("required_validation_tag", ["", "DELIVERY", "delivery ", "x" * 300, "é"]),
    ("validator_address", [SELLER.lower(), "0x" + "00" * 20, "0x" + "11" * 20]),
    ("validation_registry_address", ["0x" + "00" * 20, "0x" + "22" * 20]),
    ("job_hash", [bytes(32), b"\x01" * 32]),
    ("validation_subject_hash", [bytes(32), b"\x01" * 32]),
    ("validation_request_hash", [bytes(32), b"\x01" * 32]),
    ("version", [1, 3, 2**64]),
]
CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "",
]
BODIES = [
    b"",
    b"{",
    b'{"x":1,"x":2}',
    b"\xff\xfe\x00",
    b"[" * 100_000,
    b"x" * 2_000_000,
    b'{"x": NaN}',
    b"--x\r\nContent-Disposition: form-data\r\n\r\n",
    b"a=1&a=2",
]


class Arena:
    """One seller under fuzz: sends, checks each answer, keeps the money books."""

    def __init__(self, seller: Seller, kit: Kit, rng: random.Random) -> None:
        self.seller, self.kit, self.rng = seller, kit, rng
        self.mutator = fuzzkit.Mutator(rng)
        self.last_paid: tuple[str, str, dict[str, str], int] | None = None
        self.answers: dict[Any, bytes] = {}  # paid answers, by the headers that paid them

    def paid_runs(self) -> int:
        return sum(n for p, n in self.seller.calls.items() if p != "/free")

    def guarantees(self) -> list[Any]:
        return list(self.seller.core.guarantees(limit=100_000))

    def send(
        self, method: str, path: str, headers: Any, body: Any, price: int, buyer: TestBuyer
    ) -> Any:
        seller = self.seller
        if isinstance(headers, list) and seller.kind not in ("starlette", "fastapi"):
            folded: dict[str, str] = {}
            for name, value in headers:  # what a WSGI server does with a repeated header
                folded[name] = f"{folded[name]}, {value}" if name in folded else value
            headers = folded
        if seller.kind in ("starlette", "fastapi") and isinstance(headers, dict):
            # httpx sends str header values as ASCII only; latin-1 bytes go through as sent
            headers = {k: v.encode("latin-1") if not v.isascii() else v for k, v in headers.items()}
        before_calls = dict(seller.calls)
        before_runs, before = self.paid_runs(), {g.guarantee_id for g in self.guarantees()}
        if isinstance(body, bytes):
            resp = self.raw(method, path, dict(headers), body)
        else:
            resp = seller.request(method, path, headers=headers, json=body)
        resp = Resp(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.body)
        new = [g for g in self.guarantees() if g.guarantee_id not in before]
        runs = self.paid_runs() - before_runs
        ran = [p for p, n in seller.calls.items() if n > before_calls.get(p, 0) and p != "/free"]
        if ran:  # the price is that of the handler that ran, whatever path reached it
            price = _price_of(ran[0], price)
        what = (seller.kind, method, path, resp.status, resp.text[:300])
        if resp.status >= 500 and os.environ.get("FOURMICA_FUZZ_DUMP"):
            Path(os.environ["FOURMICA_FUZZ_DUMP"]).write_text(repr((method, path, headers, body)))
        # a 5xx is the handler's own (the echo handler on a body that is not JSON), never ours
        assert resp.status < 500 or runs == 1, what
        assert "Traceback" not in resp.text, what
        assert len(new) <= 1, what
        assert runs <= len(new), ("a paid handler ran unpaid", what)
        if 200 <= resp.status < 300 and not new:
            # only an idempotent replay: the first answer again, its handler not run again
            key = _key(headers)
            assert key in self.answers and runs == 0, ("served without a guarantee", what)
            assert resp.body == self.answers[key], ("a replay served something else", what)
        for g in new:
            assert (g.amount, g.recipient_address, g.user_address) == (
                price,
                SELLER,
                buyer.address,
            ), ("accepted claims differ from the price", g, what)
            charged = _charged(seller.core, g, 200 <= resp.status < 300)
            assert charged == (200 <= resp.status < 300), ("charged for no 2xx", g.state, what)
        if 200 <= resp.status < 300 and new:
            self.answers[_key(headers)] = resp.body
        if resp.status == 402:
            reason = decode_payment_required(resp.headers["payment-required"]).error
            assert reason in REASONS, (reason, what)
        return resp

    def raw(self, method: str, path: str, headers: dict[str, str], content: bytes) -> Any:
        """``content`` sent as the body as it is, through the adapter's own test client."""
        seller, client = self.seller, self.seller.client
        if seller.kind in ("starlette", "fastapi"):
            r = client._client.request(method, path, headers=headers, content=content)
            return Resp(r.status_code, dict(r.headers.items()), r.content)
        if seller.kind in ("wsgi", "flask"):
            environ = {
                "REMOTE_ADDR": "127.0.0.1",
                "SERVER_PROTOCOL": self.rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/2"]),
            }
            r = client._client.open(
                path, method=method, headers=headers, data=content, environ_base=environ
            )
            try:
                return Resp(r.status_code, dict(r.headers.items()), r.get_data())
            finally:
                r.close()
        ctype = headers.pop("content-type", "application/octet-stream")
        data = {"data": content, "content_type": ctype}
        if client._loop is None:
            r = client._client.generic(method, path, headers=headers, **data)
            body = b"".join(r.streaming_content) if r.streaming else r.content
        else:
            r, body = client._loop.run_until_complete(client._arequest(method, path, headers, data))
        return Resp(r.status_code, dict(r.items()), body)

    # -- rounds ---------------------------------------------------------------------------

    def round(self) -> None:
        rng = self.rng
        method, path, price = rng.choice(ROUTES)
        version = rng.choice([1, 2])
        buyer = self.kit.funded(self.seller)
        req = self.kit.challenge(self.seller, path, method, version)
        tab = self._tab(buyer, req, version)
        body = {"x": 1} if method == "POST" else None
        good_name, good = payment_header(buyer, req, tab, version=version)
        mode = rng.randrange(12)
        headers: Any
        if mode == 0:  # one claim changed, signed again by the buyer
            field = rng.choice(CLAIM_INTS)
            change = {field: rng.choice(INTS)}
            if version == 2 and rng.random() < 0.5:  # the delivery policy's terms
                field, values = rng.choice(POLICY_CHANGES)
                change = {field: rng.choice(values)}
            try:
                name, value = payment_header(buyer, req, tab, version=version, **change)
            except (ValueError, TypeError, OverflowError):  # not signable at all
                name, value = good_name, good
            headers = {name: value}
        elif mode == 1:  # a price, payee or asset the seller did not ask for, signed
            changes = rng.choice(
                [
                    {"amount": price - 1},
                    {"amount": price + 1},
                    {"recipient": TestBuyer.new().address},
                    {"asset": TestBuyer.new().address},
                    {"amount": 2**256 - 1},
                ]
            )
            headers = dict([payment_header(buyer, req, tab, version=version, **changes)])
        elif mode == 2:  # the header twice, or under both names
            other = "X-PAYMENT" if good_name == "PAYMENT-SIGNATURE" else "PAYMENT-SIGNATURE"
            headers = rng.choice(
                [
                    [(good_name, good), (good_name, self._mangle(good))],
                    [(good_name, self._mangle(good)), (good_name, good)],
                    {good_name: good, other: self._mangle(good)},
                    [(good_name, good), (good_name, good)],
                ]
            )
        elif mode == 3 and self.last_paid:  # replay a header that was paid once
            method, path, headers, price = self.last_paid
            buyer = self._payer
            body = {"x": 1} if method == "POST" else None
        elif mode == 4 and method == "POST":  # a good payment, a damaged body
            headers = {good_name: good}
            body = _jsonable(self.mutator.mutate(body))
        elif mode == 5 and method == "POST":  # a good payment, a body as raw bytes
            headers = {good_name: good, "content-type": rng.choice(CONTENT_TYPES)}
            body = rng.choice(BODIES)
        elif mode == 6 and self.last_paid:  # a paid header sent to another priced route
            headers = self.last_paid[2]
            buyer = self._payer
        elif mode == 8 and self.last_paid:  # a paid header again, written differently
            method, path, paid, price = self.last_paid
            headers = {k: self._reshape(v) for k, v in paid.items() if k != "content-type"}
            buyer = self._payer
            body = {"x": 1} if method == "POST" else None
        elif mode == 9:  # latin-1 and control characters around a good header
            junk = rng.choice(["\xe9", "\x7f", "\t", "\xa0", "\xff" * 3, " "])
            headers = {
                good_name: rng.choice([junk + good, good + junk, good[:20] + junk + good[20:]])
            }
        elif mode == 7:  # a good header for this route, sent to a spelling of another one
            method, other, price = rng.choice(ROUTES)
            path = rng.choice(PATH_VARIANTS)(other)
            headers = {good_name: good}
            body = {"x": 1} if method == "POST" else None
        else:  # the envelope mutated around the good signature
            headers = {good_name: self._mangle(good)}
        resp = self.send(method, path, headers, body, price, buyer)
        # headers as payment_header wrote them (a mangled one may pay too)
        canonical = all(v == good or k == "content-type" for k, v in _pairs(headers))
        if 200 <= resp.status < 300 and isinstance(headers, dict) and canonical:
            self.last_paid, self._payer = (method, path, headers, price), buyer

    def _tab(self, buyer: TestBuyer, req: Any, version: int) -> dict[str, Any]:
        body = {"x402Version": version, "userAddress": buyer.address}
        resp = self.seller.request(
            "POST", "/x402/tab", json={**body, "paymentRequirements": req.to_dict()}
        )
        assert resp.status == 200, resp.text
        return dict(resp.json())

    def _reshape(self, header: str) -> str:
        """The same payment, spelled otherwise: keys reordered, hex upper-cased, re-encoded."""
        envelope = json.loads(base64.b64decode(header))
        claims = envelope["payload"]["claims"]
        for name in ("tab_id", "req_id", "amount"):
            if self.rng.random() < 0.5 and isinstance(claims.get(name), str):
                claims[name] = "0x" + claims[name][2:].upper()
            elif self.rng.random() < 0.3 and isinstance(claims.get(name), str):
                claims[name] = "0x0" + claims[name][2:]
        if self.rng.random() < 0.5:
            envelope["payload"]["claims"] = dict(reversed(list(claims.items())))
        spacing = self.rng.choice([(",", ":"), (", ", ": ")])
        text = json.dumps(dict(reversed(list(envelope.items()))), separators=spacing)
        return fuzzkit.encodings(self.rng, text)

    def _mangle(self, header: str) -> str:
        envelope = json.loads(base64.b64decode(header))
        mutated = self.mutator.mutate(envelope)
        text = fuzzkit.dumps(mutated)
        value = fuzzkit.encodings(self.rng, text)
        # header values go out as latin-1 at most; anything else is the client's error
        return (
            value if value.isascii() else base64.b64encode(text.encode("utf-8", "replace")).decode()
        )

    def tab_round(self) -> None:
        """A damaged request to the tab endpoint: never a 5xx, never a lock or guarantee."""
        method, path, _ = self.rng.choice(ROUTES)
        buyer = self.kit.funded(self.seller)
        version = self.rng.choice([1, 2])
        req = self.kit.challenge(self.seller, path, method, version)
        body = {
            "x402Version": version,
            "userAddress": buyer.address,
            "paymentRequirements": req.to_dict(),
        }
        mutated = self.mutator.mutate(body)
        before = len(self.guarantees())
        resp = self.seller.request("POST", "/x402/tab", json=_jsonable(mutated))
        what = (self.seller.kind, resp.status, resp.text[:300])
        assert resp.status < 500, what
        assert "Traceback" not in resp.text, what
        assert len(self.guarantees()) == before
        if resp.status >= 400 and resp.status != 404:
            assert "reason" in resp.text or "error" in resp.text, what


def _charged(core: Any, guarantee: Any, expected: bool) -> bool:
    """Whether ``guarantee`` stands charged, given a refund's completion a moment to land
    (it may be committed just after the response: docs/architecture.md)."""
    deadline = time.monotonic() + 2
    while True:
        rows = core.guarantees(limit=100_000)
        state = next(g.state for g in rows if g.guarantee_id == guarantee.guarantee_id)
        charged = state not in ("cancelled", "voided")
        if charged == expected or time.monotonic() > deadline:
            return charged
        time.sleep(0.02)


def _price_of(handled: str, default: int) -> int:
    for prefix, price in (("/items", 20_000), ("/premium", 10_000), ("/echo", 10_000)):
        if handled.lower().lstrip("/").startswith(prefix[1:]):
            return price
    return default


PATH_VARIANTS = [
    lambda p: p + "/",
    lambda p: p.upper(),
    lambda p: "/" + p,
    lambda p: p + "?x=1&x=2",
    lambda p: p.replace("e", "%65"),
    lambda p: p + "%00",
    lambda p: p + "/..",
    lambda p: "/free/.." + p,
    lambda p: p + ";x=1",
    lambda p: p + "#frag",
    lambda p: p.replace("/items/a1", "/items/A1"),
    lambda p: p + "%2F",
]


def _pairs(headers: Any) -> list[tuple[str, str]]:
    return list(headers.items() if isinstance(headers, dict) else headers)


def _key(headers: Any) -> Any:
    return tuple(sorted((k.lower(), v) for k, v in _pairs(headers) if k.lower() != "content-type"))


def _jsonable(value: Any) -> Any:
    """What a JSON client can send: the duplicate-key marker folded, nesting kept shallow."""
    try:
        # a lone surrogate cannot leave the client as UTF-8; it stays in the header cases
        return json.loads(fuzzkit.dumps(value).replace("\\ud800", "?"))
    except (ValueError, RecursionError):
        return None


def _run(seller: Seller, kit: Kit, caplog: pytest.LogCaptureFixture, rounds: int) -> None:
    rng = random.Random(f"{SEED}:{seller.kind}")
    arena = Arena(seller, kit, rng)
    rounds = int(os.environ.get("FOURMICA_FUZZ_ROUNDS", rounds))
    caplog.set_level(logging.INFO)
    for i in range(rounds):
        if i % 4 == 3:
            arena.tab_round()
        else:
            arena.round()
    assert seller.core.audit() == []
    crashed = [r for r in caplog.records if r.exc_info and r.name.startswith("fourmica")]
    assert not crashed, [(r.name, r.getMessage()) for r in crashed]


#: no rate limits: a 429 would hide what comes after it
UNLIMITED = {"tab_rate_per_client": None, "tab_rate_per_user": None, "throttle_failures": 10**6}


@pytest.mark.parametrize("replay", [False, True], ids=["plain", "idempotent_replay"])
def test_fuzzed_requests_never_crash_or_charge_wrongly(
    make_seller: Any, kit: Kit, caplog: pytest.LogCaptureFixture, replay: bool
) -> None:
    _run(make_seller(**UNLIMITED, idempotent_replay=replay), kit, caplog, rounds=24)


@pytest.mark.postgres
def test_fuzzed_requests_on_postgres(
    make_seller: Any, kit: Kit, caplog: pytest.LogCaptureFixture, postgres_url: str
) -> None:
    """The same rounds over a PostgreSQL Core: its column types are not SQLite's."""
    from fourmica_x402.core import Core, CoreConfig
    from fourmica_x402.testing import ShiftedClock

    core = Core(postgres_url, config=CoreConfig(validation_timeout=600), clock=ShiftedClock())
    try:
        _run(make_seller(**UNLIMITED, core=core), kit, caplog, rounds=24)
    finally:
        core.close()


@pytest.mark.slow
@pytest.mark.parametrize("replay", [False, True], ids=["plain", "idempotent_replay"])
def test_fuzzed_requests_at_length(
    make_seller: Any, kit: Kit, caplog: pytest.LogCaptureFixture, replay: bool
) -> None:
    _run(make_seller(**UNLIMITED, idempotent_replay=replay), kit, caplog, rounds=400)


def test_replayed_header_is_charged_once(seller: Seller, kit: Kit) -> None:
    """The oracle's own check: a replay is refused and nothing more is accepted."""
    buyer = kit.funded(seller)
    headers = kit.header(seller, buyer, "/premium")
    assert seller.request("GET", "/premium", headers=headers).status == 200
    again = seller.request("GET", "/premium", headers=headers)
    assert again.status == 402
    assert len(seller.core.guarantees(limit=10)) == 1


# -- the gate's own endpoints, with raw bodies --------------------------------------------------

TOKENS = {"metrics_token": "m-token-fuzz", "admin_token": "a-token-fuzz"}
ENDPOINTS = [
    ("POST", "/x402/tab"),
    ("POST", "/x402/rpc"),
    ("GET", "/x402/core/public-params"),
    ("GET", "/x402/core/tabs/0x1/guarantees/0x0"),
    ("GET", "/x402/metrics"),
    ("GET", "/x402/admin/prices"),
    ("POST", "/x402/admin/prices"),
    ("GET", "/.well-known/x402"),
    ("GET", "/x402/nope"),
]
ENDPOINT_BODIES: list[Any] = [
    {"prices": {"GET /premium": "$0.01"}},
    {"prices": {"GET /premium": None}},
    {"prices": {"GET /items/:item_id": "$0.02"}},
    {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
    [{"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"to": "0x", "data": "0x"}]}],
    {"x402Version": 2, "userAddress": SELLER, "paymentRequirements": {}},
]


def _endpoint_round(arena: Arena) -> None:
    rng = arena.rng
    method, path = rng.choice(ENDPOINTS)
    if rng.random() < 0.2:
        method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "GET", "POST"])
    if rng.random() < 0.3:
        path = rng.choice(PATH_VARIANTS)(path)
    if rng.random() < 0.3:
        path = path.replace("0x1", rng.choice(["0x", "-1", "0x" + "f" * 80, "%ff", "1e9"]))
    headers = {"content-type": rng.choice(CONTENT_TYPES)}
    if rng.random() < 0.7:
        token = TOKENS["admin_token" if "admin" in path else "metrics_token"]
        headers["authorization"] = rng.choice([f"Bearer {token}", "Bearer", f"Bearer {token}x"])
    body = arena.mutator.mutate(rng.choice(ENDPOINT_BODIES)) if rng.random() < 0.8 else {}
    content = rng.choice(
        [fuzzkit.dumps(body).encode("utf-8", "surrogatepass"), rng.choice(BODIES)]
        if rng.random() < 0.3
        else [fuzzkit.dumps(body).encode("utf-8", "surrogatepass")]
    )
    before = len(arena.guarantees())
    try:
        resp = arena.raw(method, path, headers, content if method not in ("GET", "HEAD") else b"")
    except UnicodeError:  # werkzeug's client reads "//x402/…" as a host name: nothing sent
        return
    what = (arena.seller.kind, method, path, resp.status, resp.text[:300], content[:200])
    assert resp.status < 500, what
    assert "Traceback" not in resp.text, what
    assert TOKENS["admin_token"] not in resp.text and TOKENS["metrics_token"] not in resp.text
    assert len(arena.guarantees()) == before, what
    ctype = {k.lower(): v for k, v in resp.headers.items()}.get("content-type", "")
    if resp.status >= 400 and ctype.startswith("application/json") and resp.body:
        answer = json.loads(resp.body)
        if isinstance(answer, dict) and "detail" not in answer:  # FastAPI's own 404
            code = answer.get("reason") or answer.get("error")
            assert isinstance(code, str) and code.replace("_", "").isalpha(), what


@pytest.mark.parametrize("rounds", [40, pytest.param(600, marks=pytest.mark.slow)])
def test_fuzzed_gate_endpoints_never_crash(
    make_seller: Any, kit: Kit, caplog: pytest.LogCaptureFixture, rounds: int
) -> None:
    seller = make_seller(**UNLIMITED, **TOKENS)
    arena = Arena(seller, kit, random.Random(f"{SEED}:{seller.kind}:endpoints"))
    caplog.set_level(logging.INFO)
    for _ in range(rounds):
        _endpoint_round(arena)
    # whatever the admin calls did, nothing priced is served unpaid
    for method, path, _ in ROUTES:
        resp = seller.request(method, path, json={"x": 1} if method == "POST" else None)
        assert resp.status in (402, 404), (method, path, resp.status)
    assert seller.core.audit() == []
    crashed = [r for r in caplog.records if r.exc_info and r.name.startswith("fourmica")]
    assert not crashed, [(r.name, r.getMessage()) for r in crashed]
    assert not [r for r in caplog.records if TOKENS["admin_token"] in r.getMessage()]


# -- the raw ASGI surface: what a server may hand the app that a test client never sends -----


def _asgi_call(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    import asyncio

    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await asyncio.wait_for(app(scope, receive, send), 10)

    try:
        asyncio.run(run())
    except Exception:  # the server would answer 500 for an app that raised
        return 500, b"".join(m.get("body", b"") for m in sent)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    return (start["status"] if start else 500), b"".join(m.get("body", b"") for m in sent)


@pytest.mark.parametrize("kind", ["starlette", "fastapi"])  # an ASGI scope: the ASGI adapters
@pytest.mark.parametrize("rounds", [30, pytest.param(500, marks=pytest.mark.slow)])
def test_fuzzed_asgi_scopes_never_crash_or_serve_unpaid(
    make_seller: Any, kit: Kit, kind: str, rounds: int
) -> None:
    seller = make_seller(**UNLIMITED)
    arena = Arena(seller, kit, random.Random(f"{SEED}:{kind}:asgi"))
    rng = arena.rng
    app = seller.client.app if hasattr(seller.client, "app") else seller.client._client.app
    for _ in range(rounds):
        method, path, price = rng.choice(ROUTES)
        buyer = kit.funded(seller)
        req = kit.challenge(seller, path, method)
        name, good = payment_header(buyer, req, arena._tab(buyer, req, 2))
        headers = [(name.lower().encode(), good.encode())]
        if rng.random() < 0.3:
            headers.append((name.encode(), arena._mangle(good).encode()))
        if rng.random() < 0.3:
            rng.shuffle(headers)
        if rng.random() < 0.3:
            headers.append((b"content-type", rng.choice(CONTENT_TYPES).encode()))
        if rng.random() < 0.2:
            headers.append((b"x-odd", bytes(rng.randrange(256) for _ in range(8))))
        raw_path = path.encode()
        if rng.random() < 0.2:
            raw_path = rng.choice([b"/pr\xffemium", path.encode() + b"%", b"", b"*"])
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": rng.choice(["1.0", "1.1", "2", "3"]),
            "method": rng.choice([method] * 6 + [method.lower(), method + " "]),
            "scheme": rng.choice(["http", "https", "ws"]),
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "root_path": rng.choice(["", "", "/x"]),
            "query_string": rng.choice([b"", b"a=1&a=2", b"%ff=%00", b"x" * 10_000]),
            "headers": headers if rng.random() < 0.9 else [*headers, (b"host", b"")],
            "client": rng.choice([("127.0.0.1", 1), None, ("::1", 0)]),
            "server": rng.choice([("testserver", 80), None]),
            "state": {},
        }
        body = b'{"x":1}' if rng.random() < 0.8 else rng.choice(BODIES)
        before_runs, before = arena.paid_runs(), {g.guarantee_id for g in arena.guarantees()}
        status, answer = _asgi_call(app, scope, body)
        new = [g for g in arena.guarantees() if g.guarantee_id not in before]
        what = (kind, scope["method"], raw_path, scope["http_version"], status, answer[:300])
        runs = arena.paid_runs() - before_runs
        assert status < 500 or runs == 1, what
        assert b"Traceback" not in answer, what
        assert runs <= len(new), ("a paid handler ran unpaid", what)
        if 200 <= status < 300:
            assert len(new) == 1 and new[0].amount == price, what
        for g in new:  # charged only for a 2xx
            charged = _charged(seller.core, g, 200 <= status < 300)
            assert charged == (200 <= status < 300), (g.state, what)
    assert seller.core.audit() == []
