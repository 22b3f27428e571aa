"""Evidence bundles of payments made through every seller adapter (G-v1 and G-v2): the
``evidence`` command writes one from the seller's database, ``verify-evidence`` checks it
offline (docs/operations.md, "Evidence and disputes"). Real gate, real Core on a SQLite file,
each framework's own test client."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fourmica_x402.cli import main
from fourmica_x402.evidence import request_hash

CASES = [
    ("GET", "/premium", 1),  # a v1 challenge: the buyer signs G-v1
    ("GET", "/premium", 2),  # a v2 challenge with the delivery policy: G-v2
    ("POST", "/echo", 2),  # a body the handler reads: hashed as it streams to it
    ("POST", "/multi", 2),  # a body the handler never reads: its hash says "unknown"
]


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(("method", "path", "version"), CASES)
def test_evidence_round_trip(
    seller: Any, kit: Any, tmp_path: Path, method: str, path: str, version: int
) -> None:
    buyer = kit.funded(seller)
    headers = kit.header(seller, buyer, path, method, version=version)
    resp = seller.request(
        method, path, headers=headers, json={"x": 1} if method == "POST" else None
    )
    assert resp.status == 200, resp.text
    (record,) = seller.gate.records.query(payer=buyer.address)
    gid = record.guarantee_id
    assert gid and seller.core.guarantee(gid).version == (
        1 if path == "/premium" and version == 1 else 2
    )

    db = f"sqlite:///{seller.core.store.path}"
    out = tmp_path / "bundle.json"
    made = run("evidence", gid, "--db", db, "--out", str(out))
    assert made.exit_code == 0, made.output
    checked = run("verify-evidence", str(out))
    assert checked.exit_code == 0, checked.output
    assert checked.output.startswith(f"verified: G-v{seller.core.guarantee(gid).version} ")
    key = "0x" + seller.core.operator.public_key.hex()
    assert run("verify-evidence", str(out), "--public-key", key).exit_code == 0

    content = json.loads(out.read_bytes())["content"]
    rec = content["record"]
    assert (rec["method"], rec["path"], rec["status"], rec["payer"]) == (
        method,
        path,
        "delivered",
        buyer.address,
    )
    if path == "/echo":  # the bytes each test client wrote for {"x": 1}
        sent = [json.dumps({"x": 1}).encode(), json.dumps({"x": 1}, separators=(",", ":")).encode()]
        assert rec["request_hash"] in {request_hash(method, path, "", b) for b in sent}
    else:  # no body (GET), or one the handler never read
        assert rec["request_hash"] == request_hash(
            method, path, "", b"" if method == "GET" else None
        )
    assert rec["response_hash"] == hashlib.sha256(resp.body).hexdigest()
    assert content["history"]["delivered"] is True
    assert content["certificate"]["claims"].startswith("0x")
    assert content["disputes"] == []
