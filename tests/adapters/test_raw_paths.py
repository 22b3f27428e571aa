"""An app without a router is priced by its raw path. A file server reads ``//premium.txt``
(or ``/a//b``) as ``/premium.txt``: such a path near a priced one is refused 400
``ambiguous_path``, never served unpaid (docs/architecture.md, "Which route is priced")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fourmica_x402.adapters.asgi import PaymentMiddleware as AsgiPayment
from fourmica_x402.adapters.wsgi import PaymentMiddleware as WsgiPayment
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient
from werkzeug.middleware.shared_data import SharedDataMiddleware
from werkzeug.test import Client

from fourmica_x402.core import Core
from fourmica_x402.testing import NETWORK, TestBuyer

SELLER = TestBuyer.new().address
TABLE = {"GET /premium.txt": "$0.01", "GET /docs/secret.txt": "$0.01"}
PATHS = ["//premium.txt", "///premium.txt", "/docs//secret.txt", "//docs/secret.txt"]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "premium.txt").write_text("PAID CONTENT")
    (tmp_path / "docs" / "secret.txt").write_text("PAID CONTENT")
    (tmp_path / "free.txt").write_text("free")
    return tmp_path


def _get_asgi(app: Any, path: str) -> tuple[int, bytes]:
    client = TestClient(app)  # no lifespan: StaticFiles serves HTTP only
    resp = client.get(httpx.URL("http://testserver", raw_path=path.encode()))  # sent as is
    return resp.status_code, resp.content


def _get_wsgi(app: Any, path: str) -> tuple[int, bytes]:
    resp = Client(app).get(path)
    return resp.status_code, resp.get_data()


def _not_found(environ: Any, start_response: Any) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


def _apps(files: Path, core: Core) -> list[tuple[Any, Any]]:
    options: dict[str, Any] = {"pay_to": SELLER, "core": core, "network": NETWORK}
    static = StaticFiles(directory=str(files))
    shared = SharedDataMiddleware(_not_found, {"/": str(files)})
    return [
        (AsgiPayment(static, routes=TABLE, **options), _get_asgi),
        (WsgiPayment(shared, routes=TABLE, **options), _get_wsgi),
    ]


@pytest.mark.parametrize("kind", [0, 1], ids=["asgi-staticfiles", "wsgi-shared-data"])
def test_an_empty_segment_never_serves_a_priced_file_unpaid(
    files: Path, audited_core: Core, kind: int
) -> None:
    app, get = _apps(files, audited_core)[kind]
    assert get(app, "/premium.txt")[0] == 402  # priced as written
    for path in PATHS:
        status, body = get(app, path)
        assert status == 400 and b"ambiguous_path" in body, (path, status, body)
    assert get(app, "//free.txt")[0] not in (400, 402)  # near no priced path: the app's to read
    assert audited_core.guarantees() == []
