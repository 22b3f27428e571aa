"""``fourmica_x402.service`` (Starlette, hence in adapters/): the Core as an HTTP service —
facilitator API, Core API subset, sandbox API, metrics, dashboard.

    fourmica-x402 serve --db sqlite:///core.db --sandbox          # or, in code:
    app = create_app(Core("sqlite:///core.db"), sandbox=True)

Routes (docs/protocol.md, "Endpoints"):

- ``GET /supported``, ``GET /health``, ``POST /tabs``, ``POST /verify``, ``POST /settle``
  — the x402-4mica facilitator API (official sellers can use us as their facilitator);
- ``POST /guarantees/{id}/void``, ``POST /guarantees/{id}/validation`` — what a seller's
  gate needs for refunds and the delivery policy (``Authorization: Bearer <key>``: the
  operator's ``api_key``, or a seller key that acts for its own address only);
- ``GET /core/public-params``, ``POST /core/payment-tabs``, ``POST /core/guarantees``,
  ``POST /rpc`` — the Core API subset and its sandbox JSON-RPC;
- ``/sandbox/*`` — deposits, withdrawals, cycles, debit payments (only with ``sandbox=True``);
- ``GET /api/*`` — read-only JSON for the CLI and the dashboard; ``GET /metrics``; ``GET /``;
- ``/admin/webhooks`` — webhook subscriptions and the delivery log (operator only).

Facilitator errors keep the facilitator shapes: ``/verify`` and ``/settle`` always
answer 200 with ``isValid``/``success`` false and the stable reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fourmica_x402 import coreapi
from fourmica_x402._eth import parse_address
from fourmica_x402.core import Core
from fourmica_x402.errors import FourmicaError, MalformedPayment, PaymentError
from fourmica_x402.facilitator import LocalFacilitator
from fourmica_x402.networks import (
    default_asset,
    find_asset,
    get_network,
    networks,
    parse_amount,
    to_atomic,
)
from fourmica_x402.wire import (
    SCHEME,
    PaymentPayload,
    PaymentPayloadV1,
    PaymentRequirements,
    PaymentRequirementsV1,
)

__all__ = ["MAX_TAB_TTL", "Metrics", "create_app"]

#: Longest tab a caller may ask for (30 days): a tab window bounds how long its claims stay valid.
MAX_TAB_TTL = 30 * 86_400

Handler = Callable[[Request], Awaitable[Response]]


class Metrics:
    """Prometheus metrics of one service (own registry, so several apps can coexist)."""

    def __init__(self, core: Core) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

        self.core = core
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "fourmica_guarantees_accepted_total",
            "Guarantees accepted",
            ["network"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "fourmica_guarantees_rejected_total",
            "Guarantees rejected",
            ["reason"],
            registry=self.registry,
        )
        self.payment = Summary(
            "fourmica_payment_amount_atomic",
            "Accepted payment amounts (atomic units)",
            registry=self.registry,
        )
        self.per_payer = Summary(
            "fourmica_cycle_guarantees_per_payer",
            "Guarantees per payer in each closed cycle",
            registry=self.registry,
        )
        self.settles = Counter(
            "fourmica_settle_total", "Settle calls", ["outcome"], registry=self.registry
        )
        self.success_rate = Gauge(
            "fourmica_settle_success_ratio",
            "Share of settle calls that succeeded",
            registry=self.registry,
        )
        self.claimable = Gauge(
            "fourmica_claimable_atomic",
            "Collected but not yet claimed (atomic units)",
            registry=self.registry,
        )
        self.defaults = Counter(
            "fourmica_defaulted_positions_total", "Net debits defaulted", registry=self.registry
        )
        self.latency = Histogram(
            "fourmica_request_seconds", "Request latency", ["path"], registry=self.registry
        )
        core.subscribe(self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.type == "guarantee.accepted":
            self.accepted.labels(event.network or "").inc()
            self.payment.observe(int(event.data.get("amount", 0)))
        elif event.type == "position.defaulted":
            self.defaults.inc()
        elif event.type == "cycle.closed":
            for count in self.core.payer_counts(int(event.data["cycle_id"])):
                self.per_payer.observe(count)

    def settled(self, success: bool, reason: str | None) -> None:
        self.settles.labels("success" if success else "failure").inc()
        if not success:
            self.rejected.labels(reason or "unknown").inc()
        ok = self.settles.labels("success")._value.get()
        total = ok + self.settles.labels("failure")._value.get()
        self.success_rate.set(ok / total if total else 0.0)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        self.claimable.set(sum(c.collected - c.claimed for c in self.core.cycles(limit=10_000)))
        return bytes(generate_latest(self.registry))


def _json(status: int, data: Any) -> JSONResponse:
    return JSONResponse(data, status_code=status)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if len(raw) > 256 * 1024:
        return None
    try:
        import json

        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _payment_args(body: Any) -> tuple[PaymentPayload | PaymentPayloadV1, PaymentRequirements]:
    if not isinstance(body, dict):
        raise MalformedPayment("body must be a JSON object")
    try:
        raw_payload, raw_req = body["paymentPayload"], body["paymentRequirements"]
        version = (
            raw_payload.get("x402Version", body.get("x402Version", 1))
            if isinstance(raw_payload, dict)
            else 0
        )
        payload = (PaymentPayload if version == 2 else PaymentPayloadV1).model_validate(raw_payload)
        requirements = (
            PaymentRequirements.model_validate(raw_req)
            if isinstance(raw_req, dict) and "amount" in raw_req
            else PaymentRequirementsV1.model_validate(raw_req).to_v2()
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedPayment(f"invalid facilitator request: {str(exc)[:200]}") from None
    return payload, requirements


def create_app(
    core: Core,
    *,
    sandbox: bool = False,
    api_key: str | None = None,
    seller_keys: Mapping[str, str] | None = None,
    network: str = "eip155:84532",
    public_url: str | None = None,
    tick_interval: float | None = 1.0,
    webhooks: bool = True,
) -> Starlette:
    """The service app over ``core``.

    ``tick_interval`` drives cycles and timeouts (None: off); ``webhooks`` runs the
    webhook delivery worker (subscriptions are managed under ``/admin/webhooks``).
    ``api_key`` is the operator's token (every call); ``seller_keys`` maps more tokens
    to the one seller address each may act for (void as its recipient, score as its
    validator), so sellers sharing a service cannot refund or cancel each other's payments.
    """
    from fourmica_x402.webhooks import Webhooks

    facilitator = LocalFacilitator(core)
    hooks = Webhooks(core) if webhooks else None
    metrics = Metrics(core)
    chain_id = get_network(network).chain_id

    def timed(handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            start = time.perf_counter()
            try:
                return await handler(request)
            except FourmicaError as exc:
                return _json(exc.status if exc.status < 500 else 503, exc.to_dict())
            finally:
                metrics.latency.labels(request.url.path.split("/")[1] or "root").observe(
                    time.perf_counter() - start
                )

        return wrapper

    sellers = {token: parse_address(address) for token, address in (seller_keys or {}).items()}

    def bearer(request: Request) -> str:
        header = request.headers.get("authorization", "")
        return header[7:] if header[:7].lower() == "bearer " else ""

    def authorized(request: Request) -> bool:
        return api_key is None or hmac.compare_digest(bearer(request), api_key)

    def acts_for(request: Request) -> str | None:
        """The seller address a seller key is bound to ("" for the operator key; None: neither)."""
        token = bearer(request)
        if api_key is not None and hmac.compare_digest(token, api_key):
            return ""
        for known, address in sellers.items():
            if hmac.compare_digest(token, known):
                return address
        return None

    # -- facilitator API ---------------------------------------------------------------------

    async def supported(request: Request) -> Response:
        return _json(200, {"kinds": facilitator.supported(), "extensions": [], "signers": {}})

    async def health(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def tabs(request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            return _json(400, {"error": "body must be a JSON object"})
        try:
            net = str(body.get("network") or network)
            version = int(body.get("guaranteeVersion") or body.get("x402Version") or 1)
            ttl = body.get("ttlSeconds")
            if ttl is not None and not (isinstance(ttl, int) and 0 < ttl <= MAX_TAB_TTL):
                return _json(400, {"error": f"ttlSeconds must be 1..{MAX_TAB_TTL}"})
            tab = await asyncio.to_thread(
                core.open_tab,
                parse_address(body.get("userAddress")),
                parse_address(body.get("recipientAddress")),
                network=net,
                asset=body.get("erc20Token") or None,
                guarantee_version=version,
                ttl_seconds=int(ttl) if ttl else None,
            )
        except FourmicaError as exc:
            return _json(
                400 if exc.status < 500 else 502, {"error": exc.message, "reason": exc.reason}
            )
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, tab.to_json())

    async def verify(request: Request) -> Response:
        try:
            payload, requirements = _payment_args(await _body(request))
            verdict = await asyncio.to_thread(facilitator.verify, payload, requirements)
        except PaymentError as exc:
            return _json(200, {"isValid": False, "invalidReason": exc.reason})
        return _json(
            200,
            {
                "isValid": verdict.is_valid,
                "invalidReason": verdict.invalid_reason,
                "payer": verdict.payer,
            },
        )

    async def settle(request: Request) -> Response:
        def run(payload: Any, requirements: PaymentRequirements) -> dict[str, Any]:
            result = facilitator.settle(payload, requirements)
            certificate = (
                core.certify(result.guarantee_id).to_json()
                if result.success and result.guarantee_id
                else None
            )
            return {
                "success": result.success,
                "error": result.error_reason,
                "txHash": None,
                "networkId": result.network,
                "network": result.network,
                "transaction": result.guarantee_id or "",
                "payer": result.payer,
                "certificate": certificate,
            }

        try:
            payload, requirements = _payment_args(await _body(request))
            answer = await asyncio.to_thread(run, payload, requirements)
        except PaymentError as exc:
            answer = {
                "success": False,
                "error": exc.reason,
                "txHash": None,
                "networkId": network,
                "network": network,
                "transaction": "",
                "certificate": None,
            }
        metrics.settled(bool(answer["success"]), answer.get("error"))
        return _json(200, answer)

    def seller_call(request: Request) -> Response | None:
        """Void and validation move money: only callers holding the API key may make them.

        The ``by``/``validator`` address in the body is public (``/api/guarantees``), so
        without a key anyone could void a seller's guarantee or score their own to zero.
        A local sandbox service (``--sandbox``) without a key stays open for development.
        """
        if api_key is None and not sellers and not sandbox:
            return _json(
                403,
                {"error": "start the service with --api-key to accept void and validation calls"},
            )
        if (api_key is not None or sellers) and acts_for(request) is None:
            return _json(401, {"error": "unauthorized"})
        return None

    def not_yours(request: Request, address: str) -> Response | None:
        """A seller key acts for its own address only."""
        bound = acts_for(request)
        if bound and bound != address:
            return _json(
                403, {"error": "key_not_for_address", "message": f"this key acts for {bound} only"}
            )
        return None

    async def void(request: Request) -> Response:
        if (refused := seller_call(request)) is not None:
            return refused
        body = await _body(request) or {}
        try:
            by = parse_address(body.get("by"))
        except ValueError as exc:
            return _json(400, {"error": f"by: {exc}"})
        if (refused := not_yours(request, by)) is not None:
            return refused
        record = await asyncio.to_thread(core.void, request.path_params["gid"], by=by)
        return _json(200, record.to_dict())

    async def validation(request: Request) -> Response:
        if (refused := seller_call(request)) is not None:
            return refused
        body = await _body(request) or {}
        score = body.get("score")
        try:
            validator = parse_address(body.get("validator"))
        except ValueError as exc:
            return _json(400, {"error": f"validator: {exc}"})
        if (refused := not_yours(request, validator)) is not None:
            return refused
        record = await asyncio.to_thread(
            core.post_validation,
            request.path_params["gid"],
            validator=validator,
            score=score if isinstance(score, int) else -1,
            tag=str(body.get("tag", "")),
        )
        return _json(200, record.to_dict())

    # -- Core API subset ---------------------------------------------------------------------

    def origin(request: Request) -> str:
        return public_url or f"{request.url.scheme}://{request.url.netloc}"

    async def public_params(request: Request) -> Response:
        return _json(200, coreapi.public_params(core, chain_id, origin(request) + "/rpc"))

    async def rpc(request: Request) -> Response:
        return _json(*coreapi.json_rpc(core, chain_id, await _body(request)))

    async def payment_tabs(request: Request) -> Response:
        body = await _body(request)
        return _json(*(await asyncio.to_thread(coreapi.core_payment_tabs, core, chain_id, body)))

    async def guarantees(request: Request) -> Response:
        # Settling a buyer's signed guarantee outside a seller's gate must be the seller's act.
        if (refused := seller_call(request)) is not None:
            return refused
        body = await _body(request)
        only = acts_for(request) or None  # a seller key settles its own guarantees only
        return _json(
            *(
                await asyncio.to_thread(
                    lambda: coreapi.core_guarantees(core, chain_id, body, recipient=only)
                )
            )
        )

    # -- sandbox -----------------------------------------------------------------------------

    def amount_of(value: Any, net: str, asset: str | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().startswith("$"):
            token = find_asset(net, asset) if asset else default_asset(net)
            if token is None:
                raise ValueError("unknown asset: give the amount in atomic units")
            return to_atomic(value, token)
        return parse_amount(value)

    def sandboxed(action: Callable[[dict[str, Any]], Any]) -> Handler:
        async def handler(request: Request) -> Response:
            if not sandbox:
                return _json(403, {"error": "sandbox API is disabled (start with --sandbox)"})
            if not authorized(request):
                return _json(401, {"error": "unauthorized"})
            body = await _body(request)
            if not isinstance(body, dict):
                return _json(400, {"error": "body must be a JSON object"})
            try:
                result = await asyncio.to_thread(action, body)
            except (ValueError, TypeError) as exc:
                return _json(400, {"error": str(exc)})
            return _json(200, result)

        return handler

    def deposit(body: dict[str, Any]) -> Any:
        net = str(body.get("network") or network)
        return core.deposit(
            str(body["address"]),
            amount_of(body["amount"], net, body.get("asset")),
            network=net,
            asset=body.get("asset"),
        ).to_dict()

    def withdraw(body: dict[str, Any]) -> Any:
        net = str(body.get("network") or network)
        if body.get("finalize"):
            return core.finalize_withdrawal(int(body["finalize"])).to_dict()
        if body.get("cancel"):
            return core.cancel_withdrawal(int(body["cancel"])).to_dict()
        return core.request_withdrawal(
            str(body["address"]),
            amount_of(body["amount"], net, body.get("asset")),
            network=net,
            asset=body.get("asset"),
        ).to_dict()

    def close_cycle(body: dict[str, Any]) -> Any:
        return core.close_cycle(
            network=str(body.get("network") or network), asset=body.get("asset")
        ).to_dict()

    def pay_debit(body: dict[str, Any]) -> Any:
        return core.pay_net_debit(
            int(body["cycle_id"]), str(body["address"]), body.get("amount")
        ).to_dict()

    def claim(body: dict[str, Any]) -> Any:
        return {"claimed": core.claim_net_credit(int(body["cycle_id"]), str(body["address"]))}

    def tick(body: dict[str, Any]) -> Any:
        return core.tick()

    def suspend(body: dict[str, Any]) -> Any:
        core.suspend(str(body["address"]), bool(body.get("suspended", True)))
        return {"address": body["address"], "suspended": bool(body.get("suspended", True))}

    # -- read API, metrics, dashboard --------------------------------------------------------

    async def api_positions(request: Request) -> Response:
        return _json(200, [p.to_dict() for p in await asyncio.to_thread(core.positions)])

    async def api_cycles(request: Request) -> Response:
        return _json(200, [c.to_dict() for c in await asyncio.to_thread(core.cycles, limit=200)])

    async def api_cycle(request: Request) -> Response:
        cycle_id = int(request.path_params["cycle_id"])

        def load() -> dict[str, Any]:
            return {
                "cycle": core.cycle(cycle_id).to_dict(),
                "positions": [p.to_dict() for p in core.cycle_positions(cycle_id)],
                "pairs": [p.to_dict() for p in core.cycle_pairs(cycle_id)],
            }

        return _json(200, await asyncio.to_thread(load))

    async def api_guarantees(request: Request) -> Response:
        address = request.query_params.get("address")
        rows = await asyncio.to_thread(core.guarantees, address=address, limit=200)
        return _json(200, [g.to_dict() for g in rows])

    async def api_events(request: Request) -> Response:
        after = int(request.query_params.get("after", "0") or 0)
        return _json(
            200, [e.to_dict() for e in await asyncio.to_thread(core.events, after=after, limit=500)]
        )

    def admin(handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            # Subscriptions make the service call out: only its operator may manage them.
            if hooks is None:
                return _json(404, {"error": "webhooks are disabled"})
            if api_key is None and not sandbox:
                return _json(403, {"error": "set an API key (--api-key) to manage webhooks"})
            if not authorized(request):
                return _json(401, {"error": "unauthorized"})
            try:
                return await handler(request)
            except ValueError as exc:
                return _json(400, {"error": str(exc)})

        return guarded

    async def webhook_subscribe(request: Request) -> Response:
        assert hooks is not None
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            return _json(400, {"error": "give {url, events?, secret?}"})
        sub = await asyncio.to_thread(
            hooks.subscribe, body["url"], body.get("events") or ["*"], body.get("secret")
        )
        return _json(200, sub.to_dict(include_secret=True))  # the secret is shown once, here

    async def webhook_list(request: Request) -> Response:
        assert hooks is not None
        return _json(200, [sub.to_dict() for sub in await asyncio.to_thread(hooks.subscriptions)])

    async def webhook_delete(request: Request) -> Response:
        assert hooks is not None
        removed = await asyncio.to_thread(hooks.unsubscribe, request.path_params["sid"])
        return _json(200 if removed else 404, {"removed": removed})

    async def webhook_deliveries(request: Request) -> Response:
        assert hooks is not None
        rows = await asyncio.to_thread(hooks.deliveries, status=request.query_params.get("status"))
        return _json(200, [d.to_dict() for d in rows])

    async def metrics_endpoint(request: Request) -> Response:
        body = await asyncio.to_thread(metrics.render)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(await asyncio.to_thread(render_dashboard, core))

    routes = [
        Route("/", timed(dashboard)),
        Route("/dashboard", timed(dashboard)),
        Route("/supported", timed(supported)),
        Route("/health", timed(health)),
        Route("/tabs", timed(tabs), methods=["POST"]),
        Route("/verify", timed(verify), methods=["POST"]),
        Route("/settle", timed(settle), methods=["POST"]),
        Route("/guarantees/{gid}/void", timed(void), methods=["POST"]),
        Route("/guarantees/{gid}/validation", timed(validation), methods=["POST"]),
        Route("/core/public-params", timed(public_params)),
        Route("/core/payment-tabs", timed(payment_tabs), methods=["POST"]),
        Route("/core/guarantees", timed(guarantees), methods=["POST"]),
        Route("/rpc", timed(rpc), methods=["POST"]),
        Route("/sandbox/deposit", timed(sandboxed(deposit)), methods=["POST"]),
        Route("/sandbox/withdraw", timed(sandboxed(withdraw)), methods=["POST"]),
        Route("/sandbox/cycles/close", timed(sandboxed(close_cycle)), methods=["POST"]),
        Route("/sandbox/debits/pay", timed(sandboxed(pay_debit)), methods=["POST"]),
        Route("/sandbox/credits/claim", timed(sandboxed(claim)), methods=["POST"]),
        Route("/sandbox/tick", timed(sandboxed(tick)), methods=["POST"]),
        Route("/sandbox/suspend", timed(sandboxed(suspend)), methods=["POST"]),
        Route("/api/positions", timed(api_positions)),
        Route("/api/cycles", timed(api_cycles)),
        Route("/api/cycles/{cycle_id:int}", timed(api_cycle)),
        Route("/api/guarantees", timed(api_guarantees)),
        Route("/api/events", timed(api_events)),
        Route("/metrics", metrics_endpoint),
        Route("/admin/webhooks", timed(admin(webhook_subscribe)), methods=["POST"]),
        Route("/admin/webhooks", timed(admin(webhook_list)), methods=["GET"]),
        Route("/admin/webhooks/deliveries", timed(admin(webhook_deliveries))),
        Route("/admin/webhooks/{sid}", timed(admin(webhook_delete)), methods=["DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = None
        if tick_interval:

            async def loop() -> None:
                while True:
                    await asyncio.sleep(tick_interval)
                    with contextlib.suppress(Exception):  # keep ticking; the next round retries
                        await asyncio.to_thread(core.tick)

            task = asyncio.get_running_loop().create_task(loop())
        if hooks is not None:
            hooks.start()
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            if hooks is not None:
                await asyncio.to_thread(hooks.stop, 10.0)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.core = core
    app.state.metrics = metrics
    app.state.webhooks = hooks
    app.state.scheme = SCHEME
    return app


# -- the dashboard ---------------------------------------------------------------------------


def _money(amount: int, network: str, asset: str) -> str:
    """An amount for a table cell, marked so its column is right-aligned."""
    token = find_asset(network, asset)
    if token is None:
        return f'<span class="num">{amount:,}</span>'
    from decimal import Decimal

    human = Decimal(amount).scaleb(-token.decimals).normalize()
    return f'<span class="num">{human:f} {html.escape(token.symbol)}</span>'


def _badge(text: str) -> str:
    """A state or role as a small coloured label (the text stays exactly the state name)."""
    safe = html.escape(text)
    return f'<span class="st st-{safe}">{safe}</span>'


def _short(address: str | None) -> str:
    if not address:
        return "—"
    return f'<code title="{html.escape(address)}">{html.escape(address[:6])}…{html.escape(address[-4:])}</code>'


def _table(title: str, headers: list[str], rows: list[list[str]], table_id: str) -> str:
    # A column of amounts is right-aligned, its header too, so the digits line up.
    money = {
        i for i in range(len(headers)) if rows and all('class="num"' in row[i] for row in rows)
    }

    def cell(tag: str, i: int, content: str) -> str:
        return (
            f'<{tag} class="num">{content}</{tag}>' if i in money else f"<{tag}>{content}</{tag}>"
        )

    head = "".join(cell("th", i, html.escape(h)) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="empty">nothing yet</td></tr>'
    return (
        f'<section id="{table_id}"><h2>{html.escape(title)}</h2><div class="scroll">'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>"
    )


def render_dashboard(core: Core) -> str:
    """The dashboard page: positions, cycles and their net positions, guarantees, defaults, withdrawals."""
    positions = core.positions()
    cycles = core.cycles(limit=20)
    recent = core.guarantees(limit=25)
    withdrawals = core.withdrawals(limit=20)
    # An open cycle's totals are only written at close: show what it holds so far.
    live = {
        c.cycle_id: (sum(p.guarantee_count for p in pairs), sum(p.amount for p in pairs))
        for c in cycles
        if c.status == "open" and (pairs := core.cycle_pairs(c.cycle_id))
    }
    defaults = [e for e in core.events(type="position.defaulted", limit=1000)][-20:]
    sections = [
        _table(
            "Positions",
            ["participant", "network", "collateral", "locked", "pending withdrawal", "capacity"],
            [
                [
                    _short(p.address),
                    html.escape(get_network(p.network).name),
                    _money(p.collateral, p.network, p.asset),
                    _money(p.locked, p.network, p.asset),
                    _money(p.pending_withdrawal, p.network, p.asset),
                    _money(p.capacity, p.network, p.asset),
                ]
                for p in positions
            ],
            "positions",
        ),
        _table(
            "Clearing cycles",
            [
                "cycle",
                "status",
                "guarantees",
                "gross",
                "net transfers",
                "net debits",
                "collected",
                "merkle root",
            ],
            [
                [
                    f'<a href="#cycle-{c.cycle_id}">#{c.cycle_id}</a>',
                    _badge(c.status),
                    f"{live.get(c.cycle_id, (c.guarantee_count, 0))[0]:,}",
                    _money(live.get(c.cycle_id, (0, c.gross))[1], c.network, c.asset),
                    f"{c.net_transfers:,}",
                    _money(c.total_debit, c.network, c.asset),
                    _money(c.collected, c.network, c.asset),
                    _short(c.merkle_root),
                ]
                for c in cycles
            ],
            "cycles",
        ),
    ]
    for c in cycles:
        if c.status == "open":
            continue
        net_rows = [
            [
                _short(p.address),
                _badge(p.role),
                _money(p.gross_in, c.network, c.asset),
                _money(p.gross_out, c.network, c.asset),
                _money(p.net, c.network, c.asset)
                if p.net >= 0
                else "−" + _money(-p.net, c.network, c.asset),
                _badge(p.status),
                _money(p.covered, c.network, c.asset),
                _money(p.shortfall, c.network, c.asset),
            ]
            for p in core.cycle_positions(c.cycle_id)
        ]
        pair_rows = [
            [
                _short(p.payer),
                _short(p.payee),
                _money(p.amount, c.network, c.asset),
                f"{p.guarantee_count:,}",
            ]
            for p in core.cycle_pairs(c.cycle_id)[:50]
        ]
        sections.append(
            f'<div class="cycle" id="cycle-{c.cycle_id}">'
            + _table(
                f"Cycle #{c.cycle_id}: net positions",
                ["participant", "role", "in", "out", "net", "status", "covered", "shortfall"],
                net_rows,
                f"cycle-{c.cycle_id}-positions",
            )
            + _table(
                f"Cycle #{c.cycle_id}: pairwise obligations",
                ["payer", "payee", "amount", "guarantees"],
                pair_rows,
                f"cycle-{c.cycle_id}-pairs",
            )
            + "</div>"
        )
    sections.append(
        _table(
            "Recent guarantees",
            ["guarantee", "payer", "recipient", "amount", "state", "cycle"],
            [
                [
                    _short(g.guarantee_id),
                    _short(g.user_address),
                    _short(g.recipient_address),
                    _money(g.amount, g.network, g.asset),
                    _badge(g.state),
                    str(g.cycle_id or "—"),
                ]
                for g in recent
            ],
            "guarantees",
        )
    )
    sections.append(
        _table(
            "Defaults",
            ["participant", "cycle", "unpaid", "covered from collateral", "shortfall"],
            [
                [
                    _short(e.address),
                    str(e.data.get("cycle_id")),
                    _money(int(e.data.get("unpaid", 0)), e.network or "", e.asset or ""),
                    _money(int(e.data.get("covered", 0)), e.network or "", e.asset or ""),
                    _money(int(e.data.get("shortfall", 0)), e.network or "", e.asset or ""),
                ]
                for e in defaults
            ],
            "defaults",
        )
    )
    sections.append(
        _table(
            "Withdrawals",
            ["id", "participant", "amount", "status", "available at (UTC)"],
            [
                [
                    str(w.withdrawal_id),
                    _short(w.address),
                    _money(w.amount, w.network, w.asset),
                    html.escape(w.status),
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(w.available_at)),
                ]
                for w in withdrawals
            ],
            "withdrawals",
        )
    )
    nets = ", ".join(html.escape(n.name) for n in networks())
    updated = time.strftime("%H:%M:%S", time.gmtime())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fourmica-x402 Core</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta http-equiv="refresh" content="30">
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2430;background:#fafbfc}}
h1{{font-size:1.4rem;margin:0 0 .2rem}} h2{{font-size:1.05rem;margin:1.4rem 0 .4rem}}
table{{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}}
th,td{{border-bottom:1px solid #e3e7ee;padding:.35rem .5rem;text-align:left}} th{{background:#f0f3f7}}
td.empty{{color:#8a94a6;font-style:italic}} code{{font-size:.85em}} .cycle{{margin-left:1rem}}
td{{font-variant-numeric:tabular-nums}} .st{{padding:.05rem .4rem;border-radius:.6rem;background:#eef1f5}}
th.num,td.num{{text-align:right;white-space:nowrap}} .scroll{{overflow-x:auto}}
.st-defaulted,.st-default_covered,.st-cancelled{{background:#fde8e7;color:#b42318}}
.st-paid,.st-settled,.st-creditor,.st-final{{background:#e7f6ec;color:#067647}}
.st-debtor,.st-pending_validation,.st-pending{{background:#fff4e5;color:#93370d}}
.sub{{color:#5b6576;margin:0 0 1rem}}
</style></head><body>
<h1>fourmica-x402 Core</h1>
<p class="sub">Netted credit for x402 payments · networks: {nets} · updated {updated} UTC</p>
{"".join(sections)}
</body></html>"""
