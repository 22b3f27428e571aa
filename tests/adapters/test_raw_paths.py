"""An app without a router is priced by its raw path. A file server reads ``//premium.txt``
(or ``/a//b``) as ``/premium.txt``: such a path, when its folded reading is priced otherwise,
is refused 400 ``ambiguous_path``, never served unpaid (docs/architecture.md, "Which route is priced")."""

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
    raw = {"PATH_INFO": path, "REQUEST_URI": path, "RAW_URI": path}  # as a server passes it
    resp = Client(app).get(path, environ_overrides=raw)
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
        # refused, or priced as the file it reads (a WSGI server's path may come folded)
        assert status in (400, 402) and b"PAID" not in body, (path, status, body)
        assert status == 402 or b"ambiguous_path" in body
    assert get(app, "//free.txt")[0] not in (400, 402)  # near no priced path: the app's to read
    assert audited_core.guarantees() == []


def test_an_empty_segment_that_moves_no_price_is_served(audited_core: Core) -> None:
    """A URL carried in the path (``/read/https://example.com/page``) reads the same priced
    entry with or without its ``//``: it is sold, not refused."""

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    client = TestClient(AsgiPayment(reader, routes={"GET /read/*": "$0.01"}, **options))
    path = "/read/https://example.com/page"
    challenge = client.get(path)
    assert challenge.status_code == 402
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    name, value = buyer.pay_challenge(audited_core, challenge.headers["payment-required"])
    resp = client.get(path, headers={name: value})
    assert resp.status_code == 200 and resp.content == path.encode()


