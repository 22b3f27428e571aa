"""Generative fuzzing of the example sellers behind real servers, over raw sockets: what a
test client never sends (HTTP/1.0, a header written twice, latin-1 bytes, odd request
lines) reaches the server's own parser first. Each round starts from a valid paid request
for ``GET /premium`` and damages it (``tests/fuzzkit.py``). Oracle: no 5xx, no traceback,
every 2xx of ``/premium`` is one charged guarantee of exactly its price and nothing else is
charged, and the seller's Core audits clean. Slow: it starts the servers.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import random
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer, payment_header
from fourmica_x402.wire import decode_payment_required


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = sys.modules.setdefault(name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


fuzzkit = _load("fuzzkit", Path(__file__).parent.parent / "fuzzkit.py")
examples = _load("fuzzed_examples", Path(__file__).parent / "test_examples.py")
SEED = int(os.environ.get("FOURMICA_FUZZ_SEED", "402"))
PRICE = 10_000


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    if answer and not answer.startswith(b"HTTP/"):
        return 200, answer  # an HTTP/0.9 answer (werkzeug's server): the body, delivered
    line = answer.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 and line[1].isdigit() else 0), answer


@pytest.mark.slow
@pytest.mark.parametrize("name", ["starlette", "flask", "django-gunicorn"])
def test_fuzzed_raw_requests_to_example_sellers(name: str, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}:{name}")
    mutator = fuzzkit.Mutator(rng)
    served = 0
    with examples.running(name, tmp_path) as (client, db):
        port = int(str(client.base_url).rsplit(":", 1)[1].strip("/"))
        core = Core(f"sqlite:///{db}")
        buyers = [TestBuyer.new() for _ in range(5)]  # reused: their open tabs are reused
        for buyer in buyers:
            core.deposit(buyer.address, 10**9, network=NETWORK)
        try:
            for _ in range(40):
                buyer = rng.choice(buyers)
                challenge = client.get("/premium")
                req = decode_payment_required(challenge.headers["payment-required"]).accepts[0]
                body = {"x402Version": 2, "userAddress": buyer.address}
                tab = client.post(
                    req.extra["tabEndpoint"], json={**body, "paymentRequirements": req.to_dict()}
                ).json()
                header, good = payment_header(buyer, req, tab, version=rng.choice([1, 2]))
                value = good
                if rng.random() < 0.5:
                    envelope = mutator.mutate(json.loads(base64.b64decode(good)))
                    value = fuzzkit.encodings(rng, fuzzkit.dumps(envelope))
                lines = [f"{header}: {value}"]
                if rng.random() < 0.3:
                    lines.append(f"{header}: {rng.choice([good, value, 'x'])}")
                if rng.random() < 0.2:
                    lines.append(f"{header.lower()}: {good}\xe9")
                method = rng.choice(["GET"] * 5 + ["HEAD", "get", "POST"])
                path = rng.choice(["/premium"] * 5 + ["/premium/", "/premium?x=1", "//premium"])
                version = rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/1.0", "HTTP/0.9", "HTTP/2"])
                head = [f"{method} {path} {version}", "Host: 127.0.0.1", *lines]
                head.append("Connection: close")
                request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")
                before = {g.guarantee_id for g in core.guarantees(limit=100_000)}
                status, answer = _raw(port, request)
                new = [g for g in core.guarantees(limit=100_000) if g.guarantee_id not in before]
                what = (name, method, path, version, status, answer[:400])
                assert status < 500, what
                assert b"Traceback" not in answer, what
                assert all(g.amount == PRICE for g in new), what
                if 200 <= status < 300 and method == "GET":
                    served += 1
        finally:
            charged = [g for g in core.guarantees(limit=100_000) if g.state == "payable"]
            problems = core.audit()
            core.close()
    assert len(charged) <= served + 0, ("charged more than was served", len(charged), served)
    assert problems == []
