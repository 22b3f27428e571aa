"""Flask conformance app: settings in app.config, /premium priced by @paid, the rest by config."""

from __future__ import annotations

import collections
from typing import Any

from flask import Flask, Response, g, jsonify, redirect, request
from fourmica_x402.adapters.flask import FourmicaX402, paid


class FlaskClient:
    interface = "wsgi"

    def __init__(self, app: Flask, gate: Any) -> None:
        self.gate, self.app = gate, app
        self._client = app.test_client()

    def request(self, method: str, path: str, headers: dict[str, str], json: Any = None) -> Any:
        r = self._client.open(
            path, method=method, headers=headers, json=json, follow_redirects=False
        )
        try:
            return r.status_code, dict(r.headers.items()), r.get_data()
        finally:
            r.close()


def build(options: dict[str, Any], calls: collections.Counter[str]) -> FlaskClient:
    options = dict(options)
    price = options.pop("premium_price")
    app = Flask(__name__)
    # A handler exception becomes a 500 response, as in production.
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.config.update({f"FOURMICA_X402_{name.upper()}": v for name, v in options.items()})
    payments = FourmicaX402(app)

    def counted() -> None:
        calls[request.path] += 1

    @app.get("/free")
    def free() -> Any:
        counted()
        return {"free": True}

    @app.get("/premium")
    @paid(price=price)
    def premium() -> Any:
        counted()
        p = g.payment
        return {
            "ok": True,
            "payer": p.payer,
            "amount": p.amount,
            "guarantee_id": p.guarantee_id,
            "request_id": p.request_id,
            "x402_version": p.x402_version,
        }

    @app.post("/echo")
    def echo() -> Any:
        counted()
        return {"echo": request.get_json()}

    @app.get("/items/<item_id>")
    def item(item_id: str) -> Any:
        counted()
        return {"item": item_id}

    @app.get("/boom")
    def boom() -> Any:
        counted()
        raise RuntimeError("boom")

    @app.get("/fail")
    def fail() -> Any:
        counted()
        return jsonify(error="fail"), 500

    @app.get("/redirect")
    def redirecting() -> Any:
        counted()
        return redirect("/free", 302)

    @app.get("/stream")
    def stream() -> Any:
        counted()
        return Response((f"chunk-{i}\n".encode() for i in range(3)), mimetype="text/plain")

    return FlaskClient(app, payments.gate)