@pytest.mark.parametrize(
    "path",
    [
        "//premium/report.txt",
        "/./premium/report.txt",
        "/x/../premium/report.txt",
        "/%2e/premium/report.txt",
        "/premium.txt/",
    ],
)
def test_a_free_file_server_under_a_router_never_serves_a_priced_file(
    files: Path, audited_core: Core, path: str
) -> None:
    """A router's app: the priced mount ``/premium`` (``"GET /premium/*"``) and a priced
    ``/premium.txt`` beside a free ``StaticFiles`` at ``/`` holding the same files. The router
    sent ``//premium/report.txt`` (or dot segments, or ``/premium.txt/``) to the free mount,
    whose file server resolved the path itself and served the priced file, nothing charged."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    (files / "premium").mkdir()
    (files / "premium" / "report.txt").write_text("PAID CONTENT")

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("PAID CONTENT")

    table = {"GET /premium/*": "$0.01", "GET /premium.txt": "$0.01"}
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    app = Starlette(
        routes=[
            Route("/premium.txt", premium),
            Mount("/premium", StaticFiles(directory=str(files / "premium"))),
            Mount("/", StaticFiles(directory=str(files))),
        ],
        middleware=[Middleware(AsgiPayment, routes=table, **options)],
    )
    assert _get_asgi(app, "/premium/report.txt")[0] == 402
    status, body = _raw_asgi(app, path)  # as uvicorn hands it over: dot segments and all
    assert b"PAID" not in body
    assert status == 400 and b"ambiguous_path" in body
    assert _get_asgi(app, "/free.txt") == (200, b"free")  # the free files stay free
    assert _get_asgi(app, "//free.txt") == (200, b"free")
    assert audited_core.guarantees() == []


def _raw_asgi(app: Any, path: str) -> tuple[int, bytes]:
    """``path`` sent as is (an HTTP client resolves dot segments before it sends)."""
    import asyncio
    from urllib.parse import unquote

    from fourmica_x402.testing import http_scope

    sent: list[dict[str, Any]] = []
    asked: list[int] = []

    async def receive() -> dict[str, Any]:
        if asked:  # a response listening for the client's leaving: it stays
            await asyncio.sleep(3600)
        asked.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope("GET", unquote(path), raw_path=path.encode())
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _echo(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"PAID CONTENT"]


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("GET /items/{id}", "/items/7"),
        ("GET /items/<int:id>", "/items/7"),
        ("GET /items/{id:int}", "/items/7"),
        ("GET /models/{name}:predict", "/models/m1:predict"),
        ("GET /files/<path:rest>", "/files/a/b.txt"),
        ("GET /files/{rest:path}", "/files/a/b.txt"),
    ],
)
def test_a_parameter_in_any_notation_prices_a_router_less_app(
    audited_core: Core, key: str, path: str
) -> None:
    """The table may write a parameter ``{id}``, ``<int:id>`` or ``{rest:path}``, not only
    ``:id``: a router-less app matched such an entry as literal text, and served every path
    it names free (docs/architecture.md, "Which route is priced")."""
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    app = WsgiPayment(_echo, routes={key: "$0.01"}, **options)
    status, body = _get_wsgi(app, path)
    assert status == 402 and b"PAID" not in body, (key, path, status)
    assert _get_wsgi(app, "/other") == (200, b"PAID CONTENT")  # what it does not name: free
    assert audited_core.guarantees() == []


@pytest.mark.parametrize(
    ("uri", "script"),
    [("http://localhost/./premium.txt", ""), ("/%61pi/./premium.txt", "/api")],
    ids=["absolute-form", "script-name-encoded"],
)
def test_a_raw_path_that_does_not_line_up_with_the_path_never_serves_a_priced_file(
    files: Path, audited_core: Core, uri: str, script: str
) -> None:
    """The raw path is read beside the routed one to spot dot segments a file server resolves.
    A server hands over an absolute-form target whole (``GET http://host/./premium.txt``),
    and a script name written encoded does not prefix the raw path: its dot segments were
    resolved to a path priced nowhere, and ``/./premium.txt`` went out free."""
    app, _ = _apps(files, audited_core)[1]
    environ = {"PATH_INFO": "/./premium.txt", "SCRIPT_NAME": script, "REQUEST_URI": uri}
    resp = Client(app).get("/", environ_overrides={**environ, "RAW_URI": uri})
    assert resp.status_code == 400 and b"ambiguous_path" in resp.get_data()
    assert audited_core.guarantees() == []


@pytest.mark.parametrize("path", ["/static//premium/report.txt", "/static/premium.txt/"])
def test_a_cheaper_priced_file_server_never_sells_a_dearer_priced_file(
    files: Path, audited_core: Core, path: str
) -> None:
    """A router's app: a $0.01 ``StaticFiles`` at ``/static`` holding the files of a $1
    ``/static/premium`` mount and a $1 ``/static/premium.txt`` route. The router sent
    ``/static//premium/report.txt`` (and ``/static/premium.txt/``) to the cheap mount, whose
    file server read the dear file: the buyer paid $0.01 for it (only a free endpoint was
    checked for such paths)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    (files / "static").mkdir()
    (files / "static" / "premium").mkdir()
    (files / "static" / "premium" / "report.txt").write_text("PAID CONTENT")
    (files / "static" / "premium.txt").write_text("PAID CONTENT")
    (files / "static" / "free.txt").write_text("cheap")

    async def premium(request: Any) -> PlainTextResponse:
        return PlainTextResponse("PAID CONTENT")

    table = {
        "GET /static/*": "$0.01",
        "GET /static/premium/*": "$1.00",
        "GET /static/premium.txt": "$1.00",
    }
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    app = Starlette(
        routes=[
            Route("/static/premium.txt", premium),
            Mount("/static/premium", StaticFiles(directory=str(files / "static" / "premium"))),
            Mount("/static", StaticFiles(directory=str(files / "static"))),
        ],
        middleware=[Middleware(AsgiPayment, routes=table, **options)],
    )
    assert _get_asgi(app, "/static/premium/report.txt")[0] == 402
    status, body = _raw_asgi(app, path)
    assert b"PAID" not in body
    assert status == 400 and b"ambiguous_path" in body
    assert _raw_asgi(app, "/static//free.txt")[0] == 402  # it moves no price: sold as it is
    assert audited_core.guarantees() == []


def test_a_dearer_priced_file_servers_own_directory_index_is_sold(
    files: Path, audited_core: Core
) -> None:
    """The same two mounts serving ``index.html`` for a directory (``html=True``): the $1
    mount's own index, ``/static/premium/`` (and a sub-directory's), was refused 400
    ``ambiguous_path``, since the cheap mount's ``/static/*`` also fits ``/static/premium``;
    the dearer mount prices that reading itself, so nothing is sold cheaper."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount

    (files / "static" / "premium" / "sub").mkdir(parents=True)
    (files / "static" / "premium" / "index.html").write_text("PAID INDEX")
    (files / "static" / "premium" / "sub" / "index.html").write_text("PAID SUB INDEX")
    table = {"GET /static/*": "$0.01", "GET /static/premium/*": "$1.00"}
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    premium = StaticFiles(directory=str(files / "static" / "premium"), html=True)
    app = Starlette(
        routes=[
            Mount("/static/premium", premium),
            Mount("/static", StaticFiles(directory=str(files / "static"), html=True)),
        ],
        middleware=[Middleware(AsgiPayment, routes=table, **options)],
    )
    for path in ["/static/premium/", "/static/premium/sub/"]:
        status, body = _raw_asgi(app, path)
        assert status == 402 and b"PAID" not in body, (path, status, body)
    assert _raw_asgi(app, "/static//premium/index.html")[0] == 400  # the cheap mount: refused
    assert audited_core.guarantees() == []


async def _any_method(scope: Any, receive: Any, send: Any) -> None:
    """A plain ASGI app serving its content whatever the method (OPTIONS too)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"PAID " + scope["method"].encode()})


