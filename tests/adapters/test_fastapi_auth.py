"""``Paid`` beside a FastAPI auth dependency, as docs/architecture.md ("Paid and your own
auth") tells a FastAPI user to combine them.

The payment middleware settles a paid request before FastAPI resolves any dependency, so
the order in the signature does not matter: what an auth dependency refuses (401, 403) is
refunded. A request the seller will refuse whatever it pays is refused before any payment
by the ``on_protected_request`` hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Security
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from fourmica_x402.adapters.fastapi import FourmicaX402, Paid
from starlette.testclient import TestClient

from fourmica_x402.core import Core
from fourmica_x402.gate import Payment, RequestView, Response
from fourmica_x402.testing import NETWORK, TestBuyer, paid_headers

SELLER = TestBuyer.new().address
DOCS = Path(__file__).parents[2] / "docs" / "architecture.md"


@pytest.fixture
def core(audited_core: Core) -> Core:
    return audited_core


def bearer(request: RequestView, route: Any) -> Response | None:
    """The seller's own check, before any payment is asked for: no token, no challenge."""
    if (request.header("authorization") or "").startswith("Bearer "):
        return None
    headers = [("www-authenticate", "Bearer")]
    return Response.json(401, {"error": "unauthorized", "message": "log in first"}, headers)


def build(core: Core, calls: list[str], **options: Any) -> tuple[FastAPI, Any]:
    app = FastAPI()
    payments = FourmicaX402(app, pay_to=SELLER, network=NETWORK, core=core, **options)
    oauth2 = OAuth2PasswordBearer(tokenUrl="token")
    api_key = APIKeyHeader(name="x-api-key")

    def user(token: str = Depends(oauth2)) -> str:
        if token != "alice":
            raise HTTPException(401, "bad token", headers={"WWW-Authenticate": "Bearer"})
        return token

    def admin(key: str = Security(api_key)) -> str:
        if key != "root":
            raise HTTPException(403, "not an admin")
        return key

    @app.get("/before")
    def before(who: str = Depends(user), payment: Payment = Paid("$0.01")) -> dict[str, str]:  # noqa: B008
        calls.append(who)
        return {"who": who}

    @app.get("/after")
    def after(payment: Payment = Paid("$0.01"), who: str = Depends(user)) -> dict[str, str]:  # noqa: B008
        calls.append(who)
        return {"who": who}

    @app.get("/admin", dependencies=[Security(admin), Paid("$0.01")])
    def admin_only() -> dict[str, bool]:
        calls.append("admin")
        return {"admin": True}

    return app, payments.gate


def states(core: Core, gate: Any, buyer: TestBuyer) -> list[str]:
    gate.flush()
    return [g.state for g in core.guarantees(address=buyer.address)]


@pytest.mark.parametrize(
    ("path", "auth", "status"),
    [
        ("/before", {"authorization": "Bearer mallory"}, 401),
        ("/after", {"authorization": "Bearer mallory"}, 401),
        ("/admin", {"x-api-key": "guest"}, 403),
    ],
)
def test_what_an_auth_dependency_refuses_is_refunded_wherever_it_sits(
    core: Core, path: str, auth: dict[str, str], status: int
) -> None:
    calls: list[str] = []
    app, gate = build(core, calls)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    with TestClient(app) as client:
        challenge = client.get(path, headers=auth)
        assert challenge.status_code == 402  # asked to pay first: the gate runs before FastAPI
        refused = client.get(path, headers={**auth, **paid_headers(client, buyer, challenge)})
    assert refused.status_code == status and calls == []
    assert states(core, gate, buyer) == ["voided"]


def test_a_request_the_seller_refuses_anyway_is_refused_before_any_payment(core: Core) -> None:
    calls: list[str] = []
    app, gate = build(core, calls, on_protected_request=bearer)
    buyer = TestBuyer.new()
    core.deposit(buyer.address, 10**9, network=NETWORK)
    with TestClient(app) as client:
        anonymous = client.get("/before")
        assert anonymous.status_code == 401 and "payment-required" not in anonymous.headers
        assert anonymous.headers["www-authenticate"] == "Bearer"
        auth = {"authorization": "Bearer alice"}
        challenge = client.get("/before", headers=auth)
        assert challenge.status_code == 402
        paid = client.get("/before", headers={**auth, **paid_headers(client, buyer, challenge)})
    assert paid.status_code == 200 and calls == ["alice"]
    assert states(core, gate, buyer) == ["payable"]
    text = " ".join(DOCS.read_text().split())
    assert "**Paid and your own auth.**" in text and "on_protected_request" in text
