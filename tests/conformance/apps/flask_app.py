"""Flask conformance app: settings in app.config; /premium, /multi, /limited, /files, /docs and
/numbers priced by @paid, the rest by config (see README.md)."""

from __future__ import annotations

import collections
from typing import Any

from flask import Flask, Response, g, jsonify, redirect, request
from fourmica_x402.adapters.flask import FourmicaX402, paid
from werkzeug.routing import BaseConverter

from fourmica_x402._json import loads

#: nginx's own caching header, which there wins over Cache-Control (sent by /cached, /stored).
ACCEL = {"X-Accel-Expires": "600"}


class DocConverter(BaseConverter):
    """A custom converter whose regex matches "/" (a path by another name)."""

    regex = "[a-z0-9/]+"


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
    app.url_map.converters["doc"] = DocConverter
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
        # bounded: py_ecc, which the suite imports, lets stdlib json overflow the C stack
        return {"echo": loads(request.get_data())}

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
        metered = getattr(g.get("payment"), "stream", None)
        if metered is not None:  # a metered stream (docs/protocol.md): ?n= ticks
            ticks = ({"tick": i} for i in range(int(request.args.get("n", "3"))))
            return Response(metered.events(ticks), mimetype="text/event-stream")
        return Response((f"chunk-{i}\n".encode() for i in range(3)), mimetype="text/plain")

    @app.get("/missing")
    def missing() -> Any:
        counted()
        return jsonify(error="missing"), 404

    @app.route("/multi", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @paid(price=price)
    def multi() -> Any:
        counted()
        return {"method": request.method, "payer": g.payment.payer}

    @app.route("/limited", methods=["GET", "POST"])
    @paid(price=price, methods=["GET"])
    def limited() -> Any:
        counted()
        return {"method": request.method}

    @app.get("/files/<path:path>")
    @paid(price=price)
    def files(path: str) -> Any:
        counted()
        return {"file": path, "payer": g.payment.payer}

    @app.get("/docs/<doc:value>")
    @paid(price=price)
    def docs(value: str) -> Any:
        counted()
        return {"doc": value, "payer": g.payment.payer}

    @app.get("/numbers/<int:n>")
    @paid(price=price)
    def numbers(n: int) -> Any:
        counted()
        return {"n": n, "payer": g.payment.payer}

    @app.get("/cached")
    def cached() -> Any:
        counted()
        return {"cached": True}, 200, {"Cache-Control": "public, max-age=600", **ACCEL}

    @app.get("/stored")
    def stored() -> Any:
        counted()
        return {"stored": False}, 200, {"Cache-Control": "no-store, max-age=0", **ACCEL}

    return FlaskClient(app, payments.gate)