def _any_method_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"PAID " + environ["REQUEST_METHOD"].encode()]


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
@pytest.mark.parametrize("key", ["* /premium", "GET /premium"])
def test_options_never_runs_a_priced_view_of_an_app_without_a_router(
    audited_core: Core, kind: str, key: str
) -> None:
    """No router tells the gate whether the view behind a priced path serves OPTIONS itself (a
    plain app, Quart's or Falcon's view listing it, Litestar's `http_method=[..., "OPTIONS"]`):
    OPTIONS there is answered 200 with the priced methods in ``Allow``, as on a view serving
    every method, and the view never runs unpaid (docs/architecture.md, "Which route is priced")."""
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    table = {key: "$0.01"}
    if kind == "asgi":
        asgi = TestClient(AsgiPayment(_any_method, routes=table, **options))

        def send(path: str) -> tuple[int, bytes, Any]:
            resp = asgi.options(httpx.URL("http://testserver", raw_path=path.encode()))
            return resp.status_code, resp.content, resp.headers

    else:
        wsgi = Client(WsgiPayment(_any_method_wsgi, routes=table, **options))

        def send(path: str) -> tuple[int, bytes, Any]:
            raw = {"PATH_INFO": path, "REQUEST_URI": path}  # as a server passes it
            resp = wsgi.options(path, environ_overrides=raw)
            return resp.status_code, resp.get_data(), resp.headers

    for path in ["/premium", "/PREMIUM/", "//premium"]:
        status, body, headers = send(path)
        assert status == 200 and b"PAID" not in body, (path, status, body)
        assert "OPTIONS" in headers["allow"] and ("GET" in headers["allow"])
    assert send("/free")[1] == b"PAID OPTIONS"  # a path no entry prices: the app's
    assert audited_core.guarantees() == []


def _under_root_path(kind: str) -> tuple[Any, dict[str, str]]:
    """A seller whose router the gate does not read, its table as that router writes routes."""
    if kind == "falcon":  # Falcon routes on the whole path, root_path included
        import falcon.asgi

        class Premium:
            async def on_get(self, req: Any, resp: Any) -> None:
                resp.text = "PAID CONTENT"

        app = falcon.asgi.App()
        app.add_route("/api/premium", Premium())
        return app, {"GET /api/premium": "$0.01"}
    from litestar import Litestar, get  # Litestar cuts the path at root_path, wherever it is

    @get("/premium", sync_to_thread=False)
    def premium() -> str:
        return "PAID CONTENT"

    return Litestar([premium]), {"GET /premium": "$0.01"}


@pytest.mark.parametrize(
    ("kind", "path"),
    [("litestar", "/x/api/premium"), ("litestar", "/apipremium"), ("falcon", "/api/premium")],
)
def test_a_router_reading_root_path_its_own_way_never_serves_unpaid(
    audited_core: Core, kind: str, path: str
) -> None:
    """Under ``root_path="/api"`` (a server's ``--root-path``) the gate priced the path below
    it, but Litestar routes on ``path.split(root_path, 1)[-1]`` (``/x/api/premium``, as an
    older server hands it, or ``/apipremium``, uvicorn under h11 for the target ``premium``,
    reach ``/premium``) and Falcon on the whole path (its ``/api/premium``, priced as it is
    written): the paid view ran unpaid. Now the reading a route prices is charged, once, at
    that price (docs/architecture.md, "Which route is priced")."""
    import asyncio

    from fourmica_x402.testing import http_scope

    seller, table = _under_root_path(kind)
    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    app = AsgiPayment(seller, routes=table, **options)

    async def call(headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, Any]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(http_scope("GET", path, headers, root_path="/api"), receive, send)
        found = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), found

    status, body, headers = asyncio.run(call([]))
    assert status == 402 and b"PAID" not in body, (status, body)
    buyer = TestBuyer.new()
    audited_core.deposit(buyer.address, 10**7, network=NETWORK)
    name, value = buyer.pay_challenge(audited_core, headers["payment-required"])
    status, body, _ = asyncio.run(call([(name.lower().encode(), value.encode())]))
    assert (status, body) == (200, b"PAID CONTENT")
    app.gate.flush()
    assert [(g.state, g.amount) for g in audited_core.guarantees()] == [("payable", 10_000)]


def test_a_catch_all_entry_never_moves_a_path_below_root_path(audited_core: Core) -> None:
    """Beside ``"GET /*"``, the path below ``root_path`` keeps its own entry's price: the
    whole path's reading (``/api/premium``) fits only the catch-all, which is less specific."""
    from fourmica_x402.wire import decode_payment_required

    options: dict[str, Any] = {"pay_to": SELLER, "core": audited_core, "network": NETWORK}
    table = {"GET /premium": "$0.01", "GET /*": "$0.02"}
    client = TestClient(AsgiPayment(_any_method, routes=table, **options), root_path="/api")
    resp = client.get("/premium")
    assert resp.status_code == 402  # Starlette's test client: path /api/premium, root_path /api
    offer = decode_payment_required(resp.headers["payment-required"]).accepts[0]
    assert int(offer.amount) == 10_000
