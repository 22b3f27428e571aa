"""Plain WSGI conformance app: a hand-written router, priced entirely by config."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from fourmica_x402.adapters.wsgi import PAYMENT_KEY, PaymentMiddleware
from werkzeug.test import Client

from fourmica_x402._json import loads

#: nginx's own caching header, which there wins over Cache-Control (sent by /cached, /stored).
ACCEL = {"X-Accel-Expires": "600"}
Handler = Callable[[dict[str, Any], re.Match[str]], tuple[str, list[tuple[str, str]], Any]]


def _json(status: str, data: Any) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    return status, [("Content-Type", "application/json")], [json.dumps(data).encode()]


def server_errors(app: Any) -> Any:
    """What a WSGI server does with an exception from the app: log it, answer 500."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            return app(environ, start_response)  # type: ignore[no-any-return]
        except Exception:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"Internal Server Error"]

    return wrapped


class WsgiClient:
    interface = "wsgi"

    def __init__(self, app: Any, gate: Any) -> None:
        self.gate, self.app = gate, app
        self._client = Client(app)

    def request(self, method: str, path: str, headers: dict[str, str], json: Any = None) -> Any:
        # A server always tells the app who is calling; werkzeug's bare Client does not.
        environ = {"REMOTE_ADDR": "127.0.0.1"}
        r = self._client.open(
            path,
            method=method,
            headers=headers,
            json=json,
            environ_base=environ,
            follow_redirects=False,
        )
        try:
            return r.status_code, dict(r.headers.items()), r.get_data()
        finally:
            r.close()


def build(options: dict[str, Any], calls: collections.Counter[str]) -> WsgiClient:
    options = dict(options)
    price = options.pop("premium_price")
    # What other frameworks price with a marker is priced here by config (see README.md).
    marked = (
        "GET /premium",
        "/multi",
        "GET /limited",
        "GET /files/*",
        "GET /docs/*",
        "GET /numbers/:n",
    )
    options["routes"] = {**dict.fromkeys(marked, price), **options["routes"]}

    def premium(environ: dict[str, Any], match: re.Match[str]) -> Any:
        p = environ[PAYMENT_KEY]
        return _json(
            "200 OK",
            {
                "ok": True,
                "payer": p.payer,
                "amount": p.amount,
                "guarantee_id": p.guarantee_id,
                "request_id": p.request_id,
                "x402_version": p.x402_version,
            },
        )

    def echo(environ: dict[str, Any], match: re.Match[str]) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        # bounded: py_ecc, which the suite imports, lets stdlib json overflow the C stack
        return _json("200 OK", {"echo": loads(body)})

    def boom(environ: dict[str, Any], match: re.Match[str]) -> Any:
        raise RuntimeError("boom")

    def stream(environ: dict[str, Any], match: re.Match[str]) -> Any:
        metered = getattr(environ.get(PAYMENT_KEY), "stream", None)
        if metered is not None:  # a metered stream (docs/protocol.md): ?n= ticks
            n = int(parse_qs(environ.get("QUERY_STRING", "")).get("n", ["3"])[0])
            ticks = ({"tick": i} for i in range(n))
            return "200 OK", [("Content-Type", "text/event-stream")], metered.events(ticks)
        chunks = (f"chunk-{i}\n".encode() for i in range(3))
        return "200 OK", [("Content-Type", "text/plain")], chunks

    def paid(key: str, value: Callable[[re.Match[str]], Any] | None = None) -> Handler:
        """A handler answering ``{key: value(match), "payer": …}`` (``method`` for /multi)."""

        def handler(environ: dict[str, Any], match: re.Match[str]) -> Any:
            got = environ["REQUEST_METHOD"] if value is None else value(match)
            return _json("200 OK", {key: got, "payer": environ[PAYMENT_KEY].payer})

        return handler

    def cache(data: dict[str, Any], control: str) -> Handler:
        headers = [("Content-Type", "application/json"), ("Cache-Control", control), *ACCEL.items()]
        return lambda env, m: ("200 OK", headers, [json.dumps(data).encode()])

    table: list[tuple[str, str, Handler]] = [
        ("GET", "/free", lambda env, m: _json("200 OK", {"free": True})),
        ("GET", "/premium", premium),
        ("POST", "/echo", echo),
        (
            "GET",
            "/items/(?P<item_id>[^/]+)",
            lambda env, m: _json("200 OK", {"item": m["item_id"]}),
        ),
        ("GET", "/boom", boom),
        ("GET", "/fail", lambda env, m: _json("500 Internal Server Error", {"error": "fail"})),
        ("GET", "/redirect", lambda env, m: ("302 Found", [("Location", "/free")], [b""])),
        ("GET", "/stream", stream),
        ("GET", "/missing", lambda env, m: _json("404 Not Found", {"error": "missing"})),
        ("GET POST PUT PATCH DELETE", "/multi", paid("method")),
        ("GET POST", "/limited", lambda env, m: _json("200 OK", {"method": env["REQUEST_METHOD"]})),
        ("GET", "/files/(?P<path>.+)", paid("file", lambda m: m["path"])),
        ("GET", "/docs/(?P<doc>[a-z0-9/]+)", paid("doc", lambda m: m["doc"])),
        ("GET", "/numbers/(?P<n>[0-9]+)", paid("n", lambda m: int(m["n"]))),
        ("GET", "/cached", cache({"cached": True}, "public, max-age=600")),
        ("GET", "/stored", cache({"stored": False}, "no-store, max-age=0")),
    ]
    routes = [(method, re.compile(pattern + r"\Z"), handler) for method, pattern, handler in table]

    def router(environ: dict[str, Any], start_response: Any) -> Any:
        # Route as werkzeug does: UTF-8 PATH_INFO, leading slashes collapsed.
        path = "/" + environ["PATH_INFO"].encode("latin-1").decode("utf-8", "replace").lstrip("/")
        method = "GET" if environ["REQUEST_METHOD"] == "HEAD" else environ["REQUEST_METHOD"]
        for allowed, regex, handler in routes:
            match = regex.match(path)
            if match is None:
                continue
            if method not in allowed.split():
                start_response("405 Method Not Allowed", [("Allow", ", ".join(allowed.split()))])
                return [b""]
            calls[path] += 1
            status, headers, body = handler(environ, match)
            start_response(status, headers)
            return body
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]

    payments = PaymentMiddleware(router, **options)
    return WsgiClient(server_errors(payments), payments.gate)
